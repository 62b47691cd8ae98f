#!/usr/bin/env bash
# The whole test suite: PostgreSQL up, formatting, lints, unit and integration tests
# (including the official schematichq Python SDK against a live server).
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/ensure-postgres.sh

# The official SDK the wire-compatibility tests drive, in a virtualenv of its own.
VENV=${ENTITLED_SDK_VENV:-target/sdk-venv}
if [ ! -x "$VENV/bin/python" ] || ! "$VENV/bin/python" -c "import schematic" 2>/dev/null; then
  echo "==> installing the schematichq Python SDK into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "schematichq==1.4.6"
fi
export ENTITLED_SDK_PYTHON="$PWD/$VENV/bin/python"

echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "==> cargo test"
cargo test --locked --all-targets -- --test-threads="${ENTITLED_TEST_THREADS:-4}"
