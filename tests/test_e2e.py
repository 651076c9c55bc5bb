"""End to end with real processes on loopback TCP: what a user runs on several machines."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest
import trio

from ringfl.cli import main
from ringfl.coordinator import Coordinator
from ringfl.launch import peer_command, run_peer_processes
from ringfl.ring import Bootstrap
from ringfl.transport import TcpNetwork
from tests.helpers import demo_config

pytestmark = pytest.mark.e2e


async def test_coordinator_and_three_peer_processes_learn_round_over_round():
    config = demo_config(host="127.0.0.1", rounds=3, peers=3, min_peers=3)
    coordinator = Coordinator(config, TcpNetwork())
    async with trio.open_nursery() as nursery:
        address = await nursery.start(coordinator.run)
        commands = [peer_command(address, f"proc{i}", "--peers", "3", "--index", str(i)) for i in range(3)]
        results = await run_peer_processes(commands, capture=True)
    assert all(r.returncode == 0 for r in results)
    accuracy = [r["accuracy"] for r in coordinator.history]
    assert accuracy[1] < accuracy[2] < accuracy[3], accuracy  # the seed's stale-model bug would fail this
    assert coordinator.pool.stats.applied == 9
    assert coordinator.history[-1]["bytes_in"] > 0


def _ring_peer(address: str, node: int) -> list[str]:
    return [sys.executable, "-m", "ringfl", "peer", "--coordinator", address, "--topology",
            "topologies/ring.yaml", "--id", str(node), "--quiet", "--eval-samples", "200"]


async def test_ring_of_8_processes_survives_a_killed_peer():
    config = demo_config(host="127.0.0.1", rounds=5, topology="topologies/ring.yaml", algorithm="gossip-dssgd",
                         round_timeout=10.0, algorithm_settings={"theta_u": 0.1})
    bootstrap = Bootstrap(config, TcpNetwork())
    processes: list[trio.Process] = []
    async with trio.open_nursery() as nursery:
        address = await nursery.start(bootstrap.run)
        for node in range(8):
            processes.append(await trio.lowlevel.open_process(_ring_peer(address, node),
                                                              stdout=subprocess.DEVNULL))
        with trio.fail_after(120):
            while len(bootstrap.history) < 2:
                await trio.sleep(0.05)
        processes[3].send_signal(signal.SIGKILL)
        with trio.fail_after(120):
            for process in processes:
                await process.wait()
    history = bootstrap.history
    assert [r["round"] for r in history] == [1, 2, 3, 4, 5]
    assert history[1]["peers_reporting"] == 8
    assert history[-1]["peers_reporting"] == 7 and history[-1]["dead"] == ["3"]
    assert history[-1]["accuracy"] > history[0]["accuracy"]
    late_rounds = [r["seconds"] for r in history[2:]]
    assert max(b - a for a, b in zip(late_rounds, late_rounds[1:])) < config.round_timeout  # re-linked, no waiting
    assert [p.returncode for i, p in enumerate(processes) if i != 3] == [0] * 7


def test_demo_command_runs(capsys):
    assert main(["demo", "--peers", "2", "--rounds", "2"]) == 0
    out = capsys.readouterr().out
    assert "round   2" in out and "final accuracy" in out


def test_chaos_short_mode_kills_peers_and_the_coordinator():
    """scripts/chaos_coordinator.py in its short mode: kill -9 of a third of the peers and of the
    coordinator; rounds go on at quorum, killed peers rejoin, --resume loses nothing acknowledged."""
    import json

    done = subprocess.run([sys.executable, "scripts/chaos_coordinator.py", "--data", "digits", "--peers", "6",
                           "--rounds", "10"], capture_output=True, text=True, timeout=400)
    report = json.JSONDecoder().raw_decode(done.stdout[done.stdout.index("{"):])[0]
    assert done.returncode == 0 and report["ok"], done.stdout[-2000:] + done.stderr[-2000:]
    assert report["peers_killed"] == 2 and min(report["participants_per_round"]) == 4
    assert report["applied_after_resume"] >= report["acknowledged_accepted"]
    assert all(report["checks"].values()) and report["final_round"] == 10
