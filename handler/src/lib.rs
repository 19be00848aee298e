//! The Cloud Run process of whirligig. A service's `main` builds its
//! [`Registry`] and hands it to [`main`], which parses the command line and
//! serves the Pub/Sub push endpoint, runs a task as a job, lists routes or
//! migrates the database.
//!
//! Requests flow one way: [`server`] (sockets) → `app` (routing, body limit, auth)
//! → `push` (envelope, status) → `executor` (store, timeout, panics) → the
//! task function from the registry. [`telemetry`] turns the spans along the
//! way into traces and log lines.

mod answer;
mod app;
mod auth;
#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod bench;
mod cli;
mod config;
mod context;
pub mod demo;
mod executor;
mod push;
pub mod server;
pub mod store;
pub mod telemetry;

use std::process::ExitCode;

use whirligig_registry::Registry;

pub use crate::app::{App, MAX_BODY_BYTES};
pub use crate::auth::{AuthSetupError, Clock, OidcSettings, PushAuth};
pub use crate::config::{AuthConfig, Config, ConfigError, DatabaseConfig, JobConfig, KillSwitches, Problem};
pub use crate::context::TaskContextExt;

/// The whole command line for a service's own binary:
/// `whirligig_handler::main(registry).await` from `#[tokio::main] async fn main`.
pub async fn main(registry: Registry) -> ExitCode {
    cli::run(registry).await
}
