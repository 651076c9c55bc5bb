"""``ringfl experiment``: grid expansion (no running), the shipped smoke experiment end to end,
skipping finished settings, interruption, TCP peers, worker processes and one-line errors."""

import csv
import json
import os
from pathlib import Path

import pytest

from ringfl.cli import main
from ringfl.config import read_mapping
from ringfl.errors import ConfigError, RingflError
from ringfl.experiments import distributed
from ringfl.experiments import plan as exp
from ringfl.experiments import run as runner
from ringfl.experiments.results import SUMMARY_COLUMNS, read_results

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "experiments" / "smoke-digits.yaml"
SHIPPED = sorted((ROOT / "experiments").glob("*.yaml"))


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    """Experiment files name topologies relative to the checkout, as a user running from it does."""
    monkeypatch.chdir(ROOT)


# --- the plan, without running anything --------------------------------------------------


def test_expand_grid_is_a_cartesian_product_or_a_union_of_them():
    grid = {"algorithm": ["dssgd", "fedavg"], "theta_u": [1, 0.1], "seed": 3}
    points = exp.expand_grid(grid)
    assert len(points) == 4
    assert points[0] == {"algorithm": "dssgd", "theta_u": 1, "seed": 3}
    assert {(p["algorithm"], p["theta_u"]) for p in points} == {
        ("dssgd", 1), ("dssgd", 0.1), ("fedavg", 1), ("fedavg", 0.1)}
    union = exp.expand_grid([grid, {"algorithm": "relay", "topology": [{"generator": "ring"}]}])
    assert len(union) == 5 and union[-1] == {"algorithm": "relay", "topology": {"generator": "ring"}}
    assert exp.expand_grid(None) == [{}]


def test_plan_adds_references_and_drops_what_an_algorithm_ignores():
    experiment = exp.plan({
        "base": {"data": "digits", "model": "digits-mlp", "peers": 6, "rounds": 2, "gamma": 0.01},
        "grid": {"algorithm": ["fedavg", "dssgd", "relay"], "theta_u": [0.1, 0.01],
                 "topology": [{"generator": "ring"}, {"generator": "complete"}]},
    })
    modes = [run.mode for run in experiment.runs]
    assert modes[:2] == ["centralized", "standalone"]  # reference lines first, once each
    assert modes.count("centralized") == 1 and modes.count("standalone") == 1
    by_algorithm = {}
    for run in experiment.runs:
        by_algorithm.setdefault(run.setting.params.get("algorithm"), []).append(run)
    assert len(by_algorithm["fedavg"]) == 1  # θu and topology mean nothing to FedAvg
    assert len(by_algorithm["dssgd"]) == 2  # topology means nothing in coordinator mode
    assert len(by_algorithm["relay"]) == 4
    fedavg = by_algorithm["fedavg"][0].setting.params
    assert "theta_u" not in fedavg and "topology" not in fedavg
    relay = by_algorithm["relay"][0]
    assert relay.mode == "ring" and relay.topology.n == 6 and relay.config.peers == 6
    assert relay.setting.params["gamma"] == 0.01


def test_peers_resize_a_generated_topology_file_and_standalone_samples_peers():
    experiment = exp.plan({
        "standalone_peers": 4,
        "base": {"topology": "topologies/small-world.yaml", "algorithm": "gossip-dssgd"},
        "grid": {"peers": [16, 32]},
    })
    rings = [run for run in experiment.runs if run.mode == "ring"]
    assert [run.topology.n for run in rings] == [16, 32]
    standalone = [run for run in experiment.runs if run.mode == "standalone"]
    assert [run.sampled_peers for run in standalone] == [(0, 5, 10, 15), (0, 10, 21, 31)]
    assert exp.sampled_peers(30, 1) == (0,) and exp.sampled_peers(3, 10) == (0, 1, 2)
    from_file = exp.plan({"base": {"topology": "topologies/torus.yaml", "algorithm": "relay"}})
    assert from_file.runs[-1].topology.n == 16  # no peers given: the file's own count


def test_extra_axes_become_setting_parameters_and_reach_the_reference_lines():
    experiment = exp.plan({"grid": {"training.lr": [0.05, 0.1], "algorithm": "fedavg"}})
    central = [run for run in experiment.runs if run.mode == "centralized"]
    assert sorted(run.config.training.lr for run in central) == [0.05, 0.1]
    assert {run.setting.params["training.lr"] for run in experiment.runs} == {0.05, 0.1}


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_experiments_plan(path):
    experiment = exp.load_experiment(path)
    assert experiment.runs and experiment.runs[0].mode == "centralized"


# --- the smoke experiment end to end -------------------------------------------------------


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """The shipped smoke experiment, run once for the checks below (as `ringfl experiment`)."""
    out = tmp_path_factory.mktemp("smoke")
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        assert main(["experiment", str(SMOKE), "--out", str(out)]) == 0
    finally:
        os.chdir(cwd)
    return out


def _summary(out: Path) -> list[dict[str, str]]:
    with open(out / "summary.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_smoke_writes_every_output(smoke):
    for name in ("experiment.yaml", "summary.csv", "report.md", "plots/accuracy_vs_round.png",
                 "plots/accuracy_vs_bytes.png", "plots/peer_spread.png", "plots/topology-ring-n4.png"):
        assert (smoke / name).is_file(), name
    assert (smoke / "experiment.yaml").read_text() == SMOKE.read_text()
    folders = sorted((smoke / "settings").iterdir())
    assert len(folders) == 4
    for folder in folders:
        for name in ("setting.json", "rounds.jsonl", "peers.jsonl", "config.json"):
            assert (folder / name).is_file(), f"{folder.name}/{name}"
        assert json.loads((folder / "config.json").read_text())["config"]["rounds"] == 3
    report = (smoke / "report.md").read_text()
    assert "centralized" in report and "standalone" in report and "ring4 gossip-dssgd" in report


def test_smoke_numbers_are_sane(smoke):
    rows = _summary(smoke)
    with open(smoke / "summary.csv", newline="") as handle:
        assert tuple(next(csv.reader(handle))) == SUMMARY_COLUMNS
    by_mode = {}
    for row in rows:
        by_mode.setdefault(row["mode"], []).append(row)
        assert row["final_round"] == "3"
        assert 0.2 < float(row["final_accuracy"]) <= 1.0
        assert float(row["final_min_accuracy"]) <= float(row["final_accuracy"]) <= float(row["final_max_accuracy"])
    assert sorted(by_mode) == ["centralized", "coordinator", "ring", "standalone"]
    accuracy = {mode: sum(float(r["final_accuracy"]) for r in rs) / len(rs) for mode, rs in by_mode.items()}
    collaborative = (accuracy["coordinator"] + accuracy["ring"]) / 2
    assert accuracy["centralized"] + 0.05 >= collaborative >= accuracy["standalone"] - 0.05, accuracy
    for row in rows:
        sent = int(row["bytes_total"])
        assert sent == 0 if row["mode"] in ("centralized", "standalone") else sent > 0
    results = {r.setting.mode: r for r in read_results(smoke)}
    assert len(results["standalone"].final_peer_accuracies()) == 4
    assert len(results["ring"].final_peer_accuracies()) == 4
    assert [r.round for r in results["ring"].rounds] == [0, 1, 2, 3]  # all curves start at round 0


def test_rerun_skips_finished_settings(smoke, capsys):
    capsys.readouterr()
    before = {p: p.stat().st_mtime_ns for p in (smoke / "settings").rglob("*.jsonl")}
    assert main(["experiment", str(SMOKE), "--out", str(smoke)]) == 0
    assert "4 already finished" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in (smoke / "settings").rglob("*.jsonl")} == before


def test_a_changed_base_is_not_taken_for_finished(smoke):
    data = read_mapping(SMOKE)
    changed = exp.plan({**data, "base": {**data["base"], "training": {"lr": 0.05}}})
    assert not any(runner.finished(smoke, run) for run in changed.runs)
    assert all(runner.finished(smoke, run) for run in exp.load_experiment(SMOKE).runs)


def test_interrupt_keeps_finished_settings(tmp_path, monkeypatch, capsys):
    real = runner.run_setting

    def interrupted(run, *args, **kwargs):
        if run.mode == "ring":
            raise KeyboardInterrupt
        return real(run, *args, **kwargs)

    monkeypatch.setattr(runner, "run_setting", interrupted)
    assert main(["experiment", str(SMOKE), "--out", str(tmp_path)]) == 130
    modes = sorted(row["mode"] for row in _summary(tmp_path))
    assert modes == ["centralized", "coordinator", "standalone"]
    assert (tmp_path / "report.md").is_file()


# --- other transports and options ----------------------------------------------------------


def test_tcp_ring_from_flags(tmp_path):
    argv = ["experiment", "--topology", "topologies/ring.yaml", "--peers", "3", "--rounds", "1",
            "--data", "digits", "--out", str(tmp_path), "--transport", "tcp"]
    assert main(argv) == 0
    ring = next(r for r in _summary(tmp_path) if r["mode"] == "ring")
    assert ring["peers"] == "3" and int(ring["bytes_total"]) > 0 and float(ring["final_accuracy"]) > 0.2
    written = tmp_path / "topologies" / "ring-n3.yaml"  # resized from the 8-node file for --id 0..2
    assert exp.build_topology(str(written), None, "test").labels == ["0", "1", "2"]


def test_jobs_run_settings_in_worker_processes(tmp_path, capsys):
    argv = ["experiment", "--algorithm", "fedavg", "--peers", "2", "--rounds", "1", "--out", str(tmp_path),
            "--jobs", "2"]
    assert main(argv) == 0
    assert sorted(row["mode"] for row in _summary(tmp_path)) == ["centralized", "coordinator", "standalone"]


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("grid: {thetau: [1]}", "unknown parameter 'thetau'"),
        ("grid: {algorithm: []}", "grid.algorithm: empty list"),
        ("grid: {algorithm: [gossip-dssgd]}", "needs a topology"),
        ("grid: {algorithm: [choco], epsilon: 1, gamma: 0.01, topology: {generator: ring}}", "no differential privacy"),
        ("grid: {algorithm: relay, topology: {generator: nope}}", "unknown generator kind"),
        ("grid: {training.lrr: 1}", "unknown field 'lrr'"),
        ("bogus: 1", "unknown key 'bogus'"),
        ("grid: {partition: [{kind: sample, size: 10}, {kind: sample, size: 20}]}", "partition.size"),
    ],
)
def test_bad_experiment_file_is_one_line_error_and_exit_2(text, message, tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    assert main(["experiment", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("error: ")
    assert not (tmp_path / "out").exists()  # nothing ran


def test_plan_errors_are_config_errors():
    with pytest.raises(ConfigError, match="standalone_peers"):
        exp.plan({"standalone_peers": 0})


async def test_a_hanging_setting_gives_up_after_its_deadline():
    import trio

    run = exp.plan({"base": {"join_timeout": 0.1, "round_timeout": 0.1, "rounds": 1}}).runs[-1]
    with pytest.raises(RingflError, match="did not finish within 0 s"):
        await distributed._within_deadline(run, trio.sleep(30))
