"""Clipping and selection: magnitude not sign, c = ceil(θ·n), τ and c respected, exact top-k."""

from __future__ import annotations

import numpy as np
import pytest

from ringfl.algorithms.base import AlgorithmSettings, selection_count
from ringfl.algorithms.selection import (
    clip,
    random_threshold,
    select_update,
    top_k,
    top_k_indices,
)
from ringfl.vectors import SparseVector


@pytest.mark.parametrize(
    ("n", "theta", "expected"),
    [
        (15, 0.1, 2),
        (100, 0.07, 7),
        (10, 1.0, 10),
        (3, 0.001, 1),
        (109_386, 0.1, 10_939),
        (0, 0.5, 0),
    ],
)
def test_selection_count_is_ceiling(n: int, theta: float, expected: int) -> None:
    assert selection_count(n, theta) == expected


def test_top_k_selects_by_magnitude_not_sign() -> None:
    delta = np.array([0.1, -5.0, 0.2, 3.0, -0.3], dtype=np.float32)
    sel = top_k(delta, 2)
    assert sel.indices.tolist() == [1, 3]
    assert sel.values.tolist() == [-5.0, 3.0]  # signed values are kept


@pytest.mark.parametrize("n", [1000, 50_000, 200_000])  # the large sizes take the sampled path
@pytest.mark.parametrize("theta", [0.001, 0.01, 0.1, 0.6])
def test_top_k_is_exact(n: int, theta: float) -> None:
    rng = np.random.default_rng(n)
    delta = rng.standard_normal(n).astype(np.float32) * rng.exponential(1.0, n).astype(np.float32)
    k = selection_count(n, theta)
    got = top_k_indices(np.abs(delta), k, rng=rng)
    expected = np.sort(np.argsort(-np.abs(delta), kind="stable")[:k])
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)


def test_top_k_ties_are_broken_by_rank_rng_or_index() -> None:
    scores = np.array([1.0, 5.0, 5.0, 5.0, 5.0, 0.0])
    assert top_k_indices(scores, 2).tolist() == [1, 2]  # lowest index by default
    rank = np.array([0, 9, 3, 1, 2, 5])
    assert top_k_indices(scores, 2, tie_rank=rank).tolist() == [3, 4]
    picks = {tuple(top_k_indices(scores, 2, rng=np.random.default_rng(s))) for s in range(30)}
    assert len(picks) > 3 and all(set(p) <= {1, 2, 3, 4} for p in picks)


def test_top_k_after_clipping_does_not_favour_the_first_coordinates() -> None:
    rng = np.random.default_rng(0)
    delta = rng.standard_normal(100_000).astype(np.float32)  # ~32% exceed gamma=1: all tie at 1
    idx = top_k_indices(np.abs(clip(delta, 1.0)), 1000, rng=rng)
    assert idx.size == 1000 and np.all(np.abs(delta[idx]) >= 1.0)
    assert 0.3 < np.median(idx) / 100_000 < 0.7


def test_top_k_edge_cases() -> None:
    scores = np.array([3.0, 1.0, 2.0])
    assert top_k_indices(scores, 0).size == 0
    assert top_k_indices(scores, 5).tolist() == [0, 1, 2]


def test_clip() -> None:
    delta = np.array([-3.0, -0.5, 0.0, 0.5, 3.0], dtype=np.float32)
    np.testing.assert_array_equal(clip(delta, 1.0), [-1.0, -0.5, 0.0, 0.5, 1.0])
    np.testing.assert_array_equal(clip(delta, None), delta)


def test_random_threshold_respects_tau_and_count() -> None:
    rng = np.random.default_rng(1)
    delta = rng.standard_normal(10_000).astype(np.float32)
    sel = random_threshold(delta, 100, 1.5, rng)
    assert sel.nnz == 100
    assert np.all(np.abs(sel.values) >= 1.5)
    assert np.all(np.diff(sel.indices.astype(np.int64)) > 0)
    np.testing.assert_array_equal(sel.values, delta[sel.indices])
    # fewer eligible than c: all of them
    few = random_threshold(delta, 10_000, 3.0, rng)
    np.testing.assert_array_equal(few.indices, np.flatnonzero(np.abs(delta) >= 3.0))
    # random: not simply the largest
    top = set(top_k(delta, 100).indices.tolist())
    assert set(sel.indices.tolist()) != top


def test_select_update_clips_before_selecting() -> None:
    rng = np.random.default_rng(2)
    delta = rng.standard_normal(1000).astype(np.float32)
    settings = AlgorithmSettings(theta_u=0.05, gamma=0.5)
    sel = select_update(delta, settings, rng)
    assert isinstance(sel, SparseVector) and sel.nnz == 50
    assert np.all(np.abs(sel.values) <= 0.5)
    assert np.all(np.abs(delta[sel.indices]) >= 0.5)  # 50 of ~617 saturated coordinates


def test_select_update_random_threshold_mode() -> None:
    rng = np.random.default_rng(3)
    delta = rng.standard_normal(1000).astype(np.float32)
    settings = AlgorithmSettings(theta_u=0.01, gamma=2.0, tau=1.0, selection="random-threshold")
    sel = select_update(delta, settings, rng)
    assert sel.nnz == 10 and np.all(np.abs(sel.values) >= 1.0) and np.all(np.abs(sel.values) <= 2.0)


def test_select_update_all_without_clipping_is_the_dense_delta() -> None:
    delta = np.arange(-5, 5, dtype=np.float32)
    out = select_update(delta, AlgorithmSettings(theta_u=1.0), np.random.default_rng(0))
    assert isinstance(out, np.ndarray)
    np.testing.assert_array_equal(out, delta)


def test_select_update_refuses_non_finite() -> None:
    delta = np.array([0.0, np.nan], dtype=np.float32)
    with pytest.raises(ValueError, match="non-finite"):
        select_update(delta, AlgorithmSettings(), np.random.default_rng(0))


# --- the optimised top-k against the straightforward implementation it replaced ----------------
#
# ``_reference_top_k_indices`` is the previous implementation, verbatim apart from names and a
# ``sample`` parameter: partition for the k-th largest, then pass over all n scores for the mask
# and the ties. The optimised path must give the same indices, the same values and the same wire
# bytes, and leave the rng in the same state (later draws, e.g. the next tie-break, depend on it).


def _reference_kth_largest(scores, k, rng, sample_size, used):
    n = scores.size
    top = scores.max()
    if np.count_nonzero(scores == top) >= k:
        return float(top)
    if rng is not None and n >= 32768 and k < n // 2:
        sample = scores[rng.integers(0, n, sample_size)]
        q = min(1.0, k / n + 4.0 * np.sqrt(k / n / sample_size) + 8.0 / sample_size)
        pos = max(0, int(sample_size * (1 - q)) - 1)
        guess = np.partition(sample, pos)[pos]
        above = scores[scores >= guess]
        if above.size >= k:
            used.append("sampled")
            return float(np.partition(above, above.size - k)[above.size - k])
        used.append("fallback")
    return float(np.partition(scores, n - k)[n - k])


def _reference_top_k_indices(scores, k, *, rng=None, tie_rank=None, sample_size=4096, used=None):
    used = [] if used is None else used
    n = scores.size
    if k >= n:
        return np.arange(n, dtype=np.int64)
    if k <= 0:
        return np.zeros(0, dtype=np.int64)
    thr = _reference_kth_largest(scores, k, rng, sample_size, used)
    mask = scores > thr
    need = k - int(np.count_nonzero(mask))
    ties = np.flatnonzero(scores == thr)
    if ties.size > need:
        if tie_rank is not None:
            ties = ties[np.argpartition(tie_rank[ties], need - 1)[:need]] if need else ties[:0]
        elif rng is not None:
            ties = rng.choice(ties, size=need, replace=False)
        else:
            ties = ties[:need]
    mask[ties] = True
    return np.flatnonzero(mask)


def _reference_top_k(vector, k, rng=None):
    vector = np.asarray(vector, dtype=np.float32)
    idx = _reference_top_k_indices(np.abs(vector), k, rng=rng)
    return SparseVector(int(vector.size), idx.astype(np.uint32), vector[idx])


def _scores(kind: str, n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    raw = rng.standard_normal(n).astype(np.float32) * rng.exponential(0.01, n).astype(np.float32)
    if kind == "clipped":  # ~40 % at gamma: the k-th largest is the maximum
        return np.abs(clip(raw, 0.005))
    if kind == "quantised":  # ties at a threshold below the maximum
        return np.abs(np.round(raw * 300).astype(np.float32))
    if kind == "zeros":  # most coordinates exactly 0 (dead units), ties at 0 when k is large
        raw[rng.random(n) < 0.7] = 0.0
    return np.abs(raw)


def _assert_same_top_k(scores, k, seed, **kwargs):
    rng, ref_rng = np.random.default_rng(seed), np.random.default_rng(seed)
    got = top_k_indices(scores, k, rng=rng, **kwargs)
    expected = _reference_top_k_indices(scores, k, rng=ref_rng, **kwargs)
    assert got.dtype == expected.dtype == np.int64
    assert got.tobytes() == expected.tobytes()
    assert rng.bit_generator.state == ref_rng.bit_generator.state  # same draws, same order


@pytest.mark.parametrize("kind", ["smooth", "clipped", "quantised", "zeros"])
@pytest.mark.parametrize("n", [7, 1000, 32767, 32768, 109_386])
def test_top_k_indices_matches_the_reference_with_an_rng(kind: str, n: int) -> None:
    scores = _scores(kind, n, n)
    for k in sorted({0, 1, 2, selection_count(n, 0.001), selection_count(n, 0.1), n // 2 - 1, n // 2, n - 1, n, n + 3}):
        for seed in (0, 1):
            _assert_same_top_k(scores, k, seed)


@pytest.mark.parametrize("kind", ["smooth", "clipped", "quantised", "zeros"])
def test_top_k_indices_matches_the_reference_without_an_rng(kind: str) -> None:
    n = 50_000
    scores = _scores(kind, n, 3)
    rank = np.random.default_rng(9).permutation(n)
    naive_order = np.argsort(-scores, kind="stable")  # ties: lowest index first
    for k in (0, 1, 37, 5000, n // 2, n - 1, n, n + 1):
        got = top_k_indices(scores, k)
        assert got.tobytes() == _reference_top_k_indices(scores, k).tobytes()
        assert got.tobytes() == np.sort(naive_order[:k]).astype(np.int64).tobytes()
        ranked = top_k_indices(scores, k, tie_rank=rank)
        assert ranked.tobytes() == _reference_top_k_indices(scores, k, tie_rank=rank).tobytes()


def test_top_k_indices_matches_the_reference_on_float64_counters_with_tie_rank() -> None:
    # DSSGD's server download: integer-valued float64 counters, ties broken by a rank
    rng = np.random.default_rng(5)
    stat = rng.integers(0, 4, 109_386).astype(np.float64)
    rank = rng.permutation(stat.size)
    for k in (1, 1000, 10_939, 54_692, 109_385):
        _assert_same_top_k(stat, k, 11, tie_rank=rank)
        _assert_same_top_k(stat, k, 12)


class _BiasedSampleRng:
    """A Generator whose sample draw points at the largest scores only: the sampled guess is
    then far above the k-th largest and the full-partition fallback has to take over. Other
    draws (the tie-break) come from a real Generator; every call is logged."""

    def __init__(self, scores: np.ndarray, seed: int) -> None:
        self.order = np.argsort(-scores, kind="stable")
        self.rng = np.random.default_rng(seed)
        self.calls: list[tuple] = []

    def integers(self, low, high, size):
        self.calls.append(("integers", low, high, size))
        return self.order[np.arange(size) % 10]

    def choice(self, a, size, replace):
        self.calls.append(("choice", len(a), size, replace))
        return self.rng.choice(a, size=size, replace=replace)


@pytest.mark.parametrize("kind", ["smooth", "quantised"])
def test_top_k_indices_matches_the_reference_when_the_sampled_guess_fails(kind: str) -> None:
    scores = _scores(kind, 40_000, 8)
    for k in (1000, 4000):
        rng, ref_rng = _BiasedSampleRng(scores, 1), _BiasedSampleRng(scores, 1)
        used: list[str] = []
        expected = _reference_top_k_indices(scores, k, rng=ref_rng, used=used)
        assert used == ["fallback"]
        assert top_k_indices(scores, k, rng=rng).tobytes() == expected.tobytes()  # type: ignore[arg-type]
        assert rng.calls == ref_rng.calls
        assert rng.rng.bit_generator.state == ref_rng.rng.bit_generator.state


@pytest.mark.parametrize("kind", ["smooth", "clipped", "quantised", "zeros"])
def test_top_k_and_its_wire_bytes_match_the_reference(kind: str) -> None:
    from ringfl.protocol.codec import encode
    from ringfl.protocol.payloads import GossipUpdate

    delta = _scores(kind, 109_386, 21) * np.where(np.arange(109_386) % 3, 1, -1).astype(np.float32)
    for k in (1, 10_939, 60_000):
        got = top_k(delta, k, np.random.default_rng(4))
        expected = _reference_top_k(delta, k, np.random.default_rng(4))
        assert got.indices.dtype == np.uint32 and got.values.dtype == np.float32
        assert got.indices.tobytes() == expected.indices.tobytes()
        assert got.values.tobytes() == expected.values.tobytes()
        assert not got.indices.flags.writeable  # so the bitmap is packed once per selection
        frames = [
            encode(GossipUpdate(origin="p", round=1, vector=v, step=0, hop=1, weight=0.5).to_upload())
            for v in (got, got, expected)  # the second encode uses the cached bitmap
        ]
        assert frames[0] == frames[1] == frames[2]


def test_bitmap_matches_a_bit_by_bit_packing() -> None:
    rng = np.random.default_rng(2)
    for size in (1, 7, 8, 9, 1000, 109_386):
        idx = np.sort(rng.choice(size, size=max(1, size // 10), replace=False)).astype(np.uint32)
        vector = SparseVector(size, idx, np.ones(idx.size, np.float32))
        expected = bytearray(-(-size // 8))
        for i in idx.tolist():
            expected[i // 8] |= 1 << (i % 8)
        assert vector.bitmap().tobytes() == bytes(expected)


def test_top_k_indices_matches_the_reference_on_extreme_float32_scores() -> None:
    # the sampled path partitions positive float32 candidates by bit pattern: +inf, the largest
    # finite value, subnormals, and -0.0 / 0.0 (only below a positive guess) must order as floats
    n = 60_000
    rng = np.random.default_rng(13)
    scores = np.abs(rng.standard_normal(n)).astype(np.float32)
    scores[rng.choice(n, 300, replace=False)] = np.inf
    scores[rng.choice(n, 300, replace=False)] = np.finfo(np.float32).max
    scores[rng.choice(n, 3000, replace=False)] = np.float32(1e-45)  # subnormal
    scores[rng.choice(n, 3000, replace=False)] = -0.0
    scores[rng.choice(n, 3000, replace=False)] = 0.0
    for k in (1, 299, 300, 301, 600, 601, 6000, 29_000):
        _assert_same_top_k(scores, k, k)
