"""Peer topologies: who exchanges updates with whom, and with which mixing weights.

A :class:`Topology` comes from a YAML description (schema in docs/topology.md), from a graph file
written by another tool (decentralizepy edge list, networkx edge list or adjacency list, GraphML),
or from :func:`generate` for experiments. Node ids are normalised to ``0..N-1`` so the rest of
ringfl can index arrays by peer; the original ids survive as ``labels``.

Mixing convention: row ``i`` of ``W`` says how peer ``i`` combines what it *receives*,
``x_i <- W[i, i] x_i + sum_j W[i, j] x_j`` over its in-neighbours ``j``. In a directed topology an
edge ``u -> v`` means ``u`` sends to ``v``.
"""

from __future__ import annotations

import inspect
import math
import random
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import yaml

from ringfl.errors import TopologyError

MH = "metropolis-hastings"
SCHEMES = (MH, "uniform", "explicit")
TOLERANCE = 1e-6  # how far a row of W may sum from 1
MIN_NODES = 2  # one peer has nobody to learn with: that is local training, not a topology
RANDOM_TRIES = 100  # samples a random generator may draw before giving up on connectivity
_TOP_KEYS = (
    "name",
    "nodes",
    "generator",
    "edges",
    "directed",
    "weights",
    "self_weights",
    "bootstrap",
    "schedule",
)
_NODE_KEYS = ("id", "address")
_EXTENSIONS = {
    ".yaml": "yaml",
    ".yml": "yaml",
    ".graphml": "graphml",
    ".xml": "graphml",
    ".adjlist": "adjlist",
}
_EDGE_LIST_EXTENSIONS = (".edgelist", ".edges", ".txt", ".el")
_CIRCULAR_KINDS = ("ring", "bidirectional-ring", "k-nearest-ring", "complete")


class _Invalid(TopologyError):
    """A problem found below a public entry point, which prefixes it with the source."""


@contextmanager
def _reported(source: str) -> Iterator[None]:
    """Turn an :class:`_Invalid` into a one-line :class:`TopologyError` naming ``source``."""
    try:
        yield
    except _Invalid as exc:
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


# --- public entry points -------------------------------------------------------------------


def load_topology(path: str | Path) -> Topology:
    """Load any supported file; the format comes from the extension, else from the content."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TopologyError(f"topology file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TopologyError(f"cannot read topology file {p}: {exc}") from None
    with _reported(str(p)):
        return _LOADERS[_sniff(p, text)](text, p.stem)


def from_mapping(data: Any, source: str = "<mapping>") -> Topology:
    """Build a topology from the YAML schema given as a (parsed) mapping."""
    with _reported(source):
        return _from_mapping(data)


def generate(
    kind: str,
    n: int,
    seed: int = 0,
    *,
    directed: bool = False,
    weights: str = MH,
    name: str | None = None,
    **params: Any,
) -> Topology:
    """A generated topology of ``n`` peers, e.g. ``generate("torus", 16, rows=4, cols=4)``."""
    data = {
        "name": name or kind,
        "nodes": n,
        "directed": directed,
        "weights": weights,
        "generator": {"kind": kind, "seed": seed, **params},
    }
    return from_mapping(data, source=f"generate({kind!r}, {n})")


def mixing_matrix(graph: nx.Graph, scheme: str = MH) -> np.ndarray:
    """The mixing matrix of ``graph`` (rows/columns in node order); see docs/topology.md."""
    with _reported("mixing matrix"):
        return _mixing_matrix(graph, scheme)


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
    with _reported(f"topology {top.name}"):
        unknown = sorted(d for d in dead if d not in range(top.n))
        if unknown:
            raise _Invalid(f"cannot remove unknown node(s) {unknown}; nodes are 0..{top.n - 1}")
        survivors = [i for i in range(top.n) if i not in dead]
        if not survivors:
            raise _Invalid("cannot remove every node")
        graph = _graph(top.n, top.directed, top.graph.edges)
        for d in sorted(dead):
            _bridge(graph, d)
        new = {old: i for i, old in enumerate(survivors)}
        gone = "-".join(top.labels[d] for d in sorted(dead))
        return _assemble(
            name=f"{top.name}-without-{gone}",
            graph=_graph(len(survivors), top.directed, ((new[u], new[v]) for u, v in graph.edges)),
            labels=[top.labels[i] for i in survivors],
            addresses={new[i]: a for i, a in top.addresses.items() if i in new},
            scheme=MH if top.scheme == "explicit" else top.scheme,
            bootstrap=top.bootstrap,
        )


def describe(top: Topology) -> str:
    """A short text report of the numbers that matter for gossip learning."""
    g = top.graph
    arcs = "directed edges" if top.directed else "edges"
    lines = [
        f"topology {top.name}: {top.n} nodes, {g.number_of_edges()} {arcs}, weights {top.scheme}"
    ]
    if top.generator:
        lines.append("generator: " + ", ".join(f"{k}={v}" for k, v in top.generator.items()))
    if top.directed:
        lines += [
            _degree_line("in-degree", g.in_degree()),
            _degree_line("out-degree", g.out_degree()),
        ]
        connected, what = nx.is_strongly_connected(g), "strongly connected"
    else:
        lines.append(_degree_line("degree", g.degree()))
        connected, what = nx.is_connected(g), "connected"
    lines.append(f"{what}: {'yes' if connected else 'no'}")
    lines.append(f"diameter: {nx.diameter(g) if connected else 'infinite'}")
    lines.append(f"spectral gap: {spectral_gap(top.weights):.4f}")
    if top.schedule:
        lines.append(describe_schedule(top.schedule))
    if top.addresses:
        lines.append(f"addresses: {len(top.addresses)} of {top.n} nodes")
    if top.bootstrap:
        lines.append(f"bootstrap: {top.bootstrap}")
    return "\n".join(lines)


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


def describe_schedule(schedule: tuple[np.ndarray, ...]) -> str:
    """How well one period of a time-varying schedule mixes (exact averaging: error 0)."""
    product = period_product(schedule)
    messages = max(int(np.count_nonzero(w - np.diag(np.diag(w)), axis=0).max()) for w in schedule)
    return (f"schedule: {len(schedule)} phases, one per exchange, cyclic; at most {messages} "
            f"message(s) per peer per exchange\n"
            f"one period: spectral gap {spectral_gap(product):.4f}, "
            f"max |W - 11'/n| {averaging_error(product):.2e}")


def plot(top: Topology, path: str | Path) -> None:
    """Draw the topology to an image file (Agg canvas: no display, no pyplot global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pos = _layout(top)
    fig = Figure(figsize=(6, 6))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    style = "-|>" if top.directed else "-"
    for u, v in top.graph.edges:
        (x0, y0), (x1, y1) = pos[u], pos[v]
        # Bend directed edges so u->v and v->u do not overlap, and lattice wrap-around edges
        # (longer than one grid step) so they do not run over the row or column they close.
        bend = (0.12 if top.directed else 0.0) + (0.3 if _wraps(top, x1 - x0, y1 - y0) else 0.0)
        arrow = {"arrowstyle": style, "color": "0.45", "shrinkA": 13, "shrinkB": 13}
        arrow["connectionstyle"] = f"arc3,rad={bend}"
        ax.annotate("", xy=pos[v], xytext=pos[u], arrowprops=arrow, zorder=1)
    xs, ys = zip(*(pos[i] for i in range(top.n)), strict=True)
    ax.scatter(xs, ys, s=500, color="#cfe3f7", edgecolors="#2b6cb0", zorder=2)
    for i, label in enumerate(top.labels):
        ax.text(*pos[i], label, ha="center", va="center", fontsize=8, zorder=3)
    ax.set_title(f"{top.name} ({top.n} nodes)")
    ax.set_aspect("equal")
    ax.margins(0.1)
    ax.set_axis_off()
    fig.savefig(path, dpi=100)


# --- the YAML schema ---------------------------------------------------------------------


def _from_mapping(data: Any) -> Topology:
    if not isinstance(data, Mapping):
        raise _Invalid(f"a topology must be a mapping, got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in _TOP_KEYS)
    if unknown:
        raise _Invalid(f"unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(_TOP_KEYS)}")
    labels, addresses = _parse_nodes(data.get("nodes"))
    if len(labels) < MIN_NODES:
        raise _Invalid(f"a topology needs at least {MIN_NODES} nodes, got {len(labels)}")
    directed = data.get("directed", False)
    if not isinstance(directed, bool):
        raise _Invalid(f"'directed' must be true or false, got {directed!r}")
    scheme = _scheme(data.get("weights", MH))
    index = {label: i for i, label in enumerate(labels)}
    graph, generator = _structure(data, index, directed, scheme)
    _set_self_weights(graph, data.get("self_weights"), index, scheme)
    name = data.get("name", "topology")
    if not isinstance(name, str) or not name:
        raise _Invalid(f"'name' must be a non-empty string, got {name!r}")
    bootstrap = data.get("bootstrap")
    phases = _phases(data, graph, generator, index, scheme)
    if phases:  # the links of every phase: addresses and the static fallback come from the union
        graph = _graph(len(labels), directed, {e for p in phases for e in p.edges})
    top = _assemble(
        name=name,
        graph=graph,
        labels=labels,
        addresses=addresses,
        scheme=scheme,
        bootstrap=None if bootstrap is None else _address(bootstrap, "bootstrap"),
        generator=generator,
    )
    if not phases:
        return top
    schedule = tuple(_phase_weights(p, labels, scheme) for p in phases)
    return replace(top, schedule=schedule)


def _phases(data: Mapping, graph: nx.Graph, generator: dict[str, Any] | None,
            index: dict[str, int], scheme: str) -> list[nx.DiGraph]:
    """The per-exchange graphs: a schedule generator's, or the file's ``schedule`` list (each
    phase a list of directed ``[sender, receiver]`` edges, ``[u, v, weight]`` with explicit
    weights)."""
    spec = data.get("schedule")
    kind = (generator or {}).get("kind")
    if kind in _SCHEDULES:
        if spec is not None:
            raise _Invalid(f"generator {kind} makes its own schedule; drop 'schedule'")
        return _SCHEDULES[kind](graph.number_of_nodes())
    if spec is None:
        return []
    if not isinstance(spec, list) or not spec:
        raise _Invalid(f"'schedule' must be a non-empty list of phases (lists of edges), got {spec!r}")
    phases = []
    for t, edges in enumerate(spec):
        where = f"schedule phase {t}"
        if not isinstance(edges, list):
            raise _Invalid(f"{where}: expected a list of [sender, receiver] edges, got {edges!r}")
        try:
            phases.append(_graph(len(index), True, _parse_edges(edges, index, True, scheme)))
        except _Invalid as exc:
            raise _Invalid(f"{where}: {exc}") from None
    return phases


def _phase_weights(phase: nx.DiGraph, labels: list[str], scheme: str) -> np.ndarray:
    """A phase's mixing matrix; a phase need not be connected (the period must mix)."""
    weights = _mixing_matrix(phase, scheme)
    _check_stochastic(weights, labels)
    weights.setflags(write=False)
    return weights


def _structure(
    data: Mapping, index: dict[str, int], directed: bool, scheme: str
) -> tuple[nx.Graph, dict[str, Any] | None]:
    """The graph from exactly one of ``generator`` and ``edges``."""
    if "generator" in data and "edges" in data:
        raise _Invalid("give either 'generator' or 'edges', not both")
    if "generator" not in data and "edges" not in data:
        if "schedule" in data:  # the links are the union of the phases'
            return _graph(len(index), True, ()), None
        raise _Invalid("missing both 'generator' and 'edges'; give exactly one")
    if "edges" in data:
        edges = _parse_edges(data["edges"], index, directed, scheme)
        return _graph(len(index), directed, edges), None
    if scheme == "explicit":
        raise _Invalid("weights: explicit needs weighted 'edges', not a generator")
    return _generated(data["generator"], index, directed)


def _parse_nodes(spec: Any) -> tuple[list[str], dict[int, str]]:
    if spec is None:
        raise _Invalid("missing 'nodes' (a count or a list of ids)")
    if isinstance(spec, int) and not isinstance(spec, bool):
        return [str(i) for i in range(_int(spec, "'nodes'", 0))], {}
    if not isinstance(spec, list):
        raise _Invalid(f"'nodes' must be a count or a list of ids, got {spec!r}")
    labels: list[str] = []
    addresses: dict[int, str] = {}
    seen: set[str] = set()
    for i, item in enumerate(spec):
        label, address = _parse_node(item)
        if label in seen:
            raise _Invalid(f"duplicate node id {label}")
        seen.add(label)
        labels.append(label)
        if address is not None:
            addresses[i] = address
    return labels, addresses


def _parse_node(item: Any) -> tuple[str, str | None]:
    """A node entry: an id, or ``{id: ..., address: "host:port"}``."""
    if not isinstance(item, Mapping):
        return _node_id(item), None
    unknown = sorted(str(k) for k in item if k not in _NODE_KEYS)
    if unknown:
        raise _Invalid(
            f"node entry {dict(item)}: unknown key(s) {', '.join(unknown)}; valid: id, address"
        )
    if "id" not in item:
        raise _Invalid(f"node entry {dict(item)} has no 'id'")
    label = _node_id(item["id"])
    address = item.get("address")
    return label, None if address is None else _address(address, f"address of node {label}")


def _node_id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        raise _Invalid(f"node id must be an integer or a non-empty string, got {value!r}")
    return str(value)


def _lookup(index: dict[str, int], value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str) or str(value) not in index:
        raise _Invalid(f"{where}: unknown node id {value!r}")
    return index[str(value)]


def _parse_edges(
    spec: Any, index: dict[str, int], directed: bool, scheme: str
) -> list[tuple[int, int, dict[str, float]]]:
    if not isinstance(spec, list):
        raise _Invalid(f"'edges' must be a list of [u, v] or [u, v, weight], got {spec!r}")
    edges = []
    seen: set[Any] = set()
    for item in spec:
        if not isinstance(item, list) or len(item) not in (2, 3):
            raise _Invalid(f"edge {item!r} must be [u, v] or [u, v, weight]")
        u, v = (_lookup(index, x, f"edge {item}") for x in item[:2])
        key = (u, v) if directed else frozenset((u, v))
        if key in seen:
            raise _Invalid(f"edge {item} is listed twice")
        seen.add(key)
        edges.append((u, v, _edge_data(item, scheme)))
    return edges


def _edge_data(item: list, scheme: str) -> dict[str, float]:
    explicit = scheme == "explicit"
    if len(item) == 2:
        if explicit:
            raise _Invalid(f"edge {item} has no weight; weights: explicit needs [u, v, weight]")
        return {}
    if not explicit:
        raise _Invalid(f"edge {item} has a weight but weights is {scheme!r}; use weights: explicit")
    return {"weight": _number(item[2], f"weight of edge {item}")}


def _set_self_weights(graph: nx.Graph, spec: Any, index: dict[str, int], scheme: str) -> None:
    """``self_weights``: one number for every node, or ``{id: weight}``; default 1 - row sum."""
    if spec is None:
        return
    if scheme != "explicit":
        raise _Invalid(f"'self_weights' needs weights: explicit, not {scheme!r}")
    items = spec.items() if isinstance(spec, Mapping) else ((label, spec) for label in index)
    for label, weight in items:
        node = _lookup(index, label, "self_weights")
        graph.nodes[node]["self_weight"] = _number(weight, f"self weight of node {label}")


def _scheme(value: Any) -> str:
    if value not in SCHEMES:
        raise _Invalid(f"unknown weights scheme {value!r}; valid: {', '.join(SCHEMES)}")
    return value


def _int(value: Any, what: str, lo: int, hi: int | None = None) -> int:
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < lo
        or (hi is not None and value > hi)
    ):
        bound = f">= {lo}" if hi is None else f"in {lo}..{hi}"
        raise _Invalid(f"{what} must be an integer {bound}, got {value!r}")
    return value


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _Invalid(f"{what} must be a number, got {value!r}")
    return float(value)


def _probability(value: Any, what: str) -> float:
    p = _number(value, what)
    if not 0.0 <= p <= 1.0:
        raise _Invalid(f"{what} must be in [0, 1], got {value!r}")
    return p


def _address(value: Any, what: str) -> str:
    host, colon, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    if not (colon and host and port.isdigit() and 0 < int(port) < 65536):
        raise _Invalid(f"{what} must be 'host:port' with a port in 1..65535, got {value!r}")
    return value


# --- generators --------------------------------------------------------------------------
# Each builder takes (n, rng, directed, **params); its keyword defaults *are* the schema's
# defaults (a parameter without a default is required). Undirected results are turned into
# both-way digraphs when the topology is directed.


def _ring(n: int, rng: random.Random, directed: bool) -> nx.Graph:
    return nx.cycle_graph(n, create_using=nx.DiGraph if directed else nx.Graph)


def _bidirectional_ring(n: int, rng: random.Random, directed: bool) -> nx.Graph:
    return nx.cycle_graph(n)


def _k_nearest_ring(n: int, rng: random.Random, directed: bool, k: int = 2) -> nx.Graph:
    return nx.circulant_graph(n, range(1, _int(k, "k", 1, n // 2) + 1))


def _line(n: int, rng: random.Random, directed: bool) -> nx.Graph:
    return nx.path_graph(n)


def _star(n: int, rng: random.Random, directed: bool, center: int = 0) -> nx.Graph:
    return nx.Graph((center, j) for j in range(n) if j != center)


def _complete(n: int, rng: random.Random, directed: bool) -> nx.Graph:
    return nx.complete_graph(n)


def _torus(
    n: int, rng: random.Random, directed: bool, rows: int | None = None, cols: int | None = None
) -> nx.Graph:
    return _lattice(n, rows, cols, periodic=True)


def _grid(
    n: int, rng: random.Random, directed: bool, rows: int | None = None, cols: int | None = None
) -> nx.Graph:
    return _lattice(n, rows, cols, periodic=False)


def _small_world(
    n: int, rng: random.Random, directed: bool, k: int = 4, p: float = 0.1
) -> nx.Graph:
    k, p = _int(k, "k", 2, n - 1), _probability(p, "p")
    try:
        return nx.connected_watts_strogatz_graph(n, k, p, tries=RANDOM_TRIES, seed=rng)
    except nx.NetworkXError as exc:
        raise _Invalid(f"no connected graph with k={k}, p={p}: {exc}") from None


def _random_regular(n: int, rng: random.Random, directed: bool, degree: int = 3) -> nx.Graph:
    d = _int(degree, "degree", 1, n - 1)
    if n * d % 2:
        raise _Invalid(f"degree * nodes must be even, got {d} * {n}")
    return _connected(lambda: nx.random_regular_graph(d, n, seed=rng), f"degree={d}")


def _erdos_renyi(n: int, rng: random.Random, directed: bool, p: float) -> nx.Graph:
    p = _probability(p, "p")
    return _connected(lambda: nx.gnp_random_graph(n, p, seed=rng, directed=directed), f"p={p}")


def _exponent_count(n: int) -> int:
    """ceil(log2 n): the hops 1, 2, 4, ... an exponential graph links (each below n)."""
    return max(1, math.ceil(math.log2(n)))


def _exponential(n: int, rng: random.Random, directed: bool) -> nx.Graph:
    """Static exponential graph (Ying et al. 2021): node i links to i + 2^k mod n, k < log2 n."""
    hops = sorted({2**k % n for k in range(_exponent_count(n))} - {0})
    graph = nx.DiGraph() if directed else nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from((i, (i + h) % n) for i in range(n) for h in hops)
    return graph


def _one_peer_exponential_phases(n: int) -> list[nx.DiGraph]:
    """Phase t: every node sends to i + 2^t mod n only, weights ½ / ½. For n a power of two the
    log2 n phases multiply to exactly 11ᵀ/n: after them every peer holds the average."""
    return [_graph(n, True, ((i, (i + 2**t) % n) for i in range(n))) for t in range(_exponent_count(n))]


_SCHEDULES: dict[str, Callable[[int], list[nx.DiGraph]]] = {
    "one-peer-exponential": _one_peer_exponential_phases,
}


_GENERATORS: dict[str, Callable[..., nx.Graph]] = {
    "ring": _ring,
    "bidirectional-ring": _bidirectional_ring,
    "k-nearest-ring": _k_nearest_ring,
    "line": _line,
    "star": _star,
    "complete": _complete,
    "torus": _torus,
    "grid": _grid,
    "small-world": _small_world,
    "random-regular": _random_regular,
    "erdos-renyi": _erdos_renyi,
    "exponential": _exponential,
    "one-peer-exponential": _exponential,  # the union of its phases; the schedule is _SCHEDULES'
}
GENERATOR_KINDS = tuple(_GENERATORS)


def _generator_params(kind: str) -> dict[str, Any]:
    """``{param: default}`` of a generator; ``inspect.Parameter.empty`` marks required ones."""
    params = list(inspect.signature(_GENERATORS[kind]).parameters.values())[3:]
    return {p.name: p.default for p in params}


def _generated(spec: Any, index: dict[str, int], directed: bool) -> tuple[nx.Graph, dict[str, Any]]:
    if not isinstance(spec, Mapping):
        raise _Invalid(f"'generator' must be a mapping with a 'kind', got {spec!r}")
    params = dict(spec)
    kind = params.pop("kind", None)
    if kind not in _GENERATORS:
        raise _Invalid(f"unknown generator kind {kind!r}; valid kinds: {', '.join(_GENERATORS)}")
    seed = _int(params.pop("seed", 0), "seed", 0)
    allowed = _generator_params(kind)
    unknown = sorted(str(p) for p in params if p not in allowed)
    if unknown:
        valid = ", ".join([*allowed, "seed"])
        raise _Invalid(
            f"generator {kind}: unknown parameter(s) {', '.join(unknown)}; valid: {valid}"
        )
    missing = [
        p
        for p, default in allowed.items()
        if default is inspect.Parameter.empty and p not in params
    ]
    if missing:
        raise _Invalid(f"generator {kind}: missing parameter(s) {', '.join(missing)}")
    if "center" in params:
        params["center"] = _lookup(index, params["center"], f"generator {kind} center")
    try:
        built = _GENERATORS[kind](len(index), random.Random(seed), directed, **params)
    except _Invalid as exc:
        raise _Invalid(f"generator {kind}: {exc}") from None
    edges = built.to_directed().edges if directed and not built.is_directed() else built.edges
    return _graph(len(index), directed, edges), {"kind": kind, "seed": seed, **params}


def _lattice_shape(n: int, rows: int | None, cols: int | None) -> tuple[int, int]:
    """Rows x cols for ``n`` nodes; a missing side follows from the other, both missing: squarest."""
    if rows is None and cols is None:
        rows = max(r for r in range(1, int(n**0.5) + 1) if n % r == 0)
    rows = n // _int(cols, "cols", 1) if rows is None else _int(rows, "rows", 1)
    cols = n // rows if cols is None else _int(cols, "cols", 1)
    if rows * cols != n:
        raise _Invalid(f"rows * cols = {rows} * {cols} = {rows * cols}, but there are {n} nodes")
    return rows, cols


def _lattice(n: int, rows: int | None, cols: int | None, periodic: bool) -> nx.Graph:
    rows, cols = _lattice_shape(n, rows, cols)
    grid = nx.grid_2d_graph(rows, cols, periodic=periodic)
    return nx.relabel_nodes(grid, {(r, c): r * cols + c for r, c in grid})


def _connected(sample: Callable[[], nx.Graph], what: str) -> nx.Graph:
    """Draw until connected; the draws share one seeded RNG, so the result depends on the seed only."""
    for _ in range(RANDOM_TRIES):
        graph = sample()
        if _is_connected(graph):
            return graph
    raise _Invalid(f"no connected graph with {what} in {RANDOM_TRIES} tries; make it denser")


# --- assembly, weights, validation -------------------------------------------------------


def _graph(n: int, directed: bool, edges: Iterable[tuple]) -> nx.Graph:
    """A fresh graph on nodes 0..n-1 (in that order) with ``edges``."""
    graph = nx.DiGraph() if directed else nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(edges)
    return graph


def _assemble(
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
    weights = _mixing_matrix(graph, scheme)
    _check_stochastic(weights, labels)
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


def _is_connected(graph: nx.Graph) -> bool:
    return nx.is_strongly_connected(graph) if graph.is_directed() else nx.is_connected(graph)


def _check_structure(graph: nx.Graph, labels: list[str]) -> None:
    loops = list(nx.nodes_with_selfloops(graph))
    if loops:
        raise _Invalid(f"self loop on node {labels[loops[0]]}")
    if _is_connected(graph):
        return
    directed = graph.is_directed()
    parts = list(
        nx.strongly_connected_components(graph) if directed else nx.connected_components(graph)
    )
    smallest = sorted(min(parts, key=len))
    cut_off = ", ".join(labels[i] for i in smallest[:5]) + (", ..." if len(smallest) > 5 else "")
    what = "not strongly connected: it has" if directed else "disconnected: it has"
    sizes = ", ".join(str(len(p)) for p in sorted(parts, key=len, reverse=True))
    raise _Invalid(
        f"graph is {what} {len(parts)} components (sizes {sizes}); smallest component: {cut_off}"
    )


def _check_addresses(addresses: dict[int, str], labels: list[str]) -> None:
    owner: dict[str, int] = {}
    for node, address in sorted(addresses.items()):
        if address in owner:
            raise _Invalid(
                f"nodes {labels[owner[address]]} and {labels[node]} share address {address}"
            )
        owner[address] = node


def _check_stochastic(weights: np.ndarray, labels: list[str]) -> None:
    """Every row nonnegative and summing to 1, so mixing preserves the scale of the model."""
    for i, row in enumerate(weights):
        j = int(np.argmin(row))
        if row[j] < -TOLERANCE:
            target = (
                "itself (in-neighbour weights sum to more than 1)"
                if i == j
                else f"node {labels[j]}"
            )
            raise _Invalid(f"weights of node {labels[i]}: negative weight {row[j]:g} for {target}")
        total = row.sum()
        if abs(total - 1.0) > TOLERANCE:
            raise _Invalid(f"weights of node {labels[i]} sum to {total:g}, not 1")


def _mixing_matrix(graph: nx.Graph, scheme: str) -> np.ndarray:
    """Row ``i`` = weights node ``i`` gives to its in-neighbours; the diagonal takes the rest.

    metropolis-hastings: ``W[v, u] = 1 / (1 + max(indeg(v), outdeg(u)))`` for an edge ``u -> v``
    (for undirected graphs the classic ``1 / (1 + max(deg u, deg v))``: symmetric, doubly
    stochastic). uniform: ``1 / (1 + indeg(v))``. explicit: the edge's ``weight`` attribute and
    the node's optional ``self_weight``.
    """
    _scheme(scheme)
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
                raise _Invalid(f"edge {src} -> {dst} has no weight")
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


# --- reporting helpers -------------------------------------------------------------------


def _degree_line(what: str, degrees: Iterable[tuple[Any, int]]) -> str:
    values = [d for _, d in degrees]
    return f"{what}: min {min(values)}, mean {sum(values) / len(values):.2f}, max {max(values)}"


def _is_ring(graph: nx.Graph) -> bool:
    """A cycle, whichever way its edges point (so relinked rings are still drawn as circles)."""
    undirected = graph.to_undirected()
    return undirected.number_of_nodes() > 2 and all(d == 2 for _, d in undirected.degree())


def _wraps(top: Topology, dx: float, dy: float) -> bool:
    """Whether an edge of a lattice drawing spans more than one grid step."""
    return (top.generator or {}).get("kind") in ("torus", "grid") and dx * dx + dy * dy > 1.01


def _layout(top: Topology) -> dict[int, tuple[float, float]]:
    """Grid positions for lattices, a circle for rings and cliques, a seeded spring otherwise."""
    kind = (top.generator or {}).get("kind")
    if kind in ("torus", "grid"):
        _, cols = _lattice_shape(top.n, top.generator.get("rows"), top.generator.get("cols"))
        return {i: (float(i % cols), -float(i // cols)) for i in range(top.n)}
    if kind in _CIRCULAR_KINDS or _is_ring(top.graph):
        layout = nx.circular_layout(top.graph)
    else:
        layout = nx.spring_layout(top.graph, seed=0)
    return {i: (float(x), float(y)) for i, (x, y) in layout.items()}


# --- file formats ------------------------------------------------------------------------


def _sniff(path: Path, text: str) -> str:
    """The format: by extension, else a leading ``<`` is GraphML, a lone integer first line is
    decentralizepy, a ``key:`` first line is YAML, anything else a networkx edge list."""
    ext = path.suffix.lower()
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    if text.lstrip().startswith("<"):
        return "graphml"
    first = next(_data_lines(text), None)
    if first is None:
        raise _Invalid("file is empty")
    tokens = first[1]
    if len(tokens) == 1 and tokens[0].isdigit():
        return "decentralizepy"
    if ext not in _EDGE_LIST_EXTENSIONS and (tokens[0].endswith(":") or tokens[0] == "---"):
        return "yaml"
    return "edgelist"


def _data_lines(text: str) -> Iterator[tuple[int, list[str]]]:
    """``(line number, tokens)`` of each non-blank line, ``#`` comments removed."""
    for lineno, line in enumerate(text.splitlines(), 1):
        tokens = line.split("#", 1)[0].split()
        if tokens:
            yield lineno, tokens


def _load_yaml(text: str, stem: str) -> Topology:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise _Invalid(f"invalid YAML{where}: {problem}") from None
    if data is None:
        raise _Invalid("file is empty")
    if isinstance(data, dict):
        data.setdefault("name", stem)
    return _from_mapping(data)


def _load_decentralizepy(text: str, stem: str) -> Topology:
    """decentralizepy ``edges`` format: the node count, then one ``u v`` pair (0-based) a line."""
    (_, (count,)), *rest = _data_lines(text)
    n = int(count)
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    for lineno, tokens in rest:
        if len(tokens) != 2 or not all(re.fullmatch(r"-?\d+", t) for t in tokens):
            raise _Invalid(f"line {lineno}: expected 'u v' node numbers, got {' '.join(tokens)!r}")
        for node in map(int, tokens):
            if not 0 <= node < n:
                raise _Invalid(
                    f"line {lineno}: unknown node id {node} (the first line says {n} nodes: 0..{n - 1})"
                )
        graph.add_edge(*map(int, tokens))
    return _from_graph(graph, stem)


def _load_edgelist(text: str, stem: str) -> Topology:
    """networkx edge list: ``u v [data...]`` a line; anything after the two ids is ignored."""
    graph = nx.Graph()
    for lineno, tokens in _data_lines(text):
        if len(tokens) < 2:
            raise _Invalid(f"line {lineno}: expected 'u v', got {tokens[0]!r}")
        graph.add_edge(tokens[0], tokens[1])
    return _from_graph(graph, stem)


def _load_adjlist(text: str, stem: str) -> Topology:
    """networkx adjacency list: a node followed by its neighbours, one node a line."""
    graph = nx.Graph()
    for _, (node, *neighbours) in _data_lines(text):
        graph.add_node(node)
        graph.add_edges_from((node, other) for other in neighbours)
    return _from_graph(graph, stem)


def _load_graphml(text: str, stem: str) -> Topology:
    try:
        graph = nx.parse_graphml(text)
    except (nx.NetworkXError, ET.ParseError, ValueError, KeyError) as exc:
        raise _Invalid(f"invalid GraphML: {' '.join(str(exc).split())}") from None
    simple = nx.DiGraph(graph) if graph.is_directed() else nx.Graph(graph)  # merge parallel edges
    return _from_graph(simple, str(graph.graph.get("name") or stem))


def _from_graph(graph: nx.Graph, name: str) -> Topology:
    """Route a graph read from a file through the YAML schema, so it is validated the same way.

    Node order: numeric when every id is an integer (a file using 0..N-1 keeps its numbering),
    else order of first appearance. A node attribute ``address`` becomes the node's address.
    """
    nodes = list(graph)
    if all(re.fullmatch(r"-?\d+", str(v)) for v in nodes):
        nodes.sort(key=int)

    def entry(v: Any) -> Any:
        address = graph.nodes[v].get("address")
        return v if address is None else {"id": v, "address": address}

    return _from_mapping(
        {
            "name": name,
            "directed": graph.is_directed(),
            "nodes": [entry(v) for v in nodes],
            "edges": [[u, v] for u, v in graph.edges],
        }
    )


_LOADERS: dict[str, Callable[[str, str], Topology]] = {
    "yaml": _load_yaml,
    "graphml": _load_graphml,
    "adjlist": _load_adjlist,
    "edgelist": _load_edgelist,
    "decentralizepy": _load_decentralizepy,
}
