//! The connections: a bb8 pool whose connections have the store's statements
//! prepared, and the back-pressure around it. Claims and tasks hold one of
//! `size` places while they use a connection and wait at most the pool
//! timeout for one; the pool has [`FINISH_RESERVE`] connections more, so a
//! finish always finds one. When none comes, the error says why: busy, or a
//! database that would not give one.

use std::future::Future;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bb8::{ErrorSink, ManageConnection, PooledConnection, RunError};
use futures_util::FutureExt as _;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::{Client, Config, NoTls};

use super::errors::{classify, classify_connect};
use super::statements::Prepared;
use crate::store::StoreError;

/// Connections claims and tasks can never take all of, so a busy pool cannot
/// starve a finish. Finishes may use any idle connection of the pool.
const FINISH_RESERVE: u32 = 2;

/// How long a finish waits for a connection. Below the smallest
/// margin between a route's timeout and its lease (5 s), so a finish either
/// lands before another delivery may take the execution over, or gives up.
pub(super) const FINISH_WAIT: Duration = Duration::from_secs(4);

/// Opening a connection (TCP, startup, the prepares) never takes longer than
/// this; a server that accepts and then says nothing must not hold a slot.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection whose peer stops acknowledging is dropped after this.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(15);

/// The longest any statement of the store may take, well inside the
/// smallest ack deadline (10 s): a database that stalls fails the push in
/// time for Pub/Sub to retry it, rather than holding it to its deadline.
pub(super) const STATEMENT_DEADLINE: Duration = Duration::from_secs(5);

/// A pooled connection with the store's statements prepared on it.
#[derive(Debug)]
pub struct PgConnection {
    client: Client,
    pub(super) statements: Prepared,
    /// A statement outlived its deadline: what the connection would answer
    /// next is that statement's, so it is never handed out again.
    broken: AtomicBool,
}

impl PgConnection {
    /// Runs one of the store's statements within [`STATEMENT_DEADLINE`].
    /// Past it, the connection is given up and the statement counts as not
    /// answered: the caller cannot know whether it was applied. A combinator,
    /// so the statement's future is held once (see `traced`).
    pub(super) fn within<T>(
        &self,
        statement: impl Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> impl Future<Output = Result<T, StoreError>> {
        tokio::time::timeout(STATEMENT_DEADLINE, statement).map(|answered| match answered {
            Ok(answered) => answered.map_err(classify),
            Err(_) => {
                self.broken.store(true, Ordering::Relaxed);
                let reason = format!("no answer from the database within {STATEMENT_DEADLINE:?}");
                Err(StoreError::Unavailable { reason, source: None })
            }
        })
    }

    /// Closed by the server or the network, or given up after a deadline.
    fn is_broken(&self) -> bool {
        self.client.is_closed() || self.broken.load(Ordering::Relaxed)
    }
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
            let statements = Prepared::on(&client).await?;
            Ok(PgConnection { client, statements, broken: AtomicBool::new(false) })
        };
        tokio::time::timeout(CONNECT_TIMEOUT, connecting).await.unwrap_or(Err(ConnectError::TimedOut(CONNECT_TIMEOUT)))
    }

    async fn is_valid(&self, connection: &mut PgConnection) -> Result<(), ConnectError> {
        Ok(connection.client.simple_query("").await.map(drop)?)
    }

    fn has_broken(&self, connection: &mut PgConnection) -> bool {
        connection.is_broken()
    }
}

/// The URL as the driver's configuration, with the store's timeouts.
pub(super) fn parse_url(url: &str) -> Result<Config, StoreError> {
    // The URL may hold a password: never repeat it in the error.
    let mut config =
        Config::from_str(url).map_err(|_| StoreError::database("DATABASE_URL is not a valid PostgreSQL URL"))?;
    config.connect_timeout(CONNECT_TIMEOUT).tcp_user_timeout(TCP_USER_TIMEOUT);
    Ok(config)
}

/// A client whose connection runs on a task of its own.
pub(super) async fn connect(config: &Config) -> Result<Client, tokio_postgres::Error> {
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

/// A connection for a finish, which holds no place.
pub(super) type FinishConnection = PooledConnection<'static, Connector>;

/// The pool and the places claims and tasks take in it.
#[derive(Debug, Clone)]
pub(super) struct Pool {
    pool: bb8::Pool<Connector>,
    places: Arc<Semaphore>,
    pub(super) timeout: Duration,
    failures: LastConnectFailure,
}

impl Pool {
    /// `size` places for claims and tasks, each waiting at most `timeout`.
    /// Connections open in the background: nothing here waits for the server.
    pub(super) fn new(config: Config, size: u32, timeout: Duration) -> Self {
        let failures = LastConnectFailure::default();
        let pool = bb8::Pool::builder()
            .max_size(size + FINISH_RESERVE)
            .min_idle(Some(1 + FINISH_RESERVE))
            // A finish's wait; claims and tasks wait `timeout` in all.
            .connection_timeout(FINISH_WAIT)
            .retry_connection(false)
            .test_on_check_out(false)
            .error_sink(Box::new(failures.clone()))
            .build_unchecked(Connector { config });
        let places = Arc::new(Semaphore::new(usize::try_from(size).unwrap_or(usize::MAX)));
        Self { pool, places, timeout, failures }
    }

    /// A place and a connection by `deadline`, or why there is none.
    pub(super) async fn connection_until(&self, deadline: Instant) -> Result<DbConnection, StoreError> {
        let start = Instant::now();
        let busy = StoreError::PoolTimeout(self.timeout);
        let waiting = tokio::time::timeout_at(deadline.into(), Arc::clone(&self.places).acquire_owned());
        // The semaphore is never closed.
        let place = waiting.await.map_err(|_| busy.clone())?.map_err(|_| busy)?;
        match tokio::time::timeout_at(deadline.into(), self.live_connection()).await {
            Ok(Ok(connection)) => Ok(DbConnection { connection, _place: place }),
            Ok(Err(RunError::User(error))) => Err(classify_connect(error)),
            Ok(Err(RunError::TimedOut)) | Err(_) => Err(self.why_none(start)),
        }
    }

    /// An idle connection that is not broken, or a new one. A connection the
    /// server closed while it sat idle (a restart) is discarded here, as bb8
    /// discards a broken one given back, rather than failing a statement.
    async fn live_connection(&self) -> Result<FinishConnection, RunError<ConnectError>> {
        loop {
            let connection = self.pool.get_owned().await?;
            if !connection.is_broken() {
                return Ok(connection);
            }
            // Given back broken: bb8 closes it and opens another in its place.
            drop(connection);
        }
    }

    /// With connections open, a timeout means they were all busy; with none,
    /// the database would not give one.
    fn why_none(&self, start: Instant) -> StoreError {
        if self.pool.state().connections > 0 {
            return StoreError::PoolTimeout(self.timeout);
        }
        self.failures.since(start).unwrap_or_else(|| {
            let reason = format!("no connection could be opened within {:?}", self.timeout);
            StoreError::Unavailable { reason, source: None }
        })
    }

    /// A connection for a finish by `deadline`: any idle one, and never
    /// fewer than [`FINISH_RESERVE`] to wait for.
    pub(super) async fn finish_connection_until(&self, deadline: Instant) -> Result<FinishConnection, StoreError> {
        let start = Instant::now();
        let timed_out = || self.failures.since(start).unwrap_or(StoreError::PoolTimeout(FINISH_WAIT));
        match tokio::time::timeout_at(deadline.into(), self.live_connection()).await {
            Ok(Ok(connection)) => Ok(connection),
            Ok(Err(RunError::User(error))) => Err(classify_connect(error)),
            Ok(Err(RunError::TimedOut)) | Err(_) => Err(timed_out()),
        }
    }
}
