"""Topology files: YAML (the schema) and graph files written by other tools (decentralizepy edge
list, networkx edge list or adjacency list, GraphML), all validated through the schema."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import networkx as nx
import yaml

from ringfl.errors import TopologyError
from ringfl.topology.model import InvalidTopology, Topology, reported
from ringfl.topology.schema import parse_mapping

_EXTENSIONS = {
    ".yaml": "yaml",
    ".yml": "yaml",
    ".graphml": "graphml",
    ".xml": "graphml",
    ".adjlist": "adjlist",
}
_EDGE_LIST_EXTENSIONS = (".edgelist", ".edges", ".txt", ".el")


def load_topology(path: str | Path) -> Topology:
    """Load any supported file; the format comes from the extension, else from the content."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TopologyError(f"topology file not found: {p}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TopologyError(f"cannot read topology file {p}: {exc}") from None
    with reported(str(p)):
        return _LOADERS[_sniff(p, text)](text, p.stem)


# --- sniffing and loading -------------------------------------------------------------------


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
        raise InvalidTopology("file is empty")
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
        raise InvalidTopology(f"invalid YAML{where}: {problem}") from None
    if data is None:
        raise InvalidTopology("file is empty")
    if isinstance(data, dict):
        data.setdefault("name", stem)
    return parse_mapping(data)


def _load_decentralizepy(text: str, stem: str) -> Topology:
    """decentralizepy ``edges`` format: the node count, then one ``u v`` pair (0-based) a line."""
    (_, (count,)), *rest = _data_lines(text)
    n = int(count)
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    for lineno, tokens in rest:
        if len(tokens) != 2 or not all(re.fullmatch(r"-?\d+", t) for t in tokens):
            raise InvalidTopology(f"line {lineno}: expected 'u v' node numbers, got {' '.join(tokens)!r}")
        for node in map(int, tokens):
            if not 0 <= node < n:
                raise InvalidTopology(
                    f"line {lineno}: unknown node id {node} (the first line says {n} nodes: 0..{n - 1})"
                )
        graph.add_edge(*map(int, tokens))
    return _from_graph(graph, stem)


def _load_edgelist(text: str, stem: str) -> Topology:
    """networkx edge list: ``u v [data...]`` a line; anything after the two ids is ignored."""
    graph = nx.Graph()
    for lineno, tokens in _data_lines(text):
        if len(tokens) < 2:
            raise InvalidTopology(f"line {lineno}: expected 'u v', got {tokens[0]!r}")
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
        raise InvalidTopology(f"invalid GraphML: {' '.join(str(exc).split())}") from None
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

    return parse_mapping(
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
