"""Run outputs shared by both modes: ``metrics.jsonl`` (one object per round) and ``summary.json``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ringfl.checkpoint import atomic_write_bytes


class MetricsLog:
    """Appends one JSON line per record and flushes, so a killed run keeps what it measured."""

    def __init__(self, out_dir: Path, append: bool = False) -> None:
        self.out_dir = out_dir
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / "metrics.jsonl"
        self.records: list[dict[str, Any]] = read_jsonl(self.path) if append else []
        if not append:
            self.path.write_text("")

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        with open(self.path, "a") as handle:
            handle.write(json.dumps(record, sort_keys=True) + "\n")

    def keep_rounds(self, last: int) -> list[dict[str, Any]]:
        """Drop the rows of rounds after ``last`` (a resume continues from ``last`` and will
        measure them again: no duplicates); the file is rewritten atomically only if it changes."""
        kept = [row for row in self.records if int(row.get("round", 0)) <= last]
        if len(kept) != len(self.records):
            text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in kept)
            atomic_write_bytes(self.path, text.encode())
            self.records = kept
        return kept

    def write_summary(self, summary: dict[str, Any]) -> Path:
        path = self.out_dir / "summary.json"
        atomic_write_bytes(path, (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
        return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
