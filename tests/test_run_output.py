"""What a person reads at the end of a run: no "epsilon 0.000" without DP, a report like an
experiment's for ``ringfl coordinator --out``."""

from __future__ import annotations

import io

from rich.console import Console

from ringfl.config import RunConfig
from ringfl.experiments.run_report import write_run_report
from ringfl.progress import PeerPrinter


def _line(metrics: dict) -> str:
    buffer = io.StringIO()
    printer = PeerPrinter("p0", quiet=False, console=Console(file=buffer, width=200, highlight=False))
    printer.show(metrics)
    printer.finish()
    return buffer.getvalue()


def test_a_run_without_dp_says_no_dp_instead_of_epsilon_zero():
    text = _line({"round": 1, "accuracy": 0.9, "epsilon": 0.0, "rounds": 2})
    assert "no DP" in text and "epsilon" not in text
    assert "epsilon 1.5" in _line({"round": 1, "accuracy": 0.9, "epsilon": 1.5, "rounds": 2})


def test_a_coordinator_run_report_has_the_experiment_files(tmp_path):
    history = [{"round": r, "accuracy": 0.1 + 0.3 * r, "loss": 2.0 - r, "bytes_in": 1000 * r, "bytes_out": 900 * r,
                "seconds": 1.0 * r} for r in range(3)]
    summary = {"mode": "coordinator", "peers": ["a", "b"], "wall_time_s": 2.5, "rounds": 2}
    paths = write_run_report(tmp_path, RunConfig(rounds=2), history, summary)
    report = (tmp_path / "report.md").read_text()
    assert "| coord2 fedavg" in report and "0.7000" in report
    assert {"report.md", "summary.csv", "accuracy_vs_round"} <= set(paths)
    assert all(path.is_file() and path.stat().st_size > 0 for path in paths.values())
