//! The message schema: the JSON payload published to a task's topic,
//! `{"task_id", "task_name", "args", "kwargs", "enqueued_at"?}`, exactly as the
//! reference's Python backend writes it. [`TaskMessage`] builds one to publish;
//! [`ReceivedMessage`] reads one on the hot path, borrowing from the bytes and
//! leaving `args` and `kwargs` unparsed until the task's own types take them.
//! The Pub/Sub envelope around the payload is not this module's business.

use std::borrow::Cow;

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::python_json;
use crate::task::{ArgumentShapeError, RawArguments};

/// A message to publish: one task call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskMessage {
    /// The execution id: a UUID v4, or `scheduled-{name}` for Cloud Scheduler's messages.
    pub task_id: String,
    /// The registered task's name.
    pub task_name: String,
    /// Positional arguments.
    #[serde(default)]
    pub args: Vec<Value>,
    /// Keyword arguments.
    #[serde(default)]
    pub kwargs: Map<String, Value>,
    /// When the message was made, to the microsecond; absent in scheduled messages.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "isoformat")]
    pub enqueued_at: Option<DateTime<Utc>>,
}

impl TaskMessage {
    /// A call of `task_name`, with a fresh UUID v4 task id and the current time.
    pub fn new(task_name: impl Into<String>, args: Vec<Value>, kwargs: Map<String, Value>) -> Self {
        Self {
            task_id: uuid::Uuid::new_v4().to_string(),
            task_name: task_name.into(),
            args,
            kwargs,
            // Python's datetime keeps microseconds; so does the message.
            enqueued_at: Some(Utc::now().trunc_subsecs(6)),
        }
    }

    /// The fixed message a Cloud Scheduler job publishes for `task_name`: task id
    /// `scheduled-{name}`, no arguments, no `enqueued_at`.
    pub fn scheduled(task_name: &str) -> Self {
        Self {
            task_id: scheduled_task_id(task_name),
            task_name: task_name.to_owned(),
            args: Vec::new(),
            kwargs: Map::new(),
            enqueued_at: None,
        }
    }

    /// The payload bytes to publish, as Python's `json.dumps` writes them.
    pub fn to_json(&self) -> String {
        // Every part is a string, a JSON value or a time: serialising cannot fail.
        python_json::to_string(self).unwrap_or_else(|error| unreachable!("a TaskMessage serialises: {error}"))
    }
}

/// `scheduled-{name}`: the task id every scheduled message of `task_name` carries.
pub fn scheduled_task_id(task_name: &str) -> String {
    format!("scheduled-{task_name}")
}

/// A received payload, read without copying its arguments.
#[derive(Debug)]
pub struct ReceivedMessage<'a> {
    task_id: Option<String>,
    task_name: Cow<'a, str>,
    arguments: RawArguments<'a>,
    enqueued_at: Option<DateTime<Utc>>,
}

/// The payload as it is on the wire.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(default)]
    task_id: Option<String>,
    #[serde(borrow)]
    task_name: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "present")]
    args: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "present")]
    kwargs: Option<&'a RawValue>,
    #[serde(default)]
    enqueued_at: Option<DateTime<Utc>>,
}

/// Keeps an explicit `null` as a value, so that `"args": null` is reported as
/// not a list instead of passing for a missing field.
fn present<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(deserializer).map(Some)
}

impl<'a> ReceivedMessage<'a> {
    /// Parses a payload. A missing `args` or `kwargs` means none, as in the
    /// reference; one of the wrong JSON type, an empty task name, or anything
    /// that is not a JSON object of this shape is an error.
    pub fn parse(data: &'a [u8]) -> Result<Self, MessageError> {
        let wire: Wire<'a> =
            serde_json::from_slice(data).map_err(|error| MessageError::Malformed(error.to_string()))?;
        if wire.task_name.is_empty() {
            return Err(MessageError::EmptyTaskName);
        }
        if let Some(task_id) = wire.task_id.as_deref().filter(|task_id| task_id.len() > MAX_TASK_ID_BYTES) {
            return Err(MessageError::TaskIdTooLong(task_id.len()));
        }
        let empty = RawArguments::empty();
        let arguments = RawArguments::new(wire.args.unwrap_or(empty.args()), wire.kwargs.unwrap_or(empty.kwargs()))?;
        Ok(Self { task_id: wire.task_id, task_name: wire.task_name, arguments, enqueued_at: wire.enqueued_at })
    }

    /// The task id as sent, if any.
    pub fn task_id(&self) -> Option<&str> {
        self.task_id.as_deref()
    }

    /// The task name as sent: never echo it back for an unknown task.
    pub fn task_name(&self) -> &str {
        &self.task_name
    }

    /// When the message says it was enqueued.
    pub fn enqueued_at(&self) -> Option<DateTime<Utc>> {
        self.enqueued_at
    }

    /// The arguments, still raw JSON, already checked to be a list and an object.
    pub fn arguments(&self) -> RawArguments<'a> {
        self.arguments
    }

    /// The id this delivery is recorded under. Scheduled messages all carry
    /// `scheduled-{name}`, so each run becomes `scheduled-{name}-{message_id}`;
    /// a message without a task id (published by hand) becomes `msg-{message_id}`.
    /// Either way a redelivery of the same Pub/Sub message maps to the same id.
    pub fn execution_id(&self, message_id: &str) -> String {
        match self.task_id.as_deref() {
            None | Some("") => format!("msg-{message_id}"),
            Some(id) if is_scheduled_id(id, &self.task_name) => format!("{id}-{message_id}"),
            Some(id) => id.to_owned(),
        }
    }
}

fn is_scheduled_id(task_id: &str, task_name: &str) -> bool {
    task_id.strip_prefix("scheduled-") == Some(task_name)
}

/// Why a payload could not be read. Each is permanent: the same bytes will
/// never parse on a later delivery.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Not JSON, or not an object of the message's shape.
    #[error("the message is not a task message: {0}")]
    Malformed(String),
    /// `task_name` is an empty string.
    #[error("the message has an empty task_name")]
    EmptyTaskName,
    /// `task_id` is longer than [`MAX_TASK_ID_BYTES`].
    #[error("the message's task_id is {0} bytes, over the limit of {MAX_TASK_ID_BYTES}")]
    TaskIdTooLong(usize),
    /// `args` is not a list or `kwargs` not an object, or they nest too deep.
    #[error("the message's {0}")]
    Arguments(#[from] ArgumentShapeError),
}

/// The longest task id a message may carry, in bytes: Pub/Sub's limit for an
/// attribute value (where a task id would go). The database indexes it, and
/// an index row holds at most about 2.7 KB; a task id is usually a UUID.
pub const MAX_TASK_ID_BYTES: usize = 1024;

/// `enqueued_at` as Python's `datetime.isoformat()` writes an aware UTC time:
/// `2024-01-15T10:30:00+00:00`, with `.ffffff` only when there are microseconds.
mod isoformat {
    use chrono::{DateTime, Timelike, Utc};
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(time: &Option<DateTime<Utc>>, serializer: S) -> Result<S::Ok, S::Error> {
        match time {
            Some(time) => serializer.collect_str(&format_args!("{}", isoformat(time))),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<DateTime<Utc>>, D::Error> {
        Option::<DateTime<Utc>>::deserialize(deserializer)
    }

    fn isoformat(time: &DateTime<Utc>) -> String {
        let seconds = time.format("%Y-%m-%dT%H:%M:%S");
        match time.nanosecond() / 1_000 {
            0 => format!("{seconds}+00:00"),
            micros => format!("{seconds}.{micros:06}+00:00"),
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde_json::json;

    use super::*;

    fn at(micros: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 1, 15, 10, 30, 0).unwrap() + chrono::Duration::microseconds(micros.into())
    }

    fn message(args: Value, kwargs: Value, enqueued_at: Option<DateTime<Utc>>) -> TaskMessage {
        TaskMessage {
            task_id: "0b3e5a0e-3f7c-4d7e-9a54-5e1f3c2b1a00".into(),
            task_name: "send_welcome_email".into(),
            args: serde_json::from_value(args).unwrap(),
            kwargs: serde_json::from_value(kwargs).unwrap(),
            enqueued_at,
        }
    }

    #[test]
    fn serialises_byte_for_byte_as_the_python_backend() {
        // python3 -c 'import json, datetime as d; print(json.dumps({"task_id": "0b3e5a0e-3f7c-4d7e-9a54-5e1f3c2b1a00",
        //   "task_name": "send_welcome_email", "args": [42, "Zoë", 2.5], "kwargs": {"to": "a@b.c"},
        //   "enqueued_at": d.datetime(2024, 1, 15, 10, 30, 0, 123, tzinfo=d.timezone.utc).isoformat()}))'
        let message = message(json!([42, "Zoë", 2.5]), json!({"to": "a@b.c"}), Some(at(123)));
        assert_eq!(
            message.to_json(),
            r#"{"task_id": "0b3e5a0e-3f7c-4d7e-9a54-5e1f3c2b1a00", "task_name": "send_welcome_email", "args": [42, "Zo\u00eb", 2.5], "kwargs": {"to": "a@b.c"}, "enqueued_at": "2024-01-15T10:30:00.000123+00:00"}"#
        );
    }

    #[test]
    fn whole_seconds_have_no_fraction_like_isoformat() {
        let json = message(json!([]), json!({}), Some(at(0))).to_json();
        assert!(json.ends_with(r#""enqueued_at": "2024-01-15T10:30:00+00:00"}"#), "{json}");
    }

    #[test]
    fn scheduled_messages_match_the_reference_scheduler_job() {
        // python3 -c 'import json; print(json.dumps({"task_id": "scheduled-cleanup_old_data",
        //   "task_name": "cleanup_old_data", "args": [], "kwargs": {}}))'
        assert_eq!(
            TaskMessage::scheduled("cleanup_old_data").to_json(),
            r#"{"task_id": "scheduled-cleanup_old_data", "task_name": "cleanup_old_data", "args": [], "kwargs": {}}"#
        );
    }

    #[test]
    fn new_makes_a_uuid_v4_and_a_microsecond_timestamp() {
        let before = Utc::now();
        let message = TaskMessage::new("noop", vec![json!(1)], Map::new());
        let id = uuid::Uuid::parse_str(&message.task_id).unwrap();
        assert_eq!(id.get_version_num(), 4);
        let enqueued_at = message.enqueued_at.unwrap();
        assert!(enqueued_at >= before.trunc_subsecs(6) && enqueued_at <= Utc::now());
        assert_eq!(enqueued_at.timestamp_subsec_nanos() % 1_000, 0);
        assert_ne!(TaskMessage::new("noop", vec![], Map::new()).task_id, message.task_id);
    }

    #[test]
    fn round_trips_through_its_own_json_and_the_received_view() {
        let original = message(json!([1, [2, 3], {"k": null}]), json!({"a": "é", "b": 1e-7}), Some(at(999_999)));
        let json = original.to_json();
        assert_eq!(serde_json::from_str::<TaskMessage>(&json).unwrap(), original);

        let received = ReceivedMessage::parse(json.as_bytes()).unwrap();
        assert_eq!(received.task_id(), Some(original.task_id.as_str()));
        assert_eq!(received.task_name(), "send_welcome_email");
        assert_eq!(received.enqueued_at(), original.enqueued_at);
        let arguments = received.arguments();
        assert_eq!(serde_json::from_str::<Value>(arguments.args().get()).unwrap(), json!([1, [2, 3], {"k": null}]));
        assert_eq!(serde_json::from_str::<Value>(arguments.kwargs().get()).unwrap(), json!({"a": "é", "b": 1e-7}));
    }

    #[test]
    fn missing_args_and_kwargs_mean_none() {
        let received = ReceivedMessage::parse(br#"{"task_name": "noop"}"#).unwrap();
        let arguments = received.arguments();
        assert_eq!((arguments.args().get(), arguments.kwargs().get()), ("[]", "{}"));
        assert_eq!(received.task_id(), None);
        assert_eq!(received.enqueued_at(), None);
    }

    #[test]
    fn malformed_payloads_are_refused_with_a_reason() {
        let error = |data: &[u8]| ReceivedMessage::parse(data).unwrap_err();
        for data in [
            &b""[..],
            b"not json",
            b"[1, 2]",
            b"{}",
            br#"{"task_name": 7}"#,
            br#"{"task_name": "x", "enqueued_at": "yesterday"}"#,
        ] {
            assert!(matches!(error(data), MessageError::Malformed(_)), "{}", String::from_utf8_lossy(data));
        }
        assert_eq!(error(br#"{"task_name": ""}"#), MessageError::EmptyTaskName);
        for args in ["{}", "null", "\"a\"", "3"] {
            let data = format!(r#"{{"task_name": "x", "args": {args}}}"#);
            assert_eq!(error(data.as_bytes()), MessageError::Arguments(ArgumentShapeError::ArgsNotList), "{args}");
        }
        for kwargs in ["[]", "null", "true"] {
            let data = format!(r#"{{"task_name": "x", "kwargs": {kwargs}}}"#);
            assert_eq!(error(data.as_bytes()), MessageError::Arguments(ArgumentShapeError::KwargsNotObject));
        }
        assert_eq!(error(br#"{"task_name": "x", "args": {}}"#).to_string(), "the message's args is not a list");
        let deep = format!(r#"{{"task_name": "x", "args": {}{}}}"#, "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(error(deep.as_bytes()), MessageError::Arguments(ArgumentShapeError::TooDeep));
    }

    #[test]
    fn a_task_id_over_the_limit_is_refused_and_one_at_it_is_read() {
        let message = |task_id: &str| format!(r#"{{"task_id": "{task_id}", "task_name": "x"}}"#);
        let longest = "a".repeat(MAX_TASK_ID_BYTES);
        assert_eq!(ReceivedMessage::parse(message(&longest).as_bytes()).unwrap().task_id(), Some(&*longest));
        let over = "é".repeat(MAX_TASK_ID_BYTES / 2 + 1);
        let error = ReceivedMessage::parse(message(&over).as_bytes()).unwrap_err();
        assert_eq!(error, MessageError::TaskIdTooLong(MAX_TASK_ID_BYTES + 2), "counted in bytes, not characters");
    }

    #[test]
    fn escaped_task_names_are_read_too() {
        let received = ReceivedMessage::parse(br#"{"task_name": "no\u006fp"}"#).unwrap();
        assert_eq!(received.task_name(), "noop");
    }

    #[test]
    fn execution_ids_for_plain_scheduled_and_hand_published_messages() {
        let id = |data: &str| ReceivedMessage::parse(data.as_bytes()).unwrap().execution_id("1234");
        assert_eq!(id(r#"{"task_id": "abc", "task_name": "noop"}"#), "abc");
        assert_eq!(id(r#"{"task_id": "scheduled-heartbeat", "task_name": "heartbeat"}"#), "scheduled-heartbeat-1234");
        assert_eq!(id(r#"{"task_name": "noop"}"#), "msg-1234");
        assert_eq!(id(r#"{"task_id": "", "task_name": "noop"}"#), "msg-1234");
        // Only the scheduled id of the task itself is a schedule's.
        assert_eq!(id(r#"{"task_id": "scheduled-other", "task_name": "noop"}"#), "scheduled-other");
        assert_eq!(scheduled_task_id("heartbeat"), TaskMessage::scheduled("heartbeat").task_id);
    }
}
