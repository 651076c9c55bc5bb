"""Learning strategies as pure numpy objects over flat float32 vectors, and their registry.

Coordinator mode: ``fedsgd``, ``fedavg``, ``dssgd`` (a :class:`CoordinatorAlgorithm` on the server,
a :class:`PeerAlgorithm` on each peer). Ring / topology mode: ``gossip-dssgd``, ``relay``, ``choco``,
``d-psgd``, ``gradient-tracking`` (one :class:`GossipAlgorithm` per peer). See docs/algorithms.md.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ringfl.algorithms.base import (
    AlgorithmSettings,
    CoordinatorAlgorithm,
    InvalidUpdate,
    PeerAlgorithm,
    Update,
    selection_count,
)
from ringfl.algorithms.choco import ChocoGossip
from ringfl.algorithms.d_psgd import DPSGD
from ringfl.algorithms.dp_fedavg import DPFedAvgCoordinator, DPFedAvgPeer
from ringfl.algorithms.dssgd import DSSGDCoordinator, DSSGDPeer
from ringfl.algorithms.fedavg import FedAvgCoordinator, FedAvgPeer, FedSGDCoordinator, FedSGDPeer
from ringfl.algorithms.gossip import (
    GossipAlgorithm,
    GossipMessage,
    RelayGossip,
    SelectiveGossip,
    simulate_round,
)
from ringfl.algorithms.gradient_tracking import GradientTracking
from ringfl.errors import ConfigError

COORDINATOR_ALGORITHMS: dict[str, type[CoordinatorAlgorithm]] = {
    cls.name: cls for cls in (FedSGDCoordinator, FedAvgCoordinator, DSSGDCoordinator, DPFedAvgCoordinator)
}
PEER_ALGORITHMS: dict[str, type[PeerAlgorithm]] = {
    cls.name: cls for cls in (FedSGDPeer, FedAvgPeer, DSSGDPeer, DPFedAvgPeer)
}
GOSSIP_ALGORITHMS: dict[str, type[GossipAlgorithm]] = {
    cls.name: cls for cls in (SelectiveGossip, RelayGossip, ChocoGossip, DPSGD, GradientTracking)
}
_DP_CAPABLE = {"dssgd", "gossip-dssgd", "relay"}
_ROBUST_CAPABLE = {"fedavg", "fedsgd", "gossip-dssgd", "relay"}


def algorithm_mode(name: str) -> str:
    """The mode a strategy runs in, "coordinator" or "ring" (ConfigError if unknown)."""
    if name in COORDINATOR_ALGORITHMS:
        return "coordinator"
    if name in GOSSIP_ALGORITHMS:
        return "ring"
    valid = sorted([*COORDINATOR_ALGORITHMS, *GOSSIP_ALGORITHMS])
    raise ConfigError(f"unknown algorithm '{name}'; valid: {', '.join(valid)}")


def _lookup(name: str, table: Mapping[str, type], mode: str, settings: AlgorithmSettings) -> type:
    if name not in table:
        raise ConfigError(f"unknown {mode} algorithm '{name}'; valid: {', '.join(sorted(table))}")
    if settings.epsilon is not None and name not in _DP_CAPABLE:
        raise ConfigError(
            f"algorithm '{name}' has no differential privacy; 'epsilon' needs one of "
            f"{', '.join(sorted(_DP_CAPABLE))}"
        )
    if settings.robust != "mean" and name not in _ROBUST_CAPABLE:
        raise ConfigError(
            f"robust aggregation '{settings.robust}' applies to fedavg, fedsgd, gossip-dssgd and relay, not '{name}'"
        )
    return table[name]


def make_coordinator_algorithm(
    name: str, params: np.ndarray, settings: AlgorithmSettings, rng: np.random.Generator
) -> CoordinatorAlgorithm:
    """The server side of coordinator-mode strategy ``name`` over the initial ``params``."""
    return _lookup(name, COORDINATOR_ALGORITHMS, "coordinator-mode", settings)(
        params, settings, rng
    )


def make_peer_algorithm(name: str, settings: AlgorithmSettings) -> PeerAlgorithm:
    """The peer side of coordinator-mode strategy ``name``."""
    return _lookup(name, PEER_ALGORITHMS, "coordinator-mode", settings)(settings)


def make_gossip_algorithm(
    name: str,
    peer_id: int,
    n_params: int,
    settings: AlgorithmSettings,
    weights: Mapping[int, float],
    self_weight: float | None = None,
    initial: np.ndarray | None = None,
) -> GossipAlgorithm:
    """Ring-mode strategy ``name`` for ``peer_id`` with its row of W (``weights``: in-neighbours).

    ``initial`` (CHOCO only) is the common starting vector of all peers, if they share one.
    """
    cls = _lookup(name, GOSSIP_ALGORITHMS, "ring-mode", settings)
    if cls is ChocoGossip:
        return ChocoGossip(peer_id, n_params, settings, weights, self_weight, initial)
    return cls(peer_id, n_params, settings, weights, self_weight)


__all__ = [
    "COORDINATOR_ALGORITHMS",
    "GOSSIP_ALGORITHMS",
    "PEER_ALGORITHMS",
    "AlgorithmSettings",
    "ChocoGossip",
    "CoordinatorAlgorithm",
    "DPSGD",
    "DSSGDCoordinator",
    "DSSGDPeer",
    "FedAvgCoordinator",
    "FedAvgPeer",
    "FedSGDCoordinator",
    "FedSGDPeer",
    "GossipAlgorithm",
    "GossipMessage",
    "GradientTracking",
    "InvalidUpdate",
    "PeerAlgorithm",
    "RelayGossip",
    "SelectiveGossip",
    "Update",
    "algorithm_mode",
    "make_coordinator_algorithm",
    "make_gossip_algorithm",
    "make_peer_algorithm",
    "selection_count",
    "simulate_round",
]
