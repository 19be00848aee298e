# Sourced by scripts/bench.sh and scripts/instructions.sh: a free loopback
# port, the loopback token issuer, and the server as it runs in production
# (PostgreSQL tracking, tokens verified against that issuer, JSON logs, no
# span exporter). Needs $helper (the whirligig-bench binary) and $work.

free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_issuer: the issuer in the background ($! is its pid); sets TOKEN and
# the TASKS_OIDC_* and TASKS_SERVICE_ACCOUNT variables it issues for.
start_issuer() {
    "$helper" issuer "$work/issuer.env" &
    for _ in $(seq 1 100); do [ -s "$work/issuer.env" ] && break; sleep 0.05; done
    # shellcheck disable=SC1091
    source "$work/issuer.env"
}

# exec_production PORT DATABASE_URL POOL_SIZE RUST_LOG COMMAND...: replaces
# this shell (a background job, so its pid is the server's) with COMMAND in
# the production environment and nothing else; COMMAND ends with the binary
# and `serve`.
exec_production() {
    local port=$1 database_url=$2 pool_size=$3 log=$4
    shift 4
    exec env -i PORT="$port" RUST_LOG="$log" TASKS_ENVIRONMENT=bench GCP_PROJECT_ID=bench \
        CLOUD_RUN_SERVICE_URL="$TASKS_OIDC_AUDIENCE" TASKS_SERVICE_ACCOUNT="$TASKS_SERVICE_ACCOUNT" \
        TASKS_OIDC_ISSUER="$TASKS_OIDC_ISSUER" TASKS_OIDC_JWKS_URL="$TASKS_OIDC_JWKS_URL" \
        TASKS_OIDC_AUDIENCE="$TASKS_OIDC_AUDIENCE" OTEL_TRACES_EXPORTER=none \
        DATABASE_URL="$database_url" DATABASE_POOL_SIZE="$pool_size" "$@"
}
