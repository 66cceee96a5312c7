//! Store keys of arbitrary text parsed against a job's prefix: never
//! panics, and whatever parses names the key it came from.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskgraph_core::keys::Keys;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let keys = Keys::new("taskgraph", "fuzz");
    for candidate in [text.to_string(), format!("{}{text}", keys.prefix())] {
        if let Some(k) = keys.parse(&candidate) {
            assert_eq!(keys.key(k), candidate, "a parsed key prints back as itself");
        }
    }
});
