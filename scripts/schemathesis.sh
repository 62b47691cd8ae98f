#!/usr/bin/env bash
# Fuzzes the daemon against its own OpenAPI document with schemathesis: a fresh database with
# the demo catalog, a server on a free local port, a read-write API key, then
# `schemathesis run` over every operation of /openapi.json. Exits non-zero when any generated
# input gets a 5xx (the `not_a_server_error` check) or breaks the other checks listed below.
#
#   scripts/schemathesis.sh                      # ~1-2 minutes
#   MAX_EXAMPLES=200 scripts/schemathesis.sh     # longer, more inputs per operation
#   SEED=123 scripts/schemathesis.sh             # reproduce a run
#
# schemathesis is installed (pinned) into target/schemathesis-venv. The server's log and the
# JUnit report land in target/schemathesis/.
set -euo pipefail
cd "$(dirname "$0")/.."

SCHEMATHESIS_VERSION=4.32.5
VENV=${ENTITLED_SCHEMATHESIS_VENV:-target/schemathesis-venv}
OUT=target/schemathesis
DB=${ENTITLED_SCHEMATHESIS_DB:-entitled_schemathesis}
MAX_EXAMPLES=${MAX_EXAMPLES:-25}
CHECKS=${CHECKS:-not_a_server_error,content_type_conformance}
TARGET=${CARGO_TARGET_DIR:-target}

./scripts/ensure-postgres.sh >/dev/null
if ! "$VENV/bin/schemathesis" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  echo "==> installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schemathesis==$SCHEMATHESIS_VERSION"
fi

echo "==> building entitled"
cargo build --quiet --locked --bin entitled
BIN="$TARGET/debug/entitled"
mkdir -p "$OUT"

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" -qc "CREATE DATABASE $DB"
export DATABASE_URL=postgres://postgres@127.0.0.1:5432/$DB
export ENTITLED_SERVER__LISTEN=127.0.0.1:$PORT
export ENTITLED_LOG__FORMAT=json
export ENTITLED_LOG__LEVEL=${ENTITLED_LOG__LEVEL:-warn}
"$BIN" migrate >/dev/null
"$BIN" seed fixtures/demo-catalog.toml >/dev/null
KEY=$("$BIN" api-key create --environment development --name schemathesis | tail -n1)

"$BIN" serve 2>"$OUT/server.log" &
SERVER=$!
cleanup() {
  kill "$SERVER" 2>/dev/null || true
  wait "$SERVER" 2>/dev/null || true
  psql -h 127.0.0.1 -U postgres -d postgres -qc "DROP DATABASE IF EXISTS $DB WITH (FORCE)" >/dev/null 2>&1 || true
}
trap cleanup EXIT
for _ in $(seq 1 100); do
  curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null && break
  sleep 0.1
done

echo "==> schemathesis against http://127.0.0.1:$PORT/openapi.json (checks: $CHECKS)"
status=0
ST="$(cd "$VENV" && pwd)/bin/schemathesis"
# From $OUT, so schemathesis' own cache (.schemathesis/) stays out of the work tree.
(cd "$OUT" && "$ST" run "http://127.0.0.1:$PORT/openapi.json" \
  --header "X-Schematic-Api-Key: $KEY" \
  --checks "$CHECKS" \
  --max-examples "$MAX_EXAMPLES" \
  --workers "${WORKERS:-1}" \
  --generation-database none \
  ${SEED:+--seed "$SEED"} \
  --report junit --report-junit-path junit.xml \
  --no-color) || status=$?

if grep -q '"level":"ERROR"' "$OUT/server.log"; then
  echo "==> the server logged errors during the run (see $OUT/server.log):"
  grep '"level":"ERROR"' "$OUT/server.log" | head -n 20
  status=1
fi
exit "$status"
