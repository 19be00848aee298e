#!/usr/bin/env python3
"""Soak, bounded to about three to five minutes, all on loopback: two instances
of `whirligig serve` (the demo registry) on a fresh database, behind push
subscriptions `whirligig provision` creates on a Pub/Sub emulator of the
soak's own, pushing to a per-request round-robin balancer in front of both.
10,000 tasks are enqueued through `Tasks` (tests/src/soak.rs: READY rows,
then published; 5% published a second time straight to the emulator) while
an instance is SIGKILLed every 20 s and started again, PostgreSQL is stopped
once (3 s) and stalled once (SIGSTOP of the postmaster and its backends, 10 s).
Then every task must be in its expected final state, nothing lost, no stale
run, the dead letters exactly the tasks that never succeed, and the time to
drain after the last kill is printed. Exit 0 only if every check passes.

  scripts/soak_api.py           # builds (instances: release; driver: debug), then runs
  SOAK_BIN=... SOAK_DRIVER=... scripts/soak_api.py   # prebuilt binaries

The emulator (0.8.20) loses redeliveries under load when a subscription has
a retry policy: with ten or more messages failing at once, each is pushed
two or three times and never again (nor dead-lettered). The soak therefore
clears the provisioned retry policies (the emulator then redelivers a failed
push about a second later) and dead-letters after SOAK_MAX_DELIVERIES (40)
deliveries, above the 409s a dead instance's lease causes in its 15 s of
grace. SOAK_RETRY_POLICY=provisioned keeps them, to see the emulator's loss.

Knobs: SOAK_TASKS (10000), SOAK_RATE (100/s), SOAK_DUPLICATES (0.05), SOAK_SEED
(1), SOAK_KILL_EVERY (20), SOAK_KILLS (5), SOAK_PG_STOP_AT (58; -1: none),
SOAK_PG_DOWN (3), SOAK_STALL_AT (88; -1: none), SOAK_STALL (10), SOAK_DRAIN
(150), SOAK_TIMEOUT (420), SOAK_EMULATOR_PORT (8095), SOAK_PROXY_PORT (8290;
instances on the next two), SOAK_DATABASE (whirligig_soak_api), SOAK_WORK
(target/soak-api). The instances run with TASKS_ENVIRONMENT=dev, the only
environment that allows TASKS_AUTH=none (the emulator pushes without a token).
"""

import asyncio
import base64
import collections
import csv
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = os.environ
TASKS = int(ENV.get("SOAK_TASKS", 10000))
RATE = float(ENV.get("SOAK_RATE", 100))
DUPLICATES = float(ENV.get("SOAK_DUPLICATES", 0.05))
SEED = int(ENV.get("SOAK_SEED", 1))
KILL_EVERY = float(ENV.get("SOAK_KILL_EVERY", 20))
KILLS = int(ENV.get("SOAK_KILLS", 5))
PG_STOP_AT, PG_DOWN = float(ENV.get("SOAK_PG_STOP_AT", 58)), float(ENV.get("SOAK_PG_DOWN", 3))
STALL_AT, STALL = float(ENV.get("SOAK_STALL_AT", 88)), float(ENV.get("SOAK_STALL", 10))
DRAIN = float(ENV.get("SOAK_DRAIN", 150))
TIMEOUT = int(ENV.get("SOAK_TIMEOUT", 420))
EMULATOR_PORT = int(ENV.get("SOAK_EMULATOR_PORT", 8095))
PROXY_PORT = int(ENV.get("SOAK_PROXY_PORT", 8290))
PORTS = [PROXY_PORT + 1, PROXY_PORT + 2]
DB = ENV.get("SOAK_DATABASE", "whirligig_soak_api")
MAX_DELIVERIES = ENV.get("SOAK_MAX_DELIVERIES", "40")
RETRY_POLICY = ENV.get("SOAK_RETRY_POLICY", "cleared")
WORK = ENV.get("SOAK_WORK", os.path.join(ROOT, "target", "soak-api"))
PG_VERSION, PG_CLUSTER = "15", "main"
PG_DATA = f"/var/lib/postgresql/{PG_VERSION}/{PG_CLUSTER}"
LAUNCHER = "/usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator"
PROJECT, NAMESPACE = "whirligig-soak", "soak"
DEAD_LETTER_SUB = f"projects/{PROJECT}/subscriptions/dev--{NAMESPACE}.tasks--dead-letter-sub"
EMULATOR = f"127.0.0.1:{EMULATOR_PORT}"
DATABASE_URL = f"postgres://postgres@127.0.0.1:5432/{DB}"
BIN = os.path.join(WORK, "whirligig")
DRIVER = os.path.join(WORK, "whirligig-soak")

T0 = time.monotonic()
LOAD_START = T0
EVENTS = []  # (seconds since the load started, what happened)
STOPPED = set()  # PostgreSQL processes this soak has SIGSTOPped


def say(text):
    print(f"[soak {time.monotonic() - T0:6.1f}s] {text}", flush=True)


def event(text):
    at = time.monotonic() - LOAD_START
    EVENTS.append((at, text))
    say(f"load+{at:.1f}s {text}")


def wall(monotonic):
    return time.time() - (time.monotonic() - monotonic)


def app_env(**more):
    env = {k: v for k, v in ENV.items() if not k.startswith(("TASKS_", "OTEL_", "PUBSUB_", "GCP_", "DATABASE_"))}
    env.update(
        TASKS_ENVIRONMENT="dev", TASKS_AUTH="none", TASKS_NAMESPACE=NAMESPACE, GCP_PROJECT_ID=PROJECT,
        DATABASE_URL=DATABASE_URL, LOG_FORMAT="json", OTEL_TRACES_EXPORTER="none", RUST_LOG="info",
        CLOUD_RUN_SERVICE_URL=f"http://127.0.0.1:{PROXY_PORT}",
    )
    env.update(more)
    return env


def psql(sql):
    out = subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", DB, "-v", "ON_ERROR_STOP=1", "-qAt",
                          "-F", "|", "-c", sql], capture_output=True, text=True, timeout=30)
    if out.returncode != 0:
        raise RuntimeError(out.stderr.strip())
    return [line.split("|") for line in out.stdout.splitlines() if line]


def one(sql):
    return psql(sql)[0][0]


def emulator_call(method, path, body=None):
    request = urllib.request.Request(f"http://{EMULATOR}/v1/{path}", method=method,
                                     data=None if body is None else json.dumps(body).encode(),
                                     headers={"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


# --- PostgreSQL: stopped, started, and stalled by pid (the postmaster and its children).

def postgres_pids():
    try:
        with open(f"{PG_DATA}/postmaster.pid") as f:
            postmaster = int(f.readline())
    except (OSError, ValueError):
        return []
    children = subprocess.run(["ps", "-o", "pid=", "--ppid", str(postmaster)], capture_output=True, text=True).stdout
    return [postmaster] + [int(pid) for pid in children.split()]


def pg_ctl(action):
    args = ["pg_ctlcluster", "--skip-systemctl-redirect", PG_VERSION, PG_CLUSTER, action]
    if action == "stop":
        args += ["--", "-m", "fast"]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def postgres_up():
    return subprocess.run(["pg_isready", "-q", "-h", "127.0.0.1", "-p", "5432"]).returncode == 0


def stall_postgres():
    pids = postgres_pids()
    # The backends first: none sees its postmaster stopped and acts on it.
    for pid in reversed(pids):
        try:
            os.kill(pid, signal.SIGSTOP)
            STOPPED.add(pid)
        except ProcessLookupError:
            pass
    return len(pids)


def resume_postgres():
    for pid in list(STOPPED) + postgres_pids():
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    STOPPED.clear()


def postgres_running_again():
    resume_postgres()
    if not postgres_up():
        pg_ctl("start")


# --- the balancer: each request of a client connection goes to the next
# instance; one that refuses the connection is skipped (a load balancer skips
# a dead instance), one that drops the request midway is answered 502.

STATS = collections.Counter()
ROUND_ROBIN = itertools.cycle(range(len(PORTS)))
BAD_GATEWAY = b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n"


async def read_request(reader):
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
        elif name.strip().lower() == b"transfer-encoding":
            raise ValueError("the emulator sends bodies with a content-length")
    body = await reader.readexactly(length)
    kept = [line for line in lines[1:] if line and not line.lower().startswith(b"connection:")]
    return b"\r\n".join([lines[0], *kept, b"connection: close", b"", b""]), body


async def forward(head, body):
    first = next(ROUND_ROBIN)
    for offset in range(len(PORTS)):
        port = PORTS[(first + offset) % len(PORTS)]
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 2)
        except (OSError, asyncio.TimeoutError):
            STATS["connection refused: the next instance"] += 1
            continue
        try:
            writer.write(head + body)
            await writer.drain()
            response = await asyncio.wait_for(reader.read(-1), 90)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            response = b""
        finally:
            writer.close()
        if not response.startswith(b"HTTP/"):
            STATS["502: the instance dropped the request"] += 1
            return BAD_GATEWAY
        STATS[f"{response.split(b' ', 2)[1].decode()} from :{port}"] += 1
        return kept_alive(response)
    STATS["502: no instance up"] += 1
    return BAD_GATEWAY


def kept_alive(response):
    head, _, body = response.partition(b"\r\n\r\n")
    lines = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:")]
    if not any(line.lower().startswith(b"content-length:") for line in lines):
        lines.append(b"content-length: %d" % len(body))
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


async def serve_client(reader, writer):
    try:
        while True:
            head, body = await read_request(reader)
            writer.write(await forward(head, body))
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ValueError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


# --- the instances, and the faults

class Instances:
    def __init__(self):
        self.procs = {}
        self.generation = collections.Counter()

    def start(self, port):
        self.generation[port] += 1
        log = open(f"{WORK}/instance-{port}-{self.generation[port]}.log", "wb")
        self.procs[port] = subprocess.Popen([BIN, "serve"], env=app_env(PORT=str(port)), stdout=log,
                                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def kill(self, port):
        proc = self.procs[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        return proc.pid

    def stop_all(self):
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def listening(port, within=30):
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return True
        except OSError:
            await asyncio.sleep(0.1)
    return False


async def at(seconds):
    await asyncio.sleep(max(0.0, LOAD_START + seconds - time.monotonic()))


async def kills(instances):
    """An instance SIGKILLed every KILL_EVERY seconds, alternating, started
    again a second later; the monotonic time of the last kill."""
    last_kill = None
    for n in range(KILLS):
        await at(KILL_EVERY * (n + 1))
        port = PORTS[n % len(PORTS)]
        pid = instances.kill(port)
        last_kill = time.monotonic()
        event(f"SIGKILL instance :{port} (pid {pid})")
        await asyncio.sleep(1)
        instances.start(port)
        event(f"restarted instance :{port} (pid {instances.procs[port].pid})")
    return last_kill


async def database_restart():
    await at(PG_STOP_AT)
    event("PostgreSQL stop (fast)")
    stopped = await asyncio.to_thread(pg_ctl, "stop")
    event(f"PostgreSQL stopped (rc {stopped.returncode}); starting it {PG_DOWN:.0f}s later")
    await asyncio.sleep(PG_DOWN)
    started = await asyncio.to_thread(pg_ctl, "start")
    event(f"PostgreSQL started (rc {started.returncode})")


async def database_stall():
    await at(STALL_AT)
    count = stall_postgres()
    event(f"PostgreSQL SIGSTOP ({count} processes)")
    try:
        await asyncio.sleep(STALL)
    finally:
        resume_postgres()
    event("PostgreSQL SIGCONT")


async def faults(instances):
    async def database():
        if PG_STOP_AT >= 0:
            await database_restart()
        if STALL_AT >= 0:
            await database_stall()

    last_kill, _ = await asyncio.gather(kills(instances), database())
    return last_kill


# --- set-up

async def set_up(instances):
    """The database, the emulator (its Popen), provisioning, the balancer and the instances."""
    if not postgres_up():
        pg_ctl("start")
    subprocess.run(["dropdb", "-h", "127.0.0.1", "-U", "postgres", "--if-exists", DB], check=True)
    subprocess.run(["createdb", "-h", "127.0.0.1", "-U", "postgres", DB], check=True)
    subprocess.run([BIN, "migrate"], env=app_env(), check=True, capture_output=True)
    say(f"starting the Pub/Sub emulator on {EMULATOR}")
    emulator = subprocess.Popen([LAUNCHER, "--host=127.0.0.1", f"--port={EMULATOR_PORT}"],
                                stdout=open(f"{WORK}/emulator.log", "wb"), stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    with open(f"{WORK}/emulator.pid", "w") as f:
        f.write(str(emulator.pid))
    for _ in range(120):
        try:
            emulator_call("GET", f"projects/{PROJECT}/topics")
            break
        except OSError:
            await asyncio.sleep(0.5)
    provision()
    proxy = await asyncio.start_server(serve_client, "127.0.0.1", PROXY_PORT)
    for port in PORTS:
        instances.start(port)
    for port in PORTS:
        if not await listening(port):
            raise RuntimeError(f"instance :{port} does not listen (see {WORK}/instance-{port}-1.log)")
    say(f"instances on {PORTS}, balancer on :{PROXY_PORT}")
    return emulator, proxy


def provision():
    env = app_env(PUBSUB_EMULATOR_HOST=EMULATOR, TASKS_MAX_DELIVERY_ATTEMPTS=MAX_DELIVERIES)
    done = subprocess.run([BIN, "provision"], capture_output=True, text=True, env=env)
    with open(f"{WORK}/provision.log", "w") as f:
        f.write(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"provision failed (see {WORK}/provision.log)")
    names = [s["name"] for s in emulator_call("GET", f"projects/{PROJECT}/subscriptions")["subscriptions"]]
    if RETRY_POLICY == "cleared":
        for name in names:
            if name != DEAD_LETTER_SUB:
                emulator_call("PATCH", name, {"subscription": {"name": name}, "updateMask": "retryPolicy"})
    say(f"provisioned {len(names)} subscriptions pushing to :{PROXY_PORT}; retry policy {RETRY_POLICY}, "
        f"dead-lettered after {MAX_DELIVERIES} deliveries")


# --- load, and drain

async def load(instances):
    """Enqueues through the driver while the faults run; its summary, the
    manifest and the monotonic time of the last kill."""
    global LOAD_START
    manifest = f"{WORK}/manifest.csv"
    LOAD_START = time.monotonic()
    say(f"enqueueing {TASKS} tasks at {RATE:.0f}/s through Tasks ({DUPLICATES:.0%} published twice)")
    driver = await asyncio.create_subprocess_exec(
        DRIVER, "enqueue", str(TASKS), str(RATE), str(DUPLICATES), str(SEED), manifest,
        env=app_env(PUBSUB_EMULATOR_HOST=EMULATOR), stdout=subprocess.PIPE, stderr=open(f"{WORK}/driver.log", "wb"))
    fault_task = asyncio.create_task(faults(instances))
    out, _ = await driver.communicate()
    lines = out.decode().strip().splitlines()
    enqueue = json.loads(lines[-1]) if lines else {"error": f"the driver said nothing (see {WORK}/driver.log)"}
    event(f"enqueue done: {enqueue}")
    last_kill = await fault_task or time.monotonic()
    with open(manifest) as f:
        expected = list(csv.DictReader(f))
    for _ in range(30):
        try:
            psql("drop table if exists soak_expected; create table soak_expected "
                 "(task_id text primary key, task_name text, expected text, duplicated boolean)")
            subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", DB, "-qc",
                            f"\\copy soak_expected from '{manifest}' csv header"], check=True, timeout=30)
            break
        except (RuntimeError, subprocess.SubprocessError):
            await asyncio.sleep(1)
    return enqueue, expected, last_kill


# Tasks that must end (succeed, or fail for good) and have not: what the drain waits for.
NOT_DONE_SQL = """
select count(*) from soak_expected e left join task_executions t using (task_id)
where e.expected <> 'RETRYING' and not coalesce(case e.expected
    when 'SUCCESSFUL' then t.status = 'SUCCESSFUL'
    else t.status = 'FAILED' and t.permanent end, false)
"""

# Every task, those that fail retryably for ever included (FAILED between deliveries).
NOT_FINAL_SQL = """
select count(*) from soak_expected e left join task_executions t using (task_id)
where not coalesce(case e.expected
    when 'SUCCESSFUL' then t.status = 'SUCCESSFUL'
    when 'FAILED' then t.status = 'FAILED' and t.permanent
    else t.status = 'FAILED' and not t.permanent end, false)
"""


def pull_dead_letters(seen):
    while True:
        try:
            pulled = emulator_call("POST", f"{DEAD_LETTER_SUB}:pull", {"maxMessages": 1000, "returnImmediately": True})
        except OSError:
            return
        messages = pulled.get("receivedMessages", [])
        if not messages:
            return
        for received in messages:
            data = json.loads(base64.b64decode(received["message"].get("data", "")) or b"{}")
            count = received["message"].get("attributes", {}).get("CloudPubSubDeadLetterSourceDeliveryCount")
            seen.append((data.get("task_id"), data.get("task_name"), count))
        emulator_call("POST", f"{DEAD_LETTER_SUB}:acknowledge", {"ackIds": [m["ackId"] for m in messages]})


async def drain(expected, last_kill):
    """Waits until every must-end task has ended and every copy of the tasks
    that never succeed is dead-lettered, or DRAIN seconds after the last kill;
    the dead letters, the expected ones, and when it drained (or None)."""
    say(f"draining: up to {DRAIN:.0f}s after the last kill")
    dead, drained_at, last_report = [], None, 0.0
    # Each published copy of a task that never succeeds is dead-lettered once.
    want_dead = {row["task_id"]: 2 if row["duplicated"] == "true" else 1
                 for row in expected if row["expected"] != "SUCCESSFUL"}
    while time.monotonic() < last_kill + DRAIN:
        await asyncio.to_thread(pull_dead_letters, dead)
        try:
            remaining = int((await asyncio.to_thread(psql, NOT_DONE_SQL))[0][0])
        except RuntimeError:
            remaining = -1
        if remaining == 0 and drained_at is None:
            drained_at = time.monotonic()
            say(f"drained {drained_at - last_kill:.1f}s after the last kill")
        copies = collections.Counter(task_id for task_id, _, _ in dead)
        if drained_at is not None and all(copies[task_id] >= n for task_id, n in want_dead.items()):
            break
        if time.monotonic() - last_report > 10:
            say(f"not ended yet: {remaining}; dead-lettered so far: {len(dead)}")
            last_report = time.monotonic()
        await asyncio.sleep(1)
    await asyncio.to_thread(pull_dead_letters, dead)
    return dead, want_dead, drained_at


# --- what the logs say

def parse_time(text):
    return datetime.strptime(text.rstrip("Z")[:26], "%Y-%m-%dT%H:%M:%S.%f").timestamp()


def parse_logs():
    """Each delivery's (start, end, attempt, outcome, log file) by task id, and counters."""
    deliveries = collections.defaultdict(list)
    counts = collections.Counter()
    outcomes, statuses = collections.Counter(), collections.Counter()
    for name in sorted(os.listdir(WORK)):
        if not name.startswith("instance-"):
            continue
        with open(f"{WORK}/{name}", "rb") as f:
            for raw in f:
                try:
                    line = json.loads(raw)
                except ValueError:
                    counts["unreadable"] += 1
                    continue
                message = line.get("message", "")
                # A finish dropped because a newer attempt holds the row, at once or in the background.
                if message.startswith("a newer attempt owns this execution") or (
                        message.startswith("wrote an attempt's ending") and "Fenced" in str(line.get("finished"))):
                    counts["fenced"] += 1
                if line.get("target") != "whirligig_handler::executor::report":
                    continue
                outcomes[line.get("whirligig.task.outcome")] += 1
                statuses[line.get("http.response.status_code")] += 1
                counts["store errors"] += message.startswith("the store could not serve")
                end = parse_time(line["time"])
                start = end - float(line.get("duration_ms", 0)) / 1000
                deliveries[line.get("whirligig.task.id")].append(
                    (start, end, line.get("whirligig.task.attempt"), line.get("whirligig.task.outcome"), name))
    return deliveries, counts, outcomes, statuses


# A delivery's logged duration starts before its claim, which may wait its
# turn in a group-committed batch: overlaps shorter than this are that wait.
CLAIM_SLACK = 0.1


def overlaps(deliveries, slack=CLAIM_SLACK):
    """Tasks where two attempts that ran the function overlapped by more than
    `slack`: the older still ran while the newer held the claim."""
    found = []
    for task_id, runs in deliveries.items():
        ran = sorted(run for run in runs if run[2] is not None)
        for a, b in itertools.combinations(ran, 2):
            if a[2] != b[2] and b[0] < a[1] - slack:
                found.append((task_id, a, b))
                break
    return found


# --- the figures, and the checks

def final_states():
    rows = psql("""
        select e.task_name, e.expected, count(*),
               count(*) filter (where t.status = 'SUCCESSFUL'),
               count(*) filter (where t.status = 'FAILED' and t.permanent),
               count(*) filter (where t.status = 'FAILED' and not t.permanent),
               count(*) filter (where t.status = 'RUNNING'),
               count(*) filter (where t.status = 'READY'),
               count(*) filter (where t.task_id is null),
               coalesce(sum(t.attempts), 0), coalesce(max(t.attempts), 0)
        from soak_expected e left join task_executions t using (task_id) group by 1, 2 order by 1""")
    header = ("task", "expected", "tasks", "SUCCESSFUL", "FAILED perm", "FAILED retry", "RUNNING", "READY",
              "no row", "attempts", "max")
    print("\nfinal states, task_name x status against expected:")
    for row in [header, *rows]:
        print("  " + " ".join(f"{value:>12}" for value in row))


def print_faults():
    print("faults (seconds from the start of the load):")
    for at_, text in EVENTS:
        print(f"  {at_:7.1f}  {text}")


def extra_runs():
    """When each run beyond what its task asks for began, after the fault before it."""
    faults_at = [(wall(LOAD_START + at_), text.split(" (")[0].replace("PostgreSQL ", "pg "))
                 for at_, text in EVENTS if text.startswith(("SIGKILL", "PostgreSQL started", "PostgreSQL SIGCONT"))]
    started = sorted(float(r[0]) for r in psql(
        "select extract(epoch from started_at) from task_executions where "
        "(task_name in ('noop', 'echo', 'sleep') and attempts > 1) or "
        "(task_name = 'flaky' and status = 'SUCCESSFUL' and attempts > (kwargs->>'succeed_on')::int)"))
    described = []
    for at_ in started:
        before = [(when, what) for when, what in faults_at if when <= at_]
        described.append(f"{at_ - before[-1][0]:.1f}s after {before[-1][1]}" if before else "before any fault")
    return described


def stuck_running():
    """RUNNING rows no delivery is running, at the end: (id, name, attempts, seconds since its claim, renewed?)."""
    return psql("select t.task_id, t.task_name, t.attempts, extract(epoch from now() - t.started_at)::int, "
                "coalesce(t.renewed_at > t.started_at, false) from task_executions t "
                "where t.status = 'RUNNING' and t.started_at < now() - interval '20 seconds'")


def report(enqueue, expected, dead, want_dead, drained_at, last_kill, emulator):
    print("\n================ soak summary ================")
    print(f"{TASKS} tasks at {RATE:.0f}/s through Tasks, {DUPLICATES:.0%} published twice; retry policy "
          f"{RETRY_POLICY}; dead letter after {MAX_DELIVERIES} deliveries; binary {BIN}")
    print(f"enqueue: {enqueue}")
    print_faults()
    final_states()
    not_final = int(one(NOT_FINAL_SQL))
    no_row = int(one("select count(*) from soak_expected e left join task_executions t using (task_id) "
                     "where t.task_id is null"))
    extra = int(one("select count(*) from task_executions t where not exists "
                    "(select 1 from soak_expected e where e.task_id = t.task_id)"))
    last_end = one("select extract(epoch from max(t.finished_at)) from task_executions t "
                   "join soak_expected e using (task_id) where e.expected <> 'RETRYING'")
    redelivered = psql("select e.task_name, count(*) filter (where t.attempts > 1) "
                       "from soak_expected e join task_executions t using (task_id) group by 1 order by 1")
    flaky_extra = one("select coalesce(sum(attempts - (kwargs->>'succeed_on')::int), 0) from task_executions "
                      "where task_name = 'flaky' and status = 'SUCCESSFUL'")
    stuck = stuck_running()
    must_end = {row["task_id"] for row in expected if row["expected"] != "RETRYING"}
    stuck_must_end = [row for row in stuck if row[0] in must_end]

    deliveries, counts, outcomes, statuses = parse_logs()
    stale, touching = overlaps(deliveries), overlaps(deliveries, 0.0)
    ran_twice = sum(1 for runs in deliveries.values() if sum(run[3] == "succeeded" for run in runs) > 1)
    runs = extra_runs()
    print(f"\ndeliveries logged by the instances: {sum(map(len, deliveries.values()))} {dict(outcomes)}")
    print(f"  answered: {dict(sorted(statuses.items(), key=str))}")
    print(f"  balancer: {dict(sorted(STATS.items()))}")
    print(f"  executions with attempts > 1, by task: {dict((name, int(n)) for name, n in redelivered)}; "
          f"flaky attempts beyond its succeed_on: {flaky_extra}")
    print(f"  runs beyond what the task asks for (noop/echo/sleep again, flaky past succeed_on): {len(runs)}; "
          f"each began {runs}")
    print(f"  tasks whose function returned success more than once: {ran_twice}")
    print(f"  'the store could not serve' lines: {counts['store errors']}; unreadable log lines: {counts['unreadable']}")
    print(f"stale runs: {counts['fenced']} fenced finishes ('a newer attempt owns this execution'), {len(stale)} "
          f"tasks with two attempts running at once for over {CLAIM_SLACK * 1000:.0f} ms ({len(touching)} with any "
          f"overlap, a newer delivery's wait for its claim included)")
    for task_id, a, b in (stale or touching)[:3]:
        print(f"  {task_id}: attempt {a[2]} {a[0]:.3f}-{a[1]:.3f} ({a[4]}), attempt {b[2]} {b[0]:.3f}-{b[1]:.3f} ({b[4]})")
    dead_ids = collections.Counter(task_id for task_id, _, _ in dead)
    expected_of = {row["task_id"]: row["expected"] for row in expected}
    dead_wrong = [task_id for task_id in dead_ids if expected_of.get(task_id) == "SUCCESSFUL"]
    dead_missing = [task_id for task_id, n in want_dead.items() if dead_ids[task_id] < n]
    print(f"dead-lettered: {len(dead)} messages of {len(dead_ids)} tasks "
          f"{dict(collections.Counter(name for _, name, _ in dead))}, after "
          f"{dict(collections.Counter(count for _, _, count in dead))} deliveries; expected every copy of the "
          f"permanent, fail and panic tasks ({sum(want_dead.values())} of {len(want_dead)}): {len(dead_missing)} "
          f"tasks short, {len(dead_wrong)} that should succeed")
    if stuck:
        print(f"RUNNING with no delivery running it, at the end: {len(stuck)} (id, task, attempts, s since the "
              f"claim, renewed since): {stuck[:5]}")
    if drained_at is not None:
        ended = float(last_end) - wall(last_kill) if last_end else float("nan")
        print(f"drain: every must-end task ended {drained_at - last_kill:.1f}s after the last kill (polled each "
              f"second; the last one's finish: {ended:.1f}s after it)")
    else:
        print(f"drain: NOT drained {DRAIN:.0f}s after the last kill")
    return [
        ("every task enqueued", enqueue.get("not_enqueued") == 0 and enqueue.get("enqueued") == TASKS),
        (f"nothing lost: every task has a row ({no_row} without)", no_row == 0),
        (f"every task in its expected final state ({not_final} not)", not_final == 0),
        (f"no task that must end stuck RUNNING ({len(stuck_must_end)}; {len(stuck)} in all)", not stuck_must_end),
        (f"no stale run: {counts['fenced']} fenced finishes, {len(stale)} overlapping attempts",
         counts["fenced"] == 0 and not stale),
        (f"dead letters: every copy of the permanent/fail/panic tasks ({len(dead_missing)} short), none that should "
         f"succeed ({len(dead_wrong)})", not dead_missing and not dead_wrong),
        (f"drained within {DRAIN:.0f}s of the last kill", drained_at is not None),
        ("no rows for task ids not enqueued here", extra == 0),
        ("the emulator ran to the end", emulator.poll() is None),
    ]


async def soak():
    os.makedirs(WORK, exist_ok=True)
    for name in os.listdir(WORK):
        if name.endswith((".log", ".csv", ".pid")):
            os.remove(os.path.join(WORK, name))
    instances, emulator, proxy, checks = Instances(), None, None, []
    try:
        emulator, proxy = await set_up(instances)
        enqueue, expected, last_kill = await load(instances)
        dead, want_dead, drained_at = await drain(expected, last_kill)
        checks = report(enqueue, expected, dead, want_dead, drained_at, last_kill, emulator)
        print("\nchecks:")
        for name, ok in checks:
            print(f"  {'ok  ' if ok else 'FAIL'}  {name}")
        print(f"logs and data: {WORK}/ (database {DB} left in place)")
    finally:
        postgres_running_again()
        instances.stop_all()
        if proxy is not None:
            proxy.close()
        if emulator is not None and emulator.poll() is None:
            os.killpg(emulator.pid, signal.SIGTERM)
            try:
                emulator.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(emulator.pid, signal.SIGKILL)
    failed = [name for name, ok in checks if not ok]
    print("SOAK PASSED" if checks and not failed else f"SOAK FAILED: {len(failed) or 'set-up'} check(s)")
    return 0 if checks and not failed else 1


# --- the outer process: builds, runs the soak under `timeout`, and cleans up
# after it whatever happened (the timeout's SIGKILL included).

def build():
    if "SOAK_BIN" in ENV and "SOAK_DRIVER" in ENV:
        return ENV["SOAK_BIN"], ENV["SOAK_DRIVER"]
    say("building whirligig (release) and whirligig-soak (debug)")
    subprocess.run(["cargo", "build", "-q", "--release", "-p", "whirligig-handler", "--bin", "whirligig"],
                   cwd=ROOT, check=True)
    subprocess.run(["cargo", "build", "-q", "-p", "whirligig-tests", "--bin", "whirligig-soak"], cwd=ROOT, check=True)
    return os.path.join(ROOT, "target/release/whirligig"), os.path.join(ROOT, "target/debug/whirligig-soak")


def port_taken(port):
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


def cleanup():
    postgres_running_again()
    try:
        with open(f"{WORK}/emulator.pid") as f:
            os.killpg(int(f.read()), signal.SIGKILL)
    except (OSError, ValueError):
        pass


def outer():
    taken = [port for port in [EMULATOR_PORT, PROXY_PORT, *PORTS] if port_taken(port)]
    if taken:
        print(f"soak: ports {taken} are taken: stop what listens there, or set SOAK_EMULATOR_PORT/SOAK_PROXY_PORT",
              file=sys.stderr)
        return 2
    app, driver = build()
    os.makedirs(WORK, exist_ok=True)
    # Private copies: a build meanwhile must not swap the binary between restarts.
    for source, target in [(app, BIN), (driver, DRIVER)]:
        subprocess.run(["cp", source, target], check=True)
    child = subprocess.Popen(["timeout", "-k", "15", str(TIMEOUT), sys.executable, os.path.abspath(__file__), "--run"])
    signal.signal(signal.SIGTERM, lambda *_: child.send_signal(signal.SIGTERM))
    try:
        return child.wait()
    except KeyboardInterrupt:
        child.send_signal(signal.SIGTERM)
        return child.wait()
    finally:
        cleanup()


def run():
    def stop(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        return asyncio.run(soak())
    except KeyboardInterrupt:
        postgres_running_again()
        print("SOAK STOPPED before its end")
        return 1


if __name__ == "__main__":
    sys.exit(run() if sys.argv[1:] == ["--run"] else outer())
