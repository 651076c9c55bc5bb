"""Layer rules a grep can check: MXNet stays behind ringfl/model/, pickle never crosses a boundary."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "ringfl"
MXNET_MODULES = {"model/gluon.py", "model/per_example.py", "model/batches.py"}


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_only_the_model_package_imports_mxnet():
    importers = {p.relative_to(ROOT).as_posix() for p in ROOT.rglob("*.py") if "mxnet" in _imports(p)}
    assert importers == MXNET_MODULES


def test_nothing_imports_pickle():
    assert not [p for p in ROOT.rglob("*.py") if "pickle" in _imports(p) or "cPickle" in _imports(p)]


def test_the_protocol_algorithms_and_topology_load_without_mxnet():
    code = ("import sys, ringfl.protocol, ringfl.algorithms, ringfl.topology, ringfl.transport, ringfl.privacy; "
            "sys.exit('mxnet' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
