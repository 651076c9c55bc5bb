"""Robust aggregation rules against 20% Byzantine clients on synthetic data."""

from __future__ import annotations

import numpy as np
import pytest

from ringfl.algorithms.robust import (
    aggregate,
    clip_norms,
    coordinate_median,
    krum_scores,
    multi_krum,
    trimmed_mean,
    weighted_mean,
)
from ringfl.errors import ConfigError

TRUE = np.linspace(-1.0, 1.0, 200).astype(np.float32)


def _clients(n: int = 20, bad: int = 4, attack: str = "flip", seed: int = 0) -> list[np.ndarray]:
    """n noisy honest copies of TRUE, the first ``bad`` replaced by an attack."""
    rng = np.random.default_rng(seed)
    vectors = [TRUE + 0.1 * rng.standard_normal(TRUE.size).astype(np.float32) for _ in range(n)]
    for i in range(bad):
        vectors[i] = -10.0 * vectors[i] if attack == "flip" else 50.0 * vectors[i]
    return vectors


def _error(v: np.ndarray) -> float:
    return float(np.linalg.norm(v - TRUE) / np.linalg.norm(TRUE))


@pytest.mark.parametrize("attack", ["flip", "scale"])
def test_mean_is_broken_by_20_percent_attackers(attack: str) -> None:
    assert _error(aggregate(_clients(attack=attack))) > 1.0


@pytest.mark.parametrize("attack", ["flip", "scale"])
@pytest.mark.parametrize(
    ("rule", "kw"),
    [("median", {}), ("trimmed-mean", {"trim": 4}), ("krum", {"f": 4}), ("multi-krum", {"f": 4})],
)
def test_robust_rules_resist_20_percent_attackers(attack: str, rule: str, kw: dict) -> None:
    # krum returns one honest client, whose own noise is ~0.17 of |TRUE|
    assert _error(aggregate(_clients(attack=attack), rule=rule, **kw)) < 0.25


def test_norm_clipping_bounds_the_attack() -> None:
    clipped = aggregate(_clients(attack="scale"), clip_norm=float(np.linalg.norm(TRUE)) * 1.1)
    assert _error(clipped) < 0.7  # the mean now moves at most by clip_norm per attacker
    for v in clip_norms(_clients(attack="scale"), 1.0):
        assert np.linalg.norm(v) <= 1.0 + 1e-5
    small = [np.full(4, 0.1, np.float32)]
    np.testing.assert_array_equal(clip_norms(small, 1.0)[0], small[0])  # never scaled up


def test_krum_needs_more_than_2f_plus_2() -> None:
    vectors = _clients(n=6, bad=0)
    with pytest.raises(ConfigError, match="krum"):
        krum_scores(vectors, f=2)  # n = 6 = 2f + 2
    assert krum_scores(_clients(n=7, bad=0), f=2).shape == (7,)
    with pytest.raises(ConfigError, match="krum"):
        aggregate(vectors, rule="multi-krum", f=2)


def test_krum_picks_a_client_vector_and_multi_krum_averages() -> None:
    vectors = _clients(n=10, bad=2)
    chosen = multi_krum(vectors, f=2, m=1)
    assert any(np.array_equal(chosen, v) for v in vectors[2:])
    honest_mean = np.mean(vectors[2:], axis=0)
    np.testing.assert_allclose(multi_krum(vectors, f=2), honest_mean, atol=1e-6)  # m = n − f


def test_trimmed_mean_and_median_exact() -> None:
    vectors = [np.array([v], np.float32) for v in (1.0, 2.0, 3.0, 100.0, -50.0)]
    assert trimmed_mean(vectors, 1)[0] == pytest.approx(2.0)
    assert coordinate_median(vectors)[0] == pytest.approx(2.0)
    with pytest.raises(ConfigError, match="trimmed-mean"):
        trimmed_mean(vectors, 3)


def test_weighted_mean() -> None:
    vectors = [np.array([0.0, 1.0], np.float32), np.array([3.0, 4.0], np.float32)]
    np.testing.assert_allclose(weighted_mean(vectors, [1, 2]), [2.0, 3.0])
    np.testing.assert_allclose(weighted_mean(vectors), [1.5, 2.5])
    with pytest.raises(ValueError):
        weighted_mean(vectors, [0, 0])
    with pytest.raises(ConfigError, match="unknown robust"):
        aggregate(vectors, rule="geomedian")
