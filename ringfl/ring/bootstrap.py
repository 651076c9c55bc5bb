"""Ring mode's bootstrap: it introduces the peers of a topology, collects their reports and
re-links the topology around peers that leave; it never sees a gradient.

The bootstrap is a :class:`~ringfl.runtime.session.SessionServer`: peers join it exactly as in
coordinator mode (1001/1003), get the spec and the run description, then their neighbour list
(addresses and mixing weights, with a :class:`~ringfl.protocol.payloads.NeighbourTable`) and
the round schedule.

With an output folder it writes ``checkpoint.npz`` after every round: no arrays (the models live
at the peers, :mod:`ringfl.ring.state`), only the rounds recorded and the run they belong to.
``resume=True`` continues its ``metrics.jsonl`` from there and starts the peers at that round
(the ``round`` of the first RoundStart).
"""

from __future__ import annotations

import logging
import math
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import trio

from ringfl.checkpoint import load_checkpoint, save_checkpoint
from ringfl.config import RunConfig, check_mode
from ringfl.errors import ConfigError, RunAborted, TopologyError
from ringfl.model import load_spec
from ringfl.protocol import JoinRequest, Neighbours, PeerReport, RejectReason, RoundStart
from ringfl.protocol.payloads import RoundPlan, RunDescription
from ringfl.ring.routing import neighbour_list, neighbour_table
from ringfl.ring.state import identity_differences
from ringfl.runtime.records import Recorded, RoundRecord, RoundRecorder
from ringfl.runtime.session import PeerSession, SessionServer
from ringfl.topology import Topology, load_topology, relink_without
from ringfl.transport import Network

log = logging.getLogger(__name__)


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
        if resume:
            self._restore()
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

    def accept_info(self, session: PeerSession) -> RunDescription:
        session.index = self.labels.index(session.peer_id)  # the topology decides the index
        node = session.index
        return super().accept_info(session).replace(index=node, node=node, peers=self.topology.n,
                                                    topology=self.topology.name,
                                                    round_timeout=self.config.round_timeout)

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
            table = neighbour_table(live, pos, self.hops, node_index, from_round=self._switch_round(),
                                    dead=sorted(self.labels[i] for i in self.dead))
            message = Neighbours(neighbours=tuple(neighbour_list(live, pos, labels, addresses)),
                                 topology_version=self.topology_version, round=self._current_round(),
                                 info=table.to_info())
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

    # --- checkpoints --------------------------------------------------------------------------

    def _identity(self) -> dict[str, Any]:
        return {"mode": "ring", "run_id": self.config.run_id, "spec_hash": self.spec.hash,
                "algorithm": self.config.algorithm, "topology": self.topology.name, "nodes": self.topology.n,
                "seed": self.config.seed}

    def _checkpoint(self) -> None:
        """The rounds recorded so far (written right after each record: a resume never repeats one)."""
        if self.out_dir is not None:
            save_checkpoint(self.out_dir / "checkpoint.npz", {}, {**self._identity(), "round": self._current_round()})

    def _restore(self) -> None:
        """Continue the run in ``out_dir``: its records, after checking it is this run."""
        if self.out_dir is None:
            raise ConfigError("--resume needs --out DIR: the folder of the run to continue")
        path = self.out_dir / "checkpoint.npz"
        _, meta = load_checkpoint(path)
        if meta.get("mode") != "ring":
            raise ConfigError(f"cannot resume: {path} is a coordinator's checkpoint, not a ring bootstrap's")
        differences = identity_differences(self._identity(), meta)
        if differences:
            raise ConfigError(f"cannot resume: {path} is of another run ({'; '.join(differences)})")
        self.recorder.restore(int(meta["round"]))

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
        self._checkpoint()  # so a run stopped before its first round resumes too
        await self.wait_for_peers()
        missing = [label for label in self.labels if label not in self.sessions]
        self.dead = {self.labels.index(label) for label in missing}
        self.started_rounds = True
        await self._send_neighbours()
        self.started_links = True
        for session in self.alive():
            session.scheduled = True
        await self.broadcast(self.alive(), RoundStart(round=self._current_round(),  # > 0 when resumed
                                                      info=RoundPlan(rounds=self.config.rounds).to_info()))
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
                                                            info=RoundPlan(rounds=self.config.rounds).to_info()))

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
        self._checkpoint()

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


