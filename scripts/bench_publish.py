"""Google's Python publisher (google-cloud-pubsub, default batch settings)
against the Pub/Sub emulator, as a web service's request handlers use it:
CALLERS threads, each publishing one noop task message and waiting for its
message id (`publisher.publish(...).result()`), over and over. WARMUP
seconds unmeasured, then SECONDS measured; prints one JSON line with the
fields `whirligig-bench enqueue` prints.

The payload is the bytes whirligig publishes: `{"task_id", "task_name",
"args", "kwargs", "enqueued_at"}` as `json.dumps` writes them, a new UUID v4
task id per message. Only the emulator is ever used: PUBSUB_EMULATOR_HOST
must be set, to a loopback address.

    PUBSUB_EMULATOR_HOST=127.0.0.1:8085 python3 scripts/bench_publish.py 50 2s 10s
"""

import datetime
import json
import math
import os
import sys
import threading
import time
import uuid

PROJECT = "whirligig-bench"
# A publish the emulator has not confirmed by then counts as an error.
PUBLISH_TIMEOUT_S = 10


def seconds(text):
    return float(text.rstrip("s"))


def payload():
    return json.dumps({
        "task_id": str(uuid.uuid4()),
        "task_name": "noop",
        "args": [],
        "kwargs": {},
        "enqueued_at": datetime.datetime.now(datetime.timezone.utc).isoformat(),
    }).encode()


def percentile(ordered, p):
    if not ordered:
        return None
    rank = min(max(math.ceil(p * len(ordered)), 1), len(ordered))
    return round(ordered[rank - 1] * 1000, 3)


def main():
    callers, warmup, measured = int(sys.argv[1]), seconds(sys.argv[2]), seconds(sys.argv[3])
    host = os.environ.get("PUBSUB_EMULATOR_HOST", "")
    if not host.startswith(("127.", "localhost:", "[::1]:")):
        sys.exit(f"bench_publish: PUBSUB_EMULATOR_HOST must name a loopback emulator, not {host!r}")

    from google.cloud import pubsub_v1
    from google.cloud.pubsub_v1 import types
    from importlib.metadata import version

    publisher = pubsub_v1.PublisherClient()
    topic = publisher.topic_path(PROJECT, f"python-{uuid.uuid4().hex[:12]}")
    publisher.create_topic(name=topic, timeout=PUBLISH_TIMEOUT_S)

    began = time.perf_counter()
    start, end = began + warmup, began + warmup + measured
    lock = threading.Lock()
    latencies, errors, first_error, last = [], [0], [None], [start]

    def caller():
        mine, failed, error_text, finished = [], 0, None, None
        while True:
            called = time.perf_counter()
            if called >= end:
                break
            try:
                publisher.publish(topic, payload()).result(timeout=PUBLISH_TIMEOUT_S)
                error = None
            except Exception as exception:  # noqa: BLE001 - counted, the first one reported
                error = exception
            done = time.perf_counter()
            if called < start:
                continue
            finished = done
            if error is None:
                mine.append(done - called)
            else:
                failed += 1
                error_text = error_text or f"{type(error).__name__}: {error}"
        with lock:
            latencies.extend(mine)
            errors[0] += failed
            first_error[0] = first_error[0] or error_text
            if finished is not None:
                last[0] = max(last[0], finished)

    threads = [threading.Thread(target=caller, daemon=True) for _ in range(callers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=end - time.perf_counter() + PUBLISH_TIMEOUT_S + 5)

    elapsed = last[0] - start
    latencies.sort()
    batch = types.BatchSettings()
    line = {
        "target": "emulator",
        "client": f"google-cloud-pubsub {version('google-cloud-pubsub')} (gRPC), Python {sys.version.split()[0]}",
        "batch_settings": {"max_latency_s": batch.max_latency, "max_messages": batch.max_messages},
        "topic": topic,
        "callers": callers,
        "enqueues": len(latencies),
        "seconds": round(elapsed, 3),
        "enqueues_per_s": round(len(latencies) / max(elapsed, 1e-9), 1),
        "p50_ms": percentile(latencies, 0.50),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": percentile(latencies, 1.0),
        "errors": errors[0],
    }
    if first_error[0]:
        line["first_error"] = first_error[0]
    print(json.dumps(line), flush=True)
    # gRPC's threads can hold the interpreter at exit: the line is out, go.
    os._exit(0)


if __name__ == "__main__":
    main()
