"""``ringfl`` commands that run a protocol: the coordinator (or a topology's bootstrap), a peer, the
loopback demo and experiments."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import trio

from ringfl.config import TLSConfig, load_token
from ringfl.errors import ConfigError

DEMO_EPOCHS = 5
DEMO_TRAINING = {"lr": 0.1, "batch_size": 16, "momentum": 0.9}
"""The demo's local training: 5 epochs of momentum SGD per round take the 4 peers' FedAvg on
digits to 0.964 in 5 rounds (the run-config default, 1 plain epoch, stops at 0.82)."""


def _network(tls: Any) -> Any:
    """TCP, or TLS over TCP when the run's TLS settings name a CA or certificate."""
    from ringfl.transport import TcpNetwork, TlsConfig, TlsNetwork

    if not tls.enabled:
        return TcpNetwork()
    return TlsNetwork(TlsConfig(ca=tls.ca, cert=tls.cert, key=tls.key,
                                require_client_cert=tls.require_client_cert))


def _setup_logging(args: argparse.Namespace) -> None:
    import logging

    level = logging.INFO if getattr(args, "verbose", False) else logging.WARNING
    logging.basicConfig(level=level, format="%(asctime)s %(name)s %(levelname)s %(message)s")


def _coordinator_config(args: argparse.Namespace) -> Any:
    from ringfl.config import load_config, resolve_mode

    config = load_config(args.config)
    config = config.replace(host=args.host, port=args.port, model=args.model, algorithm=args.algorithm,
                            rounds=args.rounds, min_peers=args.min_peers, peers=args.peers,
                            data=args.data, topology=args.topology, token_file=args.token_file)
    return resolve_mode(config, args.config, args.algorithm)


def _cmd_coordinator(args: argparse.Namespace) -> int:
    from ringfl.coordinator import Coordinator
    from ringfl.progress import RoundPrinter

    _setup_logging(args)
    config = _coordinator_config(args)
    out = Path(args.out) if args.out else None
    from ringfl.launch import serve_until_done

    runner = serve_until_done
    if args.dashboard:  # its address is checked before anything starts
        from ringfl.dashboard import dashboard_runner

        runner = dashboard_runner(args.dashboard, out)
    network = _network(config.tls)
    if config.topology:
        from ringfl.ring import Bootstrap

        server: Any = Bootstrap(config, network, out, resume=args.resume)
    else:
        server = Coordinator(config, network, out, resume=args.resume)
    if args.resume:
        print(f"resumed from {out}: {server.rounds_done()} of {config.rounds} rounds done", flush=True)
    printer = RoundPrinter(config.rounds, title=f"{config.algorithm} on {config.data}")
    server.on_round.append(printer.show)

    async def announce(address: str) -> None:
        print(f"coordinator listening on {address}; waiting for {server.config.peers} peer(s)", flush=True)

    from ringfl.interrupt import Interrupted, until_signal

    try:
        summary = trio.run(until_signal, runner, server, announce)
    except Interrupted as stop:
        printer.progress.stop()
        return _stopped(server, stop, hint=_resume_hint(out, ring=bool(config.topology)))
    printer.finish(summary, out)
    if out is not None:  # what an experiment writes for one setting
        from ringfl.experiments.run_report import write_run_report

        write_run_report(out, config, server.history, summary)
        print(f"report: {out / 'report.md'} (plots in {out / 'plots'})")
    return 0


def _resume_hint(out: Path | str | None, *, ring: bool) -> str:
    if out is None:
        return "nothing saved to resume from (no --out)"
    return "continue with --resume (the peers too, each with its --out DIR)" if ring else "continue with --resume"


def _stopped(server: Any, stop: Any, *, hint: str) -> int:
    """Ctrl-C / SIGTERM: summary.json marked interrupted, one line, exit 128 + signal."""
    server.stopped_summary(stop.name)
    done = server.rounds_done()
    print(f"interrupted at round {done + 1} of {server.config.rounds} ({stop.name}, {done} done); {hint}",
          file=sys.stderr)
    return stop.exit_status


def _cmd_peer(args: argparse.Namespace) -> int:
    from ringfl.peer import Peer, PeerOptions
    from ringfl.progress import PeerPrinter

    _setup_logging(args)
    if args.topology and args.id is None:
        raise ConfigError("ring mode needs --id: this peer's node id in the topology")
    if args.resume and not args.topology:
        raise ConfigError("--resume is for ring peers (--topology): a coordinator-mode peer gets the model "
                          "from the coordinator")
    name = args.id if args.topology else (args.name or _default_name())
    ledger = args.ledger or (str(Path(args.out) / "ledger.json") if args.topology and args.out else None)
    options = PeerOptions(coordinator=args.coordinator or "", data=args.data, name=name,
                          peers=args.peers, index=args.index, partition=args.partition,
                          listen=args.listen or "", eval_samples=args.eval_samples, ledger_path=ledger,
                          attack=args.attack, connect_wait=args.connect_wait, token=load_token(args.token_file),
                          own_process=True, model=_config_model(args))
    network = _network(TLSConfig(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key))
    if args.topology:
        peer: Any = _ring_peer(args, options, network)
    elif not args.coordinator:
        raise ConfigError("a peer needs --coordinator HOST:PORT (or --topology FILE --id I for ring mode)")
    else:
        peer = Peer(network, options)
    if args.out:
        from ringfl.metrics import MetricsLog

        peer.metrics = MetricsLog(Path(args.out), append=args.resume)
    printer = PeerPrinter(options.name, quiet=args.quiet)
    peer.on_round.append(printer.show)
    from ringfl.interrupt import Interrupted, until_signal

    try:
        trio.run(until_signal, peer.run)
    except Interrupted as stop:
        printer.finish()
        print(_peer_stopped(peer, options.name, stop, args.out), file=sys.stderr)
        return stop.exit_status
    printer.finish()
    if getattr(peer, "lost_bootstrap", False):  # it was stopped or crashed: the run is not over
        done, total = peer.progress()
        hint = _resume_hint(args.out, ring=False) + (" once it is back" if args.out else "")
        print(f"peer {options.name} lost the bootstrap after round {done} of {total}; {hint}", file=sys.stderr)
        return 1
    return 0


def _peer_stopped(peer: Any, name: str, stop: Any, out: str | None) -> str:
    """The one line of a peer stopped by a signal; a ring peer says where a resume continues."""
    if not hasattr(peer, "progress"):  # coordinator mode: the coordinator holds the model
        return f"peer {name} interrupted ({stop.name})"
    done, total = peer.progress()
    hint = _resume_hint(out, ring=False)
    return f"peer {name} interrupted at round {done + 1} of {total} ({stop.name}, {done} done); {hint}"


def _config_model(args: argparse.Namespace) -> str | None:
    """The model a peer's ``--config`` names: confirmed against the coordinator's at join, so a
    different model fails fast instead of being silently replaced (no config: take the run's)."""
    if not args.config:
        return None
    from ringfl.config import load_config

    return load_config(args.config).model


def _ring_peer(args: argparse.Namespace, options: Any, network: Any) -> Any:
    """A ring peer: through a bootstrap (flag or the topology's ``bootstrap``), or without one."""
    import dataclasses

    from ringfl.config import load_config, resolve_mode
    from ringfl.ring import RingPeer
    from ringfl.topology import load_topology

    topology = load_topology(args.topology)
    coordinator = args.coordinator or topology.bootstrap
    state = {"state_dir": Path(args.out) if args.out else None, "resume": args.resume}
    if coordinator:
        return RingPeer(network, dataclasses.replace(options, coordinator=coordinator), **state)
    config = resolve_mode(load_config(args.config).replace(topology=args.topology), args.config, None)
    return RingPeer(network, options, without_bootstrap=(topology, config), **state)


def _default_name() -> str:
    import os
    import socket

    return f"{socket.gethostname()}-{os.getpid()}"


def _cmd_demo(args: argparse.Namespace) -> int:
    """A coordinator in this process and N peer processes on loopback, printing accuracy per round."""
    from ringfl.config import RunConfig, TrainingConfig
    from ringfl.coordinator import Coordinator
    from ringfl.launch import peer_command, run_peer_processes, serve_until_done
    from ringfl.progress import RoundPrinter
    from ringfl.transport import TcpNetwork

    _setup_logging(args)
    config = RunConfig(peers=args.peers, min_peers=args.peers, rounds=args.rounds, port=0,
                       algorithm=args.algorithm, run_id="demo", training=TrainingConfig(epochs=args.epochs, **DEMO_TRAINING))
    out = Path(args.out) if args.out else None
    coordinator = Coordinator(config, TcpNetwork(), out)
    printer = RoundPrinter(config.rounds, title=f"demo: {args.peers} peers, {config.algorithm} on digits")
    coordinator.on_round.append(printer.show)

    async def start_peers(address: str) -> None:
        print(f"coordinator on {address}; starting {args.peers} peer processes", flush=True)
        commands = [peer_command(address, f"peer{i}", "--peers", str(args.peers), "--index", str(i))
                    for i in range(args.peers)]
        await run_peer_processes(commands)

    from ringfl.interrupt import Interrupted, until_signal

    try:
        summary = trio.run(until_signal, serve_until_done, coordinator, start_peers)
    except Interrupted as stop:
        printer.progress.stop()
        return _stopped(coordinator, stop, hint="the demo does not resume; run it again")
    printer.finish(summary, out)
    return 0


def _cmd_experiment(args: argparse.Namespace) -> int:
    """A grid of settings with the centralized and standalone reference lines (docs/experiments.md)."""
    from ringfl.experiments.plan import flags_experiment, load_experiment, plan
    from ringfl.experiments.run import run_experiment

    _setup_logging(args)
    flags = {"topology": args.topology, "peers": args.peers, "rounds": args.rounds, "data": args.data,
             "algorithm": args.algorithm, "model": args.model}
    if args.file:
        experiment = load_experiment(args.file, {k: v for k, v in flags.items() if v is not None})
    else:
        experiment = plan(flags_experiment(flags), where="command line")
    out = args.out or str(Path("results") / experiment.name)
    worker = _worker(args.worker) if args.worker else None
    run_experiment(experiment, out, transport=args.transport, jobs=args.jobs, worker=worker,
                   backend=args.backend, address=args.address)
    return 0


def _worker(text: str) -> tuple[int, int]:
    from ringfl.errors import ConfigError

    index, _, count = text.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        raise ConfigError(f"--worker must be I/J with 0 <= I < J, got {text!r}")
    return int(index), int(count)


def add_coordinator(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("coordinator", help="run the parameter server (or a topology's bootstrap)")
    p.add_argument("--config", help="run config (YAML or JSON); flags override it")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--model", help="shipped spec name or spec file")
    p.add_argument("--algorithm", help="fedsgd | fedavg | dssgd | dp-fedavg (ring: gossip-dssgd | relay | choco | d-psgd | gradient-tracking)")
    p.add_argument("--rounds", type=int)
    p.add_argument("--peers", type=int, help="participants to wait for before round 1")
    p.add_argument("--min-peers", type=int, help="quorum to close a round at its deadline")
    p.add_argument("--data", help="held-out test data source (default: the config's)")
    p.add_argument("--topology", help="ring/topology mode: act as bootstrap for this topology file")
    p.add_argument("--out", help="write metrics.jsonl, summary.json and checkpoints here")
    p.add_argument("--resume", action="store_true", help="continue the run in --out DIR (ring: the peers resume too)")
    p.add_argument("--token-file", help="run token file peers must prove they know (default: $RINGFL_TOKEN)")
    p.add_argument("--dashboard", metavar="HOST:PORT", help="serve the live run view and model builder here")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(handler=_cmd_coordinator)


def add_peer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("peer", help="take part in a run")
    p.add_argument("--coordinator", metavar="HOST:PORT",
                   help="coordinator / bootstrap address (ring mode: default the topology's bootstrap; "
                        "none: peers find each other by the topology's addresses and use --config)")
    p.add_argument("--config", help="ring mode without a bootstrap: the run config")
    p.add_argument("--out", help="write this peer's per-round metrics.jsonl here; ring mode: also its state "
                                 "after every round (DIR/state/) and its privacy ledger (DIR/ledger.json)")
    p.add_argument("--resume", action="store_true", help="ring mode: continue from the state in --out DIR")
    p.add_argument("--data", help="local data source (default: the coordinator's)")
    p.add_argument("--peers", type=int, help="partition the source into N parts ...")
    p.add_argument("--index", type=int, help="... and use part I (default: assigned at join)")
    p.add_argument("--partition", help="iid | shards | dirichlet | sample (default: the coordinator's)")
    p.add_argument("--name", help="peer id (default: host-pid)")
    p.add_argument("--topology", help="ring/topology mode: the topology file")
    p.add_argument("--id", help="ring/topology mode: this peer's node id in the topology")
    p.add_argument("--listen", metavar="HOST:PORT", help="ring mode: where neighbours dial in (default: ephemeral)")
    p.add_argument("--eval-samples", type=int, help="evaluate on at most this many test samples")
    p.add_argument("--ledger", metavar="FILE", help="keep this peer's privacy ledger here across restarts")
    p.add_argument("--token-file", help="run token file (default: $RINGFL_TOKEN; none: no authentication)")
    p.add_argument("--connect-wait", type=float, default=30.0, metavar="SECONDS",
                   help="keep retrying the coordinator this long (default 30)")
    p.add_argument("--attack", help=argparse.SUPPRESS)  # experiments: sign-flip | scale:K | noise:S
    p.add_argument("--tls-ca")
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(handler=_cmd_peer)


def add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="coordinator + peer processes on loopback, on digits")
    p.add_argument("--peers", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--algorithm", default="fedavg")
    p.add_argument("--epochs", type=int, default=DEMO_EPOCHS,
                   help=f"local epochs per round (default {DEMO_EPOCHS}: ≥ 0.95 on digits in 5 rounds)")
    p.add_argument("--out", help="write metrics.jsonl and summary.json here")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(handler=_cmd_demo)


def add_experiment(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("experiment", help="run a grid of settings with reference lines; write a report")
    p.add_argument("file", nargs="?", help="experiment file (YAML); without it, one setting from the flags")
    p.add_argument("--out", help="output folder (default: results/NAME); finished settings are skipped")
    p.add_argument("--transport", choices=("memory", "tcp"), default="memory",
                   help="memory: all peers in this process; tcp: one peer process each on loopback")
    p.add_argument("--jobs", type=int, default=1, help="settings run at once, each in its own process")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: this machine; ray: each setting a task on a Ray cluster (pip install -e '.[ray]')")
    p.add_argument("--address", metavar="HOST:PORT", help="--backend ray: the cluster's head (default: RAY_ADDRESS, "
                   "else a new cluster on this machine)")
    p.add_argument("--topology", help="topology file (ring mode); with FILE: overrides base")
    p.add_argument("--peers", type=int)
    p.add_argument("--rounds", type=int)
    p.add_argument("--data", help="digits | fashion-mnist[:DIR] | idx:DIR | npz:FILE")
    p.add_argument("--algorithm", help="fedsgd | fedavg | dssgd | dp-fedavg | gossip-dssgd | relay | choco | d-psgd | gradient-tracking")
    p.add_argument("--model", help="shipped spec name or spec file")
    p.add_argument("--worker", help=argparse.SUPPRESS)  # I/J: run every J-th setting (used by --jobs)
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(handler=_cmd_experiment)
