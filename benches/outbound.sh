#!/usr/bin/env bash
# Outbound webhook delivery against a baseline measured in the same run.
#
#   benches/outbound.sh                      # 50 endpoints × 400 changes = 20,000 deliveries
#   ENDPOINTS=50 CHANGES=1000 SAMPLES=300 benches/outbound.sh
#
# The load generator (benches/outbound_load.rs) serves the receiver itself and measures:
#   1. baseline: the same number of deliveries posted straight to the receiver with
#      CONCURRENCY in flight (entitled's webhooks.concurrency): HTTP on this machine, no database;
#   2. throughput: the receiver holds its requests unanswered while CHANGES companies are
#      created (one company.created message per endpoint each, ENDPOINTS endpoints), then
#      answers: deliveries/s from the opening to the last delivery received;
#   3. latency at idle: one endpoint, SAMPLES company creations 100 ms apart: the delay from
#      each write's answer (committed) to its first delivery attempt at the receiver.
set -euo pipefail
cd "$(dirname "$0")/.."
ENDPOINTS=${ENDPOINTS:-50}
CHANGES=${CHANGES:-400}
SAMPLES=${SAMPLES:-200}
CONCURRENCY=${CONCURRENCY:-16}
PORT=${PORT:-18100}
DB=entitled_bench_outbound
. benches/lib.sh

release_build
LOAD=$(bench_bin outbound_load)

fresh_db $DB "$PORT"
export ENTITLED_WEBHOOKS__ALLOW_PRIVATE_TARGETS=true
export ENTITLED_WEBHOOKS__CONCURRENCY=$CONCURRENCY
# Attempts held at the closed receiver (the backlog phase) must not time out.
export ENTITLED_WEBHOOKS__TIMEOUT_SECS=300
$BIN migrate >/dev/null
KEY=$(bench_key $BIN)

PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; }
trap cleanup EXIT
$BIN serve & PIDS+=($!)
wait_ready "$PORT"

echo "==> $ENDPOINTS endpoints × $CHANGES changes, concurrency $CONCURRENCY; $SAMPLES latency samples" >&2
OUT=$("$LOAD" "http://127.0.0.1:$PORT" "$KEY" "$ENDPOINTS" "$CHANGES" "$CONCURRENCY" "$SAMPLES")
echo "$OUT" >&2
FAILED=$($PSQL -d $DB -c "SELECT count(*) FROM webhook_events WHERE status <> 'success'")
ATTEMPTS=$($PSQL -d $DB -c "SELECT count(*) FROM webhook_attempts")

python3 - "$OUT" "$FAILED" "$ATTEMPTS" <<'PY'
import sys
out, failed, attempts = sys.argv[1:]
lines = {l.split()[0]: l.split() for l in out.splitlines() if l.strip()}
val = lambda k, f: float(lines[k][lines[k].index(f) + 1])
base, ent = val("baseline", "rate"), val("entitled", "rate")
print()
print("| measurement | figure |")
print("|---|---|")
print(f"| baseline: receiver driven directly, same concurrency | {base:,.0f} deliveries/s |")
print(f"| entitled: held messages drained ({lines['entitled'][2]} of {lines['entitled'][4]} deliveries) | {ent:,.0f} deliveries/s |")
if "p50_ms" in lines["latency"]:
    print(f"| entitled at idle: committed write → first attempt, p50 / p99 / max | "
          f"{val('latency', 'p50_ms'):.1f} / {val('latency', 'p99_ms'):.1f} / {val('latency', 'max_ms'):.1f} ms |")
print()
print(f"entitled / baseline: {ent / base:.2f}x; messages not in success at the end: {failed}; attempts recorded: {attempts}")
PY
