//! Driver errors sorted into what the caller should do about them: pool
//! exhaustion, refusal, unreachability, data the database rejects, and
//! everything else, as [`StoreError`] variants that keep the driver's error
//! as their source. What they answer is for the caller to say.

use std::error::Error as _;
use std::sync::Arc;

use tokio_postgres::error::SqlState;

use super::pool::ConnectError;
use crate::store::StoreError;

/// Why a new connection could not be opened, as the store says it.
pub(super) fn classify_connect(error: ConnectError) -> StoreError {
    match error {
        ConnectError::Postgres(error) => classify(error),
        ConnectError::TimedOut(_) => StoreError::Unavailable { reason: error.to_string(), source: None },
    }
}

/// Sorts a driver error into what the caller should do about it.
pub(super) fn classify(error: tokio_postgres::Error) -> StoreError {
    let Some(db) = error.as_db_error() else { return classify_transport(error) };
    let (code, message) = (db.code().clone(), db.message().to_owned());
    let source = Some(Arc::new(error));
    if code == SqlState::TOO_MANY_CONNECTIONS || code == SqlState::CANNOT_CONNECT_NOW {
        StoreError::Refused { reason: format!("{message} ({})", code.code()), source }
    } else if rejects_the_data(&code) {
        StoreError::Rejected { reason: message, source }
    } else {
        StoreError::Database { reason: format!("{message} ({})", code.code()), source }
    }
}

/// The data itself is at fault, and sending it again cannot help: class 22
/// (data exceptions, such as a NUL in jsonb) and class 54 (program limits: a
/// key over the index's row size, JSON nested past the stack depth).
pub(super) fn rejects_the_data(code: &SqlState) -> bool {
    code.code().starts_with("22") || code.code().starts_with("54")
}

/// An error the server did not send: the connection, or the driver itself.
fn classify_transport(error: tokio_postgres::Error) -> StoreError {
    // The driver's own message ("error connecting to server") leaves the
    // reason in the source; a log line needs both.
    let reason = match error.source() {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    };
    let io = error.source().is_some_and(|cause| cause.is::<std::io::Error>());
    let unavailable = io || error.is_closed();
    let source = Some(Arc::new(error));
    if unavailable { StoreError::Unavailable { reason, source } } else { StoreError::Database { reason, source } }
}
