"""The protocol vocabulary: message codes, reason codes and one frozen dataclass per message.

Messages are plain data: no I/O and no byte layout (that is :mod:`ringfl.protocol.codec`).
Every message carries the envelope fields (protocol ``version``, ``run_id``, ``sender``, ``round``,
``seq``) so the layers above can recognise duplicates and stale messages; a
:class:`~ringfl.protocol.state.Connection` stamps ``run_id``, ``sender`` and ``seq`` on send.
Fields are keyword-only; their wire names are the field names.
"""

from __future__ import annotations

import dataclasses
import enum
import typing
from dataclasses import dataclass, field
from typing import Annotated, Any, ClassVar

import numpy as np

from ringfl.vectors import Vector

PROTOCOL_VERSION = 1

Metadata = dict[str, Any]
"""Free-form plain data (str keys; None/bool/int/float/str/list/dict values), e.g. metrics."""
Bytes = Annotated[np.ndarray, "uint8"]
"""Opaque bytes (keys, ciphertexts, shares) as a raw uint8 buffer: msgpack headers carry no bin."""
Words = Annotated[np.ndarray, "uint32"]
"""Elements of the ring Z_2^32 (a masked secure-aggregation input)."""
Ids = tuple[str, ...]


class Code(enum.IntEnum):
    """The 4-byte message code that starts every frame (1001-1004 keep the seed's meaning)."""

    JOIN = 1001
    PARAMS_REQUEST = 1002
    SPEC_CONFIRM = 1003
    UPLOAD = 1004
    ACCEPT = 1005
    REJECT = 1006
    SPEC_REPLY = 1007
    PARAMS = 1008
    ACK = 1009
    NEIGHBOURS = 1010
    ROUND_START = 1011
    END_OF_RUN = 1012
    REPORT = 1013
    HEARTBEAT = 1014
    GOODBYE = 1015
    ERROR = 1016
    # 11xx: secure aggregation (ringfl.secagg), one block so other extensions keep 10xx
    SECAGG_KEYS = 1101
    SECAGG_ROSTER = 1102
    SECAGG_SHARES = 1103
    SECAGG_INBOX = 1104
    SECAGG_MASKED = 1105
    SECAGG_UNMASK_REQUEST = 1106
    SECAGG_UNMASK = 1107


class RejectReason(enum.IntEnum):
    """Why a join was refused (``Reject.reason``)."""

    UNSPECIFIED = 0
    RUN_FULL = 1
    WRONG_RUN = 2
    DUPLICATE_PEER = 3
    NOT_ALLOWED = 4  # not a neighbour in the topology / not on the allow list
    RUN_ENDED = 5
    INCOMPATIBLE = 6


class AckReason(enum.IntEnum):
    """Why an upload was accepted (``OK``) or rejected (``Ack.reason``)."""

    OK = 0
    STALE = 1  # computed on a round / model version the receiver no longer accepts
    DUPLICATE = 2
    INVALID = 3  # wrong size, non-finite, out of policy bounds
    POLICY = 4  # refused by the aggregation / robustness policy
    NOT_SELECTED = 5
    RUN_ENDED = 6
    BUSY = 7


class Kind(enum.Enum):
    """How a field is checked and put on the wire (derived from its type hint)."""

    STR = "str"
    INT = "int"  # non-negative, < 2**63
    FLOAT = "float"  # finite
    BOOL = "bool"
    PLAIN = "plain"  # Metadata
    NEIGHBOURS = "neighbours"
    VECTOR = "vector"  # raw buffers, see codec
    BYTES = "bytes"  # one raw uint8 buffer; the header holds its length
    WORDS = "words"  # one raw uint32 buffer (ring elements); length <= the vector limit
    IDS = "ids"  # a list of strings (peer ids)


@dataclass(frozen=True)
class Neighbour:
    """One entry of a neighbour list: who to dial, and the mixing weight to apply."""

    peer_id: str
    address: str
    weight: float = 1.0


@dataclass(frozen=True, kw_only=True, eq=False)
class Message:
    """Base of all wire messages: the envelope every frame carries."""

    CODE: ClassVar[Code]
    FIELDS: ClassVar[tuple[tuple[str, Kind], ...]]  # message-specific fields, filled by @message_type

    round: int = 0
    seq: int = 0
    sender: str = ""
    run_id: str = ""
    version: int = PROTOCOL_VERSION

    def check(self) -> None:
        """Cross-field rules beyond per-field types; raises ValueError naming the problem."""

    def __eq__(self, other: object) -> bool:
        if type(other) is not type(self):
            return NotImplemented
        return all(
            _values_equal(getattr(self, f.name), getattr(other, f.name))
            for f in dataclasses.fields(self)
        )

    __hash__ = None  # type: ignore[assignment]


ENVELOPE: tuple[tuple[str, Kind], ...] = (
    ("version", Kind.INT),
    ("run_id", Kind.STR),
    ("sender", Kind.STR),
    ("round", Kind.INT),
    ("seq", Kind.INT),
)

MESSAGE_TYPES: dict[int, type[Message]] = {}
"""Code -> message class, for the decoder."""

_KIND_OF_HINT: dict[Any, Kind] = {
    str: Kind.STR,
    int: Kind.INT,
    float: Kind.FLOAT,
    bool: Kind.BOOL,
    Metadata: Kind.PLAIN,
    tuple[Neighbour, ...]: Kind.NEIGHBOURS,
    Vector: Kind.VECTOR,
    Bytes: Kind.BYTES,
    Words: Kind.WORDS,
    Ids: Kind.IDS,
}


def message_type(code: Code):
    """Make a message dataclass, derive its wire fields from the type hints and register it."""

    def wrap(cls: type[Message]) -> type[Message]:
        cls = dataclass(frozen=True, kw_only=True, eq=False)(cls)
        hints = typing.get_type_hints(cls, include_extras=True)
        envelope = {name for name, _ in ENVELOPE}
        cls.CODE = code
        cls.FIELDS = tuple(
            (f.name, _KIND_OF_HINT[hints[f.name]])
            for f in dataclasses.fields(cls)
            if f.name not in envelope
        )
        MESSAGE_TYPES[int(code)] = cls
        return cls

    return wrap


def _values_equal(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (
            isinstance(a, np.ndarray)
            and isinstance(b, np.ndarray)
            and a.dtype == b.dtype
            and np.array_equal(a, b)
        )
    return bool(a == b)


# --- client -> server (the side that dialled) -------------------------------------------------


@message_type(Code.JOIN)
class JoinRequest(Message):
    """1001: ask to take part. ``address`` is where the peer listens (ring mode), if anywhere."""

    address: str = ""
    num_samples: int = 0
    info: Metadata = field(default_factory=dict)


@message_type(Code.PARAMS_REQUEST)
class ParamsRequest(Message):
    """1002: ask for the model parameters; ``fraction`` is DSSGD's download share θd."""

    fraction: float = 1.0

    def check(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")


@message_type(Code.SPEC_CONFIRM)
class SpecConfirm(Message):
    """1003: confirm the model spec by its hash; an empty hash asks for the full spec."""

    spec_hash: str = ""


@message_type(Code.UPLOAD)
class Upload(Message):
    """1004: a (usually sparse) update. ``kind`` says what it holds, e.g. "delta" or "params"."""

    vector: Vector
    num_samples: int = 0
    base_version: int = 0
    kind: str = "delta"
    info: Metadata = field(default_factory=dict)  # kind "gossip": a GossipUpdate's header

    def check(self) -> None:
        if self.kind == "gossip":  # a ring neighbour's update: its header is typed (payloads.py)
            from ringfl.protocol.payloads import check_gossip_info

            check_gossip_info(self.info)


@message_type(Code.REPORT)
class PeerReport(Message):
    """Per-round metrics (loss, accuracy, ε spent, timings...) for the coordinator's records."""

    metrics: Metadata = field(default_factory=dict)


# --- server -> client (the coordinator, or the neighbour receiving updates) ------------------


@message_type(Code.ACCEPT)
class Accept(Message):
    """Join accepted; announces the model size and spec hash the session will use."""

    num_params: int
    spec_hash: str
    mode: str = ""
    info: Metadata = field(default_factory=dict)


@message_type(Code.REJECT)
class Reject(Message):
    """Join refused (:class:`RejectReason`); the server closes after sending it."""

    reason: int = RejectReason.UNSPECIFIED
    detail: str = ""


@message_type(Code.SPEC_REPLY)
class SpecReply(Message):
    """Answer to 1003: ``ok`` if the hash matched, else the full canonical spec JSON."""

    ok: bool
    spec_hash: str
    spec_json: str = ""

    def check(self) -> None:
        if self.ok == bool(self.spec_json):
            raise ValueError("spec_json must be empty when ok is true and present otherwise")


@message_type(Code.PARAMS)
class Params(Message):
    """Reply to 1002: the model (dense, or sparse when θd < 1) at ``model_version``."""

    vector: Vector
    model_version: int = 0


@message_type(Code.ACK)
class Ack(Message):
    """Reply to 1004: whether the upload with sequence number ``ack_seq`` was applied."""

    accepted: bool
    reason: int = AckReason.OK
    ack_seq: int = 0
    detail: str = ""

    def check(self) -> None:
        if self.accepted != (self.reason == AckReason.OK):
            raise ValueError(
                "an accepted upload has reason 0 (OK), a rejected one a non-zero reason"
            )


@message_type(Code.NEIGHBOURS)
class Neighbours(Message):
    """The peers to exchange updates with, pushed at any time after accept (re-linking)."""

    neighbours: tuple[Neighbour, ...] = ()
    topology_version: int = 0
    info: Metadata = field(default_factory=dict)  # e.g. node ids, origins to wait for

    def __post_init__(self) -> None:
        object.__setattr__(self, "neighbours", tuple(self.neighbours))  # lists compare unequal


@message_type(Code.ROUND_START)
class RoundStart(Message):
    """Round ``round`` begins; ``deadline`` is seconds from receipt (0: none)."""

    deadline: float = 0.0
    selected: bool = True
    info: Metadata = field(default_factory=dict)  # a RoundPlan (payloads.py)

    def check(self) -> None:
        if self.deadline < 0:
            raise ValueError(f"deadline must be >= 0, got {self.deadline}")
        from ringfl.protocol.payloads import check_round_info

        check_round_info(self.info)


@message_type(Code.END_OF_RUN)
class EndOfRun(Message):
    """The run is over: no more rounds, requests are no longer answered."""

    reason: str = ""


# --- either side ------------------------------------------------------------------------------


@message_type(Code.HEARTBEAT)
class Heartbeat(Message):
    """Liveness ping; carries only the envelope."""


@message_type(Code.GOODBYE)
class Goodbye(Message):
    """The sender will send nothing more on this connection."""

    reason: str = ""


@message_type(Code.ERROR)
class Error(Message):
    """The sender detected a fatal problem (:class:`ErrorCode`) and is closing."""

    code: int
    detail: str = ""


def message_name(code: int) -> str:
    """Readable name for a code, for error messages and tables."""
    try:
        return Code(code).name.lower()
    except ValueError:
        return str(code)


__all__ = [
    "PROTOCOL_VERSION",
    "Accept",
    "Ack",
    "AckReason",
    "Code",
    "EndOfRun",
    "Error",
    "Goodbye",
    "Heartbeat",
    "JoinRequest",
    "Kind",
    "MESSAGE_TYPES",
    "Message",
    "Metadata",
    "Neighbour",
    "Neighbours",
    "Params",
    "ParamsRequest",
    "PeerReport",
    "RejectReason",
    "RoundStart",
    "SpecConfirm",
    "SpecReply",
    "Upload",
    "message_name",
]
