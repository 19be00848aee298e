"""CPU used by the server under test, by PostgreSQL, and by the whole
machine, and the kernel's TCP listen-queue counts, from /proc: one JSON line
(CPU in clock ticks), for scripts/bench.sh to
take before and after a measured run (scripts/bench_report.py subtracts).

PostgreSQL is every process named `postgres` (the postmaster, its helpers and
the backends alive now) plus the postmaster's reaped children, so a backend
that exits during the run is still counted. Only a local server is seen.

    python3 scripts/bench_cpu.py SERVER_PID    # SERVER_PID may be - (none)
"""

import json
import os
import sys


def stat(pid):
    """utime, stime, cutime, cstime and the parent of PID, or None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as file:
            text = file.read()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2:].split()
    return [int(fields[i]) for i in (11, 12, 13, 14)], int(fields[1])


def comm(pid):
    try:
        with open(f"/proc/{pid}/comm") as file:
            return file.read().strip()
    except OSError:
        return ""


def postgres_ticks():
    pids = [int(pid) for pid in os.listdir("/proc") if pid.isdigit() and comm(pid) == "postgres"]
    total = 0
    for pid in pids:
        found = stat(pid)
        if found is None:
            continue
        (utime, stime, cutime, cstime), parent = found
        total += utime + stime
        if comm(parent) != "postgres":  # the postmaster: its exited backends too
            total += cutime + cstime
    return total if pids else None


def machine():
    with open("/proc/stat") as file:
        ticks = [int(n) for n in file.readline().split()[1:]]
    idle = ticks[3] + ticks[4]  # idle, iowait
    return sum(ticks[:8]), idle


def tcp():
    """The kernel's counts of SYNs dropped at a full listen queue, and of SYNs sent again."""
    with open("/proc/net/netstat") as file:
        lines = file.read().splitlines()
    for names, values in zip(lines[::2], lines[1::2]):
        if names.startswith("TcpExt:"):
            counts = dict(zip(names.split()[1:], (int(n) for n in values.split()[1:])))
            return {name: counts.get(name, 0) for name in ("ListenOverflows", "ListenDrops", "TCPSynRetrans")}
    return {}


def main():
    server = sys.argv[1]
    found = stat(server) if server != "-" else None
    total, idle = machine()
    print(json.dumps({
        "server": sum(found[0][:2]) if found else None,
        "postgres": postgres_ticks(),
        "machine": total,
        "idle": idle,
        "hz": os.sysconf("SC_CLK_TCK"),
        "tcp": tcp(),
    }))


if __name__ == "__main__":
    main()
