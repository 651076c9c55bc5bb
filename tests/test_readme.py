"""Every ```bash block of README.md, run as written (with the substitutions listed here), and
its results checked — a README edit is tested by the next run of the suite."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]

SKIPPED_COMMANDS = (
    "python3.11 -m venv .venv",  # the test already runs inside an installed environment
    ".venv/bin/pip install -e .",  # installing is not the suite's business
    '.venv/bin/pip install -e ".[test]"',
    ".venv/bin/python -m pytest",  # the suite itself
)
"""``&&``-separated commands not run here; everything else runs verbatim."""

SUBSTITUTIONS = (
    (r"\.venv/bin/ringfl\b", "ringfl"),  # `ringfl` on PATH is this interpreter's ringfl (see _shim)
    (r"--rounds \d+", "--rounds 2"),  # short: the rounds themselves are tested elsewhere
    (r"--host 0\.0\.0\.0", "--host 127.0.0.1"),  # loopback only
    (r"\bcoord\.example\b", "127.0.0.1"),  # "the coordinator's machine" is this one
    (r"npz:/data/mine\.npz", "npz:mine.npz"),  # a data owner's file: made by _fixtures
)
"""Ports are substituted too: each ``--port N`` gets a free port, everywhere N appears."""


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)```", text, flags=re.S)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def prepare(block: str) -> str:
    """The block as this test runs it: skipped commands dropped, substitutions and free ports,
    and a foreground ``ringfl coordinator`` (another machine in the README) put in the background."""
    lines = []
    for line in block.splitlines():
        commands = [c.strip() for c in line.split("&&")]
        kept = [c for c in commands if not c.startswith(SKIPPED_COMMANDS)]
        if kept:
            lines.append(" && ".join(kept))
    text = "\n".join(lines)
    for pattern, replacement in SUBSTITUTIONS:
        text = re.sub(pattern, replacement, text)
    for port in set(re.findall(r"--port (\d+)", text)):
        text = re.sub(rf"\b{port}\b", str(_free_port()), text)
    if re.search(r"^ringfl coordinator .*[^&]$", text, flags=re.M):
        text = re.sub(r"^(ringfl coordinator .*[^&])$", r"\1 &", text, flags=re.M) + "\nwait\n"
    return text


def _shim(tmp: Path) -> Path:
    """A ``ringfl`` on PATH that runs this checkout with this interpreter."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    script = bin_dir / "ringfl"
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m ringfl "$@"\n')
    script.chmod(0o755)
    return bin_dir


def _fixtures(work: Path) -> None:
    """What the README assumes the reader has: their run config and their data file."""
    from sklearn.datasets import load_digits

    (work / "topologies").symlink_to(ROOT / "topologies")
    (work / "run.yaml").write_text("rounds: 2\njoin_timeout: 15\n")  # --peers 10, one shows up
    digits = load_digits()
    rows = np.random.default_rng(0).permutation(len(digits.target))[:400]
    np.savez(work / "mine.npz", x=(digits.images[rows] / 16.0).astype(np.float32), y=digits.target[rows])


def _check(block: str, work: Path, done: subprocess.CompletedProcess[str]) -> None:
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "Traceback" not in output and "error:" not in output, output[-3000:]
    if re.search(r"\bringfl demo\b", block):
        match = re.search(r"final accuracy ([0-9.]+)", output)
        assert match and float(match.group(1)) >= 0.95, output[-2000:]  # the demo's promise
    for out in re.findall(r"ringfl coordinator .*--out (\S+)", block):
        summary = json.loads((work / out / "summary.json").read_text())
        assert summary["rounds"] == 2 and "interrupted" not in summary, summary
        accuracy = summary["accuracy_per_round"]
        assert accuracy[-1] > accuracy[0], summary  # it learned
        assert (work / out / "report.md").is_file() and (work / out / "plots" / "accuracy_vs_round.png").is_file()


def test_readme_has_the_blocks_this_test_knows() -> None:
    blocks = bash_blocks((ROOT / "README.md").read_text())
    assert any("ringfl demo" in b for b in blocks)
    assert any("--topology topologies/ring.yaml" in b for b in blocks)
    assert any("ringfl peer --coordinator" in b for b in blocks)


@pytest.mark.parametrize("block", bash_blocks((ROOT / "README.md").read_text()),
                         ids=lambda b: re.sub(r"\W+", "-", b.strip().splitlines()[-1])[:50])
def test_readme_block_runs(block: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    _fixtures(work)
    script = prepare(block)
    if not script.strip():
        pytest.skip("every command of this block is on the skip list")
    env = dict(os.environ, PATH=f"{_shim(tmp_path)}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", MXNET_ENGINE_TYPE="NaiveEngine")
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", script], cwd=work, env=env,
                          capture_output=True, text=True, timeout=300)
    _check(script, work, done)
