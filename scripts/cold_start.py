"""Cold start of a whirligig binary: the time from exec to the first 200 of a
push, and the resident memory once it is idle, each the median of RUNS starts.

    python3 scripts/cold_start.py BINARY DATABASE_URL [RUNS]

The binary serves in dev mode (no token checks) with PostgreSQL tracking on,
so the time includes connecting, checking the migrations and the first claim
and finish. Only the standard library; traffic to 127.0.0.1 only; every child
is killed within 10 s.
"""

import json
import os
import socket
import statistics
import subprocess
import sys
import time
import base64

DEADLINE = 10.0


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def push_body(task_id):
    payload = json.dumps({"task_id": task_id, "task_name": "noop", "args": [], "kwargs": {}})
    data = base64.b64encode(payload.encode()).decode()
    return json.dumps({"message": {"data": data, "messageId": task_id}, "subscription": "cold-start"}).encode()


def push(port, body):
    """The status of one push, or None while nothing listens."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=DEADLINE) as connection:
            request = (
                b"POST /tasks/pubsub/ HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
                + b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            connection.sendall(request)
            status_line = connection.makefile("rb").readline()
            return int(status_line.split()[1])
    except (ConnectionRefusedError, ConnectionResetError, IndexError, ValueError):
        return None


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def one_start(binary, database_url, run):
    port = free_port()
    env = {"PATH": os.environ.get("PATH", ""), "PORT": str(port), "DATABASE_URL": database_url, "RUST_LOG": "warn"}
    body = push_body(f"cold-start-{os.getpid()}-{run}-{time.time_ns()}")
    started = time.perf_counter()
    child = subprocess.Popen([binary, "serve"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        while True:
            status = push(port, body)
            elapsed = time.perf_counter() - started
            if status == 200:
                break
            if child.poll() is not None or elapsed > DEADLINE:
                raise RuntimeError(f"no 200 within {elapsed:.1f} s (last status {status}): {child.stderr.read()!r}")
            time.sleep(0.0005)
        time.sleep(1.0)
        return elapsed * 1000, rss_kib(child.pid) / 1024
    finally:
        child.kill()
        child.wait(timeout=DEADLINE)


def main():
    binary, database_url = sys.argv[1], sys.argv[2]
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 10
    results = [one_start(binary, database_url, run) for run in range(runs)]
    first_200 = [ms for ms, _ in results]
    rss = [mib for _, mib in results]
    print(f"{binary}: {os.path.getsize(binary)} bytes")
    print(f"exec to first 200: median {statistics.median(first_200):.1f} ms "
          f"(min {min(first_200):.1f}, max {max(first_200):.1f}, {runs} starts)")
    print(f"idle RSS after the first push: median {statistics.median(rss):.1f} MiB "
          f"(min {min(rss):.1f}, max {max(rss):.1f})")


if __name__ == "__main__":
    main()
