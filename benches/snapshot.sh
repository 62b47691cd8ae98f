#!/usr/bin/env bash
# The snapshot's scale: heap per company and the full-reload time, with checks answered
# from the old snapshot during the reload (benches/snapshot.rs measures; this fills the
# database).
#
#   benches/snapshot.sh                         # 100,000 then 1,000,000 companies
#   SIZES="10000" benches/snapshot.sh           # a quick run
#
# Each company is on 3 plans (Pro with the Analytics and Premium Support add-ons of the demo
# catalog plus benches/bench-catalog.toml: 20 features in play), has one key, four traits and
# four usage counters (two events, all-time and this month: two `usage_totals` rows). Sizes grow one database: the
# companies of a size are added to those of the previous one. Goal: under 1 KB per company
# and a full reload under 10 s at 1,000,000.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZES=${SIZES:-"100000 1000000"}
CHECKERS=${CHECKERS:-2}
DB=entitled_bench_snapshot
. benches/lib.sh

release_build
BENCH=$(bench_bin snapshot)
PSQL="$PSQL -v ON_ERROR_STOP=1"

fresh_db $DB
$BIN migrate >/dev/null
$BIN seed fixtures/demo-catalog.toml >/dev/null
$BIN seed benches/bench-catalog.toml >/dev/null
# Creating a key syncs the configured environments into the database.
bench_key $BIN >/dev/null
ENV=$($PSQL -d $DB -c "SELECT id FROM environments WHERE key = 'development'")

have=0
for n in $SIZES; do
  started=$(date +%s)
  $PSQL -d $DB <<SQL
BEGIN;
CREATE TEMP TABLE new_companies ON COMMIT DROP AS
  SELECT i, 'comp_bench' || lpad(i::text, 8, '0') AS id FROM generate_series($have + 1, $n) AS i;
INSERT INTO companies (id, environment_id, name, traits)
  SELECT id, '$ENV', 'Company ' || i,
         jsonb_build_object('bench_trait_1', i % 40, 'bench_trait_limit', 9,
                            'region', (ARRAY['eu', 'us', 'apac'])[i % 3 + 1], 'seats', i % 200)
  FROM new_companies;
INSERT INTO company_keys (environment_id, company_id, key, value)
  SELECT '$ENV', id, 'id', 'co-' || i FROM new_companies;
INSERT INTO company_plans (id, environment_id, company_id, plan_id, is_base)
  SELECT 'cp_bench' || p.key || lpad(c.i::text, 8, '0'), '$ENV', c.id, p.id, p.key = 'pro'
  FROM new_companies c
  CROSS JOIN (SELECT id, key FROM plans WHERE key IN ('pro', 'analytics', 'premium-support')) p;
INSERT INTO usage_totals (company_id, event_name, environment_id, all_time, month_start, month_count)
  SELECT c.id, e.name, '$ENV', c.i % 1000,
         date_trunc('month', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', c.i % 1000
  FROM new_companies c
  CROSS JOIN (VALUES ('bench_event_1'), ('bench_event_2')) AS e (name);
COMMIT;
ANALYZE;
SQL
  echo "filled $n companies in $(( $(date +%s) - started )) s" >&2
  have=$n
  "$BENCH" "$n" "$CHECKERS"
done
