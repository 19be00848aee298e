//! A program of one's own that enqueues a welcome email and reads its
//! execution back, as a web service's handler would:
//! `cargo run -p my-service --example enqueue -- ada@example.com`.

use std::sync::Arc;

use my_service::tasks::{SEND_WELCOME_EMAIL, Welcome};
use whirligig_handler::{Config, Tasks};
use whirligig_registry::Kwargs;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Once, at start: the registry the worker serves, configured from the environment.
    let registry = Arc::new(my_service::registry()?);
    let config = Config::from_env(&registry)?;
    let tasks = Tasks::from_config(registry, &config).await?;

    // Per request: the task by value, with its own argument types.
    let to = std::env::args().nth(1).unwrap_or_else(|| "ada@example.com".to_owned());
    let queued = tasks.enqueue(&SEND_WELCOME_EMAIL, Kwargs(Welcome { to })).await?;
    println!("enqueued {}", queued.task_id());
    match tasks.result(queued.task_id()).await {
        Ok(Some(execution)) => println!("{}: {:?}", execution.status, execution.return_value),
        Ok(None) => println!("not recorded yet"),
        Err(error) => println!("no result here: {error}"),
    }
    Ok(())
}
