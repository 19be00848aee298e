//! The claim and finish of a batch (see `group_commit`): the rows as
//! they wait, and the runners that send a batch in one statement and answer
//! each of its calls. A batch that one row spoiled goes again row by row.

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{Json, ToSql};
use whirligig_registry::Retry;

use super::errors::rejects_the_data;
use super::leases::takeover_after;
use super::pool::{DbConnection, FinishConnection, PgConnection};
use super::statements::{attempts, storable};
use crate::group_commit::{Row, Waiting};
use crate::store::{ABANDONED, Attempt, Claim, ClaimRequest, Ending, Finished, Status, StoreError};

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
    fence: i64,
}

impl ClaimRow {
    /// The claim of `request` under `fence`.
    pub(super) fn of(request: &ClaimRequest<'_>, fence: i64) -> Self {
        Self {
            task_id: request.task_id.to_owned(),
            task_name: request.task_name.to_owned(),
            args: request.args.to_owned(),
            kwargs: request.kwargs.to_owned(),
            message_id: request.message_id.map(str::to_owned),
            enqueued_at: request.enqueued_at,
            lease: takeover_after(request.lease).as_secs_f64(),
            max_attempts: request.max_attempts.map(|max| i32::try_from(max.get()).unwrap_or(i32::MAX)),
            fence,
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
    status: Option<Status>,
    exhausted: bool,
    lease_over: bool,
    permanent: bool,
    fence: Option<i64>,
}

/// Claims a batch and answers each call. A batch that failed for one row
/// (see [`one_row_may_be_at_fault`]) is claimed again row by row, so only
/// that row fails.
pub(super) async fn claim_batch(connection: DbConnection, batch: Vec<Waiting<ClaimRow, Claim, StoreError>>) {
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
                let seen = claim_rows(&connection, std::slice::from_ref(&waiting)).await;
                let claim = match seen.map(|mut seen| seen.pop()) {
                    Ok(Some(seen)) => settle(&connection, &waiting.row, seen).await,
                    Ok(None) => Err(unanswered()),
                    Err(error) => Err(error),
                };
                waiting.answer(claim);
            }
        }
        Err(error) => answer_all(batch, &error),
    }
}

/// Errors one row can cause for a whole batch: its data (such as a NUL in
/// jsonb, or a key too long for the index), or a lock held elsewhere on it.
fn one_row_may_be_at_fault(error: &StoreError) -> bool {
    error.code().is_some_and(|code| rejects_the_data(code) || *code == SqlState::LOCK_NOT_AVAILABLE)
}

/// The rows as the claim statement saw them, in the batch's order.
async fn claim_rows(
    connection: &PgConnection,
    batch: &[Waiting<ClaimRow, Claim, StoreError>],
) -> Result<Vec<Seen>, StoreError> {
    let rows: Vec<&ClaimRow> = batch.iter().map(|waiting| &waiting.row).collect();
    let task_ids: Vec<&str> = rows.iter().map(|row| row.task_id.as_str()).collect();
    let names: Vec<&str> = rows.iter().map(|row| row.task_name.as_str()).collect();
    let args: Vec<Json<&RawValue>> = rows.iter().map(|row| Json(&*row.args)).collect();
    let kwargs: Vec<Json<&RawValue>> = rows.iter().map(|row| Json(&*row.kwargs)).collect();
    let message_ids: Vec<Option<&str>> = rows.iter().map(|row| row.message_id.as_deref()).collect();
    let enqueued: Vec<Option<DateTime<Utc>>> = rows.iter().map(|row| row.enqueued_at).collect();
    let leases: Vec<f64> = rows.iter().map(|row| row.lease).collect();
    let limits: Vec<Option<i32>> = rows.iter().map(|row| row.max_attempts).collect();
    let fences: Vec<i64> = rows.iter().map(|row| row.fence).collect();
    let parameters: [&(dyn ToSql + Sync); 9] =
        [&task_ids, &names, &args, &kwargs, &message_ids, &enqueued, &leases, &limits, &fences];
    let mut answers = connection.within(connection.query(&connection.statements.claims, &parameters)).await?;
    answers.sort_unstable_by_key(|row| row.get::<_, i64>(0));
    Ok(answers.iter().map(seen).collect())
}

fn seen(row: &tokio_postgres::Row) -> Seen {
    Seen {
        claimed: row.get(1),
        attempts: row.get(2),
        status: row.get::<_, Option<&str>>(3).and_then(Status::parse),
        exhausted: row.get::<_, Option<bool>>(4) == Some(true),
        lease_over: row.get::<_, Option<bool>>(5) == Some(true),
        permanent: row.get::<_, Option<bool>>(6) == Some(true),
        fence: row.get(7),
    }
}

/// What a claim's row means for its delivery. The row is as the statement
/// first saw it: a concurrent claim may have moved it on since, so anything
/// not clearly final is "running elsewhere", which Pub/Sub retries. A last
/// attempt abandoned while RUNNING is recorded FAILED on the way.
async fn settle(connection: &PgConnection, row: &ClaimRow, seen: Seen) -> Result<Claim, StoreError> {
    let count = seen.attempts.unwrap_or(0);
    let exhausted = Claim::Exhausted { attempts: attempts(count) };
    Ok(match seen.status {
        _ if seen.claimed => Claim::Claimed(Attempt { number: attempts(count), fence: row.fence }),
        Some(Status::Successful) => Claim::AlreadySucceeded,
        Some(Status::Failed) if seen.permanent => Claim::AlreadyFailed,
        Some(Status::Running) if seen.exhausted && seen.lease_over => {
            let parameters: [&(dyn ToSql + Sync); 3] = [&row.task_id, &seen.fence, &ABANDONED];
            connection.within(connection.execute(&connection.statements.abandon, &parameters)).await?;
            exhausted
        }
        Some(Status::Ready | Status::Failed) if seen.exhausted => exhausted,
        // No row: a concurrent delivery inserted it after the statement's snapshot.
        _ => Claim::Running,
    })
}

/// A finish as it waits for a batch.
#[derive(Debug, Clone)]
pub(super) struct FinishRow {
    task_id: String,
    attempt: i32,
    status: Status,
    return_value: Option<Box<RawValue>>,
    message: Option<String>,
    traceback: Option<String>,
    permanent: bool,
    fence: i64,
}

impl FinishRow {
    pub(super) fn of(task_id: &str, attempt: Attempt, ending: Ending<'_>) -> Self {
        let (status, return_value, message, traceback, permanent) = match ending {
            Ending::Succeeded { return_value } => {
                (Status::Successful, Some(return_value.to_owned()), None, None, false)
            }
            Ending::Failed { message, traceback, retry } => {
                let permanent = retry == Retry::Permanent;
                (Status::Failed, None, Some(storable(message)), Some(storable(traceback)), permanent)
            }
        };
        let (fence, attempt) = (attempt.fence, i32::try_from(attempt.number).unwrap_or(i32::MAX));
        Self { task_id: task_id.to_owned(), attempt, status, return_value, message, traceback, permanent, fence }
    }

    /// The execution's id.
    pub(super) fn task_id(&self) -> &str {
        &self.task_id
    }

    /// The fence of the claim whose ending this is.
    pub(super) fn fence(&self) -> i64 {
        self.fence
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
pub(super) async fn finish_batch(connection: FinishConnection, batch: Vec<Waiting<FinishRow, Finished, StoreError>>) {
    match finish_rows(&connection, &batch).await {
        Ok(recorded) => {
            for waiting in batch {
                let finished = finished(&recorded, &waiting.row);
                waiting.answer(Ok(finished));
            }
        }
        Err(error) if batch.len() > 1 && one_row_may_be_at_fault(&error) => {
            for waiting in batch {
                let recorded = finish_rows(&connection, std::slice::from_ref(&waiting)).await;
                let finished = recorded.map(|recorded| finished(&recorded, &waiting.row));
                waiting.answer(finished);
            }
        }
        Err(error) => answer_all(batch, &error),
    }
}

/// The task ids whose finish the statement recorded.
async fn finish_rows(
    connection: &PgConnection,
    batch: &[Waiting<FinishRow, Finished, StoreError>],
) -> Result<Vec<String>, StoreError> {
    let rows: Vec<&FinishRow> = batch.iter().map(|waiting| &waiting.row).collect();
    let task_ids: Vec<&str> = rows.iter().map(|row| row.task_id.as_str()).collect();
    let attempts: Vec<i32> = rows.iter().map(|row| row.attempt).collect();
    let statuses: Vec<&str> = rows.iter().map(|row| row.status.as_str()).collect();
    let values: Vec<Option<Json<&RawValue>>> = rows.iter().map(|row| row.return_value.as_deref().map(Json)).collect();
    let messages: Vec<Option<&str>> = rows.iter().map(|row| row.message.as_deref()).collect();
    let tracebacks: Vec<Option<&str>> = rows.iter().map(|row| row.traceback.as_deref()).collect();
    let permanent: Vec<bool> = rows.iter().map(|row| row.permanent).collect();
    let fences: Vec<i64> = rows.iter().map(|row| row.fence).collect();
    let parameters: [&(dyn ToSql + Sync); 8] =
        [&task_ids, &attempts, &statuses, &values, &messages, &tracebacks, &permanent, &fences];
    let recorded = connection.within(connection.query(&connection.statements.finishes, &parameters)).await?;
    Ok(recorded.iter().map(|row| row.get(0)).collect())
}

/// Recorded, or fenced: a newer attempt owns the row, or it is not RUNNING.
fn finished(recorded: &[String], row: &FinishRow) -> Finished {
    if recorded.contains(&row.task_id) { Finished::Recorded } else { Finished::Fenced }
}

fn answer_all<T, A>(batch: Vec<Waiting<T, A, StoreError>>, error: &StoreError) {
    for waiting in batch {
        waiting.answer(Err(error.clone()));
    }
}

/// A statement that did not answer for every row it was given.
fn unanswered() -> StoreError {
    StoreError::database("the database did not answer for every row of a batch")
}
