# Sourced by the scripts that need Google's Pub/Sub emulator on 127.0.0.1:8085
# (or $PUBSUB_EMULATOR_HOST): ensure_pubsub_emulator starts it in the
# background when it is installed but not running, or says what to install.
# It stays up after the script ends, so the next run reuses it; stop it with
#   kill -- -$(cat target/pubsub-emulator.pid)

PUBSUB_EMULATOR_HOST=${PUBSUB_EMULATOR_HOST:-127.0.0.1:8085}
# Google's client libraries and the tests' own client both read it.
export PUBSUB_EMULATOR_HOST

PUBSUB_TARGET_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target"
PUBSUB_LOG="$PUBSUB_TARGET_DIR/pubsub-emulator.log"
PUBSUB_PID_FILE="$PUBSUB_TARGET_DIR/pubsub-emulator.pid"

# postgres.sh defines it too; this file also works on its own.
declare -F say >/dev/null || say() { printf '==> %s\n' "$*"; }

# Where the Debian package puts its launcher, when dpkg does not say.
PUBSUB_LAUNCHER_PATH=/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator

# Listing topics answers `{}` only from the emulator (its root answers "Ok",
# which any server could). --noproxy: an http_proxy must not see loopback.
pubsub_up() {
  curl -fsS --noproxy '*' --max-time 2 "http://$PUBSUB_EMULATOR_HOST/v1/projects/whirligig-test/topics" >/dev/null 2>&1
}

# Something accepts connections there, whatever it is.
pubsub_port_taken() {
  curl -sS --noproxy '*' --max-time 2 -o /dev/null "http://$PUBSUB_EMULATOR_HOST/" 2>/dev/null
}

pubsub_launcher() {
  local candidate
  for candidate in \
    "$(dpkg -L google-cloud-cli-pubsub-emulator 2>/dev/null | grep '/bin/cloud-pubsub-emulator$' | head -n 1)" \
    "$PUBSUB_LAUNCHER_PATH"; do
    [ -n "$candidate" ] && [ -x "$candidate" ] && { echo "$candidate"; return; }
  done
  return 1
}

pubsub_missing() {
  echo "The Pub/Sub emulator is not reachable on $PUBSUB_EMULATOR_HOST and cannot be started here: $1." >&2
  echo "Install it and a Java 17 runtime (Debian, with Google's Cloud SDK apt repository):" >&2
  echo "  apt-get install google-cloud-cli-pubsub-emulator openjdk-17-jre-headless" >&2
  echo "or start one yourself and set PUBSUB_EMULATOR_HOST=host:port." >&2
  exit 1
}

ensure_pubsub_emulator() {
  command -v curl >/dev/null || {
    echo "curl not found: install it (Debian: apt-get install curl) so the Pub/Sub emulator can be probed" >&2
    exit 1
  }
  pubsub_up && return
  local host=${PUBSUB_EMULATOR_HOST%:*} port=${PUBSUB_EMULATOR_HOST##*:}
  case $host in
    127.0.0.1 | localhost) ;;
    *)
      # Someone else's emulator (a side container): it may still be coming up.
      for _ in $(seq 1 120); do pubsub_up && return; sleep 0.5; done
      echo "The Pub/Sub emulator is not reachable on $PUBSUB_EMULATOR_HOST." >&2
      exit 1
      ;;
  esac
  if pubsub_port_taken; then
    echo "Something that is not the Pub/Sub emulator answers on $PUBSUB_EMULATOR_HOST: stop it, or set PUBSUB_EMULATOR_HOST to a free port." >&2
    exit 1
  fi

  local -a launch
  local launcher
  if launcher=$(pubsub_launcher); then
    launch=("$launcher" "--host=$host" "--port=$port")
  elif command -v gcloud >/dev/null; then
    # gcloud finds the emulator in its own install (and takes ~5 s longer).
    launch=(gcloud beta emulators pubsub start "--host-port=$host:$port")
  else
    pubsub_missing "neither cloud-pubsub-emulator nor gcloud is installed"
  fi
  # Both launchers only exec java: without it they die at once, less clearly.
  if [ -z "${JAVA_HOME:-}" ] && ! command -v java >/dev/null; then
    pubsub_missing "no java on PATH and JAVA_HOME unset"
  fi

  say "starting the Pub/Sub emulator on $host:$port (log: ${PUBSUB_LOG#"$PWD/"})"
  mkdir -p "$PUBSUB_TARGET_DIR"
  # Its own session, no terminal, no stdin: it outlives this script and a ^C to it.
  if command -v setsid >/dev/null; then
    setsid nohup "${launch[@]}" >"$PUBSUB_LOG" 2>&1 </dev/null &
  else
    nohup "${launch[@]}" >"$PUBSUB_LOG" 2>&1 </dev/null &
  fi
  local pid=$!
  echo "$pid" >"$PUBSUB_PID_FILE"
  # The JVM takes a few seconds; a launcher that died will not come up at all.
  for _ in $(seq 1 120); do
    pubsub_up && return
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  echo "The Pub/Sub emulator did not come up on $PUBSUB_EMULATOR_HOST; the end of $PUBSUB_LOG:" >&2
  tail -n 20 "$PUBSUB_LOG" >&2
  exit 1
}
