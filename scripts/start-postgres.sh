#!/usr/bin/env bash
# Start a local PostgreSQL on loopback for the registry tests; prints the URL to use.
# Needs root (installs Debian's postgresql if missing). Idempotent.
set -euo pipefail
# Everything but the URL goes to stderr: callers capture stdout as the URL
# (pg_ctlcluster prints notes such as "Removed stale pid file." on stdout).
exec 3>&1 1>&2
if ! command -v pg_lsclusters >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
fi
read -r ver name _ < <(pg_lsclusters --no-header | head -1)
if [ -z "${ver:-}" ]; then
  ver=$(ls /usr/lib/postgresql | sort -V | tail -1); name=main
  pg_createcluster "$ver" "$name" >/dev/null
fi
# Retry the start: after an unclean stop, the first try can meet a stale lock.
# fd 3 is closed for the daemon, or the caller's $(...) would wait for it.
for _ in $(seq 1 30); do
  su postgres -c "psql -qAtc 'select 1'" >/dev/null 2>&1 && break
  pg_ctlcluster "$ver" "$name" start 3>&- >/dev/null 2>&1 || sleep 1
done
su postgres -c "psql -qAtc \"SELECT 1 FROM pg_roles WHERE rolname='datamoat'\"" | grep -q 1 \
  || su postgres -c "psql -qc \"CREATE USER datamoat PASSWORD 'datamoat' CREATEDB\""
su postgres -c "psql -qAtc \"SELECT 1 FROM pg_database WHERE datname='datamoat_test'\"" | grep -q 1 \
  || su postgres -c "createdb -O datamoat datamoat_test"
echo >&3 "postgresql+psycopg://datamoat:datamoat@127.0.0.1:5432/datamoat_test"
