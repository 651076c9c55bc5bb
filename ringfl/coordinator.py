"""Coordinator mode: the seed's parameter server, on trio.

It holds the global model (inside a :class:`~ringfl.algorithms.CoordinatorAlgorithm`) and a
**gradient pool**: per-connection tasks put uploads into a bounded channel, one background task
takes them out, decides whether to apply each (:mod:`ringfl.acceptance`) and acknowledges the
decision — the seed's "network thread + gradient-processing thread", with backpressure instead
of an unbounded queue. A round controller starts rounds, closes them when every selected peer
answered or the deadline passed with a quorum, evaluates, writes metrics and checkpoints.

The session side (join, spec confirmation, parameter requests) is shared with ring mode's
bootstrap through :class:`SessionServer`.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trio

from ringfl.acceptance import AcceptancePolicy, Reason
from ringfl.algorithms import AlgorithmSettings, make_coordinator_algorithm
from ringfl.config import RunConfig, load_token
from ringfl.data import load_source, prepare
from ringfl.errors import ConfigError, RunAborted
from ringfl.model import ModelSpec, load_spec
from ringfl.model.runtime import Model, shared_model
from ringfl.privacy.dp_sgd import DpSgdAccounts
from ringfl.privacy.ledger import PrivacyLedger
from ringfl.protocol import (
    Accept,
    Ack,
    AckReason,
    Connection,
    EndOfRun,
    Goodbye,
    Heartbeat,
    JoinRequest,
    Limits,
    Message,
    Params,
    ParamsRequest,
    PeerReport,
    Reject,
    RejectReason,
    Role,
    RoundStart,
    SpecConfirm,
    SpecReply,
    Upload,
)
from ringfl.runtime.pool import GradientPool, PoolItem
from ringfl.runtime.records import Recorded, RoundRecord, RoundRecorder
from ringfl.runtime.store import RunStore
from ringfl.transport import CONNECTION_ERRORS, MessageStream, Network

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
class PeerSession:
    """A joined participant as the coordinator sees it."""

    peer_id: str
    index: int
    stream: MessageStream
    num_samples: int
    address: str
    alive: bool = True
    rounds_done: int = 0
    ready: bool = False  # the peer loaded its model and data (its "ready" report)
    scheduled: bool = False  # ring mode: it was given the round schedule
    last_report: dict[str, Any] = field(default_factory=dict)
    last_seen: float = field(default_factory=time.time)  # wall clock of its last message (dashboard)
    rejected: dict[str, int] = field(default_factory=dict)  # its rejected uploads by reason (dashboard)


class Progress:
    """A broadcast "something changed" signal: waiters re-check their own condition."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait_until(self, condition: Callable[[], bool], deadline: float) -> bool:
        """Wait until ``condition()`` holds (True) or the trio clock passes ``deadline`` (False)."""
        while not condition():
            if trio.current_time() >= deadline:
                return False
            with trio.move_on_at(deadline):
                await self._event.wait()
        return True


class SessionServer:
    """Joins, spec confirmation and the per-connection receive loop, shared by both modes.

    Subclasses decide what an accepted peer is told (:meth:`accept_info`) and handle the
    messages of a joined session (:meth:`on_message`).
    """

    mode = "coordinator"

    def __init__(self, config: RunConfig, network: Network, spec: ModelSpec, num_params: int) -> None:
        self.config = config
        self.network = network
        self.spec = spec
        self.num_params = num_params
        self.sessions: dict[str, PeerSession] = {}
        self.order = config.order  # the coordinator resolves "auto" for its algorithm
        self.joining: set[str] = set()  # names between their join and their spec reply
        self.token = load_token(config.token_file)
        if config.token_per_peer and (self.token is None or self.mode != "coordinator"):
            raise ConfigError("token_per_peer needs a run token (token_file or $RINGFL_TOKEN) and coordinator "
                              "mode (ring neighbours prove the run token to each other)")
        self.indices: dict[str, int] = {}  # peer name -> stable index (partition, topology node)
        self.pending_indices: set[int] = set()  # held by joins in progress
        self.progress = Progress()
        self.closed_bytes = [0, 0]  # (in, out) of sessions that ended
        self.running = True
        self.unjoined = 0  # connections between accept and the end of their join
        self.refused_connections = 0
        self.on_round: list[Callable[[dict[str, Any]], None]] = []

    # --- accepting ---------------------------------------------------------------------------

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        if self.unjoined >= (self.config.max_unjoined or max(self.member_cap(), 64)):  # a flood of idle connections
            self.refused_connections += 1
            log.info("refused a connection: %d are still joining (max_unjoined)", self.unjoined)
            await trio.aclose_forcefully(stream)
            return
        self.unjoined += 1  # given back by _join, whatever its outcome
        # Non-finite values pass the codec here so the acceptance policy can answer with a reason.
        limits = dataclasses.replace(session_limits(self.num_params, self.config.max_frame), allow_nonfinite=True)
        conn = Connection(Role.SERVER, local_id="coordinator", run_id=self.config.run_id, limits=limits,
                          token=self.token, per_peer_tokens=self.config.token_per_peer)
        messages = MessageStream(stream, conn, timeout=None)
        session: PeerSession | None = None
        try:
            session = await self._join(messages, stream)
            if session is None:
                return
            async for message in messages:
                session.last_seen = time.time()
                await self.on_message(session, message)
        except CONNECTION_ERRORS as exc:
            log.info("peer %s: connection ended: %s", session.peer_id if session else "?", exc)
        finally:
            if session is not None:
                self._drop(session)
            await messages.aclose()

    async def _join(self, messages: MessageStream, stream: trio.abc.Stream) -> PeerSession | None:
        """The join handshake (1001, 1003); None if refused or abandoned."""
        try:
            join = await messages.receive(timeout=30.0)
            if not isinstance(join, JoinRequest):  # the state table allows nothing else first
                return None
            return await self._admit(messages, join, tls_identity(stream))
        finally:
            self.unjoined -= 1

    async def _admit(self, messages: MessageStream, join: JoinRequest, identity: str | None) -> PeerSession | None:
        peer_id = join.sender or f"peer-{len(self.indices)}"
        reason = self.identity_refusal(peer_id, identity) or self.join_refusal(peer_id, join)
        if reason is not None:
            await messages.send(Reject(reason=reason[0], detail=reason[1]))
            log.warning("refused join of %s: %s", peer_id, reason[1])
            return None
        self.joining.add(peer_id)  # a second join with this name now waits its turn: refused
        try:
            return await self._handshake(messages, join, peer_id)
        finally:
            self.joining.discard(peer_id)

    async def _handshake(self, messages: MessageStream, join: JoinRequest, peer_id: str) -> PeerSession | None:
        index = self.indices.get(peer_id)
        if index is None:  # recorded only once the peer has proven itself (spec confirmation)
            index = self._free_index()
        self.pending_indices.add(index)
        try:
            return await self._confirm(messages, PeerSession(peer_id, index, messages, join.num_samples, join.address))
        finally:
            self.pending_indices.discard(index)

    def _free_index(self) -> int:
        """The lowest index nobody holds: an abandoned join gives its index back, so the peers'
        partitions (index mod peers) stay distinct."""
        taken = set(self.indices.values()) | self.pending_indices
        return next(i for i in itertools.count() if i not in taken)

    async def _confirm(self, messages: MessageStream, session: PeerSession) -> PeerSession | None:
        """1005 → 1003 → 1007: the peer confirms the spec; then it is a member."""
        peer_id = session.peer_id
        await messages.send(Accept(num_params=self.num_params, spec_hash=self.spec.hash,
                                   mode=self.mode, info=self.accept_info(session)))
        confirm = await messages.receive(timeout=30.0)
        if not isinstance(confirm, SpecConfirm):
            return None
        if self._full(peer_id):  # another new name took the last place while this one joined
            log.warning("refused join of %s: the run is full (max_members)", peer_id)
            await messages.aclose(self._full_reason())
            return None
        self.indices[peer_id] = session.index  # taken before the next await: the cap holds
        ok = confirm.spec_hash == self.spec.hash
        await messages.send(SpecReply(ok=ok, spec_hash=self.spec.hash,
                                      spec_json="" if ok else self.spec.canonical_json()))
        self.sessions[peer_id] = session
        log.info("peer %s joined (index %d)", peer_id, session.index)
        self.on_join(session)
        self.progress.notify()
        return session

    def identity_refusal(self, peer_id: str, identity: str | None) -> tuple[int, str] | None:
        """Mutual TLS: the certificate names the peer; with an allowlist, only those names join."""
        tls = self.config.tls
        if tls.require_client_cert and identity is not None and identity != peer_id:
            return RejectReason.NOT_ALLOWED, f"certificate is for {identity!r}, not {peer_id!r}"
        if tls.allow and identity not in tls.allow:
            return RejectReason.NOT_ALLOWED, f"{identity or peer_id!r} is not on the allowlist"
        return None

    def join_refusal(self, peer_id: str, join: JoinRequest) -> tuple[int, str] | None:
        if not self.running:
            return RejectReason.RUN_ENDED, "the run has ended"
        old = self.sessions.get(peer_id)
        if (old is not None and old.alive) or peer_id in self.joining:
            return RejectReason.DUPLICATE_PEER, f"a peer named {peer_id!r} is already connected"
        if self._full(peer_id):
            return RejectReason.RUN_FULL, self._full_reason()
        return None

    def _full(self, peer_id: str) -> bool:
        """Only names that completed a join count (with a token: proven), so unauthenticated
        joins in flight cannot fill the run; checked at the join and again when the name is kept."""
        return peer_id not in self.indices and len(self.indices) >= self.member_cap()

    def _full_reason(self) -> str:
        return f"the run admits {self.member_cap()} peer names and has them all (max_members)"

    def _drop(self, session: PeerSession) -> None:
        if self.sessions.get(session.peer_id) is session:
            session.alive = False
            del self.sessions[session.peer_id]
            self.closed_bytes[0] += session.stream.bytes_received
            self.closed_bytes[1] += session.stream.bytes_sent
            log.info("peer %s left", session.peer_id)
            self.on_leave(session)
            self.progress.notify()

    # --- hooks ---------------------------------------------------------------------------

    def member_cap(self) -> int:
        """Distinct peer names admitted over the run: each is remembered (its index is
        checkpointed), so names minted without end would grow the state without end."""
        return self.config.max_members or max(4 * self.config.peers, 64)

    def accept_info(self, session: PeerSession) -> dict[str, Any]:
        """What a joining peer needs besides the spec: hyperparameters, its index, the run shape."""
        return {**run_description(self.config, session.index), "order": self.order}

    def on_join(self, session: PeerSession) -> None:
        """Called after a peer joined (before its first message)."""

    def on_leave(self, session: PeerSession) -> None:
        """Called once when a joined peer's connection ended."""

    async def on_message(self, session: PeerSession, message: Message) -> None:
        if isinstance(message, PeerReport):
            session.last_report = dict(message.metrics)
            if message.metrics.get("ready"):
                session.ready = True
                self.progress.notify()
            self.on_report(session, message)
        elif isinstance(message, (Heartbeat, Goodbye)):
            pass
        elif isinstance(message, SpecConfirm):  # a re-confirmation (state table: ready/waiting -> spec)
            ok = message.spec_hash == self.spec.hash
            await session.stream.send(SpecReply(ok=ok, spec_hash=self.spec.hash,
                                                spec_json="" if ok else self.spec.canonical_json()))
        else:
            await self.on_request(session, message)

    def on_report(self, session: PeerSession, report: PeerReport) -> None:
        """A peer's per-round metrics."""

    async def on_request(self, session: PeerSession, message: Message) -> None:
        log.info("peer %s sent %s, which this mode does not use", session.peer_id, type(message).__name__)

    # --- shared helpers ------------------------------------------------------------------

    def rounds_done(self) -> int:
        """Rounds completed so far (what an interruption reports)."""
        return int(getattr(self, "round", 0))

    def stopped_summary(self, how: str) -> dict[str, Any]:
        """summary.json of a run stopped by a signal: the usual summary, marked as interrupted."""
        summary = {**self._summary(), "interrupted": how, "rounds_done": self.rounds_done()}
        metrics = getattr(self, "metrics", None)
        if metrics is not None:
            metrics.write_summary(summary)
        return summary

    def _summary(self) -> dict[str, Any]:
        raise NotImplementedError

    def alive(self) -> list[PeerSession]:
        return sorted((s for s in self.sessions.values() if s.alive), key=lambda s: s.index)

    def bytes_total(self) -> tuple[int, int]:
        live_in = sum(s.stream.bytes_received for s in self.sessions.values())
        live_out = sum(s.stream.bytes_sent for s in self.sessions.values())
        return self.closed_bytes[0] + live_in, self.closed_bytes[1] + live_out

    async def send_quietly(self, session: PeerSession, message: Message) -> bool:
        """Send, treating a broken connection as that peer leaving (never the run failing)."""
        try:
            await session.stream.send(message, timeout=10.0)
            return True
        except CONNECTION_ERRORS as exc:
            log.info("peer %s unreachable: %s", session.peer_id, exc)
            self._drop(session)
            await trio.aclose_forcefully(session.stream.stream)  # a peer that stopped reading is cut off
            return False

    async def wait_for_peers(self) -> None:
        """Until ``peers`` are ready, or ``join_timeout`` passed with at least ``min_peers`` ready.

        Ready, not just joined: a peer reports ready once its model is built and its data loaded
        (seconds on a busy machine), so the first round's deadline is not spent on start-up.
        """
        config = self.config

        def ready() -> int:
            return sum(1 for s in self.alive() if s.ready)

        deadline = trio.current_time() + config.join_timeout
        await self.progress.wait_until(lambda: ready() >= config.peers, deadline)
        # Never wait past join_timeout for peers that are not there; joined ones still loading
        # their model and data get their time, unless they leave too.
        await self.progress.wait_until(
            lambda: ready() >= config.min_peers or len(self.alive()) < config.min_peers, math.inf)
        if ready() < config.min_peers:
            raise RunAborted(f"only {len(self.alive())} of {config.peers} peer(s) joined within join_timeout "
                             f"{config.join_timeout:g} s (min_peers {config.min_peers})")

    async def end_run(self, reason: str) -> None:
        self.running = False
        await self.broadcast(self.alive(), EndOfRun(reason=reason))

    async def broadcast(self, sessions: list[PeerSession], message: Message) -> None:
        """Send to all at once: a peer that stopped reading costs one send timeout, not one each."""
        async with trio.open_nursery() as nursery:
            for session in sessions:
                nursery.start_soon(self.send_quietly, session, message)


def tls_identity(stream: trio.abc.Stream) -> str | None:
    """The name in a verified client certificate, if the stream is TLS and the client sent one."""
    if not isinstance(stream, trio.SSLStream):
        return None
    from ringfl.certs import PeerIdentityError, certificate_name

    try:
        return certificate_name(stream)
    except PeerIdentityError:
        return None


def session_limits(num_params: int, max_frame: int | None) -> Limits:
    """Frame limits that follow the model size, unless the config fixes the frame size."""
    limits = Limits().for_model(num_params)
    return dataclasses.replace(limits, max_frame=max_frame) if max_frame else limits


def run_description(config: RunConfig, index: int) -> dict[str, Any]:
    """The run as a peer learns it at join (Accept.info) — or, with no bootstrap, from its config."""
    return {
        "algorithm": config.algorithm,
        "settings": AlgorithmSettings.from_mapping(config.algorithm_settings).to_dict(),
        "training": _plain(config.training),
        "partition": _plain(config.partition),
        "rounds": config.rounds,
        "peers": config.peers,
        "index": index,
        "seed": config.seed,
        "data": config.data,
        "round_timeout": config.round_timeout,
        "order": config.order,
    }


def _finite_or_none(value: float) -> float | None:
    """JSON has no infinity: a vacuous bound is written as null."""
    return value if math.isfinite(value) else None


def _plain(obj: Any) -> dict[str, Any]:
    return dataclasses.asdict(obj)


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
        }
        if self.secagg is not None:
            meta["secagg_rounds"] = self.secagg.closed_rounds  # noisy sums released, for ε
        if pool.dp_sgd is not None:
            meta["dp_sgd"] = pool.dp_sgd.to_dict()
        self.store.save(self.algorithm.state(), meta)

    def _restore(self, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> None:
        assert self.store is not None
        self.store.check(meta, self.spec.hash, self.config.algorithm)
        pool = self.pool
        self.algorithm.load_state(arrays)
        self.round, pool.version = int(meta["round"]), int(meta["version"])
        self.indices = {k: int(v) for k, v in meta["indices"].items()}
        pool.ledgers = {p: PrivacyLedger.from_dict(d) for p, d in meta["ledgers"].items()}
        if self.secagg is not None:
            self.secagg.closed_rounds = int(meta.get("secagg_rounds", 0))
        if pool.dp_sgd is not None:
            pool.dp_sgd.restore(meta.get("dp_sgd", {}))
        pool.stats.applied = int(meta.get("applied", 0))
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
                await self.send_quietly(session, RoundStart(round=self.round, selected=True, info={
                    "async": True, "epochs": self.config.rounds - self.round}))
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
