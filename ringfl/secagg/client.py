"""A peer's secure-aggregation round on trio: a thin driver around :class:`ClientRound`.

Called by :class:`ringfl.peer.Peer` in place of the plain upload when the round start says
``info["secagg"]``: keys, shares, masked input, unmasking shares, then the coordinator's ack. An
ack at any step means the coordinator aborted the round (or left this peer out of it).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import trio

from ringfl.config import build
from ringfl.protocol import Ack
from ringfl.protocol.secagg_messages import SecAggInbox, SecAggRoster, SecAggUnmaskRequest
from ringfl.secagg.dp import clip_and_noise
from ringfl.secagg.quantize import Quantizer
from ringfl.secagg.rounds import ClientRound, SecAggSettings
from ringfl.vectors import Vector, as_dense

if TYPE_CHECKING:
    from ringfl.peer import Peer


def settings_from_round(info: dict[str, Any]) -> tuple[SecAggSettings, Quantizer]:
    """The settings the coordinator announced at round start, and the ring encoding."""
    data = dict(info)
    summands = int(data.pop("summands"))
    settings = build(SecAggSettings, data, "round start secagg")
    return settings, Quantizer(settings.bound, summands)


async def secure_upload(peer: Peer, info: dict[str, Any], update: Vector, round_: int) -> Ack:
    """Take part in the secure-aggregation round with ``update``; returns the closing ack."""
    assert peer.stream is not None and peer.model is not None and peer.data is not None
    stream = peer.stream
    settings, quantizer = settings_from_round(info)
    client = ClientRound(peer.name, round_, stream.conn.run_id, settings, peer.model.num_params)
    await stream.send(client.keys())
    roster = await peer._expect((SecAggRoster, Ack))
    if isinstance(roster, Ack):
        return roster
    await stream.send(client.shares(roster))
    inbox = await peer._expect((SecAggInbox, Ack))
    if isinstance(inbox, Ack):
        return inbox
    contribution = clip_and_noise(as_dense(update), settings.clip_norm, settings.noise_multiplier,
                                  roster.threshold, np.random.default_rng())
    masked = await trio.to_thread.run_sync(client.masked, inbox, quantizer.encode(contribution),
                                           peer.data.num_samples)  # n mask PRGs: off the event loop
    await stream.send(masked)
    request = await peer._expect((SecAggUnmaskRequest, Ack))
    if isinstance(request, Ack):
        return request
    await stream.send(client.unmask(request))
    return await peer._expect(Ack)
