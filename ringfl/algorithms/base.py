"""The strategy interfaces shared by the coordinator, the peers and the ring runtime.

Strategies are pure numpy over flat float32 vectors in the model's layer order: they never see a
socket, a Gluon block or a clock, so the runtime can drive them from trio, from a simulation loop
or from a test with the same results. Three roles:

* :class:`CoordinatorAlgorithm`: the server side of coordinator mode; it owns the global vector.
* :class:`PeerAlgorithm`: what a peer does around its local training in coordinator mode.
* :class:`GossipAlgorithm` (in :mod:`ringfl.algorithms.gossip`): one instance per peer in ring /
  topology mode.

All hyperparameters live in one frozen :class:`AlgorithmSettings`, validated on construction.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any, ClassVar

import numpy as np

from ringfl.errors import ConfigError
from ringfl.vectors import SparseVector, Vector

SELECTIONS = ("topk", "random-threshold")
ROBUST_RULES = ("mean", "median", "trimmed-mean", "krum", "multi-krum")
GOSSIP_MIXES = ("add", "difference")
ASYNC_SCALES = ("sum", "peers")
COMPRESSIONS = ("topk", "randomk")


class InvalidUpdate(ValueError):
    """An upload the coordinator refuses (wrong size, non-finite, stale round, too dense...).

    A protocol-level problem caused by one peer, not by the user's configuration: the runtime
    should reject that upload (and maybe that peer) and carry on.
    """


# --------------------------------------------------------------------------------------------
# Settings


def _number(value: Any, name: str) -> float:
    """Accept ints, floats and numeric strings (PyYAML reads ``1e-4`` as a string)."""
    if isinstance(value, bool):
        raise ConfigError(f"algorithm setting '{name}' must be a number, got {value!r}")
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            raise ConfigError(
                f"algorithm setting '{name}' must be a number, got {value!r}"
            ) from None
    if isinstance(value, int | float | np.integer | np.floating):
        return float(value)
    raise ConfigError(f"algorithm setting '{name}' must be a number, got {value!r}")


def _integer(value: Any, name: str) -> int:
    number = _number(value, name)
    if not number.is_integer():
        raise ConfigError(f"algorithm setting '{name}' must be an integer, got {value!r}")
    return int(number)


def _choice(options: tuple[str, ...]) -> Callable[[Any, str], str]:
    def parse(value: Any, name: str) -> str:
        if value not in options:
            raise ConfigError(
                f"algorithm setting '{name}' must be one of {', '.join(options)}; got {value!r}"
            )
        return str(value)

    return parse


# field -> (parser, predicate on the parsed value or None, what the predicate demands)
_Rule = tuple[Callable[[Any, str], Any], Callable[[Any], bool] | None, str]
_RULES: dict[str, _Rule] = {
    "theta_u": (_number, lambda v: 0 < v <= 1, "in (0, 1]"),
    "theta_d": (_number, lambda v: 0 < v <= 1, "in (0, 1]"),
    "gamma": (_number, lambda v: 0 < v < math.inf, "a positive number, or null for no clipping"),
    "tau": (_number, lambda v: 0 <= v < math.inf, ">= 0"),
    "selection": (_choice(SELECTIONS), None, ""),
    "epsilon": (_number, lambda v: 0 < v < math.inf, "a positive number, or null for no DP"),
    "budget": (_number, lambda v: 0 < v < math.inf, "a positive number, or null for no limit"),
    "dp_delta": (_number, lambda v: 0 < v < 1, "in (0, 1)"),
    "stat_decay": (_number, lambda v: 0 < v <= 1, "in (0, 1]"),
    "sample_cap": (_integer, lambda v: v >= 1, ">= 1, or null for the round's median"),
    "server_lr": (_number, lambda v: 0 < v < math.inf, "a positive number"),
    "hops": (_integer, lambda v: v >= 1, ">= 1"),
    "gossip_mix": (_choice(GOSSIP_MIXES), None, ""),
    "async_scale": (_choice(ASYNC_SCALES), None, ""),
    "choco_gamma": (_number, lambda v: 0 < v <= 1, "in (0, 1]"),
    "choco_steps": (_integer, lambda v: v >= 1, ">= 1"),
    "robust": (_choice(ROBUST_RULES), None, ""),
    "trim": (_integer, lambda v: v >= 0, ">= 0"),
    "byzantine_f": (_integer, lambda v: v >= 0, ">= 0"),
    "multi_krum_m": (_integer, lambda v: v >= 1, ">= 1, or null for n - f"),
    "clip_norm": (_number, lambda v: 0 < v < math.inf, "a positive number, or null for none"),
    "user_clip": (_number, lambda v: 0 < v < math.inf, "a positive number"),
    "user_noise": (_number, lambda v: 0 <= v < math.inf, ">= 0"),
    "user_target_epsilon": (_number, lambda v: 0 < v < math.inf, "a positive number, or null"),
    "user_peers": (_integer, lambda v: v >= 1, ">= 1, or null for the round's uploads"),
    "user_rounds": (_integer, lambda v: v >= 1, ">= 1"),
    "clip_quantile": (_number, lambda v: 0 < v < 1, "in (0, 1), or null for fixed clipping"),
    "clip_lr": (_number, lambda v: 0 < v < math.inf, "a positive number"),
    "exchange_every": (_integer, lambda v: v >= 1, ">= 1 mini-batches, or null for once per round"),
    "compression": (_choice(COMPRESSIONS), None, ""),
    "final_consensus": (_integer, lambda v: v >= 0, ">= 0"),
}
_OPTIONAL = {"gamma", "epsilon", "budget", "sample_cap", "multi_krum_m", "clip_norm", "user_target_epsilon",
             "user_peers", "clip_quantile", "exchange_every"}


@dataclass(frozen=True)
class AlgorithmSettings:
    """Every strategy hyperparameter, with the paper's / reference's defaults.

    Selective updates (DSSGD, gossip-dssgd, relay, CHOCO's compressor):
      theta_u: fraction of coordinates uploaded, c = ceil(theta_u * |w|).
      theta_d: fraction downloaded (DSSGD coordinator; the most-updated by ``stat``).
      gamma: clip every coordinate of an update to [-gamma, gamma]; None = no clipping.
      tau: the threshold of ``selection="random-threshold"`` and of NumericSparse.
      selection: "topk" (largest |Δ|) or "random-threshold" (random coordinates with |Δ| >= tau).
    Differential privacy (NumericSparse; DSSGD and gossip-dssgd/relay only):
      epsilon: ε per upload; None = DP off. Requires gamma (the sensitivity is 2·gamma).
      budget: total ε a peer may spend (basic composition); None = unlimited.
      dp_delta: δ' of the advanced-composition bound the ledger reports.
    DSSGD server:
      stat_decay: β; ``stat *= β`` before each upload's ``stat[idx] += 1``.
      async_scale: order async only. "sum" (the paper: every upload is added as it is) or "peers"
        (each upload is divided by the number of live peers: steps computed at the same time from
        the same model are averaged instead of summed, which diverges at ordinary learning rates).
    FedAvg / FedSGD server:
      sample_cap: cap on client-reported sample counts; None = the round's median count.
      server_lr: FedAvg ``w += lr · mean Δ``; FedSGD ``w -= lr · mean gradient``.
      robust, trim, byzantine_f, multi_krum_m, clip_norm: see :mod:`ringfl.algorithms.robust`.
    DP-FedAvg server (user-level DP, :mod:`ringfl.algorithms.dp_fedavg`):
      user_clip: S, every peer's update is clipped to L2 norm S (the initial S when adaptive).
      user_noise: z, Gaussian noise z·S on the sum; or user_target_epsilon with user_rounds.
      user_peers: the fixed denominator of the mean (None: the round's upload count, made public).
      clip_quantile, clip_lr: adaptive clipping (Andrew et al. 2021) to this quantile of the norms.
    Ring / topology mode:
      hops: how far the relay strategy forwards a selection (1 = neighbours only).
      gossip_mix: "add" (the reference: own step + Σ w_ij Δ̂_j) or "difference"
        (own step + Σ w_ij (Δ̂_j − Δ̂_i), which preserves the network average).
      choco_gamma, choco_steps: CHOCO consensus step size and exchanges per round.
      compression: CHOCO's compressor, "topk" (largest |x − x̂|) or "randomk" (θu of the
        coordinates drawn uniformly: unbiased up to scale, no data-dependent selection).
      exchange_every: exchange with the neighbours every k mini-batches (a round's local training
        is cut into slices, each followed by one exchange); None = once per round.
      final_consensus: exchanges without training after the last round's, so the peers end
        closer to their average (D-PSGD on a one-peer exponential graph: log2 n make it exact).
    """

    theta_u: float = 0.1
    theta_d: float = 1.0
    gamma: float | None = None
    tau: float = 1e-4
    selection: str = "topk"
    epsilon: float | None = None
    budget: float | None = None
    dp_delta: float = 1e-5
    stat_decay: float = 1.0
    async_scale: str = "sum"
    sample_cap: int | None = None
    server_lr: float = 1.0
    hops: int = 2
    gossip_mix: str = "add"
    choco_gamma: float = 1.0
    choco_steps: int = 3
    robust: str = "mean"
    trim: int = 1
    byzantine_f: int = 1
    multi_krum_m: int | None = None
    clip_norm: float | None = None
    user_clip: float = 1.0
    user_noise: float = 1.0
    user_target_epsilon: float | None = None
    user_peers: int | None = None
    user_rounds: int = 1
    clip_quantile: float | None = None
    clip_lr: float = 0.2
    exchange_every: int | None = None
    compression: str = "topk"
    final_consensus: int = 0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in _OPTIONAL:
                continue
            parse, ok, demand = _RULES[f.name]
            parsed = parse(value, f.name)
            if ok is not None and not ok(parsed):
                raise ConfigError(f"algorithm setting '{f.name}' must be {demand}; got {value!r}")
            object.__setattr__(self, f.name, parsed)
        if self.epsilon is not None and self.gamma is None:
            raise ConfigError(
                "algorithm setting 'epsilon' needs 'gamma' (NumericSparse's sensitivity is 2·gamma)"
            )
        if self.budget is not None and self.epsilon is None:
            raise ConfigError("algorithm setting 'budget' needs 'epsilon' (DP is off without it)")

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> AlgorithmSettings:
        """Settings from a config mapping; ``theta-u`` and ``theta_u`` are both accepted."""
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise ConfigError(f"algorithm settings must be a mapping, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            name = str(key).replace("-", "_")
            if name not in known:
                raise ConfigError(
                    f"unknown algorithm setting '{key}'; valid: {', '.join(sorted(known))}"
                )
            if name in kwargs:
                raise ConfigError(f"algorithm setting '{key}' is given twice")
            kwargs[name] = value
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able copy (for run metadata and checkpoints)."""
        return asdict(self)


def require_finite(vector: np.ndarray) -> np.ndarray:
    """``vector`` itself, or ValueError: a diverged local run must not be uploaded."""
    if not np.isfinite(vector).all():
        raise ValueError("local update has non-finite values (did training diverge?)")
    return vector


def selection_count(n: int, theta: float) -> int:
    """c = ceil(theta · n), at least 1 and at most n.

    A relative epsilon absorbs float error, so 0.07 · 100 gives 7 and not 8.
    """
    if n <= 0:
        return 0
    return max(1, min(n, math.ceil(theta * n * (1 - 1e-12))))


# --------------------------------------------------------------------------------------------
# Coordinator mode


@dataclass
class Update:
    """One upload as the coordinator's pool sees it.

    ``vector`` is a parameter change Δ (FedAvg, DSSGD) or a gradient (FedSGD), dense or sparse.
    ``num_samples`` is client-reported: weighting strategies cap it (see ``sample_cap``).
    """

    sender: str
    round: int
    vector: Vector
    num_samples: int = 1


class CoordinatorAlgorithm(ABC):
    """Server side of coordinator mode; owns the global flat vector.

    Synchronous strategies buffer :meth:`submit` calls and aggregate in :meth:`end_round`;
    asynchronous ones apply each upload in :meth:`submit` (``end_round`` only advances the round
    counter). ``local_work`` tells the peer runtime what to compute between download and upload:
    ``"epochs"`` (train, then ``make_update(start, end)``) or ``"gradient"`` (the full local-set
    gradient ``g`` at ``start``, passed as ``make_update(start, start - g)``).
    """

    name: ClassVar[str]
    synchronous: ClassVar[bool]
    local_work: ClassVar[str]

    def __init__(self, params: np.ndarray, settings: AlgorithmSettings, rng: np.random.Generator):
        params = np.asarray(params)
        if params.ndim != 1:
            raise ValueError(f"params must be a flat vector, got shape {params.shape}")
        self._params = params.astype(np.float32, copy=True)
        self.settings = settings
        self.rng = rng
        self.round = 0

    @property
    def params(self) -> np.ndarray:
        """The global vector (the live array: copy it before handing it to a peer)."""
        return self._params

    @property
    def size(self) -> int:
        return int(self._params.size)

    def download(self) -> Vector:
        """What a peer receives at "request model parameters": by default a dense copy."""
        return self._params.copy()

    @abstractmethod
    def check(self, update: Update) -> None:
        """Raise :class:`InvalidUpdate` if :meth:`submit` would refuse ``update``; changes nothing."""

    @abstractmethod
    def submit(self, update: Update) -> None:
        """Accept one upload; raises :class:`InvalidUpdate` if it must be refused."""

    def end_round(self) -> None:
        """Close the current round (sync strategies aggregate here)."""
        self.round += 1

    def state(self) -> dict[str, np.ndarray]:
        """Arrays for an atomic checkpoint (taken between rounds: buffered uploads are not kept)."""
        return {"params": self._params.copy(), "round": np.array(self.round, dtype=np.int64)}

    def privacy_report(self) -> dict[str, Any]:
        """Server-side DP figures for the round record and summary (DP-FedAvg); none by default."""
        return {}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        params = np.asarray(state["params"], dtype=np.float32)
        if params.shape != self._params.shape:
            raise ConfigError(
                f"checkpoint has {params.size} parameters but the model has {self._params.size}"
            )
        self._params = params.copy()
        self.round = int(state.get("round", 0))

    def _check_vector(self, update: Update, *, max_nnz: int | None = None) -> None:
        """Refuse uploads of the wrong size, with non-finite values, or denser than allowed."""
        vec = update.vector
        if isinstance(vec, SparseVector):
            if vec.size != self.size or vec.indices.size != vec.values.size:
                raise InvalidUpdate(
                    f"{update.sender}: sparse update of size {vec.size}, expected {self.size}"
                )
            if vec.nnz and int(vec.indices[-1]) >= self.size:
                raise InvalidUpdate(f"{update.sender}: sparse index out of range")
            if not vec.checked and vec.nnz > 1 and not (vec.indices[1:] > vec.indices[:-1]).all():
                raise InvalidUpdate(f"{update.sender}: sparse indices not sorted and unique")
            values, nnz = vec.values, vec.nnz
        else:
            values = np.asarray(vec)
            if values.shape != (self.size,):
                raise InvalidUpdate(
                    f"{update.sender}: dense update of shape {values.shape}, expected ({self.size},)"
                )
            nnz = self.size
        if max_nnz is not None and nnz > max_nnz:
            raise InvalidUpdate(
                f"{update.sender}: {nnz} coordinates uploaded, at most {max_nnz} allowed"
            )
        if not np.isfinite(values).all():
            raise InvalidUpdate(f"{update.sender}: update has non-finite values")


class PeerAlgorithm(ABC):
    """Peer side of coordinator mode: merge a download, turn local progress into an upload."""

    name: ClassVar[str]

    def __init__(self, settings: AlgorithmSettings):
        self.settings = settings

    @property
    def update_epsilon(self) -> float:
        """ε one :meth:`make_update` spends (0 when DP is off); for the peer's ledger."""
        return 0.0

    def apply_download(self, local: np.ndarray, downloaded: Vector) -> np.ndarray:
        """The new local vector: the download, or (sparse download) local with those coordinates overwritten."""
        if isinstance(downloaded, SparseVector):
            out = np.array(local, dtype=np.float32, copy=True)
            out[downloaded.indices] = downloaded.values
            return out
        return np.array(downloaded, dtype=np.float32, copy=True)

    @abstractmethod
    def make_update(
        self,
        start: np.ndarray,
        end: np.ndarray,
        rng: np.random.Generator,
        *,
        ledger: Any = None,
        label: Any = None,
    ) -> Vector:
        """The upload for local progress ``start -> end``.

        With DP on and a :class:`~ringfl.privacy.ledger.PrivacyLedger` given, ε is charged to it
        (recorded under ``label``, e.g. the round) before anything is released, raising
        ``BudgetExhausted`` when the budget is spent.
        """
