//! The standard OpenTelemetry variables whirligig acts on, and `LOG_FORMAT`
//! and `RUST_LOG`, checked with the rest of the configuration so that a typo
//! stops the process at start rather than losing traces.

use std::time::Duration;

use opentelemetry::KeyValue;
use tracing_subscriber::EnvFilter;

use super::{JobConfig, Problem, Reader};
use crate::telemetry::{LogFormat, ParentlessSampling, Sampling, TelemetryConfig, TraceExport};

const SAMPLERS: &str = "always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or \
                        parentbased_traceidratio";

impl Reader<'_> {
    pub(super) fn telemetry(
        &mut self,
        dev: bool,
        project_id: Option<&str>,
        job: &JobConfig,
        binary: &str,
    ) -> TelemetryConfig {
        let traces = match self.text("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
            None if dev => TraceExport::None,
            None | Some("otlp") => TraceExport::Otlp { endpoint: self.otlp_endpoint() },
            Some("console") => TraceExport::Console,
            Some("none") => TraceExport::None,
            Some(other) => {
                self.unknown("OTEL_TRACES_EXPORTER", other, "otlp, console or none");
                TraceExport::None
            }
        };
        let logs = match self.text("LOG_FORMAT").as_deref().map(str::trim) {
            None if dev => LogFormat::Text,
            None | Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            Some(other) => {
                self.unknown("LOG_FORMAT", other, "json or text");
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
            log_filter: self.log_filter(),
            color: self.text("NO_COLOR").is_none(),
            project_id: project_id.map(str::to_owned),
            service_name: self.service_name(binary),
            resource: self.resource(project_id, job),
            export_timeout: Duration::from_millis(timeout),
        }
    }

    fn unknown(&mut self, variable: &'static str, value: &str, expected: &'static str) {
        self.problems.push(Problem::Unknown { variable, value: value.to_owned(), expected });
    }

    /// `RUST_LOG` (default `info`), which must parse as a filter.
    fn log_filter(&mut self) -> String {
        let Some(filter) = self.text("RUST_LOG") else { return "info".to_owned() };
        if EnvFilter::try_new(&filter).is_err() {
            self.problems.push(Problem::Invalid { variable: "RUST_LOG", value: filter.clone() });
        }
        filter
    }

    /// `OTEL_SERVICE_NAME`, else `service.name` in `OTEL_RESOURCE_ATTRIBUTES`
    /// (the specification's order), else the Cloud Run service or job, else
    /// the binary's own name.
    fn service_name(&self, binary: &str) -> String {
        let from_attributes = self.text("OTEL_RESOURCE_ATTRIBUTES").and_then(|attributes| {
            let mut pairs = attributes.rsplit(',').filter_map(|pair| pair.split_once('='));
            pairs.find(|(key, _)| key.trim() == "service.name").map(|(_, value)| value.trim().to_owned())
        });
        self.text("OTEL_SERVICE_NAME")
            .or(from_attributes)
            .or_else(|| self.text("K_SERVICE"))
            .or_else(|| self.text("CLOUD_RUN_JOB"))
            .unwrap_or_else(|| binary.to_owned())
    }

    /// Only OTLP over HTTP with protobuf bodies is built in; the endpoint
    /// must be a URL the exporter can post to.
    fn otlp_endpoint(&mut self) -> String {
        for variable in ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
            match self.text(variable).as_deref().map(str::trim) {
                None | Some("http/protobuf") => {}
                Some(other) => self.problems.push(Problem::Protocol { variable, value: other.to_owned() }),
            }
        }
        let (variable, endpoint) = match self.text("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") {
            Some(endpoint) => ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", endpoint.trim().to_owned()),
            None => {
                let base = self.text("OTEL_EXPORTER_OTLP_ENDPOINT");
                let base = base.as_deref().unwrap_or("http://localhost:4318").trim();
                ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("{}/v1/traces", base.trim_end_matches('/')))
            }
        };
        let url = reqwest::Url::parse(&endpoint);
        if !url.is_ok_and(|url| matches!(url.scheme(), "http" | "https") && url.has_host()) {
            self.problems.push(Problem::NotHttp { variable, endpoint: endpoint.clone() });
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
                    self.unknown("OTEL_TRACES_SAMPLER_ARG", &text, "a ratio from 0 to 1");
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
                self.unknown("OTEL_TRACES_SAMPLER", other, SAMPLERS);
                Sampling::ParentBased(ParentlessSampling::AlwaysOn)
            }
        }
    }

    /// What Cloud Run's variables say about the instance; the SDK adds
    /// `OTEL_RESOURCE_ATTRIBUTES` over them.
    fn resource(&self, project_id: Option<&str>, job: &JobConfig) -> Vec<KeyValue> {
        let service = self.text("K_SERVICE");
        let job_name = self.text("CLOUD_RUN_JOB");
        let mut resource = Vec::new();
        if let Some(environment) = self.text("TASKS_ENVIRONMENT") {
            resource.push(KeyValue::new("deployment.environment.name", environment));
        }
        if service.is_some() || job_name.is_some() {
            resource.push(KeyValue::new("cloud.provider", "gcp"));
            resource.push(KeyValue::new("cloud.platform", "gcp_cloud_run"));
        }
        if let Some(project) = project_id {
            resource.push(KeyValue::new("cloud.account.id", project.to_owned()));
        }
        if let Some(name) = service.or(job_name) {
            resource.push(KeyValue::new("faas.name", name));
        }
        if let Some(revision) = self.text("K_REVISION") {
            resource.push(KeyValue::new("faas.version", revision));
        }
        if let Some(execution) = &job.execution {
            resource.push(KeyValue::new("gcp.cloud_run.job.execution", execution.clone()));
        }
        if let Some(shard) = job.shard {
            resource.push(KeyValue::new("gcp.cloud_run.job.task_index", i64::from(shard.index)));
        }
        resource
    }
}

#[cfg(test)]
mod tests {
    use super::super::load;
    use super::*;

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
        let problems: Vec<String> = error.problems().iter().map(ToString::to_string).collect();
        let problems = problems.join("\n");
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
        assert!(
            matches!(
                error.problems(),
                [
                    Problem::Unknown { variable: "OTEL_TRACES_EXPORTER", .. },
                    Problem::Unknown { variable: "OTEL_TRACES_SAMPLER_ARG", .. }
                ]
            ),
            "{error}"
        );
    }

    #[test]
    fn rust_log_and_no_color_are_read_here() {
        let config = load(&[("RUST_LOG", "warn,whirligig_handler=debug"), ("NO_COLOR", "1")]).unwrap().telemetry;
        assert_eq!((config.log_filter.as_str(), config.color), ("warn,whirligig_handler=debug", false));
        let defaults = load(&[]).unwrap().telemetry;
        assert_eq!((defaults.log_filter.as_str(), defaults.color), ("info", true));
        let error = load(&[("RUST_LOG", "whirligig=loud")]).unwrap_err();
        assert!(matches!(error.problems(), [Problem::Invalid { variable: "RUST_LOG", .. }]), "{error}");
    }
}
