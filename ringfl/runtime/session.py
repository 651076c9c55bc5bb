"""The session layer both modes share: the join handshake (1001 → Accept, 1003 → SpecReply),
written once for each side, and the server that keeps joined sessions.

:func:`client_handshake` is what a coordinator-mode peer, a ring peer joining its bootstrap and
a ring peer dialling a neighbour do; :func:`server_handshake` what the coordinator, the
bootstrap and a ring peer serving a neighbour answer. :class:`SessionServer` (the coordinator
and the bootstrap) adds admission (names, indices, the member cap, TLS identities) and the
per-connection receive loop; subclasses say what an accepted peer is told and handle the
messages of a joined session.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from ringfl.algorithms import AlgorithmSettings
from ringfl.config import RunConfig, load_token
from ringfl.errors import ConfigError, RingflError, RunAborted
from ringfl.model import ModelSpec
from ringfl.protocol import (
    Accept,
    Connection,
    EndOfRun,
    Goodbye,
    Heartbeat,
    JoinRequest,
    Limits,
    Message,
    PeerReport,
    Reject,
    RejectReason,
    Role,
    SpecConfirm,
    SpecReply,
)
from ringfl.protocol.payloads import RunDescription
from ringfl.transport import CONNECTION_ERRORS, MessageStream, Network

log = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT = 30.0
"""Seconds a server waits for each step of a join (the join, then the spec confirmation)."""


class JoinRefused(RingflError):
    """The server refused this peer (wrong run, duplicate name, run over...)."""

    reason: int | None = None  # the Reject's reason, when it was a Reject


class SpecMismatch(JoinRefused):
    """This peer was configured with another model than the run's."""

    def __init__(self, who: str, theirs: str, ours: str) -> None:
        super().__init__(f"model mismatch: {who} runs spec {theirs[:16]}, this peer's config says {ours[:16]}")


# --- the client side ----------------------------------------------------------------------------


async def client_handshake(stream: MessageStream, join: JoinRequest, spec_hash: str, *, server: str,
                           name: str, who: str | None = None,
                           timeout: float | None = 60.0) -> tuple[Accept, SpecReply]:
    """Join (1001), then confirm ``spec_hash`` (1003; empty: ask for the spec). Anything but an
    Accept and a SpecReply raises :class:`JoinRefused`; a confirmed hash the server does not run
    raises :class:`SpecMismatch` naming ``who`` (default: ``server``) — never adopt another model."""
    await stream.send(join)
    accept = await stream.receive(timeout=timeout)
    if isinstance(accept, Reject):
        refused = JoinRefused(f"{server} refused to let {name!r} join: "
                              f"{RejectReason(accept.reason).name.lower()} ({accept.detail})")
        refused.reason = accept.reason
        raise refused
    if not isinstance(accept, Accept):
        raise JoinRefused(f"{server} answered the join with {type(accept).__name__}")
    await stream.send(SpecConfirm(spec_hash=spec_hash))
    reply = await stream.receive(timeout=timeout)
    if isinstance(reply, Goodbye):
        raise JoinRefused(f"{server} refused to let {name!r} join: {reply.reason or 'no reason given'}")
    if not isinstance(reply, SpecReply):
        raise JoinRefused(f"{server} answered the spec confirmation with {type(reply).__name__}")
    if spec_hash and not reply.ok:
        raise SpecMismatch(who or server, reply.spec_hash, spec_hash)
    return accept, reply


# --- the server side ----------------------------------------------------------------------------


class Admission(Protocol):
    """What a server decides during a join: ``refusal`` (a Reject's reason and detail, or None),
    ``accepting`` (holds the joiner's place while it confirms the spec; yields the Accept to send)
    and ``keep`` (after the confirmation: None takes the place for good, else why to close)."""

    def refusal(self, join: JoinRequest) -> tuple[int, str] | None: ...

    def accepting(self, join: JoinRequest) -> AbstractContextManager[Accept]: ...

    def keep(self, join: JoinRequest) -> str | None: ...


class OpenAdmission:
    """Everyone with the run token: a ring peer serving its neighbours."""

    def __init__(self, num_params: int, spec: ModelSpec, mode: str) -> None:
        self.accept = Accept(num_params=num_params, spec_hash=spec.hash, mode=mode)

    def refusal(self, join: JoinRequest) -> tuple[int, str] | None:
        return None

    @contextmanager
    def accepting(self, join: JoinRequest) -> Iterator[Accept]:
        yield self.accept

    def keep(self, join: JoinRequest) -> str | None:
        return None


async def first_join(stream: MessageStream) -> JoinRequest | None:
    """The join; heartbeats may come first (the state table allows them before the join).
    Anything else, or nothing within :data:`HANDSHAKE_TIMEOUT`, ends the session (None)."""
    with trio.move_on_after(HANDSHAKE_TIMEOUT):
        while True:
            message = await stream.receive(timeout=HANDSHAKE_TIMEOUT)
            if isinstance(message, JoinRequest):
                return message
            if not isinstance(message, Heartbeat):
                return None
    return None


def spec_reply(spec: ModelSpec, confirmed: str) -> SpecReply:
    """1007: ok when the peer confirmed our spec's hash, else the whole spec."""
    ok = confirmed == spec.hash
    return SpecReply(ok=ok, spec_hash=spec.hash, spec_json="" if ok else spec.canonical_json())


async def server_handshake(stream: MessageStream, spec: ModelSpec,
                           admission: Admission) -> tuple[JoinRequest, SpecConfirm] | None:
    """1001 → Accept (or Reject), 1003 → SpecReply; the join and the confirmation, or None if the
    join was refused or abandoned. A confirmation of another spec is answered with ours and
    returned: the caller decides (a coordinator lets the peer fail, a ring peer fails the run)."""
    join = await first_join(stream)
    if join is None:
        return None
    reason = admission.refusal(join)
    if reason is not None:
        await stream.send(Reject(reason=reason[0], detail=reason[1]))
        log.warning("refused join of %s: %s", join.sender or "an unnamed peer", reason[1])
        return None
    with admission.accepting(join) as accept:
        await stream.send(accept)
        confirm = await stream.receive(timeout=HANDSHAKE_TIMEOUT)
        if not isinstance(confirm, SpecConfirm):
            return None
        closing = admission.keep(join)
        if closing is not None:
            await stream.aclose(closing)
            return None
        await stream.send(spec_reply(spec, confirm.spec_hash))
        return join, confirm


def session_limits(num_params: int, max_frame: int | None) -> Limits:
    """Frame limits that follow the model size, unless the config fixes the frame size."""
    limits = Limits().for_model(num_params)
    return dataclasses.replace(limits, max_frame=max_frame) if max_frame else limits


def run_description(config: RunConfig, index: int) -> RunDescription:
    """The run as a peer learns it at join (Accept.info) — or, with no bootstrap, from its config."""
    return RunDescription(
        algorithm=config.algorithm, settings=AlgorithmSettings.from_mapping(config.algorithm_settings),
        training=config.training, partition=config.partition, rounds=config.rounds, peers=config.peers,
        index=index, seed=config.seed, data=config.data, round_timeout=config.round_timeout, order=config.order,
    )


def tls_identity(stream: trio.abc.Stream) -> str | None:
    """The name in a verified client certificate, if the stream is TLS and the client sent one."""
    if not isinstance(stream, trio.SSLStream):
        return None
    from ringfl.certs import PeerIdentityError, certificate_name

    try:
        return certificate_name(stream)
    except PeerIdentityError:
        return None


# --- sessions -----------------------------------------------------------------------------------


@dataclass
class PeerSession:
    """A joined participant as the coordinator sees it."""

    peer_id: str
    index: int
    stream: MessageStream
    num_samples: int
    address: str
    alive: bool = True
    rounds_done: int = 0
    ready: bool = False  # the peer loaded its model and data (its "ready" report)
    scheduled: bool = False  # ring mode: it was given the round schedule
    last_report: dict[str, Any] = field(default_factory=dict)
    last_seen: float = field(default_factory=time.time)  # wall clock of its last message (dashboard)
    rejected: dict[str, int] = field(default_factory=dict)  # its rejected uploads by reason (dashboard)


class Progress:
    """A broadcast "something changed" signal: waiters re-check their own condition."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait_until(self, condition: Callable[[], bool], deadline: float) -> bool:
        """Wait until ``condition()`` holds (True) or the trio clock passes ``deadline`` (False)."""
        while not condition():
            if trio.current_time() >= deadline:
                return False
            with trio.move_on_at(deadline):
                await self._event.wait()
        return True


class SessionServer:
    """Joins, spec confirmation and the per-connection receive loop, shared by both modes.

    Subclasses decide what an accepted peer is told (:meth:`accept_info`) and handle the
    messages of a joined session (:meth:`on_message`).
    """

    mode = "coordinator"

    def __init__(self, config: RunConfig, network: Network, spec: ModelSpec, num_params: int) -> None:
        self.config = config
        self.network = network
        self.spec = spec
        self.num_params = num_params
        self.sessions: dict[str, PeerSession] = {}
        self.order = config.order  # the coordinator resolves "auto" for its algorithm
        self.joining: set[str] = set()  # names between their join and their spec reply
        self.token = load_token(config.token_file)
        if config.token_per_peer and (self.token is None or self.mode != "coordinator"):
            raise ConfigError("token_per_peer needs a run token (token_file or $RINGFL_TOKEN) and coordinator "
                              "mode (ring neighbours prove the run token to each other)")
        self.indices: dict[str, int] = {}  # peer name -> stable index (partition, topology node)
        self.pending_indices: set[int] = set()  # held by joins in progress
        self.progress = Progress()
        self.closed_bytes = [0, 0]  # (in, out) of sessions that ended
        self.running = True
        self.unjoined = 0  # connections between accept and the end of their join
        self.refused_connections = 0
        self.on_round: list[Callable[[dict[str, Any]], None]] = []

    # --- accepting ---------------------------------------------------------------------------

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        if self.unjoined >= (self.config.max_unjoined or max(self.member_cap(), 64)):  # a flood of idle connections
            self.refused_connections += 1
            log.info("refused a connection: %d are still joining (max_unjoined)", self.unjoined)
            await trio.aclose_forcefully(stream)
            return
        self.unjoined += 1  # given back by _join, whatever its outcome
        # Non-finite values pass the codec here so the acceptance policy can answer with a reason.
        limits = dataclasses.replace(session_limits(self.num_params, self.config.max_frame), allow_nonfinite=True)
        conn = Connection(Role.SERVER, local_id="coordinator", run_id=self.config.run_id, limits=limits,
                          token=self.token, per_peer_tokens=self.config.token_per_peer)
        messages = MessageStream(stream, conn, timeout=None)
        session: PeerSession | None = None
        try:
            session = await self._join(messages, stream)
            if session is None:
                return
            async for message in messages:
                session.last_seen = time.time()
                await self.on_message(session, message)
        except CONNECTION_ERRORS as exc:
            log.info("peer %s: connection ended: %s", session.peer_id if session else "?", exc)
        finally:
            if session is not None:
                self._drop(session)
            await messages.aclose()

    async def _join(self, messages: MessageStream, stream: trio.abc.Stream) -> PeerSession | None:
        """The join handshake (1001, 1003); the new member, or None if refused or abandoned."""
        admission = _Admission(self, messages, tls_identity(stream))
        try:
            if await server_handshake(messages, self.spec, admission) is None:
                return None
        finally:
            self.unjoined -= 1
        session = admission.session
        assert session is not None
        self.sessions[session.peer_id] = session
        log.info("peer %s joined (index %d)", session.peer_id, session.index)
        self.on_join(session)
        self.progress.notify()
        return session

    def _free_index(self) -> int:
        """The lowest index nobody holds: an abandoned join gives its index back, so the peers'
        partitions (index mod peers) stay distinct."""
        taken = set(self.indices.values()) | self.pending_indices
        return next(i for i in itertools.count() if i not in taken)

    def identity_refusal(self, peer_id: str, identity: str | None) -> tuple[int, str] | None:
        """Mutual TLS: the certificate names the peer; with an allowlist, only those names join."""
        tls = self.config.tls
        if tls.require_client_cert and identity is not None and identity != peer_id:
            return RejectReason.NOT_ALLOWED, f"certificate is for {identity!r}, not {peer_id!r}"
        if tls.allow and identity not in tls.allow:
            return RejectReason.NOT_ALLOWED, f"{identity or peer_id!r} is not on the allowlist"
        return None

    def join_refusal(self, peer_id: str, join: JoinRequest) -> tuple[int, str] | None:
        if not self.running:
            return RejectReason.RUN_ENDED, "the run has ended"
        old = self.sessions.get(peer_id)
        if (old is not None and old.alive) or peer_id in self.joining:
            return RejectReason.DUPLICATE_PEER, f"a peer named {peer_id!r} is already connected"
        if self._full(peer_id):
            return RejectReason.RUN_FULL, self._full_reason()
        return None

    def _full(self, peer_id: str) -> bool:
        """Only names that completed a join count (with a token: proven), so unauthenticated
        joins in flight cannot fill the run; checked at the join and again when the name is kept."""
        return peer_id not in self.indices and len(self.indices) >= self.member_cap()

    def _full_reason(self) -> str:
        return f"the run admits {self.member_cap()} peer names and has them all (max_members)"

    def _drop(self, session: PeerSession) -> None:
        if self.sessions.get(session.peer_id) is session:
            session.alive = False
            del self.sessions[session.peer_id]
            self.closed_bytes[0] += session.stream.bytes_received
            self.closed_bytes[1] += session.stream.bytes_sent
            log.info("peer %s left", session.peer_id)
            self.on_leave(session)
            self.progress.notify()

    # --- hooks ---------------------------------------------------------------------------

    def member_cap(self) -> int:
        """Distinct peer names admitted over the run: each is remembered (its index is
        checkpointed), so names minted without end would grow the state without end."""
        return self.config.max_members or max(4 * self.config.peers, 64)

    def accept_info(self, session: PeerSession) -> RunDescription:
        """What a joining peer needs besides the spec: hyperparameters, its index, the run shape."""
        return run_description(self.config, session.index).replace(order=self.order)

    def on_join(self, session: PeerSession) -> None:
        """Called after a peer joined (before its first message)."""

    def on_leave(self, session: PeerSession) -> None:
        """Called once when a joined peer's connection ended."""

    async def on_message(self, session: PeerSession, message: Message) -> None:
        if isinstance(message, PeerReport):
            session.last_report = dict(message.metrics)
            if message.metrics.get("ready"):
                session.ready = True
                self.progress.notify()
            self.on_report(session, message)
        elif isinstance(message, (Heartbeat, Goodbye)):
            pass
        elif isinstance(message, SpecConfirm):  # a re-confirmation (state table: ready/waiting -> spec)
            await session.stream.send(spec_reply(self.spec, message.spec_hash))
        else:
            await self.on_request(session, message)

    def on_report(self, session: PeerSession, report: PeerReport) -> None:
        """A peer's per-round metrics."""

    async def on_request(self, session: PeerSession, message: Message) -> None:
        log.info("peer %s sent %s, which this mode does not use", session.peer_id, type(message).__name__)

    # --- shared helpers ------------------------------------------------------------------

    def rounds_done(self) -> int:
        """Rounds completed so far (what an interruption reports)."""
        return int(getattr(self, "round", 0))

    def stopped_summary(self, how: str) -> dict[str, Any]:
        """summary.json of a run stopped by a signal: the usual summary, marked as interrupted."""
        summary = {**self._summary(), "interrupted": how, "rounds_done": self.rounds_done()}
        metrics = getattr(self, "metrics", None)
        if metrics is not None:
            metrics.write_summary(summary)
        return summary

    def _summary(self) -> dict[str, Any]:
        raise NotImplementedError

    def alive(self) -> list[PeerSession]:
        return sorted((s for s in self.sessions.values() if s.alive), key=lambda s: s.index)

    def bytes_total(self) -> tuple[int, int]:
        live_in = sum(s.stream.bytes_received for s in self.sessions.values())
        live_out = sum(s.stream.bytes_sent for s in self.sessions.values())
        return self.closed_bytes[0] + live_in, self.closed_bytes[1] + live_out

    async def send_quietly(self, session: PeerSession, message: Message) -> bool:
        """Send, treating a broken connection as that peer leaving (never the run failing)."""
        try:
            await session.stream.send(message, timeout=10.0)
            return True
        except CONNECTION_ERRORS as exc:
            log.info("peer %s unreachable: %s", session.peer_id, exc)
            self._drop(session)
            await trio.aclose_forcefully(session.stream.stream)  # a peer that stopped reading is cut off
            return False

    async def wait_for_peers(self) -> None:
        """Until ``peers`` are ready, or ``join_timeout`` passed with at least ``min_peers`` ready.

        Ready, not just joined: a peer reports ready once its model is built and its data loaded
        (seconds on a busy machine), so the first round's deadline is not spent on start-up.
        """
        config = self.config

        def ready() -> int:
            return sum(1 for s in self.alive() if s.ready)

        deadline = trio.current_time() + config.join_timeout
        await self.progress.wait_until(lambda: ready() >= config.peers, deadline)
        # Never wait past join_timeout for peers that are not there; joined ones still loading
        # their model and data get their time, unless they leave too.
        await self.progress.wait_until(
            lambda: ready() >= config.min_peers or len(self.alive()) < config.min_peers, math.inf)
        if ready() < config.min_peers:
            raise RunAborted(f"only {len(self.alive())} of {config.peers} peer(s) joined within join_timeout "
                             f"{config.join_timeout:g} s (min_peers {config.min_peers})")

    async def end_run(self, reason: str) -> None:
        self.running = False
        await self.broadcast(self.alive(), EndOfRun(reason=reason))

    async def broadcast(self, sessions: list[PeerSession], message: Message) -> None:
        """Send to all at once: a peer that stopped reading costs one send timeout, not one each."""
        async with trio.open_nursery() as nursery:
            for session in sessions:
                nursery.start_soon(self.send_quietly, session, message)


class _Admission:
    """A :class:`SessionServer`'s decisions during one join: TLS identity and name checks, the
    name and index held while the peer confirms the spec, the member cap checked again before
    the name is kept (another new name may have taken the last place meanwhile)."""

    def __init__(self, server: SessionServer, stream: MessageStream, identity: str | None) -> None:
        self.server, self.stream, self.identity = server, stream, identity
        self.session: PeerSession | None = None

    def _name(self, join: JoinRequest) -> str:
        return join.sender or f"peer-{len(self.server.indices)}"

    def refusal(self, join: JoinRequest) -> tuple[int, str] | None:
        peer_id = self._name(join)
        return self.server.identity_refusal(peer_id, self.identity) or self.server.join_refusal(peer_id, join)

    @contextmanager
    def accepting(self, join: JoinRequest) -> Iterator[Accept]:
        server, peer_id = self.server, self._name(join)
        index = server.indices.get(peer_id)
        if index is None:  # recorded only once the peer has proven itself (spec confirmation)
            index = server._free_index()
        server.joining.add(peer_id)  # a second join with this name now waits its turn: refused
        server.pending_indices.add(index)
        self.session = PeerSession(peer_id, index, self.stream, join.num_samples, join.address)
        try:
            yield Accept(num_params=server.num_params, spec_hash=server.spec.hash, mode=server.mode,
                         info=server.accept_info(self.session).to_info())
        finally:
            server.joining.discard(peer_id)
            server.pending_indices.discard(index)

    def keep(self, join: JoinRequest) -> str | None:
        server, session = self.server, self.session
        assert session is not None
        if server._full(session.peer_id):
            log.warning("refused join of %s: the run is full (max_members)", session.peer_id)
            return server._full_reason()
        server.indices[session.peer_id] = session.index  # taken before the next await: the cap holds
        return None
