//! [`TaskContext`]: what a running task may know about its execution. Built by
//! whoever runs the task (the push endpoint or job mode); it carries no I/O.

use std::any::Any;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

/// The shard of a Cloud Run job execution that runs this task
/// (`CLOUD_RUN_TASK_INDEX` of `CLOUD_RUN_TASK_COUNT`, try `CLOUD_RUN_TASK_ATTEMPT`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct JobShard {
    /// This shard's index, from 0.
    pub index: u32,
    /// How many shards the execution has.
    pub count: u32,
    /// Cloud Run's retry count for this shard, from 0.
    pub attempt: u32,
}

/// Facts about one execution, passed to every task function.
#[derive(Clone)]
pub struct TaskContext {
    task_id: String,
    attempt: u32,
    message_id: Option<String>,
    job: Option<JobShard>,
    cancellation: CancellationToken,
    extension: Option<Arc<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskContext")
            .field("task_id", &self.task_id)
            .field("attempt", &self.attempt)
            .field("message_id", &self.message_id)
            .field("job", &self.job)
            .field("cancelled", &self.is_cancelled())
            .finish_non_exhaustive()
    }
}

impl TaskContext {
    /// A context for the first attempt of `task_id`, with nothing else known.
    pub fn new(task_id: impl Into<String>) -> Self {
        Self {
            task_id: task_id.into(),
            attempt: 1,
            message_id: None,
            job: None,
            cancellation: CancellationToken::new(),
            extension: None,
        }
    }

    /// Sets the attempt number (1 for the first run).
    #[must_use]
    pub fn with_attempt(mut self, attempt: u32) -> Self {
        self.attempt = attempt;
        self
    }

    /// Sets the Pub/Sub message id the execution came from.
    #[must_use]
    pub fn with_message_id(mut self, message_id: impl Into<String>) -> Self {
        self.message_id = Some(message_id.into());
        self
    }

    /// Sets the Cloud Run job shard running the task.
    #[must_use]
    pub fn with_job(mut self, job: JobShard) -> Self {
        self.job = Some(job);
        self
    }

    /// Uses `token` as the cancellation signal (the runner cancels it on shutdown).
    #[must_use]
    pub fn with_cancellation(mut self, token: CancellationToken) -> Self {
        self.cancellation = token;
        self
    }

    /// Attaches the runner's own resources (the handler's database pool), for
    /// the runner's helpers to find again with [`extension`](Self::extension).
    #[must_use]
    pub fn with_extension(mut self, extension: Arc<dyn Any + Send + Sync>) -> Self {
        self.extension = Some(extension);
        self
    }

    /// The resources the runner attached, if they are a `T`.
    pub fn extension<T: Any>(&self) -> Option<&T> {
        self.extension.as_deref()?.downcast_ref()
    }

    /// The execution id: the message's task_id, or the id derived for a
    /// scheduled or hand-published message.
    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    /// Which attempt this is, from 1.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The Pub/Sub message id, when the task came from Pub/Sub.
    pub fn message_id(&self) -> Option<&str> {
        self.message_id.as_deref()
    }

    /// The job shard, when the task runs as a Cloud Run job.
    pub fn job(&self) -> Option<JobShard> {
        self.job
    }

    /// True once the runner has asked the task to stop (the instance is shutting down).
    pub fn is_cancelled(&self) -> bool {
        self.cancellation.is_cancelled()
    }

    /// Completes when the runner asks the task to stop; `select!` on it to
    /// wind down a long task cleanly.
    pub async fn cancelled(&self) {
        self.cancellation.cancelled().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_to_a_first_attempt_with_nothing_else_known() {
        let ctx = TaskContext::new("t-1");
        assert_eq!(ctx.task_id(), "t-1");
        assert_eq!(ctx.attempt(), 1);
        assert_eq!(ctx.message_id(), None);
        assert_eq!(ctx.job(), None);
        assert!(!ctx.is_cancelled());
    }

    #[test]
    fn carries_what_the_runner_sets() {
        let token = CancellationToken::new();
        let ctx = TaskContext::new("t-2")
            .with_attempt(3)
            .with_message_id("m-9")
            .with_job(JobShard { index: 1, count: 4, attempt: 0 })
            .with_cancellation(token.clone());
        assert_eq!(ctx.attempt(), 3);
        assert_eq!(ctx.message_id(), Some("m-9"));
        assert_eq!(ctx.job(), Some(JobShard { index: 1, count: 4, attempt: 0 }));
        token.cancel();
        assert!(ctx.is_cancelled());
    }

    #[test]
    fn an_extension_is_found_by_its_type() {
        let ctx = TaskContext::new("t").with_extension(Arc::new(42_u32));
        assert_eq!(ctx.extension::<u32>(), Some(&42));
        assert_eq!(ctx.extension::<String>(), None);
        assert_eq!(TaskContext::new("t").extension::<u32>(), None);
    }
}
