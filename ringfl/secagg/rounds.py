"""Sans-IO secure-aggregation rounds: one :class:`ClientRound` per peer, one :class:`ServerRound`
at the coordinator, exchanging the 11xx messages of :mod:`ringfl.protocol.secagg_messages`.

The protocol is Bonawitz et al. (CCS 2017), semi-honest server, with SecAgg+'s sparse graph
(Bell et al. 2020) as an option:

1. keys: each peer sends fresh X25519 public keys ``c_pk`` (share encryption) and ``s_pk``
   (pairwise masks) and a commitment to its self-mask seed ``b``;
2. roster: the server fixes who takes part, the graph (all pairs, or a random k-regular graph)
   and sends each peer its neighbourhood's keys, Shamir x-coordinates and the threshold ``t``;
3. shares: each peer splits ``b`` and its mask private key ``s_sk`` t-of-(k+1) and seals one pair
   of shares per neighbour with AES-GCM under an X25519+HKDF key; the server relays them;
4. masked input: ``y_u = q_u + PRG(b_u) + Σ_v ±PRG(s_uv)`` over the neighbours whose shares it
   received (+ if u sorts before v, − after), all in Z_2^32;
5. unmasking: for neighbours whose masked input arrived a peer reveals its share of ``b``, for
   those that dropped after sharing its share of ``s_sk`` (never both for one peer). The server
   rebuilds each survivor's ``b`` (checked against its commitment) and each dropped peer's
   ``s_sk`` (checked against ``s_pk``) and removes all masks: it learns Σ q_u and nothing else.

Problems caused by a peer (a missing or malformed share, too few survivors) raise
:class:`SecAggAbort` with one line naming them: the coordinator aborts that round only.
"""

from __future__ import annotations

from dataclasses import dataclass

import networkx as nx
import numpy as np

from ringfl.errors import ConfigError, RingflError
from ringfl.protocol.secagg_messages import (
    SECAGG_KEY_SIZE,
    SECAGG_SEALED_SIZE,
    SECAGG_SHARE_SIZE,
    SecAggInbox,
    SecAggKeys,
    SecAggMasked,
    SecAggRoster,
    SecAggShares,
    SecAggUnmask,
    SecAggUnmaskRequest,
)
from ringfl.secagg import crypto

assert crypto.SHARE_SIZE == SECAGG_SHARE_SIZE and crypto.KEY_SIZE == SECAGG_KEY_SIZE
assert SECAGG_SEALED_SIZE == 2 * crypto.SHARE_SIZE + crypto.GCM_TAG


class SecAggAbort(RingflError):
    """This secure-aggregation round cannot complete (the message says why); the run goes on."""


@dataclass(frozen=True)
class SecAggSettings:
    """How secure aggregation runs (``RunConfig.secagg``; all peers learn it at round start).

    max_dropout: fraction of a neighbourhood that may drop after sharing; t = m − floor(f·m) of
      the m = k+1 shares recover a secret. Must be < 0.5 (t > m/2, so the server cannot obtain
      both secrets of one peer by telling two halves different stories).
    degree: 0 = all pairs (SecAgg); k > 0 = SecAgg+'s random k-regular graph (use ~ 2·log2 n).
    bound: coordinates are clipped to [-bound, bound] before quantisation.
    noise_multiplier, clip_norm: distributed DP (:mod:`ringfl.secagg.dp`): each peer clips its
      update to L2 norm C and adds N(0, σ²C²/t), so the sum over >= t peers carries N(0, σ²C²).
    """

    max_dropout: float = 0.3
    degree: int = 0
    bound: float = 1.0
    noise_multiplier: float = 0.0
    clip_norm: float | None = None
    delta: float = 1e-5

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_dropout < 0.5:
            raise ConfigError(f"secagg max_dropout must be in [0, 0.5), got {self.max_dropout}")
        if self.degree < 0:
            raise ConfigError(f"secagg degree must be >= 0, got {self.degree}")
        if self.noise_multiplier < 0 or (self.noise_multiplier > 0 and not self.clip_norm):
            raise ConfigError("secagg noise_multiplier must be >= 0 and needs clip_norm")
        if self.clip_norm is not None and self.clip_norm <= 0:
            raise ConfigError(f"secagg clip_norm must be > 0, got {self.clip_norm}")

    def threshold(self, holders: int) -> int:
        return max(1, holders - int(self.max_dropout * holders))

    def to_dict(self) -> dict:
        return {"max_dropout": self.max_dropout, "degree": self.degree, "bound": self.bound,
                "noise_multiplier": self.noise_multiplier, "clip_norm": self.clip_norm,
                "delta": self.delta}


def _context(kind: str, run_id: str, round_: int, *peers: str) -> bytes:
    """Domain separation for every derived key: what it is for, which run, round and peers."""
    return "\x00".join(("ringfl secagg", kind, run_id, str(round_), *peers)).encode()


def _sign(me: str, other: str) -> int:
    return 1 if me < other else -1


def _pair_mask(seed: bytes, count: int, sign: int) -> np.ndarray:
    words = crypto.mask_words(seed, count)
    return words if sign > 0 else (np.uint32(0) - words)


def _blobs(array: np.ndarray, size: int) -> list[bytes]:
    raw = np.asarray(array, np.uint8).tobytes()
    return [raw[i : i + size] for i in range(0, len(raw), size)]


class ClientRound:
    """A peer's side of one round: call the methods in order, send what they return."""

    def __init__(self, peer_id: str, round_: int, run_id: str, settings: SecAggSettings,
                 num_params: int) -> None:
        self.peer_id, self.round, self.run_id = peer_id, round_, run_id
        self.settings, self.num_params = settings, num_params
        self._c = crypto.new_private_key()
        self._s = crypto.new_private_key()
        self._b = crypto.random_seed()
        self._inbox: dict[str, bytes] = {}
        self._own_b_share = b""

    def keys(self) -> SecAggKeys:
        return SecAggKeys(round=self.round, c_pk=_u8(crypto.public_bytes(self._c)),
                          s_pk=_u8(crypto.public_bytes(self._s)), b_commit=_u8(crypto.commitment(self._b)))

    def shares(self, roster: SecAggRoster) -> SecAggShares:
        """Check the roster, split ``b`` and ``s_sk`` and seal one pair of shares per neighbour."""
        peers = list(roster.peers)
        if self.peer_id not in peers:
            raise SecAggAbort(f"round {self.round}: the roster does not list this peer")
        keys = _blobs(roster.keys, 2 * crypto.KEY_SIZE)
        mine = keys[peers.index(self.peer_id)]
        if mine != crypto.public_bytes(self._c) + crypto.public_bytes(self._s):
            raise SecAggAbort(f"round {self.round}: the roster carries other keys for this peer")
        points = [int(x) for x in roster.points]
        if len(set(points)) != len(points):
            raise SecAggAbort(f"round {self.round}: the roster repeats a Shamir x-coordinate")
        if roster.threshold <= len(peers) // 2:
            raise SecAggAbort(f"round {self.round}: threshold {roster.threshold} of {len(peers)} is "
                              "not a majority; refusing to share")
        self._peers = {p: (x, k[: crypto.KEY_SIZE], k[crypto.KEY_SIZE :])
                       for p, x, k in zip(peers, points, keys)}
        self._threshold = roster.threshold
        b_shares = crypto.split(self._b, points, roster.threshold)
        s_shares = crypto.split(crypto.private_bytes(self._s), points, roster.threshold)
        self._own_b_share = b_shares[self._peers[self.peer_id][0]]
        recipients, sealed = [], []
        for peer, (x, c_pk, _) in self._peers.items():
            if peer == self.peer_id:
                continue
            ctx = _context("share", self.run_id, self.round, self.peer_id, peer)
            key = crypto.agree(self._c, c_pk, ctx)
            recipients.append(peer)
            sealed.append(crypto.seal(key, b_shares[x] + s_shares[x], ctx))
        return SecAggShares(round=self.round, recipients=tuple(recipients), sealed=_u8(b"".join(sealed)))

    def masked(self, inbox: SecAggInbox, quantized: np.ndarray, num_samples: int = 0) -> SecAggMasked:
        """``quantized`` (ring words) masked by ``b`` and the pairwise masks of the inbox's senders."""
        senders = list(inbox.senders)
        unknown = [s for s in senders if s not in self._peers or s == self.peer_id]
        if unknown:
            raise SecAggAbort(f"round {self.round}: inbox holds shares from non-neighbours {unknown}")
        if len(senders) + 1 < self._threshold:
            raise SecAggAbort(f"round {self.round}: only {len(senders)} neighbours shared, "
                              f"{self._threshold - 1} needed")
        if quantized.dtype != np.uint32 or quantized.size != self.num_params:
            raise ValueError(f"masked input must be {self.num_params} uint32 words")
        self._inbox = dict(zip(senders, _blobs(inbox.sealed, SECAGG_SEALED_SIZE)))
        y = quantized + crypto.mask_words(self._b, self.num_params)
        for peer in senders:
            _, _, s_pk = self._peers[peer]
            seed = crypto.agree(self._s, s_pk, _pair_context(self.run_id, self.round, self.peer_id, peer))
            y += _pair_mask(seed, self.num_params, _sign(self.peer_id, peer))
        return SecAggMasked(round=self.round, masked=y, num_samples=num_samples)

    def unmask(self, request: SecAggUnmaskRequest) -> SecAggUnmask:
        """Reveal the b-share of each survivor and the s-share of each dropped peer; shares that
        fail to decrypt (a malformed ciphertext) are left out, for the server to notice."""
        survivors, dropped = set(request.survivors), set(request.dropped)
        if survivors & dropped or not (survivors | dropped) <= set(self._inbox) | {self.peer_id}:
            raise SecAggAbort(f"round {self.round}: the unmask request names peers outside the inbox "
                              "or asks for both secrets of one peer")
        if len(survivors | {self.peer_id}) < self._threshold:
            raise SecAggAbort(f"round {self.round}: only {len(survivors)} survivors, below the threshold")
        peers, shares = [], []
        if self.peer_id in survivors:
            peers.append(self.peer_id)
            shares.append(self._own_b_share)
        for peer in sorted((survivors | dropped) - {self.peer_id}):
            ctx = _context("share", self.run_id, self.round, peer, self.peer_id)
            try:
                key = crypto.agree(self._c, self._peers[peer][1], ctx)
                plain = crypto.open_sealed(key, self._inbox[peer], ctx)
            except crypto.ShareError:
                continue
            half = plain[: crypto.SHARE_SIZE] if peer in survivors else plain[crypto.SHARE_SIZE :]
            peers.append(peer)
            shares.append(half)
        return SecAggUnmask(round=self.round, peers=tuple(peers), shares=_u8(b"".join(shares)))


def _pair_context(run_id: str, round_: int, a: str, b: str) -> bytes:
    return _context("mask", run_id, round_, *sorted((a, b)))


def _u8(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype=np.uint8)


@dataclass
class _Member:
    keys: SecAggKeys
    x: int = 0
    neighbours: tuple[str, ...] = ()
    masked: np.ndarray | None = None


class ServerRound:
    """The coordinator's side of one round: it sees keys, ciphertexts and masked vectors only.

    Feed what arrives (``add_*``), then call the next phase's builder with whoever answered.
    ``result()`` gives the sum of the survivors' ring inputs, or raises :class:`SecAggAbort`.
    """

    def __init__(self, round_: int, run_id: str, settings: SecAggSettings, num_params: int,
                 seed: int = 0) -> None:
        self.round, self.run_id, self.settings, self.num_params = round_, run_id, settings, num_params
        self.seed = seed
        self.members: dict[str, _Member] = {}
        self.sharers: dict[str, dict[str, bytes]] = {}  # sender -> recipient -> sealed
        self.requests: dict[str, SecAggUnmaskRequest] = {}
        self.b_shares: dict[str, dict[int, bytes]] = {}
        self.s_shares: dict[str, dict[int, bytes]] = {}
        self.threshold = 0
        self.phase = "keys"

    def abort(self, why: str) -> SecAggAbort:
        self.phase = "aborted"
        return SecAggAbort(f"secure aggregation round {self.round} aborted: {why}")

    # --- 1. keys -> rosters ----------------------------------------------------------------------

    def add_keys(self, peer: str, keys: SecAggKeys) -> bool:
        if self.phase != "keys" or peer in self.members:
            return False
        self.members[peer] = _Member(keys)
        return True

    def rosters(self) -> dict[str, SecAggRoster]:
        peers = sorted(self.members)
        graph = self._graph(peers)
        holders = min(graph.degree(p) for p in peers) + 1 if peers else 0
        self.threshold = self.settings.threshold(holders)
        if len(peers) < 2 or self.threshold <= holders // 2:
            raise self.abort(f"{len(peers)} peers sent keys; secure aggregation needs at least 2 "
                             f"and a majority threshold (got {self.threshold} of {holders})")
        for x, peer in enumerate(peers, start=1):
            self.members[peer].x = x
            self.members[peer].neighbours = tuple(sorted(graph.neighbors(peer)))
        self.phase = "shares"
        return {peer: self._roster(peer) for peer in peers}

    def _graph(self, peers: list[str]) -> nx.Graph:
        n, k = len(peers), self.settings.degree
        if k == 0 or k >= n - 1:
            return nx.complete_graph(peers)
        k += (k * n) % 2  # a k-regular graph needs k·n even
        rng = np.random.default_rng([self.seed, self.round])
        graph = nx.random_regular_graph(k, n, seed=int(rng.integers(2**31)))
        return nx.relabel_nodes(graph, dict(enumerate(peers)))

    def _roster(self, peer: str) -> SecAggRoster:
        hood = sorted((*self.members[peer].neighbours, peer))
        keys = b"".join(_raw(self.members[p].keys.c_pk) + _raw(self.members[p].keys.s_pk) for p in hood)
        return SecAggRoster(round=self.round, peers=tuple(hood), threshold=self.threshold,
                            points=np.array([self.members[p].x for p in hood], np.uint32), keys=_u8(keys))

    # --- 2. shares -> inboxes --------------------------------------------------------------------

    def add_shares(self, peer: str, shares: SecAggShares) -> bool:
        """Keep a peer's sealed shares; a share missing for a neighbour aborts the round."""
        if self.phase != "shares" or peer not in self.members or peer in self.sharers:
            return False
        expected = self.members[peer].neighbours
        if tuple(sorted(shares.recipients)) != expected:
            missing = sorted(set(expected) - set(shares.recipients))
            extra = sorted(set(shares.recipients) - set(expected))
            raise self.abort(f"{peer} sent shares for the wrong peers (missing {missing}, extra {extra})")
        self.sharers[peer] = dict(zip(shares.recipients, _blobs(shares.sealed, SECAGG_SEALED_SIZE)))
        return True

    def inboxes(self) -> dict[str, SecAggInbox]:
        for peer in self.sharers:
            holders = [p for p in self.members[peer].neighbours if p in self.sharers] + [peer]
            if len(holders) < self.threshold:
                raise self.abort(f"only {len(holders)} of {peer}'s share holders are left, "
                                 f"{self.threshold} needed")
        self.phase = "masked"
        return {peer: self._inbox(peer) for peer in self.sharers}

    def _inbox(self, peer: str) -> SecAggInbox:
        senders = [p for p in self.members[peer].neighbours if p in self.sharers]
        return SecAggInbox(round=self.round, senders=tuple(senders),
                           sealed=_u8(b"".join(self.sharers[p][peer] for p in senders)))

    # --- 3. masked inputs -> unmask requests -----------------------------------------------------

    def add_masked(self, peer: str, masked: SecAggMasked) -> bool:
        if self.phase != "masked" or peer not in self.sharers or self.members[peer].masked is not None:
            return False
        if masked.masked.size != self.num_params:
            raise self.abort(f"{peer}'s masked input has {masked.masked.size} words, not {self.num_params}")
        self.members[peer].masked = masked.masked
        return True

    @property
    def survivors(self) -> list[str]:
        return sorted(p for p in self.sharers if self.members[p].masked is not None)

    def unmask_requests(self) -> dict[str, SecAggUnmaskRequest]:
        survivors = set(self.survivors)
        if len(survivors) < self.threshold:
            raise self.abort(f"only {len(survivors)} masked inputs arrived, {self.threshold} needed")
        for peer in sorted(self.sharers):  # a sparse graph can starve one neighbourhood
            left = len(survivors & {*self.members[peer].neighbours, peer})
            if left < self.threshold:
                raise self.abort(f"only {left} of {peer}'s share holders sent masked inputs, "
                                 f"{self.threshold} needed")
        for peer in sorted(survivors):
            senders = [p for p in self.members[peer].neighbours if p in self.sharers]
            self.requests[peer] = SecAggUnmaskRequest(
                round=self.round, survivors=tuple(p for p in [*senders, peer] if p in survivors),
                dropped=tuple(p for p in senders if p not in survivors))
        self.phase = "unmask"
        return dict(self.requests)

    # --- 4. unmasking shares -> the sum ----------------------------------------------------------

    def add_unmask(self, peer: str, unmask: SecAggUnmask) -> bool:
        request = self.requests.get(peer)
        if self.phase != "unmask" or request is None:
            return False
        x = self.members[peer].x
        for owner, share in zip(unmask.peers, _blobs(unmask.shares, SECAGG_SHARE_SIZE)):
            if owner in request.survivors:
                self.b_shares.setdefault(owner, {})[x] = share
            elif owner in request.dropped:
                self.s_shares.setdefault(owner, {})[x] = share
            else:
                raise self.abort(f"{peer} revealed a share of {owner}, which it was not asked for")
        del self.requests[peer]
        return True

    def result(self) -> tuple[np.ndarray, list[str]]:
        """Σ of the survivors' quantised inputs (uint32 words) and who they are. May run on a
        worker thread: set ``phase = "result"`` first, so nothing is added meanwhile."""
        self.phase = "result"
        survivors = self.survivors
        total = np.zeros(self.num_params, np.uint32)
        for peer in survivors:
            total += self.members[peer].masked
            b = self._recover(peer, self.b_shares, "self-mask seed")
            if crypto.commitment(b) != _raw(self.members[peer].keys.b_commit):
                raise self.abort(f"the shares of {peer}'s self-mask seed do not match its commitment "
                                 "(a share is malformed)")
            total -= crypto.mask_words(b, self.num_params)
        for peer in sorted(set(self.sharers) - set(survivors)):
            s_sk = self._recover(peer, self.s_shares, "mask key")
            try:
                key = crypto.private_from_bytes(s_sk)
            except ValueError:
                key = None
            if key is None or crypto.public_bytes(key) != _raw(self.members[peer].keys.s_pk):
                raise self.abort(f"the shares of {peer}'s mask key do not match its public key "
                                 "(a share is malformed)")
            for other in self.members[peer].neighbours:
                if other in survivors:  # ``other`` added ±PRG(s_other,peer): take it out
                    seed = crypto.agree(key, _raw(self.members[other].keys.s_pk),
                                        _pair_context(self.run_id, self.round, peer, other))
                    total -= _pair_mask(seed, self.num_params, _sign(other, peer))
        self.phase = "done"
        return total, survivors

    def _recover(self, peer: str, table: dict[str, dict[int, bytes]], what: str) -> bytes:
        shares = table.get(peer, {})
        if len(shares) < self.threshold:
            raise self.abort(f"{len(shares)} of the {self.threshold} shares needed to recover {peer}'s "
                             f"{what} arrived")
        chosen = dict(sorted(shares.items())[: self.threshold])
        try:
            return crypto.combine(chosen)
        except crypto.ShareError as exc:
            raise self.abort(f"cannot recover {peer}'s {what}: {exc}") from None


def _raw(array: np.ndarray) -> bytes:
    return np.asarray(array, np.uint8).tobytes()

