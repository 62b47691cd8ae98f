#!/usr/bin/env bash
# Usage billed through Stripe meters, against the fake Stripe API (benches/fake_stripe_server.rs
# with METERED: a meter, a metered price, COMPANIES customers subscribed to it):
#
#   benches/meters.sh                          # 100,000 events over 100 companies
#   EVENTS=2000 COMPANIES=10 LAG_SECS=5 PROFILE=debug benches/meters.sh   # a check of the script
#
# 1. throughput, no rate limit (stripe_max_requests_per_sec = 100000), no aggregation: EVENTS
#    pay-as-you-go track events (one meter event each) are posted in batches of 100 while the
#    sender drains; reported: meter events accepted by the fake per second (first to last
#    acceptance), and whether the fake's total equals the units tracked;
# 2. lag: the limit at 20 requests/s and stripe_meter_flush_secs = 5, events tracked at
#    LAG_RATE batches/s for LAG_SECS; reported: p99 of entitled_stripe_meter_event_lag_seconds
#    (from the track event's commit to Stripe's acceptance; aggregation adds up to 5 s).
set -euo pipefail
cd "$(dirname "$0")/.."
EVENTS=${EVENTS:-100000}
COMPANIES=${COMPANIES:-100}
LAG_SECS=${LAG_SECS:-30}
LAG_RATE=${LAG_RATE:-10}
PORT=${PORT:-18091}
DB=entitled_bench_meters
KEY=sk_test_bench
TARGET=${CARGO_TARGET_DIR:-target}
./scripts/ensure-postgres.sh >/dev/null

# PROFILE=debug checks the script itself without a release build (figures meaningless).
PROFILE=${PROFILE:-release}
if [ "$PROFILE" = release ]; then
  cargo build --release --quiet
  FAKE=$(cargo bench --bench fake_stripe_server --no-run 2>&1 | grep -o '[^ (]*/release/deps/fake_stripe_server-[0-9a-f]*' | head -n1)
else
  cargo build --quiet
  FAKE=$(cargo test --bench fake_stripe_server --no-run 2>&1 | grep -o '[^ (]*/debug/deps/fake_stripe_server-[0-9a-f]*' | head -n1)
fi
BIN=$TARGET/$PROFILE/entitled
PSQL="psql -h 127.0.0.1 -U postgres -qAt"
E=http://127.0.0.1:$PORT

TMP=$(mktemp -d)
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT

start_fake() {
  PORT=0 METERED=$COMPANIES API_KEY=$KEY "$FAKE" serve >"$TMP/fake.out" 2>"$TMP/fake.err" &
  FAKE_PID=$!
  PIDS+=("$FAKE_PID")
  for _ in $(seq 1 300); do grep -q FAKE_STRIPE_URL "$TMP/fake.out" && break; sleep 0.1; done
  URL=$(sed -n 's/^FAKE_STRIPE_URL=//p' "$TMP/fake.out")
  [ -n "$URL" ] || { echo "the fake Stripe did not start"; cat "$TMP/fake.err"; exit 1; }
  export ENTITLED_ENVIRONMENTS__0__STRIPE_API_BASE=$URL
}
stop_fake() {
  kill "$FAKE_PID"; wait "$FAKE_PID" 2>/dev/null || true
  sed -n 's/^.*meter events accepted/meter events accepted/p' "$TMP/fake.err" >&2
}
start_serve() {
  $BIN serve >"$TMP/serve.log" 2>&1 &
  SERVE_PID=$!
  PIDS+=("$SERVE_PID")
  for _ in $(seq 1 300); do curl -sf "$E/ready" >/dev/null && return; sleep 0.1; done
  echo "entitled serve did not become ready:"; cat "$TMP/serve.log"; exit 1
}
stop_serve() { kill "$SERVE_PID"; wait "$SERVE_PID" 2>/dev/null || true; }
api() { curl -sf -H "X-Schematic-Api-Key: $API" -H 'content-type: application/json' "$@"; }

# A fresh database with the catalog: feature `calls`, plan `metered` on prod_base, entitlement
# pay_as_you_go billed to price_metered; the fake's account reconciled in.
setup() {
  $PSQL -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
  $BIN migrate >/dev/null
  API=$($BIN api-key create --environment development --name bench | tail -n1)
  start_serve
  FEATURE=$(api -X POST "$E/features" -d '{"name":"Calls","key":"calls","feature_type":"event","event_subtype":"call"}' | jq -r .data.id)
  PLAN=$(api -X POST "$E/plans" -d '{"name":"Metered","key":"metered","plan_type":"plan","billing_product_id":"prod_base"}' | jq -r .data.id)
  RUN=$(api -X POST "$E/stripe/reconcile" -d '{}' | jq -r .data.id)
  for _ in $(seq 1 600); do
    [ "$(api "$E/stripe/reconcile-runs/$RUN" | jq -r .data.status)" != running ] && break; sleep 0.1
  done
  api -X POST "$E/plan-entitlements" -d "{\"plan_id\":\"$PLAN\",\"feature_id\":\"$FEATURE\",\"value_type\":\"numeric\",\"value_numeric\":0,\"metric_period\":\"current_month\",\"price_behavior\":\"pay_as_you_go\",\"monthly_metered_price_id\":\"price_metered\"}" >/dev/null
}
# Batches of 100 track events, quantity 1, round-robin over the companies.
batch() {
  python3 - "$1" "$COMPANIES" <<'PY'
import json, sys
start, companies = int(sys.argv[1]), int(sys.argv[2])
events = [{"type": "track", "body": {"event": "call", "company": {"company_id": f"metered-{(start + j) % companies + 1}"}, "quantity": 1}} for j in range(100)]
print(json.dumps({"events": events}))
PY
}
pending() { $PSQL -d $DB -c "SELECT count(*) FROM meter_events WHERE status = 'pending'"; }

export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$DB
export ENTITLED_SERVER__LISTEN=127.0.0.1:$PORT
export ENTITLED_LOG__LEVEL=warn
export ENTITLED_ENVIRONMENTS__0__STRIPE_API_KEY=$KEY
export ENTITLED_SCHEDULE__RECONCILE=""

echo "== 1. throughput: $EVENTS events, $COMPANIES companies, no rate limit, no aggregation" >&2
export ENTITLED_ENVIRONMENTS__0__STRIPE_MAX_REQUESTS_PER_SEC=100000
export ENTITLED_ENVIRONMENTS__0__STRIPE_METER_FLUSH_SECS=0
start_fake
setup
for ((i = 0; i < EVENTS; i += 100)); do batch "$i"; done >"$TMP/batches.jsonl"
STARTED=$(date +%s.%N)
while read -r line; do printf '%s' "$line" | api -X POST "$E/batch" --data-binary @- >/dev/null; done <"$TMP/batches.jsonl" &
POSTER=$!
wait "$POSTER"
TRACKED=$(date +%s.%N)
for _ in $(seq 1 6000); do [ "$(pending)" = 0 ] && break; sleep 0.1; done
DRAINED=$(date +%s.%N)
SENT=$($PSQL -d $DB -c "SELECT count(*) FROM meter_events WHERE status = 'sent'")
stop_serve
stop_fake
grep -h METER_EVENTS_ACCEPTED "$TMP/fake.out" >"$TMP/accepted" || true
python3 - "$EVENTS" "$SENT" "$STARTED" "$TRACKED" "$DRAINED" "$(cat "$TMP/accepted")" <<'PY'
import sys
events, sent, started, tracked, drained, accepted = sys.argv[1:]
fields = dict(f.split("=") for f in accepted.split()) if accepted else {}
print(f"tracked {int(events):,} events in {float(tracked) - float(started):.1f} s; all sent after {float(drained) - float(started):.1f} s")
print(f"meter events sent: {int(sent):,}; accepted by the fake: {fields.get('METER_EVENTS_ACCEPTED', '?')} "
      f"(value {fields.get('METER_VALUE', '?')}), {fields.get('METER_RATE', '?')}/s from the first to the last")
assert int(sent) == int(events), "every billable event became one sent meter event"
assert float(fields.get("METER_VALUE", -1)) == float(events), "Stripe's total equals the units tracked"
PY

echo "== 2. lag: 20 requests/s, stripe_meter_flush_secs = 5, $LAG_RATE batches/s for $LAG_SECS s" >&2
export ENTITLED_ENVIRONMENTS__0__STRIPE_MAX_REQUESTS_PER_SEC=20
export ENTITLED_ENVIRONMENTS__0__STRIPE_METER_FLUSH_SECS=5
start_fake
setup
END=$(( $(date +%s) + LAG_SECS ))
i=0
while [ "$(date +%s)" -lt "$END" ]; do
  batch "$i" | api -X POST "$E/batch" --data-binary @- >/dev/null
  i=$((i + 100))
  sleep "$(python3 -c "print(1 / $LAG_RATE)")"
done
for _ in $(seq 1 1200); do [ "$(pending)" = 0 ] && break; sleep 0.1; done
curl -sf "$E/metrics" | grep '^entitled_stripe_meter_event_lag_seconds_bucket' >"$TMP/lag"
ROWS=$($PSQL -d $DB -c "SELECT count(*) FROM meter_events WHERE status = 'sent'")
stop_serve
stop_fake
python3 - "$TMP/lag" "$i" "$ROWS" <<'PY'
import re, sys
buckets = []
for line in open(sys.argv[1]):
    m = re.search(r'le="([^"]+)"\} (\S+)', line)
    if m:
        buckets.append((float("inf") if m.group(1) == "+Inf" else float(m.group(1)), float(m.group(2))))
total = buckets[-1][1] if buckets else 0
p99 = next((le for le, n in buckets if total and n >= 0.99 * total), None)
print(f"tracked {int(sys.argv[2]):,} events; meter events sent: {sys.argv[3]} (aggregated per company and 5 s window)")
print(f"lag from track to Stripe acceptance: p99 ≤ {p99} s (histogram bucket), over {int(total)} meter events")
PY
