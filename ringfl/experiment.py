"""Topology experiments: a grid of settings, each run by the real coordinator / bootstrap and peers.

An experiment file (schema in docs/experiments.md) is a ``base`` run configuration plus a ``grid``
whose cartesian product gives the distributed settings; every experiment also gets the two
reference lines for the same data (centralized and standalone), so each table shows where
collaboration stands between "everybody's data in one place" and "every peer alone".

Nothing here simulates the protocol: a setting is a :class:`~ringfl.coordinator.Coordinator` or a
:class:`~ringfl.ring.Bootstrap` with :class:`~ringfl.peer.Peer` / :class:`~ringfl.ring.RingPeer`
objects, all in this process over a :class:`~ringfl.transport.MemoryNetwork` (the default), or
with each peer a ``ringfl peer`` process on loopback (``transport="tcp"``). Finished settings are
stored through :mod:`ringfl.report` one by one, so an interrupted experiment keeps them and a
re-run skips them.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field, fields
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import trio
import yaml
from rich.console import Console
from rich.progress import TextColumn

from ringfl.algorithms import (
    AlgorithmSettings,
    algorithm_mode,
    make_gossip_algorithm,
    make_peer_algorithm,
)
from ringfl.baselines import EpochResult, train_reference
from ringfl.checkpoint import atomic_write_bytes
from ringfl.config import RunConfig, parse_config, read_mapping
from ringfl.coordinator import Coordinator, PeerSession
from ringfl.data import DataSplits, kind_params, load_source, peer_indices, prepare
from ringfl.errors import ConfigError, RingflError, TopologyError
from ringfl.launch import child_env, peer_command, run_peer_processes, serve_until_done
from ringfl.model import ModelSpec, load_spec
from ringfl.model.runtime import shared_model
from ringfl.peer import Peer, PeerData, PeerOptions, load_peer_data
from ringfl.progress import bar
from ringfl.protocol import PeerReport
from ringfl.report import (
    PeerRecord,
    RoundRecord,
    Setting,
    SettingResult,
    is_complete,
    print_summary,
    read_results,
    setting_dir,
    write_all,
    write_result,
)
from ringfl.ring import Bootstrap, RingPeer
from ringfl.topology import Topology, from_mapping, generate, load_topology, plot
from ringfl.transport import MemoryNetwork, Network, TcpNetwork

TRANSPORTS = ("memory", "tcp")
BACKENDS = ("local", "ray")
EXPERIMENT_KEYS = ("name", "description", "base", "grid", "standalone_peers", "eval_samples", "ray",
                   "audit")
AUDIT_KEYS = ("shadows", "members", "index")  # `audit:` audits coordinator-mode runs (ringfl.audit)
DEFAULT_STANDALONE_PEERS = 10
CONFIG_FILE = "config.json"  # the resolved configuration, beside report's setting.json
COPY_FILE = "experiment.yaml"  # the experiment as run, in the output folder

# The label fields of report.py that only some algorithms read: dropped from a setting whose
# algorithm ignores them, so e.g. a θu axis does not repeat identical FedAvg runs.
_USES = {
    "dssgd": ("theta_u", "theta_d", "gamma", "epsilon"),
    "gossip-dssgd": ("theta_u", "gamma", "epsilon"),
    "relay": ("theta_u", "gamma", "epsilon"),
    "choco": ("theta_u",),
}
_SELECTION_KEYS = ("theta_u", "theta_d", "gamma", "epsilon")
_STANDARD_AXES = frozenset({"algorithm", "topology", "peers", "partition", "alpha", "model",
                            "rounds", "seed", "data", *_SELECTION_KEYS})
_GENERATOR_OPTIONS = ("name", "seed", "directed", "weights")


# --- the plan ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Run:
    """One setting to run: its identity (``setting``) and everything needed to run it."""

    setting: Setting
    config: RunConfig
    topology: Topology | None = None  # ring mode only
    topology_source: Any = None  # the file path or generator mapping it was built from
    sampled_peers: tuple[int, ...] = ()  # standalone only: the peers trained alone

    @property
    def mode(self) -> str:
        return self.setting.mode

    def resolved(self) -> dict[str, Any]:
        """What ``config.json`` holds: a re-run skips a setting only if this is unchanged."""
        data: dict[str, Any] = {"params": self.setting.params, "config": self.config.to_dict()}
        if self.topology is not None:
            data["topology"] = self.topology_source
        if self.sampled_peers:
            data["sampled_peers"] = list(self.sampled_peers)
        return json.loads(json.dumps(data))


@dataclass(frozen=True)
class Experiment:
    name: str
    runs: list[Run]
    source: str  # the experiment as YAML text, copied to the output folder
    description: str = ""
    eval_samples: int | None = None  # ring peers evaluate on at most this many test samples
    ray: dict[str, Any] = field(default_factory=dict)  # options of the Ray backend (experiment_ray.py)
    audit: dict[str, int] | None = None  # membership-inference audit of coordinator-mode runs


def load_experiment(path: str | Path, overrides: Mapping[str, Any] | None = None) -> Experiment:
    """Read and plan an experiment file; ``overrides`` (CLI flags) replace ``base`` keys."""
    data = read_mapping(path, "experiment")
    if overrides and isinstance(data, dict):
        data = {**data, "base": {**(data.get("base") or {}), **overrides}}
    experiment = plan(data, where=str(path), default_name=Path(path).stem)
    if overrides:  # the copy in the output folder must say what actually ran
        return dataclasses.replace(experiment, source=f"# {path} with {_flags(overrides)}\n{experiment.source}")
    return dataclasses.replace(experiment, source=Path(path).read_text())


def _flags(overrides: Mapping[str, Any]) -> str:
    return " ".join(f"--{k} {v}" for k, v in overrides.items())


def flags_experiment(options: Mapping[str, Any]) -> dict[str, Any]:
    """An experiment of one setting from CLI flags (no file): ``options`` are ``base`` keys."""
    base = {k: v for k, v in options.items() if v is not None}
    if "topology" in base and "algorithm" not in base:
        base["algorithm"] = "gossip-dssgd"  # a topology means ring mode
    name = "-".join(str(p) for p in (_topology_stem(base.get("topology")) or "coordinator",
                                     base.get("algorithm", RunConfig.algorithm),
                                     f"n{base['peers']}" if "peers" in base else None) if p)
    return {"name": name, "base": base}


def plan(data: Any, where: str = "experiment", default_name: str = "experiment") -> Experiment:
    """Validate an experiment mapping and expand it into runs (reference lines first)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: an experiment must be a mapping with 'base' and 'grid'")
    unknown = sorted(set(data) - set(EXPERIMENT_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (valid: {', '.join(EXPERIMENT_KEYS)})")
    base = data.get("base") or {}
    if not isinstance(base, Mapping):
        raise ConfigError(f"{where}: base: expected a mapping, got {base!r}")
    sample = _positive_int(data.get("standalone_peers", DEFAULT_STANDALONE_PEERS), f"{where}: standalone_peers")
    eval_samples = data.get("eval_samples")
    if eval_samples is not None:
        eval_samples = _positive_int(eval_samples, f"{where}: eval_samples")
    distributed = [
        _distributed_run(_normalise({**base, **point}, where), set(_normalise(point, where)),
                         f"{where}: setting {n + 1}")
        for n, point in enumerate(expand_grid(data.get("grid"), where))
    ]
    references = [ref for run in distributed for ref in _reference_runs(run, sample)]
    runs = _unique([*references, *distributed], where)
    name = data.get("name", default_name)
    ray = data.get("ray") or {}
    if not isinstance(ray, Mapping):
        raise ConfigError(f"{where}: ray: expected a mapping (num_cpus, peer_num_cpus, max_retries), got {ray!r}")
    return Experiment(name=str(name), runs=runs, description=str(data.get("description") or ""),
                      eval_samples=eval_samples, source=yaml.safe_dump(_plain(data), sort_keys=False),
ray=dict(ray),
                      audit=_audit_options(data.get("audit"), where))


def _audit_options(data: Any, where: str) -> dict[str, int] | None:
    """``audit: {shadows: 16, members: 1000, index: 0}`` (or ``audit: true`` for those defaults)."""
    if data is None or data is False:
        return None
    if data is True:
        data = {}
    if not isinstance(data, Mapping) or set(data) - set(AUDIT_KEYS):
        raise ConfigError(f"{where}: audit: expected true or a mapping of {', '.join(AUDIT_KEYS)}")
    options = {"shadows": 16, "members": 1000, "index": 0, **data}
    return {key: _positive_int(value, f"{where}: audit.{key}") if key != "index" else int(value)
            for key, value in options.items()}


def expand_grid(grid: Any, where: str = "experiment") -> list[dict[str, Any]]:
    """The grid's points: a mapping is one cartesian product of its axes (a scalar is a one-value
    axis), a list of mappings is the union of their products, None is one empty point."""
    if grid is None:
        return [{}]
    products = grid if isinstance(grid, list) else [grid]
    points: list[dict[str, Any]] = []
    for n, product in enumerate(products):
        at = f"{where}: grid" + (f"[{n}]" if isinstance(grid, list) else "")
        if not isinstance(product, Mapping):
            raise ConfigError(f"{at}: expected a mapping of parameter: [values], got {product!r}")
        axes = {str(key): _axis(values, f"{at}.{key}") for key, values in product.items()}
        points += [dict(zip(axes, combo)) for combo in itertools.product(*axes.values())]
    return points


def _axis(values: Any, where: str) -> list[Any]:
    if not isinstance(values, list):
        return [values]
    if not values:
        raise ConfigError(f"{where}: empty list of values")
    return values


def _normalise(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Hyphens and underscores are the same in parameter names (``theta-u`` = ``theta_u``)."""
    normal: dict[str, Any] = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name in normal and key != name:
            raise ConfigError(f"{where}: parameter {key!r} is given twice")
        normal[name] = value
    return normal


# --- one setting's configuration ---------------------------------------------------------


def to_config(values: Mapping[str, Any], where: str) -> tuple[RunConfig, Any]:
    """The run config and the topology source (file or generator mapping) of one grid point."""
    raw: dict[str, Any] = {}
    topology = None
    for key, value in values.items():
        if key == "topology":
            topology = value
        else:
            _assign(raw, key, value, where)
    return parse_config(raw, where=f"{where} config"), topology


def _assign(raw: dict[str, Any], key: str, value: Any, where: str) -> None:
    """Put one parameter where RunConfig expects it; parse_config then checks names and types."""
    if key == "alpha":
        key = "partition.alpha"
    elif key == "partition" and isinstance(value, str):
        key = "partition.kind"
    elif key in {f.name for f in fields(AlgorithmSettings)}:
        key = f"algorithm_settings.{key}"
    elif "." not in key and key not in {f.name for f in fields(RunConfig)}:
        raise ConfigError(f"{where}: unknown parameter {key!r} (a RunConfig field, an algorithm "
                          "setting, alpha, topology, or a dotted path such as training.lr)")
    *path, last = key.split(".")
    target = raw
    for part in path:
        target = target.setdefault(part, {})
        if not isinstance(target, dict):
            raise ConfigError(f"{where}: {part} is not a mapping, cannot set {key}")
    if isinstance(value, Mapping) and isinstance(target.get(last), dict):
        target[last] = {**target[last], **value}  # e.g. base training + grid training.lr
    else:
        target[last] = dict(value) if isinstance(value, Mapping) else value


def _distributed_run(values: dict[str, Any], axes: set[str], where: str) -> Run:
    config, topology_source = to_config(values, where)
    where = f"{where} ({config.algorithm})"
    mode, settings = _check_algorithm(config, where)
    config = _without_ignored(config)
    topology = None
    if mode == "ring":
        if topology_source is None:
            raise ConfigError(f"{where}: ring algorithm {config.algorithm!r} needs a topology")
        try:
            topology = build_topology(topology_source, config.peers if "peers" in values else None, where)
        except TopologyError as exc:
            raise ConfigError(f"{where}: topology: {exc}") from None
        config = config.replace(peers=topology.n, topology=topology_source if isinstance(topology_source, str) else None)
    else:
        topology_source = None  # coordinator mode has no topology: crossing one with it is a repeat
    config = config.replace(min_peers=config.peers)
    params: dict[str, Any] = {"mode": mode, "algorithm": config.algorithm}
    if topology is not None:
        params["topology"] = _topology_param(topology_source, topology)
    params.update(_common_params(config, with_partition=True))
    params.update({k: getattr(settings, k) for k in _USES.get(config.algorithm, ())})
    params.update({k: values[k] for k in sorted(axes - _STANDARD_AXES)})
    return Run(Setting(params), config, topology, topology_source)


def _without_ignored(config: RunConfig) -> RunConfig:
    """The config without the θ/γ/ε settings its algorithm ignores, so settings that differ only
    there are recognised as one."""
    used = _USES.get(config.algorithm, ())
    kept = {k: v for k, v in config.algorithm_settings.items()
            if k.replace("-", "_") not in _SELECTION_KEYS or k.replace("-", "_") in used}
    return dataclasses.replace(config, algorithm_settings=kept)


def _check_algorithm(config: RunConfig, where: str) -> tuple[str, AlgorithmSettings]:
    """Mode and settings, after the checks peers would otherwise fail on mid-run (ε on CHOCO...)."""
    try:
        mode = algorithm_mode(config.algorithm)
        settings = AlgorithmSettings.from_mapping(config.algorithm_settings)
        if mode == "ring":
            make_gossip_algorithm(config.algorithm, 0, 1, settings, {})
        else:
            make_peer_algorithm(config.algorithm, settings)
        load_spec(config.model)
    except RingflError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    return mode, settings


def _common_params(config: RunConfig, with_partition: bool) -> dict[str, Any]:
    params: dict[str, Any] = {"model": config.model, "data": config.data,
                              "rounds": config.rounds, "seed": config.seed}
    if with_partition:
        params.update(peers=config.peers, partition=config.partition.kind)
        if config.partition.kind == "dirichlet":
            params["alpha"] = config.partition.alpha
    return params


def build_topology(source: Any, peers: int | None, where: str) -> Topology:
    """A topology from a file path or ``{generator: KIND, ...}``; ``peers`` (when the setting
    gives it) sets the node count of generated topologies, and must match a fixed one."""
    if isinstance(source, Mapping):
        spec = dict(source)
        kind = spec.pop("generator", None)
        if not isinstance(kind, str):
            raise ConfigError(f"{where}: topology: expected a file or {{generator: KIND, ...}}, got {source!r}")
        options = {k: spec.pop(k) for k in _GENERATOR_OPTIONS if k in spec}
        return generate(kind, peers or RunConfig.peers, **options, **spec)
    if not isinstance(source, str):
        raise ConfigError(f"{where}: topology: expected a file or {{generator: KIND, ...}}, got {source!r}")
    topology = load_topology(source)
    if peers is None or peers == topology.n:
        return topology
    data = read_mapping(source, "topology") if Path(source).suffix in (".yaml", ".yml") else None
    if not (isinstance(data, dict) and "generator" in data and isinstance(data.get("nodes"), int)):
        raise ConfigError(f"{where}: topology {source} has {topology.n} fixed nodes, but peers is {peers}")
    return from_mapping({**data, "nodes": peers, "name": data.get("name", Path(source).stem)}, source)


def _topology_param(source: Any, topology: Topology) -> str:
    """Files are named by their path (report shows the stem), generators by their name."""
    return source if isinstance(source, str) else topology.name


def _topology_stem(source: Any) -> str | None:
    if isinstance(source, Mapping):
        return str(source.get("name") or source.get("generator"))
    return Path(str(source)).stem if source else None


def _reference_runs(run: Run, sample: int) -> list[Run]:
    """Centralized and standalone runs for the data, model, training and partition of ``run``;
    the same reference for many settings collapses into one run (same key and config)."""
    config = run.config
    common = {"model": config.model, "data": config.data, "rounds": config.rounds, "seed": config.seed,
              "training": config.training}
    central = RunConfig(**common)
    alone = RunConfig(**common, peers=config.peers, partition=config.partition)
    extra = {k: v for k, v in run.setting.params.items() if k not in _STANDARD_AXES and k != "mode"}
    train_extra = {k: v for k, v in extra.items() if k.startswith("training")}
    part_extra = {k: v for k, v in extra.items() if k.startswith(("training", "partition"))}
    return [
        Run(Setting({"mode": "centralized", **_common_params(central, False), **train_extra}), central),
        Run(Setting({"mode": "standalone", **_common_params(alone, True), **part_extra}), alone,
            sampled_peers=sampled_peers(config.peers, sample)),
    ]


def sampled_peers(peers: int, limit: int) -> tuple[int, ...]:
    """At most ``limit`` evenly spaced peer indices, always the first and the last."""
    if peers <= limit:
        return tuple(range(peers))
    if limit == 1:
        return (0,)
    return tuple(sorted({round(i * (peers - 1) / (limit - 1)) for i in range(limit)}))


def _unique(runs: Iterable[Run], where: str) -> list[Run]:
    """Drop repeats (e.g. a coordinator algorithm crossed with topologies); one key for two
    different configurations would mix their results, so that is an error."""
    seen: dict[str, Run] = {}
    for run in runs:
        old = seen.setdefault(run.setting.key, run)
        if old is not run and old.resolved() != run.resolved():
            differ = ", ".join(_differences(old.resolved(), run.resolved()))
            raise ConfigError(f"{where}: settings {run.setting.label!r} differ only in {differ}, which "
                              "the setting does not show: make it a grid axis of its own (e.g. "
                              "partition.size) or give generated topologies distinct names")
    return list(seen.values())


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted paths where two nested mappings differ."""
    if not (isinstance(a, dict) and isinstance(b, dict)):
        return [prefix or "value"] if a != b else []
    return [d for k in sorted(set(a) | set(b), key=str)
            for d in _differences(a.get(k), b.get(k), f"{prefix}.{k}" if prefix else str(k))]


def _positive_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where}: expected a positive integer, got {value!r}")
    return value


def _plain(data: Any) -> Any:
    return json.loads(json.dumps(data, default=str))


# --- progress ------------------------------------------------------------------------------


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
    """A worker's progress, one JSON object per line on stdout, read by :func:`_run_workers`."""

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


# --- running -------------------------------------------------------------------------------


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
        from ringfl.experiment_ray import RayBackend
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
        return _centralized(run, tracker, started)
    if run.mode == "standalone":
        return _standalone(run, tracker, started)
    if run.mode == "coordinator":
        return trio.run(_coordinator, run, transport, tracker, started, audit)
    return trio.run(_ring, run, out, transport, eval_samples, tracker, started)


class _Silent:
    def begin(self, run: Run) -> None: ...
    def advance(self, amount: float, accuracy: float | None) -> None: ...
    def finish(self, run: Run, result: SettingResult) -> None: ...


def _check_data(runs: Sequence[Run]) -> None:
    """Load every data source once before the first setting (loads are cached per process), so a
    missing dataset is a one-line error now rather than after an hour of other settings."""
    for source in sorted({r.config.data for r in runs}):
        load_source(source)


# --- reference lines ------------------------------------------------------------------------


def _centralized(run: Run, tracker: Tracker, started: float) -> SettingResult:
    """All training data in one place, ``rounds`` epochs: the upper line."""
    spec, splits, config, key = *_spec_and_data(run.config), run.config, run.setting.key
    rounds = [_initial_round(run, started)]
    peers: list[PeerRecord] = []

    def on_epoch(epoch: EpochResult) -> None:
        rounds.append(_round(key, epoch.epoch, [epoch.accuracy], [epoch.test_loss], 0, None, started))
        peers.append(PeerRecord(key, 0, epoch.epoch, epoch.accuracy, epoch.test_loss, 0, 0, None))
        tracker.advance(1, epoch.accuracy)

    train_reference(spec, splits, config.training, config.rounds, seed=config.seed, on_epoch=on_epoch)
    return SettingResult(run.setting, rounds, peers, time.perf_counter() - started, 1)


def _standalone(run: Run, tracker: Tracker, started: float) -> SettingResult:
    """Each sampled peer trains alone on its own partition: the lower line (mean/min/max)."""
    spec, splits = _spec_and_data(run.config)
    config, key = run.config, run.setting.key
    partition = {p: getattr(config.partition, p) for p in kind_params(config.partition.kind)}
    peers: list[PeerRecord] = []
    share = 1 / len(run.sampled_peers)
    for index in run.sampled_peers:
        rows = peer_indices(splits.train.y, config.partition.kind, config.peers, config.seed, index, **partition)

        def on_epoch(epoch: EpochResult, index: int = index) -> None:
            peers.append(PeerRecord(key, index, epoch.epoch, epoch.accuracy, epoch.test_loss, 0, 0, None))
            tracker.advance(share, epoch.accuracy)

        train_reference(spec, splits, config.training, config.rounds, indices=rows, seed=config.seed,
                        on_epoch=on_epoch)
    rounds = [_initial_round(run, started)] + [
        _round(key, r, [p.accuracy for p in peers if p.round == r], [p.loss for p in peers if p.round == r],
               0, None, started)
        for r in range(1, config.rounds + 1)
    ]
    return SettingResult(run.setting, rounds, peers, time.perf_counter() - started, len(run.sampled_peers))


def _spec_and_data(config: RunConfig) -> tuple[ModelSpec, DataSplits]:
    spec = load_spec(config.model)
    return spec, load_source(config.data, num_classes=spec.num_classes)


_initial_cache: dict[tuple[str, str, int], tuple[float, float]] = {}


def _initial_round(run: Run, started: float) -> RoundRecord:
    """Round 0: the seeded initial model every mode starts from, so all curves share a start."""
    config = run.config
    cache_key = (config.model, config.data, config.seed)
    if cache_key not in _initial_cache:
        spec, splits = _spec_and_data(config)
        model = shared_model(spec)
        _initial_cache[cache_key] = model.evaluate_sync(
            model.init_params(config.seed), prepare(splits.test.x, spec.input_shape), splits.test.y)
    loss, accuracy = _initial_cache[cache_key]
    return dataclasses.replace(_round(run.setting.key, 0, [accuracy], [loss], 0, None, started), seconds=0.0)


def _round(key: str, round_: int, accuracies: Sequence[float], losses: Sequence[float],
           bytes_total: int, epsilon: float | None, started: float) -> RoundRecord:
    return RoundRecord(
        setting=key, round=round_, accuracy=_mean(accuracies), min_accuracy=min(accuracies, default=math.nan),
        max_accuracy=max(accuracies, default=math.nan), loss=_mean(losses), bytes_total=int(bytes_total),
        epsilon=epsilon, seconds=time.perf_counter() - started)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else math.nan


# --- coordinator mode -------------------------------------------------------------------------


class ReportingCoordinator(Coordinator):
    """A Coordinator that keeps every peer's per-round report (the base keeps only the last), so
    per-peer records come off the wire the same way in both transports."""

    def __init__(self, config: RunConfig, network: Network) -> None:
        super().__init__(config, network)
        self.reports: dict[int, dict[int, dict[str, Any]]] = {}  # coordinator round -> peer -> metrics

    def on_report(self, session: PeerSession, report: PeerReport) -> None:
        metrics = dict(report.metrics)
        played = int(report.round)  # the wire's round: rounds completed before this one
        self.reports.setdefault(played + 1, {})[session.index] = metrics


async def _coordinator(run: Run, transport: str, tracker: Tracker, started: float,
                       audit: dict[str, int] | None = None) -> SettingResult:
    config = _serving(run.config, transport)
    network = _network(transport)
    server = ReportingCoordinator(config, network)
    server.on_round.append(lambda r: tracker.advance(1 if r["round"] > 0 else 0, r["accuracy"]))
    names = [f"peer{i}" for i in range(config.peers)]
    clients = _clients(config, network, transport, names, Peer, None, [])
    await _within_deadline(run, serve_until_done(server, clients))
    key = run.setting.key
    rounds = [
        _round(key, r["round"], [r["accuracy"]], [r["loss"]], r["bytes_in"] + r["bytes_out"],
               r.get("epsilon_spent"), started)
        for r in server.history
    ]
    global_model = {r.round: r for r in rounds}
    peers = [
        PeerRecord(key, index, round_, global_model[round_].accuracy, global_model[round_].loss,
                   int(m.get("bytes_sent", 0)), int(m.get("bytes_received", 0)), _epsilon(run, m))
        for round_, reports in sorted(server.reports.items()) if round_ in global_model
        for index, m in sorted(reports.items())
    ]
    wall_time = time.perf_counter() - started
    report = None
    if audit:
        from ringfl.audit import AuditConfig, audit_params

        params = server.algorithm.params.copy()  # MXNet work stays on the MXNet thread (audit_params)
        report = await trio.to_thread.run_sync(audit_params, params, AuditConfig.from_run(run.config, **audit))
    return SettingResult(run.setting, rounds, peers, wall_time, len(server.indices), audit=report)


# --- ring / topology mode ---------------------------------------------------------------------


async def _ring(run: Run, out: Path, transport: str, eval_samples: int | None, tracker: Tracker,
                started: float) -> SettingResult:
    assert run.topology is not None
    config = _serving(run.config, transport)
    network = _network(transport)
    server = Bootstrap(config, network, topology=run.topology)
    server.on_round.append(lambda r: tracker.advance(1, r["accuracy"]))
    labels = list(run.topology.labels)
    extra = []
    if transport == "tcp":
        extra = ["--topology", str(_topology_file(run, out))] + (["--eval-samples", str(eval_samples)]
                                                                if eval_samples else [])
    clients = _clients(config, network, transport, labels, RingPeer, eval_samples, extra)
    await _within_deadline(run, serve_until_done(server, clients))
    return _ring_result(run, server, started)


def _ring_result(run: Run, server: Bootstrap, started: float) -> SettingResult:
    key = run.setting.key
    rounds = [_initial_round(run, started)] + [
        RoundRecord(key, r["round"], r["accuracy"], r["min_accuracy"], r["max_accuracy"], r["loss"],
                    int(r["bytes"]), r.get("epsilon_spent") if _dp(run) else None, r["seconds"])
        for r in server.history
    ]
    node = {label: i for i, label in enumerate(server.labels)}
    peers = [
        PeerRecord(key, node[label], round_, float(m["accuracy"]), float(m["loss"]), int(m.get("bytes_sent", 0)),
                   int(m.get("bytes_received", 0)), _epsilon(run, m))
        for round_, reports in sorted(server.reports.items())
        for label, m in sorted(reports.items(), key=lambda item: node[item[0]])
    ]
    reporting = len({p.peer for p in peers})
    return SettingResult(run.setting, rounds, peers, time.perf_counter() - started, reporting)


def _topology_file(run: Run, out: Path) -> Path:
    """The file ``ringfl peer --topology`` gets: the experiment's own file when used as is, else
    the generated topology written beside the results (nodes "0".."N-1", so ``--id i`` works)."""
    top, source = run.topology, run.topology_source
    assert top is not None
    if isinstance(source, str) and load_topology(source).n == top.n:
        return Path(source)
    path = out / "topologies" / f"{top.name}-n{top.n}.yaml"
    data = {"name": top.name, "nodes": top.n, "generator": top.generator, "directed": top.directed,
            "weights": top.scheme}
    atomic_write_bytes(path, yaml.safe_dump(data, sort_keys=False).encode())
    return path


# --- shared by both modes -------------------------------------------------------------------


def _clients(config: RunConfig, network: Network, transport: str, names: Sequence[str],
             peer_class: type[Peer] | type[RingPeer], eval_samples: int | None, extra: Sequence[str]) -> Clients:
    """The setting's peers: ``ringfl peer`` processes (tcp), or peer objects in this process that
    share the prepared data. Ring peers are named by their topology label (``--id``)."""
    ring = peer_class is RingPeer
    if transport == "tcp":
        return _processes(lambda address: [
            _peer_args(address, name, config.peers, i, *(["--id", name] if ring else []), *extra,
                       *_attack_args(config, i))
            for i, name in enumerate(names)])
    data = _peer_data(config, eval_samples)
    return _in_process([peer_class(network, PeerOptions(coordinator="", name=name, peers=config.peers, index=i,
                                                        attack=_attack(config, i)), data=data[i])
                        for i, name in enumerate(names)])


def _attack(config: RunConfig, index: int) -> str | None:
    """Byzantine experiments: the first ceil(fraction · peers) peers corrupt their uploads."""
    return config.byzantine.attack if index < config.byzantine.attackers(config.peers) else None


def _attack_args(config: RunConfig, index: int) -> list[str]:
    attack = _attack(config, index)
    return ["--attack", attack] if attack else []


@dataclass(frozen=True)
class Placement:
    """Where a tcp setting's server listens and how its ``ringfl peer`` processes start: on
    loopback, as children of this process, unless a backend (Ray) places them on other nodes."""

    host: str = "127.0.0.1"
    start_peers: Callable[[list[list[str]]], Awaitable[Any]] = partial(run_peer_processes, capture=True)


PLACEMENT: ContextVar[Placement | None] = ContextVar("PLACEMENT", default=None)  # None: Placement()


def _placement() -> Placement:
    return PLACEMENT.get() or Placement()


def _serving(config: RunConfig, transport: str) -> RunConfig:
    """Listen where the transport needs (memory: any name; tcp: an ephemeral port on loopback, or
    on this node's address when the peers are placed elsewhere)."""
    host = _placement().host if transport == "tcp" else ""
    return config.replace(host=host, port=0, run_id="experiment")


def _network(transport: str) -> Network:
    return TcpNetwork() if transport == "tcp" else MemoryNetwork()


def _peer_data(config: RunConfig, eval_samples: int | None) -> list[PeerData]:
    """Every in-process peer's partition, prepared once; the arrays behind them are the one
    cached copy of the source (test sets are views), so many peers cost little memory."""
    spec = load_spec(config.model)
    return [load_peer_data(config.data, spec, config.partition, config.peers, i, config.seed, eval_samples)
            for i in range(config.peers)]


def _peer_args(address: str, name: str, peers: int, index: int, *extra: str) -> list[str]:
    return peer_command(address, name, "--peers", str(peers), "--index", str(index), *extra)


Clients = Callable[[str], Awaitable[None]]


def _in_process(peers: Sequence[Peer | RingPeer]) -> Clients:
    """Start the peer objects against the server's address, all in this trio run."""
    async def start(address: str) -> None:
        async with trio.open_nursery() as nursery:
            for peer in peers:
                peer.options = _with_address(peer.options, address)
                nursery.start_soon(peer.run)

    return start


def _with_address(options: PeerOptions, address: str) -> PeerOptions:
    return dataclasses.replace(options, coordinator=address)


def _processes(commands: Callable[[str], list[list[str]]]) -> Clients:
    """Run one ``ringfl peer`` process per peer against the server's loopback address."""
    async def start(address: str) -> None:
        await _placement().start_peers(commands(address))

    return start


async def _within_deadline(run: Run, work: Awaitable[Any]) -> None:
    """A setting whose peers hang (e.g. a peer process that never joins) must not stall the whole
    experiment: give up after generous multiples of the config's own timeouts."""
    config = run.config
    seconds = config.join_timeout + 3 * config.rounds * config.round_timeout
    try:
        with trio.fail_after(seconds):
            await work
    except trio.TooSlowError:
        raise RingflError(f"setting {run.setting.label!r} did not finish within {seconds:.0f} s "
                          "(join_timeout + 3 x rounds x round_timeout); finished settings are kept") from None


def _dp(run: Run) -> bool:
    """NumericSparse (an ε axis) or example-level DP-SGD (training.privacy) is on."""
    return run.setting.params.get("epsilon") is not None or run.config.training.privacy.enabled


def _epsilon(run: Run, metrics: Mapping[str, Any]) -> float | None:
    return float(metrics.get("epsilon") or 0.0) if _dp(run) else None


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


__all__ = [
    "BACKENDS",
    "PLACEMENT",
    "TRANSPORTS",
    "Backend",
    "Experiment",
    "LocalBackend",
    "Placement",
    "Run",
    "build_topology",
    "expand_grid",
    "finished",
    "flags_experiment",
    "load_experiment",
    "make_backend",
    "plan",
    "run_experiment",
    "run_setting",
    "sampled_peers",
    "serve_until_done",
    "store_result",
    "to_config",
]
