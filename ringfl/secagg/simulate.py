"""Whole secure-aggregation rounds among in-process peers, every message through the wire codec.

Used by the benchmark (cost growth at 50 / 100 peers) and the tests (dropouts at each phase,
tampered shares): the same :class:`ClientRound` / :class:`ServerRound` the coordinator runs, with
real cryptography; only the transport is a function call. ``drop`` maps a phase ("keys",
"shares", "masked", "unmask") to the peers that fall silent before sending that phase's message.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from ringfl.protocol.codec import Limits, decode, encode
from ringfl.protocol.messages import Message
from ringfl.secagg.quantize import Quantizer
from ringfl.secagg.rounds import ClientRound, SecAggSettings, ServerRound

Tamper = Callable[[str, Message], Message]


@dataclass
class SimulatedRound:
    total: np.ndarray  # Σ of the survivors' ring inputs (uint32)
    survivors: list[str]
    bytes_up: int = 0  # client -> server frames
    bytes_down: int = 0
    seconds: dict[str, float] = field(default_factory=dict)  # per phase, clients + server


class _Wire:
    def __init__(self, num_params: int) -> None:
        self.limits = Limits().for_model(num_params)
        self.up = self.down = 0

    def send(self, message: Message, upward: bool) -> Message:
        frame = encode(message, self.limits)
        if upward:
            self.up += len(frame)
        else:
            self.down += len(frame)
        return decode(frame, self.limits)


def simulate_round(inputs: dict[str, np.ndarray], settings: SecAggSettings, quantizer: Quantizer,
                   *, round_: int = 0, run_id: str = "sim", drop: dict[str, set[str]] | None = None,
                   tamper: Tamper | None = None) -> SimulatedRound:
    """Run one round for the peers in ``inputs`` (float vectors); raises SecAggAbort on abort."""
    drop = drop or {}
    num_params = len(next(iter(inputs.values())))
    wire = _Wire(num_params)
    tamper = tamper or (lambda peer, message: message)
    clients = {p: ClientRound(p, round_, run_id, settings, num_params) for p in inputs}
    server = ServerRound(round_, run_id, settings, num_params)
    seconds: dict[str, float] = {}

    def live(phase: str) -> list[str]:
        gone = set().union(*(drop.get(p, set()) for p in PHASES[: PHASES.index(phase) + 1]))
        return [p for p in clients if p not in gone]

    def up(phase: str, make: Callable[[str], Message | None], add: Callable[[str, Message], bool]) -> None:
        for peer in live(phase):
            message = make(peer)
            if message is not None:
                add(peer, wire.send(tamper(peer, message), upward=True))

    def down(replies: dict[str, Message]) -> dict[str, Message]:
        return {peer: wire.send(message, upward=False) for peer, message in replies.items()}

    started = time.perf_counter()
    up("keys", lambda p: clients[p].keys(), server.add_keys)
    rosters = down(server.rosters())
    seconds["keys"] = _lap(started)
    started = time.perf_counter()
    up("shares", lambda p: clients[p].shares(rosters[p]) if p in rosters else None, server.add_shares)
    inboxes = down(server.inboxes())
    seconds["shares"] = _lap(started)
    started = time.perf_counter()
    up("masked", lambda p: (clients[p].masked(inboxes[p], quantizer.encode(inputs[p]))
                            if p in inboxes else None), server.add_masked)
    requests = down(server.unmask_requests())
    seconds["masked"] = _lap(started)
    started = time.perf_counter()
    up("unmask", lambda p: clients[p].unmask(requests[p]) if p in requests else None, server.add_unmask)
    total, survivors = server.result()
    seconds["unmask"] = _lap(started)
    return SimulatedRound(total, survivors, wire.up, wire.down, seconds)


PHASES = ("keys", "shares", "masked", "unmask")


def _lap(started: float) -> float:
    return round(time.perf_counter() - started, 4)
