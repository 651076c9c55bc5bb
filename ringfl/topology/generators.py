"""Topology generators for experiments: rings, lattices, random and exponential graphs.

``GENERATOR_KINDS`` lists them; :func:`ringfl.topology.generate` builds one through the schema.
"""

from __future__ import annotations

import inspect
import math
import random
from collections.abc import Callable
from typing import Any

import networkx as nx

from ringfl.topology.model import (
    RANDOM_TRIES,
    InvalidTopology,
    checked_int,
    checked_probability,
    is_connected,
    make_graph,
)

# Each builder takes (n, rng, directed, **params); its keyword defaults *are* the schema's
# defaults (a parameter without a default is required). Undirected results are turned into
# both-way digraphs when the topology is directed.


def _ring(n: int, rng: random.Random, directed: bool) -> nx.Graph:
    return nx.cycle_graph(n, create_using=nx.DiGraph if directed else nx.Graph)


def _bidirectional_ring(n: int, rng: random.Random, directed: bool) -> nx.Graph:
    return nx.cycle_graph(n)


def _k_nearest_ring(n: int, rng: random.Random, directed: bool, k: int = 2) -> nx.Graph:
    return nx.circulant_graph(n, range(1, checked_int(k, "k", 1, n // 2) + 1))


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
    k, p = checked_int(k, "k", 2, n - 1), checked_probability(p, "p")
    try:
        return nx.connected_watts_strogatz_graph(n, k, p, tries=RANDOM_TRIES, seed=rng)
    except nx.NetworkXError as exc:
        raise InvalidTopology(f"no connected graph with k={k}, p={p}: {exc}") from None


def _random_regular(n: int, rng: random.Random, directed: bool, degree: int = 3) -> nx.Graph:
    d = checked_int(degree, "degree", 1, n - 1)
    if n * d % 2:
        raise InvalidTopology(f"degree * nodes must be even, got {d} * {n}")
    return _connected(lambda: nx.random_regular_graph(d, n, seed=rng), f"degree={d}")


def _erdos_renyi(n: int, rng: random.Random, directed: bool, p: float) -> nx.Graph:
    p = checked_probability(p, "p")
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
    return [make_graph(n, True, ((i, (i + 2**t) % n) for i in range(n))) for t in range(_exponent_count(n))]


SCHEDULES: dict[str, Callable[[int], list[nx.DiGraph]]] = {
    "one-peer-exponential": _one_peer_exponential_phases,
}


GENERATORS: dict[str, Callable[..., nx.Graph]] = {
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
    "one-peer-exponential": _exponential,  # the union of its phases; the schedule is SCHEDULES'
}
GENERATOR_KINDS = tuple(GENERATORS)


def generator_params(kind: str) -> dict[str, Any]:
    """``{param: default}`` of a generator; ``inspect.Parameter.empty`` marks required ones."""
    params = list(inspect.signature(GENERATORS[kind]).parameters.values())[3:]
    return {p.name: p.default for p in params}


def lattice_shape(n: int, rows: int | None, cols: int | None) -> tuple[int, int]:
    """Rows x cols for ``n`` nodes; a missing side follows from the other, both missing: squarest."""
    if rows is None and cols is None:
        rows = max(r for r in range(1, int(n**0.5) + 1) if n % r == 0)
    rows = n // checked_int(cols, "cols", 1) if rows is None else checked_int(rows, "rows", 1)
    cols = n // rows if cols is None else checked_int(cols, "cols", 1)
    if rows * cols != n:
        raise InvalidTopology(f"rows * cols = {rows} * {cols} = {rows * cols}, but there are {n} nodes")
    return rows, cols


def _lattice(n: int, rows: int | None, cols: int | None, periodic: bool) -> nx.Graph:
    rows, cols = lattice_shape(n, rows, cols)
    grid = nx.grid_2d_graph(rows, cols, periodic=periodic)
    return nx.relabel_nodes(grid, {(r, c): r * cols + c for r, c in grid})


def _connected(sample: Callable[[], nx.Graph], what: str) -> nx.Graph:
    """Draw until connected; the draws share one seeded RNG, so the result depends on the seed only."""
    for _ in range(RANDOM_TRIES):
        graph = sample()
        if is_connected(graph):
            return graph
    raise InvalidTopology(f"no connected graph with {what} in {RANDOM_TRIES} tries; make it denser")
