"""Decentralised training (issue 16): exponential graphs and schedules, D-PSGD, CHOCO random-k,
exchanges every k mini-batches in memory and over TCP, synchronous and asynchronous."""

from __future__ import annotations

import numpy as np
import pytest
import trio
from sklearn.datasets import load_digits

from ringfl.algorithms import AlgorithmSettings, ChocoGossip, make_gossip_algorithm, simulate_round
from ringfl.config import TrainingConfig
from ringfl.errors import ConfigError, TopologyError
from ringfl.model import load_spec
from ringfl.model.runtime import shared_model
from ringfl.peer import PeerOptions
from ringfl.ring import Bootstrap, RingPeer, schedule_info
from ringfl.topology import (
    averaging_error,
    describe,
    from_mapping,
    generate,
    load_topology,
    period_product,
    relink_without,
)
from ringfl.transport import MemoryNetwork, TcpNetwork
from tests.helpers import demo_config

# --- exponential graphs and schedules --------------------------------------------------------


@pytest.mark.parametrize("n", [2, 4, 8, 16, 32, 64])
def test_one_peer_exponential_graph_averages_exactly_after_log2_n_exchanges(n):
    top = generate("one-peer-exponential", n)
    assert len(top.schedule) == int(np.log2(n))
    for w in top.schedule:  # one message per peer per exchange, weights 1/2 and 1/2
        off = w - np.diag(np.diag(w))
        assert (np.count_nonzero(off, axis=0) == 1).all() and (np.count_nonzero(off, axis=1) == 1).all()
        assert np.allclose(w.sum(axis=0), 1) and np.allclose(w.sum(axis=1), 1)
    x = np.random.default_rng(n).normal(size=(n, 5))
    mixed = x
    for t in range(len(top.schedule) - 1):
        mixed = top.phase(t) @ mixed
    assert not np.allclose(mixed, x.mean(axis=0))  # one exchange short: not yet
    mixed = top.phase(len(top.schedule) - 1) @ mixed
    assert np.allclose(mixed, x.mean(axis=0), atol=1e-12)
    assert averaging_error(period_product(top.schedule)) < 1e-12
    assert "max |W - 11'/n| 0.00e+00" in describe(top)


def test_one_peer_exponential_at_other_sizes_mixes_but_is_not_exact():
    top = generate("one-peer-exponential", 12)
    product = period_product(top.schedule)
    assert len(top.schedule) == 4 and np.allclose(product.sum(axis=1), 1)
    assert 0 < averaging_error(product) < 0.1


def test_static_exponential_graph_links_powers_of_two():
    top = generate("exponential", 16)
    assert top.out_neighbours(0) == [1, 2, 4, 8, 12, 14, 15]  # undirected: ±1, ±2, ±4, 8
    directed = generate("exponential", 16, directed=True)
    assert directed.out_neighbours(3) == [4, 5, 7, 11]
    assert not directed.schedule


def test_schedule_from_a_file_is_validated_and_relinking_drops_it(tmp_path):
    path = tmp_path / "pairs.yaml"
    path.write_text("nodes: 4\nschedule:\n  - [[0, 1], [1, 0], [2, 3], [3, 2]]\n"
                    "  - [[0, 2], [2, 0], [1, 3], [3, 1]]\n")
    top = load_topology(path)
    assert len(top.schedule) == 2 and averaging_error(period_product(top.schedule)) < 1e-12
    assert sorted(top.graph.edges) == [(0, 1), (0, 2), (1, 3), (2, 3)]  # undirected union of the phases
    assert not relink_without(top, {3}).schedule  # a dead peer: the survivors mix statically
    bad = [
        ({"nodes": 3, "schedule": [[[0, 5]]]}, "schedule phase 0: edge [0, 5]: unknown node id 5"),
        ({"nodes": 3, "schedule": []}, "'schedule' must be a non-empty list"),
        ({"nodes": 3, "schedule": [{"edges": [[0, 1]]}]}, "schedule phase 0: expected a list"),
        ({"nodes": 4, "schedule": [[[0, 1], [1, 0]]]}, "graph is disconnected"),  # nodes 2 and 3 never mix
        ({"nodes": 4, "generator": {"kind": "one-peer-exponential"}, "schedule": [[[0, 1]]]},
         "makes its own schedule"),
    ]
    for data, message in bad:
        with pytest.raises(TopologyError, match=message.replace("[", r"\[").replace("]", r"\]")):
            from_mapping(data)


def test_schedule_info_gives_each_node_its_phases():
    top = generate("one-peer-exponential", 8)
    labels = list(top.labels)
    info = schedule_info(top, 0, labels)
    assert [p.outs for p in info] == [["1"], ["2"], ["4"]]
    assert [p.ins for p in info] == [{"7": 0.5}, {"6": 0.5}, {"4": 0.5}]
    assert schedule_info(generate("ring", 8), 0, labels) == []


# --- D-PSGD and CHOCO random-k ------------------------------------------------------------------


def _dpsgd(top, phase=0):
    w = top.phase(phase)
    return {i: make_gossip_algorithm("d-psgd", i, 6, AlgorithmSettings(),
                                     {j: w[i, j] for j in np.flatnonzero(w[i]) if j != i}, w[i, i])
            for i in range(top.n)}


def test_dpsgd_mixes_full_models_with_the_topology_weights():
    rng = np.random.default_rng(0)
    for top in (generate("ring", 5), generate("torus", 9), generate("star", 5)):
        x = rng.normal(size=(top.n, 6)).astype(np.float32)
        out = simulate_round(_dpsgd(top), {i: top.out_neighbours(i) for i in range(top.n)},
                             dict(enumerate(x)), dict(enumerate(x)), 1, rng)
        assert np.allclose(np.stack([out[i] for i in range(top.n)]), top.weights @ x, atol=1e-6)


def test_dpsgd_follows_a_schedule_to_the_exact_average_and_renormalises_a_missing_neighbour():
    top = generate("one-peer-exponential", 8)
    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 6)).astype(np.float32)
    models = dict(enumerate(x))
    for t in range(3):
        outs = {i: [int(j) for j in np.flatnonzero(top.phase(t)[:, i]) if j != i] for i in range(8)}
        models = simulate_round(_dpsgd(top, t), outs, models, models, t + 1, rng)
    assert np.allclose(np.stack(list(models.values())), x.mean(axis=0), atol=1e-6)
    lonely = _dpsgd(generate("ring", 5))[0]  # neighbour 4 never delivers: mix with 1 alone, renormalised
    lonely.outgoing(x[0], x[0], 1, rng)
    lonely.incoming(1, simulate_message(1, x[1]))
    assert np.allclose(lonely.mix(), (x[0] + x[1]) / 2, atol=1e-6)


def simulate_message(origin, vector):
    from ringfl.algorithms import GossipMessage
    from ringfl.algorithms.gossip import as_sparse

    return GossipMessage(origin, 1, as_sparse(np.asarray(vector, np.float32)))


def test_choco_random_k_sends_k_uniform_coordinates_and_topk_the_largest():
    x = np.linspace(-1, 1, 1000, dtype=np.float32)
    initial = np.zeros(1000, np.float32)
    chosen = []
    for seed in (0, 1):
        choco = ChocoGossip(0, 1000, AlgorithmSettings(theta_u=0.05, compression="randomk"), {1: 0.5},
                            initial=initial)
        (message,) = choco.outgoing(initial, x, 1, np.random.default_rng(seed))
        assert message.vector.nnz == 50
        assert np.array_equal(message.vector.values, x[message.vector.indices])
        chosen.append(set(message.vector.indices.tolist()))
    assert chosen[0] != chosen[1]
    assert max(chosen[0]) - min(chosen[0]) > 500  # spread over the vector, not the largest |x|
    topk = ChocoGossip(0, 1000, AlgorithmSettings(theta_u=0.05), {1: 0.5}, initial=initial)
    (message,) = topk.outgoing(initial, x, 1, np.random.default_rng(0))
    assert np.abs(message.vector.values).min() >= np.sort(np.abs(x))[-50]
    with pytest.raises(ConfigError, match="compression"):
        AlgorithmSettings(compression="bottomk")


def test_exchange_every_must_be_a_positive_count():
    assert AlgorithmSettings(exchange_every=None).exchange_every is None
    with pytest.raises(ConfigError, match="exchange_every"):
        AlgorithmSettings(exchange_every=0)


# --- training in slices -------------------------------------------------------------------------


async def test_training_in_slices_continues_one_shuffled_sequence():
    data = load_digits()
    x, y = (data.data[:500] / 16).astype(np.float32), data.target[:500].astype(np.int64)
    model = shared_model(load_spec("digits-mlp"))
    start = model.init_params(0)
    whole = model.train_sync(start, x, y, lr=0.1, batch_size=32, epochs=2, seed=7)
    params, seen = start, 0
    for first, steps in ((0, 5), (5, 11), (16, 1), (17, 15)):  # 16 batches per epoch, 32 in all
        part = await model.train_steps(params, x, y, lr=0.1, batch_size=32, start=first, steps=steps, seed=7)
        params, seen = part.params, seen + part.samples
    assert seen == whole.samples == 1000
    assert np.allclose(params, whole.params, atol=1e-6)
    other = await model.train_steps(start, x, y, lr=0.1, batch_size=32, start=0, steps=5, seed=8)
    first = await model.train_steps(start, x, y, lr=0.1, batch_size=32, start=0, steps=5, seed=7)
    assert not np.allclose(other.params, first.params)


# --- the ring runtime ---------------------------------------------------------------------------


async def _run(topology, algorithm, settings, *, network=None, rounds=2, **changes):
    network = network or MemoryNetwork()
    tcp = isinstance(network, TcpNetwork)
    config = demo_config(algorithm=algorithm, rounds=rounds, algorithm_settings=settings,
                         host="127.0.0.1" if tcp else "", training=TrainingConfig(lr=0.2, batch_size=16),
                         **changes)
    bootstrap = Bootstrap(config, network, topology=topology)
    peers = []
    async with trio.open_nursery() as nursery:
        address = await nursery.start(bootstrap.run)
        for i, label in enumerate(topology.labels):
            peers.append(RingPeer(network, PeerOptions(coordinator=address, name=label, peers=topology.n, index=i,
                                                       run_id=config.run_id, eval_samples=200)))
            nursery.start_soon(peers[-1].run)
    return bootstrap, peers


def _dense_message_bytes(peer) -> int:
    return 4 * peer.run_info.num_params


async def test_exchange_every_k_batches_on_a_one_peer_exponential_graph_in_memory():
    """digits, 8 peers: 1437 / 8 ≈ 180 samples ≈ 12 batches of 16, so every 4 batches makes 3
    exchanges a round, each one dense model to one peer (the schedule's phase)."""
    top = generate("one-peer-exponential", 8)
    bootstrap, peers = await _run(top, "d-psgd", {"exchange_every": 4}, rounds=3)
    history = bootstrap.history
    assert [r["round"] for r in history] == [1, 2, 3] and all(r["peers_reporting"] == 8 for r in history)
    assert history[-1]["accuracy"] > 0.6 and history[-1]["accuracy"] > history[0]["accuracy"]
    for peer in peers:
        assert len(peer.neighbourhood.links.phases) == 3
        last = peer.history[-1]
        assert last["exchanges"] == 3 and len(last["bytes_sent_exchanges"]) == 3
        size = _dense_message_bytes(peer)
        assert all(size < sent < 1.05 * size for sent in last["bytes_sent_exchanges"])  # one message
        assert last["bytes_sent_round"] == pytest.approx(sum(last["bytes_sent_exchanges"]), rel=0.02)  # + acks
        i = int(peer.name)  # links to i + 2^t were dialled, from i - 2^t served: six neighbours
        assert set(last["bytes_by_neighbour"]) == {str((i + h) % 8) for h in (1, 2, 4, -1, -2, -4)}


async def test_final_consensus_on_a_one_peer_exponential_graph_leaves_every_peer_on_the_average():
    top = generate("one-peer-exponential", 8)
    bootstrap, peers = await _run(top, "d-psgd", {"exchange_every": 4, "final_consensus": 3}, rounds=2)
    models = np.stack([p.params for p in peers])
    assert np.allclose(models, models.mean(axis=0), atol=1e-5)
    assert len({round(p.history[-1]["accuracy"], 6) for p in peers}) == 1
    assert [p.history[-1]["exchanges"] for p in peers] == [3 + 3] * 8
    assert all(p.history[0]["exchanges"] == 3 for p in peers)  # only after the last round
    without, others = await _run(top, "d-psgd", {"exchange_every": 4}, rounds=2)
    assert not np.allclose(np.stack([p.params for p in others]), models.mean(axis=0), atol=1e-5)


@pytest.mark.parametrize("algorithm", ["d-psgd", "gossip-dssgd", "relay", "choco", "gradient-tracking"])
async def test_exchange_every_works_for_every_ring_algorithm(algorithm):
    once, _ = await _run(generate("ring", 6), algorithm, {"theta_u": 0.1, "choco_steps": 1})
    often, peers = await _run(generate("ring", 6), algorithm, {"theta_u": 0.1, "choco_steps": 1,
                                                               "exchange_every": 3})
    assert all(r["peers_reporting"] == 6 for r in often.history)
    exchanges = peers[0].history[-1]["exchanges"]
    assert exchanges == 5  # 1437 / 6 ≈ 240 samples = 15 batches of 16
    ratio = often.history[-1]["bytes_round"] / once.history[-1]["bytes_round"]
    assert 0.7 * exchanges < ratio < 1.3 * exchanges
    assert often.history[-1]["accuracy"] > 0.5


async def test_exchange_every_over_tcp_and_asynchronously():
    bootstrap, peers = await _run(generate("one-peer-exponential", 4), "d-psgd", {"exchange_every": 6},
                                  network=TcpNetwork())
    assert all(r["peers_reporting"] == 4 for r in bootstrap.history)
    assert peers[0].history[-1]["exchanges"] == 4  # 359 samples = 23 batches of 16
    assert bootstrap.history[-1]["accuracy"] > bootstrap.history[0]["accuracy"]
    asynchronous, peers = await _run(generate("ring", 6), "gossip-dssgd", {"theta_u": 0.1, "exchange_every": 3},
                                     order="async")
    assert [r["round"] for r in asynchronous.history] == [1, 2]
    assert peers[0].history[-1]["exchanges"] == 5 and asynchronous.history[-1]["accuracy"] > 0.5


def test_gradient_tracking_moves_every_peer_along_the_average_descent():
    """Heterogeneous constant descents c_i (each peer's data pulls elsewhere): D-PSGD's peers stay
    apart for good; gradient tracking's agree and all move by mean(c) per exchange, as FedAvg."""
    top = generate("ring", 6)
    rng = np.random.default_rng(2)
    pulls = rng.normal(size=(6, 4)).astype(np.float32)
    outs = {i: top.out_neighbours(i) for i in range(6)}
    spread = {}
    for name in ("d-psgd", "gradient-tracking"):
        algs = {i: make_gossip_algorithm(name, i, 4, AlgorithmSettings(), top.neighbour_weights(i))
                for i in range(6)}
        x = {i: np.zeros(4, np.float32) for i in range(6)}
        for t in range(60):
            x = simulate_round(algs, outs, x, {i: x[i] - pulls[i] for i in range(6)}, t + 1, rng)
        models = np.stack([x[i] for i in range(6)])
        spread[name] = float(np.abs(models - models.mean(axis=0)).max())
        assert np.allclose(models.mean(axis=0), -60 * pulls.mean(axis=0), atol=1e-3)  # W doubly stochastic
    assert spread["gradient-tracking"] < 1e-3 < 0.5 < spread["d-psgd"]


def test_topology_show_reports_the_schedules_mixing(tmp_path, capsys):
    from ringfl.cli import main

    path = tmp_path / "exp.yaml"
    path.write_text("nodes: 16\ngenerator: {kind: one-peer-exponential}\n")
    assert main(["topology", "show", str(path)]) == 0
    out = capsys.readouterr().out
    assert "schedule: 4 phases, one per exchange, cyclic; at most 1 message(s) per peer per exchange" in out
    assert "one period: spectral gap 1.0000, max |W - 11'/n| 0.00e+00" in out
