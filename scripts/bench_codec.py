"""Codec benchmark: dense throughput against memcpy, and sparse wire size against the optimum.

Not a test: prints a JSON record and a human table. Usage: ``python scripts/bench_codec.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import numpy as np

from ringfl.protocol import FrameDecoder, Limits, Params, Upload, decode, encode
from ringfl.vectors import SparseVector

NUM_PARAMS = 1_000_000
THETAS = (0.1, 0.01, 0.001)
ENVELOPE = {"run_id": "run-2024-05-17-a", "sender": "peer-017", "round": 12, "seq": 345}
CHUNK = 256 << 10  # what MessageStream reads per receive_some


def best_seconds(fn: Callable[[], object], repeat: int = 30) -> float:
    """Best of ``repeat`` runs: the least disturbed by the rest of the machine."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def streamed_decode(frame: bytes, limits: Limits) -> object:
    decoder = FrameDecoder(limits)
    view = memoryview(frame)
    for start in range(0, len(frame), CHUNK):
        decoder.receive_data(bytes(view[start : start + CHUNK]))
    return decoder.next_frame()


def dense_benchmark(limits: Limits) -> dict[str, float]:
    vector = np.random.default_rng(0).standard_normal(NUM_PARAMS).astype(np.float32)
    message = Params(vector=vector, model_version=1, **ENVELOPE)
    nbytes = vector.nbytes
    source = vector.tobytes()
    target = bytearray(nbytes)

    def memcpy() -> None:
        memoryview(target)[:] = source

    frame = encode(message, limits)
    chunks = [frame[i : i + CHUNK] for i in range(0, len(frame), CHUNK)]

    def streamed() -> object:
        decoder = FrameDecoder(limits)
        for chunk in chunks:
            decoder.receive_data(chunk)
        return decoder.next_frame()

    assert np.array_equal(decode(frame, limits).vector, vector)
    mb = nbytes / 1e6
    seconds = {
        "memcpy": best_seconds(memcpy),
        "encode_decode": best_seconds(lambda: decode(encode(message, limits), limits)),
        "encode": best_seconds(lambda: encode(message, limits)),
        "decode": best_seconds(lambda: decode(frame, limits)),
        "decode_streamed": best_seconds(streamed),
    }
    result = {f"{name}_mb_s": round(mb / s, 1) for name, s in seconds.items()}
    result["encode_decode_vs_memcpy"] = round(seconds["memcpy"] / seconds["encode_decode"], 3)
    return result


def sparse_benchmark(limits: Limits) -> list[dict[str, float]]:
    rng = np.random.default_rng(1)
    dense = rng.standard_normal(NUM_PARAMS).astype(np.float32)
    rows = []
    for theta in THETAS:
        nnz = int(np.ceil(theta * NUM_PARAMS))
        update = SparseVector.take(dense, rng.choice(NUM_PARAMS, nnz, replace=False))
        frame = encode(Upload(vector=update, num_samples=600, base_version=11, **ENVELOPE), limits)
        assert decode(frame, limits).vector == update
        optimum = min(8 * nnz, -(-NUM_PARAMS // 8) + 4 * nnz)
        budget = 1.02 * optimum + 128
        rows.append(
            {
                "theta": theta,
                "nnz": nnz,
                "wire_bytes": len(frame),
                "optimum_bytes": optimum,
                "overhead_bytes": len(frame) - optimum,
                "ratio": round(len(frame) / optimum, 4),
                "within_goal": len(frame) <= budget,
            }
        )
    return rows


def main() -> None:
    limits = Limits().for_model(NUM_PARAMS)
    dense = dense_benchmark(limits)
    sparse = sparse_benchmark(limits)
    print(json.dumps({"num_params": NUM_PARAMS, "dense": dense, "sparse": sparse}, indent=2))
    print()
    print(f"dense {NUM_PARAMS:,} float32 ({NUM_PARAMS * 4 / 1e6:.0f} MB), best of 30")
    for key, value in dense.items():
        print(f"  {key:<28} {value:>10}")
    goal = "goal >= 0.25" + (" (met)" if dense["encode_decode_vs_memcpy"] >= 0.25 else " (MISSED)")
    print(f"  {goal}")
    print()
    print(
        f"{'theta':>7} {'nnz':>8} {'wire B':>9} {'optimum B':>10} {'overhead':>9} {'ratio':>7}  goal"
    )
    for row in sparse:
        print(
            f"{row['theta']:>7} {row['nnz']:>8} {row['wire_bytes']:>9} {row['optimum_bytes']:>10} "
            f"{row['overhead_bytes']:>9} {row['ratio']:>7}  {'met' if row['within_goal'] else 'MISSED'}"
        )


if __name__ == "__main__":
    main()
