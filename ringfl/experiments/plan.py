"""The plan of a topology experiment: its file read, its grid expanded into settings to run.

An experiment file (schema in docs/experiments.md) is a ``base`` run configuration plus a ``grid``
whose cartesian product gives the distributed settings; every experiment also gets the two
reference lines for the same data (centralized and standalone), so each table shows where
collaboration stands between "everybody's data in one place" and "every peer alone".

Each setting is a :class:`Run`: its identity (a :class:`~ringfl.experiments.results.Setting`)
and the resolved configuration, checked here so a bad setting fails before anything runs.
:mod:`ringfl.experiments.run` runs them (nothing simulates the protocol).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from ringfl.algorithms import (
    AlgorithmSettings,
    algorithm_mode,
    make_gossip_algorithm,
    make_peer_algorithm,
)
from ringfl.config import RunConfig, parse_config, read_mapping
from ringfl.errors import ConfigError, RingflError, TopologyError
from ringfl.experiments.results import Setting
from ringfl.model import load_spec
from ringfl.topology import Topology, from_mapping, generate, load_topology

EXPERIMENT_KEYS = ("name", "description", "base", "grid", "standalone_peers", "eval_samples", "ray",
                   "audit")
AUDIT_KEYS = ("shadows", "members", "index")  # `audit:` audits coordinator-mode runs (ringfl.audit)
DEFAULT_STANDALONE_PEERS = 10

# The label fields of labels.py that only some algorithms read: dropped from a setting whose
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
    ray: dict[str, Any] = field(default_factory=dict)  # options of the Ray backend (ray_backend.py)
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


