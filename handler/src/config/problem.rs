//! What can be wrong with the environment: one [`Problem`] per variable (or
//! pair of them), all of them gathered in one [`ConfigError`].

use std::fmt;

use whirligig_registry::NameError;

/// One thing wrong with the environment; its text says what to fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    /// A value that does not parse, or is out of range.
    #[error("{variable}={value:?} is not a valid value")]
    Invalid {
        /// The variable.
        variable: &'static str,
        /// What it was set to.
        value: String,
    },
    /// A word the setting does not know.
    #[error("{variable}={value:?}: expected {expected}")]
    Unknown {
        /// The variable.
        variable: &'static str,
        /// What it was set to.
        value: String,
        /// What it may be.
        expected: &'static str,
    },
    /// A variable every environment but dev needs.
    #[error("{variable} is required when TASKS_ENVIRONMENT is {environment:?} (not \"dev\")")]
    Missing {
        /// The variable.
        variable: &'static str,
        /// The environment that needs it.
        environment: String,
    },
    /// `TASKS_AUTH=none` outside dev.
    #[error("TASKS_AUTH=none is allowed only when TASKS_ENVIRONMENT is \"dev\"")]
    NoAuthOutsideDev,
    /// A token mode without what its checks compare with.
    #[error("TASKS_AUTH={mode} needs {needs}")]
    AuthNeeds {
        /// `oidc` or `cloud-run-iam`.
        mode: String,
        /// The variables it needs.
        needs: &'static str,
    },
    /// A URL that is not one.
    #[error("{variable}={value:?} is not an absolute URL")]
    NotUrl {
        /// The variable.
        variable: &'static str,
        /// What it was set to.
        value: String,
    },
    /// Keys fetched over plain HTTP from another machine could be swapped on the way.
    #[error("{variable}={value:?} must be https (plain http only on loopback)")]
    Insecure {
        /// The variable.
        variable: &'static str,
        /// What it was set to.
        value: String,
    },
    /// An OTLP endpoint the exporter cannot post to.
    #[error("{variable}: {endpoint:?} is not an http(s) URL")]
    NotHttp {
        /// The variable the endpoint came from.
        variable: &'static str,
        /// The endpoint, `/v1/traces` added when it came from the base URL.
        endpoint: String,
    },
    /// An OTLP protocol other than the one built in.
    #[error("{variable}={value:?}: only http/protobuf is built in (a collector takes it on port 4318)")]
    Protocol {
        /// The variable.
        variable: &'static str,
        /// What it was set to.
        value: String,
    },
    /// `DATABASE_URL` does not parse (its text is not repeated: it may hold a password).
    #[error("DATABASE_URL is not a valid PostgreSQL URL")]
    DatabaseUrl,
    /// `TASKS_ENVIRONMENT` or `TASKS_NAMESPACE` would make invalid resource names.
    #[error("TASKS_ENVIRONMENT/TASKS_NAMESPACE: {0}")]
    Naming(NameError),
}

/// Every problem found in the environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    problems: Vec<Problem>,
}

impl ConfigError {
    pub(super) fn new(problems: Vec<Problem>) -> Self {
        Self { problems }
    }

    /// Each problem, in the order the variables were read.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid configuration:")?;
        self.problems.iter().try_for_each(|problem| write!(f, "\n  {problem}"))
    }
}
