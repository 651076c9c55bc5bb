#!/usr/bin/env python
"""Benchmark: how far one machine scales (prints JSON and a table).

In-process: a bootstrap and N ring peers (gossip-dssgd, θu = 0.1) in ONE process over in-memory
streams, the MLP on Fashion-MNIST split IID, R rounds; round time and peak RSS for N = 8 → 1,000.
Goal on 2 cores: 1,000 peers complete 3 rounds within 10 minutes and 8 GiB.
OS processes: a bootstrap and N ``ringfl peer`` processes on loopback TCP, one round, N = 8 → 64.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
import yaml

from ringfl.config import PartitionConfig, RunConfig, TrainingConfig
from ringfl.launch import child_env
from ringfl.peer import PeerOptions
from ringfl.ring import Bootstrap, RingPeer
from ringfl.topology import generate
from ringfl.transport import MemoryNetwork, TcpNetwork


def _config(peers: int, rounds: int, **extra: Any) -> RunConfig:
    return RunConfig(run_id="scale", model="mlp", data="fashion-mnist", algorithm="gossip-dssgd", rounds=rounds,
                     peers=peers, min_peers=peers, host="", port=0, round_timeout=600, join_timeout=600,
                     training=TrainingConfig(lr=0.05, batch_size=64), partition=PartitionConfig(kind="iid"),
                     algorithm_settings={"theta_u": 0.1}, **extra)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def in_process(peers: int, rounds: int, eval_samples: int) -> dict[str, Any]:
    network = MemoryNetwork()
    bootstrap = Bootstrap(_config(peers, rounds), network, topology=generate("ring", peers))
    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        address = await nursery.start(bootstrap.run)
        for i in range(peers):
            options = PeerOptions(coordinator=address, name=str(i), peers=peers, index=i, run_id="scale",
                                  eval_samples=eval_samples)
            nursery.start_soon(RingPeer(network, options).run)
    seconds = [r["seconds"] for r in bootstrap.history]
    return {"mode": "in-process", "peers": peers, "rounds": len(bootstrap.history),
            "total_s": round(time.perf_counter() - started, 1),
            "round_s": [round(b - a, 2) for a, b in zip([0.0, *seconds], seconds)],
            "accuracy": [round(r["accuracy"], 4) for r in bootstrap.history],
            "bytes_per_round": [r["bytes_round"] for r in bootstrap.history],
            "peak_rss_mib": round(peak_rss_mib())}


async def processes(peers: int, eval_samples: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "ring.yaml"
        path.write_text(yaml.safe_dump({"name": f"ring{peers}", "nodes": peers, "generator": {"kind": "ring"}}))
        config = _config(peers, 1, topology=str(path)).replace(host="127.0.0.1")
        bootstrap = Bootstrap(config, TcpNetwork())
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            address = await nursery.start(bootstrap.run)
            for i in range(peers):
                command = [sys.executable, "-m", "ringfl", "peer", "--coordinator", address, "--topology",
                           str(path), "--id", str(i), "--quiet", "--eval-samples", str(eval_samples)]
                nursery.start_soon(_run, command)
                await trio.sleep(0.15)  # stagger start-up (import + data load) peaks
    return {"mode": "processes", "peers": peers, "rounds": len(bootstrap.history),
            "total_s": round(time.perf_counter() - started, 1),
            "accuracy": [round(r["accuracy"], 4) for r in bootstrap.history]}


async def _run(command: list[str]) -> None:
    await trio.run_process(command, stdout=subprocess.DEVNULL, env=child_env(2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-process", type=int, nargs="*", default=[8, 100, 1000])
    parser.add_argument("--processes", type=int, nargs="*", default=[8, 32, 64])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--eval-samples", type=int, default=1000)
    parser.add_argument("--out", help="also write the JSON results here")
    args = parser.parse_args()
    results = []
    for n in args.in_process:  # each size in a fresh process, so peak RSS is per size
        output = subprocess.run([sys.executable, __file__, "--one", str(n), "--rounds", str(args.rounds),
                                 "--eval-samples", str(args.eval_samples)], capture_output=True, text=True)
        if output.returncode:
            print(output.stderr[-2000:], file=sys.stderr)
            continue
        results.append(json.loads(output.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    for n in args.processes:
        results.append(trio.run(processes, n, args.eval_samples))
        print(json.dumps(results[-1]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"\n{'mode':<11} {'peers':>6} {'rounds':>6} {'total s':>8} {'round s':<24} {'peak RSS MiB':>12}  accuracy")
    for r in results:
        print(f"{r['mode']:<11} {r['peers']:>6} {r['rounds']:>6} {r['total_s']:>8} {str(r.get('round_s', '-')):<24} "
              f"{r.get('peak_rss_mib', '-'):>12}  {r['accuracy']}")


if __name__ == "__main__":
    if "--one" in sys.argv:
        ap = argparse.ArgumentParser()
        ap.add_argument("--one", type=int)
        ap.add_argument("--rounds", type=int)
        ap.add_argument("--eval-samples", type=int)
        a = ap.parse_args()
        print(json.dumps(trio.run(in_process, a.one, a.rounds, a.eval_samples)))
    else:
        main()
