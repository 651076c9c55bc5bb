"""DP-FedAvg: user-level differential privacy at the coordinator (McMahan et al., ICLR 2018).

Peers upload their FedAvg change Δ_k as usual. The server clips each one to L2 norm S, sums,
adds N(0, (z·S)²) to the sum and applies ``w += server_lr · (Σ clip(Δ_k) + noise) / n``: adding or
removing one peer's whole dataset moves the sum by at most S, so each round is a Gaussian
mechanism with noise multiplier z over *peers* (user level), accounted with the RDP accountant
of :mod:`ringfl.privacy.accountant` (every peer takes part in every round: q = 1). The
denominator n is ``user_peers`` when set (fixed, as in the paper); otherwise the round's upload
count, which is then treated as public.

Adaptive clipping (Andrew et al., NeurIPS 2021, "Differentially Private Learning with Adaptive
Clipping"), on when ``clip_quantile`` is set: the server also releases a noisy count of updates
within S (noise σ_b = max(n/20, z)) and moves S geometrically toward that quantile of the norms,
``S ← S·exp(−clip_lr·(b̃ − quantile))``. The two queries share the budget: the sum gets noise
multiplier z_Δ = (z⁻² − (2σ_b)⁻²)^(−1/2), so their composition costs what one Gaussian with z does.

Unlike example-level DP-SGD (:mod:`ringfl.privacy.dp_sgd`), this protects a peer's whole
contribution but trusts the coordinator with the raw updates; the two combine.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar

import numpy as np

from ringfl.algorithms.base import AlgorithmSettings, InvalidUpdate, Update
from ringfl.algorithms.fedavg import FedAvgCoordinator, FedAvgPeer
from ringfl.privacy.accountant import GaussianLedger, noise_for
from ringfl.privacy.ledger import BudgetExhausted
from ringfl.vectors import SparseVector, as_dense

log = logging.getLogger(__name__)


def clip_to(vector: np.ndarray, bound: float) -> tuple[np.ndarray, float]:
    """``vector`` scaled into the L2 ball of radius ``bound``, and its original norm."""
    norm = float(np.linalg.norm(vector))
    return (vector * (bound / norm) if norm > bound else vector), norm


def split_noise(z: float, count_noise: float) -> float:
    """The sum's noise multiplier when the clipped-count query with noise σ_b shares a budget z."""
    return (z**-2 - (2.0 * count_noise) ** -2) ** -0.5 if z > 0 else 0.0


class DPFedAvgCoordinator(FedAvgCoordinator):
    """FedAvg with per-peer clipping and server-side Gaussian noise (fixed or adaptive clip)."""

    name: ClassVar[str] = "dp-fedavg"

    def __init__(self, params: np.ndarray, settings: AlgorithmSettings, rng: np.random.Generator):
        super().__init__(params, settings, rng)  # the registry already refuses robust rules here
        if settings.user_target_epsilon is not None:
            self.noise_multiplier = noise_for(settings.user_target_epsilon, 1.0, settings.user_rounds,
                                              settings.dp_delta)
        else:
            self.noise_multiplier = settings.user_noise
        self.clip = settings.user_clip
        self.ledger = GaussianLedger(peer="all peers (user level)", delta=settings.dp_delta,
                                     budget=settings.user_target_epsilon)
        self.last_clipped_fraction: float | None = None
        # the noise must not come from the run's seed (public in the config): OS entropy instead
        self.noise_rng = np.random.default_rng()

    def check(self, update: Update) -> None:
        if isinstance(update.vector, SparseVector):
            raise InvalidUpdate(f"{update.sender}: dp-fedavg needs dense updates")
        super().check(update)

    def end_round(self) -> None:
        """Clip, sum, noise, average — unless the user-level budget is spent (then w stays)."""
        if self._pending:
            try:
                self.ledger.check(self.noise_multiplier, 1.0, 1)
            except BudgetExhausted as exc:  # the run goes on, the model no longer moves
                log.warning("dp-fedavg round %d not applied: %s", self.round, exc)
            else:
                self._apply([as_dense(u.vector) for u in self._pending.values()])
                self.ledger.record(self.noise_multiplier, 1.0, 1)
        self._pending.clear()
        super().end_round()

    def _apply(self, updates: list[np.ndarray]) -> None:
        s, n = self.settings, self.settings.user_peers or len(updates)
        total = np.zeros(self.size, np.float64)
        within = 0
        for vector in updates:
            clipped, norm = clip_to(np.asarray(vector, np.float64), self.clip)
            total += clipped
            within += norm <= self.clip
        adaptive = s.clip_quantile is not None
        count_noise = max(n / 20.0, self.noise_multiplier)
        z = split_noise(self.noise_multiplier, count_noise) if adaptive else self.noise_multiplier
        if z > 0:
            total += self.noise_rng.normal(0.0, z * self.clip, self.size)
        self._params += np.float32(s.server_lr) * (total / n).astype(np.float32)
        self.last_clipped_fraction = 1.0 - within / len(updates)
        if adaptive:
            noisy = (within + (self.noise_rng.normal(0.0, count_noise) if z > 0 else 0.0)) / n
            self.clip *= math.exp(-s.clip_lr * (noisy - s.clip_quantile))

    def privacy_report(self) -> dict[str, Any]:
        eps = self.ledger.total
        return {"user_epsilon": eps if math.isfinite(eps) else None, "user_delta": self.settings.dp_delta,
                "user_noise_multiplier": self.noise_multiplier, "user_clip": self.clip,
                "user_clipped_fraction": self.last_clipped_fraction}

    def state(self) -> dict[str, np.ndarray]:
        return {**super().state(), "user_clip": np.array(self.clip), "user_rounds": np.array(self.ledger.steps)}

    def load_state(self, state: Any) -> None:
        super().load_state(state)
        if "user_clip" in state:
            self.clip = float(state["user_clip"])
            self.ledger.segments = []
            if int(state["user_rounds"]):
                self.ledger.record(self.noise_multiplier, 1.0, int(state["user_rounds"]))


class DPFedAvgPeer(FedAvgPeer):
    """The peer side is FedAvg's: the server clips and noises."""

    name: ClassVar[str] = "dp-fedavg"
