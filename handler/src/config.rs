//! Configuration: every variable the process reads, loaded once from the
//! environment and checked together, so one message names every problem.
//! Secrets (the password in DATABASE_URL) never reach a log line.

use std::fmt;
use std::time::Duration;

use opentelemetry::KeyValue;
use whirligig_registry::{DEFAULT_ENVIRONMENT, DEFAULT_NAMESPACE, Naming};

use crate::auth::OidcSettings;
use crate::telemetry::{LogFormat, ParentlessSampling, Sampling, TelemetryConfig, TraceExport};

/// The development environment: the only one where the in-memory store is allowed.
const DEV: &str = "dev";

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
    pub auth: AuthConfig,
    /// `OTEL_*` and `LOG_FORMAT`, with what Cloud Run says about the instance.
    pub telemetry: TelemetryConfig,
}

/// How push requests are authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthConfig {
    /// `none`: dev only.
    None,
    /// `oidc`: the default outside dev.
    Oidc(OidcSettings),
    /// `cloud-run-iam`: Cloud Run checked the signature.
    CloudRunIam(OidcSettings),
}

const GOOGLE_ISSUER: &str = "https://accounts.google.com";
const GOOGLE_JWKS: &str = "https://www.googleapis.com/oauth2/v3/certs";

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

/// Every problem found in the environment.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    problems: Vec<String>,
}

impl ConfigError {
    /// One line per problem.
    pub fn problems(&self) -> &[String] {
        &self.problems
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("invalid configuration:")?;
        self.problems.iter().try_for_each(|problem| write!(f, "\n  {problem}"))
    }
}

/// Reads variables, collecting problems instead of stopping at the first.
struct Reader<'a> {
    lookup: &'a dyn Fn(&str) -> Option<String>,
    problems: Vec<String>,
}

impl Reader<'_> {
    /// An unset or empty variable counts as absent.
    fn text(&self, name: &str) -> Option<String> {
        (self.lookup)(name).filter(|value| !value.trim().is_empty())
    }

    fn number<T: std::str::FromStr>(&mut self, name: &str, default: T, valid: impl Fn(&T) -> bool) -> T {
        let Some(text) = self.text(name) else { return default };
        match text.trim().parse() {
            Ok(value) if valid(&value) => value,
            _ => {
                self.problems.push(format!("{name}={text:?} is not a valid value"));
                default
            }
        }
    }
}

impl Reader<'_> {
    /// `TASKS_AUTH`: `none` by default in dev and refused outside it; `oidc`
    /// by default elsewhere. Both token modes need an audience and an account.
    fn auth(&mut self, dev: bool, service_url: Option<&str>, service_account: Option<&str>) -> AuthConfig {
        let mode = self.text("TASKS_AUTH").unwrap_or_else(|| if dev { "none" } else { "oidc" }.to_owned());
        let settings = |reader: &mut Self| {
            let audience = reader.text("TASKS_OIDC_AUDIENCE").or_else(|| service_url.map(str::to_owned));
            // Outside dev the missing variables are named anyway.
            if audience.is_none() && dev {
                reader.problems.push(format!("TASKS_AUTH={mode} needs TASKS_OIDC_AUDIENCE or CLOUD_RUN_SERVICE_URL"));
            }
            if service_account.is_none() && dev {
                reader.problems.push(format!("TASKS_AUTH={mode} needs TASKS_SERVICE_ACCOUNT"));
            }
            let issuer = reader.text("TASKS_OIDC_ISSUER").unwrap_or_else(|| GOOGLE_ISSUER.to_owned());
            let jwks_url = reader.text("TASKS_OIDC_JWKS_URL").unwrap_or_else(|| GOOGLE_JWKS.to_owned());
            reader.problems.extend(check_key_url("TASKS_OIDC_ISSUER", &issuer));
            reader.problems.extend(check_key_url("TASKS_OIDC_JWKS_URL", &jwks_url));
            OidcSettings {
                issuer,
                jwks_url,
                audience: audience.unwrap_or_default(),
                service_account: service_account.unwrap_or_default().to_owned(),
            }
        };
        match mode.trim() {
            "none" if dev => AuthConfig::None,
            "none" => {
                self.problems.push("TASKS_AUTH=none is allowed only when TASKS_ENVIRONMENT is \"dev\"".to_owned());
                AuthConfig::None
            }
            "oidc" => AuthConfig::Oidc(settings(self)),
            "cloud-run-iam" => AuthConfig::CloudRunIam(settings(self)),
            other => {
                self.problems.push(format!("TASKS_AUTH={other:?}: expected oidc, cloud-run-iam or none"));
                AuthConfig::None
            }
        }
    }
}

impl Reader<'_> {
    /// The standard OpenTelemetry variables whirligig acts on, checked here
    /// so that a typo stops the process at start rather than losing traces.
    fn telemetry(&mut self, dev: bool, project_id: Option<&str>) -> TelemetryConfig {
        let traces = match self.text("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
            None if dev => TraceExport::None,
            None | Some("otlp") => TraceExport::Otlp { endpoint: self.otlp_endpoint() },
            Some("console") => TraceExport::Console,
            Some("none") => TraceExport::None,
            Some(other) => {
                self.problems.push(format!("OTEL_TRACES_EXPORTER={other:?}: expected otlp, console or none"));
                TraceExport::None
            }
        };
        let logs = match self.text("LOG_FORMAT").as_deref().map(str::trim) {
            None if dev => LogFormat::Text,
            None | Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            Some(other) => {
                self.problems.push(format!("LOG_FORMAT={other:?}: expected json or text"));
                LogFormat::Text
            }
        };
        let timeout = ["OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"]
            .into_iter()
            .find(|name| self.text(name).is_some())
            .map_or(10_000, |name| self.number(name, 10_000_u64, |ms| *ms > 0));
        TelemetryConfig {
            traces,
            sampling: self.sampling(),
            logs,
            project_id: project_id.map(str::to_owned),
            service_name: self.service_name(),
            resource: self.resource(project_id),
            export_timeout: Duration::from_millis(timeout),
        }
    }

    /// `OTEL_SERVICE_NAME`, else `service.name` in `OTEL_RESOURCE_ATTRIBUTES`
    /// (the specification's order), else the Cloud Run service or job, else
    /// `whirligig`.
    fn service_name(&self) -> String {
        let from_attributes = self.text("OTEL_RESOURCE_ATTRIBUTES").and_then(|attributes| {
            let mut pairs = attributes.rsplit(',').filter_map(|pair| pair.split_once('='));
            pairs.find(|(key, _)| key.trim() == "service.name").map(|(_, value)| value.trim().to_owned())
        });
        self.text("OTEL_SERVICE_NAME")
            .or(from_attributes)
            .or_else(|| self.text("K_SERVICE"))
            .or_else(|| self.text("CLOUD_RUN_JOB"))
            .unwrap_or_else(|| "whirligig".to_owned())
    }

    /// Only OTLP over HTTP with protobuf bodies is built in; the endpoint
    /// must be a URL the exporter can post to.
    fn otlp_endpoint(&mut self) -> String {
        for name in ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
            match self.text(name).as_deref().map(str::trim) {
                None | Some("http/protobuf") => {}
                Some(other) => self.problems.push(format!(
                    "{name}={other:?}: only http/protobuf is built in (a collector takes it on port 4318)"
                )),
            }
        }
        let (name, endpoint) = match self.text("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some(endpoint) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint.trim().to_owned()),
            None => {
                let base = self.text("OTEL_EXPORTER_OTLP_ENDPOINT");
                let base = base.as_deref().unwrap_or("http://localhost:4318").trim();
                ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("{}/v1/traces", base.trim_end_matches('/')))
            }
        };
        let url = openidconnect::url::Url::parse(&endpoint);
        if !url.is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.has_host()) {
            self.problems.push(format!("{name}: {endpoint:?} is not an http(s) URL"));
        }
        endpoint
    }

    fn sampling(&mut self) -> Sampling {
        let name = self.text("OTEL_TRACES_SAMPLER").unwrap_or_else(|| "parentbased_always_on".to_owned());
        let mut ratio = || {
            let Some(text) = self.text("OTEL_TRACES_SAMPLER_ARG") else { return 1.0 };
            match text.trim().parse::<f64>() {
                Ok(ratio) if (0.0..=1.0).contains(&ratio) => ratio,
                _ => {
                    self.problems.push(format!("OTEL_TRACES_SAMPLER_ARG={text:?}: expected a ratio from 0 to 1"));
                    1.0
                }
            }
        };
        match name.trim() {
            "always_on" => Sampling::AlwaysOn,
            "always_off" => Sampling::AlwaysOff,
            "traceidratio" => Sampling::Ratio(ratio()),
            "parentbased_always_on" => Sampling::ParentBased(ParentlessSampling::AlwaysOn),
            "parentbased_always_off" => Sampling::ParentBased(ParentlessSampling::AlwaysOff),
            "parentbased_traceidratio" => Sampling::ParentBased(ParentlessSampling::Ratio(ratio())),
            other => {
                self.problems.push(format!(
                    "OTEL_TRACES_SAMPLER={other:?}: expected always_on, always_off, traceidratio, \
                     parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
                ));
                Sampling::ParentBased(ParentlessSampling::AlwaysOn)
            }
        }
    }

    /// What Cloud Run's variables say about the instance; the SDK adds
    /// `OTEL_RESOURCE_ATTRIBUTES` over them.
    fn resource(&self, project_id: Option<&str>) -> Vec<KeyValue> {
        let service = self.text("K_SERVICE");
        let job = self.text("CLOUD_RUN_JOB");
        let mut resource = Vec::new();
        if let Some(environment) = self.text("TASKS_ENVIRONMENT") {
            resource.push(KeyValue::new("deployment.environment.name", environment));
        }
        if service.is_some() || job.is_some() {
            resource.push(KeyValue::new("cloud.provider", "gcp"));
            resource.push(KeyValue::new("cloud.platform", "gcp_cloud_run"));
        }
        if let Some(project) = project_id {
            resource.push(KeyValue::new("cloud.account.id", project.to_owned()));
        }
        if let Some(name) = service.or(job) {
            resource.push(KeyValue::new("faas.name", name));
        }
        if let Some(revision) = self.text("K_REVISION") {
            resource.push(KeyValue::new("faas.version", revision));
        }
        if let Some(execution) = self.text("CLOUD_RUN_EXECUTION") {
            resource.push(KeyValue::new("gcp.cloud_run.job.execution", execution));
        }
        if let Some(index) = self.text("CLOUD_RUN_TASK_INDEX").and_then(|index| index.trim().parse::<i64>().ok()) {
            resource.push(KeyValue::new("gcp.cloud_run.job.task_index", index));
        }
        resource
    }
}

/// Keys fetched over plain HTTP could be swapped on the way: HTTPS, unless
/// the issuer is on this machine (tests, a local emulator).
fn check_key_url(name: &str, value: &str) -> Option<String> {
    let Ok(url) = openidconnect::url::Url::parse(value) else {
        return Some(format!("{name}={value:?} is not an absolute URL"));
    };
    let loopback = matches!(url.host_str(), Some("127.0.0.1" | "localhost" | "[::1]"));
    (url.scheme() != "https" && !(url.scheme() == "http" && loopback))
        .then(|| format!("{name}={value:?} must be https (plain http only on loopback)"))
}

impl Config {
    /// Loads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(&|name| std::env::var(name).ok())
    }

    /// Loads the configuration from `lookup` (the environment, or a test's map).
    pub fn from_lookup(lookup: &dyn Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let mut reader = Reader { lookup, problems: Vec::new() };
        let environment = reader.text("TASKS_ENVIRONMENT").unwrap_or_else(|| DEFAULT_ENVIRONMENT.to_owned());
        let namespace = reader.text("TASKS_NAMESPACE").unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned());
        let naming = Naming::new(environment.clone(), namespace).unwrap_or_else(|error| {
            reader.problems.push(format!("TASKS_ENVIRONMENT/TASKS_NAMESPACE: {error}"));
            Naming::default()
        });
        let port = reader.number("PORT", 8080_u16, |_| true);
        let pool_size = reader.number("DATABASE_POOL_SIZE", 10_u32, |size| *size > 0);
        let pool_timeout = Duration::from_millis(reader.number("DATABASE_POOL_TIMEOUT_MS", 250_u64, |ms| *ms > 0));
        let database = reader.text("DATABASE_URL").map(|url| DatabaseConfig { url, pool_size, pool_timeout });
        if database.as_ref().is_some_and(|database| database.url.parse::<tokio_postgres::Config>().is_err()) {
            // Not repeated: it may hold a password.
            reader.problems.push("DATABASE_URL is not a valid PostgreSQL URL".to_owned());
        }
        let service_url = reader.text("CLOUD_RUN_SERVICE_URL");
        let service_account = reader.text("TASKS_SERVICE_ACCOUNT");
        let auth = reader.auth(environment == DEV, service_url.as_deref(), service_account.as_deref());
        let project_id = reader.text("GCP_PROJECT_ID");
        let telemetry = reader.telemetry(environment == DEV, project_id.as_deref());
        let config = Self {
            naming,
            project_id,
            service_url,
            service_account,
            scheduler_location: reader.text("SCHEDULER_LOCATION").unwrap_or_else(|| "europe-west2".to_owned()),
            port,
            database,
            auth,
            telemetry,
        };
        if environment != DEV {
            reader.problems.extend(
                config
                    .missing_outside_dev()
                    .map(|name| format!("{name} is required when TASKS_ENVIRONMENT is {environment:?} (not \"dev\")")),
            );
        }
        if reader.problems.is_empty() { Ok(config) } else { Err(ConfigError { problems: reader.problems }) }
    }

    fn missing_outside_dev(&self) -> impl Iterator<Item = &'static str> {
        [
            ("GCP_PROJECT_ID", self.project_id.is_none()),
            ("CLOUD_RUN_SERVICE_URL", self.service_url.is_none()),
            ("TASKS_SERVICE_ACCOUNT", self.service_account.is_none()),
            ("DATABASE_URL", self.database.is_none()),
        ]
        .into_iter()
        .filter_map(|(name, missing)| missing.then_some(name))
    }

    /// True in the `dev` environment.
    pub fn is_dev(&self) -> bool {
        self.naming.environment() == DEV
    }
}

/// The URL with any password replaced by `***`, for logs and errors: the
/// one in the user info, a `password=` query parameter, or a `password=`
/// keyword (quoted or not).
pub(crate) fn redact(url: &str) -> String {
    let url = match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", redact_user_info(rest)),
        None => url.to_owned(),
    };
    redact_password_values(&url)
}

fn redact_user_info(rest: &str) -> String {
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@').and_then(|at| Some((at, rest[..at].split_once(':')?))) {
        Some((at, (user, _password))) => format!("{user}:***{}", &rest[at..]),
        None => rest.to_owned(),
    }
}

/// Replaces the value after every `password=`, up to `&` or whitespace, or
/// to the closing quote of a quoted value.
fn redact_password_values(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("password=") {
        let value_start = at + "password=".len();
        out.push_str(&rest[..value_start]);
        out.push_str("***");
        let value = &rest[value_start..];
        let value_end = match value.strip_prefix('\'') {
            Some(quoted) => quoted.find('\'').map_or(value.len(), |close| close + 2),
            None => value.find(['&', ' ', '\t', '\n']).unwrap_or(value.len()),
        };
        rest = &value[value_end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn load(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        Config::from_lookup(&move |name| map.get(name).cloned())
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
        let names: Vec<&str> = error.problems().iter().map(|p| p.split(' ').next().unwrap()).collect();
        assert_eq!(names, ["GCP_PROJECT_ID", "CLOUD_RUN_SERVICE_URL", "TASKS_SERVICE_ACCOUNT", "DATABASE_URL"]);
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
        let prod = [
            ("TASKS_ENVIRONMENT", "prod"),
            ("GCP_PROJECT_ID", "p"),
            ("CLOUD_RUN_SERVICE_URL", "https://x.run.app"),
            ("TASKS_SERVICE_ACCOUNT", "a@p"),
            ("DATABASE_URL", "postgres://db/tasks"),
        ];
        let with = |extra: &[(&'static str, &'static str)]| load(&[&prod[..], extra].concat());
        let none = with(&[("TASKS_AUTH", "none")]).unwrap_err();
        assert_eq!(none.problems(), ["TASKS_AUTH=none is allowed only when TASKS_ENVIRONMENT is \"dev\""]);
        let iam = with(&[("TASKS_AUTH", "cloud-run-iam"), ("TASKS_OIDC_AUDIENCE", "aud")]).unwrap();
        assert!(matches!(iam.auth, AuthConfig::CloudRunIam(ref s) if s.audience == "aud"));
        let custom =
            with(&[("TASKS_OIDC_ISSUER", "http://127.0.0.1:9/"), ("TASKS_OIDC_JWKS_URL", "http://127.0.0.1:9/k")])
                .unwrap();
        assert!(
            matches!(custom.auth, AuthConfig::Oidc(ref s) if s.issuer == "http://127.0.0.1:9/" && s.jwks_url.ends_with("/k"))
        );
        assert!(
            with(&[("TASKS_AUTH", "magic")]).unwrap_err().problems()[0]
                .contains("expected oidc, cloud-run-iam or none")
        );
        let dev_oidc = load(&[("TASKS_AUTH", "oidc")]).unwrap_err();
        assert_eq!(
            dev_oidc.problems(),
            [
                "TASKS_AUTH=oidc needs TASKS_OIDC_AUDIENCE or CLOUD_RUN_SERVICE_URL",
                "TASKS_AUTH=oidc needs TASKS_SERVICE_ACCOUNT",
            ]
        );
    }

    #[test]
    fn bad_numbers_and_names_are_reported_together() {
        let error = load(&[("PORT", "http"), ("DATABASE_POOL_SIZE", "0"), ("TASKS_ENVIRONMENT", "goog")]).unwrap_err();
        assert_eq!(error.problems().len(), 3 + 4, "{error}");
        assert!(error.to_string().contains("PORT=\"http\" is not a valid value"));
    }

    #[test]
    fn a_database_url_that_does_not_parse_is_a_problem_without_its_text() {
        let error = load(&[("DATABASE_URL", "postgres://u:secret@h:notaport/db")]).unwrap_err();
        assert_eq!(error.problems(), ["DATABASE_URL is not a valid PostgreSQL URL"]);
    }

    #[test]
    fn telemetry_is_off_and_readable_in_dev_and_exported_as_json_elsewhere() {
        let dev = load(&[]).unwrap().telemetry;
        assert_eq!((dev.traces, dev.logs), (TraceExport::None, LogFormat::Text));
        assert_eq!(dev.sampling, Sampling::ParentBased(ParentlessSampling::AlwaysOn));
        assert_eq!(dev.service_name, "whirligig");
        assert!(dev.resource.is_empty());
        assert_eq!(dev.export_timeout, Duration::from_secs(10));

        let prod = load(&[
            ("TASKS_ENVIRONMENT", "prod"),
            ("GCP_PROJECT_ID", "p"),
            ("CLOUD_RUN_SERVICE_URL", "https://x.run.app"),
            ("TASKS_SERVICE_ACCOUNT", "a@p"),
            ("DATABASE_URL", "postgres://db/tasks"),
            ("K_SERVICE", "tasks"),
            ("K_REVISION", "tasks-00042-abc"),
        ])
        .unwrap()
        .telemetry;
        assert_eq!(prod.traces, TraceExport::Otlp { endpoint: "http://localhost:4318/v1/traces".into() });
        assert_eq!(prod.logs, LogFormat::Json);
        assert_eq!(prod.project_id.as_deref(), Some("p"));
        let attribute =
            |key: &str| prod.resource.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string());
        assert_eq!(prod.service_name, "tasks");
        assert_eq!(attribute("faas.version").as_deref(), Some("tasks-00042-abc"));
        assert_eq!(attribute("cloud.platform").as_deref(), Some("gcp_cloud_run"));
        assert_eq!(attribute("cloud.account.id").as_deref(), Some("p"));
        assert_eq!(attribute("deployment.environment.name").as_deref(), Some("prod"));
    }

    #[test]
    fn otel_variables_are_read_and_checked() {
        let config = load(&[
            ("OTEL_TRACES_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318/"),
            ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "0.25"),
            ("OTEL_SERVICE_NAME", "billing"),
            ("LOG_FORMAT", "json"),
            ("CLOUD_RUN_JOB", "nightly"),
            ("CLOUD_RUN_EXECUTION", "nightly-x7"),
            ("CLOUD_RUN_TASK_INDEX", "3"),
        ])
        .unwrap()
        .telemetry;
        assert_eq!(config.traces, TraceExport::Otlp { endpoint: "http://collector:4318/v1/traces".into() });
        assert_eq!(config.sampling, Sampling::ParentBased(ParentlessSampling::Ratio(0.25)));
        assert_eq!(config.logs, LogFormat::Json);
        assert_eq!(config.service_name, "billing");
        assert!(config.resource.contains(&KeyValue::new("faas.name", "nightly")));
        assert!(config.resource.contains(&KeyValue::new("gcp.cloud_run.job.execution", "nightly-x7")));
        assert!(config.resource.contains(&KeyValue::new("gcp.cloud_run.job.task_index", 3_i64)));

        let verbatim = load(&[
            ("OTEL_TRACES_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "https://otel.example/custom"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://ignored:4318"),
        ])
        .unwrap()
        .telemetry;
        assert_eq!(verbatim.traces, TraceExport::Otlp { endpoint: "https://otel.example/custom".into() });

        // The specification's order for the service name, and the export timeout.
        let named = |vars: &[(&str, &str)]| load(vars).unwrap().telemetry.service_name;
        let attributes = ("OTEL_RESOURCE_ATTRIBUTES", "team=billing, service.name = invoices");
        assert_eq!(named(&[attributes, ("K_SERVICE", "tasks")]), "invoices");
        assert_eq!(named(&[attributes, ("OTEL_SERVICE_NAME", "billing")]), "billing");
        assert_eq!(named(&[("CLOUD_RUN_JOB", "nightly"), ("K_SERVICE", "tasks")]), "tasks");
        let timeout = load(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "2500")]).unwrap().telemetry.export_timeout;
        assert_eq!(timeout, Duration::from_millis(2500));
        assert_eq!(load(&[("OTEL_TRACES_EXPORTER", "console")]).unwrap().telemetry.traces, TraceExport::Console);

        let error = load(&[
            ("OTEL_TRACES_EXPORTER", "otlp"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
            ("OTEL_TRACES_SAMPLER", "sometimes"),
            ("LOG_FORMAT", "xml"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "soon"),
        ])
        .unwrap_err();
        let problems = error.problems().join("\n");
        for expected in [
            "OTEL_EXPORTER_OTLP_PROTOCOL=\"grpc\": only http/protobuf",
            "OTEL_EXPORTER_OTLP_ENDPOINT: \"collector:4318/v1/traces\" is not an http(s) URL",
            "OTEL_TRACES_SAMPLER=\"sometimes\"",
            "LOG_FORMAT=\"xml\"",
            "OTEL_EXPORTER_OTLP_TIMEOUT=\"soon\" is not a valid value",
        ] {
            assert!(problems.contains(expected), "{expected:?} not in:\n{problems}");
        }
        let error = load(&[
            ("OTEL_TRACES_EXPORTER", "jaeger"),
            ("OTEL_TRACES_SAMPLER", "traceidratio"),
            ("OTEL_TRACES_SAMPLER_ARG", "2"),
        ])
        .unwrap_err();
        assert_eq!(error.problems().len(), 2, "{error}");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://u:secret@h:5432/db?x=1"), "postgres://u:***@h:5432/db?x=1");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("host=h password=secret user=u"), "host=h password=*** user=u");
        assert_eq!(redact("host=h password='s3cret pw' user=u"), "host=h password=*** user=u");
        assert_eq!(
            redact("postgres://u@h/db?password=s3cret-pw&sslmode=off"),
            "postgres://u@h/db?password=***&sslmode=off"
        );
        assert_eq!(redact("postgres://u:a@b@h/db?password=x"), "postgres://u:***@h/db?password=***");
    }
}
