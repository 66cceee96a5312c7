//! Node configuration and the job spec every node of a job must agree on.

use crate::NodeId;
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Version of the wire protocol and of the store layout. A node refuses to
/// join a job whose stored spec names another version.
pub const PROTOCOL_VERSION: u32 = 1;

/// The longest job name or key root, in bytes. Both are in every store key
/// and the job name is in every frame.
pub const MAX_NAME_LEN: usize = 128;

/// The longest address a node may register, in bytes.
pub const MAX_ADDR_LEN: usize = 256;

/// The largest [`NodeConfig::max_payload`]: the frame limit
/// ([`MAX_FRAME_LEN`](crate::wire::MAX_FRAME_LEN)) less 64 KiB for the
/// envelope around the payload.
pub const MAX_PAYLOAD_LEN: usize = crate::wire::MAX_FRAME_LEN - 64 * 1024;

/// The default [`NodeConfig::max_payload`]: 16 MiB.
pub const DEFAULT_MAX_PAYLOAD: usize = 16 * 1024 * 1024;

/// What every node of a job must agree on; stored once under `config`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSpec {
    /// Number of tasks.
    pub num_tasks: u32,
    /// Standbys per task.
    pub standbys_per_task: u32,
    /// [`PROTOCOL_VERSION`] of the node that created the job.
    pub protocol_version: u32,
    /// [`Topology::fingerprint`](crate::Topology::fingerprint) of the topology.
    pub topology: String,
}

/// Configuration of one [`Node`](crate::Node). Check it with [`NodeConfig::validate`]
/// (the node does so on creation).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeConfig {
    /// This node's id, unique within the job.
    pub node: NodeId,
    /// The job's name. Store keys live under `/{root}/{job}/`.
    pub job: String,
    /// Root of the store key space.
    pub root: String,
    /// The address peers use to reach this node (`host:port`).
    pub addr: String,
    /// Number of tasks of the job.
    pub num_tasks: u32,
    /// Standbys per task.
    pub standbys_per_task: u32,
    /// Lease time to live (whole seconds; etcd's lease granularity).
    pub ttl: Duration,
    /// How often the lease is renewed. Must leave room for at least two
    /// renewals before the step-down deadline.
    pub renew_interval: Duration,
    /// A primary steps down at `ttl - step_down_margin` after the send time of
    /// its last successful renewal, so that it is no longer primary when the
    /// store can expire its lease (S2).
    pub step_down_margin: Duration,
    /// First delay before retrying a failed store operation or connection;
    /// doubled on each consecutive failure up to `max_backoff`.
    pub backoff: Duration,
    /// Upper bound of the retry delay.
    pub max_backoff: Duration,
    /// More than this many failures of one task within `failure_window` end
    /// the job (S7).
    pub max_failures: u32,
    /// The window of `max_failures`.
    pub failure_window: Duration,
    /// Messages held for a later epoch or a role being claimed, at most.
    pub max_held_messages: usize,
    /// The longest payload (meta, request, answer or replica update) a task
    /// may send, in bytes; at most [`MAX_PAYLOAD_LEN`]. A longer one is
    /// refused by the [`Context`](crate::Context) with
    /// [`CommandError::PayloadTooLarge`](crate::CommandError::PayloadTooLarge).
    pub max_payload: usize,
    /// Requests one task may have waiting for an answer from one other task
    /// in an epoch. One more is refused with
    /// [`CommandError::TooManyPendingRequests`](crate::CommandError::TooManyPendingRequests)
    /// until an answer arrives: back-pressure instead of an unbounded queue.
    pub max_pending_requests: usize,
    /// A deliberately broken behaviour, for proving the simulator's checkers
    /// can fail. Exists only in `--cfg madsim` builds.
    #[cfg(madsim)]
    pub canary: Option<crate::Canary>,
}

impl NodeConfig {
    /// A configuration with defaults for everything but the identity and the shape.
    pub fn new(
        node: NodeId,
        job: impl Into<String>,
        addr: impl Into<String>,
        num_tasks: u32,
        standbys_per_task: u32,
    ) -> Self {
        NodeConfig {
            node,
            job: job.into(),
            root: "taskgraph".into(),
            addr: addr.into(),
            num_tasks,
            standbys_per_task,
            ttl: Duration::from_secs(2),
            renew_interval: Duration::from_millis(500),
            step_down_margin: Duration::from_millis(300),
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            max_failures: 100,
            failure_window: Duration::from_secs(60),
            max_held_messages: 10_000,
            max_payload: DEFAULT_MAX_PAYLOAD,
            max_pending_requests: 1024,
            #[cfg(madsim)]
            canary: None,
        }
    }

    /// Checks every relation the node relies on; the error says which failed.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |what: String| Err(ConfigError(what));
        if self.job.is_empty() || self.job.contains('/') || self.job.len() > MAX_NAME_LEN {
            return bad(format!(
                "job name {:?} must be 1 to {MAX_NAME_LEN} bytes and contain no '/'",
                self.job
            ));
        }
        if self.root.is_empty() || self.root.contains('/') || self.root.len() > MAX_NAME_LEN {
            return bad(format!(
                "root {:?} must be 1 to {MAX_NAME_LEN} bytes and contain no '/'",
                self.root
            ));
        }
        if self.addr.len() > MAX_ADDR_LEN {
            return bad(format!(
                "addr of {} bytes is longer than {MAX_ADDR_LEN} bytes",
                self.addr.len()
            ));
        }
        if self.num_tasks == 0 {
            return bad("num_tasks must be at least 1".into());
        }
        if self.ttl < Duration::from_secs(1) || self.ttl.subsec_nanos() != 0 {
            return bad(format!(
                "ttl {:?} must be a whole number of seconds, at least 1 s",
                self.ttl
            ));
        }
        if self.step_down_margin.is_zero() || self.step_down_margin >= self.ttl {
            return bad(format!(
                "step_down_margin {:?} must be > 0 and < ttl {:?}",
                self.step_down_margin, self.ttl
            ));
        }
        let window = self.ttl - self.step_down_margin;
        if self.renew_interval.is_zero() || self.renew_interval * 2 > window {
            return bad(format!(
                "renew_interval {:?} must be > 0 and at most half of ttl - step_down_margin ({:?})",
                self.renew_interval, window
            ));
        }
        if self.backoff.is_zero() || self.backoff > self.max_backoff {
            return bad(format!(
                "backoff {:?} must be > 0 and <= max_backoff {:?}",
                self.backoff, self.max_backoff
            ));
        }
        if self.max_held_messages == 0 {
            return bad("max_held_messages must be at least 1".into());
        }
        if self.max_payload > MAX_PAYLOAD_LEN {
            return bad(format!(
                "max_payload {} must be at most {MAX_PAYLOAD_LEN} bytes (the frame limit less room for the envelope)",
                self.max_payload
            ));
        }
        if self.max_pending_requests == 0 {
            return bad("max_pending_requests must be at least 1".into());
        }
        Ok(())
    }

    /// The bounds a task's [`Context`](crate::Context) checks.
    pub(crate) fn limits(&self) -> crate::task::Limits {
        crate::task::Limits {
            num_tasks: self.num_tasks,
            max_payload: self.max_payload,
            max_pending_requests: self.max_pending_requests,
        }
    }

    /// The lease TTL in whole seconds.
    pub fn ttl_secs(&self) -> i64 {
        i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX)
    }
}

/// A configuration that breaks one of the relations checked by
/// [`NodeConfig::validate`]; the message names it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid node configuration: {0}")]
pub struct ConfigError(pub String);
