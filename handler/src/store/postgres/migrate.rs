//! The embedded migrations, applied in order under an advisory lock, each
//! recorded once in `whirligig_migrations`.

use super::errors::classify;
use super::pool::{connect, parse_url};
use crate::store::StoreError;

/// The migrations, in order; each is applied once and recorded.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "task_executions", include_str!("../../../migrations/0001_task_executions.sql")),
    (2, "permanent_failures", include_str!("../../../migrations/0002_permanent_failures.sql")),
];

/// Any constant works, as long as every instance agrees on it.
const MIGRATION_LOCK: i64 = 0x7768_6972_6c69_6767; // "whirligg"

const VERSIONS_TABLE: &str = "create table if not exists whirligig_migrations (
    version integer primary key,
    name text not null,
    applied_at timestamptz not null default now()
)";

/// Applies every migration not yet recorded, in order, in one transaction
/// under an advisory lock, so instances starting together take turns.
/// Returns the versions it applied.
pub async fn migrate(url: &str) -> Result<Vec<i32>, StoreError> {
    let mut client = connect(&parse_url(url)?).await.map_err(classify)?;
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
