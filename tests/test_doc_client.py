"""docs/protocol.md is enough to write a client: tests/doc_client.py (stdlib, numpy, msgpack and
the document's constants, no ringfl) takes part in a whole run of a real coordinator process."""

from __future__ import annotations

import ast
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from tests import doc_client

pytestmark = pytest.mark.e2e
ROOT = Path(__file__).resolve().parents[1]


def test_the_doc_client_imports_nothing_but_stdlib_numpy_and_msgpack() -> None:
    tree = ast.parse((ROOT / "tests" / "doc_client.py").read_text())
    modules = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
               for alias in node.names}
    modules |= {node.module.split(".")[0] for node in ast.walk(tree)
                if isinstance(node, ast.ImportFrom) and node.module}
    assert modules - set(sys.stdlib_module_names) == {"numpy", "msgpack"}


def _digits_parts(parts: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)  # §12.2: inputs as the model sees them
    order = np.random.default_rng(1).permutation(len(x))
    return [(x[rows], digits.target[rows]) for rows in np.array_split(order, parts)]


def test_two_doc_clients_complete_a_real_run(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    out = tmp_path / "run"
    coordinator = subprocess.Popen([sys.executable, "-m", "ringfl", "coordinator", "--port", str(port),
                                    "--peers", "2", "--min-peers", "2", "--rounds", "3", "--out", str(out)],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    results: dict[str, object] = {}

    def client(name: str, x: np.ndarray, y: np.ndarray) -> None:
        import time

        for _ in range(100):  # the coordinator process is still starting
            try:
                results[name] = doc_client.take_part(f"127.0.0.1:{port}", name, x, y)
                return
            except ConnectionRefusedError:
                time.sleep(0.2)
            except Exception as exc:  # noqa: BLE001 - reported below
                results[name] = exc
                return

    threads = [threading.Thread(target=client, args=(f"doc{i}", *part))
               for i, part in enumerate(_digits_parts(2))]
    for thread in threads:
        thread.start()
    try:
        _, err = coordinator.communicate(timeout=180)
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
    for thread in threads:
        thread.join(timeout=30)
    assert coordinator.returncode == 0, err
    for name, records in results.items():
        assert isinstance(records, list), f"{name}: {records!r}"
        assert [r["round"] for r in records] == [0, 1, 2] and all(r["accepted"] for r in records), records
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rounds"] == 3 and summary["accepted"] == 6 and summary["rejected"] == 0
    accuracy = summary["accuracy_per_round"]
    assert accuracy[-1] > 0.8 and accuracy[-1] > accuracy[0] + 0.5, accuracy  # the doc's layout is right


def test_a_non_finite_upload_gets_a_reject_ack_not_a_closed_session(tmp_path: Path) -> None:
    """§6: the coordinator answers NaN with Ack(accepted=false, reason=3) and the session goes on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    coordinator = subprocess.Popen([sys.executable, "-m", "ringfl", "coordinator", "--port", str(port),
                                    "--peers", "1", "--rounds", "1"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        import time

        for _ in range(100):
            try:
                client = doc_client.DocClient(f"127.0.0.1:{port}", "nan")
                break
            except ConnectionRefusedError:
                time.sleep(0.2)
        spec, info = client.join(10)
        client.send(doc_client.PEER_REPORT, {"metrics": {"ready": True, "num_samples": 10}})
        _, start, _ = client.expect(doc_client.ROUND_START)
        client.send(doc_client.PARAMS_REQUEST, {"round": start["round"], "fraction": 1.0})
        _, params, buffers = client.expect(doc_client.PARAMS)
        bad = np.full(params["vector"]["size"], np.nan, np.float32)
        client.send(doc_client.UPLOAD, {"round": start["round"], "vector": {"encoding": "dense", "size": bad.size},
                                        "num_samples": 10, "base_version": params["model_version"],
                                        "kind": "delta", "info": {}}, [bad])
        _, ack, _ = client.expect(doc_client.ACK)
        assert not ack["accepted"] and ack["reason"] == 3 and ack["detail"] == "non finite", ack
        code, _, _ = client.expect(doc_client.END_OF_RUN, doc_client.ROUND_START)
        assert code == doc_client.END_OF_RUN
        client.send(doc_client.GOODBYE, {"reason": "done"})
        client.close()
        assert coordinator.wait(timeout=60) == 0
    finally:
        if coordinator.poll() is None:
            coordinator.kill()
            coordinator.wait()
