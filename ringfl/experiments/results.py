"""Results of topology experiments: the records of a setting and their files.

Every setting of a grid is stored in its own folder whose ``setting.json`` says ``"complete": true``
only after its records are on disk, so an interrupted experiment keeps each finished setting and a
re-run skips it (:func:`is_complete`). Everything else (CSV, Markdown, PNGs, the terminal table) is
derived from those folders by :func:`ringfl.experiments.report.write_all` and can be regenerated
at any time.

Layout under an experiment's output folder::

    settings/<key>/setting.json   params, key, label, wall_time, num_peers, complete (written last)
    settings/<key>/rounds.jsonl   one SettingRound per line
    settings/<key>/peers.jsonl    one PeerRecord per line
    summary.csv  report.md  plots/accuracy_vs_round.png  plots/accuracy_vs_bytes.png
    plots/peer_spread.png  plots/accuracy_vs_peers.png
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ringfl.checkpoint import atomic_write_bytes
from ringfl.experiments.labels import (
    PARAM_COLUMNS,
    REFERENCE_MODES,
    canonical,
    csv_cell,
    ordered,
    setting_label,
    slug,
)
from ringfl.metrics import read_jsonl

T = TypeVar("T")

SETTINGS_DIR = "settings"
SETTING_FILE = "setting.json"
ROUNDS_FILE = "rounds.jsonl"
PEERS_FILE = "peers.jsonl"
METRIC_COLUMNS = (
    "final_round", "final_accuracy", "final_min_accuracy", "final_max_accuracy", "final_loss",
    "wall_time_s", "bytes_total", "bytes_per_peer_per_round", "epsilon_composed",
)  # fmt: skip
SUMMARY_COLUMNS = ("setting", "label", *PARAM_COLUMNS, *METRIC_COLUMNS)
# membership-inference audit (ringfl.audit), appended to summary.csv when an experiment has `audit:`
AUDIT_FILE = "audit.json"
AUDIT_COLUMNS = ("audit_lira_auc", "audit_lira_tpr_0_1pct", "audit_lira_tpr_1pct", "audit_loss_auc",
                 "audit_loss_tpr_1pct")


# --- records -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """One grid point, identified by its parameters alone.

    ``params`` is normalised through canonical JSON, so a setting read back from disk equals the
    one the runner built (tuples become lists) and its key cannot drift with dict order.
    """

    params: dict[str, Any]

    def __post_init__(self) -> None:
        object.__setattr__(self, "params", json.loads(canonical(self.params)))

    def __hash__(self) -> int:
        return hash(self.key)

    @property
    def key(self) -> str:
        """A readable slug for humans browsing ``settings/`` plus a hash that makes it unique."""
        digest = hashlib.sha256(canonical(self.params).encode()).hexdigest()[:8]
        return f"{slug(self.params)}-{digest}"

    @property
    def label(self) -> str:
        """Compact name for tables, e.g. ``ring16 gossip-dssgd θu=0.1 θd=1 γ=0.01 iid``; grid axes
        beyond the standard columns (``robust=median``...) are appended so labels stay distinct."""
        return setting_label(self.params)

    @property
    def mode(self) -> str:
        return str(self.params.get("mode") or "")

    @property
    def is_reference(self) -> bool:
        """Centralized and standalone runs are the bounds the distributed runs are judged by."""
        return self.mode in REFERENCE_MODES


@dataclass(frozen=True)
class SettingRound:
    """One evaluated round of an experiment setting: a row of rounds.csv (the runtime's per-run
    record is :class:`ringfl.runtime.records.RoundRecord`)."""

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
    rounds: list[SettingRound]
    peers: list[PeerRecord]
    wall_time: float
    num_peers: int  # peers that actually trained (centralized: 1)
    audit: dict[str, Any] | None = None  # membership-inference report of the final model (ringfl.audit)

    @property
    def final(self) -> SettingRound | None:
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
        row.update({name: csv_cell(params.get(name)) for name in PARAM_COLUMNS})
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
                bytes_per_peer_per_round=per_peer_per_round(
                    final.bytes_total, self.num_peers, final.round
                ),
                epsilon_composed=final.epsilon,
            )
        if self.audit:
            row.update({name: self.audit.get(name.removeprefix("audit_")) for name in AUDIT_COLUMNS})
        return row


def per_peer_per_round(total: int, peers: int, rounds: int) -> float | None:
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
                rounds=[_from_dict(SettingRound, d) for d in read_jsonl(folder / ROUNDS_FILE)],
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

