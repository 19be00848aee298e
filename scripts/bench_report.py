"""The table of one scripts/bench.sh run: requests/s, p50, p99, slowest,
status codes and errors, the server's peak RSS, and the ratio of each
scenario to the ceiling it is measured against; then the enqueue scenarios,
ours against Google's Python publisher on the same emulator, and publish
requests per enqueue against the instant stub. Only the scenarios the run
had are printed.

    python3 scripts/bench_report.py WORK_DIR
"""

import json
import os
import re
import sys


def oha(work, name):
    with open(os.path.join(work, f"{name}.json")) as summary:
        return json.load(summary)


def pgbench_tps(work):
    with open(os.path.join(work, "ceiling-db.txt")) as output:
        found = re.search(r"tps = ([0-9.]+)", output.read())
    return float(found.group(1)) if found else None


ENQUEUE_SCENARIOS = ("enqueue-emulator", "enqueue-python", "enqueue-stub")


def enqueue_result(work, name):
    """The scenario's JSON line, or the reason it did not run (a string), or None."""
    result, skipped = os.path.join(work, f"{name}.json"), os.path.join(work, f"{name}.skipped")
    if os.path.exists(result):
        with open(result) as line:
            return json.load(line)
    if os.path.exists(skipped):
        with open(skipped) as reason:
            return reason.read().strip()
    return None


def ms(value):
    return f"{value:.2f}" if value is not None else "-"


def enqueue_report(work):
    results = {name: enqueue_result(work, name) for name in ENQUEUE_SCENARIOS}
    if all(result is None for result in results.values()):
        return
    print()
    print(f"{'enqueue':<20} {'enq/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>7}  notes")
    for name, result in results.items():
        if result is None:
            continue
        if isinstance(result, str):
            print(f"{name:<20} skipped: {result}")
            continue
        notes = result.get("client", "whirligig Tasks (REST)")
        if "requests_per_enqueue" in result:
            notes = f"{result['publish_requests']} publish requests for {result['published_messages']} messages"
        print(f"{name:<20} {result['enqueues_per_s']:>9.0f} {ms(result['p50_ms']):>8} {ms(result['p99_ms']):>8} "
              f"{ms(result.get('max_ms')):>8} {result['errors']:>7}  {notes}")
        if result.get("first_error"):
            print(f"{'':<20} first error: {result['first_error']}")
    ours, python, stub = (results[name] for name in ENQUEUE_SCENARIOS)
    if isinstance(ours, dict) and isinstance(python, dict):
        rate = ours["enqueues_per_s"] / python["enqueues_per_s"] if python["enqueues_per_s"] else float("nan")
        p99 = ours["p99_ms"] / python["p99_ms"] if ours["p99_ms"] and python["p99_ms"] else float("nan")
        print(f"ours/python on the emulator: {rate:.2f} x enqueues/s, {p99:.2f} x p99 "
              f"({ours['callers']} callers each)")
    elif isinstance(python, str):
        print(f"ours/python: no ratio, enqueue-python was skipped ({python})")
    if isinstance(stub, dict):
        per_request = stub["published_messages"] / max(stub["publish_requests"], 1)
        print(f"enqueue-stub: {stub['requests_per_enqueue']:.3f} publish requests per enqueue "
              f"({per_request:.1f} messages per request), {stub['token_requests']} token fetch(es)")
    venv = os.path.join(work, "venv.txt")
    if os.path.exists(venv):
        with open(venv) as setup:
            print(f"python publisher: {setup.read().strip()}")


def main():
    work = sys.argv[1]
    if os.path.exists(os.path.join(work, "runs")):
        push_report(work)
    cold_start = os.path.join(work, "cold-start.txt")
    if os.path.exists(cold_start):
        with open(cold_start) as cold:
            print(cold.read().strip())
    enqueue_report(work)


def push_report(work):
    rates = {"ceiling-db": pgbench_tps(work)}
    rows = []
    with open(os.path.join(work, "runs")) as runs:
        for line in runs:
            name, ceiling, rss_kib = line.split()
            result = oha(work, name)
            summary, percentiles = result["summary"], result["latencyPercentiles"]
            rates[name] = summary["requestsPerSec"]
            statuses = ", ".join(f"{code}: {count}" for code, count in sorted(result["statusCodeDistribution"].items()))
            errors = sum(result.get("errorDistribution", {}).values())
            rows.append((name, ceiling, summary, percentiles, statuses, errors, int(rss_kib) / 1024))

    print(f"{'scenario':<20} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'RSS MiB':>8}  "
          f"{'ratio':<22} statuses, errors")
    ceiling_db = rates["ceiling-db"]
    print(f"{'ceiling-db':<20} {ceiling_db or 0:>9.0f} {'':>8} {'':>8} {'':>8} {'':>8}  "
          f"{'(pgbench, tasks/s)':<22}")
    for name, ceiling, summary, percentiles, statuses, errors, rss in rows:
        ratio = ""
        if ceiling != "-" and rates.get(ceiling):
            ratio = f"{summary['requestsPerSec'] / rates[ceiling]:.2f} x {ceiling}"
        print(f"{name:<20} {summary['requestsPerSec']:>9.0f} {percentiles['p50'] * 1000:>8.2f} "
              f"{percentiles['p99'] * 1000:>8.2f} {summary['slowest'] * 1000:>8.1f} {rss:>8.1f}  "
              f"{ratio:<22} {statuses}; {errors} errors")

    for name in ("noop-postgres-oidc", "cloudsql-latency"):
        rows_file = os.path.join(work, f"{name}.rows")
        if not os.path.exists(rows_file):
            continue
        with open(rows_file) as stored:
            unique, claims, finishes = (int(n) for n in stored.read().strip().split("|"))
        sent = sum(sum(oha(work, run)["statusCodeDistribution"].values()) for run in (name, f"{name}.warmup"))
        print(f"{name}: {unique} executions stored for {sent} pushes (warm-up included): "
              f"{1 - unique / sent:.1%} repeated a task id (oha picks body lines at random); "
              f"{unique / max(claims, 1):.1f} rows per claim statement, {unique / max(finishes, 1):.1f} per finish")
    pool_file = os.path.join(work, "cloudsql-latency.pool")
    if os.path.exists(pool_file):
        with open(pool_file) as pool:
            size = int(pool.read().strip())
        rate = oha(work, "cloudsql-latency")["summary"]["requestsPerSec"]
        print(f"cloudsql-latency: {rate / size:.0f} pushes/s per pooled connection ({size} connections)")


if __name__ == "__main__":
    main()
