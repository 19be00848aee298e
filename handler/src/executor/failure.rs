//! What a run produced when it did not succeed, before it is recorded: the
//! one place that decides whether running the task again could help, and
//! what the store and the span say about it.

use std::any::Any;
use std::borrow::Cow;
use std::fmt::Write as _;
use std::time::Duration;

use whirligig_registry::{ArgumentError, Retry, TaskError};

use super::Outcome;
use crate::store::StoreError;

/// Why a claimed attempt did not produce a storable value.
#[derive(Debug)]
pub(super) enum Failure {
    Arguments(ArgumentError),
    Task(TaskError),
    Panicked(String),
    TimedOut(Duration),
    /// The task succeeded but the store refused its return value.
    Unstorable(String),
}

impl Failure {
    pub(super) fn panicked(panic: &(dyn Any + Send)) -> Self {
        let message = panic
            .downcast_ref::<&str>()
            .map(|text| (*text).to_owned())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_owned());
        Self::Panicked(message)
    }

    /// Whether a later delivery should run the task again. The store records
    /// this; the delivery's outcome also weighs the attempts left.
    pub(super) fn retry(&self) -> Retry {
        match self {
            Self::Arguments(_) | Self::Unstorable(_) => Retry::Permanent,
            Self::Task(error) => error.retry(),
            Self::Panicked(_) | Self::TimedOut(_) => Retry::Retryable,
        }
    }

    /// One line for `error_message`, and the whole story for `error_traceback`.
    pub(super) fn describe(&self) -> (String, String) {
        match self {
            Self::Arguments(error) => (error.to_string(), error.to_string()),
            Self::Task(error) => {
                let mut chain = String::new();
                for (depth, cause) in error.chain().enumerate() {
                    let _ = write!(chain, "{}{cause}", if depth == 0 { "" } else { "\ncaused by: " });
                }
                (error.to_string(), chain)
            }
            Self::Panicked(message) => (format!("the task panicked: {message}"), format!("panic: {message}")),
            Self::TimedOut(timeout) => {
                let message = format!("the task did not finish within its timeout of {timeout:?}");
                (message.clone(), message)
            }
            Self::Unstorable(reason) => {
                let message = format!("the task succeeded but its return value could not be stored: {reason}");
                (message.clone(), message)
            }
        }
    }

    /// The failure for the span: the message, but for arguments only which
    /// part did not fit, since serde's reason quotes the values.
    pub(super) fn summary<'a>(&self, message: &'a str) -> Cow<'a, str> {
        match self {
            Self::Arguments(error) => format!("the {} do not fit the task", error.part()).into(),
            _ => message.into(),
        }
    }

    /// `error.type` for the span.
    pub(super) fn kind(&self) -> &'static str {
        match self {
            Self::Arguments(_) => "arguments",
            Self::Task(_) => "task_error",
            Self::Panicked(_) => "panic",
            Self::TimedOut(_) => "timeout",
            Self::Unstorable(_) => "unstorable_result",
        }
    }

    /// The delivery's outcome: `retry` is this failure's, unless no attempts are left.
    pub(super) fn outcome(self, message: String, last_attempt: bool) -> Outcome {
        let retry = if last_attempt { Retry::Permanent } else { self.retry() };
        match self {
            Self::Arguments(error) => Outcome::BadArguments(error),
            Self::Task(error) => match store_error_in(&error) {
                Some(store_error) => Outcome::Store(store_error),
                None => Outcome::Failed { message, retry },
            },
            Self::Panicked(_) | Self::TimedOut(_) | Self::Unstorable(_) => Outcome::Failed { message, retry },
        }
    }
}

/// A task that failed for want of a database connection is backpressure, not
/// a task failure: the same delivery should come back later.
fn store_error_in(error: &TaskError) -> Option<StoreError> {
    error.chain().find_map(|cause| match cause.downcast_ref::<StoreError>()? {
        busy @ (StoreError::PoolTimeout(_) | StoreError::Refused { .. } | StoreError::Unavailable { .. }) => {
            Some(busy.clone())
        }
        _ => None,
    })
}
