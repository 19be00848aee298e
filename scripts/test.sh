#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it: PostgreSQL and the Pub/Sub
# emulator reachable, formatting, lints, then every test of the workspace.
# Run from anywhere: scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# Tests talk to a real PostgreSQL on 127.0.0.1:5432 (user postgres, trust auth).
source scripts/postgres.sh
# And to Google's Pub/Sub emulator on 127.0.0.1:8085 (or $PUBSUB_EMULATOR_HOST),
# started here in the background and left running for the next run.
source scripts/pubsub.sh

say "PostgreSQL"
ensure_postgres

say "Pub/Sub emulator"
ensure_pubsub_emulator

say "cargo fmt --check"
cargo fmt --all -- --check

say "cargo clippy -D warnings"
cargo clippy --locked --workspace --all-targets -- -D warnings
# What a web service that only enqueues links (default-features = false), with
# and without the PostgreSQL store: it must build, and lint, on its own.
cargo clippy --locked -p whirligig-handler --no-default-features --lib -- -D warnings
cargo clippy --locked -p whirligig-handler --no-default-features --features postgres --lib -- -D warnings

say "cargo test"
cargo test --locked --workspace
