//! Property tests of the wire format and of the store values (S13, S19).
//!
//! - Every [`Envelope`] survives `encode` then `decode` unchanged, payloads
//!   included (S13: payloads arrive unchanged).
//! - `decode` turns any byte string into a value or a [`WireError`], never a
//!   panic: random bytes, truncated frames, frames with a byte flipped,
//!   trailing bytes, length prefixes that promise more than the frame holds,
//!   and frames over [`MAX_FRAME_LEN`] (S19).
//! - The store records of `keys` (node, role, failure, job spec, exit reason
//!   and the epoch) round trip, and garbage values give a [`ValueError`]
//!   naming the key, never a panic (S19).

use bytes::Bytes;
use proptest::prelude::*;
use taskgraph_core::keys::{self, FailureRecord, NodeRecord, RoleRecord, ValueError};
use taskgraph_core::wire::{self, WireError, MAX_FRAME_LEN};
use taskgraph_core::{
    Body, Direction, Epoch, ExitReason, Incarnation, JobSpec, NodeId, Reply, RequestId, SessionId,
    TaskId, PROTOCOL_VERSION,
};

// ---- strategies ----

/// Payloads: empty, small, and a few hundred bytes.
fn payload() -> impl Strategy<Value = Bytes> {
    prop::collection::vec(any::<u8>(), 0..512).prop_map(Bytes::from)
}

fn direction() -> impl Strategy<Value = Direction> {
    prop_oneof![Just(Direction::ToParents), Just(Direction::ToChildren)]
}

fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        payload().prop_map(Reply::Data),
        any::<u64>().prop_map(|e| Reply::EpochMismatch {
            server_epoch: Epoch(e)
        }),
    ]
}

fn body() -> impl Strategy<Value = Body> {
    prop_oneof![
        (direction(), any::<u32>(), payload()).prop_map(|(direction, flag, meta)| Body::Meta {
            direction,
            flag,
            meta
        }),
        (any::<u64>(), payload()).prop_map(|(id, req)| Body::Request {
            id: RequestId(id),
            req
        }),
        (any::<u64>(), reply()).prop_map(|(id, result)| Body::Response {
            id: RequestId(id),
            result
        }),
        (any::<u64>(), payload()).prop_map(|(seq, data)| Body::Replica { seq, data }),
    ]
}

/// The header fields of an envelope, drawn over their whole ranges (with
/// the current protocol version half of the time).
#[allow(clippy::type_complexity)]
fn header() -> impl Strategy<Value = ((u32, u64, u64, i64, u64), (u32, i64, u64, u32, i64))> {
    let version = prop_oneof![Just(PROTOCOL_VERSION), any::<u32>()];
    (
        (
            version,
            any::<u64>(),
            any::<u64>(),
            any::<i64>(),
            any::<u64>(),
        ),
        (
            any::<u32>(),
            any::<i64>(),
            any::<u64>(),
            any::<u32>(),
            any::<i64>(),
        ),
    )
}

fn envelope() -> impl Strategy<Value = wire::Envelope> {
    (header(), body()).prop_map(
        |(
            (
                (version, job, from_node, from_session, seq),
                (from_task, incarnation, epoch, to_task, to_incarnation),
            ),
            body,
        )| wire::Envelope {
            version,
            job,
            from_node: NodeId(from_node),
            from_session: SessionId(from_session),
            seq,
            from_task: TaskId(from_task),
            incarnation: Incarnation(incarnation),
            epoch: Epoch(epoch),
            to_task: TaskId(to_task),
            to_incarnation: Incarnation(to_incarnation),
            body,
        },
    )
}

/// A fixed envelope whose body is `body`, for hand-built frames.
fn sample(body: Body) -> wire::Envelope {
    wire::Envelope {
        version: PROTOCOL_VERSION,
        job: wire::job_tag("job"),
        from_node: NodeId(7),
        from_session: SessionId(42),
        seq: 300,
        from_task: TaskId(3),
        incarnation: Incarnation(1234),
        epoch: Epoch(5),
        to_task: TaskId(1),
        to_incarnation: Incarnation(99),
        body,
    }
}

/// postcard's unsigned varint: 7 bits per byte, low bits first.
fn varint(mut v: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let low = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(low);
            return out;
        }
        out.push(low | 0x80);
    }
}

fn session() -> impl Strategy<Value = SessionId> {
    any::<i64>().prop_map(SessionId)
}

fn node_record() -> impl Strategy<Value = NodeRecord> {
    (any::<String>(), session()).prop_map(|(addr, session)| NodeRecord { addr, session })
}

fn role_record() -> impl Strategy<Value = RoleRecord> {
    (any::<u64>(), session()).prop_map(|(node, session)| RoleRecord {
        node: NodeId(node),
        session,
    })
}

fn failure_record() -> impl Strategy<Value = FailureRecord> {
    (any::<u64>(), prop::collection::vec(any::<u64>(), 0..32))
        .prop_map(|(total, recent_ms)| FailureRecord { total, recent_ms })
}

fn job_spec() -> impl Strategy<Value = JobSpec> {
    (any::<u32>(), any::<u32>(), any::<u32>(), any::<String>()).prop_map(
        |(num_tasks, standbys_per_task, protocol_version, topology)| JobSpec {
            num_tasks,
            standbys_per_task,
            protocol_version,
            topology,
        },
    )
}

fn exit_reason() -> impl Strategy<Value = ExitReason> {
    prop_oneof![
        any::<String>().prop_map(ExitReason::Completed),
        (any::<u32>(), any::<u32>(), any::<u64>()).prop_map(|(task, failures, window_ms)| {
            ExitReason::TooManyFailures {
                task: TaskId(task),
                failures,
                window_ms,
            }
        }),
    ]
}

/// Store values an attacker or a bug might leave behind: random bytes, and
/// JSON-looking text that is mostly not the right shape.
fn garbage_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        "[\\[\\]{}\",:.0-9a-z_ +-]{0,96}".prop_map(String::into_bytes),
        // Records of the wrong type or with fields of the wrong type.
        prop_oneof![
            Just(r#"{"addr":5,"session":1}"#),
            Just(r#"{"addr":"h:1","session":"x"}"#),
            Just(r#"{"node":-1,"session":1}"#),
            Just(r#"{"node":18446744073709551616,"session":1}"#),
            Just(r#"{"total":1,"recent_ms":[1,-2]}"#),
            Just(r#"{"total":1}"#),
            Just(r#"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]"#),
            Just("null"),
            Just(""),
            Just("\u{feff}{}"),
        ]
        .prop_map(|s| s.as_bytes().to_vec()),
    ]
}

/// Decodes `value` as every record type stored under a key, checking that
/// each attempt gives a value or a `ValueError` naming `key`.
fn decode_all_records(key: &str, value: &[u8]) -> Result<(), TestCaseError> {
    fn check<T>(key: &str, r: Result<T, ValueError>) -> Result<(), TestCaseError> {
        if let Err(e) = r {
            prop_assert_eq!(&e.key, key);
            prop_assert!(!e.reason.is_empty());
        }
        Ok(())
    }
    check(key, keys::decode::<NodeRecord>(key, value))?;
    check(key, keys::decode::<RoleRecord>(key, value))?;
    check(key, keys::decode::<FailureRecord>(key, value))?;
    check(key, keys::decode::<JobSpec>(key, value))?;
    check(key, keys::decode::<ExitReason>(key, value))?;
    check(key, keys::decode_epoch(key, value))
}

// ---- the wire ----

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// S13: every envelope, with any payloads, decodes to itself.
    #[test]
    fn s13_wire_round_trip_preserves_every_envelope(msg in envelope()) {
        let frame = wire::encode(&msg);
        prop_assert!(frame.len() <= MAX_FRAME_LEN);
        prop_assert_eq!(wire::decode(&frame), Ok(msg));
    }

    /// S19: random bytes decode to a message or an error, never a panic;
    /// and whatever decodes re-encodes to a frame that decodes the same.
    #[test]
    fn s19_decode_arbitrary_bytes_never_panics(frame in prop::collection::vec(any::<u8>(), 0..4096)) {
        if let Ok(msg) = wire::decode(&frame) {
            prop_assert_eq!(wire::decode(&wire::encode(&msg)), Ok(msg));
        }
    }

    /// S19: every strict prefix of a valid frame is an error, and the whole
    /// frame decodes. (postcard reads a frame front to back, so a prefix
    /// that decoded would make the whole frame end in trailing bytes.)
    #[test]
    fn s19_truncated_frames_are_errors(msg in envelope()) {
        let frame = wire::encode(&msg);
        for cut in 0..frame.len() {
            let r = wire::decode(&frame[..cut]);
            prop_assert!(
                matches!(r, Err(WireError::Malformed(_))),
                "prefix of {} of {} bytes gave {:?}", cut, frame.len(), r
            );
        }
        prop_assert_eq!(wire::decode(&frame), Ok(msg));
    }

    /// S19: bytes after a complete message are reported as trailing.
    #[test]
    fn s19_trailing_bytes_are_errors(
        msg in envelope(),
        extra in prop::collection::vec(any::<u8>(), 1..64),
    ) {
        let mut frame = wire::encode(&msg).to_vec();
        frame.push(extra[0]);
        prop_assert_eq!(wire::decode(&frame), Err(WireError::Trailing(1)));
        frame.extend_from_slice(&extra[1..]);
        prop_assert_eq!(wire::decode(&frame), Err(WireError::Trailing(extra.len())));
    }

    /// S19: a valid frame with bytes overwritten decodes to something or to
    /// an error, never a panic. (Random bytes rarely get past the header;
    /// corrupted frames reach the body's decoding.)
    #[test]
    fn s19_corrupted_frames_never_panic(
        msg in envelope(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let mut frame = wire::encode(&msg).to_vec();
        for (at, byte) in edits {
            let i = at.index(frame.len());
            frame[i] = byte;
        }
        if let Ok(back) = wire::decode(&frame) {
            prop_assert_eq!(wire::decode(&wire::encode(&back)), Ok(back));
        }
    }

    /// S19: a payload length prefix larger than the frame is an error, not
    /// an attempt to allocate or read that much.
    #[test]
    fn s19_payload_length_beyond_the_frame_is_an_error(claimed in 2u64..=u64::MAX) {
        // The sample's encoding ends with the payload's length (1) and the
        // payload byte; claim a longer payload instead.
        let full = wire::encode(&sample(Body::Request {
            id: RequestId(1),
            req: Bytes::from_static(&[0xab]),
        }));
        let mut frame = full[..full.len() - 2].to_vec();
        frame.extend_from_slice(&varint(claimed));
        frame.push(0xab);
        prop_assert!(matches!(wire::decode(&frame), Err(WireError::Malformed(_))));
    }
}

#[test]
fn s19_sample_frame_ends_with_its_payload_length_and_payload() {
    // The layout `s19_payload_length_beyond_the_frame_is_an_error` relies on.
    let full = wire::encode(&sample(Body::Request {
        id: RequestId(1),
        req: Bytes::from_static(&[0xab]),
    }));
    assert_eq!(&full[full.len() - 2..], &[1, 0xab]);
    let mut frame = full[..full.len() - 2].to_vec();
    frame.extend_from_slice(&varint(1));
    frame.push(0xab);
    assert_eq!(wire::decode(&frame), wire::decode(&full));
    assert!(wire::decode(&full).is_ok());
}

#[test]
fn s19_unknown_enum_variants_are_errors() {
    // Body has 4 variants, Direction and Reply 2 each; postcard writes the
    // variant index as a varint. Patch each index out of range.
    let meta = wire::encode(&sample(Body::Meta {
        direction: Direction::ToChildren,
        flag: 0,
        meta: Bytes::new(),
    }));
    // ... body index, direction index, flag (0), payload length (0).
    let n = meta.len();
    assert_eq!(&meta[n - 4..], &[0, 1, 0, 0]);
    let mut bad_body = meta.to_vec();
    bad_body[n - 4] = 4;
    assert!(matches!(
        wire::decode(&bad_body),
        Err(WireError::Malformed(_))
    ));
    let mut bad_direction = meta.to_vec();
    bad_direction[n - 3] = 2;
    assert!(matches!(
        wire::decode(&bad_direction),
        Err(WireError::Malformed(_))
    ));

    let resp = wire::encode(&sample(Body::Response {
        id: RequestId(0),
        result: Reply::EpochMismatch {
            server_epoch: Epoch(0),
        },
    }));
    // ... body index 2, request id 0, reply index 1, epoch 0.
    let n = resp.len();
    assert_eq!(&resp[n - 4..], &[2, 0, 1, 0]);
    let mut bad_reply = resp.to_vec();
    bad_reply[n - 2] = 2;
    assert!(matches!(
        wire::decode(&bad_reply),
        Err(WireError::Malformed(_))
    ));
}

#[test]
fn s19_frame_over_max_frame_len_is_too_large() {
    // One allocation of the limit plus one byte; zeroed pages are not
    // touched, and the length is checked before any byte is read.
    let frame = vec![0u8; MAX_FRAME_LEN + 1];
    assert_eq!(
        wire::decode(&frame),
        Err(WireError::TooLarge {
            len: MAX_FRAME_LEN + 1,
            limit: MAX_FRAME_LEN,
        })
    );
    // At the limit exactly the frame is decoded (here: a message of zeros
    // followed by trailing zeros), not rejected for its size.
    assert_eq!(
        wire::decode(&frame[..MAX_FRAME_LEN]).map_err(|e| matches!(e, WireError::TooLarge { .. })),
        Err(false)
    );
}

#[test]
fn s19_empty_frame_is_malformed() {
    assert!(matches!(wire::decode(&[]), Err(WireError::Malformed(_))));
}

#[test]
fn job_tags_differ_between_jobs_and_match_fnv1a() {
    // FNV-1a 64 of "" is its offset basis; of "a" a published test vector.
    assert_eq!(wire::job_tag(""), 0xcbf2_9ce4_8422_2325);
    assert_eq!(wire::job_tag("a"), 0xaf63_dc4c_8601_ec8c);
    assert_ne!(wire::job_tag("job-a"), wire::job_tag("job-b"));
}

// ---- store values ----

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn store_node_record_round_trips(r in node_record()) {
        prop_assert_eq!(keys::decode::<NodeRecord>("k", &keys::encode(&r)), Ok(r));
    }

    #[test]
    fn store_role_record_round_trips(r in role_record()) {
        prop_assert_eq!(keys::decode::<RoleRecord>("k", &keys::encode(&r)), Ok(r));
    }

    #[test]
    fn store_failure_record_round_trips(r in failure_record()) {
        prop_assert_eq!(keys::decode::<FailureRecord>("k", &keys::encode(&r)), Ok(r));
    }

    #[test]
    fn store_job_spec_round_trips(r in job_spec()) {
        prop_assert_eq!(keys::decode::<JobSpec>("k", &keys::encode(&r)), Ok(r));
    }

    #[test]
    fn store_exit_reason_round_trips(r in exit_reason()) {
        prop_assert_eq!(keys::decode::<ExitReason>("k", &keys::encode(&r)), Ok(r));
    }

    #[test]
    fn store_epoch_round_trips(e in any::<u64>()) {
        let value = keys::encode_epoch(Epoch(e));
        prop_assert_eq!(keys::decode_epoch("k", &value), Ok(Epoch(e)));
    }

    /// S19: garbage store values decode to a `ValueError` naming the key (or,
    /// by chance, to a value), never a panic.
    #[test]
    fn s19_decode_garbage_store_values_never_panics(value in garbage_value()) {
        decode_all_records("/taskgraph/job/nodes/1", &value)?;
    }

    /// S19: an epoch value that is not a decimal u64 is a `ValueError`.
    #[test]
    fn s19_non_decimal_epoch_is_a_value_error(s in "[^0-9+]{1,24}|[1-9][0-9]{20,29}|-[0-9]{1,19}") {
        let r = keys::decode_epoch("/taskgraph/job/epoch", s.as_bytes());
        prop_assert!(r.is_err(), "{:?} decoded to {:?}", s, r);
    }
}

#[test]
fn s19_records_of_the_wrong_shape_are_value_errors() {
    let key = "/taskgraph/job/tasks/0/primary";
    for bad in [
        &br#"{"addr":5,"session":1}"#[..],
        br#"{"node":-1,"session":1}"#,
        br#"{"node":18446744073709551616,"session":1}"#,
        br#"{"node":1}"#,
        b"null",
        b"",
        b"\xff\xfe",
    ] {
        let e = keys::decode::<RoleRecord>(key, bad).expect_err("not a role record");
        assert_eq!(e.key, key);
    }
    let e = keys::decode::<FailureRecord>(key, br#"{"total":1,"recent_ms":[1,-2]}"#)
        .expect_err("negative time");
    assert_eq!(e.key, key);
    let e = keys::decode_epoch("/taskgraph/job/epoch", b"18446744073709551616")
        .expect_err("u64 overflow");
    assert_eq!(e.key, "/taskgraph/job/epoch");
    assert!(keys::decode_epoch("e", b"").is_err());
    assert!(keys::decode_epoch("e", b" 1").is_err());
    assert!(keys::decode_epoch("e", b"\xff").is_err());
}
