//! The store key layout under `/{root}/{job}/` and the values stored there.
//!
//! | key | value |
//! |---|---|
//! | `config` | [`JobSpec`](crate::JobSpec) (JSON), created once |
//! | `nodes/{node}` | [`NodeRecord`], on the node's lease |
//! | `tasks/{T}/primary` | [`RoleRecord`] of the primary, on its lease; its create revision is the task's [`Incarnation`](crate::Incarnation) |
//! | `tasks/{T}/standby/{slot}` | [`RoleRecord`] of a standby, on its lease; succession order is create revision order |
//! | `epoch` | the epoch, decimal |
//! | `exit` | [`ExitReason`](crate::ExitReason) (JSON), created once |
//! | `failures/{T}` | [`FailureRecord`] (JSON), written with every claim of T |

use crate::{Epoch, NodeId, SessionId, TaskId};
use bytes::Bytes;
use serde::{de::DeserializeOwned, Deserialize, Serialize};

/// Where a node's keys live, and how to read a key back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Keys {
    prefix: String,
}

/// A key of the job's key space, parsed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Key {
    /// `config`
    Config,
    /// `nodes/{node}`
    Node(NodeId),
    /// `tasks/{T}/primary`
    Primary(TaskId),
    /// `tasks/{T}/standby/{slot}`
    Standby(TaskId, u32),
    /// `epoch`
    Epoch,
    /// `exit`
    Exit,
    /// `failures/{T}`
    Failures(TaskId),
}

impl Keys {
    /// The key space of `job` under `root`.
    pub fn new(root: &str, job: &str) -> Self {
        Keys {
            prefix: format!("/{root}/{job}/"),
        }
    }
    /// Prefix of every key of the job.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    /// The full key of `key`.
    pub fn key(&self, key: Key) -> String {
        let p = &self.prefix;
        match key {
            Key::Config => format!("{p}config"),
            Key::Node(n) => format!("{p}nodes/{}", n.0),
            Key::Primary(t) => format!("{p}tasks/{}/primary", t.0),
            Key::Standby(t, s) => format!("{p}tasks/{}/standby/{s}", t.0),
            Key::Epoch => format!("{p}epoch"),
            Key::Exit => format!("{p}exit"),
            Key::Failures(t) => format!("{p}failures/{}", t.0),
        }
    }
    /// Parses a full key; `None` for keys outside the layout, and for keys
    /// that only spell one (`tasks/007/primary`, `nodes/+3`): a key parses
    /// only if it is exactly the key [`Keys::key`] writes, so two store keys
    /// never stand for the same record.
    pub fn parse(&self, full: &str) -> Option<Key> {
        let k = self.parse_loose(full)?;
        (self.key(k) == full).then_some(k)
    }

    fn parse_loose(&self, full: &str) -> Option<Key> {
        let rest = full.strip_prefix(self.prefix.as_str())?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            ["config"] => Some(Key::Config),
            ["epoch"] => Some(Key::Epoch),
            ["exit"] => Some(Key::Exit),
            ["nodes", n] => Some(Key::Node(NodeId(n.parse().ok()?))),
            ["failures", t] => Some(Key::Failures(TaskId(t.parse().ok()?))),
            ["tasks", t, "primary"] => Some(Key::Primary(TaskId(t.parse().ok()?))),
            ["tasks", t, "standby", s] => {
                Some(Key::Standby(TaskId(t.parse().ok()?), s.parse().ok()?))
            }
            _ => None,
        }
    }
}

/// `nodes/{node}`: how to reach a node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// `host:port` of the node.
    pub addr: String,
    /// The node's session (its lease).
    pub session: SessionId,
}

/// `tasks/{T}/primary` and `tasks/{T}/standby/{slot}`: who holds the role.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleRecord {
    /// The holder.
    pub node: NodeId,
    /// The holder's session.
    pub session: SessionId,
}

/// `failures/{T}`: recent failures of a task, for the restart limit (S7).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailureRecord {
    /// Total failures of the task since the job started.
    pub total: u64,
    /// Times (milliseconds since the drivers' common origin) of failures
    /// within the failure window of the last claim.
    pub recent_ms: Vec<u64>,
}

/// A store value that does not decode (S19).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("store value of {key} does not decode: {reason}")]
pub struct ValueError {
    /// The key.
    pub key: String,
    /// Why.
    pub reason: String,
}

/// Encodes a record as JSON.
pub fn encode<T: Serialize>(value: &T) -> Bytes {
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

/// Decodes a JSON record of `key`.
pub fn decode<T: DeserializeOwned>(key: &str, value: &[u8]) -> Result<T, ValueError> {
    serde_json::from_slice(value).map_err(|e| ValueError {
        key: key.to_string(),
        reason: e.to_string(),
    })
}

/// Encodes an epoch value.
pub fn encode_epoch(epoch: Epoch) -> Bytes {
    Bytes::from(epoch.0.to_string())
}

/// Decodes an epoch value.
pub fn decode_epoch(key: &str, value: &[u8]) -> Result<Epoch, ValueError> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|s| s.parse::<u64>().ok().filter(|n| n.to_string() == s))
        .map(Epoch)
        .ok_or_else(|| ValueError {
            key: key.to_string(),
            reason: "not a canonical decimal u64".into(),
        })
}

#[cfg(test)]
mod tests {
    use super::{Key, Keys};
    use crate::{NodeId, TaskId};

    #[test]
    fn every_key_parses_back_and_only_its_own_spelling_does() {
        let keys = Keys::new("taskgraph", "job");
        for k in [
            Key::Config,
            Key::Epoch,
            Key::Exit,
            Key::Node(NodeId(3)),
            Key::Failures(TaskId(2)),
            Key::Primary(TaskId(5)),
            Key::Standby(TaskId(5), 0),
        ] {
            assert_eq!(keys.parse(&keys.key(k)), Some(k));
        }
        // Found by the key_parse fuzz target: leading zeros and signs used
        // to parse, so two store keys could stand for one record.
        let p = keys.prefix().to_string();
        for other in [
            "tasks/000005/standby/00",
            "tasks/5/standby/+0",
            "nodes/+3",
            "failures/02",
            "tasks/5/primary/",
            "epoch/",
        ] {
            assert_eq!(keys.parse(&format!("{p}{other}")), None, "{other}");
        }
    }
}
