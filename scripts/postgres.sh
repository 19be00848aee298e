# Sourced by the scripts that need PostgreSQL on 127.0.0.1:5432 (or
# $PG_HOST:$PG_PORT), user postgres, trust auth: ensure_postgres starts the
# local cluster when it is installed but stopped, or says what to set up.

PG_HOST=${PG_HOST:-127.0.0.1}
PG_PORT=${PG_PORT:-5432}

say() { printf '==> %s\n' "$*"; }

postgres_up() { pg_isready -q -h "$PG_HOST" -p "$PG_PORT" 2>/dev/null; }

ensure_postgres() {
  command -v pg_isready >/dev/null || {
    echo "pg_isready not found: install PostgreSQL (Debian: apt-get install postgresql) so tests can reach 127.0.0.1:$PG_PORT" >&2
    exit 1
  }
  postgres_up && return
  if [ "$PG_HOST" = 127.0.0.1 ] && command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
    local version
    version=$(ls /etc/postgresql | sort -V | tail -n 1)
    say "starting PostgreSQL $version (cluster main)"
    pg_ctlcluster --skip-systemctl-redirect "$version" main start || true
  fi
  # A server just started (here, or in a side container) takes a moment.
  for _ in $(seq 1 60); do postgres_up && return; sleep 0.5; done
  echo "PostgreSQL is not reachable on $PG_HOST:$PG_PORT." >&2
  echo "Start a server there that lets user 'postgres' in without a password (trust auth)." >&2
  exit 1
}

# The URL of database $1 (default postgres) on the local server.
database_url() { echo "postgres://postgres@$PG_HOST:$PG_PORT/${1:-postgres}"; }
admin_url() { database_url postgres; }
