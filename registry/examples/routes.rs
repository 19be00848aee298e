//! Declares a few tasks the way a service does, then prints what the registry
//! knows: each route's resource names, its schedule's next fire times, and the
//! payload an enqueue would publish. `TASKS_ENVIRONMENT` and `TASKS_NAMESPACE`
//! are read here, by the example, as the handler will read them.
//!
//! `cargo run -p whirligig-registry --example routes`

use std::process::ExitCode;

use serde_json::{Map, json};
use whirligig_registry::{Naming, Registry, TaskMessage, task_route};

mod tasks {
    use serde::Deserialize;
    use whirligig_registry::{Kwargs, TaskContext, TaskError};

    #[derive(Deserialize)]
    pub(crate) struct Welcome {
        pub(crate) to: String,
    }

    pub(crate) async fn send_welcome_email(
        _ctx: TaskContext,
        Kwargs(welcome): Kwargs<Welcome>,
    ) -> Result<(), TaskError> {
        println!("sending a welcome to {}", welcome.to);
        Ok(())
    }

    pub(crate) async fn cleanup_old_data(_ctx: TaskContext) {}

    pub(crate) async fn heartbeat(_ctx: TaskContext) {}
}

fn registry() -> Result<Registry, whirligig_registry::RegistryError> {
    Registry::builder()
        .route(task_route!(tasks::send_welcome_email))
        .route(task_route!(tasks::cleanup_old_data).schedule("0 3 * * *").timezone("Europe/London").ack_deadline(600))
        .route(task_route!(tasks::heartbeat).schedule("*/1 * * * *").kill_switch("ENABLE_HEARTBEAT"))
        .build()
}

/// The registry and the naming it is checked against, or every problem found.
fn load() -> Result<(Registry, Naming), String> {
    let environment = std::env::var("TASKS_ENVIRONMENT").unwrap_or_else(|_| "dev".into());
    let namespace = std::env::var("TASKS_NAMESPACE").unwrap_or_else(|_| "gyrinx".into());
    let naming = Naming::new(environment, namespace).map_err(|error| error.to_string())?;
    let registry = registry().map_err(|error| error.to_string())?;
    registry.check_names(&naming).map_err(|error| error.to_string())?;
    Ok((registry, naming))
}

fn main() -> ExitCode {
    let (registry, naming) = match load() {
        Ok(loaded) => loaded,
        Err(problems) => {
            eprintln!("{problems}");
            return ExitCode::from(2);
        }
    };
    let now = chrono::Utc::now();
    for route in registry.routes() {
        println!("{} (ack deadline {:?}, timeout {:?})", route.name(), route.ack_deadline(), route.timeout());
        println!("  path          {}", route.path());
        println!("  topic         {}", route.topic_name(&naming));
        println!("  subscription  {}", route.subscription_name(&naming));
        if let (Some(job), Some(schedule)) = (route.scheduler_job_name(&naming), route.schedule()) {
            println!("  scheduler job {job}");
            println!("  schedule      {schedule} ({})", route.schedule_timezone());
            for time in route.fire_times_after(now).take(3) {
                println!("    next        {}", time.to_rfc3339());
            }
        }
    }
    let mut kwargs = Map::new();
    kwargs.insert("to".into(), json!("zoë@example.com"));
    println!(
        "\nenqueue send_welcome_email publishes:\n{}",
        TaskMessage::new("send_welcome_email", vec![], kwargs).to_json()
    );
    println!("its scheduler job publishes:\n{}", TaskMessage::scheduled("heartbeat").to_json());
    ExitCode::SUCCESS
}
