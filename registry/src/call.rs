//! A call of a task from the caller's side: [`Task`] names a registered task
//! by value, typed by its parameters, and [`IntoCall`] turns the arguments a
//! caller gives it into the message's `args` and `kwargs`. Publishing them is
//! not this module's business.

use std::fmt;
use std::marker::PhantomData;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::error::{ArgumentError, ArgumentPart};
use crate::task::{Args, Kwargs, Parameters, TaskFn};

/// A task named by value: its name, and its parameter types `M` (the
/// function's extractors after the context, e.g. `(Kwargs<Welcome>,)`).
/// Made by [`task!`](crate::task) from the function itself, so renaming the
/// function, or changing its parameters, breaks every call site at compile
/// time instead of in production.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use whirligig_registry::{Kwargs, Task, TaskContext, task};
///
/// #[derive(Serialize, Deserialize)]
/// pub struct Welcome {
///     to: String,
/// }
///
/// pub async fn send_welcome_email(_ctx: TaskContext, Kwargs(_welcome): Kwargs<Welcome>) {}
///
/// pub const SEND_WELCOME_EMAIL: Task<(Kwargs<Welcome>,)> = task!(send_welcome_email);
/// assert_eq!(SEND_WELCOME_EMAIL.name(), "send_welcome_email");
/// ```
pub struct Task<M> {
    name: &'static str,
    parameters: PhantomData<fn() -> M>,
}

impl<M: Parameters> Task<M> {
    /// The task registered as `name` whose function is `function`: the
    /// function only fixes `M`, and is not kept.
    pub const fn of<F: TaskFn<M>>(name: &'static str, function: F) -> Self {
        // A function item is zero-sized; forgetting it is what lets this be const.
        std::mem::forget(function);
        Self { name, parameters: PhantomData }
    }
}

impl<M> Task<M> {
    /// The task's name: the route it is registered under.
    pub const fn name(&self) -> &'static str {
        self.name
    }
}

impl<M> Clone for Task<M> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<M> Copy for Task<M> {}

impl<M> fmt::Debug for Task<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Task").field(&self.name).finish()
    }
}

/// A [`Task`] named after a task function, as [`task_route!`](crate::task_route)
/// names its route: `task!(crate::tasks::send_welcome_email)` is the task
/// `send_welcome_email`, typed by the function's parameters.
#[macro_export]
macro_rules! task {
    ($($segment:ident)::+) => {
        $crate::Task::of($crate::__last_segment!($($segment)::+), $($segment)::+)
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __last_segment {
    ($last:ident) => {
        ::core::stringify!($last)
    };
    ($first:ident :: $($rest:ident)::+) => {
        $crate::__last_segment!($($rest)::+)
    };
}

/// The `args` list and `kwargs` object of one call, as JSON.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CallArguments {
    /// Positional arguments.
    pub args: Vec<Value>,
    /// Keyword arguments.
    pub kwargs: Map<String, Value>,
}

/// One parameter's part of a call: [`Args`] fills `args`, [`Kwargs`] fills `kwargs`.
pub trait IntoArgument {
    /// Serialises the value into its part of `call`.
    fn write(self, call: &mut CallArguments) -> Result<(), ArgumentError>;
}

impl<T: Serialize> IntoArgument for Args<T> {
    fn write(self, call: &mut CallArguments) -> Result<(), ArgumentError> {
        match to_value(ArgumentPart::Args, &self.0)? {
            Value::Array(args) => call.args = args,
            other => {
                return Err(ArgumentError::new(ArgumentPart::Args, format_args!("must be a JSON list, not {other}")));
            }
        }
        Ok(())
    }
}

impl<T: Serialize> IntoArgument for Kwargs<T> {
    fn write(self, call: &mut CallArguments) -> Result<(), ArgumentError> {
        match to_value(ArgumentPart::Kwargs, &self.0)? {
            Value::Object(kwargs) => call.kwargs = kwargs,
            other => {
                return Err(ArgumentError::new(
                    ArgumentPart::Kwargs,
                    format_args!("must be a JSON object, not {other}"),
                ));
            }
        }
        Ok(())
    }
}

fn to_value(part: ArgumentPart, value: &impl Serialize) -> Result<Value, ArgumentError> {
    serde_json::to_value(value).map_err(|error| ArgumentError::new(part, error))
}

/// What a caller passes for a task with parameters `M`: nothing (`()`) for a
/// task without any, the one extractor for one (`Kwargs(welcome)`), a tuple
/// of them for several (`(Args(ids), Kwargs(options))`).
#[diagnostic::on_unimplemented(
    message = "these arguments do not fit a task whose parameters are `{M}`",
    label = "pass the task's own extractors: `()`, `Kwargs(..)`, `Args(..)` or a tuple of them, in its order"
)]
pub trait IntoCall<M> {
    /// The call's `args` and `kwargs`.
    fn into_call(self) -> Result<CallArguments, ArgumentError>;
}

impl IntoCall<()> for () {
    fn into_call(self) -> Result<CallArguments, ArgumentError> {
        Ok(CallArguments::default())
    }
}

impl<E1: IntoArgument> IntoCall<(E1,)> for E1 {
    fn into_call(self) -> Result<CallArguments, ArgumentError> {
        let mut call = CallArguments::default();
        self.write(&mut call)?;
        Ok(call)
    }
}

impl<E1: IntoArgument, E2: IntoArgument> IntoCall<(E1, E2)> for (E1, E2) {
    fn into_call(self) -> Result<CallArguments, ArgumentError> {
        let mut call = CallArguments::default();
        self.0.write(&mut call)?;
        self.1.write(&mut call)?;
        Ok(call)
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    use super::*;
    use crate::TaskContext;

    #[derive(Serialize, Deserialize)]
    struct Welcome {
        to: String,
    }

    async fn welcome(_: TaskContext, Kwargs(_): Kwargs<Welcome>) {}

    async fn both(_: TaskContext, Args(_): Args<(u32, String)>, Kwargs(_): Kwargs<Welcome>) {}

    async fn nothing(_: TaskContext) {}

    mod tasks {
        pub(super) async fn nested(_: crate::TaskContext) {}
    }

    fn call<M>(_task: &Task<M>, arguments: impl IntoCall<M>) -> Result<CallArguments, ArgumentError> {
        arguments.into_call()
    }

    #[test]
    fn the_task_is_named_by_its_function_and_typed_by_its_parameters() {
        const WELCOME: Task<(Kwargs<Welcome>,)> = task!(welcome);
        assert_eq!(WELCOME.name(), "welcome");
        assert_eq!(task!(tasks::nested).name(), "nested");
        assert_eq!(task!(self::nothing).name(), "nothing");

        let welcomed = call(&WELCOME, Kwargs(Welcome { to: "a@b.c".into() })).unwrap();
        assert_eq!((welcomed.args, Value::Object(welcomed.kwargs)), (vec![], json!({"to": "a@b.c"})));
        assert_eq!(call(&task!(nothing), ()).unwrap(), CallArguments::default());
        let both = call(&task!(both), (Args((7, "x".to_owned())), Kwargs(Welcome { to: "y".into() }))).unwrap();
        assert_eq!((both.args, Value::Object(both.kwargs)), (vec![json!(7), json!("x")], json!({"to": "y"})));
    }

    #[test]
    fn a_value_that_is_not_a_list_or_an_object_is_an_argument_error() {
        async fn scalar(_: TaskContext, Args(_): Args<u32>, Kwargs(_): Kwargs<Vec<u8>>) {}
        let error = call(&task!(scalar), (Args(3), Kwargs(vec![1]))).unwrap_err();
        assert_eq!((error.part(), error.reason()), (ArgumentPart::Args, "must be a JSON list, not 3"));
        async fn listed(_: TaskContext, Kwargs(_): Kwargs<Vec<u8>>) {}
        let error = call(&task!(listed), Kwargs(vec![1])).unwrap_err();
        assert_eq!(error.part(), ArgumentPart::Kwargs);
    }
}
