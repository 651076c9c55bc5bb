#!/usr/bin/env python
"""Benchmark the coordinator (prints JSON and a table).

(a) round time: FedAvg, 10 peer processes on loopback, MLP on Fashion-MNIST (6,000 images each,
    lr 0.05, batch 64), against the pure compute time of the same ten local epochs done one after
    another in one process. Goal: round time <= 1.10 x compute / parallelism (2 cores here).
(b) pool throughput: many concurrent synthetic peers on loopback TCP upload sparse updates
    (θu = 0.1 of the 109,386-parameter MLP) as fast as acknowledgements come back; the coordinator
    decides and applies each one (asynchronous DSSGD). Goal: >= 2,000 accepted uploads/s.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any

import numpy as np
import trio

from ringfl.config import AcceptanceConfig, RunConfig, TrainingConfig
from ringfl.coordinator import Coordinator
from ringfl.data import load_source, peer_indices, prepare
from ringfl.launch import child_env, run_peer_processes
from ringfl.model import load_spec
from ringfl.model.runtime import shared_model
from ringfl.protocol import (
    Accept,
    Ack,
    Connection,
    JoinRequest,
    PeerReport,
    Role,
    RoundStart,
    SpecConfirm,
    Upload,
)
from ringfl.transport import TcpNetwork, dial
from ringfl.vectors import SparseVector

TRAINING = TrainingConfig(lr=0.05, batch_size=64)


def _shards(peers: int, which: list[int]) -> tuple[Any, np.ndarray, list[tuple[np.ndarray, np.ndarray]]]:
    spec = load_spec("mlp")
    model = shared_model(spec)
    splits = load_source("fashion-mnist")
    shards = [peer_indices(splits.train.y, "iid", peers, 0, i) for i in which]
    data = [(prepare(splits.train.x[s], spec.input_shape), splits.train.y[s]) for s in shards]
    params = model.init_params(0)
    model.train_sync(params, *data[0], lr=0.05, batch_size=64)  # warm up the cached graph
    return model, params, data


def sequential_compute(peers: int) -> float:
    """Seconds to train every peer's shard for one epoch, one after another, in this process."""
    model, params, data = _shards(peers, list(range(peers)))
    start = time.perf_counter()
    for x, y in data:
        model.train_sync(params, x, y, lr=0.05, batch_size=64)
    return time.perf_counter() - start


def bare_train(peers: int, index: int) -> None:
    """Internal: one peer's local epoch in a bare process, started when stdin says go."""
    model, params, data = _shards(peers, [index])
    print("ready", flush=True)
    sys.stdin.readline()
    model.train_sync(params, *data[0], lr=0.05, batch_size=64)
    print("done", flush=True)


def parallel_compute(peers: int) -> float:
    """Seconds for the same epochs in ``peers`` bare processes at once (no ringfl networking):
    what the machine itself achieves when that many MXNet processes share its cores."""
    env = child_env(peers)
    procs = [subprocess.Popen([sys.executable, __file__, "--bare-train", str(i), "--peers", str(peers)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env) for i in range(peers)]
    for proc in procs:
        assert proc.stdout is not None and proc.stdout.readline().strip() == b"ready"
    start = time.perf_counter()
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
    for proc in procs:  # the time to the last "done", not to exit (MXNet's teardown is slow)
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != b"done":
            raise RuntimeError("a bare training process failed")
    elapsed = time.perf_counter() - start
    for proc in procs:
        proc.wait()
    return elapsed


async def federated_rounds(peers: int, rounds: int, max_parallel: int | None = None) -> dict[str, Any]:
    config = RunConfig(run_id="bench", model="mlp", data="fashion-mnist", algorithm="fedavg", rounds=rounds,
                       peers=peers, min_peers=peers, host="127.0.0.1", port=0, training=TRAINING,
                       max_parallel=max_parallel)
    coordinator = Coordinator(config, TcpNetwork())
    timings: list[float] = []
    original = coordinator._play_round

    async def timed_round() -> list[str]:
        start = time.perf_counter()
        result = await original()
        timings.append(time.perf_counter() - start)
        return result

    coordinator._play_round = timed_round  # type: ignore[method-assign]
    async with trio.open_nursery() as nursery:
        address = await nursery.start(coordinator.run)
        commands = [[sys.executable, "-m", "ringfl", "peer", "--coordinator", address, "--quiet", "--name",
                     f"p{i}", "--peers", str(peers), "--index", str(i)] for i in range(peers)]
        await run_peer_processes(commands)
    with_eval = np.diff([r["seconds"] for r in coordinator.history]).tolist()
    return {"round_seconds": timings, "round_seconds_with_eval": with_eval,
            "accuracy": [r["accuracy"] for r in coordinator.history]}


def synthetic_updates(n: int, count: int = 8) -> list[SparseVector]:
    """Read-only updates, so each one's bitmap is packed once (the clients share the 2 cores)."""
    rng = np.random.default_rng(0)
    updates = [SparseVector.from_indices(n, rng.choice(n, n // 10, replace=False),
                                         rng.normal(0, 1e-4, n // 10).astype(np.float32)) for _ in range(count)]
    for update in updates:
        update.indices.flags.writeable = update.values.flags.writeable = False
    return updates


async def synthetic_peers(address: str, first: int, clients: int, seconds: float) -> None:
    """Peers that only upload (as fast as acks come back); run in their own process."""
    async def one(i: int) -> None:
        stream = await dial(TcpNetwork(), address, Connection(Role.CLIENT, local_id=f"s{i}", run_id="bench"))
        await stream.send(JoinRequest())
        accept = await stream.receive()
        assert isinstance(accept, Accept)
        updates = synthetic_updates(accept.num_params)
        await stream.send(SpecConfirm(spec_hash=accept.spec_hash))
        await stream.receive()
        await stream.send(PeerReport(metrics={"ready": True}))
        while not isinstance(await stream.receive(), RoundStart):
            pass
        k = 0
        while True:
            await stream.send(Upload(vector=updates[k % len(updates)], round=k, base_version=0, num_samples=1))
            while not isinstance(await stream.receive(), Ack):
                pass
            k += 1

    with trio.move_on_after(seconds):
        async with trio.open_nursery() as nursery:
            for i in range(first, first + clients):
                nursery.start_soon(one, i)


async def pool_throughput(clients: int, seconds: float, processes: int = 2) -> dict[str, Any]:
    """The coordinator in this process; synthetic peers in ``processes`` other processes."""
    config = RunConfig(run_id="bench", model="mlp", data="fashion-mnist", algorithm="dssgd", order="async",
                       rounds=10**9, peers=clients, min_peers=clients, host="127.0.0.1", port=0, eval_every=10**9,
                       checkpoint_every=10**9, acceptance=AcceptanceConfig(max_staleness=10**9),
                       algorithm_settings={"theta_u": 0.1})
    coordinator = Coordinator(config, TcpNetwork())
    timing: dict[str, float] = {}
    per = clients // processes
    async with trio.open_nursery() as nursery:
        address = await nursery.start(coordinator.run)
        for p in range(processes):
            command = [sys.executable, __file__, "--synthetic", address, "--first", str(p * per),
                       "--clients", str(per), "--seconds", str(seconds + 30)]
            nursery.start_soon(trio.run_process, command)
        while coordinator.pool.stats.applied < clients:  # everyone connected and uploading
            await trio.sleep(0.1)
        await trio.sleep(1.0)  # warm up
        start_count, start = coordinator.pool.stats.applied, time.perf_counter()
        await trio.sleep(seconds)
        timing["count"] = coordinator.pool.stats.applied - start_count
        timing["elapsed"] = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return {"clients": clients, "client_processes": processes,
            "accepted_per_s": timing["count"] / timing["elapsed"],
            "pool_peak_depth": coordinator.pool.stats.peak_depth,
            "peak_waiting_senders": coordinator.pool.stats.peak_waiting_senders,
            "nnz_per_upload": coordinator.num_params // 10, "rejected": coordinator.pool.stats.rejected}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--synthetic", metavar="ADDRESS", help=argparse.SUPPRESS)  # internal: client process
    parser.add_argument("--first", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--bare-train", type=int, metavar="INDEX", help=argparse.SUPPRESS)  # internal
    parser.add_argument("--only", choices=["rounds", "pool"], help="run one part")
    args = parser.parse_args()
    if args.synthetic:
        trio.run(synthetic_peers, args.synthetic, args.first, args.clients, args.seconds)
        return
    if args.bare_train is not None:
        bare_train(args.peers, args.bare_train)
        return
    cores = len(os.sched_getaffinity(0))
    if args.only == "pool":
        pool = trio.run(pool_throughput, args.clients, args.seconds)
        print(json.dumps(pool, indent=2))
        return
    compute = sequential_compute(args.peers)
    bare = float(np.median([parallel_compute(args.peers) for _ in range(3)]))
    rounds = trio.run(federated_rounds, args.peers, args.rounds)
    pool = trio.run(pool_throughput, args.clients, args.seconds)
    round_time = float(np.median(rounds["round_seconds"]))
    result = {
        "cores": cores, "peers": args.peers, "sequential_compute_s": compute,
        "compute_over_parallelism_s": compute / min(cores, args.peers), "median_round_s": round_time,
        "ratio_to_goal_base": round_time / (compute / min(cores, args.peers)),
        "bare_parallel_compute_s": bare, "ratio_to_bare_parallel": round_time / bare,
        "rounds": rounds, "pool": pool,
    }
    print(json.dumps(result, indent=2))
    print(f"\n(a) {args.peers} peers: median round {round_time:.2f} s (without evaluation); sequential compute "
          f"{compute:.2f} s / {min(cores, args.peers)} cores = {result['compute_over_parallelism_s']:.2f} s "
          f"-> ratio {result['ratio_to_goal_base']:.2f} (goal <= 1.10)")
    print(f"    the same epochs in {args.peers} bare processes at once (no networking): {bare:.2f} s "
          f"-> ringfl round / bare parallel = {result['ratio_to_bare_parallel']:.2f}")
    print(f"(b) pool: {pool['accepted_per_s']:.0f} sparse uploads/s accepted from {args.clients} concurrent "
          f"peers (goal >= 2000); peak pool depth {pool['pool_peak_depth']}, "
          f"waiting senders {pool['peak_waiting_senders']}")


if __name__ == "__main__":
    main()
