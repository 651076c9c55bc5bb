#!/usr/bin/env python
"""Where the trio thread's CPU goes in one round of the 100-peer exchange-every-batch ring.

The ``--overhead`` setting of bench_decentral.py (100 in-process ring peers, Fashion-MNIST MLP,
an exchange after every mini-batch), with the exchange's hot functions wrapped to add up their
own thread CPU time (``time.thread_time_ns``, nested calls subtracted) during the second round.
Training runs on MXNet's threads; everything else (selection, codec, mixing, trio, transport,
ring bookkeeping) on the main thread, whose round-2 CPU is printed split by component, the
remainder being per-message machinery (trio tasks, deadlines, locks, acks, ring code).

    python scripts/profile_exchange.py gossip-dssgd     # or d-psgd; --peers N
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_decentral as bench  # noqa: E402

import ringfl.algorithms.d_psgd as d_psgd  # noqa: E402
import ringfl.algorithms.gossip as gossip  # noqa: E402
import ringfl.protocol.codec as codec  # noqa: E402
import ringfl.protocol.state as state  # noqa: E402
import ringfl.vectors as vectors  # noqa: E402
from ringfl.config import PartitionConfig  # noqa: E402
from ringfl.peer import PeerOptions  # noqa: E402
from ringfl.ring import Bootstrap, RingPeer  # noqa: E402
from ringfl.topology import generate  # noqa: E402
from ringfl.transport import MemoryNetwork  # noqa: E402

MAIN = threading.main_thread()
_totals: dict[str, int] = {}
_calls: dict[str, int] = {}
_stack: list[int] = []


def _wrap(owner: Any, attr: str, label: str) -> None:
    fn = getattr(owner, attr)

    @functools.wraps(fn)
    def timed(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is not MAIN:
            return fn(*args, **kwargs)
        start = time.thread_time_ns()
        _stack.append(0)
        try:
            return fn(*args, **kwargs)
        finally:
            spent = time.thread_time_ns() - start
            children = _stack.pop()
            _totals[label] = _totals.get(label, 0) + spent - children
            _calls[label] = _calls.get(label, 0) + 1
            if _stack:
                _stack[-1] += spent

    setattr(owner, attr, timed)


def _instrument() -> None:
    _wrap(gossip, "select_update", "selection (clip + top-k)")
    for cls in (gossip.SelectiveGossip, d_psgd.DPSGD):
        _wrap(cls, "outgoing", "outgoing: copy, delta")
        _wrap(cls, "incoming", "incoming (bookkeeping)")
        _wrap(cls, "mix", "mix (scatter-add)")
    _wrap(vectors.SparseVector, "bitmap", "encode: bitmap")
    _wrap(state, "encode_parts", "encode: frame")
    _wrap(codec, "_bitmap_indices", "decode: bitmap -> indices")
    _wrap(codec, "decode_body", "decode: frame")


def _main_cpu() -> float:
    return time.clock_gettime(time.pthread_getcpuclockid(MAIN.ident))


async def _ring(config: Any, peers: int) -> list[tuple[float, float, float, dict, dict]]:
    marks: list[tuple[float, float, float, dict, dict]] = []
    network = MemoryNetwork()
    topology = generate("ring", peers)
    bootstrap = Bootstrap(config, network, topology=topology)
    bootstrap.on_round.append(lambda record: marks.append(
        (time.perf_counter(), bench.process_cpu(), _main_cpu(), dict(_totals), dict(_calls))))
    async with trio.open_nursery() as nursery:
        address = await nursery.start(bootstrap.run)
        for i, label in enumerate(topology.labels):
            options = PeerOptions(coordinator=address, name=label, peers=topology.n, index=i,
                                  run_id=config.run_id, eval_samples=1000)
            nursery.start_soon(RingPeer(network, options).run)
    return marks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("algorithm", nargs="?", default="gossip-dssgd", choices=["gossip-dssgd", "d-psgd"])
    parser.add_argument("--peers", type=int, default=100)
    args = parser.parse_args()
    settings = {"theta_u": 0.1} if args.algorithm == "gossip-dssgd" else {}
    config = bench.run_config(args.peers, 2, args.algorithm, {**settings, "exchange_every": 1},
                              PartitionConfig(kind="iid"), 0)
    _instrument()
    (wall0, cpu0, main0, totals0, calls0), (wall1, cpu1, main1, totals1, calls1) = trio.run(_ring, config, args.peers)[-2:]
    main_cpu = main1 - main0
    print(f"{args.algorithm}, {args.peers} peers, round 2: wall {wall1 - wall0:.2f} s, process CPU {cpu1 - cpu0:.2f} s, "
          f"main-thread CPU {main_cpu:.2f} s, load average {os.getloadavg()[0]:.2f}")
    accounted = 0.0
    for label in sorted(totals1, key=lambda k: totals0.get(k, 0) - totals1[k]):
        seconds = (totals1[label] - totals0.get(label, 0)) / 1e9
        calls = calls1[label] - calls0.get(label, 0)
        accounted += seconds
        print(f"  {label:28s} {seconds:6.3f} s {calls:7d} calls {seconds / max(calls, 1) * 1e6:8.1f} us/call")
    print(f"  {'rest (trio, transport, ring)':28s} {main_cpu - accounted:6.3f} s")


if __name__ == "__main__":
    main()
