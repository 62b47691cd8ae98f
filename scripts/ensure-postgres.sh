#!/usr/bin/env bash
# Makes sure a PostgreSQL server answers on 127.0.0.1:5432 and that the `entitled` database
# exists. On a fresh Debian machine: installs the postgresql package, creates and starts a
# local cluster, and allows local TCP connections for the postgres user without a password
# (a development setup; see "Deployment" in README.md for production).
set -euo pipefail

HOST=127.0.0.1
PORT=5432
DB=${ENTITLED_DB_NAME:-entitled}
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

port_open() { (exec 3<>"/dev/tcp/$HOST/$PORT") 2>/dev/null; }

as_postgres() {
  if [ "$(id -u)" -eq 0 ]; then su postgres -s /bin/sh -c "$*"; else sudo -u postgres sh -c "$*"; fi
}

if ! port_open; then
  if ! ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1; then
    echo "==> installing PostgreSQL (apt)"
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    $SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  fi
  VERSION=$(ls /usr/lib/postgresql | sort -V | tail -n1)
  if ! pg_lsclusters -h 2>/dev/null | awk '{print $1" "$2}' | grep -q "^$VERSION main$"; then
    echo "==> creating cluster $VERSION/main"
    $SUDO pg_createcluster "$VERSION" main -p "$PORT" >/dev/null
  fi
  HBA=/etc/postgresql/$VERSION/main/pg_hba.conf
  if ! $SUDO grep -q "entitled: local development" "$HBA"; then
    echo "==> allowing local TCP connections for postgres (development only)"
    $SUDO sed -i '1i # entitled: local development\nhost all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' "$HBA"
  fi
  echo "==> starting PostgreSQL $VERSION"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$VERSION" main start 2>/dev/null \
    || $SUDO pg_ctlcluster "$VERSION" main start
  for _ in $(seq 1 60); do port_open && break; sleep 0.5; done
  port_open || { echo "PostgreSQL did not come up on $HOST:$PORT" >&2; exit 1; }
fi

if command -v psql >/dev/null 2>&1; then
  if ! psql -h "$HOST" -p "$PORT" -U postgres -d postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$DB'" 2>/dev/null | grep -q 1; then
    psql -h "$HOST" -p "$PORT" -U postgres -d postgres -qc "CREATE DATABASE \"$DB\"" \
      || as_postgres "psql -qc 'CREATE DATABASE \"$DB\"'"
  fi
fi
echo "==> PostgreSQL is up on $HOST:$PORT (database $DB)"
