#!/usr/bin/env bash
# Check throughput and latency against a baseline measured in the same run.
#
#   benches/checks.sh            # 15 s per measurement
#   DURATION=30s benches/checks.sh
#
# Loads the demo catalog plus benches/bench-catalog.toml (20 features), puts one company on
# Pro with both add-ons, then drives with wrk (2 threads, 64 keep-alive connections):
#   1. /noop on the baseline server: what the load generator can do on this machine;
#   2. the baseline: an axum handler returning a fixed check body of the same size;
#   3. entitled: POST /flags/bench-event-1/check for that company.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-15s}
PORT=${PORT:-18080}
BASE_PORT=$((PORT + 1))
DB=entitled_bench
command -v wrk >/dev/null || { echo "wrk is required (apt-get install wrk)"; exit 1; }
./scripts/ensure-postgres.sh >/dev/null

cargo build --release --quiet
BASELINE=$(cargo bench --bench baseline_server --no-run 2>&1 | grep -o 'target/release/deps/baseline_server-[0-9a-f]*' | head -n1)
BIN=./target/release/entitled

psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -qc "CREATE DATABASE $DB"
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$DB
export ENTITLED_SERVER__LISTEN=127.0.0.1:$PORT
export ENTITLED_LOG__LEVEL=warn
$BIN migrate >/dev/null
$BIN seed fixtures/demo-catalog.toml >/dev/null
$BIN seed benches/bench-catalog.toml >/dev/null
KEY=$($BIN api-key create --environment development --name bench | tail -n1)

TMP=$(mktemp -d)
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$TMP"; }
PIDS=()
trap cleanup EXIT
$BIN serve & PIDS+=($!)
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null && break; sleep 0.1; done

H="X-Schematic-Api-Key: $KEY"
plan() { curl -sf "http://127.0.0.1:$PORT/plans?q=$1" -H "$H" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])'; }
PRO=$(plan Pro); ANALYTICS=$(plan Analytics); SUPPORT=$(plan Premium)
curl -sf -X POST "http://127.0.0.1:$PORT/companies" -H "$H" \
  -d "{\"keys\": {\"id\": \"bench-co\"}, \"base_plan_id\": \"$PRO\", \"add_on_ids\": [\"$ANALYTICS\", \"$SUPPORT\"], \"traits\": {\"bench_trait_1\": 3, \"bench_trait_limit\": 9}}" >/dev/null
REQ='{"company":{"id":"bench-co"},"user":null}'
curl -sf -X POST "http://127.0.0.1:$PORT/flags/bench-event-1/check" -H "$H" -d "$REQ" > "$TMP/body.json"
FEATURES=$(curl -sf -X POST "http://127.0.0.1:$PORT/flags/check" -H "$H" -d "$REQ" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["data"]["flags"]))')

"$BASELINE" "$BASE_PORT" "$TMP/body.json" & PIDS+=($!)
for _ in $(seq 1 100); do curl -sf -X POST "http://127.0.0.1:$BASE_PORT/noop" >/dev/null && break; sleep 0.1; done

cat > "$TMP/post.lua" <<LUA
wrk.method = "POST"
wrk.body = '$REQ'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Schematic-Api-Key"] = "$KEY"
LUA

run() { # name url
  wrk -t2 -c64 -d"$DURATION" --latency -s "$TMP/post.lua" "$2" > "$TMP/$1.txt"
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' "$TMP/$1.txt")
  p50=$(awk '$1 == "50%" {print $2}' "$TMP/$1.txt")
  p99=$(awk '$1 == "99%" {print $2}' "$TMP/$1.txt")
  echo "$1 $rps $p50 $p99"
}
echo "body: $(wc -c < "$TMP/body.json") bytes; features in play for bench-co: $FEATURES; duration $DURATION each" >&2
NOOP=$(run noop "http://127.0.0.1:$BASE_PORT/noop")
BASE=$(run baseline "http://127.0.0.1:$BASE_PORT/flags/bench-event-1/check")
ENT=$(run entitled "http://127.0.0.1:$PORT/flags/bench-event-1/check")
grep -q '"value":true' "$TMP/body.json" || { echo "unexpected check body: $(cat "$TMP/body.json")"; exit 1; }

echo
echo "| target | requests/s | p50 | p99 |"
echo "|---|---|---|---|"
for line in "$NOOP" "$BASE" "$ENT"; do
  set -- $line
  echo "| $1 | $2 | $3 | $4 |"
done
python3 - "$BASE" "$ENT" <<'PY'
import sys
def ms(v):
    return float(v[:-2]) if v.endswith("ms") else float(v[:-2]) / 1000 if v.endswith("us") else float(v[:-1]) * 1000
b = sys.argv[1].split(); e = sys.argv[2].split()
print(f"\nentitled / baseline: throughput {float(e[1]) / float(b[1]):.2f}x, p99 {ms(e[3]) / ms(b[3]):.2f}x")
PY
