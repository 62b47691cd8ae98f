#!/usr/bin/env bash
# Check throughput and latency against a baseline measured in the same run.
#
#   benches/checks.sh            # 15 s per measurement
#   DURATION=30s benches/checks.sh
#
# Loads the demo catalog plus benches/bench-catalog.toml and benches/bench-catalog-50.toml
# (50 flags in all), puts companies on Pro with both add-ons, then drives with wrk (2
# threads, 64 keep-alive connections):
#   1. /noop on the baseline server: what the load generator can do on this machine;
#   2. the baseline: an axum handler returning a fixed check body of the same size;
#   3. entitled: POST /flags/bench-event-1/check for that company;
#   4. the all-flags baseline (a fixed body the size of entitled's answer) and entitled's
#      POST /flags/check (every flag) for that company;
#   5. the check-bulk baseline and entitled's POST /flags/check-bulk with BULK_CONTEXTS
#      (default 10) companies, reported also per (context x flag) evaluated.
#
#   PERF_DIR=/tmp/prof benches/checks.sh   # also a `perf record` of the server per measurement
#   ENTITLED_BIN=/path/to/other/entitled benches/checks.sh   # an A/B against the same baseline
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-15s}
PORT=${PORT:-18080}
BASE_PORT=$((PORT + 1))
BULK_CONTEXTS=${BULK_CONTEXTS:-10}
DB=entitled_bench
command -v wrk >/dev/null || { echo "wrk is required (apt-get install wrk)"; exit 1; }
. benches/lib.sh

release_build
BASELINE=$(bench_bin baseline_server)
# ENTITLED_BIN runs another build (an A/B) against the same baseline.
BIN=${ENTITLED_BIN:-$RELEASE_BIN}

fresh_db $DB "$PORT"
$BIN migrate >/dev/null
$BIN seed fixtures/demo-catalog.toml >/dev/null
$BIN seed benches/bench-catalog.toml >/dev/null
$BIN seed benches/bench-catalog-50.toml >/dev/null
KEY=$(bench_key $BIN)

TMP=$(mktemp -d)
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$TMP"; }
PIDS=()
trap cleanup EXIT
$BIN serve & PIDS+=($!)
wait_ready "$PORT"

H="X-Schematic-Api-Key: $KEY"
PRO=$(plan_id Pro); ANALYTICS=$(plan_id Analytics); SUPPORT=$(plan_id Premium)
company() { # key
  curl -sf -X POST "http://127.0.0.1:$PORT/companies" -H "$H" \
    -d "{\"keys\": {\"id\": \"$1\"}, \"base_plan_id\": \"$PRO\", \"add_on_ids\": [\"$ANALYTICS\", \"$SUPPORT\"], \"traits\": {\"bench_trait_1\": 3, \"bench_trait_limit\": 9, \"wide_trait_2\": 4}}" >/dev/null
}
company bench-co
for i in $(seq 2 "$BULK_CONTEXTS"); do company "bench-co-$i"; done
REQ='{"company":{"id":"bench-co"},"user":null}'
BULK_REQ=$(python3 -c 'import json,sys; n=int(sys.argv[1]); print(json.dumps({"contexts": [{"company": {"id": "bench-co" if i == 1 else f"bench-co-{i}"}} for i in range(1, n + 1)]}, separators=(",", ":")))' "$BULK_CONTEXTS")
curl -sf -X POST "http://127.0.0.1:$PORT/flags/bench-event-1/check" -H "$H" -d "$REQ" > "$TMP/body.json"
curl -sf -X POST "http://127.0.0.1:$PORT/flags/check" -H "$H" -d "$REQ" > "$TMP/all.json"
curl -sf -X POST "http://127.0.0.1:$PORT/flags/check-bulk" -H "$H" -d "$BULK_REQ" > "$TMP/bulk.json"
FLAGS=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["data"]["flags"]))' "$TMP/all.json")
ENTITLED=$(python3 -c 'import json,sys; print(sum(f["value"] for f in json.load(open(sys.argv[1]))["data"]["flags"]))' "$TMP/all.json")
python3 -c 'import json,sys; d=json.load(open(sys.argv[1]))["data"]["data"]; assert len(d) == int(sys.argv[2]) and all(len(c["flags"]) == int(sys.argv[3]) for c in d), "bad bulk answer"' "$TMP/bulk.json" "$BULK_CONTEXTS" "$FLAGS"
[ "$FLAGS" -eq 50 ] || { echo "expected 50 flags, got $FLAGS"; exit 1; }

"$BASELINE" "$BASE_PORT" "$TMP/body.json" "$TMP/all.json" "$TMP/bulk.json" & PIDS+=($!)
for _ in $(seq 1 100); do curl -sf -X POST "http://127.0.0.1:$BASE_PORT/noop" >/dev/null && break; sleep 0.1; done

lua() { # file body
  cat > "$1" <<LUA
wrk.method = "POST"
wrk.body = '$2'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["X-Schematic-Api-Key"] = "$KEY"
LUA
}
lua "$TMP/post.lua" "$REQ"
lua "$TMP/bulk.lua" "$BULK_REQ"

# CPU seconds (user + system) a process has used so far.
cpu() { awk -v t="$(getconf CLK_TCK)" '{printf "%.3f", ($14 + $15) / t}' "/proc/$1/stat"; }
# Context switches (voluntary and not) of all of a process's threads so far.
switches() { cat /proc/"$1"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s += $2} END {print s}'; }
run() { # name url [lua]
  local pid=${PIDS[1]} before perf=
  [[ $1 == entitled* ]] && pid=${PIDS[0]}
  before=$(cpu "$pid")
  local switched
  switched=$(switches "$pid")
  if [ -n "${PERF_DIR:-}" ] && [ "$1" != noop ]; then
    # A profile of the server during this measurement (perf costs a few percent of throughput).
    mkdir -p "$PERF_DIR"
    perf record -q -F 999 -p "$pid" -o "$PERF_DIR/$1.data" -- sleep "${DURATION%s}" 2>/dev/null &
    perf=$!
  fi
  wrk -t2 -c64 -d"$DURATION" --latency -s "${3:-$TMP/post.lua}" "$2" > "$TMP/$1.txt"
  local rps p50 p99
  rps=$(awk '/Requests\/sec/ {print $2}' "$TMP/$1.txt")
  p50=$(awk '$1 == "50%" {print $2}' "$TMP/$1.txt")
  p99=$(awk '$1 == "99%" {print $2}' "$TMP/$1.txt")
  [ -z "$perf" ] || wait "$perf" || true
  # The server's CPU per request: what it costs, less sensitive to a noisy machine than
  # requests/s (wrk shares the two cores).
  local total us
  total=$(awk '/requests in/ {print $1}' "$TMP/$1.txt")
  us=$(python3 -c 'import sys; print(f"{(float(sys.argv[2]) - float(sys.argv[1])) * 1e6 / int(sys.argv[3]):.1f}")' "$before" "$(cpu "$pid")" "$total")
  switched=$(python3 -c 'import sys; print(f"{(int(sys.argv[2]) - int(sys.argv[1])) / int(sys.argv[3]):.3f}")' "$switched" "$(switches "$pid")" "$total")
  echo "$1 $rps $p50 $p99 $us $switched"
}
echo "check body: $(wc -c < "$TMP/body.json") bytes; all-flags body: $(wc -c < "$TMP/all.json") bytes ($FLAGS flags, $ENTITLED true for bench-co); check-bulk body: $(wc -c < "$TMP/bulk.json") bytes ($BULK_CONTEXTS contexts); duration $DURATION each" >&2
NOOP=$(run noop "http://127.0.0.1:$BASE_PORT/noop")
BASE=$(run baseline "http://127.0.0.1:$BASE_PORT/flags/bench-event-1/check")
ENT=$(run entitled "http://127.0.0.1:$PORT/flags/bench-event-1/check")
BASE_ALL=$(run baseline-all "http://127.0.0.1:$BASE_PORT/flags/check")
ENT_ALL=$(run entitled-all "http://127.0.0.1:$PORT/flags/check")
BASE_BULK=$(run baseline-bulk "http://127.0.0.1:$BASE_PORT/flags/check-bulk" "$TMP/bulk.lua")
ENT_BULK=$(run entitled-bulk "http://127.0.0.1:$PORT/flags/check-bulk" "$TMP/bulk.lua")
grep -q '"value":true' "$TMP/body.json" || { echo "unexpected check body: $(cat "$TMP/body.json")"; exit 1; }

echo
echo "| target | requests/s | p50 | p99 | server CPU µs/request | server context switches/request |"
echo "|---|---|---|---|---|---|"
for line in "$NOOP" "$BASE" "$ENT" "$BASE_ALL" "$ENT_ALL" "$BASE_BULK" "$ENT_BULK"; do
  set -- $line
  echo "| $1 | $2 | $3 | $4 | $5 | $6 |"
done
python3 - "$BASE" "$ENT" "$BASE_ALL" "$ENT_ALL" "$BASE_BULK" "$ENT_BULK" "$FLAGS" "$BULK_CONTEXTS" <<'PY'
import sys
def ms(v):
    return float(v[:-2]) if v.endswith("ms") else float(v[:-2]) / 1000 if v.endswith("us") else float(v[:-1]) * 1000
b, e, ba, ea, bb, eb = (a.split() for a in sys.argv[1:7])
flags, contexts = int(sys.argv[7]), int(sys.argv[8])
print()
print(f"single check, entitled / baseline: throughput {float(e[1]) / float(b[1]):.2f}x, p99 {ms(e[3]) / ms(b[3]):.2f}x; "
      f"server CPU per request {float(e[4]):.1f} / {float(b[4]):.1f} us ({float(e[4]) / float(b[4]):.2f}x)")
print(f"all flags ({flags}), entitled / all-flags baseline: throughput {float(ea[1]) / float(ba[1]):.2f}x, p99 {ms(ea[3]) / ms(ba[3]):.2f}x; "
      f"entitled all-flags / single-check baseline: {float(ea[1]) / float(b[1]):.2f}x requests/s")
per = float(eb[1]) * contexts * flags
print(f"check-bulk ({contexts} contexts x {flags} flags), entitled / bulk baseline: throughput {float(eb[1]) / float(bb[1]):.2f}x, "
      f"p99 {ms(eb[3]) / ms(bb[3]):.2f}x; {per:,.0f} (context x flag) answers/s")
PY
