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
