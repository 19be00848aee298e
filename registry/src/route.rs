//! [`TaskRoute`] registers one task function with its name, dotted path and
//! the reference's options (ack deadline, retry delays, schedule, time zone)
//! plus ours (kill switch, timeout, max attempts). [`Route`] is the checked
//! result, with every problem found on the way reported at once, and names the
//! task's resources. Nothing here reads the environment.

use std::fmt;
use std::num::NonZeroU32;
use std::time::Duration;

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use crate::context::TaskContext;
use crate::error::ArgumentError;
use crate::naming::{
    NameError, NameKind, Naming, check_identifier, check_path, check_pubsub_name, check_scheduler_job_id,
};
use crate::schedule::{Schedule, ScheduleError, parse_timezone};
use crate::task::{DynTask, Erased, Parameters, RawArguments, TaskFn, TaskFuture};

/// The reference's default ack deadline, in seconds.
pub const DEFAULT_ACK_DEADLINE: u32 = 300;
/// The shortest ack deadline Pub/Sub accepts, in seconds.
pub const MIN_ACK_DEADLINE: u32 = 10;
/// The longest ack deadline Pub/Sub accepts, in seconds.
pub const MAX_ACK_DEADLINE: u32 = 600;
/// The reference's default minimum retry backoff, in seconds.
pub const DEFAULT_MIN_RETRY_DELAY: u32 = 10;
/// The reference's default maximum retry backoff, in seconds; also Pub/Sub's limit.
pub const DEFAULT_MAX_RETRY_DELAY: u32 = 600;
const MAX_RETRY_DELAY_LIMIT: u32 = 600;

/// A task being registered: a task function, its name and its options, set
/// with the builder methods below and checked all together when
/// [`RegistryBuilder::build`](crate::RegistryBuilder::build) turns it into a [`Route`].
pub struct TaskRoute {
    /// Every option that needs no parsing, unchecked until [`TaskRoute::into_route`].
    route: Route,
    schedule: Option<String>,
    timezone: Option<String>,
    max_attempts: Option<u32>,
    /// A `task_route!` path that is not where the function is defined.
    misplaced: Option<RouteError>,
}

/// A registered task: checked, with every option settled.
pub struct Route {
    name: String,
    path: String,
    task: Box<dyn DynTask>,
    ack_deadline: u32,
    min_retry_delay: u32,
    max_retry_delay: u32,
    schedule: Option<Schedule>,
    timezone: Tz,
    kill_switch: Option<String>,
    timeout: Option<Duration>,
    max_attempts: Option<NonZeroU32>,
}

impl TaskRoute {
    /// A route for `task` under `name`, with the reference's defaults. The path
    /// defaults to the name; [`task_route!`](crate::task_route) derives it from
    /// the function's module path instead.
    pub fn new<M: Parameters>(name: impl Into<String>, task: impl TaskFn<M>) -> Self {
        let name = name.into();
        let route = Route {
            path: name.clone(),
            name,
            task: Box::new(Erased::new(task)),
            ack_deadline: DEFAULT_ACK_DEADLINE,
            min_retry_delay: DEFAULT_MIN_RETRY_DELAY,
            max_retry_delay: DEFAULT_MAX_RETRY_DELAY,
            schedule: None,
            timezone: Tz::UTC,
            kill_switch: None,
            timeout: None,
            max_attempts: None,
        };
        Self { route, schedule: None, timezone: None, max_attempts: None, misplaced: None }
    }

    /// What [`task_route!`](crate::task_route) expands to: the route named after
    /// the last segment of `written`, with the path it resolves to from
    /// `module_path`, checked against `function`, the function's type name.
    #[doc(hidden)]
    pub fn at_module_path<M: Parameters>(
        module_path: &str,
        written: &str,
        function: &str,
        task: impl TaskFn<M>,
    ) -> Self {
        let (name, path) = resolve_function_path(module_path, written);
        let misplaced = misplaced(module_path, written, function, &path);
        Self { misplaced, ..Self::new(name, task).path(path) }
    }

    /// The name the route was created with.
    pub fn name(&self) -> &str {
        &self.route.name
    }

    /// Sets the dotted path used in resource names, e.g. `gyrinx.core.tasks.send_welcome_email`.
    #[must_use]
    pub fn path(mut self, path: impl Into<String>) -> Self {
        self.route.path = path.into();
        self.misplaced = None;
        self
    }

    /// Seconds Pub/Sub waits for an answer before redelivering (10..=600, default 300).
    #[must_use]
    pub fn ack_deadline(mut self, seconds: u32) -> Self {
        self.route.ack_deadline = seconds;
        self
    }

    /// The shortest retry backoff in seconds (default 10).
    #[must_use]
    pub fn min_retry_delay(mut self, seconds: u32) -> Self {
        self.route.min_retry_delay = seconds;
        self
    }

    /// The longest retry backoff in seconds (default 600, at most 600).
    #[must_use]
    pub fn max_retry_delay(mut self, seconds: u32) -> Self {
        self.route.max_retry_delay = seconds;
        self
    }

    /// Runs the task on a five-field cron schedule through Cloud Scheduler.
    #[must_use]
    pub fn schedule(mut self, expression: impl Into<String>) -> Self {
        self.schedule = Some(expression.into());
        self
    }

    /// The IANA time zone the schedule is read in (default `UTC`).
    #[must_use]
    pub fn timezone(mut self, name: impl Into<String>) -> Self {
        self.timezone = Some(name.into());
        self
    }

    /// Names an environment variable that disables the task when set to
    /// `false`, `0`, `no` or `off` (any case): its messages are then
    /// acknowledged without running.
    #[must_use]
    pub fn kill_switch(mut self, variable: impl Into<String>) -> Self {
        self.route.kill_switch = Some(variable.into());
        self
    }

    /// How long one run may take before it is abandoned as a retryable failure.
    /// Defaults to the ack deadline less a margin; may not exceed the ack
    /// deadline, or Pub/Sub would redeliver while the first run still goes on.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.route.timeout = Some(timeout);
        self
    }

    /// After this many attempts a delivery is recorded FAILED and acknowledged
    /// instead of being run again (default: unlimited).
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = Some(attempts);
        self
    }

    /// The checked route, or every problem with it.
    pub(crate) fn into_route(self) -> Result<Route, Vec<RouteError>> {
        let mut route = self.route;
        let mut problems: Vec<RouteError> = self.misplaced.into_iter().chain(route.identifier_problems()).collect();
        if let Some(expression) = self.schedule {
            match Schedule::parse(&expression) {
                Ok(schedule) => route.schedule = Some(schedule),
                Err(error) => problems.push(RouteError::Schedule { expression, error }),
            }
        }
        if let Some(name) = self.timezone {
            match parse_timezone(&name) {
                Ok(timezone) => route.timezone = timezone,
                Err(error) => problems.push(RouteError::Timezone(error)),
            }
        }
        if let Some(attempts) = self.max_attempts {
            route.max_attempts = NonZeroU32::new(attempts);
            problems.extend(route.max_attempts.is_none().then_some(RouteError::MaxAttempts));
        }
        problems.extend(route.timing_problems());
        if problems.is_empty() { Ok(route) } else { Err(problems) }
    }
}

impl fmt::Debug for TaskRoute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskRoute")
            .field("route", &self.route)
            .field("schedule", &self.schedule)
            .field("timezone", &self.timezone)
            .field("max_attempts", &self.max_attempts)
            .finish()
    }
}

impl Route {
    /// The task's name: the `task_name` of its messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The dotted path used in resource names.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// How long Pub/Sub waits for an answer before redelivering.
    pub fn ack_deadline(&self) -> Duration {
        Duration::from_secs(self.ack_deadline.into())
    }

    /// The shortest retry backoff.
    pub fn min_retry_delay(&self) -> Duration {
        Duration::from_secs(self.min_retry_delay.into())
    }

    /// The longest retry backoff.
    pub fn max_retry_delay(&self) -> Duration {
        Duration::from_secs(self.max_retry_delay.into())
    }

    /// The schedule, for a scheduled route.
    pub fn schedule(&self) -> Option<&Schedule> {
        self.schedule.as_ref()
    }

    /// The time zone the schedule is read in.
    pub fn schedule_timezone(&self) -> Tz {
        self.timezone
    }

    /// True if the route has a schedule.
    pub fn is_scheduled(&self) -> bool {
        self.schedule.is_some()
    }

    /// The kill switch variable, if the route has one.
    pub fn kill_switch(&self) -> Option<&str> {
        self.kill_switch.as_deref()
    }

    /// Whether the kill switch, read as `value`, lets the task run: anything but
    /// `false`, `0`, `no` or `off` (any case, surrounding spaces ignored) does,
    /// and so does an unset variable or a route without a kill switch.
    pub fn is_enabled_by(&self, value: Option<&str>) -> bool {
        self.kill_switch.is_none() || value.is_none_or(|value| !is_off(value))
    }

    /// How long one run may take.
    pub fn timeout(&self) -> Duration {
        self.timeout.unwrap_or_else(|| default_timeout(self.ack_deadline()))
    }

    /// The attempt limit, if any.
    pub fn max_attempts(&self) -> Option<NonZeroU32> {
        self.max_attempts
    }

    /// The Pub/Sub topic, `{env}--{ns}.tasks--{path}`.
    pub fn topic_name(&self, naming: &Naming) -> String {
        naming.topic(&self.path)
    }

    /// The push subscription, `{topic}-sub`.
    pub fn subscription_name(&self, naming: &Naming) -> String {
        naming.subscription(&self.path)
    }

    /// The Cloud Scheduler job id, for a scheduled route only.
    pub fn scheduler_job_name(&self, naming: &Naming) -> Option<String> {
        self.is_scheduled().then(|| naming.scheduler_job(&self.path))
    }

    /// The fire times after `after`, in the schedule's time zone; none for a
    /// route without a schedule.
    pub fn fire_times_after(&self, after: DateTime<Utc>) -> impl Iterator<Item = DateTime<Tz>> {
        let timezone = self.timezone;
        self.schedule.iter().flat_map(move |schedule| schedule.fire_times_after(after, timezone))
    }

    /// Starts the task: deserialises the arguments into its parameter types
    /// and returns the running future, or the reason they do not fit.
    pub fn call(&self, ctx: TaskContext, arguments: &RawArguments<'_>) -> Result<TaskFuture, ArgumentError> {
        self.task.call(ctx, arguments)
    }

    /// Whether the arguments fit the task's parameter types, decided exactly
    /// as [`Route::call`] decides it, without starting the task: what an
    /// enqueue checks before publishing.
    pub fn check_arguments(&self, arguments: &RawArguments<'_>) -> Result<(), ArgumentError> {
        self.task.check(arguments)
    }

    /// The name, path and kill switch variable, each against its rule.
    fn identifier_problems(&self) -> impl Iterator<Item = RouteError> {
        let kill_switch = self.kill_switch.as_deref().map(|variable| check_identifier(NameKind::KillSwitch, variable));
        [check_identifier(NameKind::TaskName, &self.name), check_path(&self.path)]
            .into_iter()
            .chain(kill_switch)
            .filter_map(Result::err)
            .map(RouteError::Name)
    }

    /// The ack deadline, retry delays and timeout, against Pub/Sub's bounds and each other.
    fn timing_problems(&self) -> Vec<RouteError> {
        let mut problems = Vec::new();
        if !(MIN_ACK_DEADLINE..=MAX_ACK_DEADLINE).contains(&self.ack_deadline) {
            problems.push(RouteError::AckDeadline(self.ack_deadline));
        }
        if self.max_retry_delay > MAX_RETRY_DELAY_LIMIT {
            problems.push(RouteError::MaxRetryDelay(self.max_retry_delay));
        }
        if self.min_retry_delay > self.max_retry_delay {
            problems.push(RouteError::RetryDelaysInverted { min: self.min_retry_delay, max: self.max_retry_delay });
        }
        if let Some(timeout) = self.timeout.filter(|t| t.is_zero() || *t > self.ack_deadline()) {
            problems.push(RouteError::Timeout { timeout, ack_deadline: self.ack_deadline });
        }
        problems
    }

    /// Problems with the resource names this route gets under `naming`.
    pub(crate) fn name_problems(&self, naming: &Naming) -> Vec<RouteError> {
        let mut checks = vec![
            check_pubsub_name(NameKind::Topic, &self.topic_name(naming)),
            check_pubsub_name(NameKind::Subscription, &self.subscription_name(naming)),
        ];
        checks.extend(self.scheduler_job_name(naming).map(|job| check_scheduler_job_id(&job)));
        checks.into_iter().filter_map(Result::err).map(RouteError::Name).collect()
    }
}

impl fmt::Debug for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Route")
            .field("name", &self.name)
            .field("path", &self.path)
            .field("ack_deadline", &self.ack_deadline)
            .field("retry_delays", &(self.min_retry_delay, self.max_retry_delay))
            .field("schedule", &self.schedule.as_ref().map(Schedule::expression))
            .field("timezone", &self.timezone)
            .field("kill_switch", &self.kill_switch)
            .field("timeout", &self.timeout())
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

/// Resolves a function path as written at a call site in `module_path` into
/// the function's name and its dotted path: `crate` is the crate root, `self`
/// the calling module, each `super` its parent, anything else a child of it.
fn resolve_function_path(module_path: &str, written: &str) -> (String, String) {
    let mut base: Vec<&str> = module_path.split("::").collect();
    let mut rest: Vec<&str> = written.split("::").map(str::trim).collect();
    match rest.first() {
        Some(&"crate") => base.truncate(1),
        Some(&"self") => {}
        _ => rest.insert(0, "self"),
    }
    rest.remove(0);
    while rest.first() == Some(&"super") && base.len() > 1 {
        base.pop();
        rest.remove(0);
    }
    let name = rest.last().copied().unwrap_or_default().to_owned();
    (name, base.into_iter().chain(rest).collect::<Vec<_>>().join("."))
}

/// Why `path`, derived from what was written, is not where the function is
/// defined: `function` (its type's name, `my_service::tasks::send`) says
/// where. They differ when `tasks::send` is written inside `mod tasks` (whose
/// `use super::*` brings `tasks` itself into scope), or the function was
/// reached through a `use` or from another crate. Refused rather than
/// derived from the type name, which the compiler does not promise to keep:
/// resource names must not change with a compiler. A type name that is not a
/// plain path (a closure's) is not compared, but a doubled module still is.
fn misplaced(module_path: &str, written: &str, function: &str, path: &str) -> Option<RouteError> {
    let Some(defined) = plain_path(function) else { return doubled_module(module_path, written, path) };
    if defined == path {
        return None;
    }
    // `crate::` means the caller's crate: not the library a binary of the
    // same name links (`my_service::tasks::send` from its main.rs).
    let from_outside = written.split("::").next().map(str::trim) == function.split("::").next();
    let write = match function.split_once("::") {
        Some((krate, rest)) if !from_outside && module_path.split("::").next() == Some(krate) => {
            format!("task_route!(crate::{rest})")
        }
        _ => format!(".path(\"{defined}\"), or declare the route in the crate that defines the task"),
    };
    let written = written.split("::").map(str::trim).collect::<Vec<_>>().join("::");
    Some(RouteError::Misplaced {
        written,
        module: module_path.to_owned(),
        path: path.to_owned(),
        function: function.to_owned(),
        write,
    })
}

/// `a::b::c` as `a.b.c`, when it is a path of identifiers and nothing else.
fn plain_path(type_name: &str) -> Option<String> {
    let segments: Vec<&str> = type_name.split("::").collect();
    let identifier = |segment: &&str| {
        segment.starts_with(|c: char| c.is_alphabetic() || c == '_')
            && segment.chars().all(|c| c.is_alphanumeric() || c == '_')
    };
    (segments.len() > 1 && segments.iter().all(identifier)).then(|| segments.join("."))
}

/// Without a type name to compare with: `tasks::send` written inside
/// `shop::tasks`, a first segment naming the module itself or one around it
/// (the crate, from a binary), is read as the module named twice; `self::`
/// says a child module of that name is meant.
fn doubled_module(module_path: &str, written: &str, path: &str) -> Option<RouteError> {
    let segments: Vec<&str> = written.split("::").map(str::trim).collect();
    let (first, rest) = segments.split_first().filter(|(_, rest)| !rest.is_empty())?;
    let modules: Vec<&str> = module_path.split("::").collect();
    let at = modules.iter().position(|module| module == first)?;
    let intended = modules[..=at].iter().chain(rest).copied().collect::<Vec<_>>().join(".");
    let rest = rest.join("::");
    let write = match at {
        0 => format!("task_route!(crate::{rest}) in crate {first}, or .path(\"{intended}\")"),
        _ if at == modules.len() - 1 => {
            format!("task_route!({rest}) or task_route!(crate::{}::{rest})", modules[1..=at].join("::"))
        }
        _ => format!("task_route!(crate::{}::{rest})", modules[1..=at].join("::")),
    };
    let written = segments.join("::");
    Some(RouteError::DoubledModule { written, module: module_path.to_owned(), path: path.to_owned(), write })
}

/// The ack deadline less a tenth of it, the tenth kept between 5 and 10
/// seconds: time to record the outcome (a runner may wait a few seconds for a
/// connection to do it) and answer before Pub/Sub redelivers.
fn default_timeout(deadline: Duration) -> Duration {
    let margin = (deadline / 10).clamp(Duration::from_secs(5), Duration::from_secs(10));
    deadline.saturating_sub(margin)
}

fn is_off(value: &str) -> bool {
    let value = value.trim();
    ["false", "0", "no", "off"].iter().any(|off| value.eq_ignore_ascii_case(off))
}

/// Something wrong with one route.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The name, path, kill switch or a resource name breaks a naming rule.
    #[error(transparent)]
    Name(NameError),
    /// The ack deadline is outside 10..=600 seconds.
    #[error("ack_deadline {0} is outside {MIN_ACK_DEADLINE}..={MAX_ACK_DEADLINE} seconds")]
    AckDeadline(u32),
    /// The maximum retry delay is above Pub/Sub's 600 seconds.
    #[error("max_retry_delay {0} is above Pub/Sub's limit of {MAX_RETRY_DELAY_LIMIT} seconds")]
    MaxRetryDelay(u32),
    /// The minimum retry delay is above the maximum.
    #[error("min_retry_delay {min} is greater than max_retry_delay {max}")]
    RetryDelaysInverted {
        /// The minimum retry delay.
        min: u32,
        /// The maximum retry delay.
        max: u32,
    },
    /// The schedule is not a valid cron expression.
    #[error("schedule {expression:?}: {error}")]
    Schedule {
        /// The expression as given.
        expression: String,
        /// What is wrong with it.
        error: ScheduleError,
    },
    /// The time zone is not in the tz database.
    #[error("schedule_timezone: {0}")]
    Timezone(ScheduleError),
    /// The timeout is zero or longer than the ack deadline.
    #[error("timeout {timeout:?} must be above zero and at most the ack deadline of {ack_deadline} s")]
    Timeout {
        /// The timeout as given.
        timeout: Duration,
        /// The route's ack deadline in seconds.
        ack_deadline: u32,
    },
    /// `max_attempts(0)`.
    #[error("max_attempts must be at least 1")]
    MaxAttempts,
    /// `task_route!` was given a path that is not where the function is
    /// defined (its own module named twice, a `use`, another crate).
    #[error(
        "task_route!({written}) in module {module} would get path {path}, but the function is {function}: write \
         {write}"
    )]
    Misplaced {
        /// The path as written.
        written: String,
        /// The module it was written in.
        module: String,
        /// The path it would have resolved to.
        path: String,
        /// Where the function is defined.
        function: String,
        /// What to write instead.
        write: String,
    },
    /// `task_route!` was given a path that repeats the module it is written
    /// in (checked so when the function's type name is not a plain path).
    #[error(
        "task_route!({written}) in module {module} would get path {path}, naming its module twice; write {write} \
         (or self::{written} if a module inside {module} is meant)"
    )]
    DoubledModule {
        /// The path as written.
        written: String,
        /// The module it was written in.
        module: String,
        /// The path it would have resolved to.
        path: String,
        /// What to write instead.
        write: String,
    },
    /// Another route already has this name.
    #[error("another route is already named `{0}`")]
    DuplicateName(String),
    /// Another route already has this path, so both would share one topic.
    #[error("route `{0}` already has path `{1}`; the two would share a topic")]
    DuplicatePath(String, String),
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    async fn noop(_: TaskContext) {}

    #[test]
    fn arguments_are_checked_as_a_call_would_take_them_without_running_the_task() {
        async fn add(_: TaskContext, crate::Args((a, b)): crate::Args<(i64, i64)>) -> Result<i64, crate::TaskError> {
            panic!("checking arguments ran the task with {a} and {b}")
        }
        let route = TaskRoute::new("add", add).into_route().unwrap();
        let raw = |json: &'static str| -> &'static serde_json::value::RawValue { serde_json::from_str(json).unwrap() };
        let check = |args, kwargs| route.check_arguments(&RawArguments::new(raw(args), raw(kwargs)).unwrap());
        assert_eq!(check("[1, 2]", "{}"), Ok(()));
        let wrong = check(r#"[1, "two"]"#, "{}").unwrap_err();
        let called = route.call(TaskContext::new("t"), &RawArguments::new(raw(r#"[1, "two"]"#), raw("{}")).unwrap());
        assert_eq!(Some(wrong), called.err(), "the same error as the executor's call");
        assert!(check("[1, 2]", r#"{"x": 1}"#).unwrap_err().to_string().starts_with("kwargs do not fit"));
    }

    fn route() -> TaskRoute {
        TaskRoute::new("send_welcome_email", noop)
    }

    fn problems(route: TaskRoute) -> Vec<RouteError> {
        route.into_route().err().unwrap_or_default()
    }

    #[test]
    fn defaults_are_the_references() {
        let route = route().into_route().unwrap();
        assert_eq!(route.name(), "send_welcome_email");
        assert_eq!(route.path(), "send_welcome_email");
        assert_eq!(route.ack_deadline(), Duration::from_secs(300));
        assert_eq!(route.min_retry_delay(), Duration::from_secs(10));
        assert_eq!(route.max_retry_delay(), Duration::from_secs(600));
        assert!(!route.is_scheduled());
        assert!(route.schedule().is_none());
        assert_eq!(route.schedule_timezone(), Tz::UTC);
        assert_eq!(route.kill_switch(), None);
        assert_eq!(route.max_attempts(), None);
        assert_eq!(route.timeout(), Duration::from_secs(290));
    }

    #[test]
    fn ack_deadline_bounds() {
        for (seconds, ok) in [(0, false), (9, false), (10, true), (600, true), (601, false)] {
            let found = problems(route().ack_deadline(seconds));
            let expected = if ok { vec![] } else { vec![RouteError::AckDeadline(seconds)] };
            assert_eq!(found, expected, "{seconds}");
        }
    }

    #[test]
    fn retry_delay_bounds() {
        assert!(problems(route().min_retry_delay(0).max_retry_delay(0)).is_empty());
        assert!(problems(route().min_retry_delay(600)).is_empty());
        let inverted = RouteError::RetryDelaysInverted { min: 30, max: 20 };
        assert_eq!(problems(route().min_retry_delay(30).max_retry_delay(20)), [inverted]);
        assert_eq!(problems(route().max_retry_delay(601)), [RouteError::MaxRetryDelay(601)]);
    }

    #[test]
    fn default_timeout_leaves_a_margin_before_the_ack_deadline() {
        let timeout = |seconds| route().ack_deadline(seconds).into_route().unwrap().timeout();
        assert_eq!(timeout(10), Duration::from_secs(5));
        assert_eq!(timeout(60), Duration::from_secs(54));
        assert_eq!(timeout(600), Duration::from_secs(590));
    }

    #[test]
    fn timeout_must_fit_in_the_ack_deadline() {
        let route_with = |timeout| route().timeout(timeout);
        assert_eq!(route_with(Duration::from_secs(120)).into_route().unwrap().timeout(), Duration::from_secs(120));
        assert!(problems(route_with(Duration::from_secs(300))).is_empty());
        for timeout in [Duration::ZERO, Duration::from_millis(300_001)] {
            assert_eq!(problems(route_with(timeout)), [RouteError::Timeout { timeout, ack_deadline: 300 }]);
        }
    }

    #[test]
    fn max_attempts_must_be_positive() {
        assert_eq!(route().max_attempts(3).into_route().unwrap().max_attempts(), NonZeroU32::new(3));
        assert_eq!(problems(route().max_attempts(0)), [RouteError::MaxAttempts]);
    }

    #[test]
    fn every_problem_is_kept() {
        let found = problems(
            TaskRoute::new("bad name", noop)
                .path("a..b")
                .ack_deadline(5)
                .schedule("61 * * * *")
                .timezone("Nowhere/Land")
                .kill_switch("1BAD"),
        );
        let text: Vec<String> = found.iter().map(ToString::to_string).collect();
        assert_eq!(text.len(), 6, "{text:#?}");
        assert_eq!(text[0], "task name `bad name` contains ' '; allowed are letters, digits and _");
        assert_eq!(text[1], "task path `a..b` must be identifiers joined by dots");
        assert_eq!(text[2], "kill switch variable `1BAD` must start with a letter");
        assert_eq!(text[3], "schedule \"61 * * * *\": minute: 61 is out of range 0-59");
        assert!(text[4].starts_with("schedule_timezone: unknown time zone \"Nowhere/Land\""), "{}", text[4]);
        assert_eq!(text[5], "ack_deadline 5 is outside 10..=600 seconds");
    }

    #[test]
    fn the_last_setting_of_an_option_counts() {
        let route =
            route().path("a..b").path("a.b").schedule("bad").schedule("0 3 * * *").timezone("X").timezone("UTC");
        assert!(problems(route).is_empty());
    }

    #[test]
    fn resource_names() {
        let naming = Naming::new("prod", "gyrinx").unwrap();
        let route = || TaskRoute::new("cleanup_old_data", noop).path("gyrinx.core.tasks.cleanup_old_data");
        let on_demand = route().into_route().unwrap();
        assert_eq!(on_demand.topic_name(&naming), "prod--gyrinx.tasks--gyrinx.core.tasks.cleanup_old_data");
        assert_eq!(on_demand.subscription_name(&naming), "prod--gyrinx.tasks--gyrinx.core.tasks.cleanup_old_data-sub");
        assert_eq!(on_demand.scheduler_job_name(&naming), None);
        let scheduled = route().schedule("0 3 * * *").into_route().unwrap();
        assert!(scheduled.is_scheduled());
        assert_eq!(scheduled.schedule().map(Schedule::expression), Some("0 3 * * *"));
        assert_eq!(
            scheduled.scheduler_job_name(&naming).as_deref(),
            Some("prod--gyrinx-scheduler--gyrinx-core-tasks-cleanup_old_data")
        );
    }

    #[test]
    fn names_too_long_for_google_are_problems() {
        let long = |length: usize| {
            TaskRoute::new("t", noop)
                .path(format!("a.{}", "b".repeat(length)))
                .schedule("0 3 * * *")
                .into_route()
                .unwrap()
        };
        let kinds = |route: Route| -> Vec<NameKind> {
            route
                .name_problems(&Naming::default())
                .into_iter()
                .map(|problem| match problem {
                    RouteError::Name(error) => error.kind,
                    other => panic!("{other}"),
                })
                .collect()
        };
        // dev--gyrinx.tasks-- is 19 characters and -sub 4 more.
        assert_eq!(kinds(long(230)), []);
        assert_eq!(kinds(long(231)), [NameKind::Subscription]);
        assert_eq!(kinds(long(235)), [NameKind::Topic, NameKind::Subscription]);
        assert_eq!(kinds(long(475)).last(), Some(&NameKind::Subscription));
        // dev--gyrinx-scheduler-- is 23 characters.
        assert_eq!(kinds(long(476)).last(), Some(&NameKind::SchedulerJob));
    }

    #[test]
    fn kill_switch_reads_off_values_only() {
        let route = route().kill_switch("ENABLE_WELCOME").into_route().unwrap();
        assert_eq!(route.kill_switch(), Some("ENABLE_WELCOME"));
        for off in ["false", "FALSE", "0", "no", "Off", " off "] {
            assert!(!route.is_enabled_by(Some(off)), "{off}");
        }
        for on in ["true", "1", "yes", "on", "", "anything"] {
            assert!(route.is_enabled_by(Some(on)), "{on}");
        }
        assert!(route.is_enabled_by(None));
        let without = self::route().into_route().unwrap();
        assert!(without.is_enabled_by(Some("false")), "no kill switch, nothing to switch off");
    }

    #[test]
    fn fire_times_follow_the_schedule_in_its_timezone() {
        let after = Utc.with_ymd_and_hms(2024, 7, 1, 0, 0, 0).unwrap();
        let route = route().schedule("0 9 * * *").timezone("Europe/London").into_route().unwrap();
        let first = route.fire_times_after(after).next().unwrap();
        assert_eq!(first.with_timezone(&Utc), Utc.with_ymd_and_hms(2024, 7, 1, 8, 0, 0).unwrap());
        assert_eq!(self::route().into_route().unwrap().fire_times_after(after).count(), 0);
    }

    #[test]
    fn function_paths_resolve_like_rust_paths() {
        let resolve = |written| resolve_function_path("shop::jobs::registry", written);
        let pair = |name: &str, path: &str| (name.to_owned(), path.to_owned());
        assert_eq!(resolve("crate::tasks::send"), pair("send", "shop.tasks.send"));
        assert_eq!(resolve("crate :: tasks :: send"), pair("send", "shop.tasks.send"));
        assert_eq!(resolve("send"), pair("send", "shop.jobs.registry.send"));
        assert_eq!(resolve("self::send"), pair("send", "shop.jobs.registry.send"));
        assert_eq!(resolve("emails::send"), pair("send", "shop.jobs.registry.emails.send"));
        assert_eq!(resolve("super::send"), pair("send", "shop.jobs.send"));
        assert_eq!(resolve("super::super::send"), pair("send", "shop.send"));
    }

    #[test]
    fn a_path_that_is_not_where_the_function_is_defined_is_refused_with_what_to_write() {
        let refused = |module, written: &str, function| {
            let (_, path) = resolve_function_path(module, written);
            misplaced(module, written, function, &path).map(|error| error.to_string())
        };
        let inside = refused("shop::tasks", "tasks::send", "shop::tasks::send").unwrap();
        assert_eq!(
            inside,
            "task_route!(tasks::send) in module shop::tasks would get path shop.tasks.tasks.send, but the function \
             is shop::tasks::send: write task_route!(crate::tasks::send)"
        );
        let sibling = refused("shop::tasks", "emails::send", "shop::emails::send").unwrap();
        assert!(sibling.ends_with("write task_route!(crate::emails::send)"), "{sibling}");
        let imported = refused("shop::jobs", "send", "shop::emails::send").unwrap();
        assert!(imported.contains("would get path shop.jobs.send"), "{imported}");
        let from_binary = refused("worker", "my_service::tasks::send", "my_service::tasks::send").unwrap();
        assert!(from_binary.contains(r#"write .path("my_service.tasks.send"), or declare"#), "{from_binary}");
        let same_name = refused("my_service", "my_service::tasks::send", "my_service::tasks::send").unwrap();
        assert!(same_name.contains(r#"write .path("my_service.tasks.send")"#), "{same_name}");
        let fine = [
            ("send", "shop::tasks::send"),
            ("crate::emails::send", "shop::emails::send"),
            ("super::send", "shop::send"),
        ];
        for (written, function) in fine {
            assert_eq!(refused("shop::tasks", written, function), None, "{written}");
        }
        // A function named like its own module, in a module of its own.
        assert_eq!(refused("shop::cleanup", "cleanup", "shop::cleanup::cleanup"), None);
    }

    #[test]
    fn without_a_plain_type_name_a_doubled_module_is_still_refused() {
        let closure = "shop::tasks::registry::{{closure}}";
        let refused = |module, written: &str| {
            let (_, path) = resolve_function_path(module, written);
            misplaced(module, written, closure, &path).map(|error| error.to_string())
        };
        let inside = refused("shop::tasks", "tasks::send").unwrap();
        assert_eq!(
            inside,
            "task_route!(tasks::send) in module shop::tasks would get path shop.tasks.tasks.send, naming its module \
             twice; write task_route!(send) or task_route!(crate::tasks::send) (or self::tasks::send if a module \
             inside shop::tasks is meant)"
        );
        let from_binary = refused("my_service", "my_service::tasks::send").unwrap();
        assert!(from_binary.contains(r#".path("my_service.tasks.send")"#), "{from_binary}");
        for fine in ["send", "cleanup", "crate::tasks::send", "self::tasks::send", "super::send", "emails::send"] {
            assert_eq!(refused("shop::tasks", fine), None, "{fine}");
        }
        assert_eq!(refused("shop::cleanup", "cleanup"), None, "one segment is never doubled");
    }

    #[test]
    fn the_macro_refuses_a_doubled_module_when_the_route_is_checked() {
        let errors = emails::doubled().into_route().err().unwrap();
        let doubled = |path: &str| path.ends_with("emails.emails.send_welcome_email");
        assert!(matches!(&errors[..], [RouteError::Misplaced { path, .. }] if doubled(path)), "{errors:?}");
        let fixed = emails::doubled().path("app.emails.send_welcome_email").into_route();
        assert!(fixed.is_ok(), "setting the path as the error says is enough");
        let type_name = std::any::type_name_of_val(&emails::send_welcome_email);
        assert_eq!(type_name, "whirligig_registry::route::tests::emails::send_welcome_email");
    }

    mod emails {
        // As a user's `mod tasks { use super::*; ... }` does: `emails` itself is in scope.
        use super::*;

        pub(super) async fn send_welcome_email(_: TaskContext) {}

        pub(super) fn doubled() -> TaskRoute {
            crate::task_route!(emails::send_welcome_email)
        }
    }

    #[test]
    fn the_macro_names_the_route_after_the_function_and_its_module() {
        let route = crate::task_route!(emails::send_welcome_email).into_route().unwrap();
        assert_eq!(route.name(), "send_welcome_email");
        assert_eq!(route.path(), "whirligig_registry.route.tests.emails.send_welcome_email");
        let from_root = crate::task_route!(crate::route::tests::emails::send_welcome_email).into_route().unwrap();
        assert_eq!(from_root.path(), route.path());
        let from_self = crate::task_route!(self::emails::send_welcome_email).into_route().unwrap();
        assert_eq!(from_self.path(), route.path());
    }

    #[test]
    fn call_runs_the_task_function() {
        let route = route().into_route().unwrap();
        assert!(route.call(TaskContext::new("t"), &RawArguments::empty()).is_ok());
        let args: &serde_json::value::RawValue = serde_json::from_str("[1]").unwrap();
        let kwargs: &serde_json::value::RawValue = serde_json::from_str("{}").unwrap();
        let error = route.call(TaskContext::new("t"), &RawArguments::new(args, kwargs).unwrap()).err().unwrap();
        assert_eq!(error.reason(), "the task takes no args, got [1]");
    }
}
