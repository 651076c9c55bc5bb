"""One record per round, kept the same way in both modes: the coordinator and the ring bootstrap.

A :class:`RoundRecorder` keeps the run's :class:`RoundRecord` s, appends each to
``metrics.jsonl`` as it is made (a killed run keeps what it measured), hands it to the
callbacks (terminal, experiment progress, dashboard) and writes ``summary.json``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ringfl.metrics import MetricsLog

RoundCallback = Callable[[dict[str, Any]], None]
"""Called with each round's row (the dict written to metrics.jsonl)."""


@dataclass(frozen=True)
class RoundRecord:
    """What one round measured. ``fields`` holds what only one mode or setting measures (bytes by
    direction and the pool in coordinator mode; the spread over peers and dead nodes in ring mode;
    ε when privacy is accounted)."""

    round: int
    accuracy: float  # NaN when the round was not evaluated
    loss: float
    seconds: float  # since the run started
    fields: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """The row of metrics.jsonl."""
        return {"round": self.round, "accuracy": self.accuracy, "loss": self.loss, "seconds": self.seconds,
                **self.fields}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> RoundRecord:
        """A row of metrics.jsonl read back (a resumed run keeps its earlier rounds)."""
        rest = {k: v for k, v in row.items() if k not in ("round", "accuracy", "loss", "seconds")}
        return cls(int(row["round"]), float(row["accuracy"]), float(row["loss"]), float(row["seconds"]), rest)


class RoundRecorder:
    """The rounds of one run: in memory, in ``out_dir/metrics.jsonl``, and passed to callbacks."""

    def __init__(self, out_dir: Path | None, *, resume: bool = False,
                 callbacks: list[RoundCallback] | None = None) -> None:
        self.metrics = MetricsLog(out_dir, append=resume) if out_dir else None  # resume: appends
        self.records: list[RoundRecord] = []
        self.callbacks: list[RoundCallback] = [] if callbacks is None else callbacks
        self.started = time.perf_counter()

    def restore(self, last: int) -> None:
        """Continue a run whose rounds 1..``last`` are in metrics.jsonl: they become this
        recorder's first records (not passed to the callbacks again); rows after ``last`` (a
        crash between a record and its checkpoint) leave the file, so no round appears twice."""
        rows = self.metrics.keep_rounds(last) if self.metrics else []
        self.records = [RoundRecord.from_row(row) for row in rows if int(row["round"]) > 0]

    def elapsed(self) -> float:
        """Seconds since the run started, as records and summaries give them."""
        return round(time.perf_counter() - self.started, 3)

    def record(self, record: RoundRecord) -> None:
        self.records.append(record)
        row = record.as_dict()
        if self.metrics:
            self.metrics.write(row)
        for callback in self.callbacks:
            callback(row)

    @property
    def history(self) -> list[dict[str, Any]]:
        """The rows so far, as in metrics.jsonl (this process's rounds only)."""
        return [record.as_dict() for record in self.records]

    def last(self) -> dict[str, Any]:
        """The latest row ({} before the first)."""
        return self.records[-1].as_dict() if self.records else {}

    def accuracy_per_round(self) -> list[float]:
        return [record.accuracy for record in self.records]

    def write_summary(self, summary: dict[str, Any]) -> dict[str, Any]:
        """summary.json (when the run has an output folder); returns ``summary``."""
        if self.metrics:
            self.metrics.write_summary(summary)
        return summary


class Recorded:
    """For a server that keeps a :class:`RoundRecorder`: its rows and metrics file by the names
    callers use (``server.history``)."""

    recorder: RoundRecorder

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.recorder.history

    @property
    def metrics(self) -> MetricsLog | None:
        return self.recorder.metrics
