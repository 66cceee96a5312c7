//! Property tests of the topologies (S10, S19): the provided topologies are
//! valid at every epoch and have the shape they promise; `validate` rejects
//! broken explicit topologies with the right typed error.

use proptest::prelude::*;
use proptest::sample::Index;
use std::collections::BTreeSet;
use taskgraph_core::topology::{
    Asymmetry, ExplicitTopology, FullTopology, Relation, Topology, TopologyError, TreeTopology,
};
use taskgraph_core::{Epoch, TaskId};

/// The provided topologies under test.
#[derive(Clone, Debug)]
enum Shape {
    Tree { fanout: u32, num_tasks: u32 },
    Full { num_tasks: u32 },
}

impl Shape {
    fn build(&self) -> Box<dyn Topology> {
        match *self {
            Shape::Tree { fanout, num_tasks } => {
                Box::new(TreeTopology::new(fanout, num_tasks).expect("valid tree parameters"))
            }
            Shape::Full { num_tasks } => {
                Box::new(FullTopology::new(num_tasks).expect("valid star parameters"))
            }
        }
    }
}

fn tree() -> impl Strategy<Value = Shape> {
    (1u32..=8, 1u32..=2000).prop_map(|(fanout, num_tasks)| Shape::Tree { fanout, num_tasks })
}

fn full() -> impl Strategy<Value = Shape> {
    (1u32..=2000).prop_map(|num_tasks| Shape::Full { num_tasks })
}

fn shape() -> impl Strategy<Value = Shape> {
    prop_oneof![tree(), full()]
}

fn epoch() -> impl Strategy<Value = Epoch> {
    any::<u64>().prop_map(Epoch)
}

/// Every task's parents and children at `epoch`, computed once.
struct Lists {
    parents: Vec<Vec<TaskId>>,
    children: Vec<Vec<TaskId>>,
}

impl Lists {
    fn of(topology: &dyn Topology, epoch: Epoch) -> Self {
        let tasks = 0..topology.num_tasks();
        Lists {
            parents: tasks
                .clone()
                .map(|t| topology.parents(TaskId(t), epoch))
                .collect(),
            children: tasks.map(|t| topology.children(TaskId(t), epoch)).collect(),
        }
    }
}

/// A random valid explicit topology: `num_tasks` in 2..=40 and a non-empty set
/// of (parent, child) edges without self loops, with both sides listed.
fn symmetric_explicit() -> impl Strategy<Value = (u32, Vec<(u32, u32)>)> {
    (2u32..=40).prop_flat_map(|num_tasks| {
        let edge = (0..num_tasks, 0..num_tasks - 1)
            // Skip over the parent itself so that there is no self loop.
            .prop_map(|(parent, c)| (parent, if c >= parent { c + 1 } else { c }));
        let edges = proptest::collection::btree_set(edge, 1..=3 * num_tasks as usize)
            .prop_map(|set| set.into_iter().collect::<Vec<_>>());
        (Just(num_tasks), edges)
    })
}

fn lists_of_edges(num_tasks: u32, edges: &[(u32, u32)]) -> (Vec<Vec<TaskId>>, Vec<Vec<TaskId>>) {
    let mut parents = vec![BTreeSet::new(); num_tasks as usize];
    let mut children = vec![BTreeSet::new(); num_tasks as usize];
    for &(parent, child) in edges {
        parents[child as usize].insert(TaskId(parent));
        children[parent as usize].insert(TaskId(child));
    }
    let into_lists = |sets: Vec<BTreeSet<TaskId>>| -> Vec<Vec<TaskId>> {
        sets.into_iter()
            .map(|set| set.into_iter().collect())
            .collect()
    };
    (into_lists(parents), into_lists(children))
}

proptest! {
    #[test]
    fn s19_tree_topology_validates_at_any_epoch(shape in tree(), epoch in epoch()) {
        prop_assert_eq!(shape.build().validate(epoch), Ok(()));
    }

    #[test]
    fn s19_full_topology_validates_at_any_epoch(shape in full(), epoch in epoch()) {
        prop_assert_eq!(shape.build().validate(epoch), Ok(()));
    }

    #[test]
    fn neighbours_are_sorted_unique_in_range_and_not_self(shape in shape(), epoch in epoch()) {
        let topology = shape.build();
        let num_tasks = topology.num_tasks();
        let lists = Lists::of(topology.as_ref(), epoch);
        for (task, list) in lists.parents.iter().chain(&lists.children).enumerate() {
            let task = TaskId((task % num_tasks as usize) as u32);
            prop_assert!(list.windows(2).all(|w| w[0] < w[1]), "{task}: {list:?} not strictly ascending");
            prop_assert!(list.iter().all(|n| n.0 < num_tasks), "{task}: {list:?} out of range");
            prop_assert!(!list.contains(&task), "{task}: {list:?} contains the task itself");
        }
    }

    #[test]
    fn parents_and_children_are_symmetric(shape in shape(), epoch in epoch()) {
        let topology = shape.build();
        let lists = Lists::of(topology.as_ref(), epoch);
        for (child, parents) in lists.parents.iter().enumerate() {
            for parent in parents {
                prop_assert!(
                    lists.children[parent.index()].binary_search(&TaskId(child as u32)).is_ok(),
                    "t{child} has parent {parent}, which lacks it as a child"
                );
            }
        }
        for (parent, children) in lists.children.iter().enumerate() {
            for child in children {
                prop_assert!(
                    lists.parents[child.index()].binary_search(&TaskId(parent as u32)).is_ok(),
                    "t{parent} has child {child}, which lacks it as a parent"
                );
            }
        }
    }

    #[test]
    fn every_non_root_task_has_exactly_one_parent(shape in shape(), epoch in epoch()) {
        let topology = shape.build();
        prop_assert!(topology.parents(TaskId(0), epoch).is_empty(), "the root has a parent");
        for task in (1..topology.num_tasks()).map(TaskId) {
            prop_assert_eq!(topology.parents(task, epoch).len(), 1, "parents of {}", task);
        }
    }

    #[test]
    fn tree_is_connected_every_task_reaches_root(shape in shape(), epoch in epoch()) {
        let topology = shape.build();
        let num_tasks = topology.num_tasks() as usize;
        let lists = Lists::of(topology.as_ref(), epoch);
        // reaches[t]: t is known to reach task 0 by following parents.
        let mut reaches = vec![false; num_tasks];
        reaches[0] = true;
        for start in 0..num_tasks {
            let mut path = Vec::new();
            let mut task = start;
            while !reaches[task] {
                // More than num_tasks steps means a cycle.
                prop_assert!(path.len() <= num_tasks, "t{start} is on a cycle of parents");
                path.push(task);
                match lists.parents[task].first() {
                    Some(parent) => task = parent.index(),
                    None => prop_assert!(false, "t{start} stops at t{task} without reaching t0"),
                }
            }
            for task in path {
                reaches[task] = true;
            }
        }
    }

    #[test]
    fn number_of_edges_is_num_tasks_minus_one(shape in shape(), epoch in epoch()) {
        let topology = shape.build();
        let lists = Lists::of(topology.as_ref(), epoch);
        let expected = topology.num_tasks() as usize - 1;
        prop_assert_eq!(lists.parents.iter().map(Vec::len).sum::<usize>(), expected);
        prop_assert_eq!(lists.children.iter().map(Vec::len).sum::<usize>(), expected);
    }

    #[test]
    fn tree_parent_is_task_minus_one_over_fanout(
        (fanout, num_tasks) in (1u32..=8, 1u32..=2000),
        epoch in epoch(),
    ) {
        let tree = TreeTopology::new(fanout, num_tasks).unwrap();
        for task in 1..num_tasks {
            prop_assert_eq!(tree.parents(TaskId(task), epoch), vec![TaskId((task - 1) / fanout)]);
        }
        for task in 0..num_tasks {
            prop_assert!(tree.children(TaskId(task), epoch).len() <= fanout as usize);
        }
    }

    #[test]
    fn topology_is_the_same_in_every_epoch(shape in shape(), a in epoch(), b in epoch()) {
        let topology = shape.build();
        let (la, lb) = (Lists::of(topology.as_ref(), a), Lists::of(topology.as_ref(), b));
        prop_assert_eq!(la.parents, lb.parents);
        prop_assert_eq!(la.children, lb.children);
    }

    #[test]
    fn out_of_range_tasks_have_no_neighbours(
        shape in shape(),
        past_end in 0u32..=1000,
        epoch in epoch(),
    ) {
        let topology = shape.build();
        for task in [topology.num_tasks().saturating_add(past_end), u32::MAX].map(TaskId) {
            prop_assert!(topology.parents(task, epoch).is_empty());
            prop_assert!(topology.children(task, epoch).is_empty());
        }
    }

    #[test]
    fn fingerprints_differ_exactly_when_parameters_differ(a in shape(), b in shape()) {
        let same = match (&a, &b) {
            (
                Shape::Tree { fanout: fa, num_tasks: na },
                Shape::Tree { fanout: fb, num_tasks: nb },
            ) => fa == fb && na == nb,
            (Shape::Full { num_tasks: na }, Shape::Full { num_tasks: nb }) => na == nb,
            _ => false,
        };
        prop_assert_eq!(a.build().fingerprint() == b.build().fingerprint(), same);
    }

    #[test]
    fn s19_validate_accepts_symmetric_explicit_topology(
        (num_tasks, edges) in symmetric_explicit(),
        epoch in epoch(),
    ) {
        let (parents, children) = lists_of_edges(num_tasks, &edges);
        prop_assert_eq!(ExplicitTopology::new(num_tasks, parents, children).validate(epoch), Ok(()));
    }

    #[test]
    fn s19_validate_rejects_asymmetric_topology(
        (num_tasks, edges) in symmetric_explicit(),
        which in any::<Index>(),
        from_children in any::<bool>(),
        epoch in epoch(),
    ) {
        let (mut parents, mut children) = lists_of_edges(num_tasks, &edges);
        let (parent, child) = edges[which.index(edges.len())];
        let (parent, child) = (TaskId(parent), TaskId(child));
        let detail = if from_children {
            children[parent.index()].retain(|&c| c != child);
            Asymmetry::MissingChild
        } else {
            parents[child.index()].retain(|&p| p != parent);
            Asymmetry::MissingParent
        };
        let err = ExplicitTopology::new(num_tasks, parents, children).validate(epoch);
        prop_assert_eq!(err, Err(TopologyError::Asymmetric { parent, child, detail }));
    }

    #[test]
    fn s19_validate_rejects_out_of_range_neighbour(
        (num_tasks, edges) in symmetric_explicit(),
        task in any::<Index>(),
        in_children in any::<bool>(),
        excess in 0u32..=u32::MAX - 40,
        epoch in epoch(),
    ) {
        let (mut parents, mut children) = lists_of_edges(num_tasks, &edges);
        let task = task.index(num_tasks as usize);
        let neighbour = TaskId(num_tasks + excess);
        // Appended last, so the list stays sorted and the id is its only fault.
        let relation = if in_children {
            children[task].push(neighbour);
            Relation::Child
        } else {
            parents[task].push(neighbour);
            Relation::Parent
        };
        let err = ExplicitTopology::new(num_tasks, parents, children).validate(epoch);
        prop_assert_eq!(
            err,
            Err(TopologyError::OutOfRange { task: TaskId(task as u32), relation, neighbour, num_tasks })
        );
    }
}
