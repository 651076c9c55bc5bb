"""A participant: joins a coordinator, learns the spec and hyperparameters, trains, uploads.

Both modes start the same way on the same session state machine: join (1001), confirm or
receive the spec (1003), then — in coordinator mode — request parameters (1002), train, upload
(1004, acknowledged) each round until the coordinator ends the run. Ring mode
(:mod:`ringfl.ring`) reuses :class:`PeerBase` for the bootstrap and plays the same session with
its neighbours instead.

A peer needs only an address and its data: the model spec, the training hyperparameters, the
algorithm and (unless given) its partition index come from the coordinator's Accept.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import trio

from ringfl.algorithms import AlgorithmSettings, make_peer_algorithm
from ringfl.attacks import corrupt
from ringfl.checkpoint import atomic_write_bytes
from ringfl.config import PartitionConfig, TrainingConfig, build
from ringfl.data import DataSplits, clear_cache, kind_params, load_source, peer_indices, prepare
from ringfl.errors import ConfigError
from ringfl.metrics import MetricsLog
from ringfl.model import ModelSpec, load_spec, spec_from_json
from ringfl.model.runtime import Model, shared_model
from ringfl.privacy.dp_sgd import DpSgdTrainer, plan
from ringfl.privacy.ledger import BudgetExhausted, PrivacyLedger
from ringfl.privacy.numeric_sparse import upload_rng
from ringfl.protocol import (
    Accept,
    Ack,
    Connection,
    EndOfRun,
    JoinRequest,
    Message,
    Params,
    ParamsRequest,
    PeerReport,
    RejectReason,
    RemoteProtocolError,
    Role,
    RoundStart,
    SpecReply,
    Upload,
)
from ringfl.protocol.payloads import RoundPlan, RunDescription
from ringfl.runtime.session import JoinRefused, client_handshake
from ringfl.transport import (
    ConnectError,
    MessageStream,
    Network,
    PeerClosedError,
    PeerError,
    dial,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class PeerOptions:
    """What the peer's own command line says; everything else comes from the coordinator."""

    coordinator: str
    data: str | None = None  # None: the coordinator's data source
    name: str = ""
    peers: int | None = None  # partition count; None: the coordinator's
    index: int | None = None  # partition index; None: assigned at join
    partition: str | None = None  # partition kind; None: the coordinator's
    listen: str = ""  # ring mode: where neighbours dial in
    run_id: str = ""
    local_spec_hash: str = ""  # confirm a spec we already have (else ask for it)
    eval_every: int = 1
    eval_samples: int | None = None  # evaluate on at most this many test samples
    ledger_path: str | None = None  # persist the privacy ledger here (survives restarts)
    attack: str | None = None  # experiments only: upload corrupted updates (ringfl.attacks)
    connect_wait: float = 30.0  # keep retrying the coordinator this long (it may start later)
    token: bytes | None = None  # run token (ringfl.config.load_token); also guards neighbour links
    own_process: bool = False  # the only peer of its process: drop the full dataset once partitioned
    model: str | None = None  # the model this peer's --config names: confirmed at join, never replaced


@dataclass
class RunInfo:
    """The run as the coordinator described it at join."""

    spec: ModelSpec
    num_params: int
    algorithm: str
    settings: AlgorithmSettings
    training: TrainingConfig
    partition: PartitionConfig
    rounds: int
    peers: int
    index: int
    seed: int
    data: str
    round_timeout: float = 60.0
    order: str = "auto"


@dataclass
class PeerData:
    """A peer's local training rows (views into the shared arrays) and its test split."""

    x: np.ndarray
    y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray

    @property
    def num_samples(self) -> int:
        return len(self.y)


def load_peer_data(source: str, spec: ModelSpec, partition: PartitionConfig, peers: int, index: int,
                   seed: int, eval_samples: int | None = None) -> PeerData:
    """The peer's partition of ``source`` prepared for the model's input shape."""
    splits: DataSplits = load_source(source, num_classes=spec.num_classes)
    params = {p: getattr(partition, p) for p in kind_params(partition.kind)}
    rows = peer_indices(splits.train.y, partition.kind, peers, seed, index, **params)
    test_x, test_y = shared_test_data(source, spec.input_shape, spec.num_classes, eval_samples)
    return PeerData(x=prepare(splits.train.x[rows], spec.input_shape), y=splits.train.y[rows],
                    test_x=test_x, test_y=test_y)


@functools.lru_cache(maxsize=8)
def shared_test_data(source: str, input_shape: tuple[int, ...], num_classes: int,
                     eval_samples: int | None) -> tuple[np.ndarray, np.ndarray]:
    """One prepared, read-only copy of the test split per process: hundreds of in-process peers
    evaluate on the same arrays instead of holding a copy each."""
    test = load_source(source, num_classes=num_classes).test
    count = len(test.y) if eval_samples is None else min(eval_samples, len(test.y))
    x = prepare(test.x[:count], input_shape)
    x.setflags(write=False)
    return x, test.y[:count]


class PeerBase:
    """Join a coordinator and learn the run (shared by coordinator and ring mode)."""

    def __init__(self, network: Network, options: PeerOptions, *, data: PeerData | None = None) -> None:
        self.network = network
        self.options = options
        self.name = options.name
        self.data = data
        self.stream: MessageStream | None = None
        self.run_info: RunInfo | None = None
        self.model: Model | None = None
        self.ledger = PrivacyLedger()
        self.dp_sgd: DpSgdTrainer | None = None  # example-level DP-SGD, made at the first round
        self.on_round: list[Callable[[dict[str, Any]], None]] = []
        self.history: list[dict[str, Any]] = []
        self.metrics: MetricsLog | None = None  # per-round metrics on disk (``ringfl peer --out``)

    async def join(self, address: str = "", num_samples: int = 0) -> RunInfo:
        """1001 → Accept, 1003 → SpecReply; loads the model and the peer's data."""
        local = load_spec(self.options.model) if self.options.model else None
        confirm = local.hash if local is not None else self.options.local_spec_hash
        try:
            accept, reply = await self._handshake(JoinRequest(address=address, num_samples=num_samples), confirm)
        except (RemoteProtocolError, PeerError) as exc:  # e.g. a wrong or missing run token
            raise JoinRefused(f"join failed: {exc}") from None
        spec = spec_from_json(reply.spec_json) if reply.spec_json else local
        if spec is None:
            raise JoinRefused("the coordinator confirmed a spec this peer does not have")
        if spec.hash != accept.spec_hash:
            raise JoinRefused("the spec received does not match the hash the coordinator announced")
        self.run_info = self.describe_run(spec, accept.num_params, RunDescription.from_info(accept.info))
        self.ledger = self._load_ledger(self.run_info.settings)
        self.model = shared_model(spec)
        if self.model.num_params != accept.num_params:
            raise JoinRefused(f"model has {self.model.num_params} parameters, coordinator says {accept.num_params}")
        if self.data is None:
            self.data = self._load_data(self.run_info)
        return self.run_info

    async def _handshake(self, join: JoinRequest, confirm: str) -> tuple[Accept, SpecReply]:
        """Connect and join, retrying for ``connect_wait`` seconds: peers may start before the
        coordinator, and a coordinator with all join slots busy closes new connections unanswered."""
        deadline = trio.current_time() + self.options.connect_wait
        delay = 0.1
        while True:
            conn = Connection(Role.CLIENT, local_id=self.name, run_id=self.options.run_id,
                              token=self.options.token)
            try:
                self.stream = await dial(self.network, self.options.coordinator, conn, timeout=None)
                return await client_handshake(self.stream, join, confirm, server="coordinator", name=self.name,
                                              who="the coordinator")
            except (ConnectError, PeerClosedError, trio.BrokenResourceError):
                if trio.current_time() + delay > deadline:
                    raise
                await close_forcefully([self.stream])
                await trio.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _load_ledger(self, settings: AlgorithmSettings) -> PrivacyLedger:
        """The ε spent so far — from ``ledger_path`` if a previous run of this peer left one."""
        path = Path(self.options.ledger_path) if self.options.ledger_path else None
        if path is not None and path.is_file():
            try:
                saved = PrivacyLedger.from_dict(json.loads(path.read_text()))
            except (ValueError, TypeError, KeyError) as exc:
                raise ConfigError(f"privacy ledger {path} is unreadable ({exc})") from None
            return PrivacyLedger(peer=self.name, budget=settings.budget, delta=settings.dp_delta,
                                 entries=saved.entries)
        return PrivacyLedger(peer=self.name, budget=settings.budget, delta=settings.dp_delta)

    def save_ledger(self) -> None:
        """Persist the ledger atomically after every spend, so a restart cannot forget ε."""
        if self.options.ledger_path and self.ledger.count:
            text = json.dumps(self.ledger.to_dict(), sort_keys=True) + "\n"
            atomic_write_bytes(Path(self.options.ledger_path), text.encode())

    def corrupt(self, vector: Any, rng: np.random.Generator) -> Any:
        """A Byzantine peer's upload (experiments only); honest peers send ``vector`` unchanged."""
        return corrupt(vector, self.options.attack, rng) if self.options.attack else vector

    def describe_run(self, spec: ModelSpec, num_params: int, run: RunDescription) -> RunInfo:
        """The run from the server's (or the config's) description; the peer's own flags take precedence."""
        options = self.options
        partition = _typed(PartitionConfig, run.partition, "coordinator's partition")
        if options.partition:
            partition = PartitionConfig(**{**partition.__dict__, "kind": options.partition})
        settings = run.settings
        return RunInfo(
            spec=spec, num_params=num_params, algorithm=run.algorithm,
            settings=settings if isinstance(settings, AlgorithmSettings) else AlgorithmSettings.from_mapping(settings),
            training=_typed(TrainingConfig, run.training, "coordinator's training"),
            partition=partition, rounds=run.rounds,
            peers=options.peers if options.peers is not None else run.peers,
            index=options.index if options.index is not None else run.index,
            seed=run.seed, data=run.data, round_timeout=run.round_timeout, order=run.order,
        )

    def _load_data(self, run: RunInfo) -> PeerData:
        data = load_peer_data(self.options.data or run.data, run.spec, run.partition, run.peers,
                              run.index % max(run.peers, 1), run.seed, self.options.eval_samples)
        if self.options.own_process:  # keep only this peer's rows: 64 peer processes fit in RAM
            clear_cache()
        return data

    async def report_ready(self) -> None:
        """Model built and data loaded: the coordinator may count this peer for round 1."""
        assert self.stream is not None and self.data is not None
        await self.stream.send(PeerReport(metrics={"ready": True, "num_samples": self.data.num_samples}))

    async def train(self, params: np.ndarray, round_: int, dp_steps: int | None = None) -> tuple[np.ndarray, float]:
        """Local epochs from ``params``; returns the new vector and the mean training loss.

        With ``training.privacy`` on, DP-SGD instead (``dp_steps`` of the round's steps, default all
        of them); raises ``BudgetExhausted`` past the budget.
        """
        assert self.model is not None and self.run_info is not None and self.data is not None
        t = self.run_info.training
        if t.privacy.enabled:
            return await self._train_dp(params, round_, dp_steps)
        result = await self.model.train(
            params, self.data.x, self.data.y, lr=t.lr, batch_size=t.batch_size, epochs=t.epochs,
            momentum=t.momentum, weight_decay=t.weight_decay,
            seed=hash((self.run_info.seed, self.run_info.index, round_)) % (2**31),
        )
        return result.params, result.loss

    async def _train_dp(self, params: np.ndarray, round_: int, steps: int | None) -> tuple[np.ndarray, float]:
        assert self.model is not None and self.run_info is not None and self.data is not None
        run, t = self.run_info, self.run_info.training
        if self.dp_sgd is None:
            run_plan = plan(t.privacy, num_samples=self.data.num_samples, batch_size=t.batch_size,
                            rounds=run.rounds, epochs=t.epochs)
            path = f"{self.options.ledger_path}.dp-sgd.json" if self.options.ledger_path else None
            self.dp_sgd = DpSgdTrainer(t.privacy, run_plan, peer=self.name, ledger_path=path)
        return await self.dp_sgd.train(self.model, params, self.data.x, self.data.y, lr=t.lr,
                                       batch_size=t.batch_size, steps=steps)

    @property
    def epsilon_spent(self) -> float | None:
        """ε this peer has spent: DP-SGD's (at its δ) when on, else NumericSparse's ledger total."""
        return self.dp_sgd.metrics()["epsilon"] if self.dp_sgd is not None else self.ledger.total

    async def evaluate(self, params: np.ndarray) -> tuple[float, float]:
        assert self.model is not None and self.data is not None
        return await self.model.evaluate(params, self.data.test_x, self.data.test_y)

    def record(self, metrics: dict[str, Any]) -> None:
        self.history.append(metrics)
        if self.metrics is not None:
            self.metrics.write(metrics)
        for callback in self.on_round:
            callback(metrics)


def _typed(cls: type[T], value: Any, where: str) -> T:
    """A config object as it is, or built from the plain map that came over the wire."""
    return value if isinstance(value, cls) else build(cls, value, where)


class Peer(PeerBase):
    """A coordinator-mode participant: request, train, upload, repeat until the end of the run."""

    _crossed: RoundStart | None = None  # a round start that arrived while a round was under way
    _secagg: dict[str, Any] | None = None  # this round's secure-aggregation settings, if any

    async def run(self) -> list[dict[str, Any]]:
        """Take part until the coordinator ends the run; returns per-round metrics."""
        self.local: np.ndarray | None = None
        run = await self.join(num_samples=0 if self.data is None else self.data.num_samples)
        assert self.stream is not None
        self.algorithm = make_peer_algorithm(run.algorithm, run.settings)
        self.rng = upload_rng(run.settings.epsilon is not None, run.seed, run.index, 7)
        self.local_work = "gradient" if run.algorithm == "fedsgd" else "epochs"
        self.last_round = -1
        try:
            await self.report_ready()
            while True:
                try:
                    message = self._crossed or await self.stream.receive(timeout=None)
                except LOST_COORDINATOR as exc:
                    if not await self._rejoin(exc):
                        break
                    continue
                self._crossed = None
                if isinstance(message, EndOfRun):
                    break
                if isinstance(message, RoundStart) and message.selected and message.round > self.last_round:
                    started = trio.current_time()
                    try:
                        if not await self._play_rounds(message):
                            break
                    except _RunEnded:
                        break
                    except LOST_COORDINATOR as exc:
                        if not self._ended_without_us(message, started):
                            if not await self._rejoin(exc):
                                break
                            continue
                        log.warning("peer %s: the coordinator closed the connection after the last round's "
                                    "deadline; the run ended without this peer's last upload (%s)", self.name, exc)
                        return self.history
            await self.stream.aclose("done")
        finally:
            await close_forcefully([self.stream])
        return self.history

    async def _rejoin(self, exc: BaseException) -> bool:
        """The coordinator vanished without ending the run (a crash, Ctrl-C): join again, retrying
        for ``connect_wait`` seconds, and carry on with what a resumed coordinator asks for. The
        ledger and the local model are this peer's own and survive the reconnection. False: the
        run ended meanwhile (the coordinator says so), which is a normal end for this peer."""
        log.warning("peer %s lost the coordinator (%s); rejoining for up to %g s", self.name, exc,
                    self.options.connect_wait)
        await close_forcefully([self.stream])
        ledger = self.ledger
        try:
            await self.join(num_samples=self.data.num_samples if self.data is not None else 0)
        except JoinRefused as refused:
            if refused.reason != RejectReason.RUN_ENDED:
                raise
            log.warning("peer %s: the run ended while it was away", self.name)
            return False
        finally:
            self.ledger = ledger
        self._crossed = None
        self.last_round = -1  # a new session: the resumed coordinator's round numbers count again
        await self.report_ready()
        log.warning("peer %s rejoined %s", self.name, self.options.coordinator)
        return True

    def _ended_without_us(self, start: RoundStart, started: float) -> bool:
        """A closed connection in the last round, after its deadline (the coordinator closes a
        round at twice the deadline at the latest): the run is over, not broken."""
        assert self.run_info is not None
        last = self.last_round >= self.run_info.rounds - 1 and not RoundPlan.from_info(start.info).asynchronous
        return last and start.deadline > 0 and trio.current_time() - started > start.deadline

    async def _play_rounds(self, start: RoundStart) -> bool:
        """One round, or (asynchronous DSSGD) all remaining epochs back to back."""
        plan = RoundPlan.from_info(start.info)  # checked by the codec
        self._secagg = plan.secagg
        if not plan.asynchronous:
            return await self._play_round(start.round)
        for epoch in range(start.round, start.round + plan.epochs):
            if not await self._play_round(epoch):
                return False
        return True

    async def _play_round(self, round_: int) -> bool:
        """One round: 1002 → Params, local work, 1004 → Ack, report. False: stop participating."""
        assert self.stream is not None and self.model is not None
        started = time.perf_counter()
        await self.stream.send(ParamsRequest(round=round_, fraction=self.algorithm.settings.theta_d))
        params_msg = await self._expect(Params)
        base = params_msg.model_version
        round_ = self.last_round = max(round_, base)  # a peer that fell behind works on the current round
        start = self.algorithm.apply_download(
            self.local if self.local is not None else np.zeros(self.model.num_params, np.float32),
            params_msg.vector)
        try:
            end, loss = await self._local_work(start, round_)
            update = self.algorithm.make_update(start, end, self.rng, ledger=self.ledger, label=round_)
        except BudgetExhausted as exc:
            log.warning("peer %s stops uploading: %s", self.name, exc)
            return False
        self.save_ledger()
        update = self.corrupt(update, self.rng)
        self.local = end
        if self._secagg is not None:
            from ringfl.secagg.client import secure_upload

            ack = await secure_upload(self, self._secagg, update, round_)
        else:
            await self.stream.send(Upload(round=round_, vector=update, num_samples=self.data.num_samples,
                                          base_version=base, kind="gradient" if self.local_work == "gradient" else "delta"))
            ack = await self._expect(Ack)
        if not ack.accepted:
            log.warning("peer %s: round %d upload rejected (%s)", self.name, round_ + 1, ack.detail or ack.reason)
        # People read rounds from 1 in both modes (docs/protocol.md §12.4); the wire's round_ counts
        # the rounds completed before this one.
        metrics = {"round": round_ + 1, "train_loss": loss, "accepted": ack.accepted, "ack_reason": int(ack.reason),
                   "epsilon": self.epsilon_spent, "seconds": round(time.perf_counter() - started, 3),
                   "rounds": self.run_info.rounds if self.run_info else 0,
                   "bytes_sent": self.stream.bytes_sent, "bytes_received": self.stream.bytes_received}
        await self.stream.send(PeerReport(round=round_, metrics=metrics))
        self.record(metrics)
        return True

    async def _local_work(self, start: np.ndarray, round_: int) -> tuple[np.ndarray, float]:
        if self.local_work == "gradient":
            assert self.model is not None and self.data is not None
            grad = await self.model.gradient(start, self.data.x, self.data.y)
            return start - grad, float("nan")
        return await self.train(start, round_)

    async def _expect(self, kind: type[Message] | tuple[type[Message], ...]) -> Any:
        """The next message of type ``kind``. Notifications may cross it: a round start that
        overtook our acknowledgement is kept for after this round, anything else is skipped."""
        assert self.stream is not None
        while True:
            message = await self.stream.receive(timeout=None)
            if isinstance(message, kind):
                return message
            if isinstance(message, EndOfRun):
                raise _RunEnded()
            if isinstance(message, RoundStart):
                self._crossed = message


LOST_COORDINATOR = (PeerClosedError, trio.BrokenResourceError)
"""A connection that ended without an EndOfRun: the coordinator may come back (``--resume``)."""


class _RunEnded(Exception):
    pass


async def close_forcefully(streams: list[MessageStream | None]) -> None:
    """Close at once, even while being cancelled — what the OS does to a killed process's
    sockets, so the other side sees the peer leave instead of a connection that hangs."""
    with trio.CancelScope(shield=True):
        for stream in streams:
            if stream is not None:
                await trio.aclose_forcefully(stream.stream)
