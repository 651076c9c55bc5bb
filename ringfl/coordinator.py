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
from pathlib import Path
from typing import Any

import numpy as np
import trio

from ringfl.acceptance import AcceptancePolicy, Reason
from ringfl.algorithms import AlgorithmSettings, make_coordinator_algorithm
from ringfl.config import RunConfig
from ringfl.data import load_source, prepare
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
from ringfl.protocol.payloads import RoundPlan
from ringfl.runtime.pool import GradientPool, PoolItem
from ringfl.runtime.records import Recorded, RoundRecord, RoundRecorder
from ringfl.runtime.session import PeerSession, SessionServer
from ringfl.runtime.store import RunStore
from ringfl.transport import Network

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


class Coordinator(Recorded, SessionServer):
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
        t = config.training
        self.pool = GradientPool(self.algorithm, self.policy, self.settings, self, order=self.order,
                                 size=config.pool_size, dp_sgd=DpSgdAccounts(
                                     t.privacy, batch_size=t.batch_size, rounds=config.rounds, epochs=t.epochs)
                                 if t.privacy.enabled else None)
        self.round = 0
        self.saved_round = 0  # the round of the last checkpoint: where a --resume starts
        self.round_open = False
        self.selected: set[str] = set()
        self.async_started: set[str] = set()
        self.answered: set[str] = set()
        self.out_dir = out_dir
        test = load_source(config.data, num_classes=spec.num_classes).test
        self.test_x, self.test_y = prepare(test.x, spec.input_shape), test.y
        self.store = RunStore(out_dir, self.num_params, resume=resume) if out_dir else None  # reads first
        self.recorder = RoundRecorder(out_dir, resume=resume, callbacks=self.on_round)  # inputs are valid now
        if self.store is not None:
            self.pool.log = self.store.append
            if self.store.saved is not None:
                self._restore(*self.store.saved)

    # --- checkpoints -------------------------------------------------------------------------

    def _checkpoint(self) -> None:
        if self.store is None:
            return
        pool = self.pool
        meta = {
            "round": self.round, "version": pool.version, "spec_hash": self.spec.hash,
            "algorithm": self.config.algorithm, "indices": self.indices,
            "ledgers": {peer: ledger.to_dict() for peer, ledger in pool.ledgers.items()},
            "applied": pool.stats.applied, "seen": sorted(self.policy.seen),
            "bytes": list(self.bytes_total()),  # so a resumed run's byte totals stay cumulative
        }
        if self.secagg is not None:
            meta["secagg_rounds"] = self.secagg.closed_rounds  # noisy sums released, for ε
        if pool.dp_sgd is not None:
            meta["dp_sgd"] = pool.dp_sgd.to_dict()
        self.store.save(self.algorithm.state(), meta)
        self.saved_round = self.round

    def rounds_done(self) -> int:
        """Rounds a --resume keeps: those checkpointed (a stop can land between a round's close
        and its checkpoint, e.g. while it is evaluated); all rounds played when there is no store."""
        return self.saved_round if self.store is not None else self.round

    def _restore(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        assert self.store is not None
        self.store.check(meta, self.spec.hash, self.config.algorithm)
        pool = self.pool
        self.algorithm.load_state(arrays)
        self.round, pool.version = int(meta["round"]), int(meta["version"])
        self.saved_round = self.round
        self.indices = {k: int(v) for k, v in meta["indices"].items()}
        pool.ledgers = {p: PrivacyLedger.from_dict(d) for p, d in meta["ledgers"].items()}
        if self.secagg is not None:
            self.secagg.closed_rounds = int(meta.get("secagg_rounds", 0))
        if pool.dp_sgd is not None:
            pool.dp_sgd.restore(meta.get("dp_sgd", {}))
        pool.stats.applied = int(meta.get("applied", 0))
        self.closed_bytes = [int(b) for b in meta.get("bytes", (0, 0))]
        self.policy.restore({(str(peer), int(r)) for peer, r in meta.get("seen", [])})
        unsaved = self.store.unsaved(pool.stats.applied)
        for entry in unsaved:
            pool.apply(PoolItem.from_upload(entry.sender, entry))
        if unsaved:
            log.info("replayed %d acknowledged uploads from %s", len(unsaved), self.store.wal.path)
        log.info("resumed at round %d from %s", self.round, self.store.checkpoint_path)

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
        item = PoolItem.from_upload(session.peer_id, upload)
        verdict = await self.pool.submit(item)  # backpressure: waits while the pool is full
        if not verdict.accepted:
            session.rejected[verdict.reason.text] = session.rejected.get(verdict.reason.text, 0) + 1
        try:
            await session.stream.send(Ack(accepted=verdict.accepted,
                                          reason=ACK_REASON.get(verdict.reason, AckReason.INVALID),
                                          ack_seq=upload.seq, detail=verdict.detail, round=self.round))
        finally:
            self._answered(item)

    def _answered(self, item: PoolItem) -> None:
        """A selected peer counts as answered once its acknowledgement is on the wire: the round
        may close now, and its next round start cannot overtake the acknowledgement."""
        if item.answers_round == self.round and item.peer in self.selected:
            self.answered.add(item.peer)
            self.progress.notify()

    # --- rounds ------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> dict[str, Any]:
        """Serve until all rounds are done; returns the summary. ``nursery.start`` gives the address."""
        async with trio.open_nursery() as nursery:
            address = await nursery.start(self.network.serve,
                                          f"{self.config.host}:{self.config.port}" if self.config.host else "",
                                          self.handle_stream)
            nursery.start_soon(self.pool.run, self.progress.notify)
            self.address = address
            task_status.started(address)
            log.info("coordinator listening on %s (%s, order %s)", address, self.config.algorithm, self.order)
            summary = await self.run_rounds()
            nursery.cancel_scope.cancel()
        return summary

    async def run_rounds(self) -> dict[str, Any]:
        await self.wait_for_peers()
        if self.round == 0 and not self.recorder.records:
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
                await self.send_quietly(session, RoundStart(round=self.round, selected=True, info=RoundPlan(
                    asynchronous=True, epochs=self.config.rounds - self.round).to_info()))
        stats = self.pool.stats
        start = stats.processed
        everything = self.config.rounds * len(self.async_started)  # every peer did all its epochs

        def done() -> bool:
            return (stats.processed - start >= len(self.alive()) or stats.processed >= everything
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
        loss, accuracy = (await self.model.evaluate(self.algorithm.params.copy(), self.test_x, self.test_y)
                          if round_ % self.config.eval_every == 0 or round_ == self.config.rounds
                          else (float("nan"), float("nan")))
        bytes_in, bytes_out = self.bytes_total()
        pool = self.pool
        fields = {"bytes_in": bytes_in, "bytes_out": bytes_out, **pool.record_fields(),
                  "participants": len(participants), "model_version": pool.version}
        if self.settings.epsilon:
            per_peer = pool.epsilon_per_peer()
            fields.update(epsilon_spent=max(per_peer.values(), default=0.0), epsilon_per_peer=per_peer)
        if pool.dp_sgd is not None:
            fields.update(pool.dp_sgd.fields())
        fields.update(self.algorithm.privacy_report())
        self.recorder.record(RoundRecord(round_, accuracy, loss, self.recorder.elapsed(), fields))
        log.info("round %d: accuracy %.4f loss %.4f (%d updates accepted, %d rejected)",
                 round_, accuracy, loss, pool.stats.applied, pool.stats.rejected)

    def _summary(self) -> dict[str, Any]:
        last, pool = self.recorder.last(), self.pool
        summary = {
            "mode": "coordinator", "algorithm": self.config.algorithm, "order": self.order,
            "rounds": self.round, "final_accuracy": last.get("accuracy"), "final_loss": last.get("loss"),
            "accuracy_per_round": self.recorder.accuracy_per_round(),
            "bytes_in": last.get("bytes_in"), "bytes_out": last.get("bytes_out"),
            "accepted": pool.stats.applied, "rejected": pool.stats.rejected,
            "rejected_reasons": dict(pool.stats.reasons), "peers": sorted(self.indices),
            "refused_connections": self.refused_connections, "wall_time_s": self.recorder.elapsed(),
            "model": self.spec.name, "num_params": self.num_params, "spec_hash": self.spec.hash,
        }
        if self.settings.epsilon:
            summary["epsilon_per_peer"] = pool.epsilon_per_peer()
            summary["epsilon_advanced"] = {p: _finite_or_none(lg.advanced_total())
                                           for p, lg in sorted(pool.ledgers.items())}
        if self.secagg is not None:
            summary["secagg"] = self.secagg.summary()
        if pool.dp_sgd is not None:
            summary.update(pool.dp_sgd.fields())
        summary.update(self.algorithm.privacy_report())
        return self.recorder.write_summary(summary)
