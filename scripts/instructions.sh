#!/usr/bin/env bash
# User-space instructions per push, counted by valgrind's callgrind: the same
# binary, load and database give nearly the same count whatever else the
# machine is doing, where CPU time per push (scripts/bench.sh) moves 10-20%
# with the neighbours. For comparing two builds of one change; each binary in
# turn runs the production setup (PostgreSQL, tokens verified against a
# loopback issuer, JSON logs at RUST_LOG, no span exporter) under callgrind, and wrk sends
# pushes from CONNECTIONS connections, first a new task id in each (unique),
# then one message over and over (duplicate). The count leaves out the kernel,
# the warm-up and startup; callgrind runs the server about 50 times slower, so
# statements share fewer rows than at full speed.
#
#   scripts/instructions.sh                          # target/static/whirligig, built here
#   scripts/instructions.sh old/whirligig new/whirligig
#   DURATION=20s CONNECTIONS=20 scripts/instructions.sh
#   RUST_LOG=info scripts/instructions.sh     # a JSON line per push, as deployed
#                                             # (default warn, as bench.sh: none)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/postgres.sh
source scripts/bench_production.sh

DURATION=${DURATION:-15s}
WARMUP=${WARMUP:-5s}
CONNECTIONS=${CONNECTIONS:-20}

for tool in valgrind callgrind_control wrk; do
    if ! command -v "$tool" > /dev/null; then
        echo "instructions: $tool not found: apt-get install valgrind wrk (Debian, Ubuntu)" >&2
        exit 1
    fi
done
ensure_postgres
if [ $# -eq 0 ]; then
    say "building the static binary"
    scripts/build-static.sh > /dev/null
    set -- target/static/whirligig
fi
say "building the bench helper"
cargo build --locked --release -q -p whirligig-tests --bin whirligig-bench
helper=target/release/whirligig-bench

work=$(mktemp -d)
database=whirligig_instructions
export PGOPTIONS="-c client_min_messages=warning"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2> /dev/null || true; done
    wait 2> /dev/null || true
    psql "$(admin_url)" -qc "drop database if exists $database with (force)" > /dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

start_issuer
pids+=("$!")

# count BINARY SCENARIO: instructions per push of BINARY, with REPEAT set for duplicate.
count() {
    local binary=$1 scenario=$2 port server url out=$work/callgrind.out
    psql "$(admin_url)" -qc "drop database if exists $database with (force)" -c "create database $database" > /dev/null
    DATABASE_URL=$(database_url $database) "$binary" migrate > /dev/null
    port=$(free_port)
    exec_production "$port" "$(database_url $database)" 10 "${RUST_LOG:-warn}" \
        valgrind --tool=callgrind --callgrind-out-file="$out" "$binary" serve > "$work/server.log" 2>&1 &
    server=$!
    pids+=("$server")
    for _ in $(seq 1 600); do
        (exec 3<> "/dev/tcp/127.0.0.1/$port") 2> /dev/null && break
        kill -0 "$server" 2> /dev/null || { cat "$work/server.log" >&2; echo "instructions: $binary exited" >&2; exit 1; }
        sleep 0.1
    done
    url="http://127.0.0.1:$port/tasks/pubsub/"
    local repeat=
    [ "$scenario" = duplicate ] && repeat=duplicate-$$
    RUN=warmup-$$ REPEAT=$repeat TOKEN=$TOKEN wrk -t 1 -c "$CONNECTIONS" -d "$WARMUP" -s scripts/bench_unique.lua "$url" > /dev/null
    rm -f "$out"*
    callgrind_control -z "$server" > /dev/null 2>&1
    RUN=measured-$$ REPEAT=$repeat TOKEN=$TOKEN wrk -t 1 -c "$CONNECTIONS" -d "$DURATION" -s scripts/bench_unique.lua "$url" \
        > "$work/wrk.out"
    callgrind_control -d "$server" > /dev/null 2>&1
    kill "$server" 2> /dev/null || true
    wait "$server" 2> /dev/null || true
    python3 - "$work/wrk.out" "$out".* "$binary" "$scenario" << 'EOF'
import json, sys
summary = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
dump, binary, scenario = sys.argv[2], sys.argv[3], sys.argv[4]
instructions = next(int(line.split()[1]) for line in open(dump, errors="replace") if line.startswith("summary:"))
pushes = summary["requests"]
if summary["non2xx"] or summary["connect"] or summary["read"] or summary["timeout"]:
    sys.exit(f"instructions: {binary} {scenario}: errors in {summary}")
print(f"{scenario:9} {instructions / pushes:9,.0f} instructions per push ({pushes} pushes)  {binary}")
EOF
}

for scenario in unique duplicate; do
    for binary in "$@"; do
        count "$binary" "$scenario"
    done
done
