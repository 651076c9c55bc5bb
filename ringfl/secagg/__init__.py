"""Secure aggregation for synchronous coordinator rounds (Bonawitz et al. 2017; SecAgg+ graphs,
Bell et al. 2020): the coordinator learns only the sum of the peers' quantised updates.

``crypto`` holds the primitives (X25519, HKDF, AES-GCM, the AES-CTR mask PRG, Shamir sharing),
``quantize`` the fixed-point ring encoding, ``rounds`` the sans-IO client and server round state
machines and ``dp`` the distributed-noise accounting. See docs/protocol.md, "Secure aggregation".
"""

from ringfl.secagg.rounds import ClientRound, SecAggAbort, SecAggSettings, ServerRound

__all__ = ["ClientRound", "SecAggAbort", "SecAggSettings", "ServerRound"]
