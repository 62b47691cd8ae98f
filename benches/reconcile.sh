#!/usr/bin/env bash
# A full Stripe reconcile of CUSTOMERS customers with one subscription each, against the fake
# Stripe API (benches/fake_stripe_server.rs, a separate process), with the `entitled
# reconcile` command:
#
#   benches/reconcile.sh                  # 100,000 customers
#   CUSTOMERS=20000 benches/reconcile.sh
#
# 1. no rate limit (stripe_max_requests_per_sec = 100000): wall time, requests, peak RSS of
#    the entitled process (/usr/bin/time -v), then a second run over the same database
#    (nothing to change);
# 2. the limit at RATE (default 25/s) on a fresh database: wall time against the floor of
#    requests ÷ rate (the goal: within 10% of it), and peak RSS.
# Each run's result is checked: as many companies and Stripe memberships as customers.
set -euo pipefail
cd "$(dirname "$0")/.."
CUSTOMERS=${CUSTOMERS:-100000}
PRODUCTS=${PRODUCTS:-5}
RATE=${RATE:-25}
DB=entitled_bench_reconcile
KEY=sk_test_bench
TARGET=${CARGO_TARGET_DIR:-target}
[ -x /usr/bin/time ] || { echo "/usr/bin/time is required (apt-get install time)"; exit 1; }
./scripts/ensure-postgres.sh >/dev/null

cargo build --release --quiet
FAKE=$(cargo bench --bench fake_stripe_server --no-run 2>&1 | grep -o '[^ (]*/release/deps/fake_stripe_server-[0-9a-f]*' | head -n1)
BIN=$TARGET/release/entitled
PSQL="psql -h 127.0.0.1 -U postgres -qAt"

TMP=$(mktemp -d)
FAKE_PID=
cleanup() { [ -n "$FAKE_PID" ] && kill "$FAKE_PID" 2>/dev/null; rm -rf "$TMP"; }
trap cleanup EXIT

# A fresh fake per scenario, so its request log (max requests in any one-second window,
# printed when it stops) covers that scenario only.
start_fake() {
  CUSTOMERS=$CUSTOMERS PRODUCTS=$PRODUCTS API_KEY=$KEY "$FAKE" serve >"$TMP/fake.out" 2>"$TMP/fake.err" &
  FAKE_PID=$!
  for _ in $(seq 1 300); do grep -q FAKE_STRIPE_URL "$TMP/fake.out" && break; sleep 0.1; done
  URL=$(sed -n 's/^FAKE_STRIPE_URL=//p' "$TMP/fake.out")
  [ -n "$URL" ] || { echo "the fake Stripe did not start"; cat "$TMP/fake.err"; exit 1; }
  export ENTITLED_ENVIRONMENTS__0__STRIPE_API_BASE=$URL
}
stop_fake() {
  kill "$FAKE_PID"; wait "$FAKE_PID" 2>/dev/null || true; FAKE_PID=
  echo "fake Stripe: $(grep -i 'max requests in any 1 s window' "$TMP/fake.err" | sed 's/^ *//')" >&2
}

# One base plan per generated product, so every subscription becomes a membership.
{
  for k in $(seq 1 "$PRODUCTS"); do
    printf '[[plans]]\nkey = "bench-%d"\nname = "Bench %d"\nplan_type = "plan"\nbilling_product_id = "prod_%04d"\n\n' "$k" "$k" "$k"
  done
} >"$TMP/catalog.toml"

export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$DB
export ENTITLED_LOG__LEVEL=warn
export ENTITLED_ENVIRONMENTS__0__STRIPE_API_KEY=$KEY

fresh_db() {
  $PSQL -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
  $BIN migrate >/dev/null
  $BIN seed "$TMP/catalog.toml" >/dev/null
}

# run LABEL RATE: one reconcile; prints a result line.
run() {
  local label=$1 rate=$2
  ENTITLED_ENVIRONMENTS__0__STRIPE_MAX_REQUESTS_PER_SEC=$rate \
    /usr/bin/time -v "$BIN" reconcile >"$TMP/out" 2>"$TMP/err" || { cat "$TMP/out" "$TMP/err"; exit 1; }
  local wall rss requests companies members
  wall=$(python3 - "$TMP/err" <<'PY'
import re, sys
t = re.search(r"Elapsed \(wall clock\) time.*: (\S+)", open(sys.argv[1]).read()).group(1)
parts = [float(p) for p in t.split(":")]
secs = 0.0
for p in parts:
    secs = secs * 60 + p
print(f"{secs:.1f}")
PY
)
  rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$TMP/err")
  requests=$(sed -n 's/.*, \([0-9]*\) Stripe requests$/\1/p' "$TMP/out")
  companies=$($PSQL -d $DB -c "SELECT count(*) FROM company_keys WHERE key = 'stripe_customer_id'")
  members=$($PSQL -d $DB -c "SELECT count(*) FROM company_plans WHERE source = 'stripe' AND ended_at IS NULL")
  echo "== $label: rate $rate/s" >&2
  sed -n '1,8p' "$TMP/out" >&2
  if [ "$companies" != "$CUSTOMERS" ] || [ "$members" != "$CUSTOMERS" ]; then
    echo "WRONG RESULT: $companies companies, $members memberships for $CUSTOMERS customers" >&2
    exit 1
  fi
  if [ "$rate" -ge 100000 ]; then
    printf '%-22s rate=unlimited wall=%6ss requests=%-5s peak_rss=%s MB\n' \
      "$label" "$wall" "$requests" "$((rss / 1024))"
  else
    local floor
    floor=$(python3 -c "print(f'{$requests / $rate:.1f}')")
    printf '%-22s rate=%s/s wall=%6ss requests=%-5s floor=%6ss wall/floor=%5s peak_rss=%s MB\n' \
      "$label" "$rate" "$wall" "$requests" "$floor" \
      "$(python3 -c "print(f'{$wall / $floor:.2f}')")" "$((rss / 1024))"
  fi
}

echo "==> $CUSTOMERS customers + $CUSTOMERS subscriptions, $PRODUCTS products" >&2
start_fake
fresh_db
run "unlimited, first run" 100000
run "unlimited, second run" 100000
stop_fake
start_fake
fresh_db
run "limited, first run" "$RATE"
stop_fake
