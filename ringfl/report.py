"""Results of topology experiments: per-setting record files, summary.csv, report.md and plots.

Every setting of a grid is stored in its own folder whose ``setting.json`` says ``"complete": true``
only after its records are on disk, so an interrupted experiment keeps each finished setting and a
re-run skips it (:func:`is_complete`). Everything else (CSV, Markdown, PNGs, the terminal table) is
derived from those folders by :func:`write_all` and can be regenerated at any time.

Layout under an experiment's output folder::

    settings/<key>/setting.json   params, key, label, wall_time, num_peers, complete (written last)
    settings/<key>/rounds.jsonl   one RoundRecord per line
    settings/<key>/peers.jsonl    one PeerRecord per line
    summary.csv  report.md  plots/accuracy_vs_round.png  plots/accuracy_vs_bytes.png
    plots/peer_spread.png  plots/accuracy_vs_peers.png
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import json
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ringfl.checkpoint import atomic_write_bytes
from ringfl.metrics import read_jsonl
from ringfl.units import human_bytes

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from rich.console import Console

T = TypeVar("T")

REFERENCE_MODES = ("centralized", "standalone")
MODE_ORDER = ("centralized", "standalone", "coordinator", "ring")  # reference lines first
SETTINGS_DIR = "settings"
SETTING_FILE = "setting.json"
ROUNDS_FILE = "rounds.jsonl"
PEERS_FILE = "peers.jsonl"
PLOTS_DIR = "plots"
MAX_ROUND_COLUMNS = 11  # the per-round Markdown table samples rounds beyond this

PARAM_COLUMNS = (
    "mode", "algorithm", "topology", "peers", "theta_u", "theta_d", "gamma", "epsilon",
    "partition", "alpha", "model", "rounds", "seed", "data",
)  # fmt: skip
METRIC_COLUMNS = (
    "final_round", "final_accuracy", "final_min_accuracy", "final_max_accuracy", "final_loss",
    "wall_time_s", "bytes_total", "bytes_per_peer_per_round", "epsilon_composed",
)  # fmt: skip
SUMMARY_COLUMNS = ("setting", "label", *PARAM_COLUMNS, *METRIC_COLUMNS)
# membership-inference audit (ringfl.audit), appended to summary.csv when an experiment has `audit:`
AUDIT_FILE = "audit.json"
AUDIT_COLUMNS = ("audit_lira_auc", "audit_lira_tpr_0_1pct", "audit_lira_tpr_1pct", "audit_loss_auc",
                 "audit_loss_tpr_1pct")

LABEL_FIELDS = ("theta_u", "theta_d", "gamma", "epsilon", "partition")
_SYMBOLS = {"theta_u": "θu", "theta_d": "θd", "gamma": "γ", "epsilon": "ε"}
_HEAD_PARAMS = frozenset({"mode", "algorithm", "topology", "peers", "alpha"})  # alpha: in partition
_SORT_PARAMS = (
    "topology", "peers", "algorithm", "partition", "alpha", "theta_u", "theta_d", "gamma",
    "epsilon", "model", "seed",
)  # fmt: skip


# --- records -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One grid point, identified by its parameters alone.

    ``params`` is normalised through canonical JSON, so a setting read back from disk equals the
    one the runner built (tuples become lists) and its key cannot drift with dict order.
    """

    params: dict[str, Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", json.loads(_canonical(self.params)))

    def __hash__(self) -> int:
        return hash(self.key)

    @property
    def key(self) -> str:
        """A readable slug for humans browsing ``settings/`` plus a hash that makes it unique."""
        digest = hashlib.sha256(_canonical(self.params).encode()).hexdigest()[:8]
        return f"{_slug(self.params)}-{digest}"

    @property
    def label(self) -> str:
        """Compact name for tables, e.g. ``ring16 gossip-dssgd θu=0.1 θd=1 γ=0.01 iid``; grid axes
        beyond the standard columns (``robust=median``...) are appended so labels stay distinct."""
        extra = sorted(set(self.params) - set(PARAM_COLUMNS) - _HEAD_PARAMS)
        return _label(self.params, (*LABEL_FIELDS, *extra))

    @property
    def mode(self) -> str:
        return str(self.params.get("mode") or "")

    @property
    def is_reference(self) -> bool:
        """Centralized and standalone runs are the bounds the distributed runs are judged by."""
        return self.mode in REFERENCE_MODES


@dataclass(frozen=True)
class RoundRecord:
    setting: str  # Setting.key
    round: int  # 0 = the initial model
    accuracy: float  # mean over peers, or the global model in coordinator mode
    min_accuracy: float
    max_accuracy: float
    loss: float
    bytes_total: int  # cumulative bytes on the wire so far, all peers
    epsilon: float | None  # max composed ε over peers so far; None without differential privacy
    seconds: float  # wall time since the setting started


@dataclass(frozen=True)
class PeerRecord:
    setting: str
    peer: int
    round: int
    accuracy: float
    loss: float
    bytes_sent: int
    bytes_received: int
    epsilon: float | None


@dataclass(frozen=True)
class SettingResult:
    setting: Setting
    rounds: list[RoundRecord]
    peers: list[PeerRecord]
    wall_time: float
    num_peers: int  # peers that actually trained (centralized: 1)
    audit: dict[str, Any] | None = None  # membership-inference report of the final model (ringfl.audit)

    @property
    def final(self) -> RoundRecord | None:
        return max(self.rounds, key=lambda r: r.round, default=None)

    def final_peer_accuracies(self) -> list[float]:
        """Each peer's accuracy at its own last evaluated round (a peer may have dropped early)."""
        last: dict[int, PeerRecord] = {}
        for record in self.peers:
            if record.peer not in last or record.round >= last[record.peer].round:
                last[record.peer] = record
        return [last[peer].accuracy for peer in sorted(last)]

    def summary_row(self) -> dict[str, Any]:
        """The summary.csv row; None is an empty cell (e.g. no topology in centralized mode)."""
        params = self.setting.params
        row: dict[str, Any] = {"setting": self.setting.key, "label": self.setting.label}
        row.update({name: _cell(params.get(name)) for name in PARAM_COLUMNS})
        row.update(dict.fromkeys(METRIC_COLUMNS))
        row["wall_time_s"] = self.wall_time
        final = self.final
        if final is not None:
            row.update(
                final_round=final.round,
                final_accuracy=final.accuracy,
                final_min_accuracy=final.min_accuracy,
                final_max_accuracy=final.max_accuracy,
                final_loss=final.loss,
                bytes_total=final.bytes_total,
                bytes_per_peer_per_round=_per_peer_per_round(
                    final.bytes_total, self.num_peers, final.round
                ),
                epsilon_composed=final.epsilon,
            )
        if self.audit:
            row.update({name: self.audit.get(name.removeprefix("audit_")) for name in AUDIT_COLUMNS})
        return row


def _per_peer_per_round(total: int, peers: int, rounds: int) -> float | None:
    """Divides by rounds actually run, so a setting cut short is not reported as cheaper."""
    return total / (peers * rounds) if peers > 0 and rounds > 0 else None


# --- per-setting files -------------------------------------------------------------------


def setting_dir(out_dir: str | Path, setting: Setting) -> Path:
    return Path(out_dir) / SETTINGS_DIR / setting.key


def write_jsonl(path: str | Path, records: Iterable[Any]) -> None:
    """Whole file through a temp file and a rename: a reader never sees half a record."""
    lines = (json.dumps(_as_dict(record), sort_keys=True) + "\n" for record in records)
    atomic_write_bytes(Path(path), "".join(lines).encode())


def write_result(out_dir: str | Path, result: SettingResult) -> Path:
    """Store one finished setting; the ``complete`` marker goes last, each file atomically.

    ``setting.json`` is first written with ``complete: false`` so a crash midway (also when
    overwriting an older result) leaves a folder that names its setting but is not trusted.
    """
    folder = setting_dir(out_dir, result.setting)
    _write_meta(folder, result, complete=False)
    write_jsonl(folder / ROUNDS_FILE, result.rounds)
    write_jsonl(folder / PEERS_FILE, result.peers)
    if result.audit is not None:
        atomic_write_bytes(folder / AUDIT_FILE, (json.dumps(result.audit, indent=2, sort_keys=True) + "\n").encode())
    _write_meta(folder, result, complete=True)
    return folder


def is_complete(out_dir: str | Path, setting: Setting) -> bool:
    """True when the setting's results are fully on disk, so the runner may skip it."""
    meta = _read_meta(setting_dir(out_dir, setting))
    return meta is not None and meta.get("params") == setting.params


def read_results(out_dir: str | Path) -> list[SettingResult]:
    """Every complete setting under ``out_dir``, in report order; half-written ones are skipped."""
    root = Path(out_dir) / SETTINGS_DIR
    folders = sorted(root.iterdir()) if root.is_dir() else []
    results = []
    for folder in folders:
        meta = _read_meta(folder)
        if meta is None:
            continue
        results.append(
            SettingResult(
                setting=Setting(meta["params"]),
                rounds=[_from_dict(RoundRecord, d) for d in read_jsonl(folder / ROUNDS_FILE)],
                peers=[_from_dict(PeerRecord, d) for d in read_jsonl(folder / PEERS_FILE)],
                wall_time=float(meta["wall_time"]),
                num_peers=int(meta["num_peers"]),
                audit=json.loads((folder / AUDIT_FILE).read_text()) if (folder / AUDIT_FILE).is_file() else None,
            )
        )
    return ordered(results)


def _write_meta(folder: Path, result: SettingResult, complete: bool) -> None:
    meta = {
        "key": result.setting.key,
        "label": result.setting.label,
        "params": result.setting.params,
        "wall_time": result.wall_time,
        "num_peers": result.num_peers,
        "complete": complete,
    }
    atomic_write_bytes(
        folder / SETTING_FILE, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode()
    )


def _read_meta(folder: Path) -> dict[str, Any] | None:
    """The metadata of a complete setting, or None (missing, unfinished or unreadable)."""
    try:
        meta = json.loads((folder / SETTING_FILE).read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) and meta.get("complete") is True else None


def _as_dict(record: Any) -> dict[str, Any]:
    return dataclasses.asdict(record) if dataclasses.is_dataclass(record) else dict(record)


def _from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})  # type: ignore[arg-type]


# --- naming and ordering -----------------------------------------------------------------


def ordered(results: Iterable[SettingResult]) -> list[SettingResult]:
    """Reference lines first, then coordinator and ring runs grouped by topology, size, algorithm."""
    return sorted(results, key=_sort_key)


def legend_labels(results: Sequence[SettingResult]) -> list[str]:
    """Labels showing only the parameters that differ between ``results``: a legend repeating
    ``θd=1 γ=0.01 iid`` on every line hides the one thing that changes."""
    names = _varying(results)
    return [_label(r.setting.params, names) for r in results]


def _sort_key(result: SettingResult) -> tuple:
    params = result.setting.params
    mode = result.setting.mode
    rank = MODE_ORDER.index(mode) if mode in MODE_ORDER else len(MODE_ORDER)
    return (rank, mode, *(_sortable(params.get(n)) for n in _SORT_PARAMS), result.setting.key)


def _sortable(value: Any) -> tuple[int, float, str]:
    """Numbers before text before missing, so mixed-type columns still sort."""
    if value is None:
        return (2, 0.0, "")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, _fmt(value))


def _canonical(params: Mapping[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _slug(params: Mapping[str, Any]) -> str:
    peers = params.get("peers")
    parts = [
        params.get("mode"),
        params.get("algorithm"),
        _topology_name(params.get("topology")),
        None if peers is None else f"n{peers}",
    ]
    text = "-".join(str(p) for p in parts if p not in (None, ""))
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:40].strip("-") or "setting"


def _topology_name(value: Any) -> str | None:
    """A topology given as a file path is named by its stem (``topologies/ring8.yaml`` → ``ring8``)."""
    return Path(str(value)).stem if value not in (None, "") else None


def _head(params: Mapping[str, Any]) -> str:
    mode = str(params.get("mode") or "?")
    if mode in REFERENCE_MODES:  # standalone depends on the peer count (shard size): name it
        peers = params.get("peers") if mode == "standalone" else None
        return mode if peers is None else f"{mode}{peers}"
    where = _topology_name(params.get("topology")) or ("coord" if mode == "coordinator" else mode)
    peers = params.get("peers")
    if peers is not None:
        where += f"-{peers}" if where[-1].isdigit() else str(peers)
    algorithm = params.get("algorithm")
    return f"{where} {algorithm}" if algorithm else where


def _applies(mode: str, name: str) -> bool:
    """Reference runs have no exchange, so θ/γ/ε mean nothing there (centralized: nor partition)."""
    if mode == "centralized":
        return name not in _SYMBOLS and name != "partition"
    return mode != "standalone" or name not in _SYMBOLS


def _token(params: Mapping[str, Any], name: str) -> str | None:
    value = params.get(name)
    if value is None or not _applies(str(params.get("mode") or ""), name):
        return None
    if name == "partition":
        alpha = params.get("alpha")
        return (
            f"dir(α={_fmt(alpha)})" if value == "dirichlet" and alpha is not None else _fmt(value)
        )
    return f"{_SYMBOLS.get(name, name)}={_fmt(value)}"


def _label(params: Mapping[str, Any], names: Iterable[str]) -> str:
    return " ".join([_head(params), *(t for n in names if (t := _token(params, n)))])


def _varying(results: Sequence[SettingResult]) -> list[str]:
    """Parameter names whose label token differs between the settings."""
    names = {k for r in results for k in r.setting.params} - _HEAD_PARAMS - set(LABEL_FIELDS)
    return [n for n in (*LABEL_FIELDS, *sorted(names)) if len(_tokens(results, n)) > 1]


def _shared_note(results: Sequence[SettingResult]) -> str:
    """The label parameters every setting shares: said once in a title, not on every line."""
    shared = (_tokens(results, name) for name in (*LABEL_FIELDS, "model"))
    return " ".join(t for tokens in shared if len(tokens) == 1 and (t := next(iter(tokens))))


def _tokens(results: Sequence[SettingResult], name: str) -> set[str | None]:
    """The distinct tokens of ``name`` among settings that set it: leaving a parameter out (θd in
    a coordinator run) does not make it vary, but an explicit None (no ε: no DP) does."""
    return {
        _token(r.setting.params, name)
        for r in results
        if name in r.setting.params and _applies(r.setting.mode, name)
    }


# --- formatting --------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return value
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _cell(value: Any) -> Any:
    """A CSV cell: scalars as they are, nested values (e.g. a data spec) as compact JSON."""
    return value if value is None or isinstance(value, (str, int, float)) else _fmt(value)


def _number(value: float | None, spec: str) -> str:
    return "" if value is None else format(value, spec)


_Column = tuple[str, Callable[[Mapping[str, Any]], str], bool]  # header, cell, right-aligned

# Shared by report.md and the terminal table so both show the same thing.
_DISPLAY: tuple[_Column, ...] = (
    ("setting", lambda r: str(r["label"]), False),
    ("rounds", lambda r: _fmt(r["final_round"]), True),
    ("acc", lambda r: _number(r["final_accuracy"], ".4f"), True),
    ("min–max", lambda r: _range(r["final_min_accuracy"], r["final_max_accuracy"]), True),
    ("B/peer/round", lambda r: human_bytes(r["bytes_per_peer_per_round"]), True),
    ("B total", lambda r: human_bytes(r["bytes_total"]), True),
    ("ε", lambda r: _number(r["epsilon_composed"], ".3g"), True),
    ("wall s", lambda r: _number(r["wall_time_s"], ".1f"), True),
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
        title="experiment summary", box=box.SIMPLE_HEAD, caption=_shared_note(results) or None
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
        rows.append([result.setting.label, *(_number(by_round.get(n), ".4f") for n in shown)])
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


# --- plots -------------------------------------------------------------------------------


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
        groups.setdefault(_canonical(params), []).append(result)
    members = [g[0] for g in groups.values()]
    names = _varying(members)
    styles = [{**style, "label": _label({k: v for k, v in m.setting.params.items() if k != "peers"}, names)}
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
        sent = [(p, _per_peer_per_round(f.bytes_total, n, f.round)) for p, f, n in finals]
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
    note = _shared_note(results)
    ax.set_title(f"{title}\n{note}" if note else title, fontsize=10)
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    return path


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
