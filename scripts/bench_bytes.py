#!/usr/bin/env python
"""Benchmark: bytes on the wire per round, measured on real loopback sockets (JSON + table).

Coordinator FedAvg (dense), coordinator DSSGD and ring gossip-dssgd at θu ∈ {1, 0.1, 0.01}: 10
peers, the 109,386-parameter MLP on Fashion-MNIST, 2 rounds; the second (steady) round's bytes
next to the analytic minimum — raw float32 payload only, the smaller sparse encoding (8 B per
entry, or an n/8-byte bitmap + 4 B per entry), no framing:

  FedAvg  per peer: download 4n + upload 4n
  DSSGD   per peer: download 4n (θd = 1) + upload min(8c, n/8 + 4c), c = ceil(θu·n) (4n if c = n)
  ring    per peer: out-degree × min(8c, n/8 + 4c)   (a ring of 10: 2 out-neighbours)
"""

from __future__ import annotations

import argparse
import json
import math
from typing import Any

import trio

from ringfl.config import RunConfig, TrainingConfig
from ringfl.coordinator import Coordinator
from ringfl.peer import Peer, PeerOptions
from ringfl.ring import Bootstrap, RingPeer
from ringfl.topology import generate
from ringfl.transport import TcpNetwork

PEERS = 10


def sparse_bytes(n: int, theta: float) -> int:
    """The smaller encoding of c = ceil(θ·n) entries; all n entries go dense (4n)."""
    c = math.ceil(theta * n)
    return 4 * n if c >= n else min(8 * c, math.ceil(n / 8) + 4 * c)


def minimum(mode: str, algorithm: str, n: int, theta: float) -> int:
    if mode == "coordinator":
        upload = 4 * n if algorithm == "fedavg" else sparse_bytes(n, theta)
        return PEERS * (4 * n + upload)
    return PEERS * 2 * sparse_bytes(n, theta)


def _config(algorithm: str, theta: float, rounds: int) -> RunConfig:
    return RunConfig(run_id="bytes", model="mlp", data="fashion-mnist", algorithm=algorithm, rounds=rounds,
                     peers=PEERS, min_peers=PEERS, host="127.0.0.1", port=0,
                     training=TrainingConfig(lr=0.05, batch_size=64), algorithm_settings={"theta_u": theta})


async def measure(mode: str, algorithm: str, theta: float, rounds: int = 2) -> dict[str, Any]:
    network = TcpNetwork()
    config = _config(algorithm, theta, rounds)
    server: Any
    if mode == "coordinator":
        server = Coordinator(config, network)
    else:
        server = Bootstrap(config, network, topology=generate("ring", PEERS))
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run)
        for i in range(PEERS):
            options = PeerOptions(coordinator=address, name=str(i), peers=PEERS, index=i, run_id="bytes",
                                  eval_samples=1000)
            peer = Peer(network, options) if mode == "coordinator" else RingPeer(network, options)
            nursery.start_soon(peer.run)
    history = server.history
    if mode == "coordinator":
        totals = [r["bytes_in"] + r["bytes_out"] for r in history]
        measured = totals[-1] - totals[-2]
    else:
        measured = history[-1]["bytes_round"]
    n = server.num_params
    lower = minimum(mode, algorithm, n, theta)
    return {"mode": mode, "algorithm": algorithm, "theta_u": theta, "peers": PEERS, "num_params": n,
            "bytes_per_round": measured, "bytes_per_peer_per_round": measured // PEERS,
            "analytic_minimum": lower, "overhead": round(measured / lower - 1, 4),
            "accuracy": round(history[-1]["accuracy"], 4)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the JSON results here")
    args = parser.parse_args()
    settings = [("coordinator", "fedavg", 1.0)]
    settings += [("coordinator", "dssgd", t) for t in (1.0, 0.1, 0.01)]
    settings += [("ring", "gossip-dssgd", t) for t in (1.0, 0.1, 0.01)]
    results = []
    for mode, algorithm, theta in settings:
        results.append(trio.run(measure, mode, algorithm, theta))
        print(json.dumps(results[-1]), flush=True)
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=2)
    print(f"\n{'setting':<30} {'bytes/round':>13} {'per peer':>11} {'minimum':>13} {'overhead':>9}")
    for r in results:
        label = f"{r['mode']} {r['algorithm']} θu={r['theta_u']}"
        print(f"{label:<30} {r['bytes_per_round']:>13,} {r['bytes_per_peer_per_round']:>11,} "
              f"{r['analytic_minimum']:>13,} {r['overhead']:>8.2%}")


if __name__ == "__main__":
    main()
