#!/usr/bin/env bash
# A bootstrap coordinator and 8 ring peers (topologies/ring.yaml) as separate processes on
# loopback, on the bundled digits data; prints the per-round table (mean/min/max peer accuracy).
# Usage: scripts/ring_demo.sh [ROUNDS] [ALGORITHM]   (ALGORITHM: gossip-dssgd | relay | choco)
# ringfl is the repository's .venv/bin/ringfl when there is one (the Quickstart makes it), else
# `ringfl` on PATH, else `python3 -m ringfl`. Results go to a temporary folder that is removed at
# the end, unless OUT=DIR names a folder to keep them in.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
ALGORITHM=${2:-gossip-dssgd}
PORT=${PORT:-7100}
if [ -x .venv/bin/ringfl ]; then
    RINGFL=(.venv/bin/ringfl)
elif command -v ringfl >/dev/null 2>&1; then
    RINGFL=(ringfl)
else
    RINGFL=(python3 -m ringfl)
fi
if [ -n "${OUT:-}" ]; then
    KEEP=1
else
    KEEP=0
    OUT=$(mktemp -d)
fi
PIDS=()
cleanup() {
    kill "${PIDS[@]}" 2>/dev/null || true
    if [ "$KEEP" = 0 ]; then rm -rf "$OUT"; fi
}
trap cleanup EXIT
"${RINGFL[@]}" coordinator --topology topologies/ring.yaml --port "$PORT" --rounds "$ROUNDS" \
    --algorithm "$ALGORITHM" --out "$OUT" &
COORD=$!
PIDS+=("$COORD")
for i in $(seq 0 7); do  # peers retry the bootstrap until it listens (--connect-wait)
    "${RINGFL[@]}" peer --topology topologies/ring.yaml --id "$i" --coordinator "127.0.0.1:$PORT" --quiet &
    PIDS+=("$!")
done
wait "$COORD"
for pid in "${PIDS[@]:1}"; do wait "$pid"; done
if [ "$KEEP" = 1 ]; then echo "results in $OUT (metrics.jsonl, summary.json, report.md, plots/)"; fi
