#!/usr/bin/env bash
# Cold start of the static release binary: exec to the first 200 of a push
# with PostgreSQL tracking on, and idle RSS, each the median of 10 starts.
# Builds target/static/whirligig first (scripts/build-static.sh). Loopback only.
#
#   scripts/cold-start.sh [RUNS]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/postgres.sh
ensure_postgres

scripts/build-static.sh > /dev/null
database=whirligig_cold_start
export PGOPTIONS="-c client_min_messages=warning"
psql "$(admin_url)" -qc "drop database if exists $database" -c "create database $database" > /dev/null
trap 'psql "$(admin_url)" -qc "drop database if exists $database" > /dev/null' EXIT
python3 scripts/cold_start.py target/static/whirligig "$(database_url $database)" "${1:-10}"
