"""NumericSparse (the sparse vector technique) for DSSGD uploads, after Shokri & Shmatikov.

Per upload, with budget ε, clipping bound γ and at most c released coordinates::

    Δf = 2γ;  ε1 = 8ε/9 (selection);  ε2 = 2ε/9 (release);  σ(x) = 2·c·Δf / x
    ρ ~ Lap(σ(ε1))
    visit the coordinates in a uniformly random order; for each i:
        ν ~ Lap(2·σ(ε1))
        if |clip(Δi, γ)| + ν >= τ + ρ:
            release clip(clip(Δi, γ) + Lap(σ(ε2)), γ);  stop after c releases
            ρ ~ Lap(σ(ε1))                              # fresh threshold after every release

Clipping happens *before* any noise: noise calibrated to 2γ protects nothing otherwise.

The threshold redraw makes the loop sequential. Two exact samplers replace the per-coordinate
loop; both reorder independent random draws without changing the distribution of the output
(the tests compare them with the reference loop):

* **thinning** (the DP regime, where the noise dwarfs γ): the ν only matter through the pass
  events, which, given the threshold ρ in force, are independent Bernoulli(p_i) with
  p_i = P(ν >= τ + ρ − |clip Δi|). Every position is first a *candidate* with probability
  p_max(ρ) >= p_i (the largest |clip Δ|), so the gap to the next candidate is geometric, and a
  candidate passes with probability p_i / p_max. Candidate positions do not depend on which
  coordinate sits there, so the candidates' coordinates are a uniform sample without
  replacement. All of this is vectorised over the c thresholds at once; a rejected candidate
  (rare: p_i / p_max >= exp(−γ / (2σ(ε1))) = exp(−ε / 9c)) restarts the vector from there.
* **scan** (large ε, little noise): the visiting order and the ν of a block of positions are drawn
  at once, positions below every threshold still to come are dropped in numpy, and a tight
  Python scan over the survivors tracks the threshold in force.

``numeric_sparse`` picks thinning when it expects few rejections, else the scan.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ringfl.vectors import SparseVector

_EXTRA_VISITS = 1024  # slack added to every block of the visiting order
_PIECE = 4096  # scores converted to Python floats per scan call
_MAX_REJECTIONS = 64  # thinning is used when it expects at most this many restarts
METHODS = ("auto", "thinning", "scan")


@dataclass(frozen=True)
class NoiseScales:
    """The Laplace scales of one NumericSparse run (all derived from ε, γ and c)."""

    threshold: float  # ρ ~ Lap(σ(ε1))
    query: float  # ν ~ Lap(2σ(ε1))
    release: float  # released value noise ~ Lap(σ(ε2))


def noise_scales(epsilon: float, gamma: float, count: int) -> NoiseScales:
    """σ(ε1), 2σ(ε1) and σ(ε2) for sensitivity Δf = 2γ and c = ``count`` releases."""
    if not epsilon > 0 or not gamma > 0 or count < 1:
        raise ValueError("NumericSparse needs epsilon > 0, gamma > 0 and count >= 1")
    sensitivity = 2.0 * gamma
    eps1, eps2 = 8.0 * epsilon / 9.0, 2.0 * epsilon / 9.0

    def sigma(x: float) -> float:
        return 2.0 * count * sensitivity / x

    return NoiseScales(threshold=sigma(eps1), query=2.0 * sigma(eps1), release=sigma(eps2))


def laplace(rng: np.random.Generator, scale: float, size: int) -> np.ndarray:
    """Lap(0, scale) float64 draws: an exponential with a random sign (twice numpy's speed)."""
    out = rng.standard_exponential(size)
    signs = np.unpackbits(np.frombuffer(rng.bytes((size + 7) // 8), dtype=np.uint8), count=size)
    np.negative(out, out=out, where=signs.view(bool))
    out *= scale
    return out


def _scan(scores: list[float], thresholds: list[float], k: int, hits: bytearray, start: int) -> int:
    """Release, in visiting order, every position whose score beats the threshold in force.

    ``thresholds[k]`` is in force until the k-th release; a release at position ``start + i``
    sets ``hits[start + i]``. Returns the new release count. This is the only per-coordinate Python work, and it runs
    only over positions that survived the vectorised pre-filter.
    """
    c = len(thresholds)
    current = thresholds[k]
    for position, score in enumerate(scores, start):
        if score >= current:
            hits[position] = 1
            k += 1
            if k == c:
                break
            current = thresholds[k]
    return k


def _visit_block(
    n: int, visited: list[np.ndarray], size: int, rng: np.random.Generator
) -> np.ndarray:
    """The next ``size`` coordinates of a uniformly random visiting order of 0..n-1.

    Drawn lazily: the first block is a random ordered sample; later blocks sample, in random
    order, from the coordinates not visited yet (the rest of a uniform permutation).
    """
    if not visited:
        return rng.permutation(n) if size >= n else rng.choice(n, size=size, replace=False)
    mask = np.ones(n, dtype=bool)
    for block in visited:
        mask[block] = False
    left = np.flatnonzero(mask)
    return (
        rng.permutation(left) if size >= left.size else rng.choice(left, size=size, replace=False)
    )


def _sorted_sparse(n: int, coords: np.ndarray, values: np.ndarray) -> SparseVector:
    if coords.size * 64 > n:  # dense enough: an O(n) mask beats an O(c log c) sort
        mask = np.zeros(n, dtype=bool)
        mask[coords] = True
        dense = np.empty(n, dtype=np.float32)
        dense[coords] = values
        idx = np.flatnonzero(mask)
        return SparseVector(n, idx.astype(np.uint32), dense[idx])
    return SparseVector.from_indices(n, coords, values)


def upload_rng(private: bool, *seed: int) -> np.random.Generator:
    """The generator a peer selects (and, with DP, noises) its uploads with.

    Seeded from ``seed`` (the public run seed and the peer's index: runs repeat) unless the
    uploads are differentially private: noise anyone holding the run's config could regenerate
    could be subtracted again, so private uploads draw from OS entropy.
    """
    return np.random.default_rng() if private else np.random.default_rng(list(seed))


def numeric_sparse(
    delta: np.ndarray,
    *,
    epsilon: float,
    gamma: float,
    tau: float,
    count: int,
    rng: np.random.Generator,
    method: str = "auto",
) -> SparseVector:
    """At most ``count`` noisy coordinates of ``delta`` released with ε-DP (see module docstring).

    ``delta`` is the raw local change: it is clipped to [-gamma, gamma] here, before any noise.
    Released values lie in [-gamma, gamma]. ``method`` forces a sampler (for tests and
    benchmarks); both have the reference loop's distribution.
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    delta = np.asarray(delta, dtype=np.float32).ravel()
    n = int(delta.size)
    c = min(int(count), n)
    if c <= 0:
        return SparseVector.empty(n)
    scales = noise_scales(epsilon, gamma, c)
    thresholds = laplace(rng, scales.threshold, c)
    # the largest |clip(Δ, γ)|, without an O(n) temporary (it slows everything after it down)
    top = min(max(float(delta.max()), -float(delta.min())), float(np.float32(gamma)))
    rejection_bound = -np.expm1(-top / scales.query)  # 1 − min acceptance of a candidate
    # each of the c releases costs at most r / (1 − r) rejections on average
    restarts = c * rejection_bound / max(1.0 - rejection_bound, 1e-300)
    if method == "thinning" or (method == "auto" and restarts <= _MAX_REJECTIONS):
        coords = _release_by_thinning(delta, gamma, tau, top, thresholds, scales.query, rng)
    else:
        coords = _release_by_scan(delta, gamma, tau, thresholds, scales.query, rng)

    base = np.clip(delta[coords], -gamma, gamma).astype(np.float64)
    values = np.clip(base + laplace(rng, scales.release, coords.size), -gamma, gamma)
    return _sorted_sparse(n, coords, values.astype(np.float32))


def _magnitude(delta: np.ndarray, coords: np.ndarray, gamma: float) -> np.ndarray:
    """|clip(Δ, γ)| at ``coords``."""
    return np.minimum(np.abs(delta[coords]), np.float32(gamma))


def _survival(x: np.ndarray, scale: float) -> np.ndarray:
    """P(Lap(0, scale) >= x), elementwise."""
    tail = 0.5 * np.exp(-np.abs(x) / scale)
    return np.where(x >= 0, tail, 1.0 - tail)


def _release_by_thinning(
    delta: np.ndarray,
    gamma: float,
    tau: float,
    top: float,
    thresholds: np.ndarray,
    query_scale: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Released coordinates, in release order, by geometric skipping plus thinning.

    ``top`` is the largest |clip(Δ, γ)|: no coordinate passes more easily than that one.
    """
    n, c = delta.size, thresholds.size
    rejection_bound = -np.expm1(-top / query_scale)
    # the candidates' coordinates: distinct, uniformly random order; ``used`` of them consumed
    pool, used = _visit_block(n, [], min(n, c + 64 + c // 16), rng), 0
    released: list[np.ndarray] = []
    position = 0.0  # positions of the reference visiting order consumed so far
    k = 0
    while k < c and position < n:
        m = (
            c - k
            if rejection_bound * (c - k) < 1
            else min(c - k, max(256, int(2 / rejection_bound)))
        )
        if used + m > pool.size and pool.size < n:  # draw more, distinct from all drawn so far
            more = _visit_block(n, [pool], min(n - pool.size, used + m - pool.size + 64), rng)
            pool = np.concatenate([pool, more])
        rho = thresholds[k : k + m]
        p_max = _survival(rho - (top - tau), query_scale)
        # failures before each candidate: inverse-CDF geometric (as floats: no int overflow)
        with np.errstate(divide="ignore"):
            gaps = np.floor(np.log1p(-rng.random(m)) / np.log1p(-p_max))
        at = position + np.cumsum(gaps) + np.arange(m)
        inside = int(np.searchsorted(at, n))  # candidates before the end of the order
        coords = pool[used : used + inside]
        scores = _magnitude(delta, coords, gamma) - tau
        ratio = _survival(rho[:inside] - scores, query_scale) / p_max[:inside]
        accepted = rng.random(inside) < ratio
        j = inside if accepted.all() else int(np.argmin(accepted))
        released.append(coords[:j])
        k += j
        if j < inside:  # candidate j failed: it was visited; the same threshold stays in force
            used += j + 1
            position = float(at[j]) + 1
        else:
            used += inside
            position = n if inside < m else float(at[-1]) + 1
    return np.concatenate(released) if released else np.zeros(0, np.int64)


def _release_by_scan(
    delta: np.ndarray,
    gamma: float,
    tau: float,
    thresholds: np.ndarray,
    query_scale: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """Released coordinates, in release order, by a pre-filtered scan of the visiting order."""
    n, c = delta.size, thresholds.size
    floor = np.minimum.accumulate(thresholds[::-1])[::-1]  # floor[k] = min(thresholds[k:])
    threshold_list = thresholds.tolist()
    released: list[np.ndarray] = []
    visited: list[np.ndarray] = []
    k = seen = 0
    block = min(n, 3 * c + _EXTRA_VISITS)
    while k < c and seen < n:
        coords = _visit_block(n, visited, block, rng)
        visited.append(coords)
        seen += coords.size
        scores = _magnitude(delta, coords, gamma) + laplace(rng, query_scale, coords.size)
        scores -= tau
        # A score below every threshold still to come can never be released: skip it in numpy.
        keep = np.flatnonzero(scores >= floor[k])
        kept = scores[keep]
        hits = bytearray(kept.size)
        for lo in range(0, kept.size, _PIECE):  # convert to Python floats only what is scanned
            k = _scan(kept[lo : lo + _PIECE].tolist(), threshold_list, k, hits, lo)
            if k == c:
                break
        released.append(coords[keep[np.flatnonzero(np.frombuffer(hits, dtype=np.uint8))]])
        block = _next_block(n - seen, c - k, k, seen)
    return np.concatenate(released)


def _next_block(left: int, needed: int, released: int, seen: int) -> int:
    """How many more coordinates to visit: the observed release rate's estimate, with slack."""
    if left <= 0 or needed <= 0:
        return 0
    if released == 0:
        return min(left, 4 * seen)
    return min(left, int(1.5 * needed * seen / released) + _EXTRA_VISITS)
