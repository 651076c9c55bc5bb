"""The ``ringfl`` command: thin argument parsing over the library.

Every user-input problem surfaces as one line ``error: ...`` and exit status 2 (see
:mod:`ringfl.errors`); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from ringfl.errors import RingflError

Handler = Callable[[argparse.Namespace], int]


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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ringfl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (_add_train, _add_model, _add_protocol, _add_topology):
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except RingflError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
