#!/usr/bin/env python
"""Benchmark the dashboard's cost to a run (prints JSON and a table).

A FedAvg run of N in-process peers on digits (coordinator and peers in one trio loop, in memory,
timed from start to the last round's record), once alone and once with one live run-view client: every 0.5 s the view takes a snapshot and
encodes it as the server-sent event a browser receives (what ``/api/events`` does on the
coordinator's loop). Reports wall time of both runs, snapshot time (mean / max) and size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import trio

from ringfl.dashboard.server import UPDATE_EVERY
from ringfl.dashboard.state import RunView
from tests.helpers import demo_config, serving


async def _run(peers: int, rounds: int, watched: bool) -> dict[str, Any]:
    from ringfl.peer import Peer, PeerOptions

    config = demo_config(peers=peers, min_peers=peers, rounds=rounds, round_timeout=120.0, join_timeout=120.0)
    times: list[float] = []
    sizes: list[int] = []
    started = time.perf_counter()
    async with serving(config) as (coordinator, network, address, nursery):
        view = RunView(coordinator)

        async def client() -> None:
            while True:
                t0 = time.perf_counter()
                sizes.append(len(f"data: {json.dumps(view.snapshot())}\n\n".encode()))
                times.append(time.perf_counter() - t0)
                await trio.sleep(UPDATE_EVERY)

        if watched:
            nursery.start_soon(client)
        for i in range(peers):
            nursery.start_soon(Peer(network, PeerOptions(coordinator=address, name=f"p{i}", peers=peers, index=i,
                                                         run_id=config.run_id)).run)
        coordinator.on_round.append(lambda r: r["round"] == rounds and nursery.cancel_scope.cancel())
    result: dict[str, Any] = {"wall_s": time.perf_counter() - started}
    if times:
        result.update(snapshots=len(times), snapshot_ms_mean=1000 * statistics.mean(times),
                      snapshot_ms_max=1000 * max(times), event_kib=max(sizes) / 1024)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", help="also write the results here as JSON")
    args = parser.parse_args()
    rows = []
    trio.run(_run, 2, 1, False)  # warm-up: data, model and MXNet loaded once
    for peers in args.peers:
        alone = trio.run(_run, peers, args.rounds, False)
        watched = trio.run(_run, peers, args.rounds, True)
        rows.append({"peers": peers, "rounds": args.rounds, "wall_s_alone": round(alone["wall_s"], 2),
                     **{k: round(v, 3) for k, v in watched.items()}})
    print(json.dumps(rows, indent=2))
    print(f"{'peers':>6} {'alone s':>8} {'watched s':>10} {'snapshots':>10} {'ms mean':>8} {'ms max':>7} {'KiB':>6}")
    for r in rows:
        print(f"{r['peers']:>6} {r['wall_s_alone']:>8.2f} {r['wall_s']:>10.2f} {r['snapshots']:>10} "
              f"{r['snapshot_ms_mean']:>8.2f} {r['snapshot_ms_max']:>7.2f} {r['event_kib']:>6.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
