//! The deploy files against the code they deploy: cloudbuild.yaml's step
//! graph and substitutions, its deploy flags against the configuration, the
//! routes and the app's paths, and the Dockerfile against the workspace.

// Helpers here are test code too: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use whirligig_handler::{App, AuthConfig, Config, Needs, PushAuth};
use whirligig_registry::MAX_ACK_DEADLINE;
use yaml_rust2::{Yaml, YamlLoader};

const CLOUDBUILD: &str = include_str!("../../cloudbuild.yaml");
const DOCKERFILE: &str = include_str!("../../Dockerfile");

/// Substitutions Cloud Build provides itself.
const BUILT_IN: [&str; 9] = [
    "PROJECT_ID",
    "PROJECT_NUMBER",
    "LOCATION",
    "BUILD_ID",
    "COMMIT_SHA",
    "SHORT_SHA",
    "REVISION_ID",
    "BRANCH_NAME",
    "REPO_NAME",
];

struct Step {
    id: String,
    wait_for: Vec<String>,
    args: Vec<String>,
}

impl Step {
    /// The value of `--flag=value`, if the step passes it.
    fn flag(&self, flag: &str) -> Option<&str> {
        self.args.iter().find_map(|arg| arg.strip_prefix(flag)?.strip_prefix('='))
    }

    fn has(&self, flag: &str) -> bool {
        self.args.iter().any(|arg| arg == flag)
    }
}

fn cloudbuild() -> Yaml {
    YamlLoader::load_from_str(CLOUDBUILD).unwrap().remove(0)
}

fn strings(yaml: &Yaml) -> Vec<String> {
    yaml.as_vec().map(|items| items.iter().map(|item| item.as_str().unwrap().to_owned()).collect()).unwrap_or_default()
}

fn steps() -> Vec<Step> {
    let build = cloudbuild();
    let steps = build["steps"].as_vec().unwrap();
    steps
        .iter()
        .map(|step| Step {
            id: step["id"].as_str().expect("every step has an id").to_owned(),
            wait_for: strings(&step["waitFor"]),
            args: strings(&step["args"]),
        })
        .collect()
}

fn step(id: &str) -> Step {
    steps().into_iter().find(|step| step.id == id).unwrap_or_else(|| panic!("no step {id}"))
}

/// Declared substitutions and their defaults.
fn substitutions() -> HashMap<String, String> {
    let build = cloudbuild();
    let declared = build["substitutions"].as_hash().unwrap();
    declared
        .iter()
        .map(|(name, value)| (name.as_str().unwrap().to_owned(), value.as_str().unwrap().to_owned()))
        .collect()
}

/// Every `$NAME` and `${NAME}` in `text` (Cloud Build's substitution syntax).
fn substitutions_used(text: &str) -> HashSet<String> {
    let mut used = HashSet::new();
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        let braced = rest.starts_with('{');
        let name: String = rest
            .trim_start_matches('{')
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        if !name.is_empty() {
            used.insert(name.clone());
            rest = &rest[name.len() + usize::from(braced)..];
        }
    }
    used
}

/// `text` with every substitution replaced by its default, or a stand-in.
fn substitute(text: &str) -> String {
    let defaults = substitutions();
    let mut names: Vec<String> = substitutions_used(text).into_iter().collect();
    // Longest first, so `$PROJECT_ID` is not read as a prefix of another name.
    names.sort_by_key(|name| std::cmp::Reverse(name.len()));
    let mut text = text.to_owned();
    for name in names {
        let value = match name.as_str() {
            // A project number is digits, and the configuration checks that it is.
            "PROJECT_NUMBER" => "123456789012".to_owned(),
            _ => defaults.get(&name).cloned().unwrap_or_else(|| format!("test-{}", name.to_lowercase())),
        };
        text = text.replace(&format!("${{{name}}}"), &value).replace(&format!("${name}"), &value);
    }
    text
}

/// The environment a step's `--set-env-vars` and `--set-secrets` give the container.
fn environment(step: &Step) -> HashMap<String, String> {
    let set = step.flag("--set-env-vars").or_else(|| step.flag("--update-env-vars"));
    let mut vars: HashMap<String, String> = substitute(set.unwrap_or_default())
        .split(',')
        .filter_map(|pair| pair.split_once('='))
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect();
    for secret in step.flag("--set-secrets").unwrap_or_default().split(',').filter(|secret| !secret.is_empty()) {
        let (name, _) = secret.split_once('=').unwrap();
        vars.insert(name.to_owned(), "postgres://whirligig@10.0.0.3:5432/tasks".to_owned());
    }
    vars
}

#[test]
fn every_step_has_an_id_and_waits_only_for_steps_before_it() {
    let steps = steps();
    let mut seen = HashSet::new();
    for step in &steps {
        assert!(!step.wait_for.is_empty(), "{} has no explicit waitFor", step.id);
        for dependency in &step.wait_for {
            assert!(
                dependency == "-" || seen.contains(dependency),
                "{} waits for {dependency}, not an earlier step",
                step.id
            );
        }
        assert!(seen.insert(step.id.clone()), "two steps are called {}", step.id);
    }
    // Nothing is deployed unless the tests passed and the image was built.
    let waits_on = |id: &str, on: &str| {
        let mut pending = vec![id.to_owned()];
        let mut reached = HashSet::new();
        while let Some(id) = pending.pop() {
            let step = steps.iter().find(|step| step.id == id).unwrap();
            for dependency in step.wait_for.iter().filter(|dependency| *dependency != "-") {
                if reached.insert(dependency.clone()) {
                    pending.push(dependency.clone());
                }
            }
        }
        reached.contains(on)
    };
    for deploying in ["migrate", "deploy", "job", "provision"] {
        assert!(
            waits_on(deploying, "test") && waits_on(deploying, "build"),
            "{deploying} can run before test and build"
        );
    }
    assert!(waits_on("deploy", "migrate"), "the service starts before its migrations");
    assert!(waits_on("provision", "deploy"), "subscriptions would push to a service not yet deployed");
}

#[test]
fn every_substitution_used_is_declared_and_every_declared_one_is_used() {
    let declared = substitutions();
    let used = substitutions_used(CLOUDBUILD);
    for name in &used {
        assert!(
            declared.contains_key(name) || BUILT_IN.contains(&name.as_str()),
            "${name} is used but neither declared nor built in"
        );
    }
    for name in declared.keys() {
        assert!(name.starts_with('_'), "user substitutions start with an underscore: {name}");
        assert!(used.contains(name), "{name} is declared but never used");
    }
}

#[test]
fn every_deploying_step_ships_the_image_the_build_pushed() {
    let build = step("build");
    let image = build.flag("--destination").unwrap();
    assert!(image.ends_with(":$COMMIT_SHA"), "{image}");
    for id in ["migrate", "deploy", "job", "provision"] {
        assert_eq!(step(id).flag("--image"), Some(image), "{id}");
    }
    assert_eq!(step("provision").flag("--args"), Some("provision"));
    assert!(step("provision").has("--wait"), "a failed provision must fail the build");
    // --set-env-vars would drop the kill switches set on the job by hand.
    assert!(
        step("provision").flag("--set-env-vars").is_none() && step("provision").flag("--update-env-vars").is_some()
    );
    assert_eq!(step("migrate").flag("--args"), Some("migrate"));
    assert!(step("job").flag("--args").unwrap().starts_with("run,"));
}

#[tokio::test]
async fn the_service_is_deployed_as_the_configuration_and_the_routes_expect() {
    let deploy = step("deploy");
    assert!(deploy.has("--no-allow-unauthenticated") && deploy.has("--cpu-boost"));
    assert_eq!(deploy.flag("--min-instances"), Some("0"));

    // Pub/Sub waits up to a route's ack deadline for an answer: the request timeout must too.
    let timeout: u32 = deploy.flag("--timeout").unwrap().parse().unwrap();
    let registry = whirligig_handler::demo::registry().unwrap();
    let longest = registry.routes().map(|route| route.ack_deadline().as_secs()).max().unwrap();
    assert!(timeout >= MAX_ACK_DEADLINE && u64::from(timeout) >= longest, "--timeout={timeout}");

    // The environment loads, outside dev, with Cloud Run checking the tokens.
    let vars = environment(&deploy);
    let config = Config::from_lookup(&registry, &|name| vars.get(name).cloned()).unwrap();
    assert!(!config.is_dev());
    let AuthConfig::CloudRunIam(settings) = &config.auth else { panic!("{:?}", config.auth) };
    assert_eq!(settings.audience, vars["CLOUD_RUN_SERVICE_URL"]);
    assert!(settings.service_account.ends_with(".iam.gserviceaccount.com"), "{}", settings.service_account);

    // The startup probe asks a path the app answers.
    let probe = deploy.flag("--startup-probe").unwrap();
    let path = probe.split(',').find_map(|part| part.strip_prefix("httpGet.path=")).unwrap();
    let job = environment(&step("job"));
    let job_config = Config::from_lookup(&registry, &|name| job.get(name).cloned());
    assert!(job_config.is_ok(), "the job's environment does not load: {job_config:?}");
    let app = App::in_memory(Arc::new(registry), PushAuth::none());
    let request = http::Request::get(path).body(http_body_util::Empty::<bytes::Bytes>::new()).unwrap();
    assert_eq!(app.handle(request).await.status(), 200, "the probe's {path}");
}

/// Provisioning names and points resources exactly as the service reads them.
#[test]
fn provision_runs_with_the_services_names_and_push_settings() {
    let registry = whirligig_handler::demo::registry().unwrap();
    let (service, provision) = (environment(&step("deploy")), environment(&step("provision")));
    assert!(step("provision").flag("--set-secrets").is_none(), "provision never connects to the database");
    assert!(step("provision").has("--clear-secrets"), "a secret an earlier build gave the job would stay");
    let lookup = |name: &str| provision.get(name).cloned();
    let config = Config::from_lookup_needing(&registry, &lookup, Needs::PROVISION).unwrap();
    let shared = ["TASKS_ENVIRONMENT", "TASKS_NAMESPACE", "GCP_PROJECT_ID", "CLOUD_RUN_SERVICE_URL"];
    for name in shared.into_iter().chain(["TASKS_SERVICE_ACCOUNT", "SCHEDULER_LOCATION"]) {
        assert_eq!(provision.get(name), service.get(name), "{name}");
    }
    assert_eq!(config.provision.project_number.as_deref(), Some("123456789012"));
    assert_eq!(config.provision.audience.as_deref(), service.get("CLOUD_RUN_SERVICE_URL").map(String::as_str));
}

#[test]
fn the_dockerfile_stubs_every_target_and_ships_only_the_static_binary() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".to_owned());
    let output = std::process::Command::new(cargo)
        .args(["metadata", "--no-deps", "--format-version", "1", "--offline"])
        .current_dir(root)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    // The dependency layer builds the workspace from its manifests alone: every
    // manifest is copied and every target file stubbed, or that layer fails.
    let stubs = &DOCKERFILE[DOCKERFILE.find("RUN mkdir").unwrap()..DOCKERFILE.find("COPY . .").unwrap()];
    // After the real sources arrive, the stubs the binary was built from must look older than them.
    let touched =
        DOCKERFILE[DOCKERFILE.find("COPY . .").unwrap()..].lines().find(|line| line.contains("touch")).unwrap();
    for source in ["registry/src/lib.rs", "handler/src/lib.rs", "handler/src/main.rs"] {
        assert!(touched.contains(source), "{source} is not touched after COPY . .: the image would ship a stub");
    }
    for package in metadata["packages"].as_array().unwrap() {
        let manifest = Path::new(package["manifest_path"].as_str().unwrap()).strip_prefix(root).unwrap();
        assert!(DOCKERFILE.contains(&format!("COPY {} ", manifest.display())), "{} is not copied", manifest.display());
        for target in package["targets"].as_array().unwrap() {
            let source = Path::new(target["src_path"].as_str().unwrap()).strip_prefix(root).unwrap();
            // Tests and examples are found by looking, so a missing one is no error.
            if target["kind"][0] == "test" || target["kind"][0] == "example" {
                continue;
            }
            assert!(stubs.contains(&source.display().to_string()), "the Dockerfile does not stub {}", source.display());
        }
    }
    assert!(DOCKERFILE.contains("--locked") && DOCKERFILE.contains("scripts/build-static.sh"));
    // The dependency layer is of use only if the script then builds with the same flags.
    let flags = |text: &'static str| text.split("RUSTFLAGS=\"").nth(1).and_then(|rest| rest.split('"').next());
    let script = include_str!("../../scripts/build-static.sh");
    assert_eq!(flags(DOCKERFILE), flags(script), "the Dockerfile and build-static.sh build with different RUSTFLAGS");
    assert!(flags(script).is_some_and(|flags| flags.contains("crt-static")), "{:?}", flags(script));
    let last_stage = DOCKERFILE.rsplit("\nFROM ").next().unwrap();
    assert!(last_stage.starts_with("scratch"), "the image is not empty: FROM {last_stage}");
    assert!(last_stage.contains("USER 65532:65532"), "the image runs as root");
    assert!(last_stage.contains(r#"ENTRYPOINT ["/whirligig"]"#) && last_stage.contains(r#"CMD ["serve"]"#));
}
