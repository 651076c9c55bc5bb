"""In-process streams with bounded buffers: simulations of hundreds of peers, tests without ports."""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator

import trio

from ringfl.transport.base import (
    AddressError,
    ConnectError,
    Network,
    StreamHandler,
    nothing_to_prepare,
    run_handler,
)


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
        nursery.start_soon(run_handler, handler, nothing_to_prepare, server)
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
