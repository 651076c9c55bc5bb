"""Typed payloads that travel in a message's ``info`` map.

The wire keeps its plain msgpack maps (any language reads them, see ``docs/protocol.md``);
these classes give the code one typed, checked view of them instead of ``info.get`` calls
scattered over the modes. Each ``to_info`` writes the keys in the order the map always had,
so the bytes on the wire are those of the untyped maps they replace.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ringfl.protocol.messages import Upload


def _plain(value: Any) -> dict[str, Any]:
    """A config object (or a mapping from the wire) as its plain map."""
    if hasattr(value, "to_dict"):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return dict(value)


@dataclass(frozen=True)
class RunDescription:
    """The run as a peer learns it: from the server's Accept, or (standalone ring) its config.

    ``settings``, ``training`` and ``partition`` hold the config objects inside one process and
    plain maps after decoding; the peer builds its typed run from either (no round trip through
    a wire map when nothing crosses a wire). ``node`` and ``topology`` only in ring mode.
    """

    algorithm: str = "fedavg"
    settings: Any = field(default_factory=dict)
    training: Any = field(default_factory=dict)
    partition: Any = field(default_factory=dict)
    rounds: int = 1
    peers: int = 1
    index: int = 0
    seed: int = 0
    data: str = "digits"
    round_timeout: float = 60.0
    order: str = "auto"
    node: int | None = None
    topology: str | None = None

    def replace(self, **changes: Any) -> RunDescription:
        return dataclasses.replace(self, **changes)

    def to_info(self) -> dict[str, Any]:
        info = {
            "algorithm": self.algorithm, "settings": _plain(self.settings), "training": _plain(self.training),
            "partition": _plain(self.partition), "rounds": self.rounds, "peers": self.peers, "index": self.index,
            "seed": self.seed, "data": self.data, "round_timeout": self.round_timeout, "order": self.order,
        }
        if self.node is not None:
            info["node"] = self.node
        if self.topology is not None:
            info["topology"] = self.topology
        return info

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> RunDescription:
        """From an Accept's ``info``; missing keys take their defaults, wrong types raise ValueError."""
        node, topology = info.get("node"), info.get("topology")
        return cls(
            algorithm=str(info.get("algorithm", "fedavg")), settings=_mapping(info, "settings"),
            training=_mapping(info, "training"), partition=_mapping(info, "partition"),
            rounds=int(info.get("rounds", 1)), peers=int(info.get("peers", 1)), index=int(info.get("index", 0)),
            seed=int(info.get("seed", 0)), data=str(info.get("data", "digits")),
            round_timeout=float(info.get("round_timeout", 60.0)), order=str(info.get("order", "auto")),
            node=None if node is None else int(node), topology=None if topology is None else str(topology),
        )


def _mapping(info: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = info.get(key, {})
    if not isinstance(value, Mapping):
        raise ValueError(f"run description: {key} must be a map, got {type(value).__name__}")
    return dict(value)


@dataclass(frozen=True)
class SchedulePhase:
    """One phase of a time-varying topology as one node sees it: whom it mixes (label ->
    weight) and whom it sends to."""

    ins: dict[str, float]
    outs: list[str]

    def to_info(self) -> dict[str, Any]:
        return {"in": self.ins, "out": self.outs}

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> SchedulePhase:
        return cls(ins={str(k): float(w) for k, w in info["in"].items()}, outs=[str(j) for j in info["out"]])


@dataclass(frozen=True)
class NeighbourTable:
    """What a ring peer needs besides its neighbour list (``Neighbours.info``), by topology label.

    ``nodes``: every label's stable node id; ``expected_origins``: whose updates to wait for each
    exchange; ``forward``: relay routes (origin -> out-neighbours), None: send everywhere;
    ``from_round``: when new links hold; ``dead``: peers to drop at once; ``schedule``: the
    phases of a time-varying topology ([] for a static one).
    """

    nodes: dict[str, int] = field(default_factory=dict)
    expected_origins: list[str] = field(default_factory=list)
    forward: dict[str, list[str]] | None = None
    from_round: int = 0
    dead: list[str] = field(default_factory=list)
    schedule: list[SchedulePhase] = field(default_factory=list)

    def to_info(self) -> dict[str, Any]:
        return {"expected_origins": self.expected_origins, "nodes": self.nodes, "forward": self.forward,
                "from_round": self.from_round, "dead": self.dead,
                "schedule": [phase.to_info() for phase in self.schedule]}

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> NeighbourTable:
        forward = info.get("forward")
        return cls(
            nodes={str(label): int(i) for label, i in info.get("nodes", {}).items()},
            expected_origins=[str(p) for p in info.get("expected_origins", [])],
            forward=({str(o): [str(j) for j in js] for o, js in forward.items()}
                     if isinstance(forward, Mapping) else None),
            from_round=int(info.get("from_round", 0)), dead=[str(p) for p in info.get("dead", [])],
            schedule=[SchedulePhase.from_info(p) for p in info.get("schedule") or []],
        )


@dataclass(frozen=True)
class RoundPlan:
    """What a RoundStart's ``info`` adds to its round number: ``rounds``, the run's length (ring
    mode); ``asynchronous`` DSSGD, ``epochs`` of it back to back (coordinator ``order: async``);
    ``secagg``, the round's secure-aggregation settings (read by :mod:`ringfl.secagg`)."""

    rounds: int | None = None
    asynchronous: bool = False
    epochs: int = 1
    secagg: dict[str, Any] | None = None

    def to_info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"async": True, "epochs": self.epochs} if self.asynchronous else {}
        if self.rounds is not None:
            info["rounds"] = self.rounds
        if self.secagg is not None:
            info["secagg"] = self.secagg
        return info

    @classmethod
    def from_info(cls, info: Mapping[str, Any]) -> RoundPlan:
        check_round_info(info)
        secagg = info.get("secagg")
        return cls(rounds=info.get("rounds"), asynchronous=info.get("async", False), epochs=info.get("epochs", 1),
                   secagg=None if secagg is None else dict(secagg))


def check_round_info(info: Mapping[str, Any]) -> None:
    """The ``info`` of a round start (the codec calls this through ``RoundStart.check``)."""
    for key, low in (("rounds", 0), ("epochs", 1)):
        value = info.get(key, low)
        if type(value) is not int or value < low:
            raise ValueError(f"round start: {key} must be an integer >= {low}, got {value!r}")
    if type(info.get("async", False)) is not bool:
        raise ValueError("round start: async must be a boolean")
    if not isinstance(info.get("secagg", {}), Mapping):
        raise ValueError("round start: secagg must be a map")


GOSSIP = "gossip"
"""``Upload.kind`` of a ring neighbour's update; its ``info`` is a :class:`GossipUpdate`'s header."""


@dataclass(frozen=True)
class GossipUpdate:
    """A ring neighbour's update (a 1004 of kind ``gossip``): ``origin`` names the peer whose
    selection it is by topology label; ``step`` is the exchange step, ``hop`` the hops travelled
    on arrival (>= 1), ``weight`` the product of mixing weights along the path (finite, >= 0),
    ``snapshot`` a whole public copy (CHOCO resync)."""

    origin: str
    round: int
    vector: Any
    step: int = 0
    hop: int = 1
    weight: float = 1.0
    snapshot: bool = False

    def to_upload(self) -> Upload:
        info: dict[str, Any] = {"origin": self.origin, "step": self.step, "hop": self.hop, "weight": self.weight}
        if self.snapshot:
            info["snapshot"] = True
        return Upload(round=self.round, vector=self.vector, kind=GOSSIP, info=info)

    @classmethod
    def from_upload(cls, upload: Upload) -> GossipUpdate:
        info = upload.info
        check_gossip_info(info)
        return cls(origin=info["origin"], round=upload.round, vector=upload.vector, step=info.get("step", 0),
                   hop=info.get("hop", 1), weight=float(info.get("weight", 1.0)), snapshot=info.get("snapshot", False))


def check_gossip_info(info: Mapping[str, Any]) -> None:
    """The header of a gossip upload (the codec calls this through ``Upload.check``)."""
    origin = info.get("origin")
    if not isinstance(origin, str) or not origin:
        raise ValueError("gossip upload: origin must be a non-empty label")
    for key, default, low in (("step", 0, 0), ("hop", 1, 1)):
        value = info.get(key, default)
        if type(value) is not int or value < low:
            raise ValueError(f"gossip upload: {key} must be an integer >= {low}, got {value!r}")
    weight = info.get("weight", 1.0)
    if type(weight) not in (int, float) or not math.isfinite(weight) or weight < 0:
        raise ValueError(f"gossip upload: weight must be a finite number >= 0, got {weight!r}")
    if type(info.get("snapshot", False)) is not bool:
        raise ValueError("gossip upload: snapshot must be a boolean")
