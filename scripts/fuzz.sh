#!/usr/bin/env bash
# Fuzzes the push decode, CloudEvent headers, the task payload, push token
# verification and the cron parser (handler/fuzz, a cargo-fuzz project kept
# out of the workspace), each for FUZZ_SECONDS (default 60). Prints each
# target's executions (libFuzzer's final "Done N runs" line); exits 1 if any
# target crashed, naming the input that did it.
#
#   scripts/fuzz.sh                    # every target
#   FUZZ_SECONDS=300 scripts/fuzz.sh push cron
#
# Needs cargo-fuzz (0.13) and a C++ compiler (libfuzzer-sys builds libFuzzer).
# Works on a stable toolchain: no sanitizer (-s none), only the coverage
# instrumentation, which is stable. Crashes land in handler/fuzz/artifacts/TARGET/;
# reproduce one with `cargo fuzz run -s none TARGET FILE` in handler/fuzz.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FUZZ_DIR="$ROOT/handler/fuzz"
SECONDS_EACH=${FUZZ_SECONDS:-60}
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(push cloudevent_headers payload token cron)

command -v cargo-fuzz >/dev/null || { echo "cargo-fuzz not found: cargo install cargo-fuzz" >&2; exit 2; }
cd "$FUZZ_DIR"

# Seeds: one valid input per target, so the fuzzers start past the parsers' front doors.
seed() { # target name bytes (printf format)
  mkdir -p "corpus/$1"
  [ -e "corpus/$1/$2" ] || printf "$3" >"corpus/$1/$2"
}
data=$(printf '%s' '{"task_id":"t1","task_name":"sleep","args":[],"kwargs":{"ms":5},"enqueued_at":"2024-01-15T10:30:00.123456+00:00"}' | base64 -w0)
seed push push '\000{"message":{"data":"%s","messageId":"1","publishTime":"2024-01-15T10:30:00Z","attributes":{"traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}},"subscription":"projects/p/subscriptions/s","deliveryAttempt":2}' "$data"
seed push event '\001{"specversion":"1.0","type":"google.cloud.pubsub.topic.v1.messagePublished","data":{"message":{"data":"%s","messageId":"1"},"subscription":"s"}}' "$data"
seed cloudevent_headers binary 'ce-specversion\0001.0\000ce-type\000google.cloud.pubsub.topic.v1.messagePublished\000content-type\000application/json'
seed cloudevent_headers structured 'content-type\000application/cloudevents+json'
seed payload message '{"task_id":"scheduled-noop","task_name":"noop","args":[1,"a",[2]],"kwargs":{"k":{"n":null}},"enqueued_at":"2024-01-15T10:30:00+00:00"}'
seed token bearer '\002{"alg":"RS256","kid":"fuzz","typ":"JWT"}\377{"iss":"https://accounts.google.com","aud":"https://whirligig.example.run.app","email":"tasks@p.iam.gserviceaccount.com","email_verified":true,"iat":1700000000,"exp":1700003600,"sub":"1","nbf":1700000000}\377S'
# $NOW is the current time (the target substitutes it), so these get past iat whenever they run:
# a stripped token that passes, and one whose exp is chrono's last second (exp + skew overflowed).
seed token current '\002{"alg":"RS256","kid":"fuzz","typ":"JWT"}\377{"iss":"https://accounts.google.com","aud":"https://whirligig.example.run.app","email":"tasks@p.iam.gserviceaccount.com","email_verified":true,"iat":$NOW,"exp":4102444800,"sub":"1"}\377S'
seed token exp-at-the-end-of-time '\002{"alg":"RS256","kid":"fuzz","typ":"JWT"}\377{"iss":"https://accounts.google.com","aud":"https://whirligig.example.run.app","email":"tasks@p.iam.gserviceaccount.com","email_verified":true,"iat":$NOW,"exp":8210266876799,"sub":"1"}\377S'
seed cron hourly '\000\000\000\000\000\000\000\000\000\000*/15 9-17 * * 1-5'
seed cron london '\201\001\000\310\062\145\000\000\000\000\060 3 L * *'

echo "==> building the fuzz targets (cargo fuzz build -s none)"
mkdir -p "$ROOT/target/fuzz-logs"
cargo fuzz build -s none >"$ROOT/target/fuzz-logs/build.log" 2>&1 || { tail -n 40 "$ROOT/target/fuzz-logs/build.log" >&2; exit 2; }

failed=()
summary=()
mkdir -p "$ROOT/target/fuzz-logs"
for target in "${TARGETS[@]}"; do
  log="$ROOT/target/fuzz-logs/$target.log"
  echo "==> $target for ${SECONDS_EACH}s (log: ${log#"$ROOT/"})"
  set +e
  timeout $((SECONDS_EACH + 120)) cargo fuzz run -s none "$target" -- \
    -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1
  rc=$?
  set -e
  done_line=$(grep -E '^Done [0-9]+ runs' "$log" | tail -n 1 || true)
  execs=$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}' | tail -n 1 || true)
  cov=$(grep -E '^#[0-9]+' "$log" | tail -n 1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [0-9]+/[0-9]+[a-zA-Z]*' || true)
  if [ $rc -ne 0 ] || grep -qE '^SUMMARY: libFuzzer|panicked at|==ERROR' "$log"; then
    artifact=$(grep -oE 'artifacts/[^ ]+' "$log" | tail -n 1 || true)
    summary+=("$(printf '%-20s CRASH (exit %s) after %s executions; input: %s' "$target" "$rc" "${execs:-?}" "${artifact:-see log}")")
    failed+=("$target")
    grep -E 'panicked at|^SUMMARY|thread .* panicked' "$log" | head -n 3 | sed 's/^/    /'
  else
    summary+=("$(printf '%-20s ok: %s executions (%s)  %s' "$target" "${execs:-?}" "${done_line:-no final line}" "$cov")")
  fi
done

echo
echo "fuzz summary (${SECONDS_EACH}s each):"
printf '  %s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
  echo "crashed: ${failed[*]}"
  exit 1
fi
