"""Topologies: loading every format, generators, mixing weights, spectral gap, relinking, reports."""

import math
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ringfl.errors import TopologyError
from ringfl.topology import (
    GENERATOR_KINDS,
    Topology,
    describe,
    from_mapping,
    generate,
    load_topology,
    mixing_matrix,
    plot,
    relink_without,
    spectral_gap,
)

SHIPPED = Path(__file__).resolve().parents[1] / "topologies"
RING4 = {"nodes": 4, "edges": [[0, 1], [1, 2], [2, 3], [3, 0]]}


def assert_stochastic(w: np.ndarray, doubly: bool) -> None:
    """Rows (and with ``doubly`` columns) are nonnegative and sum to 1; doubly also means symmetric."""
    assert (w >= 0).all()
    assert np.allclose(w.sum(axis=1), 1.0)
    if doubly:
        assert np.allclose(w, w.T)


def error(data: dict, match: str) -> None:
    with pytest.raises(TopologyError, match=match) as info:
        from_mapping(data, source="t.yaml")
    assert "\n" not in str(info.value) and str(info.value).startswith("t.yaml: ")


# --- shipped files ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", sorted(SHIPPED.iterdir()), ids=lambda p: p.name)
def test_shipped_files_load_and_validate(path):
    top = load_topology(path)
    assert top.n >= 2 and top.graph.number_of_nodes() == top.n == len(top.labels)
    assert_stochastic(top.weights, doubly=not top.directed)
    assert 0 < spectral_gap(top.weights) <= 1


@pytest.mark.parametrize(
    ("name", "n", "degrees"),
    [
        ("ring", 8, {2}),
        ("torus", 16, {4}),
        ("complete", 8, {7}),
        ("star", 8, {1, 7}),
        ("line", 8, {1, 2}),
        ("small-world", 16, None),
        ("ring8", 8, {2}),
    ],
)
def test_shipped_shapes(name, n, degrees):
    path = next(SHIPPED.glob(f"{name}.*"))
    top = load_topology(path)
    assert top.n == n
    if degrees:
        assert {d for _, d in top.graph.degree()} == degrees


def test_shipped_ring_has_third_weights_and_directed_ring_halves():
    ring = load_topology(SHIPPED / "ring.yaml")
    assert ring.in_neighbours(0) == [1, 7]
    assert ring.neighbour_weights(0) == pytest.approx({1: 1 / 3, 7: 1 / 3})
    assert ring.self_weight(0) == pytest.approx(1 / 3)
    directed = load_topology(SHIPPED / "ring-directed.yaml")
    assert directed.directed and directed.in_neighbours(0) == [7]
    assert directed.out_neighbours(0) == [1]
    assert directed.neighbour_weights(0) == {7: 0.5} and directed.self_weight(0) == 0.5


def test_small_world_is_reproducible():
    a, b = load_topology(SHIPPED / "small-world.yaml"), load_topology(SHIPPED / "small-world.yaml")
    assert sorted(a.graph.edges) == sorted(b.graph.edges)
    assert generate("small-world", 16, seed=1, k=4, p=0.2).graph.edges == a.graph.edges


def test_addresses_bootstrap_and_labels():
    top = load_topology(SHIPPED / "ring-addresses.yaml")
    assert top.labels == ["alice", "bob", "carol", "dave"]
    assert top.addresses[top.index_of("carol")] == "127.0.0.1:9003"
    assert top.bootstrap == "127.0.0.1:9000"
    assert top.in_neighbours(top.index_of("alice")) == [1, 3]


def test_explicit_weights():
    top = load_topology(SHIPPED / "ring-explicit.yaml")
    assert top.scheme == "explicit"
    assert top.neighbour_weights(0) == {1: 0.25, 3: 0.25} and top.self_weight(0) == 0.5
    # Without self_weights, the diagonal takes what the edges leave.
    top = from_mapping({"nodes": 3, "edges": [[0, 1, 0.2], [1, 2, 0.3]], "weights": "explicit"})
    assert np.allclose(np.diag(top.weights), [0.8, 0.5, 0.7])
    directed = from_mapping(explicit_ring4(0.4, 0.4, 0.4, 0.4, directed=True))
    assert directed.weights[1, 0] == 0.4 and directed.weights[0, 1] == 0  # u -> v: row v


# --- generators --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", GENERATOR_KINDS)
@pytest.mark.parametrize("directed", [False, True])
def test_every_generator_builds_a_valid_topology(kind, directed):
    params = {"erdos-renyi": {"p": 0.4}}.get(kind, {})
    top = generate(kind, 12, seed=3, directed=directed, **params)
    assert top.n == 12 and top.directed == directed and top.generator["kind"] == kind
    assert_stochastic(top.weights, doubly=not directed)
    if kind != "erdos-renyi":  # every node sends as much as it receives: columns sum to 1 too
        assert np.allclose(top.weights.sum(axis=0), 1.0)


@pytest.mark.parametrize(
    ("kind", "params", "edges", "degrees"),
    [
        ("ring", {}, 8, {2}),
        ("bidirectional-ring", {}, 8, {2}),
        ("k-nearest-ring", {"k": 2}, 16, {4}),
        ("line", {}, 7, {1, 2}),
        ("star", {"center": 5}, 7, {1, 7}),
        ("complete", {}, 28, {7}),
        ("torus", {"rows": 2, "cols": 4}, 12, {3}),  # a 2-cycle is one edge
        ("grid", {"rows": 2, "cols": 4}, 10, {2, 3}),
        ("random-regular", {"degree": 3}, 12, {3}),
    ],
)
def test_generator_shapes(kind, params, edges, degrees):
    top = generate(kind, 8, **params)
    assert top.graph.number_of_edges() == edges
    assert {d for _, d in top.graph.degree()} == degrees


def test_star_center_and_directed_variants():
    assert generate("star", 8, center=5).graph.degree(5) == 7
    lettered = from_mapping({"nodes": list("abcd"), "generator": {"kind": "star", "center": "c"}})
    assert lettered.graph.degree(lettered.index_of("c")) == 3
    assert generate("ring", 8, directed=True).graph.number_of_edges() == 8
    assert generate("bidirectional-ring", 8, directed=True).graph.number_of_edges() == 16


def test_torus_infers_missing_side():
    assert generate("torus", 12, rows=3).generator == {"kind": "torus", "seed": 0, "rows": 3}
    assert generate("torus", 16).graph.number_of_edges() == 32  # squarest: 4 x 4


def test_erdos_renyi_retries_deterministically():
    a, b = generate("erdos-renyi", 20, seed=7, p=0.15), generate("erdos-renyi", 20, seed=7, p=0.15)
    assert list(a.graph.edges) == list(b.graph.edges)
    assert list(a.graph.edges) != list(generate("erdos-renyi", 20, seed=8, p=0.15).graph.edges)
    assert nx.is_connected(a.graph)


# --- weights and spectral gap ------------------------------------------------------------


@st.composite
def connected_graphs(draw, directed: bool) -> nx.Graph:
    """A spanning tree (undirected) or a Hamiltonian cycle (directed) plus random extra edges."""
    n = draw(st.integers(2, 12))
    g = nx.DiGraph() if directed else nx.Graph()
    g.add_nodes_from(range(n))
    if directed:
        order = draw(st.permutations(range(n)))
        g.add_edges_from(zip(order, order[1:] + order[:1], strict=True))
    else:
        g.add_edges_from((i, draw(st.integers(0, i - 1))) for i in range(1, n))
    pairs = st.tuples(st.integers(0, n - 1), st.integers(0, n - 1)).filter(lambda e: e[0] != e[1])
    g.add_edges_from(draw(st.lists(pairs, max_size=2 * n)))
    return g


@settings(max_examples=60, deadline=None)
@given(connected_graphs(directed=False))
def test_mh_is_symmetric_doubly_stochastic_with_positive_gap(graph):
    w = mixing_matrix(graph, "metropolis-hastings")
    assert_stochastic(w, doubly=True)
    assert spectral_gap(w) > 1e-9
    assert_stochastic(mixing_matrix(graph, "uniform"), doubly=False)


@settings(max_examples=60, deadline=None)
@given(connected_graphs(directed=True))
def test_directed_weights_are_row_stochastic(graph):
    for scheme in ("metropolis-hastings", "uniform"):
        w = mixing_matrix(graph, scheme)
        assert_stochastic(w, doubly=False)
        for u, v in graph.edges:
            assert w[v, u] > 0  # the receiver mixes the sender in


def test_uniform_equals_mh_on_regular_graphs():
    for kind in ("ring", "torus", "complete", "random-regular"):
        graph = generate(kind, 16).graph
        assert np.allclose(
            mixing_matrix(graph, "uniform"), mixing_matrix(graph, "metropolis-hastings")
        )


@pytest.mark.parametrize("n", [3, 5, 8, 30])
def test_ring_spectral_gap_closed_form(n):
    expected = 1 - (1 / 3 + 2 / 3 * math.cos(2 * math.pi / n))
    assert spectral_gap(generate("ring", n).weights) == pytest.approx(expected, abs=1e-9)


def test_spectral_gap_reference_values():
    assert spectral_gap(generate("ring", 8).weights) == pytest.approx(0.195, abs=5e-4)
    assert spectral_gap(generate("ring", 30).weights) == pytest.approx(0.0146, abs=5e-5)
    assert spectral_gap(np.full((8, 8), 1 / 8)) == pytest.approx(1.0)
    assert spectral_gap(generate("complete", 8, weights="uniform").weights) == pytest.approx(1.0)
    # 4x4 torus, weights 1/5: eigenvalues 1/5 + 2/5 (cos a + cos b), second largest 3/5.
    assert spectral_gap(generate("torus", 16, rows=4, cols=4).weights) == pytest.approx(0.4)
    gaps = [spectral_gap(generate(k, 16).weights) for k in ("line", "ring", "torus", "complete")]
    assert gaps == sorted(gaps)


# --- other file formats ------------------------------------------------------------------


def test_decentralizepy_edge_list(tmp_path):
    path = tmp_path / "ring.edges"  # decentralizepy writes both directions of every edge
    path.write_text("5\n" + "".join(f"{i} {(i + d) % 5}\n" for i in range(5) for d in (1, 4)))
    top = load_topology(path)
    assert top.name == "ring" and top.n == 5 and top.graph.number_of_edges() == 5
    assert top.labels == ["0", "1", "2", "3", "4"] and top.in_neighbours(0) == [1, 4]


def test_networkx_edgelist_adjlist_graphml(tmp_path):
    graph = nx.relabel_nodes(nx.cycle_graph(6), {i: f"p{i}" for i in range(6)})
    nx.set_node_attributes(graph, {f"p{i}": f"10.0.0.{i}:7000" for i in range(6)}, "address")
    nx.write_edgelist(graph, tmp_path / "g.edgelist", data=True)
    nx.write_adjlist(graph, tmp_path / "g.adjlist")
    nx.write_graphml(graph, tmp_path / "g.graphml")
    (tmp_path / "numeric.txt").write_text("# comment\n2 0\n0 1 {'weight': 2}\n1 2\n")
    expected = {frozenset(e) for e in graph.edges}
    for name in ("g.edgelist", "g.adjlist", "g.graphml"):
        top = load_topology(tmp_path / name)
        assert {frozenset((top.labels[u], top.labels[v])) for u, v in top.graph.edges} == expected
    assert load_topology(tmp_path / "g.graphml").labels == [f"p{i}" for i in range(6)]
    assert load_topology(tmp_path / "g.edgelist").labels[:3] == ["p0", "p1", "p5"]  # first seen
    assert load_topology(tmp_path / "g.graphml").addresses[2] == "10.0.0.2:7000"
    numeric = load_topology(tmp_path / "numeric.txt")
    assert numeric.labels == ["0", "1", "2"]  # integer ids keep their numbering


def test_directed_graphml_and_sniffing(tmp_path):
    nx.write_graphml(nx.cycle_graph(4, create_using=nx.DiGraph), tmp_path / "d")
    assert load_topology(tmp_path / "d").directed
    (tmp_path / "y").write_text("nodes: 3\ngenerator: {kind: complete}\n")
    assert load_topology(tmp_path / "y").name == "y"


# --- errors ------------------------------------------------------------------------------


def explicit_ring4(*weights: float, **extra) -> dict:
    """A 4-ring with explicit weights on edges 0-1, 1-2, 2-3, 3-0."""
    edges = [[u, (u + 1) % 4, w] for u, w in enumerate(weights)]
    return {"nodes": 4, "edges": edges, "weights": "explicit", **extra}


def gen(kind: str, n: int = 4, **params) -> dict:
    return {"nodes": n, "generator": {"kind": kind, **params}}


TWO_TRIANGLES = {"nodes": 6, "edges": [[0, 1], [1, 2], [2, 0], [3, 4], [4, 5]]}
SAME_ADDRESS = [{"id": 0, "address": "h:1"}, {"id": 1, "address": "h:1"}]


@pytest.mark.parametrize(
    ("data", "match"),
    [
        ({**RING4, "edges": [[0, 1], [1, 2], [0, 2], [3, 3]]}, "self loop on node 3"),
        (TWO_TRIANGLES, "disconnected: it has 2 components .sizes 3, 3."),
        ({"nodes": 4, "edges": []}, "disconnected.* 4 components"),
        ({**RING4, "edges": [[0, 1], [1, 2], [2, 3]], "directed": True}, "not strongly connected"),
        ({**RING4, "edges": [[0, 1], [1, 9]]}, r"edge \[1, 9\]: unknown node id 9"),
        ({"nodes": ["a", "b"], "edges": [["a", "c"]]}, "unknown node id 'c'"),
        ({**RING4, "edges": [[0, 1], [1, 0]]}, r"edge \[1, 0\] is listed twice"),
        ({**RING4, "edges": [[0, 1, 2]]}, "has a weight but weights is 'metropolis-hastings'"),
        ({**RING4, "weights": "explicit"}, r"edge \[0, 1\] has no weight"),
        (explicit_ring4(0.6, 0.6, 0.1, 0.1), "node 1: negative weight -0.2 for itself"),
        (explicit_ring4(-0.1, 0.2, 0.2, 0.2), "node 0: negative weight -0.1 for node 1"),
        (explicit_ring4(0.2, 0.2, 0.2, 0.2, self_weights={0: 0.5}), "node 0 sum to 0.9, not 1"),
        ({**RING4, "self_weights": 0.5}, "'self_weights' needs weights: explicit"),
        ({**RING4, "weights": "softmax"}, "unknown weights scheme 'softmax'; valid: metropolis-"),
        (gen("hypercube"), "unknown generator kind 'hypercube'; valid kinds: ring, "),
        (gen("ring", k=2), "generator ring: unknown parameter.* k"),
        (gen("erdos-renyi"), "missing parameter.* p"),
        (gen("erdos-renyi", p=1.5), r"p must be in \[0, 1\]"),
        (gen("erdos-renyi", p=0.0), "no connected graph with p=0.0 in 100 tries"),
        (gen("k-nearest-ring", k=3), "k must be an integer in 1..2"),
        (gen("random-regular", 5, degree=3), "must be even"),
        (gen("star", center=7), "center: unknown node id 7"),
        (gen("torus", 16, rows=3, cols=5), r"rows \* cols = 3 \* 5 = 15, but there are 16 nodes"),
        ({**gen("complete"), "weights": "explicit"}, "explicit needs weighted 'edges'"),
        ({"nodes": 4, "generator": "ring"}, "'generator' must be a mapping"),
        ({"nodes": 4}, "missing both 'generator' and 'edges'"),
        ({**RING4, **gen("ring")}, "either 'generator' or 'edges', not both"),
        ({"edges": []}, "missing 'nodes'"),
        (gen("ring", 1), "at least 2 nodes, got 1"),
        ({"nodes": [0, "0"], "edges": [[0, 0]]}, "duplicate node id 0"),
        ({"nodes": SAME_ADDRESS, "edges": [[0, 1]]}, "nodes 0 and 1 share address h:1"),
        ({"nodes": [{"id": 0, "address": "h"}, 1], "edges": [[0, 1]]}, "address of node 0 must be"),
        ({"nodes": [{"id": 0, "addr": "h:1"}, 1]}, "unknown key.* addr; valid: id, address"),
        ({**RING4, "bootstrap": "h:99999"}, "bootstrap must be 'host:port'"),
        ({**RING4, "directed": "maybe"}, "'directed' must be true or false"),
        ({**RING4, "topology": 1}, "unknown key.* topology; valid keys"),
    ],
)
def test_invalid_mappings(data, match):
    error(data, match)


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("bad.yaml", "nodes: [1, 2\n", "invalid YAML at line 2"),
        ("list.yaml", "- 1\n- 2\n", "must be a mapping, got list"),
        ("empty.yaml", "# nothing\n", "file is empty"),
        ("bad.edges", "3\n0 1\n1 5\n", "line 3: unknown node id 5"),
        ("bad2.edges", "3\n0 1 2\n", "line 2: expected 'u v'"),
        ("short.edgelist", "a b\nc\n", "line 2: expected 'u v'"),
        ("split.edgelist", "a b\nc d\n", "disconnected.* 2 components"),
        ("bad.graphml", "<graphml><oops", "invalid GraphML"),
    ],
)
def test_invalid_files(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(TopologyError, match=match) as info:
        load_topology(path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(TopologyError, match="topology file not found: .*nope.yaml"):
        load_topology(tmp_path / "nope.yaml")


def test_topology_is_read_only():
    top = generate("ring", 4)
    with pytest.raises(ValueError):
        top.weights[0, 0] = 1.0
    with pytest.raises(nx.NetworkXError):
        top.graph.add_edge(0, 2)
    with pytest.raises(TopologyError, match="unknown node id 'x'"):
        top.index_of("x")


# --- relinking, reports, plots -----------------------------------------------------------


def test_relink_ring_without_node_3_is_a_ring_of_7():
    ring = load_topology(SHIPPED / "ring.yaml")
    healed = relink_without(ring, {3})
    assert healed.n == 7 and healed.labels == ["0", "1", "2", "4", "5", "6", "7"]
    two, four = healed.index_of(2), healed.index_of(4)
    assert healed.in_neighbours(two) == [1, four] and healed.in_neighbours(four) == [two, 4]
    assert {d for _, d in healed.graph.degree()} == {2}
    assert spectral_gap(healed.weights) == pytest.approx(
        1 - (1 / 3 + 2 / 3 * math.cos(2 * math.pi / 7))
    )
    assert relink_without(ring, set()) is ring


def test_relink_adjacent_and_directed():
    assert nx.is_isomorphic(relink_without(generate("ring", 8), {3, 4, 6}).graph, nx.cycle_graph(5))
    directed = relink_without(generate("ring", 8, directed=True), {3})
    assert directed.out_neighbours(directed.index_of(2)) == [directed.index_of(4)]
    assert nx.is_isomorphic(directed.graph, nx.cycle_graph(7, create_using=nx.DiGraph))


def test_relink_other_graphs_bridge_and_keep_addresses():
    star = relink_without(generate("star", 6), {0})
    assert nx.is_isomorphic(star.graph, nx.complete_graph(5))  # the leaves now reach each other
    top = load_topology(SHIPPED / "ring-addresses.yaml")
    healed = relink_without(top, {top.index_of("bob")})
    assert healed.addresses[healed.index_of("carol")] == "127.0.0.1:9003"
    alice_hears = [healed.labels[j] for j in healed.in_neighbours(healed.index_of("alice"))]
    assert alice_hears == ["carol", "dave"]
    explicit = relink_without(load_topology(SHIPPED / "ring-explicit.yaml"), {0})
    assert explicit.scheme == "metropolis-hastings"
    assert relink_without(generate("ring", 3), {0, 1}).weights.tolist() == [[1.0]]


def test_relink_errors():
    with pytest.raises(TopologyError, match=r"unknown node\(s\) \[9\]"):
        relink_without(generate("ring", 4), {9})
    with pytest.raises(TopologyError, match="every node"):
        relink_without(generate("ring", 2), {0, 1})


def test_describe_reports_key_numbers():
    text = describe(generate("ring", 8))
    for part in ("8 nodes", "8 edges", "degree: min 2, mean 2.00, max 2", "diameter: 4"):
        assert part in text
    assert "connected: yes" in text and "spectral gap: 0.1953" in text
    text = describe(load_topology(SHIPPED / "ring-directed.yaml"))
    for part in ("in-degree: min 1", "out-degree: min 1", "strongly connected: yes", "diameter: 7"):
        assert part in text
    assert "bootstrap: 127.0.0.1:9000" in describe(load_topology(SHIPPED / "ring-addresses.yaml"))


@pytest.mark.parametrize(
    "top",
    [
        generate("ring", 8),
        generate("torus", 16),
        generate("ring", 6, directed=True),
        generate("star", 5),
    ],
    ids=["ring", "torus", "directed", "star"],
)
def test_plot_writes_png(tmp_path, top: Topology):
    path = tmp_path / "top.png"
    plot(top, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 1000
