"""The distributed settings: the real :class:`~ringfl.coordinator.Coordinator` or
:class:`~ringfl.ring.Bootstrap` with :class:`~ringfl.peer.Peer` / :class:`~ringfl.ring.RingPeer`
objects in this process over a :class:`~ringfl.transport.MemoryNetwork`, or with each peer a
``ringfl peer`` process (``transport="tcp"``: on loopback, or placed by a backend)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import trio
import yaml

from ringfl.checkpoint import atomic_write_bytes
from ringfl.config import RunConfig
from ringfl.coordinator import Coordinator
from ringfl.errors import RingflError
from ringfl.experiments.plan import Run
from ringfl.experiments.references import initial_round, round_record
from ringfl.experiments.results import PeerRecord, SettingResult, SettingRound
from ringfl.experiments.tracking import Tracker
from ringfl.launch import peer_command, run_peer_processes, serve_until_done
from ringfl.model import load_spec
from ringfl.peer import Peer, PeerData, PeerOptions, load_peer_data
from ringfl.protocol import PeerReport
from ringfl.ring import Bootstrap, RingPeer
from ringfl.runtime.session import PeerSession
from ringfl.topology import load_topology
from ringfl.transport import MemoryNetwork, Network, TcpNetwork

# --- coordinator mode -------------------------------------------------------------------------


class ReportingCoordinator(Coordinator):
    """A Coordinator that keeps every peer's per-round report (the base keeps only the last), so
    per-peer records come off the wire the same way in both transports."""

    def __init__(self, config: RunConfig, network: Network) -> None:
        super().__init__(config, network)
        self.reports: dict[int, dict[int, dict[str, Any]]] = {}  # coordinator round -> peer -> metrics

    def on_report(self, session: PeerSession, report: PeerReport) -> None:
        metrics = dict(report.metrics)
        played = int(report.round)  # the wire's round: rounds completed before this one
        self.reports.setdefault(played + 1, {})[session.index] = metrics


async def run_coordinator(run: Run, transport: str, tracker: Tracker, started: float,
                          audit: dict[str, int] | None = None) -> SettingResult:
    config = _serving(run.config, transport)
    network = _network(transport)
    server = ReportingCoordinator(config, network)
    server.on_round.append(lambda r: tracker.advance(1 if r["round"] > 0 else 0, r["accuracy"]))
    names = [f"peer{i}" for i in range(config.peers)]
    clients = _clients(config, network, transport, names, Peer, None, [])
    await _within_deadline(run, serve_until_done(server, clients))
    key = run.setting.key
    rounds = [
        round_record(key, r["round"], [r["accuracy"]], [r["loss"]], r["bytes_in"] + r["bytes_out"],
                     r.get("epsilon_spent"), started)
        for r in server.history
    ]
    global_model = {r.round: r for r in rounds}
    peers = [
        PeerRecord(key, index, round_, global_model[round_].accuracy, global_model[round_].loss,
                   int(m.get("bytes_sent", 0)), int(m.get("bytes_received", 0)), _epsilon(run, m))
        for round_, reports in sorted(server.reports.items()) if round_ in global_model
        for index, m in sorted(reports.items())
    ]
    wall_time = time.perf_counter() - started
    report = None
    if audit:
        from ringfl.audit import AuditConfig, audit_params

        params = server.algorithm.params.copy()  # MXNet work stays on the MXNet thread (audit_params)
        report = await trio.to_thread.run_sync(audit_params, params, AuditConfig.from_run(run.config, **audit))
    return SettingResult(run.setting, rounds, peers, wall_time, len(server.indices), audit=report)


# --- ring / topology mode ---------------------------------------------------------------------


async def run_ring(run: Run, out: Path, transport: str, eval_samples: int | None, tracker: Tracker,
                   started: float) -> SettingResult:
    assert run.topology is not None
    config = _serving(run.config, transport)
    network = _network(transport)
    server = Bootstrap(config, network, topology=run.topology)
    server.on_round.append(lambda r: tracker.advance(1, r["accuracy"]))
    labels = list(run.topology.labels)
    extra = []
    if transport == "tcp":
        extra = ["--topology", str(_topology_file(run, out))] + (["--eval-samples", str(eval_samples)]
                                                                if eval_samples else [])
    clients = _clients(config, network, transport, labels, RingPeer, eval_samples, extra)
    await _within_deadline(run, serve_until_done(server, clients))
    return _ring_result(run, server, started)


def _ring_result(run: Run, server: Bootstrap, started: float) -> SettingResult:
    key = run.setting.key
    rounds = [initial_round(run, started)] + [
        SettingRound(key, r["round"], r["accuracy"], r["min_accuracy"], r["max_accuracy"], r["loss"],
                    int(r["bytes"]), r.get("epsilon_spent") if _dp(run) else None, r["seconds"])
        for r in server.history
    ]
    node = {label: i for i, label in enumerate(server.labels)}
    peers = [
        PeerRecord(key, node[label], round_, float(m["accuracy"]), float(m["loss"]), int(m.get("bytes_sent", 0)),
                   int(m.get("bytes_received", 0)), _epsilon(run, m))
        for round_, reports in sorted(server.reports.items())
        for label, m in sorted(reports.items(), key=lambda item: node[item[0]])
    ]
    reporting = len({p.peer for p in peers})
    return SettingResult(run.setting, rounds, peers, time.perf_counter() - started, reporting)


def _topology_file(run: Run, out: Path) -> Path:
    """The file ``ringfl peer --topology`` gets: the experiment's own file when used as is, else
    the generated topology written beside the results (nodes "0".."N-1", so ``--id i`` works)."""
    top, source = run.topology, run.topology_source
    assert top is not None
    if isinstance(source, str) and load_topology(source).n == top.n:
        return Path(source)
    path = out / "topologies" / f"{top.name}-n{top.n}.yaml"
    data = {"name": top.name, "nodes": top.n, "generator": top.generator, "directed": top.directed,
            "weights": top.scheme}
    atomic_write_bytes(path, yaml.safe_dump(data, sort_keys=False).encode())
    return path


# --- shared by both modes -------------------------------------------------------------------


def _clients(config: RunConfig, network: Network, transport: str, names: Sequence[str],
             peer_class: type[Peer] | type[RingPeer], eval_samples: int | None, extra: Sequence[str]) -> Clients:
    """The setting's peers: ``ringfl peer`` processes (tcp), or peer objects in this process that
    share the prepared data. Ring peers are named by their topology label (``--id``)."""
    ring = peer_class is RingPeer
    if transport == "tcp":
        return _processes(lambda address: [
            _peer_args(address, name, config.peers, i, *(["--id", name] if ring else []), *extra,
                       *_attack_args(config, i))
            for i, name in enumerate(names)])
    data = _peer_data(config, eval_samples)
    return _in_process([peer_class(network, PeerOptions(coordinator="", name=name, peers=config.peers, index=i,
                                                        attack=_attack(config, i)), data=data[i])
                        for i, name in enumerate(names)])


def _attack(config: RunConfig, index: int) -> str | None:
    """Byzantine experiments: the first ceil(fraction · peers) peers corrupt their uploads."""
    return config.byzantine.attack if index < config.byzantine.attackers(config.peers) else None


def _attack_args(config: RunConfig, index: int) -> list[str]:
    attack = _attack(config, index)
    return ["--attack", attack] if attack else []


@dataclass(frozen=True)
class Placement:
    """Where a tcp setting's server listens and how its ``ringfl peer`` processes start: on
    loopback, as children of this process, unless a backend (Ray) places them on other nodes."""

    host: str = "127.0.0.1"
    start_peers: Callable[[list[list[str]]], Awaitable[Any]] = partial(run_peer_processes, capture=True)


PLACEMENT: ContextVar[Placement | None] = ContextVar("PLACEMENT", default=None)  # None: Placement()


def _placement() -> Placement:
    return PLACEMENT.get() or Placement()


def _serving(config: RunConfig, transport: str) -> RunConfig:
    """Listen where the transport needs (memory: any name; tcp: an ephemeral port on loopback, or
    on this node's address when the peers are placed elsewhere)."""
    host = _placement().host if transport == "tcp" else ""
    return config.replace(host=host, port=0, run_id="experiment")


def _network(transport: str) -> Network:
    return TcpNetwork() if transport == "tcp" else MemoryNetwork()


def _peer_data(config: RunConfig, eval_samples: int | None) -> list[PeerData]:
    """Every in-process peer's partition, prepared once; the arrays behind them are the one
    cached copy of the source (test sets are views), so many peers cost little memory."""
    spec = load_spec(config.model)
    return [load_peer_data(config.data, spec, config.partition, config.peers, i, config.seed, eval_samples)
            for i in range(config.peers)]


def _peer_args(address: str, name: str, peers: int, index: int, *extra: str) -> list[str]:
    return peer_command(address, name, "--peers", str(peers), "--index", str(index), *extra)


Clients = Callable[[str], Awaitable[None]]


def _in_process(peers: Sequence[Peer | RingPeer]) -> Clients:
    """Start the peer objects against the server's address, all in this trio run."""
    async def start(address: str) -> None:
        async with trio.open_nursery() as nursery:
            for peer in peers:
                peer.options = _with_address(peer.options, address)
                nursery.start_soon(peer.run)

    return start


def _with_address(options: PeerOptions, address: str) -> PeerOptions:
    return dataclasses.replace(options, coordinator=address)


def _processes(commands: Callable[[str], list[list[str]]]) -> Clients:
    """Run one ``ringfl peer`` process per peer against the server's loopback address."""
    async def start(address: str) -> None:
        await _placement().start_peers(commands(address))

    return start


async def _within_deadline(run: Run, work: Awaitable[Any]) -> None:
    """A setting whose peers hang (e.g. a peer process that never joins) must not stall the whole
    experiment: give up after generous multiples of the config's own timeouts."""
    config = run.config
    seconds = config.join_timeout + 3 * config.rounds * config.round_timeout
    try:
        with trio.fail_after(seconds):
            await work
    except trio.TooSlowError:
        raise RingflError(f"setting {run.setting.label!r} did not finish within {seconds:.0f} s "
                          "(join_timeout + 3 x rounds x round_timeout); finished settings are kept") from None


def _dp(run: Run) -> bool:
    """NumericSparse (an ε axis) or example-level DP-SGD (training.privacy) is on."""
    return run.setting.params.get("epsilon") is not None or run.config.training.privacy.enabled


def _epsilon(run: Run, metrics: Mapping[str, Any]) -> float | None:
    return float(metrics.get("epsilon") or 0.0) if _dp(run) else None

