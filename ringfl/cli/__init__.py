"""The ``ringfl`` command: thin argument parsing over the library.

Every user-input problem surfaces as one line ``error: ...`` and exit status 2 (see
:mod:`ringfl.errors`); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

if sys.version_info >= (3, 11):
    from builtins import BaseExceptionGroup
else:  # trio depends on the backport there
    from exceptiongroup import BaseExceptionGroup

from ringfl.cli.runs import add_coordinator, add_demo, add_experiment, add_peer
from ringfl.cli.tools import (
    add_certs,
    add_dashboard,
    add_model,
    add_protocol,
    add_token,
    add_topology,
    add_train,
)
from ringfl.errors import RingflError
from ringfl.privacy.commands import add_audit, add_privacy
from ringfl.protocol import ProtocolError
from ringfl.transport import TransportError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ringfl", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_demo, add_coordinator, add_peer, add_experiment, add_train, add_model, add_protocol,
                add_topology, add_certs, add_token, add_dashboard, add_privacy, add_audit):
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
