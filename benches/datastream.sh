#!/usr/bin/env bash
# The datastream: the official SDK's check_flag latency in datastream mode against the same
# call over HTTP to entitled, in one run (benches/sdk_latency.py), and the messages per second
# one replica pushes to 1,000 subscribed connections (benches/datastream_fanout.rs).
#
#   benches/datastream.sh                       # CHECKS=2000, CONNS=1000, FANOUT_SECS=10
#   CHECKS=500 CONNS=200 FANOUT_SECS=5 benches/datastream.sh
#
# Needs the SDK with its datastream extra: ENTITLED_SDK_PYTHON (scripts/test.sh sets up
# target/sdk-venv with schematichq[datastream]==1.4.6).
set -euo pipefail
cd "$(dirname "$0")/.."
CHECKS=${CHECKS:-2000}
CONNS=${CONNS:-1000}
FANOUT_SECS=${FANOUT_SECS:-10}
PORT=${PORT:-18090}
DB=entitled_bench_datastream
PYTHON=${ENTITLED_SDK_PYTHON:-target/sdk-venv/bin/python}
"$PYTHON" -c "import schematic, wasmtime, websockets" || { echo "$PYTHON lacks schematichq[datastream]"; exit 1; }
. benches/lib.sh

release_build
FANOUT=$(bench_bin datastream_fanout)
BIN=${ENTITLED_BIN:-$RELEASE_BIN}

fresh_db $DB "$PORT"
export ENTITLED_DATASTREAM__MAX_CONNECTIONS_PER_KEY=$((CONNS + 10))
$BIN migrate >/dev/null
$BIN seed fixtures/demo-catalog.toml >/dev/null
KEY=$(bench_key $BIN)

PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT
$BIN serve & PIDS+=($!)
wait_ready "$PORT"
H="X-Schematic-Api-Key: $KEY"
PRO=$(plan_id Pro)
curl -sf -X POST "http://127.0.0.1:$PORT/companies" -H "$H" \
  -d "{\"keys\": {\"id\": \"bench-co\"}, \"base_plan_id\": \"$PRO\", \"traits\": {\"seats_used\": 1}}" >/dev/null

echo "==> SDK check_flag latency (schematichq 1.4.6), $CHECKS checks each"
"$PYTHON" benches/sdk_latency.py "http://127.0.0.1:$PORT" "$KEY" "$CHECKS"
echo "==> fan-out to $CONNS connections for ${FANOUT_SECS}s"
"$FANOUT" "http://127.0.0.1:$PORT" "$KEY" "$CONNS" "$FANOUT_SECS"
