#!/usr/bin/env python
"""Chaos run of coordinator mode on loopback (bounded; prints JSON and a summary).

1. A coordinator process and N peer processes (DSSGD with DP on digits, synchronous rounds).
2. During round 2, ``kill -9`` 30 % of the peers: the coordinator closes rounds at quorum and goes
   on; the killed peers are restarted and rejoin.
3. ``kill -9`` the coordinator mid-run, restart it with ``--resume``: the resumed state must equal
   the last checkpoint plus the write-ahead log, and every upload that a peer saw acknowledged as
   accepted must be applied (acknowledged vs applied). Peers are restarted and the run finishes.
"""

from __future__ import annotations

import argparse
import json
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ringfl.checkpoint import load_checkpoint
from ringfl.config import load_config
from ringfl.coordinator import Coordinator
from ringfl.data import FASHION_MNIST_DIR
from ringfl.launch import child_env
from ringfl.metrics import read_jsonl
from ringfl.runtime.wal import UpdateLog
from ringfl.transport import TcpNetwork

ACK_LINE = re.compile(r"round\s+(\d+).*accepted (True|False)")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    """The processes of one chaos run, with their output files."""

    def __init__(self, folder: Path, peers: int, port: int) -> None:
        self.folder, self.peers, self.port = folder, peers, port
        self.coordinator: subprocess.Popen[bytes] | None = None
        self.procs: dict[int, subprocess.Popen[bytes]] = {}
        self.starts: dict[int, int] = {}
        self.env = child_env(peers + 1)

    def start_coordinator(self, resume: bool = False) -> None:
        command = [sys.executable, "-m", "ringfl", "coordinator", "--config", str(self.folder / "run.yaml"),
                   "--out", str(self.folder / "out"), "-v"] + (["--resume"] if resume else [])
        log = open(self.folder / f"coordinator{'-resumed' if resume else ''}.log", "wb")  # noqa: SIM115
        self.coordinator = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env)

    def start_peer(self, i: int) -> None:
        self.starts[i] = self.starts.get(i, 0) + 1
        log = open(self.folder / f"peer{i}-{self.starts[i]}.log", "wb")  # noqa: SIM115
        command = [sys.executable, "-m", "ringfl", "peer", "--coordinator", f"127.0.0.1:{self.port}",
                   "--name", f"peer{i}", "--peers", str(self.peers), "--index", str(i)]
        self.procs[i] = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env)

    def kill(self, proc: subprocess.Popen[bytes]) -> None:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    def acked(self) -> int:
        """Uploads peers saw acknowledged as accepted (from their per-round lines)."""
        count = 0
        for path in self.folder.glob("peer*-*.log"):
            count += sum(1 for m in ACK_LINE.finditer(path.read_text(errors="replace")) if m.group(2) == "True")
        return count

    def rounds_done(self) -> int:
        records = read_jsonl(self.folder / "out" / "metrics.jsonl")
        return max((r["round"] for r in records), default=-1)

    def wait_for(self, condition: Any, what: str, timeout: float = 120.0) -> None:
        deadline = time.time() + timeout
        while not any(condition(r) for r in read_jsonl(self.folder / "out" / "metrics.jsonl")):
            if time.time() > deadline:
                raise TimeoutError(f"timed out waiting for {what}")
            time.sleep(0.02)

    def wait_round(self, target: int, timeout: float = 120.0) -> None:
        deadline = time.time() + timeout
        while self.rounds_done() < target:
            if time.time() > deadline:
                raise TimeoutError(f"round {target} not reached")
            time.sleep(0.02)


def expected_after_resume(out: Path, epsilon: float) -> dict[str, Any]:
    """Checkpoint + the logged uploads after it: what the resumed coordinator must hold."""
    arrays, meta = load_checkpoint(out / "checkpoint.npz")
    params, stat = arrays["params"].copy(), arrays["stat"].copy()
    ledgers = {p: sum(e for e, _ in d["entries"]) for p, d in meta["ledgers"].items()}
    replayed = [u for u in UpdateLog(out / "updates.wal", params.size).read() if u.seq > meta["applied"]]
    for upload in replayed:
        idx = upload.vector.indices.astype(np.intp)
        params[idx] += upload.vector.values
        stat[idx] += 1
        ledgers[upload.sender] = ledgers.get(upload.sender, 0.0) + epsilon
    return {"round": meta["round"], "params": params, "stat": stat, "ledgers": ledgers,
            "applied": meta["applied"] + len(replayed), "replayed": len(replayed)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peers", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=14)
    parser.add_argument("--kill-fraction", type=float, default=0.3)
    parser.add_argument("--data", choices=["fashion-mnist", "digits"], default="fashion-mnist",
                        help="digits: the short mode the tests use (no dataset package needed)")
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ringfl-chaos-"))
    port = free_port()
    epsilon = 1e5  # large enough that the model still learns (NumericSparse noise ∝ c·γ/ε)
    # Rounds must last about a second, or the run is over before a killed peer can rejoin:
    # Fashion-MNIST shards when installed (or --data digits), else many local epochs on digits.
    fmnist = Path(FASHION_MNIST_DIR).is_dir() and args.data != "digits"
    data = ({"data": "fashion-mnist", "model": "mlp", "training": {"lr": 0.05, "batch_size": 64}} if fmnist
            else {"data": "digits", "model": "digits-mlp", "training": {"lr": 0.05, "epochs": 40}})
    config = {**data, "run_id": "chaos", "algorithm": "dssgd", "order": "sync", "rounds": args.rounds,
              "peers": args.peers,
              "min_peers": max(1, args.peers // 2), "round_timeout": 4.0, "join_timeout": 30.0, "port": port,
              "algorithm_settings": {"theta_u": 0.1, "gamma": 0.05, "epsilon": epsilon}}
    (folder / "run.yaml").write_text(yaml.safe_dump(config))
    cluster = Cluster(folder, args.peers, port)
    report: dict[str, Any] = {"folder": str(folder), "peers": args.peers}
    cluster.start_coordinator()
    for i in range(args.peers):
        cluster.start_peer(i)

    cluster.wait_round(1)
    victims = list(range(int(round(args.kill_fraction * args.peers))))
    for i in victims:  # while round 2 is under way
        cluster.kill(cluster.procs[i])
    report["peers_killed"] = len(victims)
    survivors = args.peers - len(victims)
    cluster.wait_for(lambda r: r["participants"] == survivors, "a round closed at quorum")
    for i in victims:
        cluster.start_peer(i)  # they rejoin and take part again
    cluster.wait_for(lambda r: r["participants"] == args.peers and r["round"] > 3, "the killed peers back")
    records = read_jsonl(folder / "out" / "metrics.jsonl")
    report["participants_per_round"] = [r["participants"] for r in records if r["round"] > 0]
    kill_after = cluster.rounds_done() + 1
    cluster.wait_round(kill_after)
    assert cluster.coordinator is not None
    cluster.kill(cluster.coordinator)
    for proc in cluster.procs.values():
        proc.wait(timeout=60)  # peers end when their coordinator is gone
    acked = cluster.acked()
    expected = expected_after_resume(folder / "out", epsilon)
    resumed = Coordinator(load_config(folder / "run.yaml"), TcpNetwork(), folder / "out", resume=True)
    report["coordinator_killed_in_round"] = expected["round"] + 1
    report["acknowledged_accepted"] = acked
    report["applied_after_resume"] = resumed.pool.stats.applied
    report["replayed_from_wal"] = expected["replayed"]
    checks = {
        "round": resumed.round == expected["round"],
        "params": bool(np.array_equal(resumed.algorithm.params, expected["params"])),
        "stat": bool(np.array_equal(resumed.algorithm.state()["stat"], expected["stat"])),
        "ledgers": all(abs(resumed.pool.ledgers[p].total - t) < 1e-9 for p, t in expected["ledgers"].items()),
        "every_acked_update_applied": resumed.pool.stats.applied >= acked,
    }
    report["checks"] = checks
    del resumed
    cluster.start_coordinator(resume=True)
    for i in range(args.peers):
        cluster.start_peer(i)
    cluster.wait_round(args.rounds, timeout=300)
    cluster.coordinator.wait(timeout=60)
    for proc in cluster.procs.values():
        proc.wait(timeout=60)
    records = read_jsonl(folder / "out" / "metrics.jsonl")
    report["final_round"] = records[-1]["round"]
    report["final_accuracy"] = records[-1]["accuracy"]
    report["ok"] = all(checks.values()) and report["final_round"] == args.rounds
    print(json.dumps(report, indent=2))
    print(f"\nkilled {len(victims)} of {args.peers} peers in round 2: rounds went on with "
          f"{report['participants_per_round']} participants; coordinator killed in round "
          f"{report['coordinator_killed_in_round']}: {acked} uploads acknowledged as accepted, "
          f"{report['applied_after_resume']} applied after --resume ({expected['replayed']} from the log); "
          f"checks {checks}; final round {report['final_round']} accuracy {report['final_accuracy']:.3f}")
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
