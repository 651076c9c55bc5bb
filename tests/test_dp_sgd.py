"""Example-level DP-SGD: the RDP accountant, exact per-example gradients, the noise, the budget, both modes."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from ringfl.config import TrainingConfig, parse_config
from ringfl.data.preprocess import prepare
from ringfl.data.sources import load_source
from ringfl.errors import ConfigError
from ringfl.model import load_spec, parse_spec
from ringfl.model.runtime import shared_model
from ringfl.privacy import BudgetExhausted
from ringfl.privacy.accountant import GaussianLedger, epsilon, noise_for
from ringfl.privacy.dp_sgd import DpSgdConfig, DpSgdTrainer, plan
from ringfl.topology import generate
from tests.helpers import demo_config, run_coordinator
from tests.test_ring import run_ring

SMALL_CNN = {"name": "tiny-cnn", "input_shape": [1, 8, 8], "num_classes": 10, "layers": [
    {"type": "conv2d", "channels": 3, "kernel": 3, "activation": "tanh"},
    {"type": "flatten"}, {"type": "dense", "units": 10}]}


# --- accountant ------------------------------------------------------------------------------

@pytest.mark.parametrize(("sigma", "rounds", "target"), [
    (1.099, 5, 3.0), (1.290, 10, 3.0), (1.609, 20, 3.0), (2.831, 10, 1.0), (0.799, 10, 8.0)])
def test_accountant_matches_the_reference_table(sigma, rounds, target):
    """calibration.md: B = 256 of N = 6000 (q = 256/6000, 23 steps per epoch), δ = 1e-5."""
    eps = epsilon(sigma, 256 / 6000, 23 * rounds, 1e-5)
    assert eps == pytest.approx(target, abs=0.03)


def test_full_batch_composition_matches_the_closed_form_rdp_bound():
    """q = 1: T Gaussian steps have RDP T·α/(2σ²) (Mironov 2017); ε at δ by the conversion of
    Canonne, Kamath & Steinke 2020, minimised over a fine grid of orders."""
    sigma, steps, delta = 5.0, 40, 1e-5
    alpha = np.linspace(1.01, 200, 200_000)
    rdp = steps * alpha / (2 * sigma**2)
    closed = np.min(rdp + np.log1p(-1 / alpha) - (np.log(delta) + np.log(alpha)) / (alpha - 1))
    got = epsilon(sigma, 1.0, steps, delta)
    assert closed <= got + 1e-9 and got == pytest.approx(closed, rel=0.01)


def test_full_batch_gaussian_is_never_better_than_the_exact_analytic_bound():
    """q = 1, one step: the exact ε of the Gaussian mechanism (Balle & Wang 2018) is a lower bound."""
    sigma, delta = 2.0, 1e-5

    def exact_delta(eps: float) -> float:
        return stats.norm.cdf(0.5 / sigma - eps * sigma) - math.exp(eps) * stats.norm.cdf(-0.5 / sigma - eps * sigma)

    lo, hi = 0.0, 10.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if exact_delta(mid) > delta else (lo, mid)
    rdp = epsilon(sigma, 1.0, 1, delta)
    assert hi <= rdp <= 1.3 * hi


def test_noise_for_inverts_epsilon():
    sigma = noise_for(3.0, 256 / 6000, 230, 1e-5)
    assert sigma == pytest.approx(1.290, abs=0.005)
    assert epsilon(sigma, 256 / 6000, 230, 1e-5) <= 3.0 + 1e-6
    assert epsilon(sigma * 0.99, 256 / 6000, 230, 1e-5) > 3.0
    assert epsilon(0.0, 0.5, 3, 1e-5) == math.inf and epsilon(1.0, 0.5, 0, 1e-5) == 0.0


def test_ledger_refuses_past_its_budget_and_round_trips():
    ledger = GaussianLedger(peer="p", budget=3.0)
    for _ in range(10):
        ledger.check(1.290, 256 / 6000, 23)
        ledger.record(1.290, 256 / 6000, 23)
    assert ledger.total == pytest.approx(3.0, abs=0.01) and ledger.steps == 230
    with pytest.raises(BudgetExhausted, match="budget ε=3"):
        ledger.check(1.290, 256 / 6000, 23)
    assert GaussianLedger.from_dict(ledger.to_dict()).total == pytest.approx(ledger.total)


def test_plan_and_config_errors():
    p = plan(DpSgdConfig(mechanism="dp-sgd", target_epsilon=3.0), num_samples=6000, batch_size=256, rounds=10)
    assert (p.steps_per_round, p.sample_rate) == (23, 256 / 6000)
    assert p.noise_multiplier == pytest.approx(1.290, abs=0.005) and p.epsilon <= 3.0
    with pytest.raises(ConfigError, match="exactly one of noise_multiplier and target_epsilon"):
        parse_config({"training": {"privacy": {"mechanism": "dp-sgd"}}})
    with pytest.raises(ConfigError, match="mechanism must be one of"):
        parse_config({"training": {"privacy": {"mechanism": "dp-adam", "noise_multiplier": 1}}})
    config = parse_config({"training": {"privacy": {"mechanism": "dp-sgd", "noise_multiplier": 1.1}}})
    assert config.training.privacy.enabled and config.training.privacy.noise_multiplier == 1.1


# --- per-example gradients and the noise ------------------------------------------------------

def _digits(spec, count):
    data = load_source("digits")
    return prepare(data.train.x[:count], spec.input_shape), data.train.y[:count]


def _brute_force(gluon, params, x, y, clip):
    grads = np.stack([gluon.gradient(params, x[i : i + 1], y[i : i + 1]) for i in range(len(y))])
    norms = np.linalg.norm(grads.astype(np.float64), axis=1)
    return (grads * np.minimum(1.0, clip / norms)[:, None]).sum(axis=0), norms


@pytest.mark.parametrize(("spec", "methods"), [(load_spec("digits-mlp"), ("dense", "loop")),
                                               (parse_spec(SMALL_CNN), ("loop",))])
def test_per_example_norms_and_clipped_sums_match_a_brute_force_loop(spec, methods):
    model = shared_model(spec)
    gluon = model._gluon
    params = model.init_params(3)
    x, y = _digits(spec, 24)
    want_sum, want_norms = model.thread.call(_brute_force, gluon, params, x, y, 0.7)
    assert want_norms.min() < 0.7 < want_norms.max() or spec.custom is None  # some clipped
    for method in methods:
        got_sum, got_norms = model.thread.call(gluon.clipped_gradient_sum, params, x, y, 0.7, method)
        np.testing.assert_allclose(got_norms, want_norms, rtol=1e-4)
        np.testing.assert_allclose(got_sum, want_sum, rtol=1e-4, atol=1e-6)


def test_the_vectorised_path_refuses_a_conv_net():
    model = shared_model(parse_spec(SMALL_CNN))
    x, y = _digits(model.spec, 4)
    with pytest.raises(Exception, match="Dense layers"):
        model.thread.call(model._gluon.clipped_gradient_sum, model.init_params(0), x, y, 1.0, "dense")


def test_noise_is_gaussian_with_sd_sigma_times_clip():
    """One step with and without noise from the same seed (same Poisson batch): the difference,
    divided by lr·σ·C/B, must be standard normal in every coordinate."""
    model = shared_model(load_spec("digits-mlp"))
    x, y = _digits(model.spec, 400)
    params = model.init_params(1)
    kw = dict(lr=0.5, batch_size=40, clip=0.8, steps=1, seed=11)
    noisy = model.thread.call(model._gluon.train_dp, params, x, y, noise_multiplier=1.7, **kw)
    clean = model.thread.call(model._gluon.train_dp, params, x, y, noise_multiplier=0.0, **kw)
    z = (clean.params - noisy.params).astype(np.float64) / (0.5 * 1.7 * 0.8 / 40)
    assert noisy.samples == clean.samples > 0
    assert abs(z.mean()) < 5 / math.sqrt(z.size)
    assert z.std() == pytest.approx(1.0, abs=0.02)
    assert stats.kstest(z, "norm").pvalue > 1e-3


def test_poisson_batches_have_the_expected_size():
    model = shared_model(load_spec("digits-mlp"))
    x, y = _digits(model.spec, 1000)
    result = model.thread.call(model._gluon.train_dp, model.init_params(0), x, y, lr=0.1, batch_size=50,
                               clip=1.0, noise_multiplier=1.0, steps=40)
    # 40 steps of Binomial(1000, 0.05): mean 2000, sd ~ 43.6
    assert abs(result.samples - 2000) < 5 * math.sqrt(40 * 1000 * 0.05 * 0.95)


def test_trainer_refuses_the_round_that_would_pass_the_budget(tmp_path):
    model = shared_model(load_spec("digits-mlp"))
    x, y = _digits(model.spec, 300)
    config = DpSgdConfig(mechanism="dp-sgd", noise_multiplier=2.0, budget=2.0)
    run_plan = plan(config, num_samples=300, batch_size=30, rounds=50)
    trainer = DpSgdTrainer(config, run_plan, peer="p0", ledger_path=str(tmp_path / "ledger.json"))
    import trio

    async def rounds() -> int:
        done, params = 0, model.init_params(0)
        with pytest.raises(BudgetExhausted, match="peer p0: DP-SGD budget ε=2"):
            while True:
                params, _ = await trainer.train(model, params, x, y, lr=0.5, batch_size=30)
                done += 1
        return done

    done = trio.run(rounds)
    assert done == 5 and trainer.epsilon <= 2.0  # ε after 5 rounds 1.86, after 6 2.01
    assert trainer.ledger.steps == done * run_plan.steps_per_round
    again = DpSgdTrainer(config, run_plan, peer="p0", ledger_path=str(tmp_path / "ledger.json"))
    assert again.epsilon == pytest.approx(trainer.epsilon)  # a restart does not forget ε
    with pytest.raises(BudgetExhausted):
        again.ledger.check(run_plan.noise_multiplier, run_plan.sample_rate, run_plan.steps_per_round)


# --- both modes -------------------------------------------------------------------------------

DP_TRAINING = TrainingConfig(lr=0.5, batch_size=32, privacy=DpSgdConfig(mechanism="dp-sgd", target_epsilon=4.0))


async def test_coordinator_mode_reports_epsilon_per_peer_and_learns():
    config = demo_config(rounds=3, peers=3, training=DP_TRAINING, round_timeout=120.0)
    coordinator, peers = await run_coordinator(config)
    last = coordinator.history[-1]
    assert set(last["epsilon_per_peer"]) == {"p0", "p1", "p2"}
    assert all(3.9 < eps <= 4.0 for eps in last["epsilon_per_peer"].values())  # the whole run's target
    assert coordinator.history[0]["epsilon_spent"] < last["epsilon_spent"]
    assert last["dp_delta"] == 1e-5 and last["accuracy"] > 0.6
    assert [round(p.history[-1]["epsilon"], 6) for p in peers] == [
        round(last["epsilon_per_peer"][f"p{i}"], 6) for i in range(3)]


async def test_coordinator_mode_peer_stops_at_its_budget():
    training = TrainingConfig(lr=0.5, batch_size=32, privacy=DpSgdConfig(
        mechanism="dp-sgd", noise_multiplier=1.5, budget=1.45))
    config = demo_config(rounds=6, peers=2, training=training, round_timeout=15.0)
    coordinator, peers = await run_coordinator(config)
    for peer in peers:  # ~720 records, q = 32/720, 22 steps a round: ε 0.95, 1.19, 1.39, then 1.57
        assert len(peer.history) == 3
        assert 1.3 < peer.history[-1]["epsilon"] <= 1.45 and peer.dp_sgd.epsilon <= 1.45
    assert all(eps <= 1.45 for eps in coordinator.history[-1]["epsilon_per_peer"].values())


@pytest.mark.parametrize("algorithm", ["gossip-dssgd", "relay", "choco"])
async def test_ring_mode_dp_sgd_peers_learn_with_epsilon_in_the_metrics(algorithm):
    bootstrap, peers = await run_ring(generate("ring", 4), algorithm, rounds=3, training=DP_TRAINING,
                                      round_timeout=120.0)
    last = bootstrap.history[-1]
    assert 3.9 < last["epsilon_spent"] <= 4.0
    assert all(3.9 < p.history[-1]["epsilon"] <= 4.0 for p in peers)
    assert last["accuracy"] > (0.4 if algorithm == "choco" else 0.5)  # chance is 0.1; CHOCO (top-10 %) is slower


async def test_ring_dp_sgd_exchanging_within_rounds_spends_what_whole_rounds_do():
    """exchange_every cuts each round's Poisson-sampled steps into slices: more exchanges, the same
    steps, so the same ε as exchanging once per round."""
    bootstrap, peers = await run_ring(generate("ring", 4), "d-psgd", rounds=3, training=DP_TRAINING,
                                      settings={"exchange_every": 4}, round_timeout=120.0)
    for peer in peers:
        assert [r["exchanges"] for r in peer.history] == [3, 3, 3]  # ~360 records, 12 batches of 32 a round
        assert peer.dp_sgd.ledger.steps == 3 * peer.dp_sgd.plan.steps_per_round
        assert 3.9 < peer.history[-1]["epsilon"] <= 4.0
    assert bootstrap.history[-1]["accuracy"] > 0.5


@pytest.mark.parametrize("algorithm", ["fedsgd", "dssgd"])
async def test_dp_sgd_under_the_other_coordinator_algorithms(algorithm):
    """FedSGD's full-set gradient is not DP-SGD training: DP-SGD replaces local epochs only."""
    config = demo_config(rounds=2, peers=2, training=DP_TRAINING, algorithm=algorithm, round_timeout=120.0,
                         algorithm_settings={"theta_u": 0.5} if algorithm == "dssgd" else {})
    coordinator, peers = await run_coordinator(config)
    eps = coordinator.history[-1].get("epsilon_per_peer", {})
    if algorithm == "fedsgd":
        assert all(p.dp_sgd is None for p in peers)
    else:
        assert set(eps) == {"p0", "p1"} and all(0 < e <= 4.0 for e in eps.values())


def test_experiment_summary_shows_dp_sgd_epsilon_and_the_audit_side_by_side(tmp_path):
    import csv

    from ringfl.experiments import plan as exp
    from ringfl.experiments.results import read_results
    from ringfl.experiments.run import run_experiment

    experiment = exp.plan({"base": {"rounds": 2, "peers": 2, "training": {
        "lr": 0.5, "batch_size": 32, "privacy": {"mechanism": "dp-sgd", "target_epsilon": 2.0}}},
        "grid": {"algorithm": ["fedavg"]}, "standalone_peers": 1, "audit": {"shadows": 2, "members": 50}})
    run_experiment(experiment, tmp_path)
    with open(tmp_path / "summary.csv", newline="") as handle:
        rows = {row["mode"]: row for row in csv.DictReader(handle)}
    assert 1.9 < float(rows["coordinator"]["epsilon_composed"]) <= 2.0
    assert float(rows["coordinator"]["final_accuracy"]) > 0.3
    assert 0.0 <= float(rows["coordinator"]["audit_lira_tpr_1pct"]) <= 1.0
    assert 0.2 < float(rows["coordinator"]["audit_lira_auc"]) < 0.8
    assert rows["centralized"]["audit_lira_auc"] == ""  # reference lines are not audited
    assert (tmp_path / "plots" / "privacy_audit.png").is_file()
    audited = [r for r in read_results(tmp_path) if r.audit]
    assert len(audited) == 1 and audited[0].audit["members"] == 50  # audit.json is read back
    with pytest.raises(ConfigError, match="audit: expected true or a mapping"):
        exp.plan({"audit": {"shadow": 3}})


async def test_a_resumed_coordinator_keeps_every_peers_dp_sgd_epsilon(tmp_path):
    from ringfl.coordinator import Coordinator
    from ringfl.transport import MemoryNetwork

    config = demo_config(rounds=2, peers=2, training=DP_TRAINING, round_timeout=120.0)
    first, _ = await run_coordinator(config, out_dir=tmp_path)
    resumed = Coordinator(config.replace(rounds=3), MemoryNetwork(), tmp_path, resume=True)
    assert resumed.pool.dp_sgd is not None
    assert resumed.pool.dp_sgd.per_peer() == pytest.approx(first.pool.dp_sgd.per_peer())
    assert all(eps > 0 for eps in resumed.pool.dp_sgd.per_peer().values())


def test_peer_noise_is_not_reproducible_from_the_public_seed():
    """The run's seed is in the config everyone has: a peer's DP noise must come from OS entropy."""
    import trio

    model = shared_model(load_spec("digits-mlp"))
    x, y = _digits(model.spec, 200)
    config = DpSgdConfig(mechanism="dp-sgd", noise_multiplier=1.0)
    trainer = DpSgdTrainer(config, plan(config, num_samples=200, batch_size=20, rounds=5))
    params = model.init_params(0)
    first = trio.run(lambda: trainer.train(model, params, x, y, lr=0.1, batch_size=20))[0]
    second = trio.run(lambda: trainer.train(model, params, x, y, lr=0.1, batch_size=20))[0]
    assert not np.array_equal(first, second)
