//! My service: its tasks and the registry that routes them. The worker
//! (`src/main.rs`) serves this registry; a web service links this crate to
//! enqueue the same tasks, typed.

pub mod tasks;

use whirligig_registry::{Registry, RegistryError, task_route};

/// Every task of the service. Paths (and so topic names) follow the module:
/// `my_service.tasks.send_welcome_email`.
pub fn registry() -> Result<Registry, RegistryError> {
    Registry::builder()
        .route(task_route!(tasks::send_welcome_email))
        .route(task_route!(tasks::add).max_attempts(5))
        .route(task_route!(tasks::cleanup_old_data).schedule("0 3 * * *").timezone("Europe/London"))
        .build()
}
