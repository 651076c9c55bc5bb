"""Helpers for tests that run a coordinator or a bootstrap with in-process peers."""

from __future__ import annotations

from typing import Any

import trio

from ringfl.config import RunConfig
from ringfl.coordinator import Coordinator
from ringfl.peer import Peer, PeerOptions
from ringfl.transport import MemoryNetwork, Network


def demo_config(**changes: Any) -> RunConfig:
    """digits + digits-mlp, fast deadlines; port 0 / host "" work for both transports."""
    base = RunConfig(host="", port=0, rounds=3, peers=3, min_peers=1, round_timeout=20.0,
                     join_timeout=20.0, run_id="test")
    return base.replace(**changes)


async def run_coordinator(config: RunConfig, network: Network | None = None, peers: int | None = None,
                          **kwargs: Any) -> tuple[Coordinator, list[Peer]]:
    network = network or MemoryNetwork()
    coordinator = Coordinator(config, network, **kwargs)
    count = config.peers if peers is None else peers
    clients = []
    async with trio.open_nursery() as nursery:
        address = await nursery.start(coordinator.run)
        for i in range(count):
            peer = Peer(network, PeerOptions(coordinator=address, name=f"p{i}", peers=count, index=i,
                                             run_id=config.run_id))
            clients.append(peer)
            nursery.start_soon(peer.run)
    return coordinator, clients
