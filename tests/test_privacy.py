"""NumericSparse (against a slow reference loop) and the per-peer privacy ledger."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats

from ringfl.algorithms import AlgorithmSettings, make_peer_algorithm
from ringfl.privacy import BudgetExhausted, PrivacyLedger, advanced_composition
from ringfl.privacy.numeric_sparse import METHODS, laplace, noise_scales, numeric_sparse
from ringfl.vectors import SparseVector


def reference_numeric_sparse(
    delta: np.ndarray,
    *,
    epsilon: float,
    gamma: float,
    tau: float,
    count: int,
    rng: np.random.Generator,
) -> SparseVector:
    """The algorithm exactly as written in the paper / docs: one coordinate at a time."""
    n = delta.size
    c = min(count, n)
    scales = noise_scales(epsilon, gamma, c)
    rho = rng.laplace(0.0, scales.threshold)
    idx: list[int] = []
    vals: list[float] = []
    for i in rng.permutation(n):
        nu = rng.laplace(0.0, scales.query)
        clipped = min(max(float(delta[i]), -gamma), gamma)
        if abs(clipped) + nu >= tau + rho:
            noisy = clipped + rng.laplace(0.0, scales.release)
            idx.append(int(i))
            vals.append(min(max(noisy, -gamma), gamma))
            if len(idx) == c:
                break
            rho = rng.laplace(0.0, scales.threshold)
    return SparseVector.from_indices(n, np.array(idx, dtype=np.int64), np.array(vals))


def test_noise_scales_follow_the_paper() -> None:
    s = noise_scales(epsilon=0.9, gamma=0.5, count=10)  # Δf = 1, ε1 = 0.8, ε2 = 0.2
    assert s.threshold == pytest.approx(2 * 10 * 1 / 0.8)
    assert s.query == pytest.approx(2 * s.threshold)
    assert s.release == pytest.approx(2 * 10 * 1 / 0.2)


def test_laplace_sampler_is_laplace() -> None:
    draws = laplace(np.random.default_rng(0), 2.5, 20_000)
    assert stats.kstest(draws, stats.laplace(scale=2.5).cdf).pvalue > 1e-3


def test_never_more_than_c_and_values_within_gamma() -> None:
    rng = np.random.default_rng(0)
    delta = rng.standard_normal(5000).astype(np.float32)
    for eps in (0.01, 1.0, 1e4):
        out = numeric_sparse(delta, epsilon=eps, gamma=0.3, tau=0.1, count=50, rng=rng)
        assert out.nnz <= 50
        assert np.all(np.abs(out.values) <= np.float32(0.3))
        assert np.all(np.diff(out.indices.astype(np.int64)) > 0)
        assert out.size == 5000 and out.values.dtype == np.float32


def test_huge_tau_releases_nothing() -> None:
    rng = np.random.default_rng(1)
    delta = rng.standard_normal(5000).astype(np.float32)
    scale = noise_scales(1.0, 0.1, 10).query
    out = numeric_sparse(delta, epsilon=1.0, gamma=0.1, tau=200 * scale, count=10, rng=rng)
    assert out.nnz == 0


def test_tiny_epsilon_selects_regardless_of_the_data() -> None:
    """With ε → 0 the noise dwarfs γ: big and small coordinates are released equally often."""
    rng = np.random.default_rng(2)
    delta = np.zeros(2000, dtype=np.float32)
    delta[:1000] = 1.0  # half the coordinates are saturated, half are zero
    hits = np.zeros(2000)
    for _ in range(40):
        hits[
            numeric_sparse(delta, epsilon=1e-3, gamma=1.0, tau=0.5, count=100, rng=rng).indices
        ] += 1
    assert abs(hits[:1000].sum() / hits.sum() - 0.5) < 0.05


def test_huge_epsilon_is_the_noiseless_threshold_rule() -> None:
    """With ε → ∞: c random coordinates among those with |clip Δ| >= τ, values ≈ clip Δ."""
    rng = np.random.default_rng(3)
    delta = rng.standard_normal(4000).astype(np.float32)
    eligible = np.abs(delta) >= 1.0
    out = numeric_sparse(delta, epsilon=1e12, gamma=2.0, tau=1.0, count=100, rng=rng)
    assert out.nnz == 100 and eligible[out.indices].all()
    np.testing.assert_allclose(out.values, np.clip(delta[out.indices], -2, 2), atol=1e-4)
    everything = numeric_sparse(delta, epsilon=1e12, gamma=2.0, tau=1.0, count=4000, rng=rng)
    np.testing.assert_array_equal(everything.indices, np.flatnonzero(eligible))


def test_release_noise_std_is_sqrt2_sigma_eps2() -> None:
    rng = np.random.default_rng(4)
    n = 4000
    eps = 2 * n * 2 * 1.0 / (2 / 9) / 0.01  # so that σ(ε2) = 0.01 with γ = 1, c = n
    scale = noise_scales(eps, 1.0, n).release
    assert scale == pytest.approx(0.01)
    out = numeric_sparse(
        np.zeros(n, np.float32), epsilon=eps, gamma=1.0, tau=-1e9, count=n, rng=rng
    )
    assert out.nnz == n  # τ = −∞: everything passes
    assert np.std(out.values) == pytest.approx(math.sqrt(2) * scale, rel=0.06)
    assert abs(np.mean(out.values)) < 0.001


@pytest.mark.parametrize("method", METHODS)
def test_query_noise_is_twice_the_threshold_noise(method: str) -> None:
    """On Δ = 0, τ = 0 a release takes E[1/P(ν >= ρ)] = 2 + 4(ln 2 − ½) ≈ 2.77 visits on average
    when ν has twice ρ's Laplace scale (it would be infinite with equal scales)."""
    rng = np.random.default_rng(5)
    n = 30_000
    zeros = np.zeros(n, np.float32)
    out = numeric_sparse(zeros, epsilon=1.0, gamma=0.01, tau=0.0, count=n, rng=rng, method=method)
    expected = 2 + 4 * (math.log(2) - 0.5)
    assert n / out.nnz == pytest.approx(expected, rel=0.05)


def _summaries(impl, delta, runs: int, seed: int, **kw) -> tuple[np.ndarray, ...]:
    """Per run: release count, Σ|Δ| of the released coordinates, and all released values."""
    rng = np.random.default_rng(seed)
    counts, mass, values = [], [], []
    for _ in range(runs):
        out = impl(delta, rng=rng, **kw)
        counts.append(out.nnz)
        mass.append(float(np.abs(delta[out.indices]).sum()))
        values.extend(out.values.tolist())
    return np.array(counts), np.array(mass), np.array(values)


# (ε, γ, τ, c, |Δ| scale): coordinates run out before c / c is reached / the DP regime where
# noise dwarfs γ (thinning territory) / little noise (scan territory)
REGIMES = {
    "runs-out": (1350.0, 1.0, 0.8, 150, 0.6),
    "reaches-c": (200.0, 1.5, 0.5, 20, 1.0),
    "noisy": (2.0, 0.5, 0.1, 60, 1.0),
    "precise": (5e4, 0.5, 0.3, 40, 0.3),
}


@pytest.mark.parametrize("regime", sorted(REGIMES))
@pytest.mark.parametrize("method", METHODS)
def test_fast_samplers_match_the_reference_loop(regime: str, method: str) -> None:
    """Same distribution of release counts, of how large the winners are, and of the values."""
    eps, gamma, tau, c, scale = REGIMES[regime]
    delta = (np.random.default_rng(6).standard_normal(300) * scale).astype(np.float32)
    kw = dict(epsilon=eps, gamma=gamma, tau=tau, count=c)
    fast = _summaries(numeric_sparse, delta, 300, 10, method=method, **kw)
    slow = _summaries(reference_numeric_sparse, delta, 300, 11, **kw)
    for a, b in zip(fast, slow):
        if np.ptp(a) or np.ptp(b):
            assert stats.ks_2samp(a, b, method="asymp").pvalue > 1e-3
        else:
            assert a[0] == b[0]
    if regime == "runs-out":
        assert 20 < np.mean(fast[0]) < 140 and np.std(fast[0]) > 5


def test_auto_picks_thinning_in_the_dp_regime(monkeypatch: pytest.MonkeyPatch) -> None:
    import ringfl.privacy.numeric_sparse as ns

    calls: list[str] = []
    monkeypatch.setattr(
        ns, "_release_by_scan", lambda *a: calls.append("scan") or np.zeros(0, np.int64)
    )
    monkeypatch.setattr(
        ns, "_release_by_thinning", lambda *a: calls.append("thinning") or np.zeros(0, np.int64)
    )
    delta = np.random.default_rng(0).standard_normal(10_000).astype(np.float32)
    numeric_sparse(
        delta, epsilon=1.0, gamma=0.01, tau=1e-4, count=1000, rng=np.random.default_rng(0)
    )
    numeric_sparse(
        delta, epsilon=1e7, gamma=0.01, tau=1e-4, count=1000, rng=np.random.default_rng(0)
    )
    assert calls == ["thinning", "scan"]
    with pytest.raises(ValueError, match="method"):
        numeric_sparse(
            delta,
            epsilon=1.0,
            gamma=0.01,
            tau=0.0,
            count=1,
            rng=np.random.default_rng(0),
            method="x",
        )


def test_large_vectors_go_through_several_blocks() -> None:
    rng = np.random.default_rng(8)
    delta = np.zeros(200_000, np.float32)
    delta[rng.choice(200_000, 300, replace=False)] = 1.0
    # precise: only the 300 large coordinates can pass; the scan needs several visiting blocks
    out = numeric_sparse(delta, epsilon=1e9, gamma=1.0, tau=0.5, count=250, rng=rng)
    assert out.nnz == 250 and np.all(delta[out.indices] == 1.0)
    # noisy: ~20,000 releases in ~55,000 visits; rejections make thinning extend its pool
    out = numeric_sparse(
        delta, epsilon=50.0, gamma=1.0, tau=0.0, count=20_000, rng=rng, method="thinning"
    )
    assert out.nnz == 20_000


# ---------------------------------------------------------------------------------------------
# Ledger


def test_ledger_basic_composition_and_budget() -> None:
    ledger = PrivacyLedger(peer="p1", budget=1.0)
    for r in range(10):
        assert ledger.can_spend(0.1)
        ledger.spend(0.1, label=r)
    assert ledger.total == pytest.approx(1.0) and ledger.count == 10
    assert not ledger.can_spend(0.1)
    with pytest.raises(BudgetExhausted, match="p1"):
        ledger.spend(0.1, label=10)
    assert ledger.count == 10 and ledger.remaining == 0.0


def test_ledger_without_budget_never_refuses() -> None:
    ledger = PrivacyLedger()
    ledger.spend(1e6)
    assert ledger.can_spend(1e6) and ledger.remaining == math.inf


def test_advanced_composition_bound() -> None:
    k, eps, delta = 100, 0.1, 1e-5
    textbook = math.sqrt(2 * k * math.log(1 / delta)) * eps + k * eps * (math.exp(eps) - 1)
    assert advanced_composition([eps] * k, delta) == pytest.approx(textbook)
    ledger = PrivacyLedger(delta=delta)
    for _ in range(k):
        ledger.spend(eps)
    assert ledger.advanced_total() == pytest.approx(textbook)
    assert ledger.best_total() == pytest.approx(textbook) and textbook < ledger.total
    few = PrivacyLedger(entries=[])
    few.spend(1.0)
    assert few.best_total() == 1.0  # one step: basic composition is the better bound
    assert advanced_composition([], delta) == 0.0
    assert advanced_composition([1000.0], delta) == float("inf")  # vacuous, not an OverflowError
    with pytest.raises(ValueError):
        advanced_composition([1.0], 0.0)


def test_ledger_json_round_trip() -> None:
    ledger = PrivacyLedger(peer="p7", budget=5.0, delta=1e-6)
    ledger.spend(0.5, label=0)
    ledger.spend(0.25, label="epoch-1")
    data = json.loads(json.dumps(ledger.to_dict()))
    again = PrivacyLedger.from_dict(data)
    assert again == ledger
    assert data["total"] == pytest.approx(0.75)


def test_dssgd_peer_charges_the_ledger_before_releasing() -> None:
    settings = AlgorithmSettings(theta_u=0.1, gamma=0.1, epsilon=0.5, budget=1.0)
    peer = make_peer_algorithm("dssgd", settings)
    assert peer.update_epsilon == 0.5
    ledger = PrivacyLedger(peer="a", budget=settings.budget)
    rng = np.random.default_rng(0)
    start, end = np.zeros(100, np.float32), rng.standard_normal(100).astype(np.float32)
    for r in range(2):
        out = peer.make_update(start, end, rng, ledger=ledger, label=r)
        assert isinstance(out, SparseVector) and out.nnz <= 10
    with pytest.raises(BudgetExhausted):
        peer.make_update(start, end, rng, ledger=ledger, label=2)
    assert [e.label for e in ledger.entries] == [0, 1]
