"""Where a running experiment reports progress: a rich bar in the terminal, or JSON lines from a
``--jobs`` worker process that its parent turns back into the bar."""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any, Protocol

from rich.console import Console
from rich.progress import TextColumn

from ringfl.progress import bar

if TYPE_CHECKING:
    from ringfl.experiments.plan import Run
    from ringfl.experiments.results import SettingResult


class Tracker(Protocol):
    """Where a running experiment reports progress (a rich bar, or JSON lines from a worker)."""

    def begin(self, run: Run) -> None: ...
    def advance(self, amount: float, accuracy: float | None) -> None: ...
    def finish(self, run: Run, result: SettingResult) -> None: ...


class ProgressBar:
    """One bar over settings × rounds; the current setting and its accuracy beside it."""

    def __init__(self, total: float, done: float, console: Console) -> None:
        self.console = console
        self.progress, self.task = bar(console, "experiment", max(total, 1), completed=done,
                                       count=TextColumn("{task.completed:.0f}/{task.total:.0f} rounds"))
        self.progress.start()

    def begin(self, run: Run) -> None:
        self.progress.update(self.task, description=_short(run.setting.label), status="")

    def advance(self, amount: float, accuracy: float | None) -> None:
        status = "" if accuracy is None or math.isnan(accuracy) else f"acc {accuracy:.4f}"
        self.progress.update(self.task, advance=amount, status=status)

    def finish(self, run: Run, result: SettingResult) -> None:
        final = result.final
        accuracy = f"{final.accuracy:.4f}" if final is not None else "-"
        self.console.print(f"done  {run.setting.label}: accuracy {accuracy} ({result.wall_time:.1f} s)",
                           soft_wrap=True)

    def stop(self) -> None:
        self.progress.stop()


class JsonLines:
    """A worker's progress, one JSON object per line on stdout, read by its parent (run.py)."""

    def __init__(self) -> None:
        self.key = ""

    def _emit(self, **event: Any) -> None:
        print(json.dumps(event), flush=True)

    def begin(self, run: Run) -> None:
        self.key = run.setting.key
        self._emit(event="begin", setting=self.key)

    def advance(self, amount: float, accuracy: float | None) -> None:
        self._emit(event="advance", setting=self.key, amount=amount,
                   accuracy=None if accuracy is None or math.isnan(accuracy) else accuracy)

    def finish(self, run: Run, result: SettingResult) -> None:
        self._emit(event="finish", setting=run.setting.key)


def _short(label: str, width: int = 38) -> str:
    return label if len(label) <= width else label[: width - 1] + "…"

