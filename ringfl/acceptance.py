"""The coordinator's per-update decision: apply an upload, or reject it with a reason code.

The seed's parameter server "decides for itself whether to apply a gradient update". Each
rejection is answered to the peer (in the acknowledgement of its 1004 upload) with one of these
codes, which the peer logs, and counted in the metrics.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from ringfl.config import AcceptanceConfig
from ringfl.vectors import SparseVector, Vector


class Reason(enum.IntEnum):
    """Why an update was (not) applied; carried as an integer on the wire."""

    ACCEPTED = 0
    NON_FINITE = 1
    WRONG_LENGTH = 2
    WRONG_SPEC = 3
    STALE = 4
    DUPLICATE = 5
    NORM_TOO_LARGE = 6
    NOT_SELECTED = 7
    ROUND_CLOSED = 8
    BUDGET_SPENT = 9
    UNKNOWN_PEER = 10
    REFUSED_BY_ALGORITHM = 11  # e.g. denser than θu allows; the detail says what

    @property
    def text(self) -> str:
        return self.name.lower().replace("_", " ")


@dataclass
class AcceptancePolicy:
    """Stateful checks: the set of (peer, round) already applied guards against duplicates."""

    config: AcceptanceConfig
    num_params: int
    seen: set[tuple[str, int]] = field(default_factory=set)
    _oldest: int | None = field(default=None, init=False, repr=False)  # oldest round in ``seen``

    def check(self, sender: str, round_: int, base_round: int, current_round: int, vector: Vector) -> Reason:
        """The reason to reject, or ``Reason.ACCEPTED``. Does not record the update."""
        size = vector.size if isinstance(vector, SparseVector) else int(np.asarray(vector).size)
        if size != self.num_params:
            return Reason.WRONG_LENGTH
        values = vector.values if isinstance(vector, SparseVector) else np.asarray(vector)
        verified = isinstance(vector, SparseVector) and vector.checked  # by the codec
        if self.config.check_finite and not verified and not bool(np.isfinite(values).all()):
            return Reason.NON_FINITE
        if current_round - base_round > self.config.max_staleness:
            return Reason.STALE
        if (sender, round_) in self.seen:
            return Reason.DUPLICATE
        if self.config.max_norm is not None and float(np.linalg.norm(values)) > self.config.max_norm:
            return Reason.NORM_TOO_LARGE
        return Reason.ACCEPTED

    def record(self, sender: str, round_: int) -> None:
        self.seen.add((sender, round_))
        self._oldest = round_ if self._oldest is None else min(self._oldest, round_)

    def restore(self, seen: set[tuple[str, int]]) -> None:
        """Take the applied (peer, round) pairs of a checkpoint."""
        self.seen = set(seen)
        self._oldest = min((r for _, r in self.seen), default=None)

    def forget_before(self, round_: int) -> None:
        """Drop bookkeeping for rounds that can no longer be accepted (bounded memory).

        Called every round: the set is only rebuilt when something in it has become too old."""
        keep_from = round_ - self.config.max_staleness - 1
        if self._oldest is not None and self._oldest < keep_from:
            self.restore({key for key in self.seen if key[1] >= keep_from})
