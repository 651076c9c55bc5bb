"""Running an experiment: every setting not yet finished, one by one, in ``--jobs`` worker processes
or as tasks on a Ray cluster; each finished setting is stored at once (so an interrupted
experiment keeps it and a re-run skips it), then the report is written from all finished ones."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

import trio
from rich.console import Console

from ringfl.checkpoint import atomic_write_bytes
from ringfl.data import load_source
from ringfl.errors import ConfigError, RingflError
from ringfl.experiments.distributed import run_coordinator, run_ring
from ringfl.experiments.plan import Experiment, Run
from ringfl.experiments.references import run_centralized, run_standalone
from ringfl.experiments.report import print_summary, write_all
from ringfl.experiments.results import (
    SettingResult,
    is_complete,
    read_results,
    setting_dir,
    write_result,
)
from ringfl.experiments.tracking import JsonLines, ProgressBar, Tracker
from ringfl.launch import child_env
from ringfl.topology import plot

TRANSPORTS = ("memory", "tcp")
BACKENDS = ("local", "ray")
CONFIG_FILE = "config.json"  # the resolved configuration, beside results' setting.json
COPY_FILE = "experiment.yaml"  # the experiment as run, in the output folder


def run_experiment(experiment: Experiment, out_dir: str | Path, *, transport: str = "memory",
                   jobs: int = 1, console: Console | None = None,
                   worker: tuple[int, int] | None = None, backend: str = "local",
                   address: str | None = None) -> list[SettingResult]:
    """Run every setting not yet finished in ``out_dir``, then write summary.csv, report.md and
    plots from all finished ones. ``worker=(i, j)``: only run settings ``i, i+j, ...`` and report
    progress as JSON lines (the parent of ``jobs`` workers writes the report). ``backend="ray"``
    runs the settings as tasks on the Ray cluster at ``address`` (docs/experiments.md)."""
    if transport not in TRANSPORTS:
        raise ConfigError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    runner = make_backend(backend, jobs, address, experiment)
    out = Path(out_dir)
    if worker is not None:
        index, count = worker
        mine = [r for k, r in enumerate(experiment.runs) if k % count == index and not finished(out, r)]
        _run_all(mine, out, transport, experiment.eval_samples, JsonLines(), experiment.audit)
        return []
    console = console or Console(highlight=False)
    _check_data(experiment.runs)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / COPY_FILE, experiment.source.encode())
    pending = [r for r in experiment.runs if not finished(out, r)]
    _announce(experiment, out, transport, pending, console)
    waiting = {r.setting.key for r in pending}
    bar = ProgressBar(sum(r.config.rounds for r in experiment.runs),
                      sum(r.config.rounds for r in experiment.runs if r.setting.key not in waiting), console)
    try:
        runner.run(experiment, out, transport, pending, bar)
    finally:
        bar.stop()
        results = finished_results(out, experiment.runs)
        write_all(out, results, experiment.name, _notes(experiment, transport),
                  topology_images=_topology_images(experiment.runs, out))
    print_summary(results, console)
    console.print(f"results in {out}/ (summary.csv, report.md, plots/)")
    return results


def finished(out: Path, run: Run) -> bool:
    """Complete on disk *and* run with the same resolved configuration as now."""
    if not is_complete(out, run.setting):
        return False
    try:
        stored = json.loads((setting_dir(out, run.setting) / CONFIG_FILE).read_text())
    except (OSError, ValueError):
        return False
    return bool(stored == run.resolved())


def finished_results(out: Path, runs: Sequence[Run]) -> list[SettingResult]:
    """This experiment's finished settings (other folders under ``out`` are left alone)."""
    current = {r.setting.key for r in runs if finished(out, r)}
    return [result for result in read_results(out) if result.setting.key in current]


class Backend(Protocol):
    """Runs the pending settings of an experiment and stores each one as it finishes
    (:func:`store_result`), so an interrupted experiment keeps what is done."""

    def run(self, experiment: Experiment, out: Path, transport: str, pending: Sequence[Run],
            bar: ProgressBar) -> None: ...


@dataclass(frozen=True)
class LocalBackend:
    """This machine: settings one after another, or ``jobs`` worker processes."""

    jobs: int = 1

    def run(self, experiment: Experiment, out: Path, transport: str, pending: Sequence[Run],
            bar: ProgressBar) -> None:
        if self.jobs > 1 and len(pending) > 1:
            _run_workers(experiment, out, transport, min(self.jobs, len(pending)), bar)
        else:
            _run_all(pending, out, transport, experiment.eval_samples, bar, experiment.audit)


def make_backend(name: str, jobs: int, address: str | None, experiment: Experiment) -> Backend:
    """The backend called ``name``; Ray is imported only here, and only when asked for."""
    if name not in BACKENDS:
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {name!r}")
    if name == "local":
        if address is not None:
            raise ConfigError("--address is the Ray cluster's address: use it with --backend ray")
        return LocalBackend(jobs)
    if jobs > 1:
        raise ConfigError("--jobs is for the local backend; on Ray set ray: {num_cpus: N} in the "
                          "experiment file (settings run as the cluster's CPUs allow)")
    try:
        from ringfl.experiments.ray_backend import RayBackend
    except ImportError as exc:
        raise ConfigError(f"--backend ray needs Ray ({exc}): pip install -e '.[ray]'") from None
    return RayBackend.from_experiment(experiment, address)


def _run_all(runs: Sequence[Run], out: Path, transport: str, eval_samples: int | None,
             tracker: Tracker, audit: dict[str, int] | None = None) -> None:
    for run in runs:
        tracker.begin(run)
        result = run_setting(run, out, transport=transport, eval_samples=eval_samples, tracker=tracker,
                             audit=audit)
        store_result(out, run, result)
        tracker.finish(run, result)


def store_result(out: Path, run: Run, result: SettingResult) -> None:
    """Write a finished setting's records, then its config.json: a crash before that leaves the
    setting to be run again, never trusted."""
    write_result(out, result)
    atomic_write_bytes(setting_dir(out, run.setting) / CONFIG_FILE,
                       (json.dumps(run.resolved(), indent=2, sort_keys=True) + "\n").encode())


def run_setting(run: Run, out: Path, *, transport: str = "memory", eval_samples: int | None = None,
                tracker: Tracker | None = None, audit: dict[str, int] | None = None) -> SettingResult:
    """Run one setting and return its records (not yet written); ``audit`` options audit the final
    model of a coordinator-mode run (:mod:`ringfl.audit`)."""
    tracker = tracker or _Silent()
    started = time.perf_counter()
    if run.mode == "centralized":
        return run_centralized(run, tracker, started)
    if run.mode == "standalone":
        return run_standalone(run, tracker, started)
    if run.mode == "coordinator":
        return trio.run(run_coordinator, run, transport, tracker, started, audit)
    return trio.run(run_ring, run, out, transport, eval_samples, tracker, started)


class _Silent:
    def begin(self, run: Run) -> None: ...
    def advance(self, amount: float, accuracy: float | None) -> None: ...
    def finish(self, run: Run, result: SettingResult) -> None: ...


def _check_data(runs: Sequence[Run]) -> None:
    """Load every data source once before the first setting (loads are cached per process), so a
    missing dataset is a one-line error now rather than after an hour of other settings."""
    for source in sorted({r.config.data for r in runs}):
        load_source(source)


# --- worker processes (--jobs) ------------------------------------------------------------------


def _run_workers(experiment: Experiment, out: Path, transport: str, jobs: int, bar: ProgressBar) -> None:
    """``jobs`` processes each run every ``jobs``-th setting of the copied experiment file (one
    MXNet thread per process, so settings train in parallel); their JSON lines drive ``bar``."""
    runs = {r.setting.key: r for r in experiment.runs}

    def on_line(line: str) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            bar.console.print(line, soft_wrap=True, markup=False)
            return
        run = runs.get(event.get("setting", ""))
        if run is None:
            return
        if event["event"] == "begin":
            bar.begin(run)
        elif event["event"] == "advance":
            bar.advance(float(event["amount"]), event.get("accuracy"))
        elif event["event"] == "finish":
            result = next((r for r in read_results(out) if r.setting.key == run.setting.key), None)
            if result is not None:
                bar.finish(run, result)

    async def one(index: int) -> None:
        command = [sys.executable, "-m", "ringfl", "experiment", str(out / COPY_FILE), "--out", str(out),
                   "--transport", transport, "--worker", f"{index}/{jobs}"]
        env = child_env(jobs)
        async with trio.open_nursery() as nursery:
            process = await nursery.start(partial(trio.run_process, command, stdout=subprocess.PIPE,
                                                  env=env, check=False))
            buffer = b""
            async for chunk in process.stdout:
                *lines, buffer = (buffer + chunk).split(b"\n")
                for line in lines:
                    on_line(line.decode(errors="replace"))
        if process.returncode != 0:
            failed.append(index)

    failed: list[int] = []

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            for index in range(jobs):
                nursery.start_soon(one, index)

    trio.run(main)
    if failed:
        raise RingflError(f"{len(failed)} of {jobs} experiment worker(s) failed (see their errors above); "
                          "finished settings are kept, re-run to retry the others")


# --- report -----------------------------------------------------------------------------------


def _announce(experiment: Experiment, out: Path, transport: str, pending: Sequence[Run],
              console: Console) -> None:
    skipped = len(experiment.runs) - len(pending)
    console.print(f"[bold]{experiment.name}[/bold]: {len(experiment.runs)} settings "
                  f"({skipped} already finished in {out}), transport {transport}")


def _notes(experiment: Experiment, transport: str) -> str:
    """What a reader needs to interpret the table, said once at the top of report.md."""
    standalone = [r for r in experiment.runs if r.mode == "standalone"]
    sampled = [f"{len(r.sampled_peers)} of {r.config.peers} peers (indices {_indices(r.sampled_peers)})"
               for r in standalone if len(r.sampled_peers) < r.config.peers]
    lines = [
        experiment.description.strip(),
        f"All peers ran as real ringfl peers over the `{transport}` transport "
        f"({'one process, in-memory streams' if transport == 'memory' else 'one process per peer, loopback TCP'}).",
        "**centralized**: the same model and hyperparameters on all training data, one epoch per round. "
        "**standalone**: each peer alone on its own partition; mean, min and max over the peers trained"
        + (f" (sampled: {'; '.join(sampled)})." if sampled else "."),
        "Coordinator mode reports the global model's accuracy (every peer downloads it); ring mode "
        "the mean, min and max over the peers' own models. Bytes: everything on the wire, all peers "
        "(coordinator mode: in + out at the coordinator; ring mode: what the peers sent to neighbours).",
    ]
    if experiment.eval_samples:
        lines.append(f"Ring peers evaluate on the first {experiment.eval_samples} test samples.")
    return "\n\n".join(line for line in lines if line)


def _indices(values: Sequence[int]) -> str:
    return ", ".join(str(v) for v in values)


def _topology_images(runs: Sequence[Run], out: Path) -> dict[str, Path]:
    """A drawing of every topology the experiment uses (regenerated with the report)."""
    images: dict[str, Path] = {}
    for run in runs:
        top = run.topology
        name = f"{top.name}-n{top.n}" if top is not None else ""
        if top is None or name in images:
            continue
        path = out / "plots" / f"topology-{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        plot(top, path)
        images[name] = path
    return images

