"""The Ray backend's overhead: one 16-setting grid, ``--jobs 2`` on this machine against
``--backend ray`` on a 2-CPU Ray cluster on the same machine (goal: at most 10 % slower).

Both run the real ``ringfl experiment`` command in a fresh output folder. The grid is FedAvg and
gossip-dssgd on a ring, 4 seeds, on digits (4 IID peers), plus the centralized and standalone
line of every seed: 8 + 4 + 4 = 16 settings (deterministic ones: asynchronous DSSGD depends on
upload timing, so it would not compare). Both backends get the same MXNet engine (``--engine``,
default MXNet's own threaded engine): ``--jobs`` workers otherwise default to NaiveEngine
(``launch.child_env``) and Ray workers do not, which alone changes the time about 2x on this grid. The Ray cluster is started before the clock (as a user's cluster is
already up when they submit a grid); its start-up time is reported on its own. Both backends
must produce the same summary numbers, or the benchmark fails.

    python scripts/bench_ray.py [--rounds 20] [--repeat 1] [--engine NaiveEngine] [--out results/bench_ray]

Writes bench_ray.json and bench_ray.csv and plots bench_ray.png in --out.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPARED = ("final_accuracy", "final_min_accuracy", "final_max_accuracy")  # bytes vary run to run


def grid(rounds: int) -> dict:
    return {
        "name": "bench-ray",
        "description": "16 settings: FedAvg and gossip-dssgd on a ring x 4 seeds, and their reference lines.",
        "base": {"data": "digits", "model": "digits-mlp", "peers": 4, "rounds": rounds, "partition": "iid",
                 "training": {"lr": 0.1, "batch_size": 32}, "theta_u": 0.1, "topology": {"generator": "ring"}},
        "grid": {"algorithm": ["fedavg", "gossip-dssgd"], "seed": [0, 1, 2, 3]},
        "ray": {"num_cpus": 1},
    }


def run(command: list[str], env: dict[str, str]) -> float:
    """Wall seconds of one ``ringfl experiment`` command (it must succeed)."""
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return seconds


def numbers(out: Path) -> dict[str, tuple[float, ...]]:
    """Final accuracies per setting, to 1e-12 (a ring's mean adds reports in arrival order)."""
    with open(out / "summary.csv", newline="") as handle:
        return {row["setting"]: tuple(round(float(row[c]), 12) for c in COMPARED) for row in csv.DictReader(handle)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="rounds (epochs) per setting")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per backend (alternating)")
    parser.add_argument("--out", default="results/bench_ray")
    parser.add_argument("--engine", default="ThreadedEnginePerDevice", help="MXNET_ENGINE_TYPE for both backends")
    args = parser.parse_args()
    os.environ["MXNET_ENGINE_TYPE"] = args.engine  # before the cluster starts: its workers inherit it
    from ringfl.experiments.ray_backend import LocalCluster

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    experiment = work / "bench-ray.yaml"
    experiment.write_text(yaml.safe_dump(grid(args.rounds), sort_keys=False))
    base = [sys.executable, "-m", "ringfl", "experiment", str(experiment)]
    started = time.perf_counter()
    with LocalCluster(nodes=1, cpus_per_node=2, object_store_mb=200) as cluster:
        cluster_start = time.perf_counter() - started
        env = dict(cluster.env, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        commands = {"local --jobs 2": [*base, "--jobs", "2"],
                    "ray (2-CPU cluster)": [*base, "--backend", "ray", "--address", cluster.address]}
        times: dict[str, list[float]] = {name: [] for name in commands}
        results: dict[str, Path] = {}
        for attempt in range(args.repeat):
            for name, command in commands.items():
                folder = work / f"{len(times[name])}-{name.split()[0]}"
                times[name].append(run([*command, "--out", str(folder)], env))
                results[name] = folder
                print(f"{name:22s} run {attempt + 1}: {times[name][-1]:6.1f} s", flush=True)
    settings = len(numbers(results["local --jobs 2"]))
    if numbers(results["local --jobs 2"]) != numbers(results["ray (2-CPU cluster)"]):
        raise SystemExit("the backends disagree on the results: see " + str(work))
    shutil.rmtree(work)
    local, ray = (min(t) for t in times.values())
    overhead = ray / local - 1
    report = {"settings": settings, "rounds": args.rounds, "repeat": args.repeat, "engine": args.engine,
              "seconds": times,
              "best_local_s": local, "best_ray_s": ray, "overhead": overhead,
              "ray_cluster_start_s": cluster_start, "same_results": True,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"}
    (out / "bench_ray.json").write_text(json.dumps(report, indent=2) + "\n")
    with open(out / "bench_ray.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["backend", "run", "seconds"])
        writer.writerows([name, i + 1, f"{s:.2f}"] for name, ts in times.items() for i, s in enumerate(ts))
    plot(times, out / "bench_ray.png", settings)
    print(f"{settings} settings x {args.rounds} rounds, {args.engine}: local --jobs 2 {local:.1f} s, Ray {ray:.1f} s "
          f"(overhead {overhead:+.1%}, goal <= +10 %); cluster start {cluster_start:.1f} s, not counted; "
          f"same results: yes -> {out}/bench_ray.json")


def plot(times: dict[str, list[float]], path: Path, settings: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3))
    names = list(times)
    ax.barh(names, [min(t) for t in times.values()], color=["#4477aa", "#ee6677"])
    for i, name in enumerate(names):
        ax.plot(times[name], [i] * len(times[name]), "k|", markersize=14)
    ax.set_xlabel(f"wall seconds for {settings} settings (bar: best run, ticks: every run)")
    ax.set_title("local --jobs 2 vs Ray, same machine")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
