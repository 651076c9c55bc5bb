#!/usr/bin/env python
"""Run the benchmark suite, write one results JSON and refresh the README's performance table.

Each benchmark is its own script (run separately for details); this one runs them in turn as
subprocesses, collects their JSON, writes ``results/bench.json`` (or ``--out``) and replaces the
table between ``<!-- bench:start -->`` and ``<!-- bench:end -->`` in README.md.
``--quick`` uses smaller sizes (minutes instead of tens of minutes).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def suite(quick: bool) -> dict[str, list[str]]:
    """Benchmark name -> script and arguments."""
    return {
        "centralized": ["centralized.py", "--epochs", "2" if quick else "5"],
        "codec": ["bench_codec.py"],
        "selection": ["bench_selection.py", "--repeats", "5" if quick else "30"],
        "bytes": ["bench_bytes.py"],
        "coordinator": ["bench_coordinator.py", "--seconds", "5" if quick else "10",
                        "--rounds", "2" if quick else "3"],
        "scale": ["bench_scale.py", "--in-process", *(["8", "100"] if quick else ["8", "100", "1000"]),
                  "--processes", *(["8"] if quick else ["8", "32", "64"])],
    }


def first_json(text: str) -> Any:
    """The first JSON value a script printed (they print JSON, then a human table)."""
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        raise ValueError("no JSON in the output")
    return json.JSONDecoder().raw_decode(text[min(starts):])[0]


def run(name: str, command: list[str]) -> Any:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.json"
        takes_out = name in ("bytes", "scale")
        args = [sys.executable, str(ROOT / "scripts" / command[0]), *command[1:],
                *(["--out", str(out)] if takes_out else [])]
        started = time.perf_counter()
        done = subprocess.run(args, capture_output=True, text=True, cwd=ROOT)
        if done.returncode:
            return {"error": done.stderr.strip().splitlines()[-1:] or ["failed"],
                    "seconds": round(time.perf_counter() - started, 1)}
        return json.loads(out.read_text()) if takes_out else first_json(done.stdout)


def rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(what, result, command) rows for the README table, from whatever ran successfully."""
    out: list[tuple[str, str, str]] = []
    c = results.get("centralized", {})
    if "centralized" in c:
        out.append(("centralized MLP, Fashion-MNIST", f"{c['centralized']['final_accuracy']:.3f} after "
                    f"{c['epochs']} epochs (standalone 1/10 shard: {c['standalone']['final_accuracy']:.3f})",
                    "`python scripts/centralized.py`"))
    codec = results.get("codec", {})
    if "dense" in codec:
        out.append(("codec, dense 1M floats encode+decode",
                    f"{codec['dense']['encode_decode_vs_memcpy']:.3f} × memcpy", "`python scripts/bench_codec.py`"))
        over = " / ".join(f"+{r['overhead_bytes']}" for r in codec["sparse"])
        out.append(("sparse wire bytes over the optimum, θ = 0.1 / 0.01 / 0.001", f"{over} B",
                    "`python scripts/bench_codec.py`"))
    for r in results.get("bytes", []) if isinstance(results.get("bytes"), list) else []:
        out.append((f"bytes per round, {r['mode']} {r['algorithm']} θu = {r['theta_u']}, 10 peers",
                    f"{r['bytes_per_round']:,} ({r['overhead']:+.2%} over the minimum)", "`python scripts/bench_bytes.py`"))
    coordinator = results.get("coordinator", {})
    if "pool" in coordinator:
        out.append(("coordinator round (10 peer processes) vs compute / cores",
                    f"{coordinator['median_round_s']:.2f} s vs {coordinator['compute_over_parallelism_s']:.2f} s "
                    f"(ratio {coordinator['ratio_to_goal_base']:.2f}); the same epochs in 10 bare processes "
                    f"{coordinator['bare_parallel_compute_s']:.2f} s", "`python scripts/bench_coordinator.py`"))
        out.append(("gradient pool, sparse uploads accepted per second",
                    f"{coordinator['pool']['accepted_per_s']:.0f} /s from {coordinator['pool']['clients']} peers",
                    "`python scripts/bench_coordinator.py`"))
    for r in results.get("scale", []) if isinstance(results.get("scale"), list) else []:
        rss = f", peak RSS {r['peak_rss_mib']} MiB" if "peak_rss_mib" in r else ""
        out.append((f"{r['peers']} ring peers ({r['mode']})", f"{r['rounds']} rounds in {r['total_s']} s{rss}",
                    "`python scripts/bench_scale.py`"))
    return out


def refresh_readme(table_rows: list[tuple[str, str, str]], machine: str) -> bool:
    readme = ROOT / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        return False
    table = "\n".join([f"Last refreshed by `python scripts/bench_all.py` on {machine}.", "",
                       "| what | result | command |", "|---|---|---|",
                       *(f"| {a} | {b} | {c} |" for a, b, c in table_rows)])
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{START}\n{table}\n{END}{tail}")
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes")
    parser.add_argument("--only", nargs="*", help="run only these benchmarks")
    parser.add_argument("--out", default=str(ROOT / "results" / "bench.json"))
    parser.add_argument("--no-readme", action="store_true", help="do not touch README.md")
    args = parser.parse_args()
    import os

    machine = f"{platform.machine()}, {len(os.sched_getaffinity(0))} cores, Python {platform.python_version()}"
    results: dict[str, Any] = {"machine": machine, "quick": args.quick}
    for name, command in suite(args.quick).items():
        if args.only and name not in args.only:
            continue
        started = time.perf_counter()
        print(f"running {name} ...", flush=True)
        results[name] = run(name, command)
        print(f"  {name}: {round(time.perf_counter() - started, 1)} s"
              + (f"  ERROR {results[name]['error']}" if isinstance(results[name], dict) and "error" in results[name] else ""),
              flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2))
    table_rows = rows(results)
    for a, b, _ in table_rows:
        print(f"{a:<62} {b}")
    if not args.no_readme and refresh_readme(table_rows, machine):
        print("README.md performance table refreshed")
    print(f"results: {out}")


if __name__ == "__main__":
    main()
