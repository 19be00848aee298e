//! The in-memory store for dev: the same state machine as PostgreSQL, in a
//! map behind a std mutex (held only for a lookup, never across an await).
//! Nothing survives the process.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};

use chrono::Utc;
use serde_json::Value;
use serde_json::value::RawValue;
use whirligig_registry::Retry;

use super::{
    ABANDONED, Attempt, Claim, ClaimRequest, Ending, Enqueued, Execution, ExecutionStore, Finished, NOT_PUBLISHED,
    ReadyRequest, Status, StoreError,
};

/// Executions in a map; for `TASKS_ENVIRONMENT=dev` without `DATABASE_URL`.
/// A RUNNING row's lease is not renewed: its task runs in this process, which
/// is alive for as long as the row exists.
#[derive(Debug, Default)]
pub struct MemoryStore {
    rows: Mutex<HashMap<String, Row>>,
}

/// An execution and the fence of its latest claim.
#[derive(Debug)]
struct Row {
    execution: Execution,
    fence: Option<i64>,
}

impl MemoryStore {
    fn rows(&self) -> MutexGuard<'_, HashMap<String, Row>> {
        // A panic while holding the lock cannot leave a row half-written.
        self.rows.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn json(raw: &RawValue) -> Value {
    serde_json::from_str(raw.get()).unwrap_or(Value::Null)
}

fn new_row(request: &ClaimRequest<'_>, status: Status, attempts: u32) -> Row {
    let execution = Execution {
        task_id: request.task_id.to_owned(),
        task_name: request.task_name.to_owned(),
        status,
        args: json(request.args),
        kwargs: json(request.kwargs),
        return_value: None,
        error_message: None,
        error_traceback: None,
        attempts,
        permanent: false,
        message_id: request.message_id.map(str::to_owned),
        enqueued_at: request.enqueued_at,
        started_at: None,
        finished_at: None,
    };
    Row { execution, fence: None }
}

/// The same decision the PostgreSQL claim makes in SQL.
fn claim_row(Row { execution: row, fence }: &mut Row, request: &ClaimRequest<'_>) -> Claim {
    let now = Utc::now();
    let lease = chrono::TimeDelta::from_std(request.lease).unwrap_or(chrono::TimeDelta::MAX);
    let lease_over = row.started_at.is_none_or(|started| now - started >= lease);
    let exhausted = request.max_attempts.is_some_and(|max| row.attempts >= max.get());
    match row.status {
        Status::Successful => Claim::AlreadySucceeded,
        Status::Failed if row.permanent => Claim::AlreadyFailed,
        Status::Running if !lease_over => Claim::Running,
        _ if exhausted => {
            if row.status == Status::Running {
                row.status = Status::Failed;
                row.error_message = Some(ABANDONED.to_owned());
                row.finished_at = Some(now);
            }
            Claim::Exhausted { attempts: row.attempts }
        }
        _ => {
            row.status = Status::Running;
            row.attempts += 1;
            row.message_id = request.message_id.map(str::to_owned);
            row.started_at = Some(now);
            row.finished_at = None;
            let attempt = Attempt::drawn(row.attempts);
            *fence = Some(attempt.fence);
            Claim::Claimed(attempt)
        }
    }
}

impl ExecutionStore for MemoryStore {
    async fn claim(&self, request: &ClaimRequest<'_>) -> Result<Claim, StoreError> {
        let mut rows = self.rows();
        let row = rows.entry(request.task_id.to_owned()).or_insert_with(|| new_row(request, Status::Ready, 0));
        Ok(claim_row(row, request))
    }

    async fn finish(&self, task_id: &str, attempt: Attempt, ending: Ending<'_>) -> Result<Finished, StoreError> {
        let mut rows = self.rows();
        let Some(Row { execution: row, .. }) = rows.get_mut(task_id).filter(|row| row.fence == Some(attempt.fence))
        else {
            return Ok(Finished::Fenced);
        };
        row.finished_at = Some(Utc::now());
        match ending {
            Ending::Succeeded { return_value } => {
                row.status = Status::Successful;
                row.permanent = false;
                row.return_value = Some(json(return_value));
                row.error_message = None;
                row.error_traceback = None;
            }
            Ending::Failed { message, traceback, retry } => {
                row.status = Status::Failed;
                row.permanent = retry == Retry::Permanent;
                row.return_value = None;
                row.error_message = Some(message.to_owned());
                row.error_traceback = Some(traceback.to_owned());
            }
        }
        Ok(Finished::Recorded)
    }

    async fn skip(&self, request: &ClaimRequest<'_>, reason: &str) -> Result<(), StoreError> {
        let mut rows = self.rows();
        let row = rows.entry(request.task_id.to_owned()).or_insert_with(|| new_row(request, Status::Ready, 0));
        let row = &mut row.execution;
        if matches!(row.status, Status::Ready | Status::Failed) && !row.permanent {
            row.status = Status::Failed;
            row.error_message = Some(reason.to_owned());
            row.error_traceback = None;
            row.finished_at = Some(Utc::now());
        }
        Ok(())
    }

    async fn enqueue(&self, request: &ReadyRequest<'_>) -> Result<Enqueued, StoreError> {
        let mut rows = self.rows();
        if let Some(Row { execution: row, .. }) = rows.get(request.task_id)
            && !(row.status == Status::Failed && row.attempts == 0)
        {
            return Ok(Enqueued::Known(row.status));
        }
        let claim = ClaimRequest {
            task_id: request.task_id,
            task_name: request.task_name,
            args: request.args,
            kwargs: request.kwargs,
            message_id: None,
            enqueued_at: Some(request.enqueued_at),
            lease: std::time::Duration::ZERO,
            max_attempts: None,
        };
        rows.insert(request.task_id.to_owned(), new_row(&claim, Status::Ready, 0));
        Ok(Enqueued::Ready)
    }

    async fn not_published(&self, task_id: &str, reason: &str) -> Result<(), StoreError> {
        let mut rows = self.rows();
        let ready = |row: &&mut Row| row.execution.status == Status::Ready && row.execution.attempts == 0;
        if let Some(Row { execution: row, .. }) = rows.get_mut(task_id).filter(ready) {
            row.status = Status::Failed;
            row.error_message = Some(format!("{NOT_PUBLISHED}{reason}"));
            row.finished_at = Some(Utc::now());
        }
        Ok(())
    }

    async fn get(&self, task_id: &str) -> Result<Option<Execution>, StoreError> {
        Ok(self.rows().get(task_id).map(|row| row.execution.clone()))
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
