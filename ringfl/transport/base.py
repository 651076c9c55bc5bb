"""The transport interface and messages over it.

A :class:`Network` dials and listens on string addresses (``host:port`` for TCP/TLS, any name
for the in-memory network), so peer and coordinator code never cares which transport carries it.
A :class:`MessageStream` joins a trio stream to a sans-IO
:class:`~ringfl.protocol.state.Connection`: messages in and out, per-message deadlines, byte
counters and a graceful close. Failures of one connection (peer errors, broken sockets, deadlines)
end that connection's handler, never the server.
"""

from __future__ import annotations

import contextlib
import logging
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import trio

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


def describe_error(exc: BaseException) -> str:
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


async def run_handler(
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


async def nothing_to_prepare(stream: trio.abc.Stream) -> None:
    await trio.lowlevel.checkpoint()


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
                raise PeerClosedError(f"connection lost while sending: {describe_error(exc)}") from exc
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
            raise PeerClosedError(f"connection lost: {describe_error(exc)}") from exc
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
