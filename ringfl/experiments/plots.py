"""The experiment plots: accuracy per round, against bytes, per peer, against ε and against peers.

Each draws on an Agg canvas of its own (no display, no pyplot global state) and returns its path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ringfl.experiments.labels import (
    canonical,
    legend_labels,
    params_label,
    shared_note,
    varying,
)
from ringfl.experiments.results import SettingResult, per_peer_per_round
from ringfl.units import human_bytes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def plot_accuracy_vs_round(
    results: Sequence[SettingResult], path: str | Path, title: str = ""
) -> Path:
    """One line per setting; reference lines dashed."""
    fig, ax = _figure(len(results))
    for result, style in zip(results, _styles(results)):
        points = sorted((r.round, r.accuracy) for r in result.rounds)
        if points:
            ax.plot(*zip(*points), marker="o" if len(points) <= 30 else None, ms=3, **style)
    ax.set_xlabel("round")
    ax.set_ylabel("test accuracy (mean over peers)")
    return _save(fig, ax, results, path, _title(title, "accuracy per round"))


def plot_accuracy_vs_bytes(
    results: Sequence[SettingResult], path: str | Path, title: str = ""
) -> Path:
    """Accuracy against cumulative bytes on the wire (log x): what the accuracy costs. Reference
    runs send nothing, so they are horizontal lines at their final accuracy."""
    fig, ax = _figure(len(results))
    positive = False
    for result, style in zip(results, _styles(results)):
        final = result.final
        if result.setting.is_reference and final is not None:
            ax.axhline(final.accuracy, **style)
            continue
        points = sorted((r.bytes_total, r.accuracy) for r in result.rounds if r.bytes_total > 0)
        if points:
            positive = True
            ax.plot(*zip(*points), marker="o" if len(points) <= 30 else None, ms=3, **style)
    if positive:
        from matplotlib.ticker import FuncFormatter

        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: human_bytes(x)))
    ax.set_xlabel("bytes on the wire (cumulative, all peers)")
    ax.set_ylabel("test accuracy (mean over peers)")
    return _save(fig, ax, results, path, _title(title, "accuracy vs communication"))


def plot_peer_spread(results: Sequence[SettingResult], path: str | Path, title: str = "") -> Path:
    """Final accuracy of every peer per setting: the min–max bar, each peer a dot, the mean a
    diamond. Averages hide the peers a topology or a skewed partition leaves behind."""
    labels = legend_labels(results)
    fig, ax = _figure(len(results), width=8.0, height=max(3.0, 0.45 * len(results) + 1.5))
    for y, (result, style) in enumerate(zip(results, _styles(results))):
        values = result.final_peer_accuracies()
        if not values and result.final is not None:
            values = [result.final.accuracy]
        if not values:
            continue
        color = style["color"]
        ax.hlines(y, min(values), max(values), color=color, lw=2, alpha=0.6)
        offsets = [((i % 5) - 2) * 0.06 for i in range(len(values))]  # deterministic jitter
        ax.scatter(values, [y + o for o in offsets], s=14, color=color, alpha=0.7, zorder=2)
        ax.scatter([sum(values) / len(values)], [y], marker="D", s=40, color="black", zorder=3)
    ax.set_yticks(range(len(results)), labels=labels)
    ax.invert_yaxis()
    ax.set_xlabel("final test accuracy per peer (◆ mean)")
    return _save(fig, ax, results, path, _title(title, "final accuracy per peer"), legend=False)


def plot_privacy_audit(results: Sequence[SettingResult], path: str | Path, title: str = "") -> Path:
    """Accuracy against ε, and the audit's LiRA TPR at 1 % FPR beside it: what the guarantee costs
    and how much leakage it leaves; runs without DP sit at the right edge (ε = ∞)."""
    audited = [r for r in results if r.audit and r.final is not None]
    fig, ax = _figure(len(audited))
    leak = ax.twinx()
    finite = [r.final.epsilon for r in audited if r.final.epsilon is not None]
    edge = 2.0 * max(finite) if finite else 1.0
    for result, style in zip(audited, _styles(audited)):
        eps = result.final.epsilon if result.final.epsilon is not None else edge
        ax.scatter([eps], [result.final.accuracy], marker="o", color=style.get("color"), label=style.get("label"))
        leak.scatter([eps], [result.audit["lira_tpr_1pct"]], marker="s", facecolors="none",
                     edgecolors=style.get("color"))
    leak.axhline(0.01, color="0.6", ls=":", lw=1)  # a blind guess: TPR = FPR
    ax.set_xscale("log")
    ax.set_xlabel(f"ε per peer (no DP plotted at {edge:.3g})")
    ax.set_ylabel("final test accuracy (●)")
    leak.set_ylabel("LiRA TPR at 1 % FPR (□; dotted: blind guess)")
    if audited:
        ax.legend(loc="upper left", bbox_to_anchor=(1.15, 1.0), fontsize=8, frameon=False)
    return _save(fig, ax, audited, path, _title(title, "accuracy and audited leakage vs ε"), legend=False)


def plot_accuracy_vs_peers(results: Sequence[SettingResult], path: str | Path, title: str = "") -> Path:
    """Final accuracy (left) and bytes sent per peer per round (right, log) against the number of
    peers: one line per setting that differs only in ``peers`` (does a scheme keep up as the graph
    grows, and what does it cost?). Centralized runs have no peer count: a dashed line."""
    fig, ax = _figure(len(results), width=13.0)
    right = fig.add_subplot(1, 2, 2)
    ax.set_position([0.06, 0.11, 0.36, 0.77])
    right.set_position([0.5, 0.11, 0.36, 0.77])
    right.grid(True, alpha=0.3)
    groups: dict[str, list[SettingResult]] = {}
    for result in results:
        params = {k: v for k, v in result.setting.params.items() if k != "peers"}
        groups.setdefault(canonical(params), []).append(result)
    members = [g[0] for g in groups.values()]
    names = varying(members)
    styles = [{**style, "label": params_label({k: v for k, v in m.setting.params.items() if k != "peers"}, names)}
              for m, style in zip(members, _styles(members))]  # one line spans every peer count
    for group, style in zip(groups.values(), styles):
        finals = sorted(((r.setting.params.get("peers"), r.final, r.num_peers) for r in group
                         if r.final is not None and r.setting.params.get("peers") is not None),
                        key=lambda item: item[0])
        if not finals:
            if group[0].final is not None:
                ax.axhline(group[0].final.accuracy, **style)
            continue
        peers = [p for p, _, _ in finals]
        ax.plot(peers, [f.accuracy for _, f, _ in finals], marker="o", ms=4, **style)
        sent = [(p, per_peer_per_round(f.bytes_total, n, f.round)) for p, f, n in finals]
        sent = [(p, b) for p, b in sent if b]
        if sent:
            right.plot(*zip(*sent), marker="o", ms=4, **{**style, "label": None})
    for axis in (ax, right):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("peers")
    if right.get_lines():
        from matplotlib.ticker import FuncFormatter

        right.set_yscale("log")
        right.yaxis.set_major_formatter(FuncFormatter(lambda x, _: human_bytes(x)))
    ax.set_ylabel("final test accuracy (mean over peers)")
    right.set_ylabel("bytes sent per peer per round")
    right.set_title("communication", fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    if handles:  # beside the right panel: the left one's usual place is taken
        right.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(fig, ax, results, path, _title(title, "accuracy and bytes vs peers"), legend=False)


PLOTS: dict[str, Callable[[Sequence[SettingResult], str | Path, str], Path]] = {
    "accuracy_vs_round": plot_accuracy_vs_round,
    "accuracy_vs_bytes": plot_accuracy_vs_bytes,
    "peer_spread": plot_peer_spread,
    "accuracy_vs_peers": plot_accuracy_vs_peers,
}


def _figure(count: int, width: float = 9.0, height: float = 5.0) -> tuple[Figure, Axes]:
    """An Agg canvas of our own: no display needed and no pyplot global state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.grid(True, alpha=0.3)
    if count == 0:
        ax.text(0.5, 0.5, "no finished settings", ha="center", va="center", transform=ax.transAxes)
    return fig, ax


def _styles(results: Sequence[SettingResult]) -> list[dict[str, Any]]:
    """Dashed greys for reference lines, distinct colours for the distributed runs."""
    from matplotlib import colormaps

    labels = legend_labels(results)
    palette = colormaps[
        "tab10" if sum(not r.setting.is_reference for r in results) <= 10 else "tab20"
    ]
    greys = ("black", "0.45", "0.65")
    styles = []
    n_ref = n_dist = 0
    for result, label in zip(results, labels):
        if result.setting.is_reference:
            styles.append({"color": greys[n_ref % len(greys)], "ls": "--", "label": label})
            n_ref += 1
        else:
            dashes = ("-", "-.", ":")[(n_dist // palette.N) % 3]
            styles.append({"color": palette(n_dist % palette.N), "ls": dashes, "label": label})
            n_dist += 1
    return styles


def _title(experiment: str, what: str) -> str:
    return f"{experiment}: {what}" if experiment else what


def _save(
    fig: Figure,
    ax: Axes,
    results: Sequence[SettingResult],
    path: str | Path,
    title: str,
    legend: bool = True,
) -> Path:
    note = shared_note(results)
    ax.set_title(f"{title}\n{note}" if note else title, fontsize=10)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path
