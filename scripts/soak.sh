#!/usr/bin/env bash
# The soak (scripts/soak_api.py): two instances behind push subscriptions
# provisioned on a Pub/Sub emulator of its own, 10,000 tasks enqueued through
# `Tasks` while instances are SIGKILLed, PostgreSQL restarted and stalled;
# every check printed, exit 0 only if all pass. About 5 minutes, loopback
# only, bounded by SOAK_TIMEOUT. It restarts the suite's PostgreSQL: run it alone.
set -euo pipefail
cd "$(dirname "$0")/.."
exec python3 scripts/soak_api.py "$@"
