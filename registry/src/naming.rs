//! Resource names: Pub/Sub topics and subscriptions and Cloud Scheduler jobs,
//! built from an environment, a namespace and a route's dotted path exactly as
//! the reference names them, and checked against Google's rules. Also the rules
//! for the identifiers those names are made of. Reads no environment variables.

use std::fmt;

/// The environment used when none is configured (`TASKS_ENVIRONMENT`).
pub const DEFAULT_ENVIRONMENT: &str = "dev";
/// The namespace used when none is configured (`TASKS_NAMESPACE`).
pub const DEFAULT_NAMESPACE: &str = "gyrinx";

const TOPIC_MIN: usize = 3;
const TOPIC_MAX: usize = 255;
const SCHEDULER_JOB_MAX: usize = 500;

/// The environment and namespace every resource name starts with.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Naming {
    environment: String,
    namespace: String,
}

impl Naming {
    /// Checks both parts: each may hold only `[A-Za-z0-9_-]` (they appear in
    /// scheduler job ids), and the environment, which starts every topic name,
    /// must start with a letter and not with `goog`.
    pub fn new(environment: impl Into<String>, namespace: impl Into<String>) -> Result<Self, NameError> {
        let (environment, namespace) = (environment.into(), namespace.into());
        check_segment(NameKind::Environment, &environment)?;
        check_segment(NameKind::Namespace, &namespace)?;
        if !environment.starts_with(|c: char| c.is_ascii_alphabetic()) {
            return Err(NameError::new(NameKind::Environment, &environment, NameRule::MustStartWithLetter));
        }
        if environment.starts_with("goog") {
            return Err(NameError::new(NameKind::Environment, &environment, NameRule::StartsWithGoog));
        }
        Ok(Self { environment, namespace })
    }

    /// The environment, e.g. `prod`.
    pub fn environment(&self) -> &str {
        &self.environment
    }

    /// The namespace, e.g. `gyrinx`.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// `{env}--{ns}.tasks--{path}`
    pub fn topic(&self, path: &str) -> String {
        format!("{}--{}.tasks--{path}", self.environment, self.namespace)
    }

    /// `{topic}-sub`
    pub fn subscription(&self, path: &str) -> String {
        format!("{}-sub", self.topic(path))
    }

    /// `{env}--{ns}-scheduler--{path with '.' replaced by '-'}`
    pub fn scheduler_job(&self, path: &str) -> String {
        format!("{}--{}-scheduler--{}", self.environment, self.namespace, path.replace('.', "-"))
    }
}

impl Default for Naming {
    fn default() -> Self {
        Self { environment: DEFAULT_ENVIRONMENT.to_owned(), namespace: DEFAULT_NAMESPACE.to_owned() }
    }
}

/// What a checked name names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NameKind {
    /// `TASKS_ENVIRONMENT`.
    Environment,
    /// `TASKS_NAMESPACE`.
    Namespace,
    /// A task's name.
    TaskName,
    /// A task's dotted path.
    TaskPath,
    /// A kill switch's environment variable.
    KillSwitch,
    /// A Pub/Sub topic.
    Topic,
    /// A Pub/Sub subscription.
    Subscription,
    /// A Cloud Scheduler job id.
    SchedulerJob,
}

impl fmt::Display for NameKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Environment => "environment",
            Self::Namespace => "namespace",
            Self::TaskName => "task name",
            Self::TaskPath => "task path",
            Self::KillSwitch => "kill switch variable",
            Self::Topic => "topic name",
            Self::Subscription => "subscription name",
            Self::SchedulerJob => "scheduler job id",
        })
    }
}

/// The rule a name breaks.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NameRule {
    /// The name is empty.
    Empty,
    /// Shorter than the minimum.
    TooShort {
        /// The minimum length.
        min: usize,
    },
    /// Longer than the maximum.
    TooLong {
        /// The name's length.
        len: usize,
        /// The maximum length.
        max: usize,
    },
    /// The first character is not an ASCII letter.
    MustStartWithLetter,
    /// Starts with `goog`, which Pub/Sub reserves.
    StartsWithGoog,
    /// Holds a character outside the allowed set.
    InvalidCharacter {
        /// The character.
        found: char,
        /// The allowed set, for the message.
        allowed: &'static str,
    },
    /// A dotted path with an empty segment or one that is not an identifier.
    InvalidSegment,
    /// An environment or namespace with `--`, or a `-` at either end: `--`
    /// separates the parts of a resource name, so one environment's names
    /// could then be another's.
    Hyphens,
}

impl fmt::Display for NameRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("is empty"),
            Self::TooShort { min } => write!(f, "is shorter than {min} characters"),
            Self::TooLong { len, max } => write!(f, "is {len} characters long; at most {max} are allowed"),
            Self::MustStartWithLetter => f.write_str("must start with a letter"),
            Self::StartsWithGoog => f.write_str("must not start with `goog`"),
            Self::InvalidCharacter { found, allowed } => write!(f, "contains {found:?}; allowed are {allowed}"),
            Self::InvalidSegment => f.write_str("must be identifiers joined by dots"),
            Self::Hyphens => {
                f.write_str("must not hold `--` nor start or end with `-`: `--` separates resource names' parts")
            }
        }
    }
}

/// A name that breaks one of the rules for its kind.
#[derive(Debug, Clone, PartialEq, Eq, Hash, thiserror::Error)]
#[error("{kind} `{name}` {rule}")]
pub struct NameError {
    /// What the name names.
    pub kind: NameKind,
    /// The offending name.
    pub name: String,
    /// The rule it breaks.
    pub rule: NameRule,
}

impl NameError {
    fn new(kind: NameKind, name: &str, rule: NameRule) -> Self {
        Self { kind, name: name.to_owned(), rule }
    }
}

const TOPIC_CHARS: &str = "letters, digits and - _ . ~ + %";
const JOB_CHARS: &str = "letters, digits, - and _";
const IDENTIFIER_CHARS: &str = "letters, digits and _";

fn is_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '~' | '+' | '%')
}

fn is_job_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_')
}

fn is_identifier_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

fn first_invalid(name: &str, allowed: fn(char) -> bool) -> Option<char> {
    name.chars().find(|&c| !allowed(c))
}

/// Pub/Sub's rules for topic and subscription names: start with a letter,
/// 3 to 255 of `[A-Za-z0-9-_.~+%]`, and not starting with `goog`.
pub fn check_pubsub_name(kind: NameKind, name: &str) -> Result<(), NameError> {
    let rule = if !name.starts_with(|c: char| c.is_ascii_alphabetic()) {
        Some(NameRule::MustStartWithLetter)
    } else if name.len() < TOPIC_MIN {
        Some(NameRule::TooShort { min: TOPIC_MIN })
    } else if name.len() > TOPIC_MAX {
        Some(NameRule::TooLong { len: name.len(), max: TOPIC_MAX })
    } else if name.starts_with("goog") {
        Some(NameRule::StartsWithGoog)
    } else {
        first_invalid(name, is_topic_char).map(|found| NameRule::InvalidCharacter { found, allowed: TOPIC_CHARS })
    };
    rule.map_or(Ok(()), |rule| Err(NameError::new(kind, name, rule)))
}

/// Cloud Scheduler's rules for a job id: 1 to 500 of `[A-Za-z0-9_-]`.
pub fn check_scheduler_job_id(name: &str) -> Result<(), NameError> {
    let rule = if name.is_empty() {
        Some(NameRule::Empty)
    } else if name.len() > SCHEDULER_JOB_MAX {
        Some(NameRule::TooLong { len: name.len(), max: SCHEDULER_JOB_MAX })
    } else {
        first_invalid(name, is_job_char).map(|found| NameRule::InvalidCharacter { found, allowed: JOB_CHARS })
    };
    rule.map_or(Ok(()), |rule| Err(NameError::new(NameKind::SchedulerJob, name, rule)))
}

/// An identifier: `[A-Za-z_][A-Za-z0-9_]*`. Task names and environment variables.
pub(crate) fn check_identifier(kind: NameKind, name: &str) -> Result<(), NameError> {
    let rule = if name.is_empty() {
        Some(NameRule::Empty)
    } else if name.starts_with(|c: char| c.is_ascii_digit()) {
        Some(NameRule::MustStartWithLetter)
    } else {
        first_invalid(name, is_identifier_char)
            .map(|found| NameRule::InvalidCharacter { found, allowed: IDENTIFIER_CHARS })
    };
    rule.map_or(Ok(()), |rule| Err(NameError::new(kind, name, rule)))
}

/// A dotted path of identifiers, such as `gyrinx.core.tasks.send_welcome_email`.
pub(crate) fn check_path(path: &str) -> Result<(), NameError> {
    if path.is_empty() {
        return Err(NameError::new(NameKind::TaskPath, path, NameRule::Empty));
    }
    if path.split('.').any(|segment| check_identifier(NameKind::TaskPath, segment).is_err()) {
        return Err(NameError::new(NameKind::TaskPath, path, NameRule::InvalidSegment));
    }
    Ok(())
}

fn check_segment(kind: NameKind, value: &str) -> Result<(), NameError> {
    if value.is_empty() {
        return Err(NameError::new(kind, value, NameRule::Empty));
    }
    if let Some(found) = first_invalid(value, is_job_char) {
        return Err(NameError::new(kind, value, NameRule::InvalidCharacter { found, allowed: JOB_CHARS }));
    }
    if value.contains("--") || value.starts_with('-') || value.ends_with('-') {
        return Err(NameError::new(kind, value, NameRule::Hyphens));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prod() -> Naming {
        Naming::new("prod", DEFAULT_NAMESPACE).unwrap()
    }

    #[test]
    fn names_match_the_reference_examples() {
        let path = "gyrinx.core.tasks.send_welcome_email";
        assert_eq!(prod().topic(path), "prod--gyrinx.tasks--gyrinx.core.tasks.send_welcome_email");
        assert_eq!(prod().subscription(path), "prod--gyrinx.tasks--gyrinx.core.tasks.send_welcome_email-sub");
        assert_eq!(
            prod().scheduler_job("gyrinx.core.tasks.cleanup_old_data"),
            "prod--gyrinx-scheduler--gyrinx-core-tasks-cleanup_old_data"
        );
    }

    #[test]
    fn default_naming_is_dev_and_gyrinx() {
        assert_eq!(Naming::default(), Naming::new("dev", "gyrinx").unwrap());
        assert_eq!(Naming::default().topic("a.b"), "dev--gyrinx.tasks--a.b");
    }

    #[test]
    fn a_custom_namespace_replaces_gyrinx() {
        let naming = Naming::new("staging", "shop").unwrap();
        assert_eq!(naming.topic("x.y"), "staging--shop.tasks--x.y");
        assert_eq!(naming.scheduler_job("x.y"), "staging--shop-scheduler--x-y");
    }

    #[test]
    fn environment_and_namespace_rules() {
        let rule = |env: &str, ns: &str| Naming::new(env, ns).unwrap_err().rule;
        assert_eq!(rule("", "ns"), NameRule::Empty);
        assert_eq!(rule("1prod", "ns"), NameRule::MustStartWithLetter);
        assert_eq!(rule("google", "ns"), NameRule::StartsWithGoog);
        assert_eq!(rule("prod", "a.b"), NameRule::InvalidCharacter { found: '.', allowed: JOB_CHARS });
        assert_eq!(rule("pr od", "ns"), NameRule::InvalidCharacter { found: ' ', allowed: JOB_CHARS });
        assert!(Naming::new("prod-eu_2", "my-app").is_ok());
        // `prod-` + `gyrinx` and `prod` + `-gyrinx` would share every name.
        for (env, ns) in [("prod-", "gyrinx"), ("prod", "-gyrinx"), ("prod", "shop-scheduler--eu")] {
            assert_eq!(rule(env, ns), NameRule::Hyphens, "{env} {ns}");
        }
    }

    #[test]
    fn pubsub_name_rules() {
        let rule = |name: &str| check_pubsub_name(NameKind::Topic, name).unwrap_err().rule;
        assert_eq!(rule("9abc"), NameRule::MustStartWithLetter);
        assert_eq!(rule(""), NameRule::MustStartWithLetter);
        assert_eq!(rule("ab"), NameRule::TooShort { min: 3 });
        assert_eq!(rule("googtopic"), NameRule::StartsWithGoog);
        assert_eq!(rule("a/b"), NameRule::InvalidCharacter { found: '/', allowed: TOPIC_CHARS });
        assert_eq!(rule(&"a".repeat(256)), NameRule::TooLong { len: 256, max: 255 });
        assert!(check_pubsub_name(NameKind::Topic, &"a".repeat(255)).is_ok());
        assert!(check_pubsub_name(NameKind::Topic, "abc").is_ok());
        assert!(check_pubsub_name(NameKind::Topic, "a-_.~+%9").is_ok());
    }

    #[test]
    fn scheduler_job_rules() {
        let rule = |name: &str| check_scheduler_job_id(name).unwrap_err().rule;
        assert_eq!(rule(""), NameRule::Empty);
        assert_eq!(rule("a.b"), NameRule::InvalidCharacter { found: '.', allowed: JOB_CHARS });
        assert_eq!(rule(&"a".repeat(501)), NameRule::TooLong { len: 501, max: 500 });
        assert!(check_scheduler_job_id(&"a".repeat(500)).is_ok());
    }

    #[test]
    fn identifier_and_path_rules() {
        assert!(check_identifier(NameKind::TaskName, "send_welcome_email").is_ok());
        assert!(check_identifier(NameKind::TaskName, "_private9").is_ok());
        assert_eq!(check_identifier(NameKind::TaskName, "").unwrap_err().rule, NameRule::Empty);
        assert_eq!(check_identifier(NameKind::TaskName, "9lives").unwrap_err().rule, NameRule::MustStartWithLetter);
        assert!(matches!(
            check_identifier(NameKind::TaskName, "send-email").unwrap_err().rule,
            NameRule::InvalidCharacter { found: '-', .. }
        ));
        assert!(check_path("gyrinx.core.tasks.send_welcome_email").is_ok());
        for bad in ["a..b", ".a", "a.", "a.9b", "a-b.c", "a b"] {
            assert_eq!(check_path(bad).unwrap_err().rule, NameRule::InvalidSegment, "{bad}");
        }
    }

    #[test]
    fn errors_say_which_rule_is_broken() {
        let error = check_pubsub_name(NameKind::Subscription, "goog-sub").unwrap_err();
        assert_eq!(error.to_string(), "subscription name `goog-sub` must not start with `goog`");
        let error = check_scheduler_job_id(&"j".repeat(501)).unwrap_err();
        assert!(error.to_string().ends_with("is 501 characters long; at most 500 are allowed"));
    }
}
