//! The claim and finish of a batch (see `store::batch`): the rows as they
//! wait, the two statements, and the runners that send a batch and answer
//! each of its calls. One statement per batch; a batch that one row spoiled
//! goes again row by row.
//!
//! Both statements wait at most a second for a row lock (`lock_timeout`): a
//! row locked elsewhere must not hold up the batch around it for long.
//!
//! Both are prepared once per connection, so their plan is made while the
//! table may still be nearly empty and then kept: nothing here may join the
//! batch with `task_executions` (the planner would hash a scan of the whole
//! table). Each row is found through the primary key instead: by the
//! upsert's conflict, or by a lookup per row that `offset 0` keeps apart.

use bb8::PooledConnection;
use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{Json, ToSql};
use whirligig_registry::Retry;

use super::{Connector, DbConnection, PgConnection, attempts, classify, storable};
use crate::store::batch::{Row, Waiting};
use crate::store::{ABANDONED, Claim, ClaimRequest, Ending, Finished, Status, StoreError};

/// Claims a batch of executions (see `batch`): each row as one claim would,
/// answered by its position `n`. The commit is asynchronous: a claim lost in a
/// crash only means a redelivery Pub/Sub makes anyway, since nothing is acked
/// before a finish, and a finish's synchronous commit makes the WAL before it,
/// this claim included, durable too.
pub(super) const CLAIMS: &str = r"
with input as (
    select *
    from unnest($1::text[], $2::text[], $3::jsonb[], $4::jsonb[], $5::text[], $6::timestamptz[], $7::float8[],
                $8::int4[])
        with ordinality as i(task_id, task_name, args, kwargs, message_id, enqueued_at, lease, max_attempts, n)
),
claimed as (
    insert into task_executions as t
        (task_id, task_name, status, args, kwargs, attempts, message_id, enqueued_at, started_at)
    select task_id, task_name, 'RUNNING', args, kwargs, 1, message_id, enqueued_at, now()
    from input, (select set_config('synchronous_commit', 'off', true), set_config('lock_timeout', '1s', true)) as s
    on conflict (task_id) do update
    set status = 'RUNNING', attempts = t.attempts + 1, message_id = excluded.message_id,
        started_at = now(), finished_at = null, updated_at = now()
    where exists (
        select from input as i
        where i.task_id = excluded.task_id
          and (i.max_attempts is null or t.attempts < i.max_attempts)
          and ((t.status in ('READY', 'FAILED') and not t.permanent)
               or (t.status = 'RUNNING' and t.started_at < now() - make_interval(secs => i.lease))))
    returning t.task_id, t.attempts
)
select i.n, c.task_id is not null as claimed, coalesce(c.attempts, t.attempts) as attempts, t.status,
       i.max_attempts is not null and t.attempts >= i.max_attempts as exhausted,
       t.started_at < now() - make_interval(secs => i.lease) as lease_over, t.permanent
from input as i
left join claimed as c on c.task_id = i.task_id
left join lateral (
    select status, attempts, started_at, permanent
    from task_executions
    where task_id = i.task_id and c.task_id is null
    offset 0
) as t on true";

/// Finishes a batch of attempts; returns the task ids it recorded. The
/// commit is synchronous: an ack follows it. An upsert rather than an update
/// joined with the batch, so the conflict finds each row through the primary
/// key; rows no claim made are left out, so it inserts nothing (short of a
/// row deleted between that check and the conflict: it would come back).
pub(super) const FINISHES: &str = r"
insert into task_executions as t
    (task_id, task_name, status, attempts, return_value, error_message, error_traceback, permanent, finished_at)
select task_id, '', status, attempt, return_value, error_message, error_traceback, permanent, now()
from unnest($1::text[], $2::int4[], $3::text[], $4::jsonb[], $5::text[], $6::text[], $7::bool[])
        as i(task_id, attempt, status, return_value, error_message, error_traceback, permanent),
    (select set_config('lock_timeout', '1s', true)) as s
where (select true from task_executions where task_id = i.task_id)
on conflict (task_id) do update
set status = excluded.status, return_value = excluded.return_value, error_message = excluded.error_message,
    error_traceback = excluded.error_traceback, permanent = excluded.permanent, finished_at = now(), updated_at = now()
where t.attempts = excluded.attempts and t.status = 'RUNNING'
returning t.task_id";

/// A claim as it waits for a batch: owned, since the batch runs on a task of its own.
#[derive(Debug)]
pub(super) struct ClaimRow {
    task_id: String,
    task_name: String,
    args: Box<RawValue>,
    kwargs: Box<RawValue>,
    message_id: Option<String>,
    enqueued_at: Option<DateTime<Utc>>,
    lease: f64,
    max_attempts: Option<i32>,
}

impl ClaimRow {
    pub(super) fn of(request: &ClaimRequest<'_>) -> Self {
        Self {
            task_id: request.task_id.to_owned(),
            task_name: request.task_name.to_owned(),
            args: request.args.to_owned(),
            kwargs: request.kwargs.to_owned(),
            message_id: request.message_id.map(str::to_owned),
            enqueued_at: request.enqueued_at,
            lease: request.lease.as_secs_f64(),
            max_attempts: request.max_attempts.map(|max| i32::try_from(max.get()).unwrap_or(i32::MAX)),
        }
    }
}

impl Row for ClaimRow {
    fn key(&self) -> &str {
        &self.task_id
    }

    fn bytes(&self) -> usize {
        self.args.get().len() + self.kwargs.get().len()
    }
}

/// One claim's row as the statement first saw it, or claimed.
struct Seen {
    claimed: bool,
    attempts: Option<i32>,
    status: Option<String>,
    exhausted: bool,
    lease_over: bool,
    permanent: bool,
}

/// Claims a batch and answers each call. A batch that failed for one row
/// (see [`one_row_may_be_at_fault`]) is claimed again row by row, so only
/// that row fails.
pub(super) async fn claim_batch(connection: DbConnection, batch: Vec<Waiting<ClaimRow, Claim>>) {
    match claim_rows(&connection, &batch).await {
        Ok(seen) if seen.len() == batch.len() => {
            for (waiting, seen) in batch.into_iter().zip(seen) {
                let claim = settle(&connection, &waiting.row, seen).await;
                waiting.answer(claim);
            }
        }
        Ok(_) => answer_all(batch, &unanswered()),
        Err(error) if batch.len() > 1 && one_row_may_be_at_fault(&error) => {
            for waiting in batch {
                let seen = claim_rows(&connection, std::slice::from_ref(&waiting)).await.map_err(classify);
                let claim = match seen.map(|mut seen| seen.pop()) {
                    Ok(Some(seen)) => settle(&connection, &waiting.row, seen).await,
                    Ok(None) => Err(unanswered()),
                    Err(error) => Err(error),
                };
                waiting.answer(claim);
            }
        }
        Err(error) => answer_all(batch, &classify(error)),
    }
}

/// Errors one row can cause for a whole batch: its data (class 22, such as a
/// NUL in jsonb), or a lock held elsewhere on it.
fn one_row_may_be_at_fault(error: &tokio_postgres::Error) -> bool {
    error.code().is_some_and(|code| code.code().starts_with("22") || *code == SqlState::LOCK_NOT_AVAILABLE)
}

/// The rows as the claim statement saw them, in the batch's order.
async fn claim_rows(
    connection: &PgConnection,
    batch: &[Waiting<ClaimRow, Claim>],
) -> Result<Vec<Seen>, tokio_postgres::Error> {
    let rows: Vec<&ClaimRow> = batch.iter().map(|waiting| &waiting.row).collect();
    let task_ids: Vec<&str> = rows.iter().map(|row| row.task_id.as_str()).collect();
    let names: Vec<&str> = rows.iter().map(|row| row.task_name.as_str()).collect();
    let args: Vec<Json<&RawValue>> = rows.iter().map(|row| Json(&*row.args)).collect();
    let kwargs: Vec<Json<&RawValue>> = rows.iter().map(|row| Json(&*row.kwargs)).collect();
    let message_ids: Vec<Option<&str>> = rows.iter().map(|row| row.message_id.as_deref()).collect();
    let enqueued: Vec<Option<DateTime<Utc>>> = rows.iter().map(|row| row.enqueued_at).collect();
    let leases: Vec<f64> = rows.iter().map(|row| row.lease).collect();
    let limits: Vec<Option<i32>> = rows.iter().map(|row| row.max_attempts).collect();
    let parameters: [&(dyn ToSql + Sync); 8] =
        [&task_ids, &names, &args, &kwargs, &message_ids, &enqueued, &leases, &limits];
    let mut answers = connection.query(&connection.claims, &parameters).await?;
    answers.sort_unstable_by_key(|row| row.get::<_, i64>(0));
    Ok(answers.iter().map(seen).collect())
}

fn seen(row: &tokio_postgres::Row) -> Seen {
    Seen {
        claimed: row.get(1),
        attempts: row.get(2),
        status: row.get(3),
        exhausted: row.get::<_, Option<bool>>(4) == Some(true),
        lease_over: row.get::<_, Option<bool>>(5) == Some(true),
        permanent: row.get::<_, Option<bool>>(6) == Some(true),
    }
}

/// What a claim's row means for its delivery. The row is as the statement
/// first saw it: a concurrent claim may have moved it on since, so anything
/// not clearly final is "running elsewhere", which Pub/Sub retries. A last
/// attempt abandoned while RUNNING is recorded FAILED on the way.
async fn settle(connection: &PgConnection, row: &ClaimRow, seen: Seen) -> Result<Claim, StoreError> {
    let count = seen.attempts.unwrap_or(0);
    let exhausted = Claim::Exhausted { attempts: attempts(count) };
    Ok(match seen.status.as_deref() {
        _ if seen.claimed => Claim::Claimed { attempt: attempts(count) },
        Some("SUCCESSFUL") => Claim::AlreadySucceeded,
        Some("FAILED") if seen.permanent => Claim::AlreadyFailed,
        Some("RUNNING") if seen.exhausted && seen.lease_over => {
            let parameters: [&(dyn ToSql + Sync); 3] = [&row.task_id, &count, &ABANDONED];
            connection.execute(&connection.abandon, &parameters).await.map_err(classify)?;
            exhausted
        }
        Some("READY" | "FAILED") if seen.exhausted => exhausted,
        // No row: a concurrent delivery inserted it after the statement's snapshot.
        _ => Claim::Running,
    })
}

/// A finish as it waits for a batch.
#[derive(Debug)]
pub(super) struct FinishRow {
    task_id: String,
    attempt: i32,
    status: Status,
    return_value: Option<Box<RawValue>>,
    message: Option<String>,
    traceback: Option<String>,
    permanent: bool,
}

impl FinishRow {
    pub(super) fn of(task_id: &str, attempt: u32, ending: Ending<'_>) -> Self {
        let (status, return_value, message, traceback, permanent) = match ending {
            Ending::Succeeded { return_value } => {
                (Status::Successful, Some(return_value.to_owned()), None, None, false)
            }
            Ending::Failed { message, traceback, retry } => {
                let permanent = retry == Retry::Permanent;
                (Status::Failed, None, Some(storable(message)), Some(storable(traceback)), permanent)
            }
        };
        let attempt = i32::try_from(attempt).unwrap_or(i32::MAX);
        Self { task_id: task_id.to_owned(), attempt, status, return_value, message, traceback, permanent }
    }
}

impl Row for FinishRow {
    fn key(&self) -> &str {
        &self.task_id
    }

    fn bytes(&self) -> usize {
        let text = |text: &Option<String>| text.as_ref().map_or(0, String::len);
        self.return_value.as_ref().map_or(0, |value| value.get().len()) + text(&self.message) + text(&self.traceback)
    }
}

/// Finishes a batch and answers each call; a batch that failed for one row
/// is finished again row by row, as for claims.
pub(super) async fn finish_batch(
    connection: PooledConnection<'static, Connector>,
    batch: Vec<Waiting<FinishRow, Finished>>,
) {
    match finish_rows(&connection, &batch).await {
        Ok(recorded) => {
            for waiting in batch {
                let finished = finished(&recorded, &waiting.row);
                waiting.answer(Ok(finished));
            }
        }
        Err(error) if batch.len() > 1 && one_row_may_be_at_fault(&error) => {
            for waiting in batch {
                let recorded = finish_rows(&connection, std::slice::from_ref(&waiting)).await.map_err(classify);
                let finished = recorded.map(|recorded| finished(&recorded, &waiting.row));
                waiting.answer(finished);
            }
        }
        Err(error) => answer_all(batch, &classify(error)),
    }
}

/// The task ids whose finish the statement recorded.
async fn finish_rows(
    connection: &PgConnection,
    batch: &[Waiting<FinishRow, Finished>],
) -> Result<Vec<String>, tokio_postgres::Error> {
    let rows: Vec<&FinishRow> = batch.iter().map(|waiting| &waiting.row).collect();
    let task_ids: Vec<&str> = rows.iter().map(|row| row.task_id.as_str()).collect();
    let attempts: Vec<i32> = rows.iter().map(|row| row.attempt).collect();
    let statuses: Vec<&str> = rows.iter().map(|row| row.status.as_str()).collect();
    let values: Vec<Option<Json<&RawValue>>> = rows.iter().map(|row| row.return_value.as_deref().map(Json)).collect();
    let messages: Vec<Option<&str>> = rows.iter().map(|row| row.message.as_deref()).collect();
    let tracebacks: Vec<Option<&str>> = rows.iter().map(|row| row.traceback.as_deref()).collect();
    let permanent: Vec<bool> = rows.iter().map(|row| row.permanent).collect();
    let parameters: [&(dyn ToSql + Sync); 7] =
        [&task_ids, &attempts, &statuses, &values, &messages, &tracebacks, &permanent];
    let recorded = connection.query(&connection.finishes, &parameters).await?;
    Ok(recorded.iter().map(|row| row.get(0)).collect())
}

/// Recorded, or fenced: a newer attempt owns the row, or it is not RUNNING.
fn finished(recorded: &[String], row: &FinishRow) -> Finished {
    if recorded.contains(&row.task_id) { Finished::Recorded } else { Finished::Fenced }
}

fn answer_all<T, A>(batch: Vec<Waiting<T, A>>, error: &StoreError) {
    for waiting in batch {
        waiting.answer(Err(error.clone()));
    }
}

/// A statement that did not answer for every row it was given.
fn unanswered() -> StoreError {
    StoreError::Database("the database did not answer for every row of a batch".into())
}
