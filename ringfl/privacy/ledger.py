"""Per-peer privacy ledger: what each DP upload spent, its composition, and the budget.

NumericSparse's guarantee is per upload (per local epoch). Over k uploads a peer spends

* basic composition: Σ ε_i (pure ε-DP, δ = 0), the number the budget is checked against;
* advanced composition (Dwork–Rothblum–Vadhan), for a chosen δ':
  ε' = sqrt(2 ln(1/δ') Σ ε_i²) + Σ ε_i (e^{ε_i} − 1), as (ε', δ')-DP. With equal ε_i = ε this is
  the textbook sqrt(2k ln(1/δ'))·ε + k·ε(e^ε − 1). It beats basic composition only for many
  small ε_i, so :meth:`PrivacyLedger.best_total` reports the smaller of the two.

The budget is enforced with basic composition (pure ε-DP, no δ to explain): a peer whose next
upload would exceed it must stop uploading.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ringfl.errors import RingflError

_SLACK = 1e-9  # relative float tolerance when comparing a total with the budget


class BudgetExhausted(RingflError):
    """The next DP release would exceed the peer's total ε budget."""


def advanced_composition(epsilons: list[float], delta: float) -> float:
    """ε' of the DRV advanced composition theorem for pure ε_i-DP steps, at failure probability δ'."""
    if not 0 < delta < 1:
        raise ValueError("advanced composition needs 0 < delta < 1")
    if not epsilons:
        return 0.0
    if max(epsilons) > 700.0:  # e^ε overflows a float: the bound is vacuous anyway
        return math.inf
    squares = sum(e * e for e in epsilons)
    return math.sqrt(2.0 * math.log(1.0 / delta) * squares) + sum(
        e * math.expm1(e) for e in epsilons
    )


@dataclass(frozen=True)
class Entry:
    """One charged release: ε, and what it was for (a round number or a label)."""

    epsilon: float
    label: int | str | None = None


@dataclass
class PrivacyLedger:
    """ε spent by one peer, with an optional total budget (basic composition).

    ``delta`` is the δ' at which :meth:`advanced_total` reports the advanced-composition bound.
    """

    peer: str = ""
    budget: float | None = None
    delta: float = 1e-5
    entries: list[Entry] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.entries)

    @property
    def total(self) -> float:
        """Basic composition: the sum of every ε spent."""
        return math.fsum(e.epsilon for e in self.entries)

    @property
    def remaining(self) -> float:
        return math.inf if self.budget is None else max(0.0, self.budget - self.total)

    def advanced_total(self, delta: float | None = None) -> float:
        """The DRV bound ε' at δ' = ``delta`` (default: the ledger's)."""
        return advanced_composition(
            [e.epsilon for e in self.entries], self.delta if delta is None else delta
        )

    def best_total(self, delta: float | None = None) -> float:
        """min(basic, advanced): both are valid bounds (the advanced one at δ')."""
        return min(self.total, self.advanced_total(delta))

    def can_spend(self, epsilon: float) -> bool:
        """Whether one more release of ``epsilon`` stays within the budget."""
        if epsilon < 0:
            raise ValueError("epsilon must be >= 0")
        if self.budget is None:
            return True
        return self.total + epsilon <= self.budget * (1 + _SLACK)

    def spend(self, epsilon: float, label: int | str | None = None) -> None:
        """Charge one release; raises :class:`BudgetExhausted` (charging nothing) past the budget."""
        if not self.can_spend(epsilon):
            raise BudgetExhausted(
                f"peer {self.peer or '?'}: privacy budget spent "
                f"({self.total:.6g} of {self.budget:.6g}; next upload needs {epsilon:.6g})"
            )
        self.entries.append(Entry(float(epsilon), label))

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able snapshot (for checkpoints and run reports)."""
        return {
            "peer": self.peer,
            "budget": self.budget,
            "delta": self.delta,
            "entries": [[e.epsilon, e.label] for e in self.entries],
            "total": self.total,
            "advanced_total": self.advanced_total(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PrivacyLedger:
        """Inverse of :meth:`to_dict` (the derived totals are recomputed, not trusted)."""
        entries = [Entry(float(eps), label) for eps, label in data.get("entries", [])]
        budget = data.get("budget")
        return cls(
            peer=str(data.get("peer", "")),
            budget=None if budget is None else float(budget),
            delta=float(data.get("delta", 1e-5)),
            entries=entries,
        )
