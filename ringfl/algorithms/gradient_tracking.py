"""Gradient tracking (DSGT: Pu & Nedić 2020; Nedić, Olshevsky & Shi 2017) over local slices.

D-PSGD on non-IID shards pulls every peer towards its own data between exchanges, and the mixing
only averages that drift away slowly. Gradient tracking lets each peer step along an estimate y_i
of the *network's* average descent instead of its own. With local training in slices, the descent
of a slice plays the role of the gradient, d_i = before_i − after_i (lr times the sum of the
slice's mini-batch gradients). Per exchange t, in two gossip steps::

    y_i  = ỹ_i + d_i(t) − d_i(t−1)        (y_i = d_i at the first exchange)
    step 0: send y_i;           ỹ_i <- Σ_j W_ij y_j        (kept for the next exchange)
    step 1: send x_i − y_i;     x_i <- Σ_j W_ij (x_j − y_j)

For doubly stochastic W the average of the y_i equals the average of the d_i at every exchange, so
the network average moves exactly as FedAvg's would, while each peer's own data only enters through
the difference d_i(t) − d_i(t−1). A lone peer (W = 1) reduces to local SGD. Missing neighbours are
renormalised away as in the other strategies. Bytes: two dense models per neighbour per exchange.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ringfl.algorithms.gossip import GossipAlgorithm, GossipMessage, as_sparse
from ringfl.errors import ConfigError

if TYPE_CHECKING:
    from ringfl.privacy.ledger import PrivacyLedger

_TRACKER, _MODEL = 0, 1  # the two gossip steps of an exchange


class GradientTracking(GossipAlgorithm):
    """One peer's DSGT state: the tracker y_i, the mixed tracker ỹ_i and the last descent d_i."""

    name: ClassVar[str] = "gradient-tracking"

    _x: np.ndarray | None = None
    _y: np.ndarray | None = None
    _mixed_y: np.ndarray | None = None  # Σ_j W_ij y_j of the previous exchange
    _d: np.ndarray | None = None  # the previous exchange's descent
    _step = _TRACKER
    _received: dict[int, np.ndarray] | None = None

    @property
    def steps(self) -> int:
        return 2

    def outgoing(
        self,
        before: np.ndarray,
        after: np.ndarray,
        round: int,
        rng: np.random.Generator,
        *,
        ledger: PrivacyLedger | None = None,
    ) -> list[GossipMessage]:
        """Update the tracker with this slice's descent and send it (step 0)."""
        self.round, self._step, self._received = int(round), _TRACKER, {}
        self._x = np.array(before, dtype=np.float32, copy=True)
        d = self._x - np.asarray(after, dtype=np.float32)
        if self._mixed_y is None or self._d is None:
            self._y = d
        else:
            self._y = self._mixed_y + d - self._d
        self._d = d
        return [GossipMessage(self.peer_id, self.round, as_sparse(self._y.copy()), step=_TRACKER)]

    def next_outgoing(self, rng: np.random.Generator) -> list[GossipMessage]:
        """Step 1: the model after its tracked step, x_i − y_i."""
        if self._step != _TRACKER or self._x is None or self._y is None:
            return []
        self._step, self._received = _MODEL, {}
        return [GossipMessage(self.peer_id, self.round, as_sparse(self._x - self._y), step=_MODEL)]

    def incoming(self, sender: int, message: GossipMessage) -> list[GossipMessage]:
        if (self._received is None or message.round != self.round or message.step != self._step
                or sender not in self.weights or message.origin != sender):
            return []
        self._check(sender, message)
        self._received[sender] = message.vector.to_dense()
        return []

    def mix(self) -> np.ndarray:
        if self._x is None or self._y is None or self._received is None:
            raise RuntimeError("mix() before outgoing(): nothing to mix")
        own = self._y if self._step == _TRACKER else self._x - self._y
        norm = self._normaliser(set(self._received))
        mixed = own * np.float32(self.self_weight / norm)
        for j, vector in sorted(self._received.items()):  # arrival order never changes the sum
            mixed += np.float32(self.weights[j] / norm) * vector
        self._received = None
        if self._step == _TRACKER:
            self._mixed_y = mixed
            return self._x.copy()  # the model moves in step 1
        self._x = mixed
        return mixed.copy()

    def state(self) -> dict[str, np.ndarray]:
        if self._mixed_y is None or self._d is None:
            return {}
        return {"gt_mixed_y": self._mixed_y.copy(), "gt_d": self._d.copy()}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        if "gt_mixed_y" not in state:
            return
        for key in ("gt_mixed_y", "gt_d"):
            if np.shape(state[key]) != (self.n_params,):
                raise ConfigError(f"checkpoint '{key}' has the wrong shape for this model")
        self._mixed_y = np.array(state["gt_mixed_y"], dtype=np.float32)
        self._d = np.array(state["gt_d"], dtype=np.float32)
