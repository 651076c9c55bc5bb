"""The session state machine and the sans-IO Connection, driven without any I/O."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ringfl.protocol import (
    EOF,
    NEED_DATA,
    TRANSITIONS,
    Accept,
    Ack,
    Code,
    Connection,
    EndOfRun,
    Error,
    ErrorCode,
    Event,
    Goodbye,
    Heartbeat,
    JoinRequest,
    Limits,
    LocalProtocolError,
    Message,
    Neighbour,
    Neighbours,
    Params,
    ParamsRequest,
    PeerReport,
    ProtocolError,
    Reject,
    RemoteProtocolError,
    Role,
    RoundStart,
    SpecConfirm,
    SpecReply,
    State,
    Upload,
    allowed,
    default_max_frame,
    encode,
    format_table,
    mermaid,
)
from ringfl.protocol.secagg_messages import (
    SECAGG_SEALED_SIZE,
    SECAGG_SHARE_SIZE,
    SecAggInbox,
    SecAggKeys,
    SecAggMasked,
    SecAggRoster,
    SecAggShares,
    SecAggUnmask,
    SecAggUnmaskRequest,
)
from ringfl.protocol.state import CLIENT_CODES, SERVER_CODES
from ringfl.vectors import SparseVector
from tests.helpers import ConnectionPair

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SIZE = 64
BLOB32 = np.zeros(32, np.uint8)
SPARSE = SparseVector.take(np.arange(SIZE, dtype=np.float32), np.array([1, 5, 9]))

SAMPLES: dict[Code, Message] = {
    Code.JOIN: JoinRequest(address="mem://p1", num_samples=600),
    Code.PARAMS_REQUEST: ParamsRequest(),
    Code.SPEC_CONFIRM: SpecConfirm(spec_hash="abc"),
    Code.UPLOAD: Upload(vector=SPARSE, num_samples=600),
    Code.ACCEPT: Accept(num_params=SIZE, spec_hash="abc"),
    Code.REJECT: Reject(reason=1, detail="full"),
    Code.SPEC_REPLY: SpecReply(ok=True, spec_hash="abc"),
    Code.PARAMS: Params(vector=np.ones(SIZE, np.float32)),
    Code.ACK: Ack(accepted=True),
    Code.NEIGHBOURS: Neighbours(neighbours=(Neighbour("p2", "mem://p2"),)),
    Code.ROUND_START: RoundStart(round=1, deadline=30.0),
    Code.END_OF_RUN: EndOfRun(reason="done"),
    Code.REPORT: PeerReport(metrics={"loss": 0.5}),
    Code.HEARTBEAT: Heartbeat(),
    Code.GOODBYE: Goodbye(),
    Code.ERROR: Error(code=ErrorCode.PROTOCOL),
    Code.SECAGG_KEYS: SecAggKeys(c_pk=BLOB32, s_pk=BLOB32, b_commit=BLOB32),
    Code.SECAGG_ROSTER: SecAggRoster(peers=("me", "p2"), points=np.array([1, 2], np.uint32),
                                     keys=np.zeros(128, np.uint8), threshold=2),
    Code.SECAGG_SHARES: SecAggShares(recipients=("p2",), sealed=np.zeros(SECAGG_SEALED_SIZE, np.uint8)),
    Code.SECAGG_INBOX: SecAggInbox(senders=("p2",), sealed=np.zeros(SECAGG_SEALED_SIZE, np.uint8)),
    Code.SECAGG_MASKED: SecAggMasked(masked=np.arange(SIZE, dtype=np.uint32)),
    Code.SECAGG_UNMASK_REQUEST: SecAggUnmaskRequest(survivors=("me",), dropped=("p2",)),
    Code.SECAGG_UNMASK: SecAggUnmask(peers=("me",), shares=np.zeros(SECAGG_SHARE_SIZE, np.uint8)),
}
ALL_EVENTS = [Event(role, code) for role in Role for code in Code]
ENDINGS = {Code.ERROR, Code.GOODBYE, Code.END_OF_RUN, Code.REJECT}


def feed(conn: Connection, message: Message) -> Message:
    """Deliver ``message`` as the peer would, bypassing the peer-side state machine."""
    conn.receive_data(encode(message, Limits(max_frame=1 << 20)))
    event = conn.next_event()
    assert event is not NEED_DATA
    return event


def apply(conn: Connection, event: Event) -> None:
    """Send (our role) or receive (the other role) one sample message of ``event.code``."""
    message = SAMPLES[event.code]
    if event.sender is conn.role:
        conn.send(message)
    else:
        feed(conn, message)


# --- the table ----------------------------------------------------------------------------------


def test_table_is_role_consistent() -> None:
    for (_, event), _ in TRANSITIONS.items():
        own = CLIENT_CODES if event.sender is Role.CLIENT else SERVER_CODES
        assert event.code in own | {Code.GOODBYE, Code.ERROR}, event


def test_table_allows_the_documented_flows() -> None:
    client, server = Role.CLIENT, Role.SERVER
    assert allowed(State.READY, client)[Code.UPLOAD] is State.UPLOADING  # ring: no params needed
    assert allowed(State.WAITING, client)[Code.UPLOAD] is State.UPLOADING  # next ring round
    assert allowed(State.WAITING, client)[Code.PARAMS_REQUEST] is State.PARAMS  # async DSSGD
    assert allowed(State.WAITING, server)[Code.ROUND_START] is State.READY
    for state in (State.ACCEPTED, State.READY, State.TRAINING, State.UPLOADING, State.WAITING):
        assert allowed(state, server)[Code.NEIGHBOURS] is state  # re-linking at any time
    for state in State:
        if state not in (State.CLOSED, State.ERROR, State.CLIENT_LEAVING, State.SERVER_LEAVING):
            for role in Role:
                assert Code.HEARTBEAT in allowed(state, role) and Code.GOODBYE in allowed(
                    state, role
                )
    assert allowed(State.CLOSED, client) == allowed(State.CLOSED, server) == {}


def test_format_table_and_mermaid_cover_every_state() -> None:
    table = format_table()
    diagram = mermaid()
    assert diagram.startswith("stateDiagram-v2")
    for state in State:
        assert state.value in table
        assert state.value in diagram
    assert "uploading --> waiting : server:ack" in diagram


def _shortest_paths() -> dict[State, list[Event]]:
    paths: dict[State, list[Event]] = {State.CONNECTED: []}
    frontier = [State.CONNECTED]
    while frontier:
        state = frontier.pop(0)
        for (s, event), nxt in TRANSITIONS.items():
            if s is state and nxt not in paths:
                paths[nxt] = [*paths[state], event]
                frontier.append(nxt)
    return paths


PATHS = _shortest_paths()


def check_event(conn: Connection, event: Event) -> None:
    """Apply ``event``: it must transition per the table, or raise the right ProtocolError."""
    before = conn.state
    expected = TRANSITIONS.get((before, event))
    ours = event.sender is conn.role
    if expected is None:
        with pytest.raises(LocalProtocolError if ours else RemoteProtocolError):
            apply(conn, event)
        assert conn.state is (before if ours else State.ERROR)
    else:
        apply(conn, event)
        assert conn.state is expected


def test_every_state_is_reachable() -> None:
    assert set(PATHS) == set(State)


@pytest.mark.parametrize("role", list(Role))
@pytest.mark.parametrize("state", list(State), ids=lambda s: s.value)
def test_every_state_event_pair(role: Role, state: State) -> None:
    """Exhaustively: reach ``state`` by its shortest path, then try each of the 32 events."""
    for event in ALL_EVENTS:
        conn = Connection(role, local_id="me", run_id="run")
        for step in PATHS[state]:
            apply(conn, step)
        check_event(conn, event)


@pytest.mark.parametrize("role", list(Role))
@SETTINGS
@given(data=st.data())
def test_random_event_sequences(role: Role, data: st.DataObject) -> None:
    """Random walks that mostly follow the table (to get deep), sometimes try anything."""
    conn = Connection(role, local_id="me", run_id="run")
    for _ in range(data.draw(st.integers(1, 30))):
        moves = [e for (s, e) in TRANSITIONS if s is conn.state]
        onward = [e for e in moves if e.code not in ENDINGS]
        pick = data.draw(st.integers(0, 9))
        pool = onward if onward and pick < 8 else moves if moves and pick < 9 else ALL_EVENTS
        check_event(conn, data.draw(st.sampled_from(pool)))


# --- two connections wired to each other --------------------------------------------------------


Pair = ConnectionPair


C, S = Role.CLIENT, Role.SERVER


def handshake(pair: Pair) -> None:
    assert pair.say(C, JoinRequest(num_samples=600)).sender == "peer-1"
    accept = pair.say(S, Accept(num_params=SIZE, spec_hash="h1"))
    assert pair.client.run_id == "run-7" == accept.run_id  # learnt from the first reply
    assert pair.client.limits.max_frame == default_max_frame(SIZE)
    pair.say(C, SpecConfirm(spec_hash=""))  # "send me the spec"
    assert pair.say(S, SpecReply(ok=False, spec_hash="h1", spec_json='{"layers": []}')).spec_json
    pair.say(C, SpecConfirm(spec_hash="h1"))
    pair.say(S, SpecReply(ok=True, spec_hash="h1"))
    assert pair.client.state is State.READY


def test_coordinator_mode_session() -> None:
    pair = Pair()
    handshake(pair)
    pair.say(S, Neighbours(neighbours=(Neighbour("peer-2", "10.0.0.2:7000", 0.5),)))
    for rnd in (1, 2):
        pair.say(S, RoundStart(round=rnd, deadline=60.0, selected=True))
        assert pair.client.state is State.READY
        pair.say(C, ParamsRequest(round=rnd))
        params = pair.say(
            S, Params(vector=np.full(SIZE, rnd, np.float32), round=rnd, model_version=rnd)
        )
        assert params.vector[0] == rnd and pair.client.state is State.TRAINING
        upload = pair.say(C, Upload(vector=SPARSE, num_samples=600, round=rnd, base_version=rnd))
        pair.say(S, Ack(accepted=True, ack_seq=upload.seq, round=rnd))
        pair.say(C, PeerReport(round=rnd, metrics={"loss": 1.0 / rnd, "epsilon": 0.1}))
        assert pair.client.state is State.WAITING
    pair.say(S, EndOfRun(reason="rounds done"))
    pair.say(C, PeerReport(metrics={"final": True}))
    pair.say(C, Goodbye(reason="bye"))
    pair.say(S, Goodbye())
    assert pair.client.state is pair.server.state is State.CLOSED
    assert pair.client.sent.messages == pair.server.received.messages
    assert pair.client.bytes_sent == pair.server.bytes_received
    assert pair.server.sent.payload_bytes == 2 * SIZE * 4  # the two dense Params


def test_ring_mode_session_and_async_dssgd() -> None:
    pair = Pair()
    handshake(pair)
    for rnd in range(3):  # ring: upload straight away, every round
        up = pair.say(C, Upload(vector=SPARSE, round=rnd))
        pair.say(S, Ack(accepted=rnd != 1, reason=0 if rnd != 1 else 1, ack_seq=up.seq, round=rnd))
    pair.say(C, ParamsRequest(fraction=0.1))  # async DSSGD: straight after an ack
    pair.say(S, Params(vector=SPARSE))
    pair.say(C, Heartbeat())
    pair.say(S, Heartbeat())
    pair.say(S, Goodbye(reason="shutting down"))
    pair.say(C, Goodbye())
    assert pair.client.state is State.CLOSED


def test_crossing_messages_keep_both_views_equal() -> None:
    pair = Pair()
    handshake(pair)
    pair.post(C, Upload(vector=SPARSE))  # the straggler's upload...
    pair.post(S, RoundStart(round=2))  # ...crosses the next round start
    pair.deliver(C), pair.deliver(S)
    assert pair.client.state is pair.server.state is State.UPLOADING
    pair.say(S, Ack(accepted=False, reason=1))
    pair.post(C, ParamsRequest())
    pair.post(S, EndOfRun())
    pair.deliver(C), pair.deliver(S)
    assert pair.client.state is pair.server.state is State.ENDED
    pair.post(C, Goodbye())
    pair.post(S, Goodbye())
    pair.deliver(C), pair.deliver(S)
    assert pair.client.state is pair.server.state is State.CLOSED


@SETTINGS
@given(data=st.data())
def test_random_full_duplex_schedules_never_disagree(data: st.DataObject) -> None:
    """Each side sends what its own view allows while the other's messages are in flight:
    delivery must never be a protocol error, and once quiet both views are equal."""
    pair = Pair()
    for _ in range(data.draw(st.integers(1, 40))):
        role = data.draw(st.sampled_from(list(Role)))
        if pair.inflight[role] and data.draw(st.booleans()):
            pair.deliver(role)
            continue
        codes = sorted(set(allowed(pair.conn(role).state, role)) - {Code.ERROR})
        if codes:
            pair.post(role, SAMPLES[data.draw(st.sampled_from(codes))])
    while pair.inflight[C] or pair.inflight[S]:
        pair.deliver(C if pair.inflight[C] else S)
    assert pair.client.state is pair.server.state


# --- Connection details -------------------------------------------------------------------------


def test_refused_send_changes_nothing() -> None:
    conn = Connection(Role.CLIENT, local_id="p")
    with pytest.raises(LocalProtocolError, match="client may not send upload in state connected"):
        conn.send(SAMPLES[Code.UPLOAD])
    with pytest.raises(LocalProtocolError, match="server may not send|client may not send accept"):
        conn.send(SAMPLES[Code.ACCEPT])
    assert conn.state is State.CONNECTED and conn.next_seq == 1 and conn.sent.messages == 0


def test_seq_and_envelope_are_stamped() -> None:
    conn = Connection(Role.CLIENT, local_id="p9", run_id="r", first_seq=41)
    server = Connection(Role.SERVER)
    server.receive_data(conn.send(JoinRequest(sender="spoof", seq=5)))
    server.receive_data(conn.send(Heartbeat(round=3)))
    join, beat = server.next_event(), server.next_event()
    assert (join.sender, join.seq, join.run_id) == ("p9", 41, "r")
    assert (beat.seq, beat.round) == (42, 3)
    assert server.next_event() is NEED_DATA


def test_messages_from_another_run_are_rejected() -> None:
    conn = Connection(Role.SERVER, run_id="mine")
    with pytest.raises(RemoteProtocolError, match="run 'theirs'") as info:
        feed(conn, JoinRequest(run_id="theirs"))
    assert info.value.code is ErrorCode.RUN_MISMATCH and conn.state is State.ERROR
    assert isinstance(feed(conn, Error(code=1)), Error)  # the peer may still say why
    with pytest.raises(LocalProtocolError):
        conn.send(Goodbye())
    conn.send(Error(code=ErrorCode.RUN_MISMATCH))


def test_eof_closes_and_eof_mid_frame_is_an_error() -> None:
    conn = Connection(Role.SERVER)
    conn.receive_data(encode(JoinRequest()))
    conn.receive_data(b"")
    assert isinstance(conn.next_event(), JoinRequest)
    assert conn.next_event() is EOF and conn.state is State.CLOSED
    assert list(conn.events()) == [EOF]

    broken = Connection(Role.SERVER)
    broken.receive_data(encode(JoinRequest())[:-3])
    assert broken.next_event() is NEED_DATA
    broken.receive_data(b"")
    with pytest.raises(RemoteProtocolError, match="closed in the middle"):
        broken.next_event()
    assert broken.state is State.ERROR


def test_events_iterator_and_byte_counters() -> None:
    client, server = Connection(Role.CLIENT), Connection(Role.SERVER)
    data = client.send(JoinRequest()) + client.send(Heartbeat())
    for byte in data:
        server.receive_data(bytes([byte]))
        list(server.events())
    assert server.received.messages == 2 and server.state is State.JOINING
    accept = server.send(Accept(num_params=SIZE, spec_hash="h"))
    client.receive_data(accept)
    assert [type(e) for e in client.events()] == [Accept]
    assert client.received.header_bytes == len(accept) and client.received.payload_bytes == 0
    server.receive_data(client.send(Heartbeat()))
    server.receive_data(b"")
    events = list(server.events())
    assert isinstance(events[0], Heartbeat) and events[1] is EOF and len(events) == 2
    assert server.bytes_sent == client.bytes_received


def test_auto_limits_follow_accept_but_explicit_limits_stay() -> None:
    auto = Connection(Role.CLIENT)
    explicit = Connection(Role.CLIENT, limits=Limits(max_frame=5000))
    for conn in (auto, explicit):
        conn.send(JoinRequest())
        feed(conn, Accept(num_params=10_000, spec_hash="h"))
    assert auto.limits.max_frame == default_max_frame(10_000)
    assert auto.limits.max_vector_size == 10_000
    assert explicit.limits.max_frame == 5000


def test_protocol_errors_share_a_base() -> None:
    assert issubclass(LocalProtocolError, ProtocolError)
    assert issubclass(RemoteProtocolError, ProtocolError)


def test_docs_show_the_current_table_and_diagram() -> None:
    doc = (Path(__file__).parents[1] / "docs" / "protocol.md").read_text()
    assert format_table() in doc
    assert mermaid() in doc
