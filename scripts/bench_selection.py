"""Time DSSGD's per-upload selection: clip + top-k, and NumericSparse DP.

Prints one JSON document: median and best wall time (ms) per case, and the median as a
percentage of a local epoch (default 0.09 s: an MLP epoch on 6,000 images on the reference
machine). Usage: ``python scripts/bench_selection.py [--repeats 30] [--epoch-seconds 0.09]``.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np

from ringfl.algorithms.base import AlgorithmSettings, selection_count
from ringfl.algorithms.selection import select_update


def _time(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    fn()  # warm-up
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e3, min(samples) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--epoch-seconds", type=float, default=0.09)
    parser.add_argument("--gamma", type=float, default=0.01)
    parser.add_argument("--tau", type=float, default=1e-4)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1.0, 1e6])
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    results = []
    for n in (100_000, 1_000_000):
        # a plausible per-epoch change: mostly small, heavy-tailed, a share above gamma
        delta = (rng.standard_normal(n) * rng.exponential(0.004, n)).astype(np.float32)
        for theta in (0.1, 0.01):
            cases: list[tuple[str, AlgorithmSettings]] = [
                ("clip+topk", AlgorithmSettings(theta_u=theta, gamma=args.gamma))
            ]
            cases += [
                (
                    f"numeric-sparse eps={eps:g}",
                    AlgorithmSettings(theta_u=theta, gamma=args.gamma, tau=args.tau, epsilon=eps),
                )
                for eps in args.epsilons
            ]
            for label, settings in cases:
                median, best = _time(
                    lambda s=settings, d=delta: select_update(d, s, rng), args.repeats
                )
                results.append(
                    {
                        "params": n,
                        "theta_u": theta,
                        "c": selection_count(n, theta),
                        "method": label,
                        "median_ms": round(median, 3),
                        "best_ms": round(best, 3),
                        "percent_of_epoch": round(100 * median / 1e3 / args.epoch_seconds, 2),
                    }
                )
    print(
        json.dumps(
            {
                "epoch_seconds": args.epoch_seconds,
                "gamma": args.gamma,
                "tau": args.tau,
                "repeats": args.repeats,
                "numpy": np.__version__,
                "python": platform.python_version(),
                "machine": platform.machine(),
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
