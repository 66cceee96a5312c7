//! Identifiers and counters. Each is a newtype so that a task id can never be
//! passed where a node id is expected.

use serde::{Deserialize, Serialize};
use std::fmt;

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident($inner:ty), $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub $inner);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!($prefix, "{}"), self.0)
            }
        }

        impl From<$inner> for $name {
            fn from(v: $inner) -> Self {
                $name(v)
            }
        }
    };
}

id_type!(
    /// A task of the application: `0..num_tasks`.
    TaskId(u32),
    "t"
);
id_type!(
    /// A node (one process, or one member of an in-process cluster). Chosen by
    /// the driver; unique within a job.
    NodeId(u64),
    "n"
);
id_type!(
    /// The global epoch of the job. Starts at 0, advanced only by compare-and-swap.
    Epoch(u64),
    "e"
);
id_type!(
    /// The primary incarnation of a task: the store revision at which the
    /// current primary claimed it. Strictly increases on every change of
    /// primary, so a receiver can fence a stale primary by comparing it (S3).
    Incarnation(i64),
    "i"
);
id_type!(
    /// One life of a node: the store lease it holds. A node that loses its lease
    /// and rejoins, or restarts, is a new session.
    SessionId(i64),
    "s"
);

impl TaskId {
    /// The task id as an index into a dense array.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl Epoch {
    /// The next epoch.
    pub fn next(self) -> Epoch {
        Epoch(self.0.saturating_add(1))
    }
}
