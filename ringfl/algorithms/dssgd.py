"""Distributed Selective SGD (Shokri & Shmatikov, CCS 2015), coordinator mode.

Peer, per local epoch: download a fraction θd of the global vector (the most-updated coordinates),
train, Δ = after − after-download, clip each coordinate to [−γ, γ], upload c = ⌈θu·|w|⌉ of them
(largest |Δ|, random above τ, or NumericSparse with DP).

Server, per upload (asynchronous: applied on arrival, in whatever order peers arrive):
``w[idx] += values`` (a sum, no 1/N averaging) and ``stat[idx] += 1``, after ``stat *= β``.
With θd = 1 the non-uploaded part of a peer's progress is overwritten at its next download (no
error feedback), exactly as in the paper.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from ringfl.algorithms.base import (
    AlgorithmSettings,
    CoordinatorAlgorithm,
    PeerAlgorithm,
    Update,
    selection_count,
)
from ringfl.algorithms.selection import select_update, top_k_indices, update_epsilon
from ringfl.errors import ConfigError
from ringfl.vectors import SparseVector, Vector

if TYPE_CHECKING:
    from ringfl.privacy.ledger import PrivacyLedger


class DSSGDCoordinator(CoordinatorAlgorithm):
    """The parameter server: sums selective uploads into w and counts updates per coordinate."""

    name: ClassVar[str] = "dssgd"
    synchronous: ClassVar[bool] = False
    local_work: ClassVar[str] = "epochs"

    def __init__(self, params: np.ndarray, settings: AlgorithmSettings, rng: np.random.Generator):
        super().__init__(params, settings, rng)
        self.stat = np.zeros(self.size, dtype=np.float64)
        # Fixed seeded priority for stat ties: deterministic, but without always favouring the
        # first layer (at the start every stat is 0).
        self.tie_rank = rng.permutation(self.size).astype(np.int64)
        self.max_upload = selection_count(self.size, settings.theta_u)

    def download(self) -> Vector:
        """θd = 1: the whole vector. θd < 1: the ⌈θd·|w|⌉ coordinates with the largest ``stat``."""
        if self.settings.theta_d >= 1.0:
            return self._params.copy()
        k = selection_count(self.size, self.settings.theta_d)
        return SparseVector.take(self._params, top_k_indices(self.stat, k, tie_rank=self.tie_rank))

    def check(self, update: Update) -> None:
        self._check_vector(update, max_nnz=self.max_upload)

    def submit(self, update: Update) -> None:
        """Apply one upload now: ``w[idx] += clip(values)``, ``stat *= β``, ``stat[idx] += 1``.

        Values are clipped to γ again here, and uploads with more than c coordinates are refused,
        so no peer can move the model further than an honest one.
        """
        self.check(update)
        vec = update.vector
        gamma = self.settings.gamma
        if self.settings.stat_decay < 1.0:
            self.stat *= self.settings.stat_decay
        if isinstance(vec, SparseVector):
            values = vec.values if gamma is None else np.clip(vec.values, -gamma, gamma)
            idx = vec.indices.astype(np.intp)  # fancy indexing with uint32 converts on every use
            self._params[idx] += values
            self.stat[idx] += 1.0
        else:
            values = np.asarray(vec, dtype=np.float32)
            self._params += values if gamma is None else np.clip(values, -gamma, gamma)
            self.stat += 1.0

    def state(self) -> dict[str, np.ndarray]:
        return {**super().state(), "stat": self.stat.copy(), "tie_rank": self.tie_rank.copy()}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        super().load_state(state)
        for key in ("stat", "tie_rank"):
            if key in state and np.shape(state[key]) != (self.size,):
                raise ConfigError(f"checkpoint '{key}' has the wrong shape for this model")
        if "stat" in state:
            self.stat = np.asarray(state["stat"], dtype=np.float64).copy()
        if "tie_rank" in state:
            self.tie_rank = np.asarray(state["tie_rank"], dtype=np.int64).copy()


class DSSGDPeer(PeerAlgorithm):
    """Turns one local epoch into a selective (optionally DP) upload."""

    name: ClassVar[str] = "dssgd"

    @property
    def update_epsilon(self) -> float:
        return update_epsilon(self.settings)

    def make_update(
        self,
        start: np.ndarray,
        end: np.ndarray,
        rng: np.random.Generator,
        *,
        ledger: PrivacyLedger | None = None,
        label: Any = None,
    ) -> Vector:
        """Δ = end − start, clipped to γ, then c coordinates selected (see :func:`select_update`)."""
        delta = np.asarray(end, dtype=np.float32) - np.asarray(start, dtype=np.float32)
        return select_update(delta, self.settings, rng, ledger=ledger, label=label)
