//! The PostgreSQL store: every call is a span on `task_executions`; claims
//! and finishes wait in a queue each and go out together ([`batches`], one
//! round trip for many rows); the rest is one prepared statement on a pooled
//! connection ([`pool`]). The SQL is in [`statements`], the sorting of driver
//! errors in [`errors`], the schema's migrations in [`migrate`](mod@migrate).

mod batches;
mod errors;
mod migrate;
mod pool;
mod statements;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Config;
use tokio_postgres::config::Host;
use tokio_postgres::types::{Json, ToSql};
use tracing::field::Empty;
use tracing::{Instrument as _, Span};

use self::batches::{ClaimRow, FinishRow, claim_batch, finish_batch};
use self::errors::classify;
pub use self::migrate::migrate;
pub use self::pool::{ConnectError, Connector, DbConnection, PgConnection};
use self::pool::{FINISH_WAIT, Pool, parse_url};
use self::statements::execution;
use super::{
    Claim, ClaimRequest, Ending, Enqueued, Execution, ExecutionStore, Finished, NOT_PUBLISHED, ReadyRequest, Status,
    StoreError,
};
use crate::group_commit::{Limits, Queue};

/// The claim and finish statements, for the database's ceiling in benchmarks.
#[cfg(feature = "bench")]
pub(crate) fn claim_and_finish() -> (&'static str, &'static str) {
    (statements::CLAIMS, statements::FINISHES)
}

/// Executions in PostgreSQL, through a bb8 pool shared with the tasks.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: Pool,
    peer: Arc<Peer>,
    batches: Arc<Batches>,
}

/// Claims and finishes waiting to share a statement (see `group_commit`).
#[derive(Debug)]
struct Batches {
    claims: Queue<ClaimRow, Claim, StoreError>,
    finishes: Queue<FinishRow, Finished, StoreError>,
}

/// One statement carries at most 64 rows and 1 MiB of arguments and results.
/// Two statements of a kind in flight rather than one, so that a statement
/// stuck behind a row lock does not stop every claim.
const LIMITS: Limits = Limits { rows: 64, bytes: 1 << 20, in_flight: 2 };

impl Default for Batches {
    fn default() -> Self {
        Self { claims: Queue::new(LIMITS), finishes: Queue::new(LIMITS) }
    }
}

/// The server and database, as the spans of store calls name them.
#[derive(Debug)]
struct Peer {
    address: String,
    port: u16,
    namespace: String,
}

impl Peer {
    fn of(config: &Config) -> Self {
        let address = match config.get_hosts().first() {
            Some(Host::Tcp(host)) => host.clone(),
            #[cfg(unix)]
            Some(Host::Unix(path)) => path.display().to_string(),
            None => "localhost".to_owned(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        // PostgreSQL's default database is the user's name.
        let namespace = config.get_dbname().or(config.get_user()).unwrap_or("postgres").to_owned();
        Self { address, port, namespace }
    }
}

impl PostgresStore {
    /// A pool of `size` connections to `url` for claims and tasks, each waiting
    /// at most `pool_timeout`, plus a few that only finishes can count on.
    /// Connections open in the background: nothing here waits for the server.
    pub fn new(url: &str, size: u32, pool_timeout: Duration) -> Result<Self, StoreError> {
        let config = parse_url(url)?;
        let peer = Arc::new(Peer::of(&config));
        Ok(Self { pool: Pool::new(config, size, pool_timeout), peer, batches: Arc::default() })
    }

    /// A connection within the pool timeout, or why there is none.
    pub async fn connection(&self) -> Result<DbConnection, StoreError> {
        self.pool.connection_until(Instant::now() + self.pool.timeout).await
    }
}

impl ExecutionStore for PostgresStore {
    async fn claim(&self, request: &ClaimRequest<'_>) -> Result<Claim, StoreError> {
        traced(self.span("INSERT"), self.claim_row(request)).await
    }

    async fn finish(&self, task_id: &str, attempt: u32, ending: Ending<'_>) -> Result<Finished, StoreError> {
        traced(self.span("UPDATE"), self.finish_row(task_id, attempt, ending)).await
    }

    async fn skip(&self, request: &ClaimRequest<'_>, reason: &str) -> Result<(), StoreError> {
        traced(self.span("INSERT"), self.skip_row(request, reason)).await
    }

    async fn enqueue(&self, request: &ReadyRequest<'_>) -> Result<Enqueued, StoreError> {
        traced(self.span("INSERT"), self.enqueue_row(request)).await
    }

    async fn not_published(&self, task_id: &str, reason: &str) -> Result<(), StoreError> {
        traced(self.span("UPDATE"), self.not_published_row(task_id, reason)).await
    }

    async fn get(&self, task_id: &str) -> Result<Option<Execution>, StoreError> {
        traced(self.span("SELECT"), self.get_row(task_id)).await
    }

    async fn ping(&self) -> Result<(), StoreError> {
        match self.connection().await {
            Ok(connection) => connection.simple_query("").await.map(drop).map_err(classify),
            Err(StoreError::PoolTimeout(_)) => Ok(()),
            Err(error) => Err(error),
        }
    }
}

/// Runs a store call in its span, which says whether it failed and how.
async fn traced<T>(span: Span, call: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
    let result = call.instrument(span.clone()).await;
    if let Err(error) = &result {
        span.record("otel.status_code", "ERROR");
        span.record("error.type", error.kind());
    }
    result
}

impl PostgresStore {
    /// A client span for one call on `task_executions`, with the database
    /// conventions' attributes; never the statement's parameters.
    fn span(&self, operation: &'static str) -> Span {
        tracing::info_span!(
            "db",
            otel.name = format_args!("{operation} task_executions"),
            otel.kind = "client",
            otel.status_code = Empty,
            db.system.name = "postgresql",
            db.namespace = &*self.peer.namespace,
            db.collection.name = "task_executions",
            db.operation.name = operation,
            server.address = &*self.peer.address,
            server.port = i64::from(self.peer.port),
            db.operation.batch.size = Empty,
            error.type = Empty,
        )
    }

    async fn claim_row(&self, request: &ClaimRequest<'_>) -> Result<Claim, StoreError> {
        let connect = |deadline| self.pool.connection_until(deadline);
        self.batches.claims.submit(ClaimRow::of(request), self.pool.timeout, connect, claim_batch).await
    }

    async fn finish_row(&self, task_id: &str, attempt: u32, ending: Ending<'_>) -> Result<Finished, StoreError> {
        let row = FinishRow::of(task_id, attempt, ending);
        let connect = |deadline| self.pool.finish_connection_until(deadline);
        self.batches.finishes.submit(row, FINISH_WAIT, connect, finish_batch).await
    }

    async fn skip_row(&self, request: &ClaimRequest<'_>, reason: &str) -> Result<(), StoreError> {
        let connection = self.connection().await?;
        let ClaimRequest { task_id, task_name, args, kwargs, message_id, enqueued_at, .. } = request;
        let parameters: [&(dyn ToSql + Sync); 7] =
            [task_id, task_name, &Json(args), &Json(kwargs), message_id, enqueued_at, &reason];
        connection.execute(&connection.statements.skip, &parameters).await.map_err(classify)?;
        Ok(())
    }

    async fn enqueue_row(&self, request: &ReadyRequest<'_>) -> Result<Enqueued, StoreError> {
        let connection = self.connection().await?;
        let ReadyRequest { task_id, task_name, args, kwargs, enqueued_at } = request;
        let parameters: [&(dyn ToSql + Sync); 5] = [task_id, task_name, &Json(args), &Json(kwargs), enqueued_at];
        let row = connection.query_one(&connection.statements.enqueue, &parameters).await.map_err(classify)?;
        if row.get::<_, bool>(0) {
            return Ok(Enqueued::Ready);
        }
        let status: Option<&str> = row.get(1);
        let status = status.and_then(Status::parse);
        status.map(Enqueued::Known).ok_or_else(|| StoreError::database("task_executions row has an unknown status"))
    }

    async fn not_published_row(&self, task_id: &str, reason: &str) -> Result<(), StoreError> {
        let connection = self.connection().await?;
        let message = statements::storable(&format!("{NOT_PUBLISHED}{reason}"));
        connection.execute(&connection.statements.not_published, &[&task_id, &message]).await.map_err(classify)?;
        Ok(())
    }

    async fn get_row(&self, task_id: &str) -> Result<Option<Execution>, StoreError> {
        let connection = self.connection().await?;
        let rows = connection.query(&connection.statements.get, &[&task_id]).await.map_err(classify)?;
        rows.first().map(execution).transpose()
    }
}
