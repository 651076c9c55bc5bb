"""Fuzzing: the decoder and the state machine raise only RemoteProtocolError on hostile bytes,
and a live coordinator survives hostile connections while honest peers train.

Short modes of ``scripts/fuzz_codec.py`` and ``scripts/fuzz_coordinator.py`` plus targeted
regressions for what they found.
"""

from __future__ import annotations

import contextlib
import random
import struct
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringfl.config import RunConfig
from ringfl.coordinator import Coordinator
from ringfl.peer import Peer, PeerOptions
from ringfl.protocol import (
    EOF,
    Accept,
    Connection,
    Error,
    ErrorCode,
    FrameDecoder,
    Heartbeat,
    JoinRequest,
    ParamsRequest,
    PeerReport,
    Reject,
    RejectReason,
    RemoteProtocolError,
    Role,
    SpecConfirm,
    SpecReply,
    Upload,
    decode,
    encode,
)
from ringfl.transport import DeadlineError, MessageStream, TcpNetwork, dial, parse_address

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import fuzz_codec  # noqa: E402
import fuzz_coordinator  # noqa: E402

needs_tokens = pytest.mark.skipif(not fuzz_codec.HAS_TOKENS, reason="no run-token support")
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
CORPUS = fuzz_codec.build_corpus(random.Random(7), per_type=3)


@pytest.fixture(autouse=True)
def _no_ambient_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """Coordinators here run without a token unless a test asks for one."""
    monkeypatch.delenv("RINGFL_TOKEN", raising=False)


# --- codec ------------------------------------------------------------------------------------


def test_codec_fuzz_short_run_finds_no_crash() -> None:
    report = fuzz_codec.fuzz(count=3000, seconds=20.0, seed=1, show=1)
    assert report.inputs == 3000
    assert report.crashes == 0, f"{dict(report.crash_kinds)}\n{report.examples[0]}"
    assert report.roundtrip_mismatches == 0, report.examples
    assert report.rejected > 2000 and report.decoded > 100  # the mutators reach both outcomes


def test_allocation_bombs_are_refused_without_allocating() -> None:
    bombs = fuzz_codec.allocation_bombs()
    assert all(b["ok"] for b in bombs.values()), bombs
    assert bombs["frame_head_2GiB"]["peak_bytes"] < 16 << 10


def test_decode_of_empty_input_is_a_remote_error() -> None:
    """Regression: ``decode(b"")`` fed EOF twice and raised LocalProtocolError."""
    with pytest.raises(RemoteProtocolError):
        decode(b"")


def _with_buffers(descs: object) -> bytes:
    parts = fuzz_codec.split_frame(encode(Upload(vector=np.zeros(3, np.float32))))
    parts.header["buffers"] = descs
    return fuzz_codec.join_frame(parts.code, fuzz_codec.pack(parts.header), parts.buffers)


@pytest.mark.parametrize("dtype", [["float32"], {"a": 1}])
def test_unhashable_buffer_dtype_is_a_remote_error(dtype: object) -> None:
    """Regression: ``desc[0] in DTYPES`` raised TypeError for a list/map dtype."""
    frame = _with_buffers([[dtype, 3]])
    with pytest.raises(RemoteProtocolError):
        decode(frame)
    conn = Connection(Role.SERVER)
    conn.receive_data(frame)
    with pytest.raises(RemoteProtocolError):
        conn.next_event()


def _drain(conn: Connection, chunks: list[bytes]) -> None:
    """Feed chunks then EOF; only RemoteProtocolError may escape."""
    for chunk in [*chunks, b""]:
        conn.receive_data(chunk)
        for event in conn.events():
            if event is EOF:
                return


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:]) if b > a]


@SETTINGS
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=8),
       role=st.sampled_from(list(Role)))
def test_random_bytes_in_random_chunks_raise_only_remote_errors(
    data: bytes, cuts: list[int], role: Role
) -> None:
    with contextlib.suppress(RemoteProtocolError):
        _drain(Connection(role), _cut(data, cuts))


@SETTINGS
@given(frames=st.lists(st.sampled_from(CORPUS), min_size=1, max_size=4),
       mutator=st.sampled_from(sorted(fuzz_codec.MUTATORS)), seed=st.integers(0, 2**32),
       cuts=st.lists(st.integers(0, 2000), max_size=8), role=st.sampled_from(list(Role)))
def test_mutated_frames_in_random_chunks_raise_only_remote_errors(
    frames: list[bytes], mutator: str, seed: int, cuts: list[int], role: Role
) -> None:
    rng = random.Random(seed)
    frames[-1] = fuzz_codec.MUTATORS[mutator](rng, frames[-1], CORPUS)
    data = b"".join(frames)
    with contextlib.suppress(RemoteProtocolError):
        _drain(Connection(role), _cut(data, cuts))
    with contextlib.suppress(RemoteProtocolError):  # the plain decoder, chunked the same way
        fuzz_codec.feed_decoder(data, fuzz_codec.LIMIT_CHOICES[seed % 3], _cut(data, cuts))


@needs_tokens
def test_empty_frame_on_an_authenticated_session_is_a_remote_error() -> None:
    """Regression: with a verifier the 8-byte head skips the ``length >= 4`` check, and a
    zero-length frame at the end of the buffered bytes hit ``_ByteQueue.take(0)`` (IndexError)."""
    _client, server = fuzz_codec.authenticated_pair()
    server.receive_data(struct.pack(">II", 1014, 0))
    with pytest.raises(RemoteProtocolError):
        server.next_event()


@needs_tokens
def test_tampered_tagged_frames_raise_only_remote_errors() -> None:
    rng = random.Random(5)
    for _ in range(300):
        _name, _data, feed = fuzz_codec.authenticated_input(rng, CORPUS)
        with contextlib.suppress(RemoteProtocolError):
            feed()


def test_frame_head_far_above_the_limit_is_rejected_on_eight_bytes() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(struct.pack(">II", 1004, 2**31))
    with pytest.raises(RemoteProtocolError) as info:
        decoder.next_frame()
    assert info.value.code is ErrorCode.TOO_LARGE


# --- a live coordinator -----------------------------------------------------------------------


@pytest.mark.parametrize("token", [False, pytest.param(True, marks=needs_tokens)],
                         ids=["plain", "run_token"])
async def test_coordinator_fuzz_short_run(token: bool) -> None:
    """Honest peers finish every round while raw connections send garbage (with a run token:
    outsiders without it, and insiders whose garbage carries valid tags)."""
    result = await fuzz_coordinator.run_fuzz(
        seconds=3.0, rounds=3, honest=2, seed=3, workers=6, slow_workers=0,
        attacks=fuzz_coordinator.FAST_ATTACKS, token=token)
    summary = {k: result[k] for k in ("malicious_connections", "not_closed", "violations",
                                      "honest_rounds_per_peer", "honest_errors", "crash")
               if k in result}
    assert not result["coordinator_crashed"], result.get("crash")
    assert result["coordinator_completed"] and not result["coordinator_hung"]
    assert result["honest_rounds_completed"] == 2 * 3, summary
    assert result["malicious_connections"] > 30 and result["accuracy_rose"], result
    assert result["ok"], summary


@asynccontextmanager
async def serving(rounds: int = 1, peers: int = 10,
                  round_timeout: float = 2.0) -> AsyncIterator[tuple[Coordinator, str]]:
    """A coordinator on loopback that waits for ``peers`` before its rounds."""
    config = RunConfig(rounds=rounds, peers=peers, host="127.0.0.1", port=0,
                       round_timeout=round_timeout, join_timeout=60.0)
    coordinator = Coordinator(config, TcpNetwork())
    async with trio.open_nursery() as nursery:
        address = await nursery.start(coordinator.run)
        yield coordinator, address
        nursery.cancel_scope.cancel()


async def _joined(address: str, name: str, spec_hash: str) -> MessageStream:
    stream = await dial(TcpNetwork(), address, Connection(Role.CLIENT, local_id=name), timeout=5)
    await stream.send(JoinRequest())
    assert isinstance(await stream.receive(), Accept)
    await stream.send(SpecConfirm(spec_hash=spec_hash))
    assert isinstance(await stream.receive(), SpecReply)
    return stream


async def _join_reply(address: str, name: str) -> tuple[MessageStream, object]:
    """Dial and join as ``name``; the open stream (keep it: closing it ends the join) and the
    coordinator's reply."""
    stream = await dial(TcpNetwork(), address, Connection(Role.CLIENT, local_id=name), timeout=5)
    await stream.send(JoinRequest())
    return stream, await stream.receive()


async def test_join_claiming_a_connected_peers_id_is_rejected() -> None:
    with trio.fail_after(20):
        async with serving() as (coordinator, address):
            victim = await _joined(address, "victim", coordinator.spec.hash)
            _, reply = await _join_reply(address, "victim")
            assert isinstance(reply, Reject) and reply.reason == RejectReason.DUPLICATE_PEER
            assert list(coordinator.sessions) == ["victim"]
            await victim.aclose()


async def test_concurrent_joins_claiming_the_same_id_admit_only_one() -> None:
    """Regression: the duplicate-id check ran before Accept but the id was only taken after
    the spec confirmation, so a second join in that window was accepted too and replaced the
    first session in ``sessions`` (which then got no rounds)."""
    with trio.fail_after(20):
        async with serving() as (coordinator, address):
            first, first_reply = await _join_reply(address, "victim")
            _, second_reply = await _join_reply(address, "victim")
            assert isinstance(first_reply, Accept)
            assert isinstance(second_reply, Reject), "two sessions were admitted as 'victim'"
            assert second_reply.reason == RejectReason.DUPLICATE_PEER
            await first.aclose()


async def test_coordinator_survives_a_frame_that_crashed_the_decoder() -> None:
    """Regression: a TypeError from the codec is not a CONNECTION_ERROR; it escaped the
    connection handler and the listener's nursery and took the whole coordinator down."""
    with trio.fail_after(30):
        async with serving(rounds=1, peers=1) as (coordinator, address):
            host, port = parse_address(address)
            raw = await trio.open_tcp_stream(host, port)
            await raw.send_all(_with_buffers([[["float32"], 3]]))
            probe = fuzz_coordinator.Probe(raw, fuzz_coordinator.Stats())
            closed = await probe.wait_closed(5)
            history = await Peer(TcpNetwork(), PeerOptions(coordinator=address, name="p0")).run()
    assert closed and any(isinstance(m, Error) for m in probe.replies), probe.replies
    assert len(history) == 1


async def test_send_deadline_covers_waiting_for_the_send_lock() -> None:
    """Regression: ``MessageStream.send(timeout=...)`` only bounded ``send_all``; a second
    sender waited for the lock with no deadline while the first was stuck on a non-reader."""
    client, _server = trio.testing.lockstep_stream_pair()  # send_all blocks until read
    stream = MessageStream(client, Connection(Role.CLIENT), timeout=None)
    with trio.fail_after(3):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stream.send, Heartbeat())  # blocks forever holding the lock
            await trio.sleep(0.1)
            with pytest.raises(DeadlineError):
                await stream.send(Heartbeat(), timeout=0.5)
            nursery.cancel_scope.cancel()


async def test_slow_readers_cannot_stall_the_rounds_and_are_disconnected() -> None:
    """Peers that join, request parameters and never read block their sessions' reply sends
    (sent without a timeout).

    Regressions: (1) the round controller's RoundStart waited for such a session's send lock
    forever; (2) a peer the coordinator gave up on kept its task, socket and buffers. Open:
    (3) RoundStart goes to the peers one after another, each stuck peer costing the full 10 s
    send timeout, so k slow readers stall every round start by 10·k s (here 3: 30 s).
    """
    slow = [f"slow-{i}" for i in range(3)]
    result: dict[str, object] = {}

    async def watch(coordinator: Coordinator) -> None:
        while slow[0] not in coordinator.sessions:
            await trio.sleep(0.05)
        session = coordinator.sessions[slow[0]]
        while session.alive:
            await trio.sleep(0.05)
        await trio.sleep(1.0)  # the honest peer's paced rounds are still running
        result["disconnected"] = session.stream.stream.socket.fileno() == -1
        result["dropped_while_running"] = coordinator.round < 3

    async def slow_reader(address: str, name: str, spec_hash: str) -> trio.SocketStream:
        host, port = parse_address(address)
        raw = await trio.open_tcp_stream(host, port)
        await raw.send_all(encode(JoinRequest(sender=name, seq=1))
                           + encode(SpecConfirm(sender=name, seq=2, spec_hash=spec_hash))
                           + encode(PeerReport(sender=name, seq=3, metrics={"ready": True})))
        await raw.send_all(b"".join(encode(ParamsRequest(sender=name, seq=4 + i))
                                    for i in range(1500)))
        return raw  # keep it open, never read

    with trio.move_on_after(22):  # with concurrent round starts: ~15 s
        async with serving(rounds=3, peers=len(slow) + 1, round_timeout=2.0) as (
            coordinator, address
        ):
            _streams = [await slow_reader(address, name, coordinator.spec.hash) for name in slow]
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch, coordinator)
                peer = fuzz_coordinator.PacedPeer(TcpNetwork(),
                                                  PeerOptions(coordinator=address, name="p0"))
                peer.pace = 0.8
                result["history"] = await peer.run()
                result["rounds"] = coordinator.round
    assert result.get("rounds") == 3, "the run stalled behind peers that do not read"
    assert result.get("dropped_while_running")
    assert result.get("disconnected"), "the coordinator dropped a slow reader but kept its socket"
