"""Strategies: settings, registry, DSSGD / FedAvg / FedSGD servers and peers, gossip, relay,
CHOCO, and a simulated convergence check of each with a real (tiny) training loop."""

from __future__ import annotations

import numpy as np
import pytest

from ringfl.algorithms import (
    AlgorithmSettings,
    GossipMessage,
    InvalidUpdate,
    Update,
    algorithm_mode,
    make_coordinator_algorithm,
    make_gossip_algorithm,
    make_peer_algorithm,
    simulate_round,
)
from ringfl.errors import ConfigError
from ringfl.vectors import SparseVector

RNG = np.random.default_rng


def sparse(size: int, pairs: dict[int, float]) -> SparseVector:
    return SparseVector.from_indices(size, np.array(list(pairs)), np.array(list(pairs.values())))


def ring(n: int) -> tuple[dict[int, dict[int, float]], dict[int, list[int]]]:
    """Metropolis–Hastings weights (1/3 per neighbour) and out-neighbours of a ring."""
    weights = {i: {(i - 1) % n: 1 / 3, (i + 1) % n: 1 / 3} for i in range(n)}
    return weights, {i: [(i - 1) % n, (i + 1) % n] for i in range(n)}


# ---------------------------------------------------------------------------------------------
# Settings and registry


def test_settings_defaults_and_mapping() -> None:
    s = AlgorithmSettings()
    assert (s.theta_u, s.theta_d, s.gamma, s.epsilon, s.stat_decay) == (0.1, 1.0, None, None, 1.0)
    t = AlgorithmSettings.from_mapping({"theta-u": 0.01, "gamma": "1e-3", "robust": "krum"})
    assert t.theta_u == 0.01 and t.gamma == 0.001 and t.robust == "krum"
    assert AlgorithmSettings.from_mapping(None) == s
    assert AlgorithmSettings.from_mapping(t.to_dict()) == t


@pytest.mark.parametrize(
    ("mapping", "field"),
    [
        ({"theta_x": 1}, "theta_x"),
        ({"theta_u": 0}, "theta_u"),
        ({"theta_u": 1.5}, "theta_u"),
        ({"theta_d": True}, "theta_d"),
        ({"selection": "largest"}, "selection"),
        ({"robust": "average"}, "robust"),
        ({"hops": 1.5}, "hops"),
        ({"gamma": "tiny"}, "gamma"),
        ({"tau": None}, "tau"),
        ({"epsilon": 1.0}, "epsilon"),  # without gamma
        ({"budget": 3.0}, "budget"),  # without epsilon
        ({"stat_decay": 0}, "stat_decay"),
    ],
)
def test_settings_errors_name_the_field(mapping: dict, field: str) -> None:
    with pytest.raises(ConfigError, match=field) as err:
        AlgorithmSettings.from_mapping(mapping)
    assert "\n" not in str(err.value)


def test_registry() -> None:
    s = AlgorithmSettings()
    for name in ("fedsgd", "fedavg", "dssgd"):
        assert make_coordinator_algorithm(name, np.zeros(4), s, RNG(0)).name == name
        assert make_peer_algorithm(name, s).name == name
        assert algorithm_mode(name) == "coordinator"
    for name in ("gossip-dssgd", "relay", "choco", "d-psgd", "gradient-tracking"):
        assert make_gossip_algorithm(name, 0, 4, s, {1: 0.5}).name == name
        assert algorithm_mode(name) == "ring"
    with pytest.raises(ConfigError, match="dssgd, fedavg, fedsgd"):
        make_coordinator_algorithm("fedprox", np.zeros(4), s, RNG(0))
    with pytest.raises(ConfigError, match="choco, d-psgd, gossip-dssgd, gradient-tracking, relay"):
        make_gossip_algorithm("dpsgd", 0, 4, s, {})
    with pytest.raises(ConfigError, match="unknown algorithm"):
        algorithm_mode("nope")
    dp = AlgorithmSettings(gamma=0.1, epsilon=1.0)
    with pytest.raises(ConfigError, match="differential privacy"):
        make_peer_algorithm("fedavg", dp)
    with pytest.raises(ConfigError, match="robust"):
        make_coordinator_algorithm("dssgd", np.zeros(4), AlgorithmSettings(robust="median"), RNG(0))


# ---------------------------------------------------------------------------------------------
# DSSGD


def test_dssgd_server_sums_and_counts() -> None:
    server = make_coordinator_algorithm(
        "dssgd", np.ones(10), AlgorithmSettings(theta_u=0.3), RNG(0)
    )
    assert not server.synchronous and server.local_work == "epochs"
    server.submit(Update("a", 0, sparse(10, {1: 0.5, 4: -1.0}), 10))
    server.submit(Update("b", 0, sparse(10, {1: 0.25, 7: 2.0}), 10))
    expected = np.ones(10, np.float32)
    expected[[1, 4, 7]] += [0.75, -1.0, 2.0]  # a sum, no 1/N averaging
    np.testing.assert_allclose(server.params, expected)
    np.testing.assert_array_equal(server.stat, [0, 2, 0, 0, 1, 0, 0, 1, 0, 0])


def test_dssgd_stat_decay() -> None:
    server = make_coordinator_algorithm(
        "dssgd", np.zeros(4), AlgorithmSettings(theta_u=0.5, stat_decay=0.5), RNG(0)
    )
    server.submit(Update("a", 0, sparse(4, {0: 1.0}), 1))
    server.submit(Update("b", 0, sparse(4, {1: 1.0}), 1))
    np.testing.assert_allclose(server.stat, [0.5, 1.0, 0.0, 0.0])


def test_dssgd_download_most_updated_fraction() -> None:
    s = AlgorithmSettings(theta_u=1.0, theta_d=0.3)
    server = make_coordinator_algorithm("dssgd", np.arange(10, dtype=np.float32), s, RNG(0))
    for coords in ([2, 5, 8], [5, 8], [8]):
        server.submit(Update("a", 0, sparse(10, dict.fromkeys(coords, 1.0)), 1))
    down = server.download()
    assert isinstance(down, SparseVector)
    assert down.indices.tolist() == [2, 5, 8]  # ceil(0.3 * 10) = 3 most-updated
    np.testing.assert_allclose(down.values, [3.0, 7.0, 11.0])
    # ties (all stat equal at the start) are broken the same way every time
    fresh = make_coordinator_algorithm("dssgd", np.zeros(10), s, RNG(1))
    assert fresh.download() == fresh.download() and fresh.download().nnz == 3


def test_dssgd_full_download_is_dense_copy() -> None:
    server = make_coordinator_algorithm("dssgd", np.ones(3), AlgorithmSettings(), RNG(0))
    down = server.download()
    assert isinstance(down, np.ndarray)
    down[0] = 5
    assert server.params[0] == 1  # a copy, not the live vector


def test_dssgd_server_refuses_bad_uploads_and_reclips() -> None:
    s = AlgorithmSettings(theta_u=0.2, gamma=0.1)
    server = make_coordinator_algorithm("dssgd", np.zeros(10), s, RNG(0))
    with pytest.raises(InvalidUpdate, match="at most 2"):
        server.submit(Update("a", 0, sparse(10, {0: 0.1, 1: 0.1, 2: 0.1}), 1))
    with pytest.raises(InvalidUpdate, match="size"):
        server.submit(Update("a", 0, sparse(11, {0: 0.1}), 1))
    with pytest.raises(InvalidUpdate, match="non-finite"):
        server.submit(Update("a", 0, sparse(10, {0: np.inf}), 1))
    with pytest.raises(InvalidUpdate):
        server.submit(Update("a", 0, np.zeros(10, np.float32), 1))  # dense: 10 > c = 2
    server.submit(Update("a", 0, sparse(10, {3: 5.0}), 1))
    assert server.params[3] == pytest.approx(0.1)


def test_dssgd_state_round_trip() -> None:
    s = AlgorithmSettings(theta_u=0.5, theta_d=0.5)
    server = make_coordinator_algorithm("dssgd", np.zeros(6), s, RNG(0))
    server.submit(Update("a", 0, sparse(6, {1: 1.0, 4: 2.0}), 1))
    server.end_round()
    other = make_coordinator_algorithm("dssgd", np.zeros(6), s, RNG(9))
    other.load_state(server.state())
    assert other.round == 1 and other.download() == server.download()
    np.testing.assert_array_equal(other.stat, server.stat)
    with pytest.raises(ConfigError, match="parameters"):
        other.load_state({"params": np.zeros(5, np.float32)})


def test_dssgd_peer_update_and_sparse_download() -> None:
    s = AlgorithmSettings(theta_u=0.25, gamma=1.0)
    peer = make_peer_algorithm("dssgd", s)
    assert peer.update_epsilon == 0.0
    start = np.zeros(8, np.float32)
    end = np.array([0.1, -3.0, 0.2, 0.0, 0.5, -0.05, 2.0, 0.0], np.float32)
    up = peer.make_update(start, end, RNG(0))
    assert up.indices.tolist() == [1, 6] and up.values.tolist() == [-1.0, 1.0]
    local = np.full(8, 7.0, np.float32)
    merged = peer.apply_download(local, sparse(8, {2: 1.0, 5: -1.0}))
    np.testing.assert_array_equal(merged, [7, 7, 1, 7, 7, -1, 7, 7])
    assert local[2] == 7.0  # the caller's array is untouched


# ---------------------------------------------------------------------------------------------
# FedAvg / FedSGD


def test_fedavg_weights_by_capped_sample_counts() -> None:
    deltas = [np.full(2, 1.0, np.float32), np.full(2, 2.0, np.float32), np.full(2, 4.0, np.float32)]
    counts = [100, 300, 1_000_000]

    def run(**kw: object) -> np.ndarray:
        server = make_coordinator_algorithm("fedavg", np.zeros(2), AlgorithmSettings(**kw), RNG(0))
        for i, (d, c) in enumerate(zip(deltas, counts)):
            server.submit(Update(f"p{i}", 0, d, c))
        assert server.pending == 3
        server.end_round()
        assert server.round == 1 and server.pending == 0
        return server.params

    np.testing.assert_allclose(run(sample_cap=300), (100 * 1 + 300 * 2 + 300 * 4) / 700)
    np.testing.assert_allclose(run(), (100 * 1 + 300 * 2 + 300 * 4) / 700)  # cap = median = 300
    np.testing.assert_allclose(
        run(sample_cap=10**9), (100 + 600 + 4_000_000) / 1_000_400, rtol=1e-6
    )
    np.testing.assert_allclose(run(sample_cap=300, server_lr=0.5), 0.5 * 1900 / 700)


def test_fedavg_refuses_stale_duplicate_and_bad_counts() -> None:
    server = make_coordinator_algorithm("fedavg", np.zeros(3), AlgorithmSettings(), RNG(0))
    server.submit(Update("a", 0, np.ones(3, np.float32), 5))
    with pytest.raises(InvalidUpdate, match="second"):
        server.submit(Update("a", 0, np.ones(3, np.float32), 5))
    with pytest.raises(InvalidUpdate, match="round"):
        server.submit(Update("b", 1, np.ones(3, np.float32), 5))
    with pytest.raises(InvalidUpdate, match="num_samples"):
        server.submit(Update("c", 0, np.ones(3, np.float32), 0))
    server.end_round()
    server.end_round()  # an empty round changes nothing
    np.testing.assert_allclose(server.params, 1.0)


def test_fedavg_robust_median() -> None:
    s = AlgorithmSettings(robust="median")
    server = make_coordinator_algorithm("fedavg", np.zeros(2), s, RNG(0))
    for i, v in enumerate([1.0, 1.1, 0.9, 1.05, -1000.0]):
        server.submit(Update(str(i), 0, np.full(2, v, np.float32), 10))
    server.end_round()
    np.testing.assert_allclose(server.params, 1.0)


def test_fedsgd_step() -> None:
    s = AlgorithmSettings(server_lr=0.1, sample_cap=10**6)
    server = make_coordinator_algorithm("fedsgd", np.ones(2), s, RNG(0))
    peer = make_peer_algorithm("fedsgd", s)
    assert server.local_work == "gradient"
    grads = [np.array([1.0, 0.0], np.float32), np.array([0.0, 4.0], np.float32)]
    for i, (g, n) in enumerate(zip(grads, [1, 3])):
        start = server.download()
        upload = peer.make_update(start, start - g, RNG(0))  # the runtime passes end = start − g
        np.testing.assert_allclose(upload, g)
        server.submit(Update(str(i), 0, upload, n))
    server.end_round()
    np.testing.assert_allclose(server.params, [1 - 0.1 * 0.25, 1 - 0.1 * 3.0])


def test_fedavg_peer_uploads_dense_delta() -> None:
    peer = make_peer_algorithm("fedavg", AlgorithmSettings())
    up = peer.make_update(np.ones(3, np.float32), np.array([2, 0, 1], np.float32), RNG(0))
    np.testing.assert_array_equal(up, [1, -1, 0])
    np.testing.assert_array_equal(peer.apply_download(np.zeros(3), np.ones(3)), np.ones(3))


# ---------------------------------------------------------------------------------------------
# Gossip and relay


def _gossip(name: str, n: int, size: int, **kw: object) -> dict:
    weights, _ = ring(n)
    s = AlgorithmSettings(**kw)
    return {i: make_gossip_algorithm(name, i, size, s, weights[i]) for i in range(n)}


def test_gossip_dssgd_adds_weighted_neighbour_selections() -> None:
    alg = make_gossip_algorithm(
        "gossip-dssgd", 0, 4, AlgorithmSettings(theta_u=1.0), {1: 1 / 3, 2: 1 / 3}
    )
    before, after = np.zeros(4, np.float32), np.array([1, 1, 1, 1], np.float32)
    (msg,) = alg.outgoing(before, after, 0, RNG(0))
    assert msg.origin == 0 and msg.round == 0 and msg.vector.nnz == 4
    assert alg.incoming(1, GossipMessage(1, 0, sparse(4, {0: 3.0}))) == []
    alg.incoming(2, GossipMessage(2, 0, sparse(4, {1: -3.0, 3: 6.0})))
    # x = after + Σ_j w_ij Δ̂_j: own full step plus a third of each neighbour's
    np.testing.assert_allclose(alg.mix(), [2, 0, 1, 3])


def test_gossip_renormalises_a_missing_neighbour() -> None:
    alg = make_gossip_algorithm(
        "gossip-dssgd", 0, 2, AlgorithmSettings(theta_u=1.0), {1: 1 / 3, 2: 1 / 3}
    )
    alg.outgoing(np.zeros(2), np.zeros(2), 0, RNG(0))
    alg.incoming(1, GossipMessage(1, 0, sparse(2, {0: 3.0})))
    # neighbour 2 is silent: weights divided by 1/3 + 1/3, so neighbour 1 counts 1/2
    np.testing.assert_allclose(alg.mix(), [1.5, 0.0])


def test_gossip_ignores_stale_and_future_messages_are_kept() -> None:
    alg = make_gossip_algorithm("gossip-dssgd", 0, 2, AlgorithmSettings(theta_u=1.0), {1: 0.5})
    alg.incoming(1, GossipMessage(1, 1, sparse(2, {1: 2.0})))  # round 1 arrives early
    alg.outgoing(np.zeros(2), np.zeros(2), 0, RNG(0))
    np.testing.assert_allclose(alg.mix(), [0, 0])
    alg.incoming(1, GossipMessage(1, 0, sparse(2, {0: 2.0})))  # round 0 is closed: stale
    alg.outgoing(np.zeros(2), np.zeros(2), 1, RNG(0))
    np.testing.assert_allclose(alg.mix(), [0, 1])


def test_gossip_difference_mix_preserves_the_average() -> None:
    n, size = 6, 50
    algs = _gossip("gossip-dssgd", n, size, theta_u=0.2, gossip_mix="difference")
    _, out = ring(n)
    rng = RNG(0)
    before = {i: rng.standard_normal(size).astype(np.float32) for i in range(n)}
    after = {i: before[i] + rng.standard_normal(size).astype(np.float32) for i in range(n)}
    new = simulate_round(algs, out, before, after, 0, rng)
    np.testing.assert_allclose(
        np.mean(list(new.values()), axis=0), np.mean(list(after.values()), axis=0), atol=1e-5
    )


def test_gossip_full_delta_from_consensus_is_a_mixing_step() -> None:
    """Doubly stochastic W, full Δ, common start: "difference" gives x_i = Σ_j W_ij after_j."""
    n, size = 5, 8
    algs = _gossip("gossip-dssgd", n, size, theta_u=1.0, gossip_mix="difference")
    _, out = ring(n)
    rng = RNG(1)
    start = rng.standard_normal(size).astype(np.float32)
    after = {i: start + rng.standard_normal(size).astype(np.float32) for i in range(n)}
    new = simulate_round(algs, out, dict.fromkeys(range(n), start), after, 0, rng)
    for i in range(n):
        mixed = (after[i] + after[(i - 1) % n] + after[(i + 1) % n]) / 3
        np.testing.assert_allclose(new[i], mixed, atol=1e-5)


def test_relay_forwards_up_to_hops_and_deduplicates() -> None:
    n, size = 8, 8
    algs = _gossip("relay", n, size, theta_u=1.0, hops=2)
    _, out = ring(n)
    before = {i: np.zeros(size, np.float32) for i in range(n)}
    after = {i: np.eye(size, dtype=np.float32)[i] for i in range(n)}  # peer i moves coordinate i
    new = simulate_round(algs, out, before, after, 0, RNG(0))
    x0 = new[0]
    assert x0[0] == pytest.approx(1.0)
    assert x0[1] == pytest.approx(1 / 3) and x0[7] == pytest.approx(1 / 3)  # neighbours: W
    assert x0[2] == pytest.approx(1 / 9) and x0[6] == pytest.approx(1 / 9)  # 2 hops: W·W, once
    assert x0[3] == 0 and x0[4] == 0 and x0[5] == 0  # beyond the hop limit


def test_relay_dedup_keeps_the_shortest_path_and_forwards_once() -> None:
    s = AlgorithmSettings(theta_u=1.0, hops=3)
    alg = make_gossip_algorithm("relay", 0, 3, s, {1: 0.25, 2: 0.25})
    alg.outgoing(np.zeros(3), np.zeros(3), 0, RNG(0))
    far = GossipMessage(5, 0, sparse(3, {2: 16.0}), hop=3, weight=0.25)
    near = GossipMessage(5, 0, sparse(3, {2: 16.0}), hop=2, weight=0.5)
    assert alg.incoming(1, far) == []  # hop limit reached: kept, not forwarded
    (fwd,) = alg.incoming(2, near)  # fewer hops: replaces the first copy, forwarded on
    assert fwd.hop == 3 and fwd.weight == pytest.approx(0.125) and fwd.origin == 5
    assert alg.incoming(1, near) == []  # same path length again: duplicate
    assert alg.incoming(1, GossipMessage(0, 0, sparse(3, {0: 1.0}))) == []  # own update echoed back
    # both neighbours silent: weights renormalised by self_weight 0.5; origin 5 counted once
    np.testing.assert_allclose(alg.mix(), [0, 0, 16 * 0.125 / 0.5])


# ---------------------------------------------------------------------------------------------
# CHOCO


def _choco_consensus(n: int, weights: dict, out: dict, theta: float, gamma: float, exchanges: int):
    size = 30
    s = AlgorithmSettings(theta_u=theta, choco_gamma=gamma, choco_steps=exchanges)
    algs = {i: make_gossip_algorithm("choco", i, size, s, weights[i]) for i in range(n)}
    rng = RNG(3)
    x = {i: rng.standard_normal(size).astype(np.float32) for i in range(n)}
    mean = np.mean(list(x.values()), axis=0)
    new = simulate_round(algs, out, x, x, 0, rng)
    return new, mean


def test_choco_full_compression_complete_graph_reaches_consensus() -> None:
    n = 5
    weights = {i: {j: 1 / n for j in range(n) if j != i} for i in range(n)}
    out = {i: [j for j in range(n) if j != i] for i in range(n)}
    new, mean = _choco_consensus(n, weights, out, theta=1.0, gamma=1.0, exchanges=2)
    for x in new.values():
        np.testing.assert_allclose(x, mean, atol=1e-5)


def test_choco_compressed_ring_converges_and_keeps_the_average() -> None:
    weights, out = ring(6)
    new, mean = _choco_consensus(6, weights, out, theta=0.3, gamma=0.5, exchanges=150)
    np.testing.assert_allclose(np.mean(list(new.values()), axis=0), mean, atol=1e-4)
    assert max(float(np.abs(x - mean).max()) for x in new.values()) < 1e-3


def test_choco_public_copies_stay_consistent_with_late_messages() -> None:
    s = AlgorithmSettings(theta_u=0.5, choco_steps=2)
    a = make_gossip_algorithm("choco", 0, 4, s, {1: 0.5})
    b = make_gossip_algorithm("choco", 1, 4, s, {0: 0.5})
    rng = RNG(0)
    (qa,) = a.outgoing(np.zeros(4), np.array([4, 3, 2, 1], np.float32), 0, rng)
    (qb,) = b.outgoing(np.zeros(4), np.array([1, 1, 1, 1], np.float32), 0, rng)
    b.incoming(0, qa)
    b.incoming(0, qa)  # duplicate: ignored
    a.mix()  # b's message is late for a's first exchange: a does not mix it...
    b.mix()
    a.incoming(1, qb)  # ...but folds it in when it arrives
    np.testing.assert_array_equal(a.neighbour_public[1], b.public)
    np.testing.assert_array_equal(b.neighbour_public[0], a.public)
    state = a.state()
    c = make_gossip_algorithm("choco", 0, 4, s, {1: 0.5})
    c.load_state(state)
    np.testing.assert_array_equal(c.neighbour_public[1], a.neighbour_public[1])


def test_choco_snapshot_resynchronises_a_copy_after_a_lost_message() -> None:
    """A lost q leaves the receiver's copy apart for good; the sender's snapshot (its whole public
    copy, this exchange's q included) replaces it, and the lost q arriving after all is ignored."""
    s = AlgorithmSettings(theta_u=0.5, choco_steps=2)
    a = make_gossip_algorithm("choco", 0, 4, s, {1: 0.5})
    b = make_gossip_algorithm("choco", 1, 4, s, {0: 0.5})
    rng = RNG(0)
    (lost,) = a.outgoing(np.zeros(4), np.array([4, 3, 2, 1], np.float32), 0, rng)
    a.mix()
    assert not np.array_equal(b.neighbour_public[0], a.public)
    a.next_outgoing(rng)
    snapshot = a.snapshot()
    assert snapshot.snapshot and snapshot.vector.nnz == 4 and snapshot.step == 1
    b.incoming(0, snapshot)
    np.testing.assert_array_equal(b.neighbour_public[0], a.public)
    b.incoming(0, lost)  # it turns up after all: already contained in the snapshot
    np.testing.assert_array_equal(b.neighbour_public[0], a.public)
    assert make_gossip_algorithm("gossip-dssgd", 0, 4, s, {1: 0.5}).snapshot() is None


def test_choco_ignores_stale_snapshots_and_keeps_a_copy_started_before_the_link_switch() -> None:
    s = AlgorithmSettings(theta_u=0.5, choco_steps=3)
    a = make_gossip_algorithm("choco", 0, 4, s, {1: 0.5})
    b = make_gossip_algorithm("choco", 1, 4, s, {})  # a is not b's neighbour yet
    rng = RNG(0)
    a.outgoing(np.zeros(4), np.array([4, 3, 2, 1], np.float32), 0, rng)
    b.outgoing(np.zeros(4), np.zeros(4, np.float32), 0, rng)
    old = a.snapshot()
    a.next_outgoing(rng)
    b.next_outgoing(rng)
    new = a.snapshot()
    b.incoming(0, new)  # starts a copy although a is no neighbour of b (yet)
    b.incoming(0, old)  # older than the copy it has: ignored
    np.testing.assert_array_equal(b.neighbour_public[0], a.public)
    np.testing.assert_array_equal(b.mix(), np.zeros(4))  # delivered in this exchange, but no neighbour: not mixed
    relinked = make_gossip_algorithm("choco", 1, 4, s, {0: 0.5})
    relinked.adopt(b)  # the links switched: the copy and what it already contains carry over
    np.testing.assert_array_equal(relinked.neighbour_public[0], a.public)
    relinked.incoming(0, old)
    np.testing.assert_array_equal(relinked.neighbour_public[0], a.public)
    fewer = make_gossip_algorithm("choco", 1, 4, s, {2: 0.5})
    fewer.adopt(relinked)  # a former neighbour's copy is not carried along
    assert set(fewer.neighbour_public) == {2}


# ---------------------------------------------------------------------------------------------
# Convergence with a training loop: least squares over 10 peers, 20 samples each for 40
# unknowns, so no peer can solve the problem alone.

D, PEERS, LOCAL = 40, 10, 20


class Problem:
    def __init__(self, seed: int = 0):
        rng = RNG(seed)
        self.w_star = rng.standard_normal(D).astype(np.float32)
        self.x = [rng.standard_normal((LOCAL, D)).astype(np.float32) for _ in range(PEERS)]
        self.y = [
            x @ self.w_star + 0.01 * rng.standard_normal(LOCAL).astype(np.float32) for x in self.x
        ]
        self.all_x, self.all_y = np.concatenate(self.x), np.concatenate(self.y)
        self.rng = rng

    def loss(self, w: np.ndarray) -> float:
        return float(0.5 * np.mean((self.all_x @ w - self.all_y) ** 2))

    def epoch(self, w: np.ndarray, k: int, lr: float = 0.05, batch: int = 5) -> np.ndarray:
        w = np.array(w, dtype=np.float32, copy=True)
        for idx in np.array_split(self.rng.permutation(LOCAL), LOCAL // batch):
            xb, yb = self.x[k][idx], self.y[k][idx]
            w -= np.float32(lr) * xb.T @ (xb @ w - yb) / len(idx)
        return w

    def gradient(self, w: np.ndarray, k: int) -> np.ndarray:
        return self.x[k].T @ (self.x[k] @ w - self.y[k]) / LOCAL


def _coordinator_run(
    name: str, settings: AlgorithmSettings, rounds: int = 10
) -> tuple[float, float]:
    """Round robin: every peer downloads, works, uploads; sync servers aggregate per round."""
    p = Problem()
    w0 = np.zeros(D, np.float32)
    server = make_coordinator_algorithm(name, w0, settings, RNG(1))
    peer = make_peer_algorithm(name, settings)
    local = [w0.copy() for _ in range(PEERS)]
    for _ in range(rounds):
        for k in range(PEERS):
            start = peer.apply_download(local[k], server.download())
            if server.local_work == "gradient":
                end = start - p.gradient(start, k)
            else:
                end = p.epoch(start, k)
            local[k] = end
            server.submit(Update(str(k), server.round, peer.make_update(start, end, p.rng), LOCAL))
        server.end_round()
    return p.loss(w0), p.loss(server.params)


def _standalone_loss(rounds: int = 10) -> float:
    p = Problem()
    ws = [np.zeros(D, np.float32) for _ in range(PEERS)]
    for _ in range(rounds):
        ws = [p.epoch(w, k) for k, w in enumerate(ws)]
    return float(np.mean([p.loss(w) for w in ws]))


def _ring_run(name: str, settings: AlgorithmSettings, rounds: int = 10) -> tuple[float, float]:
    p = Problem()
    weights, out = ring(PEERS)
    algs = {i: make_gossip_algorithm(name, i, D, settings, weights[i]) for i in range(PEERS)}
    ws = {i: np.zeros(D, np.float32) for i in range(PEERS)}
    initial = p.loss(ws[0])
    for r in range(rounds):
        after = {i: p.epoch(ws[i], i) for i in range(PEERS)}
        ws = simulate_round(algs, out, ws, after, r, p.rng)
    return initial, float(np.mean([p.loss(w) for w in ws.values()]))


@pytest.mark.parametrize(
    ("name", "settings", "ratio"),
    [
        ("fedavg", AlgorithmSettings(), 0.05),
        ("fedsgd", AlgorithmSettings(server_lr=0.5), 0.05),
        ("dssgd", AlgorithmSettings(theta_u=0.1), 0.05),
        # random coordinates above τ carry less per upload than the largest ones
        ("dssgd", AlgorithmSettings(theta_u=0.1, selection="random-threshold", tau=1e-3), 0.15),
    ],
)
def test_coordinator_strategies_train(name: str, settings: AlgorithmSettings, ratio: float) -> None:
    initial, final = _coordinator_run(name, settings)
    assert final < ratio * initial


def test_ring_strategies_train_and_beat_standalone() -> None:
    standalone = _standalone_loss()
    initial, gossip = _ring_run("gossip-dssgd", AlgorithmSettings(theta_u=0.1))
    _, relay = _ring_run("relay", AlgorithmSettings(theta_u=0.1, hops=3))
    _, choco = _ring_run("choco", AlgorithmSettings(theta_u=0.1, choco_gamma=0.5))
    assert gossip < 0.35 * initial and gossip < 0.85 * standalone
    assert relay < gossip  # a wider neighbourhood helps
    assert choco < 0.1 * initial  # consensus: every peer approaches the global solution
