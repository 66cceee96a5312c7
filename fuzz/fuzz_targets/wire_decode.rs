//! The message decoder on arbitrary bytes: never panics, and whatever it
//! accepts encodes back to a message that decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskgraph_core::wire;

fuzz_target!(|data: &[u8]| {
    if let Ok(msg) = wire::decode(data) {
        let again = wire::decode(&wire::encode(&msg)).expect("a re-encoded message decodes");
        assert_eq!(again, msg, "decode(encode(m)) == m");
    }
});
