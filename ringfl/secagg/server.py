"""The coordinator's secure-aggregation rounds on trio: a thin driver around :class:`ServerRound`.

The coordinator hands every 11xx message to :meth:`SecAggCoordinator.on_message` and plays a
synchronous round with :meth:`SecAggCoordinator.play_round` instead of collecting uploads: it
starts the round (its :class:`~ringfl.protocol.payloads.RoundPlan` tells peers the settings), walks the four phases
— each closes when every live participant answered or at the round deadline — submits the
unmasked mean to the algorithm as one update and acknowledges every participant. An abort
(too few peers, a missing or malformed share) rejects the round's acks with the reason and the
run goes on with the next round.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Collection
from typing import TYPE_CHECKING, Any

import numpy as np
import trio

from ringfl.acceptance import Reason
from ringfl.algorithms.base import InvalidUpdate, Update
from ringfl.config import build
from ringfl.errors import ConfigError
from ringfl.protocol import Ack, AckReason, Message, RoundStart
from ringfl.protocol.payloads import RoundPlan
from ringfl.protocol.secagg_messages import (
    SecAggKeys,
    SecAggMasked,
    SecAggShares,
    SecAggUnmask,
)
from ringfl.protocol.state import SECAGG, State
from ringfl.secagg import dp
from ringfl.secagg.quantize import Quantizer
from ringfl.secagg.rounds import SecAggAbort, SecAggSettings, ServerRound

if TYPE_CHECKING:
    from ringfl.coordinator import Coordinator
    from ringfl.runtime.session import PeerSession

log = logging.getLogger(__name__)

CLIENT_MESSAGES = (SecAggKeys, SecAggShares, SecAggMasked, SecAggUnmask)


def settings_from_config(config: Any) -> SecAggSettings:
    """The run's secure-aggregation settings; ConfigError if the run cannot use them."""
    settings = build(SecAggSettings, config.secagg, "secagg")
    robust = (config.algorithm_settings or {}).get("robust", "mean")
    if config.algorithm not in ("fedavg", "fedsgd") or robust != "mean":
        raise ConfigError("secagg works with the synchronous mean of fedavg or fedsgd only "
                          f"(algorithm {config.algorithm!r}, robust {robust!r})")
    if config.order not in ("auto", "sync") or config.max_parallel:
        raise ConfigError("secagg needs order 'sync' and every peer in one group (no max_parallel)")
    return settings


class SecAggCoordinator:
    """Secure aggregation for one coordinator (see the module docstring)."""

    def __init__(self, coordinator: Coordinator) -> None:
        self.c = coordinator
        self.settings = settings_from_config(coordinator.config)
        self.current: ServerRound | None = None
        self.failure: SecAggAbort | None = None
        self.acked: set[tuple[str, int]] = set()  # (peer, round): each round is acked once
        self.closed_rounds = 0  # rounds whose noisy sum was released (for the DP accountant)
        self.history: list[dict[str, Any]] = []

    # --- messages from peers ---------------------------------------------------------------------

    @staticmethod
    def handles(message: Message) -> bool:
        return isinstance(message, CLIENT_MESSAGES)

    async def on_message(self, session: PeerSession, message: Message) -> None:
        current = self.current
        if current is None or message.round != current.round or self.failure is not None:
            await self._turn_away(session, message.round, "it arrived after its round closed")
            return
        add: Callable[[str, Any], bool] = {
            SecAggKeys: current.add_keys, SecAggShares: current.add_shares,
            SecAggMasked: current.add_masked, SecAggUnmask: current.add_unmask,
        }[type(message)]
        try:
            if not add(session.peer_id, message) and current.phase != "result":  # else: the closing ack
                await self._turn_away(session, message.round, f"it arrived after the {current.phase} phase began")
        except SecAggAbort as exc:
            self.failure = exc
        self.c.progress.notify()

    async def _turn_away(self, session: PeerSession, round_: int, why: str) -> None:
        """A message too late for its phase: the peer sits this round out (its session waits
        for an ack; a reply that crossed our ack needs none)."""
        await self._ack(session, round_, Ack(accepted=False, reason=AckReason.STALE, round=round_,
                                             detail=f"secure aggregation: {why}"))

    async def _ack(self, session: PeerSession, round_: int, ack: Ack) -> None:
        """Close ``round_`` for this peer, once, if its session is still inside a secagg round."""
        key = (session.peer_id, round_)
        if key not in self.acked and session.stream.conn.state in (*SECAGG, State.UPLOADING):
            self.acked.add(key)
            await self.c.send_quietly(session, ack)

    # --- one round ---------------------------------------------------------------------------------

    async def play_round(self) -> list[str]:
        """A whole secure-aggregation round; returns the peers whose inputs were summed."""
        c = self.c
        peers = c.alive()
        started = time.perf_counter()
        current = self.current = ServerRound(c.round, c.config.run_id, self.settings, c.num_params,
                                             seed=c.config.seed)
        self.failure = None
        quantizer = Quantizer(self.settings.bound, max(len(peers), 1))
        info = RoundPlan(secagg={**self.settings.to_dict(), "summands": quantizer.max_summands}).to_info()
        record: dict[str, Any] = {"round": c.round, "peers": len(peers)}
        c.round_open = True
        await c.broadcast(peers, RoundStart(round=c.round, deadline=c.config.round_timeout, info=info))
        survivors: list[str] = []
        try:
            await self._phase([s.peer_id for s in peers], lambda: current.members)
            await self._send(current.rosters())
            await self._phase(list(current.members), lambda: current.sharers)
            await self._send(current.inboxes())
            await self._phase(list(current.sharers), lambda: current.survivors)
            requests = set(await self._send(current.unmask_requests()))
            await self._phase(requests, lambda: requests - set(current.requests))
            current.phase = "result"  # late shares are ignored from here on
            total, survivors = await trio.to_thread.run_sync(current.result)  # keep the loop responsive
            self._submit(quantizer.decode_sum(total, len(survivors)) / len(survivors), survivors)
            record.update(survivors=len(survivors), error_bound=quantizer.error_bound(len(survivors)),
                          **({"epsilon": self.privacy()["epsilon"]} if self.settings.noise_multiplier else {}))
        except SecAggAbort as exc:
            log.warning("%s", exc)
            record["aborted"] = str(exc)
            survivors = []
        finally:
            self.current = None
        await self._acknowledge(peers, set(survivors), record.get("aborted"))
        record["seconds"] = round(time.perf_counter() - started, 4)
        self.history.append(record)
        return survivors

    async def _phase(self, expected: Collection[str], answered: Callable[[], Collection[str]]) -> None:
        """Until every live peer of ``expected`` answered, a share problem aborts the round, or a
        round deadline passed (each phase gets one: the first includes training)."""
        def done() -> bool:
            if self.failure is not None:
                return True
            got = set(answered())
            return all(name in got or name not in self.c.sessions for name in expected)

        await self.c.progress.wait_until(done, trio.current_time() + self.c.config.round_timeout)
        if self.failure is not None:
            raise self.failure

    async def _send(self, messages: dict[str, Message]) -> list[str]:
        """Send each peer its message; returns who was still there to receive it."""
        sessions = [(self.c.sessions.get(peer), message) for peer, message in messages.items()]
        sessions = [(s, m) for s, m in sessions if s is not None and s.alive]
        async with trio.open_nursery() as nursery:
            for session, message in sessions:
                nursery.start_soon(self.c.send_quietly, session, message)
        return [s.peer_id for s, _ in sessions]

    def _submit(self, mean: np.ndarray, survivors: list[str]) -> None:
        c = self.c
        try:
            c.algorithm.submit(Update("secagg", c.round, mean.astype(np.float32), 1))
        except InvalidUpdate as exc:
            raise SecAggAbort(f"secure aggregation round {c.round}: the sum was refused: {exc}") from None
        for _ in survivors:
            c.pool.stats.count(Reason.ACCEPTED)
        c.pool.version += 1
        self.closed_rounds += 1

    async def _acknowledge(self, peers: list[PeerSession], summed: set[str], aborted: str | None) -> None:
        """Every participant still inside the round learns whether its input went into the sum."""
        detail = aborted or "secure aggregation: this peer's input was not in the sum"
        round_ = self.c.round
        self.acked = {key for key in self.acked if key[1] >= round_}
        async with trio.open_nursery() as nursery:
            for session in peers:
                if session.alive:
                    ok = session.peer_id in summed
                    ack = Ack(accepted=ok, reason=AckReason.OK if ok else AckReason.POLICY, round=round_,
                              detail="" if ok else detail)
                    nursery.start_soon(self._ack, session, round_, ack)

    # --- records -------------------------------------------------------------------------------------

    def privacy(self) -> dict[str, Any]:
        """The distributed-DP guarantee so far (ε by RDP over the rounds whose sum was released)."""
        s = self.settings
        if s.noise_multiplier <= 0:
            return {}
        return {"noise_multiplier": s.noise_multiplier, "clip_norm": s.clip_norm, "delta": s.delta,
                "rounds": self.closed_rounds, "epsilon": dp.epsilon(s.noise_multiplier, self.closed_rounds, s.delta)}

    def summary(self) -> dict[str, Any]:
        return {"settings": self.settings.to_dict(), "rounds": self.history, "privacy": self.privacy(),
                "aborted": sum(1 for r in self.history if "aborted" in r)}
