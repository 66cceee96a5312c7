//! The regression example's application (gradient descent along a tree of
//! tasks, from `examples/regression.rs` of the `taskgraph` package), run in
//! the simulated world. Its final weights must be bit-identical to those of
//! a run without faults.

#[path = "../../examples/regression.rs"]
#[allow(missing_docs, unreachable_pub)]
#[cfg_attr(not(test), allow(dead_code))]
mod example;

pub use example::app::{Problem, RegressionBuilder, Report, Vector};
