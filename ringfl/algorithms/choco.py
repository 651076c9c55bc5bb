"""CHOCO-SGD (Koloskova et al., 2019): compressed gossip with error feedback.

Every peer keeps public copies x̂ of itself and of each in-neighbour; all peers holding a copy of
x̂_j update it with the same messages, so the copies agree. Per exchange (``choco_steps`` of them
per round, after the local epoch)::

    q_i = top_k(x_i − x̂_i)                 # θu of the coordinates, by magnitude
    send q_i;  x̂_i += q_i;  on receipt of q_j: x̂_j += q_j
    x_i += γc · Σ_j w_ij (x̂_j − x̂_i)       # γc = choco_gamma

What a peer has not sent yet stays in x_i − x̂_i and goes out in later exchanges (the error
feedback plain top-k gossip lacks). The reference order "mix, compress, send, then SGD" is the
same sequence started at a different point.

Delivery: a q_j is folded into x̂_j whenever it arrives, even after that exchange was mixed, so a
late message never desynchronises the copies (duplicates by (sender, round, step) are ignored). A
neighbour whose q did not arrive for the current exchange is left out of that mix, its weight
renormalised away. A lost q would leave the copies apart for good, so whenever a sender cannot be
sure a neighbour's copy matches (a new or re-opened link, a send that failed, state rebuilt after
re-linking) it sends that neighbour a :meth:`snapshot` instead: the whole x̂_i after this exchange's
q, which the receiver adopts; q's from before it are then ignored.

``initial``: pass the common starting vector when every peer starts from the same one (same init
seed) so the public copies start there instead of at 0 and the first exchanges do not have to
ship the whole model. Never pass it if peers may start from different vectors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ringfl.algorithms.base import AlgorithmSettings, selection_count
from ringfl.algorithms.gossip import GossipAlgorithm, GossipMessage
from ringfl.algorithms.selection import top_k
from ringfl.errors import ConfigError
from ringfl.vectors import SparseVector

if TYPE_CHECKING:
    from ringfl.privacy.ledger import PrivacyLedger


class ChocoGossip(GossipAlgorithm):
    """One peer's CHOCO state: its model x and the public copies x̂ of itself and its neighbours."""

    name: ClassVar[str] = "choco"
    keeps_copies: ClassVar[bool] = True

    def __init__(
        self,
        peer_id: int,
        n_params: int,
        settings: AlgorithmSettings,
        weights: Mapping[int, float],
        self_weight: float | None = None,
        initial: np.ndarray | None = None,
    ):
        super().__init__(peer_id, n_params, settings, weights, self_weight)
        start = (
            np.zeros(self.n_params, np.float32)
            if initial is None
            else np.asarray(initial, np.float32)
        )
        if start.shape != (self.n_params,):
            raise ConfigError(
                f"peer {peer_id}: initial vector has shape {start.shape}, expected ({n_params},)"
            )
        self.public = start.copy()
        self.neighbour_public = {j: start.copy() for j in self.weights}
        self.x = start.copy()
        self.step = 0
        self.k = selection_count(self.n_params, settings.theta_u)
        self._seen: set[tuple[int, int, int]] = set()
        self._delivered: dict[tuple[int, int], set[int]] = {}
        self._synced_at: dict[int, tuple[int, int]] = {}  # sender -> (round, step) of its last snapshot

    @property
    def steps(self) -> int:
        return self.settings.choco_steps

    def outgoing(
        self,
        before: np.ndarray,
        after: np.ndarray,
        round: int,
        rng: np.random.Generator,
        *,
        ledger: PrivacyLedger | None = None,
    ) -> list[GossipMessage]:
        """Adopt ``after`` (the local SGD result) as x and send the first compressed difference."""
        self.round, self.step = int(round), 0
        self.x = np.array(after, dtype=np.float32, copy=True)
        self._seen = {key for key in self._seen if key[1] >= self.round - 1}
        self._delivered = {key: v for key, v in self._delivered.items() if key[0] >= self.round}
        return self._compress(rng)

    def next_outgoing(self, rng: np.random.Generator) -> list[GossipMessage]:
        if self.step + 1 >= self.steps:
            return []
        self.step += 1
        return self._compress(rng)

    def _compress(self, rng: np.random.Generator) -> list[GossipMessage]:
        q = self._compressor(self.x - self.public, rng)
        q.add_to(self.public)
        self._delivered.setdefault((self.round, self.step), set())
        return [GossipMessage(self.peer_id, self.round, q, step=self.step)]

    def _compressor(self, difference: np.ndarray, rng: np.random.Generator) -> SparseVector:
        """top-k by magnitude, or k coordinates drawn uniformly (``compression: randomk``)."""
        if self.settings.compression == "randomk":
            idx = np.sort(rng.choice(self.n_params, size=self.k, replace=False)).astype(np.uint32)
            return SparseVector(self.n_params, idx, difference[idx])
        return top_k(difference, self.k, rng)

    def incoming(self, sender: int, message: GossipMessage) -> list[GossipMessage]:
        """Fold q_sender into the sender's public copy (at most once per (sender, round, step)).

        A snapshot replaces the copy, and starts one for a sender that is not a neighbour yet:
        the two ends of a new link switch to it at slightly different times, and the copy must be
        right once it is mixed. Anything older than the last snapshot is already in it."""
        if message.origin != sender or (sender not in self.neighbour_public and not message.snapshot):
            return []
        self._check(sender, message)
        key, at = (sender, message.round, message.step), (message.round, message.step)
        if key in self._seen or at <= self._synced_at.get(sender, (-1, -1)):
            return []  # a duplicate, or contained in a snapshot already adopted
        if message.snapshot:
            self.neighbour_public[sender] = message.vector.to_dense()
            self._synced_at[sender] = at
        else:
            message.vector.add_to(self.neighbour_public[sender])
        self._seen.add(key)
        self._delivered.setdefault((message.round, message.step), set()).add(sender)
        return []

    def snapshot(self) -> GossipMessage:
        """x̂_i as it stands after this exchange's q (so it replaces that q for the receiver)."""
        vector = SparseVector(self.n_params, np.arange(self.n_params, dtype=np.uint32), self.public.copy())
        return GossipMessage(self.peer_id, self.round, vector, step=self.step, snapshot=True)

    def mix(self) -> np.ndarray:
        """x += γc Σ_j w_ij (x̂_j − x̂_i) over the neighbours that delivered this exchange."""
        present = self._delivered.get((self.round, self.step), set()) & self.weights.keys()
        norm = self._normaliser(present)
        pull = np.zeros(self.n_params, dtype=np.float32)
        for j in sorted(present):  # a fixed summation order: runs repeat bit for bit
            pull += np.float32(self.weights[j] / norm) * (self.neighbour_public[j] - self.public)
        self.x += np.float32(self.settings.choco_gamma) * pull
        return self.x.copy()

    def state(self) -> dict[str, np.ndarray]:
        out = {"choco_public": self.public.copy(), "choco_x": self.x.copy()}
        out.update({f"choco_public_{j}": v.copy() for j, v in self.neighbour_public.items()})
        return out

    def load_state(self, state: Mapping[str, np.ndarray]) -> None:
        def load(key: str) -> np.ndarray:
            value = np.asarray(state[key], dtype=np.float32)
            if value.shape != (self.n_params,):
                raise ConfigError(f"checkpoint '{key}' has the wrong shape for this model")
            return value.copy()

        self.public = load("choco_public")
        self.x = load("choco_x")
        for j in self.weights:  # a new neighbour without a copy keeps the initial one until its snapshot
            if f"choco_public_{j}" in state:  # (a snapshot may have started one before the switch)
                self.neighbour_public[j] = load(f"choco_public_{j}")

    def adopt(self, old: GossipAlgorithm) -> None:
        """Continue from ``old`` after re-linking, including which messages it already folded in."""
        super().adopt(old)
        if isinstance(old, ChocoGossip):
            self._seen, self._synced_at = set(old._seen), dict(old._synced_at)
