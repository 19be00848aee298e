//! `whirligig routes`: the registry as a table, with each route's resource
//! names under the configured environment and namespace.

use std::fmt::Write as _;

use whirligig_registry::{Naming, Registry, Route};

const HEADERS: [&str; 8] =
    ["NAME", "PATH", "TOPIC", "SUBSCRIPTION", "SCHEDULER JOB", "SCHEDULE", "ACK DEADLINE", "RETRY DELAYS"];

fn row(route: &Route, naming: &Naming) -> [String; 8] {
    let schedule = route.schedule().map_or_else(|| "-".to_owned(), |s| format!("{s} ({})", route.schedule_timezone()));
    [
        route.name().to_owned(),
        route.path().to_owned(),
        route.topic_name(naming),
        route.subscription_name(naming),
        route.scheduler_job_name(naming).unwrap_or_else(|| "-".to_owned()),
        schedule,
        format!("{}s", route.ack_deadline().as_secs()),
        format!("{}s..{}s", route.min_retry_delay().as_secs(), route.max_retry_delay().as_secs()),
    ]
}

/// One line per route, columns aligned.
pub(crate) fn table(registry: &Registry, naming: &Naming) -> String {
    let rows: Vec<[String; 8]> = registry.routes().map(|route| row(route, naming)).collect();
    let mut widths = HEADERS.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let mut out = String::new();
    let headers = HEADERS.map(str::to_owned);
    for row in std::iter::once(&headers).chain(&rows) {
        let cells: Vec<String> = row.iter().zip(widths).map(|(cell, width)| format!("{cell:width$}")).collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    out
}
