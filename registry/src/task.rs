//! Task functions. [`TaskFn`] is implemented by plain `async fn`s taking a
//! [`TaskContext`] and typed extractors ([`Args`], [`Kwargs`]); the registry
//! stores them type-erased as [`DynTask`]. Arguments are deserialised here,
//! straight from the message's raw JSON; nothing here knows where it came from.

use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

use crate::context::TaskContext;
use crate::error::{ArgumentError, ArgumentPart, TaskError};

/// The JSON a successful task returned, serialised once.
pub type TaskOutput = Box<RawValue>;

/// A running task: what [`TaskFn::call`] returns once the arguments fit.
pub type TaskFuture = Pin<Box<dyn Future<Output = Result<TaskOutput, TaskError>> + Send + 'static>>;

/// The arguments of one call: the message's `args` list and `kwargs` object,
/// still as raw JSON, so each is parsed exactly once, into the task's own types.
#[derive(Debug, Clone, Copy)]
pub struct RawArguments<'a> {
    args: &'a RawValue,
    kwargs: &'a RawValue,
}

impl<'a> RawArguments<'a> {
    /// Pairs `args` and `kwargs`, checking that one is a JSON list and the
    /// other an object, neither nested deeper than [`MAX_NESTING`].
    pub fn new(args: &'a RawValue, kwargs: &'a RawValue) -> Result<Self, ArgumentShapeError> {
        if !is_container(args, b'[') {
            return Err(ArgumentShapeError::ArgsNotList);
        }
        if !is_container(kwargs, b'{') {
            return Err(ArgumentShapeError::KwargsNotObject);
        }
        if nesting_over(args.get(), MAX_NESTING) || nesting_over(kwargs.get(), MAX_NESTING) {
            return Err(ArgumentShapeError::TooDeep);
        }
        Ok(Self { args, kwargs })
    }

    /// No arguments at all: `[]` and `{}`.
    pub fn empty() -> RawArguments<'static> {
        RawArguments { args: raw("[]"), kwargs: raw("{}") }
    }

    /// The positional arguments, a JSON list.
    pub fn args(&self) -> &'a RawValue {
        self.args
    }

    /// The keyword arguments, a JSON object.
    pub fn kwargs(&self) -> &'a RawValue {
        self.kwargs
    }

    fn ensure_unused(&self, part: ArgumentPart) -> Result<(), ArgumentError> {
        let value = match part {
            ArgumentPart::Args => self.args,
            ArgumentPart::Kwargs => self.kwargs,
        };
        if is_empty_container(value) {
            Ok(())
        } else {
            Err(ArgumentError::new(part, format_args!("the task takes no {part}, got {}", value.get())))
        }
    }
}

/// `args` or `kwargs` has the wrong JSON type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ArgumentShapeError {
    /// `args` is not a JSON list.
    #[error("args is not a list")]
    ArgsNotList,
    /// `kwargs` is not a JSON object.
    #[error("kwargs is not an object")]
    KwargsNotObject,
    /// `args` or `kwargs` nests lists and objects deeper than [`MAX_NESTING`].
    #[error("arguments are nested deeper than {MAX_NESTING} levels")]
    TooDeep,
}

/// How deep `args` and `kwargs` may nest lists and objects, themselves
/// included: serde_json's own limit when it decodes a task's types, so no
/// deeper argument could ever reach a task; and far below the depth at which
/// PostgreSQL's jsonb gives up (about 10,000 levels is fine, 100,000 is not).
pub const MAX_NESTING: usize = 128;

/// Whether valid JSON `text` nests lists and objects deeper than `limit`.
fn nesting_over(text: &str, limit: usize) -> bool {
    let (mut depth, mut in_string, mut escaped) = (0_usize, false, false);
    for &byte in text.as_bytes() {
        match byte {
            _ if escaped => escaped = false,
            b'\\' if in_string => escaped = true,
            b'"' => in_string = !in_string,
            _ if in_string => {}
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

fn raw(json: &'static str) -> &'static RawValue {
    serde_json::from_str(json).unwrap_or_else(|_| unreachable!("`{json}` is valid JSON"))
}

fn is_container(value: &RawValue, open: u8) -> bool {
    value.get().trim_start().as_bytes().first() == Some(&open)
}

/// `value` is already known to be a list or an object: it is empty when only
/// whitespace stands between its brackets.
fn is_empty_container(value: &RawValue) -> bool {
    let text = value.get().trim();
    text.len() >= 2 && text[1..text.len() - 1].trim().is_empty()
}

/// A task parameter built from the call's arguments.
pub trait FromArguments: Sized {
    /// True when this extractor reads `args`; a task that has none rejects a non-empty list.
    const READS_ARGS: bool = false;
    /// True when this extractor reads `kwargs`; a task that has none rejects a non-empty object.
    const READS_KWARGS: bool = false;

    /// Builds the parameter, or explains why the arguments do not fit.
    fn from_arguments(arguments: &RawArguments<'_>) -> Result<Self, ArgumentError>;
}

/// The positional arguments, deserialised into `T`: a tuple such as
/// `(String, u32)` for a fixed list, or a `Vec<T>` for any length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Args<T>(pub T);

/// The keyword arguments, deserialised into `T`, usually a struct. Unknown keys
/// are ignored unless `T` says `#[serde(deny_unknown_fields)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Kwargs<T>(pub T);

impl<T: DeserializeOwned> FromArguments for Args<T> {
    const READS_ARGS: bool = true;

    fn from_arguments(arguments: &RawArguments<'_>) -> Result<Self, ArgumentError> {
        serde_json::from_str(arguments.args.get())
            .map(Args)
            .map_err(|error| ArgumentError::new(ArgumentPart::Args, error))
    }
}

impl<T: DeserializeOwned> FromArguments for Kwargs<T> {
    const READS_KWARGS: bool = true;

    fn from_arguments(arguments: &RawArguments<'_>) -> Result<Self, ArgumentError> {
        serde_json::from_str(arguments.kwargs.get())
            .map(Kwargs)
            .map_err(|error| ArgumentError::new(ArgumentPart::Kwargs, error))
    }
}

/// What a task function may return: `()` or `Result<T, E>` with `T: Serialize`
/// and `E` convertible into [`TaskError`].
pub trait IntoTaskResult {
    /// Serialises the value (once) or passes the error on.
    fn into_task_result(self) -> Result<TaskOutput, TaskError>;
}

impl IntoTaskResult for () {
    fn into_task_result(self) -> Result<TaskOutput, TaskError> {
        Ok(RawValue::NULL.to_owned())
    }
}

impl<T: Serialize, E: Into<TaskError>> IntoTaskResult for Result<T, E> {
    fn into_task_result(self) -> Result<TaskOutput, TaskError> {
        let value = self.map_err(Into::into)?;
        // A value that cannot be serialised never will be: retrying would
        // only repeat the task's side effects.
        serde_json::value::to_raw_value(&value)
            .map_err(|error| TaskError::permanent(format!("the task's return value could not be serialised: {error}")))
    }
}

/// The parameters of a task function after its context, as a tuple of
/// extractors: what [`TaskFn`]'s `M` is, and what a typed
/// [`Task`](crate::Task) carries.
pub trait Parameters: Sized + 'static {
    /// Builds every parameter, or says which part of the arguments does not
    /// fit. `args` or `kwargs` that no parameter reads must be empty.
    fn extract(arguments: &RawArguments<'_>) -> Result<Self, ArgumentError>;
}

/// An async function usable as a task: `async fn(TaskContext, E1, E2, ..)`
/// where each `E` is a [`FromArguments`] extractor. `M` is the tuple of
/// extractor types, `(E1, E2, ..)`.
pub trait TaskFn<M>: Send + Sync + 'static {
    /// Extracts the parameters, then starts the task. Arguments that do not
    /// fit are reported before any future exists.
    fn call(&self, ctx: TaskContext, arguments: &RawArguments<'_>) -> Result<TaskFuture, ArgumentError>;
}

macro_rules! impl_task_fn {
    ($($extractor:ident),*) => {
        impl<$($extractor: FromArguments + 'static,)*> Parameters for ($($extractor,)*) {
            fn extract(arguments: &RawArguments<'_>) -> Result<Self, ArgumentError> {
                if !(false $(|| $extractor::READS_ARGS)*) {
                    arguments.ensure_unused(ArgumentPart::Args)?;
                }
                if !(false $(|| $extractor::READS_KWARGS)*) {
                    arguments.ensure_unused(ArgumentPart::Kwargs)?;
                }
                Ok(($($extractor::from_arguments(arguments)?,)*))
            }
        }

        impl<F, Fut, $($extractor,)*> TaskFn<($($extractor,)*)> for F
        where
            F: Fn(TaskContext, $($extractor,)*) -> Fut + Send + Sync + 'static,
            Fut: Future + Send + 'static,
            Fut::Output: IntoTaskResult,
            $($extractor: FromArguments + 'static,)*
        {
            #[allow(non_snake_case)]
            fn call(&self, ctx: TaskContext, arguments: &RawArguments<'_>) -> Result<TaskFuture, ArgumentError> {
                let ($($extractor,)*) = <($($extractor,)*)>::extract(arguments)?;
                let running = self(ctx, $($extractor,)*);
                Ok(Box::pin(async move { running.await.into_task_result() }))
            }
        }
    };
}

impl_task_fn!();
impl_task_fn!(E1);
impl_task_fn!(E1, E2);
impl_task_fn!(E1, E2, E3);

/// A task function with its parameter types erased: what the registry stores.
pub(crate) trait DynTask: Send + Sync + 'static {
    fn call(&self, ctx: TaskContext, arguments: &RawArguments<'_>) -> Result<TaskFuture, ArgumentError>;

    /// Checks the arguments exactly as [`DynTask::call`] does, without starting anything.
    fn check(&self, arguments: &RawArguments<'_>) -> Result<(), ArgumentError>;
}

/// Adapts a [`TaskFn`] to [`DynTask`]; the marker keeps `M` without owning one.
pub(crate) struct Erased<F, M> {
    function: F,
    marker: PhantomData<fn() -> M>,
}

impl<F, M> Erased<F, M> {
    pub(crate) fn new(function: F) -> Self {
        Self { function, marker: PhantomData }
    }
}

impl<F: TaskFn<M>, M: Parameters> DynTask for Erased<F, M> {
    fn call(&self, ctx: TaskContext, arguments: &RawArguments<'_>) -> Result<TaskFuture, ArgumentError> {
        self.function.call(ctx, arguments)
    }

    fn check(&self, arguments: &RawArguments<'_>) -> Result<(), ArgumentError> {
        M::extract(arguments).map(drop)
    }
}

#[cfg(test)]
mod tests {
    use std::task::{Context, Poll, Waker};

    use serde::Deserialize;

    use super::*;

    /// Polls a future that never waits: task bodies here do no I/O.
    fn run(future: TaskFuture) -> Result<TaskOutput, TaskError> {
        let mut future = future;
        match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(output) => output,
            Poll::Pending => panic!("a test task waited"),
        }
    }

    #[test]
    fn arguments_nested_past_the_limit_are_refused_whatever_their_strings_say() {
        let nested = |depth: usize, open: &str, close: &str| format!("{}{}", open.repeat(depth), close.repeat(depth));
        let raw = |text: &str| serde_json::from_str::<Box<RawValue>>(text).unwrap();
        let (deepest, too_deep) = (raw(&nested(MAX_NESTING, "[", "]")), raw(&nested(MAX_NESTING + 1, "[", "]")));
        let empty = raw("{}");
        assert!(RawArguments::new(&deepest, &empty).is_ok());
        assert_eq!(RawArguments::new(&too_deep, &empty).unwrap_err(), ArgumentShapeError::TooDeep);
        let deep_kwargs = raw(&format!("{{\"a\": {}}}", nested(MAX_NESTING, "[", "]")));
        assert_eq!(RawArguments::new(&raw("[]"), &deep_kwargs).unwrap_err(), ArgumentShapeError::TooDeep);
        // Brackets inside strings, escaped quotes included, are not nesting.
        let brackets = raw(&format!("[\"\\\"{}\"]", "[".repeat(MAX_NESTING * 2)));
        assert!(RawArguments::new(&brackets, &empty).is_ok());
        // serde_json reads a RawValue at any depth: the check is what stops it.
        let hundred_thousand = raw(&nested(100_000, "[", "]"));
        assert_eq!(RawArguments::new(&hundred_thousand, &empty).unwrap_err(), ArgumentShapeError::TooDeep);
    }

    fn arguments<'a>(args: &'a str, kwargs: &'a str) -> RawArguments<'a> {
        RawArguments::new(serde_json::from_str(args).unwrap(), serde_json::from_str(kwargs).unwrap()).unwrap()
    }

    fn call<M>(task: impl TaskFn<M>, args: &str, kwargs: &str) -> Result<Result<String, TaskError>, ArgumentError> {
        let future = task.call(TaskContext::new("t"), &arguments(args, kwargs))?;
        Ok(run(future).map(|output| output.get().to_owned()))
    }

    #[derive(Debug, Deserialize, Serialize)]
    struct Welcome {
        to: String,
        #[serde(default)]
        retries: u32,
    }

    async fn welcome(_: TaskContext, Kwargs(welcome): Kwargs<Welcome>) -> Result<Welcome, TaskError> {
        Ok(welcome)
    }

    async fn add(_: TaskContext, Args((a, b)): Args<(i64, i64)>) -> Result<i64, TaskError> {
        Ok(a + b)
    }

    async fn both(
        _: TaskContext,
        Args(items): Args<Vec<String>>,
        Kwargs(w): Kwargs<Welcome>,
    ) -> Result<String, TaskError> {
        Ok(format!("{}:{}", items.join(","), w.to))
    }

    async fn nothing(_: TaskContext) {}

    async fn echo_ctx(ctx: TaskContext) -> Result<(String, u32), TaskError> {
        Ok((ctx.task_id().to_owned(), ctx.attempt()))
    }

    #[test]
    fn kwargs_deserialise_into_a_struct_and_the_result_is_serialised() {
        let output = call(welcome, "[]", r#"{"to": "a@b.c"}"#).unwrap().unwrap();
        assert_eq!(output, r#"{"to":"a@b.c","retries":0}"#);
    }

    #[test]
    fn args_deserialise_into_a_tuple() {
        assert_eq!(call(add, "[2, 40]", "{}").unwrap().unwrap(), "42");
    }

    #[test]
    fn args_and_kwargs_together() {
        let output = call(both, r#"["x", "y"]"#, r#"{"to": "z"}"#).unwrap().unwrap();
        assert_eq!(output, r#""x,y:z""#);
    }

    #[test]
    fn unit_return_is_null_and_context_reaches_the_task() {
        assert_eq!(call(nothing, "[]", "{}").unwrap().unwrap(), "null");
        let task = echo_ctx;
        let ctx = TaskContext::new("id-7").with_attempt(2);
        let output = run(TaskFn::call(&task, ctx, &RawArguments::empty()).unwrap()).unwrap();
        assert_eq!(output.get(), r#"["id-7",2]"#);
    }

    #[test]
    fn wrong_type_is_an_argument_error_with_serdes_message() {
        let error = call(add, r#"[2, "forty"]"#, "{}").unwrap_err();
        assert_eq!(error.part(), ArgumentPart::Args);
        assert!(error.reason().starts_with("invalid type: string \"forty\", expected i64"), "{error}");
    }

    #[test]
    fn missing_field_is_an_argument_error() {
        let error = call(welcome, "[]", r#"{"retries": 1}"#).unwrap_err();
        assert_eq!(error.part(), ArgumentPart::Kwargs);
        assert!(error.reason().starts_with("missing field `to`"), "{error}");
    }

    #[test]
    fn too_many_or_too_few_positional_args_are_rejected() {
        let extra = call(add, "[1, 2, 3]", "{}").unwrap_err();
        assert_eq!(extra.part(), ArgumentPart::Args);
        let short = call(add, "[1]", "{}").unwrap_err();
        assert!(short.reason().contains("invalid length 1"), "{short}");
    }

    #[test]
    fn arguments_a_task_does_not_take_are_rejected() {
        let args = call(welcome, "[1]", r#"{"to": "x"}"#).unwrap_err();
        assert_eq!(args.part(), ArgumentPart::Args);
        assert_eq!(args.reason(), "the task takes no args, got [1]");
        let kwargs = call(add, "[1, 2]", r#"{"x": 1}"#).unwrap_err();
        assert_eq!(kwargs.part(), ArgumentPart::Kwargs);
        assert!(call(nothing, " [ ] ", "{ }").is_ok());
    }

    #[test]
    fn closures_capturing_state_are_tasks_too() {
        use std::sync::Arc;
        use std::sync::atomic::{AtomicU32, Ordering};

        let runs = Arc::new(AtomicU32::new(0));
        let counted = Arc::clone(&runs);
        let task = move |_: TaskContext, Args((n,)): Args<(u32,)>| {
            let runs = Arc::clone(&counted);
            async move { Ok::<_, TaskError>(runs.fetch_add(n, Ordering::SeqCst) + n) }
        };
        assert_eq!(call(task.clone(), "[2]", "{}").unwrap().unwrap(), "2");
        assert_eq!(call(task.clone(), "[3]", "{}").unwrap().unwrap(), "5");
        assert!(call(task.clone(), "[\"x\"]", "{}").is_err());
        assert_eq!(runs.load(Ordering::SeqCst), 5, "arguments that do not fit never start the task");
    }

    #[test]
    fn task_errors_keep_their_kind() {
        async fn fails(_: TaskContext) -> Result<(), TaskError> {
            Err(TaskError::permanent("no such user"))
        }
        let error = call(fails, "[]", "{}").unwrap().unwrap_err();
        assert!(error.is_permanent());
        assert_eq!(error.to_string(), "no such user");
    }

    #[test]
    fn an_unserialisable_return_value_is_a_permanent_error() {
        async fn bad(_: TaskContext) -> Result<std::collections::HashMap<(u8, u8), u8>, TaskError> {
            Ok([((1, 2), 3)].into_iter().collect())
        }
        let error = call(bad, "[]", "{}").unwrap().unwrap_err();
        assert!(error.is_permanent());
        assert!(error.to_string().contains("could not be serialised"), "{error}");
    }

    #[test]
    fn shape_is_checked_when_arguments_are_paired() {
        let list: &RawValue = serde_json::from_str("[]").unwrap();
        let object: &RawValue = serde_json::from_str("{}").unwrap();
        assert_eq!(RawArguments::new(object, object).unwrap_err(), ArgumentShapeError::ArgsNotList);
        assert_eq!(RawArguments::new(list, list).unwrap_err(), ArgumentShapeError::KwargsNotObject);
    }
}
