//! taskgraph-core: the sans-IO state machine of taskgraph.
//!
//! taskgraph runs an application that is a network of **tasks** connected by a
//! per-epoch **topology** of parents and children. Every task has a primary
//! node and hot standbys; when a primary dies its neighbours hear of it, a
//! standby (or a spare node) takes over, and a stale primary is fenced. This
//! crate is the whole of that logic as one deterministic state machine: no
//! sockets, no clock, no threads, no randomness.
//!
//! ```text
//!   application    Task callbacks  <───  Context commands
//!                        │                      ▲
//!   ─────────────────────┼──────────────────────┼────────────  taskgraph-core
//!                        ▼                      │
//!   Node::handle_*(now, …)  ──►  [ Node: view of the store, role, epoch,  ]
//!   (store results & events,     [ flags, requests, replication, fencing ]
//!    messages, disconnects,                     │
//!    timeouts)                                  ▼
//!                              Node::poll_action() / poll_timeout()
//!   ─────────────────────────────────────────────────────────────  driver
//!   a runtime (etcd + TCP), or the in-memory harness of `testkit`
//! ```
//!
//! # Driving a node
//!
//! Feed inputs with the `handle_*` methods of [`Node`], each taking `now`;
//! **after every input, drain every [`Action`] with [`Node::poll_action`]**
//! before the next input, then arm a timer for [`Node::poll_timeout`]. The
//! coordination store's semantics are those of etcd v3; [`store::MemStore`] is
//! an in-memory model of it and [`store::conformance`] a suite any
//! implementation must pass.
//!
//! # Example
//!
//! A two-task job (task 0 is the parent of task 1) whose child asks its
//! parent for data, run on the in-memory harness:
//!
//! ```
//! use bytes::Bytes;
//! use std::sync::{Arc, Mutex};
//! use taskgraph_core::testkit::{Cluster, ClusterConfig};
//! use taskgraph_core::*;
//!
//! struct Sum {
//!     answers: Arc<Mutex<Vec<Bytes>>>,
//! }
//!
//! impl Task for Sum {
//!     fn epoch_changed(&mut self, ctx: &mut Context, _epoch: Epoch) {
//!         if ctx.task() == TaskId(1) {
//!             // A refusal (a payload over the limit, too many requests
//!             // waiting) is a typed error; nothing was sent.
//!             if let Err(e) = ctx.request_data(TaskId(0), "what is 6 x 7?") {
//!                 ctx.fail_job(e.to_string());
//!             }
//!         }
//!     }
//!     fn serve(&mut self, ctx: &mut Context, _from: TaskId, _link: Link, id: ServeId, _req: Bytes) {
//!         if let Err(e) = ctx.respond(id, "42") {
//!             ctx.fail_job(e.to_string());
//!         }
//!     }
//!     fn data_ready(&mut self, ctx: &mut Context, _from: TaskId, _id: RequestId, _req: Bytes, resp: Bytes) {
//!         self.answers.lock().unwrap().push(resp);
//!         ctx.exit_job("answered");
//!     }
//! }
//!
//! let answers = Arc::new(Mutex::new(Vec::new()));
//! let a = answers.clone();
//! let topology = Arc::new(TreeTopology::new(1, 2).unwrap());
//! // Two tasks, one standby each, no spares; one seed decides everything.
//! let mut cluster = Cluster::new(
//!     ClusterConfig::new(42, 2, 1, 0),
//!     topology,
//!     Box::new(move |_node| {
//!         let a = a.clone();
//!         Box::new(move |_task| Box::new(Sum { answers: a.clone() }) as Box<dyn Task>)
//!     }),
//! );
//! cluster.run_until(Instant::from_millis(5_000));
//! assert_eq!(*answers.lock().unwrap(), vec![Bytes::from("42")]);
//! let node = cluster.node(NodeId(1)).unwrap();
//! assert_eq!(node.exit_reason(), Some(&ExitReason::Completed("answered".into())));
//! assert!(cluster.finish().is_empty(), "no contract violation");
//! ```
//!
//! # Layout
//!
//! - [`node`](Node): the state machine; one file per concern (session and
//!   lease, roles and epochs, messaging, application calls).
//! - [`task`]: what an application writes ([`Task`], [`TaskBuilder`],
//!   [`Context`]).
//! - [`topology`]: [`Topology`], [`TreeTopology`], [`FullTopology`].
//! - [`store`]: store operations, [`store::MemStore`], the conformance suite.
//! - [`keys`]: the store key layout; [`wire`]: messages between nodes.
//! - [`testkit`]: the in-memory cluster harness, its checker and fault
//!   schedules, and the tree aggregation application.
#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod id;
pub mod store;
pub mod time;
pub mod topology;

pub use id::{Epoch, Incarnation, NodeId, SessionId, TaskId};
pub use time::Instant;

pub mod action;
pub mod canary;
pub mod config;
pub mod keys;
mod node;
pub mod task;
pub mod testkit;
pub mod wire;

pub use action::{Action, Disconnect, DropReason, Event, OpId, StepDownReason};
pub use canary::Canary;
pub use config::{
    ConfigError, JobSpec, NodeConfig, DEFAULT_MAX_PAYLOAD, MAX_ADDR_LEN, MAX_NAME_LEN,
    MAX_PAYLOAD_LEN, PROTOCOL_VERSION,
};
pub use node::{Node, NodeError, NodeStats, Role};
pub use task::{
    CommandError, Context, ExitReason, Link, ServeId, Task, TaskBuilder, MAX_EXIT_REASON_LEN,
};
pub use topology::{FullTopology, Topology, TopologyError, TreeTopology};
pub use wire::{Body, Direction, Envelope, Reply, RequestId};
