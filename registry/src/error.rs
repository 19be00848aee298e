//! What a task run can fail with: [`TaskError`] from the task itself, retryable
//! or permanent, and [`ArgumentError`] when the message's arguments do not fit
//! the task's declared types. Deciding HTTP statuses is not done here.

use std::error::Error as StdError;
use std::fmt;

type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// Whether Pub/Sub should deliver the message again after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Retry {
    /// A transient failure: answer so that Pub/Sub retries with backoff.
    Retryable,
    /// Running again cannot help: record the failure and acknowledge.
    Permanent,
}

/// An error returned by a task function.
///
/// Any `std::error::Error` converts into a retryable `TaskError`, so `?` works
/// on the errors a task meets. Mark the ones that retrying cannot fix with
/// [`TaskError::permanent`] or [`ResultExt::permanent`].
///
/// Like `anyhow::Error`, this type does not implement `std::error::Error`
/// itself: that is what lets every error type convert into it with `?`.
pub struct TaskError {
    retry: Retry,
    source: BoxError,
}

impl TaskError {
    /// A failure worth retrying (the default for `?`).
    pub fn retryable(error: impl Into<BoxError>) -> Self {
        Self { retry: Retry::Retryable, source: error.into() }
    }

    /// A failure that retrying cannot fix: recorded FAILED and acknowledged.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        Self { retry: Retry::Permanent, source: error.into() }
    }

    /// Whether this failure should be retried.
    pub fn retry(&self) -> Retry {
        self.retry
    }

    /// True for a failure that retrying cannot fix.
    pub fn is_permanent(&self) -> bool {
        self.retry == Retry::Permanent
    }

    /// The error and its causes, outermost first: what the store keeps as the
    /// traceback of a failed execution.
    pub fn chain(&self) -> impl Iterator<Item = &(dyn StdError + 'static)> {
        let first: &(dyn StdError + 'static) = self.source.as_ref();
        std::iter::successors(Some(first), |&error| error.source())
    }
}

impl<E: StdError + Send + Sync + 'static> From<E> for TaskError {
    fn from(error: E) -> Self {
        Self::retryable(error)
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl fmt::Debug for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskError").field("retry", &self.retry).field("source", &self.source).finish()
    }
}

/// Marks the error of a `Result` as permanent: `client.send(..).await.permanent()?`.
pub trait ResultExt<T> {
    /// Converts the error into a permanent [`TaskError`].
    fn permanent(self) -> Result<T, TaskError>;
}

impl<T, E: Into<BoxError>> ResultExt<T> for Result<T, E> {
    fn permanent(self) -> Result<T, TaskError> {
        self.map_err(TaskError::permanent)
    }
}

/// Which part of a message an [`ArgumentError`] is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArgumentPart {
    /// The positional `args` list.
    Args,
    /// The keyword `kwargs` object.
    Kwargs,
}

impl fmt::Display for ArgumentPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Args => "args",
            Self::Kwargs => "kwargs",
        })
    }
}

/// The message's arguments do not fit the types the task declares.
///
/// Always permanent: the same message can never fit on a later delivery.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{part} do not fit the task: {reason}")]
pub struct ArgumentError {
    part: ArgumentPart,
    reason: String,
}

impl ArgumentError {
    pub(crate) fn new(part: ArgumentPart, reason: impl fmt::Display) -> Self {
        Self { part, reason: reason.to_string() }
    }

    /// Which part of the message did not fit.
    pub fn part(&self) -> ArgumentPart {
        self.part
    }

    /// Why it did not fit (serde's message for a deserialisation failure).
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// The same failure as a permanent [`TaskError`], for recording.
    pub fn into_task_error(self) -> TaskError {
        TaskError::permanent(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn question_mark_makes_a_retryable_error() {
        fn fails() -> Result<(), TaskError> {
            Err(std::io::Error::other("disk"))?
        }
        let error = fails().unwrap_err();
        assert_eq!(error.retry(), Retry::Retryable);
        assert_eq!(error.to_string(), "disk");
    }

    #[test]
    fn permanent_marks_the_error() {
        let result: Result<(), std::io::Error> = Err(std::io::Error::other("bad input"));
        let error = result.permanent().unwrap_err();
        assert!(error.is_permanent());
        assert_eq!(error.to_string(), "bad input");
        assert!(TaskError::permanent("plain text").is_permanent());
    }

    #[test]
    fn chain_lists_causes_outermost_first() {
        let error = TaskError::from(Outer(std::io::Error::other("inner")));
        let chain: Vec<String> = error.chain().map(ToString::to_string).collect();
        assert_eq!(chain, ["outer", "inner"]);
    }

    #[test]
    fn argument_error_is_permanent_and_says_which_part() {
        let error = ArgumentError::new(ArgumentPart::Kwargs, "missing field `to`");
        assert_eq!(error.to_string(), "kwargs do not fit the task: missing field `to`");
        assert!(error.into_task_error().is_permanent());
    }
}
