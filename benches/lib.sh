# The setup the bench scripts share; sourced (`. benches/lib.sh`) from the repository root,
# under `set -euo pipefail`. Not a script of its own.
#
# After sourcing: TARGET (CARGO_TARGET_DIR or target), RELEASE_BIN (the release `entitled`
# there) and BIN (the `entitled` to run: RELEASE_BIN, which a script may replace), PSQL
# (psql on the local cluster, unaligned and quiet), and the functions below.

TARGET=${CARGO_TARGET_DIR:-target}
RELEASE_BIN=$TARGET/release/entitled
BIN=$RELEASE_BIN
PSQL="psql -h 127.0.0.1 -U postgres -qAt"

# release_build: starts Postgres if needed and builds the release binaries.
release_build() {
  ./scripts/ensure-postgres.sh >/dev/null
  cargo build --release --quiet
}

# bench_bin NAME: builds the release bench binary NAME (benches/NAME.rs); prints its path.
bench_bin() {
  cargo bench --bench "$1" --no-run 2>&1 | grep -o "[^ (]*/release/deps/$1-[0-9a-f]*" | head -n1
}

# fresh_db NAME [PORT]: drops and creates the database NAME, points DATABASE_URL at it, has
# entitled log at warn and, with PORT, listen on 127.0.0.1:PORT.
fresh_db() {
  $PSQL -d postgres -c "DROP DATABASE IF EXISTS $1 WITH (FORCE)" -c "CREATE DATABASE $1"
  export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$1
  export ENTITLED_LOG__LEVEL=warn
  if [ -n "${2:-}" ]; then export ENTITLED_SERVER__LISTEN=127.0.0.1:$2; fi
}

# bench_key BIN: creates an API key for the development environment (syncing the configured
# environments into the database); prints the secret.
bench_key() {
  "$1" api-key create --environment development --name bench | tail -n1
}

# wait_ready PORT [PID]: waits up to 10 s for /ready on 127.0.0.1:PORT to answer 200 (and,
# with PID, for that process to be the one still running); exits the script if it does not.
wait_ready() {
  local _
  for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$1/ready" >/dev/null && break; sleep 0.1; done
  { [ -z "${2:-}" ] || kill -0 "$2" 2>/dev/null; } && curl -sf "http://127.0.0.1:$1/ready" >/dev/null \
    || { echo "entitled serve did not start on port $1 (PORT=… to pick another)"; exit 1; }
}

# plan_id NAME: the id of the first plan whose name matches NAME, from the server on
# 127.0.0.1:PORT with the API key KEY.
plan_id() {
  curl -sf "http://127.0.0.1:$PORT/plans?q=$1" -H "X-Schematic-Api-Key: $KEY" \
    | python3 -c 'import json,sys; print(json.load(sys.stdin)["data"][0]["id"])'
}
