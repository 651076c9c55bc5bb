"""Run-token authentication: the join challenge-response, per-frame tags checked before parsing,
replay and spoofing defences; sans-IO pairs plus MessageStream over loopback TCP."""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable

import numpy as np
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringfl.protocol import (
    EOF,
    MIN_TOKEN_SIZE,
    NEED_DATA,
    TAG_SIZE,
    Accept,
    Ack,
    Code,
    Connection,
    EndOfRun,
    Error,
    ErrorCode,
    FrameDecoder,
    Goodbye,
    Heartbeat,
    JoinRequest,
    LocalProtocolError,
    Message,
    Params,
    ParamsRequest,
    PeerReport,
    RemoteProtocolError,
    Role,
    SpecConfirm,
    SpecReply,
    State,
    Upload,
    allowed,
    check_token,
    decode,
    encode,
    peer_token,
)
from ringfl.transport import MessageStream, PeerClosedError, PeerError, TcpNetwork, dial
from ringfl.vectors import SparseVector
from tests.helpers import ConnectionPair
from tests.test_state import SAMPLES

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TOKEN = bytes(range(32))
OTHER = b"another-run-token-32-bytes-long!"
SIZE = 64
MODEL = np.linspace(-1, 1, SIZE, dtype=np.float32)
UPDATE = SparseVector.take(MODEL, np.array([1, 5, 9]))
C, S = Role.CLIENT, Role.SERVER


class Pair(ConnectionPair):
    """Two sans-IO Connections that hold the run token unless told otherwise."""

    def __init__(self, client_token: bytes | None = TOKEN, server_token: bytes | None = TOKEN):
        super().__init__(client_token, server_token)

    def handshake(self) -> None:
        self.say(C, JoinRequest(num_samples=600, info={"note": "hi"}))
        self.say(S, Accept(num_params=SIZE, spec_hash="h1", info={"lr": 0.1}))

    def ready(self) -> Pair:
        self.handshake()
        self.say(C, SpecConfirm(spec_hash="h1"))
        self.say(S, SpecReply(ok=True, spec_hash="h1"))
        return self


def session(pair: Pair) -> list[Message]:
    """A whole coordinator-mode session; returns what each side received, in order."""
    got = [
        pair.say(C, JoinRequest(num_samples=600, info={"note": "hi"})),
        pair.say(S, Accept(num_params=SIZE, spec_hash="h1", info={"lr": 0.1})),
        pair.say(C, SpecConfirm(spec_hash="h1")),
        pair.say(S, SpecReply(ok=True, spec_hash="h1")),
        pair.say(C, ParamsRequest()),
        pair.say(S, Params(vector=MODEL, model_version=1)),
    ]
    upload = pair.say(C, Upload(vector=UPDATE, num_samples=600))
    got += [
        upload,
        pair.say(S, Ack(accepted=True, ack_seq=upload.seq)),
        pair.say(C, PeerReport(metrics={"loss": 0.5})),
        pair.say(S, EndOfRun(reason="done")),
        pair.say(C, Goodbye()),
        pair.say(S, Goodbye()),
    ]
    assert pair.client.state is pair.server.state is State.CLOSED
    return got


# --- the documented key schedule, implemented again from docs/protocol.md ---------------------


def documented_keys(token: bytes, join: bytes, accept: bytes) -> tuple[bytes, bytes]:
    client_nonce = bytes.fromhex(decode(join).info["auth"]["nonce"])
    server_nonce = bytes.fromhex(decode(accept).info["auth"]["nonce"])
    prk = hmac.new(b"ringfl-session" + client_nonce + server_nonce, token, "sha256").digest()
    transcript = hashlib.sha256(join + accept).digest()
    return (
        hmac.new(prk, transcript + b"client->server\x01", "sha256").digest(),
        hmac.new(prk, transcript + b"server->client\x01", "sha256").digest(),
    )


def tagged(key: bytes, counter: int, code: int, body: bytes) -> bytes:
    """A frame with ``body`` and a tag as the documentation specifies."""
    head = struct.pack(">II", code, len(body) + TAG_SIZE)
    tag = hmac.new(key, struct.pack(">Q", counter) + head + body, "sha256").digest()
    return head + body + tag


def retag(key: bytes, counter: int, frame: bytes) -> bytes:
    """An untagged frame (from ``encode``) tagged for ``counter``."""
    return tagged(key, counter, struct.unpack(">I", frame[:4])[0], frame[8:])


def keys_of(pair: Pair, token: bytes = TOKEN) -> tuple[bytes, bytes]:
    (_, join), (_, accept) = pair.wire[:2]
    return documented_keys(token, join, accept)


def reject(conn: Connection, data: bytes, code: ErrorCode = ErrorCode.AUTH) -> RemoteProtocolError:
    conn.receive_data(data)
    with pytest.raises(RemoteProtocolError) as info:
        conn.next_event()
    assert info.value.code is code, info.value
    assert conn.state is State.ERROR
    return info.value


# --- a whole session --------------------------------------------------------------------------


def test_same_token_completes_a_session_and_tags_every_later_frame() -> None:
    plain, authed = Pair(None, None), Pair()
    assert session(plain) == session(authed)  # the application sees the same messages
    for (role, a), (role_b, b) in zip(plain.wire, authed.wire, strict=True):
        assert role is role_b
        code = struct.unpack(">I", a[:4])[0]
        if code in (Code.JOIN, Code.ACCEPT):  # handshake frames: untagged, nonce (+ proof) added
            assert not decode(a).info.get("auth") and decode(b).info["auth"]["nonce"]
        else:
            assert len(b) == len(a) + TAG_SIZE
            assert struct.unpack(">I", b[4:8])[0] == len(b) - 8  # length includes the tag
    assert authed.client.authenticated and authed.server.authenticated
    assert not plain.client.authenticated and not plain.server.authenticated
    for conn in (authed.client, authed.server, plain.client, plain.server):
        assert conn.auth_failures == 0
    assert authed.client.bytes_sent == authed.server.bytes_received
    assert authed.server.bytes_sent == authed.client.bytes_received
    assert authed.client.peer_id == "coord" and authed.server.peer_id == "peer-1"


def test_the_wire_follows_the_documented_derivation() -> None:
    pair = Pair()
    pair.handshake()
    (_, join), (_, accept) = pair.wire
    join_auth, accept_auth = decode(join).info["auth"], decode(accept).info["auth"]
    assert set(join_auth) == {"nonce"} and set(accept_auth) == {"nonce", "proof"}
    proof = hmac.new(
        TOKEN,
        b"ringfl-server-proof" + hashlib.sha256(join).digest() + bytes.fromhex(accept_auth["nonce"]),
        "sha256",
    ).hexdigest()
    assert accept_auth["proof"] == proof
    client_key, server_key = keys_of(pair)
    for counter in range(3):
        frame = pair.post(C, Heartbeat(round=counter))
        assert frame[-TAG_SIZE:] == retag(client_key, counter, frame[:-TAG_SIZE])[-TAG_SIZE:]
        pair.deliver(C)
        frame = pair.post(S, Heartbeat())
        assert frame == retag(server_key, counter, frame[:-TAG_SIZE])
        pair.deliver(S)


def test_nonces_are_fresh_per_session() -> None:
    first, second = Pair(), Pair()
    first.handshake()
    second.handshake()
    assert keys_of(first)[0] != keys_of(second)[0]


# --- per-peer tokens ---------------------------------------------------------------------------


def per_peer(client_id: str, client_token: bytes) -> Pair:
    """A client named ``client_id`` against a server that expects per-peer tokens."""
    pair = Pair()
    pair.client = Connection(Role.CLIENT, local_id=client_id, token=client_token)
    pair.server = Connection(Role.SERVER, local_id="coord", run_id="run-7", token=TOKEN, per_peer_tokens=True)
    return pair


def test_a_peer_token_joins_under_its_own_id_only() -> None:
    alice = peer_token(TOKEN, "alice")
    assert alice == hmac.new(TOKEN, b"ringfl-peer-key" + b"alice", "sha256").hexdigest().encode()
    pair = per_peer("alice", alice)
    session(pair)
    assert pair.server.authenticated and pair.client.authenticated and pair.server.peer_id == "alice"
    for name, token in (("bob", alice), ("alice", TOKEN)):  # another id, or the bare run token
        pair = per_peer(name, token)
        pair.say(C, JoinRequest())
        pair.post(S, Accept(num_params=SIZE, spec_hash="h"))
        with pytest.raises(RemoteProtocolError, match="server's proof does not match") as info:
            pair.deliver(S)
        assert info.value.code is ErrorCode.AUTH


def test_per_peer_tokens_need_a_named_join() -> None:
    pair = per_peer("", peer_token(TOKEN, ""))
    pair.post(C, JoinRequest())
    with pytest.raises(RemoteProtocolError, match="must name its sender") as info:
        pair.deliver(C)
    assert info.value.code is ErrorCode.AUTH


# --- who does not know the token --------------------------------------------------------------


def test_client_with_a_wrong_token_detects_the_server_proof_mismatch() -> None:
    pair = Pair(client_token=OTHER)
    pair.say(C, JoinRequest())
    pair.post(S, Accept(num_params=SIZE, spec_hash="h"))
    with pytest.raises(RemoteProtocolError, match="server's proof does not match") as info:
        pair.deliver(S)
    assert info.value.code is ErrorCode.AUTH
    assert pair.client.auth_failures == 1 and not pair.client.authenticated
    with pytest.raises(RemoteProtocolError, match="failed authentication"):  # dead from now on
        pair.client.next_event()
    assert pair.client.auth_failures == 1
    # Its (untagged) Error to the server fails the server's tag check: counted there too.
    pair.post(C, Error(code=ErrorCode.AUTH, detail="bad proof"))
    with pytest.raises(RemoteProtocolError, match="failed authentication"):
        pair.deliver(C)
    assert pair.server.auth_failures == 1 and not pair.server.authenticated


def test_client_trusts_no_server_without_the_token() -> None:
    pair = Pair(server_token=None)
    pair.say(C, JoinRequest())
    pair.post(S, Accept(num_params=SIZE, spec_hash="h"))
    with pytest.raises(RemoteProtocolError, match="the server has no run token") as info:
        pair.deliver(S)
    assert info.value.code is ErrorCode.AUTH and pair.client.auth_failures == 1


def test_client_without_a_token_is_refused_at_the_join() -> None:
    pair = Pair(client_token=None)
    pair.post(C, JoinRequest(num_samples=1))
    with pytest.raises(RemoteProtocolError, match="the client has no run token") as info:
        pair.deliver(C)
    assert info.value.code is ErrorCode.AUTH and pair.server.auth_failures == 1
    pair.post(S, Error(code=info.value.code, detail=str(info.value)))  # untagged: no keys yet
    assert pair.deliver(S).code == ErrorCode.AUTH  # the token-less client can read why


def attacker(server: Connection) -> Connection:
    """A client that does not know the token: joins with a nonce of its own, ignores the proof."""
    mallory = Connection(C, local_id="mallory")  # no token: sends and reads frames as they are
    server.receive_data(mallory.send(JoinRequest(info={"auth": {"nonce": "ab" * 32}})))
    server.next_event()
    mallory.receive_data(server.send(Accept(num_params=SIZE, spec_hash="h")))
    assert "proof" in mallory.next_event().info["auth"]
    return mallory


def test_frames_without_a_valid_tag_are_rejected_before_parsing() -> None:
    garbage = struct.pack(">I", 5) + b"\xc1" * 11  # header_len 5, then bytes msgpack never emits
    # With a wrong tag: rejected for the tag, the msgpack is never looked at.
    server = Connection(S, token=TOKEN)
    attacker(server)
    error = reject(server, tagged(OTHER, 0, Code.SPEC_CONFIRM, garbage))
    assert "failed authentication" in str(error) and "msgpack" not in str(error)
    assert server.auth_failures == 1
    # The same garbage with a valid tag gets through the check and fails to parse.
    pair = Pair()
    pair.handshake()
    error = reject(
        pair.server, tagged(keys_of(pair)[0], 0, Code.SPEC_CONFIRM, garbage), ErrorCode.PROTOCOL
    )
    assert "malformed msgpack" in str(error) and pair.server.auth_failures == 0


def test_a_wrong_key_unknown_code_or_short_frame_is_an_auth_error() -> None:
    body = encode(SpecConfirm(sender="mallory", spec_hash="h"))[8:]
    for frame in (
        tagged(OTHER, 0, Code.SPEC_CONFIRM, body),  # a well-formed frame under another token
        tagged(TOKEN, 0, 4242, body),  # the code is only checked after the tag
        encode(SpecConfirm(sender="mallory")),  # no tag at all
        struct.pack(">II", Code.HEARTBEAT, 8) + bytes(8),  # shorter than a tag
    ):
        server = Connection(S, token=TOKEN)
        attacker(server)
        reject(server, frame)
        assert server.auth_failures == 1 and not server.authenticated


# --- tampering, replay, spoofing --------------------------------------------------------------


def test_every_single_bit_flip_is_rejected() -> None:
    template = Pair().ready().post(C, SpecConfirm(spec_hash="h1"))
    filler = bytes(70_000)  # so that a length flip within the limit still completes the frame
    for bit in range(8 * len(template)):
        pair = Pair().ready()
        frame = bytearray(pair.post(C, SpecConfirm(spec_hash="h1")))
        assert len(frame) == len(template)
        frame[bit // 8] ^= 1 << (bit % 8)
        pair.server.receive_data(bytes(frame) + filler)
        with pytest.raises(RemoteProtocolError) as info:
            pair.server.next_event()
        if info.value.code is ErrorCode.TOO_LARGE:  # a length flip beyond the frame limit
            assert 4 <= bit // 8 < 8
        else:
            assert info.value.code is ErrorCode.AUTH and pair.server.auth_failures == 1


def test_replayed_reordered_and_reflected_frames_are_rejected() -> None:
    pair = Pair().ready()
    beat = pair.post(C, Heartbeat())
    pair.deliver(C)
    reject(pair.server, beat)  # the same bytes again

    pair = Pair().ready()
    pair.post(C, Heartbeat(round=1))
    reject(pair.server, pair.post(C, Heartbeat(round=2)))  # out of order

    pair = Pair().ready()
    reject(pair.server, pair.server.send(Heartbeat()))  # the server's own frame sent back

    old, new = Pair().ready(), Pair().ready()
    reject(new.server, old.post(C, Heartbeat()))  # a frame of another session, same counter
    assert new.server.auth_failures == 1


def test_a_dropped_frame_breaks_the_session() -> None:
    pair = Pair().ready()
    pair.post(C, Heartbeat())
    pair.inflight[C].clear()
    reject(pair.server, pair.post(C, PeerReport(metrics={"x": 1})))


@pytest.mark.parametrize("token", [None, TOKEN], ids=["plain", "token"])
def test_spoofed_sender_is_rejected_naming_both_ids(token: bytes | None) -> None:
    """After the join each side keeps its id; with a token the spoof even carries a valid tag
    (a member of the run posing as another)."""
    for receiver, claimed, real in ((S, "peer-2", "peer-1"), (C, "not-coord", "coord")):
        pair = Pair(token, token).ready()
        frame = encode(Heartbeat(sender=claimed, run_id="run-7"))
        if token:
            frame = retag(keys_of(pair)[receiver is C], 1, frame)  # counter 1: after the spec
        error = reject(pair.conn(receiver), frame)
        assert f"claims sender {claimed!r}" in str(error) and repr(real) in str(error)
        assert pair.conn(receiver).auth_failures == 1


def test_joining_client_sends_nothing_but_error_and_info_auth_is_reserved() -> None:
    pair = Pair()
    with pytest.raises(LocalProtocolError, match="reserved"):
        pair.client.send(JoinRequest(info={"auth": {}}))
    pair.post(C, JoinRequest())
    for message in (Heartbeat(), Goodbye()):
        assert not pair.client.can_send(type(message))
        with pytest.raises(LocalProtocolError, match="nothing between its join and the answer"):
            pair.client.send(message)
    assert pair.client.can_send(Error) and pair.client.state is State.JOINING
    pair.deliver(C)
    pair.say(S, Heartbeat())  # the server may send untagged notifications before its answer
    pair.say(S, Accept(num_params=SIZE, spec_hash="h"))
    assert pair.client.can_send(Heartbeat)
    pair.say(C, Heartbeat())


@SETTINGS
@given(data=st.data())
def test_random_full_duplex_schedules_with_a_token_never_fail(data: st.DataObject) -> None:
    """As in test_state, each side sends what it may while the other's frames are in flight:
    crossing the handshake never causes a tag failure, and both views end equal."""
    pair = Pair()
    for _ in range(data.draw(st.integers(1, 40))):
        role = data.draw(st.sampled_from([C, S]))
        if pair.inflight[role] and data.draw(st.booleans()):
            pair.deliver(role)
            continue
        conn = pair.conn(role)
        codes = sorted(c for c in allowed(conn.state, role) if c is not Code.ERROR
                       and conn.can_send(type(SAMPLES[c])))
        if codes:
            pair.post(role, SAMPLES[data.draw(st.sampled_from(codes))])
    while pair.inflight[C] or pair.inflight[S]:
        pair.deliver(C if pair.inflight[C] else S)
    assert pair.client.state is pair.server.state
    assert pair.client.auth_failures == pair.server.auth_failures == 0
    accepted = any(role is S and frame[:4] == struct.pack(">I", Code.ACCEPT) for role, frame in pair.wire)
    assert pair.client.authenticated == accepted


def test_server_cannot_accept_without_a_join_nonce() -> None:
    server = Connection(S, token=TOKEN)
    server.state = State.JOINING  # as if a join had been received without going through auth
    assert not server.can_send(Accept)
    with pytest.raises(LocalProtocolError, match="no join with a run-token nonce"):
        server.send(Accept(num_params=1, spec_hash="h"))
    assert server.sent.messages == 0 and server.next_seq == 1


def test_tokens_must_be_long_random_bytes() -> None:
    assert check_token(bytearray(TOKEN)) == TOKEN
    with pytest.raises(ValueError, match=f"at least {MIN_TOKEN_SIZE}"):
        Connection(C, token=b"short")
    with pytest.raises(TypeError, match="must be bytes"):
        Connection(C, token="a string")  # type: ignore[arg-type]


def test_no_token_frames_are_exactly_the_plain_encoding() -> None:
    pair = Pair(None, None)
    join = pair.post(C, JoinRequest(num_samples=5))
    assert join == encode(JoinRequest(num_samples=5, sender="peer-1", seq=1))
    pair.deliver(C)
    accept = pair.post(S, Accept(num_params=SIZE, spec_hash="h"))
    assert accept == encode(Accept(num_params=SIZE, spec_hash="h", sender="coord", run_id="run-7", seq=1))


@SETTINGS
@given(data=st.data(), direction=st.sampled_from([C, S]), step=st.sampled_from([None, 1, 5]))
def test_mutated_tagged_frames_never_decode(
    data: st.DataObject, direction: Role, step: int | None
) -> None:
    """Any change to 1-4 bytes of a tagged frame (Upload up, dense Params down) is an error."""
    pair = Pair().ready()
    if direction is S:
        pair.say(C, ParamsRequest())
    message = Upload(vector=UPDATE, num_samples=3) if direction is C else Params(vector=MODEL)
    frame = bytearray(pair.post(direction, message))
    positions = data.draw(st.sets(st.integers(0, len(frame) - 1), min_size=1, max_size=4))
    for pos in positions:
        frame[pos] ^= data.draw(st.integers(1, 255))
    receiver = pair.conn(direction.other)
    size = step or len(frame)
    with pytest.raises(RemoteProtocolError):
        for start in range(0, len(frame), size):
            receiver.receive_data(bytes(frame[start : start + size]))
            assert receiver.next_event() is NEED_DATA
        receiver.receive_data(b"")
        receiver.next_event()
    assert receiver.state is State.ERROR


# --- MessageStream over loopback TCP ----------------------------------------------------------


class Server:
    """A token-protected server session that records how each connection ended."""

    def __init__(self, token: bytes | None = TOKEN) -> None:
        self.token = token
        self.errors: list[BaseException] = []
        self.conns: list[Connection] = []
        self.done = trio.Event()

    async def __call__(self, stream: trio.abc.Stream) -> None:
        conn = Connection(S, local_id="coord", run_id="run-1", token=self.token)
        self.conns.append(conn)
        try:
            async with MessageStream(stream, conn, timeout=5) as ms:
                async for message in ms:
                    if isinstance(message, JoinRequest):
                        await ms.send(Accept(num_params=SIZE, spec_hash="h"))
                    elif isinstance(message, SpecConfirm):
                        await ms.send(SpecReply(ok=True, spec_hash="h"))
                    elif isinstance(message, ParamsRequest):
                        await ms.send(Params(vector=MODEL))
                    elif isinstance(message, Upload):
                        await ms.send(Ack(accepted=True, ack_seq=message.seq))
        except Exception as exc:
            self.errors.append(exc)
        finally:
            self.done.set()


async def serving(server: Server, test: Callable) -> None:
    network = TcpNetwork()
    async with trio.open_nursery() as nursery:
        address = await nursery.start(network.serve, "127.0.0.1:0", server)
        with trio.fail_after(10):
            await test(network, address)
            await server.done.wait()
        nursery.cancel_scope.cancel()


async def test_tcp_session_with_token() -> None:
    server = Server()

    async def client(network: TcpNetwork, address: str) -> None:
        conn = Connection(C, local_id="p1", token=TOKEN)
        async with await dial(network, address, conn, timeout=5) as ms:
            await ms.send(JoinRequest())
            assert isinstance(await ms.receive(), Accept) and conn.authenticated
            await ms.send(SpecConfirm(spec_hash="h"))
            assert (await ms.receive()).ok
            await ms.send(ParamsRequest())
            assert np.array_equal((await ms.receive()).vector, MODEL)
            await ms.send(Upload(vector=UPDATE))
            assert (await ms.receive()).accepted
        assert conn.state is State.CLOSED

    await serving(server, client)
    assert server.errors == [] and server.conns[0].authenticated


async def test_tcp_wrong_token_client_fails_and_both_sides_close() -> None:
    server = Server()

    async def client(network: TcpNetwork, address: str) -> None:
        conn = Connection(C, local_id="p1", token=OTHER)
        ms = await dial(network, address, conn, timeout=5)
        await ms.send(JoinRequest())
        with pytest.raises(RemoteProtocolError, match="proof does not match"):
            await ms.receive()
        assert conn.auth_failures == 1  # it told the server (untagged Error) and closed

    await serving(server, client)
    (error,) = server.errors
    assert isinstance(error, RemoteProtocolError) and error.code is ErrorCode.AUTH
    assert server.conns[0].auth_failures == 1 and server.conns[0].state is State.ERROR


async def test_tcp_client_without_token_gets_an_error_message_and_eof() -> None:
    server = Server()

    async def client(network: TcpNetwork, address: str) -> None:
        ms = await dial(network, address, Connection(C, local_id="p1"), timeout=5)
        await ms.send(JoinRequest())
        with pytest.raises(PeerError) as info:
            await ms.receive()
        assert info.value.message.code == ErrorCode.AUTH
        assert "no run token" in info.value.message.detail
        with pytest.raises(PeerClosedError):
            await ms.receive()

    await serving(server, client)
    assert server.conns[0].auth_failures == 1


async def test_tcp_forged_frame_gets_an_error_message_and_eof() -> None:
    """A client that does not know the token and ignores the proof: its first frame after the
    accept carries a made-up tag; the server answers with an Error (tagged) and closes."""
    server = Server()

    async def client(network: TcpNetwork, address: str) -> None:
        stream = await network.connect(address)
        mallory = Connection(C, local_id="mallory")
        await stream.send_all(mallory.send(JoinRequest(info={"auth": {"nonce": "00" * 32}})))
        received = bytearray()
        while len(received) < 8 or len(received) < 8 + struct.unpack(">I", received[4:8])[0]:
            received += await stream.receive_some(1 << 16)
        await stream.send_all(tagged(OTHER, 0, Code.SPEC_CONFIRM, encode(SpecConfirm())[8:]))
        while chunk := await stream.receive_some(1 << 16):
            received += chunk  # until EOF: the server closes
        decoder = FrameDecoder()
        decoder.receive_data(bytes(received))
        decoder.receive_data(b"")
        def strip(code: int, length: int, body: memoryview) -> memoryview:
            return body[: length - TAG_SIZE]  # mallory cannot check the tag, only cut it off

        assert isinstance(decoder.next_frame().message, Accept)
        error = decoder.next_frame(strip).message
        assert isinstance(error, Error) and error.code == ErrorCode.AUTH
        assert decoder.next_frame() is EOF
        await stream.aclose()

    await serving(server, client)
    (error,) = server.errors
    assert isinstance(error, RemoteProtocolError) and error.code is ErrorCode.AUTH
    assert server.conns[0].auth_failures == 1 and not server.conns[0].authenticated
