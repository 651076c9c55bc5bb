"""``ringfl`` commands that prepare or inspect rather than run a protocol: centralized training,
model specs, the protocol's state table, topologies, certificates, run tokens, the model builder."""

from __future__ import annotations

import argparse
from pathlib import Path

import trio

from ringfl.config import load_token


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


def add_dashboard(sub: argparse._SubParsersAction) -> None:
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


def add_token(sub: argparse._SubParsersAction) -> None:
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


def add_certs(sub: argparse._SubParsersAction) -> None:
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


def add_train(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="centralized training (reference line)")
    p.add_argument("--model", default="digits-mlp", help="shipped spec name or spec file")
    p.add_argument("--data", default="digits", help="digits | fashion-mnist[:DIR] | idx:DIR | npz:FILE")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--momentum", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=_cmd_train)


def add_model(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("model", help="model specs")
    msub = p.add_subparsers(dest="model_command", required=True)
    show = msub.add_parser("show", help="layers, output shapes and parameter counts of a spec")
    show.add_argument("spec", help="shipped spec name (mlp, cnn, rnn, digits-mlp) or a JSON/YAML file")
    show.set_defaults(handler=_cmd_model_show)
    schema = msub.add_parser("schema", help="print the JSON Schema of a model spec")
    schema.set_defaults(handler=_cmd_model_schema)


def add_protocol(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("protocol", help="the wire protocol")
    psub = p.add_subparsers(dest="protocol_command", required=True)
    states = psub.add_parser("states", help="print the peer state machine's transition table")
    states.add_argument("--mermaid", action="store_true", help="print a Mermaid state diagram instead")
    states.set_defaults(handler=_cmd_protocol_states)


def add_topology(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("topology", help="topology files")
    tsub = p.add_subparsers(dest="topology_command", required=True)
    show = tsub.add_parser("show", help="nodes, edges, degrees, diameter, connectivity, spectral gap")
    show.add_argument("file")
    show.add_argument("--plot", metavar="PNG", help="also draw the graph to this file")
    show.set_defaults(handler=_cmd_topology_show)
