#!/usr/bin/env bash
# Stripe webhook throughput against a baseline measured in the same run.
#
#   benches/webhooks.sh              # 20 s per measurement
#   DURATION=30 benches/webhooks.sh
#
# 1. the load generator against the baseline server's /noop: what it can drive on this
#    machine, signing included;
# 2. the baseline: pgbench, 32 clients (2 threads), one single-row INSERT per transaction into
#    a scratch table, on the same Postgres;
# 3. entitled: 32 concurrent senders posting signed, distinct events (customer.updated and
#    customer.subscription.updated over CUSTOMERS customers, the product linked to a plan),
#    each verified, stored in the inbox and acknowledged; then we wait until the inbox has
#    nothing pending and count applied events per second from the first receipt to the last
#    apply;
# 4. a burst: BURST (40,000) events as fast as the senders can, then the time from the last
#    acknowledgement to the last apply (how long entitlements lag behind Stripe's last word).
#
#   DURATION=2 BURST=500 CUSTOMERS=100 benches/webhooks.sh   # a quick check that it runs
#   ENTITLED_BIN=/path/to/other/entitled benches/webhooks.sh  # an A/B against the same baselines
#   LOAD_BIN=/path/to/other/webhook_load benches/webhooks.sh  # another load generator
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-20}
SENDERS=${SENDERS:-32}
CUSTOMERS=${CUSTOMERS:-5000}
BURST=${BURST:-40000}
PORT=${PORT:-18090}
BASE_PORT=$((PORT + 1))
DB=entitled_bench_webhooks
SECRET=whsec_bench_0123456789abcdef
command -v pgbench >/dev/null || { echo "pgbench is required (apt-get install postgresql-client)"; exit 1; }
. benches/lib.sh

release_build
# LOAD_BIN runs another load generator (an A/B of the generator itself).
LOAD=${LOAD_BIN:-$(bench_bin webhook_load)}
BASELINE=$(bench_bin baseline_server)
# ENTITLED_BIN runs another build (an A/B) against the same baselines.
BIN=${ENTITLED_BIN:-$RELEASE_BIN}

fresh_db $DB "$PORT"
export ENTITLED_ENVIRONMENTS__0__STRIPE_WEBHOOK_SECRETS="[\"$SECRET\"]"
$BIN migrate >/dev/null
$PSQL -d $DB -c "INSERT INTO plans (id, key, name, plan_type, billing_product_id)
                 VALUES ('plan_bench_pro', 'bench-pro', 'Bench Pro', 'plan', 'prod_bench_pro')"
$PSQL -d $DB -c "CREATE TABLE bench_insert (id bigserial PRIMARY KEY, payload text NOT NULL,
                 created_at timestamptz NOT NULL DEFAULT now())"

TMP=$(mktemp -d)
PIDS=()
cleanup() { kill "${PIDS[@]}" 2>/dev/null || true; rm -rf "$TMP"; }
trap cleanup EXIT
"$BASELINE" "$BASE_PORT" /dev/null & PIDS+=($!)
$BIN serve & PIDS+=($!)
wait_ready "$PORT" "${PIDS[1]}"

echo "==> load generator ceiling: $SENDERS senders → baseline /noop, ${DURATION}s" >&2
NOOP=$("$LOAD" "http://127.0.0.1:$BASE_PORT/noop" "$SECRET" "$DURATION" "$SENDERS" "$CUSTOMERS")
echo "$NOOP" >&2

echo "==> baseline: pgbench -n -c $SENDERS -j 2 -T $DURATION (single-row INSERT)" >&2
echo "INSERT INTO bench_insert (payload) VALUES ('evt_bench customer.updated cus_bench');" > "$TMP/insert.sql"
pgbench -h 127.0.0.1 -U postgres -n -c "$SENDERS" -j 2 -T "$DURATION" -f "$TMP/insert.sql" "$DB" > "$TMP/pgbench.txt" 2>&1
PG_TPS=$(awk '/^tps = / {print $3; exit}' "$TMP/pgbench.txt")
echo "pgbench tps $PG_TPS" >&2

echo "==> entitled: $SENDERS senders → POST /webhooks/stripe, ${DURATION}s" >&2
ENT=$("$LOAD" "http://127.0.0.1:$PORT/webhooks/stripe" "$SECRET" "$DURATION" "$SENDERS" "$CUSTOMERS")
echo "$ENT" >&2
for _ in $(seq 1 600); do
  PENDING=$($PSQL -d $DB -c "SELECT count(*) FROM stripe_events WHERE status IN ('pending', 'failed')")
  [ "$PENDING" = 0 ] && break
  sleep 0.5
done
read -r APPLIED OTHER WINDOW < <($PSQL -F ' ' -d $DB -c "SELECT count(*) FILTER (WHERE status = 'applied'),
    count(*) FILTER (WHERE status <> 'applied'),
    extract(epoch FROM max(applied_at) - min(received_at)) FROM stripe_events WHERE id LIKE 'evt\_bench\_%'")
wait_applied() {
  for _ in $(seq 1 1200); do
    PENDING=$($PSQL -d $DB -c "SELECT count(*) FROM stripe_events WHERE status IN ('pending', 'failed')")
    [ "$PENDING" = 0 ] && return
    sleep 0.1
  done
}

echo "==> burst: $BURST events from $SENDERS senders → POST /webhooks/stripe" >&2
BURST_OUT=$("$LOAD" "http://127.0.0.1:$PORT/webhooks/stripe" "$SECRET" 0 "$SENDERS" "$CUSTOMERS" "$BURST" burst)
echo "$BURST_OUT" >&2
wait_applied
LAST_ACK=$(echo "$BURST_OUT" | awk '{for (i = 1; i < NF; i++) if ($i == "last_ack_epoch") print $(i + 1)}')
read -r BURST_APPLIED BURST_LAG < <($PSQL -F ' ' -d $DB -c "SELECT count(*) FILTER (WHERE status = 'applied'),
    extract(epoch FROM max(applied_at)) - $LAST_ACK FROM stripe_events WHERE id LIKE 'evt\_burst\_%'")

MEMBERSHIPS=$($PSQL -d $DB -c "SELECT count(*) FROM company_plans WHERE ended_at IS NULL AND source = 'stripe'")
COMPANIES=$($PSQL -d $DB -c "SELECT count(*) FROM companies")

python3 - "$NOOP" "$PG_TPS" "$ENT" "$APPLIED" "$OTHER" "$WINDOW" "$PENDING" "$MEMBERSHIPS" "$COMPANIES" \
  "$BURST_OUT" "$BURST_APPLIED" "$BURST_LAG" <<'PY'
import sys
noop, pg, ent, applied, other, window, pending, memberships, companies, burst, burst_applied, lag = sys.argv[1:]
rate = lambda line: float(line.split()[line.split().index("rate") + 1])
noop_rate, ent_ack = rate(noop), rate(ent)
applied, window, pg = int(applied), float(window), float(pg)
applied_rate = applied / window
print()
print("| target | events/s |")
print("|---|---|")
print(f"| load generator → /noop (ceiling) | {noop_rate:,.0f} |")
print(f"| pgbench single-row INSERT, 32 clients (baseline) | {pg:,.0f} tps |")
print(f"| entitled: acknowledged (verified + stored) | {ent_ack:,.0f} |")
print(f"| entitled: applied, first receipt → last apply ({window:.1f} s) | {applied_rate:,.0f} |")
print()
print(f"applied {applied} events ({other} not applied, {pending} pending at the end); "
      f"{companies} companies, {memberships} active Stripe memberships")
print(f"entitled applied / pgbench: {applied_rate / pg:.2f}x (goal >= 0.50x); "
      f"acknowledged / pgbench: {ent_ack / pg:.2f}x (goal >= 0.70x)")
burst_acked = int(burst.split()[burst.split().index("acked") + 1])
print(f"burst: {burst_acked:,} acknowledged at {rate(burst):,.0f}/s, {int(burst_applied):,} applied "
      f"(the rest skipped: older than a newer event of the same object); "
      f"last acknowledgement → last apply: {float(lag):.2f} s (goal < 2 s)")
PY
