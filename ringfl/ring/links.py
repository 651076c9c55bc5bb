"""A ring peer's neighbour links: the streams it dialled and those dialled in, each opened with
the shared session handshake (:mod:`ringfl.runtime.session`), and the bytes each carried.

The dialling peer plays the client (join, confirm the spec, then one 1004 upload per update,
acknowledged), the receiving peer the server; received updates go to the
:class:`~ringfl.ring.neighbourhood.Neighbourhood`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from ringfl.model import ModelSpec
from ringfl.protocol import Connection, JoinRequest, Message, Role, Upload
from ringfl.ring.neighbourhood import Neighbourhood
from ringfl.runtime.session import (
    JoinRefused,
    OpenAdmission,
    SpecMismatch,
    client_handshake,
    server_handshake,
    session_limits,
)
from ringfl.transport import CONNECTION_ERRORS, ConnectError, MessageStream, Network, dial

log = logging.getLogger(__name__)

CLOSED = ("CLOSED", "ERROR")
"""States of a stream that must be dialled again."""


class NeighbourLinks:
    """Open, serve and close neighbour links; count the bytes of each, closed ones included.

    ``retry_dial``: keep dialling a neighbour that is not up yet until the deadline (without a
    bootstrap, neighbours start when they start).
    """

    def __init__(self, network: Network, neighbourhood: Neighbourhood, *, name: str, run_id: str,
                 token: bytes | None, retry_dial: bool) -> None:
        self.network = network
        self.neighbourhood = neighbourhood
        self.name, self.run_id, self.token = name, run_id, token
        self.retry_dial = retry_dial
        self.listen = ""  # where this peer serves its in-neighbours (reported in every join)
        self.out_streams: dict[int, MessageStream] = {}
        self.in_streams: list[MessageStream] = []
        self.in_labels: dict[int, str] = {}  # id(incoming stream) -> the neighbour's label
        self.closed_bytes: dict[str, list[int]] = {}  # neighbour label -> [sent, received]

    # --- bytes ---------------------------------------------------------------------------------

    def carry_over(self, counts: dict[str, list[int]]) -> None:
        """Bytes an earlier process of this peer counted (a resumed run): the totals go on from them."""
        for label, (sent, received) in counts.items():
            total = self.closed_bytes.setdefault(label, [0, 0])
            total[0] += sent
            total[1] += received

    def bytes_by_neighbour(self) -> dict[str, list[int]]:
        """Cumulative [sent, received] bytes per neighbour label, both link directions."""
        table = {label: list(counts) for label, counts in self.closed_bytes.items()}
        live = [(self.neighbourhood.label(node), s) for node, s in self.out_streams.items()]
        live += [(self.in_labels.get(id(s), "?"), s) for s in self.in_streams]
        for label, stream in live:
            counts = table.setdefault(label, [0, 0])
            counts[0] += stream.bytes_sent
            counts[1] += stream.bytes_received
        return table

    def totals(self) -> tuple[int, int]:
        """Bytes (sent, received) over all neighbour links so far."""
        links = self.bytes_by_neighbour().values()
        return sum(counts[0] for counts in links), sum(counts[1] for counts in links)

    def _closed(self, label: str, stream: MessageStream) -> None:
        counts = self.closed_bytes.setdefault(label, [0, 0])
        counts[0] += stream.bytes_sent
        counts[1] += stream.bytes_received

    # --- the dialling side -----------------------------------------------------------------------

    async def out_stream(self, node: int, address: str, spec: ModelSpec, timeout: float) -> MessageStream:
        """The open link to out-neighbour ``node``, dialled and joined if need be. A neighbour
        running another model raises :class:`SpecMismatch` (the run cannot work); one that refuses
        the link otherwise raises ConnectionError (it is skipped, like a dead one)."""
        stream = self.out_streams.get(node)
        if stream is not None and stream.state.name not in CLOSED:
            return stream
        stream = await self._dial(address, timeout)
        label = self.neighbourhood.label(node)
        try:
            await client_handshake(stream, JoinRequest(address=self.listen), spec.hash, server=f"neighbour {node}",
                                   name=self.name, who=f"neighbour {label}", timeout=timeout)
        except SpecMismatch:
            raise
        except JoinRefused as exc:
            raise ConnectionError(str(exc)) from None
        self.out_streams[node] = stream
        self.neighbourhood.link_opened(node)
        return stream

    async def _dial(self, address: str, timeout: float) -> MessageStream:
        deadline = trio.current_time() + timeout
        while True:
            conn = Connection(Role.CLIENT, local_id=self.name, run_id=self.run_id, token=self.token)
            try:
                return await dial(self.network, address, conn, timeout=timeout, connect_timeout=5.0)
            except ConnectError:
                if not self.retry_dial or trio.current_time() + 0.2 > deadline:
                    raise
                await trio.sleep(0.2)

    async def drop_out(self, node: int) -> None:
        stream = self.out_streams.pop(node, None)
        if stream is not None:
            self._closed(self.neighbourhood.label(node), stream)
            with trio.move_on_after(1.0):
                await stream.aclose()

    # --- the serving side --------------------------------------------------------------------------

    async def serve(self, raw: trio.abc.Stream, spec: ModelSpec, num_params: int,
                    on_upload: Callable[[int, Upload], Message]) -> None:
        """One in-neighbour's link: the server handshake, then an Ack for each update."""
        conn = Connection(Role.SERVER, local_id=self.name, run_id=self.run_id, token=self.token,
                          limits=session_limits(num_params, None))
        stream = MessageStream(raw, conn, timeout=None)
        self.in_streams.append(stream)
        try:
            joined = await server_handshake(stream, spec, OpenAdmission(num_params, spec, "ring"))
            if joined is None:
                return
            join, confirm = joined
            self.in_labels[id(stream)] = join.sender
            if confirm.spec_hash != spec.hash:
                if join.sender in self.neighbourhood.node_ids and confirm.spec_hash:  # a member: the run cannot work
                    raise SpecMismatch(f"neighbour {join.sender}", confirm.spec_hash, spec.hash)
                log.warning("peer %s: %r (not a node of the topology) runs spec %s", self.name, join.sender,
                            confirm.spec_hash[:16])
                return
            sender = self.neighbourhood.node_of(join.sender)
            async for message in stream:
                if isinstance(message, Upload):
                    await stream.send(on_upload(sender, message))
        except CONNECTION_ERRORS as exc:
            log.info("peer %s: neighbour link ended: %s", self.name, exc)
        finally:
            self.in_streams.remove(stream)
            self._closed(self.in_labels.pop(id(stream), "?"), stream)
            await stream.aclose()

    async def close(self) -> None:
        for node in list(self.out_streams):
            await self.drop_out(node)

    def streams(self) -> list[MessageStream]:
        return [*self.out_streams.values(), *self.in_streams]
