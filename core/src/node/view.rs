//! The node's copy of the job's store state, kept current by the watch.

use crate::config::JobSpec;
use crate::keys::{self, FailureRecord, Key, Keys, NodeRecord, RoleRecord};
use crate::store::{KeyValue, Revision, WatchEvent, WatchEventKind};
use crate::task::ExitReason;
use crate::{Epoch, Incarnation, NodeId, TaskId};
use std::collections::{BTreeMap, BTreeSet};

/// A node registered under `nodes/`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NodeEntry {
    pub record: NodeRecord,
    pub create_revision: Revision,
}

/// The holder of a role key, with the key's create revision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct RoleEntry {
    pub record: RoleRecord,
    pub create_revision: Revision,
}

impl RoleEntry {
    pub fn incarnation(&self) -> Incarnation {
        Incarnation(self.create_revision)
    }
}

/// What one store event changed, for the node to react to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Change {
    Nothing,
    Config,
    NodeUp(NodeId),
    NodeDown(NodeId),
    PrimaryUp(TaskId, RoleEntry),
    PrimaryDown(TaskId, RoleEntry),
    StandbyUp(TaskId, u32, RoleEntry),
    StandbyDown(TaskId, u32, RoleEntry),
    Epoch(Epoch),
    Exit(ExitReason),
    Failures(TaskId),
    /// The value of `key` did not decode and was ignored.
    BadValue(String),
}

#[derive(Clone, Debug, Default)]
pub(crate) struct View {
    pub revision: Revision,
    pub config: Option<JobSpec>,
    pub nodes: BTreeMap<NodeId, NodeEntry>,
    pub primaries: Vec<Option<RoleEntry>>,
    pub standbys: Vec<BTreeMap<u32, RoleEntry>>,
    pub epoch: Epoch,
    pub exit: Option<ExitReason>,
    /// Failure record and its mod revision (0 if absent).
    pub failures: Vec<(FailureRecord, Revision)>,
    /// Every key of the job known to the view with its (mod, create)
    /// revisions (for relisting).
    pub mod_revisions: BTreeMap<String, (Revision, Revision)>,
}

impl View {
    pub fn new(num_tasks: u32) -> Self {
        let n = num_tasks as usize;
        View {
            primaries: vec![None; n],
            standbys: vec![BTreeMap::new(); n],
            failures: vec![(FailureRecord::default(), 0); n],
            ..View::default()
        }
    }

    fn task_ok(&self, t: TaskId) -> bool {
        t.index() < self.primaries.len()
    }

    /// Applies one event; returns what changed.
    pub fn apply(&mut self, keys: &Keys, ev: &WatchEvent) -> Change {
        if ev.kv.mod_revision > self.revision {
            self.revision = ev.kv.mod_revision;
        }
        match ev.kind {
            WatchEventKind::Put => {
                self.mod_revisions.insert(
                    ev.kv.key.clone(),
                    (ev.kv.mod_revision, ev.kv.create_revision),
                );
                self.put(keys, &ev.kv)
            }
            WatchEventKind::Delete => {
                self.mod_revisions.remove(&ev.kv.key);
                self.delete(keys, &ev.kv.key)
            }
        }
    }

    fn put(&mut self, keys: &Keys, kv: &KeyValue) -> Change {
        let Some(key) = keys.parse(&kv.key) else {
            return Change::Nothing;
        };
        let bad = |e: keys::ValueError| Change::BadValue(e.key);
        let role = |kv: &KeyValue| -> Result<RoleEntry, keys::ValueError> {
            Ok(RoleEntry {
                record: keys::decode::<RoleRecord>(&kv.key, &kv.value)?,
                create_revision: kv.create_revision,
            })
        };
        match key {
            Key::Config => match keys::decode::<JobSpec>(&kv.key, &kv.value) {
                Ok(spec) => {
                    self.config = Some(spec);
                    Change::Config
                }
                Err(e) => bad(e),
            },
            Key::Node(n) => match keys::decode::<NodeRecord>(&kv.key, &kv.value) {
                Ok(record) => {
                    self.nodes.insert(
                        n,
                        NodeEntry {
                            record,
                            create_revision: kv.create_revision,
                        },
                    );
                    Change::NodeUp(n)
                }
                Err(e) => bad(e),
            },
            Key::Primary(t) if self.task_ok(t) => match role(kv) {
                Ok(entry) => {
                    self.primaries[t.index()] = Some(entry);
                    Change::PrimaryUp(t, entry)
                }
                Err(e) => bad(e),
            },
            Key::Standby(t, s) if self.task_ok(t) => match role(kv) {
                Ok(entry) => {
                    self.standbys[t.index()].insert(s, entry);
                    Change::StandbyUp(t, s, entry)
                }
                Err(e) => bad(e),
            },
            Key::Epoch => match keys::decode_epoch(&kv.key, &kv.value) {
                Ok(e) => {
                    self.epoch = e;
                    Change::Epoch(e)
                }
                Err(e) => bad(e),
            },
            Key::Exit => match keys::decode::<ExitReason>(&kv.key, &kv.value) {
                Ok(r) => {
                    self.exit = Some(r.clone());
                    Change::Exit(r)
                }
                Err(e) => bad(e),
            },
            Key::Failures(t) if self.task_ok(t) => {
                match keys::decode::<FailureRecord>(&kv.key, &kv.value) {
                    Ok(r) => {
                        self.failures[t.index()] = (r, kv.mod_revision);
                        Change::Failures(t)
                    }
                    Err(e) => bad(e),
                }
            }
            _ => Change::Nothing,
        }
    }

    fn delete(&mut self, keys: &Keys, full: &str) -> Change {
        let Some(key) = keys.parse(full) else {
            return Change::Nothing;
        };
        match key {
            Key::Node(n) => match self.nodes.remove(&n) {
                Some(_) => Change::NodeDown(n),
                None => Change::Nothing,
            },
            Key::Primary(t) if self.task_ok(t) => match self.primaries[t.index()].take() {
                Some(e) => Change::PrimaryDown(t, e),
                None => Change::Nothing,
            },
            Key::Standby(t, s) if self.task_ok(t) => match self.standbys[t.index()].remove(&s) {
                Some(e) => Change::StandbyDown(t, s, e),
                None => Change::Nothing,
            },
            Key::Failures(t) if self.task_ok(t) => {
                self.failures[t.index()] = (FailureRecord::default(), 0);
                Change::Failures(t)
            }
            Key::Config => {
                self.config = None;
                Change::Config
            }
            _ => Change::Nothing,
        }
    }

    /// Standbys of `task` in succession order (create revision).
    pub fn succession(&self, task: TaskId) -> Vec<(u32, RoleEntry)> {
        let mut v: Vec<(u32, RoleEntry)> = match self.standbys.get(task.index()) {
            Some(m) => m.iter().map(|(s, e)| (*s, *e)).collect(),
            None => Vec::new(),
        };
        v.sort_by_key(|(s, e)| (e.create_revision, *s));
        v
    }

    /// Every node named in a primary or standby record.
    fn role_holders(&self) -> BTreeSet<NodeId> {
        self.primaries
            .iter()
            .flatten()
            .chain(self.standbys.iter().flat_map(|m| m.values()))
            .map(|e| e.record.node)
            .collect()
    }

    /// The place of `node` among the nodes holding no role, in order of
    /// registration, counting at most `limit` nodes before it (`None`: it
    /// holds a role or is not registered).
    pub fn spare_rank(&self, node: NodeId, limit: usize) -> Option<usize> {
        let holders = self.role_holders();
        let mine = self.nodes.get(&node)?.create_revision;
        if holders.contains(&node) {
            return None;
        }
        Some(
            self.nodes
                .iter()
                .filter(|(n, e)| (e.create_revision, **n) < (mine, node) && !holders.contains(n))
                .take(limit)
                .count(),
        )
    }
}
