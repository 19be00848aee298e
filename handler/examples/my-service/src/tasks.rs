//! The tasks: plain async functions taking a context and typed arguments.

use serde::{Deserialize, Serialize};
use whirligig_registry::{Args, Kwargs, ResultExt as _, Task, TaskContext, TaskError, task};

/// `send_welcome_email`'s keyword arguments.
#[derive(Debug, Serialize, Deserialize)]
pub struct Welcome {
    pub to: String,
}

/// Sends a welcome email; an address without a domain can never succeed, so
/// it fails permanently (not retried).
pub async fn send_welcome_email(ctx: TaskContext, Kwargs(welcome): Kwargs<Welcome>) -> Result<String, TaskError> {
    let (_, domain) = welcome.to.split_once('@').ok_or("not an email address").permanent()?;
    Ok(format!("welcomed {} at {domain} (attempt {})", welcome.to, ctx.attempt()))
}

/// Adds two numbers: `args` is the list `[a, b]`.
pub async fn add(_ctx: TaskContext, Args((a, b)): Args<(i64, i64)>) -> Result<i64, TaskError> {
    a.checked_add(b).ok_or("the sum overflows").permanent()
}

/// Runs at 03:00 London time.
pub async fn cleanup_old_data(_ctx: TaskContext) {}

/// The tasks by value, for typed enqueues: a wrong argument type does not compile.
pub const SEND_WELCOME_EMAIL: Task<(Kwargs<Welcome>,)> = task!(send_welcome_email);
/// `add`, typed.
pub const ADD: Task<(Args<(i64, i64)>,)> = task!(add);
