"""Transports: memory, loopback TCP and TLS (certificates made here with trustme)."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest
import trio
import trio.testing
import trustme

from ringfl.errors import ConfigError
from ringfl.protocol import (
    Accept,
    Ack,
    Connection,
    ErrorCode,
    Goodbye,
    Heartbeat,
    JoinRequest,
    Params,
    ParamsRequest,
    PeerReport,
    RemoteProtocolError,
    Role,
    SpecConfirm,
    SpecReply,
    State,
    Upload,
)
from ringfl.transport import (
    AddressError,
    ConnectError,
    DeadlineError,
    MemoryNetwork,
    MessageStream,
    Network,
    PeerClosedError,
    PeerError,
    TcpNetwork,
    TlsConfig,
    TlsNetwork,
    client_ssl_context,
    dial,
    format_address,
    parse_address,
    server_ssl_context,
)
from ringfl.vectors import SparseVector

SIZE = 10_000
MODEL = np.linspace(-1, 1, SIZE, dtype=np.float32)


class Coordinator:
    """A tiny server session: accepts, confirms the spec, serves parameters, acks uploads."""

    def __init__(self) -> None:
        self.streams: list[MessageStream] = []
        self.uploads: list[Upload] = []

    async def __call__(self, stream: trio.abc.Stream) -> None:
        conn = Connection(Role.SERVER, local_id="coord", run_id="run-1")
        async with MessageStream(stream, conn, timeout=5) as ms:
            self.streams.append(ms)
            async for message in ms:
                reply = self.reply(message)
                if reply is not None:
                    await ms.send(reply)

    def reply(self, message: object) -> object:
        if isinstance(message, JoinRequest):
            return Accept(num_params=SIZE, spec_hash="h")
        if isinstance(message, SpecConfirm):
            return SpecReply(ok=True, spec_hash="h")
        if isinstance(message, ParamsRequest):
            return Params(vector=MODEL, model_version=1)
        if isinstance(message, Upload):
            self.uploads.append(message)
            return Ack(accepted=True, ack_seq=message.seq)
        return None


async def client_session(network: Network, address: str) -> MessageStream:
    async with await dial(
        network, address, Connection(Role.CLIENT, local_id="p1"), timeout=5
    ) as ms:
        await ms.send(JoinRequest(num_samples=600))
        assert isinstance(await ms.receive(), Accept)
        await ms.send(SpecConfirm(spec_hash="h"))
        assert (await ms.receive()).ok
        await ms.send(ParamsRequest())
        params = await ms.receive()
        assert np.array_equal(params.vector, MODEL)
        update = SparseVector.take(params.vector, np.arange(0, SIZE, 100))
        await ms.send(Upload(vector=update, num_samples=600))
        ack = await ms.receive()
        assert ack.accepted and ack.ack_seq == 4
    assert ms.state is State.CLOSED
    return ms


async def run_session(network: Network, address: str) -> None:
    coordinator = Coordinator()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(network.serve, address, coordinator)
        client = await client_session(network, bound)
        nursery.cancel_scope.cancel()
    (server,) = coordinator.streams
    assert coordinator.uploads[0].vector == SparseVector.take(MODEL, np.arange(0, SIZE, 100))
    assert client.bytes_sent == server.bytes_received
    assert client.bytes_received == server.bytes_sent
    assert client.received.payload_bytes == SIZE * 4
    assert client.sent.messages == server.received.messages == 5  # incl. goodbye


async def test_memory_network_session() -> None:
    await run_session(MemoryNetwork(), "coordinator")


async def test_tcp_loopback_session() -> None:
    await run_session(TcpNetwork(), "127.0.0.1:0")


# --- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    ca = trustme.CA()
    root = tmp_path_factory.mktemp("pki")
    paths = {name: root / f"{name}.pem" for name in ("ca", "server", "server_key", "client")}
    ca.cert_pem.write_to_path(paths["ca"])
    server = ca.issue_cert("127.0.0.1", "localhost")
    for blob in server.cert_chain_pems:
        blob.write_to_path(paths["server"], append=True)
    server.private_key_pem.write_to_path(paths["server_key"])
    ca.issue_cert("peer-7").private_key_and_cert_chain_pem.write_to_path(paths["client"])
    return paths


async def test_tls_session(pki: dict[str, Path]) -> None:
    server = TlsNetwork(TlsConfig(cert=pki["server"], key=pki["server_key"]))
    client = TlsNetwork(TlsConfig(ca=pki["ca"]))
    coordinator = Coordinator()
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.serve, "127.0.0.1:0", coordinator)
        await client_session(client, bound)
        nursery.cancel_scope.cancel()
    assert len(coordinator.uploads) == 1


async def test_mutual_tls_requires_a_client_certificate(pki: dict[str, Path]) -> None:
    server = TlsNetwork(
        TlsConfig(ca=pki["ca"], cert=pki["server"], key=pki["server_key"], require_client_cert=True)
    )
    with_cert = TlsNetwork(TlsConfig(ca=pki["ca"], cert=pki["client"]))
    without_cert = TlsNetwork(TlsConfig(ca=pki["ca"]))
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.serve, "127.0.0.1:0", Coordinator())
        await client_session(with_cert, bound)
        with pytest.raises((ConnectError, PeerClosedError)):
            ms = await dial(without_cert, bound, Connection(Role.CLIENT), timeout=5)
            await ms.send(JoinRequest())
            await ms.receive()  # TLS 1.3: the server's refusal arrives with the first read
        nursery.cancel_scope.cancel()


async def test_tls_client_rejects_an_untrusted_server(pki: dict[str, Path]) -> None:
    server = TlsNetwork(TlsConfig(cert=pki["server"], key=pki["server_key"]))
    stranger = TlsNetwork(TlsConfig(ca=trustme_ca_path(pki["ca"].parent)))
    async with trio.open_nursery() as nursery:
        bound = await nursery.start(server.serve, "127.0.0.1:0", Coordinator())
        with pytest.raises(ConnectError, match="TLS handshake"):
            await stranger.connect(bound)
        nursery.cancel_scope.cancel()


def trustme_ca_path(directory: Path) -> Path:
    path = directory / "other-ca.pem"
    trustme.CA().cert_pem.write_to_path(path)
    return path


def test_tls_contexts_trust_only_the_configured_ca(pki: dict[str, Path]) -> None:
    mutual = TlsConfig(
        ca=pki["ca"], cert=pki["server"], key=pki["server_key"], require_client_cert=True
    )
    assert server_ssl_context(mutual).cert_store_stats()["x509_ca"] == 1
    assert client_ssl_context(TlsConfig(ca=pki["ca"])).cert_store_stats()["x509_ca"] == 1


def test_tls_config_errors_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs a certificate"):
        server_ssl_context(TlsConfig())
    with pytest.raises(ConfigError, match="missing.pem: certificate does not exist"):
        server_ssl_context(TlsConfig(cert=tmp_path / "missing.pem"))


# --- MessageStream behaviour --------------------------------------------------------------------


def stream_pair(**options: object) -> tuple[MessageStream, MessageStream]:
    a, b = trio.testing.memory_stream_pair()
    return (
        MessageStream(a, Connection(Role.CLIENT, local_id="c"), **options),
        MessageStream(b, Connection(Role.SERVER, local_id="s"), **options),
    )


async def join(client: MessageStream, server: MessageStream, num_params: int = SIZE) -> None:
    await client.send(JoinRequest())
    await server.receive()
    await server.send(Accept(num_params=num_params, spec_hash="h"))
    await client.receive()


async def test_receive_deadline_raises_a_clear_error(autojump_clock: trio.abc.Clock) -> None:
    client, server = stream_pair(timeout=2.5)
    await join(client, server)
    with pytest.raises(DeadlineError, match="waiting for a message took longer than 2.5 s") as info:
        await client.receive()
    assert isinstance(info.value, TimeoutError)
    assert client.state is State.ACCEPTED  # a receive timeout leaves the session usable


async def test_concurrent_senders_never_interleave_frames() -> None:
    a, b = trio.testing.lockstep_stream_pair()  # send_all blocks until read: forces overlap
    client = MessageStream(a, Connection(Role.CLIENT))
    server = MessageStream(b, Connection(Role.SERVER), receive_size=512)
    blob = "x" * 20_000

    async def sender(task: int) -> None:
        for i in range(5):
            await client.send(PeerReport(metrics={"task": task, "i": i, "blob": blob}))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.send, JoinRequest())
        await server.receive()
        nursery.start_soon(server.send, Accept(num_params=SIZE, spec_hash="h"))
        await client.receive()
        nursery.start_soon(sender, 1)
        nursery.start_soon(sender, 2)
        reports = [await server.receive() for _ in range(10)]
    assert sorted((r.metrics["task"], r.metrics["i"]) for r in reports) == sorted(
        (t, i) for t in (1, 2) for i in range(5)
    )
    assert all(r.metrics["blob"] == blob for r in reports)
    assert [r.seq for r in reports] == list(range(2, 12))


async def test_send_deadline_covers_waiting_for_another_sender() -> None:
    a, b = trio.testing.lockstep_stream_pair()  # send_all blocks until the peer reads
    client = MessageStream(a, Connection(Role.CLIENT), timeout=None)
    server = MessageStream(b, Connection(Role.SERVER))
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.send, JoinRequest())  # stuck holding the lock
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(DeadlineError, match="waiting for another sender"):
                await client.send(Heartbeat(), timeout=0.2)
            assert client.conn.next_seq == 2  # nothing was encoded or sent
            assert isinstance(await server.receive(), JoinRequest)  # the stream still works
    assert client.sent.messages == 1


async def test_protocol_violation_is_reported_to_the_peer() -> None:
    client, server = stream_pair(timeout=5)
    await client.stream.send_all(b"\x00\x00\x03\xe9\x00\x00\x00\x04junk")  # code 1001, bad body
    with pytest.raises(RemoteProtocolError):
        await server.receive()
    with pytest.raises(PeerError, match="peer reported error 1") as info:
        await client.receive()
    assert info.value.message.code == ErrorCode.PROTOCOL
    assert server.state is client.state is State.ERROR


async def test_unexpected_message_is_a_protocol_error_for_the_receiver() -> None:
    client, server = stream_pair(timeout=5)
    await join(client, server)
    raw = Connection(Role.SERVER)
    raw.state = State.UPLOADING  # a buggy server that thinks an upload is pending
    await server.stream.send_all(raw.send(Ack(accepted=True)))
    with pytest.raises(RemoteProtocolError, match="server may not send ack in state accepted"):
        await client.receive()


async def test_server_survives_a_misbehaving_client() -> None:
    network = MemoryNetwork()
    coordinator = Coordinator()
    async with trio.open_nursery() as nursery:
        await nursery.start(network.serve, "coord", coordinator)
        rogue = await network.connect("coord")
        await rogue.send_all(b"\xff" * 64)
        await trio.testing.wait_all_tasks_blocked()
        await client_session(network, "coord")
        nursery.cancel_scope.cancel()
    assert len(coordinator.uploads) == 1


async def test_eof_raises_peer_closed_and_ends_iteration() -> None:
    client, server = stream_pair(timeout=5)
    await join(client, server)
    await client.stream.aclose()
    with pytest.raises(PeerClosedError):
        await server.receive()
    assert server.state is State.CLOSED
    assert [m async for m in server] == []


async def test_goodbye_is_yielded_and_both_sides_close() -> None:
    client, server = stream_pair(timeout=5)
    await join(client, server)
    received: list = []

    async def serve() -> None:
        async with server:
            received.extend([m async for m in server])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(serve)
        await client.aclose("done")
    assert [type(m) for m in received] == [Goodbye] and received[0].reason == "done"
    assert client.state is server.state is State.CLOSED


# --- networks and addresses ---------------------------------------------------------------------


async def test_memory_network_addresses() -> None:
    network = MemoryNetwork()
    with pytest.raises(ConnectError, match="nothing listens"):
        await network.connect("nobody")
    async with trio.open_nursery() as nursery:
        name = await nursery.start(network.serve, "", Coordinator())
        assert name.startswith("mem-")
        with pytest.raises(AddressError, match="already in use"):
            await network.serve(name, Coordinator())
        nursery.cancel_scope.cancel()


async def test_tcp_connect_refused_is_a_connect_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ConnectError, match="cannot connect"):
        await TcpNetwork().connect(f"127.0.0.1:{port}")


def test_addresses_parse_and_format() -> None:
    assert parse_address("127.0.0.1:80") == ("127.0.0.1", 80)
    assert parse_address("[::1]:7000") == ("::1", 7000)
    assert format_address("::1", 7000) == "[::1]:7000"
    for bad in ("localhost", ":80", "host:", "host:99999", "host:x"):
        with pytest.raises(AddressError):
            parse_address(bad)


# --- in-memory backpressure ---------------------------------------------------------------------


async def serve_and_connect(
    network: MemoryNetwork, nursery: trio.Nursery
) -> tuple[trio.abc.Stream, trio.abc.Stream]:
    """A memory connection whose server end is handed back unread (the handler just waits)."""
    accepted: list[trio.abc.Stream] = []

    async def hold(stream: trio.abc.Stream) -> None:
        accepted.append(stream)
        await trio.sleep_forever()

    address = await nursery.start(network.serve, "", hold)
    client = await network.connect(address)
    await trio.testing.wait_all_tasks_blocked()
    return client, accepted[0]


async def test_memory_send_waits_for_a_stalled_reader(autojump_clock: trio.abc.Clock) -> None:
    limit = 64 << 10
    data = bytes(range(256)) * (3 * limit // 256)  # three buffers' worth
    done = trio.Event()
    async with trio.open_nursery() as nursery:
        client, server = await serve_and_connect(MemoryNetwork(buffer_bytes=limit), nursery)

        async def send() -> None:
            await client.send_all(data)
            done.set()

        nursery.start_soon(send)
        await trio.sleep(60)  # the reader reads nothing for a minute: the sender stays stuck
        assert not done.is_set()
        received = bytearray(await server.receive_some())
        assert len(received) == limit  # exactly one buffer's worth was let through
        while len(received) < len(data):
            received += await server.receive_some(10_000)
        await done.wait()
        assert received == data
        nursery.cancel_scope.cancel()


async def test_memory_frame_larger_than_the_buffer_reaches_an_active_reader() -> None:
    limit = 4096
    data = np.arange(limit, dtype=np.int64).tobytes()  # 8 buffers' worth in one send_all
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            client, server = await serve_and_connect(MemoryNetwork(buffer_bytes=limit), nursery)
            nursery.start_soon(client.send_all, data)
            received = bytearray()
            while len(received) < len(data):
                received += await server.receive_some()
            assert received == data
            nursery.cancel_scope.cancel()
    await run_session(MemoryNetwork(buffer_bytes=1000), "small")  # 40 kB Params messages


async def test_memory_send_deadline_fires_on_a_stalled_reader(
    autojump_clock: trio.abc.Clock,
) -> None:
    async with trio.open_nursery() as nursery:
        raw, raw_server = await serve_and_connect(MemoryNetwork(buffer_bytes=16 << 10), nursery)
        client = MessageStream(raw, Connection(Role.CLIENT), timeout=None)
        server = MessageStream(raw_server, Connection(Role.SERVER))
        await join(client, server)  # then the server stops reading
        await client.send(PeerReport(metrics={"small": 1}), timeout=1)  # fits: returns at once
        with pytest.raises(DeadlineError, match="sending report took longer than 2 s"):
            await client.send(PeerReport(metrics={"blob": "x" * 40_000}), timeout=2)
        assert trio.current_time() == pytest.approx(2)
        with pytest.raises(trio.ClosedResourceError):  # the partial frame closed the stream
            await raw.send_all(b"x")
        assert (await server.receive()).metrics == {"small": 1}  # what was buffered still arrives
        with pytest.raises(RemoteProtocolError):  # then the cut-off frame
            await server.receive()
        nursery.cancel_scope.cancel()


async def test_memory_stream_close_and_eof_behave_like_a_socket() -> None:
    async with trio.open_nursery() as nursery:
        client, server = await serve_and_connect(MemoryNetwork(buffer_bytes=4), nursery)
        await client.send_all(b"hi")
        assert isinstance(client, trio.abc.HalfCloseableStream)
        await client.send_eof()
        with pytest.raises(trio.ClosedResourceError):
            await client.send_all(b"more")
        assert await server.receive_some() == b"hi"
        assert await server.receive_some() == b""  # EOF, and again
        assert await server.receive_some() == b""
        await server.send_all(b"back")  # the other direction still works
        assert await client.receive_some(3) == b"bac"

        async def blocked_send() -> None:
            with pytest.raises(trio.BrokenResourceError):  # woken by the reader's close
                await server.send_all(b"blocked")  # 1 + 7 bytes > 4: waits for the reader

        nursery.start_soon(blocked_send)
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BusyResourceError):
            await server.send_all(b"x")
        await client.aclose()
        await client.aclose()  # idempotent
        with pytest.raises(trio.ClosedResourceError):
            await client.receive_some()
        with pytest.raises(trio.BrokenResourceError):
            await server.send_all(b"x")  # the reader is gone
        nursery.cancel_scope.cancel()
