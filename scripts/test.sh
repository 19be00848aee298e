#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: PostgreSQL reachable, formatting,
# lints, then every test of the workspace. Run from anywhere: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PG_HOST=127.0.0.1
PG_PORT=5432

say() { printf '==> %s\n' "$*"; }

postgres_up() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; }

# Tests talk to a real PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth).
# Start the local cluster when it is installed but stopped; otherwise say what to do.
ensure_postgres() {
  command -v pg_isready >/dev/null || {
    echo "pg_isready not found: install PostgreSQL (Debian: apt-get install postgresql) so tests can reach 127.0.0.1:$PG_PORT" >&2
    exit 1
  }
  postgres_up && return
  if command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    say "starting PostgreSQL $version (cluster main)"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
    for _ in $(seq 1 30); do postgres_up && return; sleep 0.5; done
  fi
  echo "PostgreSQL is not reachable on $PG_HOST:$PG_PORT." >&2
  echo "Start a server there that lets user 'postgres' in without a password (trust auth)." >&2
  exit 1
}

say "PostgreSQL"
ensure_postgres

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy -D warnings"
cargo clippy --locked --workspace --all-targets -- -D warnings

say "cargo test"
cargo test --locked --workspace
