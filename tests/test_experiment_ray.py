"""``ringfl experiment --backend ray``: a two-node Ray cluster on this machine (head and worker,
each its own ``ray start`` process group) runs the smoke experiment with the same numbers as the
local backend, places tcp peers as Ray tasks, and survives losing its worker node mid-grid:
finished settings stay as they are and a re-run completes the rest."""

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("ray")

from ringfl.cli import main  # noqa: E402
from ringfl.errors import ConfigError  # noqa: E402
from ringfl.experiments import plan as exp  # noqa: E402
from ringfl.experiments.ray_backend import LocalCluster, RayBackend, from_record, to_record  # noqa: E402
from ringfl.experiments.results import read_results  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "smoke-digits.yaml"
# the head declares a killed node dead after ~3 missed 0.5 s health checks (default: ~15 s)
FAST_FAILURE = {"RAY_health_check_period_ms": "500", "RAY_health_check_failure_threshold": "3"}
# accuracies to float rounding (a ring's mean adds the peers' reports in arrival order), the loss
# to 1e-6 (a ring peer sums neighbours' float32 updates in arrival order: ~1e-8 run to run);
# bytes are left out, they vary by a few hundred run to run on either backend (report timing)
COMPARED = {"final_accuracy": 1e-12, "final_min_accuracy": 1e-12, "final_max_accuracy": 1e-12, "final_loss": 1e-6}


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(ROOT)


def _summary(out: Path) -> dict[str, dict[str, str]]:
    with open(out / "summary.csv", newline="") as handle:
        return {row["setting"]: row for row in csv.DictReader(handle)}


def _numbers(rows: dict[str, dict[str, str]]) -> dict[str, tuple]:
    """Each setting's final round and metrics, equal when equal up to float rounding."""
    return {key: (row["final_round"], *(pytest.approx(float(row[c]), rel=tol, abs=tol) for c, tol in COMPARED.items()))
            for key, row in rows.items()}


@pytest.fixture(scope="module")
def local_smoke(tmp_path_factory):
    """The smoke experiment on the local backend: the numbers Ray must reproduce."""
    out = tmp_path_factory.mktemp("local")
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        assert main(["experiment", str(SMOKE), "--out", str(out)]) == 0
    finally:
        os.chdir(cwd)
    return out


@pytest.fixture(scope="module")
def cluster():
    with LocalCluster(nodes=2, cpus_per_node=1, env=FAST_FAILURE) as running, pytest.MonkeyPatch.context() as mp:
        mp.setenv("RAY_AUTH_MODE", "disabled")  # the drivers below: the throwaway cluster has no token
        mp.setenv("RAY_USAGE_STATS_ENABLED", "0")
        yield running


# --- without a cluster ----------------------------------------------------------------------


def test_ray_options_come_from_the_file_and_are_checked():
    data = {"base": {"algorithm": "fedavg", "peers": 2, "rounds": 1}}
    backend = RayBackend.from_experiment(exp.plan({**data, "ray": {"num_cpus": 2, "max_retries": 1}}), "h:1")
    assert (backend.address, backend.num_cpus, backend.max_retries, backend.peer_num_cpus) == ("h:1", 2, 1, 0.0)
    for bad in ({"num_cpus": 0}, {"num_cpu": 1}, {"max_retries": 0.5}, {"peer_num_cpus": -1}):
        with pytest.raises(ConfigError, match="ray"):
            RayBackend.from_experiment(exp.plan({**data, "ray": bad}), None)
    with pytest.raises(ConfigError, match="ray: expected a mapping"):
        exp.plan({**data, "ray": 3})


def test_backend_flags_are_checked(tmp_path, capsys):
    base = ["experiment", str(SMOKE), "--out", str(tmp_path)]
    assert main([*base, "--backend", "ray", "--jobs", "2"]) == 2
    assert "--jobs is for the local backend" in capsys.readouterr().err
    assert main([*base, "--address", "127.0.0.1:1"]) == 2
    assert "use it with --backend ray" in capsys.readouterr().err
    assert not (tmp_path / "settings").exists()


def test_an_unreachable_address_fails_in_one_line(tmp_path, capsys):
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    assert main(["experiment", str(SMOKE), "--out", str(tmp_path), "--backend", "ray",
                 "--address", f"127.0.0.1:{port}"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"cannot join the Ray cluster at 127.0.0.1:{port}: nothing answers there" in err
    assert len(err.splitlines()) == 1 and time.monotonic() - started < 30  # not Ray's minutes of retries


def test_records_cross_as_plain_json(local_smoke):
    for result in read_results(local_smoke):
        record = json.loads(json.dumps(to_record(result)))
        assert from_record(record) == result


# --- on a two-node cluster --------------------------------------------------------------------


def test_smoke_on_two_nodes_matches_the_local_backend(cluster, local_smoke, tmp_path):
    argv = ["experiment", str(SMOKE), "--out", str(tmp_path), "--backend", "ray", "--address", cluster.address]
    assert main(argv) == 0
    ray_rows, local_rows = _summary(tmp_path), _summary(local_smoke)
    assert _numbers(ray_rows) == _numbers(local_rows)  # same seeds, same accuracies
    for name in ("experiment.yaml", "report.md", "plots/accuracy_vs_round.png", "plots/topology-ring-n4.png"):
        assert (tmp_path / name).is_file(), name
    assert sorted(p.name for p in (tmp_path / "settings").iterdir()) == sorted(local_rows)


def test_tcp_peers_run_as_ray_tasks(cluster, tmp_path):
    flags = ["--topology", "topologies/ring.yaml", "--peers", "3", "--rounds", "1", "--data", "digits",
             "--transport", "tcp"]
    assert main(["experiment", *flags, "--out", str(tmp_path / "local")]) == 0
    assert main(["experiment", *flags, "--out", str(tmp_path / "ray"), "--backend", "ray",
                 "--address", cluster.address]) == 0
    ray_rows = _summary(tmp_path / "ray")
    ring = next(row for row in ray_rows.values() if row["mode"] == "ring")
    assert ring["peers"] == "3" and int(ring["bytes_total"]) > 0
    assert _numbers(ray_rows) == _numbers(_summary(tmp_path / "local"))


def test_ctrl_c_keeps_finished_settings_and_a_rerun_completes(cluster, local_smoke, tmp_path):
    command = [sys.executable, "-m", "ringfl", "experiment", str(SMOKE), "--out", str(tmp_path),
               "--backend", "ray", "--address", cluster.address]
    grid = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not list((tmp_path / "settings").glob("*/config.json")):
        assert grid.poll() is None and time.monotonic() < deadline, "no setting finished"
        time.sleep(0.02)
    grid.send_signal(signal.SIGINT)
    out, err = grid.communicate(timeout=120)
    done = {r.setting.key for r in read_results(tmp_path)}
    if grid.returncode == 0:  # the grid finished before the signal landed: nothing to resume
        assert len(done) == 4
        return
    assert grid.returncode == 130 and "interrupted" in err, out + err
    assert set(_summary(tmp_path)) == done  # the report of what finished is written
    before = _files(tmp_path, done)
    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert rerun.returncode == 0 and f"{len(done)} already finished" in rerun.stdout, rerun.stdout + rerun.stderr
    assert _files(tmp_path, done) == before
    assert _numbers(_summary(tmp_path)) == _numbers(_summary(local_smoke))


def _running_setting(cluster: LocalCluster, node: int) -> bool:
    """Is a setting task executing on ``node`` right now (Ray titles its worker process so)?"""
    from ringfl.experiments.ray_backend import _descendants

    for pid in _descendants(cluster.processes[node].pid):
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::_setting_task"):
                return True
        except OSError:
            continue
    return False


def _files(out: Path, keys: set[str]) -> dict[Path, tuple[bytes, int]]:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for key in keys
            for p in sorted((out / "settings" / key).iterdir())}


def test_a_killed_worker_node_keeps_finished_settings_and_a_rerun_completes(cluster, local_smoke, tmp_path):
    """Last in this file: it takes the worker node away."""
    command = [sys.executable, "-m", "ringfl", "experiment", str(SMOKE), "--out", str(tmp_path),
               "--backend", "ray", "--address", cluster.address]
    grid = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not _running_setting(cluster, 1):
        assert grid.poll() is None and time.monotonic() < deadline, "no setting ever ran on the worker node"
        time.sleep(0.05)
    cluster.kill_node(1)
    out, err = grid.communicate(timeout=180)
    assert grid.returncode == 2, out + err
    assert "failed on Ray" in err and "re-run" in err
    done = {r.setting.key for r in read_results(tmp_path)}
    assert 1 <= len(done) < 4 and set(_summary(tmp_path)) == done  # the report covers what finished
    before = _files(tmp_path, done)

    rerun = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{len(done)} already finished" in rerun.stdout
    assert _files(tmp_path, done) == before  # finished settings were not touched
    assert _numbers(_summary(tmp_path)) == _numbers(_summary(local_smoke))
