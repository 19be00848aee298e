//! The task message itself (the push's decoded data): `ReceivedMessage::parse`,
//! its execution id, and `RawArguments::new` over the args and kwargs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use whirligig_registry::{RawArguments, ReceivedMessage};

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = ReceivedMessage::parse(data) {
        let id = message.execution_id("42");
        assert!(!id.is_empty());
        if message.task_id().is_none_or(str::is_empty) {
            assert_eq!(id, "msg-42");
        }
        assert!(!message.task_name().is_empty(), "an empty task_name is refused");
        let arguments = message.arguments();
        // What parse accepted, RawArguments::new accepts again.
        RawArguments::new(arguments.args(), arguments.kwargs()).expect("parsed arguments are well-shaped");
    }
    // The same bytes as args and kwargs, split at the first 0xff.
    let (left, right) = match data.iter().position(|&b| b == 0xff) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &b"{}"[..]),
    };
    let (Ok(left), Ok(right)) = (std::str::from_utf8(left), std::str::from_utf8(right)) else { return };
    let (Ok(args), Ok(kwargs)) = (serde_json::from_str::<&RawValue>(left), serde_json::from_str::<&RawValue>(right))
    else {
        return;
    };
    let _ = RawArguments::new(args, kwargs);
});
