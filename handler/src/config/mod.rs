//! Configuration: every variable the process reads, loaded once from the
//! environment and checked together, so one message names every problem.
//! Nothing else reads the environment: not a delivery (its kill switch), not
//! a job (its shard and trace). Secrets (the password in DATABASE_URL) never
//! reach a log line.

mod enqueue;
mod job;
mod problem;
#[cfg(feature = "server")]
mod provision;
mod redact;
mod switches;
#[cfg(feature = "server")]
mod telemetry;

use std::fmt;
use std::time::Duration;

use whirligig_registry::{DEFAULT_ENVIRONMENT, DEFAULT_NAMESPACE, Naming, Registry};

pub(crate) use self::enqueue::EMULATOR_PROJECT;
pub use self::enqueue::{Backend, EnqueueConfig};
pub use self::job::JobConfig;
pub use self::problem::{ConfigError, Problem};
#[cfg(feature = "server")]
pub(crate) use self::provision::DELIVERY_ATTEMPTS;
#[cfg(feature = "server")]
pub use self::provision::ProvisionConfig;
pub(crate) use self::redact::redact;
pub use self::switches::KillSwitches;
#[cfg(feature = "server")]
use crate::auth::OidcSettings;
#[cfg(feature = "server")]
use crate::telemetry::TelemetryConfig;

/// The development environment: the only one where the in-memory store is allowed.
const DEV: &str = "dev";

#[cfg(feature = "server")]
const GOOGLE_ISSUER: &str = "https://accounts.google.com";
#[cfg(feature = "server")]
const GOOGLE_JWKS: &str = "https://www.googleapis.com/oauth2/v3/certs";

/// The process's configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// `TASKS_ENVIRONMENT` and `TASKS_NAMESPACE`, which prefix every resource name.
    pub naming: Naming,
    /// `GCP_PROJECT_ID`.
    pub project_id: Option<String>,
    /// `CLOUD_RUN_SERVICE_URL`.
    pub service_url: Option<String>,
    /// `TASKS_SERVICE_ACCOUNT`: the account Pub/Sub signs push tokens as.
    pub service_account: Option<String>,
    /// `SCHEDULER_LOCATION` (default europe-west2).
    pub scheduler_location: String,
    /// `PORT` (default 8080).
    pub port: u16,
    /// `DATABASE_URL` and the pool settings; none means the in-memory store.
    pub database: Option<DatabaseConfig>,
    /// `TASKS_AUTH`, with what OIDC verification needs.
    #[cfg(feature = "server")]
    pub auth: AuthConfig,
    /// The routes' kill switches.
    pub kill_switches: KillSwitches,
    /// What Cloud Run tells a job's task, and the trace it continues.
    pub job: JobConfig,
    /// `OTEL_*`, `LOG_FORMAT` and `RUST_LOG`, with what Cloud Run says about the instance.
    #[cfg(feature = "server")]
    pub telemetry: TelemetryConfig,
    /// `TASKS_BACKEND`, and how publishing reaches Pub/Sub.
    pub enqueue: EnqueueConfig,
    /// What `provision` needs beyond that: Cloud Scheduler, IAM, push settings.
    #[cfg(feature = "server")]
    pub provision: ProvisionConfig,
}

/// What a command needs set outside dev: each command of the CLI asks for
/// its own (`routes` needs only names; `provision` no database).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    project: bool,
    push: bool,
    database: bool,
}

impl Needs {
    /// Serving pushes and running tasks: the project, who signs pushes, where results go.
    pub const EVERYTHING: Self = Self { project: true, push: true, database: true };
    /// Resource names: nothing beyond the environment and namespace.
    pub const NAMES: Self = Self { project: false, push: false, database: false };
    /// Talking to Pub/Sub (enqueue, result): `GCP_PROJECT_ID`.
    pub const PROJECT: Self = Self { project: true, ..Self::NAMES };
    /// Provisioning: the project, and the push subscriptions' endpoint
    /// (`CLOUD_RUN_SERVICE_URL`) and account (`TASKS_SERVICE_ACCOUNT`).
    pub const PROVISION: Self = Self { project: true, push: true, database: false };
    /// Running a task as a job: the project (its log lines' traces) and
    /// `DATABASE_URL`; nothing about pushes.
    pub const JOB: Self = Self { project: true, push: false, database: true };
    /// Migrating: `DATABASE_URL` alone.
    pub const DATABASE: Self = Self { database: true, ..Self::NAMES };
}

/// How a configuration is loaded: what is required, and the name spans
/// carry when no variable names the service.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Loading {
    pub(crate) needs: Needs,
    /// Spans' `service.name` when no variable names it (traces are built
    /// only with the server).
    #[cfg(feature = "server")]
    pub(crate) service_name: &'static str,
}

impl Default for Loading {
    /// What the public loaders require: everything a serving process needs
    /// (with the server built), else the project alone.
    fn default() -> Self {
        let needs = if cfg!(feature = "server") { Needs::EVERYTHING } else { Needs::PROJECT };
        Self::needing(needs)
    }
}

impl Loading {
    /// What `needs` names, traces named `whirligig`.
    fn needing(needs: Needs) -> Self {
        Self {
            needs,
            #[cfg(feature = "server")]
            service_name: "whirligig",
        }
    }
}

/// How push requests are authenticated.
#[cfg(feature = "server")]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthConfig {
    /// `none`: dev only.
    None,
    /// `oidc`: the default outside dev.
    Oidc(OidcSettings),
    /// `cloud-run-iam`: Cloud Run checked the signature.
    CloudRunIam(OidcSettings),
}

/// Where executions are stored.
#[derive(Clone)]
pub struct DatabaseConfig {
    /// `DATABASE_URL`; printed with its password hidden.
    pub url: String,
    /// `DATABASE_POOL_SIZE` (default 10).
    pub pool_size: u32,
    /// `DATABASE_POOL_TIMEOUT_MS` (default 250).
    pub pool_timeout: Duration,
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact(&self.url))
            .field("pool_size", &self.pool_size)
            .field("pool_timeout", &self.pool_timeout)
            .finish()
    }
}

/// Reads variables, collecting problems instead of stopping at the first.
struct Reader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    problems: Vec<Problem>,
}

impl<'a> Reader<'a> {
    fn new(lookup: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Self { lookup, problems: Vec::new() }
    }

    /// An unset or empty variable counts as absent.
    fn text(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|value| !value.trim().is_empty())
    }

    fn number<T: std::str::FromStr>(&mut self, variable: &'static str, default: T, valid: impl Fn(&T) -> bool) -> T {
        let Some(value) = self.text(variable) else { return default };
        match value.trim().parse() {
            Ok(number) if valid(&number) => number,
            _ => {
                self.problems.push(Problem::Invalid { variable, value });
                default
            }
        }
    }

    /// `TASKS_AUTH`: `none` by default in dev and refused outside it; `oidc`
    /// by default elsewhere. Both token modes need an audience and an account.
    #[cfg(feature = "server")]
    fn auth(&mut self, dev: bool, service_url: Option<&str>, service_account: Option<&str>) -> AuthConfig {
        let mode = self.text("TASKS_AUTH").unwrap_or_else(|| if dev { "none" } else { "oidc" }.to_owned());
        match mode.trim() {
            "none" if dev => AuthConfig::None,
            "none" => {
                self.problems.push(Problem::NoAuthOutsideDev);
                AuthConfig::None
            }
            "oidc" => AuthConfig::Oidc(self.oidc(&mode, dev, service_url, service_account)),
            "cloud-run-iam" => AuthConfig::CloudRunIam(self.oidc(&mode, dev, service_url, service_account)),
            other => {
                let value = other.to_owned();
                self.problems.push(Problem::Unknown {
                    variable: "TASKS_AUTH",
                    value,
                    expected: "oidc, cloud-run-iam or none",
                });
                AuthConfig::None
            }
        }
    }

    /// What a token must say, and where its keys are.
    #[cfg(feature = "server")]
    fn oidc(&mut self, mode: &str, dev: bool, service_url: Option<&str>, account: Option<&str>) -> OidcSettings {
        let audience = self.text("TASKS_OIDC_AUDIENCE").or_else(|| service_url.map(str::to_owned));
        // Outside dev the missing variables are named anyway.
        let needs = |needs| Problem::AuthNeeds { mode: mode.to_owned(), needs };
        if audience.is_none() && dev {
            self.problems.push(needs("TASKS_OIDC_AUDIENCE or CLOUD_RUN_SERVICE_URL"));
        }
        if account.is_none() && dev {
            self.problems.push(needs("TASKS_SERVICE_ACCOUNT"));
        }
        let issuer = self.key_url("TASKS_OIDC_ISSUER", GOOGLE_ISSUER);
        let jwks_url = self.key_url("TASKS_OIDC_JWKS_URL", GOOGLE_JWKS);
        OidcSettings {
            issuer,
            jwks_url,
            audience: audience.unwrap_or_default(),
            service_account: account.unwrap_or_default().to_owned(),
        }
    }

    /// Keys and tokens sent over plain HTTP could be read or swapped on the
    /// way: HTTPS, unless the server is on this machine (tests, an emulator).
    fn key_url(&mut self, variable: &'static str, default: &str) -> String {
        let value = self.text(variable).unwrap_or_else(|| default.to_owned());
        let Ok(url) = reqwest::Url::parse(&value) else {
            self.problems.push(Problem::NotUrl { variable, value: value.clone() });
            return value;
        };
        let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
        if url.scheme() != "https" && !(url.scheme() == "http" && loopback) {
            self.problems.push(Problem::Insecure { variable, value: value.clone() });
        }
        value
    }

    fn naming(&mut self, environment: String) -> Naming {
        let namespace = self.text("TASKS_NAMESPACE").unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        Naming::new(environment, namespace).unwrap_or_else(|error| {
            self.problems.push(Problem::Naming(error));
            Naming::default()
        })
    }

    fn database(&mut self) -> Option<DatabaseConfig> {
        let pool_size = self.number("DATABASE_POOL_SIZE", 10_u32, |size| *size > 0);
        let pool_timeout = Duration::from_millis(self.number("DATABASE_POOL_TIMEOUT_MS", 250_u64, |ms| *ms > 0));
        let url = self.text("DATABASE_URL")?;
        #[cfg(feature = "postgres")]
        if url.parse::<tokio_postgres::Config>().is_err() {
            self.problems.push(Problem::DatabaseUrl);
        }
        Some(DatabaseConfig { url, pool_size, pool_timeout })
    }
}

impl Config {
    /// Loads the configuration from the process environment, with the kill
    /// switches `registry`'s routes declare.
    pub fn from_env(registry: &Registry) -> Result<Self, ConfigError> {
        Self::from_lookup(registry, &|name| std::env::var(name).ok())
    }

    /// Loads the configuration from `lookup` (the environment, or a test's map).
    pub fn from_lookup(registry: &Registry, lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        Self::load(registry, lookup, &Loading::default())
    }

    /// Loads the configuration from `lookup`, requiring outside dev only what
    /// `needs` names.
    pub fn from_lookup_needing(
        registry: &Registry,
        lookup: &dyn Fn(&str) -> Option<String>,
        needs: Needs,
    ) -> Result<Self, ConfigError> {
        Self::load(registry, lookup, &Loading::needing(needs))
    }

    /// Loads the configuration a command needs: outside dev, only what
    /// `loading` names is required (`routes` needs nothing but names).
    pub(crate) fn load(
        registry: &Registry,
        lookup: &dyn Fn(&str) -> Option<String>,
        loading: &Loading,
    ) -> Result<Self, ConfigError> {
        let mut reader = Reader::new(lookup);
        let environment = reader.text("TASKS_ENVIRONMENT").unwrap_or_else(|| DEFAULT_ENVIRONMENT.to_owned());
        // An environment the naming refuses still decides which rules apply.
        let dev = environment == DEV;
        let naming = reader.naming(environment.clone());
        let port = reader.number("PORT", 8080_u16, |_| true);
        let database = reader.database();
        let service_url = reader.text("CLOUD_RUN_SERVICE_URL");
        let service_account = reader.text("TASKS_SERVICE_ACCOUNT");
        #[cfg(feature = "server")]
        let auth = reader.auth(dev, service_url.as_deref(), service_account.as_deref());
        let project_id = reader.text("GCP_PROJECT_ID");
        let job = reader.job();
        #[cfg(feature = "server")]
        let telemetry = reader.telemetry(dev, project_id.as_deref(), &job, loading.service_name);
        let enqueue = reader.enqueue(dev);
        #[cfg(feature = "server")]
        let provision = reader.provision(enqueue.emulator, service_url.as_deref());
        let config = Self {
            naming,
            project_id,
            service_url,
            service_account,
            scheduler_location: reader.text("SCHEDULER_LOCATION").unwrap_or_else(|| "europe-west2".to_owned()),
            port,
            database,
            #[cfg(feature = "server")]
            auth,
            kill_switches: KillSwitches::read(registry, &reader),
            job,
            #[cfg(feature = "server")]
            telemetry,
            enqueue,
            #[cfg(feature = "server")]
            provision,
        };
        if !dev {
            let missing = config.missing_outside_dev(loading.needs);
            reader
                .problems
                .extend(missing.map(|variable| Problem::Missing { variable, environment: environment.clone() }));
        }
        if reader.problems.is_empty() { Ok(config) } else { Err(ConfigError::new(reader.problems)) }
    }

    /// What an environment other than dev needs, of what `needs` names.
    fn missing_outside_dev(&self, needs: Needs) -> impl Iterator<Item = &'static str> {
        [
            ("GCP_PROJECT_ID", needs.project && self.project_id.is_none()),
            ("CLOUD_RUN_SERVICE_URL", needs.push && self.service_url.is_none()),
            ("TASKS_SERVICE_ACCOUNT", needs.push && self.service_account.is_none()),
            ("DATABASE_URL", needs.database && self.database.is_none()),
        ]
        .into_iter()
        .filter_map(|(name, missing)| missing.then_some(name))
    }

    /// True in the `dev` environment.
    pub fn is_dev(&self) -> bool {
        self.naming.environment() == DEV
    }

    /// The project topics live in: `GCP_PROJECT_ID`, or any name the
    /// emulator takes in dev.
    pub fn pubsub_project(&self) -> Option<&str> {
        let emulated = self.is_dev() && self.enqueue.emulator;
        self.project_id.as_deref().or(emulated.then_some(EMULATOR_PROJECT))
    }
}

/// The configuration of the demo app's registry from `vars` alone.
#[cfg(all(test, feature = "server"))]
fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let map: std::collections::HashMap<&str, &str> = vars.iter().copied().collect();
    let registry = crate::demo::registry().expect("the demo registry is valid");
    Config::from_lookup(&registry, &move |name| map.get(name).map(|value| (*value).to_owned()))
}

#[cfg(all(test, feature = "server"))]
mod tests {
    use super::*;

    /// Everything production needs, and nothing more.
    const PROD: [(&str, &str); 5] = [
        ("TASKS_ENVIRONMENT", "prod"),
        ("GCP_PROJECT_ID", "p"),
        ("CLOUD_RUN_SERVICE_URL", "https://x.run.app"),
        ("TASKS_SERVICE_ACCOUNT", "a@p"),
        ("DATABASE_URL", "postgres://db/tasks"),
    ];

    fn invalid(variable: &'static str, value: &str) -> Problem {
        Problem::Invalid { variable, value: value.to_owned() }
    }

    #[test]
    fn dev_needs_nothing_and_has_the_documented_defaults() {
        let config = load(&[]).unwrap();
        assert_eq!(config.auth, AuthConfig::None);
        assert!(config.is_dev());
        assert_eq!(config.naming, Naming::default());
        assert_eq!(config.port, 8080);
        assert_eq!(config.scheduler_location, "europe-west2");
        assert!(config.database.is_none());
    }

    #[test]
    fn outside_dev_every_missing_variable_is_named_at_once() {
        let error = load(&[("TASKS_ENVIRONMENT", "prod")]).unwrap_err();
        let missing = |variable| Problem::Missing { variable, environment: "prod".into() };
        let expected =
            ["GCP_PROJECT_ID", "CLOUD_RUN_SERVICE_URL", "TASKS_SERVICE_ACCOUNT", "DATABASE_URL"].map(missing);
        assert_eq!(error.problems(), expected);
        assert!(error.to_string().contains("GCP_PROJECT_ID is required when TASKS_ENVIRONMENT is \"prod\""));
    }

    #[test]
    fn outside_dev_a_command_needs_only_what_it_uses() {
        let registry = crate::demo::registry().unwrap();
        let prod = |name: &str| (name == "TASKS_ENVIRONMENT").then(|| "prod".to_owned());
        let needing = |needs| Config::from_lookup_needing(&registry, &prod, needs).err().map(|e| e.problems().to_vec());
        let missing = |variable| Problem::Missing { variable, environment: "prod".into() };
        assert_eq!(needing(Needs::NAMES), None, "routes: names alone");
        assert_eq!(needing(Needs::PROJECT), Some(vec![missing("GCP_PROJECT_ID")]));
        let provision = ["GCP_PROJECT_ID", "CLOUD_RUN_SERVICE_URL", "TASKS_SERVICE_ACCOUNT"].map(missing);
        assert_eq!(needing(Needs::PROVISION), Some(provision.to_vec()), "no database");
        assert_eq!(needing(Needs::DATABASE), Some(vec![missing("DATABASE_URL")]));
        assert_eq!(needing(Needs::JOB), Some(vec![missing("GCP_PROJECT_ID"), missing("DATABASE_URL")]));
        assert_eq!(needing(Needs::EVERYTHING).map(|problems| problems.len()), Some(4));
    }

    #[test]
    fn traces_are_named_after_the_binary_unless_a_variable_names_them() {
        let registry = crate::demo::registry().unwrap();
        let loading = Loading { service_name: "my-service", ..Loading::default() };
        let named = |vars: &'static [(&str, &str)]| {
            let lookup = |name: &str| vars.iter().find(|(set, _)| *set == name).map(|(_, value)| (*value).to_owned());
            Config::load(&registry, &lookup, &loading).unwrap().telemetry.service_name
        };
        assert_eq!(named(&[]), "my-service");
        assert_eq!(named(&[("K_SERVICE", "tasks")]), "tasks");
        assert_eq!(named(&[("OTEL_SERVICE_NAME", "billing")]), "billing");
    }

    #[test]
    fn production_with_everything_set() {
        let config = load(&[
            ("TASKS_ENVIRONMENT", "prod"),
            ("GCP_PROJECT_ID", "p"),
            ("CLOUD_RUN_SERVICE_URL", "https://x.run.app"),
            ("TASKS_SERVICE_ACCOUNT", "a@p.iam.gserviceaccount.com"),
            ("DATABASE_URL", "postgres://u:secret@db/tasks"),
            ("DATABASE_POOL_SIZE", "4"),
            ("DATABASE_POOL_TIMEOUT_MS", "100"),
            ("PORT", "9000"),
        ])
        .unwrap();
        let database = config.database.as_ref().unwrap();
        assert_eq!((database.pool_size, database.pool_timeout), (4, Duration::from_millis(100)));
        assert_eq!(config.port, 9000);
        assert!(!format!("{config:?}").contains("secret"));
        assert_eq!(
            config.auth,
            AuthConfig::Oidc(OidcSettings {
                issuer: "https://accounts.google.com".into(),
                jwks_url: "https://www.googleapis.com/oauth2/v3/certs".into(),
                audience: "https://x.run.app".into(),
                service_account: "a@p.iam.gserviceaccount.com".into(),
            })
        );
    }

    #[test]
    fn auth_modes() {
        let with = |extra: &[(&'static str, &'static str)]| load(&[&PROD[..], extra].concat());
        let none = with(&[("TASKS_AUTH", "none")]).unwrap_err();
        assert_eq!(none.problems(), [Problem::NoAuthOutsideDev]);
        let iam = with(&[("TASKS_AUTH", "cloud-run-iam"), ("TASKS_OIDC_AUDIENCE", "aud")]).unwrap();
        assert!(matches!(iam.auth, AuthConfig::CloudRunIam(ref s) if s.audience == "aud"));
        let custom =
            with(&[("TASKS_OIDC_ISSUER", "http://127.0.0.1:9/"), ("TASKS_OIDC_JWKS_URL", "http://127.0.0.1:9/k")])
                .unwrap();
        assert!(
            matches!(custom.auth, AuthConfig::Oidc(ref s) if s.issuer == "http://127.0.0.1:9/" && s.jwks_url.ends_with("/k"))
        );
        let magic = with(&[("TASKS_AUTH", "magic")]).unwrap_err();
        assert!(
            matches!(&magic.problems()[0], Problem::Unknown { variable: "TASKS_AUTH", value, .. } if value == "magic")
        );
        let insecure = with(&[("TASKS_OIDC_JWKS_URL", "http://keys.example/k")]).unwrap_err();
        assert!(matches!(insecure.problems(), [Problem::Insecure { variable: "TASKS_OIDC_JWKS_URL", .. }]));
        let dev_oidc = load(&[("TASKS_AUTH", "oidc")]).unwrap_err();
        let needs = |needs| Problem::AuthNeeds { mode: "oidc".into(), needs };
        assert_eq!(
            dev_oidc.problems(),
            [needs("TASKS_OIDC_AUDIENCE or CLOUD_RUN_SERVICE_URL"), needs("TASKS_SERVICE_ACCOUNT")]
        );
        assert_eq!(dev_oidc.problems()[1].to_string(), "TASKS_AUTH=oidc needs TASKS_SERVICE_ACCOUNT");
    }

    #[test]
    fn bad_numbers_and_names_are_reported_together() {
        let error = load(&[("PORT", "http"), ("DATABASE_POOL_SIZE", "0"), ("TASKS_ENVIRONMENT", "goog")]).unwrap_err();
        assert_eq!(error.problems().len(), 3 + 4, "{error}");
        assert!(matches!(error.problems()[0], Problem::Naming(_)), "{error}");
        assert_eq!(error.problems()[1..3], [invalid("PORT", "http"), invalid("DATABASE_POOL_SIZE", "0")]);
        assert!(error.to_string().contains("PORT=\"http\" is not a valid value"));
    }

    #[test]
    fn a_database_url_that_does_not_parse_is_a_problem_without_its_text() {
        let error = load(&[("DATABASE_URL", "postgres://u:secret@h:notaport/db")]).unwrap_err();
        assert_eq!(error.problems(), [Problem::DatabaseUrl]);
        assert!(!error.to_string().contains("secret"));
    }

    #[test]
    fn a_job_reads_its_shard_and_trace_once_and_a_malformed_index_is_a_problem() {
        let job = load(&[
            ("CLOUD_RUN_EXECUTION", "nightly-x7"),
            ("CLOUD_RUN_TASK_INDEX", "3"),
            ("CLOUD_RUN_TASK_COUNT", "5"),
            ("TRACEPARENT", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ])
        .unwrap()
        .job;
        assert_eq!(job.execution.as_deref(), Some("nightly-x7"));
        assert_eq!(job.shard, Some(whirligig_registry::JobShard { index: 3, count: 5, attempt: 0 }));
        assert!(job.traceparent.is_some_and(|(parent, state)| parent.ends_with("-01") && state.is_none()));
        assert_eq!(load(&[]).unwrap().job, JobConfig::default(), "not a job");

        let error = load(&[("CLOUD_RUN_TASK_INDEX", "three"), ("CLOUD_RUN_TASK_COUNT", "0")]).unwrap_err();
        assert_eq!(error.problems(), [invalid("CLOUD_RUN_TASK_INDEX", "three"), invalid("CLOUD_RUN_TASK_COUNT", "0")]);
    }

    #[test]
    fn the_backend_and_where_publishing_goes() {
        use crate::google::credentials::CredentialSource;
        let dev = load(&[]).unwrap();
        assert_eq!((dev.enqueue.backend, dev.pubsub_project()), (Backend::Immediate, None));
        let emulated = load(&[("PUBSUB_EMULATOR_HOST", "127.0.0.1:8085")]).unwrap();
        assert_eq!(emulated.enqueue.backend, Backend::PubSub);
        assert_eq!(emulated.enqueue.pubsub_url, "http://127.0.0.1:8085");
        assert_eq!(emulated.enqueue.credentials, CredentialSource::None);
        assert_eq!(emulated.pubsub_project(), Some(EMULATOR_PROJECT));

        let with = |extra: &[(&'static str, &'static str)]| load(&[&PROD[..], extra].concat());
        let google = with(&[]).unwrap().enqueue;
        assert_eq!((google.backend, google.pubsub_url.as_str()), (Backend::PubSub, "https://pubsub.googleapis.com"));
        assert_eq!(google.credentials, CredentialSource::Metadata("metadata.google.internal".into()));
        assert_eq!(google.publish_timeout, Duration::from_secs(60));
        let local =
            with(&[("GCE_METADATA_HOST", "127.0.0.1:9"), ("TASKS_PUBSUB_ENDPOINT", "http://127.0.0.1:7/")]).unwrap();
        assert_eq!(local.enqueue.credentials, CredentialSource::Metadata("127.0.0.1:9".into()));
        assert_eq!(local.enqueue.pubsub_url, "http://127.0.0.1:7");
        let key = with(&[("GOOGLE_APPLICATION_CREDENTIALS", "/keys/sa.json")]).unwrap();
        assert_eq!(key.enqueue.credentials, CredentialSource::KeyFile("/keys/sa.json".into()));

        let error = with(&[
            ("TASKS_BACKEND", "carrier-pigeon"),
            ("TASKS_PUBLISH_TIMEOUT_MS", "0"),
            ("TASKS_PUBSUB_ENDPOINT", "http://pubsub.example"),
        ])
        .unwrap_err();
        assert_eq!(error.problems().len(), 3, "{error}");
        assert!(matches!(error.problems()[2], Problem::Insecure { variable: "TASKS_PUBSUB_ENDPOINT", .. }), "{error}");
        let scheme = load(&[("PUBSUB_EMULATOR_HOST", "http://127.0.0.1:8085")]).unwrap_err();
        assert_eq!(scheme.problems(), [invalid("PUBSUB_EMULATOR_HOST", "http://127.0.0.1:8085")]);
    }

    #[test]
    fn kill_switches_are_read_for_the_routes_that_declare_them() {
        let registry = crate::demo::registry().unwrap();
        let heartbeat = registry.get("heartbeat").unwrap();
        let off = load(&[("ENABLE_HEARTBEAT", "off")]).unwrap();
        assert_eq!(off.kill_switches.disabled_by(heartbeat), Some("ENABLE_HEARTBEAT"));
        assert_eq!(load(&[]).unwrap().kill_switches.disabled_by(heartbeat), None);
    }
}
