//! Every record the core reads from the store, decoded from arbitrary
//! bytes (S19: a value that does not decode is an error, never a panic);
//! what decodes re-encodes to a value that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use taskgraph_core::keys::{self, FailureRecord, NodeRecord, RoleRecord};
use taskgraph_core::JobSpec;

fn round_trip<T>(data: &[u8])
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    if let Ok(v) = keys::decode::<T>("fuzz", data) {
        let again: T = keys::decode("fuzz", &keys::encode(&v)).expect("re-encoded value decodes");
        assert_eq!(again, v);
    }
}

fuzz_target!(|data: &[u8]| {
    round_trip::<NodeRecord>(data);
    round_trip::<RoleRecord>(data);
    round_trip::<FailureRecord>(data);
    round_trip::<JobSpec>(data);
    if let Ok(e) = keys::decode_epoch("fuzz", data) {
        assert_eq!(keys::decode_epoch("fuzz", &keys::encode_epoch(e)), Ok(e));
    }
});
