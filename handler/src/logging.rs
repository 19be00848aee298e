//! Log output: `tracing` events as compact lines on stderr, filtered by
//! `RUST_LOG` (default `info`). A panic is one log line, not a backtrace dump:
//! the executor catches task panics and the process keeps serving.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// Installs the subscriber once; a second call does nothing.
pub(crate) fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only for a person at a terminal: Cloud Logging would keep the escape codes.
    let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let installed = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .compact()
        .try_init();
    if installed.is_ok() {
        std::panic::set_hook(Box::new(|info| tracing::error!(%info, "panic")));
    }
}
