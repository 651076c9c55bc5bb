"""Ring / topology mode in memory: every exchange algorithm learns on a 32-peer ring."""

from __future__ import annotations

import numpy as np
import pytest
import trio

from ringfl.config import TrainingConfig
from ringfl.peer import PeerOptions
from ringfl.protocol import AckReason, Neighbour
from ringfl.protocol.payloads import GossipUpdate, NeighbourTable
from ringfl.ring import (
    Bootstrap,
    Neighbourhood,
    RingPeer,
    forward_targets,
    neighbour_list,
    origins_within,
)
from ringfl.topology import generate
from ringfl.transport import MemoryNetwork
from ringfl.vectors import SparseVector
from tests.helpers import demo_config


async def run_ring(topology, algorithm, rounds=3, settings=None, **changes):
    network = MemoryNetwork()
    config = demo_config(algorithm=algorithm, rounds=rounds, algorithm_settings=settings or {"theta_u": 0.1},
                         **changes)
    bootstrap = Bootstrap(config, network, topology=topology)
    peers = []
    async with trio.open_nursery() as nursery:
        address = await nursery.start(bootstrap.run)
        for i, label in enumerate(topology.labels):
            peer = RingPeer(network, PeerOptions(coordinator=address, name=label, peers=topology.n, index=i,
                                                 run_id=config.run_id, eval_samples=200))
            peers.append(peer)
            nursery.start_soon(peer.run)
    return bootstrap, peers


@pytest.mark.parametrize("algorithm", ["gossip-dssgd", "relay", "choco"])
async def test_32_peer_ring_learns(algorithm):
    bootstrap, peers = await run_ring(generate("ring", 32), algorithm, rounds=3,
                                      settings={"theta_u": 0.1, "choco_gamma": 0.5},
                                      training=TrainingConfig(lr=0.2, batch_size=16))
    history = bootstrap.history
    assert [r["round"] for r in history] == [1, 2, 3]
    assert all(r["peers_reporting"] == 32 for r in history)
    assert history[-1]["accuracy"] > history[0]["accuracy"] + 0.05, [r["accuracy"] for r in history]
    assert history[-1]["accuracy"] > 0.3
    assert history[-1]["bytes"] > history[0]["bytes"] > 0
    assert all(len(p.history) == 3 for p in peers)
    links = peers[5].history[-1]["bytes_by_neighbour"]  # ring: both directions with 4 and 6
    assert set(links) == {"4", "6"} and all(sent > 0 and received > 0 for sent, received in links.values())


@pytest.mark.parametrize("private", [False, True])
async def test_ring_numericsparse_noise_is_not_derived_from_the_public_run_seed(private):
    """As in coordinator mode: a plain synchronous ring repeats exactly; with ε the noise differs."""
    settings = {"theta_u": 0.1, "gamma": 0.05, **({"epsilon": 10.0} if private else {})}
    finals = []
    for _ in range(2):
        _, peers = await run_ring(generate("ring", 3), "gossip-dssgd", rounds=1, settings=settings, order="sync")
        finals.append(np.concatenate([p.params for p in peers]))
    gap = float(np.abs(finals[0] - finals[1]).max())  # plain: bit for bit (mixing sums in origin order)
    assert gap > 1e-3 if private else gap == 0.0


async def test_relay_waits_for_two_hop_origins_and_sends_only_along_shortest_paths():
    """On a ring each peer sends its own selection both ways and passes each neighbour's on to the
    other side only (twice gossip's bytes, not three times); on a complete graph everyone is one
    hop away, so relaying costs nothing over gossip."""
    for topology, ratio in ((generate("ring", 8), 2.0), (generate("complete", 6), 1.0)):
        gossip, _ = await run_ring(topology, "gossip-dssgd", rounds=2)
        relay, peers = await run_ring(topology, "relay", rounds=2, settings={"theta_u": 0.1, "hops": 2})
        assert relay.history[-1]["bytes_round"] == pytest.approx(ratio * gossip.history[-1]["bytes_round"], rel=0.05)
        assert all(r["peers_reporting"] == topology.n for r in relay.history)


def test_relay_forward_targets_follow_shortest_paths():
    ring = generate("ring", 8)
    assert forward_targets(ring, 0, 2) == {1: [7], 7: [1]}
    assert forward_targets(ring, 0, 3) == {1: [7], 7: [1], 2: [7], 6: [1]}
    assert forward_targets(ring, 0, 1) == {}
    assert all(not targets for targets in forward_targets(generate("complete", 6), 0, 2).values())
    directed = generate("ring", 6, directed=True)  # 5 -> 0 -> 1: node 0 passes 5's on to 1
    assert forward_targets(directed, 0, 2) == {5: [1]}


def test_neighbour_lists_and_expected_origins():
    ring = generate("ring", 8)
    labels = list(ring.labels)
    links = neighbour_list(ring, 0, labels, {label: f"addr{label}" for label in labels})
    assert sorted(n.peer_id for n in links) == ["1", "7"]
    assert all(n.weight == pytest.approx(1 / 3) and n.address for n in links)
    assert origins_within(ring, 0, 1) == [1, 7]
    assert origins_within(ring, 0, 2) == [1, 2, 6, 7]
    directed = generate("ring", 8, directed=True)
    links = {n.peer_id: n for n in neighbour_list(directed, 0, labels, {label: "a" for label in labels})}
    assert links["7"].weight > 0 and not links["7"].address  # in-neighbour: mixed, not dialled
    assert links["1"].address and links["1"].weight == 0  # out-neighbour: dialled, not mixed


@pytest.mark.parametrize("algorithm", ["gossip-dssgd", "choco"])
async def test_a_peer_that_dies_is_routed_around_and_re_links_when_it_returns(algorithm):
    ring = generate("ring", 6)
    network = MemoryNetwork()
    config = demo_config(algorithm=algorithm, rounds=6, round_timeout=3.0,
                         algorithm_settings={"theta_u": 0.1, "choco_gamma": 0.5})
    bootstrap = Bootstrap(config, network, topology=ring)
    peers: dict[str, RingPeer] = {}

    def peer(label):
        peers[label] = RingPeer(network, PeerOptions(coordinator=address, name=label, peers=6, index=int(label),
                                                     run_id="test", eval_samples=100))
        return peers[label]

    async def wait_for(condition):
        with trio.fail_after(60):
            while not condition():
                await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        address = await nursery.start(bootstrap.run)
        victim_scope = trio.CancelScope()

        async def victim():
            with victim_scope:
                await peer("2").run()

        for label in ring.labels:
            nursery.start_soon(victim if label == "2" else peer(label).run)
        await wait_for(lambda: len(bootstrap.history) >= 1)
        victim_scope.cancel()  # a crash: its connections drop
        await wait_for(lambda: len(bootstrap.history) >= 3)
        nursery.start_soon(peer("2").run)  # it comes back
    history = bootstrap.history
    assert [r["round"] for r in history] == [1, 2, 3, 4, 5, 6]
    assert history[2]["dead"] == ["2"] and history[2]["peers_reporting"] == 5
    assert history[-1]["dead"] == [] and history[-1]["peers_reporting"] == 6  # re-linked
    if algorithm == "choco":  # lost messages and rebuilt state were resynchronised: copies agree
        for label, p in peers.items():
            for j in p.algorithm.weights:  # the current neighbours (copies of former ones may age)
                copy = p.algorithm.neighbour_public[j]
                np.testing.assert_array_equal(copy, peers[p.neighbourhood.label(j)].algorithm.public, f"{label}'s copy of {j}")


async def test_ring_without_a_bootstrap_uses_the_topology_addresses_and_a_run_config():
    from ringfl.topology import load_topology

    topology = load_topology("topologies/ring-standalone.yaml")
    config = demo_config(algorithm="gossip-dssgd", rounds=3, round_timeout=10.0, algorithm_settings={"theta_u": 0.1})
    network = MemoryNetwork()  # the topology's host:port strings serve as in-memory addresses
    peers = [RingPeer(network, PeerOptions(coordinator="", name=label, run_id="test", eval_samples=200),
                      without_bootstrap=(topology, config)) for label in topology.labels]
    async with trio.open_nursery() as nursery:
        for peer in peers:
            nursery.start_soon(peer.run)
    for peer in peers:
        assert [m["round"] for m in peer.history] == [1, 2, 3]
        assert peer.history[-1]["bytes_received"] > 0  # it heard from its neighbours
    accuracy = [sum(p.history[r]["accuracy"] for p in peers) / 4 for r in range(3)]
    assert accuracy[-1] > accuracy[0]


async def test_asynchronous_ring_never_waits_for_a_silent_neighbour():
    """order: async — peers mix whatever arrived; a neighbour that never sends costs no waiting
    (synchronous rounds would wait out the 30 s deadline every round)."""

    class SilentPeer(RingPeer):
        async def _send_all(self, messages, round_, step):
            await trio.lowlevel.checkpoint()

    ring = generate("ring", 6)
    network = MemoryNetwork()
    config = demo_config(algorithm="gossip-dssgd", rounds=3, order="async", round_timeout=30.0,
                         algorithm_settings={"theta_u": 0.1})
    bootstrap = Bootstrap(config, network, topology=ring)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(bootstrap.run)
        for i, label in enumerate(ring.labels):
            cls = SilentPeer if label == "0" else RingPeer
            nursery.start_soon(cls(network, PeerOptions(coordinator=address, name=label, peers=6, index=i,
                                                        run_id="test", eval_samples=200)).run)
    assert [r["round"] for r in bootstrap.history] == [1, 2, 3]
    assert bootstrap.history[-1]["seconds"] < 20
    assert bootstrap.history[-1]["accuracy"] > bootstrap.history[0]["accuracy"]


async def test_robust_ring_mixing_resists_a_scaled_attacker():
    """One peer of a ring sends its update x 100: norm clipping bounds what its neighbours mix in,
    and the coordinate-wise median of (own, neighbours) outvotes it."""
    async def run(settings):
        ring = generate("ring", 6)
        network = MemoryNetwork()
        config = demo_config(algorithm="gossip-dssgd", rounds=3, algorithm_settings=settings)
        bootstrap = Bootstrap(config, network, topology=ring)
        async with trio.open_nursery() as nursery:
            address = await nursery.start(bootstrap.run)
            for i, label in enumerate(ring.labels):
                nursery.start_soon(RingPeer(network, PeerOptions(
                    coordinator=address, name=label, peers=6, index=i, run_id="test", eval_samples=300,
                    attack="scale:100" if label == "0" else None)).run)
        return bootstrap.history[-1]

    plain = await run({"theta_u": 0.1})
    clipped = await run({"theta_u": 0.1, "clip_norm": 0.5})
    median = await run({"theta_u": 0.1, "robust": "median"})
    assert clipped["accuracy"] > plain["accuracy"] + 0.1, (plain["accuracy"], clipped["accuracy"])
    assert median["accuracy"] > plain["accuracy"] + 0.1, (plain["accuracy"], median["accuracy"])


def test_late_messages_reach_choco_in_exchange_order():
    """Messages for exchanges already mixed wait in one inbox keyed by (round, step) for all
    senders; CHOCO must see them in exchange order (a snapshot before the q that follows it)."""

    class Recorder:
        keeps_copies = True

        def __init__(self):
            self.seen = []

        def incoming(self, sender, message):
            self.seen.append((message.round, message.step))
            return []

    hood = Neighbourhood("0")
    hood.apply((), 1, NeighbourTable(nodes={"0": 0, "1": 1}))
    empty = SparseVector.empty(4)
    for key in [(3, 2), (3, 1), (2, 2), (4, 0)]:  # arrival order
        assert hood.receive(1, GossipUpdate(origin="1", round=key[0], vector=empty, step=key[1]).to_upload()).accepted
    recorder = Recorder()
    hood.take_late(recorder, (4, 0))
    assert recorder.seen == [(2, 2), (3, 1), (3, 2)] and list(hood.inbox) == [(4, 0)]


def _linked_neighbourhood() -> Neighbourhood:
    """Node 0 of a 4-ring, links in force from the start: dials 1 and 3, relays 1's selection to 3."""
    hood = Neighbourhood("0")
    hood.apply((Neighbour("1", "a", 1 / 3), Neighbour("3", "c", 1 / 3)), 1,
               NeighbourTable(nodes={"0": 0, "1": 1, "2": 2, "3": 3}, expected_origins=["1", "2", "3"],
                              forward={"1": ["3"], "3": []}))
    return hood


def test_relay_floods_between_a_death_and_the_new_links():
    """Shortest paths may have run through a dead peer; until the re-linked table holds, relayed
    selections go to every out-neighbour (but the origin) rather than miss someone."""
    hood = _linked_neighbourhood()
    assert hood.routes(1, 3) and not hood.routes(3, 1) and not hood.routes(3, 3)
    hood.begin_round(4)
    hood.apply((), 2, NeighbourTable(dead=["1"], from_round=6, forward={}))
    assert hood.links.forward is None and hood.links.dial == {3: "c"} and hood.pending is not None
    assert hood.routes(3, 1) and not hood.routes(3, 3) and hood.waiting(set()) == {2, 3}


def test_new_links_hold_from_their_round_and_updates_are_checked():
    """Both ends of a new link switch at the same round; an update from an unknown origin is
    refused with a reason, not fed to the exchange."""
    woken = []
    hood = _linked_neighbourhood()
    hood.on_change = lambda: woken.append(True)
    hood.begin_round(2)
    hood.apply((Neighbour("2", "b", 0.5),), 2, NeighbourTable(nodes={"2": 2}, expected_origins=["2"], from_round=4))
    assert hood.links.dial == {1: "a", 3: "c"} and woken
    hood.begin_round(3)
    assert hood.pending is not None
    hood.begin_round(4)
    assert hood.pending is None and hood.links.dial == {2: "b"} and hood.begin_exchange(0).expected == {2}
    update = GossipUpdate(origin="9", round=4, vector=SparseVector.empty(4)).to_upload()
    ack = hood.receive(2, update)
    assert not ack.accepted and ack.reason == AckReason.INVALID and hood.take((4, 0)) == []
    assert hood.receive(2, GossipUpdate(origin="2", round=4, vector=np.ones(4, np.float32)).to_upload()).accepted
    [(sender, message)] = hood.take((4, 0))
    assert sender == 2 and message.origin == 2 and message.vector.nnz == 4
