"""Topologies for people: a text report of the numbers that matter, and a drawing."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np

from ringfl.topology.generators import lattice_shape
from ringfl.topology.model import Topology, averaging_error, period_product, spectral_gap

_CIRCULAR_KINDS = ("ring", "bidirectional-ring", "k-nearest-ring", "complete")


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
        _, cols = lattice_shape(top.n, top.generator.get("rows"), top.generator.get("cols"))
        return {i: (float(i % cols), -float(i // cols)) for i in range(top.n)}
    if kind in _CIRCULAR_KINDS or _is_ring(top.graph):
        layout = nx.circular_layout(top.graph)
    else:
        layout = nx.spring_layout(top.graph, seed=0)
    return {i: (float(x), float(y)) for i, (x, y) in layout.items()}
