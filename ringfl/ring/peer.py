"""A peer of ring / topology mode: it listens for its in-neighbours, dials its out-neighbours
and drives the rounds — local training, cut into slices at the exchanges; at each exchange the
gossip algorithm's selections go out along the links and what the neighbours sent is mixed in.

Who the neighbours are and what arrived from them is the
:class:`~ringfl.ring.neighbourhood.Neighbourhood`; the streams and their bytes are
:class:`~ringfl.ring.links.NeighbourLinks`. The peer joins the bootstrap with the same session
handshake as a coordinator-mode peer, or, without a bootstrap, takes the run from its own config
and the neighbours from the topology file. With a state folder it checkpoints every round and
can continue from there (:mod:`ringfl.ring.state`).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import trio

from ringfl.algorithms import make_gossip_algorithm
from ringfl.algorithms.gossip import GossipAlgorithm, GossipMessage
from ringfl.config import RunConfig
from ringfl.errors import ConfigError
from ringfl.model import load_spec
from ringfl.model.runtime import shared_model
from ringfl.peer import PeerBase, PeerData, PeerOptions, RunInfo, close_forcefully
from ringfl.privacy.dp_sgd import sampling
from ringfl.privacy.ledger import BudgetExhausted
from ringfl.privacy.numeric_sparse import upload_rng
from ringfl.protocol import Ack, EndOfRun, Neighbours, PeerReport, RoundStart
from ringfl.protocol.payloads import NeighbourTable, RoundPlan
from ringfl.ring.links import NeighbourLinks
from ringfl.ring.neighbourhood import Neighbourhood
from ringfl.ring.routing import neighbour_list, neighbour_table, standalone_addresses
from ringfl.ring.state import PeerState, RunIdentity
from ringfl.runtime.session import run_description
from ringfl.topology import Topology
from ringfl.transport import CONNECTION_ERRORS, Network

log = logging.getLogger(__name__)

STANDALONE_GRACE = 1.0
"""Seconds a ring peer without a bootstrap keeps serving after its last round."""


class RingPeer(PeerBase):
    """A peer of ring / topology mode."""

    def __init__(self, network: Network, options: PeerOptions, *, node: str | None = None,
                 data: PeerData | None = None, listen: str | None = None,
                 without_bootstrap: tuple[Topology, RunConfig] | None = None,
                 state_dir: Path | None = None, resume: bool = False) -> None:
        """``without_bootstrap=(topology, config)``: no coordinator; the topology file must give
        every node's ``host:port`` and this peer listens on its own. ``state_dir``: checkpoint
        every round there; ``resume``: continue from those checkpoints."""
        if resume and state_dir is None:
            raise ConfigError("--resume needs --out DIR: the folder this peer's state was saved in")
        if node is not None and not options.name:
            options = PeerOptions(**{**options.__dict__, "name": str(node)})
        super().__init__(network, options, data=data)
        self.without_bootstrap = without_bootstrap
        if without_bootstrap is not None and listen is None:
            topology = without_bootstrap[0]
            listen = standalone_addresses(topology)[topology.index_of(self.name)]
        self.listen = listen if listen is not None else (options.listen or ("127.0.0.1:0" if _is_tcp(network) else ""))
        self.neighbourhood = Neighbourhood(self.name, on_change=self._wake)
        self.links = NeighbourLinks(network, self.neighbourhood, name=self.name, run_id=options.run_id,
                                    token=options.token, retry_dial=without_bootstrap is not None)
        self.inbox_changed = trio.Event()
        self.node = 0
        self.total_rounds = 0
        self.algorithm: GossipAlgorithm | None = None
        self.params: np.ndarray | None = None  # the latest mixed model (benchmarks average them)
        self.schedule = trio.Event()
        self.asynchronous = False  # order: async — mix what has arrived, never wait for neighbours
        self.end_event = trio.Event()
        self.ended = False
        self.lost_bootstrap = False  # the bootstrap went away without ending the run
        self.state_dir, self.resume = state_dir, resume
        self.state: PeerState | None = None
        self.saved_round = 0  # the newest round checkpointed (or resumed from): what a resume keeps
        self._saved_algorithm: dict[str, np.ndarray] | None = None  # gossip state to load at the first exchange

    def bytes_by_neighbour(self) -> dict[str, list[int]]:
        """Cumulative [sent, received] bytes per neighbour label, both link directions."""
        return self.links.bytes_by_neighbour()

    def neighbour_bytes(self) -> tuple[int, int]:
        """Bytes (sent, received) over all neighbour links so far."""
        return self.links.totals()

    # --- the run -----------------------------------------------------------------------------

    async def run(self) -> list[dict[str, Any]]:
        try:
            async with trio.open_nursery() as nursery:
                address = await nursery.start(self.network.serve, self.listen, self._serve_neighbour)
                self.links.listen = self.listen
                if self.without_bootstrap is not None:
                    self._start_without_bootstrap()
                else:
                    run = await self.join(address=address)
                    self.node = run.index
                    assert self.stream is not None
                    self._open_state(self.stream.conn.run_id)
                    await self.report_ready()
                    nursery.start_soon(self._listen_bootstrap)
                try:
                    await self._rounds()
                    if self.without_bootstrap is None:
                        await self.end_event.wait()  # keep serving slower neighbours until the end
                    else:  # nobody announces the end; in-neighbours already delivered our last
                        await trio.sleep(STANDALONE_GRACE)  # round: a moment for relayed copies
                finally:
                    nursery.cancel_scope.cancel()
            await self._close_all()
        finally:
            await close_forcefully([self.stream, *self.links.streams()])
        return self.history

    def _start_without_bootstrap(self) -> None:
        """Addresses and neighbours from the topology file, the run from a run config."""
        assert self.without_bootstrap is not None
        topology, config = self.without_bootstrap
        spec = load_spec(config.model)
        self.node = topology.index_of(self.name)
        self.model = shared_model(spec)
        description = run_description(config.replace(peers=topology.n), self.node)
        self.run_info = self.describe_run(spec, self.model.num_params, description)
        self.ledger = self._load_ledger(self.run_info.settings)
        if self.data is None:
            self.data = self._load_data(self.run_info)
        labels = list(topology.labels)
        hops = self.run_info.settings.hops if self.run_info.algorithm == "relay" else 1
        addresses = dict(zip(labels, standalone_addresses(topology)))
        self.neighbourhood.apply(tuple(neighbour_list(topology, self.node, labels, addresses)), 0,
                                 neighbour_table(topology, self.node, hops, {label: i for i, label in enumerate(labels)}))
        self.total_rounds = config.rounds
        self._open_state(config.run_id)
        self.schedule.set()

    def _open_state(self, run_id: str) -> None:
        """The state folder of this run: checked now, so a wrong folder fails before round 1;
        emptied for a new run (stale rounds of an older one must never be resumed)."""
        if self.state_dir is None:
            return
        run = self.run_info
        assert run is not None
        self.state = PeerState(self.state_dir, RunIdentity(run_id, run.spec.hash, run.seed, run.algorithm, self.name))
        if self.resume:
            self.saved_round = self.state.check()
        else:
            self.state.clear()

    def progress(self) -> tuple[int, int]:
        """(rounds done, rounds in the run) — what an interruption reports; with a state folder
        "done" means checkpointed (what a resume keeps)."""
        total = self.total_rounds or (self.run_info.rounds if self.run_info is not None else 0)
        if self.state is not None:
            return self.saved_round, total
        return (self.history[-1]["round"] if self.history else self.neighbourhood.start_round), total

    async def _listen_bootstrap(self) -> None:
        assert self.stream is not None
        try:
            while True:
                message = await self.stream.receive(timeout=None)
                if isinstance(message, Neighbours):
                    self.neighbourhood.apply(message.neighbours, message.topology_version,
                                             NeighbourTable.from_info(message.info))
                elif isinstance(message, RoundStart):
                    self.neighbourhood.start_round = max(self.neighbourhood.start_round, message.round)
                    self.total_rounds = RoundPlan.from_info(message.info).rounds or 0
                    self.schedule.set()
                elif isinstance(message, EndOfRun):
                    break
        except CONNECTION_ERRORS as exc:  # no EndOfRun: the run did not finish (the CLI says so)
            log.info("peer %s lost the bootstrap: %s", self.name, exc)
            self.lost_bootstrap = True
        self.ended = True
        self.end_event.set()
        self.schedule.set()
        self._wake()

    def _wake(self) -> None:
        self.inbox_changed.set()
        self.inbox_changed = trio.Event()

    async def _rounds(self) -> None:
        run = self.run_info
        assert run is not None and self.model is not None
        with trio.move_on_after(run.round_timeout * 4):
            await self.schedule.wait()
        if self.ended:
            return
        rng = upload_rng(run.settings.epsilon is not None, run.seed, run.index, 11)
        self.asynchronous = run.order == "async"
        if self.asynchronous and run.algorithm == "choco":
            raise ConfigError("choco needs synchronous exchanges; use order: sync (or auto) in ring mode")
        if run.algorithm == "choco" and self.neighbourhood.links.phases:
            raise ConfigError("choco keeps copies of fixed neighbours; use a static topology, not a schedule")
        self.algorithm = None
        params, first = self._starting_point(run, rng)
        slices = self._slices(run)
        for round_ in range(first, self.total_rounds or run.rounds):
            if self.ended:
                break
            started = time.perf_counter()
            self.neighbourhood.begin_round(round_ + 1)
            sent_before, sent_exchanges, losses = self.neighbour_bytes()[0], [], []
            for s, (start, steps) in enumerate(slices):
                exchange = round_ * len(slices) + s
                before = params
                try:
                    after, loss, seen = await self._train_slice(before, round_ + 1, start, steps, len(slices) > 1)
                except BudgetExhausted as exc:  # DP-SGD's budget: stop before training past it
                    log.warning("peer %s stops: %s", self.name, exc)
                    return
                losses.append((loss, seen))
                params = await self._counted_exchange(before, after, exchange, len(slices) > 1, rng, sent_exchanges)
                if params is None:
                    return
            if round_ + 1 == (self.total_rounds or run.rounds):
                for c in range(run.settings.final_consensus):  # no training: mixing only
                    exchange = (round_ + 1) * len(slices) + c
                    params = await self._counted_exchange(params, params, exchange, True, rng, sent_exchanges)
                    if params is None:
                        return
            loss = sum(value * n for value, n in losses) / max(sum(n for _, n in losses), 1)
            if self.state is not None and not self.ended:  # before the report: a recorded round is saved
                await self._save(round_ + 1, params, rng)
            await self._report(round_ + 1, params, loss, started, sent_before, sent_exchanges)

    def _starting_point(self, run: RunInfo, rng: np.random.Generator) -> tuple[np.ndarray, int]:
        """The parameters to start from and the first round (0-based): the initial model at the
        bootstrap's round, or a checkpoint (:meth:`PeerState.choose` says which)."""
        assert self.model is not None
        start = self.neighbourhood.start_round
        if not self.resume or self.state is None:
            if start:
                log.warning("peer %s joins at round %d from the initial model", self.name, start + 1)
            return self.model.init_params(run.seed), start
        saved_round, first = self.state.choose(start, bootstrap=self.without_bootstrap is None,
                                               asynchronous=self.asynchronous)
        saved = self.state.load(saved_round)
        if saved.params.shape != (run.num_params,):
            raise ConfigError(f"cannot resume: {self.state.path(saved_round)} holds {saved.params.size} parameters, "
                              f"the model has {run.num_params}")
        self.state.clear(after=first)  # rounds after it will be trained again
        if self.metrics is not None:
            self.metrics.keep_rounds(first)
        if saved.rng is not None and run.settings.epsilon is None:  # a private run's noise is never replayed
            rng.bit_generator.state = saved.rng
        self._saved_algorithm = saved.algorithm
        self.links.carry_over(saved.bytes_by_neighbour)
        self.saved_round = saved_round
        log.info("peer %s resumes from round %d's state at round %d", self.name, saved_round, first + 1)
        return saved.params, first

    async def _save(self, round_: int, params: np.ndarray, rng: np.random.Generator) -> None:
        """Checkpoint a finished round off the event loop (fsync); the newest n rounds are kept."""
        assert self.state is not None and self.run_info is not None
        algorithm = self.algorithm.state() if self.algorithm is not None else {}
        rng_state = None if self.run_info.settings.epsilon is not None else rng.bit_generator.state
        keep = max(2, len(self.neighbourhood.node_ids))  # a synchronous ring's peers: < n rounds apart
        await trio.to_thread.run_sync(self.state.save, round_, params, algorithm, rng_state, keep,
                                      self.bytes_by_neighbour())
        self.saved_round = round_

    def _slices(self, run: RunInfo) -> list[tuple[int, int]]:
        """The round's training cut at its exchanges, as (first batch, batches) per slice; one
        whole-round slice without ``exchange_every``. Every peer makes the same number of
        exchanges per round (else synchronous neighbours would wait for each other), set by the
        mean shard size; a peer with a bigger or smaller shard takes bigger or smaller slices.
        Under DP-SGD the slices cut the round's Poisson-sampled steps instead of its batches."""
        k = run.settings.exchange_every
        if k is None:
            return [(0, -1)]
        assert self.data is not None
        t = run.training
        own = t.epochs * (sampling(self.data.num_samples, t.batch_size)[1] if t.privacy.enabled
                          else math.ceil(self.data.num_samples / t.batch_size))
        count = max(1, math.ceil(t.epochs * math.ceil(self._nominal_samples(run) / t.batch_size) / k))
        bounds = [round(s * own / count) for s in range(count + 1)]
        return [(bounds[s], bounds[s + 1] - bounds[s]) for s in range(count)]

    def _nominal_samples(self, run: RunInfo) -> int:
        """Training samples of an average peer (the data source split ``peers`` ways)."""
        if run.partition.kind == "sample":
            return int(run.partition.size)
        from ringfl.data import load_source

        train = load_source(self.options.data or run.data, num_classes=run.spec.num_classes).train
        return max(1, len(train.y) // max(run.peers, 1))

    async def _train_slice(self, params: np.ndarray, round_: int, start: int, steps: int,
                           sliced: bool) -> tuple[np.ndarray, float, int]:
        """Local training up to the next exchange: the whole round, or ``steps`` batches of it."""
        if not sliced:
            after, loss = await self.train(params, round_)
            return after, loss, 1
        assert self.model is not None and self.run_info is not None and self.data is not None
        t = self.run_info.training
        if t.privacy.enabled:
            after, loss = await self.train(params, round_, dp_steps=steps)
            return after, loss, steps
        result = await self.model.train_steps(
            params, self.data.x, self.data.y, lr=t.lr, batch_size=t.batch_size, start=start, steps=steps,
            momentum=t.momentum, weight_decay=t.weight_decay,
            seed=hash((self.run_info.seed, self.run_info.index, round_)) % (2**31))  # as PeerBase.train
        return result.params, result.loss, result.samples

    async def _counted_exchange(self, before: np.ndarray, after: np.ndarray, exchange: int, sliced: bool,
                                rng: np.random.Generator, sent: list[int]) -> np.ndarray | None:
        """:meth:`_exchange`, appending the bytes this peer sent meanwhile to ``sent``."""
        start = self.neighbour_bytes()[0]
        params = await self._exchange(before, after, exchange, sliced, rng)
        sent.append(self.neighbour_bytes()[0] - start)
        if params is not None:
            self.params = params
        return params

    async def _exchange(self, before: np.ndarray, after: np.ndarray, exchange: int, sliced: bool,
                        rng: np.random.Generator) -> np.ndarray | None:
        """One exchange with the neighbours of exchange ``exchange`` (0-based over the run); the
        mixed parameters, or None when the privacy budget stops the peer. On the wire an exchange
        is numbered ``round`` when there is one per round, else ``exchange + 1``."""
        hood = self.neighbourhood
        key = hood.round_in_progress if not sliced else exchange + 1
        current = hood.begin_exchange(exchange)
        algorithm = self.algorithm
        if algorithm is None or current.changed or hood.links.phases:
            algorithm = self.algorithm = self._new_algorithm(algorithm, before)
        try:
            messages = algorithm.outgoing(before, after, key, rng, ledger=self.ledger)
        except BudgetExhausted as exc:
            log.warning("peer %s stops: %s", self.name, exc)
            return None
        self.save_ledger()
        messages = [dataclasses.replace(m, vector=self.corrupt(m.vector, rng)) for m in messages]
        params = after
        for step in range(algorithm.steps):
            if step:
                messages = algorithm.next_outgoing(rng)
            await self._send_all(messages, key, step)
            await self._gather(algorithm, key, step)
            params = algorithm.mix()
        return params

    def _new_algorithm(self, old: GossipAlgorithm | None, params: np.ndarray) -> GossipAlgorithm:
        run = self.run_info
        assert run is not None
        hood = self.neighbourhood
        hood.links.changed = hood.current.changed = False
        algorithm = make_gossip_algorithm(run.algorithm, hood.node_of(self.name, self.node), run.num_params,
                                          run.settings, dict(hood.current.weights), initial=params)
        if self._saved_algorithm is not None:  # the first exchange of a resumed run
            algorithm.load_state(self._saved_algorithm)
            self._saved_algorithm = None
        elif old is not None:
            hood.unsynced |= set(hood.current.dial)  # rebuilt state: tell every neighbour where it stands
            try:
                algorithm.adopt(old)
            except (KeyError, ValueError):
                log.info("peer %s: gossip state reset after re-linking", self.name)
        return algorithm

    async def _send_all(self, messages: list[GossipMessage], round_: int, step: int, *, relayed: bool = False) -> None:
        """To every out-neighbour; relayed selections only where the routing table sends them."""
        hood = self.neighbourhood
        async with trio.open_nursery() as nursery:
            for node, address in list(hood.current.dial.items()):
                chosen = [m for m in messages if hood.routes(m.origin, node)] if relayed else messages
                if chosen:
                    nursery.start_soon(self._send_to, node, address, chosen, round_, step)

    async def _send_to(self, node: int, address: str, messages: list[GossipMessage], round_: int, step: int) -> None:
        """One 1004 per message to neighbour ``node``; a dead neighbour is skipped (it is re-linked)."""
        hood = self.neighbourhood
        run = self.run_info
        assert run is not None
        try:
            stream = await self.links.out_stream(node, address, run.spec, run.round_timeout)
            delivered = True
            for message in self._with_resync(node, messages):
                await stream.send(hood.to_upload(message, round_, step))
                ack = await stream.receive(timeout=run.round_timeout)
                if isinstance(ack, Ack) and not ack.accepted:
                    delivered = False
                    log.info("peer %s: neighbour %s refused an update (%s)", self.name, node, ack.detail)
            if delivered:
                hood.unsynced.discard(node)
            else:
                hood.unsynced.add(node)
        except (*CONNECTION_ERRORS, OSError) as exc:
            log.info("peer %s: neighbour %s unreachable: %s", self.name, node, exc)
            hood.unsynced.add(node)
            await self.links.drop_out(node)

    def _with_resync(self, node: int, messages: list[GossipMessage]) -> list[GossipMessage]:
        """A neighbour that may have missed something gets our whole state instead (CHOCO)."""
        snapshot = self.algorithm.snapshot() if node in self.neighbourhood.unsynced and self.algorithm else None
        return messages if snapshot is None else [snapshot]

    async def _gather(self, algorithm: GossipAlgorithm, round_: int, step: int) -> None:
        """Feed what arrived for (round, step) until every expected origin is in, or the deadline."""
        hood = self.neighbourhood
        if self.asynchronous:
            await self._take_whatever_arrived(algorithm, round_)
            return
        assert self.run_info is not None
        deadline = trio.current_time() + self.run_info.round_timeout
        fed: set[int] = set()
        while True:
            changed = self.inbox_changed  # taken first: what arrives while we forward still wakes us
            hood.take_late(algorithm, (round_, step))
            for sender, message in hood.take((round_, step)):
                fed.add(message.origin)
                forward = algorithm.incoming(sender, message)
                if forward:
                    await self._send_all(forward, round_, step, relayed=True)
            waiting = hood.waiting(fed)
            if not waiting or self.ended or trio.current_time() >= deadline:
                if waiting and not self.ended:
                    log.info("peer %s round %d: no update from %s", self.name, round_, sorted(waiting))
                return
            with trio.move_on_at(deadline):
                await changed.wait()

    async def _take_whatever_arrived(self, algorithm: GossipAlgorithm, round_: int) -> None:
        """Asynchronous mode: mix the newest update from each neighbour, whatever its round, and
        never wait — a slow neighbour's last update counts until it sends a new one."""
        for sender, message in self.neighbourhood.take_newest(round_):
            forward = algorithm.incoming(sender, message)
            if forward:
                await self._send_all(forward, round_, 0, relayed=True)
        await trio.lowlevel.checkpoint()

    async def _report(self, round_: int, params: np.ndarray, loss: float, started: float, sent_before: int,
                      sent_exchanges: list[int]) -> None:
        loss_test, accuracy = await self.evaluate(params)
        sent, received = self.neighbour_bytes()
        metrics = {"round": round_, "accuracy": accuracy, "loss": loss_test, "train_loss": loss,
                   "epsilon": self.epsilon_spent, "bytes_sent": sent, "bytes_received": received,
                   "bytes_sent_round": sent - sent_before, "rounds": self.total_rounds,
                   "exchanges": len(sent_exchanges), "bytes_sent_exchanges": sent_exchanges,
                   "bytes_by_neighbour": self.bytes_by_neighbour(),
                   "seconds": round(time.perf_counter() - started, 3)}
        self.record(metrics)
        if self.stream is None:  # no bootstrap: the metrics stay local (record() callbacks, --out)
            return
        try:
            await self.stream.send(PeerReport(round=round_, metrics=metrics))
        except CONNECTION_ERRORS as exc:
            log.warning("peer %s cannot report: %s", self.name, exc)

    # --- the serving side of neighbour links -------------------------------------------------

    async def _serve_neighbour(self, raw: trio.abc.Stream) -> None:
        while self.run_info is None:
            await trio.sleep(0.01)
        run = self.run_info
        await self.links.serve(raw, run.spec, run.num_params, self.neighbourhood.receive)

    async def _close_all(self) -> None:
        await self.links.close()
        if self.stream is not None:
            with trio.move_on_after(2.0):
                await self.stream.aclose("done")


def _is_tcp(network: Network) -> bool:
    from ringfl.transport import TcpNetwork

    return isinstance(network, TcpNetwork)
