"""Byte streams for the protocol, behind one interface: TCP, TLS over TCP and in-memory pairs.

A :class:`Network` dials and listens on string addresses (``host:port`` for TCP/TLS, any name
for :class:`MemoryNetwork`), so peer and coordinator code never cares which transport carries it.
A :class:`MessageStream` joins a trio stream to a sans-IO
:class:`~ringfl.protocol.state.Connection`: messages in and out, per-message deadlines, byte
counters and a graceful close. Failures of one connection (peer errors, broken sockets, deadlines)
end that connection's handler, never the server.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import ssl
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio
import trio.testing

from ringfl.errors import ConfigError
from ringfl.protocol import (
    EOF,
    NEED_DATA,
    Connection,
    Counters,
    Error,
    Goodbye,
    Message,
    ProtocolError,
    RemoteProtocolError,
    State,
    message_name,
)
from ringfl.protocol.state import LEAVING

log = logging.getLogger(__name__)

StreamHandler = Callable[[trio.abc.Stream], Awaitable[None]]
"""Called with each accepted stream; the stream is closed when it returns."""


class TransportError(Exception):
    """Base of connection-level failures (as opposed to protocol violations)."""


class ConnectError(TransportError):
    """Could not reach or handshake with the address."""


class AddressError(TransportError, ValueError):
    """An address is malformed or already in use."""


class PeerClosedError(TransportError):
    """The peer closed the connection, or it broke."""


class DeadlineError(TransportError, TimeoutError):
    """A send, receive or handshake took longer than its deadline."""


class PeerError(TransportError):
    """The peer reported a fatal problem with an ``Error`` message."""

    def __init__(self, message: Error) -> None:
        super().__init__(f"peer reported error {message.code}: {message.detail}")
        self.message = message


CONNECTION_ERRORS = (
    TransportError,
    ProtocolError,
    trio.BrokenResourceError,
    trio.ClosedResourceError,
)
"""What ends one connection without being a bug in our code."""


def _describe(exc: BaseException) -> str:
    """trio wraps OS and SSL errors; the cause says what actually happened."""
    return str(exc) or repr(exc.__cause__ or exc)


@contextlib.contextmanager
def deadline(seconds: float | None, what: str, *, started: float | None = None) -> Iterator[None]:
    """``trio.fail_after`` that raises :class:`DeadlineError` naming what was late.

    ``started`` (a ``trio.current_time()``) lets several steps share one budget.
    """
    if seconds is None:
        yield
        return
    try:
        with trio.fail_at((trio.current_time() if started is None else started) + seconds):
            yield
    except trio.TooSlowError as exc:
        raise DeadlineError(f"{what} took longer than {seconds:g} s") from exc


# --- TLS ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TlsConfig:
    """Certificate paths (PEM). A server needs ``cert`` + ``key``; ``require_client_cert`` makes
    it verify clients against ``ca`` (mutual TLS). A client verifies the server against ``ca``
    (system roots if None) and presents ``cert`` + ``key`` if given."""

    ca: str | Path | None = None
    cert: str | Path | None = None
    key: str | Path | None = None
    require_client_cert: bool = False
    server_hostname: str | None = None  # client: name to verify instead of the address host


def _load(what: str, load: Callable[..., Any], *paths: str | Path | None) -> None:
    try:
        load(*(str(p) if p else None for p in paths))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"cannot load TLS {what} {', '.join(map(str, filter(None, paths)))}: {exc}"
        ) from exc


def server_ssl_context(config: TlsConfig) -> ssl.SSLContext:
    """An SSL context for the accepting side (built by :mod:`ringfl.certs`: TLS 1.2+, and with
    mutual TLS only ``config.ca`` vouches for clients — no system roots)."""
    from ringfl.certs import CertPaths, server_context

    if not config.cert:
        raise ConfigError("a TLS server needs a certificate (cert) and key")
    if config.require_client_cert and not config.ca:
        raise ConfigError("mutual TLS needs a CA (ca) to verify client certificates")
    key = config.key or config.cert  # a PEM may hold both
    paths = CertPaths(Path(config.ca or config.cert), Path(config.cert), Path(key))
    return server_context(paths, config.require_client_cert)


def client_ssl_context(config: TlsConfig) -> ssl.SSLContext:
    """An SSL context for the dialling side: trusts only ``config.ca`` if given (system roots
    otherwise) and presents ``config.cert`` for mutual TLS."""
    if config.ca:
        from ringfl.certs import client_context

        key = config.key or config.cert  # a PEM may hold both
        return client_context(config.ca, config.cert, key if config.cert else None)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if config.cert:
        _load("certificate", context.load_cert_chain, config.cert, config.key)
    return context


# --- networks ----------------------------------------------------------------------------------


def parse_address(address: str) -> tuple[str, int]:
    """``"host:port"`` (IPv6 hosts in brackets) -> (host, port)."""
    host, sep, port = address.rpartition(":")
    if not (sep and host and port.isdigit() and int(port) < 65536):
        raise AddressError(f"address must look like host:port, got {address!r}")
    return host.strip("[]"), int(port)


def format_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Network(ABC):
    """Dial and listen by address; the same calls for every transport."""

    @abstractmethod
    async def connect(self, address: str) -> trio.abc.Stream:
        """Open a stream to ``address``; raises :class:`ConnectError`."""

    @abstractmethod
    async def serve(
        self,
        address: str,
        handler: StreamHandler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Run ``handler`` for every incoming stream until cancelled.

        Use with ``nursery.start``: it returns the bound address (the real port for port 0).
        """


async def _run_handler(
    handler: StreamHandler,
    prepare: Callable[[trio.abc.Stream], Awaitable[None]],
    stream: trio.abc.Stream,
) -> None:
    """One connection's life: a failure here is logged and closes only this connection."""
    try:
        await prepare(stream)
        await handler(stream)
    except CONNECTION_ERRORS as exc:
        log.info("connection ended: %s: %s", type(exc).__name__, exc)
    finally:
        await _quiet_close(stream)


async def _quiet_close(stream: trio.abc.Stream, timeout: float = 1.0) -> None:
    """Graceful close (TLS close_notify) if quick, else forceful: trio closes either way."""
    with (
        trio.move_on_after(timeout),
        contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError),
    ):
        await stream.aclose()


async def _nothing_to_prepare(stream: trio.abc.Stream) -> None:
    await trio.lowlevel.checkpoint()


class TcpNetwork(Network):
    """Plain TCP (``trio.open_tcp_stream`` / listeners); addresses are ``host:port``."""

    async def connect(self, address: str) -> trio.abc.Stream:
        host, port = parse_address(address)
        try:
            stream: trio.abc.Stream = await trio.open_tcp_stream(host, port)
        except OSError as exc:
            raise ConnectError(f"cannot connect to {address}: {exc}") from exc
        return await self._secure_client(stream, host, address)

    async def serve(
        self,
        address: str,
        handler: StreamHandler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        host, port = parse_address(address)
        try:
            listeners = await trio.open_tcp_listeners(port, host=host)
        except OSError as exc:
            raise AddressError(f"cannot listen on {address}: {exc}") from exc
        bound = format_address(host, listeners[0].socket.getsockname()[1])
        task_status.started(bound)
        run = functools.partial(_run_handler, handler, self._secure_server)
        await trio.serve_listeners(run, [self._wrap_listener(x) for x in listeners])

    async def _secure_client(
        self, stream: trio.abc.Stream, host: str, address: str
    ) -> trio.abc.Stream:
        """Hook: the dialled stream as messages will use it (TLS wraps it here)."""
        return stream

    async def _secure_server(self, stream: trio.abc.Stream) -> None:
        """Hook: runs on each accepted stream before the handler (TLS handshakes here)."""
        await _nothing_to_prepare(stream)

    def _wrap_listener(self, listener: trio.SocketListener) -> trio.abc.Listener:
        """Hook: the listener accepted streams come from (TLS wraps it here)."""
        return listener


class TlsNetwork(TcpNetwork):
    """TLS over TCP (``trio.SSLStream``); the handshake completes before any message."""

    def __init__(self, config: TlsConfig, *, handshake_timeout: float = 10.0) -> None:
        self.config = config
        self.handshake_timeout = handshake_timeout

    @functools.cached_property
    def _client_context(self) -> ssl.SSLContext:
        return client_ssl_context(self.config)

    @functools.cached_property
    def _server_context(self) -> ssl.SSLContext:
        return server_ssl_context(self.config)

    async def _secure_client(
        self, stream: trio.abc.Stream, host: str, address: str
    ) -> trio.abc.Stream:
        hostname = self.config.server_hostname or host
        tls = trio.SSLStream(stream, self._client_context, server_hostname=hostname)
        try:
            with deadline(self.handshake_timeout, f"TLS handshake with {address}"):
                await tls.do_handshake()
        except (trio.BrokenResourceError, DeadlineError) as exc:
            await trio.aclose_forcefully(tls)
            raise ConnectError(f"TLS handshake with {address} failed: {_describe(exc)}") from exc
        return tls

    async def _secure_server(self, stream: trio.abc.Stream) -> None:
        assert isinstance(stream, trio.SSLStream)
        with deadline(self.handshake_timeout, "TLS handshake"):
            await stream.do_handshake()

    def _wrap_listener(self, listener: trio.SocketListener) -> trio.abc.Listener:
        return trio.SSLListener(listener, self._server_context)


class _Pipe:
    """One direction of an in-memory connection: unread bytes, capped at ``limit``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.data = bytearray()
        self.eof = False  # the writer is done: the reader gets what is left, then b""
        self.broken = False  # the reader is gone: writes fail
        self.changed = trio.lowlevel.ParkingLot()  # reader and writer wait here for each other


class MemoryStream(trio.abc.HalfCloseableStream):
    """One end of an in-memory connection holding at most ``buffer_bytes`` unread per direction.

    Unlike ``trio.testing.memory_stream_pair`` (unbounded), ``send_all`` waits while the buffer
    is full, as on a full TCP socket: a reader that stalls costs its sender a deadline, not
    unbounded memory. Data larger than the buffer goes through in chunks as the reader drains.
    Errors match sockets: ``ClosedResourceError`` after our own close, ``BrokenResourceError``
    when sending to a closed reader, ``b""`` after the writer's close or ``send_eof``.
    """

    def __init__(self, outgoing: _Pipe, incoming: _Pipe) -> None:
        self._out = outgoing
        self._in = incoming
        self._closed = False
        self._busy: set[str] = set()

    @classmethod
    def pair(cls, buffer_bytes: int) -> tuple[MemoryStream, MemoryStream]:
        """Two connected ends."""
        if buffer_bytes < 1:
            raise ValueError("buffer_bytes must be >= 1")
        one, two = _Pipe(buffer_bytes), _Pipe(buffer_bytes)
        return cls(one, two), cls(two, one)

    @contextlib.contextmanager
    def _exclusive(self, what: str) -> Iterator[None]:
        if what in self._busy:
            raise trio.BusyResourceError(f"another task is already {what} on this stream")
        self._busy.add(what)
        try:
            yield
        finally:
            self._busy.discard(what)

    def _check_send(self) -> None:
        if self._closed or self._out.eof:
            raise trio.ClosedResourceError("this stream is closed for sending")
        if self._out.broken:
            raise trio.BrokenResourceError("the other end closed the connection")

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        with self._exclusive("sending"), memoryview(data) as view:
            await trio.lowlevel.checkpoint()
            out, sent = self._out, 0
            while True:
                self._check_send()
                room = out.limit - len(out.data)
                if room > 0 and sent < len(view):
                    out.data += view[sent : sent + room]
                    sent += room
                    out.changed.unpark_all()
                if sent >= len(view):
                    return
                await out.changed.park()  # full: wait for the reader (or a close)

    async def wait_send_all_might_not_block(self) -> None:
        with self._exclusive("sending"):
            await trio.lowlevel.checkpoint()
            out = self._out
            while len(out.data) >= out.limit and not (self._closed or out.eof or out.broken):
                await out.changed.park()
            if self._closed:
                raise trio.ClosedResourceError("this stream is closed")

    async def send_eof(self) -> None:
        with self._exclusive("sending"):
            await trio.lowlevel.checkpoint()
            if self._closed:
                raise trio.ClosedResourceError("this stream is closed")
            self._out.eof = True
            self._out.changed.unpark_all()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if max_bytes is not None and max_bytes < 1:
            raise ValueError("max_bytes must be >= 1")
        with self._exclusive("receiving"):
            await trio.lowlevel.checkpoint()
            pipe = self._in
            while not self._closed and not pipe.data and not pipe.eof:
                await pipe.changed.park()
            if self._closed:
                raise trio.ClosedResourceError("this stream is closed")
            if max_bytes is None or max_bytes >= len(pipe.data):
                chunk, pipe.data = pipe.data, bytearray()
            else:
                chunk = pipe.data[:max_bytes]
                del pipe.data[:max_bytes]
            pipe.changed.unpark_all()  # room for the writer
            return chunk

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._out.eof = True
            self._in.broken = True
            self._in.data = bytearray()  # unread data is lost, as with a socket
            self._out.changed.unpark_all()
            self._in.changed.unpark_all()
        await trio.lowlevel.checkpoint()


class MemoryNetwork(Network):
    """In-process streams (:class:`MemoryStream`) addressed by name: simulations of hundreds of
    peers, and tests without ports. ``""`` picks a fresh name.

    Each direction of a connection buffers at most ``buffer_bytes`` (about what loopback TCP
    socket buffers hold), so senders feel backpressure and send deadlines fire as over TCP.
    """

    def __init__(self, *, buffer_bytes: int = 1 << 20) -> None:
        if buffer_bytes < 1:
            raise ValueError("buffer_bytes must be >= 1")
        self.buffer_bytes = buffer_bytes
        self._servers: dict[str, tuple[StreamHandler, trio.Nursery]] = {}
        self._names = itertools.count(1)

    async def connect(self, address: str) -> trio.abc.Stream:
        entry = self._servers.get(address)
        if entry is None:
            raise ConnectError(f"nothing listens on memory address {address!r}")
        handler, nursery = entry
        client, server = MemoryStream.pair(self.buffer_bytes)
        nursery.start_soon(_run_handler, handler, _nothing_to_prepare, server)
        await trio.lowlevel.checkpoint()
        return client

    async def serve(
        self,
        address: str,
        handler: StreamHandler,
        *,
        task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        name = address or f"mem-{next(self._names)}"
        if name in self._servers:
            raise AddressError(f"memory address {name!r} is already in use")
        async with trio.open_nursery() as nursery:
            self._servers[name] = (handler, nursery)
            try:
                task_status.started(name)
                await trio.sleep_forever()
            finally:
                del self._servers[name]


# --- messages over a stream --------------------------------------------------------------------

_DEFAULT: Any = object()


class MessageStream:
    """A trio stream carrying protocol messages for one session.

    ``send``/``receive`` apply a deadline (``timeout`` seconds, None for none) per message.
    Sends hold a lock, so concurrent senders never interleave frames. A protocol violation by
    the peer is answered with an ``Error`` message before the stream is closed and the
    exception re-raised; an ``Error`` from the peer raises :class:`PeerError`. Run-token failures
    (``ErrorCode.AUTH``, see :class:`~ringfl.protocol.state.Connection`) take the same path.
    """

    def __init__(
        self,
        stream: trio.abc.Stream,
        conn: Connection,
        *,
        timeout: float | None = 60.0,
        receive_size: int = 256 << 10,
        linger: float = 1.0,
    ) -> None:
        self.stream = stream
        self.conn = conn
        self.timeout = timeout
        self.receive_size = receive_size
        self.linger = linger
        self._send_lock = trio.Lock()
        self._receiving = False  # another task is in receive(): aclose must not read too
        self._closed = False

    @property
    def state(self) -> State:
        return self.conn.state

    @property
    def sent(self) -> Counters:
        return self.conn.sent

    @property
    def received(self) -> Counters:
        return self.conn.received

    @property
    def bytes_sent(self) -> int:
        return self.conn.bytes_sent

    @property
    def bytes_received(self) -> int:
        return self.conn.bytes_received

    def _seconds(self, timeout: float | None) -> float | None:
        return self.timeout if timeout is _DEFAULT else timeout

    async def send(self, message: Message, *, timeout: float | None = _DEFAULT) -> None:
        """Validate, encode and write one message (LocalProtocolError: nothing was sent).

        The deadline also covers waiting for another task's send; expiring while waiting sends
        nothing and leaves the stream usable, expiring while writing closes it.
        """
        seconds, started = self._seconds(timeout), trio.current_time()
        what = f"sending {message_name(message.CODE)}"
        with deadline(seconds, f"{what} (waiting for another sender)", started=started):
            await self._send_lock.acquire()
        try:
            data = self.conn.send(message)  # under the lock: seq and tag order = wire order
            try:
                with deadline(seconds, what, started=started):
                    await self.stream.send_all(data)
            except DeadlineError:
                await trio.aclose_forcefully(self.stream)  # a partial frame: the stream is unusable
                raise
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise PeerClosedError(f"connection lost while sending: {_describe(exc)}") from exc
        finally:
            self._send_lock.release()

    async def receive(self, *, timeout: float | None = _DEFAULT) -> Message:
        """The next message; raises PeerClosedError at EOF, PeerError, ProtocolError, DeadlineError."""
        self._receiving = True
        try:
            with deadline(self._seconds(timeout), "waiting for a message"):
                return await self._receive()
        finally:
            self._receiving = False

    async def _receive(self) -> Message:
        while True:
            try:
                event = self.conn.next_event()
            except RemoteProtocolError as exc:
                await self._abort(exc)
                raise
            if event is NEED_DATA:
                await self._fill()
            elif event is EOF:
                raise PeerClosedError("the peer closed the connection")
            elif isinstance(event, Error):
                raise PeerError(event)
            else:
                return event

    async def _fill(self) -> None:
        try:
            data = await self.stream.receive_some(self.receive_size)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise PeerClosedError(f"connection lost: {_describe(exc)}") from exc
        self.conn.receive_data(data)

    async def _abort(self, exc: ProtocolError) -> None:
        """Tell the peer why we hang up (best effort), then close."""
        with trio.move_on_after(self.linger), contextlib.suppress(*CONNECTION_ERRORS):
            await self.send(Error(code=exc.code, detail=str(exc)[:1000]), timeout=None)
        self._closed = True
        await trio.aclose_forcefully(self.stream)

    async def aclose(self, reason: str = "") -> None:
        """Say goodbye (if the session still allows it), wait up to ``linger`` seconds for the
        peer's goodbye or EOF so unread data does not reset the connection, then close."""
        if self._closed:
            return
        self._closed = True
        with trio.move_on_after(self.linger), contextlib.suppress(*CONNECTION_ERRORS):
            if self.conn.can_send(Goodbye):
                await self.send(Goodbye(reason=reason), timeout=None)
            while not self._receiving and self.conn.state not in (State.CLOSED, State.ERROR):
                await self.receive(timeout=None)
        await _quiet_close(self.stream, self.linger)

    async def __aenter__(self) -> MessageStream:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def __aiter__(self) -> MessageStream:
        return self

    async def __anext__(self) -> Message:
        """Messages until the peer has said goodbye (the Goodbye is yielded) or closed."""
        if self.conn.state in (State.CLOSED, State.ERROR, LEAVING[self.conn.role.other]):
            raise StopAsyncIteration
        try:
            return await self.receive()
        except PeerClosedError:
            raise StopAsyncIteration from None


async def dial(
    network: Network,
    address: str,
    conn: Connection,
    *,
    connect_timeout: float | None = 10.0,
    **options: Any,
) -> MessageStream:
    """Connect to ``address`` and wrap the stream; ``options`` go to :class:`MessageStream`."""
    with deadline(connect_timeout, f"connecting to {address}"):
        stream = await network.connect(address)
    return MessageStream(stream, conn, **options)
