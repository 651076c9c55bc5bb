"""What a person watching a run sees: a progress bar and one line per round.

Rounds can take minutes, so both the coordinator and each peer show where they are (rich);
``--quiet`` (used when many peer processes share a terminal) keeps only the per-round lines.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from ringfl.units import human_bytes


def _fmt(value: Any, digits: int = 4) -> str:
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def bar(console: Console, label: str, total: float, *, completed: float = 0,
        count: ProgressColumn | None = None) -> tuple[Progress, TaskID]:
    """The one progress bar of ringfl (rounds, experiments, shadow models): label, bar, ``count``
    (done/total by default), a ``status`` field, time elapsed; it disappears when stopped."""
    progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), count or MofNCompleteColumn(),
                        TextColumn("{task.fields[status]}"), TimeElapsedColumn(), console=console,
                        transient=True)
    task = progress.add_task(label, total=total, completed=completed, status="")
    return progress, task


class RoundPrinter:
    """Coordinator / bootstrap view: a bar over rounds and a line per round's record."""

    def __init__(self, rounds: int, title: str, console: Console | None = None) -> None:
        self.console = console or Console(highlight=False)
        self.console.print(f"[bold]{title}[/bold]")
        self.progress, self.task = bar(self.console, "rounds", rounds)
        self.progress.start()

    def show(self, record: dict[str, Any]) -> None:
        line = (f"round {record['round']:>3}  accuracy {_fmt(record.get('accuracy'))}"
                + (f"  min {_fmt(record['min_accuracy'])}  max {_fmt(record['max_accuracy'])}"
                   if "min_accuracy" in record else "")
                + f"  loss {_fmt(record.get('loss'))}")
        if "bytes_in" in record:
            line += f"  in {human_bytes(record['bytes_in'])}  out {human_bytes(record['bytes_out'])}"
        elif "bytes" in record:
            line += f"  bytes {human_bytes(record['bytes'])}"
        if "accepted" in record:
            line += f"  accepted {record['accepted']}  rejected {record['rejected']}"
        if record.get("epsilon_spent") is not None:
            line += f"  ε {record['epsilon_spent']:.3g}"
        self.console.print(line, soft_wrap=True)
        if record["round"] > 0:
            self.progress.update(self.task, advance=1, status=f"acc {_fmt(record.get('accuracy'))}")

    def finish(self, summary: dict[str, Any], out: Path | None) -> None:
        self.progress.stop()
        self.console.print(f"done: {summary.get('rounds')} rounds, final accuracy "
                           f"{_fmt(summary.get('final_accuracy'))} in {summary.get('wall_time_s')} s"
                           + (f"; results in {out}" if out else ""))


class PeerPrinter:
    """A peer's view: a bar over its rounds and a one-line summary per round."""

    def __init__(self, name: str, quiet: bool = False, console: Console | None = None) -> None:
        self.name = name
        self.quiet = quiet
        self.console = console or Console(highlight=False)
        self.progress: Progress | None = None

    def show(self, metrics: dict[str, Any]) -> None:
        if self.progress is None and not self.quiet and "rounds" in metrics:
            self.progress, self.task = bar(self.console, self.name, int(metrics["rounds"]))
            self.progress.start()
        parts = [f"{self.name} round {metrics['round']:>3}"]
        for key in ("accuracy", "train_loss", "accepted", "epsilon", "seconds"):
            if key == "epsilon" and not metrics.get(key):  # ε 0 would read as perfect privacy
                parts.append("no DP")
            elif key in metrics and metrics[key] is not None:
                parts.append(f"{key.replace('_', ' ')} {_fmt(metrics[key], 3)}")
        if "bytes_sent" in metrics:
            parts.append(f"sent {human_bytes(metrics['bytes_sent'])}")
        if not self.quiet:
            self.console.print("  ".join(parts), soft_wrap=True)
        if self.progress is not None:
            self.progress.update(self.task, advance=1)

    def finish(self) -> None:
        if self.progress is not None:
            self.progress.stop()
