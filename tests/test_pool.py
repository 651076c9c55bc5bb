"""The gradient pool without a network: decide changes nothing, apply does, reasons are right."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from ringfl.acceptance import AcceptancePolicy, Reason
from ringfl.algorithms import AlgorithmSettings, make_coordinator_algorithm
from ringfl.config import AcceptanceConfig
from ringfl.runtime.pool import GradientPool, PoolItem, Verdict
from ringfl.vectors import SparseVector

N = 20


@dataclass
class Rounds:
    """The round controller as the pool sees it."""

    round: int = 0
    round_open: bool = True
    selected: set[str] = field(default_factory=lambda: {"alice", "bob"})

    def alive(self) -> list[Any]:
        return sorted(self.selected)


def make_pool(algorithm: str = "dssgd", order: str = "round-robin", **settings: Any) -> GradientPool:
    merged = {"theta_u": 0.1, **settings} if algorithm == "dssgd" else settings
    config = AlgorithmSettings.from_mapping(merged)
    rng = np.random.default_rng(0)
    model = make_coordinator_algorithm(algorithm, np.zeros(N, np.float32), config, rng)
    policy = AcceptancePolicy(AcceptanceConfig(max_norm=10.0), N)
    return GradientPool(model, policy, config, Rounds(), order=order, size=4)


def sparse(peer: str = "alice", round_: int = 0, nnz: int = 2, value: float = 0.5) -> PoolItem:
    vector = SparseVector(N, np.arange(nnz, dtype=np.uint32), np.full(nnz, value, np.float32))
    return PoolItem(peer, round_, round_, vector, 10)


def state(pool: GradientPool) -> dict[str, Any]:
    """Everything a decision could change."""
    return copy.deepcopy({
        "params": pool.algorithm.params.copy(), "algorithm": pool.algorithm.state(), "seen": pool.policy.seen,
        "ledgers": {p: ledger.to_dict() for p, ledger in pool.ledgers.items()}, "stats": pool.stats,
        "version": pool.version,
    })


def same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(np.array_equal(a[k], b[k]) if isinstance(a[k], np.ndarray) else
               (all(np.array_equal(a[k][j], b[k][j]) for j in a[k]) if k == "algorithm" else a[k] == b[k])
               for k in a)


@pytest.mark.parametrize("item", [
    sparse(), sparse(nnz=5), sparse(peer="carol"), sparse(value=100.0), sparse(round_=-1),
], ids=["accepted", "too dense", "not selected", "norm", "stale"])
@pytest.mark.parametrize("dp", [False, True])
def test_deciding_twice_gives_one_verdict_and_changes_nothing(item, dp):
    pool = make_pool(**({"epsilon": 1.0, "gamma": 1.0, "budget": 3.0} if dp else {}))
    before = state(pool)
    first, second = pool.decide(item), pool.decide(item)
    assert first == second
    assert same(before, state(pool)) and pool.ledgers == {}


def test_decide_says_why():
    pool = make_pool()
    assert pool.decide(sparse()) == Verdict(Reason.ACCEPTED)
    assert pool.decide(sparse(peer="carol")).reason is Reason.NOT_SELECTED
    assert pool.decide(sparse(value=100.0)) == Verdict(Reason.NORM_TOO_LARGE, "norm too large")
    too_dense = pool.decide(sparse(nnz=5))
    assert too_dense.reason is Reason.REFUSED_BY_ALGORITHM and "at most 2 allowed" in too_dense.detail
    pool.rounds.round, pool.rounds.round_open = 1, False
    assert pool.decide(sparse()).reason is Reason.ROUND_CLOSED


def test_apply_changes_the_model_and_the_books():
    pool = make_pool(epsilon=1.0, gamma=1.0, budget=1.5)
    item = sparse()
    assert pool.process(item) and item.answers_round == 0
    assert pool.version == 1 and pool.stats.applied == 1 and pool.stats.processed == 1
    assert pool.algorithm.params[:2] == pytest.approx([0.5, 0.5])
    assert ("alice", 0) in pool.policy.seen and pool.ledgers["alice"].total == 1.0
    assert pool.decide(sparse()).reason is Reason.DUPLICATE  # what apply recorded, decide now sees
    pool.rounds.round = 1
    assert pool.decide(sparse(round_=1)).reason is Reason.BUDGET_SPENT  # 1 + 1 > 1.5


def test_a_rejection_is_counted_and_applies_nothing():
    pool = make_pool()
    item = sparse(nnz=5)
    assert not pool.process(item)
    assert item.verdict.reason is Reason.REFUSED_BY_ALGORITHM
    assert pool.stats.rejected == 1 and pool.stats.reasons == {"refused by algorithm": 1}
    assert pool.version == 0 and not pool.algorithm.params.any()
    assert set(pool.ledgers) == {"alice"}  # past the policy: the peer has an ε account (checkpointed)


def test_async_uploads_are_scaled_by_the_live_peers_before_they_are_applied():
    pool = make_pool(order="async", async_scale="peers")
    item = sparse()
    assert pool.process(item)
    assert pool.algorithm.params[:2] == pytest.approx([0.25, 0.25])  # two live peers
    assert item.as_upload(1).vector.values == pytest.approx([0.25, 0.25])  # logged as applied
