"""Table-driven: every bad input gets one line ``error: ...``, a non-zero exit, nothing half-written."""

from __future__ import annotations

import pytest

from ringfl.cli import main

BAD_FILES = {
    "unknown-field.yaml": "roundz: 3\n",
    "malformed.yaml": "rounds: [1, 2\n",
    "bad-type.yaml": "training: {lr: fast}\n",
    "bad-algorithm.yaml": "algorithm: magic\n",
    "bad-setting.yaml": "algorithm: dssgd\nalgorithm_settings: {theta_u: 2}\n",
    "disconnected.yaml": "nodes: 4\nedges: [[0, 1], [2, 3]]\n",
    "self-loop.yaml": "nodes: 3\nedges: [[0, 1], [1, 2], [2, 2]]\n",
    "unknown-generator.yaml": "nodes: 4\ngenerator: {kind: hypercube}\n",
    "bad-spec.json": '{"input_shape": [64], "layers": [{"type": "warp"}]}',
    "not-json.json": "{oops",
    "pool-too-small.json": '{"input_shape": [1, 4, 4], "layers": [{"type": "maxpool", "pool": 5}, {"type": "dense", "units": 10}]}',
    "no-xy.npz": None,
    "per-peer-no-token.yaml": "token_per_peer: true\n",
    "members-below-peers.yaml": "peers: 8\nmax_members: 4\n",
}

CASES = [
    (["coordinator", "--config", "{d}/unknown-field.yaml", "--out", "{d}/out"], "unknown field 'roundz'"),
    (["coordinator", "--config", "{d}/malformed.yaml", "--out", "{d}/out"], "not valid JSON/YAML"),
    (["coordinator", "--config", "{d}/bad-type.yaml", "--out", "{d}/out"], "training.lr"),
    (["coordinator", "--config", "{d}/bad-algorithm.yaml", "--out", "{d}/out"], "unknown"),
    (["coordinator", "--config", "{d}/bad-setting.yaml", "--out", "{d}/out"], "theta_u"),
    (["coordinator", "--config", "{d}/missing.yaml", "--out", "{d}/out"], "does not exist"),
    (["coordinator", "--model", "{d}/bad-spec.json", "--out", "{d}/out"], "unknown type 'warp'"),
    (["coordinator", "--model", "{d}/not-json.json", "--out", "{d}/out"], "not valid JSON/YAML"),
    (["coordinator", "--model", "{d}/pool-too-small.json", "--out", "{d}/out"], "below 1x1"),
    (["coordinator", "--data", "fashion-mnist:{d}/nothing", "--out", "{d}/out"], "apt-get install dataset-fashion-mnist"),
    (["coordinator", "--data", "npz:{d}/no-xy.npz", "--out", "{d}/out"], "'x'"),
    (["coordinator", "--topology", "{d}/disconnected.yaml", "--out", "{d}/out"], "disconnected"),
    (["coordinator", "--topology", "{d}/self-loop.yaml", "--out", "{d}/out"], "self loop"),
    (["coordinator", "--topology", "{d}/unknown-generator.yaml", "--out", "{d}/out"], "hypercube"),
    (["coordinator", "--resume", "--out", "{d}/out"], "no checkpoint"),
    (["coordinator", "--config", "{d}/per-peer-no-token.yaml", "--out", "{d}/out"], "token_per_peer needs a run token"),
    (["coordinator", "--config", "{d}/members-below-peers.yaml", "--out", "{d}/out"], "max_members must be >= peers"),
    (["token", "peer", "alice", "--token-file", "{d}/missing.token", "--out", "{d}/alice.token"], "missing.token"),
    (["topology", "show", "{d}/missing.yaml"], "missing.yaml"),
    (["model", "show", "{d}/bad-spec.json"], "unknown type 'warp'"),
    (["train", "--data", "idx:{d}/nothing"], "nothing"),
    (["peer", "--coordinator", "127.0.0.1:9", "--name", "x", "--connect-wait", "0.5"], "cannot connect"),
    (["peer", "--coordinator", "nonsense", "--name", "x"], "host:port"),
    (["peer", "--coordinator", "127.0.0.1:9", "--topology", "topologies/ring.yaml"], "--id"),
]


@pytest.fixture
def folder(tmp_path):
    import numpy as np

    for name, text in BAD_FILES.items():
        if text is None:
            np.savez(tmp_path / name, images=np.zeros((2, 4)))
        else:
            (tmp_path / name).write_text(text)
    return tmp_path


@pytest.mark.parametrize(("argv", "message"), CASES, ids=[" ".join(c[0][:3]) + f"-{i}" for i, c in enumerate(CASES)])
def test_bad_input_one_line_error(argv, message, folder, capsys):
    code = main([a.format(d=folder) for a in argv])
    err = capsys.readouterr().err
    assert code in (1, 2)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert message in err, err
    out = folder / "out"
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoint.npz").exists()
