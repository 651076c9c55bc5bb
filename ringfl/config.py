"""Typed run configuration loaded from YAML/JSON, with one-line errors naming the bad field.

One :class:`RunConfig` describes a whole run: the coordinator reads it (and sends the training
part to peers at join, so a peer needs only an address and its data), ring peers read it when
there is no bootstrap, and experiments build many of them from a grid. Every field has a default
that gives the embedded demo (digits, a small MLP, FedAvg), so no file is needed to start.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

import yaml

from ringfl.errors import ConfigError
from ringfl.privacy.dp_sgd import DpSgdConfig

T = TypeVar("T")
ORDERS = ("auto", "sync", "round-robin", "random", "async")


@dataclass(frozen=True)
class TrainingConfig:
    """Local SGD hyperparameters; the coordinator sends these to every peer at join."""

    lr: float = 0.1
    batch_size: int = 32
    epochs: int = 1  # local epochs per round (FedAvg E; DSSGD uses 1)
    momentum: float = 0.0
    weight_decay: float = 0.0
    privacy: DpSgdConfig = field(default_factory=DpSgdConfig)  # example-level DP-SGD (ringfl.privacy.dp_sgd)


@dataclass(frozen=True)
class PartitionConfig:
    """How ``--peers N --index I`` carve a peer's share out of a data source."""

    kind: str = "iid"  # iid | shards | dirichlet | sample
    alpha: float = 0.5  # dirichlet concentration
    size: int = 600  # sample: images per peer
    shards_per_peer: int = 2  # shards: label shards per peer


@dataclass(frozen=True)
class AcceptanceConfig:
    """The coordinator's per-update decision (the seed's "server decides whether to apply")."""

    max_staleness: int = 0  # rounds an update's base model may lag (async modes)
    max_norm: float | None = None  # reject updates whose L2 norm exceeds this
    check_finite: bool = True


@dataclass(frozen=True)
class ByzantineConfig:
    """Experiments only: the first ceil(fraction · peers) peers corrupt their uploads."""

    fraction: float = 0.0
    attack: str = "sign-flip"  # sign-flip | scale:K | noise:SIGMA (ringfl.attacks)

    def attackers(self, peers: int) -> int:
        return math.ceil(self.fraction * peers - 1e-9)


@dataclass(frozen=True)
class TLSConfig:
    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    require_client_cert: bool = False
    allow: list[str] | None = None  # coordinator: certificate names (= peer ids) allowed to join

    @property
    def enabled(self) -> bool:
        return self.ca is not None or self.cert is not None


@dataclass(frozen=True)
class RunConfig:
    run_id: str = "ringfl"
    seed: int = 0
    model: str = "digits-mlp"  # shipped spec name or a spec file
    data: str = "digits"  # the coordinator's held-out test data (and the demo peers' data)
    algorithm: str = "fedavg"  # coordinator or ring mode: ringfl.algorithms registries
    order: str = "auto"  # auto (dssgd: round-robin, else sync) | sync | round-robin | random | async
    rounds: int = 5
    peers: int = 4  # expected participants; a round starts when they joined (or min_peers by join_timeout)
    min_peers: int = 1
    join_timeout: float = 60.0
    round_timeout: float = 120.0
    eval_every: int = 1
    checkpoint_every: int = 1
    pool_size: int = 64  # gradient pool capacity (bounded: senders wait when it is full)
    max_parallel: int | None = None  # sync rounds: peers training at once (e.g. the cores); None: all
    max_members: int | None = None  # distinct peer names admitted over the run; None: 4 × peers, at least 64
    max_unjoined: int | None = None  # connections still joining; more are closed at once; None: max_members, >= 64
    max_frame: int | None = None  # default follows the model size
    host: str = "127.0.0.1"
    port: int = 7001
    topology: str | None = None  # ring/topology mode: a topology file
    token_file: str | None = None  # run token (pre-shared secret) file; else $RINGFL_TOKEN; else none
    token_per_peer: bool = False  # peers prove peer_token(run token, their id): a token joins as its id only
    training: TrainingConfig = field(default_factory=TrainingConfig)
    partition: PartitionConfig = field(default_factory=PartitionConfig)
    acceptance: AcceptanceConfig = field(default_factory=AcceptanceConfig)
    tls: TLSConfig = field(default_factory=TLSConfig)
    byzantine: ByzantineConfig = field(default_factory=ByzantineConfig)
    algorithm_settings: dict[str, Any] = field(default_factory=dict)
    secagg: dict[str, Any] | None = None  # secure aggregation (ringfl.secagg.SecAggSettings); None: off

    def replace(self, **changes: Any) -> RunConfig:
        """A copy with top-level fields changed (CLI flags override the file this way)."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def build(cls: type[T], data: Any, where: str) -> T:
    """Construct dataclass ``cls`` from a mapping, checking keys and value types."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown field {unknown[0]!r} (valid: {', '.join(sorted(known))})")
    values = {key: _coerce(hints[key], value, f"{where}.{key}") for key, value in data.items()}
    return cls(**values)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    text = hint.__name__ if isinstance(hint, type) else str(hint).replace("typing.", "")
    if value is None:
        if "None" in text:
            return None
        raise ConfigError(f"{where}: must not be empty")
    if hint is bool or text.startswith("bool"):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: must be true or false, got {value!r}")
        return value
    if "float" in text and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if "int" in text and isinstance(value, int) and not isinstance(value, bool):
        return value
    if "str" in text and isinstance(value, str):
        return value
    if "dict" in text and isinstance(value, Mapping):
        return dict(value)
    if "list" in text and isinstance(value, list) and all(isinstance(v, (str, int)) for v in value):
        return [str(v) for v in value]
    raise ConfigError(f"{where}: expected {text}, got {value!r}")


def parse_config(data: Any, where: str = "config") -> RunConfig:
    config = build(RunConfig, data, where)
    _check_ranges(config, where)
    return config


def _check_ranges(config: RunConfig, where: str) -> None:
    checks = [
        (config.rounds >= 1, "rounds must be >= 1"),
        (config.peers >= 1, "peers must be >= 1"),
        (config.min_peers >= 1, "min_peers must be >= 1"),
        (config.training.lr > 0, "training.lr must be > 0"),
        (config.training.batch_size >= 1, "training.batch_size must be >= 1"),
        (config.training.epochs >= 1, "training.epochs must be >= 1"),
        (config.pool_size >= 1, "pool_size must be >= 1"),
        (config.max_parallel is None or config.max_parallel >= 1, "max_parallel must be >= 1"),
        (config.max_members is None or config.max_members >= config.peers, "max_members must be >= peers"),
        (config.max_unjoined is None or config.max_unjoined >= 1, "max_unjoined must be >= 1"),
        (0 <= config.port <= 65535, "port must be in 0..65535"),
        (config.round_timeout > 0, "round_timeout must be > 0"),
        (config.order in ORDERS, f"order must be one of {', '.join(ORDERS)}"),
        (not (config.token_per_peer and config.topology),
         "token_per_peer works in coordinator mode only (ring neighbours prove the run token to each other)"),
        (0.0 <= config.byzantine.fraction < 1.0, "byzantine.fraction must be in [0, 1)"),
        (not config.tls.allow or config.tls.require_client_cert,
         "tls.allow needs tls.require_client_cert: true (only client certificates carry a name)"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(f"{where}: {message}")
    config.training.privacy.check(f"{where}: training.privacy")
    from ringfl.attacks import parse_attack

    parse_attack(config.byzantine.attack)


def read_mapping(path: str | Path, what: str = "config") -> Any:
    """Read a YAML or JSON file, turning every failure into a one-line ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} file {str(path)!r} does not exist")
    text = path.read_text()
    try:
        return json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: not valid JSON/YAML ({str(exc).splitlines()[0]})") from None


def load_config(path: str | Path | None) -> RunConfig:
    """The run config from a file, or the embedded demo defaults when ``path`` is None."""
    if path is None:
        return RunConfig()
    return parse_config(read_mapping(path), where=str(path))


def load_token(path: str | None) -> bytes | None:
    """The run token from a file, or ``$RINGFL_TOKEN``; None means no authentication.

    Never from a command-line value: those show up in ``ps``.
    """
    import os

    from ringfl.protocol.auth import check_token

    if path:
        try:
            raw = Path(path).read_bytes().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the run token file {path}: {exc.strerror}") from None
    elif os.environ.get("RINGFL_TOKEN"):
        raw = os.environ["RINGFL_TOKEN"].strip().encode()
    else:
        return None
    try:
        return check_token(raw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"run token: {exc}") from None


RING_DEFAULT_ALGORITHM = "gossip-dssgd"
"""Ring mode's algorithm when none is chosen (``fedavg``, the file default, has no ring mode)."""


def resolve_mode(config: RunConfig, path: str | Path | None, algorithm_flag: str | None) -> RunConfig:
    """With a topology and no algorithm chosen (flag or file), ring mode's default; then refuse an
    algorithm of the other mode at start-up instead of letting every peer fail at join."""
    explicit = algorithm_flag is not None or (path is not None and "algorithm" in (read_mapping(path) or {}))
    if config.topology and not explicit:
        config = config.replace(algorithm=RING_DEFAULT_ALGORITHM)
    check_mode(config.algorithm, ring=bool(config.topology))
    return config


def check_mode(algorithm: str, *, ring: bool) -> None:
    """One line if ``algorithm`` belongs to the other mode (or to none)."""
    from ringfl.algorithms import COORDINATOR_ALGORITHMS, GOSSIP_ALGORITHMS, algorithm_mode

    mode = algorithm_mode(algorithm)
    if ring and mode != "ring":
        raise ConfigError(f"algorithm '{algorithm}' runs in coordinator mode only; ring mode (--topology) "
                          f"takes {', '.join(sorted(GOSSIP_ALGORITHMS))} (default {RING_DEFAULT_ALGORITHM})")
    if not ring and mode != "coordinator":
        raise ConfigError(f"algorithm '{algorithm}' runs in ring mode only (give --topology FILE); coordinator "
                          f"mode takes {', '.join(sorted(COORDINATOR_ALGORITHMS))}")
