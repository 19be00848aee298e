//! The PostgreSQL store: a bb8 pool of connections, each with the store's
//! statements prepared once when it connects, so a batch of claims or of
//! finishes ([`batches`]) is one round trip. Also the embedded migrations,
//! applied under an advisory lock.
//! Pool exhaustion, refusal and unreachability are told apart here, as
//! [`StoreError`] variants; what they answer is for `push` to say.

mod batches;

use std::error::Error as _;
use std::future::Future;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bb8::{ErrorSink, ManageConnection, Pool, PooledConnection, RunError};
use chrono::{DateTime, Utc};
use serde_json::Value;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Json;
use tokio_postgres::{Client, Config, NoTls, Statement};
use tracing::field::Empty;
use tracing::{Instrument as _, Span};

use self::batches::{CLAIMS, ClaimRow, FINISHES, FinishRow, claim_batch, finish_batch};
use super::batch::Queue;
use super::{Claim, ClaimRequest, Ending, Execution, ExecutionStore, Finished, Status, StoreError};

/// Connections claims and tasks can never take all of, so a busy pool cannot
/// starve a finish. Finishes may use any idle connection of the pool.
const FINISH_RESERVE: u32 = 2;

/// How long a finish waits for a connection. Below the smallest
/// margin between a route's timeout and its lease (5 s), so a finish either
/// lands before another delivery may take the execution over, or gives up.
const FINISH_WAIT: Duration = Duration::from_secs(4);

/// Opening a connection (TCP, startup, the prepares) never takes longer than
/// this; a server that accepts and then says nothing must not hold a slot.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection whose peer stops acknowledging is dropped after this.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(15);

const ABANDON: &str = r"
update task_executions
set status = 'FAILED', error_message = $3, finished_at = now(), updated_at = now()
where task_id = $1 and attempts = $2 and status = 'RUNNING'";

const SKIP: &str = r"
insert into task_executions as t
    (task_id, task_name, status, args, kwargs, message_id, enqueued_at, error_message, finished_at)
values ($1, $2, 'FAILED', $3, $4, $5, $6, $7, now())
on conflict (task_id) do update
set status = 'FAILED', error_message = excluded.error_message, error_traceback = null,
    finished_at = now(), updated_at = now()
where t.status in ('READY', 'FAILED') and not t.permanent";

const GET: &str = r"
select task_id, task_name, status, args, kwargs, return_value, error_message, error_traceback,
       attempts, permanent, message_id, enqueued_at, started_at, finished_at
from task_executions
where task_id = $1";

/// The claim and finish statements, for the database's ceiling in benchmarks.
#[cfg(feature = "bench")]
pub(crate) fn claim_and_finish() -> (&'static str, &'static str) {
    (CLAIMS, FINISHES)
}

/// The migrations, in order; each is applied once and recorded.
const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "task_executions", include_str!("../../../migrations/0001_task_executions.sql")),
    (2, "permanent_failures", include_str!("../../../migrations/0002_permanent_failures.sql")),
];

/// Any constant works, as long as every instance agrees on it.
const MIGRATION_LOCK: i64 = 0x7768_6972_6c69_6767; // "whirligg"

/// A pooled connection with the store's statements prepared on it.
#[derive(Debug)]
pub struct PgConnection {
    client: Client,
    claims: Statement,
    finishes: Statement,
    abandon: Statement,
    skip: Statement,
    get: Statement,
}

impl std::ops::Deref for PgConnection {
    type Target = Client;

    fn deref(&self) -> &Client {
        &self.client
    }
}

/// Why a new connection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The driver or the server said no.
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    /// The server did not finish the handshake in time.
    #[error("no answer from the database within {0:?}")]
    TimedOut(Duration),
}

/// Connects and prepares; bb8 calls it for each new pooled connection.
#[derive(Debug)]
pub struct Connector {
    config: Config,
}

impl ManageConnection for Connector {
    type Connection = PgConnection;
    type Error = ConnectError;

    async fn connect(&self) -> Result<PgConnection, ConnectError> {
        let connecting = async {
            let client = connect(&self.config).await?;
            // Issued together, the prepares share one round trip.
            let (claims, finishes, abandon, skip, get) = tokio::try_join!(
                client.prepare(CLAIMS),
                client.prepare(FINISHES),
                client.prepare(ABANDON),
                client.prepare(SKIP),
                client.prepare(GET),
            )?;
            Ok(PgConnection { client, claims, finishes, abandon, skip, get })
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connecting).await.unwrap_or(Err(ConnectError::TimedOut(CONNECT_TIMEOUT)))
    }

    async fn is_valid(&self, connection: &mut PgConnection) -> Result<(), ConnectError> {
        Ok(connection.client.simple_query("").await.map(drop)?)
    }

    fn has_broken(&self, connection: &mut PgConnection) -> bool {
        connection.client.is_closed()
    }
}

async fn connect(config: &Config) -> Result<Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::warn!(%error, "database connection closed");
        }
    });
    Ok(client)
}

/// The last connection failure bb8 reported, so a pool timeout with no
/// connection open can say why.
#[derive(Debug, Clone, Default)]
struct LastConnectFailure(Arc<Mutex<Option<(Instant, StoreError)>>>);

impl ErrorSink<ConnectError> for LastConnectFailure {
    fn sink(&self, error: ConnectError) {
        let failure = classify_connect(error);
        *self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some((Instant::now(), failure));
    }

    fn boxed_clone(&self) -> Box<dyn ErrorSink<ConnectError>> {
        Box::new(self.clone())
    }
}

impl LastConnectFailure {
    fn since(&self, start: Instant) -> Option<StoreError> {
        let last = self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        last.as_ref().filter(|(at, _)| *at >= start).map(|(_, failure)| failure.clone())
    }
}

fn classify_connect(error: ConnectError) -> StoreError {
    match error {
        ConnectError::Postgres(error) => classify(error),
        ConnectError::TimedOut(_) => StoreError::Unavailable(error.to_string()),
    }
}

/// Sorts a driver error into what the caller should do about it.
fn classify(error: tokio_postgres::Error) -> StoreError {
    if let Some(db) = error.as_db_error() {
        let code = db.code();
        return if *code == SqlState::TOO_MANY_CONNECTIONS || *code == SqlState::CANNOT_CONNECT_NOW {
            StoreError::Refused(format!("{} ({})", db.message(), code.code()))
        } else if code.code().starts_with("22") {
            StoreError::Rejected(db.message().to_owned())
        } else {
            StoreError::Database(format!("{} ({})", db.message(), code.code()))
        };
    }
    // The driver's own message ("error connecting to server") leaves the
    // reason in the source; a log line needs both.
    let message = match error.source() {
        Some(source) => format!("{error}: {source}"),
        None => error.to_string(),
    };
    let io = error.source().is_some_and(|source| source.is::<std::io::Error>());
    if io || error.is_closed() { StoreError::Unavailable(message) } else { StoreError::Database(message) }
}

/// Executions in PostgreSQL, through a bb8 pool shared with the tasks. Claims
/// and tasks hold a place among `size` while they use a connection; the pool
/// has [`FINISH_RESERVE`] more, so finishes always find one, and use any that
/// is idle.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pool: Pool<Connector>,
    places: Arc<Semaphore>,
    pool_timeout: Duration,
    failures: LastConnectFailure,
    peer: Arc<Peer>,
    batches: Arc<Batches>,
}

/// Claims and finishes waiting to share a statement (see `batch`).
#[derive(Debug, Default)]
struct Batches {
    claims: Queue<ClaimRow, Claim>,
    finishes: Queue<FinishRow, Finished>,
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

/// A pooled connection for a task (or a claim); dropped, it goes back to the
/// pool and gives up its place among the claims'.
#[derive(Debug)]
pub struct DbConnection {
    connection: PooledConnection<'static, Connector>,
    _place: OwnedSemaphorePermit,
}

impl std::ops::Deref for DbConnection {
    type Target = PgConnection;

    fn deref(&self) -> &PgConnection {
        &self.connection
    }
}

impl PostgresStore {
    /// A pool of `size` connections to `url` for claims and tasks, each waiting
    /// at most `pool_timeout`, plus [`FINISH_RESERVE`] that only finishes can
    /// count on. Connections open in the background: nothing here waits for
    /// the server.
    pub fn new(url: &str, size: u32, pool_timeout: Duration) -> Result<Self, StoreError> {
        let mut config = parse_url(url)?;
        config.connect_timeout(CONNECT_TIMEOUT).tcp_user_timeout(TCP_USER_TIMEOUT);
        let failures = LastConnectFailure::default();
        let peer = Arc::new(Peer::of(&config));
        let pool = Pool::builder()
            .max_size(size + FINISH_RESERVE)
            .min_idle(Some(1 + FINISH_RESERVE))
            // A finish's wait; claims and tasks wait `pool_timeout` in all.
            .connection_timeout(FINISH_WAIT)
            .retry_connection(false)
            .test_on_check_out(false)
            .error_sink(Box::new(failures.clone()))
            .build_unchecked(Connector { config });
        let places = Arc::new(Semaphore::new(usize::try_from(size).unwrap_or(usize::MAX)));
        Ok(Self { pool, places, pool_timeout, failures, peer, batches: Arc::default() })
    }

    /// A connection within the pool timeout, or why there is none.
    pub async fn connection(&self) -> Result<DbConnection, StoreError> {
        self.connection_until(Instant::now() + self.pool_timeout).await
    }

    async fn connection_until(&self, deadline: Instant) -> Result<DbConnection, StoreError> {
        let start = Instant::now();
        let busy = StoreError::PoolTimeout(self.pool_timeout);
        let waiting = tokio::time::timeout_at(deadline.into(), Arc::clone(&self.places).acquire_owned());
        // The semaphore is never closed.
        let place = waiting.await.map_err(|_| busy.clone())?.map_err(|_| busy)?;
        match tokio::time::timeout_at(deadline.into(), self.pool.get_owned()).await {
            Ok(Ok(connection)) => Ok(DbConnection { connection, _place: place }),
            Ok(Err(RunError::User(error))) => Err(classify_connect(error)),
            Ok(Err(RunError::TimedOut)) | Err(_) => Err(self.why_none(start)),
        }
    }

    /// With connections open, a timeout means they were all busy; with none,
    /// the database would not give one.
    fn why_none(&self, start: Instant) -> StoreError {
        if self.pool.state().connections > 0 {
            return StoreError::PoolTimeout(self.pool_timeout);
        }
        self.failures.since(start).unwrap_or_else(|| {
            StoreError::Unavailable(format!("no connection could be opened within {:?}", self.pool_timeout))
        })
    }

    /// A connection for a finish by `deadline`: any idle one, and never
    /// fewer than [`FINISH_RESERVE`] to wait for.
    async fn finish_connection_until(
        &self,
        deadline: Instant,
    ) -> Result<PooledConnection<'static, Connector>, StoreError> {
        let start = Instant::now();
        let timed_out = || self.failures.since(start).unwrap_or(StoreError::PoolTimeout(FINISH_WAIT));
        match tokio::time::timeout_at(deadline.into(), self.pool.get_owned()).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(RunError::User(error))) => Err(classify_connect(error)),
            Ok(Err(RunError::TimedOut)) | Err(_) => Err(timed_out()),
        }
    }
}

fn parse_url(url: &str) -> Result<Config, StoreError> {
    // The URL may hold a password: never repeat it in the error.
    Config::from_str(url).map_err(|_| StoreError::Database("DATABASE_URL is not a valid PostgreSQL URL".into()))
}

/// `attempts` is never negative: the column starts at 0 and only grows.
fn attempts(value: i32) -> u32 {
    u32::try_from(value).unwrap_or(0)
}

/// PostgreSQL text cannot hold NUL: an error message that has one is still recorded.
fn storable(text: &str) -> String {
    text.replace('\0', "\\0")
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
        let connect = |deadline| self.connection_until(deadline);
        self.batches.claims.submit(ClaimRow::of(request), self.pool_timeout, connect, claim_batch).await
    }

    async fn finish_row(&self, task_id: &str, attempt: u32, ending: Ending<'_>) -> Result<Finished, StoreError> {
        let row = FinishRow::of(task_id, attempt, ending);
        let connect = |deadline| self.finish_connection_until(deadline);
        self.batches.finishes.submit(row, FINISH_WAIT, connect, finish_batch).await
    }

    async fn skip_row(&self, request: &ClaimRequest<'_>, reason: &str) -> Result<(), StoreError> {
        let connection = self.connection().await?;
        connection
            .execute(
                &connection.skip,
                &[
                    &request.task_id,
                    &request.task_name,
                    &Json(request.args),
                    &Json(request.kwargs),
                    &request.message_id,
                    &request.enqueued_at,
                    &reason,
                ],
            )
            .await
            .map_err(classify)?;
        Ok(())
    }

    async fn get_row(&self, task_id: &str) -> Result<Option<Execution>, StoreError> {
        let connection = self.connection().await?;
        let rows = connection.query(&connection.get, &[&task_id]).await.map_err(classify)?;
        rows.first().map(execution).transpose()
    }
}

fn execution(row: &tokio_postgres::Row) -> Result<Execution, StoreError> {
    let status: &str = row.get(2);
    let corrupt = |what: &str| StoreError::Database(format!("task_executions row has {what}"));
    Ok(Execution {
        task_id: row.get(0),
        task_name: row.get(1),
        status: Status::parse(status).ok_or_else(|| corrupt(&format!("an unknown status {status:?}")))?,
        args: row.get::<_, Json<Value>>(3).0,
        kwargs: row.get::<_, Json<Value>>(4).0,
        return_value: row.get::<_, Option<Json<Value>>>(5).map(|json| json.0),
        error_message: row.get(6),
        error_traceback: row.get(7),
        attempts: u32::try_from(row.get::<_, i32>(8)).map_err(|_| corrupt("negative attempts"))?,
        permanent: row.get(9),
        message_id: row.get(10),
        enqueued_at: row.get::<_, Option<DateTime<Utc>>>(11),
        started_at: row.get(12),
        finished_at: row.get(13),
    })
}

/// Applies every migration not yet recorded, in order, in one transaction
/// under an advisory lock, so instances starting together take turns.
/// Returns the versions it applied.
pub async fn migrate(url: &str) -> Result<Vec<i32>, StoreError> {
    let mut config = parse_url(url)?;
    config.connect_timeout(CONNECT_TIMEOUT).tcp_user_timeout(TCP_USER_TIMEOUT);
    let mut client = connect(&config).await.map_err(classify)?;
    let transaction = client.transaction().await.map_err(classify)?;
    transaction.execute("select pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK]).await.map_err(classify)?;
    transaction
        .batch_execute(
            "create table if not exists whirligig_migrations (
                version integer primary key,
                name text not null,
                applied_at timestamptz not null default now()
            )",
        )
        .await
        .map_err(classify)?;
    let rows = transaction.query("select version from whirligig_migrations", &[]).await.map_err(classify)?;
    let done: Vec<i32> = rows.iter().map(|row| row.get(0)).collect();
    let mut applied = Vec::new();
    for &(version, name, sql) in MIGRATIONS.iter().filter(|(version, ..)| !done.contains(version)) {
        transaction.batch_execute(sql).await.map_err(classify)?;
        transaction
            .execute("insert into whirligig_migrations (version, name) values ($1, $2)", &[&version, &name])
            .await
            .map_err(classify)?;
        applied.push(version);
    }
    transaction.commit().await.map_err(classify)?;
    Ok(applied)
}
