"""The ``ringfl`` command: thin argument parsing over the library.

Every user-input problem surfaces as one line ``error: ...`` and exit status 2 (see
:mod:`ringfl.errors`); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

if sys.version_info >= (3, 11):
    from builtins import BaseExceptionGroup
else:  # trio depends on the backport there
    from exceptiongroup import BaseExceptionGroup

from ringfl.config import TLSConfig, load_token
from ringfl.errors import ConfigError, RingflError
from ringfl.privacy.commands import add_audit, add_privacy
from ringfl.protocol import ProtocolError
from ringfl.transport import TransportError

Handler = Callable[[argparse.Namespace], int]
DEMO_EPOCHS = 5
DEMO_TRAINING = {"lr": 0.1, "batch_size": 16, "momentum": 0.9}
"""The demo's local training: 5 epochs of momentum SGD per round take the 4 peers' FedAvg on
digits to 0.964 in 5 rounds (the run-config default, 1 plain epoch, stops at 0.82)."""


def _cmd_train(args: argparse.Namespace) -> int:
    """Centralized training of one model on one source (the reference line)."""
    from ringfl.baselines import EpochResult, train_reference
    from ringfl.config import TrainingConfig
    from ringfl.data import load_source
    from ringfl.model import load_spec

    spec = load_spec(args.model)
    splits = load_source(args.data, num_classes=spec.num_classes)
    training = TrainingConfig(lr=args.lr, batch_size=args.batch_size, momentum=args.momentum)
    print(f"centralized training of {spec.name} ({spec.num_params:,} parameters) on {args.data}: "
          f"{len(splits.train)} train / {len(splits.test)} test samples")

    def show(r: EpochResult) -> None:
        print(f"epoch {r.epoch:>3}  train loss {r.train_loss:.4f}  test loss {r.test_loss:.4f}  "
              f"accuracy {r.accuracy:.4f}  ({r.seconds:.2f} s)", flush=True)

    train_reference(spec, splits, training, args.epochs, seed=args.seed, on_epoch=show)
    return 0


def _cmd_model_show(args: argparse.Namespace) -> int:
    from ringfl.model import describe, load_spec

    spec = load_spec(args.spec)
    if spec.custom:
        from ringfl.model.runtime import Model

        model = Model(spec)
        rows = [(s.name, s.shape, s.size) for s in model.layout]
        print(describe(spec, rows))
    else:
        print(describe(spec))
    return 0


def _cmd_model_schema(args: argparse.Namespace) -> int:
    import json

    from ringfl.model.schema import spec_schema

    print(json.dumps(spec_schema(), indent=2))
    return 0


def _cmd_dashboard(args: argparse.Namespace) -> int:
    from ringfl.dashboard import serve_builder

    trio.run(serve_builder, args.listen, Path(args.specs) if args.specs else None)
    return 0


def _add_dashboard(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("dashboard", help="serve the model builder web page alone (no run)")
    p.add_argument("listen", metavar="HOST:PORT")
    p.add_argument("--specs", metavar="DIR", help="folder the builder saves specs to (default: saving off)")
    p.set_defaults(handler=_cmd_dashboard)


def _cmd_protocol_states(args: argparse.Namespace) -> int:
    from ringfl.protocol.state import format_table, mermaid

    print(mermaid() if args.mermaid else format_table())
    return 0


def _cmd_topology_show(args: argparse.Namespace) -> int:
    from ringfl.topology import describe, load_topology, plot

    topology = load_topology(args.file)
    print(describe(topology))
    if args.plot:
        plot(topology, args.plot)
        print(f"plot written to {args.plot}")
    return 0


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
    if args.resume and not config.topology:
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


def _resume_hint(out: Path | None, *, ring: bool) -> str:
    if ring:
        return "a bootstrap does not resume; start the run again"
    return "continue with --resume" if out is not None else "nothing saved to resume from (no --out)"


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
    name = args.id if args.topology else (args.name or _default_name())
    options = PeerOptions(coordinator=args.coordinator or "", data=args.data, name=name,
                          peers=args.peers, index=args.index, partition=args.partition,
                          listen=args.listen or "", eval_samples=args.eval_samples, ledger_path=args.ledger,
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

        peer.metrics = MetricsLog(Path(args.out))
    printer = PeerPrinter(options.name, quiet=args.quiet)
    peer.on_round.append(printer.show)
    from ringfl.interrupt import Interrupted, until_signal

    try:
        trio.run(until_signal, peer.run)
    except Interrupted as stop:
        printer.finish()
        print(f"peer {options.name} interrupted ({stop.name})", file=sys.stderr)
        return stop.exit_status
    printer.finish()
    return 0


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
    if coordinator:
        return RingPeer(network, dataclasses.replace(options, coordinator=coordinator))
    config = resolve_mode(load_config(args.config).replace(topology=args.topology), args.config, None)
    return RingPeer(network, options, without_bootstrap=(topology, config))


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


def _cmd_certs(args: argparse.Namespace) -> int:
    from ringfl import certs

    if args.certs_command == "init":
        path = certs.init_ca(Path(args.dir), force=args.force)
        print(f"CA written: {path}")
    else:
        paths = certs.issue(Path(args.dir), args.name, ips=args.ip or ("127.0.0.1",),
                            dns=args.dns or ("localhost",), days=args.days, force=args.force)
        print(f"certificate {paths.cert}\nkey         {paths.key}\nCA          {paths.ca}")
    return 0


def _cmd_token(args: argparse.Namespace) -> int:
    import secrets

    from ringfl.certs import write_secret
    from ringfl.errors import ConfigError
    from ringfl.protocol.auth import peer_token

    if args.token_command == "new":
        path = write_secret(Path(args.file), secrets.token_hex(32).encode() + b"\n", force=args.force)
        print(f"run token written to {path} (mode 0600)")
        return 0
    run_token = load_token(args.token_file)
    if run_token is None:
        raise ConfigError("no run token to derive from: pass --token-file or set $RINGFL_TOKEN")
    path = write_secret(Path(args.out), peer_token(run_token, args.name) + b"\n", force=args.force)
    print(f"token of peer {args.name!r} written to {path} (mode 0600): it joins a coordinator with "
          f"token_per_peer: true as --name {args.name} --token-file {path}, and as nobody else")
    return 0


def _add_token(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("token", help="run tokens: a shared secret, or per-peer tokens derived from it")
    tsub = p.add_subparsers(dest="token_command", required=True)
    new = tsub.add_parser("new", help="write a new random run token to FILE")
    new.add_argument("file")
    peer = tsub.add_parser("peer", help="derive the token of peer NAME (for token_per_peer: true)")
    peer.add_argument("name")
    peer.add_argument("--token-file", help="the run token (default: $RINGFL_TOKEN)")
    peer.add_argument("--out", required=True, help="where to write the peer's token")
    for parser in (new, peer):
        parser.add_argument("--force", action="store_true", help="replace an existing file")
        parser.set_defaults(handler=_cmd_token)


def _add_certs(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("certs", help="create a CA and certificates for (mutual) TLS")
    csub = p.add_subparsers(dest="certs_command", required=True)
    init = csub.add_parser("init", help="create a CA in DIR (ca.pem, ca-key.pem)")
    init.add_argument("dir")
    init.add_argument("--force", action="store_true", help="replace an existing CA")
    issue = csub.add_parser("issue", help="issue a certificate for NAME (a peer id or 'coordinator')")
    issue.add_argument("dir")
    issue.add_argument("name")
    issue.add_argument("--ip", action="append", help="IP address SAN (repeatable; default 127.0.0.1)")
    issue.add_argument("--dns", action="append", help="DNS name SAN (repeatable; default localhost)")
    issue.add_argument("--days", type=int, default=397)
    issue.add_argument("--force", action="store_true")
    for parser in (init, issue):
        parser.set_defaults(handler=_cmd_certs)


def _add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="centralized training (reference line)")
    p.add_argument("--model", default="digits-mlp", help="shipped spec name or spec file")
    p.add_argument("--data", default="digits", help="digits | fashion-mnist[:DIR] | idx:DIR | npz:FILE")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_cmd_train)


def _add_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="model specs")
    msub = p.add_subparsers(dest="model_command", required=True)
    show = msub.add_parser("show", help="layers, output shapes and parameter counts of a spec")
    show.add_argument("spec", help="shipped spec name (mlp, cnn, rnn, digits-mlp) or a JSON/YAML file")
    show.set_defaults(handler=_cmd_model_show)
    schema = msub.add_parser("schema", help="print the JSON Schema of a model spec")
    schema.set_defaults(handler=_cmd_model_schema)


def _add_protocol(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("protocol", help="the wire protocol")
    psub = p.add_subparsers(dest="protocol_command", required=True)
    states = psub.add_parser("states", help="print the peer state machine's transition table")
    states.add_argument("--mermaid", action="store_true", help="print a Mermaid state diagram instead")
    states.set_defaults(handler=_cmd_protocol_states)


def _add_topology(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("topology", help="topology files")
    tsub = p.add_subparsers(dest="topology_command", required=True)
    show = tsub.add_parser("show", help="nodes, edges, degrees, diameter, connectivity, spectral gap")
    show.add_argument("file")
    show.add_argument("--plot", metavar="PNG", help="also draw the graph to this file")
    show.set_defaults(handler=_cmd_topology_show)


def _add_coordinator(sub: argparse._SubParsersAction) -> None:
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
    p.add_argument("--resume", action="store_true", help="continue from DIR/checkpoint.npz")
    p.add_argument("--token-file", help="run token file peers must prove they know (default: $RINGFL_TOKEN)")
    p.add_argument("--dashboard", metavar="HOST:PORT", help="serve the live run view and model builder here")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(handler=_cmd_coordinator)


def _add_peer(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("peer", help="take part in a run")
    p.add_argument("--coordinator", metavar="HOST:PORT",
                   help="coordinator / bootstrap address (ring mode: default the topology's bootstrap; "
                        "none: peers find each other by the topology's addresses and use --config)")
    p.add_argument("--config", help="ring mode without a bootstrap: the run config")
    p.add_argument("--out", help="write this peer's per-round metrics.jsonl here")
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


def _add_demo(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="coordinator + peer processes on loopback, on digits")
    p.add_argument("--peers", type=int, default=4)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--algorithm", default="fedavg")
    p.add_argument("--epochs", type=int, default=DEMO_EPOCHS,
                   help=f"local epochs per round (default {DEMO_EPOCHS}: ≥ 0.95 on digits in 5 rounds)")
    p.add_argument("--out", help="write metrics.jsonl and summary.json here")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(handler=_cmd_demo)


def _add_experiment(sub: argparse._SubParsersAction) -> None:
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ringfl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_demo, _add_coordinator, _add_peer, _add_experiment, _add_train, _add_model, _add_protocol,
                _add_topology, _add_certs, _add_token, _add_dashboard, add_privacy, add_audit):
        add(sub)
    return parser


def _user_facing(exc: BaseException) -> BaseException | None:
    """The user-facing error inside ``exc`` (trio wraps task errors in exception groups)."""
    if isinstance(exc, BaseExceptionGroup):  # several tasks may fail for one reason (e.g. a mismatch)
        errors = [_user_facing(inner) for inner in exc.exceptions]
        return errors[0] if errors and all(errors) else None
    return exc if isinstance(exc, (RingflError, TransportError, ProtocolError)) else None


def _only_interrupts(exc: BaseException) -> bool:
    if isinstance(exc, BaseExceptionGroup):
        return all(_only_interrupts(inner) for inner in exc.exceptions)
    return isinstance(exc, KeyboardInterrupt)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (Exception, BaseExceptionGroup) as exc:
        if _only_interrupts(exc):  # Ctrl-C before a command's own handling was in place
            print("interrupted", file=sys.stderr)
            return 130
        error = _user_facing(exc)
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2 if isinstance(error, RingflError) else 1  # 1: the network or the other side failed us
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
