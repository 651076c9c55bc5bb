"""Federated averaging (McMahan et al.) and its one-step special case FedSGD.

Both are synchronous: the coordinator buffers one dense upload per peer for the current round and
aggregates in ``end_round``.

* FedAvg: peers train local epochs and upload Δ = end − start; the server applies
  ``w += server_lr · Σ_k p_k Δ_k`` (server_lr = 1: the weighted average of the local models).
* FedSGD: peers upload the gradient of their whole local set at the downloaded ``w``; the server
  applies ``w -= server_lr · Σ_k p_k g_k``.

``p_k`` are sample counts normalised to sum to 1, each count capped first (``sample_cap``; by
default at the round's median count) so a peer cannot take over the average by claiming a huge
dataset. With ``robust`` other than "mean", :mod:`ringfl.algorithms.robust` combines the uploads
unweighted instead.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np

from ringfl.algorithms.base import (
    AlgorithmSettings,
    CoordinatorAlgorithm,
    InvalidUpdate,
    PeerAlgorithm,
    Update,
    require_finite,
)
from ringfl.algorithms.robust import aggregate_with
from ringfl.vectors import Vector, as_dense


def capped_weights(counts: list[int], cap: int | None) -> np.ndarray:
    """Sample counts capped at ``cap`` (None: at their median), as float64 weights."""
    c = np.asarray(counts, dtype=np.float64)
    limit = float(np.median(c)) if cap is None else float(cap)
    return np.minimum(c, limit)


class FedAvgCoordinator(CoordinatorAlgorithm):
    """Buffers one upload per peer per round; ``end_round`` applies the aggregate."""

    name: ClassVar[str] = "fedavg"
    synchronous: ClassVar[bool] = True
    local_work: ClassVar[str] = "epochs"
    direction: ClassVar[float] = 1.0  # +Δ for FedAvg, −gradient for FedSGD

    def __init__(self, params: np.ndarray, settings: AlgorithmSettings, rng: np.random.Generator):
        super().__init__(params, settings, rng)
        self._pending: dict[str, Update] = {}

    @property
    def pending(self) -> int:
        """Uploads buffered for the current round."""
        return len(self._pending)

    def check(self, update: Update) -> None:
        if update.round != self.round:
            raise InvalidUpdate(
                f"{update.sender}: upload for round {update.round}, current round is {self.round}"
            )
        if update.sender in self._pending:
            raise InvalidUpdate(f"{update.sender}: second upload in round {self.round}")
        if int(update.num_samples) < 1:
            raise InvalidUpdate(
                f"{update.sender}: num_samples must be >= 1, got {update.num_samples}"
            )
        self._check_vector(update)

    def submit(self, update: Update) -> None:
        self.check(update)
        self._pending[update.sender] = update

    def end_round(self) -> None:
        """Aggregate the buffered uploads (a round without uploads leaves w unchanged)."""
        if self._pending:
            updates = list(self._pending.values())
            weights = capped_weights([u.num_samples for u in updates], self.settings.sample_cap)
            combined = aggregate_with(self.settings, [as_dense(u.vector) for u in updates], weights)
            self._params += np.float32(self.direction * self.settings.server_lr) * combined.astype(
                np.float32
            )
        self._pending.clear()
        super().end_round()


class FedSGDCoordinator(FedAvgCoordinator):
    """FedAvg's server with gradients: ``w -= server_lr · weighted mean gradient``."""

    name: ClassVar[str] = "fedsgd"
    local_work: ClassVar[str] = "gradient"
    direction: ClassVar[float] = -1.0


class FedAvgPeer(PeerAlgorithm):
    """Uploads the dense local change Δ = end − start."""

    name: ClassVar[str] = "fedavg"
    direction: ClassVar[float] = 1.0  # the upload is direction · (end − start)

    def make_update(
        self,
        start: np.ndarray,
        end: np.ndarray,
        rng: np.random.Generator,
        *,
        ledger: Any = None,
        label: Any = None,
    ) -> Vector:
        change = np.asarray(end, dtype=np.float32) - np.asarray(start, dtype=np.float32)
        return require_finite(change if self.direction > 0 else -change)


class FedSGDPeer(FedAvgPeer):
    """Uploads the full-local-set gradient g, which the runtime passes as ``end = start − g``."""

    name: ClassVar[str] = "fedsgd"
    direction: ClassVar[float] = -1.0
