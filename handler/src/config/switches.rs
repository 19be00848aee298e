//! The routes' kill switches, read once at start: a Cloud Run revision's
//! environment never changes while it runs, so a delivery asks a map, not
//! the environment.

use std::collections::HashMap;

use whirligig_registry::{Registry, Route};

use super::Reader;

/// The value of every kill switch a route declares and the environment sets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KillSwitches {
    values: HashMap<String, String>,
}

impl KillSwitches {
    /// The kill switches of `registry`'s routes, as `lookup` sets them.
    pub fn from_lookup(registry: &Registry, lookup: &dyn Fn(&str) -> Option<String>) -> Self {
        Self::read(registry, &Reader::new(lookup))
    }

    pub(super) fn read(registry: &Registry, reader: &Reader<'_>) -> Self {
        let variables = registry.routes().filter_map(Route::kill_switch);
        Self { values: variables.filter_map(|name| Some((name.to_owned(), reader.text(name)?))).collect() }
    }

    /// The variable that turns `route` off, if it is off.
    pub fn disabled_by<'r>(&self, route: &'r Route) -> Option<&'r str> {
        let variable = route.kill_switch()?;
        (!route.is_enabled_by(self.values.get(variable).map(String::as_str))).then_some(variable)
    }
}

#[cfg(test)]
mod tests {
    use whirligig_registry::{TaskContext, TaskRoute};

    use super::*;

    #[test]
    fn a_route_is_off_only_while_its_own_switch_says_so() {
        let task = |_: TaskContext| async {};
        let registry = Registry::builder()
            .route(TaskRoute::new("nightly", task).kill_switch("ENABLE_NIGHTLY"))
            .route(TaskRoute::new("hourly", task).kill_switch("ENABLE_HOURLY"))
            .route(TaskRoute::new("always", task))
            .build()
            .unwrap();
        let switches = KillSwitches::from_lookup(&registry, &|name| match name {
            "ENABLE_NIGHTLY" => Some(" Off ".to_owned()),
            "ENABLE_HOURLY" => Some("yes".to_owned()),
            _ => Some("off".to_owned()),
        });
        let route = |name| registry.get(name).unwrap();
        assert_eq!(switches.disabled_by(route("nightly")), Some("ENABLE_NIGHTLY"));
        assert_eq!(switches.disabled_by(route("hourly")), None);
        assert_eq!(switches.disabled_by(route("always")), None, "no switch, never off");
        assert_eq!(KillSwitches::default().disabled_by(route("nightly")), None, "unset means on");
    }
}
