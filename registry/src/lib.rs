//! The task registry of whirligig: background tasks for Google Cloud Run.
//!
//! Pure: no I/O, no HTTP, no database, no global state. It holds what a service
//! declares ([`TaskRoute`]s gathered in a [`Registry`]), how its resources are
//! named ([`Naming`]), the message schema ([`TaskMessage`], [`ReceivedMessage`]),
//! and how a task function gets its typed arguments ([`Args`], [`Kwargs`]).
//!
//! ```
//! use serde::Deserialize;
//! use whirligig_registry::{Kwargs, Registry, TaskContext, TaskError, TaskRoute};
//!
//! #[derive(Deserialize)]
//! struct Welcome {
//!     to: String,
//! }
//!
//! async fn send_welcome_email(_ctx: TaskContext, Kwargs(welcome): Kwargs<Welcome>) -> Result<(), TaskError> {
//!     println!("welcome, {}", welcome.to);
//!     Ok(())
//! }
//!
//! async fn cleanup_old_data(_ctx: TaskContext) {}
//!
//! let registry = Registry::builder()
//!     .route(TaskRoute::new("send_welcome_email", send_welcome_email))
//!     .route(TaskRoute::new("cleanup_old_data", cleanup_old_data).schedule("0 3 * * *").timezone("Europe/London"))
//!     .build()?;
//! assert!(registry.get("cleanup_old_data").is_some_and(|route| route.is_scheduled()));
//! # Ok::<(), whirligig_registry::RegistryError>(())
//! ```

mod call;
mod context;
mod error;
mod message;
mod naming;
mod python_json;
mod registry;
mod route;
mod schedule;
mod task;

pub use chrono_tz::Tz;

pub use crate::call::{CallArguments, IntoArgument, IntoCall, Task};
pub use crate::context::{JobShard, TaskContext};
pub use crate::error::{ArgumentError, ArgumentPart, ResultExt, Retry, TaskError};
pub use crate::message::{MAX_TASK_ID_BYTES, MessageError, ReceivedMessage, TaskMessage, scheduled_task_id};
pub use crate::naming::{
    DEFAULT_ENVIRONMENT, DEFAULT_NAMESPACE, NameError, NameKind, NameRule, Naming, check_pubsub_name,
    check_scheduler_job_id,
};
pub use crate::registry::{Registry, RegistryBuilder, RegistryError, RouteProblem, UnknownTask};
pub use crate::route::{
    DEFAULT_ACK_DEADLINE, DEFAULT_MAX_RETRY_DELAY, DEFAULT_MIN_RETRY_DELAY, MAX_ACK_DEADLINE, MIN_ACK_DEADLINE, Route,
    RouteError, TaskRoute,
};
pub use crate::schedule::{Schedule, ScheduleError, parse_timezone};
pub use crate::task::{
    Args, ArgumentShapeError, FromArguments, IntoTaskResult, Kwargs, MAX_NESTING, Parameters, RawArguments, TaskFn,
    TaskFuture, TaskOutput,
};

/// A [`TaskRoute`] named after a task function, with its path derived from the
/// function's module path, like the reference's `TaskRoute(func)`.
///
/// `task_route!(crate::tasks::send_welcome_email)` in crate `shop` registers
/// `send_welcome_email` with path `shop.tasks.send_welcome_email`. `crate::`,
/// `self::` and `super::` resolve as Rust resolves them; any other path is read
/// relative to the calling module, so write the path from the crate root when
/// the function was brought in with `use`, or set [`TaskRoute::path`]. The
/// path is checked against where the function is defined (its type's name):
/// one that differs (`task_route!(tasks::send)` inside `mod tasks`, which
/// names the module twice; a function reached through `use`, or in another
/// crate) is refused when the registry is built, with what to write instead.
#[macro_export]
macro_rules! task_route {
    ($($segment:ident)::+) => {
        $crate::TaskRoute::at_module_path(
            ::core::module_path!(),
            ::core::stringify!($($segment)::+),
            ::core::any::type_name_of_val(&$($segment)::+),
            $($segment)::+,
        )
    };
}
