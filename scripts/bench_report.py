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


def pgbench_tasks(work):
    """Tasks pgbench claimed and finished (one script run each)."""
    with open(os.path.join(work, "ceiling-db.txt")) as output:
        found = re.search(r"number of transactions actually processed: (\d+)", output.read())
    return int(found.group(1)) if found else 0


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


def load_result(work, name):
    """A measured run, as oha's summary or the unique scenario's wrk line gives it."""
    result = oha(work, name)
    if "summary" not in result:  # wrk (scripts/bench_unique.lua)
        errors = sum(result[kind] for kind in ("connect", "read", "write", "timeout"))
        return {
            "rate": result["requests"] / result["seconds"], "p50": result["p50_ms"], "p99": result["p99_ms"],
            "max": result["max_ms"], "requests": result["requests"], "errors": errors,
            "statuses": f"non-2xx: {result['non2xx']} (wrk)",
        }
    summary, percentiles = result["summary"], result["latencyPercentiles"]
    return {
        "rate": summary["requestsPerSec"], "p50": percentiles["p50"] * 1000, "p99": percentiles["p99"] * 1000,
        "max": summary["slowest"] * 1000, "requests": sum(result["statusCodeDistribution"].values()),
        "errors": sum(result.get("errorDistribution", {}).values()),
        "statuses": ", ".join(f"{code}: {count}" for code, count in sorted(result["statusCodeDistribution"].items())),
    }


def cpu(work, name):
    """The CPU a measured run took: server and PostgreSQL µs in all, the
    machine's idle share, and the kernel's TCP counts; None when not taken."""
    try:
        with open(os.path.join(work, f"{name}.before.cpu")) as before, \
                open(os.path.join(work, f"{name}.after.cpu")) as after:
            before, after = json.load(before), json.load(after)
    except OSError:
        return None
    micros = 1e6 / after["hz"]

    def used(key):
        if before[key] is None or after[key] is None:
            return None
        return (after[key] - before[key]) * micros

    total = after["machine"] - before["machine"]
    tcp = {key: after["tcp"].get(key, 0) - before["tcp"].get(key, 0) for key in after["tcp"]}
    return {"server": used("server"), "postgres": used("postgres"),
            "idle": (after["idle"] - before["idle"]) / total if total else None, "tcp": tcp}


def per(value, count):
    return f"{value / count:.1f}" if value is not None and count else "-"


def push_report(work):
    rates = {"ceiling-db": pgbench_tps(work)}
    rows = []
    with open(os.path.join(work, "runs")) as runs:
        for line in runs:
            name, ceiling, rss_kib = line.split()
            result = load_result(work, name)
            rates[name] = result["rate"]
            rows.append((name, ceiling, result, cpu(work, name), int(rss_kib) / 1024))

    print(f"{'scenario':<20} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'RSS MiB':>8} "
          f"{'srv us':>7} {'pg us':>7} {'idle':>5}  {'ratio':<22} statuses, errors")
    ceiling_db = rates["ceiling-db"]
    db_cpu = cpu(work, "ceiling-db")
    db_tasks = pgbench_tasks(work)
    db_line = f"{'ceiling-db':<20} {ceiling_db or 0:>9.0f} {'':>8} {'':>8} {'':>8} {'':>8} {'-':>7} "
    pg_db = per(db_cpu["postgres"], db_tasks) if db_cpu else "-"
    idle_db = f"{db_cpu['idle']:.0%}" if db_cpu and db_cpu["idle"] is not None else "-"
    print(db_line + f"{pg_db:>7} {idle_db:>5}  {'(pgbench, tasks/s)':<22}")
    for name, ceiling, result, used, rss in rows:
        ratio = ""
        if ceiling != "-" and rates.get(ceiling):
            ratio = f"{result['rate'] / rates[ceiling]:.2f} x {ceiling}"
        server = per(used["server"], result["requests"]) if used else "-"
        postgres = per(used["postgres"], result["requests"]) if used else "-"
        idle = f"{used['idle']:.0%}" if used and used["idle"] is not None else "-"
        print(f"{name:<20} {result['rate']:>9.0f} {result['p50']:>8.2f} {result['p99']:>8.2f} {result['max']:>8.1f} "
              f"{rss:>8.1f} {server:>7} {postgres:>7} {idle:>5}  {ratio:<22} {result['statuses']}; "
              f"{result['errors']} errors")
    print("srv us, pg us: CPU per request (server process; every postgres process), from /proc; "
          "idle: the machine's idle share during the run")

    for name in ("noop-postgres-oidc", "unique", "cloudsql-latency"):
        rows_file = os.path.join(work, f"{name}.rows")
        if not os.path.exists(rows_file):
            continue
        with open(rows_file) as stored:
            unique, claims, finishes = (int(n) for n in stored.read().strip().split("|"))
        if name == "unique":
            sent = load_result(work, name)["requests"] + warmup_requests(work, name)
        else:
            sent = sum(sum(oha(work, run)["statusCodeDistribution"].values()) for run in (name, f"{name}.warmup"))
        print(f"{name}: {unique} executions stored for {sent} pushes (warm-up included): "
              f"{1 - unique / sent:.1%} repeated a task id; "
              f"{unique / max(claims, 1):.1f} rows per claim statement, {unique / max(finishes, 1):.1f} per finish")
    pool_file = os.path.join(work, "cloudsql-latency.pool")
    if os.path.exists(pool_file):
        with open(pool_file) as pool:
            size = int(pool.read().strip())
        rate = load_result(work, "cloudsql-latency")["rate"]
        print(f"cloudsql-latency: {rate / size:.0f} pushes/s per pooled connection ({size} connections)")
    for name, _, _, used, _ in rows:
        if used and any(used["tcp"].values()):
            counts = ", ".join(f"{key} {value}" for key, value in used["tcp"].items())
            print(f"{name}: the kernel counted {counts} during the run")


def warmup_requests(work, name):
    """Requests wrk's warm-up sent (its text summary: "N requests in ...")."""
    with open(os.path.join(work, f"{name}.warmup.wrk")) as output:
        found = re.search(r"(\d+) requests in", output.read())
    return int(found.group(1)) if found else 0


if __name__ == "__main__":
    main()
