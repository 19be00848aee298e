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
    ABANDONED, Claim, ClaimRequest, Ending, Enqueued, Execution, ExecutionStore, Finished, NOT_PUBLISHED, ReadyRequest,
    Status, StoreError,
};

/// Executions in a map; for `TASKS_ENVIRONMENT=dev` without `DATABASE_URL`.
#[derive(Debug, Default)]
pub struct MemoryStore {
    rows: Mutex<HashMap<String, Execution>>,
}

impl MemoryStore {
    fn rows(&self) -> MutexGuard<'_, HashMap<String, Execution>> {
        // A panic while holding the lock cannot leave a row half-written.
        self.rows.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn json(raw: &RawValue) -> Value {
    serde_json::from_str(raw.get()).unwrap_or(Value::Null)
}

fn new_row(request: &ClaimRequest<'_>, status: Status, attempts: u32) -> Execution {
    Execution {
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
    }
}

/// The same decision the PostgreSQL claim makes in SQL.
fn claim_row(row: &mut Execution, request: &ClaimRequest<'_>) -> Claim {
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
            Claim::Claimed { attempt: row.attempts }
        }
    }
}

impl ExecutionStore for MemoryStore {
    async fn claim(&self, request: &ClaimRequest<'_>) -> Result<Claim, StoreError> {
        let mut rows = self.rows();
        let row = rows.entry(request.task_id.to_owned()).or_insert_with(|| new_row(request, Status::Ready, 0));
        Ok(claim_row(row, request))
    }

    async fn finish(&self, task_id: &str, attempt: u32, ending: Ending<'_>) -> Result<Finished, StoreError> {
        let mut rows = self.rows();
        let Some(row) = rows.get_mut(task_id).filter(|row| row.status == Status::Running && row.attempts == attempt)
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
        if let Some(row) = rows.get(request.task_id)
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
        if let Some(row) = rows.get_mut(task_id).filter(|row| row.status == Status::Ready && row.attempts == 0) {
            row.status = Status::Failed;
            row.error_message = Some(format!("{NOT_PUBLISHED}{reason}"));
            row.finished_at = Some(Utc::now());
        }
        Ok(())
    }

    async fn get(&self, task_id: &str) -> Result<Option<Execution>, StoreError> {
        Ok(self.rows().get(task_id).cloned())
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }
}
