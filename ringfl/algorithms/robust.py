"""Aggregation rules over a round's dense client vectors (FedAvg deltas, FedSGD gradients).

``mean`` is the only rule that uses weights (the capped sample counts): the robust rules treat
every client equally, because a Byzantine client can report any sample count it likes.

* ``median``: coordinate-wise median.
* ``trimmed-mean``: per coordinate, drop the ``trim`` largest and ``trim`` smallest, average the rest
  (needs n > 2·trim).
* ``krum``: the vector whose n − f − 2 nearest neighbours are closest (squared distances);
  ``multi-krum`` averages the m best-scored (default m = n − f). Both need n > 2f + 2.
* :func:`clip_norms` rescales each vector to L2 norm <= ``clip_norm`` before any rule, bounding
  how far one client can move the model.

Not enough clients for the rule's guarantee raises :class:`~ringfl.errors.ConfigError`: the fix is
fewer assumed attackers (``byzantine_f`` / ``trim``) or more peers per round.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ringfl.algorithms.base import ROBUST_RULES, AlgorithmSettings
from ringfl.errors import ConfigError


def _stack(vectors: Sequence[np.ndarray]) -> np.ndarray:
    if len(vectors) == 0:
        raise ValueError("cannot aggregate zero vectors")
    return np.stack([np.asarray(v, dtype=np.float32) for v in vectors])


def clip_norms(vectors: Sequence[np.ndarray], max_norm: float) -> list[np.ndarray]:
    """Each vector scaled down (never up) to L2 norm <= ``max_norm``."""
    out = []
    for v in vectors:
        v = np.asarray(v, dtype=np.float32)
        norm = float(np.linalg.norm(v.astype(np.float64)))
        out.append(v * np.float32(max_norm / norm) if norm > max_norm else v)
    return out


def weighted_mean(
    vectors: Sequence[np.ndarray], weights: Sequence[float] | None = None
) -> np.ndarray:
    stack = _stack(vectors)
    if weights is None:
        return stack.mean(axis=0, dtype=np.float64).astype(np.float32)
    w = np.asarray(weights, dtype=np.float64)
    if w.shape != (stack.shape[0],) or (w < 0).any() or w.sum() <= 0:
        raise ValueError("weights must be one non-negative number per vector, not all zero")
    return (w / w.sum()) @ stack.astype(np.float64)


def coordinate_median(vectors: Sequence[np.ndarray]) -> np.ndarray:
    return np.median(_stack(vectors), axis=0).astype(np.float32)


def trimmed_mean(vectors: Sequence[np.ndarray], trim: int) -> np.ndarray:
    stack = _stack(vectors)
    n = stack.shape[0]
    if n <= 2 * trim:
        raise ConfigError(
            f"trimmed-mean with trim={trim} needs more than {2 * trim} updates, got {n}"
        )
    kept = np.sort(stack, axis=0)[trim : n - trim]
    return kept.mean(axis=0, dtype=np.float64).astype(np.float32)


def krum_scores(vectors: Sequence[np.ndarray], f: int) -> np.ndarray:
    """Krum score per vector: sum of squared distances to its n − f − 2 nearest others."""
    stack = _stack(vectors).astype(np.float64)
    n = stack.shape[0]
    if n <= 2 * f + 2:
        raise ConfigError(f"krum with byzantine_f={f} needs more than {2 * f + 2} updates, got {n}")
    sq = np.einsum("ij,ij->i", stack, stack)
    dist = np.maximum(sq[:, None] + sq[None, :] - 2.0 * stack @ stack.T, 0.0)
    np.fill_diagonal(dist, np.inf)
    nearest = np.sort(dist, axis=1)[:, : n - f - 2]
    return nearest.sum(axis=1)


def multi_krum(vectors: Sequence[np.ndarray], f: int, m: int | None = None) -> np.ndarray:
    """Average of the m best Krum-scored vectors (m = 1 is Krum; default m = n − f)."""
    scores = krum_scores(vectors, f)
    n = scores.size
    m = n - f if m is None else min(m, n)
    chosen = np.argsort(scores, kind="stable")[:m]
    return _stack([vectors[i] for i in chosen]).mean(axis=0, dtype=np.float64).astype(np.float32)


def aggregate(
    vectors: Sequence[np.ndarray],
    weights: Sequence[float] | None = None,
    *,
    rule: str = "mean",
    trim: int = 1,
    f: int = 1,
    m: int | None = None,
    clip_norm: float | None = None,
) -> np.ndarray:
    """Combine a round's vectors with one of :data:`ROBUST_RULES` (after optional norm clipping)."""
    if clip_norm is not None:
        vectors = clip_norms(vectors, clip_norm)
    if rule == "mean":
        return weighted_mean(vectors, weights).astype(np.float32)
    if rule == "median":
        return coordinate_median(vectors)
    if rule == "trimmed-mean":
        return trimmed_mean(vectors, trim)
    if rule == "krum":
        return multi_krum(vectors, f, 1)
    if rule == "multi-krum":
        return multi_krum(vectors, f, m)
    raise ConfigError(f"unknown robust aggregation rule '{rule}'; valid: {', '.join(ROBUST_RULES)}")


def aggregate_with(
    settings: AlgorithmSettings, vectors: Sequence[np.ndarray], weights: Sequence[float] | None
) -> np.ndarray:
    """:func:`aggregate` configured by ``settings`` (robust, trim, byzantine_f, ...)."""
    return aggregate(
        vectors,
        weights,
        rule=settings.robust,
        trim=settings.trim,
        f=settings.byzantine_f,
        m=settings.multi_krum_m,
        clip_norm=settings.clip_norm,
    )
