#!/usr/bin/env bash
# The whole test suite: PostgreSQL up, formatting, lints, unit and integration tests
# (including the official schematichq and mcp Python SDKs against a live server), then
# schemathesis against the OpenAPI document.
set -euo pipefail
cd "$(dirname "$0")/.."

./scripts/ensure-postgres.sh

# The official SDKs the wire-compatibility tests drive (schematichq for the REST API, mcp for
# POST /mcp), pinned, in a virtualenv of their own.
VENV=${ENTITLED_SDK_VENV:-target/sdk-venv}
# standardwebhooks verifies outbound webhook deliveries (tests/outbound_webhooks.rs).
# schematichq with its datastream extra (wasmtime, websockets): tests/datastream_sdk.rs.
SDKS=("schematichq[datastream]==1.4.6" "mcp==2.3.0" "standardwebhooks==1.3.0")
# True when every pin is installed at its version (whatever it was installed from).
installed() {
  "$VENV/bin/python" - "${SDKS[@]}" 2>/dev/null <<'PY'
import sys
from importlib.metadata import version
sys.exit(any(version(pin.split("==")[0].split("[")[0]) != pin.split("==")[1] for pin in sys.argv[1:]))
PY
}
if [ ! -x "$VENV/bin/python" ] || ! installed \
    || ! "$VENV/bin/python" -c "import schematic, mcp, standardwebhooks, wasmtime, websockets" 2>/dev/null; then
  echo "==> installing ${SDKS[*]} into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check "${SDKS[@]}"
fi
export ENTITLED_SDK_PYTHON="$PWD/$VENV/bin/python"

echo "==> module edges point one way (docs/architecture.md)"
python3 scripts/module-edges.py --check >/dev/null
echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy"
cargo clippy --locked --all-targets -- -D warnings
echo "==> cargo test"
cargo test --locked --all-targets -- --test-threads="${ENTITLED_TEST_THREADS:-4}"
# The daemon fuzzed against its own OpenAPI document: no 5xx for any generated input
# (about a minute; ENTITLED_SKIP_SCHEMATHESIS=1 skips it).
if [ -z "${ENTITLED_SKIP_SCHEMATHESIS:-}" ]; then
  echo "==> schemathesis"
  ./scripts/schemathesis.sh
fi
