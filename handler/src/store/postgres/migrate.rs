//! The embedded migrations, applied in order under an advisory lock, each
//! recorded once in `whirligig_migrations`; tried again with backoff while
//! the database is not there.

use std::time::{Duration, Instant};

use super::errors::classify;
use super::pool::{CONNECT_TIMEOUT, connect, parse_url};
use crate::store::StoreError;

/// The migrations, in order; each is applied once and recorded.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "task_executions", include_str!("../../../migrations/0001_task_executions.sql")),
    (2, "permanent_failures", include_str!("../../../migrations/0002_permanent_failures.sql")),
    (3, "live_leases", include_str!("../../../migrations/0003_live_leases.sql")),
    (4, "hot_updates", include_str!("../../../migrations/0004_hot_updates.sql")),
];

/// Any constant works, as long as every instance agrees on it.
const MIGRATION_LOCK: i64 = 0x7768_6972_6c69_6767; // "whirligg"

/// The whole of a migration, the advisory lock's wait included: another
/// instance may be migrating, but a database that accepted the connection
/// and then stopped answering must not hold the start for ever.
const MIGRATION_DEADLINE: Duration = Duration::from_secs(60);

/// The first pause between tries, doubled after each failure up to the last.
const BACKOFF: (Duration, Duration) = (Duration::from_millis(250), Duration::from_secs(10));

const VERSIONS_TABLE: &str = "create table if not exists whirligig_migrations (
    version integer primary key,
    name text not null,
    applied_at timestamptz not null default now()
)";

/// Applies every migration not yet recorded, in order, in one transaction
/// under an advisory lock, so instances starting together take turns.
/// Returns the versions it applied.
pub async fn migrate(url: &str) -> Result<Vec<i32>, StoreError> {
    let config = parse_url(url)?;
    let deadline = Instant::now() + MIGRATION_DEADLINE;
    // The connect timeout covers TCP only; the startup handshake needs its own.
    let client = tokio::time::timeout(CONNECT_TIMEOUT, connect(&config)).await;
    let client = client.map_err(|_| no_answer(CONNECT_TIMEOUT))?.map_err(classify)?;
    tokio::time::timeout_at(deadline.into(), apply(client)).await.map_err(|_| no_answer(MIGRATION_DEADLINE))?
}

/// Applies [`migrate`] until it succeeds, pausing with backoff between tries,
/// for at most `give_up_after` (for ever without one). `failed` hears of each
/// failure with the number of tries so far, and stops the tries by answering
/// false. The last failure is the error.
pub async fn migrate_within(
    url: &str,
    give_up_after: Option<Duration>,
    mut failed: impl FnMut(&StoreError, u32) -> bool,
) -> Result<Vec<i32>, StoreError> {
    let give_up = give_up_after.map(|after| Instant::now() + after);
    let (mut pause, longest) = BACKOFF;
    let mut tries = 0;
    loop {
        tries += 1;
        let error = match migrate(url).await {
            Ok(applied) => return Ok(applied),
            Err(error) => error,
        };
        let out_of_time = give_up.is_some_and(|give_up| Instant::now() + pause >= give_up);
        if !failed(&error, tries) || out_of_time {
            return Err(error);
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(longest);
    }
}

fn no_answer(within: Duration) -> StoreError {
    StoreError::Unavailable { reason: format!("no answer from the database within {within:?}"), source: None }
}

async fn apply(mut client: tokio_postgres::Client) -> Result<Vec<i32>, StoreError> {
    let transaction = client.transaction().await.map_err(classify)?;
    transaction.execute("select pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(classify)?;
    transaction.batch_execute(VERSIONS_TABLE).await.map_err(classify)?;
    let rows = transaction.query("select version from whirligig_migrations", &[]).await.map_err(classify)?;
    let done: Vec<i32> = rows.iter().map(|row| row.get(0)).collect();
    let mut applied = Vec::new();
    for &(version, name, sql) in MIGRATIONS.iter().filter(|(version, ..)| !done.contains(version)) {
        transaction.batch_execute(sql).await.map_err(classify)?;
        transaction
            .execute("insert into whirligig_migrations (version, name) values ($1, $2)", &[&version, &name])
            .await
            .map_err(classify)?;
        applied.push(version);
    }
    transaction.commit().await.map_err(classify)?;
    Ok(applied)
}
