//! The execution store's contract, held by both implementations: the state
//! machine, the fence on finish, the lease, attempt limits, concurrent claims,
//! and migrations applied by two instances at once. Then PostgreSQL's group
//! commit: calls that queue share a statement and still get their own
//! answers, a row that spoils its batch fails alone, a row lock held elsewhere
//! holds up one statement for at most a second, and a finish is on disk
//! before it returns.

// Helpers here are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use support::TestDb;
use tokio::task::JoinHandle;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Json;
use whirligig_handler::store::{
    Attempt, Claim, ClaimRequest, Ending, Enqueued, ExecutionStore, Finished, MemoryStore, PostgresStore, ReadyRequest,
    Status, StoreError, migrate,
};
use whirligig_registry::Retry;

fn raw(json: &str) -> &RawValue {
    serde_json::from_str(json).expect("valid JSON")
}

fn request<'a>(task_id: &'a str, lease: Duration, max_attempts: Option<u32>) -> ClaimRequest<'a> {
    ClaimRequest {
        task_id,
        task_name: "count",
        args: raw("[1, \"two\"]"),
        kwargs: raw(r#"{"k": {"nested": true}}"#),
        message_id: Some("m-1"),
        enqueued_at: None,
        lease,
        max_attempts: max_attempts.and_then(NonZeroU32::new),
    }
}

const LEASE: Duration = Duration::from_secs(300);

/// The attempt `claim` took, which must be its `number`th.
#[track_caller]
fn attempt(claim: Claim, number: u32) -> Attempt {
    match claim {
        Claim::Claimed(attempt) if attempt.number == number => attempt,
        other => panic!("expected attempt {number} to be claimed, got {other:?}"),
    }
}

fn is_attempt(claim: &Claim, number: u32) -> bool {
    matches!(claim, Claim::Claimed(attempt) if attempt.number == number)
}

/// An attempt no claim made.
fn never_claimed(number: u32) -> Attempt {
    Attempt { number, fence: 7 }
}

async fn lifecycle(store: &impl ExecutionStore) {
    let claim = request("life", LEASE, None);
    let first = attempt(store.claim(&claim).await.unwrap(), 1);
    assert_eq!(store.claim(&claim).await.unwrap(), Claim::Running, "the lease holds");
    let failed = Ending::Failed { message: "boom", traceback: "boom\ncaused by: io", retry: Retry::Retryable };
    assert_eq!(store.finish("life", first, failed).await.unwrap(), Finished::Recorded);
    let row = store.get("life").await.unwrap().unwrap();
    assert_eq!((row.status, row.attempts, row.error_message.as_deref()), (Status::Failed, 1, Some("boom")));
    assert_eq!(row.error_traceback.as_deref(), Some("boom\ncaused by: io"));
    assert_eq!(row.args, serde_json::json!([1, "two"]));
    assert_eq!(row.kwargs, serde_json::json!({"k": {"nested": true}}));

    let second = attempt(store.claim(&claim).await.unwrap(), 2);
    assert_ne!(first.fence, second.fence, "each claim draws its own fence");
    let succeeded = Ending::Succeeded { return_value: raw(r#"{"sent": 3}"#) };
    assert_eq!(store.finish("life", first, succeeded).await.unwrap(), Finished::Fenced, "the first claim's fence");
    assert_eq!(store.finish("life", second, succeeded).await.unwrap(), Finished::Recorded);
    let row = store.get("life").await.unwrap().unwrap();
    assert_eq!((row.status, row.attempts), (Status::Successful, 2));
    assert_eq!(row.return_value, Some(serde_json::json!({"sent": 3})));
    assert_eq!((row.error_message, row.error_traceback), (None, None), "success clears the error");
    assert!(row.started_at.is_some() && row.finished_at.is_some());

    assert_eq!(store.claim(&claim).await.unwrap(), Claim::AlreadySucceeded);
    let again = store.finish("life", second, succeeded).await.unwrap();
    assert_eq!(again, Finished::Recorded, "the same finish sent twice (a lost connection) lands twice, the same");
    assert_eq!(store.get("life").await.unwrap().unwrap().status, Status::Successful);
    assert!(store.get("nothing").await.unwrap().is_none());
    let nothing = store.finish("nothing", never_claimed(1), succeeded).await.unwrap();
    assert_eq!(nothing, Finished::Fenced, "never claimed");
    assert!(store.get("nothing").await.unwrap().is_none(), "a finish creates no row");
}

async fn fence_and_lease(store: &impl ExecutionStore) {
    let stale = attempt(store.claim(&request("stale", LEASE, None)).await.unwrap(), 1);
    // A zero lease is over at once: the first claim is abandoned, as by a crashed instance.
    let reclaim = request("stale", Duration::ZERO, None);
    let current_attempt = attempt(store.claim(&reclaim).await.unwrap(), 2);
    let late = Ending::Succeeded { return_value: raw("\"late\"") };
    assert_eq!(store.finish("stale", stale, late).await.unwrap(), Finished::Fenced, "the stale run cannot overwrite");
    // A lost claim's number repeats; its fence never does.
    let same_number = Attempt { number: 2, ..stale };
    assert_eq!(store.finish("stale", same_number, late).await.unwrap(), Finished::Fenced, "fenced by its token");
    let current = Ending::Succeeded { return_value: raw("\"current\"") };
    assert_eq!(store.finish("stale", current_attempt, current).await.unwrap(), Finished::Recorded);
    let row = store.get("stale").await.unwrap().unwrap();
    assert_eq!(row.return_value, Some(serde_json::json!("current")));
}

async fn attempt_limit(store: &impl ExecutionStore) {
    let limited = request("limited", LEASE, Some(2));
    for number in 1..=2 {
        let claimed = attempt(store.claim(&limited).await.unwrap(), number);
        let failed = Ending::Failed { message: "no", traceback: "no", retry: Retry::Retryable };
        assert_eq!(store.finish("limited", claimed, failed).await.unwrap(), Finished::Recorded);
    }
    assert_eq!(store.claim(&limited).await.unwrap(), Claim::Exhausted { attempts: 2 });
    // An abandoned last attempt is exhausted too, not run a third time.
    let crashed = request("crashed", LEASE, Some(1));
    attempt(store.claim(&crashed).await.unwrap(), 1);
    let retry = request("crashed", Duration::ZERO, Some(1));
    assert_eq!(store.claim(&retry).await.unwrap(), Claim::Exhausted { attempts: 1 });
    let row = store.get("crashed").await.unwrap().unwrap();
    assert_eq!(row.status, Status::Failed, "an abandoned last attempt does not stay RUNNING");
    assert_eq!(row.error_message.as_deref(), Some("abandoned: the last attempt did not finish within its lease"));
}

async fn permanent_failure_is_final(store: &impl ExecutionStore) {
    let claim = request("final", LEASE, None);
    let claimed = attempt(store.claim(&claim).await.unwrap(), 1);
    let failed = Ending::Failed { message: "no such user", traceback: "no such user", retry: Retry::Permanent };
    assert_eq!(store.finish("final", claimed, failed).await.unwrap(), Finished::Recorded);
    assert_eq!(store.claim(&claim).await.unwrap(), Claim::AlreadyFailed, "a redelivery does not run it again");
    store.skip(&claim, "skipped: kill switch X is off").await.unwrap();
    let row = store.get("final").await.unwrap().unwrap();
    assert!(row.permanent);
    assert_eq!(
        (row.attempts, row.error_message.as_deref()),
        (1, Some("no such user")),
        "a skip keeps the real failure"
    );
}

async fn skip(store: &impl ExecutionStore) {
    store.skip(&request("skipped", LEASE, None), "skipped: kill switch X is off").await.unwrap();
    let row = store.get("skipped").await.unwrap().unwrap();
    assert_eq!((row.status, row.attempts), (Status::Failed, 0));
    assert_eq!(row.error_message.as_deref(), Some("skipped: kill switch X is off"));
    // Switched back on, the same id runs.
    let claimed = attempt(store.claim(&request("skipped", LEASE, None)).await.unwrap(), 1);
    let done = Ending::Succeeded { return_value: raw("null") };
    store.finish("skipped", claimed, done).await.unwrap();
    store.skip(&request("skipped", LEASE, None), "skipped again").await.unwrap();
    assert_eq!(store.get("skipped").await.unwrap().unwrap().status, Status::Successful, "a success stays");
}

async fn concurrent_claims<S: ExecutionStore>(store: Arc<S>) {
    let claims = (0..16).map(|_| {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.claim(&request("race", LEASE, None)).await.expect("a claim") })
    });
    let results: Vec<Claim> = futures_join(claims).await;
    let winners = results.iter().filter(|claim| matches!(claim, Claim::Claimed(_))).count();
    assert_eq!(winners, 1, "{results:?}");
    assert!(results.iter().all(|claim| is_attempt(claim, 1) || *claim == Claim::Running), "{results:?}");
}

async fn futures_join<T: Send + 'static>(handles: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut results = Vec::new();
    for handle in handles.collect::<Vec<_>>() {
        results.push(handle.await.expect("the claim task finished"));
    }
    results
}

/// READY at enqueue, taken by the claim; a call never published is READY
/// again when enqueued again; a known task id is never reset.
async fn enqueue(store: &impl ExecutionStore) {
    let enqueued_at = chrono::Utc::now();
    let ready =
        ReadyRequest { task_id: "queued", task_name: "count", args: raw("[1]"), kwargs: raw("{}"), enqueued_at };
    assert_eq!(store.enqueue(&ready).await.unwrap(), Enqueued::Ready);
    let row = store.get("queued").await.unwrap().unwrap();
    assert_eq!((row.status, row.attempts, row.args.clone()), (Status::Ready, 0, serde_json::json!([1])));
    assert_eq!(row.enqueued_at.map(|at| at.timestamp_micros()), Some(enqueued_at.timestamp_micros()));
    assert_eq!(store.enqueue(&ready).await.unwrap(), Enqueued::Known(Status::Ready), "an idempotent enqueue");

    store.not_published("queued", "UNAVAILABLE (HTTP 503): try later").await.unwrap();
    let row = store.get("queued").await.unwrap().unwrap();
    assert_eq!(row.status, Status::Failed);
    assert_eq!(row.error_message.as_deref(), Some("not published: UNAVAILABLE (HTTP 503): try later"));
    assert_eq!(store.enqueue(&ready).await.unwrap(), Enqueued::Ready, "enqueued again, it is READY again");
    assert_eq!(store.get("queued").await.unwrap().unwrap().error_message, None);

    let claim = ClaimRequest { task_id: "queued", ..request("queued", LEASE, None) };
    let claimed = attempt(store.claim(&claim).await.unwrap(), 1);
    store.not_published("queued", "late").await.unwrap();
    assert_eq!(store.get("queued").await.unwrap().unwrap().status, Status::Running, "a claimed row is left alone");
    let succeeded = Ending::Succeeded { return_value: raw("null") };
    assert_eq!(store.finish("queued", claimed, succeeded).await.unwrap(), Finished::Recorded);
    assert_eq!(store.enqueue(&ready).await.unwrap(), Enqueued::Known(Status::Successful));
    assert_eq!(store.get("queued").await.unwrap().unwrap().status, Status::Successful, "never reset");
}

async fn contract<S: ExecutionStore>(store: Arc<S>) {
    enqueue(store.as_ref()).await;
    lifecycle(store.as_ref()).await;
    fence_and_lease(store.as_ref()).await;
    attempt_limit(store.as_ref()).await;
    permanent_failure_is_final(store.as_ref()).await;
    skip(store.as_ref()).await;
    concurrent_claims(store).await;
}

#[tokio::test]
async fn postgres_holds_the_contract() {
    let db = TestDb::new().await;
    contract(Arc::new(db.store(8, Duration::from_secs(2)))).await;
}

#[tokio::test]
async fn memory_holds_the_same_contract() {
    contract(Arc::new(MemoryStore::default())).await;
}

/// A claim that blocks behind another delivery's uncommitted claim of an
/// existing row, then finds it taken, is told "running", never "exhausted".
#[tokio::test]
async fn a_claim_that_loses_a_race_on_an_existing_row_is_told_it_is_running() {
    let db = TestDb::new().await;
    let store = Arc::new(db.store(2, Duration::from_secs(5)));
    let lost = request("contended", LEASE, None);
    let claimed = attempt(store.claim(&lost).await.unwrap(), 1);
    let failed = Ending::Failed { message: "first", traceback: "first", retry: Retry::Retryable };
    store.finish("contended", claimed, failed).await.unwrap();

    let mut other = db.client().await;
    let winner = other.transaction().await.unwrap();
    let taken = "update task_executions set status = 'RUNNING', attempts = 2, started_at = now() where task_id = $1";
    winner.execute(taken, &[&"contended"]).await.unwrap();
    let loser = {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.claim(&request("contended", LEASE, None)).await.unwrap() })
    };
    wait_until_blocked_on_a_lock(&db).await;
    winner.commit().await.unwrap();
    assert_eq!(loser.await.unwrap(), Claim::Running);
}

/// Polls pg_stat_activity: a lock wait has no event a test can await.
async fn wait_until_blocked_on_a_lock(db: &TestDb) {
    let client = db.client().await;
    for _ in 0..500 {
        let waiting = client
            .query_one(
                "select count(*) from pg_stat_activity where wait_event_type = 'Lock' and query like '%claimed%'",
                &[],
            )
            .await
            .unwrap();
        if waiting.get::<_, i64>(0) > 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the claim never blocked");
}

#[tokio::test]
async fn migrations_applied_twice_at_once_apply_once() {
    let db = TestDb::new().await;
    // TestDb migrated its schema already; start from an empty one.
    db.client().await.batch_execute("drop table task_executions; drop table whirligig_migrations;").await.unwrap();
    let (first, second) = tokio::join!(migrate(&db.url), migrate(&db.url));
    let mut applied = [first.unwrap(), second.unwrap()];
    applied.sort();
    assert_eq!(applied, [vec![], vec![1, 2, 3, 4]]);
    assert_eq!(migrate(&db.url).await.unwrap(), Vec::<i32>::new(), "a third run has nothing to do");
    let versions = db.client().await.query("select version from whirligig_migrations", &[]).await.unwrap();
    assert_eq!(versions.len(), 4);
}

#[tokio::test]
async fn a_value_postgres_cannot_store_is_rejected_not_retried() {
    let db = TestDb::new().await;
    let store = db.store(2, Duration::from_secs(2));
    let mut nul = request("nul", LEASE, None);
    nul.kwargs = raw(r#"{"text": "a\u0000b"}"#);
    let error = store.claim(&nul).await.unwrap_err();
    let StoreError::Rejected { source: Some(source), .. } = &error else { panic!("{error:?}") };
    assert_eq!(source.code(), Some(&SqlState::UNTRANSLATABLE_CHARACTER), "the driver's error is kept: {error:?}");
}

/// Claims, each spawned as a push would be.
fn spawn_claims(
    store: &Arc<PostgresStore>,
    requests: Vec<ClaimRequest<'static>>,
) -> Vec<JoinHandle<Result<Claim, StoreError>>> {
    let claim = |request: ClaimRequest<'static>| {
        let store = Arc::clone(store);
        tokio::spawn(async move { store.claim(&request).await })
    };
    requests.into_iter().map(claim).collect()
}

/// On this current-thread runtime, every task spawned so far runs up to its
/// first wait before the caller resumes: all their calls are queued.
async fn let_spawned_tasks_queue() {
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
}

/// How many different values `column` holds among `task_ids`: rows written
/// by one statement share its transaction's `now()`.
async fn distinct(db: &TestDb, column: &str, task_ids: &[&str]) -> i64 {
    let query = format!("select count(distinct {column}) from task_executions where task_id = any($1)");
    db.client().await.query_one(&query, &[&task_ids]).await.unwrap().get(0)
}

fn leak(text: String) -> &'static str {
    Box::leak(text.into_boxed_str())
}

/// Claims queued while the pool is busy go out as one statement (one
/// transaction: one `now()` for every row), and each call still gets the
/// answer a claim of its own would: fresh, duplicate in the same batch,
/// succeeded, failed for good, leased, used up, abandoned on its last attempt.
#[tokio::test]
async fn queued_claims_share_one_statement_and_each_gets_its_own_answer() {
    let db = TestDb::new().await;
    let store = Arc::new(db.store(1, Duration::from_secs(5)));
    let fail = |retry| Ending::Failed { message: "no", traceback: "no", retry };
    for (task_id, max_attempts, ending) in [
        ("done", None, Some(Ending::Succeeded { return_value: raw("1") })),
        ("broken", None, Some(fail(Retry::Permanent))),
        ("used-up", Some(1), Some(fail(Retry::Retryable))),
        ("leased", None, None),
        ("abandoned", Some(1), None),
    ] {
        let claimed = attempt(store.claim(&request(task_id, LEASE, max_attempts)).await.unwrap(), 1);
        if let Some(ending) = ending {
            store.finish(task_id, claimed, ending).await.unwrap();
        }
    }
    let fresh: Vec<&'static str> = (0..12).map(|n| leak(format!("fresh-{n}"))).collect();
    let mut requests: Vec<ClaimRequest<'static>> = fresh.iter().map(|id| request(id, LEASE, None)).collect();
    requests.extend([
        request("twice", LEASE, None),
        request("twice", LEASE, None),
        request("done", LEASE, None),
        request("broken", LEASE, None),
        request("used-up", LEASE, Some(1)),
        request("leased", LEASE, None),
        request("abandoned", Duration::ZERO, Some(1)),
    ]);

    let busy = store.connection().await.unwrap();
    let claims = spawn_claims(&store, requests);
    let_spawned_tasks_queue().await;
    drop(busy);
    let answers: Vec<Claim> = futures_join(claims.into_iter()).await.into_iter().map(Result::unwrap).collect();

    let (fresh_answers, others) = answers.split_at(fresh.len());
    assert!(fresh_answers.iter().all(|claim| is_attempt(claim, 1)), "{fresh_answers:?}");
    let mut twice = [others[0], others[1]];
    twice.sort_by_key(|claim| matches!(claim, Claim::Running));
    assert!(is_attempt(&twice[0], 1) && twice[1] == Claim::Running, "one statement never claims a row twice");
    let expected = [Claim::AlreadySucceeded, Claim::AlreadyFailed, Claim::Exhausted { attempts: 1 }, Claim::Running];
    assert_eq!(others[2..6], expected);
    assert_eq!(others[6], Claim::Exhausted { attempts: 1 });
    assert_eq!(store.get("abandoned").await.unwrap().unwrap().status, Status::Failed);

    assert_eq!(distinct(&db, "started_at", &fresh).await, 1, "the fresh claims went out in one statement");
}

/// A row whose data the database refuses (a NUL in jsonb) fails alone: the
/// batch is claimed again row by row.
#[tokio::test]
async fn a_row_the_database_rejects_fails_alone_in_its_batch() {
    let db = TestDb::new().await;
    let store = Arc::new(db.store(1, Duration::from_secs(5)));
    let mut requests: Vec<ClaimRequest<'static>> =
        (0..5).map(|n| request(leak(format!("ok-{n}")), LEASE, None)).collect();
    requests[2].kwargs = raw(r#"{"text": "a\u0000b"}"#);

    let busy = store.connection().await.unwrap();
    let claims = spawn_claims(&store, requests);
    let_spawned_tasks_queue().await;
    drop(busy);
    let answers = futures_join(claims.into_iter()).await;

    assert!(matches!(answers[2], Err(StoreError::Rejected { .. })), "{answers:?}");
    for (n, answer) in answers.iter().enumerate().filter(|(n, _)| *n != 2) {
        assert!(is_attempt(answer.as_ref().unwrap(), 1), "ok-{n}");
    }
    assert!(store.get("ok-2").await.unwrap().is_none());
}

/// A transaction that holds row locks, so statements block behind it.
struct RowLocks {
    client: tokio_postgres::Client,
    pid: i32,
}

impl RowLocks {
    async fn take(db: &TestDb, task_ids: &[&str]) -> RowLocks {
        let client = db.client().await;
        client.batch_execute("begin").await.unwrap();
        client.execute("select from task_executions where task_id = any($1) for update", &[&task_ids]).await.unwrap();
        let pid = client.query_one("select pg_backend_pid()", &[]).await.unwrap().get(0);
        RowLocks { client, pid }
    }

    /// Waits for `count` statements to be blocked behind these locks.
    async fn blocking(&self, count: i64) {
        let blocked = "select count(*) from pg_stat_activity where $1 = any(pg_blocking_pids(pid))";
        for _ in 0..500 {
            if self.client.query_one(blocked, &[&self.pid]).await.unwrap().get::<_, i64>(0) >= count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("fewer than {count} statements ever blocked");
    }

    async fn release(self) {
        self.client.batch_execute("commit").await.unwrap();
    }
}

fn spawn_finish(
    store: &Arc<PostgresStore>,
    task_id: &'static str,
    attempt: Attempt,
) -> JoinHandle<Result<Finished, StoreError>> {
    let store = Arc::clone(store);
    let ending = Ending::Succeeded { return_value: raw(r#"{"ok": true}"#) };
    tokio::spawn(async move { store.finish(task_id, attempt, ending).await })
}

/// Finishes queued while both statements a queue may have in flight are
/// blocked share one statement; a stale attempt among them is fenced, the
/// others recorded.
#[tokio::test]
async fn queued_finishes_share_one_statement_and_each_is_fenced_on_its_own() {
    let db = TestDb::new().await;
    let store = Arc::new(db.store(4, Duration::from_secs(5)));
    let ids: Vec<&'static str> = (0..12).map(|n| leak(format!("task-{n}"))).collect();
    let mut attempts = Vec::new();
    for id in &ids {
        attempts.push(attempt(store.claim(&request(id, LEASE, None)).await.unwrap(), 1));
    }
    let locks = RowLocks::take(&db, &ids[..2]).await;
    let first = spawn_finish(&store, ids[0], attempts[0]);
    locks.blocking(1).await;
    let second = spawn_finish(&store, ids[1], attempts[1]);
    locks.blocking(2).await;
    let finish = |n: usize| if n == 2 { never_claimed(7) } else { attempts[n] };
    let queued: Vec<_> = ids.iter().enumerate().skip(2).map(|(n, id)| spawn_finish(&store, id, finish(n))).collect();
    let_spawned_tasks_queue().await;
    locks.release().await;

    for answer in futures_join([first, second].into_iter()).await {
        assert_eq!(answer.unwrap(), Finished::Recorded);
    }
    let answers: Vec<Finished> = futures_join(queued.into_iter()).await.into_iter().map(Result::unwrap).collect();
    assert_eq!(answers[0], Finished::Fenced, "attempt 7 was never claimed");
    assert!(answers[1..].iter().all(|answer| *answer == Finished::Recorded), "{answers:?}");
    assert_eq!(store.get(ids[2]).await.unwrap().unwrap().status, Status::Running);
    assert_eq!(distinct(&db, "finished_at", &ids[3..]).await, 1, "the queued finishes went out in one statement");
}

/// Seeds `task_id` as FAILED after one attempt, so a claim would take it again.
async fn failed_once(store: &PostgresStore, task_id: &str) {
    let claimed = attempt(store.claim(&request(task_id, LEASE, None)).await.unwrap(), 1);
    let failed = Ending::Failed { message: "again", traceback: "again", retry: Retry::Retryable };
    store.finish(task_id, claimed, failed).await.unwrap();
}

/// A row locked elsewhere holds up its batch for at most the lock timeout
/// (a second); then the batch is claimed row by row, and only that row fails.
#[tokio::test]
async fn a_row_locked_elsewhere_fails_alone_in_its_batch() {
    let db = TestDb::new().await;
    let store = Arc::new(db.store(1, Duration::from_secs(10)));
    failed_once(&store, "locked").await;
    let locks = RowLocks::take(&db, &["locked"]).await;
    let ids = ["locked", "free-1", "free-2", "free-3"];

    let started = tokio::time::Instant::now();
    let busy = store.connection().await.unwrap();
    let claims = spawn_claims(&store, ids.iter().map(|id| request(id, LEASE, None)).collect());
    let_spawned_tasks_queue().await;
    drop(busy);
    let answering = tokio::time::timeout(Duration::from_secs(10), futures_join(claims.into_iter()));
    let answers = answering.await.expect("the lock timeout ended the wait");
    let took = started.elapsed();
    locks.release().await;

    let locked = |error: &StoreError| match error {
        StoreError::Database { source: Some(source), .. } => source.code() == Some(&SqlState::LOCK_NOT_AVAILABLE),
        _ => false,
    };
    assert!(answers[0].as_ref().is_err_and(locked), "{answers:?}");
    for answer in &answers[1..] {
        assert!(is_attempt(answer.as_ref().unwrap(), 1), "{answer:?}");
    }
    assert!(took >= Duration::from_secs(1) && took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(store.get("locked").await.unwrap().unwrap().status, Status::Failed, "unchanged");
}

/// A statement stuck behind a row lock holds up only itself: claims go on
/// through the other, and with both stuck a claim gives up within the pool
/// timeout (429, Pub/Sub retries) instead of waiting on the lock's holder.
#[tokio::test]
async fn claims_stuck_behind_row_locks_hold_up_their_statement_not_the_store() {
    let db = TestDb::new().await;
    let pool_timeout = Duration::from_millis(200);
    let store = Arc::new(db.store(4, pool_timeout));
    failed_once(&store, "locked-a").await;
    failed_once(&store, "locked-b").await;
    let locks = RowLocks::take(&db, &["locked-a", "locked-b"]).await;
    let stuck_a = spawn_claims(&store, vec![request("locked-a", LEASE, None)]).remove(0);
    locks.blocking(1).await;
    attempt(store.claim(&request("free", LEASE, None)).await.unwrap(), 1);

    // Both statements are stuck until the lock timeout (a second) ends them.
    let stuck_b = spawn_claims(&store, vec![request("locked-b", LEASE, None)]).remove(0);
    locks.blocking(2).await;
    let refused_claim = request("refused", LEASE, None);
    let refused = tokio::time::timeout(pool_timeout * 10, store.claim(&refused_claim)).await.expect("it gave up");
    assert!(matches!(refused, Err(StoreError::PoolTimeout(_))), "{refused:?}");
    assert!(store.get("refused").await.unwrap().is_none(), "nothing recorded for it");

    for stuck in [stuck_a, stuck_b] {
        let ended = tokio::time::timeout(Duration::from_secs(10), stuck).await.expect("the lock timeout ended it");
        assert!(matches!(ended.unwrap(), Err(StoreError::Database { .. })));
    }
    locks.release().await;
}

/// What comes before an ack must be durable: a finish returns only once the
/// WAL holding it is flushed, though claims commit without waiting for it.
/// (That they do not wait shows in `scripts/bench.sh`, not here: other tests
/// write WAL meanwhile, so the flush position says nothing about one claim.)
#[tokio::test]
async fn a_finish_is_flushed_before_it_returns() {
    let db = TestDb::new().await;
    let store = db.store(2, Duration::from_secs(5));
    let wal = db.client().await;
    for n in 0..20 {
        let task_id = format!("durable-{n}");
        let claimed = attempt(store.claim(&request(&task_id, LEASE, None)).await.unwrap(), 1);
        let written = wal.query_one("select pg_current_wal_insert_lsn()::text", &[]).await.unwrap();
        let before: &str = written.get(0);
        store.finish(&task_id, claimed, Ending::Succeeded { return_value: raw("null") }).await.unwrap();
        let flushed = "select pg_current_wal_flush_lsn() > $1::text::pg_lsn";
        let flushed_past: bool = wal.query_one(flushed, &[&before]).await.unwrap().get(0);
        assert!(flushed_past, "finish {n} returned before the WAL past {before} was flushed");
    }
}

/// Only what never changes is indexed (migration 0004), so claiming a READY
/// row and finishing any row write no index entry: PostgreSQL counts every
/// one of those updates as HOT.
#[tokio::test]
async fn claims_of_ready_rows_and_finishes_are_hot_updates() {
    let db = TestDb::new().await;
    let store = db.store(2, Duration::from_secs(2));
    let ids: Vec<String> = (0..20).map(|n| format!("hot-{n}")).collect();
    for (n, id) in ids.iter().enumerate() {
        if n % 2 == 0 {
            let ready = ReadyRequest {
                task_id: id,
                task_name: "count",
                args: raw("[1]"),
                kwargs: raw("{}"),
                enqueued_at: chrono::Utc::now(),
            };
            assert_eq!(store.enqueue(&ready).await.unwrap(), Enqueued::Ready);
        }
        let claimed = attempt(store.claim(&request(id, LEASE, None)).await.unwrap(), 1);
        let ending = Ending::Succeeded { return_value: raw(r#"{"n": 1}"#) };
        assert_eq!(store.finish(id, claimed, ending).await.unwrap(), Finished::Recorded);
    }
    // A backend's counts reach the statistics when it idles or exits.
    drop(store);
    let client = db.client().await;
    let (mut updates, mut hot) = (0, 0);
    for _ in 0..100 {
        let row = client
            .query_one(
                "select n_tup_upd, n_tup_hot_upd from pg_stat_user_tables \
                 where relname = 'task_executions' and schemaname = current_schema()",
                &[],
            )
            .await
            .unwrap();
        (updates, hot) = (row.get::<_, i64>(0), row.get::<_, i64>(1));
        if updates >= 30 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(updates, 30, "10 claims of READY rows and 20 finishes");
    assert_eq!(hot, updates, "every one of them HOT");
}

/// The claim and the finish are planned once per connection, not once per
/// statement: after PostgreSQL's five custom plans, each batch, whatever its
/// size, runs the prepared (generic) plan. A plan made for each batch's
/// values took as long again as the statement itself.
#[tokio::test]
async fn the_claim_and_finish_keep_their_prepared_plans() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let sql = whirligig_handler::bench::claim_and_finish();
    let (claims, finishes) = (client.prepare(sql.0).await.unwrap(), client.prepare(sql.1).await.unwrap());
    for batch in 0..16_i64 {
        let size = usize::try_from(batch % 6 + 1).unwrap();
        let ids: Vec<String> = (0..size).map(|n| format!("plan-{batch}-{n}")).collect();
        let fences: Vec<i64> = (0..size).map(|n| batch * 10 + i64::try_from(n).unwrap()).collect();
        let (names, args, kwargs) = (vec!["noop"; size], vec![Json(raw("[]")); size], vec![Json(raw("{}")); size]);
        let (messages, enqueued) = (vec![None::<&str>; size], vec![None::<chrono::DateTime<chrono::Utc>>; size]);
        let (leases, limits) = (vec![300.0_f64; size], vec![None::<i32>; size]);
        let claimed = client
            .query(&claims, &[&ids, &names, &args, &kwargs, &messages, &enqueued, &leases, &limits, &fences])
            .await
            .unwrap();
        assert!(claimed.iter().all(|row| row.get::<_, bool>(1)), "batch {batch} claimed");
        let (attempts, statuses) = (vec![1_i32; size], vec!["SUCCESSFUL"; size]);
        let (values, texts, permanent) =
            (vec![Some(Json(raw("null"))); size], vec![None::<&str>; size], vec![false; size]);
        let recorded = client
            .query(&finishes, &[&ids, &attempts, &statuses, &values, &texts, &texts, &permanent, &fences])
            .await
            .unwrap();
        assert_eq!(recorded.len(), size, "batch {batch} finished");
    }
    let plans = client
        .query(
            "select statement, generic_plans, custom_plans from pg_prepared_statements where statement in ($1, $2)",
            &[&sql.0, &sql.1],
        )
        .await
        .unwrap();
    assert_eq!(plans.len(), 2);
    for plan in plans {
        let (statement, generic, custom): (&str, i64, i64) = (plan.get(0), plan.get(1), plan.get(2));
        assert!(custom <= 5 && generic >= 11, "{generic} generic and {custom} custom plans of {statement}");
    }
}
