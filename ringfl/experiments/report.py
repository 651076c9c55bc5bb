"""The experiment report: summary.csv, report.md and the terminal table, and :func:`write_all`,
which derives them and every plot from the finished settings (regenerated at any time)."""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ringfl.checkpoint import atomic_write_bytes
from ringfl.experiments.labels import (
    format_number,
    format_value,
    legend_labels,
    ordered,
    shared_note,
)
from ringfl.experiments.plots import PLOTS, plot_privacy_audit
from ringfl.experiments.results import (
    AUDIT_COLUMNS,
    ROUNDS_FILE,
    SETTINGS_DIR,
    SUMMARY_COLUMNS,
    SettingResult,
)
from ringfl.units import human_bytes

if TYPE_CHECKING:
    from rich.console import Console

T = TypeVar("T")

PLOTS_DIR = "plots"
MAX_ROUND_COLUMNS = 11  # the per-round Markdown table samples rounds beyond this

_Column = tuple[str, Callable[[Mapping[str, Any]], str], bool]  # header, cell, right-aligned

# Shared by report.md and the terminal table so both show the same thing.
_DISPLAY: tuple[_Column, ...] = (
    ("setting", lambda r: str(r["label"]), False),
    ("rounds", lambda r: format_value(r["final_round"]), True),
    ("acc", lambda r: format_number(r["final_accuracy"], ".4f"), True),
    ("min–max", lambda r: _range(r["final_min_accuracy"], r["final_max_accuracy"]), True),
    ("B/peer/round", lambda r: human_bytes(r["bytes_per_peer_per_round"]), True),
    ("B total", lambda r: human_bytes(r["bytes_total"]), True),
    ("ε", lambda r: format_number(r["epsilon_composed"], ".3g"), True),
    ("wall s", lambda r: format_number(r["wall_time_s"], ".1f"), True),
    ("key", lambda r: str(r["setting"]), False),
)


_NOT_IN_TERMINAL = frozenset({"B total", "key"})


def _range(lo: float | None, hi: float | None) -> str:
    return "" if lo is None or hi is None else f"{lo:.3f}–{hi:.3f}"


# --- tables ------------------------------------------------------------------------------


def summary_rows(results: Iterable[SettingResult]) -> list[dict[str, Any]]:
    return [result.summary_row() for result in ordered(results)]


def write_summary_csv(results: Iterable[SettingResult], path: str | Path) -> Path:
    results = list(results)
    columns = SUMMARY_COLUMNS + (AUDIT_COLUMNS if any(r.audit for r in results) else ())
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(summary_rows(results))
    atomic_write_bytes(Path(path), buffer.getvalue().encode())
    return Path(path)


def print_summary(results: Iterable[SettingResult], console: Console | None = None) -> None:
    """The summary table for a terminal: legend labels with the shared parameters in the
    caption, and no keys, so it fits 80 columns (report.md has the full labels and keys)."""
    from rich import box
    from rich.console import Console
    from rich.table import Table

    results = ordered(results)
    columns = [c for c in _DISPLAY if c[0] not in _NOT_IN_TERMINAL]
    table = Table(
        title="experiment summary", box=box.SIMPLE_HEAD, caption=shared_note(results) or None
    )
    for header, _, right in columns:
        table.add_column(header, justify="right" if right else "left")
    for row, label in zip(summary_rows(results), legend_labels(results)):
        table.add_row(*(cell({**row, "label": label}) for _, cell, _ in columns))
    (console or Console()).print(table)


def write_report_md(
    results: Iterable[SettingResult],
    path: str | Path,
    title: str,
    notes: str = "",
    *,
    plots: Mapping[str, str | Path] | None = None,
    topology_images: Mapping[str, str | Path] | None = None,
) -> Path:
    """Markdown report: summary table, accuracy per round, and links to the images given."""
    path = Path(path)
    results = ordered(results)
    sections = [f"# {title}", notes.strip(), "## Summary", _summary_md(results)]
    if results:
        sections += ["## Accuracy per round", _rounds_md(results)]
    sections += _images_md("Plots", plots, path.parent)
    sections += _images_md("Topologies", topology_images, path.parent)
    text = "\n\n".join(s for s in sections if s) + "\n"
    atomic_write_bytes(path, text.encode())
    return path


def _summary_md(results: Sequence[SettingResult]) -> str:
    if not results:
        return "_No finished settings yet._"
    rows = [[cell(r) for _, cell, _ in _DISPLAY] for r in summary_rows(results)]
    return _md_table([h for h, _, _ in _DISPLAY], rows, [right for _, _, right in _DISPLAY])


def _rounds_md(results: Sequence[SettingResult]) -> str:
    rounds = sorted({r.round for result in results for r in result.rounds})
    finals = {result.final.round for result in results if result.final is not None}
    shown = sorted(set(_sample(rounds, MAX_ROUND_COLUMNS)) | finals)  # every setting's last round
    rows = []
    for result in results:
        by_round = {r.round: r.accuracy for r in result.rounds}
        rows.append([result.setting.label, *(format_number(by_round.get(n), ".4f") for n in shown)])
    table = _md_table(["setting", *(f"r{n}" for n in shown)], rows, [False, *([True] * len(shown))])
    if len(shown) == len(rounds):
        return table
    return f"{table}\n\nSampled rounds; every round is in `{SETTINGS_DIR}/<key>/{ROUNDS_FILE}`."


def _sample(items: Sequence[T], limit: int) -> list[T]:
    """At most ``limit`` evenly spaced items, always the first and the last."""
    if len(items) <= limit:
        return list(items)
    picks = sorted({round(i * (len(items) - 1) / (limit - 1)) for i in range(limit)})
    return [items[i] for i in picks]


def _md_table(header: Sequence[str], rows: Iterable[Sequence[str]], right: Sequence[bool]) -> str:
    def line(cells: Iterable[str]) -> str:
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    rule = "|" + "|".join("---:" if r else "---" for r in right) + "|"
    return "\n".join([line(header), rule, *(line(row) for row in rows)])


def _images_md(heading: str, images: Mapping[str, str | Path] | None, base: Path) -> list[str]:
    """Links relative to the report, so the output folder can be moved or published as is."""
    if not images:
        return []
    links = [
        f"![{name.replace('_', ' ')}]({Path(os.path.relpath(p, base)).as_posix()})"
        for name, p in images.items()
    ]
    return [f"## {heading}", "\n\n".join(links)]


# --- everything at once ------------------------------------------------------------------


def write_all(
    out_dir: str | Path,
    results: Iterable[SettingResult],
    title: str,
    notes: str = "",
    topology_images: Mapping[str, str | Path] | None = None,
) -> dict[str, Path]:
    """summary.csv, report.md and every plot from ``results``; returns the paths by name."""
    out = Path(out_dir)
    results = ordered(results)
    plots = {
        name: plot(results, out / PLOTS_DIR / f"{name}.png", title) for name, plot in PLOTS.items()
    }
    if any(r.audit for r in results):
        plots["privacy_audit"] = plot_privacy_audit(results, out / PLOTS_DIR / "privacy_audit.png", title)
    written = {
        "summary.csv": write_summary_csv(results, out / "summary.csv"),
        "report.md": write_report_md(
            results, out / "report.md", title, notes, plots=plots, topology_images=topology_images
        ),
    }
    return {**written, **plots}
