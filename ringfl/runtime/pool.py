"""The coordinator's gradient pool: uploads wait in a bounded channel, one task decides and applies.

Per-connection tasks :meth:`GradientPool.submit` an upload and wait for its decision (backpressure
instead of an unbounded queue); the background task :meth:`GradientPool.run` takes them out in
arrival order, asks :meth:`~GradientPool.decide` (which changes nothing) and :meth:`~GradientPool.apply`
s what was accepted, writes those to the update log (one fsync for everything that arrived
together) and only then releases the waiting senders — the seed's "gradient-processing thread".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from ringfl.acceptance import AcceptancePolicy, Reason
from ringfl.algorithms.base import AlgorithmSettings, CoordinatorAlgorithm, InvalidUpdate, Update
from ringfl.privacy.dp_sgd import DpSgdAccounts
from ringfl.privacy.ledger import PrivacyLedger
from ringfl.protocol import Upload
from ringfl.vectors import scaled

PAST_POLICY = frozenset({Reason.ACCEPTED, Reason.BUDGET_SPENT, Reason.REFUSED_BY_ALGORITHM})
"""Verdicts of uploads that passed the acceptance policy: their sender gets an ε account."""


@dataclass(frozen=True)
class Verdict:
    """Whether an upload is applied and, if not, why (``detail`` is what the peer is told)."""

    reason: Reason
    detail: str = ""

    @property
    def accepted(self) -> bool:
        return self.reason is Reason.ACCEPTED


ACCEPT = Verdict(Reason.ACCEPTED)


@dataclass
class PoolItem:
    """One upload waiting in the gradient pool, and the slot its decision is written to."""

    peer: str
    round: int
    base_version: int
    vector: Any
    num_samples: int
    decided: trio.Event = field(default_factory=trio.Event)
    verdict: Verdict = ACCEPT
    answers_round: int | None = None  # set when the upload answers the open round's start

    @classmethod
    def from_upload(cls, peer: str, upload: Upload) -> PoolItem:
        return cls(peer, upload.round, upload.base_version, upload.vector, upload.num_samples)

    def as_upload(self, index: int) -> Upload:
        """The update log's entry: ``seq`` is the upload's global applied index."""
        return Upload(vector=self.vector, round=self.round, base_version=self.base_version,
                      num_samples=self.num_samples, sender=self.peer, seq=index)


@dataclass
class PoolStats:
    submitted: int = 0
    applied: int = 0
    rejected: int = 0
    processed: int = 0  # decided by this process (not restored on resume)
    peak_depth: int = 0
    peak_waiting_senders: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def count(self, reason: Reason) -> None:
        if reason is Reason.ACCEPTED:
            self.applied += 1
        else:
            self.rejected += 1
            self.reasons[reason.text] = self.reasons.get(reason.text, 0) + 1


class RoundControl(Protocol):
    """What the pool reads of the round controller (the coordinator)."""

    round: int
    round_open: bool
    selected: set[str]

    def alive(self) -> list[Any]: ...


class GradientPool:
    """Decides and applies uploads against the global model; owns the peers' ε ledgers."""

    def __init__(self, algorithm: CoordinatorAlgorithm, policy: AcceptancePolicy, settings: AlgorithmSettings,
                 rounds: RoundControl, *, order: str, size: int, dp_sgd: DpSgdAccounts | None = None) -> None:
        self.algorithm = algorithm
        self.policy = policy
        self.settings = settings
        self.rounds = rounds
        self.order = order
        self.dp_sgd = dp_sgd  # example-level DP-SGD ε per peer
        self.ledgers: dict[str, PrivacyLedger] = {}
        self.stats = PoolStats()
        self.version = 0  # global model version: bumped by every applied update
        self.log: Callable[[list[Upload]], None] | None = None  # blocking: the update log's append
        self._send, self._receive = trio.open_memory_channel[PoolItem](size)

    # --- deciding and applying -------------------------------------------------------------

    def decide(self, item: PoolItem) -> Verdict:
        """Apply ``item`` or not, and why — without changing anything."""
        rounds = self.rounds
        if self.order != "async" and (not rounds.round_open or item.peer not in rounds.selected):
            return Verdict(Reason.ROUND_CLOSED if item.round < rounds.round else Reason.NOT_SELECTED)
        reason = self.policy.check(item.peer, item.round, item.base_version, rounds.round, item.vector)
        if reason is not Reason.ACCEPTED:
            return Verdict(reason, reason.text)
        epsilon = self.settings.epsilon or 0.0
        ledger = self.ledgers.get(item.peer)
        if epsilon and not (ledger if ledger is not None else self._new_ledger()).can_spend(epsilon):
            return Verdict(Reason.BUDGET_SPENT, f"privacy budget {self.settings.budget} spent")
        try:
            self.algorithm.check(self._update(item))
        except InvalidUpdate as exc:
            return Verdict(Reason.REFUSED_BY_ALGORITHM, str(exc))
        return ACCEPT

    def apply(self, item: PoolItem) -> None:
        """Apply an accepted upload (live, or replayed from the update log after a restart)."""
        self.algorithm.submit(self._update(item))
        self.policy.record(item.peer, item.round)
        if self.settings.epsilon:
            self.ledger(item.peer).spend(self.settings.epsilon, label=item.round)
        if self.dp_sgd is not None:
            self.dp_sgd.charge(item.peer, item.num_samples)
        self.stats.count(Reason.ACCEPTED)
        self.version += 1

    def process(self, item: PoolItem) -> bool:
        """Decide ``item``, apply it if accepted, count it; True if applied."""
        self.stats.processed += 1
        item.verdict = self.decide(item)
        if item.verdict.reason in PAST_POLICY:
            self.ledger(item.peer)  # an account from its first upload past the policy (checkpointed)
        rounds = self.rounds
        if item.peer in rounds.selected and item.round >= rounds.round:  # an older round's upload answers nothing
            item.answers_round = rounds.round
        if not item.verdict.accepted:
            self.stats.count(item.verdict.reason)
            return False
        if self.order == "async" and self.settings.async_scale == "peers":
            item.vector = scaled(item.vector, 1.0 / max(1, len(rounds.alive())))  # logged as applied
        self.apply(item)
        return True

    def ledger(self, peer: str) -> PrivacyLedger:
        if peer not in self.ledgers:
            self.ledgers[peer] = self._new_ledger()
        return self.ledgers[peer]

    def _new_ledger(self) -> PrivacyLedger:
        return PrivacyLedger(budget=self.settings.budget, delta=self.settings.dp_delta)

    @staticmethod
    def _update(item: PoolItem) -> Update:
        return Update(item.peer, item.round, item.vector, item.num_samples)

    # --- the channel -------------------------------------------------------------------------

    async def submit(self, item: PoolItem) -> Verdict:
        """Queue ``item`` (waits while the pool is full) and wait for its verdict."""
        self.stats.submitted += 1
        channel = self._send.statistics()
        self.stats.peak_depth = max(self.stats.peak_depth, channel.current_buffer_used + 1)
        self.stats.peak_waiting_senders = max(self.stats.peak_waiting_senders, channel.tasks_waiting_send)
        await self._send.send(item)
        await item.decided.wait()
        return item.verdict

    def depth(self) -> int:
        """Uploads waiting right now (the dashboard shows it live)."""
        return self._send.statistics().current_buffer_used

    async def run(self, on_batch: Callable[[], None]) -> None:
        """The background task: decide and apply in arrival order, log what was accepted, then
        release the senders; ``on_batch`` after each batch."""
        while True:
            batch = [await self._receive.receive()]
            while True:
                try:
                    batch.append(self._receive.receive_nowait())
                except trio.WouldBlock:
                    break
            accepted = [item for item in batch if self.process(item)]
            if accepted and self.log is not None:
                first = self.stats.applied - len(accepted) + 1
                await trio.to_thread.run_sync(self.log, [item.as_upload(first + i) for i, item in enumerate(accepted)])
            for item in batch:
                item.decided.set()
            on_batch()

    # --- what the records show ---------------------------------------------------------------

    def record_fields(self) -> dict[str, Any]:
        """The pool's part of a round record."""
        stats = self.stats
        return {"accepted": stats.applied, "rejected": stats.rejected, "rejected_reasons": dict(stats.reasons),
                "pool_depth": self.depth(), "pool_peak": stats.peak_depth,
                "pool_waiting_senders": stats.peak_waiting_senders}

    def epsilon_per_peer(self) -> dict[str, float]:
        return {peer: ledger.total for peer, ledger in sorted(self.ledgers.items())}
