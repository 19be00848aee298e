//! The PostgreSQL store: every call is a span on `task_executions`; claims
//! and finishes wait in a queue each and go out together ([`batches`], one
//! round trip for many rows); the rest is one prepared statement on a pooled
//! connection ([`pool`]), each within a deadline, and sent once more when the
//! connection closed under it. What the instance runs is renewed in the
//! background ([`leases`]). The SQL is in [`statements`], the sorting of
//! driver errors in [`errors`], the schema's migrations in
//! [`migrate`](mod@migrate).

mod batches;
mod errors;
mod leases;
mod migrate;
mod pool;
mod statements;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use futures_util::FutureExt as _;
use tokio_postgres::Config;
use tokio_postgres::config::Host;
use tokio_postgres::types::{Json, ToSql};
use tracing::field::Empty;
use tracing::{Instrument as _, Span};

use self::batches::{ClaimRow, FinishRow, claim_batch, finish_batch};
use self::leases::{Leases, RENEW_EVERY, RETRY_EVERY, Round};
pub use self::migrate::{migrate, migrate_within};
pub use self::pool::{ConnectError, Connector, DbConnection, PgConnection};
use self::pool::{FINISH_WAIT, Pool, parse_url};
use self::statements::execution;
use super::{
    Attempt, Claim, ClaimRequest, Ending, Enqueued, Execution, ExecutionStore, Finished, NOT_PUBLISHED, ReadyRequest,
    Status, StoreError, draw_fence,
};
use crate::group_commit::{Limits, Queue};

/// The claim and finish statements, for the database's ceiling in benchmarks.
#[cfg(feature = "bench")]
pub(crate) fn claim_and_finish() -> (&'static str, &'static str) {
    (statements::CLAIMS, statements::FINISHES)
}

/// `/readyz` answers within this, whatever the database does.
const PING_DEADLINE: Duration = Duration::from_secs(1);

/// Executions in PostgreSQL, through a bb8 pool shared with the tasks.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    shared: Arc<Shared>,
}

/// What every clone of the store shares.
#[derive(Debug)]
struct Shared {
    pool: Pool,
    peer: Peer,
    batches: Batches,
    leases: Arc<Leases>,
    readiness: Readiness,
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.leases.close();
    }
}

/// Whether the schema is known to be migrated, and if not, why not yet.
#[derive(Debug)]
struct Readiness {
    ready: AtomicBool,
    waiting: Mutex<String>,
}

impl Readiness {
    fn new(ready: bool) -> Self {
        Self { ready: AtomicBool::new(ready), waiting: Mutex::new("connecting".to_owned()) }
    }

    /// Nothing is sent before the schema is there: every call says why not yet.
    fn check(&self) -> Result<(), StoreError> {
        if self.ready.load(Ordering::Acquire) {
            return Ok(());
        }
        let waiting = self.waiting.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let reason = format!("not connected yet ({waiting})");
        Err(StoreError::Unavailable { reason, source: None })
    }

    fn waiting_because(&self, error: &StoreError) {
        *self.waiting.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = error.to_string();
    }
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
    /// The schema must be migrated already.
    pub fn new(url: &str, size: u32, pool_timeout: Duration) -> Result<Self, StoreError> {
        Self::with_readiness(url, size, pool_timeout, true)
    }

    /// The store of a server that must listen whether or not the database is
    /// there. The migrations are tried once here: the usual start, ready
    /// when it listens. If that fails, they are tried again in the
    /// background with backoff until they are applied, and until then every
    /// call is answered [`StoreError::Unavailable`] with the reason, and
    /// nothing runs.
    pub async fn migrating(url: &str, size: u32, pool_timeout: Duration) -> Result<Self, StoreError> {
        let error = match migrate(url).await {
            Ok(_) => return Self::new(url, size, pool_timeout),
            Err(error) => error,
        };
        let store = Self::with_readiness(url, size, pool_timeout, false)?;
        store.shared.readiness.waiting_because(&error);
        tracing::warn!(%error, "the database is not there yet: serving, and answering 503 until it is");
        tokio::spawn(migrate_in_background(url.to_owned(), Arc::downgrade(&store.shared)));
        Ok(store)
    }

    fn with_readiness(url: &str, size: u32, pool_timeout: Duration, ready: bool) -> Result<Self, StoreError> {
        let config = parse_url(url)?;
        let peer = Peer::of(&config);
        let pool = Pool::new(config, size, pool_timeout);
        let leases = Arc::default();
        let shared = Shared { pool, peer, batches: Batches::default(), leases, readiness: Readiness::new(ready) };
        Ok(Self { shared: Arc::new(shared) })
    }

    /// A connection within the pool timeout, or why there is none.
    pub async fn connection(&self) -> Result<DbConnection, StoreError> {
        self.shared.readiness.check()?;
        let pool = &self.shared.pool;
        pool.connection_until(Instant::now() + pool.timeout).await
    }
}

/// Applies the migrations until they are, then lets the store serve.
async fn migrate_in_background(url: String, store: Weak<Shared>) {
    let failed = |error: &StoreError, tries: u32| {
        let Some(shared) = store.upgrade() else { return false };
        shared.readiness.waiting_because(error);
        // Ever more rarely: after 2, 4, 8, ... tries (the first was said already).
        if tries.is_power_of_two() {
            tracing::warn!(%error, tries = tries + 1, "the database is not there yet: answering 503 until it is");
        }
        true
    };
    match migrate_within(&url, None, failed).await {
        Ok(applied) => {
            if let Some(shared) = store.upgrade() {
                shared.readiness.ready.store(true, Ordering::Release);
                tracing::info!(applied = applied.len(), "migrations up to date: the store serves");
            }
        }
        Err(error) => tracing::debug!(%error, "the store went away before the database came"),
    }
}

impl ExecutionStore for PostgresStore {
    async fn claim(&self, request: &ClaimRequest<'_>) -> Result<Claim, StoreError> {
        traced(self.span("INSERT"), self.claim_row(request)).await
    }

    async fn finish(&self, task_id: &str, attempt: Attempt, ending: Ending<'_>) -> Result<Finished, StoreError> {
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
        let ping = async {
            match self.connection().await {
                Ok(connection) => connection.within(connection.simple_query("")).await.map(drop),
                Err(StoreError::PoolTimeout(_)) => Ok(()),
                Err(error) => Err(error),
            }
        };
        tokio::time::timeout(PING_DEADLINE, ping).await.unwrap_or_else(|_| {
            let reason = format!("no answer from the database within {PING_DEADLINE:?}");
            Err(StoreError::Unavailable { reason, source: None })
        })
    }
}

/// Runs a store call in its span, which says whether it failed and how. A
/// combinator, not an `async fn`: an async function keeps its argument's
/// future beside the future it awaits, and every push would carry the call twice.
fn traced<T>(
    span: Span,
    call: impl Future<Output = Result<T, StoreError>>,
) -> impl Future<Output = Result<T, StoreError>> {
    call.instrument(span.clone()).inspect(move |result| {
        if let Err(error) = result {
            span.record("otel.status_code", "ERROR");
            span.record("error.type", error.kind());
        }
    })
}

impl PostgresStore {
    /// A client span for one call on `task_executions`, with the database
    /// conventions' attributes; never the statement's parameters. Its name,
    /// `db`, is how telemetry leaves it out when no span is exported.
    fn span(&self, operation: &'static str) -> Span {
        tracing::info_span!(
            "db",
            otel.name = format_args!("{operation} task_executions"),
            otel.kind = "client",
            otel.status_code = Empty,
            db.system.name = "postgresql",
            db.namespace = &*self.shared.peer.namespace,
            db.collection.name = "task_executions",
            db.operation.name = operation,
            server.address = &*self.shared.peer.address,
            server.port = i64::from(self.shared.peer.port),
            db.operation.batch.size = Empty,
            error.type = Empty,
        )
    }

    async fn claim_row(&self, request: &ClaimRequest<'_>) -> Result<Claim, StoreError> {
        let shared = &self.shared;
        shared.readiness.check()?;
        if shared.leases.finishing(request.task_id) {
            // Its ending waits to be written here: it ran, and must not run again.
            return Ok(Claim::Running);
        }
        let fence = draw_fence();
        let claim = move |()| {
            let connect = move |deadline| shared.pool.connection_until(deadline);
            shared.batches.claims.submit(ClaimRow::of(request, fence), shared.pool.timeout, connect, claim_batch)
        };
        // Sent again under the same fence, a claim that did land is taken again.
        let claim = once_more(claim).await?;
        if let Claim::Claimed(attempt) = claim {
            self.hold(request.task_id, attempt, request.lease);
        }
        Ok(claim)
    }

    /// Renews `attempt`'s lease until it finishes or `lease` is over.
    fn hold(&self, task_id: &str, attempt: Attempt, lease: Duration) {
        let leases = &self.shared.leases;
        leases.hold(task_id, attempt, lease);
        if leases.start() {
            tokio::spawn(keep_alive(Arc::clone(leases), Arc::downgrade(&self.shared)));
        }
    }

    async fn finish_row(&self, task_id: &str, attempt: Attempt, ending: Ending<'_>) -> Result<Finished, StoreError> {
        let finished = once_more(move |()| self.write_finish(FinishRow::of(task_id, attempt, ending))).await;
        let leases = &self.shared.leases;
        match &finished {
            Err(error) if !matches!(error, StoreError::Rejected { .. }) => {
                // The task ran: keep its ending and its lease until the ending is written.
                leases.pend(task_id, FinishRow::of(task_id, attempt, ending));
                tracing::warn!(%error, "this attempt's ending is not written yet: trying again in the background");
            }
            _ => leases.release(task_id, attempt.fence),
        }
        finished
    }

    fn write_finish(&self, row: FinishRow) -> impl Future<Output = Result<Finished, StoreError>> + '_ {
        let connect = |deadline| self.shared.pool.finish_connection_until(deadline);
        self.shared.batches.finishes.submit(row, FINISH_WAIT, connect, finish_batch)
    }

    /// One round of the renewals: every lease held, then every ending not yet written.
    async fn renew(&self, round: Round) -> Result<(), StoreError> {
        let renewed = if round.task_ids.is_empty() {
            Ok(())
        } else {
            let connection = self.shared.pool.finish_connection_until(Instant::now() + FINISH_WAIT).await?;
            let parameters: [&(dyn ToSql + Sync); 2] = [&round.task_ids, &round.fences];
            connection.within(connection.execute(&connection.statements.renew, &parameters)).await.map(drop)
        };
        for row in round.finishes {
            let (task_id, fence) = (row.task_id().to_owned(), row.fence());
            let task_id = task_id.as_str();
            match self.write_finish(row).await {
                Ok(finished) => {
                    self.shared.leases.release(task_id, fence);
                    tracing::info!(task_id, ?finished, "wrote an attempt's ending that could not be written before");
                }
                Err(error @ StoreError::Rejected { .. }) => {
                    self.shared.leases.release(task_id, fence);
                    tracing::warn!(task_id, %error, "gave up writing an attempt's ending: the database rejects it");
                }
                Err(_) => {}
            }
        }
        renewed
    }

    async fn skip_row(&self, request: &ClaimRequest<'_>, reason: &str) -> Result<(), StoreError> {
        once_more(move |()| async move {
            let connection = self.connection().await?;
            let ClaimRequest { task_id, task_name, args, kwargs, message_id, enqueued_at, .. } = request;
            let parameters: [&(dyn ToSql + Sync); 7] =
                [task_id, task_name, &Json(args), &Json(kwargs), message_id, enqueued_at, &reason];
            connection.within(connection.execute(&connection.statements.skip, &parameters)).await.map(drop)
        })
        .await
    }

    async fn enqueue_row(&self, request: &ReadyRequest<'_>) -> Result<Enqueued, StoreError> {
        let row = once_more(move |()| async move {
            let connection = self.connection().await?;
            let ReadyRequest { task_id, task_name, args, kwargs, enqueued_at } = request;
            let parameters: [&(dyn ToSql + Sync); 5] = [task_id, task_name, &Json(args), &Json(kwargs), enqueued_at];
            connection.within(connection.query_one(&connection.statements.enqueue, &parameters)).await
        })
        .await?;
        if row.get::<_, bool>(0) {
            return Ok(Enqueued::Ready);
        }
        let status: Option<&str> = row.get(1);
        let status = status.and_then(Status::parse);
        status.map(Enqueued::Known).ok_or_else(|| StoreError::database("task_executions row has an unknown status"))
    }

    async fn not_published_row(&self, task_id: &str, reason: &str) -> Result<(), StoreError> {
        let message = &statements::storable(&format!("{NOT_PUBLISHED}{reason}"));
        once_more(move |()| async move {
            let connection = self.connection().await?;
            let parameters: [&(dyn ToSql + Sync); 2] = [&task_id, message];
            connection.within(connection.execute(&connection.statements.not_published, &parameters)).await.map(drop)
        })
        .await
    }

    async fn get_row(&self, task_id: &str) -> Result<Option<Execution>, StoreError> {
        let rows = once_more(move |()| async move {
            let connection = self.connection().await?;
            connection.within(connection.query(&connection.statements.get, &[&task_id])).await
        })
        .await?;
        rows.first().map(execution).transpose()
    }
}

/// Runs `call`, and once more if the connection closed under it (the server
/// restarted, say): on a fresh connection it may well succeed. Every call
/// sent this way may be sent twice: each statement is written so that the
/// second changes nothing the first did.
async fn once_more<T, F: Future<Output = Result<T, StoreError>>>(call: impl Fn(()) -> F) -> Result<T, StoreError> {
    match call(()).await {
        Err(error) if error.connection_closed() => {
            tracing::debug!(%error, "the database connection closed under a statement: sending it again");
            call(()).await
        }
        answered => answered,
    }
}

/// Renews what the instance holds every few seconds, and writes the endings
/// that could not be written, until the store is dropped.
async fn keep_alive(leases: Arc<Leases>, store: Weak<Shared>) {
    let (mut next_renewal, mut failing) = (Instant::now() + RENEW_EVERY, false);
    loop {
        if !leases.has_work() {
            if !leases.wait_for_work().await {
                return;
            }
            next_renewal = Instant::now() + RENEW_EVERY;
        }
        let pause =
            if leases.has_pending() { RETRY_EVERY } else { next_renewal.saturating_duration_since(Instant::now()) };
        tokio::time::sleep(pause.min(RENEW_EVERY)).await;
        let Some(shared) = store.upgrade() else { return };
        let store_now = PostgresStore { shared };
        let mut round = store_now.shared.leases.round();
        if Instant::now() < next_renewal {
            round.task_ids.clear();
            round.fences.clear();
        }
        let renewing = round.task_ids.len();
        match store_now.renew(round).await {
            Ok(()) if renewing > 0 => {
                if std::mem::take(&mut failing) {
                    tracing::info!(leases = renewing, "the leases of running tasks are renewed again");
                }
                next_renewal = Instant::now() + RENEW_EVERY;
            }
            Ok(()) => {}
            Err(error) => {
                // Once per outage, not once a second.
                if !std::mem::replace(&mut failing, true) {
                    tracing::warn!(%error, leases = renewing, "could not renew the leases of running tasks: trying again");
                }
                next_renewal = Instant::now() + RETRY_EVERY;
            }
        }
    }
}
