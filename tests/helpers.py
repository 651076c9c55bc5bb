"""Helpers for tests: a coordinator or a bootstrap with in-process peers, and two sans-IO
connections wired to each other."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import trio

from ringfl.config import RunConfig
from ringfl.coordinator import Coordinator
from ringfl.peer import Peer, PeerOptions
from ringfl.protocol import Connection, Message, Role
from ringfl.transport import MemoryNetwork, Network


def demo_config(**changes: Any) -> RunConfig:
    """digits + digits-mlp, fast deadlines; port 0 / host "" work for both transports."""
    base = RunConfig(host="", port=0, rounds=3, peers=3, min_peers=1, round_timeout=20.0,
                     join_timeout=20.0, run_id="test")
    return base.replace(**changes)


@asynccontextmanager
async def serving(config: RunConfig, network: Network | None = None,
                  **kwargs: Any) -> AsyncIterator[tuple[Coordinator, Network, str, trio.Nursery]]:
    """A coordinator serving (in memory unless ``network`` is given) for the block's duration:
    yields (coordinator, network, address, nursery); the block ends when the run does."""
    network = network or MemoryNetwork()
    coordinator = Coordinator(config, network, **kwargs)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(coordinator.run)
        yield coordinator, network, address, nursery


async def run_coordinator(config: RunConfig, network: Network | None = None, peers: int | None = None,
                          **kwargs: Any) -> tuple[Coordinator, list[Peer]]:
    count = config.peers if peers is None else peers
    clients = []
    async with serving(config, network, **kwargs) as (coordinator, network, address, nursery):
        for i in range(count):
            peer = Peer(network, PeerOptions(coordinator=address, name=f"p{i}", peers=count, index=i,
                                             run_id=config.run_id))
            clients.append(peer)
            nursery.start_soon(peer.run)
    return coordinator, clients


class ConnectionPair:
    """A client and a server Connection, the frames in flight between them and a wire log."""

    def __init__(self, client_token: bytes | None = None, server_token: bytes | None = None) -> None:
        self.client = Connection(Role.CLIENT, local_id="peer-1", token=client_token)
        self.server = Connection(Role.SERVER, local_id="coord", run_id="run-7", token=server_token)
        self.inflight: dict[Role, list[bytes]] = {Role.CLIENT: [], Role.SERVER: []}
        self.wire: list[tuple[Role, bytes]] = []

    def conn(self, role: Role) -> Connection:
        return self.client if role is Role.CLIENT else self.server

    def post(self, role: Role, message: Message) -> bytes:
        data = self.conn(role).send(message)
        self.inflight[role].append(data)
        self.wire.append((role, data))
        return data

    def deliver(self, role: Role) -> Message:
        receiver = self.conn(role.other)
        receiver.receive_data(self.inflight[role].pop(0))
        return receiver.next_event()

    def say(self, role: Role, message: Message) -> Message:
        """Send and deliver at once; both sides must then agree on the state."""
        self.post(role, message)
        got = self.deliver(role)
        assert type(got) is type(message)
        assert self.client.state is self.server.state
        return got
