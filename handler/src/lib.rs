//! The Cloud Run process of whirligig, and the side a service's own code
//! touches. A service's `main` builds its registry and hands it to `main`,
//! which parses the command line and serves the Pub/Sub push endpoint, runs a
//! task as a job, enqueues, lists routes or migrates the database (feature
//! `server`, the default). A web service enqueues through [`Tasks`] and reads
//! results back; with `default-features = false` that is all it links.
//!
//! An enqueue flows the other way:
//!
//! ```text
//! Tasks ──────────▶ registry ─────────▶ store ──────▶ google::pubsub ──▶ topic
//! typed or JSON     arguments checked    READY row     batched, retried
//!                   as the executor would              (or the executor, at once)
//! ```
//!
//! A push flows one way, each step in its own module:
//!
//! ```text
//! server ──▶ app ──────▶ auth ──▶ push ─────▶ executor ──────────▶ task function
//! sockets    pipeline    token    envelope    claim, run, finish    (registry)
//!                                             in the store
//!     ◀────── answer: a refusal's status, or the outcome's ◀──────
//! ```
//!
//! Provisioning (`whirligig provision`) reads the registry a third way:
//!
//! ```text
//! registry ──▶ desired ───────▶ plan ───────────────────────▶ apply ──────────▶ google
//!              resources wanted   diffed with what google lists  creates, patches,
//!                                 under the prefixes             deletes (--prune)
//! ```
//!
//! A job (`whirligig run`) enters at the executor. [`telemetry`] turns the
//! spans along the way into traces and log lines.

// Every status the endpoint answers: refusals and outcomes, on one screen.
#[cfg(feature = "server")]
mod answer;
// The HTTP application: routing, health checks, and the push pipeline.
#[cfg(feature = "server")]
mod app;
// Push token verification: OIDC against the issuer's cached keys.
#[cfg(feature = "server")]
mod auth;
// Entry points for the micro-benchmarks (feature `bench`); not an API.
#[cfg(feature = "bench")]
#[doc(hidden)]
pub mod bench;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
// The command line: serve, run (job mode), enqueue, result, provision, routes, migrate.
#[cfg(feature = "server")]
mod cli;
// Every environment variable, read once and checked together.
mod config;
// What a task reaches through its context: the store's pool.
mod context;
// The demo app's tasks: examples and load-test diagnostics.
#[cfg(feature = "server")]
pub mod demo;
// `whirligig dev`: the Pub/Sub emulator started and stopped, and dev cron.
#[cfg(feature = "server")]
mod dev;
// The push endpoint as a `tower::Service`, for a web app to nest (feature `tower`).
#[cfg(feature = "tower")]
mod embed;
// Claim, run (timeout, panics caught), finish: the one place a task runs.
mod executor;
// Google's APIs: credentials, error bodies, retries, and the Pub/Sub publisher.
mod google;
// Concurrent calls sharing one round trip: the store's statements, the publisher's requests.
mod group_commit;
// Topics, subscriptions, dead letters and scheduler jobs made to match the registry.
#[cfg(feature = "server")]
mod provision;
// The Pub/Sub push envelope and Eventarc's CloudEvents, decoded.
#[cfg(feature = "server")]
mod push;
// The accept loop: HTTP/1.1 and h2c, graceful shutdown.
#[cfg(feature = "server")]
pub mod server;
// Where executions live: PostgreSQL (group commit) or memory.
pub mod store;
// Enqueueing from the caller's side, and reading results back.
mod tasks;
// Traces over OTLP and log lines for Cloud Logging; trace context in messages.
pub mod telemetry;

#[cfg(feature = "server")]
use std::process::ExitCode;

#[cfg(feature = "server")]
use whirligig_registry::{Registry, RegistryError};

#[cfg(feature = "server")]
pub use crate::app::{App, MAX_BODY_BYTES};
#[cfg(feature = "server")]
pub use crate::auth::{AuthSetupError, Clock, OidcSettings, PushAuth};
#[cfg(feature = "server")]
pub use crate::cli::Binary;
#[cfg(feature = "server")]
pub use crate::config::{AuthConfig, ProvisionConfig};
pub use crate::config::{
    Backend, Config, ConfigError, DatabaseConfig, EnqueueConfig, JobConfig, KillSwitches, Needs, Problem,
};
#[cfg(feature = "postgres")]
pub use crate::context::TaskContextExt;
#[cfg(feature = "tower")]
pub use crate::embed::{PushService, PushServiceError};
pub use crate::google::credentials::CredentialSource;
pub use crate::google::pubsub::{MAX_MESSAGE_BYTES, PublishError};
pub use crate::google::{ApiError, Code};
pub use crate::tasks::{EnqueueError, Queued, Tasks};

/// The whole command line for a service's own binary, from
/// `#[tokio::main] async fn main`:
/// `whirligig_handler::main(my_service::registry(), whirligig_handler::binary!()).await`.
/// A registry that did not build is reported, with every route's problem, as
/// exit 2.
#[cfg(feature = "server")]
pub async fn main(registry: Result<Registry, RegistryError>, binary: Binary) -> ExitCode {
    cli::run(registry, binary).await
}

/// The calling binary's [`Binary`]: its name and its package's version, from
/// its own Cargo manifest.
#[cfg(feature = "server")]
#[macro_export]
macro_rules! binary {
    () => {
        $crate::Binary { name: ::core::env!("CARGO_BIN_NAME"), version: ::core::env!("CARGO_PKG_VERSION") }
    };
}
