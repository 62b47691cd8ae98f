#!/usr/bin/env bash
# The console at 100,000 companies: company search (key prefix, exact key, name prefix, a
# broad name prefix, plan filter) and the company page, each driven by wrk (1 thread, 4
# keep-alive connections, a signed-in session) for DURATION; prints p50/p99 latency.
#
#   benches/console.sh                          # release build, 100,000 companies, 10 s each
#   N=20000 DURATION=5s benches/console.sh      # a quick run
#   ENTITLED_BIN=target/debug/entitled benches/console.sh   # another build
#
# Companies are keyed `id = co-<i>` and `crm_id = crm-<i>`, named `Company <i>`, and spread
# over the demo catalog's free, pro and enterprise plans (a third each). Goal: p99 under 50 ms
# for search and for the company page.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-100000}
DURATION=${DURATION:-10s}
DB=entitled_bench_console
PORT=${PORT:-18391}
TARGET=${CARGO_TARGET_DIR:-target}
./scripts/ensure-postgres.sh >/dev/null
command -v wrk >/dev/null || { echo "wrk is required (apt-get install wrk)" >&2; exit 1; }

if [ -z "${ENTITLED_BIN:-}" ]; then
  cargo build --release --quiet
  ENTITLED_BIN=$TARGET/release/entitled
fi
BIN=$ENTITLED_BIN
PSQL="psql -h 127.0.0.1 -U postgres -qAt -v ON_ERROR_STOP=1"

$PSQL -d postgres -c "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -c "CREATE DATABASE $DB"
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$DB
export ENTITLED_LOG__LEVEL=warn
export ENTITLED_SERVER__LISTEN=127.0.0.1:$PORT
$BIN migrate >/dev/null
$BIN seed fixtures/demo-catalog.toml >/dev/null
$BIN api-key create --environment development --name bench >/dev/null
ENV=$($PSQL -d $DB -c "SELECT id FROM environments WHERE key = 'development'")
started=$(date +%s)
$PSQL -d $DB <<SQL
BEGIN;
CREATE TEMP TABLE new_companies ON COMMIT DROP AS
  SELECT i, 'comp_bench' || lpad(i::text, 8, '0') AS id FROM generate_series(1, $N) AS i;
INSERT INTO companies (id, environment_id, name, traits)
  SELECT id, '$ENV', 'Company ' || i, jsonb_build_object('seats', i % 200) FROM new_companies;
INSERT INTO company_keys (environment_id, company_id, key, value)
  SELECT '$ENV', id, 'id', 'co-' || i FROM new_companies
  UNION ALL SELECT '$ENV', id, 'crm_id', 'crm-' || i FROM new_companies;
INSERT INTO company_plans (id, environment_id, company_id, plan_id, is_base)
  SELECT 'cp_bench' || lpad(c.i::text, 8, '0'), '$ENV', c.id,
         (SELECT id FROM plans WHERE key = (ARRAY['free', 'pro', 'enterprise'])[c.i % 3 + 1]), true
  FROM new_companies c;
COMMIT;
ANALYZE;
SQL
echo "filled $N companies in $(( $(date +%s) - started )) s" >&2
PRO=$($PSQL -d $DB -c "SELECT id FROM plans WHERE key = 'pro'")
PASSWORD=$($BIN console-user create --email bench@example.com | tail -n1)

$BIN serve &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true; wait $SERVER 2>/dev/null || true' EXIT
BASE=http://127.0.0.1:$PORT
for _ in $(seq 100); do curl -sf $BASE/ready >/dev/null && break; sleep 0.1; done

# Sign in (the one-time password asks for a new one), keeping the session cookie.
JAR=$(mktemp)
csrf() { grep -o 'name="csrf_token" value="[^"]*"' | head -n1 | sed 's/.*value="//; s/"$//'; }
TOKEN=$(curl -sf -c "$JAR" $BASE/console/login | csrf)
curl -sf -b "$JAR" -c "$JAR" -o /dev/null --data-urlencode "csrf_token=$TOKEN" \
  --data-urlencode "email=bench@example.com" --data-urlencode "password=$PASSWORD" $BASE/console/login
TOKEN=$(curl -sf -b "$JAR" $BASE/console/password | csrf)
curl -sf -b "$JAR" -c "$JAR" -o /dev/null --data-urlencode "csrf_token=$TOKEN" \
  --data-urlencode "new_password=bench password 12345" \
  --data-urlencode "confirm_password=bench password 12345" $BASE/console/password
SESSION=$(awk '$6 == "entitled_console" {print $7}' "$JAR")
rm -f "$JAR"

measure() {
  local name=$1 path=$2
  local status
  status=$(curl -s -o /dev/null -w '%{http_code}' -H "Cookie: entitled_console=$SESSION" "$BASE$path")
  [ "$status" = 200 ] || { echo "$name: $path answered $status" >&2; exit 1; }
  wrk -t1 -c4 -d"$DURATION" --latency -H "Cookie: entitled_console=$SESSION" "$BASE$path" \
    | awk -v name="$name" '
        /Requests\/sec/ {rps = $2}
        $1 == "50%" {p50 = $2}
        $1 == "99%" {p99 = $2}
        END {printf "| %s | %s | %s | %s |\n", name, rps, p50, p99}'
}

echo "| measurement ($N companies) | requests/s | p50 | p99 |"
echo "|---|---|---|---|"
measure "search: key prefix (co-4242)" "/console/companies?q=co-4242"
measure "search: exact key (crm-77777)" "/console/companies?q=crm-77777"
measure "search: name prefix (Company 5432)" "/console/companies?q=Company+5432"
measure "search: broad name prefix (Company 1)" "/console/companies?q=Company+1"
measure "filter: plan (a third of all)" "/console/companies?plan=$PRO"
measure "filter: plan, page 20" "/console/companies?plan=$PRO&offset=1000"
measure "list: everyone, newest first" "/console/companies"
measure "company page" "/console/companies/comp_bench00050000"
