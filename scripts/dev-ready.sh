#!/usr/bin/env bash
# Time from exec of `whirligig dev` to its first ready answer (GET /readyz 200),
# median of $RUNS (default 5) per case: the emulator already running (fresh
# namespace: 20 resources provisioned), the same namespace again (nothing to
# write), an emulator dev starts itself on a free port, and TASKS_BACKEND=immediate
# (no emulator). Loopback only; each run is stopped with SIGTERM.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/pubsub.sh
ensure_pubsub_emulator
BIN=${BIN:-target/debug/whirligig}
[ -x "$BIN" ] || cargo build --bin whirligig
RUNS=${RUNS:-5}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Prints milliseconds from exec to the first 200 of /readyz.
ready_ms() {
  local port; port=$(free_port)
  local start; start=$(date +%s%N)
  env -i PATH="$PATH" HOME="$HOME" PORT="$port" "$@" "$BIN" dev >/tmp/dev-ready.log 2>&1 &
  local pid=$!
  until curl -fsS --noproxy '*' -o /dev/null "http://127.0.0.1:$port/readyz" 2>/dev/null; do
    kill -0 "$pid" 2>/dev/null || { cat /tmp/dev-ready.log >&2; exit 1; }
    sleep 0.01
  done
  echo $(( ($(date +%s%N) - start) / 1000000 ))
  kill -TERM "$pid"; wait "$pid" || true
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)] " ms (" a[1] "-" a[NR] ")"}'; }

case_runs() {
  local label=$1; shift
  local i; for i in $(seq "$RUNS"); do "$@"; done | median | sed "s/^/$label: /"
}

fresh() { ready_ms PUBSUB_EMULATOR_HOST="$PUBSUB_EMULATOR_HOST" TASKS_NAMESPACE="r$(date +%s%N)"; }
again() { ready_ms PUBSUB_EMULATOR_HOST="$PUBSUB_EMULATOR_HOST" TASKS_NAMESPACE=ready; }
own() { ready_ms PUBSUB_EMULATOR_HOST="127.0.0.1:$(free_port)"; }
none() { ready_ms TASKS_BACKEND=immediate; }

again >/dev/null
case_runs "emulator running, fresh namespace (20 resources written)" fresh
case_runs "emulator running, provisioned already (nothing written)" again
case_runs "emulator started by dev" own
case_runs "no emulator (TASKS_BACKEND=immediate)" none
