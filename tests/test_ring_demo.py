"""scripts/ring_demo.sh right after the Quickstart: ringfl only in the repository's .venv, not on
PATH; the temporary results folder is removed."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]


def test_ring_demo_uses_the_repository_venv_and_cleans_up(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "ring_demo.sh", repo / "scripts" / "ring_demo.sh")
    (repo / "topologies").symlink_to(ROOT / "topologies")
    venv_bin = repo / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "ringfl").write_text(f'#!/bin/sh\nexec "{sys.executable}" -m ringfl "$@"\n')
    (venv_bin / "ringfl").chmod(0o755)
    temp = tmp_path / "tmp"
    temp.mkdir()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {"PATH": "/usr/bin:/bin", "HOME": os.environ.get("HOME", "/tmp"), "TMPDIR": str(temp),
           "PORT": str(port), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "MXNET_ENGINE_TYPE": "NaiveEngine"}
    assert shutil.which("ringfl", path=env["PATH"]) is None  # the situation the issue describes
    done = subprocess.run(["bash", str(repo / "scripts" / "ring_demo.sh"), "2"], env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "round   2" in done.stdout and "done: 2 rounds" in done.stdout, done.stdout[-2000:]
    assert list(temp.iterdir()) == []  # the results folder is gone
