#!/usr/bin/env python
"""Benchmark secure aggregation (prints JSON and a table; writes JSON, CSV and a plot).

(a) FedAvg rounds with and without secure aggregation: 10 in-process peers on loopback TCP, the
    MLP (109,386 parameters) on Fashion-MNIST, one local epoch each. Round time is the
    coordinator's round (start to aggregate, training included); bytes are everything the
    coordinator sent and received in the round. Goals: <= 1.5 x time, <= 1.3 x bytes.
(b) cost growth: one secure-aggregation round among 10 / 50 / 100 in-process peers (no training,
    real cryptography, every message through the codec) with all pairs (SecAgg) and with a
    k-regular graph, k = 2·ceil(log2 n) (SecAgg+): seconds per phase (all clients + server) and
    bytes, against the bytes of the plain dense uploads they replace.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import trio
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from ringfl.config import RunConfig, TrainingConfig
from ringfl.coordinator import Coordinator
from ringfl.data import load_source, peer_indices, prepare
from ringfl.model import load_spec
from ringfl.model.runtime import shared_model
from ringfl.peer import Peer, PeerData, PeerOptions, shared_test_data
from ringfl.protocol import Upload, encode
from ringfl.protocol.codec import Limits
from ringfl.secagg.quantize import Quantizer
from ringfl.secagg.rounds import SecAggSettings
from ringfl.secagg.simulate import simulate_round
from ringfl.transport import TcpNetwork

MODEL, DATA = "mlp", "fashion-mnist"


def peer_data(peers: int) -> list[PeerData]:
    spec = load_spec(MODEL)
    splits = load_source(DATA, num_classes=spec.num_classes)
    test_x, test_y = shared_test_data(DATA, spec.input_shape, spec.num_classes, 1000)
    out = []
    for i in range(peers):
        rows = peer_indices(splits.train.y, "iid", peers, 0, i)
        out.append(PeerData(prepare(splits.train.x[rows], spec.input_shape), splits.train.y[rows], test_x, test_y))
    return out


async def fedavg_rounds(peers: int, rounds: int, secagg: dict | None, data: list[PeerData]) -> dict[str, Any]:
    config = RunConfig(run_id="bench", model=MODEL, data=DATA, algorithm="fedavg", rounds=rounds, peers=peers,
                       min_peers=peers, host="127.0.0.1", port=0, eval_every=rounds, round_timeout=600.0,
                       training=TrainingConfig(lr=0.05, batch_size=64), secagg=secagg)
    coordinator = Coordinator(config, TcpNetwork())
    owner = coordinator.secagg if secagg is not None else coordinator
    name = "play_round" if secagg is not None else "_play_round"
    original = getattr(owner, name)
    rows: list[dict[str, float]] = []

    async def timed() -> list[str]:
        before = sum(coordinator.bytes_total())
        start = time.perf_counter()
        result = await original()
        rows.append({"seconds": time.perf_counter() - start, "bytes": sum(coordinator.bytes_total()) - before})
        return result

    setattr(owner, name, timed)
    async with trio.open_nursery() as nursery:
        address = await nursery.start(coordinator.run)
        for i in range(peers):
            peer = Peer(coordinator.network, PeerOptions(coordinator=address, name=f"p{i}", peers=peers, index=i,
                                                         run_id="bench"), data=data[i])
            nursery.start_soon(peer.run)
    return {"rounds": rows, "final_accuracy": coordinator.history[-1]["accuracy"]}


def growth(sizes: list[int], num_params: int, progress: Progress) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    plain_upload = len(encode(Upload(vector=np.zeros(num_params, np.float32)), Limits().for_model(num_params)))
    out = []
    task = progress.add_task("secagg growth", total=2 * len(sizes))
    for n in sizes:
        inputs = {f"p{i:03d}": rng.uniform(-0.05, 0.05, num_params).astype(np.float32) for i in range(n)}
        for label, degree in (("secagg", 0), ("secagg+", 2 * math.ceil(math.log2(n)))):
            start = time.perf_counter()
            result = simulate_round(inputs, SecAggSettings(degree=degree), Quantizer(1.0, n))
            seconds = time.perf_counter() - start
            out.append({"peers": n, "variant": label, "degree": n - 1 if degree in (0, *range(n - 1, 2 * n)) else degree,
                        "seconds": round(seconds, 3), "seconds_per_peer": round(seconds / n, 4),
                        "phases": result.seconds, "bytes": result.bytes_up + result.bytes_down,
                        "plain_upload_bytes": n * plain_upload,
                        "bytes_ratio_vs_plain_upload": round((result.bytes_up + result.bytes_down) / (n * plain_upload), 3)})
            progress.advance(task)
    return out


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for variant in ("secagg", "secagg+"):
        rows = [r for r in results["growth"] if r["variant"] == variant]
        ax1.plot([r["peers"] for r in rows], [r["seconds"] for r in rows], "o-", label=variant)
        ax2.plot([r["peers"] for r in rows], [r["bytes"] / 1e6 for r in rows], "o-", label=variant)
    rows = [r for r in results["growth"] if r["variant"] == "secagg"]
    ax2.plot([r["peers"] for r in rows], [r["plain_upload_bytes"] / 1e6 for r in rows], "k--", label="plain uploads")
    ax1.set(xlabel="peers", ylabel="seconds per round (all peers + server, one process)")
    ax2.set(xlabel="peers", ylabel="MB per round")
    for ax in (ax1, ax2):
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=4, help="per run; the first is left out (warm-up)")
    parser.add_argument("--reps", type=int, default=2, help="alternating plain / secagg runs")
    parser.add_argument("--growth", type=int, nargs="*", default=[10, 50, 100])
    parser.add_argument("--out", default="results/bench_secagg")
    args = parser.parse_args()
    console = Console(stderr=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("fedavg rounds", total=2 * args.reps)
        data = peer_data(args.peers)
        runs: dict[str, list[dict[str, Any]]] = {"plain": [], "secagg": []}
        for _ in range(args.reps):  # alternate, so a load change on the shared machine hits both
            for label, secagg in (("plain", None), ("secagg", {})):
                runs[label].append(trio.run(fedavg_rounds, args.peers, args.rounds, secagg, data))
                progress.advance(task)
        for label, done in runs.items():
            rows = [row for run in done for row in run["rounds"][1:]]
            results[label] = {"round_seconds": float(np.median([r["seconds"] for r in rows])),
                              "round_bytes": float(np.median([r["bytes"] for r in rows])),
                              "final_accuracy": done[-1]["final_accuracy"], "runs": done}
        num_params = shared_model(load_spec(MODEL)).num_params
        results["growth"] = growth(args.growth, num_params, progress)
    results["time_ratio"] = round(results["secagg"]["round_seconds"] / results["plain"]["round_seconds"], 3)
    results["bytes_ratio"] = round(results["secagg"]["round_bytes"] / results["plain"]["round_bytes"], 3)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    with open(out / "growth.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[k for k in results["growth"][0] if k != "phases"])
        writer.writeheader()
        writer.writerows({k: v for k, v in row.items() if k != "phases"} for row in results["growth"])
    plot(results, out / "growth.png")
    print(json.dumps({k: results[k] for k in ("time_ratio", "bytes_ratio")} | {
        "plain": {k: results["plain"][k] for k in ("round_seconds", "round_bytes", "final_accuracy")},
        "secagg": {k: results["secagg"][k] for k in ("round_seconds", "round_bytes", "final_accuracy")}}))
    table = Table(title=f"FedAvg, {args.peers} peers, {MODEL} on {DATA}")
    for col in ("", "round s", "round MB", "accuracy"):
        table.add_column(col)
    for label in ("plain", "secagg"):
        r = results[label]
        table.add_row(label, f"{r['round_seconds']:.2f}", f"{r['round_bytes'] / 1e6:.2f}", f"{r['final_accuracy']:.4f}")
    table.add_row("ratio", f"{results['time_ratio']:.2f}x", f"{results['bytes_ratio']:.2f}x", "")
    growth_table = Table(title="one secure-aggregation round, in-process peers")
    for col in ("peers", "variant", "k", "s", "s/peer", "MB", "x plain uploads"):
        growth_table.add_column(col)
    for r in results["growth"]:
        growth_table.add_row(str(r["peers"]), r["variant"], str(r["degree"]), f"{r['seconds']:.2f}",
                             f"{r['seconds_per_peer']:.3f}", f"{r['bytes'] / 1e6:.1f}", f"{r['bytes_ratio_vs_plain_upload']:.2f}")
    Console().print(table, growth_table)


if __name__ == "__main__":
    main()
