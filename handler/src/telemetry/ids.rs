//! Trace and span ids when no span is exported (`OTEL_TRACES_EXPORTER=none`
//! with JSON logs), for log lines, enqueued messages' `traceparent` and a
//! task's OpenTelemetry context: each span the OpenTelemetry layer would
//! bridge gets the ids an OpenTelemetry span would have (its parent's trace or
//! a new one, the configured sampler's decision), and nothing else. Building,
//! activating and dropping OpenTelemetry spans that nothing exports took a
//! third of a push's instructions.

use opentelemetry::trace::{SpanContext, SpanId, SpanKind, TraceContextExt as _, TraceFlags, TraceState};
use opentelemetry_sdk::trace::{IdGenerator as _, RandomIdGenerator, Sampler, SamplingDecision, ShouldSample as _};
use tracing::span::{Attributes, Id};
use tracing::{Span, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::{LookupSpan, Registry};

use super::install::Sampling;

/// The layer that gives each span its [`Ids`].
#[derive(Debug)]
pub(crate) struct LogIds {
    sampler: Sampler,
    parent_based: bool,
    generator: RandomIdGenerator,
}

/// A span's place in its trace, kept in its extensions.
#[derive(Debug, Clone)]
pub(crate) struct Ids(pub(crate) SpanContext);

impl LogIds {
    pub(crate) fn new(sampling: Sampling) -> Self {
        let parent_based = matches!(sampling, Sampling::ParentBased(_));
        Self { sampler: super::export::sampler(sampling), parent_based, generator: RandomIdGenerator::default() }
    }

    /// The context of span `span_id` under `parent`, or at the root of a new
    /// trace, sampled as the SDK's tracer would sample it.
    fn context(&self, span_id: SpanId, parent: Option<&SpanContext>) -> SpanContext {
        let (trace_id, flags, state) = match parent {
            Some(parent) => (parent.trace_id(), parent.trace_flags(), parent.trace_state().clone()),
            None => (self.generator.new_trace_id(), TraceFlags::default(), TraceState::default()),
        };
        let sampled = match parent {
            Some(parent) if self.parent_based => parent.is_sampled(),
            // The other samplers decide from the trace id alone.
            _ => {
                let result = self.sampler.should_sample(None, trace_id, "", &SpanKind::Internal, &[], &[]);
                result.decision == SamplingDecision::RecordAndSample
            }
        };
        let flags = if sampled { flags.with_sampled(true) } else { TraceFlags::default() };
        SpanContext::new(trace_id, span_id, flags, false, state)
    }
}

impl<S> tracing_subscriber::Layer<S> for LogIds
where
    S: Subscriber + for<'span> LookupSpan<'span>,
{
    fn on_new_span(&self, attributes: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let Some(span) = ctx.span(id) else { return };
        let parent = match span.parent() {
            Some(parent) => parent.extensions().get::<Ids>().map(|ids| ids.0.clone()),
            // The first span under an attached context (a CLI's `TRACEPARENT`) continues its trace.
            None if attributes.is_contextual() => attached(),
            None => None,
        };
        let context = self.context(self.generator.new_span_id(), parent.as_ref());
        span.extensions_mut().insert(Ids(context));
    }
}

/// The span context of the OpenTelemetry context attached on this thread, if any.
fn attached() -> Option<SpanContext> {
    let current = opentelemetry::Context::current();
    let span = current.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| span_context.clone())
}

/// Makes `span`, which has no child yet, continue the trace of `parent` (a
/// remote caller's), as `set_parent` does an OpenTelemetry span's. Without
/// the layer, nothing.
pub(crate) fn adopt(span: &Span, parent: &SpanContext) {
    span.with_subscriber(|(id, dispatch)| {
        let (Some(layer), Some(registry)) = (dispatch.downcast_ref::<LogIds>(), dispatch.downcast_ref::<Registry>())
        else {
            return;
        };
        let Some(span) = registry.span(id) else { return };
        let mut extensions = span.extensions_mut();
        if let Some(ids) = extensions.get_mut::<Ids>() {
            ids.0 = layer.context(ids.0.span_id(), Some(parent));
        }
    });
}

/// The context the layer gave `span`, if it gave it one.
pub(crate) fn of(span: &Span) -> Option<SpanContext> {
    span.with_subscriber(|(id, dispatch)| {
        // Without the layer (spans exported, or text logs) no span has ids: no lookup per push.
        dispatch.downcast_ref::<LogIds>()?;
        let span = dispatch.downcast_ref::<Registry>()?.span(id)?;
        span.extensions().get::<Ids>().map(|ids| ids.0.clone())
    })
    .flatten()
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{TraceId, TraceState};
    use tracing_subscriber::layer::SubscriberExt as _;

    use super::*;
    use crate::telemetry::ParentlessSampling;

    fn remote(sampled: bool) -> SpanContext {
        let flags = if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
        let state = TraceState::from_key_value([("congo", "t61rcWkgMzE")]).unwrap();
        SpanContext::new(TraceId::from(0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_4736), SpanId::from(7), flags, true, state)
    }

    fn with_layer<T>(sampling: Sampling, f: impl FnOnce() -> T) -> T {
        let subscriber = Registry::default().with(LogIds::new(sampling));
        tracing::subscriber::with_default(subscriber, f)
    }

    #[test]
    fn a_child_is_in_its_parents_trace_with_an_id_of_its_own() {
        let (parent, child) = with_layer(Sampling::default(), || {
            let parent = tracing::info_span!("request");
            let child = parent.in_scope(|| tracing::info_span!("task"));
            (of(&parent).unwrap(), of(&child).unwrap())
        });
        assert!(parent.is_valid() && child.is_valid());
        assert_eq!(child.trace_id(), parent.trace_id());
        assert_ne!(child.span_id(), parent.span_id());
        assert!(parent.is_sampled() && child.is_sampled(), "a new trace is sampled under parentbased_always_on");
    }

    #[test]
    fn an_adopted_remote_parent_gives_its_trace_state_and_decision_to_the_span_and_its_children() {
        for sampled in [true, false] {
            let (adopted, child, own_id) = with_layer(Sampling::default(), || {
                let span = tracing::info_span!("request");
                let own_id = of(&span).unwrap().span_id();
                adopt(&span, &remote(sampled));
                let child = span.in_scope(|| tracing::info_span!("task"));
                (of(&span).unwrap(), of(&child).unwrap(), own_id)
            });
            assert_eq!(adopted.trace_id(), remote(sampled).trace_id());
            assert_eq!(adopted.span_id(), own_id, "the span keeps its id");
            assert!(!adopted.is_remote());
            assert_eq!(adopted.is_sampled(), sampled);
            assert_eq!(adopted.trace_state().header(), "congo=t61rcWkgMzE");
            assert_eq!((child.trace_id(), child.is_sampled()), (adopted.trace_id(), sampled));
        }
    }

    #[test]
    fn a_span_begun_under_an_attached_context_continues_it_unless_told_it_has_no_parent() {
        let attached = opentelemetry::Context::new().with_remote_span_context(remote(true));
        let (contextual, rootless) = with_layer(Sampling::default(), || {
            let _attached = attached.attach();
            let (contextual, rootless) = (tracing::info_span!("enqueue"), tracing::info_span!(parent: None, "request"));
            (of(&contextual).unwrap(), of(&rootless).unwrap())
        });
        assert_eq!(contextual.trace_id(), remote(true).trace_id());
        assert_ne!(rootless.trace_id(), remote(true).trace_id());
    }

    #[test]
    fn samplers_that_ignore_the_parent_decide_alone() {
        let on = with_layer(Sampling::AlwaysOn, || {
            let span = tracing::info_span!("request");
            adopt(&span, &remote(false));
            of(&span).unwrap()
        });
        assert!(on.is_sampled());
        let off = with_layer(Sampling::ParentBased(ParentlessSampling::AlwaysOff), || {
            of(&tracing::info_span!("request")).unwrap()
        });
        assert!(off.is_valid() && !off.is_sampled());
    }

    #[test]
    fn a_message_enqueued_in_a_span_continues_its_trace_from_its_ids() {
        let (child, attributes) = with_layer(Sampling::default(), || {
            let span = tracing::info_span!("task");
            adopt(&span, &remote(true));
            let child = span.in_scope(|| tracing::info_span!("enqueue"));
            (of(&child).unwrap(), crate::telemetry::propagation::to_attributes(&child))
        });
        let traceparent = format!("00-{}-{}-01", child.trace_id(), child.span_id());
        assert_eq!(attributes, [("traceparent", traceparent), ("tracestate", "congo=t61rcWkgMzE".to_owned())]);
    }

    #[test]
    fn without_the_layer_there_are_no_ids_and_adopting_does_nothing() {
        let subscriber = Registry::default();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("request");
            adopt(&span, &remote(true));
            assert!(of(&span).is_none());
        });
    }
}
