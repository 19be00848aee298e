//! Driver errors sorted into what the caller should do about them: pool
//! exhaustion, refusal, unreachability, data the database rejects, and
//! everything else, as [`StoreError`] variants. What they answer is for the
//! caller to say.

use std::error::Error as _;

use tokio_postgres::error::SqlState;

use super::pool::ConnectError;
use crate::store::StoreError;

/// Why a new connection could not be opened, as the store says it.
pub(super) fn classify_connect(error: ConnectError) -> StoreError {
    match error {
        ConnectError::Postgres(error) => classify(error),
        ConnectError::TimedOut(_) => StoreError::Unavailable(error.to_string()),
    }
}

/// Sorts a driver error into what the caller should do about it.
pub(super) fn classify(error: tokio_postgres::Error) -> StoreError {
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
