#!/usr/bin/env bash
# Brings everything up on a fresh Debian machine and serves entitled with the demo catalog:
# PostgreSQL (installed and started if needed), a release build, migrations, the demo
# catalog, an API key (printed below), then `entitled serve` on 127.0.0.1:8080.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/ensure-postgres.sh
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust from https://rustup.rs first" >&2
  exit 1
fi
echo "==> building (release)"
cargo build --release --locked --quiet
BIN=./target/release/entitled
$BIN migrate
$BIN seed fixtures/demo-catalog.toml
KEY=$($BIN api-key create --environment development --name quickstart | tail -n1)
cat <<MSG

  entitled is starting on http://127.0.0.1:8080 with the demo catalog.
  Your API key (environment "development"):

      export ENTITLED_KEY=$KEY

  Try:  curl -s -X POST http://127.0.0.1:8080/flags/sso/check \\
          -H "X-Schematic-Api-Key: \$ENTITLED_KEY" -d '{"company": {"id": "acme"}}'

MSG
exec $BIN serve
