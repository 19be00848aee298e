"""The table of one scripts/bench.sh run: requests/s, p50, p99, slowest,
status codes and errors, the server's peak RSS, and the ratio of each
scenario to the ceiling it is measured against.

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


def main():
    work = sys.argv[1]
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
    with open(os.path.join(work, "cold-start.txt")) as cold:
        print(cold.read().strip())


if __name__ == "__main__":
    main()
