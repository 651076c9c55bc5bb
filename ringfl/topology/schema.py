"""The YAML topology schema (docs/topology.md): a parsed mapping in, a :class:`Topology` out.

Every other source (graph files, :func:`generate`) is routed through this schema, so all
topologies are validated the same way; problems become one-line :class:`TopologyError`\\ s.
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import networkx as nx
import numpy as np

from ringfl.topology.generators import GENERATORS, SCHEDULES, generator_params
from ringfl.topology.model import (
    MH,
    MIN_NODES,
    InvalidTopology,
    Topology,
    assemble,
    check_stochastic,
    checked_int,
    checked_number,
    checked_scheme,
    make_graph,
    reported,
    weights_of,
)

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


def from_mapping(data: Any, source: str = "<mapping>") -> Topology:
    """Build a topology from the YAML schema given as a (parsed) mapping."""
    with reported(source):
        return parse_mapping(data)


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


# --- the YAML schema ---------------------------------------------------------------------


def parse_mapping(data: Any) -> Topology:
    if not isinstance(data, Mapping):
        raise InvalidTopology(f"a topology must be a mapping, got {type(data).__name__}")
    unknown = sorted(str(k) for k in data if k not in _TOP_KEYS)
    if unknown:
        raise InvalidTopology(f"unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(_TOP_KEYS)}")
    labels, addresses = _parse_nodes(data.get("nodes"))
    if len(labels) < MIN_NODES:
        raise InvalidTopology(f"a topology needs at least {MIN_NODES} nodes, got {len(labels)}")
    directed = data.get("directed", False)
    if not isinstance(directed, bool):
        raise InvalidTopology(f"'directed' must be true or false, got {directed!r}")
    scheme = checked_scheme(data.get("weights", MH))
    index = {label: i for i, label in enumerate(labels)}
    graph, generator = _structure(data, index, directed, scheme)
    _set_self_weights(graph, data.get("self_weights"), index, scheme)
    name = data.get("name", "topology")
    if not isinstance(name, str) or not name:
        raise InvalidTopology(f"'name' must be a non-empty string, got {name!r}")
    bootstrap = data.get("bootstrap")
    phases = _phases(data, graph, generator, index, scheme)
    if phases:  # the links of every phase: addresses and the static fallback come from the union
        graph = make_graph(len(labels), directed, {e for p in phases for e in p.edges})
    top = assemble(
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
    if kind in SCHEDULES:
        if spec is not None:
            raise InvalidTopology(f"generator {kind} makes its own schedule; drop 'schedule'")
        return SCHEDULES[kind](graph.number_of_nodes())
    if spec is None:
        return []
    if not isinstance(spec, list) or not spec:
        raise InvalidTopology(f"'schedule' must be a non-empty list of phases (lists of edges), got {spec!r}")
    phases = []
    for t, edges in enumerate(spec):
        where = f"schedule phase {t}"
        if not isinstance(edges, list):
            raise InvalidTopology(f"{where}: expected a list of [sender, receiver] edges, got {edges!r}")
        try:
            phases.append(make_graph(len(index), True, _parse_edges(edges, index, True, scheme)))
        except InvalidTopology as exc:
            raise InvalidTopology(f"{where}: {exc}") from None
    return phases


def _phase_weights(phase: nx.DiGraph, labels: list[str], scheme: str) -> np.ndarray:
    """A phase's mixing matrix; a phase need not be connected (the period must mix)."""
    weights = weights_of(phase, scheme)
    check_stochastic(weights, labels)
    weights.setflags(write=False)
    return weights


def _structure(
    data: Mapping, index: dict[str, int], directed: bool, scheme: str
) -> tuple[nx.Graph, dict[str, Any] | None]:
    """The graph from exactly one of ``generator`` and ``edges``."""
    if "generator" in data and "edges" in data:
        raise InvalidTopology("give either 'generator' or 'edges', not both")
    if "generator" not in data and "edges" not in data:
        if "schedule" in data:  # the links are the union of the phases'
            return make_graph(len(index), True, ()), None
        raise InvalidTopology("missing both 'generator' and 'edges'; give exactly one")
    if "edges" in data:
        edges = _parse_edges(data["edges"], index, directed, scheme)
        return make_graph(len(index), directed, edges), None
    if scheme == "explicit":
        raise InvalidTopology("weights: explicit needs weighted 'edges', not a generator")
    return _generated(data["generator"], index, directed)


def _parse_nodes(spec: Any) -> tuple[list[str], dict[int, str]]:
    if spec is None:
        raise InvalidTopology("missing 'nodes' (a count or a list of ids)")
    if isinstance(spec, int) and not isinstance(spec, bool):
        return [str(i) for i in range(checked_int(spec, "'nodes'", 0))], {}
    if not isinstance(spec, list):
        raise InvalidTopology(f"'nodes' must be a count or a list of ids, got {spec!r}")
    labels: list[str] = []
    addresses: dict[int, str] = {}
    seen: set[str] = set()
    for i, item in enumerate(spec):
        label, address = _parse_node(item)
        if label in seen:
            raise InvalidTopology(f"duplicate node id {label}")
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
        raise InvalidTopology(
            f"node entry {dict(item)}: unknown key(s) {', '.join(unknown)}; valid: id, address"
        )
    if "id" not in item:
        raise InvalidTopology(f"node entry {dict(item)} has no 'id'")
    label = _node_id(item["id"])
    address = item.get("address")
    return label, None if address is None else _address(address, f"address of node {label}")


def _node_id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, int | str) or value == "":
        raise InvalidTopology(f"node id must be an integer or a non-empty string, got {value!r}")
    return str(value)


def _lookup(index: dict[str, int], value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str) or str(value) not in index:
        raise InvalidTopology(f"{where}: unknown node id {value!r}")
    return index[str(value)]


def _parse_edges(
    spec: Any, index: dict[str, int], directed: bool, scheme: str
) -> list[tuple[int, int, dict[str, float]]]:
    if not isinstance(spec, list):
        raise InvalidTopology(f"'edges' must be a list of [u, v] or [u, v, weight], got {spec!r}")
    edges = []
    seen: set[Any] = set()
    for item in spec:
        if not isinstance(item, list) or len(item) not in (2, 3):
            raise InvalidTopology(f"edge {item!r} must be [u, v] or [u, v, weight]")
        u, v = (_lookup(index, x, f"edge {item}") for x in item[:2])
        key = (u, v) if directed else frozenset((u, v))
        if key in seen:
            raise InvalidTopology(f"edge {item} is listed twice")
        seen.add(key)
        edges.append((u, v, _edge_data(item, scheme)))
    return edges


def _edge_data(item: list, scheme: str) -> dict[str, float]:
    explicit = scheme == "explicit"
    if len(item) == 2:
        if explicit:
            raise InvalidTopology(f"edge {item} has no weight; weights: explicit needs [u, v, weight]")
        return {}
    if not explicit:
        raise InvalidTopology(f"edge {item} has a weight but weights is {scheme!r}; use weights: explicit")
    return {"weight": checked_number(item[2], f"weight of edge {item}")}


def _set_self_weights(graph: nx.Graph, spec: Any, index: dict[str, int], scheme: str) -> None:
    """``self_weights``: one number for every node, or ``{id: weight}``; default 1 - row sum."""
    if spec is None:
        return
    if scheme != "explicit":
        raise InvalidTopology(f"'self_weights' needs weights: explicit, not {scheme!r}")
    items = spec.items() if isinstance(spec, Mapping) else ((label, spec) for label in index)
    for label, weight in items:
        node = _lookup(index, label, "self_weights")
        graph.nodes[node]["self_weight"] = checked_number(weight, f"self weight of node {label}")


def _address(value: Any, what: str) -> str:
    host, colon, port = value.rpartition(":") if isinstance(value, str) else ("", "", "")
    if not (colon and host and port.isdigit() and 0 < int(port) < 65536):
        raise InvalidTopology(f"{what} must be 'host:port' with a port in 1..65535, got {value!r}")
    return value


def _generated(spec: Any, index: dict[str, int], directed: bool) -> tuple[nx.Graph, dict[str, Any]]:
    if not isinstance(spec, Mapping):
        raise InvalidTopology(f"'generator' must be a mapping with a 'kind', got {spec!r}")
    params = dict(spec)
    kind = params.pop("kind", None)
    if kind not in GENERATORS:
        raise InvalidTopology(f"unknown generator kind {kind!r}; valid kinds: {', '.join(GENERATORS)}")
    seed = checked_int(params.pop("seed", 0), "seed", 0)
    allowed = generator_params(kind)
    unknown = sorted(str(p) for p in params if p not in allowed)
    if unknown:
        valid = ", ".join([*allowed, "seed"])
        raise InvalidTopology(
            f"generator {kind}: unknown parameter(s) {', '.join(unknown)}; valid: {valid}"
        )
    missing = [
        p
        for p, default in allowed.items()
        if default is inspect.Parameter.empty and p not in params
    ]
    if missing:
        raise InvalidTopology(f"generator {kind}: missing parameter(s) {', '.join(missing)}")
    if "center" in params:
        params["center"] = _lookup(index, params["center"], f"generator {kind} center")
    try:
        built = GENERATORS[kind](len(index), random.Random(seed), directed, **params)
    except InvalidTopology as exc:
        raise InvalidTopology(f"generator {kind}: {exc}") from None
    edges = built.to_directed().edges if directed and not built.is_directed() else built.edges
    return make_graph(len(index), directed, edges), {"kind": kind, "seed": seed, **params}
