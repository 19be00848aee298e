//! Properties over generated input: names built from any valid route obey
//! Google's rules (restated here independently of the crate's checks), and no
//! parser panics on arbitrary input.

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use serde_json::{Map, Value};
use whirligig_registry::{
    Naming, ReceivedMessage, Registry, Schedule, TaskContext, TaskMessage, TaskRoute, parse_timezone,
};

async fn noop(_: TaskContext) {}

/// Pub/Sub: `^[A-Za-z][A-Za-z0-9\-_.~+%]{2,254}$`, not starting with `goog`.
fn pubsub_allows(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || "-_.~+%".contains(c))
        && (3..=255).contains(&name.len())
        && !name.starts_with("goog")
}

/// Cloud Scheduler: `^[A-Za-z0-9_-]{1,500}$`.
fn scheduler_allows(job: &str) -> bool {
    (1..=500).contains(&job.len()) && job.chars().all(|c| c.is_ascii_alphanumeric() || "-_".contains(c))
}

fn identifier() -> impl Strategy<Value = String> {
    "[A-Za-z_][A-Za-z0-9_]{0,60}"
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(identifier(), 1..8).prop_map(|segments| segments.join("."))
}

fn naming() -> impl Strategy<Value = Naming> {
    ("[a-z][a-z0-9_-]{0,20}", "[A-Za-z0-9_-]{1,20}")
        .prop_filter_map("goog is reserved", |(env, ns)| Naming::new(env, ns).ok())
}

proptest! {
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn names_of_accepted_routes_obey_googles_rules(
        name in identifier(), path in path(), naming in naming(), scheduled in any::<bool>(),
    ) {
        let route = TaskRoute::new(name, noop).path(path);
        let route = if scheduled { route.schedule("*/5 * * * *") } else { route };
        let Ok(registry) = Registry::builder().route(route).build() else {
            // Too long even for `dev`: the same check below covers it.
            return Ok(());
        };
        let route = registry.routes().next().unwrap();
        let names_ok = pubsub_allows(&route.topic_name(&naming))
            && pubsub_allows(&route.subscription_name(&naming))
            && route.scheduler_job_name(&naming).is_none_or(|job| scheduler_allows(&job));
        prop_assert_eq!(registry.check_names(&naming).is_ok(), names_ok);
        prop_assert_eq!(route.scheduler_job_name(&naming).is_some(), scheduled);
    }

    #[test]
    fn schedule_parsing_never_panics(text in ".{0,40}") {
        let _ = Schedule::parse(&text);
    }

    #[test]
    fn cron_shaped_text_never_panics(text in "([0-9*/,A-Z-]{1,6} ){4}[0-9*/,A-Z-]{1,6}") {
        let _ = Schedule::parse(&text);
    }

    #[test]
    fn timezone_parsing_never_panics(text in ".{0,40}") {
        let _ = parse_timezone(&text);
    }

    #[test]
    fn naming_and_route_options_never_panic(env in ".{0,20}", ns in ".{0,20}", name in ".{0,20}", path in ".{0,40}") {
        let _ = Naming::new(env, ns);
        let _ = Registry::builder().route(TaskRoute::new(name, noop).path(path).kill_switch("X")).build();
    }

    #[test]
    fn message_parsing_never_panics(data in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = ReceivedMessage::parse(&data);
    }

    #[test]
    fn message_shaped_json_never_panics(
        task_name in prop_oneof![Just("\"noop\"".to_owned()), ".{0,8}".prop_map(|s| format!("{s:?}"))],
        args in prop_oneof![Just("[]"), Just("{}"), Just("null"), Just("[1, \"a\"]"), Just("7")],
        kwargs in prop_oneof![Just("{}"), Just("[]"), Just("null"), Just("{\"a\": [1]}")],
    ) {
        let data = format!(r#"{{"task_name": {task_name}, "args": {args}, "kwargs": {kwargs}}}"#);
        if let Ok(message) = ReceivedMessage::parse(data.as_bytes()) {
            prop_assert!(message.arguments().args().get().starts_with('['));
            prop_assert!(!message.task_name().is_empty());
        }
    }

    #[test]
    fn published_messages_are_ascii_and_read_back_unchanged(
        name in identifier(),
        text in any::<String>(),
        number in any::<f64>().prop_filter("JSON has no NaN or infinity", |n| n.is_finite()),
        integer in any::<i64>(),
    ) {
        let mut kwargs = Map::new();
        kwargs.insert(text.clone(), Value::from(number));
        let message = TaskMessage::new(name, vec![Value::from(text), Value::from(integer)], kwargs);
        let json = message.to_json();
        prop_assert!(json.is_ascii());
        prop_assert_eq!(serde_json::from_str::<TaskMessage>(&json).unwrap(), message.clone());
        let received = ReceivedMessage::parse(json.as_bytes()).unwrap();
        prop_assert_eq!(received.task_id(), Some(message.task_id.as_str()));
        prop_assert_eq!(received.enqueued_at(), message.enqueued_at);
    }

    #[test]
    fn fire_times_strictly_increase(
        minute in 0u32..60, hour in 0u32..24, step in 1u32..24,
        zone in prop::sample::select(vec!["UTC", "Europe/London", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata"]),
        start in 946_684_800i64..4_102_444_800,
    ) {
        let expression = format!("{minute} {hour},*/{step} * * *");
        let schedule = Schedule::parse(&expression).unwrap();
        let after: DateTime<Utc> = Utc.timestamp_opt(start, 0).unwrap();
        let times: Vec<DateTime<Utc>> = schedule
            .fire_times_after(after, parse_timezone(zone).unwrap())
            .take(8)
            .map(|t| t.with_timezone(&Utc))
            .collect();
        prop_assert_eq!(times.len(), 8);
        prop_assert!(times[0] > after);
        prop_assert!(times.windows(2).all(|pair| pair[0] < pair[1]), "{:?}", times);
    }
}
