"""Example-level DP-SGD at every peer (Abadi et al. 2016): configuration, σ planning, the ledger.

Each peer trains with Poisson-sampled batches (rate q = B/N over its own N records,
round(N/B) steps per local epoch), clips every example's gradient to L2 norm C and adds
N(0, σ²C²) to the clipped sum (:meth:`ringfl.model.gluon.GluonModel.train_dp`). Everything a peer
sends afterwards — a FedAvg delta, a DSSGD selection, a gossip message, in either mode — is
post-processing of those noisy steps, so the per-peer guarantee (ε at δ, RDP accountant of
:mod:`ringfl.privacy.accountant`) protects each of its records against the coordinator, the
neighbours and anyone on the wire, whatever algorithm runs on top.

Configured under ``training.privacy`` (sent to every peer at join)::

    training:
      lr: 2.0
      batch_size: 256          # the expected Poisson batch B
      privacy:
        mechanism: dp-sgd
        clip: 1.0              # C
        target_epsilon: 3      # σ calibrated so the whole run spends ε = 3 at δ ...
        delta: 1.0e-5          # ... (or give noise_multiplier: σ directly)
        budget: null           # refuse to train past this ε (default: target_epsilon)
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ringfl.checkpoint import atomic_write_bytes
from ringfl.errors import ConfigError
from ringfl.privacy.accountant import GaussianLedger, epsilon, noise_for

MECHANISMS = ("none", "dp-sgd")


@dataclass(frozen=True)
class DpSgdConfig:
    """``training.privacy``: example-level DP-SGD at every peer (off by default)."""

    mechanism: str = "none"  # none | dp-sgd
    clip: float = 1.0  # per-example gradient L2 bound C
    noise_multiplier: float | None = None  # σ; or leave it empty and give target_epsilon
    target_epsilon: float | None = None  # calibrate σ so the whole run spends this ε at delta
    delta: float = 1e-5
    budget: float | None = None  # a peer refuses to train past this ε (default: target_epsilon)

    @property
    def enabled(self) -> bool:
        return self.mechanism == "dp-sgd"

    def check(self, where: str = "training.privacy") -> None:
        """One-line ConfigErrors for inconsistent settings."""
        problems = [
            (self.mechanism in MECHANISMS, f"mechanism must be one of {', '.join(MECHANISMS)}"),
            (self.clip > 0, "clip must be > 0"),
            (0 < self.delta < 1, "delta must be in (0, 1)"),
            (self.noise_multiplier is None or self.noise_multiplier >= 0, "noise_multiplier must be >= 0"),
            (self.target_epsilon is None or self.target_epsilon > 0, "target_epsilon must be > 0"),
            (self.budget is None or self.budget > 0, "budget must be > 0"),
            (not self.enabled or (self.noise_multiplier is None) != (self.target_epsilon is None),
             "dp-sgd needs exactly one of noise_multiplier and target_epsilon"),
        ]
        for ok, message in problems:
            if not ok:
                raise ConfigError(f"{where}: {message}")


@dataclass(frozen=True)
class DpSgdPlan:
    """What one peer runs: sample rate, steps, σ, and the ε it reaches at the end of the run."""

    sample_rate: float
    steps_per_round: int
    rounds: int
    noise_multiplier: float
    epsilon: float
    delta: float

    @property
    def total_steps(self) -> int:
        return self.steps_per_round * self.rounds


def sampling(num_samples: int, batch_size: int) -> tuple[float, int]:
    """Poisson rate q = B/N and round(N/B) steps per epoch (at least one)."""
    if num_samples < 1 or batch_size < 1:
        raise ConfigError("DP-SGD needs at least one training example and batch_size >= 1")
    return min(1.0, batch_size / num_samples), max(1, round(num_samples / batch_size))


def plan(config: DpSgdConfig, *, num_samples: int, batch_size: int, rounds: int, epochs: int = 1) -> DpSgdPlan:
    """σ (given, or calibrated to ``target_epsilon``) and the resulting ε for a whole run."""
    config.check()
    if rounds < 1 or epochs < 1:
        raise ConfigError("rounds and epochs must be >= 1")
    rate, per_epoch = sampling(num_samples, batch_size)
    steps = per_epoch * epochs
    if config.noise_multiplier is not None:
        sigma = config.noise_multiplier
    else:
        assert config.target_epsilon is not None
        sigma = noise_for(config.target_epsilon, rate, steps * rounds, config.delta)
    eps = epsilon(sigma, rate, steps * rounds, config.delta) if sigma > 0 else math.inf
    return DpSgdPlan(rate, steps, rounds, sigma, eps, config.delta)


class DpSgdTrainer:
    """One peer's DP-SGD: trains through the model, charges its :class:`GaussianLedger` per round,
    refuses (``BudgetExhausted``) a round that would pass the budget, persists the ledger."""

    def __init__(self, config: DpSgdConfig, run_plan: DpSgdPlan, *, peer: str = "",
                 ledger_path: str | None = None) -> None:
        self.config = config
        self.plan = run_plan
        budget = config.budget if config.budget is not None else config.target_epsilon
        self.path = Path(ledger_path) if ledger_path else None
        self.ledger = GaussianLedger(peer=peer, delta=config.delta, budget=budget)
        if self.path is not None and self.path.is_file():
            try:
                saved = GaussianLedger.from_dict(json.loads(self.path.read_text()))
            except (ValueError, TypeError, KeyError) as exc:
                raise ConfigError(f"DP-SGD ledger {self.path} is unreadable ({exc})") from None
            self.ledger.segments = saved.segments

    @property
    def epsilon(self) -> float:
        return self.ledger.total

    async def train(self, model: Any, params: Any, x: Any, y: Any, *, lr: float,
                    batch_size: int, steps: int | None = None) -> tuple[Any, float]:
        """A round of local DP-SGD, or ``steps`` of its steps (a ring peer exchanging within the
        round); the ledger is charged (and saved) before anything leaves.

        Every step samples its batch independently, so a round cut into slices is the same
        mechanism as the whole round and the accountant composes the same number of steps.
        Sampling and noise come from OS entropy, never from the run's (public) seed.
        """
        p = self.plan
        n = p.steps_per_round if steps is None else steps
        self.ledger.check(p.noise_multiplier, p.sample_rate, n)
        result = await model.train_dp(params, x, y, lr=lr, batch_size=batch_size, clip=self.config.clip,
                                      noise_multiplier=p.noise_multiplier, steps=n, seed=None)
        self.ledger.record(p.noise_multiplier, p.sample_rate, n)
        self.save()
        return result.params, result.loss

    def save(self) -> None:
        if self.path is not None:
            text = json.dumps(self.ledger.to_dict(), sort_keys=True) + "\n"
            atomic_write_bytes(self.path, text.encode())

    def metrics(self) -> dict[str, Any]:
        """What a peer adds to its per-round metrics."""
        eps = self.epsilon
        return {"epsilon": eps if math.isfinite(eps) else None, "dp_delta": self.config.delta,
                "dp_noise_multiplier": self.plan.noise_multiplier, "dp_steps": self.ledger.steps}


class DpSgdAccounts:
    """The coordinator's own record of every peer's DP-SGD ε: one charge per accepted upload, at
    the peer's reported sample count. It needs nothing from the peer but the upload, so the run's
    metrics and summary show ε per peer even from peers that report nothing else."""

    def __init__(self, config: DpSgdConfig, *, batch_size: int, rounds: int, epochs: int) -> None:
        self.config, self.batch_size, self.rounds, self.epochs = config, batch_size, rounds, epochs
        self.ledgers: dict[str, GaussianLedger] = {}
        self._plans: dict[int, DpSgdPlan] = {}

    def charge(self, peer: str, num_samples: int) -> None:
        """One round of local DP-SGD by ``peer`` over ``num_samples`` records."""
        run_plan = self._plans.get(num_samples)
        if run_plan is None:
            run_plan = self._plans[num_samples] = plan(
                self.config, num_samples=max(num_samples, 1), batch_size=self.batch_size,
                rounds=self.rounds, epochs=self.epochs)
        ledger = self.ledgers.setdefault(peer, GaussianLedger(peer=peer, delta=self.config.delta))
        ledger.record(run_plan.noise_multiplier, run_plan.sample_rate, run_plan.steps_per_round)

    def to_dict(self) -> dict[str, Any]:
        """For the coordinator's checkpoint."""
        return {peer: ledger.to_dict() for peer, ledger in self.ledgers.items()}

    def restore(self, data: dict[str, Any]) -> None:
        self.ledgers = {peer: GaussianLedger.from_dict(d) for peer, d in data.items()}

    def per_peer(self) -> dict[str, float | None]:
        """ε at δ per peer (None for an unbounded ε: no noise)."""
        out = {}
        for peer, ledger in sorted(self.ledgers.items()):
            eps = ledger.total
            out[peer] = eps if math.isfinite(eps) else None
        return out

    def fields(self) -> dict[str, Any]:
        """Keys for a round record or summary: the largest ε, ε per peer, and δ."""
        per_peer = self.per_peer()
        values = [v for v in per_peer.values()]
        worst = None if any(v is None for v in values) else max(values, default=0.0)
        return {"epsilon_spent": worst, "epsilon_per_peer": per_peer, "dp_delta": self.config.delta,
                "dp_mechanism": "dp-sgd"}
