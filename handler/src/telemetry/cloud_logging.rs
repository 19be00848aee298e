//! Log lines for Cloud Logging: one JSON object per event, with `severity`,
//! `message` and `time` where Cloud Logging looks for them, the fields of the
//! event and of the spans it happened in, and the trace it belongs to as
//! `logging.googleapis.com/trace`, `…/spanId` and `…/trace_sampled`, so the
//! Logs Explorer shows each line under its trace and its request. String
//! values are capped (see [`MAX_VALUE_BYTES`](super::value::MAX_VALUE_BYTES))
//! so a line stays under Cloud Logging's entry limit.

use std::io::Write as _;
use std::sync::OnceLock;

use chrono::{SecondsFormat, Utc};
use opentelemetry::trace::{SpanContext, TraceContextExt as _};
use serde::Serialize;
use serde_json::Value;
use tracing::dispatcher::WeakDispatch;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Dispatch, Event, Level, Subscriber};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;

use super::ids::Ids;
use super::value::{capped, capped_str};

/// The JSON log layer; see the module documentation.
pub struct CloudLogging<W> {
    writer: W,
    project_id: Option<String>,
    dispatch: OnceLock<WeakDispatch>,
}

impl<W> std::fmt::Debug for CloudLogging<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CloudLogging").field("project_id", &self.project_id).finish_non_exhaustive()
    }
}

impl<W> CloudLogging<W>
where
    W: for<'writer> MakeWriter<'writer> + 'static,
{
    /// Lines go to `writer`; trace ids name traces of `project_id`'s Cloud
    /// Trace (without a project, the trace field is left out).
    pub fn new(writer: W, project_id: Option<String>) -> Self {
        Self { writer, project_id, dispatch: OnceLock::new() }
    }
}

/// A span's fields, kept in its extensions until it closes.
#[derive(Debug, Default)]
struct Fields(Vec<(&'static str, Value)>);

impl Fields {
    /// Sets a field, replacing an earlier value of the same name.
    fn set(&mut self, name: &'static str, value: Value) {
        match self.0.iter_mut().find(|(existing, _)| *existing == name) {
            Some((_, slot)) => *slot = value,
            None => self.0.push((name, value)),
        }
    }
}

/// Collects fields; `message` goes aside, `otel.*` (exporter settings) is dropped.
struct Collect<'a> {
    fields: &'a mut Fields,
    message: Option<String>,
}

impl Collect<'_> {
    fn put(&mut self, field: &Field, value: Value) {
        match field.name() {
            "message" => self.message = Some(value.as_str().map_or_else(|| value.to_string(), str::to_owned)),
            name if name.starts_with("otel.") => {}
            name => self.fields.set(name, value),
        }
    }
}

impl Visit for Collect<'_> {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.put(field, Value::from(capped_str(value)));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.put(field, Value::from(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.put(field, Value::from(value));
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.put(field, Value::from(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.put(field, Value::from(value));
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        self.put(field, Value::from(capped(format_args!("{value}"))));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.put(field, Value::from(capped(format_args!("{value:?}"))));
    }
}

/// Cloud Logging's names for tracing's levels.
fn severity(level: Level) -> &'static str {
    match level {
        Level::ERROR => "ERROR",
        Level::WARN => "WARNING",
        Level::INFO => "INFO",
        Level::DEBUG | Level::TRACE => "DEBUG",
    }
}

impl<S, W> tracing_subscriber::Layer<S> for CloudLogging<W>
where
    S: Subscriber + for<'span> LookupSpan<'span>,
    W: for<'writer> MakeWriter<'writer> + 'static,
{
    fn on_register_dispatch(&self, dispatch: &Dispatch) {
        let _ = self.dispatch.set(dispatch.downgrade());
    }

    fn on_new_span(&self, attributes: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let mut fields = Fields::default();
        attributes.record(&mut Collect { fields: &mut fields, message: None });
        span.extensions_mut().insert(fields);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        if let Some(fields) = span.extensions_mut().get_mut::<Fields>() {
            values.record(&mut Collect { fields, message: None });
        }
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        let mut own = Fields::default();
        let mut collect = Collect { fields: &mut own, message: None };
        event.record(&mut collect);
        // The SDK's own events have a name and no message.
        let message = collect.message.take().unwrap_or_else(|| event.metadata().name().to_owned());
        let metadata = event.metadata();
        let mut line = Line(Vec::with_capacity(256));
        line.0.push(b'{');
        line.entry("severity", severity(*metadata.level()));
        line.entry("message", &message);
        line.entry("time", &Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true));
        line.entry("target", metadata.target());
        let spans: Vec<_> = ctx.event_scope(event).into_iter().flat_map(|scope| scope.from_root()).collect();
        {
            let extensions: Vec<_> = spans.iter().map(|span| span.extensions()).collect();
            let of_spans = extensions.iter().filter_map(|extensions| extensions.get::<Fields>());
            for (name, value) in merged(of_spans.chain([&own])) {
                line.entry(name, value);
            }
        }
        // The innermost span that is traced (a debug span, say, is not).
        let _ = spans.iter().rev().any(|span| {
            if let Some(ids) = span.extensions().get::<Ids>() {
                return self.trace_fields(&ids.0, &mut line);
            }
            // The guard is dropped: the OpenTelemetry layer reads the extensions itself.
            self.otel_trace_fields(&span.id(), &mut line)
        });
        line.0.extend_from_slice(b"}\n");
        let _ = self.writer.make_writer().write_all(&line.0);
    }
}

/// The fields of an event's spans, outermost first, then its own: a name
/// appears once, where it first did, with the innermost value (the event's
/// own wins).
fn merged<'a>(fields: impl Iterator<Item = &'a Fields>) -> Vec<(&'static str, &'a Value)> {
    let mut merged: Vec<(&'static str, &'a Value)> = Vec::new();
    for (name, value) in fields.flat_map(|fields| &fields.0) {
        match merged.iter_mut().find(|(existing, _)| existing == name) {
            Some((_, slot)) => *slot = value,
            None => merged.push((name, value)),
        }
    }
    merged
}

impl<W> CloudLogging<W> {
    /// Writes the trace and span of the OpenTelemetry span behind `span`,
    /// if it has one.
    fn otel_trace_fields(&self, span: &Id, line: &mut Line) -> bool {
        let Some(dispatch) = self.dispatch.get().and_then(WeakDispatch::upgrade) else { return false };
        let Some(context) = tracing_opentelemetry::get_otel_context(span, &dispatch) else { return false };
        self.trace_fields(context.span().span_context(), line)
    }

    /// Writes a span's trace and id, if they are valid.
    fn trace_fields(&self, span_context: &SpanContext, line: &mut Line) -> bool {
        if !span_context.is_valid() {
            return false;
        }
        if let Some(project) = &self.project_id {
            let trace = format!("projects/{project}/traces/{}", span_context.trace_id());
            line.entry("logging.googleapis.com/trace", &trace);
        }
        line.entry("logging.googleapis.com/spanId", &span_context.span_id().to_string());
        line.entry("logging.googleapis.com/trace_sampled", &span_context.is_sampled());
        true
    }
}

/// A JSON object being written, one entry at a time.
struct Line(Vec<u8>);

impl Line {
    fn entry(&mut self, key: &str, value: &(impl Serialize + ?Sized)) {
        if self.0.len() > 1 {
            self.0.push(b',');
        }
        // Writing to a Vec cannot fail, and these values always serialise.
        let _ = serde_json::to_writer(&mut self.0, key);
        self.0.push(b':');
        let _ = serde_json::to_writer(&mut self.0, value);
    }
}

#[cfg(test)]
mod tests {

    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;
    use crate::telemetry::Written;
    use crate::telemetry::value::MAX_VALUE_BYTES;

    fn line_of(log: impl FnOnce()) -> Value {
        let written = Written::default();
        let sink = written.clone();
        let layer = CloudLogging::new(move || sink.clone(), None);
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), log);
        serde_json::from_slice(&written.0.lock().unwrap()).unwrap()
    }

    #[test]
    fn a_field_named_by_several_spans_takes_the_innermost_value_and_the_events_own_wins() {
        let entry = line_of(|| {
            let outer = tracing::info_span!("request", who = "outer", outer_only = 1, both = "outer");
            let inner = outer.in_scope(|| tracing::info_span!("task", who = "inner", both = "inner"));
            inner.in_scope(|| tracing::warn!(both = "event", "done"));
        });
        assert_eq!(entry["who"], "inner");
        assert_eq!(entry["outer_only"], 1);
        assert_eq!(entry["both"], "event");
        assert_eq!(entry["message"], "done");
    }

    #[test]
    fn long_values_are_capped_so_a_line_fits_an_entry() {
        let written = Written::default();
        let sink = written.clone();
        let layer = CloudLogging::new(move || sink.clone(), None);
        let huge = "n".repeat(1024 * 1024);
        tracing::subscriber::with_default(tracing_subscriber::registry().with(layer), || {
            let span = tracing::info_span!("request", detail = %huge);
            span.in_scope(|| tracing::warn!(task_name = huge.as_str(), error = ?huge, "unknown task {huge}"));
        });
        let line = String::from_utf8(written.0.lock().unwrap().clone()).unwrap();
        assert!(line.len() < 5 * MAX_VALUE_BYTES, "{} bytes", line.len());
        let entry: Value = serde_json::from_str(&line).unwrap();
        let cut = format!("…[{} bytes cut]", huge.len() - MAX_VALUE_BYTES);
        for key in ["task_name", "detail"] {
            assert_eq!(entry[key].as_str().unwrap(), format!("{}{cut}", &huge[..MAX_VALUE_BYTES]), "{key}");
        }
        let error = entry["error"].as_str().unwrap();
        assert!(error.starts_with("\"nnn") && error.ends_with(" bytes cut]"), "the Debug form, capped");
        assert!(entry["message"].as_str().unwrap().ends_with(" bytes cut]"));
    }
}
