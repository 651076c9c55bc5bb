"""DP-FedAvg (user-level DP at the coordinator): clipping, noise, adaptive clip, accounting, a real run."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from ringfl.algorithms import AlgorithmSettings, Update, make_coordinator_algorithm
from ringfl.algorithms.dp_fedavg import clip_to, split_noise
from ringfl.errors import ConfigError
from ringfl.privacy.accountant import epsilon
from tests.helpers import demo_config, run_coordinator


def server(size=50_000, **settings):
    return make_coordinator_algorithm("dp-fedavg", np.zeros(size, np.float32),
                                      AlgorithmSettings.from_mapping(settings), np.random.default_rng(1))


def play(algorithm, vectors):
    for i, vector in enumerate(vectors):
        algorithm.submit(Update(f"p{i}", algorithm.round, np.asarray(vector, np.float32), 100))
    algorithm.end_round()


def test_updates_are_clipped_to_the_bound_and_averaged():
    algorithm = server(size=4, user_clip=1.0, user_noise=0.0)
    play(algorithm, [[3.0, 4.0, 0, 0], [0, 0, 0.5, 0]])  # norms 5 (clipped to 1) and 0.5
    np.testing.assert_allclose(algorithm.params, [0.3, 0.4, 0.25, 0.0], rtol=1e-6)
    assert algorithm.privacy_report()["user_clipped_fraction"] == 0.5
    assert clip_to(np.array([0.3, 0.4]), 1.0)[1] == pytest.approx(0.5)


def test_noise_on_the_sum_has_sd_z_times_clip_over_n():
    algorithm = server(user_clip=0.5, user_noise=1.3, user_peers=4)
    play(algorithm, [np.zeros(50_000)] * 3)  # 3 uploads, fixed denominator 4
    z = algorithm.params.astype(np.float64) / (1.3 * 0.5 / 4)
    assert z.std() == pytest.approx(1.0, abs=0.015)
    assert stats.kstest(z, "norm").pvalue > 1e-3


def test_adaptive_clipping_moves_to_the_quantile():
    algorithm = server(size=10, user_clip=0.1, user_noise=0.0, clip_quantile=0.5, clip_lr=0.5)
    norms = np.linspace(1.0, 3.0, 9)  # median 2
    for _ in range(60):
        play(algorithm, [np.eye(10)[0] * n for n in norms])
    assert 1.7 < algorithm.clip < 2.3


def test_adaptive_noise_split_keeps_the_total_budget():
    z, count = 1.0, 2.0
    z_sum = split_noise(z, count)
    assert z_sum**-2 + (2 * count) ** -2 == pytest.approx(z**-2)  # Andrew et al. 2021, Theorem 1


def test_user_level_epsilon_is_accounted_and_the_budget_stops_the_model():
    algorithm = server(size=20, user_target_epsilon=5.0, user_rounds=3)
    eps_before = []
    for _ in range(3):
        play(algorithm, [np.ones(20)] * 5)
        eps_before.append(algorithm.privacy_report()["user_epsilon"])
    sigma = algorithm.noise_multiplier
    assert eps_before[-1] == pytest.approx(epsilon(sigma, 1.0, 3, 1e-5)) and eps_before[-1] <= 5.0
    frozen = algorithm.params.copy()
    play(algorithm, [np.ones(20)] * 5)  # a 4th round would pass ε = 5: not applied
    np.testing.assert_array_equal(algorithm.params, frozen)
    assert algorithm.privacy_report()["user_epsilon"] == eps_before[-1]


def test_dp_fedavg_refuses_robust_aggregation():
    with pytest.raises(ConfigError, match="robust aggregation 'median' applies to fedavg"):
        server(robust="median")


async def test_without_noise_and_with_a_loose_clip_dp_fedavg_is_fedavg():
    config = demo_config(rounds=3, peers=3, round_timeout=120.0)
    plain, _ = await run_coordinator(config)
    dp, _ = await run_coordinator(config.replace(algorithm="dp-fedavg", algorithm_settings={
        "user_clip": 100.0, "user_noise": 0.0}))
    assert [r["accuracy"] for r in dp.history] == [r["accuracy"] for r in plain.history]
    assert dp.history[-1]["user_clipped_fraction"] == 0.0 and dp.history[-1]["user_epsilon"] is None


async def test_dp_fedavg_run_learns_and_reports_user_epsilon(tmp_path):
    """Three peers are far too few for a small user-level ε (the noise on the mean is z·S/3): a
    small z shows the mechanics; the ε it reports is honest, and large."""
    settings = {"user_clip": 1.0, "user_noise": 0.02, "user_peers": 3}
    config = demo_config(algorithm="dp-fedavg", rounds=4, peers=3, algorithm_settings=settings, round_timeout=120.0)
    coordinator, _ = await run_coordinator(config, out_dir=tmp_path)
    last = coordinator.history[-1]
    assert last["accuracy"] > 0.6
    assert last["user_epsilon"] == pytest.approx(epsilon(0.02, 1.0, 4, 1e-5)) and last["user_epsilon"] > 100
    assert last["user_delta"] == 1e-5


def test_checkpoint_state_keeps_the_clip_and_the_rounds_spent():
    algorithm = server(size=10, user_clip=0.5, user_noise=1.0, clip_quantile=0.5)
    for _ in range(3):
        play(algorithm, [np.ones(10)] * 4)
    again = server(size=10, user_clip=0.5, user_noise=1.0, clip_quantile=0.5)
    again.load_state(algorithm.state())
    assert again.clip == pytest.approx(algorithm.clip) and again.clip != 0.5
    assert again.privacy_report()["user_epsilon"] == pytest.approx(epsilon(1.0, 1.0, 3, 1e-5))


def test_server_noise_does_not_come_from_the_run_seed():
    a, b = server(size=100, user_noise=1.0), server(size=100, user_noise=1.0)  # same rng seed
    play(a, [np.zeros(100)] * 2)
    play(b, [np.zeros(100)] * 2)
    assert not np.array_equal(a.params, b.params)
