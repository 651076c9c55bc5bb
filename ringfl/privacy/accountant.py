"""(ε, δ) accounting for Gaussian mechanisms with Google's maintained ``dp-accounting`` library.

Everything here is the RDP accountant of ``dp_accounting.rdp`` (Mironov 2017; Poisson-subsampled
Gaussian after Mironov, Talwar & Zhang 2019): ringfl implements no accounting maths itself, so
the bounds are those the library's tests check. Two uses:

* example-level DP-SGD at a peer: each step is ``PoissonSampledDpEvent(q, GaussianDpEvent(σ))``
  with q = B/N, composed over every step of the run;
* user-level DP-FedAvg at the coordinator: the same event with q = peers sampled / peers.

The functional API (:func:`epsilon`, :func:`noise_for`) is what other mechanisms (e.g. distributed
noise under secure aggregation) reuse; :class:`GaussianLedger` is the per-peer running record.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import dp_accounting
from dp_accounting import rdp

from ringfl.errors import ConfigError
from ringfl.privacy.ledger import BudgetExhausted

# dp-accounting logs (through absl) every low fractional RDP order it skips for not converging;
# the skip is correct (the order is just not used) and the warning would flood peers' logs.
logging.getLogger("absl").setLevel(logging.ERROR)

_SLACK = 1e-9  # relative float tolerance when comparing ε with a budget


def _event(noise_multiplier: float, sample_rate: float) -> dp_accounting.DpEvent:
    gaussian = dp_accounting.GaussianDpEvent(noise_multiplier)
    if sample_rate >= 1.0:
        return gaussian
    return dp_accounting.PoissonSampledDpEvent(sample_rate, gaussian)


def _check(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> None:
    if not noise_multiplier >= 0:
        raise ConfigError("noise multiplier must be >= 0")
    if not 0 < sample_rate <= 1:
        raise ConfigError("sample rate must be in (0, 1]")
    if steps < 0:
        raise ConfigError("steps must be >= 0")
    if not 0 < delta < 1:
        raise ConfigError("delta must be in (0, 1)")


def epsilon_of(segments: list[tuple[float, float, int]], delta: float) -> float:
    """ε at ``delta`` after the (noise multiplier, sample rate, steps) segments, in any order.

    σ = 0 anywhere (no noise) gives ∞; no steps at all gives 0.
    """
    steps = [(sigma, q, n) for sigma, q, n in segments if n > 0]
    if not steps:
        return 0.0
    if any(sigma == 0 for sigma, _, _ in steps):
        return math.inf
    accountant = rdp.RdpAccountant()
    for sigma, q, n in steps:
        accountant.compose(_event(sigma, q), n)
    return float(accountant.get_epsilon(delta))


def epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """ε at ``delta`` of ``steps`` Poisson-sampled Gaussian steps (RDP accountant)."""
    _check(noise_multiplier, sample_rate, steps, delta)
    return epsilon_of([(noise_multiplier, sample_rate, steps)], delta)


def noise_for(target_epsilon: float, sample_rate: float, steps: int, delta: float) -> float:
    """The smallest noise multiplier σ whose ``steps`` steps stay within (target ε, δ).

    A bisection on :func:`epsilon` by ``dp_accounting.calibrate_dp_mechanism`` (σ to 1e-4 or
    better, rounded up so the target holds).
    """
    _check(1.0, sample_rate, max(steps, 1), delta)
    if not target_epsilon > 0:
        raise ConfigError("target epsilon must be > 0")
    if steps == 0:
        return 0.0
    sigma = dp_accounting.calibrate_dp_mechanism(
        rdp.RdpAccountant,
        lambda s: dp_accounting.SelfComposedDpEvent(_event(s, sample_rate), steps),
        target_epsilon, delta,
        bracket_interval=dp_accounting.LowerEndpointAndGuess(1e-3, 1.0), tol=1e-5,
    )
    return float(sigma)


@dataclass
class GaussianLedger:
    """The Gaussian steps one party has run, their ε at ``delta``, and an optional ε budget.

    A party checks :meth:`can_run` *before* it trains, so it never releases anything past its
    budget; the refusal is a :class:`~ringfl.privacy.ledger.BudgetExhausted` with a one-line message.
    """

    peer: str = ""
    delta: float = 1e-5
    budget: float | None = None
    segments: list[tuple[float, float, int]] = field(default_factory=list)

    @property
    def steps(self) -> int:
        return sum(n for _, _, n in self.segments)

    @property
    def total(self) -> float:
        """ε at ``delta`` over everything recorded (RDP composition)."""
        return epsilon_of(self.segments, self.delta)

    def epsilon_after(self, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        return epsilon_of([*self.segments, (noise_multiplier, sample_rate, steps)], self.delta)

    def check(self, noise_multiplier: float, sample_rate: float, steps: int) -> float:
        """ε after these steps; raises :class:`BudgetExhausted` if that passes the budget."""
        after = self.epsilon_after(noise_multiplier, sample_rate, steps)
        if self.budget is not None and after > self.budget * (1 + _SLACK):
            raise BudgetExhausted(
                f"peer {self.peer or '?'}: DP-SGD budget ε={self.budget:.4g} at δ={self.delta:g} "
                f"would be exceeded (spent {self.total:.4g}; one more round makes {after:.4g})")
        return after

    def record(self, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        """Charge steps that ran (merged into the last segment when σ and q are the same)."""
        if self.segments and self.segments[-1][:2] == (noise_multiplier, sample_rate):
            sigma, q, n = self.segments[-1]
            self.segments[-1] = (sigma, q, n + steps)
        else:
            self.segments.append((float(noise_multiplier), float(sample_rate), int(steps)))

    def to_dict(self) -> dict[str, Any]:
        total = self.total
        return {"peer": self.peer, "delta": self.delta, "budget": self.budget,
                "segments": [list(s) for s in self.segments], "steps": self.steps,
                "epsilon": total if math.isfinite(total) else None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GaussianLedger:
        """Inverse of :meth:`to_dict` (ε is recomputed, not trusted)."""
        budget = data.get("budget")
        return cls(peer=str(data.get("peer", "")), delta=float(data.get("delta", 1e-5)),
                   budget=None if budget is None else float(budget),
                   segments=[(float(s), float(q), int(n)) for s, q, n in data.get("segments", [])])
