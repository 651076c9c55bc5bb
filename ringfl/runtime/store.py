"""A coordinator run's durable state in its output folder: ``checkpoint.npz`` and ``updates.wal``.

A checkpoint (atomic: :mod:`ringfl.checkpoint`) holds the algorithm's arrays and the run's
bookkeeping, including how many uploads it contains; every upload accepted since is in the
write-ahead log (:mod:`ringfl.runtime.wal`), which restarts empty with each checkpoint. ``--resume``
loads the checkpoint and replays the log entries after that count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ringfl.checkpoint import load_checkpoint, save_checkpoint
from ringfl.errors import ConfigError
from ringfl.protocol import Upload
from ringfl.runtime.wal import UpdateLog

Saved = tuple[dict[str, np.ndarray], dict[str, Any]]
"""A checkpoint: the algorithm's arrays and the JSON metadata."""


class RunStore:
    """Checkpoint and update log of one run; ``saved`` is the checkpoint a resume starts from."""

    def __init__(self, out_dir: Path, num_params: int, *, resume: bool = False) -> None:
        self.checkpoint_path = out_dir / "checkpoint.npz"
        self.saved: Saved | None = load_checkpoint(self.checkpoint_path) if resume else None  # before any write
        self.wal = UpdateLog(out_dir / "updates.wal", num_params)
        if self.saved is None:
            self.wal.reset()

    def check(self, meta: dict[str, Any], spec_hash: str, algorithm: str) -> None:
        """A checkpoint of another model or algorithm cannot be resumed."""
        if meta["spec_hash"] != spec_hash or meta["algorithm"] != algorithm:
            raise ConfigError(f"cannot resume: {self.checkpoint_path} is for another model or algorithm")

    def append(self, uploads: list[Upload]) -> None:
        """Log accepted uploads (blocking: fsync; call it off the event loop)."""
        self.wal.append(uploads)

    def save(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        """A new checkpoint; it contains every logged upload, so the log starts again."""
        save_checkpoint(self.checkpoint_path, arrays, meta)
        self.wal.reset()

    def unsaved(self, applied: int) -> list[Upload]:
        """Uploads acknowledged after the checkpoint that holds ``applied`` of them (a crash lost
        them from memory)."""
        return [entry for entry in self.wal.read() if entry.seq > applied]
