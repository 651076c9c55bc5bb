"""Issue 11 as a user meets it: Ctrl-C / SIGTERM of a real coordinator process, peers that carry
on after ``--resume``, models that do not match, algorithms of the other mode."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

if sys.version_info < (3, 11):
    from exceptiongroup import BaseExceptionGroup

import pytest

from ringfl.cli import main
from ringfl.launch import child_env

pytestmark = pytest.mark.e2e
RINGFL = [sys.executable, "-m", "ringfl"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _coordinator(out: Path, port: int, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen([*RINGFL, "coordinator", "--port", str(port), "--peers", "2", "--min-peers", "2",
                             "--rounds", "6", "--out", str(out), *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(3))


def _peer(port: int, index: int) -> subprocess.Popen[str]:
    return subprocess.Popen([*RINGFL, "peer", "--coordinator", f"127.0.0.1:{port}", "--name", f"p{index}",
                             "--peers", "2", "--index", str(index), "--quiet", "--connect-wait", "60"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(3))


def _wait_for_round(out: Path, round_: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        path = out / "metrics.jsonl"
        if path.is_file() and any(json.loads(line)["round"] >= round_ for line in path.read_text().splitlines()):
            return
        time.sleep(0.1)
    raise AssertionError(f"round {round_} not reached within {timeout} s")


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_stopped_coordinator_says_one_line_and_peers_carry_on_after_resume(tmp_path, signum, status):
    port = free_port()
    out = tmp_path / "run"
    coordinator = _coordinator(out, port)
    peers = [_peer(port, i) for i in range(2)]
    try:
        _wait_for_round(out, 2)
        coordinator.send_signal(signum)
        _, err = coordinator.communicate(timeout=60)
        assert coordinator.returncode == status, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("interrupted at round "), err
        assert "continue with --resume" in lines[0] and signal.Signals(signum).name in lines[0]
        summary = json.loads((out / "summary.json").read_text())
        assert summary["interrupted"] == signal.Signals(signum).name and summary["rounds_done"] >= 2
        assert all(p.poll() is None for p in peers), "peers must keep retrying for --connect-wait"

        resumed = _coordinator(out, port, "--resume")
        text, err = resumed.communicate(timeout=240)
        assert resumed.returncode == 0, err
        assert f"resumed from {out}: {summary['rounds_done']} of 6 rounds done" in text
        for peer in peers:
            peer_out, peer_err = peer.communicate(timeout=60)
            assert peer.returncode == 0, peer_err
            assert "rejected" not in peer_err, peer_err  # no duplicate rejection after the resume
        final = json.loads((out / "summary.json").read_text())
        assert final["rounds"] == 6 and "interrupted" not in final
        assert final["rejected"] == 0, final["rejected_reasons"]
        rounds = [json.loads(line)["round"] for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert rounds[-1] == 6 and sorted(set(rounds)) == list(range(7))
    finally:
        for process in [coordinator, *peers]:
            if process.poll() is None:
                process.kill()
                process.wait()


def test_a_peer_config_with_another_model_fails_fast_naming_both_hashes(tmp_path):
    from ringfl.model import load_spec

    port = free_port()
    (tmp_path / "peer.yaml").write_text("model: mlp\n")
    coordinator = subprocess.Popen([*RINGFL, "coordinator", "--port", str(port), "--peers", "1", "--rounds", "1"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env(2))
    try:
        done = subprocess.run([*RINGFL, "peer", "--coordinator", f"127.0.0.1:{port}", "--config",
                               str(tmp_path / "peer.yaml"), "--quiet"],
                              capture_output=True, text=True, timeout=120, env=child_env(2))
    finally:
        coordinator.kill()
        coordinator.wait()
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: model mismatch"), done.stderr
    assert load_spec("mlp").hash[:16] in lines[0] and load_spec("digits-mlp").hash[:16] in lines[0]


def test_standalone_ring_peers_with_different_models_fail_fast(tmp_path):
    from ringfl.model import load_spec

    ports = [free_port(), free_port()]
    (tmp_path / "pair.yaml").write_text(
        f"name: pair\nnodes:\n  - {{id: a, address: '127.0.0.1:{ports[0]}'}}\n"
        f"  - {{id: b, address: '127.0.0.1:{ports[1]}'}}\nedges: [[a, b]]\n")
    narrow = tmp_path / "narrow.json"  # another model that fits digits, so only the spec differs
    narrow.write_text(json.dumps({"name": "digits-narrow", "input_shape": [64], "num_classes": 10, "layers": [
        {"type": "dense", "units": 32, "activation": "relu"}, {"type": "dense", "units": 10}]}))
    for name, model in (("a", "digits-mlp"), ("b", str(narrow))):
        (tmp_path / f"{name}.yaml").write_text(f"model: {model}\nrounds: 2\nround_timeout: 60\n")
    started = time.monotonic()
    processes = [subprocess.Popen([*RINGFL, "peer", "--topology", str(tmp_path / "pair.yaml"), "--id", name,
                                   "--config", str(tmp_path / f"{name}.yaml"), "--quiet"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(2))
                 for name in ("a", "b")]
    try:
        results = [p.communicate(timeout=90) for p in processes]
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert time.monotonic() - started < 60, "a mismatch must not wait for the round deadline"
    hashes = {load_spec("digits-mlp").hash[:16], load_spec(narrow).hash[:16]}
    for process, (_, err) in zip(processes, results):
        assert process.returncode == 2, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and "model mismatch" in lines[0], err
        assert all(h in lines[0] for h in hashes), lines[0]


@pytest.mark.parametrize("argv, message", [
    (["coordinator", "--topology", "topologies/ring.yaml", "--algorithm", "fedavg"], "coordinator mode only"),
    (["coordinator", "--algorithm", "choco"], "ring mode only"),
])
def test_an_algorithm_of_the_other_mode_is_refused_at_start_up(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_a_ring_config_without_an_algorithm_gets_gossip_dssgd(tmp_path):
    from ringfl.config import load_config, resolve_mode

    (tmp_path / "run.yaml").write_text("rounds: 2\n")
    config = load_config(tmp_path / "run.yaml").replace(topology="topologies/ring.yaml")
    assert resolve_mode(config, tmp_path / "run.yaml", None).algorithm == "gossip-dssgd"
    (tmp_path / "run.yaml").write_text("algorithm: fedavg\n")
    with pytest.raises(Exception, match="coordinator mode only"):
        resolve_mode(load_config(tmp_path / "run.yaml").replace(topology="x"), tmp_path / "run.yaml", None)


def test_join_timeout_is_honoured_without_peers(tmp_path, capsys):
    (tmp_path / "run.yaml").write_text("join_timeout: 1\n")
    started = time.monotonic()
    assert main(["coordinator", "--config", str(tmp_path / "run.yaml"), "--port", "0", "--peers", "2"]) == 2
    assert time.monotonic() - started < 20
    assert "joined within join_timeout 1 s" in capsys.readouterr().err


async def test_a_bootstrap_whose_peers_all_left_gives_up_at_join_timeout():
    """It used to fail re-linking ("cannot remove every node") or end with "done: 0 rounds"."""
    import trio

    from ringfl.errors import RunAborted
    from ringfl.peer import PeerOptions
    from ringfl.ring import Bootstrap, RingPeer
    from ringfl.topology import generate
    from ringfl.transport import MemoryNetwork
    from tests.helpers import demo_config

    config = demo_config(algorithm="gossip-dssgd", rounds=50, join_timeout=10.0,
                         algorithm_settings={"theta_u": 0.1})
    network = MemoryNetwork()
    bootstrap = Bootstrap(config, network, topology=generate("ring", 3))
    failures: list[BaseException] = []
    left = [0.0]

    async def serve(task_status=trio.TASK_STATUS_IGNORED) -> None:
        try:
            await bootstrap.run(task_status=task_status)
        except BaseException as exc:  # noqa: BLE001 - trio wraps it in a group: unwrapped below
            while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
                exc = exc.exceptions[0]
            failures.append(exc)

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            address = await nursery.start(serve)
            async with trio.open_nursery() as peers:
                for label in bootstrap.labels:
                    peers.start_soon(RingPeer(network, PeerOptions(coordinator=address, name=label,
                                                                   run_id=config.run_id, eval_samples=100)).run)
                while not bootstrap.history:
                    await trio.sleep(0.01)
                peers.cancel_scope.cancel()  # every peer goes away at once
            left[0] = trio.current_time()
    assert len(failures) == 1 and isinstance(failures[0], RunAborted), failures
    assert "every ring peer left after round" in str(failures[0])
    assert 1 <= len(bootstrap.history) < 50
    assert trio.current_time() - left[0] < 30  # join_timeout (10 s), not forever
