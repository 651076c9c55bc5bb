"""Who talks to whom in ring / topology mode: pure functions of a topology and a node.

The bootstrap computes each peer's neighbour list and :class:`~ringfl.protocol.payloads.NeighbourTable`
here; a ring peer without a bootstrap computes its own the same way.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from ringfl.errors import TopologyError
from ringfl.protocol import Neighbour
from ringfl.protocol.payloads import NeighbourTable, SchedulePhase
from ringfl.topology import Topology


def neighbour_list(topology: Topology, node: int, labels: list[str], addresses: dict[str, str]) -> list[Neighbour]:
    """Node's links: in-neighbours carry their mixing weight, out-neighbours an address to dial."""
    ins, outs = set(topology.in_neighbours(node)), set(topology.out_neighbours(node))
    weights = topology.neighbour_weights(node)
    return [
        Neighbour(peer_id=labels[j], address=addresses.get(labels[j], "") if j in outs else "",
                  weight=float(weights.get(j, 0.0)) if j in ins else 0.0)
        for j in sorted(ins | outs)
    ]


def schedule_info(topology: Topology, node: int, labels: list[str]) -> list[SchedulePhase]:
    """Node's part of a time-varying schedule, phase by phase: the labels it receives from (with
    their weights) and the labels it sends to. [] for a static topology (and after re-linking
    around a dead peer, which falls back to the static union of the phases)."""
    phases = []
    for w in topology.schedule:
        ins = {labels[j]: float(w[node, j]) for j in np.flatnonzero(w[node]) if j != node}
        outs = [labels[j] for j in np.flatnonzero(w[:, node]) if j != node]
        phases.append(SchedulePhase(ins=ins, outs=outs))
    return phases


def origins_within(topology: Topology, node: int, hops: int) -> list[int]:
    """Nodes whose updates reach ``node`` within ``hops`` hops (relay waits for all of them)."""
    frontier, seen = {node}, {node}
    for _ in range(hops):
        frontier = {j for i in frontier for j in topology.in_neighbours(i)} - seen
        seen |= frontier
    return sorted(seen - {node})


def forward_targets(topology: Topology, node: int, hops: int) -> dict[int, list[int]]:
    """Relay routing: for each origin whose selection ``node`` passes on (fewer than ``hops`` hops
    away), the out-neighbours for which ``node`` lies on a shortest path from that origin. Every
    other neighbour gets the selection as soon or sooner another way, so sending it there would be
    bytes for nothing (on a complete graph nothing is forwarded at all)."""
    if hops < 2:
        return {}
    graph = topology.graph
    towards = graph.reverse(copy=False) if topology.directed else graph
    distance_to_node = nx.single_source_shortest_path_length(towards, node, cutoff=hops - 1)
    targets: dict[int, list[int]] = {}
    for origin, distance in distance_to_node.items():
        if origin != node:
            from_origin = nx.single_source_shortest_path_length(graph, origin, cutoff=distance + 1)
            targets[origin] = [j for j in topology.out_neighbours(node) if from_origin.get(j) == distance + 1]
    return targets


def neighbour_table(topology: Topology, node: int, hops: int, nodes: dict[str, int], *, from_round: int = 0,
                    dead: list[str] | None = None) -> NeighbourTable:
    """Everything node ``node`` of ``topology`` needs besides its neighbour list, by label;
    ``nodes`` maps every label to its stable node id (the original topology's order)."""
    labels = list(topology.labels)
    return NeighbourTable(
        nodes=nodes, expected_origins=[labels[j] for j in origins_within(topology, node, hops)],
        forward={labels[o]: [labels[j] for j in js] for o, js in forward_targets(topology, node, hops).items()},
        from_round=from_round, dead=dead or [], schedule=schedule_info(topology, node, labels),
    )


def standalone_addresses(topology: Topology) -> list[str]:
    """Every node's address, in node order; without a bootstrap each node needs one."""
    missing = [label for i, label in enumerate(topology.labels) if i not in topology.addresses]
    if missing:
        raise TopologyError(f"topology {topology.name!r}: without a bootstrap every node needs an address; "
                            f"missing for {', '.join(missing[:5])}")
    return [topology.addresses[i] for i in range(topology.n)]
