"""A ring peer's neighbour listener under hostile connections, as the coordinator is fuzzed
(scripts/fuzz_coordinator.py's attacks, aimed at a ring peer's listening address)."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import trio

from ringfl.peer import PeerOptions
from ringfl.protocol import (
    Accept,
    Heartbeat,
    JoinRequest,
    ParamsRequest,
    SpecConfirm,
    SpecReply,
    Upload,
    encode,
)
from ringfl.ring import Bootstrap, RingPeer
from ringfl.topology import generate
from ringfl.transport import TcpNetwork, parse_address
from tests.helpers import demo_config

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import fuzz_coordinator as fuzz  # noqa: E402

ATTACKS = ("random_bytes", "mutated_frame", "join_then_garbage", "joined_then_garbage", "oversize",
           "ring_state_violation", "decoder_crasher")
"""The coordinator's fast attacks that make sense against a listener that admits any dialler
(impersonation and sender spoofing are about the coordinator's membership)."""


async def _ring_state_violation(p: fuzz.Probe, t: fuzz.Target, rng: random.Random, g: fuzz.Garbage,
                                name: str) -> str:
    """The coordinator fuzzer's state violations but "a heartbeat before the join", which the
    state table allows (a ring listener answers it: test below)."""
    zero = np.zeros(t.num_params, np.float32)
    options = [
        fuzz.join_frame(name) + fuzz.join_frame(name, seq=2),  # join twice
        encode(Upload(sender=name, vector=zero, num_samples=1)),  # upload before joining
        fuzz.join_frame(name) + encode(ParamsRequest(sender=name, seq=2)),  # before the spec
        fuzz.join_frame(name) + encode(SpecReply(ok=True, spec_hash="x")),  # a server's message
    ]
    await p.send(rng.choice(options), frames=2)
    return "prompt"


@pytest.fixture(autouse=True)
def _no_ambient_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RINGFL_TOKEN", raising=False)
    monkeypatch.setitem(fuzz.ATTACKS, "ring_state_violation", _ring_state_violation)


class PacedRingPeer(RingPeer):
    """Local work takes at least ``pace`` seconds, so the attack window spans the rounds."""

    pace = 1.0

    async def train(self, params: np.ndarray, round_: int) -> tuple[np.ndarray, float]:
        await trio.sleep(self.pace)
        return await super().train(params, round_)


async def _ring_under_attack(rounds: int, attack: Any) -> tuple[Bootstrap, list[RingPeer], list[str]]:
    """Four paced ring peers on loopback; ``attack(bootstrap, address)`` runs beside them once
    every peer has joined; returns the bootstrap, the peers and the errors peers raised."""
    config = demo_config(host="127.0.0.1", algorithm="gossip-dssgd", rounds=rounds, round_timeout=20.0,
                         algorithm_settings={"theta_u": 0.1})
    topology = generate("ring", 4)
    network = TcpNetwork()
    bootstrap = Bootstrap(config, network, topology=topology)
    peers, errors = [], []
    finished = trio.Event()  # a peer is done: its listener may close

    async def run_peer(peer: RingPeer) -> None:
        try:
            await peer.run()
        except Exception as exc:  # any escape is a crash of that peer
            errors.append(f"{peer.name}: {type(exc).__name__}: {exc}")
        finally:
            finished.set()

    with trio.fail_after(240):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(bootstrap.run)
            for label in topology.labels:
                peer = PacedRingPeer(network, PeerOptions(coordinator=address, name=label, run_id=config.run_id,
                                                          eval_samples=200))
                peers.append(peer)
                nursery.start_soon(run_peer, peer)
            while len([s for s in bootstrap.sessions.values() if s.ready]) < topology.n:
                await trio.sleep(0.05)
            await attack(bootstrap, bootstrap.sessions[topology.labels[0]].address, finished)
    return bootstrap, peers, errors


async def test_ring_listener_fuzz_short_run() -> None:
    """Garbage at peer 0's listener while the ring trains: no crash, every round reported by
    every peer, each hostile connection closed."""
    stats = fuzz.Stats()

    async def attack(bootstrap: Bootstrap, address: str, done: trio.Event) -> None:
        host, port = parse_address(address)
        target = fuzz.Target(host, port, bootstrap.spec.hash, bootstrap.num_params, [],
                             trio.current_time() + 4.0, done)
        rng = random.Random(5)
        crashers = fuzz.find_decoder_crashers(5, budget=3000)
        serials = iter(range(10**9))
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(fuzz.attacker, list(ATTACKS), target, random.Random(rng.random()), stats,
                                   serials, 10_000, crashers)

    bootstrap, peers, errors = await _ring_under_attack(6, attack)
    assert not errors, errors
    assert [r["round"] for r in bootstrap.history] == [1, 2, 3, 4, 5, 6]
    assert all(r["peers_reporting"] == 4 for r in bootstrap.history), bootstrap.history
    assert stats.connections > 20, stats
    assert not stats.not_closed and not stats.violations, (stats.not_closed, stats.violations)


async def test_a_neighbour_may_send_a_heartbeat_before_its_join() -> None:
    """The state table allows a heartbeat in ``connected``; the listener used to assert a join."""
    replies: list[object] = []

    async def attack(bootstrap: Bootstrap, address: str, done: trio.Event) -> None:
        host, port = parse_address(address)
        stream = await trio.open_tcp_stream(host, port)
        probe = fuzz.Probe(stream, fuzz.Stats())
        frames = [Heartbeat(sender="4"), JoinRequest(sender="4", seq=2), SpecConfirm(sender="4", seq=3,
                                                                                     spec_hash=bootstrap.spec.hash)]
        await probe.send(b"".join(encode(m) for m in frames), frames=3)
        replies.append(await probe.expect(Accept, 10.0))
        replies.append(await probe.expect(SpecReply, 10.0))
        await trio.aclose_forcefully(stream)

    bootstrap, peers, errors = await _ring_under_attack(1, attack)
    assert not errors, errors
    assert isinstance(replies[0], Accept) and isinstance(replies[1], SpecReply) and replies[1].ok
    assert bootstrap.history[-1]["peers_reporting"] == 4
