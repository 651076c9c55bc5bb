"""One coordinator or bootstrap run as the experiments report it: summary.csv, report.md and the
plots, from the run's per-round records (``ringfl coordinator --out``).

The run becomes one :class:`~ringfl.experiments.results.SettingResult`, so the files are exactly what
``ringfl experiment`` writes for one setting (:func:`ringfl.experiments.report.write_all`).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ringfl.config import RunConfig
from ringfl.experiments.report import write_all
from ringfl.experiments.results import Setting, SettingResult, SettingRound


def run_result(config: RunConfig, history: list[dict[str, Any]], summary: dict[str, Any]) -> SettingResult:
    """The run's rounds as report records (coordinator: the global model; ring: the peers' mean)."""
    ring = summary.get("mode") == "ring"
    settings = config.algorithm_settings
    setting = Setting({
        "mode": "ring" if ring else "coordinator", "algorithm": config.algorithm,
        "topology": config.topology, "peers": summary.get("peers") if ring else len(summary.get("peers", [])),
        "theta_u": settings.get("theta_u"), "theta_d": settings.get("theta_d"), "gamma": settings.get("gamma"),
        "epsilon": settings.get("epsilon"), "partition": config.partition.kind, "model": config.model,
        "rounds": config.rounds, "seed": config.seed, "data": config.data,
    })
    rounds = [_record(setting.key, r, ring) for r in history]
    peers = int(setting.params["peers"] or 0)
    return SettingResult(setting, rounds, [], float(summary.get("wall_time_s") or 0.0), peers)


def _record(key: str, r: dict[str, Any], ring: bool) -> SettingRound:
    accuracy = float(r["accuracy"])
    wire = int(r.get("bytes", 0)) if ring else int(r.get("bytes_in", 0)) + int(r.get("bytes_out", 0))
    return SettingRound(key, int(r["round"]), accuracy, float(r.get("min_accuracy", accuracy)),
                       float(r.get("max_accuracy", accuracy)), float(r.get("loss", math.nan)), wire,
                       r.get("epsilon_spent"), float(r.get("seconds", 0.0)))


def write_run_report(out: Path, config: RunConfig, history: list[dict[str, Any]],
                     summary: dict[str, Any]) -> dict[str, Path]:
    """summary.csv, report.md and plots/ in ``out``; returns the paths by name."""
    title = f"{summary.get('mode', 'coordinator')} run: {config.algorithm} on {config.data}"
    return write_all(out, [run_result(config, history, summary)], title)
