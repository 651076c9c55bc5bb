"""Fuzz a live coordinator over loopback TCP while honest peers train through it.

A real :class:`~ringfl.coordinator.Coordinator` (digits-mlp on digits, FedAvg, a few rounds, a
small round timeout) serves on ``127.0.0.1`` (port 0) in this process; 2-3 honest
:class:`~ringfl.peer.Peer` s train through it (their local work is paced so the run lasts about
``--seconds``). Meanwhile attacker tasks open many raw TCP connections and send random bytes,
mutated frames (from ``fuzz_codec``), valid joins followed by garbage, joins and uploads claiming
an honest peer's id, oversize frame heads, frames the state table forbids, frames that crash a
local decoder (if the codec fuzzer's mutations find any), frames cut mid-way then silence,
byte-by-byte slowloris joins, and a reader that requests parameters without ever reading them.

Checked: the coordinator task completes every round and returns a summary (no crash, no hang,
no round stalled beyond its deadlines); each offending connection is closed by the coordinator
(promptly, or after our EOF for a frame that is merely incomplete, or at its 30 s join deadline
for silence); honest peers play every round with accepted uploads; accuracy rises. Loopback
only, bounded loops only.

Usage: ``python scripts/fuzz_coordinator.py [--seconds 60] [--rounds 12] [--honest 3]``.
Prints one JSON record; exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import secrets
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fuzz_codec import MUTATORS, build_corpus, seal  # noqa: E402

from ringfl.config import RunConfig  # noqa: E402
from ringfl.coordinator import Coordinator  # noqa: E402
from ringfl.peer import Peer, PeerOptions  # noqa: E402
from ringfl.protocol import (  # noqa: E402
    EOF,
    NEED_DATA,
    Accept,
    Connection,
    Error,
    ErrorCode,
    FrameDecoder,
    Heartbeat,
    JoinRequest,
    Limits,
    Message,
    ParamsRequest,
    PeerReport,
    Reject,
    RejectReason,
    RemoteProtocolError,
    Role,
    SpecConfirm,
    SpecReply,
    Upload,
    encode,
)
from ringfl.transport import TcpNetwork, parse_address  # noqa: E402

log = logging.getLogger("fuzz_coordinator")

JOIN_DEADLINE = 30.0  # the coordinator's hard-coded wait for a join (and for the spec confirm)
PROMPT = 5.0  # an offending connection must be closed this soon after the garbage is sent
UNAIDED = 2.0  # how long to wait before helping an incomplete frame along with our EOF
SLOW_READER_HOLD = 40.0  # how long the slow reader keeps its connection without reading
FAST_ATTACKS = ("random_bytes", "mutated_frame", "join_then_garbage", "joined_then_garbage",
                "impersonate_join", "spoof_sender", "oversize", "state_violation",
                "decoder_crasher")
SLOW_ATTACKS = ("cut_midway", "slowloris", "slow_reader")
ALL_ATTACKS = FAST_ATTACKS + SLOW_ATTACKS


# --- bookkeeping ------------------------------------------------------------------------------


@dataclass
class Stats:
    """What the attackers did and saw."""

    connections: int = 0
    frames_sent: int = 0
    bytes_sent: int = 0
    by_attack: Counter = field(default_factory=Counter)
    closed_promptly: int = 0  # by the coordinator, without help
    closed_after_eof: int = 0  # an incomplete frame: closed once we half-closed
    closed_at_deadline: int = 0  # silence / slowloris: closed by the join deadline
    closed_at_shutdown: int = 0  # still open when the run ended (not a violation)
    not_closed: Counter = field(default_factory=Counter)  # violations, by attack
    error_replies: Counter = field(default_factory=Counter)  # Error.code names received
    rejects: Counter = field(default_factory=Counter)  # Reject.reason names received
    violations: list[str] = field(default_factory=list)


@dataclass
class Target:
    """The coordinator under attack, as the attackers know it."""

    host: str
    port: int
    spec_hash: str
    num_params: int
    honest: list[str]
    attack_end: float  # trio clock: launch nothing after this
    done: trio.Event  # the coordinator task finished (normally or not)
    token: bytes | None = None  # the run token, known to insiders only


# --- one attacker connection ------------------------------------------------------------------


class Probe:
    """A raw connection: send bytes, decode what comes back, notice the coordinator closing."""

    def __init__(self, stream: trio.SocketStream, stats: Stats) -> None:
        self.stream = stream
        self.stats = stats
        self.decoder = FrameDecoder(Limits(max_frame=1 << 24))
        self.replies: list[Message] = []
        self.closed = False  # the coordinator closed (EOF, reset, or our write failed)
        self.undecodable = False
        self.conn: Connection | None = None  # an insider's own session (decodes tagged frames)

    async def send(self, data: bytes, frames: int = 1) -> bool:
        """Write ``data`` (counted as ``frames`` frames); False once the peer is gone."""
        if self.closed or not data:
            return not self.closed
        try:
            await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.closed = True
            return False
        self.stats.frames_sent += frames
        self.stats.bytes_sent += len(data)
        return True

    async def _read_some(self) -> None:
        try:
            data = await self.stream.receive_some(1 << 16)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            data = b""
        if not data:
            self.closed = True
        if self.undecodable:
            return
        try:
            if self.conn is not None:
                self.conn.receive_data(data)
                for event in self.conn.events():
                    if event is not EOF:
                        self._note(event)
                return
            self.decoder.receive_data(data)
            while (frame := self.decoder.next_frame()) not in (NEED_DATA, EOF):
                self._note(frame.message)
        except RemoteProtocolError:
            self.undecodable = True

    def _note(self, message: Message) -> None:
        self.replies.append(message)
        if isinstance(message, Error):
            self.stats.error_replies[_name(ErrorCode, message.code)] += 1
        elif isinstance(message, Reject):
            self.stats.rejects[_name(RejectReason, message.reason)] += 1

    async def expect(self, kind: type[Message], timeout: float) -> Message | None:
        """Read until a ``kind`` message arrives; None on close or timeout."""
        with trio.move_on_after(timeout):
            while not self.closed:
                found = next((m for m in self.replies if isinstance(m, kind)), None)
                if found is not None:
                    return found
                await self._read_some()
        return next((m for m in self.replies if isinstance(m, kind)), None)

    async def wait_closed(self, timeout: float) -> bool:
        """Read (and decode) until the coordinator closes; False if it did not in time."""
        with trio.move_on_after(timeout):
            while not self.closed:
                await self._read_some()
        return self.closed

    async def half_close(self) -> None:
        try:
            await self.stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.closed = True


def _name(enum_type: Any, value: int) -> str:
    try:
        return enum_type(value).name
    except ValueError:
        return str(value)


# --- frames -----------------------------------------------------------------------------------


def join_frame(name: str, seq: int = 1, **info: Any) -> bytes:
    return encode(JoinRequest(sender=name, seq=seq, num_samples=100, info=info))


def spec_frame(name: str, spec_hash: str, seq: int = 2) -> bytes:
    return encode(SpecConfirm(sender=name, seq=seq, spec_hash=spec_hash))


class Garbage:
    """Random and mutated frames from the codec fuzzer's corpus."""

    def __init__(self, rng: random.Random, crashers: list[bytes] | None = None) -> None:
        self.rng = rng
        self.corpus = build_corpus(rng, per_type=4)
        self.names = list(MUTATORS)
        self.crashers = crashers or []

    def mutated(self) -> bytes:
        rng = self.rng
        return MUTATORS[rng.choice(self.names)](rng, rng.choice(self.corpus), self.corpus)

    def random(self) -> bytes:
        return self.rng.randbytes(self.rng.randint(1, 300))

    def any(self) -> bytes:
        return self.mutated() if self.rng.random() < 0.7 else self.random()


def find_decoder_crashers(seed: int, budget: int = 20_000, keep: int = 8) -> list[bytes]:
    """Mutated frames that make a local server-side Connection raise something other than
    RemoteProtocolError: what would escape the coordinator's connection handler."""
    rng = random.Random(seed)
    corpus = build_corpus(rng, per_type=4)
    names = ["msgpack_header", "stacked", *MUTATORS]  # header rewrites reach the most code
    found: list[bytes] = []
    for _ in range(budget):
        data = MUTATORS[rng.choice(names)](rng, rng.choice(corpus), corpus)
        if not data:
            continue
        conn = Connection(Role.SERVER)
        try:
            conn.receive_data(data)
            conn.receive_data(b"")
            list(conn.events())
        except RemoteProtocolError:
            continue
        except Exception:
            found.append(data)
            if len(found) >= keep:
                break
    return found


# --- attacks ----------------------------------------------------------------------------------

Attack = Callable[[Probe, Target, random.Random, Garbage, str], Awaitable[str]]
"""Runs on an open probe; returns the closing expectation: "prompt", "eof", "deadline" or
"any" (the connection may legitimately stay open, e.g. a joined peer)."""


async def _random_bytes(p: Probe, t: Target, rng: random.Random, g: Garbage, name: str) -> str:
    await p.send(g.random())
    return "eof"


async def _mutated_frame(p: Probe, t: Target, rng: random.Random, g: Garbage, name: str) -> str:
    for _ in range(rng.randint(1, 3)):
        if not await p.send(g.mutated()):
            break
    return "eof"


async def _join_then_garbage(p: Probe, t: Target, rng: random.Random, g: Garbage,
                             name: str) -> str:
    await p.send(join_frame(name))
    if rng.random() < 0.5:  # else the garbage crosses the Accept in flight
        await p.expect(Accept, PROMPT)
    await p.send(g.any())
    return "eof"


async def _joined_then_garbage(p: Probe, t: Target, rng: random.Random, g: Garbage,
                               name: str) -> str:
    if not await _handshake(p, t, name):
        return "prompt"
    for _ in range(rng.randint(1, 4)):
        garbage = g.any()
        if not await p.send(insider(p, garbage) if rng.random() < 0.6 else garbage):
            break
    return "eof"


async def _handshake(p: Probe, t: Target, name: str) -> bool:
    """Join and confirm the spec like a real peer (with the run token if there is one: an
    insider); True once the coordinator admitted us."""
    if t.token is None:
        await p.send(join_frame(name) + spec_frame(name, t.spec_hash), frames=2)
        return await p.expect(SpecReply, PROMPT) is not None
    conn = p.conn = Connection(Role.CLIENT, local_id=name, token=t.token)  # type: ignore[call-arg]
    await p.send(conn.send(JoinRequest(num_samples=100)))
    if await p.expect(Accept, PROMPT) is None:
        return False
    await p.send(conn.send(SpecConfirm(spec_hash=t.spec_hash)))
    return await p.expect(SpecReply, PROMPT) is not None


def insider(p: Probe, frame: bytes) -> bytes:
    """``frame`` re-framed with a valid tag of the probe's authenticated session, if it has one
    (so it reaches the coordinator's decoder); unchanged otherwise."""
    if p.conn is None or p.conn._auth is None:  # type: ignore[attr-defined]
        return frame
    code = int.from_bytes(frame[:4], "big") if len(frame) >= 4 else int(Heartbeat.CODE)
    return seal(p.conn, code, frame[8:])


async def _impersonate_join(p: Probe, t: Target, rng: random.Random, g: Garbage,
                            name: str) -> str:
    victim = rng.choice(t.honest)
    if t.token is not None and rng.random() < 0.5:  # an insider holding the token
        await _handshake(p, t, victim)
    else:
        await p.send(join_frame(victim, seq=rng.randint(1, 99))
                     + spec_frame(victim, t.spec_hash), frames=2)
    reply = await p.expect(Reject, PROMPT)
    if any(isinstance(m, SpecReply) for m in p.replies) or reply is None and not p.closed:
        p.stats.violations.append(f"a join claiming {victim!r} was not rejected")
    return "prompt"


async def _spoof_sender(p: Probe, t: Target, rng: random.Random, g: Garbage, name: str) -> str:
    """Joined under our own name, send frames whose envelope claims an honest peer."""
    if not await _handshake(p, t, name):
        return "prompt"
    victim = rng.choice(t.honest)
    zero = np.zeros(t.num_params, np.float32)
    frames = [
        Heartbeat(sender=victim, seq=3),
        PeerReport(sender=victim, seq=4, metrics={"accuracy": 1.0}),
        ParamsRequest(sender=victim, seq=5),
        Upload(sender=victim, seq=6, vector=zero, num_samples=0),  # refused: no samples
        Upload(sender=victim, seq=7, run_id="another-run", vector=zero, num_samples=1),
    ]
    await p.send(b"".join(insider(p, encode(m)) for m in frames), frames=len(frames))
    # The last frame is for another run (RUN_MISMATCH); a checkout that pins each session's
    # sender may already refuse the first spoofed frame (AUTH). Either way: Error, then close.
    error = await p.expect(Error, PROMPT)
    if error is None:
        p.stats.violations.append("spoofed frames and another run's upload drew no Error")
    return "prompt"


async def _oversize(p: Probe, t: Target, rng: random.Random, g: Garbage, name: str) -> str:
    if rng.random() < 0.5 and not await _handshake(p, t, name):
        return "prompt"
    length = rng.choice([2**31, 2**32 - 1, 1 << 24, (1 << 20) + 1])
    await p.send(int(rng.choice([1001, 1004, 1013])).to_bytes(4, "big") + length.to_bytes(4, "big"))
    error = await p.expect(Error, PROMPT)
    if error is None or error.code != ErrorCode.TOO_LARGE:
        p.stats.violations.append(f"a {length}-byte frame head was answered with {error!r:.80}")
    return "prompt"


async def _state_violation(p: Probe, t: Target, rng: random.Random, g: Garbage,
                           name: str) -> str:
    """Valid frames in an order (or from a role) the state table forbids."""
    zero = np.zeros(t.num_params, np.float32)
    options = [
        join_frame(name) + join_frame(name, seq=2),  # join twice
        encode(Upload(sender=name, vector=zero, num_samples=1)),  # upload before joining
        join_frame(name) + encode(ParamsRequest(sender=name, seq=2)),  # before the spec
        join_frame(name) + encode(SpecReply(ok=True, spec_hash="x")),  # a server's message
        encode(Heartbeat(sender=name, version=1)) + join_frame(name),  # first is not a join
    ]
    await p.send(rng.choice(options), frames=2)
    return "prompt"


async def _decoder_crasher(p: Probe, t: Target, rng: random.Random, g: Garbage,
                           name: str) -> str:
    """Replay a frame that crashed the local decoder (a mutated frame if none was found)."""
    if rng.random() < 0.5 and not await _handshake(p, t, name):
        return "prompt"
    await p.send(insider(p, rng.choice(g.crashers) if g.crashers else g.mutated()))
    return "eof"


async def _cut_midway(p: Probe, t: Target, rng: random.Random, g: Garbage, name: str) -> str:
    frame = join_frame(name, pad="x" * rng.randint(0, 200))
    await p.send(frame[: rng.randint(1, len(frame) - 1)])
    return "deadline"  # then silence: only the join deadline can end it


async def _slowloris(p: Probe, t: Target, rng: random.Random, g: Garbage, name: str) -> str:
    frame = join_frame(name, pad="x" * 200)
    with trio.move_on_after(JOIN_DEADLINE + PROMPT):
        for i in range(len(frame)):
            if not await p.send(frame[i : i + 1], frames=int(i == 0)):
                break
            await trio.sleep(0.25)
    return "deadline"


async def _slow_reader(p: Probe, t: Target, rng: random.Random, g: Garbage, name: str) -> str:
    """Ask for the model again and again without reading any reply (a stalled receiver)."""
    if not await _handshake(p, t, name):
        return "prompt"
    requests = b"".join(insider(p, encode(ParamsRequest(sender=name, seq=3 + i)))
                        for i in range(1500))
    await p.send(requests, frames=1500)
    with trio.move_on_after(SLOW_READER_HOLD):  # hold the connection open, reading nothing
        await t.done.wait()
    return "any"


NEEDS = {"cut_midway": JOIN_DEADLINE + PROMPT, "slowloris": JOIN_DEADLINE + PROMPT,
         "slow_reader": SLOW_READER_HOLD}
"""Seconds of attack window a slow attack needs to be worth starting."""

ATTACKS: dict[str, Attack] = {
    "random_bytes": _random_bytes,
    "mutated_frame": _mutated_frame,
    "join_then_garbage": _join_then_garbage,
    "joined_then_garbage": _joined_then_garbage,
    "impersonate_join": _impersonate_join,
    "spoof_sender": _spoof_sender,
    "oversize": _oversize,
    "state_violation": _state_violation,
    "decoder_crasher": _decoder_crasher,
    "cut_midway": _cut_midway,
    "slowloris": _slowloris,
    "slow_reader": _slow_reader,
}


async def attack_once(kind: str, target: Target, rng: random.Random, garbage: Garbage,
                      stats: Stats, serial: int) -> None:
    """One connection: attack, then check that the coordinator hangs up on it."""
    try:
        stream = await trio.open_tcp_stream(target.host, target.port)
    except OSError as exc:
        with trio.move_on_after(1.0):  # the listener closes as the run ends, just before `done`
            await target.done.wait()
        if not target.done.is_set():
            stats.violations.append(f"cannot connect while the run is on: {exc}")
        return
    stats.connections += 1
    stats.by_attack[kind] += 1
    probe = Probe(stream, stats)
    try:
        expectation = await ATTACKS[kind](probe, target, rng, garbage, f"evil-{serial}")
        await _check_closed(probe, kind, expectation, target, stats)
    finally:
        with trio.CancelScope(shield=True):
            await trio.aclose_forcefully(stream)


async def _check_closed(probe: Probe, kind: str, expectation: str, target: Target,
                        stats: Stats) -> None:
    if expectation == "any":
        await probe.wait_closed(0.5)
        return
    wait = {"deadline": JOIN_DEADLINE + PROMPT, "eof": UNAIDED}.get(expectation, PROMPT)
    if await probe.wait_closed(wait):
        finished = target.done.is_set()
        if finished:
            stats.closed_at_shutdown += 1
        elif expectation == "deadline":
            stats.closed_at_deadline += 1
        else:
            stats.closed_promptly += 1
        return
    if expectation == "eof":  # maybe just an incomplete frame: end the stream and look again
        await probe.half_close()
        if await probe.wait_closed(PROMPT):
            if target.done.is_set():
                stats.closed_at_shutdown += 1
            else:
                stats.closed_after_eof += 1
            return
    if target.done.is_set():
        stats.closed_at_shutdown += 1
    else:
        stats.not_closed[kind] += 1
        stats.violations.append(f"{kind}: the coordinator left the connection open")


async def attacker(kinds: list[str], target: Target, rng: random.Random, stats: Stats,
                   serials: Any, max_connections: int, crashers: list[bytes]) -> None:
    """Attack in a loop until the attack window closes or the run ends."""
    garbage = Garbage(random.Random(rng.random()), crashers)
    while (trio.current_time() < target.attack_end and not target.done.is_set()
           and stats.connections < max_connections):
        kind = rng.choice(kinds)
        if trio.current_time() + NEEDS.get(kind, 0.0) > target.attack_end:
            kind = rng.choice([k for k in kinds if k in FAST_ATTACKS] or ["random_bytes"])
        await attack_once(kind, target, rng, garbage, stats, next(serials))
        await trio.sleep(rng.uniform(0, 0.02))


# --- honest side ------------------------------------------------------------------------------


class PacedPeer(Peer):
    """An honest peer whose local work takes at least ``pace`` seconds (a slower machine)."""

    pace = 0.0

    async def train(self, params: np.ndarray, round_: int) -> tuple[np.ndarray, float]:
        await trio.sleep(self.pace)
        return await super().train(params, round_)


@dataclass
class Outcome:
    """The run as the checks see it."""

    summary: dict[str, Any] | None = None
    crash: str | None = None
    hung: bool = False
    honest_errors: list[str] = field(default_factory=list)
    honest_histories: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


async def run_fuzz(seconds: float = 60.0, rounds: int = 12, honest: int = 3, seed: int = 0,
                   workers: int = 12, slow_workers: int = 3, attacks: tuple[str, ...] = ALL_ATTACKS,
                   round_timeout: float | None = None, max_connections: int = 100_000,
                   token: bool = False) -> dict[str, Any]:
    """Run the coordinator with honest peers and attackers; returns the JSON record.

    With ``token`` the run uses a run token (authenticated sessions): the honest peers hold it,
    and so do the attackers that join (insiders, whose garbage carries valid tags); the others
    are outsiders.
    """
    if token:
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "token"
            path.write_text(secrets.token_hex(32))
            return await _run_fuzz(seconds, rounds, honest, seed, workers, slow_workers, attacks,
                                   round_timeout, max_connections, str(path))
    return await _run_fuzz(seconds, rounds, honest, seed, workers, slow_workers, attacks,
                           round_timeout, max_connections, None)


async def _run_fuzz(seconds: float, rounds: int, honest: int, seed: int, workers: int,
                    slow_workers: int, attacks: tuple[str, ...], round_timeout: float | None,
                    max_connections: int, token_file: str | None) -> dict[str, Any]:
    started = time.perf_counter()
    rng = random.Random(seed)
    crashers = find_decoder_crashers(seed) if "decoder_crasher" in attacks else []
    pace = max(0.0, seconds / rounds - 0.3)
    round_timeout = round_timeout or pace + 2.0
    extra: dict[str, Any] = {"token_file": token_file} if token_file else {}
    config = RunConfig(run_id=f"fuzz-{seed}", seed=seed, model="digits-mlp", data="digits",
                       algorithm="fedavg", rounds=rounds, peers=honest, min_peers=1,
                       round_timeout=round_timeout, host="127.0.0.1", port=0, join_timeout=30.0,
                       **extra)
    network = TcpNetwork()
    coordinator = Coordinator(config, network)
    run_token: bytes | None = getattr(coordinator, "token", None)
    peer_extra: dict[str, Any] = {"token": run_token} if run_token else {}
    names = [f"honest-{i}" for i in range(honest)]
    stats, outcome = Stats(), Outcome()
    done = trio.Event()
    hard_limit = 3 * seconds + rounds * 2 * round_timeout + 60

    async def run_coordinator(task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            outcome.summary = await coordinator.run(task_status=task_status)
        except Exception as exc:  # incl. ExceptionGroup: any escape is a crash
            outcome.crash = "".join(traceback.format_exception(exc))[-4000:]
        finally:
            done.set()

    async def run_peer(name: str) -> None:
        peer = PacedPeer(network, PeerOptions(coordinator=address, name=name, eval_samples=200,
                                              **peer_extra))
        peer.pace = pace
        try:
            outcome.honest_histories[name] = await peer.run()
        except Exception as exc:
            outcome.honest_errors.append(f"{name}: {type(exc).__name__}: {exc}")
            outcome.honest_histories[name] = peer.history

    with trio.move_on_after(hard_limit) as scope:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(run_coordinator)
            for name in names:
                nursery.start_soon(run_peer, name)
            with trio.move_on_after(30):  # attack once the honest peers are in
                while not set(names) <= set(coordinator.sessions) and not done.is_set():
                    await trio.sleep(0.05)
            host, port = parse_address(address)
            target = Target(host, port, coordinator.spec.hash, coordinator.num_params, names,
                            trio.current_time() + seconds - min(PROMPT + 1.0, seconds / 4), done,
                            run_token)
            serials = iter(range(10**9))
            fast = [k for k in attacks if k in FAST_ATTACKS] or list(attacks)
            slow = [k for k in attacks if k in SLOW_ATTACKS]
            for _ in range(workers):
                nursery.start_soon(attacker, fast, target, random.Random(rng.random()), stats,
                                   serials, max_connections, crashers)
            for i in range(slow_workers if slow else 0):  # one slow kind each, in turn
                nursery.start_soon(attacker, [slow[i % len(slow)]], target,
                                   random.Random(rng.random()), stats, serials, max_connections,
                                   crashers)
    outcome.hung = scope.cancelled_caught
    return record(config, coordinator, stats, outcome, time.perf_counter() - started,
                  len(crashers))


def record(config: RunConfig, coordinator: Coordinator, stats: Stats, outcome: Outcome,
           seconds: float, crashers_found: int = 0) -> dict[str, Any]:
    """The JSON record and the verdict."""
    history = coordinator.history
    accuracy = [r["accuracy"] for r in history]
    times = [r["seconds"] for r in history]
    longest = max((b - a for a, b in zip(times[1:], times[2:])), default=0.0)
    stall_limit = 2 * config.round_timeout + 12.0  # deadline, quorum wait, one 10 s send
    played = {name: len(h) for name, h in outcome.honest_histories.items()}
    rejected = sum(not m.get("accepted", False) for h in outcome.honest_histories.values()
                   for m in h)
    rose = len(accuracy) >= 2 and accuracy[-1] > accuracy[0] + 0.2
    result = {
        "malicious_connections": stats.connections,
        "frames_sent": stats.frames_sent,
        "bytes_sent": stats.bytes_sent,
        "attacks": dict(sorted(stats.by_attack.items())),
        "decoder_crashers_found": crashers_found,
        "closed_promptly": stats.closed_promptly,
        "closed_after_eof": stats.closed_after_eof,
        "closed_at_join_deadline": stats.closed_at_deadline,
        "closed_at_shutdown": stats.closed_at_shutdown,
        "not_closed": dict(stats.not_closed),
        "error_replies": dict(stats.error_replies),
        "rejects": dict(stats.rejects),
        "coordinator_crashed": outcome.crash is not None,
        "coordinator_hung": outcome.hung,
        "coordinator_completed": outcome.summary is not None,
        "coordinator_rounds": coordinator.round,
        "peer_ids_remembered": len(coordinator.indices),  # grows with every distinct joiner
        "rounds": config.rounds,
        "run_token": bool(getattr(coordinator, "token", None)),
        "honest_rounds_completed": sum(played.values()),
        "honest_rounds_per_peer": played,
        "honest_uploads_rejected": rejected,
        "honest_errors": outcome.honest_errors,
        "initial_accuracy": accuracy[0] if accuracy else None,
        "final_accuracy": accuracy[-1] if accuracy else None,
        "accuracy_rose": rose,
        "longest_round_seconds": round(longest, 2),
        "round_stalled": longest > stall_limit,
        "round_timeout": config.round_timeout,
        "violations": stats.violations[:20],
        "seconds": round(seconds, 1),
    }
    complete = all(n == config.rounds for n in played.values()) and len(played) > 0
    result["ok"] = bool(
        result["coordinator_completed"] and not outcome.hung and complete and rose
        and not stats.not_closed and not stats.violations and not outcome.honest_errors
        and rejected == 0 and not result["round_stalled"]
    )
    if outcome.crash:
        result["crash"] = outcome.crash
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="approximate run length")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--honest", type=int, default=3, help="honest peers (2-3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=12, help="concurrent fast attackers")
    parser.add_argument("--slow-workers", type=int, default=3,
                        help="concurrent slow attackers (cut mid-way, slowloris, slow reader)")
    parser.add_argument("--round-timeout", type=float, default=None)
    parser.add_argument("--attacks", default=",".join(ALL_ATTACKS),
                        help=f"comma-separated subset of {','.join(ALL_ATTACKS)}")
    parser.add_argument("--skip", default="", help="comma-separated attacks to leave out")
    parser.add_argument("--token", action="store_true",
                        help="authenticated run: honest peers and joining attackers hold a token")
    parser.add_argument("--verbose", action="store_true", help="coordinator logs at INFO")
    args = parser.parse_args(argv)
    skip = set(filter(None, args.skip.split(",")))
    attacks = tuple(a for a in args.attacks.split(",") if a and a not in skip)
    unknown = set(attacks) - set(ALL_ATTACKS)
    if unknown:
        parser.error(f"unknown attacks: {', '.join(sorted(unknown))}")
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR)
    result = trio.run(lambda: run_fuzz(args.seconds, args.rounds, args.honest, args.seed,
                                       args.workers, args.slow_workers, attacks,
                                       args.round_timeout, token=args.token))
    crash = result.pop("crash", None)
    if crash:
        print(crash, file=sys.stderr)
    print(json.dumps(result, default=str))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
