"""Coordinator mode: the seed's parameter server, on trio.

It holds the global model (inside a :class:`~ringfl.algorithms.CoordinatorAlgorithm`) and a
**gradient pool**: per-connection tasks put uploads into a bounded channel, one background task
takes them out, decides whether to apply each (:mod:`ringfl.acceptance`) and acknowledges the
decision — the seed's "network thread + gradient-processing thread", with backpressure instead
of an unbounded queue. A round controller starts rounds, closes them when every selected peer
answered or the deadline passed with a quorum, evaluates, writes metrics and checkpoints.

The session side (join, spec confirmation, the receive loop) is shared with ring mode's
bootstrap through :class:`~ringfl.runtime.session.SessionServer`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trio

from ringfl.acceptance import AcceptancePolicy, Reason
from ringfl.algorithms import AlgorithmSettings, make_coordinator_algorithm
from ringfl.algorithms.base import InvalidUpdate, Update
from ringfl.checkpoint import load_checkpoint, save_checkpoint
from ringfl.config import RunConfig
from ringfl.data import load_source, prepare
from ringfl.errors import ConfigError
from ringfl.metrics import MetricsLog
from ringfl.model import load_spec
from ringfl.model.runtime import Model, shared_model
from ringfl.privacy.dp_sgd import DpSgdAccounts
from ringfl.privacy.ledger import PrivacyLedger
from ringfl.protocol import (
    Ack,
    AckReason,
    Message,
    Params,
    ParamsRequest,
    RoundStart,
    Upload,
)
from ringfl.runtime.session import PeerSession, SessionServer
from ringfl.transport import Network
from ringfl.vectors import scaled
from ringfl.wal import UpdateLog

log = logging.getLogger(__name__)

ACK_REASON = {
    Reason.ACCEPTED: AckReason.OK,
    Reason.STALE: AckReason.STALE,
    Reason.DUPLICATE: AckReason.DUPLICATE,
    Reason.NOT_SELECTED: AckReason.NOT_SELECTED,
    Reason.ROUND_CLOSED: AckReason.STALE,
    Reason.BUDGET_SPENT: AckReason.POLICY,
    Reason.NORM_TOO_LARGE: AckReason.POLICY,
}
"""Wire reason for each acceptance reason; the rest are ``INVALID``. ``detail`` names it exactly."""


@dataclass
class PoolItem:
    """One upload waiting in the gradient pool, and the slot its decision is written to."""

    peer: str
    round: int
    base_version: int
    vector: Any
    num_samples: int
    decided: trio.Event = field(default_factory=trio.Event)
    reason: Reason = Reason.ACCEPTED
    detail: str = ""
    answers_round: int | None = None  # set when the upload answers the open round's start


@dataclass
class PoolStats:
    submitted: int = 0
    applied: int = 0
    rejected: int = 0
    peak_depth: int = 0
    peak_waiting_senders: int = 0
    reasons: dict[str, int] = field(default_factory=dict)

    def count(self, reason: Reason) -> None:
        if reason is Reason.ACCEPTED:
            self.applied += 1
        else:
            self.rejected += 1
            self.reasons[reason.text] = self.reasons.get(reason.text, 0) + 1


def _finite_or_none(value: float) -> float | None:
    """JSON has no infinity: a vacuous bound is written as null."""
    return value if math.isfinite(value) else None


def _secagg(coordinator: Coordinator) -> Any:
    """Secure aggregation for this coordinator (imported only when a run asks for it)."""
    from ringfl.secagg.server import SecAggCoordinator

    return SecAggCoordinator(coordinator)


def default_order(config: RunConfig) -> str:
    """DSSGD's reference exchange is round robin; naive FedSGD/FedAvg are synchronous."""
    if config.order != "auto":
        return config.order
    return "round-robin" if config.algorithm == "dssgd" else "sync"


class Coordinator(SessionServer):
    """The parameter server of coordinator mode."""

    def __init__(self, config: RunConfig, network: Network, out_dir: Path | None = None,
                 *, resume: bool = False, model: Model | None = None) -> None:
        spec = load_spec(config.model)
        self.model = model or shared_model(spec)
        super().__init__(config, network, spec, self.model.num_params)
        self.order = default_order(config)
        self.settings = AlgorithmSettings.from_mapping(config.algorithm_settings)
        self.rng = np.random.default_rng(config.seed)
        self.algorithm = make_coordinator_algorithm(
            config.algorithm, self.model.init_params(config.seed), self.settings, self.rng)
        acceptance = config.acceptance
        if self.order == "async" and acceptance.max_staleness < 1:  # the round moves under every peer
            acceptance = dataclasses.replace(acceptance, max_staleness=1)
        self.policy = AcceptancePolicy(acceptance, self.num_params)
        self.secagg = None if config.secagg is None else _secagg(self)
        self.pool_stats = PoolStats()
        self.ledgers: dict[str, PrivacyLedger] = {}
        t = config.training
        self.dp_sgd = (DpSgdAccounts(t.privacy, batch_size=t.batch_size, rounds=config.rounds, epochs=t.epochs)
                       if t.privacy.enabled else None)  # example-level DP-SGD ε per peer
        self.round = 0
        self.version = 0  # global model version: bumped by every applied update
        self.round_open = False
        self.selected: set[str] = set()
        self.async_started: set[str] = set()
        self.async_answers = 0
        self.answered: set[str] = set()
        self.out_dir = out_dir
        test = load_source(config.data, num_classes=spec.num_classes).test
        self.test_x, self.test_y = prepare(test.x, spec.input_shape), test.y
        saved = load_checkpoint(out_dir / "checkpoint.npz") if resume and out_dir else None  # before any write
        self.metrics = MetricsLog(out_dir, append=resume) if out_dir else None  # inputs are valid now
        self.history: list[dict[str, Any]] = []
        self.started = time.perf_counter()
        self.wal = UpdateLog(out_dir / "updates.wal", self.num_params) if out_dir else None
        if saved is not None:
            self._restore(*saved)
        elif self.wal is not None:
            self.wal.reset()
        send, receive = trio.open_memory_channel[PoolItem](config.pool_size)
        self._pool_send, self._pool_receive = send, receive

    # --- checkpoints -------------------------------------------------------------------------

    @property
    def checkpoint_path(self) -> Path | None:
        return self.out_dir / "checkpoint.npz" if self.out_dir else None

    def _checkpoint(self) -> None:
        if self.checkpoint_path is None:
            return
        meta = {
            "round": self.round, "version": self.version, "spec_hash": self.spec.hash,
            "algorithm": self.config.algorithm, "indices": self.indices,
            "ledgers": {peer: ledger.to_dict() for peer, ledger in self.ledgers.items()},
            "applied": self.pool_stats.applied,
        }
        meta["seen"] = sorted(self.policy.seen)
        if self.secagg is not None:
            meta["secagg_rounds"] = self.secagg.closed_rounds  # noisy sums released, for ε
        if self.dp_sgd is not None:
            meta["dp_sgd"] = self.dp_sgd.to_dict()
        save_checkpoint(self.checkpoint_path, self.algorithm.state(), meta)
        if self.wal is not None:
            self.wal.reset()

    def _restore(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        if meta["spec_hash"] != self.spec.hash or meta["algorithm"] != self.config.algorithm:
            raise ConfigError(f"cannot resume: {self.checkpoint_path} is for another model or algorithm")
        self.algorithm.load_state(arrays)
        self.round, self.version = int(meta["round"]), int(meta["version"])
        self.indices = {k: int(v) for k, v in meta["indices"].items()}
        self.ledgers = {p: PrivacyLedger.from_dict(d) for p, d in meta["ledgers"].items()}
        if self.secagg is not None:
            self.secagg.closed_rounds = int(meta.get("secagg_rounds", 0))
        if self.dp_sgd is not None:
            self.dp_sgd.restore(meta.get("dp_sgd", {}))
        self.pool_stats.applied = int(meta.get("applied", 0))
        self.policy.restore({(str(peer), int(r)) for peer, r in meta.get("seen", [])})
        self._replay_log(self.pool_stats.applied)
        log.info("resumed at round %d from %s", self.round, self.checkpoint_path)

    # --- the session side ----------------------------------------------------------------

    async def on_request(self, session: PeerSession, message: Message) -> None:
        if isinstance(message, ParamsRequest):
            await session.stream.send(Params(vector=self.algorithm.download(), round=self.round,
                                             model_version=self.round))
        elif isinstance(message, Upload):
            await self._pool_upload(session, message)
        elif self.secagg is not None and self.secagg.handles(message):
            await self.secagg.on_message(session, message)
        else:
            await super().on_request(session, message)

    async def _pool_upload(self, session: PeerSession, upload: Upload) -> None:
        item = PoolItem(session.peer_id, upload.round, upload.base_version, upload.vector,
                        upload.num_samples)
        self.pool_stats.submitted += 1
        self._observe_pool()
        await self._pool_send.send(item)  # backpressure: waits while the pool is full
        await item.decided.wait()
        accepted = item.reason is Reason.ACCEPTED
        if not accepted:
            session.rejected[item.reason.text] = session.rejected.get(item.reason.text, 0) + 1
        try:
            await session.stream.send(Ack(accepted=accepted, reason=ACK_REASON.get(item.reason, AckReason.INVALID),
                                          ack_seq=upload.seq, detail=item.detail, round=self.round))
        finally:
            self._answered(item)

    def _answered(self, item: PoolItem) -> None:
        """A selected peer counts as answered once its acknowledgement is on the wire: the round
        may close now, and its next round start cannot overtake the acknowledgement."""
        if item.answers_round == self.round and item.peer in self.selected:
            self.answered.add(item.peer)
            self.progress.notify()

    def pool_depth(self) -> int:
        """Uploads waiting in the gradient pool right now (the dashboard shows it live)."""
        return self._pool_send.statistics().current_buffer_used

    def _observe_pool(self) -> None:
        stats = self._pool_send.statistics()
        self.pool_stats.peak_depth = max(self.pool_stats.peak_depth, stats.current_buffer_used + 1)
        self.pool_stats.peak_waiting_senders = max(self.pool_stats.peak_waiting_senders,
                                                   stats.tasks_waiting_send)

    async def apply_pool(self) -> None:
        """The background gradient-processing task: decide and apply in arrival order, log what
        was accepted (one fsync for everything that arrived together), then acknowledge."""
        while True:
            batch = [await self._pool_receive.receive()]
            while True:
                try:
                    batch.append(self._pool_receive.receive_nowait())
                except trio.WouldBlock:
                    break
            accepted = [item for item in batch if self._apply(item)]
            if accepted and self.wal is not None:
                entries = [self._log_entry(item, self.pool_stats.applied - len(accepted) + i + 1)
                           for i, item in enumerate(accepted)]
                await trio.to_thread.run_sync(self.wal.append, entries)
            for item in batch:
                item.decided.set()
            self.progress.notify()

    def _apply(self, item: PoolItem) -> bool:
        if self.order == "async":
            self.async_answers += 1
        item.reason, item.detail = self._decide(item)
        self.pool_stats.count(item.reason)
        if item.peer in self.selected and item.round >= self.round:  # an older round's upload answers nothing
            item.answers_round = self.round
        if item.reason is Reason.ACCEPTED:
            self.version += 1
            return True
        return False

    @staticmethod
    def _log_entry(item: PoolItem, index: int) -> Upload:
        return Upload(vector=item.vector, round=item.round, base_version=item.base_version,
                      num_samples=item.num_samples, sender=item.peer, seq=index)

    def _replay_log(self, applied: int) -> None:
        """Re-apply uploads acknowledged after the checkpoint (a crash lost them from memory)."""
        assert self.wal is not None
        replayed = 0
        for entry in self.wal.read():
            if entry.seq <= applied:
                continue
            self.algorithm.submit(Update(entry.sender, entry.round, entry.vector, entry.num_samples))
            self.policy.record(entry.sender, entry.round)
            if self.settings.epsilon:
                self._ledger(entry.sender).spend(self.settings.epsilon, label=entry.round)
            if self.dp_sgd is not None:
                self.dp_sgd.charge(entry.sender, entry.num_samples)
            self.pool_stats.applied += 1
            self.version += 1
            replayed += 1
        if replayed:
            log.info("replayed %d acknowledged uploads from %s", replayed, self.wal.path)

    def _decide(self, item: PoolItem) -> tuple[Reason, str]:
        if self.order != "async" and (not self.round_open or item.peer not in self.selected):
            return Reason.ROUND_CLOSED if item.round < self.round else Reason.NOT_SELECTED, ""
        reason = self.policy.check(item.peer, item.round, item.base_version, self.round, item.vector)
        if reason is not Reason.ACCEPTED:
            return reason, reason.text
        ledger = self._ledger(item.peer)
        epsilon = self.settings.epsilon or 0.0
        if epsilon and not ledger.can_spend(epsilon):
            return Reason.BUDGET_SPENT, f"privacy budget {self.settings.budget} spent"
        if self.order == "async" and self.settings.async_scale == "peers":
            item.vector = scaled(item.vector, 1.0 / max(1, len(self.alive())))  # logged as applied
        try:
            self.algorithm.submit(Update(item.peer, item.round, item.vector, item.num_samples))
        except InvalidUpdate as exc:
            return Reason.REFUSED_BY_ALGORITHM, str(exc)
        if epsilon:
            ledger.spend(epsilon, label=item.round)
        if self.dp_sgd is not None:
            self.dp_sgd.charge(item.peer, item.num_samples)
        self.policy.record(item.peer, item.round)
        return Reason.ACCEPTED, ""

    def _ledger(self, peer: str) -> PrivacyLedger:
        if peer not in self.ledgers:
            self.ledgers[peer] = PrivacyLedger(budget=self.settings.budget, delta=self.settings.dp_delta)
        return self.ledgers[peer]

    # --- rounds ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> dict[str, Any]:
        """Serve until all rounds are done; returns the summary. ``nursery.start`` gives the address."""
        async with trio.open_nursery() as nursery:
            address = await nursery.start(self.network.serve,
                                          f"{self.config.host}:{self.config.port}" if self.config.host else "",
                                          self.handle_stream)
            nursery.start_soon(self.apply_pool)
            self.address = address
            task_status.started(address)
            log.info("coordinator listening on %s (%s, order %s)", address, self.config.algorithm, self.order)
            summary = await self.run_rounds()
            nursery.cancel_scope.cancel()
        return summary

    async def run_rounds(self) -> dict[str, Any]:
        await self.wait_for_peers()
        if self.round == 0 and not self.history:
            await self._record(0, [])
            self._checkpoint()  # so a run stopped in its first round can --resume too
        while self.round < self.config.rounds:
            participants = await (self._play_async() if self.order == "async" else
                                  self.secagg.play_round() if self.secagg else self._play_round())
            self.algorithm.end_round()
            self.round_open = False
            self.round += 1
            self.policy.forget_before(self.round)
            await self._record(self.round, participants)
            if self.round % self.config.checkpoint_every == 0 or self.round == self.config.rounds:
                self._checkpoint()
        await self.end_run("all rounds done")
        return self._summary()

    async def _play_async(self) -> list[str]:
        """Asynchronous DSSGD: peers loop on their own (download, epoch, upload) and the server
        applies each upload on arrival; a "round" here is one upload per live peer, for metrics,
        evaluation and checkpoints."""
        for session in self.alive():
            if session.peer_id not in self.async_started:
                self.async_started.add(session.peer_id)
                await self.send_quietly(session, RoundStart(round=self.round, selected=True, info={
                    "async": True, "epochs": self.config.rounds - self.round}))
        start = self.async_answers
        everything = self.config.rounds * len(self.async_started)  # every peer did all its epochs

        def done() -> bool:
            return (self.async_answers - start >= len(self.alive()) or self.async_answers >= everything
                    or not self.alive())

        await self.progress.wait_until(done, trio.current_time() + self.config.round_timeout)
        return sorted(self.async_started)

    def _groups(self, peers: list[PeerSession]) -> list[list[PeerSession]]:
        if self.order == "sync":  # at most max_parallel training at once: fewer processes per core
            size = self.config.max_parallel or len(peers) or 1
            return [peers[i:i + size] for i in range(0, len(peers), size)]
        if self.order == "random":
            return [[peers[i]] for i in self.rng.permutation(len(peers))]
        return [[peer] for peer in peers]  # round-robin

    async def _play_round(self) -> list[str]:
        """Start the round for each group in turn; returns who answered."""
        answered: list[str] = []
        self.round_open = True
        for group in self._groups(self.alive()):
            self.selected = {s.peer_id for s in group}
            # Resumed mid-round: an upload of this round already applied (replayed from the log)
            # answers it; asking that peer again would only earn it a duplicate rejection.
            self.answered = {p for p in self.selected if (p, self.round) in self.policy.seen}
            start = RoundStart(round=self.round, deadline=self.config.round_timeout, selected=True)
            await self.broadcast([s for s in group if s.peer_id not in self.answered], start)
            await self._wait_for_answers(group)
            answered += sorted(self.answered)
        self.selected = set()
        return answered

    async def _wait_for_answers(self, group: list[PeerSession]) -> None:
        """All selected peers, or the deadline with a quorum; never forever (twice the deadline)."""
        def everyone() -> bool:
            return all(s.peer_id in self.answered or not s.alive for s in group)

        now = trio.current_time()
        timeout = self.config.round_timeout
        if await self.progress.wait_until(everyone, now + timeout):
            return
        quorum = min(self.config.min_peers, len(group))
        await self.progress.wait_until(lambda: len(self.answered) >= quorum or everyone(), now + 2 * timeout)
        if len(self.answered) < quorum:
            log.warning("round %d closed without quorum (%d of %d answered)", self.round, len(self.answered), quorum)

    async def _record(self, round_: int, participants: list[str]) -> None:
        params = self.algorithm.params.copy()
        loss, accuracy = (await self.model.evaluate(params, self.test_x, self.test_y)
                          if round_ % self.config.eval_every == 0 or round_ == self.config.rounds
                          else (float("nan"), float("nan")))
        bytes_in, bytes_out = self.bytes_total()
        stats = self._pool_send.statistics()
        record = {
            "round": round_, "accuracy": accuracy, "loss": loss, "bytes_in": bytes_in, "bytes_out": bytes_out,
            "accepted": self.pool_stats.applied, "rejected": self.pool_stats.rejected,
            "rejected_reasons": dict(self.pool_stats.reasons), "participants": len(participants),
            "pool_depth": stats.current_buffer_used, "pool_peak": self.pool_stats.peak_depth,
            "pool_waiting_senders": self.pool_stats.peak_waiting_senders,
            "seconds": round(time.perf_counter() - self.started, 3), "model_version": self.version,
        }
        if self.settings.epsilon:
            record["epsilon_spent"] = max((lg.total for lg in self.ledgers.values()), default=0.0)
            record["epsilon_per_peer"] = {p: lg.total for p, lg in sorted(self.ledgers.items())}
        if self.dp_sgd is not None:
            record.update(self.dp_sgd.fields())
        record.update(self.algorithm.privacy_report())
        self.history.append(record)
        if self.metrics:
            self.metrics.write(record)
        log.info("round %d: accuracy %.4f loss %.4f (%d updates accepted, %d rejected)",
                 round_, accuracy, loss, self.pool_stats.applied, self.pool_stats.rejected)
        for callback in self.on_round:
            callback(record)

    def _summary(self) -> dict[str, Any]:
        last = self.history[-1] if self.history else {}
        summary = {
            "mode": "coordinator", "algorithm": self.config.algorithm, "order": self.order,
            "rounds": self.round, "final_accuracy": last.get("accuracy"), "final_loss": last.get("loss"),
            "accuracy_per_round": [r["accuracy"] for r in self.history],
            "bytes_in": last.get("bytes_in"), "bytes_out": last.get("bytes_out"),
            "accepted": self.pool_stats.applied, "rejected": self.pool_stats.rejected,
            "rejected_reasons": dict(self.pool_stats.reasons), "peers": sorted(self.indices),
            "refused_connections": self.refused_connections,
            "wall_time_s": round(time.perf_counter() - self.started, 3),
            "model": self.spec.name, "num_params": self.num_params, "spec_hash": self.spec.hash,
        }
        if self.settings.epsilon:
            summary["epsilon_per_peer"] = {p: lg.total for p, lg in sorted(self.ledgers.items())}
            summary["epsilon_advanced"] = {p: _finite_or_none(lg.advanced_total())
                                           for p, lg in sorted(self.ledgers.items())}
        if self.secagg is not None:
            summary["secagg"] = self.secagg.summary()
        if self.dp_sgd is not None:
            summary.update(self.dp_sgd.fields())
        summary.update(self.algorithm.privacy_report())
        if self.metrics:
            self.metrics.write_summary(summary)
        return summary
