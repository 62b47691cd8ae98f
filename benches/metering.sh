#!/usr/bin/env bash
# Durable event ingestion through POST /batch (the SDKs' capture format): batches of 100
# track events from 8 concurrent senders, spread over 1,000 companies and 3 event names.
# Afterwards the usage counters must add up to exactly the events acknowledged.
#
#   benches/metering.sh              # 15 s
#   DURATION=30s benches/metering.sh
#   ENTITLED_BIN=/path/to/other/entitled benches/metering.sh   # an A/B of two builds
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-15s}
PORT=${PORT:-18090}
DB=entitled_bench_metering
command -v wrk >/dev/null || { echo "wrk is required (apt-get install wrk)"; exit 1; }
./scripts/ensure-postgres.sh >/dev/null
cargo build --release --quiet
BIN=${ENTITLED_BIN:-${CARGO_TARGET_DIR:-target}/release/entitled}
PSQL="psql -h 127.0.0.1 -U postgres -qAt"
$PSQL -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$DB
export ENTITLED_SERVER__LISTEN=127.0.0.1:$PORT
export ENTITLED_LOG__LEVEL=warn
$BIN migrate >/dev/null
$BIN seed fixtures/demo-catalog.toml >/dev/null
KEY=$($BIN api-key create --environment development --name bench | tail -n1)

TMP=$(mktemp -d)
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
$BIN serve & PIDS+=($!)
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null && break; sleep 0.1; done

cat > "$TMP/batch.lua" <<LUA
local events = {"api_call", "report_generated", "ai_tokens"}
math.randomseed(os.time())
request = function()
  local parts = {}
  for i = 1, 100 do
    parts[i] = string.format('{"type":"track","body":{"event":"%s","company":{"id":"bench-%d"},"quantity":1}}',
      events[math.random(3)], math.random(1000))
  end
  return wrk.format("POST", "/batch", {["Content-Type"] = "application/json", ["X-Schematic-Api-Key"] = "$KEY"},
    '{"events":[' .. table.concat(parts, ",") .. ']}')
end
LUA
cat > "$TMP/health.lua" <<'LUA'
wrk.method = "GET"
LUA

# Warm up: creates the 1,000 companies (track creates what it names) outside the window.
wrk -t2 -c8 -d3s -s "$TMP/batch.lua" "http://127.0.0.1:$PORT" >/dev/null
BEFORE=$($PSQL -d $DB -c "SELECT count(*) FROM events")

wrk -t2 -c8 -d"$DURATION" --latency -s "$TMP/batch.lua" "http://127.0.0.1:$PORT" > "$TMP/run.txt"
wrk -t2 -c8 -d5s "http://127.0.0.1:$PORT/health" > "$TMP/noop.txt"

AFTER=$($PSQL -d $DB -c "SELECT count(*) FROM events")
if [ -n "$($PSQL -d $DB -c "SELECT to_regclass('usage_totals')")" ]; then
  COUNTED=$($PSQL -d $DB -c "SELECT sum(all_time) FROM usage_totals")
else # a build from before migration 0011 (an A/B)
  COUNTED=$($PSQL -d $DB -c "SELECT sum(count) FROM usage_counters WHERE period = 'all_time'")
fi
COMPANIES=$($PSQL -d $DB -c "SELECT count(*) FROM companies")
RPS=$(awk '/Requests\/sec/ {print $2}' "$TMP/run.txt")
NON2XX=$(awk '/Non-2xx/ {print $NF}' "$TMP/run.txt")
P50=$(awk '$1 == "50%" {print $2}' "$TMP/run.txt")
P99=$(awk '$1 == "99%" {print $2}' "$TMP/run.txt")
NOOP=$(awk '/Requests\/sec/ {print $2}' "$TMP/noop.txt")
python3 - "$RPS" "$BEFORE" "$AFTER" "$COUNTED" "$COMPANIES" "${NON2XX:-0}" "$P50" "$P99" "$NOOP" "$DURATION" <<'PY'
import sys
rps, before, after, counted, companies, non2xx, p50, p99, noop, dur = sys.argv[1:]
stored = int(after) - int(before)
print(f"requests/s (batches of 100): {float(rps):.0f}  →  events/s acknowledged: {float(rps) * 100:,.0f}")
print(f"events stored in the window: {stored:,}  ({stored / float(dur.rstrip('s')):,.0f}/s over {dur})")
print(f"batch latency p50 {p50}, p99 {p99}; non-2xx responses: {non2xx}")
print(f"usage counted (all_time counters, incl. warm-up): {int(counted):,}; events stored in total: {int(after):,}; companies: {companies}")
print(f"load generator on a do-nothing GET /health: {float(noop):,.0f} requests/s")
assert int(counted) == int(after), "usage counters and stored events disagree"
PY
