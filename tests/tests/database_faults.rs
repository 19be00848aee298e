//! What the store does when PostgreSQL misbehaves, through a proxy that can
//! stall it, cut every connection as a restart does, or not be there yet:
//! dead connections are never handed out, every statement has a deadline,
//! `/readyz` answers within a second, a server starts without its database
//! and serves once it comes, a job waits for it, a finish that could not be
//! written is written in the background, and running executions keep live
//! leases that a claim takes over soon after their renewals stop.

// Helpers here are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use serde_json::value::RawValue;
use support::pg_proxy::{PgProxy, through};
use support::process::{Server, free_port, run_app};
use support::{TestDb, get, task};
use whirligig_handler::store::{
    Claim, ClaimRequest, Ending, ExecutionStore, Finished, PostgresStore, Status, migrate, migrate_within,
};
use whirligig_registry::Retry;

fn raw(json: &str) -> &RawValue {
    serde_json::from_str(json).unwrap()
}

const LEASE: Duration = Duration::from_secs(300);

fn request(task_id: &str) -> ClaimRequest<'_> {
    ClaimRequest {
        task_id,
        task_name: "count",
        args: raw("[]"),
        kwargs: raw("{}"),
        message_id: None,
        enqueued_at: None,
        lease: LEASE,
        max_attempts: None::<NonZeroU32>,
    }
}

fn succeeded() -> Ending<'static> {
    Ending::Succeeded { return_value: raw("1") }
}

/// A store of `size` connections to `db` through a proxy, every connection
/// opened (used at once), so a fault of the proxy meets each of them.
async fn warm_store_behind(db: &TestDb, size: u32) -> (PgProxy, PostgresStore) {
    let proxy = PgProxy::start().await;
    let store = PostgresStore::new(&proxy.url(&db.url), size, Duration::from_secs(2)).unwrap();
    let held: Vec<_> = futures_util::future::join_all((0..size).map(|_| store.connection())).await;
    assert!(held.iter().all(Result::is_ok), "the pool opened {size} connections");
    (proxy, store)
}

#[tokio::test]
async fn connections_a_restart_closed_are_never_handed_out() {
    let db = TestDb::new().await;
    let (proxy, store) = warm_store_behind(&db, 6).await;
    proxy.cut();
    // At once, before every connection has seen its end, and then after.
    for n in 0..20 {
        let task_id = format!("after-restart-{n}");
        let claim = store.claim(&request(&task_id)).await;
        let Ok(Claim::Claimed(attempt)) = claim else { panic!("claim {n} after the restart: {claim:?}") };
        assert_eq!(store.finish(&task_id, attempt, succeeded()).await.unwrap(), Finished::Recorded);
        assert_eq!(store.get(&task_id).await.unwrap().unwrap().status, Status::Successful);
        if n == 9 {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    store.ping().await.unwrap();
}

#[tokio::test]
async fn a_stalled_database_fails_statements_by_their_deadline_and_readyz_within_a_second() {
    let db = TestDb::new().await;
    let (proxy, store) = warm_store_behind(&db, 4).await;
    proxy.stall();

    let started = Instant::now();
    let ping = store.ping().await;
    assert!(ping.is_err(), "a stalled database is not ready");
    assert!(started.elapsed() < Duration::from_secs(3), "readiness answered in {:?}", started.elapsed());

    let started = Instant::now();
    let claim = tokio::time::timeout(Duration::from_secs(20), store.claim(&request("stalled"))).await;
    let claim = claim.expect("the statement's deadline ended the wait");
    assert!(claim.is_err(), "{claim:?}");
    assert!(started.elapsed() < Duration::from_secs(12), "gave up after {:?}", started.elapsed());

    proxy.resume();
    let claim = store.claim(&request("after-stall")).await;
    assert!(matches!(claim, Ok(Claim::Claimed(_))), "{claim:?}");
}

#[tokio::test]
async fn a_database_that_accepts_and_never_answers_fails_the_migration_in_time() {
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            open.push(socket);
        }
    });
    let started = Instant::now();
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    let migrated = tokio::time::timeout(Duration::from_secs(30), migrate(&url)).await.expect("it gave up");
    let error = migrated.unwrap_err();
    assert!(error.to_string().contains("no answer from the database"), "{error}");
    assert!(started.elapsed() < Duration::from_secs(15), "after {:?}", started.elapsed());
    held.abort();
}

#[tokio::test]
async fn a_finish_that_could_not_be_written_is_written_in_the_background() {
    let db = TestDb::new().await;
    let store = Arc::new(db.store(4, Duration::from_secs(2)));
    let other = db.store(4, Duration::from_secs(2));
    let Claim::Claimed(attempt) = store.claim(&request("unwritten")).await.unwrap() else { panic!("claimed") };

    // A transaction elsewhere holds the row: the finish times out on its lock.
    let mut locker = db.client().await;
    let lock = locker.transaction().await.unwrap();
    lock.execute("select from task_executions where task_id = 'unwritten' for update", &[]).await.unwrap();
    let finished = store.finish("unwritten", attempt, succeeded()).await;
    assert!(finished.is_err(), "{finished:?}");

    // Meanwhile a redelivery, here or on another instance, does not run it again.
    assert_eq!(store.claim(&request("unwritten")).await.unwrap(), Claim::Running);
    lock.commit().await.unwrap();
    assert_eq!(other.claim(&request("unwritten")).await.unwrap(), Claim::Running, "its lease holds");

    let row = db.wait_within("unwritten", Status::Successful, Duration::from_secs(10)).await;
    assert_eq!((row.attempts, row.return_value), (1, Some(json!(1))), "the first attempt's ending");
    assert_eq!(other.claim(&request("unwritten")).await.unwrap(), Claim::AlreadySucceeded);
}

/// When `task_id`'s lease was last renewed.
async fn renewed_at(db: &TestDb, task_id: &str) -> chrono::DateTime<chrono::Utc> {
    let client = db.client().await;
    let row = client.query_one("select renewed_at from task_executions where task_id = $1", &[&task_id]).await;
    row.unwrap().get(0)
}

#[tokio::test]
async fn a_running_execution_keeps_its_lease_and_loses_it_soon_after_its_instance_dies() {
    let db = TestDb::new().await;
    let running = db.store(2, Duration::from_secs(2));
    let other = db.store(2, Duration::from_secs(2));
    let Claim::Claimed(first) = running.claim(&request("alive")).await.unwrap() else { panic!("claimed") };

    // Its renewals are what keep it: made to look stale, it is renewed again.
    let client = db.client().await;
    client.execute("update task_executions set renewed_at = now() - interval '1 hour'", &[]).await.unwrap();
    let stale = renewed_at(&db, "alive").await;
    let deadline = Instant::now() + Duration::from_secs(12);
    while renewed_at(&db, "alive").await == stale {
        assert!(Instant::now() < deadline, "the lease was never renewed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(other.claim(&request("alive")).await.unwrap(), Claim::Running, "renewed, it holds");

    // The instance dies: its renewals stop, and once they are older than the
    // grace (skipped here: a second ago, the grace ago) the execution is taken over.
    drop(running);
    // A renewal already under way when the store was dropped may still land.
    tokio::time::sleep(Duration::from_millis(500)).await;
    client.execute("update task_executions set renewed_at = now() - interval '16 seconds'", &[]).await.unwrap();
    let Claim::Claimed(second) = other.claim(&request("alive")).await.unwrap() else { panic!("taken over") };
    assert_eq!(second.number, 2);
    assert_ne!(second.fence, first.fence);
}

/// A push of `task_id` for the test app's `echo`.
fn echo(task_id: &str) -> String {
    task(task_id, "echo", json!({"n": 1}))
}

#[tokio::test]
async fn a_server_started_without_its_database_listens_and_serves_once_it_comes() {
    let db = TestDb::new().await;
    let port = free_port();
    let url = through(&db.url, port);
    let env = [("DATABASE_URL", url.as_str()), ("TASKS_ENVIRONMENT", "dev"), ("TASKS_AUTH", "none")];
    let server = Server::start(&env).await;

    assert_eq!(get(server.addr, "/healthz").await.status, 200, "alive");
    let ready = get(server.addr, "/readyz").await;
    assert_eq!(ready.status, 503, "{}", ready.body);
    let reply = server.push(echo("early")).await;
    assert_eq!((reply.status, reply.retry_after.as_deref()), (503, Some("5")), "{}", reply.body);

    let _database = PgProxy::on(port).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while get(server.addr, "/readyz").await.status != 200 {
        assert!(Instant::now() < deadline, "never ready: {}", server.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.push(echo("early")).await.status, 200);
    assert_eq!(db.row("early").await.unwrap().status, Status::Successful);
}

#[tokio::test]
async fn a_job_waits_for_its_database_to_come() {
    let db = TestDb::new().await;
    let port = free_port();
    let url = through(&db.url, port);
    let coming = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let proxy = PgProxy::on(port).await;
        tokio::time::sleep(Duration::from_secs(30)).await;
        drop(proxy);
    });
    let env = [("DATABASE_URL", url.as_str()), ("TASKS_ENVIRONMENT", "dev"), ("GCP_PROJECT_ID", "p")];
    let output = run_app(&["run", "echo", "--kwargs", r#"{"n": 2}"#, "--task-id", "job-1"], &env).await;
    assert!(
        output.status.success(),
        "{}{}",
        support::process::text(&output.stdout),
        support::process::text(&output.stderr)
    );
    assert_eq!(support::process::text(&output.stdout).trim().lines().last(), Some(r#"{"n":2}"#));
    assert_eq!(db.row("job-1").await.unwrap().status, Status::Successful);
    coming.abort();
}

#[tokio::test]
async fn a_permanent_failure_written_late_is_still_final() {
    let db = TestDb::new().await;
    let store = db.store(2, Duration::from_secs(2));
    let Claim::Claimed(attempt) = store.claim(&request("late-permanent")).await.unwrap() else { panic!("claimed") };
    let mut locker = db.client().await;
    let lock = locker.transaction().await.unwrap();
    lock.execute("select from task_executions for update", &[]).await.unwrap();
    let failed = Ending::Failed { message: "no", traceback: "no", retry: Retry::Permanent };
    assert!(store.finish("late-permanent", attempt, failed).await.is_err());
    lock.commit().await.unwrap();
    let row = db.wait_within("late-permanent", Status::Failed, Duration::from_secs(10)).await;
    assert!(row.permanent, "{row:?}");
    assert_eq!(store.claim(&request("late-permanent")).await.unwrap(), Claim::AlreadyFailed);
}

#[tokio::test]
async fn migrations_tried_for_a_bounded_time_give_up_with_the_reason() {
    let url = "postgres://postgres@127.0.0.1:1/postgres";
    let mut tries = Vec::new();
    let started = Instant::now();
    let error = migrate_within(url, Some(Duration::from_secs(2)), |_, n| {
        tries.push(n);
        true
    })
    .await
    .unwrap_err();
    assert!(error.to_string().contains("unreachable"), "{error}");
    assert!(tries.len() >= 3 && tries.windows(2).all(|pair| pair[1] == pair[0] + 1), "{tries:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "gave up after {:?}", started.elapsed());
}
