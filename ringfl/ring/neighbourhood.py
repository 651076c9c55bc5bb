"""A ring peer's neighbourhood, without I/O: its links, pending link switches, dead peers and
the inbox of neighbours' updates.

The bootstrap's :class:`~ringfl.protocol.Neighbours` (or, without a bootstrap, the topology
file) says who the neighbours are; updates arrive here from the serving side of the links and
wait in the inbox until the round driver (:mod:`ringfl.ring.peer`) feeds them to the exchange
algorithm. Everything here is synchronous, so it is tested without a network.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from ringfl.algorithms.gossip import GossipAlgorithm, GossipMessage
from ringfl.protocol import Ack, AckReason, Message, Neighbour, Upload
from ringfl.protocol.payloads import GossipUpdate, NeighbourTable
from ringfl.vectors import SparseVector

log = logging.getLogger(__name__)

Inbox = dict[tuple[int, int], list[tuple[int, GossipMessage]]]
"""(round, step) -> the (sending neighbour, message) pairs that arrived for that exchange."""


@dataclass
class Links:
    """A ring peer's view of its neighbourhood (from the bootstrap's latest Neighbours)."""

    version: int = -1
    weights: dict[int, float] = field(default_factory=dict)  # in-neighbour node -> W[i, j]
    dial: dict[int, str] = field(default_factory=dict)  # out-neighbour node -> address
    expected: set[int] = field(default_factory=set)  # origins to wait for each exchange
    forward: dict[int, set[int]] | None = None  # relay: origin -> out-neighbours to pass it to
    changed: bool = False
    phases: list[Links] = field(default_factory=list)  # time-varying topology: exchange t uses phases[t % len]

    def at(self, exchange: int) -> Links:
        """The links of exchange ``exchange`` (counted from 0 over the whole run)."""
        return self.phases[exchange % len(self.phases)] if self.phases else self


class Neighbourhood:
    """Links in force and pending, node ids and labels, dead peers, the inbox.

    ``on_change`` is called whenever a waiting exchange should look again (an update arrived,
    the links changed); the round driver wakes its gather loop with it.
    """

    def __init__(self, name: str, on_change: Callable[[], None] = lambda: None) -> None:
        self.name = name
        self.on_change = on_change
        self.links = Links()
        self.current = self.links  # the links of the exchange under way (a schedule's phase)
        self.pending: tuple[int, Links] | None = None  # (from round, links) not yet in force
        self.node_ids: dict[str, int] = {}  # topology label -> node index (from the bootstrap)
        self.label_of: dict[int, str] = {}
        self.dead: set[int] = set()
        self.round_in_progress = 0
        self.start_round = 0  # the bootstrap's first round for this peer (a newcomer joins late)
        self.inbox: Inbox = defaultdict(list)
        self.unsynced: set[int] = set()  # out-neighbours whose copy of our gossip state may be wrong

    # --- links -----------------------------------------------------------------------------------

    def apply(self, neighbours: tuple[Neighbour, ...], version: int, table: NeighbourTable) -> None:
        """Dead peers leave the current links at once; new links wait for their ``from_round``
        (both ends of a new link switch at the same round, so nobody waits for a message that
        was sent along the old links)."""
        self.node_ids.update(table.nodes)
        self.label_of = {i: label for label, i in self.node_ids.items()}
        node = self.node_ids.__getitem__
        links = Links(
            version=version,
            weights={node(n.peer_id): n.weight for n in neighbours if n.weight > 0},
            dial={node(n.peer_id): n.address for n in neighbours if n.address},
            expected={node(p) for p in table.expected_origins},
            forward=None if table.forward is None else
            {node(origin): {node(j) for j in targets} for origin, targets in table.forward.items()},
            changed=True,
        )
        dial = links.dial
        links.phases = [Links(version=version, weights={node(j): w for j, w in p.ins.items()},
                              dial={node(j): dial[node(j)] for j in p.outs if node(j) in dial},
                              expected={node(j) for j in p.ins}, changed=True)
                        for p in table.schedule]
        self.dead = {node(label) for label in table.dead if label in self.node_ids}
        self.links.expected -= self.dead
        self.links.dial = {j: a for j, a in self.links.dial.items() if j not in self.dead}
        if self.dead:  # shortest paths may have run through the dead: relay floods until the new links hold
            self.links.forward = None
        if self.links.version < 0 and table.from_round > self.start_round + 1:
            self.links = Links(version=0, changed=True)  # a newcomer runs alone until the switch
        if self.links.version < 0 or table.from_round <= self.round_in_progress:
            self.links = links
        else:
            self.pending = (table.from_round, links)
        if not self.links.phases:  # an exchange under way sees new or shrunk links at once
            self.current = self.links
        self.on_change()

    def begin_round(self, round_: int) -> None:
        """Round ``round_`` (1-based) begins: pending links of this round come into force."""
        self.round_in_progress = round_
        if self.pending is not None and round_ >= self.pending[0]:
            self.links = self.pending[1]
            self.pending = None

    def begin_exchange(self, exchange: int) -> Links:
        """The links of exchange ``exchange`` (0-based over the run) become the current ones."""
        self.current = self.links.at(exchange)
        return self.current

    def routes(self, origin: int, node: int) -> bool:
        """Whether a relayed selection of ``origin`` goes on to ``node`` (never back to its origin;
        without a routing table, or for an origin it does not know, everywhere else)."""
        table = self.links.forward
        if node == origin:
            return False
        return table is None or origin not in table or node in table[origin]

    def label(self, node: int) -> str:
        return self.label_of.get(node, str(node))

    def node_of(self, label: str, default: int = -1) -> int:
        return self.node_ids.get(label, default)

    def link_opened(self, node: int) -> None:
        """A link (re)opened mid-run: the copies at its ends may differ."""
        if self.round_in_progress > 1:
            self.unsynced.add(node)

    def waiting(self, fed: set[int]) -> set[int]:
        """Origins still missing from this exchange (shrinks at once when a neighbour dies)."""
        return self.current.expected - fed

    # --- updates -------------------------------------------------------------------------------

    def to_upload(self, message: GossipMessage, round_: int, step: int) -> Upload:
        """A gossip message as a 1004 upload naming its origin by topology label."""
        vector = message.vector
        full = vector.nnz == vector.size  # θu = 1: raw floats beat a bitmap of all ones
        return GossipUpdate(origin=self.label_of.get(message.origin, self.name), round=round_,
                            vector=vector.values if full else vector, step=step, hop=message.hop,
                            weight=message.weight, snapshot=message.snapshot).to_upload()

    def receive(self, sender: int, upload: Upload) -> Message:
        """An update from in-neighbour ``sender`` into the inbox; the Ack to answer with."""
        try:
            update = GossipUpdate.from_upload(upload)
            vector = update.vector
            message = GossipMessage(origin=self.node_ids[update.origin], round=update.round,
                                    vector=vector if isinstance(vector, SparseVector) else SparseVector.dense(vector),
                                    step=update.step, hop=update.hop, weight=update.weight,
                                    snapshot=update.snapshot)
        except (KeyError, ValueError, TypeError) as exc:
            return Ack(accepted=False, reason=AckReason.INVALID, ack_seq=upload.seq, detail=str(exc)[:200])
        self.inbox[(update.round, update.step)].append((sender, message))
        self.on_change()
        return Ack(accepted=True, ack_seq=upload.seq)

    def take(self, key: tuple[int, int]) -> list[tuple[int, GossipMessage]]:
        """What arrived for exchange ``key`` = (round, step), taken out of the inbox."""
        return self.inbox.pop(key, [])

    def take_late(self, algorithm: GossipAlgorithm, current: tuple[int, int]) -> None:
        """Messages for exchanges already closed: CHOCO still folds them into its public copies
        (or they would drift apart); the others drop them (stale, and the inbox would only grow)."""
        for key in sorted(key for key in self.inbox if key < current):  # in exchange order
            for sender, message in self.inbox.pop(key):
                if algorithm.keeps_copies:
                    algorithm.incoming(sender, message)

    def take_newest(self, round_: int) -> list[tuple[int, GossipMessage]]:
        """Asynchronous mode: everything in the inbox, newest first (it wins over older copies),
        relabelled as round ``round_``."""
        taken = []
        for key in sorted(self.inbox, reverse=True):
            taken += [(sender, dataclasses.replace(message, round=round_)) for sender, message in self.inbox.pop(key)]
        return taken
