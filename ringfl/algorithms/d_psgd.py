"""D-PSGD (Lian et al., NeurIPS 2017): full-model gossip with the topology's mixing weights.

After its local SGD slice every peer sends its whole model x_i to its out-neighbours and replaces
it by the weighted average of what it holds and what arrived::

    x_i <- W[i, i] x_i + sum_j W[i, j] x_j          (j: in-neighbours that delivered)

With a doubly stochastic W (Metropolis-Hastings on an undirected graph, or a one-peer
exponential graph's ½/½ rounds) the network average is unchanged by mixing, so the peers
converge to the average a coordinator would compute (FedAvg), at a speed set by W's spectral gap.
A neighbour whose model did not arrive is renormalised away, as in the other ring strategies.

Bytes: 4 B per parameter per neighbour per exchange (a dense float32 vector): the most per
exchange, but no selection bias and no state to resynchronise after a lost message.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ringfl.algorithms.gossip import GossipAlgorithm, GossipMessage, as_sparse
from ringfl.vectors import SparseVector

if TYPE_CHECKING:
    from ringfl.privacy.ledger import PrivacyLedger


class DPSGD(GossipAlgorithm):
    """One peer's D-PSGD: send x_i, mix the neighbours' x_j with the weights W[i, j]."""

    name: ClassVar[str] = "d-psgd"

    _x: np.ndarray | None = None
    _received: dict[int, SparseVector] | None = None

    def outgoing(
        self,
        before: np.ndarray,
        after: np.ndarray,
        round: int,
        rng: np.random.Generator,
        *,
        ledger: PrivacyLedger | None = None,
    ) -> list[GossipMessage]:
        """Adopt the local result and send it whole (dense: every coordinate, 4 B each)."""
        self.round = int(round)
        self._x = np.asarray(after, dtype=np.float32)  # the caller's fresh training result: no copy
        self._received = {}
        return [GossipMessage(self.peer_id, self.round, as_sparse(self._x))]

    def incoming(self, sender: int, message: GossipMessage) -> list[GossipMessage]:
        """Keep the sender's model for this exchange (stale rounds and strangers are dropped)."""
        if self._received is None or message.round != self.round or sender not in self.weights:
            return []
        if message.origin != sender:
            return []
        self._check(sender, message)
        self._received[sender] = message.vector  # dense: every coordinate, added in mix()
        return []

    def mix(self) -> np.ndarray:
        if self._x is None or self._received is None:
            raise RuntimeError("mix() before outgoing(): no local model to mix")
        norm = self._normaliser(set(self._received))
        out = self._x * np.float32(self.self_weight / norm)
        for j in sorted(self._received):  # arrival order never changes the sum
            self._received[j].add_to(out, self.weights[j] / norm)
        self._received = None  # closed: late copies of this exchange are ignored
        self._x = None  # the next outgoing() brings the next model; ``out`` is the caller's now
        return out
