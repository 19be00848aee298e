//! The execution store's contract, held by both implementations: the state
//! machine, the fence on finish, the lease, attempt limits, concurrent claims,
//! and migrations applied by two instances at once.

// Helpers here are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

mod support;

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use serde_json::value::RawValue;
use support::TestDb;
use whirligig_handler::store::{Claim, ClaimRequest, Ending, ExecutionStore, Finished, MemoryStore, Status, migrate};

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

async fn lifecycle(store: &impl ExecutionStore) {
    let claim = request("life", LEASE, None);
    assert_eq!(store.claim(&claim).await.unwrap(), Claim::Claimed { attempt: 1 });
    assert_eq!(store.claim(&claim).await.unwrap(), Claim::Running, "the lease holds");
    let failed = Ending::Failed { message: "boom", traceback: "boom\ncaused by: io", permanent: false };
    assert_eq!(store.finish("life", 1, failed).await.unwrap(), Finished::Recorded);
    let row = store.get("life").await.unwrap().unwrap();
    assert_eq!((row.status, row.attempts, row.error_message.as_deref()), (Status::Failed, 1, Some("boom")));
    assert_eq!(row.error_traceback.as_deref(), Some("boom\ncaused by: io"));
    assert_eq!(row.args, serde_json::json!([1, "two"]));
    assert_eq!(row.kwargs, serde_json::json!({"k": {"nested": true}}));

    assert_eq!(store.claim(&claim).await.unwrap(), Claim::Claimed { attempt: 2 }, "FAILED is retried");
    let succeeded = Ending::Succeeded { return_value: raw(r#"{"sent": 3}"#) };
    assert_eq!(store.finish("life", 2, succeeded).await.unwrap(), Finished::Recorded);
    let row = store.get("life").await.unwrap().unwrap();
    assert_eq!((row.status, row.attempts), (Status::Successful, 2));
    assert_eq!(row.return_value, Some(serde_json::json!({"sent": 3})));
    assert_eq!((row.error_message, row.error_traceback), (None, None), "success clears the error");
    assert!(row.started_at.is_some() && row.finished_at.is_some());

    assert_eq!(store.claim(&claim).await.unwrap(), Claim::AlreadySucceeded);
    assert_eq!(store.finish("life", 2, succeeded).await.unwrap(), Finished::Fenced, "not RUNNING any more");
    assert!(store.get("nothing").await.unwrap().is_none());
}

async fn fence_and_lease(store: &impl ExecutionStore) {
    assert_eq!(store.claim(&request("stale", LEASE, None)).await.unwrap(), Claim::Claimed { attempt: 1 });
    tokio::time::sleep(Duration::from_millis(5)).await;
    // A zero lease makes the first claim abandoned: a crashed instance.
    let reclaim = request("stale", Duration::ZERO, None);
    assert_eq!(store.claim(&reclaim).await.unwrap(), Claim::Claimed { attempt: 2 });
    let late = Ending::Succeeded { return_value: raw("\"late\"") };
    assert_eq!(store.finish("stale", 1, late).await.unwrap(), Finished::Fenced, "the stale run cannot overwrite");
    let current = Ending::Succeeded { return_value: raw("\"current\"") };
    assert_eq!(store.finish("stale", 2, current).await.unwrap(), Finished::Recorded);
    let row = store.get("stale").await.unwrap().unwrap();
    assert_eq!(row.return_value, Some(serde_json::json!("current")));
}

async fn attempt_limit(store: &impl ExecutionStore) {
    let limited = request("limited", LEASE, Some(2));
    for attempt in 1..=2 {
        assert_eq!(store.claim(&limited).await.unwrap(), Claim::Claimed { attempt });
        let failed = Ending::Failed { message: "no", traceback: "no", permanent: false };
        assert_eq!(store.finish("limited", attempt, failed).await.unwrap(), Finished::Recorded);
    }
    assert_eq!(store.claim(&limited).await.unwrap(), Claim::Exhausted { attempts: 2 });
    // An abandoned last attempt is exhausted too, not run a third time.
    let crashed = request("crashed", LEASE, Some(1));
    assert_eq!(store.claim(&crashed).await.unwrap(), Claim::Claimed { attempt: 1 });
    tokio::time::sleep(Duration::from_millis(5)).await;
    let retry = request("crashed", Duration::ZERO, Some(1));
    assert_eq!(store.claim(&retry).await.unwrap(), Claim::Exhausted { attempts: 1 });
    let row = store.get("crashed").await.unwrap().unwrap();
    assert_eq!(row.status, Status::Failed, "an abandoned last attempt does not stay RUNNING");
    assert_eq!(row.error_message.as_deref(), Some("abandoned: the last attempt did not finish within its lease"));
}

async fn permanent_failure_is_final(store: &impl ExecutionStore) {
    let claim = request("final", LEASE, None);
    assert_eq!(store.claim(&claim).await.unwrap(), Claim::Claimed { attempt: 1 });
    let failed = Ending::Failed { message: "no such user", traceback: "no such user", permanent: true };
    assert_eq!(store.finish("final", 1, failed).await.unwrap(), Finished::Recorded);
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
    assert_eq!(store.claim(&request("skipped", LEASE, None)).await.unwrap(), Claim::Claimed { attempt: 1 });
    let done = Ending::Succeeded { return_value: raw("null") };
    store.finish("skipped", 1, done).await.unwrap();
    store.skip(&request("skipped", LEASE, None), "skipped again").await.unwrap();
    assert_eq!(store.get("skipped").await.unwrap().unwrap().status, Status::Successful, "a success stays");
}

async fn concurrent_claims<S: ExecutionStore>(store: Arc<S>) {
    let claims = (0..16).map(|_| {
        let store = Arc::clone(&store);
        tokio::spawn(async move { store.claim(&request("race", LEASE, None)).await.expect("a claim") })
    });
    let results: Vec<Claim> = futures_join(claims).await;
    let winners = results.iter().filter(|claim| matches!(claim, Claim::Claimed { .. })).count();
    assert_eq!(winners, 1, "{results:?}");
    assert!(results.iter().all(|claim| matches!(claim, Claim::Claimed { attempt: 1 } | Claim::Running)), "{results:?}");
}

async fn futures_join<T: Send + 'static>(handles: impl Iterator<Item = tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut results = Vec::new();
    for handle in handles.collect::<Vec<_>>() {
        results.push(handle.await.expect("the claim task finished"));
    }
    results
}

async fn contract<S: ExecutionStore>(store: Arc<S>) {
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
    assert_eq!(store.claim(&lost).await.unwrap(), Claim::Claimed { attempt: 1 });
    let failed = Ending::Failed { message: "first", traceback: "first", permanent: false };
    store.finish("contended", 1, failed).await.unwrap();

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
    assert_eq!(applied, [vec![], vec![1, 2]]);
    assert_eq!(migrate(&db.url).await.unwrap(), Vec::<i32>::new(), "a third run has nothing to do");
    let versions = db.client().await.query("select version from whirligig_migrations", &[]).await.unwrap();
    assert_eq!(versions.len(), 2);
}

#[tokio::test]
async fn a_value_postgres_cannot_store_is_rejected_not_retried() {
    let db = TestDb::new().await;
    let store = db.store(2, Duration::from_secs(2));
    let mut nul = request("nul", LEASE, None);
    nul.kwargs = raw(r#"{"text": "a\u0000b"}"#);
    let error = store.claim(&nul).await.unwrap_err();
    assert!(matches!(error, whirligig_handler::store::StoreError::Rejected(_)), "{error:?}");
}
