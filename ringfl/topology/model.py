"""The topology model: a validated, connected graph of peers with its mixing matrix.

Node ids are normalised to ``0..N-1`` so the rest of ringfl can index arrays by peer; the
original ids survive as ``labels``.

Mixing convention: row ``i`` of ``W`` says how peer ``i`` combines what it *receives*,
``x_i <- W[i, i] x_i + sum_j W[i, j] x_j`` over its in-neighbours ``j``. In a directed topology an
edge ``u -> v`` means ``u`` sends to ``v``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import networkx as nx
import numpy as np

from ringfl.errors import TopologyError

MH = "metropolis-hastings"
SCHEMES = (MH, "uniform", "explicit")
TOLERANCE = 1e-6  # how far a row of W may sum from 1
MIN_NODES = 2  # one peer has nobody to learn with: that is local training, not a topology
RANDOM_TRIES = 100  # samples a random generator may draw before giving up on connectivity


class InvalidTopology(TopologyError):
    """A problem found below a public entry point, which prefixes it with the source."""


@contextmanager
def reported(source: str) -> Iterator[None]:
    """Turn an :class:`InvalidTopology` into a one-line :class:`TopologyError` naming ``source``."""
    try:
        yield
    except InvalidTopology as exc:
        raise TopologyError(f"{source}: {exc}") from None


@dataclass(frozen=True, eq=False)
class Topology:
    """A validated, connected topology with its mixing matrix (graph and weights are read-only)."""

    name: str
    graph: nx.Graph  # nx.DiGraph when directed; nodes 0..N-1
    labels: list[str]  # original ids, as strings
    addresses: dict[int, str]  # node -> "host:port" where given
    directed: bool
    weights: np.ndarray  # N x N, row-stochastic; doubly stochastic for undirected MH
    bootstrap: str | None = None
    scheme: str = MH
    generator: dict[str, Any] | None = None  # {"kind": ..., "seed": ..., params} when generated
    # Time-varying topologies: one N x N mixing matrix per exchange, used cyclically (exchange t
    # mixes with schedule[t % len]); ``graph`` is then the union of their links. Empty: static W.
    schedule: tuple[np.ndarray, ...] = ()

    @property
    def n(self) -> int:
        return len(self.labels)

    def in_neighbours(self, i: int) -> list[int]:
        """Peers whose updates ``i`` mixes in (they send to ``i``)."""
        g = self.graph
        return sorted(g.predecessors(i) if self.directed else g.neighbors(i))

    def out_neighbours(self, i: int) -> list[int]:
        """Peers ``i`` sends its updates to."""
        g = self.graph
        return sorted(g.successors(i) if self.directed else g.neighbors(i))

    def neighbour_weights(self, i: int) -> dict[int, float]:
        """``{j: W[i, j]}`` over the in-neighbours ``j`` of ``i``."""
        return {j: float(self.weights[i, j]) for j in self.in_neighbours(i)}

    def self_weight(self, i: int) -> float:
        return float(self.weights[i, i])

    def phase(self, t: int) -> np.ndarray:
        """The mixing matrix of exchange ``t`` (the static ``weights`` without a schedule)."""
        return self.schedule[t % len(self.schedule)] if self.schedule else self.weights

    def index_of(self, label: object) -> int:
        """The node whose original id is ``label`` (stable across :func:`relink_without`)."""
        try:
            return self.labels.index(str(label))
        except ValueError:
            raise TopologyError(f"topology {self.name}: unknown node id {label!r}") from None


# --- public functions ------------------------------------------------------------------


def mixing_matrix(graph: nx.Graph, scheme: str = MH) -> np.ndarray:
    """The mixing matrix of ``graph`` (rows/columns in node order); see docs/topology.md."""
    with reported("mixing matrix"):
        return weights_of(graph, scheme)


def spectral_gap(weights: np.ndarray) -> float:
    """``1 - |lambda_2|``: one minus the second largest eigenvalue modulus of ``W``.

    It bounds how fast gossip averaging contracts disagreement (per round, by about
    ``|lambda_2|``), so it is the number to compare topologies by. One node: 1 by convention.
    """
    w = np.asarray(weights, dtype=float)
    if w.shape[0] < 2:
        return 1.0
    values = np.linalg.eigvalsh(w) if np.allclose(w, w.T) else np.linalg.eigvals(w)
    moduli = np.sort(np.abs(values))[::-1]
    return float(min(1.0, max(0.0, 1.0 - moduli[1])))


def relink_without(top: Topology, dead: Iterable[int]) -> Topology:
    """The topology the survivors use once ``dead`` nodes are gone.

    Each dead node is bridged: every in-neighbour gets an edge to every out-neighbour, so a ring
    stays a ring (predecessor -> successor), no path between survivors gets longer and the graph
    stays connected. Survivors are renumbered ``0..M-1`` in their old order and keep their labels
    and addresses (find a peer with :meth:`Topology.index_of`). Weights are recomputed with the
    same scheme, except ``explicit``, which cannot cover the new edges and becomes MH.
    """
    dead = set(dead)
    if not dead:
        return top
    with reported(f"topology {top.name}"):
        unknown = sorted(d for d in dead if d not in range(top.n))
        if unknown:
            raise InvalidTopology(f"cannot remove unknown node(s) {unknown}; nodes are 0..{top.n - 1}")
        survivors = [i for i in range(top.n) if i not in dead]
        if not survivors:
            raise InvalidTopology("cannot remove every node")
        graph = make_graph(top.n, top.directed, top.graph.edges)
        for d in sorted(dead):
            _bridge(graph, d)
        new = {old: i for i, old in enumerate(survivors)}
        gone = "-".join(top.labels[d] for d in sorted(dead))
        return assemble(
            name=f"{top.name}-without-{gone}",
            graph=make_graph(len(survivors), top.directed, ((new[u], new[v]) for u, v in graph.edges)),
            labels=[top.labels[i] for i in survivors],
            addresses={new[i]: a for i, a in top.addresses.items() if i in new},
            scheme=MH if top.scheme == "explicit" else top.scheme,
            bootstrap=top.bootstrap,
        )


def period_product(schedule: Iterable[np.ndarray]) -> np.ndarray:
    """W_{T-1} ... W_1 W_0: what one period of a schedule does to the peers' models."""
    phases = list(schedule)
    product = np.eye(phases[0].shape[0])
    for w in phases:
        product = w @ product
    return product


def averaging_error(weights: np.ndarray) -> float:
    """Largest entry of ``|W - 11ᵀ/N|``: 0 when one application makes every peer the exact average."""
    n = weights.shape[0]
    return float(np.abs(np.asarray(weights) - 1.0 / n).max())


# --- value checks shared by the schema and the generators ---------------------------------


def checked_scheme(value: Any) -> str:
    if value not in SCHEMES:
        raise InvalidTopology(f"unknown weights scheme {value!r}; valid: {', '.join(SCHEMES)}")
    return value


def checked_int(value: Any, what: str, lo: int, hi: int | None = None) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < lo
        or (hi is not None and value > hi)
    ):
        bound = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise InvalidTopology(f"{what} must be an integer {bound}, got {value!r}")
    return value


def checked_number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidTopology(f"{what} must be a number, got {value!r}")
    return float(value)


def checked_probability(value: Any, what: str) -> float:
    p = checked_number(value, what)
    if not 0.0 <= p <= 1.0:
        raise InvalidTopology(f"{what} must be in [0, 1], got {value!r}")
    return p


# --- assembly, weights, validation -------------------------------------------------------


def make_graph(n: int, directed: bool, edges: Iterable[tuple]) -> nx.Graph:
    """A fresh graph on nodes 0..n-1 (in that order) with ``edges``."""
    graph = nx.DiGraph() if directed else nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(edges)
    return graph


def assemble(
    *,
    name: str,
    graph: nx.Graph,
    labels: list[str],
    addresses: dict[int, str],
    scheme: str,
    bootstrap: str | None,
    generator: dict[str, Any] | None = None,
) -> Topology:
    """Validate a built graph, compute its weights and freeze the result."""
    _check_structure(graph, labels)
    _check_addresses(addresses, labels)
    weights = weights_of(graph, scheme)
    check_stochastic(weights, labels)
    weights.setflags(write=False)
    return Topology(
        name=name,
        graph=nx.freeze(graph),
        labels=list(labels),
        addresses=dict(addresses),
        directed=graph.is_directed(),
        weights=weights,
        bootstrap=bootstrap,
        scheme=scheme,
        generator=generator,
    )


def is_connected(graph: nx.Graph) -> bool:
    return nx.is_strongly_connected(graph) if graph.is_directed() else nx.is_connected(graph)


def _check_structure(graph: nx.Graph, labels: list[str]) -> None:
    loops = list(nx.nodes_with_selfloops(graph))
    if loops:
        raise InvalidTopology(f"self loop on node {labels[loops[0]]}")
    if is_connected(graph):
        return
    directed = graph.is_directed()
    parts = list(
        nx.strongly_connected_components(graph) if directed else nx.connected_components(graph)
    )
    smallest = sorted(min(parts, key=len))
    cut_off = ", ".join(labels[i] for i in smallest[:5]) + (", ..." if len(smallest) > 5 else "")
    what = "not strongly connected: it has" if directed else "disconnected: it has"
    sizes = ", ".join(str(len(p)) for p in sorted(parts, key=len, reverse=True))
    raise InvalidTopology(
        f"graph is {what} {len(parts)} components (sizes {sizes}); smallest component: {cut_off}"
    )


def _check_addresses(addresses: dict[int, str], labels: list[str]) -> None:
    owner: dict[str, int] = {}
    for node, address in sorted(addresses.items()):
        if address in owner:
            raise InvalidTopology(
                f"nodes {labels[owner[address]]} and {labels[node]} share address {address}"
            )
        owner[address] = node


def check_stochastic(weights: np.ndarray, labels: list[str]) -> None:
    """Every row nonnegative and summing to 1, so mixing preserves the scale of the model."""
    for i, row in enumerate(weights):
        j = int(np.argmin(row))
        if row[j] < -TOLERANCE:
            target = (
                "itself (in-neighbour weights sum to more than 1)"
                if i == j
                else f"node {labels[j]}"
            )
            raise InvalidTopology(f"weights of node {labels[i]}: negative weight {row[j]:g} for {target}")
        total = row.sum()
        if abs(total - 1.0) > TOLERANCE:
            raise InvalidTopology(f"weights of node {labels[i]} sum to {total:g}, not 1")


def weights_of(graph: nx.Graph, scheme: str) -> np.ndarray:
    """Row ``i`` = weights node ``i`` gives to its in-neighbours; the diagonal takes the rest.

    metropolis-hastings: ``W[v, u] = 1 / (1 + max(indeg(v), outdeg(u)))`` for an edge ``u -> v``
    (for undirected graphs the classic ``1 / (1 + max(deg u, deg v))``: symmetric, doubly
    stochastic). uniform: ``1 / (1 + indeg(v))``. explicit: the edge's ``weight`` attribute and
    the node's optional ``self_weight``.
    """
    checked_scheme(scheme)
    directed = graph.is_directed()
    nodes = list(graph)
    pos = {v: i for i, v in enumerate(nodes)}
    in_deg = dict(graph.in_degree() if directed else graph.degree())
    out_deg = dict(graph.out_degree() if directed else graph.degree())
    w = np.zeros((len(nodes), len(nodes)))
    for u, v, data in graph.edges(data=True):
        for src, dst in [(u, v)] if directed else [(u, v), (v, u)]:
            if scheme == MH:
                weight = 1.0 / (1 + max(in_deg[dst], out_deg[src]))
            elif scheme == "uniform":
                weight = 1.0 / (1 + in_deg[dst])
            elif "weight" in data:
                weight = float(data["weight"])
            else:
                raise InvalidTopology(f"edge {src} -> {dst} has no weight")
            w[pos[dst], pos[src]] = weight
    for v, i in pos.items():
        rest = 1.0 - w[i].sum()
        w[i, i] = graph.nodes[v].get("self_weight", rest) if scheme == "explicit" else rest
    return w


def _bridge(graph: nx.Graph, node: int) -> None:
    """Remove ``node``, linking each of its in-neighbours to each of its out-neighbours."""
    directed = graph.is_directed()
    ins = list(graph.predecessors(node) if directed else graph.neighbors(node))
    outs = list(graph.successors(node) if directed else graph.neighbors(node))
    graph.remove_node(node)
    graph.add_edges_from((u, v) for u in ins for v in outs if u != v)
