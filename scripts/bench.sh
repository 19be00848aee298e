#!/usr/bin/env bash
# Every load scenario in one run, against the static release binary, with oha
# (installed if missing): 50 connections, a warm-up, then DURATION each; all
# traffic to 127.0.0.1; every process started here is stopped on exit.
# Prints requests/s, p50, p99, errors and the server's peak RSS for each
# scenario, and its ratio to the ceiling it is measured against.
# The enqueue scenarios drive `Tasks` (50 callers) against Google's Pub/Sub
# emulator, compare Google's Python publisher on the same emulator, and count
# publish requests per enqueue against an instant loopback stub.
#
#   scripts/bench.sh                 # DURATION=10s WARMUP=2s, every scenario
#   DURATION=15s scripts/bench.sh
#   SCENARIOS=enqueue scripts/bench.sh   # only these groups (comma-separated):
#                                        # push (the server), cold-start, enqueue
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/postgres.sh
source scripts/pubsub.sh
source scripts/bench_production.sh

DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
SCENARIOS=${SCENARIOS:-all}
CONNECTIONS=50
POOL_SIZE=10

# wanted GROUP: whether SCENARIOS asks for GROUP.
wanted() { [ "$SCENARIOS" = all ] || [[ ",$SCENARIOS," == *",$1,"* ]]; }
for group in ${SCENARIOS//,/ }; do
    case $group in
        all | push | cold-start | enqueue) ;;
        *) echo "bench: unknown scenario group $group (all, push, cold-start, enqueue)" >&2; exit 2 ;;
    esac
done

if wanted push || wanted cold-start; then
    ensure_postgres
    say "building the static binary"
    scripts/build-static.sh > /dev/null
fi
wanted push && { command -v oha > /dev/null || { say "installing oha"; cargo install --locked oha; }; }
if wanted push && ! command -v wrk > /dev/null; then
    echo "bench: wrk not found (the unique scenario's load generator): apt-get install wrk (Debian, Ubuntu) or brew install wrk" >&2
    exit 1
fi
say "building the bench helper"
cargo build --locked --release -q -p whirligig-tests --bin whirligig-bench
binary=target/static/whirligig
helper=target/release/whirligig-bench

work=$(mktemp -d)
database=whirligig_bench
export PGOPTIONS="-c client_min_messages=warning"
servers=()
cleanup() {
    for pid in "${servers[@]}"; do kill "$pid" 2> /dev/null || true; done
    # ensure_pubsub_emulator starts it in a session of its own, as a child of
    # this shell: stop that session before waiting for the children.
    if $started_emulator && [ -s "$PUBSUB_PID_FILE" ]; then
        kill -- "-$(cat "$PUBSUB_PID_FILE")" 2> /dev/null || true
    fi
    wait 2> /dev/null || true
    if wanted push || wanted cold-start; then
        psql "$(admin_url)" -qc "drop database if exists $database with (force)" > /dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
started_emulator=false
trap cleanup EXIT
# An emulator this run starts is stopped on exit; one already up is left alone.
if wanted enqueue; then
    pubsub_up || started_emulator=true
    ensure_pubsub_emulator
fi

# start NAME PORT COMMAND... : runs COMMAND in the background, waits for PORT.
start() {
    local name=$1 port=$2
    shift 2
    "$@" > "$work/$name.log" 2>&1 &
    server=$!
    servers+=("$server")
    for _ in $(seq 1 200); do
        (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null && return
        kill -0 "$server" 2> /dev/null || { cat "$work/$name.log" >&2; echo "bench: $name exited" >&2; exit 1; }
        sleep 0.05
    done
    echo "bench: $name did not listen on $port" >&2
    exit 1
}

stop() { kill "$server" 2> /dev/null || true; wait "$server" 2> /dev/null || true; }

# statements NAME: executions stored, and how many statements claimed and
# finished them (rows one statement writes share its transaction's now()).
statements() {
    psql "$(database_url $database)" -Atc \
        "select count(*), count(distinct started_at), count(distinct finished_at) from task_executions" \
        > "$work/$1.rows"
}

fresh_database() {
    psql "$(admin_url)" -qc "drop database if exists $database with (force)" -c "create database $database" > /dev/null
    DATABASE_URL=$(database_url $database) "$binary" migrate > /dev/null
}

# cpu NAME.WHEN [PID]: CPU ticks of the server (PID, default the one
# started last), PostgreSQL and the machine, to $work/NAME.WHEN.cpu.
cpu() { python3 scripts/bench_cpu.py "${2:-$server}" > "$work/$1.cpu"; }

# load NAME CEILING PORT [oha arguments]: a warm-up, then the measured run;
# records oha's summary, the CPU the run took and the server's peak RSS.
load() {
    local name=$1 ceiling=$2 port=$3
    shift 3
    local url="http://127.0.0.1:$port/tasks/pubsub/"
    oha --no-tui -w -z "$WARMUP" -c "$CONNECTIONS" -m POST -T application/json --output-format json "$@" "$url" \
        > "$work/$name.warmup.json"
    cpu "$name.before"
    oha --no-tui -w -z "$DURATION" -c "$CONNECTIONS" -m POST -T application/json --output-format json "$@" "$url" \
        > "$work/$name.json"
    cpu "$name.after"
    record "$name" "$ceiling"
}

# record NAME CEILING: the run's line in $work/runs, with the server's peak RSS.
record() {
    local rss
    rss=$(awk '/VmHWM/ { print $2 }' "/proc/$server/status")
    echo "$1 $2 $rss" >> "$work/runs"
}

# load_unique NAME CEILING PORT: as load, with wrk sending a new task id in
# every request (scripts/bench_unique.lua; the token from $TOKEN).
load_unique() {
    local name=$1 ceiling=$2 port=$3
    local url="http://127.0.0.1:$port/tasks/pubsub/"
    RUN=warmup wrk -t 2 -c "$CONNECTIONS" -d "$WARMUP" -s scripts/bench_unique.lua "$url" > "$work/$name.warmup.wrk"
    cpu "$name.before"
    RUN=measured wrk -t 2 -c "$CONNECTIONS" -d "$DURATION" --latency -s scripts/bench_unique.lua "$url" > "$work/$name.wrk"
    cpu "$name.after"
    tail -n 1 "$work/$name.wrk" > "$work/$name.json"
    record "$name" "$ceiling"
}

if wanted push; then
    say "ceiling-http: a bare hyper server"
    port=$(free_port)
    start ceiling-http "$port" "$helper" ceiling-http "$port"
    noop_bodies=$work/noop.bodies
    "$helper" bodies noop 400000 "$noop_bodies"
    load ceiling-http - "$port" -Z "$noop_bodies"
    stop

    say "noop-memory: dev, in-memory store, no auth"
    port=$(free_port)
    start noop-memory "$port" env -i PORT="$port" RUST_LOG=warn "$binary" serve
    load noop-memory ceiling-http "$port" -Z "$noop_bodies"
    stop

    say "ceiling-db: pgbench running the store's claim and finish, $POOL_SIZE clients"
    fresh_database
    "$helper" pgbench-script "$work/claim-finish.sql"
    cpu ceiling-db.before -
    pgbench -n -M prepared -c "$POOL_SIZE" -j 2 -T "${DURATION%s}" -f "$work/claim-finish.sql" "$(database_url $database)" \
        > "$work/ceiling-db.txt"
    cpu ceiling-db.after -

    # Production: PostgreSQL tracking, tokens verified against a loopback issuer.
    start_issuer
    servers+=("$!")
    # production PORT [POOL_SIZE [DATABASE_URL]]: exec, so the server is this
    # background job itself, and stop and RSS reach it.
    production() {
        exec_production "$1" "${3:-$(database_url $database)}" "${2:-$POOL_SIZE}" warn "$binary" serve
    }

    say "noop-postgres-oidc: production, unique task ids"
    fresh_database
    port=$(free_port)
    start noop-postgres-oidc "$port" production "$port"
    load noop-postgres-oidc ceiling-db "$port" -H "Authorization: Bearer $TOKEN" -Z "$noop_bodies"
    statements noop-postgres-oidc
    stop

    say "unique: production, a new task id in every request (wrk)"
    fresh_database
    port=$(free_port)
    start unique "$port" production "$port"
    TOKEN=$TOKEN load_unique unique ceiling-db "$port"
    statements unique
    stop

    say "duplicate: one message over and over (a redelivery storm)"
    port=$(free_port)
    start duplicate "$port" production "$port"
    head -n 1 "$noop_bodies" > "$work/one.body"
    load duplicate ceiling-http "$port" -H "Authorization: Bearer $TOKEN" -D "$work/one.body"
    stop

    say "pool-exhausted: pool of 2, a task holding its connection 50 ms, 200 connections"
    fresh_database
    "$helper" bodies sleep 200000 "$work/sleep.bodies" '{"ms": 50, "hold_db": true}'
    port=$(free_port)
    start pool-exhausted "$port" production "$port" 2
    CONNECTIONS=200 load pool-exhausted - "$port" -H "Authorization: Bearer $TOKEN" -Z "$work/sleep.bodies"
    stop

    # netem would add the latency in the kernel; where it is missing (as in this
    # project's sandbox), a userspace proxy holds each chunk to the server 1 ms.
    say "cloudsql-latency: production, every database round trip at least 1 ms longer"
    fresh_database
    proxy_port=$(free_port)
    start delay-proxy "$proxy_port" "$helper" delay-proxy "$proxy_port" "$PG_PORT" 1
    port=$(free_port)
    start cloudsql-latency "$port" production "$port" "$POOL_SIZE" "postgres://postgres@127.0.0.1:$proxy_port/$database"
    load cloudsql-latency - "$port" -H "Authorization: Bearer $TOKEN" -Z "$noop_bodies"
    statements cloudsql-latency
    stop
    echo "$POOL_SIZE" > "$work/cloudsql-latency.pool"
fi

if wanted cold-start; then
    say "cold-start"
    wanted push || fresh_database
    python3 scripts/cold_start.py "$binary" "$(database_url $database)" 10 > "$work/cold-start.txt"
fi

# The enqueue scenarios: one JSON line each in $work/NAME.json, or the reason
# it did not run in $work/NAME.skipped. Each run is bounded by timeout.
CALLERS=50
bound=$((${WARMUP%s} + ${DURATION%s} + 60))
venv=target/bench-venv

# python_publisher: the venv with google-cloud-pubsub, reused when it imports;
# how long it took goes to $work/venv.txt, why it failed to $work/enqueue-python.skipped.
python_publisher() {
    local began=$SECONDS
    if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import google.cloud.pubsub_v1' 2> /dev/null; then
        echo "reused $venv ($((SECONDS - began)) s to check)" > "$work/venv.txt"
        return
    fi
    say "creating $venv with google-cloud-pubsub from PyPI"
    rm -rf "$venv"
    if ! python3 -m venv "$venv" > "$work/venv.log" 2>&1; then
        echo "python3 -m venv failed: $(tail -n 1 "$work/venv.log")" > "$work/enqueue-python.skipped"
        return 1
    fi
    if ! timeout -k 5 600 "$venv/bin/pip" install -q google-cloud-pubsub >> "$work/venv.log" 2>&1; then
        echo "pip install google-cloud-pubsub failed (PyPI unreachable?): $(grep -m 1 -i error "$work/venv.log" || tail -n 1 "$work/venv.log")" \
            > "$work/enqueue-python.skipped"
        rm -rf "$venv"
        return 1
    fi
    echo "created $venv and installed google-cloud-pubsub in $((SECONDS - began)) s" > "$work/venv.txt"
}

# measure NAME COMMAND...: COMMAND's last line (JSON) to $work/NAME.json, or
# why it failed to $work/NAME.skipped.
measure() {
    local name=$1
    shift
    if timeout -k 5 "$bound" "$@" > "$work/$name.out" 2> "$work/$name.err" && tail -n 1 "$work/$name.out" | python3 -c 'import json, sys; json.load(sys.stdin)' 2> /dev/null; then
        tail -n 1 "$work/$name.out" > "$work/$name.json"
    else
        echo "failed (exit $?): $(tail -n 1 "$work/$name.err")" > "$work/$name.skipped"
    fi
}

if wanted enqueue; then
    # Set up first, so pip does not share the CPU with a measured run.
    python_ready=true
    python_publisher || python_ready=false

    say "enqueue-emulator: Tasks, $CALLERS callers, noop, emulator on $PUBSUB_EMULATOR_HOST"
    measure enqueue-emulator "$helper" enqueue "$PUBSUB_EMULATOR_HOST" "$CALLERS" "$WARMUP" "$DURATION"

    if $python_ready; then
        say "enqueue-python: Google's Python publisher, $CALLERS threads, same emulator"
        measure enqueue-python "$venv/bin/python" scripts/bench_publish.py "$CALLERS" "$WARMUP" "$DURATION"
    else
        say "enqueue-python: skipped: $(cat "$work/enqueue-python.skipped")"
    fi

    say "enqueue-stub: Tasks, $CALLERS callers, against an instant loopback Pub/Sub"
    measure enqueue-stub "$helper" enqueue stub "$CALLERS" "$WARMUP" "$DURATION"
fi

python3 scripts/bench_report.py "$work"
