"""Typed payloads (``ringfl.protocol.payloads``) put exactly the bytes on the wire that the
untyped ``info`` maps did: the golden frames were encoded on main (112bbf0) before the payloads
existed, from the same inputs as below."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ringfl.algorithms.gossip import GossipMessage
from ringfl.protocol import (
    Accept,
    Neighbours,
    RemoteProtocolError,
    RoundStart,
    Upload,
    decode,
    encode,
)
from ringfl.protocol.payloads import GossipUpdate, NeighbourTable, RoundPlan, RunDescription
from ringfl.ring import Neighbourhood, neighbour_list, neighbour_table
from ringfl.runtime.session import run_description
from ringfl.topology import generate
from ringfl.vectors import SparseVector
from tests.helpers import demo_config

GOLDEN = {name: bytes.fromhex(frame) for name, frame in
          json.loads((Path(__file__).parent / "fixtures" / "golden_frames.json").read_text()).items()}


def _frames() -> dict[str, bytes]:
    frames = {}
    config = demo_config(algorithm="dssgd", rounds=3)
    description = run_description(config, 2).replace(order="round-robin")
    frames["accept_coordinator"] = encode(Accept(num_params=100, spec_hash="ab" * 32, mode="coordinator",
                                                 info=description.to_info(), sender="coordinator"))
    ring_config = demo_config(algorithm="relay", rounds=4, algorithm_settings={"theta_u": 0.1, "hops": 2})
    description = run_description(ring_config.replace(peers=8), 3).replace(
        node=3, topology="ring-8", round_timeout=ring_config.round_timeout)
    frames["accept_ring"] = encode(Accept(num_params=100, spec_hash="cd" * 32, mode="ring", info=description.to_info()))
    ring = generate("ring", 8)
    labels = list(ring.labels)
    addresses = {label: f"127.0.0.1:{7000 + i}" for i, label in enumerate(labels)}
    nodes = {label: i for i, label in enumerate(labels)}
    table = neighbour_table(ring, 0, 2, nodes, from_round=3, dead=["5"])
    frames["neighbours_ring"] = encode(Neighbours(neighbours=tuple(neighbour_list(ring, 0, labels, addresses)),
                                                  topology_version=2, round=1, info=table.to_info()))
    varying = generate("one-peer-exponential", 8)
    frames["neighbours_schedule"] = encode(Neighbours(
        neighbours=tuple(neighbour_list(varying, 1, list(varying.labels), addresses)), topology_version=1,
        info=neighbour_table(varying, 1, 1, nodes).to_info()))
    frames["round_start_ring"] = encode(RoundStart(round=0, info=RoundPlan(rounds=4).to_info()))
    hood = Neighbourhood("alice")
    hood.apply((), 0, NeighbourTable(nodes={"3": 3}))
    sparse = SparseVector(size=50, indices=np.array([1, 7, 30], np.uint32), values=np.array([0.5, -1.0, 2.0], np.float32))
    frames["upload_gossip_sparse"] = encode(hood.to_upload(GossipMessage(3, 2, sparse, step=1, hop=2, weight=0.25), 2, 1))
    dense = SparseVector.dense(np.arange(6, dtype=np.float32))
    frames["upload_gossip_snapshot"] = encode(hood.to_upload(GossipMessage(0, 5, dense, snapshot=True), 5, 0))
    return frames


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_typed_payloads_encode_to_the_golden_bytes(name):
    assert _frames()[name] == GOLDEN[name]


def test_payloads_read_back_from_the_golden_frames():
    accept = decode(GOLDEN["accept_ring"])
    description = RunDescription.from_info(accept.info)
    assert (description.node, description.topology, description.index, description.peers) == (3, "ring-8", 3, 8)
    assert description.to_info() == accept.info
    neighbours = decode(GOLDEN["neighbours_ring"])
    table = NeighbourTable.from_info(neighbours.info)
    assert table.dead == ["5"] and table.from_round == 3 and table.to_info() == neighbours.info
    update = GossipUpdate.from_upload(decode(GOLDEN["upload_gossip_sparse"]))
    assert (update.origin, update.round, update.step, update.hop, update.weight, update.snapshot) == ("3", 2, 1, 2, 0.25, False)
    assert GossipUpdate.from_upload(decode(GOLDEN["upload_gossip_snapshot"])).snapshot is True


def _gossip_frame(info: dict) -> bytes:
    """A gossip upload with ``info`` as the header, bypassing the sender's own check."""
    frame = encode(Upload(round=1, vector=np.zeros(3, np.float32), kind="gossiq", info=info))
    return frame.replace(b"gossiq", b"gossip")


@pytest.mark.parametrize("info, fragment", [
    ({"step": 0}, "origin"),
    ({"origin": ""}, "origin"),
    ({"origin": "a", "step": -1}, "step"),
    ({"origin": "a", "step": 1.5}, "step"),
    ({"origin": "a", "hop": 0}, "hop"),
    ({"origin": "a", "hop": True}, "hop"),
    ({"origin": "a", "weight": float("nan")}, "weight"),
    ({"origin": "a", "weight": -0.5}, "weight"),
    ({"origin": "a", "weight": "1"}, "weight"),
    ({"origin": "a", "snapshot": 1}, "snapshot"),
])
def test_the_codec_refuses_malformed_gossip_headers(info, fragment):
    with pytest.raises(RemoteProtocolError, match=fragment):
        decode(_gossip_frame(info))


def test_a_well_formed_gossip_header_decodes():
    upload = decode(_gossip_frame({"origin": "a", "step": 2, "hop": 1, "weight": 1}))
    assert GossipUpdate.from_upload(upload).weight == 1.0


def test_round_plans_keep_the_maps_they_replace():
    assert RoundPlan.from_info(decode(GOLDEN["round_start_ring"]).info) == RoundPlan(rounds=4)
    assert RoundPlan(asynchronous=True, epochs=3).to_info() == {"async": True, "epochs": 3}
    secagg = {"bound": 1.0, "summands": 4}
    assert RoundPlan(secagg=secagg).to_info() == {"secagg": secagg}
    assert RoundPlan.from_info({}) == RoundPlan()


def _round_frame(info: dict) -> bytes:
    """A round start with ``info``, its keys' last letters swapped in afterwards (``asynx`` ->
    ``async``), bypassing the sender's own check."""
    frame = encode(RoundStart(round=1, info=info))
    for key in (b"async", b"epochs", b"rounds", b"secagg"):
        frame = frame.replace(key[:-1] + b"x", key)
    return frame


@pytest.mark.parametrize("info, fragment", [
    ({"asynx": 1}, "async"),
    ({"epochx": 0}, "epochs"),
    ({"epochx": 1.5}, "epochs"),
    ({"roundx": -1}, "rounds"),
    ({"secagx": [1, 2]}, "secagg"),
])
def test_the_codec_refuses_malformed_round_plans(info, fragment):
    with pytest.raises(RemoteProtocolError, match=fragment):
        decode(_round_frame(info))
