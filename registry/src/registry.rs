//! [`Registry`]: every route of a service, built once, looked up by task name
//! in O(1) and listed in declaration order. Building checks every route and
//! reports all problems together, each with its route's name.

use std::fmt;

use indexmap::IndexMap;
use indexmap::map::Entry;

use crate::naming::Naming;
use crate::route::{Route, RouteError, TaskRoute};

/// The routes of a service.
#[derive(Debug)]
pub struct Registry {
    routes: IndexMap<String, Route>,
}

/// Collects routes for [`Registry`]; see [`RegistryBuilder::build`].
#[derive(Debug, Default)]
pub struct RegistryBuilder {
    routes: Vec<TaskRoute>,
}

impl Registry {
    /// Starts an empty registry.
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::default()
    }

    /// The route for `task_name`.
    pub fn get(&self, task_name: &str) -> Option<&Route> {
        self.routes.get(task_name)
    }

    /// The route for `task_name`, or an error that names the closest task
    /// (a typo) or lists the known ones.
    pub fn find(&self, task_name: &str) -> Result<&Route, UnknownTask> {
        self.get(task_name).ok_or_else(|| self.unknown(task_name))
    }

    /// Why `task_name` is not a task here, with the closest name, or the known ones.
    pub fn unknown(&self, task_name: &str) -> UnknownTask {
        // The distance is at least the difference in length: a name far
        // longer than any task (a pushed message can say anything) is never
        // compared, so its cost stays linear in its length.
        let length = task_name.chars().count();
        let closest = self
            .routes
            .keys()
            .map(|known| (known, (known.chars().count() / 3).max(1)))
            .filter(|(known, within)| known.chars().count().abs_diff(length) <= *within)
            .map(|(known, within)| (strsim::damerau_levenshtein(task_name, known), within, known))
            .filter(|(distance, within, _)| distance <= within)
            .min_by_key(|(distance, ..)| *distance)
            .map(|(.., known)| known.clone());
        let known = if closest.is_some() { Vec::new() } else { self.routes.keys().cloned().collect() };
        UnknownTask { name: task_name.to_owned(), closest, known }
    }

    /// Every route, in the order it was declared.
    pub fn routes(&self) -> impl ExactSizeIterator<Item = &Route> {
        self.routes.values()
    }

    /// How many routes there are.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True when no route is registered.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Checks every resource name under `naming` (the configured environment
    /// and namespace) against Pub/Sub's and Cloud Scheduler's rules.
    /// [`RegistryBuilder::build`] checks them for the default `dev` and
    /// `gyrinx`; a longer environment can push a name over a limit, so the
    /// runner checks again with its configuration.
    pub fn check_names(&self, naming: &Naming) -> Result<(), RegistryError> {
        let problems = self.routes().flat_map(|route| {
            route.name_problems(naming).into_iter().map(|error| RouteProblem { route: route.name().to_owned(), error })
        });
        RegistryError::from_problems(problems.collect())
    }
}

impl RegistryBuilder {
    /// Adds a route.
    #[must_use]
    pub fn route(mut self, route: TaskRoute) -> Self {
        self.routes.push(route);
        self
    }

    /// Checks every route and builds the registry, or reports every problem
    /// found: invalid options, duplicate names, two routes sharing a path
    /// (and so a topic), and resource names that break Google's rules.
    pub fn build(self) -> Result<Registry, RegistryError> {
        let mut routes = IndexMap::with_capacity(self.routes.len());
        let mut paths: IndexMap<String, String> = IndexMap::new();
        let mut problems = Vec::new();
        for task_route in self.routes {
            let name = task_route.name().to_owned();
            let mut report = |error| problems.push(RouteProblem { route: name.clone(), error });
            let route = match task_route.into_route() {
                Ok(route) => route,
                Err(errors) => {
                    errors.into_iter().for_each(&mut report);
                    continue;
                }
            };
            if let Some(other) = paths.insert(route.path().to_owned(), name.clone()) {
                report(RouteError::DuplicatePath(other, route.path().to_owned()));
            }
            match routes.entry(name.clone()) {
                Entry::Occupied(_) => report(RouteError::DuplicateName(name.clone())),
                Entry::Vacant(slot) => {
                    slot.insert(route);
                }
            }
        }
        RegistryError::from_problems(problems)?;
        let registry = Registry { routes };
        registry.check_names(&Naming::default())?;
        Ok(registry)
    }
}

/// A task name no route has: what was asked, and what there is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct UnknownTask {
    /// The name asked for.
    pub name: String,
    /// The known name one typo away, if there is one.
    pub closest: Option<String>,
    /// Every known name, when none is close.
    pub known: Vec<String>,
}

/// At most this many known names are listed.
const LISTED: usize = 12;

impl fmt::Display for UnknownTask {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "unknown task {:?}", self.name)?;
        if let Some(closest) = &self.closest {
            return write!(f, ": did you mean {closest:?}?");
        }
        if self.known.is_empty() {
            return f.write_str(": the registry has no tasks");
        }
        let listed: Vec<&str> = self.known.iter().take(LISTED).map(String::as_str).collect();
        write!(f, "; known tasks: {}", listed.join(", "))?;
        match self.known.len().saturating_sub(LISTED) {
            0 => Ok(()),
            more => write!(f, " and {more} more"),
        }
    }
}

/// One problem with one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteProblem {
    /// The route's task name.
    pub route: String,
    /// What is wrong.
    pub error: RouteError,
}

impl fmt::Display for RouteProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.route, self.error)
    }
}

/// Every problem found while building or checking a registry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RegistryError {
    problems: Vec<RouteProblem>,
}

impl RegistryError {
    fn from_problems(problems: Vec<RouteProblem>) -> Result<(), Self> {
        if problems.is_empty() { Ok(()) } else { Err(Self { problems }) }
    }

    /// The problems, in declaration order of their routes.
    pub fn problems(&self) -> &[RouteProblem] {
        &self.problems
    }
}

impl fmt::Display for RegistryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        write!(f, "{count} problem{} in the task registry:", if count == 1 { "" } else { "s" })?;
        self.problems.iter().try_for_each(|problem| write!(f, "\n  {problem}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::context::TaskContext;
    use crate::naming::NameKind;

    async fn noop(_: TaskContext) {}

    #[test]
    fn looks_routes_up_by_name_and_keeps_declaration_order() {
        let registry = Registry::builder()
            .route(TaskRoute::new("zeta", noop))
            .route(TaskRoute::new("alpha", noop).path("app.tasks.alpha"))
            .route(TaskRoute::new("mid", noop))
            .build()
            .unwrap();
        assert_eq!(registry.len(), 3);
        assert_eq!(registry.get("alpha").map(Route::path), Some("app.tasks.alpha"));
        assert!(registry.get("missing").is_none());
        let names: Vec<&str> = registry.routes().map(Route::name).collect();
        assert_eq!(names, ["zeta", "alpha", "mid"]);
    }

    #[test]
    fn an_unknown_task_names_the_closest_or_lists_the_known_ones() {
        let registry = Registry::builder()
            .route(TaskRoute::new("send_welcome_email", noop))
            .route(TaskRoute::new("echo", noop))
            .build()
            .unwrap();
        assert!(registry.find("echo").is_ok());
        let typo = registry.find("ecoh").unwrap_err();
        assert_eq!(typo.closest.as_deref(), Some("echo"));
        assert_eq!(typo.to_string(), r#"unknown task "ecoh": did you mean "echo"?"#);
        assert_eq!(registry.unknown("send_welcom_email").closest.as_deref(), Some("send_welcome_email"));
        let far = registry.unknown("cleanup");
        assert_eq!(far.closest, None);
        assert_eq!(far.to_string(), r#"unknown task "cleanup"; known tasks: send_welcome_email, echo"#);
        let many = (0..20).fold(Registry::builder(), |b, i| b.route(TaskRoute::new(format!("task_{i:02}"), noop)));
        let listed = many.build().unwrap().unknown("zzzzzzzzzzzz").to_string();
        assert!(listed.ends_with("task_11 and 8 more"), "{listed}");
        let huge = "e".repeat(1 << 20);
        assert_eq!(
            registry.unknown(&huge).closest,
            None,
            "a megabyte name gets an answer (its cost is not asserted here)"
        );
        let empty = Registry::builder().build().unwrap().unknown("x").to_string();
        assert_eq!(empty, r#"unknown task "x": the registry has no tasks"#);
    }

    #[test]
    fn a_registry_is_shared_across_threads() {
        use std::sync::Arc;
        use std::task::{Context, Poll, Waker};

        let registry = Arc::new(Registry::builder().route(TaskRoute::new("noop", noop)).build().unwrap());
        let shared = Arc::clone(&registry);
        let output = std::thread::spawn(move || {
            let route = shared.get("noop").unwrap();
            let mut running = route.call(TaskContext::new("t"), &crate::task::RawArguments::empty()).unwrap();
            match running.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
                Poll::Ready(output) => output.unwrap().get().to_owned(),
                Poll::Pending => panic!("noop waited"),
            }
        });
        assert_eq!(output.join().unwrap(), "null");
    }

    #[test]
    fn an_empty_registry_is_allowed() {
        assert!(Registry::builder().build().unwrap().is_empty());
    }

    #[test]
    fn duplicate_names_and_paths_are_rejected() {
        let error = Registry::builder()
            .route(TaskRoute::new("a", noop).path("x.a"))
            .route(TaskRoute::new("a", noop).path("y.a"))
            .route(TaskRoute::new("b", noop).path("x.a"))
            .build()
            .unwrap_err();
        assert_eq!(
            error.problems(),
            [
                RouteProblem { route: "a".into(), error: RouteError::DuplicateName("a".into()) },
                RouteProblem { route: "b".into(), error: RouteError::DuplicatePath("a".into(), "x.a".into()) },
            ]
        );
    }

    #[test]
    fn build_reports_every_invalid_route_at_once() {
        let error = Registry::builder()
            .route(TaskRoute::new("good", noop))
            .route(TaskRoute::new("slow", noop).ack_deadline(601))
            .route(TaskRoute::new("cron", noop).schedule("* * * * 9").min_retry_delay(700))
            .build()
            .unwrap_err();
        let routes: Vec<&str> = error.problems().iter().map(|p| p.route.as_str()).collect();
        assert_eq!(routes, ["slow", "cron", "cron"]);
        assert_eq!(
            error.to_string(),
            "3 problems in the task registry:\n  \
             slow: ack_deadline 601 is outside 10..=600 seconds\n  \
             cron: schedule \"* * * * 9\": day-of-week: 9 is out of range 0-7\n  \
             cron: min_retry_delay 700 is greater than max_retry_delay 600"
        );
    }

    #[test]
    fn names_are_checked_for_the_default_and_the_configured_environment() {
        let path = format!("app.{}", "t".repeat(226));
        let registry = Registry::builder().route(TaskRoute::new("t", noop).path(path.clone())).build().unwrap();
        let long_env = Naming::new("production", "gyrinx").unwrap();
        let error = registry.check_names(&long_env).unwrap_err();
        assert_eq!(error.problems().len(), 2);
        assert!(matches!(&error.problems()[0].error, RouteError::Name(e) if e.kind == NameKind::Topic));

        let too_long = format!("app.{}", "t".repeat(240));
        let error = Registry::builder().route(TaskRoute::new("t", noop).path(too_long)).build().unwrap_err();
        assert!(error.to_string().contains("topic name `dev--gyrinx.tasks--app.ttt"), "{error}");
    }
}
