//! Any request body: split into JSON events or refused with 400, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use salesflow_plugin_http::{BodyMode, split_body};

fuzz_target!(|data: &[u8]| {
    for (mode, ndjson) in [
        (BodyMode::Single, false),
        (BodyMode::Many, false),
        (BodyMode::Many, true),
        (BodyMode::Auto, false),
    ] {
        match split_body(mode, ndjson, data) {
            Ok(events) => {
                // Each one JSON object by the grammar; number ranges (1e400) are the
                // decoders' to judge, as the source's unit tests say.
                for e in events {
                    let raw = serde_json::from_slice::<&serde_json::value::RawValue>(&e);
                    assert!(raw.is_ok_and(|r| r.get().starts_with('{')));
                }
            }
            Err(answer) => assert_eq!(answer.status().as_u16(), 400),
        }
    }
});
