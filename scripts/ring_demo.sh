#!/usr/bin/env bash
# A bootstrap coordinator and 8 ring peers (topologies/ring.yaml) as separate processes on
# loopback, on the bundled digits data; prints the per-round table (mean/min/max peer accuracy).
# Usage: scripts/ring_demo.sh [ROUNDS] [ALGORITHM]   (ALGORITHM: gossip-dssgd | relay | choco)
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${1:-5}
ALGORITHM=${2:-gossip-dssgd}
PORT=${PORT:-7100}
OUT=$(mktemp -d)
ringfl coordinator --topology topologies/ring.yaml --port "$PORT" --rounds "$ROUNDS" \
    --algorithm "$ALGORITHM" --out "$OUT" &
COORD=$!
trap 'kill $COORD 2>/dev/null || true' EXIT
sleep 3
for i in $(seq 0 7); do
    ringfl peer --topology topologies/ring.yaml --id "$i" --coordinator "127.0.0.1:$PORT" --quiet &
done
wait "$COORD"
wait
echo "metrics: $OUT/metrics.jsonl  summary: $OUT/summary.json"
