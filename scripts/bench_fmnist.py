#!/usr/bin/env python
"""Benchmark: federated runs on Fashion-MNIST with real peer processes on loopback TCP.

Each setting starts a coordinator (coordinator mode) or a bootstrap (ring mode) in this process
and N ``python -m ringfl peer`` processes, runs R rounds of the reference MLP (lr 0.05, batch 64,
one local epoch) and prints accuracy per round, bytes and wall time — JSON, then a table.

Suites:
  coordinator  FedAvg, DSSGD θu ∈ {1, 0.1, 0.01} (round robin, θd = 1), DSSGD θu = 0.1 with DP at
               a few ε — 10 IID peers × 6,000 images, 5 rounds (the coordinator issue's numbers).
  shokri       30 peers × 600 images (overlapping samples), DSSGD θu ∈ {1, 0.1, 0.01}.
  ring         gossip-dssgd / relay / choco on ring, torus and complete graphs of 10 peers, θu = 0.1.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
import yaml

from ringfl.config import PartitionConfig, RunConfig, TrainingConfig
from ringfl.coordinator import Coordinator
from ringfl.launch import run_peer_processes, serve_until_done
from ringfl.ring import Bootstrap
from ringfl.transport import TcpNetwork

TRAINING = TrainingConfig(lr=0.05, batch_size=64)


def coordinator_suite() -> list[dict[str, Any]]:
    base = {"mode": "coordinator", "peers": 10, "rounds": 5}
    settings = [
        {"algorithm": "fedavg", "settings": {}},
        {"algorithm": "dssgd", "settings": {"theta_u": 1.0}},
        {"algorithm": "dssgd", "settings": {"theta_u": 0.1}},
        {"algorithm": "dssgd", "settings": {"theta_u": 0.01}},
    ]
    for epsilon in (100.0, 10.0, 1.0):  # NumericSparse needs clipping: sensitivity 2γ
        settings.append({"algorithm": "dssgd", "settings": {"theta_u": 0.1, "gamma": 0.01, "epsilon": epsilon}})
    return [{**base, **s} for s in settings]


def shokri_suite() -> list[dict[str, Any]]:
    base = {"mode": "coordinator", "peers": 30, "rounds": 5, "partition": {"kind": "sample", "size": 600}}
    return [{**base, "algorithm": "dssgd", "settings": s} for s in
            ({"theta_u": 1.0}, {"theta_u": 0.1}, {"theta_u": 0.01})]


def ring_suite() -> list[dict[str, Any]]:
    out = []
    for topology in ({"kind": "ring"}, {"kind": "torus", "rows": 2, "cols": 5}, {"kind": "complete"}):
        for algorithm in ("gossip-dssgd", "relay", "choco"):
            out.append({"mode": "ring", "peers": 10, "rounds": 5, "topology": topology, "algorithm": algorithm,
                        "settings": {"theta_u": 0.1, **({"choco_gamma": 0.5} if algorithm == "choco" else {})}})
    return out


def dp_suite() -> list[dict[str, Any]]:
    """DSSGD θu = 0.1 with clipping γ = 0.01, without DP and with NumericSparse at large ε.

    NumericSparse's noise scale is 2·c·Δf/ε with c = θu·|w| (10,939 for the MLP at θu = 0.1), so ε
    per epoch must be large before the released values carry signal; θu = 0.01 needs 10× less.
    """
    base = {"mode": "coordinator", "peers": 10, "rounds": 5, "algorithm": "dssgd"}
    rows = [{"theta_u": 0.1, "gamma": 0.01}]
    rows += [{"theta_u": 0.1, "gamma": 0.01, "epsilon": e} for e in (1e3, 1e4, 1e5)]
    rows += [{"theta_u": 0.01, "gamma": 0.01, "epsilon": e} for e in (1e3, 1e4)]
    return [{**base, "settings": r} for r in rows]


SUITES = {"coordinator": coordinator_suite, "shokri": shokri_suite, "ring": ring_suite, "dp": dp_suite}


def _config(setting: dict[str, Any], folder: Path) -> RunConfig:
    partition = PartitionConfig(**setting.get("partition", {"kind": "iid"}))
    topology = None
    if setting["mode"] == "ring":
        spec = dict(setting["topology"])
        topology = folder / "topology.yaml"
        topology.write_text(yaml.safe_dump({"name": spec["kind"], "nodes": setting["peers"], "generator": spec}))
        topology = str(topology)
    return RunConfig(run_id="bench", model="mlp", data="fashion-mnist", algorithm=setting["algorithm"],
                     rounds=setting["rounds"], peers=setting["peers"], min_peers=setting["peers"],
                     host="127.0.0.1", port=0, training=TRAINING, partition=partition, round_timeout=300,
                     algorithm_settings=setting["settings"], topology=topology)


async def run_setting(setting: dict[str, Any]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        config = _config(setting, Path(tmp))
        network = TcpNetwork()
        server: Any = Bootstrap(config, network) if config.topology else Coordinator(config, network)
        started = time.perf_counter()

        async def peers(address: str) -> None:
            await run_peer_processes([_peer(config, address, i) for i in range(config.peers)])

        await serve_until_done(server, peers)
    history = server.history
    rounds = [r for r in history if r["round"] > 0]
    result = {**setting, "accuracy_per_round": [round(r["accuracy"], 4) for r in rounds],
              "wall_time_s": round(time.perf_counter() - started, 1)}
    if config.topology:
        result["min_accuracy_per_round"] = [round(r["min_accuracy"], 4) for r in rounds]
        result["bytes_total"] = rounds[-1]["bytes"]
        result["bytes_per_round"] = [r["bytes_round"] for r in rounds]
    else:
        result["bytes_total"] = rounds[-1]["bytes_in"] + rounds[-1]["bytes_out"]
        if "epsilon_spent" in rounds[-1]:
            result["epsilon_per_peer"] = rounds[-1]["epsilon_spent"]
    return result


def _peer(config: RunConfig, address: str, i: int) -> list[str]:
    command = [sys.executable, "-m", "ringfl", "peer", "--coordinator", address, "--quiet",
               "--peers", str(config.peers), "--index", str(i)]
    if config.topology:
        command += ["--topology", config.topology, "--id", str(i), "--eval-samples", "2000"]
    else:
        command += ["--name", f"peer{i}"]
    return command


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=sorted(SUITES))
    parser.add_argument("--only", type=int, nargs="*", help="indices of settings to run")
    parser.add_argument("--out", help="also write the JSON results here")
    args = parser.parse_args()
    settings = SUITES[args.suite]()
    chosen = [settings[i] for i in args.only] if args.only else settings
    results = []
    for setting in chosen:
        result = trio.run(run_setting, setting)
        results.append(result)
        print(json.dumps(result), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"\n{'setting':<58} {'accuracy per round':<44} {'bytes':>12} {'time':>7}")
    for r in results:
        label = f"{r['mode']} {r['algorithm']} {r.get('topology', {}).get('kind', '')} {r['settings']}"
        print(f"{label:<58} {str(r['accuracy_per_round']):<44} {r['bytes_total']:>12,} {r['wall_time_s']:>6}s")


if __name__ == "__main__":
    main()
