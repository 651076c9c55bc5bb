"""Ctrl-C of a real ring run (a bootstrap and 3 peer processes over loopback TCP) and its
``--resume``: every process says one line and exits 130, the resumed run finishes, and no round
is recorded twice."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest

from ringfl.launch import child_env
from tests.test_stop_and_mismatch import RINGFL, _wait_for_round, free_port

pytestmark = pytest.mark.e2e
ROUNDS = 8


def _start(tmp: Path, port: int, *extra: str) -> list[subprocess.Popen[str]]:
    topology, config = tmp / "tri.yaml", tmp / "run.yaml"
    bootstrap = subprocess.Popen([*RINGFL, "coordinator", "--config", str(config), "--topology", str(topology),
                                  "--port", str(port), "--out", str(tmp / "bootstrap"), *extra],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(4))
    peers = [subprocess.Popen([*RINGFL, "peer", "--topology", str(topology), "--id", str(i), "--coordinator",
                               f"127.0.0.1:{port}", "--out", str(tmp / f"peer{i}"), "--eval-samples", "200",
                               "--quiet", *extra],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=child_env(4))
             for i in range(3)]
    return [bootstrap, *peers]


def _rounds(folder: Path) -> list[int]:
    return [json.loads(line)["round"] for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_a_ring_run_stopped_with_ctrl_c_resumes_and_finishes(tmp_path):
    started = time.monotonic()
    (tmp_path / "tri.yaml").write_text("name: tri\nnodes: 3\ngenerator: {kind: ring}\n")
    (tmp_path / "run.yaml").write_text(f"algorithm: d-psgd\nrounds: {ROUNDS}\nround_timeout: 30\n"
                                       "training: {epochs: 2, batch_size: 16}\n")
    port = free_port()
    processes = _start(tmp_path, port)
    try:
        _wait_for_round(tmp_path / "bootstrap", 2, timeout=60)
        for process in processes[1:]:  # the peers first: none of them sees its bootstrap vanish
            process.send_signal(signal.SIGINT)
        time.sleep(0.3)
        processes[0].send_signal(signal.SIGINT)
        results = [p.communicate(timeout=30) for p in processes]
        for process, (_, err) in zip(processes, results):
            assert process.returncode == 130, err
            assert "continue with --resume" in err.strip().splitlines()[-1], err
        assert results[0][1].strip().splitlines()[-1].startswith("interrupted at round ")
        assert all(err.strip().splitlines()[-1].startswith(f"peer {i} interrupted at round ")
                   for i, (_, err) in enumerate(results[1:]))
        done = json.loads((tmp_path / "bootstrap" / "summary.json").read_text())["rounds_done"]
        assert 2 <= done < ROUNDS

        processes = _start(tmp_path, port, "--resume")
        results = [p.communicate(timeout=60) for p in processes]
        for process, (_, err) in zip(processes, results):
            assert process.returncode == 0, err
        assert f"resumed from {tmp_path / 'bootstrap'}: {done} of {ROUNDS} rounds done" in results[0][0]
        summary = json.loads((tmp_path / "bootstrap" / "summary.json").read_text())
        assert summary["rounds"] == ROUNDS and "interrupted" not in summary
        assert _rounds(tmp_path / "bootstrap") == list(range(1, ROUNDS + 1))
        for i in range(3):
            assert _rounds(tmp_path / f"peer{i}") == list(range(1, ROUNDS + 1))
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert time.monotonic() - started < 60
