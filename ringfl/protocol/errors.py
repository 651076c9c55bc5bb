"""Protocol error types, split by who is to blame (the h11 convention).

``RemoteProtocolError``: the bytes or the message order the peer sent break the protocol; the
connection cannot be trusted any more. ``LocalProtocolError``: our own code asked for something the
protocol forbids (a bug above this layer); nothing was sent. Both carry the :class:`ErrorCode` an
``Error`` message would report, so the transport can tell the peer why it hangs up.
"""

from __future__ import annotations

import enum


class ErrorCode(enum.IntEnum):
    """Reason codes carried by the ``Error`` message (and by protocol exceptions)."""

    PROTOCOL = 1  # malformed frame or a message the state table forbids
    VERSION = 2  # unsupported protocol version
    TOO_LARGE = 3  # frame longer than the receiver's limit
    TIMEOUT = 4  # the peer took longer than the deadline
    RUN_MISMATCH = 5  # message belongs to another run
    INTERNAL = 6  # the sender hit an unexpected failure
    SPEC_MISMATCH = 7  # model spec could not be agreed
    AUTH = 8  # run-token handshake or frame tag failed, or a message claimed another sender


class ProtocolError(Exception):
    """Base of all protocol violations; ``code`` is what to report to the peer."""

    def __init__(self, message: str, code: ErrorCode = ErrorCode.PROTOCOL) -> None:
        super().__init__(message)
        self.code = ErrorCode(code)


class LocalProtocolError(ProtocolError):
    """Our code misused the protocol API (invalid message or transition); nothing was sent."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes or a message sequence that violates the protocol."""
