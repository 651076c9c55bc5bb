#!/usr/bin/env python
"""Benchmark: example-level DP-SGD at every peer on Fashion-MNIST (issue 13's targets).

Runs the real coordinator (or ring bootstrap) with 10 in-process IID peers on an in-memory network
(one MXNet thread trains every peer, as ``ringfl experiment`` does), MLP 784-128-64-10, and prints
accuracy per round, ε per peer at δ = 1e-5 and wall time as JSON lines, then a table.

Suites:
  targets  FedAvg with DP-SGD peers (B = 256 Poisson, C = 1, lr 2): ε = 3 after 5 / 10 / 20 rounds,
           ε = 1 after 10; clipping without noise; non-private FedAvg (lr 0.05, batch 64), 10 rounds.
  ring     a ring of 10 DP-SGD peers at ε = 3, 10 rounds (gossip-dssgd, θu = 1: whole deltas).
  speed    seconds per local epoch on 6,000 images: DP-SGD (vectorised and per-example loop)
           against non-private SGD at batch 64 and 256.
  audit    membership-inference audit (loss threshold + offline LiRA with 16 shadow MLPs) of the
           non-private and the ε = 3 / ε = 1 FedAvg runs (10 rounds).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import trio
from rich.console import Console

from ringfl.config import PartitionConfig, RunConfig, TrainingConfig
from ringfl.coordinator import Coordinator
from ringfl.peer import Peer, PeerOptions
from ringfl.privacy.dp_sgd import DpSgdConfig
from ringfl.ring import Bootstrap, RingPeer
from ringfl.transport import MemoryNetwork

PEERS = 10
NON_PRIVATE = TrainingConfig(lr=0.05, batch_size=64)


def dp_training(epsilon: float | None, noise: float | None = None) -> TrainingConfig:
    """B = 256 Poisson, C = 1, lr 2; σ from the target ε (or given)."""
    privacy = DpSgdConfig(mechanism="dp-sgd", clip=1.0, target_epsilon=epsilon, noise_multiplier=noise)
    return TrainingConfig(lr=2.0, batch_size=256, privacy=privacy)


def targets_suite() -> list[dict[str, Any]]:
    rows = [{"label": f"eps {eps:g}, {rounds} rounds", "rounds": rounds, "training": dp_training(eps)}
            for eps, rounds in ((3.0, 5), (3.0, 10), (3.0, 20), (1.0, 10))]
    rows.append({"label": "clip only (sigma 0), 10 rounds", "rounds": 10, "training": dp_training(None, 0.0)})
    rows.append({"label": "non-private FedAvg, 10 rounds", "rounds": 10, "training": NON_PRIVATE})
    return [{"mode": "coordinator", "algorithm": "fedavg", "settings": {}, **r} for r in rows]


def ring_suite() -> list[dict[str, Any]]:
    return [{"mode": "ring", "algorithm": "gossip-dssgd", "settings": {"theta_u": 1.0}, "rounds": 10,
             "label": "ring of 10, gossip-dssgd theta_u 1, eps 3, 10 rounds", "training": dp_training(3.0)}]


def config_for(setting: dict[str, Any]) -> RunConfig:
    return RunConfig(run_id="bench-dp", model="mlp", data="fashion-mnist", algorithm=setting["algorithm"],
                     rounds=setting["rounds"], peers=PEERS, min_peers=PEERS, host="", port=0,
                     training=setting["training"], partition=PartitionConfig(kind="iid"), round_timeout=600,
                     join_timeout=600, algorithm_settings=setting["settings"])


async def run_setting(setting: dict[str, Any], out_dir: Path | None = None) -> tuple[dict[str, Any], Any]:
    """One run; returns the result row and the server (its final model is ``algorithm.params``)."""
    config = config_for(setting)
    network = MemoryNetwork()
    started = time.perf_counter()
    if setting["mode"] == "ring":
        from ringfl.topology import generate

        topology = generate("ring", PEERS)
        server: Any = Bootstrap(config, network, topology=topology)
        make = lambda address, i: RingPeer(network, PeerOptions(  # noqa: E731
            coordinator=address, name=topology.labels[i], peers=PEERS, index=i, run_id=config.run_id,
            eval_samples=2000))
    else:
        server = Coordinator(config, network, out_dir=out_dir)
        make = lambda address, i: Peer(network, PeerOptions(  # noqa: E731
            coordinator=address, name=f"peer{i}", peers=PEERS, index=i, run_id=config.run_id))
    async with trio.open_nursery() as nursery:
        address = await nursery.start(server.run)
        for i in range(PEERS):
            nursery.start_soon(make(address, i).run)
    rounds = [r for r in server.history if r["round"] > 0]
    last = rounds[-1]
    result = {"label": setting["label"], "mode": setting["mode"], "rounds": setting["rounds"],
              "accuracy_per_round": [round(r["accuracy"], 4) for r in rounds],
              "final_accuracy": round(last["accuracy"], 4),
              "epsilon": last.get("epsilon_spent"), "delta": setting["training"].privacy.delta
              if setting["training"].privacy.enabled else None,
              "wall_time_s": round(time.perf_counter() - started, 1)}
    if setting["mode"] == "ring":
        result["min_accuracy"] = round(last["min_accuracy"], 4)
    else:
        result["bytes_total"] = last["bytes_in"] + last["bytes_out"]
    privacy = setting["training"].privacy
    if privacy.enabled:
        from ringfl.privacy.dp_sgd import plan

        result["noise_multiplier"] = round(plan(privacy, num_samples=6000, batch_size=256,
                                                rounds=setting["rounds"]).noise_multiplier, 4)
    return result, server


def speed(repeats: int = 5) -> list[dict[str, Any]]:
    """Seconds per local epoch on one peer's 6,000 images (median of ``repeats``)."""
    from ringfl.data.preprocess import prepare
    from ringfl.data.sources import load_source
    from ringfl.model import load_spec
    from ringfl.model.runtime import shared_model

    model = shared_model(load_spec("mlp"))
    gluon = model._gluon
    data = load_source("fashion-mnist").train
    x, y = prepare(data.x[:6000], (784,)), data.y[:6000]
    params = model.init_params(0)
    jobs = {
        "sgd batch 64": lambda: gluon.train(params, x, y, lr=0.05, batch_size=64),
        "sgd batch 256": lambda: gluon.train(params, x, y, lr=0.05, batch_size=256),
        "dp-sgd B 256 (vectorised)": lambda: gluon.train_dp(params, x, y, lr=2, batch_size=256, clip=1,
                                                             noise_multiplier=1.29, steps=23),
    }
    rows = []
    for name, job in jobs.items():
        times = []
        for _ in range(repeats + 1):
            started = time.perf_counter()
            model.thread.call(job)
            times.append(time.perf_counter() - started)
        rows.append({"job": name, "seconds_per_epoch": round(statistics.median(times[1:]), 4)})
    # the per-example fallback on a tenth of an epoch (it is the conv/recurrent path)
    sub_x, sub_y = x[:600], y[:600]
    started = time.perf_counter()
    model.thread.call(gluon.clipped_gradient_sum, params, sub_x, sub_y, 1.0, "loop")
    rows.append({"job": "per-example loop, 6000 examples (extrapolated from 600)",
                 "seconds_per_epoch": round(10 * (time.perf_counter() - started), 3)})
    base = {r["job"]: r["seconds_per_epoch"] for r in rows}
    for r in rows:
        r["x_sgd_batch_64"] = round(r["seconds_per_epoch"] / base["sgd batch 64"], 2)
        r["x_sgd_batch_256"] = round(r["seconds_per_epoch"] / base["sgd batch 256"], 2)
    return rows


def audit_suite(out: Path, shadows: int, members: int, console: Console) -> list[dict[str, Any]]:
    """Train the non-private and two DP runs, then audit each final model."""
    from ringfl.audit import AuditConfig, audit_params

    settings = [s for s in targets_suite() if s["label"].startswith(("non-private", "eps 3, 10", "eps 1, 10"))]
    rows = []
    for setting in settings:
        result, server = trio.run(run_setting, setting)
        report = audit_params(server.algorithm.params.copy(), AuditConfig(
            data="fashion-mnist", model="mlp", peers=PEERS, index=0, seed=0, shadows=shadows, members=members,
            training=setting["training"], rounds=setting["rounds"]))
        row = {**result, **{f"audit_{k}": v for k, v in report.items()}}
        console.print_json(json.dumps(row))
        rows.append(row)
    return rows


def write_table_and_plot(rows: list[dict[str, Any]], out: Path) -> None:
    """summary.csv (accuracy, bytes, ε, audit TPR side by side) and accuracy / TPR against ε."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ["label", "final_accuracy", "bytes_total", "epsilon", "noise_multiplier", "audit_lira_auc",
            "audit_lira_tpr_0_1pct", "audit_lira_tpr_1pct", "audit_loss_auc", "audit_loss_tpr_1pct"]
    with open(out / "summary.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    fig, ax = plt.subplots(figsize=(7, 4))
    tpr = ax.twinx()  # leakage on its own scale: next to accuracy it would be a flat line at 0
    finite = sorted((r for r in rows if r.get("epsilon") is not None), key=lambda r: r["epsilon"])
    xs = [r["epsilon"] for r in finite]
    ax.plot(xs, [r["final_accuracy"] for r in finite], "o-", color="C0", label="accuracy (DP-SGD)")
    tpr.plot(xs, [r["audit_lira_tpr_1pct"] for r in finite], "s-", color="C1", label="LiRA TPR @ 1 % FPR (DP-SGD)")
    tpr.axhline(0.01, color="grey", ls=":", lw=1, label="TPR of a blind guess (= FPR)")
    for r in rows:
        if r.get("epsilon") is None:  # the non-private run: horizontal reference lines
            ax.axhline(r["final_accuracy"], color="C0", ls="--", lw=1, label="accuracy, non-private")
            tpr.axhline(r["audit_lira_tpr_1pct"], color="C1", ls="--", lw=1, label="TPR, non-private")
    ax.set_xscale("log")
    ax.set_xlabel("ε per peer over the run (δ = 1e-5)")
    ax.set_ylabel("test accuracy")
    tpr.set_ylabel("LiRA TPR at 1 % FPR")
    tpr.set_ylim(0, max(0.05, 1.3 * max(r["audit_lira_tpr_1pct"] for r in rows)))
    ax.set_title("Fashion-MNIST, 10 peers, FedAvg + DP-SGD")
    handles = ax.get_legend_handles_labels()
    more = tpr.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize=7, loc="center right")
    fig.tight_layout()
    fig.savefig(out / "accuracy_epsilon_audit.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("suite", choices=("targets", "ring", "speed", "audit", "replot"),
                        help="replot: summary.csv and the plot again from OUT/audit.json")
    parser.add_argument("--only", type=int, nargs="*", help="indices of settings to run")
    parser.add_argument("--shadows", type=int, default=16, help="audit: shadow models")
    parser.add_argument("--members", type=int, default=5000, help="audit: members (and non-members) audited")
    parser.add_argument("--out", default="results/bench_dp", help="folder for JSON (and the plot)")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    console = Console()
    if args.suite == "replot":
        write_table_and_plot(json.loads((out / "audit.json").read_text()), out)
        return
    if args.suite == "speed":
        rows = speed()
        for row in rows:
            console.print_json(json.dumps(row))
    elif args.suite == "audit":
        rows = audit_suite(out, args.shadows, args.members, console)
        write_table_and_plot(rows, out)
    else:
        settings = targets_suite() if args.suite == "targets" else ring_suite()
        chosen = [settings[i] for i in args.only] if args.only else settings
        rows = []
        for setting in chosen:
            with console.status(f"running {setting['label']}"):
                row = trio.run(run_setting, setting)[0]
            console.print_json(json.dumps(row))
            rows.append(row)
    (out / f"{args.suite}.json").write_text(json.dumps(rows, indent=2) + "\n")
    console.print(f"wrote {out / (args.suite + '.json')}")
    if args.suite != "speed":
        for row in rows:
            console.print(f"{row['label']:<52} acc {row['final_accuracy']:.4f}  ε {row['epsilon']}  "
                          f"σ {row.get('noise_multiplier', '-')}  {row['wall_time_s']}s"
                          + (f"  audit TPR@1% {row['audit_lira_tpr_1pct']:.4f}" if "audit_lira_tpr_1pct" in row else ""))


if __name__ == "__main__":
    main()
