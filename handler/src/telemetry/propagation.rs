//! Where a delivery's trace continues from. The message's own `traceparent`
//! attribute comes first: whoever enqueued put it there, so the trace runs
//! from the enqueue to the execution. Otherwise the push request's headers:
//! W3C `traceparent`, or Google's `X-Cloud-Trace-Context`, which Cloud Run
//! adds to the requests it serves.

use http::HeaderMap;
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::{OpenTelemetrySpanExt as _, SetParentError};

/// Google's trace header: `TRACE_ID/SPAN_ID;o=OPTIONS`, the span id in decimal.
pub(crate) const CLOUD_TRACE_HEADER: &str = "x-cloud-trace-context";

/// The context a W3C `traceparent` (with its `tracestate`) names, if valid.
pub(crate) fn from_traceparent(traceparent: &str, tracestate: Option<&str>) -> Option<Context> {
    let carrier = W3c { traceparent, tracestate };
    remote(TraceContextPropagator::new().extract(&carrier))
}

/// The context the push request's headers name, if any.
pub(crate) fn from_headers(headers: &HeaderMap) -> Option<Context> {
    let text = |name: &str| headers.get(name).and_then(|value| value.to_str().ok());
    if let Some(context) = text("traceparent").and_then(|traceparent| from_traceparent(traceparent, text("tracestate")))
    {
        return Some(context);
    }
    let span_context = from_cloud_trace(text(CLOUD_TRACE_HEADER)?)?;
    Some(Context::new().with_remote_span_context(span_context))
}

/// Makes `span`, not yet started, continue the trace the message names, or
/// else the caller's. When the message wins, the caller's span (Cloud Run's
/// request) is kept as a link, so neither trace loses the request.
pub(crate) fn continue_trace(span: &Span, message: Option<Context>, caller: Option<Context>) {
    // Each does nothing without its layer: the link and set_parent when no
    // span is exported, adopt when spans are exported or logs are text.
    let parent = match (message, caller) {
        (Some(message), Some(caller)) => {
            span.add_link(caller.span().span_context().clone());
            message
        }
        (Some(parent), None) | (None, Some(parent)) => parent,
        (None, None) => return,
    };
    #[cfg(feature = "server")]
    super::ids::adopt(span, parent.span().span_context());
    let adopted = span.set_parent(parent);
    // A started span is a bug here.
    debug_assert!(
        !matches!(adopted, Err(SetParentError::AlreadyStarted)),
        "the span started before its parent was set"
    );
}

/// The W3C `traceparent` and `tracestate` that continue `span`'s trace in a
/// message: the span's own context, or, when nothing gave it one, the
/// context the caller attached (a CLI's `TRACEPARENT`),
/// so the trace still runs through.
pub(crate) fn to_attributes(span: &Span) -> Vec<(&'static str, String)> {
    let mut context = context_of(span);
    if !context.span().span_context().is_valid() {
        context = Context::current();
    }
    let mut carrier = std::collections::HashMap::new();
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|name| carrier.remove(name).filter(|value| !value.is_empty()).map(|value| (name, value)))
        .collect()
}

/// `span`'s OpenTelemetry context: its OpenTelemetry span's, or, when no
/// span is exported, one holding the ids log lines name it by.
fn context_of(span: &Span) -> Context {
    unexported(span).unwrap_or_else(|| span.context())
}

/// `span`'s context when it has no OpenTelemetry span (none is exported) but
/// ids that log lines name it by; nothing makes such a context current, so
/// a task runs with it attached.
#[cfg(feature = "server")]
pub(crate) fn unexported(span: &Span) -> Option<Context> {
    super::ids::of(span).map(|ids| Context::new().with_remote_span_context(ids))
}

/// Without the server's subscriber, no span has such ids.
#[cfg(not(feature = "server"))]
pub(crate) fn unexported(_: &Span) -> Option<Context> {
    None
}

fn remote(context: Context) -> Option<Context> {
    context.span().span_context().is_valid().then_some(context)
}

/// Parses `X-Cloud-Trace-Context`. `o=1` means the caller sampled the trace;
/// any other option, or none, means it did not.
fn from_cloud_trace(value: &str) -> Option<SpanContext> {
    let (ids, options) = value.split_once(';').unwrap_or((value, ""));
    let (trace_id, span_id) = ids.split_once('/')?;
    if trace_id.len() != 32 || !trace_id.bytes().all(|byte| byte.is_ascii_hexdigit()) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let span_id = SpanId::from_bytes(span_id.trim().parse::<u64>().ok()?.to_be_bytes());
    let flags = if options.trim() == "o=1" { TraceFlags::SAMPLED } else { TraceFlags::default() };
    let span_context = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
    span_context.is_valid().then_some(span_context)
}

/// A carrier holding just the two W3C fields.
struct W3c<'a> {
    traceparent: &'a str,
    tracestate: Option<&'a str>,
}

impl Extractor for W3c<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            "traceparent" => Some(self.traceparent),
            "tracestate" => self.tracestate,
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        ["traceparent", "tracestate"].into_iter().filter(|key| self.get(key).is_some()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span_context(context: &Context) -> SpanContext {
        context.span().span_context().clone()
    }

    #[test]
    fn a_traceparent_names_a_remote_parent() {
        let context =
            from_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", Some("congo=t61rcWkgMzE"))
                .unwrap();
        let parent = span_context(&context);
        assert_eq!(parent.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parent.span_id().to_string(), "00f067aa0ba902b7");
        assert!(parent.is_sampled() && parent.is_remote());
        assert_eq!(parent.trace_state().header(), "congo=t61rcWkgMzE");
    }

    #[test]
    fn an_attached_context_is_what_a_span_without_a_layer_passes_on() {
        assert!(to_attributes(&Span::none()).is_empty(), "no trace, no attributes");
        let parent = from_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", Some("k=v")).unwrap();
        let _attached = parent.attach();
        assert_eq!(
            to_attributes(&Span::none()),
            [
                ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()),
                ("tracestate", "k=v".to_owned())
            ]
        );
    }

    #[test]
    fn malformed_traceparents_are_ignored() {
        for bad in ["", "00-xyz-00f067aa0ba902b7-01", "00-00000000000000000000000000000000-00f067aa0ba902b7-01"] {
            assert!(from_traceparent(bad, None).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn the_cloud_trace_header_has_a_decimal_span_id_and_an_optional_sampled_flag() {
        let parent = from_cloud_trace("105445aa7843bc8bf206b12000100000/1;o=1").unwrap();
        assert_eq!(parent.trace_id().to_string(), "105445aa7843bc8bf206b12000100000");
        assert_eq!(parent.span_id().to_string(), "0000000000000001");
        assert!(parent.is_sampled());
        let unsampled = from_cloud_trace("105445aa7843bc8bf206b12000100000/18446744073709551615").unwrap();
        assert_eq!(unsampled.span_id().to_string(), "ffffffffffffffff");
        assert!(!unsampled.is_sampled());
        for bad in ["105445aa/1;o=1", "105445aa7843bc8bf206b12000100000", "105445aa7843bc8bf206b12000100000/x", ""] {
            assert!(from_cloud_trace(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn headers_prefer_traceparent_over_the_cloud_trace_header() {
        let mut headers = HeaderMap::new();
        headers.insert(CLOUD_TRACE_HEADER, "105445aa7843bc8bf206b12000100000/1;o=1".parse().unwrap());
        let cloud = span_context(&from_headers(&headers).unwrap());
        assert_eq!(cloud.trace_id().to_string(), "105445aa7843bc8bf206b12000100000");
        headers.insert("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00".parse().unwrap());
        let w3c = span_context(&from_headers(&headers).unwrap());
        assert_eq!(w3c.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(!w3c.is_sampled());
        assert!(from_headers(&HeaderMap::new()).is_none());
    }
}
