"""Ring / topology mode: each peer mixes what its in-neighbours send, without a coordinator.

One :class:`GossipAlgorithm` instance per peer holds that peer's gossip state. Its row of the
mixing matrix W (``weights[j] = W[i, j]`` over in-neighbours, ``self_weight = W[i, i]``, see
:mod:`ringfl.topology`) is fixed at construction. The runtime drives a round like this
(:func:`simulate_round` is the in-memory version)::

    messages = alg.outgoing(before, after, round, rng)   # after the local epoch(s)
    for step in range(alg.steps):                        # CHOCO: several exchanges per round
        if step:
            messages = alg.next_outgoing(rng)
        send messages to every out-neighbour
        for each (sender, message) received:             # until neighbours are in or a timeout
            send alg.incoming(sender, message) to every out-neighbour   # relay forwards
        params = alg.mix()                               # new local parameters

**Missing neighbours.** ``mix`` uses what has arrived. A direct neighbour whose update did not
arrive is renormalised away: every weight is divided by ``self_weight + Σ_{j present} W[i, j]``.

**gossip-dssgd** (the reference's ring strategy): send the selected local change Δ̂_i
(clip + top-k / random-threshold / NumericSparse, exactly as DSSGD uploads), then
``x_i = after_i + Σ_j W[i, j] Δ̂_j``: the own full step plus the neighbours' selections weighted
by the mixing weights. Adding them with weight 1 diverges (the reference measured ≈ 0.5
accuracy): every peer's step would be counted deg + 1 times. With ``gossip_mix="difference"``
the node also subtracts its own selection, ``x_i = after_i + Σ_j W[i, j] (Δ̂_j − Δ̂_i)``, which
keeps the network average equal to the average of the ``after`` models for doubly stochastic W.

**relay**: the same, but a received selection is forwarded to the out-neighbours until it has
travelled ``hops`` hops, de-duplicated by (origin, round) (a copy that arrives over fewer hops
replaces the first one). Each origin's selection is applied once, with the product of the mixing
weights along the path it arrived by (the one-path term of (W^h)[i, origin]): direct neighbours
keep W[i, j], two hops away on a ring with W = 1/3 gives 1/9. The extra step mass stays below
Σ_h (1 − W[i, i])^h, so relaying widens what a peer learns from without the weight-1 blow-up.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ringfl.algorithms.base import AlgorithmSettings, InvalidUpdate
from ringfl.algorithms.robust import aggregate, aggregate_with
from ringfl.algorithms.selection import select_update, update_epsilon
from ringfl.errors import ConfigError
from ringfl.vectors import SparseVector

if TYPE_CHECKING:
    from ringfl.privacy.ledger import PrivacyLedger

_WEIGHT_TOLERANCE = 1e-6


@dataclass(frozen=True)
class GossipMessage:
    """A sparse vector from ``origin`` for exchange ``step`` of ``round``.

    ``hop`` is how many network hops it has travelled when received (1 from the origin itself);
    ``weight`` the product of the mixing weights along the path before the last hop (1 at the
    origin; relays multiply in their own weight for the peer they got it from).
    """

    origin: int
    round: int
    vector: SparseVector
    step: int = 0
    hop: int = 1
    weight: float = 1.0
    snapshot: bool = False  # the sender's whole public copy (CHOCO resync): replaces, never adds


class GossipAlgorithm(ABC):
    """One peer's gossip strategy (see the module docstring for the driving loop)."""

    name: ClassVar[str]
    keeps_copies: ClassVar[bool] = False  # state mirrored at the neighbours: late messages still count

    def __init__(
        self,
        peer_id: int,
        n_params: int,
        settings: AlgorithmSettings,
        weights: Mapping[int, float],
        self_weight: float | None = None,
    ):
        self.peer_id = int(peer_id)
        self.n_params = int(n_params)
        self.settings = settings
        self.weights = {int(j): float(w) for j, w in weights.items() if int(j) != self.peer_id}
        if any(w < 0 for w in self.weights.values()):
            raise ConfigError(f"peer {peer_id}: mixing weights must be >= 0")
        rest = 1.0 - sum(self.weights.values())
        self.self_weight = rest if self_weight is None else float(self_weight)
        if self.self_weight < -_WEIGHT_TOLERANCE:
            raise ConfigError(f"peer {peer_id}: neighbour weights sum to more than 1")
        self.self_weight = max(self.self_weight, 0.0)
        self.round = -1

    @property
    def steps(self) -> int:
        """Exchanges with the neighbours per round."""
        return 1

    @property
    def update_epsilon(self) -> float:
        """ε spent per round (0 when DP is off)."""
        return 0.0

    @abstractmethod
    def outgoing(
        self,
        before: np.ndarray,
        after: np.ndarray,
        round: int,
        rng: np.random.Generator,
        *,
        ledger: PrivacyLedger | None = None,
    ) -> list[GossipMessage]:
        """Start ``round`` after local training moved ``before`` to ``after``; messages of exchange 0."""

    @abstractmethod
    def incoming(self, sender: int, message: GossipMessage) -> list[GossipMessage]:
        """Take one message from in-neighbour ``sender``; returns what to forward to out-neighbours."""

    @abstractmethod
    def mix(self) -> np.ndarray:
        """Close the current exchange; the peer's new local parameters."""

    def next_outgoing(self, rng: np.random.Generator) -> list[GossipMessage]:
        """Messages of the next exchange of this round ([] once the round's exchanges are done)."""
        return []

    def snapshot(self) -> GossipMessage | None:
        """What to send, instead of this exchange's messages, to a neighbour whose copy of this
        peer's state may be wrong (a new link, a lost message); None: nothing is kept in copies."""
        return None

    def state(self) -> dict[str, np.ndarray]:
        """Arrays to checkpoint between rounds (CHOCO's public copies)."""
        return {}

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:  # noqa: B027 - optional hook
        """Restore :meth:`state`."""

    def adopt(self, old: GossipAlgorithm) -> None:
        """Continue from the instance this one replaces (re-linking changed the weights)."""
        self.load_state(old.state())

    def _normaliser(self, present: set[int]) -> float:
        """Mass of the weights that are in play: self plus the neighbours that delivered."""
        total = self.self_weight + sum(self.weights[j] for j in present if j in self.weights)
        return total if total > 0 else 1.0

    def _check(self, sender: int, message: GossipMessage) -> None:
        if message.vector.size != self.n_params:
            raise InvalidUpdate(
                f"peer {sender}: gossip vector of size {message.vector.size}, expected {self.n_params}"
            )


def as_sparse(vector: np.ndarray | SparseVector) -> SparseVector:
    if isinstance(vector, SparseVector):
        return vector
    return SparseVector.dense(vector)


class SelectiveGossip(GossipAlgorithm):
    """gossip-dssgd: send the selected Δ̂ to the out-neighbours, add theirs with weights W[i, j]."""

    name: ClassVar[str] = "gossip-dssgd"

    def __init__(
        self,
        peer_id: int,
        n_params: int,
        settings: AlgorithmSettings,
        weights: Mapping[int, float],
        self_weight: float | None = None,
    ):
        super().__init__(peer_id, n_params, settings, weights, self_weight)
        self.max_hops = 1
        self._after: np.ndarray | None = None
        self._own = SparseVector.empty(self.n_params)
        self._closed = -1  # last round mixed: later copies of it are stale
        # round -> origin -> (selection, unnormalised weight); (origin, round) -> fewest hops seen
        self._inbox: dict[int, dict[int, tuple[SparseVector, float]]] = {}
        self._hops_seen: dict[tuple[int, int], int] = {}

    @property
    def update_epsilon(self) -> float:
        return update_epsilon(self.settings)

    def outgoing(
        self,
        before: np.ndarray,
        after: np.ndarray,
        round: int,
        rng: np.random.Generator,
        *,
        ledger: PrivacyLedger | None = None,
    ) -> list[GossipMessage]:
        self.round = int(round)
        self._after = np.array(after, dtype=np.float32, copy=True)
        delta = self._after - np.asarray(before, dtype=np.float32)
        self._own = as_sparse(select_update(delta, self.settings, rng, ledger=ledger, label=round))
        return [GossipMessage(self.peer_id, self.round, self._own)]

    def incoming(self, sender: int, message: GossipMessage) -> list[GossipMessage]:
        """Keep the fewest-hop copy of each (origin, round); forward while hop < max_hops."""
        if (
            message.origin == self.peer_id
            or message.round <= self._closed
            or sender not in self.weights
        ):
            return []
        self._check(sender, message)
        key = (message.origin, message.round)
        if self._hops_seen.get(key, self.max_hops + 1) <= message.hop:
            return []
        self._hops_seen[key] = message.hop
        weight = message.weight * self.weights[sender]
        self._inbox.setdefault(message.round, {})[message.origin] = (message.vector, weight)
        if message.hop < self.max_hops:
            return [replace(message, hop=message.hop + 1, weight=weight)]
        return []

    def mix(self) -> np.ndarray:
        if self._after is None:
            raise RuntimeError("mix() before outgoing(): no local step to mix into")
        box = self._inbox.pop(self.round, {})
        received = {origin: box[origin] for origin in sorted(box)}  # arrival order never changes a sum
        norm = self._normaliser(set(received))
        out = self._after.copy()
        own_mass = 0.0
        if self.settings.robust != "mean" and received:
            own_mass = sum(weight for _, weight in received.values()) / norm
            out += np.float32(own_mass) * self._robust_combination([v for v, _ in received.values()])
            received = {}
        for vector, weight in received.values():
            vector.add_to(out, weight / norm * self._clip_factor(vector))
            own_mass += weight / norm
        if self.settings.gossip_mix == "difference" and own_mass:
            self._own.add_to(out, -own_mass)
        self._close_round()
        return out

    def _robust_combination(self, vectors: list[SparseVector]) -> np.ndarray:
        """Robust ring mixing: the neighbours' selections and this peer's own, combined by the
        ``robust`` rule (a peer's own update is the honest reference a lone attacker is outvoted
        by). Krum needs n > 2f + 2 updates; with fewer (a ring has 2 neighbours) the median is used."""
        dense = [self._own.to_dense(), *(v.to_dense() for v in vectors)]
        try:
            return aggregate_with(self.settings, dense, None)
        except ConfigError:
            return aggregate(dense, rule="median", clip_norm=self.settings.clip_norm)

    def _clip_factor(self, vector: SparseVector) -> float:
        """Robust mixing: a neighbour's update counts with L2 norm at most ``clip_norm`` (a
        poisoned, scaled-up update is cut down to an honest size before it is mixed in)."""
        limit = self.settings.clip_norm
        if limit is None:
            return 1.0
        size = float(np.linalg.norm(vector.values))
        return 1.0 if size <= limit else limit / size

    def _close_round(self) -> None:
        self._closed = self.round
        self._inbox = {r: box for r, box in self._inbox.items() if r > self.round}
        self._hops_seen = {k: h for k, h in self._hops_seen.items() if k[1] > self.round}


class RelayGossip(SelectiveGossip):
    """gossip-dssgd plus forwarding: selections travel up to ``hops`` hops (see module docstring)."""

    name: ClassVar[str] = "relay"

    def __init__(
        self,
        peer_id: int,
        n_params: int,
        settings: AlgorithmSettings,
        weights: Mapping[int, float],
        self_weight: float | None = None,
    ):
        super().__init__(peer_id, n_params, settings, weights, self_weight)
        self.max_hops = settings.hops


def simulate_round(
    algorithms: Mapping[int, GossipAlgorithm],
    out_neighbours: Mapping[int, Sequence[int]],
    before: Mapping[int, np.ndarray],
    after: Mapping[int, np.ndarray],
    round: int,
    rng: np.random.Generator,
) -> dict[int, np.ndarray]:
    """Run one round of every peer in memory; the new parameters per peer.

    Messages are delivered breadth-first (so relayed copies arrive in hop order). Peers missing
    from ``algorithms`` are down: they send nothing and receive nothing.
    """
    outbox = {i: alg.outgoing(before[i], after[i], round, rng) for i, alg in algorithms.items()}
    params: dict[int, np.ndarray] = {}
    steps = max(alg.steps for alg in algorithms.values())
    for step in range(steps):
        if step:
            outbox = {i: alg.next_outgoing(rng) for i, alg in algorithms.items()}
        queue = deque((i, msg) for i, msgs in outbox.items() for msg in msgs)
        while queue:
            sender, msg = queue.popleft()
            for j in out_neighbours.get(sender, ()):
                if j in algorithms:
                    queue.extend((j, fwd) for fwd in algorithms[j].incoming(sender, msg))
        params = {i: alg.mix() for i, alg in algorithms.items()}
    return params
