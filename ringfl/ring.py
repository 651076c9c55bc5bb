"""Ring / topology mode: peers pass selective updates to their neighbours; a bootstrap only
introduces them.

The bootstrap (:class:`Bootstrap`) is a :class:`~ringfl.coordinator.SessionServer`: peers join
it exactly as in coordinator mode (1001/1003), get the spec and hyperparameters, then their
neighbour list (addresses and mixing weights) and the round schedule. It never sees a gradient:
it collects per-round reports and re-links the topology around peers that leave.

A :class:`RingPeer` listens for its in-neighbours and dials its out-neighbours. Each neighbour
link is one session of the same state machine — the dialling peer plays the client (join,
confirm spec, then one 1004 upload per exchange, acknowledged), the receiving peer the server.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import networkx as nx
import numpy as np
import trio

from ringfl.algorithms import make_gossip_algorithm
from ringfl.algorithms.gossip import GossipAlgorithm, GossipMessage
from ringfl.config import RunConfig, check_mode
from ringfl.coordinator import PeerSession, SessionServer, run_description, session_limits
from ringfl.errors import ConfigError, RunAborted, TopologyError
from ringfl.model import load_spec
from ringfl.model.runtime import shared_model
from ringfl.peer import PeerBase, PeerData, PeerOptions, SpecMismatch, close_forcefully
from ringfl.privacy.ledger import BudgetExhausted
from ringfl.protocol import (
    Accept,
    Ack,
    AckReason,
    Connection,
    EndOfRun,
    Heartbeat,
    JoinRequest,
    Message,
    Neighbour,
    Neighbours,
    PeerReport,
    RejectReason,
    Role,
    RoundStart,
    SpecConfirm,
    SpecReply,
    Upload,
)
from ringfl.runtime.records import Recorded, RoundRecord, RoundRecorder
from ringfl.topology import Topology, load_topology, relink_without
from ringfl.transport import CONNECTION_ERRORS, ConnectError, MessageStream, Network, dial
from ringfl.vectors import SparseVector

log = logging.getLogger(__name__)

STANDALONE_GRACE = 1.0
"""Seconds a ring peer without a bootstrap keeps serving after its last round."""


def neighbour_list(topology: Topology, node: int, labels: list[str], addresses: dict[str, str]) -> list[Neighbour]:
    """Node's links: in-neighbours carry their mixing weight, out-neighbours an address to dial."""
    ins, outs = set(topology.in_neighbours(node)), set(topology.out_neighbours(node))
    weights = topology.neighbour_weights(node)
    return [
        Neighbour(peer_id=labels[j], address=addresses.get(labels[j], "") if j in outs else "",
                  weight=float(weights.get(j, 0.0)) if j in ins else 0.0)
        for j in sorted(ins | outs)
    ]


def schedule_info(topology: Topology, node: int, labels: list[str]) -> list[dict[str, Any]]:
    """Node's part of a time-varying schedule, phase by phase: the labels it receives from (with
    their weights) and the labels it sends to. [] for a static topology (and after re-linking
    around a dead peer, which falls back to the static union of the phases)."""
    phases = []
    for w in topology.schedule:
        ins = {labels[j]: float(w[node, j]) for j in np.flatnonzero(w[node]) if j != node}
        outs = [labels[j] for j in np.flatnonzero(w[:, node]) if j != node]
        phases.append({"in": ins, "out": outs})
    return phases


def origins_within(topology: Topology, node: int, hops: int) -> list[int]:
    """Nodes whose updates reach ``node`` within ``hops`` hops (relay waits for all of them)."""
    frontier, seen = {node}, {node}
    for _ in range(hops):
        frontier = {j for i in frontier for j in topology.in_neighbours(i)} - seen
        seen |= frontier
    return sorted(seen - {node})


def forward_targets(topology: Topology, node: int, hops: int) -> dict[int, list[int]]:
    """Relay routing: for each origin whose selection ``node`` passes on (fewer than ``hops`` hops
    away), the out-neighbours for which ``node`` lies on a shortest path from that origin. Every
    other neighbour gets the selection as soon or sooner another way, so sending it there would be
    bytes for nothing (on a complete graph nothing is forwarded at all)."""
    if hops < 2:
        return {}
    graph = topology.graph
    towards = graph.reverse(copy=False) if topology.directed else graph
    distance_to_node = nx.single_source_shortest_path_length(towards, node, cutoff=hops - 1)
    targets: dict[int, list[int]] = {}
    for origin, distance in distance_to_node.items():
        if origin != node:
            from_origin = nx.single_source_shortest_path_length(graph, origin, cutoff=distance + 1)
            targets[origin] = [j for j in topology.out_neighbours(node) if from_origin.get(j) == distance + 1]
    return targets


def _forward_labels(topology: Topology, node: int, hops: int, labels: list[str]) -> dict[str, list[str]]:
    return {labels[o]: [labels[j] for j in js] for o, js in forward_targets(topology, node, hops).items()}


class Bootstrap(Recorded, SessionServer):
    """Introduces the peers of a topology, collects their reports, re-links around dead peers."""

    mode = "ring"

    def __init__(self, config: RunConfig, network: Network, out_dir: Path | None = None,
                 *, resume: bool = False, topology: Topology | None = None) -> None:
        if topology is None:
            if not config.topology:
                raise TopologyError("ring mode needs a topology file")
            topology = load_topology(config.topology)
        self.topology = topology
        check_mode(config.algorithm, ring=True)  # a coordinator-only algorithm would fail every peer's join
        spec = load_spec(config.model)
        num_params = _count_params(spec)
        config = config.replace(peers=topology.n, min_peers=min(config.min_peers, topology.n))
        super().__init__(config, network, spec, num_params)
        self.labels = list(topology.labels)
        self.dead: set[int] = set()
        self.started_rounds = False
        self.topology_version = 0
        self.reports: dict[int, dict[str, dict[str, Any]]] = defaultdict(dict)
        self.first_report: dict[int, float] = {}
        self.recorder = RoundRecorder(out_dir, resume=resume, callbacks=self.on_round)
        self.out_dir = out_dir
        self.hops = int(config.algorithm_settings.get("hops", 2)) if config.algorithm == "relay" else 1
        self.started_links = False

    # --- joins -----------------------------------------------------------------------------

    def join_refusal(self, peer_id: str, join: JoinRequest) -> tuple[int, str] | None:
        if peer_id not in self.labels:
            return RejectReason.NOT_ALLOWED, f"{peer_id!r} is not a node of topology {self.topology.name!r}"
        if not join.address:
            return RejectReason.INCOMPATIBLE, "a ring peer must report the address it listens on"
        return super().join_refusal(peer_id, join)

    def member_cap(self) -> int:
        return self.topology.n  # only the topology's names join

    def accept_info(self, session: PeerSession) -> dict[str, Any]:
        info = super().accept_info(session)
        session.index = self.labels.index(session.peer_id)  # the topology decides the index
        node = session.index
        info.update(index=node, node=node, peers=self.topology.n, topology=self.topology.name,
                    round_timeout=self.config.round_timeout)
        return info

    def on_join(self, session: PeerSession) -> None:
        if self.started_rounds:  # a peer came back: re-link it in and let it catch up
            self.dead.discard(session.index)
            self._relink_soon()

    def on_leave(self, session: PeerSession) -> None:
        if trio.current_effective_deadline() == -math.inf:  # we are being stopped (Ctrl-C): all leave
            return
        if self.running and self.started_rounds:
            log.warning("ring peer %s left; re-linking around it", session.peer_id)
            self.dead.add(session.index)
            self._relink_soon()

    def _relink_soon(self) -> None:
        self._relink_needed = True
        self.progress.notify()

    # --- neighbour lists ----------------------------------------------------------------------

    def _live_topology(self) -> Topology:
        """The topology with dead nodes bridged over (a ring stays a ring); labels are kept."""
        return relink_without(self.topology, self.dead) if self.dead else self.topology

    async def _send_neighbours(self) -> None:
        self._relink_needed = False
        self.topology_version += 1
        live = self._live_topology()
        addresses = {s.peer_id: s.address for s in self.sessions.values()}
        labels = list(live.labels)
        node_index = {label: i for i, label in enumerate(self.labels)}  # stable ids: original order
        for pos, label in enumerate(labels):
            session = self.sessions.get(label)
            if session is None or not session.alive:
                continue
            expected = [labels[j] for j in origins_within(live, pos, self.hops)]
            message = Neighbours(neighbours=tuple(neighbour_list(live, pos, labels, addresses)),
                                 topology_version=self.topology_version,
                                 round=self._current_round(),
                                 info={"expected_origins": expected, "nodes": node_index,
                                       "forward": _forward_labels(live, pos, self.hops, labels),
                                       "from_round": self._switch_round(),
                                       "dead": sorted(self.labels[i] for i in self.dead),
                                       "schedule": schedule_info(live, pos, labels)})
            await self.send_quietly(session, message)

    def rounds_done(self) -> int:
        return self._current_round()

    def _current_round(self) -> int:
        return len([r for r in self.recorder.records if r.round > 0])

    def _switch_round(self) -> int:
        """The round from which new links hold: after every live peer's current round, so both
        ends of a new link switch together (peers of a ring drift apart by up to its diameter).
        Dead peers are dropped at once by everyone (``dead``)."""
        if not self.started_links:
            return 0
        reported = max((r for r, reports in self.reports.items() if reports), default=0)
        return reported + 2

    # --- the run ---------------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> dict[str, Any]:
        async with trio.open_nursery() as nursery:
            address = await nursery.start(self.network.serve,
                                          f"{self.config.host}:{self.config.port}" if self.config.host else "",
                                          self.handle_stream)
            self.address = address
            task_status.started(address)
            log.info("bootstrap for %s listening on %s", self.topology.name, address)
            summary = await self._run()
            nursery.cancel_scope.cancel()
        return summary

    async def _run(self) -> dict[str, Any]:
        self._relink_needed = False
        await self.wait_for_peers()
        missing = [label for label in self.labels if label not in self.sessions]
        self.dead = {self.labels.index(label) for label in missing}
        self.started_rounds = True
        await self._send_neighbours()
        self.started_links = True
        for session in self.alive():
            session.scheduled = True
        await self.broadcast(self.alive(), RoundStart(round=0, info={"rounds": self.config.rounds}))
        while self._current_round() < self.config.rounds:
            if not self.alive():
                await self._wait_for_return()
            await self.progress.wait_until(lambda: self._relink_needed or self._round_complete(),
                                           trio.current_time() + 1.0)
            if self._relink_needed and self.alive():  # with every node dead there is nothing to re-link
                await self._send_neighbours()
                await self._restart_newcomers()
            if self._round_complete():
                self._record(self._current_round() + 1)
        await self.end_run("all rounds done")
        return self._summary()

    async def _wait_for_return(self) -> None:
        """Every peer left: wait ``join_timeout`` for one to come back, then give up with one line."""
        timeout = self.config.join_timeout
        if not await self.progress.wait_until(lambda: bool(self.alive()), trio.current_time() + timeout):
            raise RunAborted(f"every ring peer left after round {self._current_round()} and none came back "
                             f"within join_timeout {timeout:g} s")

    async def _restart_newcomers(self) -> None:
        """Peers that (re)joined after the start get the schedule from the current round on."""
        for session in self.alive():
            if not session.scheduled:
                session.scheduled = True
                await self.send_quietly(session, RoundStart(round=self._current_round(),
                                                            info={"rounds": self.config.rounds}))

    def _round_complete(self) -> bool:
        """Every live peer reported the next round — or the first report is two deadlines old
        (a peer that hangs without disconnecting must not stall the records)."""
        target = self._current_round() + 1
        reports = self.reports.get(target, {})
        alive = [s.peer_id for s in self.alive()]
        if bool(alive) and all(p in reports for p in alive):
            return True
        first = self.first_report.get(target)
        return first is not None and trio.current_time() > first + 2 * self.config.round_timeout

    def on_report(self, session: PeerSession, report: PeerReport) -> None:
        metrics = dict(report.metrics)
        if metrics.get("ready"):
            return
        round_ = int(metrics.get("round", report.round))
        self.reports[round_][session.peer_id] = metrics
        self.first_report.setdefault(round_, trio.current_time())
        session.rounds_done = max(session.rounds_done, int(metrics.get("round", 0)))
        self.progress.notify()

    def _record(self, round_: int) -> None:
        reports = list(self.reports.get(round_, {}).values())
        accuracies = [float(r["accuracy"]) for r in reports]
        epsilons = [float(r.get("epsilon") or 0.0) for r in reports]
        fields = {
            "min_accuracy": min(accuracies, default=math.nan),
            "max_accuracy": max(accuracies, default=math.nan),
            "bytes": int(sum(int(r.get("bytes_sent", 0)) for r in reports)),
            "bytes_round": int(sum(int(r.get("bytes_sent_round", 0)) for r in reports)),
            "peers_reporting": len(reports), "dead": sorted(self.labels[i] for i in self.dead),
        }
        if any(epsilons):
            fields["epsilon_spent"] = max(epsilons)
        self.recorder.record(RoundRecord(
            round_, float(np.mean(accuracies)) if accuracies else math.nan,
            float(np.mean([float(r["loss"]) for r in reports])) if reports else math.nan,
            self.recorder.elapsed(), fields))

    def _summary(self) -> dict[str, Any]:
        last = self.recorder.last()
        return self.recorder.write_summary({
            "mode": "ring", "algorithm": self.config.algorithm, "topology": self.topology.name,
            "peers": self.topology.n, "rounds": len(self.recorder.records),
            "final_accuracy": last.get("accuracy"), "final_min_accuracy": last.get("min_accuracy"),
            "final_max_accuracy": last.get("max_accuracy"), "bytes": last.get("bytes"),
            "accuracy_per_round": self.recorder.accuracy_per_round(), "wall_time_s": self.recorder.elapsed(),
            "model": self.spec.name, "num_params": self.num_params, "refused_connections": self.refused_connections,
        })


def _count_params(spec: Any) -> int:
    """Parameter count without building the net when the spec knows it (custom specs must build)."""
    if spec.layers:
        return spec.num_params
    from ringfl.model.runtime import shared_model

    return shared_model(spec).num_params


@dataclass
class Links:
    """A ring peer's view of its neighbourhood (from the bootstrap's latest Neighbours)."""

    version: int = -1
    weights: dict[int, float] = field(default_factory=dict)  # in-neighbour node -> W[i, j]
    dial: dict[int, str] = field(default_factory=dict)  # out-neighbour node -> address
    expected: set[int] = field(default_factory=set)  # origins to wait for each exchange
    forward: dict[int, set[int]] | None = None  # relay: origin -> out-neighbours to pass it to
    changed: bool = False
    phases: list[Links] = field(default_factory=list)  # time-varying topology: exchange t uses phases[t % len]

    def at(self, exchange: int) -> Links:
        """The links of exchange ``exchange`` (counted from 0 over the whole run)."""
        return self.phases[exchange % len(self.phases)] if self.phases else self


class RingPeer(PeerBase):
    """A peer of ring / topology mode."""

    def __init__(self, network: Network, options: PeerOptions, *, node: str | None = None,
                 data: PeerData | None = None, listen: str | None = None,
                 without_bootstrap: tuple[Topology, RunConfig] | None = None) -> None:
        """``without_bootstrap=(topology, config)``: no coordinator; the topology file must give
        every node's ``host:port`` and this peer listens on its own."""
        if node is not None and not options.name:
            options = PeerOptions(**{**options.__dict__, "name": str(node)})
        super().__init__(network, options, data=data)
        self.without_bootstrap = without_bootstrap
        if without_bootstrap is not None and listen is None:
            topology = without_bootstrap[0]
            listen = _addresses(topology)[topology.index_of(self.name)]
        self.listen = listen if listen is not None else (options.listen or ("127.0.0.1:0" if _is_tcp(network) else ""))
        self.links = Links()
        self.current = self.links  # the links of the exchange under way (a schedule's phase)
        self.links_changed = trio.Event()
        self.node_ids: dict[str, int] = {}  # topology label -> node index (from the bootstrap)
        self.pending_links: tuple[int, Links] | None = None  # (from round, links) not yet in force
        self.round_in_progress = 0
        self.label_of: dict[int, str] = {}
        self.total_rounds = 0
        self.inbox: dict[tuple[int, int], list[tuple[int, GossipMessage]]] = defaultdict(list)
        self.inbox_changed = trio.Event()
        self.out_streams: dict[int, MessageStream] = {}
        self.unsynced: set[int] = set()  # out-neighbours whose copy of our gossip state may be wrong
        self.algorithm: GossipAlgorithm | None = None
        self.params: np.ndarray | None = None  # the latest mixed model (benchmarks average them)
        self.in_streams: list[MessageStream] = []
        self.schedule = trio.Event()
        self.asynchronous = False  # order: async — mix what has arrived, never wait for neighbours
        self.end_event = trio.Event()
        self.start_round = 0
        self.ended = False
        self.closed_link_bytes: dict[str, list[int]] = {}  # neighbour label -> [sent, received]
        self.in_labels: dict[int, str] = {}  # id(incoming stream) -> the neighbour's label

    # --- bytes --------------------------------------------------------------------------------

    def bytes_by_neighbour(self) -> dict[str, list[int]]:
        """Cumulative [sent, received] bytes per neighbour label, both link directions."""
        table = {label: list(counts) for label, counts in self.closed_link_bytes.items()}
        live = [(self.label_of.get(node, str(node)), s) for node, s in self.out_streams.items()]
        live += [(self.in_labels.get(id(s), "?"), s) for s in self.in_streams]
        for label, stream in live:
            counts = table.setdefault(label, [0, 0])
            counts[0] += stream.bytes_sent
            counts[1] += stream.bytes_received
        return table

    def _closed_link(self, label: str, stream: MessageStream) -> None:
        counts = self.closed_link_bytes.setdefault(label, [0, 0])
        counts[0] += stream.bytes_sent
        counts[1] += stream.bytes_received

    def neighbour_bytes(self) -> tuple[int, int]:
        links = self.bytes_by_neighbour().values()
        sent = sum(counts[0] for counts in links)
        received = sum(counts[1] for counts in links)
        return sent, received

    # --- the run -----------------------------------------------------------------------------

    async def run(self) -> list[dict[str, Any]]:
        try:
            async with trio.open_nursery() as nursery:
                address = await nursery.start(self.network.serve, self.listen, self._serve_neighbour)
                if self.without_bootstrap is not None:
                    self._start_without_bootstrap()
                else:
                    run = await self.join(address=address)
                    self.node = run.index
                    await self.report_ready()
                    nursery.start_soon(self._listen_bootstrap, nursery)
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
            await close_forcefully([self.stream, *self.out_streams.values(), *self.in_streams])
        return self.history

    def _start_without_bootstrap(self) -> None:
        """Addresses and neighbours from the topology file, the run from a run config."""
        assert self.without_bootstrap is not None
        topology, config = self.without_bootstrap
        spec = load_spec(config.model)
        self.node = topology.index_of(self.name)
        self.model = shared_model(spec)
        info = run_description(config.replace(peers=topology.n), self.node)
        self.run_info = self.describe_run(spec, self.model.num_params, info)
        self.ledger = self._load_ledger(self.run_info.settings)
        if self.data is None:
            self.data = self._load_data(self.run_info)
        labels = list(topology.labels)
        hops = self.run_info.settings.hops if self.run_info.algorithm == "relay" else 1
        self._apply_neighbours(Neighbours(
            neighbours=tuple(neighbour_list(topology, self.node, labels, dict(zip(labels, _addresses(topology))))),
            info={"nodes": {label: i for i, label in enumerate(labels)},
                  "expected_origins": [labels[j] for j in origins_within(topology, self.node, hops)],
                  "forward": _forward_labels(topology, self.node, hops, labels),
                  "schedule": schedule_info(topology, self.node, labels)}))
        self.total_rounds = config.rounds
        self.schedule.set()

    async def _listen_bootstrap(self, nursery: trio.Nursery) -> None:
        assert self.stream is not None
        try:
            while True:
                message = await self.stream.receive(timeout=None)
                if isinstance(message, Neighbours):
                    self._apply_neighbours(message)
                elif isinstance(message, RoundStart):
                    self.start_round = max(self.start_round, message.round)
                    self.total_rounds = int(message.info.get("rounds", 0))
                    self.schedule.set()
                elif isinstance(message, EndOfRun):
                    break
        except CONNECTION_ERRORS as exc:
            log.warning("peer %s lost the bootstrap: %s", self.name, exc)
        self.ended = True
        self.end_event.set()
        self.schedule.set()
        self._wake()

    def _apply_neighbours(self, message: Neighbours) -> None:
        """Dead peers leave the current links at once; new links wait for their ``from_round``
        (both ends of a new link switch at the same round, so nobody waits for a message that
        was sent along the old links)."""
        nodes = message.info.get("nodes", {})
        self.node_ids.update({str(label): int(i) for label, i in nodes.items()})
        self.label_of = {i: label for label, i in self.node_ids.items()}
        node = self.node_ids.__getitem__
        links = Links(
            version=message.topology_version,
            weights={node(n.peer_id): n.weight for n in message.neighbours if n.weight > 0},
            dial={node(n.peer_id): n.address for n in message.neighbours if n.address},
            expected={node(p) for p in message.info.get("expected_origins", [])},
            forward=_forward_table(message.info.get("forward"), node),
            changed=True,
        )
        dial = links.dial
        links.phases = [Links(version=links.version, weights={node(j): float(w) for j, w in p["in"].items()},
                              dial={node(j): dial[node(j)] for j in p["out"] if node(j) in dial},
                              expected={node(j) for j in p["in"]}, changed=True)
                        for p in message.info.get("schedule") or []]
        dead = {node(label) for label in message.info.get("dead", []) if label in self.node_ids}
        self.links.expected -= dead
        self.links.dial = {j: a for j, a in self.links.dial.items() if j not in dead}
        if dead:  # shortest paths may have run through the dead: relay floods until the new links hold
            self.links.forward = None
        from_round = int(message.info.get("from_round", 0))
        if self.links.version < 0 and from_round > self.start_round + 1:
            self.links = Links(version=0, changed=True)  # a newcomer runs alone until the switch
        if self.links.version < 0 or from_round <= self.round_in_progress:
            self.links = links
        else:
            self.pending_links = (from_round, links)
        if not self.links.phases:  # an exchange under way sees new or shrunk links at once
            self.current = self.links
        self._wake()

    def _switch_links(self, round_: int) -> None:
        """Adopt pending links at the start of their round."""
        if self.pending_links is not None and round_ >= self.pending_links[0]:
            self.links = self.pending_links[1]
            self.pending_links = None

    def _wake(self) -> None:
        self.inbox_changed.set()
        self.inbox_changed = trio.Event()

    async def _rounds(self) -> None:
        run = self.run_info
        assert run is not None and self.model is not None
        with trio.move_on_after(run.info.get("round_timeout", 120.0) * 4):
            await self.schedule.wait()
        if self.ended:
            return
        rng = np.random.default_rng([run.seed, run.index, 11])
        self.asynchronous = run.info.get("order") == "async"
        if self.asynchronous and run.algorithm == "choco":
            raise ConfigError("choco needs synchronous exchanges; use order: sync (or auto) in ring mode")
        if run.algorithm == "choco" and self.links.phases:
            raise ConfigError("choco keeps copies of fixed neighbours; use a static topology, not a schedule")
        params = self.model.init_params(run.seed)
        self.algorithm = None
        slices = self._slices(run)
        for round_ in range(self.start_round, self.total_rounds or run.rounds):
            if self.ended:
                break
            started = time.perf_counter()
            self.round_in_progress = round_ + 1
            self._switch_links(round_ + 1)
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
            await self._report(round_ + 1, params, loss, started, sent_before, sent_exchanges)

    def _slices(self, run: Any) -> list[tuple[int, int]]:
        """The round's training cut at its exchanges, as (first batch, batches) per slice; one
        whole-round slice without ``exchange_every``. Every peer makes the same number of
        exchanges per round (else synchronous neighbours would wait for each other), set by the
        mean shard size; a peer with a bigger or smaller shard takes bigger or smaller slices."""
        k = run.settings.exchange_every
        if k is None:
            return [(0, -1)]
        assert self.data is not None
        t = run.training
        own = t.epochs * math.ceil(self.data.num_samples / t.batch_size)
        count = max(1, math.ceil(t.epochs * math.ceil(self._nominal_samples(run) / t.batch_size) / k))
        bounds = [round(s * own / count) for s in range(count + 1)]
        return [(bounds[s], bounds[s + 1] - bounds[s]) for s in range(count)]

    def _nominal_samples(self, run: Any) -> int:
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
        key = self.round_in_progress if not sliced else exchange + 1
        self.current = self.links.at(exchange)
        algorithm = self.algorithm
        if algorithm is None or self.current.changed or self.links.phases:
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
        self.links.changed = self.current.changed = False
        weights = dict(self.current.weights)
        algorithm = make_gossip_algorithm(run.algorithm, self._self_node(), run.num_params, run.settings,
                                          weights, initial=params)
        if old is not None:
            self.unsynced |= set(self.current.dial)  # rebuilt state: tell every neighbour where it stands
            try:
                algorithm.adopt(old)
            except (KeyError, ValueError):
                log.info("peer %s: gossip state reset after re-linking", self.name)
        return algorithm

    def _self_node(self) -> int:
        return self.node_ids.get(self.name, self.node)

    async def _send_all(self, messages: list[GossipMessage], round_: int, step: int, *, relayed: bool = False) -> None:
        """To every out-neighbour; relayed selections only where ``links.forward`` routes them."""
        async with trio.open_nursery() as nursery:
            for node, address in list(self.current.dial.items()):
                chosen = [m for m in messages if self._routes(m.origin, node)] if relayed else messages
                if chosen:
                    nursery.start_soon(self._send_to, node, address, chosen, round_, step)

    def _routes(self, origin: int, node: int) -> bool:
        """Whether a relayed selection of ``origin`` goes on to ``node`` (never back to its origin;
        without a routing table, or for an origin it does not know, everywhere else)."""
        table = self.links.forward
        if node == origin:
            return False
        return table is None or origin not in table or node in table[origin]

    async def _send_to(self, node: int, address: str, messages: list[GossipMessage], round_: int, step: int) -> None:
        """One 1004 per message to neighbour ``node``; a dead neighbour is skipped (it is re-linked)."""
        try:
            stream = await self._out_stream(node, address)
            delivered = True
            for message in self._with_resync(node, messages):
                await stream.send(_to_upload(message, self.label_of.get(message.origin, self.name), round_, step))
                ack = await stream.receive(timeout=self._deadline())
                if isinstance(ack, Ack) and not ack.accepted:
                    delivered = False
                    log.info("peer %s: neighbour %s refused an update (%s)", self.name, node, ack.detail)
            if delivered:
                self.unsynced.discard(node)
            else:
                self.unsynced.add(node)
        except (*CONNECTION_ERRORS, OSError) as exc:
            log.info("peer %s: neighbour %s unreachable: %s", self.name, node, exc)
            self.unsynced.add(node)
            await self._drop_out(node)

    def _with_resync(self, node: int, messages: list[GossipMessage]) -> list[GossipMessage]:
        """A neighbour that may have missed something gets our whole state instead (CHOCO)."""
        snapshot = self.algorithm.snapshot() if node in self.unsynced and self.algorithm else None
        return messages if snapshot is None else [snapshot]

    async def _out_stream(self, node: int, address: str) -> MessageStream:
        stream = self.out_streams.get(node)
        if stream is not None and stream.state.name not in ("CLOSED", "ERROR"):
            return stream
        run = self.run_info
        assert run is not None
        stream = await self._dial_neighbour(address)
        await stream.send(JoinRequest(address=self.listen))
        accept = await stream.receive()
        if not isinstance(accept, Accept):
            raise ConnectionError(f"neighbour {node} refused the link")
        await stream.send(SpecConfirm(spec_hash=run.spec.hash))
        reply = await stream.receive()
        if isinstance(reply, SpecReply) and not reply.ok:  # fail fast: waiting for it would never end
            raise SpecMismatch(f"neighbour {self.label_of.get(node, node)}", reply.spec_hash, run.spec.hash)
        if not isinstance(reply, SpecReply):
            raise ConnectionError(f"neighbour {node} answered the spec confirmation with {type(reply).__name__}")
        self.out_streams[node] = stream
        if self.round_in_progress > 1:
            self.unsynced.add(node)  # a link (re)opened mid-run: the copies at its ends may differ
        return stream

    async def _dial_neighbour(self, address: str) -> MessageStream:
        """Dial, retrying until the round deadline: without a bootstrap, neighbours start when they
        start."""
        deadline = trio.current_time() + self._deadline()
        while True:
            conn = Connection(Role.CLIENT, local_id=self.name, run_id=self.options.run_id,
                              token=self.options.token)
            try:
                return await dial(self.network, address, conn, timeout=self._deadline(), connect_timeout=5.0)
            except ConnectError:
                if self.without_bootstrap is None or trio.current_time() + 0.2 > deadline:
                    raise
                await trio.sleep(0.2)

    async def _drop_out(self, node: int) -> None:
        stream = self.out_streams.pop(node, None)
        if stream is not None:
            self._closed_link(self.label_of.get(node, str(node)), stream)
            with trio.move_on_after(1.0):
                await stream.aclose()

    def _deadline(self) -> float:
        run = self.run_info
        return float(run.info.get("round_timeout", 60.0)) if run else 60.0

    async def _gather(self, algorithm: GossipAlgorithm, round_: int, step: int) -> None:
        """Feed what arrived for (round, step) until every expected origin is in, or the deadline."""
        if self.asynchronous:
            await self._take_whatever_arrived(algorithm, round_)
            return
        deadline = trio.current_time() + self._deadline()
        fed: set[int] = set()
        while True:
            changed = self.inbox_changed  # taken first: what arrives while we forward still wakes us
            self._take_late(algorithm, (round_, step))
            for sender, message in self.inbox.pop((round_, step), []):
                fed.add(message.origin)
                forward = algorithm.incoming(sender, message)
                if forward:
                    await self._send_all(forward, round_, step, relayed=True)
            waiting = self.current.expected - fed  # shrinks at once when a neighbour dies
            if not waiting or self.ended or trio.current_time() >= deadline:
                if waiting and not self.ended:
                    log.info("peer %s round %d: no update from %s", self.name, round_, sorted(waiting))
                return
            with trio.move_on_at(deadline):
                await changed.wait()

    def _take_late(self, algorithm: GossipAlgorithm, current: tuple[int, int]) -> None:
        """Messages for exchanges already closed: CHOCO still folds them into its public copies
        (or they would drift apart); the others drop them (stale, and the inbox would only grow)."""
        for key in sorted(key for key in self.inbox if key < current):  # in exchange order
            for sender, message in self.inbox.pop(key):
                if algorithm.keeps_copies:
                    algorithm.incoming(sender, message)

    async def _take_whatever_arrived(self, algorithm: GossipAlgorithm, round_: int) -> None:
        """Asynchronous mode: mix the newest update from each neighbour, whatever its round, and
        never wait — a slow neighbour's last update counts until it sends a new one."""
        keys = sorted(self.inbox, reverse=True)  # newest first: it wins over older copies
        for key in keys:
            for sender, message in self.inbox.pop(key):
                forward = algorithm.incoming(sender, dataclasses.replace(message, round=round_))
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
        conn = Connection(Role.SERVER, local_id=self.name, run_id=self.options.run_id, token=self.options.token,
                          limits=session_limits(run.num_params, None))
        stream = MessageStream(raw, conn, timeout=None)
        self.in_streams.append(stream)
        try:
            join = await _first_join(stream)
            if join is None:
                return
            self.in_labels[id(stream)] = join.sender
            sender = self.node_ids.get(join.sender, -1)
            await stream.send(Accept(num_params=run.num_params, spec_hash=run.spec.hash, mode="ring"))
            confirm = await stream.receive(timeout=30.0)
            ok = isinstance(confirm, SpecConfirm) and confirm.spec_hash == run.spec.hash
            await stream.send(SpecReply(ok=ok, spec_hash=run.spec.hash, spec_json="" if ok else run.spec.canonical_json()))
            if not ok:
                theirs = str(getattr(confirm, "spec_hash", ""))
                if join.sender in self.node_ids and theirs:  # a member of our topology: the run cannot work
                    raise SpecMismatch(f"neighbour {join.sender}", theirs, run.spec.hash)
                log.warning("peer %s: %r (not a node of the topology) runs spec %s", self.name, join.sender,
                            theirs[:16])
                return
            async for message in stream:
                if isinstance(message, Upload):
                    await stream.send(self._take(sender, message))
        except CONNECTION_ERRORS as exc:
            log.info("peer %s: neighbour link ended: %s", self.name, exc)
        finally:
            self.in_streams.remove(stream)
            self._closed_link(self.in_labels.pop(id(stream), "?"), stream)
            await stream.aclose()

    def _take(self, sender: int, upload: Upload) -> Message:
        try:
            message = _from_upload(upload, self.node_ids)
        except (KeyError, ValueError, TypeError) as exc:
            return Ack(accepted=False, reason=AckReason.INVALID, ack_seq=upload.seq, detail=str(exc)[:200])
        self.inbox[(upload.round, int(upload.info.get("step", 0)))].append((sender, message))
        self._wake()
        return Ack(accepted=True, ack_seq=upload.seq)

    async def _close_all(self) -> None:
        for node in list(self.out_streams):
            await self._drop_out(node)
        if self.stream is not None:
            with trio.move_on_after(2.0):
                await self.stream.aclose("done")


async def _first_join(stream: MessageStream) -> JoinRequest | None:
    """A neighbour's join; heartbeats may come first (the state table allows them before the
    join). Anything else, or nothing within 30 s, ends the link (None)."""
    with trio.move_on_after(30.0):
        while True:
            message = await stream.receive(timeout=30.0)
            if isinstance(message, JoinRequest):
                return message
            if not isinstance(message, Heartbeat):
                return None
    return None


def _addresses(topology: Topology) -> list[str]:
    """Every node's address, in node order; without a bootstrap each node needs one."""
    missing = [label for i, label in enumerate(topology.labels) if i not in topology.addresses]
    if missing:
        raise TopologyError(f"topology {topology.name!r}: without a bootstrap every node needs an address; "
                            f"missing for {', '.join(missing[:5])}")
    return [topology.addresses[i] for i in range(topology.n)]


def _is_tcp(network: Network) -> bool:
    from ringfl.transport import TcpNetwork

    return isinstance(network, TcpNetwork)


def _forward_table(info: Any, node: Any) -> dict[int, set[int]] | None:
    """The bootstrap's relay routes (labels) as node ids; None when it sent none."""
    if not isinstance(info, dict):
        return None
    return {node(origin): {node(j) for j in targets} for origin, targets in info.items()}


def _to_upload(message: GossipMessage, origin: str, round_: int, step: int) -> Upload:
    """A gossip message as a 1004 upload; ``info`` names its origin by topology label."""
    vector = message.vector
    full = vector.nnz == vector.size  # θu = 1: raw floats beat a bitmap of all ones
    info = {"origin": origin, "step": step, "hop": message.hop, "weight": message.weight}
    if message.snapshot:
        info["snapshot"] = True
    return Upload(round=round_, vector=vector.values if full else vector, kind="gossip", info=info)


def _from_upload(upload: Upload, node_of: dict[str, int]) -> GossipMessage:
    vector = upload.vector
    if not isinstance(vector, SparseVector):
        vector = SparseVector.dense(vector)
    info = upload.info
    return GossipMessage(origin=node_of[str(info["origin"])], round=upload.round, vector=vector,
                         step=int(info.get("step", 0)), hop=int(info.get("hop", 1)),
                         weight=float(info.get("weight", 1.0)), snapshot=info.get("snapshot") is True)
