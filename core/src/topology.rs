//! Topologies: the parents and children of every task, per epoch.
//!
//! A [`Topology`] tells every node, for each epoch, which tasks are the
//! parents and which are the children of a task. The framework recomputes the
//! neighbours of its tasks from `topology(E)` whenever the job moves to epoch
//! `E` (S10), and routes die/restart events and meta flags along these edges.
//!
//! Three implementations are provided:
//!
//! * [`TreeTopology`]: the original's tree, `parent(i) = (i - 1) / fanout`.
//! * [`FullTopology`]: a star, task 0 is the parent of every other task.
//! * [`ExplicitTopology`]: arbitrary lists, not checked on construction; use
//!   [`Topology::validate`] to find the problems (S19).
//!
//! Every node of a job must use the same topology. [`Topology::fingerprint`]
//! is stored in the job config so that a node configured differently refuses
//! to join.
//!
//! ```
//! use taskgraph_core::topology::{Topology, TreeTopology};
//! use taskgraph_core::{Epoch, TaskId};
//!
//! let tree = TreeTopology::new(2, 15)?;
//! assert_eq!(tree.children(TaskId(0), Epoch(0)), vec![TaskId(1), TaskId(2)]);
//! assert_eq!(tree.parents(TaskId(14), Epoch(0)), vec![TaskId(6)]);
//! assert_eq!(tree.fingerprint(), "tree(fanout=2,tasks=15)");
//! tree.validate(Epoch(0))?;
//! # Ok::<(), taskgraph_core::topology::TopologyError>(())
//! ```

use crate::id::{Epoch, TaskId};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Per-epoch parents and children of every task of a job.
///
/// Task ids are `0..num_tasks()`. For every epoch, the lists returned by
/// [`parents`](Topology::parents) and [`children`](Topology::children) must be
/// sorted in ascending order, free of duplicates, free of the task itself,
/// contain only ids below `num_tasks()`, and be symmetric: `p` is in
/// `parents(c)` exactly when `c` is in `children(p)`. [`validate`](Topology::validate)
/// checks all of this.
///
/// Implementations must be deterministic: every node of the job calls them
/// independently and must get the same answer. They must not panic on any
/// input; a `task` that is out of range has no neighbours.
pub trait Topology: Send + Sync + fmt::Debug {
    /// The number of tasks of the job; task ids are `0..num_tasks()`.
    fn num_tasks(&self) -> u32;

    /// The parents of `task` in `epoch`, sorted ascending, without duplicates.
    /// Empty when `task` is out of range.
    fn parents(&self, task: TaskId, epoch: Epoch) -> Vec<TaskId>;

    /// The children of `task` in `epoch`, sorted ascending, without duplicates.
    /// Empty when `task` is out of range.
    fn children(&self, task: TaskId, epoch: Epoch) -> Vec<TaskId>;

    /// Checks the topology at `epoch` and returns the first violation.
    ///
    /// The checks, in the order they are made:
    ///
    /// 1. there is at least one task ([`TopologyError::NoTasks`]);
    /// 2. for each task in ascending order, first its parents, then its
    ///    children, entry by entry: the id is below `num_tasks()`
    ///    ([`TopologyError::OutOfRange`]), it is not the task itself
    ///    ([`TopologyError::SelfLoop`]), it is not equal to
    ///    ([`TopologyError::Duplicate`]) or smaller than
    ///    ([`TopologyError::Unsorted`]) the entry before it;
    /// 3. symmetry: `p` is in `parents(c)` exactly when `c` is in
    ///    `children(p)`; the first offending `(parent, child)` pair in
    ///    ascending order is reported ([`TopologyError::Asymmetric`]).
    ///
    /// Takes `O(E log E)` time and `O(E)` memory for `E` edges.
    fn validate(&self, epoch: Epoch) -> Result<(), TopologyError> {
        validate_topology(self, epoch)
    }

    /// A short, stable string that identifies this topology, e.g.
    /// `"tree(fanout=2,tasks=15)"`.
    ///
    /// It is stored in the job config so that nodes configured with different
    /// topologies refuse to join the same job. Implementations should override
    /// it so that different topologies have different fingerprints; the
    /// default is `"custom(tasks=N)"`.
    fn fingerprint(&self) -> String {
        format!("custom(tasks={})", self.num_tasks())
    }
}

/// Which neighbour list of a task a [`TopologyError`] is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Relation {
    /// The list returned by [`Topology::parents`].
    Parent,
    /// The list returned by [`Topology::children`].
    Child,
}

impl fmt::Display for Relation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Relation::Parent => "parent",
            Relation::Child => "child",
        })
    }
}

/// Which side of an edge is missing in a [`TopologyError::Asymmetric`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Asymmetry {
    /// The child lists the parent among its parents, but the parent does not
    /// list the child among its children.
    MissingChild,
    /// The parent lists the child among its children, but the child does not
    /// list the parent among its parents.
    MissingParent,
}

/// An invalid topology or an invalid topology parameter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyError {
    /// The topology has no tasks.
    #[error("invalid topology: it has no tasks (num_tasks must be at least 1)")]
    NoTasks,
    /// A neighbour id is not below the number of tasks.
    #[error(
        "invalid topology: {relation} {neighbour} of task {task} is out of range \
         (num_tasks is {num_tasks})"
    )]
    OutOfRange {
        /// The task whose list holds the bad id.
        task: TaskId,
        /// The list that holds it.
        relation: Relation,
        /// The out-of-range id.
        neighbour: TaskId,
        /// The number of tasks of the topology.
        num_tasks: u32,
    },
    /// A task is listed as its own parent or child.
    #[error("invalid topology: task {task} is its own {relation}")]
    SelfLoop {
        /// The task.
        task: TaskId,
        /// The list in which it appears.
        relation: Relation,
    },
    /// A neighbour appears more than once in a list.
    #[error("invalid topology: {relation} {neighbour} of task {task} is listed more than once")]
    Duplicate {
        /// The task whose list holds the duplicate.
        task: TaskId,
        /// The list that holds it.
        relation: Relation,
        /// The duplicated id.
        neighbour: TaskId,
    },
    /// A list is not sorted in ascending order.
    #[error(
        "invalid topology: the {relation} list of task {task} is not sorted \
         ({neighbour} comes after a larger id)"
    )]
    Unsorted {
        /// The task whose list is unsorted.
        task: TaskId,
        /// The unsorted list.
        relation: Relation,
        /// The first id that is smaller than the one before it.
        neighbour: TaskId,
    },
    /// The parent and child lists disagree about an edge.
    #[error("invalid topology: asymmetric edge {parent} -> {child}: {}", asymmetry_message(*parent, *child, *detail))]
    Asymmetric {
        /// The parent side of the edge.
        parent: TaskId,
        /// The child side of the edge.
        child: TaskId,
        /// Which side is missing.
        detail: Asymmetry,
    },
    /// An explicit topology does not have one list per task.
    #[error(
        "invalid topology: {len} {relation} lists given for {num_tasks} tasks \
         (there must be one list per task)"
    )]
    ListCount {
        /// Which lists.
        relation: Relation,
        /// How many lists were given.
        len: usize,
        /// The number of tasks of the topology.
        num_tasks: u32,
    },
    /// A parameter of a topology constructor is invalid.
    #[error("invalid topology parameter: {0}")]
    InvalidParameter(String),
}

fn asymmetry_message(parent: TaskId, child: TaskId, detail: Asymmetry) -> String {
    match detail {
        Asymmetry::MissingChild => format!(
            "task {child} lists {parent} as a parent, but task {parent} does not list {child} as a child"
        ),
        Asymmetry::MissingParent => format!(
            "task {parent} lists {child} as a child, but task {child} does not list {parent} as a parent"
        ),
    }
}

/// Checks one neighbour list of `task`: range, self loops, duplicates, order.
fn check_list(
    task: TaskId,
    relation: Relation,
    list: &[TaskId],
    num_tasks: u32,
) -> Result<(), TopologyError> {
    let mut previous: Option<TaskId> = None;
    for &neighbour in list {
        if neighbour.0 >= num_tasks {
            return Err(TopologyError::OutOfRange {
                task,
                relation,
                neighbour,
                num_tasks,
            });
        }
        if neighbour == task {
            return Err(TopologyError::SelfLoop { task, relation });
        }
        if let Some(previous) = previous {
            if neighbour == previous {
                return Err(TopologyError::Duplicate {
                    task,
                    relation,
                    neighbour,
                });
            }
            if neighbour < previous {
                return Err(TopologyError::Unsorted {
                    task,
                    relation,
                    neighbour,
                });
            }
        }
        previous = Some(neighbour);
    }
    Ok(())
}

/// The checks of [`Topology::validate`], usable by implementations that
/// override it to add their own checks first.
fn validate_topology<T: Topology + ?Sized>(
    topology: &T,
    epoch: Epoch,
) -> Result<(), TopologyError> {
    let num_tasks = topology.num_tasks();
    if num_tasks == 0 {
        return Err(TopologyError::NoTasks);
    }
    // Edges as (parent, child) pairs, as seen from each side.
    let mut from_parents: Vec<(TaskId, TaskId)> = Vec::new();
    let mut from_children: Vec<(TaskId, TaskId)> = Vec::new();
    for task in (0..num_tasks).map(TaskId) {
        let parents = topology.parents(task, epoch);
        check_list(task, Relation::Parent, &parents, num_tasks)?;
        from_parents.extend(parents.into_iter().map(|parent| (parent, task)));

        let children = topology.children(task, epoch);
        check_list(task, Relation::Child, &children, num_tasks)?;
        from_children.extend(children.into_iter().map(|child| (task, child)));
    }
    // `from_children` is already sorted (tasks ascending, each list checked
    // to be strictly ascending); `from_parents` is sorted by child first.
    from_parents.sort_unstable();

    let asymmetric = |(parent, child): (TaskId, TaskId), detail| TopologyError::Asymmetric {
        parent,
        child,
        detail,
    };
    let mut up = from_parents.into_iter().peekable();
    let mut down = from_children.into_iter().peekable();
    loop {
        match (up.peek().copied(), down.peek().copied()) {
            (None, None) => return Ok(()),
            (Some(edge), None) => return Err(asymmetric(edge, Asymmetry::MissingChild)),
            (None, Some(edge)) => return Err(asymmetric(edge, Asymmetry::MissingParent)),
            (Some(a), Some(b)) if a == b => {
                up.next();
                down.next();
            }
            (Some(a), Some(b)) if a < b => return Err(asymmetric(a, Asymmetry::MissingChild)),
            (Some(_), Some(b)) => return Err(asymmetric(b, Asymmetry::MissingParent)),
        }
    }
}

/// The original's tree: `parent(i) = (i - 1) / fanout` for `i > 0`; task 0 is
/// the root. The children of `i` are `fanout * i + 1 ..= fanout * i + fanout`,
/// those of them that exist. The same in every epoch.
///
/// Deserializing checks the parameters like [`TreeTopology::new`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "TreeTopologyParams")]
pub struct TreeTopology {
    fanout: u32,
    num_tasks: u32,
}

/// The serialized form of a [`TreeTopology`], checked on deserialization.
#[derive(Deserialize)]
struct TreeTopologyParams {
    fanout: u32,
    num_tasks: u32,
}

impl TryFrom<TreeTopologyParams> for TreeTopology {
    type Error = TopologyError;

    fn try_from(params: TreeTopologyParams) -> Result<Self, Self::Error> {
        TreeTopology::new(params.fanout, params.num_tasks)
    }
}

impl TreeTopology {
    /// A tree of `num_tasks` tasks in which every task has at most `fanout`
    /// children.
    ///
    /// # Errors
    ///
    /// [`TopologyError::InvalidParameter`] if `fanout` is 0,
    /// [`TopologyError::NoTasks`] if `num_tasks` is 0.
    pub fn new(fanout: u32, num_tasks: u32) -> Result<Self, TopologyError> {
        if fanout == 0 {
            return Err(TopologyError::InvalidParameter(
                "tree fanout must be at least 1, got 0".to_owned(),
            ));
        }
        if num_tasks == 0 {
            return Err(TopologyError::NoTasks);
        }
        Ok(TreeTopology { fanout, num_tasks })
    }

    /// The maximum number of children of a task.
    pub fn fanout(&self) -> u32 {
        self.fanout
    }

    /// The number of tasks.
    pub fn num_tasks(&self) -> u32 {
        self.num_tasks
    }
}

impl Topology for TreeTopology {
    fn num_tasks(&self) -> u32 {
        self.num_tasks
    }

    fn parents(&self, task: TaskId, _epoch: Epoch) -> Vec<TaskId> {
        if task.0 == 0 || task.0 >= self.num_tasks {
            return Vec::new();
        }
        // `checked_div` only fails for a zero fanout, which `new` rejects.
        (task.0 - 1)
            .checked_div(self.fanout)
            .map(TaskId)
            .into_iter()
            .collect()
    }

    fn children(&self, task: TaskId, _epoch: Epoch) -> Vec<TaskId> {
        if task.0 >= self.num_tasks || self.fanout == 0 {
            return Vec::new();
        }
        // In u64: `fanout * task + fanout` fits easily, no overflow.
        let first = u64::from(self.fanout) * u64::from(task.0) + 1;
        let end = (first + u64::from(self.fanout)).min(u64::from(self.num_tasks));
        (first..end)
            .filter_map(|child| u32::try_from(child).ok().map(TaskId))
            .collect()
    }

    fn fingerprint(&self) -> String {
        format!("tree(fanout={},tasks={})", self.fanout, self.num_tasks)
    }
}

/// A star: task 0 is the only parent of every other task, and the other tasks
/// have no children. The same in every epoch.
///
/// Deserializing checks the parameters like [`FullTopology::new`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "FullTopologyParams")]
pub struct FullTopology {
    num_tasks: u32,
}

/// The serialized form of a [`FullTopology`], checked on deserialization.
#[derive(Deserialize)]
struct FullTopologyParams {
    num_tasks: u32,
}

impl TryFrom<FullTopologyParams> for FullTopology {
    type Error = TopologyError;

    fn try_from(params: FullTopologyParams) -> Result<Self, Self::Error> {
        FullTopology::new(params.num_tasks)
    }
}

impl FullTopology {
    /// A star of `num_tasks` tasks rooted at task 0.
    ///
    /// # Errors
    ///
    /// [`TopologyError::NoTasks`] if `num_tasks` is 0.
    pub fn new(num_tasks: u32) -> Result<Self, TopologyError> {
        if num_tasks == 0 {
            return Err(TopologyError::NoTasks);
        }
        Ok(FullTopology { num_tasks })
    }

    /// The number of tasks.
    pub fn num_tasks(&self) -> u32 {
        self.num_tasks
    }
}

impl Topology for FullTopology {
    fn num_tasks(&self) -> u32 {
        self.num_tasks
    }

    fn parents(&self, task: TaskId, _epoch: Epoch) -> Vec<TaskId> {
        if task.0 == 0 || task.0 >= self.num_tasks {
            Vec::new()
        } else {
            vec![TaskId(0)]
        }
    }

    fn children(&self, task: TaskId, _epoch: Epoch) -> Vec<TaskId> {
        if task.0 == 0 {
            (1..self.num_tasks).map(TaskId).collect()
        } else {
            Vec::new()
        }
    }

    fn fingerprint(&self) -> String {
        format!("full(tasks={})", self.num_tasks)
    }
}

/// A topology given as explicit lists: `parents[i]` and `children[i]` are the
/// parents and children of task `i`, the same in every epoch.
///
/// Nothing is checked on construction, so that invalid topologies can be
/// represented: [`parents`](Topology::parents) and
/// [`children`](Topology::children) return the lists exactly as given (an
/// empty list for a task without one), and [`validate`](Topology::validate)
/// reports the problems. Its checks start with one list per task
/// ([`TopologyError::ListCount`]), then continue as described on
/// [`Topology::validate`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExplicitTopology {
    num_tasks: u32,
    parents: Vec<Vec<TaskId>>,
    children: Vec<Vec<TaskId>>,
}

impl ExplicitTopology {
    /// A topology of `num_tasks` tasks with the given lists, one per task. Not
    /// validated: call [`Topology::validate`].
    pub fn new(num_tasks: u32, parents: Vec<Vec<TaskId>>, children: Vec<Vec<TaskId>>) -> Self {
        ExplicitTopology {
            num_tasks,
            parents,
            children,
        }
    }

    /// The number of tasks.
    pub fn num_tasks(&self) -> u32 {
        self.num_tasks
    }

    /// The parent lists as given, indexed by task.
    pub fn parent_lists(&self) -> &[Vec<TaskId>] {
        &self.parents
    }

    /// The child lists as given, indexed by task.
    pub fn child_lists(&self) -> &[Vec<TaskId>] {
        &self.children
    }

    fn list(&self, lists: &[Vec<TaskId>], task: TaskId) -> Vec<TaskId> {
        if task.0 >= self.num_tasks {
            return Vec::new();
        }
        lists.get(task.index()).cloned().unwrap_or_default()
    }
}

impl Topology for ExplicitTopology {
    fn num_tasks(&self) -> u32 {
        self.num_tasks
    }

    fn parents(&self, task: TaskId, _epoch: Epoch) -> Vec<TaskId> {
        self.list(&self.parents, task)
    }

    fn children(&self, task: TaskId, _epoch: Epoch) -> Vec<TaskId> {
        self.list(&self.children, task)
    }

    fn validate(&self, epoch: Epoch) -> Result<(), TopologyError> {
        if self.num_tasks == 0 {
            return Err(TopologyError::NoTasks);
        }
        for (relation, lists) in [
            (Relation::Parent, &self.parents),
            (Relation::Child, &self.children),
        ] {
            if usize::try_from(self.num_tasks).ok() != Some(lists.len()) {
                return Err(TopologyError::ListCount {
                    relation,
                    len: lists.len(),
                    num_tasks: self.num_tasks,
                });
            }
        }
        validate_topology(self, epoch)
    }

    /// `"explicit(tasks=N,fnv=H)"`, where `H` is a 64-bit FNV-1a hash of the
    /// lists in hex, so that different lists give different fingerprints.
    fn fingerprint(&self) -> String {
        let mut hash = Fnv1a::new();
        hash.write_u64(u64::from(self.num_tasks));
        for lists in [&self.parents, &self.children] {
            hash.write_u64(lists.len() as u64);
            for list in lists {
                hash.write_u64(list.len() as u64);
                for id in list {
                    hash.write_u64(u64::from(id.0));
                }
            }
        }
        format!(
            "explicit(tasks={},fnv={:016x})",
            self.num_tasks,
            hash.finish()
        )
    }
}

/// 64-bit FNV-1a, a hash whose value is fixed by its definition (unlike
/// `std`'s `DefaultHasher`), so fingerprints are stable across builds.
struct Fnv1a(u64);

impl Fnv1a {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn new() -> Self {
        Fnv1a(Self::OFFSET_BASIS)
    }

    fn write_u64(&mut self, value: u64) {
        for byte in value.to_le_bytes() {
            self.0 ^= u64::from(byte);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const E0: Epoch = Epoch(0);

    fn ids(raw: &[u32]) -> Vec<TaskId> {
        raw.iter().copied().map(TaskId).collect()
    }

    /// A valid three-task chain 0 -> 1 -> 2 as explicit lists.
    fn chain() -> (Vec<Vec<TaskId>>, Vec<Vec<TaskId>>) {
        (
            vec![ids(&[]), ids(&[0]), ids(&[1])],
            vec![ids(&[1]), ids(&[2]), ids(&[])],
        )
    }

    #[test]
    fn tree_of_15_with_fanout_2() {
        let tree = TreeTopology::new(2, 15).unwrap();
        assert_eq!(tree.fanout(), 2);
        assert_eq!(tree.num_tasks(), 15);
        assert_eq!(Topology::num_tasks(&tree), 15);
        assert_eq!(tree.children(TaskId(0), E0), ids(&[1, 2]));
        assert_eq!(tree.children(TaskId(1), E0), ids(&[3, 4]));
        assert_eq!(tree.children(TaskId(6), E0), ids(&[13, 14]));
        assert_eq!(tree.parents(TaskId(0), E0), ids(&[]));
        assert_eq!(tree.parents(TaskId(1), E0), ids(&[0]));
        assert_eq!(tree.parents(TaskId(2), E0), ids(&[0]));
        assert_eq!(tree.parents(TaskId(14), E0), ids(&[6]));
        for leaf in 7..15 {
            assert_eq!(tree.children(TaskId(leaf), E0), ids(&[]), "task {leaf}");
        }
        for inner in 0..7 {
            assert_eq!(tree.children(TaskId(inner), E0).len(), 2, "task {inner}");
        }
        assert_eq!(tree.validate(E0), Ok(()));
        assert_eq!(tree.validate(Epoch(u64::MAX)), Ok(()));
        assert_eq!(tree.fingerprint(), "tree(fanout=2,tasks=15)");
    }

    #[test]
    fn tree_with_partial_last_level() {
        let tree = TreeTopology::new(3, 6).unwrap();
        assert_eq!(tree.children(TaskId(0), E0), ids(&[1, 2, 3]));
        assert_eq!(tree.children(TaskId(1), E0), ids(&[4, 5]));
        assert_eq!(tree.children(TaskId(2), E0), ids(&[]));
        assert_eq!(tree.validate(E0), Ok(()));
    }

    #[test]
    fn tree_with_fanout_1_is_a_chain() {
        let tree = TreeTopology::new(1, 4).unwrap();
        for i in 1..4 {
            assert_eq!(tree.parents(TaskId(i), E0), ids(&[i - 1]));
            assert_eq!(tree.children(TaskId(i - 1), E0), ids(&[i]));
        }
        assert_eq!(tree.children(TaskId(3), E0), ids(&[]));
        assert_eq!(tree.validate(E0), Ok(()));
    }

    #[test]
    fn single_task_tree_and_star_have_no_edges() {
        let tree = TreeTopology::new(2, 1).unwrap();
        let star = FullTopology::new(1).unwrap();
        for topology in [&tree as &dyn Topology, &star] {
            assert_eq!(topology.parents(TaskId(0), E0), ids(&[]));
            assert_eq!(topology.children(TaskId(0), E0), ids(&[]));
            assert_eq!(topology.validate(E0), Ok(()));
        }
    }

    #[test]
    fn extreme_parameters_do_not_panic() {
        let tree = TreeTopology::new(u32::MAX, u32::MAX).unwrap();
        assert_eq!(tree.parents(TaskId(u32::MAX - 1), E0), ids(&[0]));
        assert_eq!(tree.children(TaskId(1), E0), ids(&[]));
        assert_eq!(tree.children(TaskId(u32::MAX), E0), ids(&[]));
        assert_eq!(tree.parents(TaskId(u32::MAX), E0), ids(&[]));
        let tree = TreeTopology::new(2, u32::MAX).unwrap();
        assert_eq!(
            tree.children(TaskId(u32::MAX / 2 - 1), E0),
            ids(&[u32::MAX - 2, u32::MAX - 1])
        );
        assert_eq!(tree.children(TaskId(u32::MAX / 2), E0), ids(&[]));
        assert_eq!(
            tree.parents(TaskId(u32::MAX - 1), E0),
            ids(&[u32::MAX / 2 - 1])
        );
    }

    #[test]
    fn out_of_range_tasks_have_no_neighbours() {
        let tree = TreeTopology::new(2, 15).unwrap();
        let star = FullTopology::new(4).unwrap();
        let (parents, children) = chain();
        let explicit = ExplicitTopology::new(3, parents, children);
        for topology in [&tree as &dyn Topology, &star, &explicit] {
            for task in [15, 16, u32::MAX] {
                assert_eq!(topology.parents(TaskId(task), E0), ids(&[]));
                assert_eq!(topology.children(TaskId(task), E0), ids(&[]));
            }
        }
    }

    #[test]
    fn invalid_tree_parameters_are_rejected() {
        assert!(matches!(
            TreeTopology::new(0, 15),
            Err(TopologyError::InvalidParameter(_))
        ));
        assert_eq!(TreeTopology::new(2, 0), Err(TopologyError::NoTasks));
        assert!(matches!(
            TreeTopology::new(0, 0),
            Err(TopologyError::InvalidParameter(_))
        ));
    }

    #[test]
    fn star_topology() {
        let star = FullTopology::new(4).unwrap();
        assert_eq!(star.num_tasks(), 4);
        assert_eq!(star.children(TaskId(0), E0), ids(&[1, 2, 3]));
        assert_eq!(star.parents(TaskId(0), E0), ids(&[]));
        for task in 1..4 {
            assert_eq!(star.parents(TaskId(task), E0), ids(&[0]));
            assert_eq!(star.children(TaskId(task), E0), ids(&[]));
        }
        assert_eq!(star.validate(Epoch(7)), Ok(()));
        assert_eq!(star.fingerprint(), "full(tasks=4)");
        assert_eq!(FullTopology::new(0), Err(TopologyError::NoTasks));
    }

    #[test]
    fn explicit_valid_topology() {
        let (parents, children) = chain();
        let explicit = ExplicitTopology::new(3, parents.clone(), children.clone());
        assert_eq!(explicit.validate(E0), Ok(()));
        assert_eq!(explicit.parents(TaskId(2), E0), ids(&[1]));
        assert_eq!(explicit.children(TaskId(0), E0), ids(&[1]));
        assert_eq!(explicit.parent_lists(), parents.as_slice());
        assert_eq!(explicit.child_lists(), children.as_slice());
        assert!(explicit.fingerprint().starts_with("explicit(tasks=3,fnv="));
    }

    #[test]
    fn explicit_fingerprint_is_stable_and_distinguishes_lists() {
        let (parents, children) = chain();
        let a = ExplicitTopology::new(3, parents.clone(), children.clone());
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
        assert_eq!(a.fingerprint(), "explicit(tasks=3,fnv=fc2fb7888d2c1d84)");
        let b = ExplicitTopology::new(3, children, parents);
        assert_ne!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn default_fingerprint() {
        #[derive(Debug)]
        struct Lonely;
        impl Topology for Lonely {
            fn num_tasks(&self) -> u32 {
                1
            }
            fn parents(&self, _: TaskId, _: Epoch) -> Vec<TaskId> {
                Vec::new()
            }
            fn children(&self, _: TaskId, _: Epoch) -> Vec<TaskId> {
                Vec::new()
            }
        }
        assert_eq!(Lonely.fingerprint(), "custom(tasks=1)");
        assert_eq!(Lonely.validate(E0), Ok(()));
    }

    #[test]
    fn validate_rejects_no_tasks() {
        let explicit = ExplicitTopology::new(0, vec![], vec![]);
        assert_eq!(explicit.validate(E0), Err(TopologyError::NoTasks));
    }

    #[test]
    fn validate_rejects_wrong_list_count() {
        let (parents, children) = chain();
        let short = ExplicitTopology::new(4, parents.clone(), children.clone());
        assert_eq!(
            short.validate(E0),
            Err(TopologyError::ListCount {
                relation: Relation::Parent,
                len: 3,
                num_tasks: 4
            })
        );
        let mut long_children = children;
        long_children.push(Vec::new());
        let long = ExplicitTopology::new(3, parents, long_children);
        assert_eq!(
            long.validate(E0),
            Err(TopologyError::ListCount {
                relation: Relation::Child,
                len: 4,
                num_tasks: 3
            })
        );
    }

    #[test]
    fn validate_rejects_out_of_range() {
        let (mut parents, children) = chain();
        parents[2].push(TaskId(3));
        let explicit = ExplicitTopology::new(3, parents, children);
        let err = explicit.validate(E0).unwrap_err();
        assert_eq!(
            err,
            TopologyError::OutOfRange {
                task: TaskId(2),
                relation: Relation::Parent,
                neighbour: TaskId(3),
                num_tasks: 3
            }
        );
        assert_eq!(
            err.to_string(),
            "invalid topology: parent t3 of task t2 is out of range (num_tasks is 3)"
        );
    }

    #[test]
    fn validate_rejects_self_loop() {
        let (parents, mut children) = chain();
        children[1] = ids(&[1, 2]);
        let explicit = ExplicitTopology::new(3, parents, children);
        let err = explicit.validate(E0).unwrap_err();
        assert_eq!(
            err,
            TopologyError::SelfLoop {
                task: TaskId(1),
                relation: Relation::Child
            }
        );
        assert_eq!(
            err.to_string(),
            "invalid topology: task t1 is its own child"
        );
    }

    #[test]
    fn validate_rejects_duplicate() {
        let (mut parents, children) = chain();
        parents[1] = ids(&[0, 0]);
        let explicit = ExplicitTopology::new(3, parents, children);
        assert_eq!(
            explicit.validate(E0),
            Err(TopologyError::Duplicate {
                task: TaskId(1),
                relation: Relation::Parent,
                neighbour: TaskId(0)
            })
        );
    }

    #[test]
    fn validate_rejects_unsorted() {
        let explicit = ExplicitTopology::new(
            3,
            vec![ids(&[]), ids(&[0]), ids(&[0])],
            vec![ids(&[2, 1]), ids(&[]), ids(&[])],
        );
        assert_eq!(
            explicit.validate(E0),
            Err(TopologyError::Unsorted {
                task: TaskId(0),
                relation: Relation::Child,
                neighbour: TaskId(1)
            })
        );
    }

    #[test]
    fn validate_rejects_missing_child() {
        let (parents, mut children) = chain();
        children[1].clear();
        let explicit = ExplicitTopology::new(3, parents, children);
        let err = explicit.validate(E0).unwrap_err();
        assert_eq!(
            err,
            TopologyError::Asymmetric {
                parent: TaskId(1),
                child: TaskId(2),
                detail: Asymmetry::MissingChild
            }
        );
        assert_eq!(
            err.to_string(),
            "invalid topology: asymmetric edge t1 -> t2: task t2 lists t1 as a parent, \
             but task t1 does not list t2 as a child"
        );
    }

    #[test]
    fn validate_rejects_missing_parent() {
        let (mut parents, children) = chain();
        parents[1].clear();
        let explicit = ExplicitTopology::new(3, parents, children);
        let err = explicit.validate(E0).unwrap_err();
        assert_eq!(
            err,
            TopologyError::Asymmetric {
                parent: TaskId(0),
                child: TaskId(1),
                detail: Asymmetry::MissingParent
            }
        );
        assert_eq!(
            err.to_string(),
            "invalid topology: asymmetric edge t0 -> t1: task t0 lists t1 as a child, \
             but task t1 does not list t0 as a parent"
        );
    }

    #[test]
    fn validate_reports_first_asymmetric_edge_in_order() {
        // Both edges of the chain are one-sided: 0 -> 1 only in children,
        // 1 -> 2 only in parents. The smaller pair (0, 1) is reported.
        let explicit = ExplicitTopology::new(
            3,
            vec![ids(&[]), ids(&[]), ids(&[1])],
            vec![ids(&[1]), ids(&[]), ids(&[])],
        );
        assert_eq!(
            explicit.validate(E0),
            Err(TopologyError::Asymmetric {
                parent: TaskId(0),
                child: TaskId(1),
                detail: Asymmetry::MissingParent
            })
        );
    }

    #[test]
    fn serde_round_trip() {
        let tree = TreeTopology::new(3, 10).unwrap();
        let json = serde_json::to_string(&tree).unwrap();
        assert_eq!(json, r#"{"fanout":3,"num_tasks":10}"#);
        assert_eq!(serde_json::from_str::<TreeTopology>(&json).unwrap(), tree);

        let star = FullTopology::new(5).unwrap();
        let json = serde_json::to_string(&star).unwrap();
        assert_eq!(serde_json::from_str::<FullTopology>(&json).unwrap(), star);

        let (parents, children) = chain();
        let explicit = ExplicitTopology::new(3, parents, children);
        let json = serde_json::to_string(&explicit).unwrap();
        assert_eq!(
            serde_json::from_str::<ExplicitTopology>(&json).unwrap(),
            explicit
        );
    }

    #[test]
    fn deserializing_invalid_parameters_fails() {
        let err =
            serde_json::from_str::<TreeTopology>(r#"{"fanout":0,"num_tasks":10}"#).unwrap_err();
        assert!(err.to_string().contains("fanout"), "{err}");
        assert!(serde_json::from_str::<TreeTopology>(r#"{"fanout":2,"num_tasks":0}"#).is_err());
        assert!(serde_json::from_str::<FullTopology>(r#"{"num_tasks":0}"#).is_err());
    }

    #[test]
    fn topologies_are_object_safe() {
        let all: Vec<Box<dyn Topology>> = vec![
            Box::new(TreeTopology::new(2, 7).unwrap()),
            Box::new(FullTopology::new(7).unwrap()),
        ];
        for topology in &all {
            assert_eq!(topology.validate(E0), Ok(()));
            assert_eq!(topology.num_tasks(), 7);
        }
    }
}
