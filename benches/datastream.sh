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
./scripts/ensure-postgres.sh >/dev/null

cargo build --release --quiet
FANOUT=$(cargo bench --bench datastream_fanout --no-run 2>&1 | grep -o '[^ (]*/release/deps/datastream_fanout-[0-9a-f]*' | head -n1)
BIN=${ENTITLED_BIN:-${CARGO_TARGET_DIR:-target}/release/entitled}

psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -qc "CREATE DATABASE $DB"
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$DB
export ENTITLED_SERVER__LISTEN=127.0.0.1:$PORT
export ENTITLED_LOG__LEVEL=warn
export ENTITLED_DATASTREAM__MAX_CONNECTIONS_PER_KEY=$((CONNS + 10))
$BIN migrate >/dev/null
$BIN seed fixtures/demo-catalog.toml >/dev/null
KEY=$($BIN api-key create --environment development --name bench | tail -n1)

PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null || true' EXIT
$BIN serve & PIDS+=($!)
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null && break; sleep 0.1; done
H="X-Schematic-Api-Key: $KEY"
PRO=$(curl -sf "http://127.0.0.1:$PORT/plans?q=Pro" -H "$H" | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])')
curl -sf -X POST "http://127.0.0.1:$PORT/companies" -H "$H" \
  -d "{\"keys\": {\"id\": \"bench-co\"}, \"base_plan_id\": \"$PRO\", \"traits\": {\"seats_used\": 1}}" >/dev/null

echo "==> SDK check_flag latency (schematichq 1.4.6), $CHECKS checks each"
"$PYTHON" benches/sdk_latency.py "http://127.0.0.1:$PORT" "$KEY" "$CHECKS"
echo "==> fan-out to $CONNS connections for ${FANOUT_SECS}s"
"$FANOUT" "http://127.0.0.1:$PORT" "$KEY" "$CONNS" "$FANOUT_SECS"
