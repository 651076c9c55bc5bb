"""Clipping and sparse selection of updates: the hot path of DSSGD, shared by every strategy.

All functions are vectorised (no per-parameter Python work). Selection is by **magnitude**
|Δ|, never by signed value: a large negative change matters as much as a large positive one.

Top-k and random-threshold selection are *not* differentially private on their own: which
coordinates are chosen, and their exact values, depend on the data. Only NumericSparse
(:mod:`ringfl.privacy.numeric_sparse`, enabled by ``epsilon``) gives a DP guarantee.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ringfl.algorithms.base import AlgorithmSettings, require_finite, selection_count
from ringfl.privacy.numeric_sparse import numeric_sparse
from ringfl.vectors import SparseVector, Vector

if TYPE_CHECKING:
    from ringfl.privacy.ledger import PrivacyLedger

# Top-k first estimates the threshold from a sample, then partitions only the coordinates above
# it: 3-10x faster than partitioning everything, and exact (it falls back when the guess is off).
_SAMPLE = 4096
_MIN_FOR_SAMPLING = 32768


def clip(delta: np.ndarray, gamma: float | None) -> np.ndarray:
    """Every coordinate clipped to [-gamma, gamma] (float32); gamma=None returns a float32 view/copy."""
    delta = np.asarray(delta, dtype=np.float32)
    if gamma is None:
        return delta
    return np.clip(delta, -gamma, gamma)


def _sampled_candidates(
    scores: np.ndarray, k: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(candidate indices, their scores, the k-th largest score), or None when the guess failed.

    Guesses a threshold a little below the k-th largest from a random sample and keeps the
    coordinates at or above it (ascending indices): every coordinate >= the k-th largest is among
    them whenever at least k survive, so the caller finishes on ~k values instead of all n.
    """
    n = scores.size
    sample = scores[rng.integers(0, n, _SAMPLE)]
    q = min(1.0, k / n + 4.0 * np.sqrt(k / n / _SAMPLE) + 8.0 / _SAMPLE)
    pos = max(0, int(_SAMPLE * (1 - q)) - 1)
    guess = np.partition(sample, pos)[pos]
    candidates = np.flatnonzero(scores >= guess)
    if candidates.size < k:
        return None
    values = scores[candidates]
    kth = values.size - k
    if values.dtype == np.float32 and guess > 0:
        # All candidates are > 0 (no -0.0, no NaN): their bit patterns order like the floats,
        # and numpy partitions int32 ~1.5x faster than float32 (no NaN-aware comparisons).
        return candidates, values, float(np.partition(values.view(np.int32), kth)[kth:kth + 1].view(np.float32)[0])
    return candidates, values, float(np.partition(values, kth)[kth])


def _break_ties(
    ties: np.ndarray,
    need: int,
    rng: np.random.Generator | None,
    tie_rank: np.ndarray | None,
    positions: np.ndarray | None = None,
) -> np.ndarray:
    """``need`` of the (ascending) tied indices ``ties``; returned as entries of ``positions``
    (the same length as ``ties``, default ``ties`` itself). The rng draws depend only on how many
    ties there are, so choosing among positions picks the same ties as choosing among indices."""
    positions = ties if positions is None else positions
    if ties.size <= need:
        return positions
    if tie_rank is not None:
        return positions[np.argpartition(tie_rank[ties], need - 1)[:need]] if need else positions[:0]
    if rng is not None:
        return rng.choice(positions, size=need, replace=False)
    return positions[:need]


def top_k_indices(
    scores: np.ndarray,
    k: int,
    *,
    rng: np.random.Generator | None = None,
    tie_rank: np.ndarray | None = None,
) -> np.ndarray:
    """Sorted int64 indices of the k largest ``scores``.

    Ties at the threshold are broken by ``tie_rank`` (lowest rank first; deterministic), else at
    random with ``rng``, else by lowest index. Clipping makes ties common (every |Δ| >= gamma
    becomes gamma), and lowest-index tie-breaking would always favour the first layer.

    With ``rng`` on large inputs the k-th largest is found from a sample (see
    :func:`_sampled_candidates`) and the answer is assembled from the ~k candidates above the
    sampled guess, without further passes over all n scores. The result, and every draw from
    ``rng``, are the same as partitioning all n scores would give.
    """
    n = scores.size
    if k >= n:
        return np.arange(n, dtype=np.int64)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    top = scores.max()
    if np.count_nonzero(scores == top) >= k:  # common after clipping: the k-th largest is gamma
        thr = float(top)
    else:
        if rng is not None and n >= _MIN_FOR_SAMPLING and k < n // 2:
            found = _sampled_candidates(scores, k, rng)
            if found is not None:
                candidates, values, thr = found
                keep = values > thr
                need = k - int(np.count_nonzero(keep))
                tied = np.flatnonzero(values == thr)  # positions in candidates, ascending
                keep[_break_ties(candidates[tied], need, rng, tie_rank, positions=tied)] = True
                return candidates[keep]
        thr = float(np.partition(scores, n - k)[n - k])
    mask = scores > thr
    need = k - int(np.count_nonzero(mask))
    mask[_break_ties(np.flatnonzero(scores == thr), need, rng, tie_rank)] = True
    return np.flatnonzero(mask)


def top_k(vector: np.ndarray, k: int, rng: np.random.Generator | None = None) -> SparseVector:
    """The k coordinates of largest magnitude, as a SparseVector of their (signed) values.

    The index array is read-only, so the codec packs its bitmap once however many neighbours
    the selection is sent to (:meth:`SparseVector.bitmap` caches only for read-only indices).
    """
    vector = np.asarray(vector, dtype=np.float32)
    idx = top_k_indices(np.abs(vector), k, rng=rng)
    indices = idx.astype(np.uint32)
    indices.flags.writeable = False
    return SparseVector(int(vector.size), indices, vector[idx])


def random_threshold(
    vector: np.ndarray, k: int, tau: float, rng: np.random.Generator
) -> SparseVector:
    """Up to k coordinates drawn uniformly among those with |value| >= tau."""
    vector = np.asarray(vector, dtype=np.float32)
    eligible = np.flatnonzero(np.abs(vector) >= tau)
    if eligible.size > k:
        eligible = np.sort(rng.choice(eligible, size=k, replace=False))
    return SparseVector(int(vector.size), eligible.astype(np.uint32), vector[eligible])


def update_epsilon(settings: AlgorithmSettings) -> float:
    """ε one selective upload spends under ``settings`` (0 when DP is off)."""
    return 0.0 if settings.epsilon is None else float(settings.epsilon)


def select_update(
    delta: np.ndarray,
    settings: AlgorithmSettings,
    rng: np.random.Generator,
    *,
    ledger: PrivacyLedger | None = None,
    label: int | str | None = None,
) -> Vector:
    """DSSGD's upload from a local change Δ: clip to gamma, then select c = ceil(theta_u·|Δ|).

    With ``epsilon`` set, NumericSparse picks and noises the coordinates (charging ``ledger``
    first, if given). Without DP, selecting every coordinate returns the dense clipped Δ (cheaper
    on the wire than an all-indices SparseVector).
    """
    delta = require_finite(np.asarray(delta, dtype=np.float32))
    n = int(delta.size)
    c = selection_count(n, settings.theta_u)
    if settings.epsilon is not None:
        assert settings.gamma is not None  # enforced by AlgorithmSettings
        if ledger is not None:
            ledger.spend(settings.epsilon, label=label)
        return numeric_sparse(
            delta,
            epsilon=settings.epsilon,
            gamma=settings.gamma,
            tau=settings.tau,
            count=c,
            rng=rng,
        )
    clipped = clip(delta, settings.gamma)
    if settings.selection == "random-threshold":
        return random_threshold(clipped, c, settings.tau, rng)
    if c >= n:
        return clipped.copy()
    return top_k(clipped, c, rng)
