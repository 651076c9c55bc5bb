"""Ring / topology mode: peers pass selective updates to their neighbours; a bootstrap only
introduces them.

``routing`` (pure: neighbour lists, expected origins, relay routes), ``neighbourhood`` (a peer's
links, pending switches, dead peers and inbox, without I/O), ``links`` (the neighbour streams
and their bytes), ``peer`` (the round driver, :class:`RingPeer`), ``state`` (a peer's per-round
checkpoints, what ``--resume`` continues from) and ``bootstrap`` (:class:`Bootstrap`). Every neighbour link is one session of the shared state machine, opened
with the handshake of :mod:`ringfl.runtime.session`.
"""

from ringfl.ring.bootstrap import Bootstrap
from ringfl.ring.links import NeighbourLinks
from ringfl.ring.neighbourhood import Links, Neighbourhood
from ringfl.ring.peer import RingPeer
from ringfl.ring.routing import (
    forward_targets,
    neighbour_list,
    neighbour_table,
    origins_within,
    schedule_info,
    standalone_addresses,
)

__all__ = [
    "Bootstrap",
    "Links",
    "NeighbourLinks",
    "Neighbourhood",
    "RingPeer",
    "forward_targets",
    "neighbour_list",
    "neighbour_table",
    "origins_within",
    "schedule_info",
    "standalone_addresses",
]
