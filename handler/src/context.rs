//! What a running task can reach through its [`TaskContext`]: a pooled
//! database connection from the store's own pool. The executor attaches
//! [`Resources`]; [`TaskContextExt`] finds them again.

#[cfg(feature = "postgres")]
use std::future::Future;

#[cfg(feature = "postgres")]
use whirligig_registry::{TaskContext, TaskError};

#[cfg(feature = "postgres")]
use crate::store::{DbConnection, PostgresStore};

/// The runner's resources, attached to every task's context.
#[derive(Debug, Default)]
pub(crate) struct Resources {
    #[cfg(feature = "postgres")]
    pub(crate) database: Option<PostgresStore>,
}

/// Database access for tasks: `let db = ctx.database().await?;`.
#[cfg(feature = "postgres")]
pub trait TaskContextExt {
    /// A connection from the store's pool, waiting at most
    /// `DATABASE_POOL_TIMEOUT_MS`. When none comes, the task fails retryably
    /// and the delivery is answered 429, like a push that found the pool busy.
    fn database(&self) -> impl Future<Output = Result<DbConnection, TaskError>> + Send;
}

#[cfg(feature = "postgres")]
impl TaskContextExt for TaskContext {
    async fn database(&self) -> Result<DbConnection, TaskError> {
        let store = self.extension::<Resources>().and_then(|resources| resources.database.as_ref());
        match store {
            Some(store) => store.connection().await.map_err(TaskError::retryable),
            None => Err(TaskError::permanent("this task needs a database: set DATABASE_URL")),
        }
    }
}
