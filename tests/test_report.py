"""Experiment results: per-setting files survive interruption, and the CSV, Markdown and PNGs
derived from them show the right numbers."""

import csv
import json

import pytest
from rich.console import Console

from ringfl.experiments.labels import legend_labels
from ringfl.experiments.report import print_summary, write_all, write_summary_csv
from ringfl.experiments.results import (
    SUMMARY_COLUMNS,
    PeerRecord,
    Setting,
    SettingResult,
    SettingRound,
    is_complete,
    read_results,
    setting_dir,
    write_result,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
BYTES_PER_PEER_ROUND = 1000


def ring(theta_u=0.1, epsilon=None, partition="iid", topology="ring", peers=4, seed=0):
    return {
        "mode": "ring", "algorithm": "gossip-dssgd", "topology": topology, "peers": peers,
        "theta_u": theta_u, "theta_d": 1.0, "gamma": 0.01, "epsilon": epsilon,
        "partition": partition, "alpha": 0.5, "model": "digits-mlp", "rounds": 5, "seed": seed,
    }  # fmt: skip


def make_result(params, num_peers=None, rounds=5, peer_records=True):
    """Deterministic synthetic curves: accuracy climbs with rounds, peer i lags by 0.02 * i."""
    setting = Setting(params)
    num_peers = num_peers or params.get("peers") or 1
    sends = setting.mode in ("coordinator", "ring")
    peers, round_records = [], []
    for n in range(rounds + 1):
        accs = [min(0.99, 0.1 + 0.15 * n - 0.02 * i) for i in range(num_peers)]
        eps = None if params.get("epsilon") is None else params["epsilon"] * n
        sent = BYTES_PER_PEER_ROUND * n if sends else 0
        if peer_records:
            peers += [
                PeerRecord(setting.key, i, n, a, 1.0 - a, sent, sent, eps)
                for i, a in enumerate(accs)
            ]
        round_records.append(
            SettingRound(
                setting=setting.key,
                round=n,
                accuracy=sum(accs) / num_peers,
                min_accuracy=min(accs),
                max_accuracy=max(accs),
                loss=1.0 - accs[0],
                bytes_total=sent * num_peers,
                epsilon=eps,
                seconds=0.5 * n,
            )
        )
    return SettingResult(
        setting, round_records, peers, wall_time=0.5 * rounds + 0.25, num_peers=num_peers
    )


@pytest.fixture
def results():
    return [
        make_result(ring(theta_u=0.1)),
        make_result(
            ring(theta_u=0.5, epsilon=0.25, partition="dirichlet", topology="torus4x4", peers=16)
        ),
        make_result({"mode": "coordinator", "algorithm": "dssgd", "peers": 4, "theta_u": 0.1}),
        make_result({"mode": "standalone", "peers": 4, "partition": "iid"}, num_peers=1),
        make_result(
            {"mode": "centralized", "model": "digits-mlp", "rounds": 5}, peer_records=False
        ),
    ]


def test_records_round_trip_through_the_setting_folders(tmp_path, results):
    for result in results:
        write_result(tmp_path, result)
    back = read_results(tmp_path)
    assert sorted(back, key=lambda r: r.setting.key) == sorted(results, key=lambda r: r.setting.key)
    assert [r.setting.mode for r in back][:2] == ["centralized", "standalone"]  # references first
    folder = setting_dir(tmp_path, results[0].setting)
    assert sorted(p.name for p in folder.iterdir()) == [
        "peers.jsonl",
        "rounds.jsonl",
        "setting.json",
    ]


def test_half_written_setting_is_not_complete_and_not_read(tmp_path, results):
    result = results[0]
    folder = setting_dir(tmp_path, result.setting)
    folder.mkdir(parents=True)
    (folder / "rounds.jsonl").write_text(json.dumps({"round": 0}) + "\n")
    assert not is_complete(tmp_path, result.setting)
    (folder / "setting.json").write_text(
        json.dumps({"params": result.setting.params, "complete": False})
    )
    assert not is_complete(tmp_path, result.setting)
    assert read_results(tmp_path) == []

    write_result(tmp_path, result)
    assert is_complete(tmp_path, result.setting)
    assert not is_complete(tmp_path, results[1].setting)
    assert read_results(tmp_path) == [result]


def test_overwrite_interrupted_midway_is_not_complete(tmp_path, results, monkeypatch):
    """The old marker must not vouch for new, partly written records."""
    import ringfl.experiments.results as results_module

    write_result(tmp_path, results[0])

    def crash(path, records):
        raise KeyboardInterrupt

    monkeypatch.setattr(results_module, "write_jsonl", crash)
    with pytest.raises(KeyboardInterrupt):
        write_result(tmp_path, results[0])
    assert not is_complete(tmp_path, results[0].setting)


def test_summary_csv_has_the_columns_and_numbers(tmp_path, results):
    path = write_summary_csv(results, tmp_path / "summary.csv")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == SUMMARY_COLUMNS
        rows = {row["setting"]: row for row in reader}
    assert len(rows) == len(results)

    torus = rows[results[1].setting.key]
    assert float(torus["bytes_total"]) == BYTES_PER_PEER_ROUND * 5 * 16
    assert float(torus["bytes_per_peer_per_round"]) == float(torus["bytes_total"]) / (16 * 5)
    assert float(torus["bytes_per_peer_per_round"]) == BYTES_PER_PEER_ROUND
    assert float(torus["final_accuracy"]) == pytest.approx(results[1].final.accuracy)
    assert float(torus["final_min_accuracy"]) == pytest.approx(0.85 - 0.02 * 15)
    assert float(torus["final_max_accuracy"]) == pytest.approx(0.85)
    assert float(torus["epsilon_composed"]) == pytest.approx(1.25)
    assert (torus["topology"], torus["partition"], torus["alpha"]) == (
        "torus4x4",
        "dirichlet",
        "0.5",
    )
    assert float(torus["wall_time_s"]) == 2.75

    central = rows[results[4].setting.key]
    assert central["topology"] == central["theta_u"] == central["epsilon_composed"] == ""
    assert central["mode"] == "centralized" and float(central["bytes_total"]) == 0


def test_report_md_lists_every_setting_and_links_images(tmp_path, results):
    picture = tmp_path / "topologies" / "ring.png"
    written = write_all(tmp_path, results, "ring vs torus", notes="synthetic data",
                        topology_images={"ring": picture})  # fmt: skip
    text = written["report.md"].read_text()
    assert text.startswith("# ring vs torus\n\nsynthetic data")
    table_lines = [line for line in text.splitlines() if line.startswith("| ")]
    for result in results:
        assert any(
            result.setting.label in line and result.setting.key in line for line in table_lines
        )
    summary = text.split("## Accuracy per round")[0]
    assert summary.index("| centralized") < summary.index("| standalone") < summary.index("| ring4")
    ring4 = "| ring4 gossip-dssgd θu=0.1 θd=1 γ=0.01 iid | 0.0700 | 0.2200 | 0.3700 | 0.5200 |"
    assert f"{ring4} 0.6700 | 0.8200 |" in text.split("## Accuracy per round")[1]
    for name in ("accuracy_vs_round", "accuracy_vs_bytes", "peer_spread", "accuracy_vs_peers"):
        assert f"(plots/{name}.png)" in text
    assert "](topologies/ring.png)" in text


def test_all_plots_are_valid_pngs(tmp_path, results):
    written = write_all(tmp_path, results, "plots")
    pngs = [path for name, path in written.items() if name not in ("summary.csv", "report.md")]
    assert len(pngs) == 4
    for path in pngs:
        data = path.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 1000


def test_empty_and_reference_only_experiments_still_write_outputs(tmp_path, results):
    for chosen in ([], results[3:]):
        written = write_all(tmp_path / str(len(chosen)), chosen, "nothing yet")
        assert all(path.stat().st_size > 0 for path in written.values())
    assert "No finished settings" in (tmp_path / "0" / "report.md").read_text()


def test_keys_are_stable_across_dict_order_and_distinct_across_params():
    params = ring()
    reordered = dict(reversed(list(params.items())))
    assert Setting(params).key == Setting(reordered).key
    assert Setting(params) == Setting(reordered) and hash(Setting(params)) == hash(
        Setting(reordered)
    )
    keys = {Setting(ring(theta_u=t, seed=s)).key for t in (0.1, 0.5) for s in (0, 1)}
    assert len(keys) == 4
    key = Setting(params).key
    assert key.startswith("ring-gossip-dssgd-ring-n4-") and len(key.rsplit("-", 1)[1]) == 8


def test_params_are_normalised_and_copied():
    params = {"mode": "ring", "data": ("digits", 2)}
    setting = Setting(params)
    params["mode"] = "changed"
    assert setting.params == {"mode": "ring", "data": ["digits", 2]}


def test_labels_are_compact_and_legends_show_only_what_varies(results):
    assert results[0].setting.label == "ring4 gossip-dssgd θu=0.1 θd=1 γ=0.01 iid"
    assert (
        results[1].setting.label == "torus4x4-16 gossip-dssgd θu=0.5 θd=1 γ=0.01 ε=0.25 dir(α=0.5)"
    )
    assert results[2].setting.label == "coord4 dssgd θu=0.1"
    assert results[3].setting.label == "standalone4 iid"
    assert results[4].setting.label == "centralized"
    assert legend_labels(results[:2]) == [
        "ring4 gossip-dssgd θu=0.1 iid",
        "torus4x4-16 gossip-dssgd θu=0.5 ε=0.25 dir(α=0.5)",
    ]
    seeds = [make_result(ring(seed=s)) for s in (0, 1)]
    assert legend_labels(seeds) == ["ring4 gossip-dssgd seed=0", "ring4 gossip-dssgd seed=1"]


def test_print_summary_renders_a_row_per_setting(results):
    console = Console(record=True, width=200)
    print_summary(results, console=console)
    out = console.export_text()
    for label in legend_labels(results):
        assert any(line.strip().startswith(f"{label} ") for line in out.splitlines())
    assert "1 kB" in out  # bytes per peer per round of the ring runs
    assert "θd=1 γ=0.01 model=digits-mlp" in out  # what every setting shares, said once


def test_accuracy_vs_peers_draws_one_line_per_setting_across_peer_counts(tmp_path, monkeypatch):
    from matplotlib.axes import Axes

    from ringfl.experiments.plots import plot_accuracy_vs_peers

    drawn = []
    original = Axes.plot
    monkeypatch.setattr(Axes, "plot", lambda self, *a, **k: drawn.append((list(a[0]), list(a[1]))) or original(self, *a, **k))
    results = [make_result(ring(peers=n)) for n in (8, 4, 16)] + [make_result(ring(peers=4, topology="torus"))]
    path = plot_accuracy_vs_peers(results, tmp_path / "peers.png", "scaling")
    assert path.read_bytes().startswith(PNG_SIGNATURE)
    accuracy = [line for line in drawn if max(line[1]) < 1]
    sent = [line for line in drawn if max(line[1]) >= 1]
    assert [xs for xs, _ in accuracy] == [[4, 8, 16], [4]]  # ring over three sizes, torus alone
    assert sent[0] == ([4, 8, 16], [BYTES_PER_PEER_ROUND] * 3)
