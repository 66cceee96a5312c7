//! Messages between nodes and their encoding.
//!
//! Every message is an [`Envelope`]: protocol version, job, sender node and
//! session, a sequence number, and the sending task's
//! incarnation and epoch (S3), around a [`Body`]. Frames are encoded with
//! `postcard`; [`decode`] never panics on any input.

use crate::{Epoch, Incarnation, NodeId, SessionId, TaskId};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Largest encoded message the core accepts (and the runtime's frame limit).
pub const MAX_FRAME_LEN: usize = 64 * 1024 * 1024;

/// A request id, unique per requester incarnation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(pub u64);

/// Which neighbours a meta flag goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Direction {
    /// From a child to its parents.
    ToParents,
    /// From a parent to its children.
    ToChildren,
}

/// One message between nodes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// [`PROTOCOL_VERSION`](crate::PROTOCOL_VERSION) of the sender.
    pub version: u32,
    /// [`job_tag`] of the sender's job.
    pub job: u64,
    /// Sending node.
    pub from_node: NodeId,
    /// Sending node's session.
    pub from_session: SessionId,
    /// The sender's message counter: one counter per sender node, never
    /// reset, so the messages any receiver gets from one sender session are
    /// strictly increasing (S16).
    pub seq: u64,
    /// Sending task.
    pub from_task: TaskId,
    /// Sending task's primary incarnation.
    pub incarnation: Incarnation,
    /// Sender's epoch.
    pub epoch: Epoch,
    /// Receiving task.
    pub to_task: TaskId,
    /// The store revision at which the receiver took the role the message
    /// is for: the receiving task's primary incarnation, or for replication
    /// the create revision of the standby's key. A receiver whose view has
    /// not reached it yet holds the message until it has.
    pub to_incarnation: Incarnation,
    /// What the message says.
    pub body: Body,
}

/// The payload of an [`Envelope`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// A meta flag (S12). `flag` numbers the sender's flags within the epoch.
    Meta {
        /// To parents or to children.
        direction: Direction,
        /// Number of the flag within the sender incarnation's epoch.
        flag: u32,
        /// The meta payload.
        meta: Bytes,
    },
    /// A data request (S13).
    Request {
        /// Request id, unique per requester incarnation.
        id: RequestId,
        /// The request payload.
        req: Bytes,
    },
    /// The answer to a data request.
    Response {
        /// The request answered.
        id: RequestId,
        /// The answer.
        result: Reply,
    },
    /// A replication update from a primary to a standby of its task (S17).
    Replica {
        /// 1-based position in the primary incarnation's update log.
        seq: u64,
        /// The update.
        data: Bytes,
    },
}

/// The answer carried by [`Body::Response`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reply {
    /// The server's response payload.
    Data(Bytes),
    /// The server is in a later epoch than the request (S15).
    EpochMismatch {
        /// The server's epoch.
        server_epoch: Epoch,
    },
}

/// A frame that could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Longer than [`MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the limit of {limit}")]
    TooLarge {
        /// Frame length.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Not a valid encoding of an [`Envelope`].
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// Bytes left over after the message.
    #[error("{0} trailing bytes after the message")]
    Trailing(usize),
}

/// Encodes a message.
pub fn encode(msg: &Envelope) -> Bytes {
    Bytes::from(encode_after(Vec::new(), msg))
}

/// Appends the encoding of `msg` to `buf` (a frame header, say), reserving
/// room for it first, so that a large payload is copied once.
pub fn encode_after(mut buf: Vec<u8>, msg: &Envelope) -> Vec<u8> {
    buf.reserve(size_hint(msg));
    let start = buf.len();
    // Serializing into a Vec cannot fail for these types; should it, the
    // message is sent empty and the receiver drops it as malformed.
    postcard::to_extend(msg, buf).unwrap_or_else(|_| vec![0; start])
}

/// A little more than the encoded size of `msg`: its payload plus room for
/// the fixed fields.
fn size_hint(msg: &Envelope) -> usize {
    let payload = match &msg.body {
        Body::Meta { meta: b, .. }
        | Body::Request { req: b, .. }
        | Body::Replica { data: b, .. } => b.len(),
        Body::Response {
            result: Reply::Data(b),
            ..
        } => b.len(),
        Body::Response { .. } => 0,
    };
    payload + 96
}

/// Decodes a message; any input yields a value or an error, never a panic.
pub fn decode(frame: &[u8]) -> Result<Envelope, WireError> {
    if frame.len() > MAX_FRAME_LEN {
        return Err(WireError::TooLarge {
            len: frame.len(),
            limit: MAX_FRAME_LEN,
        });
    }
    let (msg, rest) = postcard::take_from_bytes::<Envelope>(frame)
        .map_err(|e| WireError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Trailing(rest.len()));
    }
    Ok(msg)
}

/// A 64-bit tag of a job name (FNV-1a), carried in every message so that a
/// message from another job is recognised and dropped.
pub fn job_tag(job: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in job.as_bytes() {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
