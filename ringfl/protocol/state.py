"""The one peer session state machine, shared by coordinator and ring mode, and its sans-IO
connection object (in the manner of h11).

A session has two sides: the **client** dialled and joins; the **server** accepted (the
coordinator, or in ring mode the neighbour receiving updates). Both sides track the same session
state with the same table, keyed by who sends what: ``(state, Event(sender_role, code))``. Sending
is our role's event, receiving is the other role's. Notifications (heartbeat, neighbours, round
start, report) are self-loops so that they may cross request/response pairs in flight without the
two sides' views diverging; every other pair not in the table is a protocol error.
"""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import NamedTuple

from ringfl.protocol.auth import TAG_SIZE, RunAuth
from ringfl.protocol.codec import (
    EOF,
    NEED_DATA,
    FrameDecoder,
    Limits,
    Sentinel,
    encode_parts,
)
from ringfl.protocol.errors import (
    ErrorCode,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from ringfl.protocol.messages import Accept, Code, Message, message_name


class Role(enum.Enum):
    CLIENT = "client"  # dialled, joins, requests, uploads
    SERVER = "server"  # accepted: coordinator, or the neighbour receiving updates

    @property
    def other(self) -> Role:
        return Role.SERVER if self is Role.CLIENT else Role.CLIENT


class State(enum.Enum):
    CONNECTED = "connected"
    JOINING = "joining"  # client sent 1001
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    SPEC = "spec"  # client sent 1003, waiting for the spec reply
    READY = "ready"  # spec agreed: may request parameters or upload
    PARAMS = "params"  # client sent 1002, waiting for parameters
    TRAINING = "training"  # parameters received
    SA_KEYS = "secagg_keys"  # client sent its round keys, waits for the roster
    SA_ROSTER = "secagg_roster"  # roster received: the client sends its sealed shares
    SA_SHARED = "secagg_shared"  # shares sent, waits for the shares addressed to it
    SA_MASKING = "secagg_masking"  # inbox received: the client sends its masked input
    SA_MASKED = "secagg_masked"  # masked input sent, waits for the unmask request
    SA_UNMASKING = "secagg_unmasking"  # the client sends its unmasking shares (-> uploading)
    UPLOADING = "uploading"  # client sent 1004, waiting for the ack
    WAITING = "waiting"  # upload acknowledged, waiting for the next round
    ENDED = "ended"  # server sent end of run
    CLIENT_LEAVING = "client_leaving"  # client said goodbye; server may still send
    SERVER_LEAVING = "server_leaving"  # server said goodbye; client may still send
    CLOSED = "closed"
    ERROR = "error"


class Event(NamedTuple):
    """A message of type ``code`` sent by ``sender`` (the key of the transition table)."""

    sender: Role
    code: Code

    def __str__(self) -> str:
        return f"{self.sender.value}:{message_name(self.code)}"


S = State
C, V = Role.CLIENT, Role.SERVER

SECAGG_CLIENT_CODES = (Code.SECAGG_KEYS, Code.SECAGG_SHARES, Code.SECAGG_MASKED, Code.SECAGG_UNMASK)
CLIENT_CODES = frozenset(
    {Code.JOIN, Code.SPEC_CONFIRM, Code.PARAMS_REQUEST, Code.UPLOAD, Code.REPORT, Code.HEARTBEAT,
     *SECAGG_CLIENT_CODES}
)
SERVER_CODES = frozenset(
    {
        Code.ACCEPT,
        Code.REJECT,
        Code.SPEC_REPLY,
        Code.PARAMS,
        Code.ACK,
        Code.NEIGHBOURS,
        Code.ROUND_START,
        Code.END_OF_RUN,
        Code.HEARTBEAT,
        Code.SECAGG_ROSTER,
        Code.SECAGG_INBOX,
        Code.SECAGG_UNMASK_REQUEST,
    }
)
"""What each role may ever send, besides goodbye and error."""

SECAGG = (S.SA_KEYS, S.SA_ROSTER, S.SA_SHARED, S.SA_MASKING, S.SA_MASKED, S.SA_UNMASKING)
"""A secure-aggregation round in progress (ringfl.secagg); the server may abort it with an ack."""
POST_ACCEPT = (S.ACCEPTED, S.SPEC, S.READY, S.PARAMS, S.TRAINING, S.UPLOADING, S.WAITING, *SECAGG)
LIVE = (S.CONNECTED, S.JOINING, S.REJECTED, *POST_ACCEPT, S.ENDED)
"""States in which both sides may still send."""
CAN_REQUEST = (S.READY, S.TRAINING, S.WAITING)
"""Where the client may ask for parameters or upload (ring, coordinator and async DSSGD)."""

# The request/response chain: who moves the session forward, and to where.
_CHAIN: dict[tuple[State, Role, Code], State] = {
    (S.CONNECTED, C, Code.JOIN): S.JOINING,
    (S.JOINING, V, Code.ACCEPT): S.ACCEPTED,
    (S.JOINING, V, Code.REJECT): S.REJECTED,
    (S.ACCEPTED, C, Code.SPEC_CONFIRM): S.SPEC,
    (S.READY, C, Code.SPEC_CONFIRM): S.SPEC,  # re-confirm, e.g. after fetching the full spec
    (S.WAITING, C, Code.SPEC_CONFIRM): S.SPEC,
    (S.SPEC, V, Code.SPEC_REPLY): S.READY,
    **{(s, C, Code.PARAMS_REQUEST): S.PARAMS for s in CAN_REQUEST},
    (S.PARAMS, V, Code.PARAMS): S.TRAINING,
    **{(s, C, Code.UPLOAD): S.UPLOADING for s in CAN_REQUEST},
    (S.UPLOADING, V, Code.ACK): S.WAITING,
    (S.WAITING, V, Code.ROUND_START): S.READY,
    **{(s, V, Code.END_OF_RUN): S.ENDED for s in POST_ACCEPT},
    # Secure aggregation: keys -> roster -> shares -> inbox -> masked -> unmask request -> unmask
    # (-> uploading, closed by the ack); an ack in any of its states aborts the round.
    (S.TRAINING, C, Code.SECAGG_KEYS): S.SA_KEYS,
    (S.SA_KEYS, V, Code.SECAGG_ROSTER): S.SA_ROSTER,
    (S.SA_ROSTER, C, Code.SECAGG_SHARES): S.SA_SHARED,
    (S.SA_SHARED, V, Code.SECAGG_INBOX): S.SA_MASKING,
    (S.SA_MASKING, C, Code.SECAGG_MASKED): S.SA_MASKED,
    (S.SA_MASKED, V, Code.SECAGG_UNMASK_REQUEST): S.SA_UNMASKING,
    (S.SA_UNMASKING, C, Code.SECAGG_UNMASK): S.UPLOADING,
    **{(s, V, Code.ACK): S.WAITING for s in SECAGG},
}

# Notifications that leave the state unchanged, and where they are allowed.
_SELF_LOOPS: dict[tuple[Role, Code], tuple[State, ...]] = {
    (C, Code.HEARTBEAT): LIVE,
    (V, Code.HEARTBEAT): LIVE,
    (V, Code.NEIGHBOURS): POST_ACCEPT,
    (V, Code.ROUND_START): (S.ACCEPTED, S.SPEC, S.READY, S.PARAMS, S.TRAINING, S.UPLOADING),
    (C, Code.REPORT): (*POST_ACCEPT, S.ENDED),
    # Requests that crossed the server's end of run in flight; they are not answered.
    (C, Code.SPEC_CONFIRM): (S.ENDED,),
    (C, Code.PARAMS_REQUEST): (S.ENDED,),
    (C, Code.UPLOAD): (S.ENDED,),
    # Secure-aggregation replies that crossed the server's abort (or end of run): ignored.
    **{(C, code): (S.WAITING, S.READY, S.ENDED) for code in SECAGG_CLIENT_CODES},
}


LEAVING = {C: S.CLIENT_LEAVING, V: S.SERVER_LEAVING}
"""The state after ``role`` said goodbye (and the other side has not yet)."""


def _build_table() -> dict[tuple[State, Event], State]:
    table = {(state, Event(role, code)): nxt for (state, role, code), nxt in _CHAIN.items()}
    for (role, code), states in _SELF_LOOPS.items():
        table.update({(state, Event(role, code)): state for state in states})
    for role, state in LEAVING.items():
        table.update({(s, Event(role, Code.GOODBYE)): state for s in LIVE})
        # The side that did not say goodbye may still have anything in flight, then says it too.
        other = role.other
        codes = CLIENT_CODES if other is C else SERVER_CODES
        table.update({(state, Event(other, code)): state for code in codes})
        table[(state, Event(other, Code.GOODBYE))] = S.CLOSED
    for role in Role:  # whoever detects a problem may say so, even after an error
        table.update({(s, Event(role, Code.ERROR)): S.ERROR for s in State if s is not S.CLOSED})
    return table


TRANSITIONS: dict[tuple[State, Event], State] = _build_table()
"""The session state machine: ``(state, Event(sender, code)) -> next state``."""


def allowed(state: State, role: Role) -> dict[Code, State]:
    """The messages ``role`` may send in ``state``, with the state each leads to."""
    return {
        event.code: nxt
        for (s, event), nxt in TRANSITIONS.items()
        if s is state and event.sender is role
    }


def format_table() -> str:
    """The table as text, one block per state (``ringfl protocol states``)."""
    lines = []
    for state in State:
        lines.append(state.value)
        for role in Role:
            moves = allowed(state, role)
            text = "; ".join(
                message_name(code) + ("" if nxt is state else f" -> {nxt.value}")
                for code, nxt in sorted(moves.items())
            )
            lines.append(f"  {role.value:<6} sends: {text or '-'}")
    lines.append("(EOF from the peer between frames -> closed, from any state)")
    return "\n".join(lines)


def mermaid() -> str:
    """A Mermaid stateDiagram of the table; self-loops are left out (listed in a note).

    Moves allowed from every live state (goodbye, error) are drawn once from the composite.
    """
    common = set.intersection(*(_moves_from(s) for s in LIVE))
    inner, outer = [], []
    for (state, event), nxt in TRANSITIONS.items():
        if nxt is state or (state in LIVE and (event, nxt) in common):
            continue
        (inner if state in LIVE else outer).append(f"{state.value} --> {nxt.value} : {event}")
    outer += [f"live --> {nxt.value} : {event}" for event, nxt in sorted(common, key=str)]
    return "\n".join(
        [
            "stateDiagram-v2",
            "    [*] --> live",
            "    state live {",
            "        [*] --> connected",
            *(f"        {line}" for line in inner),
            "    }",
            *(f"    {line}" for line in outer),
            "    live --> closed : EOF",
            "    closed --> [*]",
            "    note right of live",
            "        Self-loops (state unchanged): heartbeat (both sides), neighbours and",
            "        round start (server), report (client); see the state table.",
            "    end note",
        ]
    )


def _moves_from(state: State) -> set[tuple[Event, State]]:
    return {(e, nxt) for (s, e), nxt in TRANSITIONS.items() if s is state and nxt is not state}


@dataclass
class Counters:
    """Bytes and messages in one direction; header = framing + msgpack, payload = raw arrays."""

    messages: int = 0
    header_bytes: int = 0
    payload_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return self.header_bytes + self.payload_bytes

    def add(self, frame_bytes: int, payload_bytes: int) -> None:
        self.messages += 1
        self.header_bytes += frame_bytes - payload_bytes
        self.payload_bytes += payload_bytes


class Connection:
    """Sans-IO session with one counterpart: validates every message against the table.

    ``send(msg) -> bytes`` stamps ``run_id``, ``sender`` and ``seq`` and encodes; a refused send
    (LocalProtocolError) changes nothing. ``receive_data`` + ``next_event`` decode and check what
    the peer sent; a RemoteProtocolError moves the session to ERROR. With ``limits=None`` the frame
    limit starts at the handshake default and follows the model size once an Accept is seen.

    The first message received fixes the peer's id (``peer_id``, normally from the 1001 or the
    1005): a later message with another ``sender`` is a RemoteProtocolError (``ErrorCode.AUTH``).

    With a run ``token`` (pre-shared secret bytes, see :mod:`ringfl.protocol.auth`) the join
    becomes a challenge-response and every later frame carries a tag that is checked before the
    frame is parsed. Failures raise RemoteProtocolError with ``ErrorCode.AUTH`` and count in
    ``auth_failures``; after one the session is dead (every later ``next_event`` raises).
    ``authenticated`` is true once the peer has proven the token. ``token=None`` changes nothing
    on the wire. A server with ``per_peer_tokens`` holds the run token and expects each client to
    prove ``peer_token(run token, its id)`` instead, so a peer's token joins under its id only.
    """

    def __init__(
        self,
        role: Role,
        *,
        local_id: str = "",
        run_id: str = "",
        limits: Limits | None = None,
        first_seq: int = 1,
        token: bytes | None = None,
        per_peer_tokens: bool = False,
    ) -> None:
        self.role = role
        self.local_id = local_id
        self.run_id = run_id
        self.next_seq = first_seq
        self.state = State.CONNECTED
        self.sent = Counters()
        self.received = Counters()
        self.peer_id: str | None = None
        self.auth_failures = 0
        self._auth = (None if token is None
                      else RunAuth(token, client=role is Role.CLIENT, per_peer=per_peer_tokens))
        self._auth_failure: RemoteProtocolError | None = None
        self._auto_limits = limits is None
        self._decoder = FrameDecoder(limits or Limits())

    @property
    def limits(self) -> Limits:
        return self._decoder.limits

    @limits.setter
    def limits(self, limits: Limits) -> None:
        self._decoder.limits = limits
        self._auto_limits = False

    @property
    def authenticated(self) -> bool:
        """The peer has proven it knows the run token (always False without a token)."""
        return self._auth is not None and self._auth.authenticated

    @property
    def bytes_sent(self) -> int:
        return self.sent.total_bytes

    @property
    def bytes_received(self) -> int:
        return self.received.total_bytes

    def can_send(self, message_type: type[Message]) -> bool:
        return (self.state, Event(self.role, message_type.CODE)) in TRANSITIONS and (
            self._auth_refusal(message_type.CODE) is None
        )

    def send(self, message: Message) -> bytes:
        """Check the transition, stamp the envelope and encode; returns the frame to write."""
        nxt = self._next_state(self.role, message, LocalProtocolError)
        refusal = self._auth_refusal(message.CODE)
        if refusal is not None:
            raise LocalProtocolError(refusal)
        stamped = replace(message, run_id=self.run_id, sender=self.local_id, seq=self.next_seq)
        auth = self._auth
        if auth is not None:
            stamped = auth.outgoing(stamped)
        if auth is not None and auth.send_mac is not None:
            parts, payload = encode_parts(stamped, self.limits, trailer=TAG_SIZE)
            data = auth.seal(parts)
        else:
            parts, payload = encode_parts(stamped, self.limits)
            data = b"".join(parts)
            if auth is not None:
                auth.sent(stamped, data)
        self.next_seq += 1
        self.state = nxt
        self.sent.add(len(data), payload)
        self._observe(stamped)
        return data

    def receive_data(self, data: bytes) -> None:
        """Feed bytes from the peer; ``b""`` signals EOF."""
        self._decoder.receive_data(data)

    def next_event(self) -> Message | Sentinel:
        """The next message from the peer, ``NEED_DATA``, or ``EOF`` (state becomes CLOSED)."""
        if self._auth_failure is not None:
            raise RemoteProtocolError(
                f"session failed authentication: {self._auth_failure}", ErrorCode.AUTH
            )
        auth = self._auth
        try:
            frame = self._decoder.next_frame(None if auth is None else auth.open)
            if frame is NEED_DATA:
                return NEED_DATA
            if frame is EOF:
                self.state = State.CLOSED
                return EOF
            message = frame.message
            nxt = self._next_state(self.role.other, message, RemoteProtocolError)
            self._check_run(message)
            self._check_sender(message)
            if auth is not None:
                message = auth.received(message)
        except RemoteProtocolError as exc:
            self.state = State.ERROR
            if exc.code is ErrorCode.AUTH:
                self.auth_failures += 1
                self._auth_failure = exc
            raise
        self.state = nxt
        self.received.add(frame.header_bytes + frame.payload_bytes, frame.payload_bytes)
        self._observe(message)
        return message

    def events(self) -> Iterator[Message | Sentinel]:
        """Every event available now; ends after NEED_DATA (not yielded) or EOF (yielded)."""
        while (event := self.next_event()) is not NEED_DATA:
            yield event
            if event is EOF:
                return

    def _next_state(self, role: Role, message: Message, error: type[ProtocolError]) -> State:
        code = getattr(message, "CODE", None)
        nxt = TRANSITIONS.get((self.state, Event(role, code))) if code else None
        if nxt is None:
            raise error(
                f"{role.value} may not send {message_name(code or 0)} in state {self.state.value}"
            )
        return nxt

    def _auth_refusal(self, code: Code) -> str | None:
        if self._auth is None:
            return None
        return self._auth.refusal(code, joining=self.state is State.JOINING)

    def _check_run(self, message: Message) -> None:
        if message.run_id and self.run_id and message.run_id != self.run_id:
            raise RemoteProtocolError(
                f"message for run {message.run_id!r}, this session is run {self.run_id!r}",
                ErrorCode.RUN_MISMATCH,
            )

    def _check_sender(self, message: Message) -> None:
        if self.peer_id is None:
            self.peer_id = message.sender
        elif message.sender != self.peer_id:
            raise RemoteProtocolError(
                f"{message_name(message.CODE)} claims sender {message.sender!r}, but this "
                f"session's {self.role.other.value} is {self.peer_id!r}",
                ErrorCode.AUTH,
            )

    def _observe(self, message: Message) -> None:
        """Learn the run id and the model size (for frame limits) from what goes by."""
        if not self.run_id and message.run_id:
            self.run_id = message.run_id
        if isinstance(message, Accept) and self._auto_limits:
            self._decoder.limits = self.limits.for_model(message.num_params)
