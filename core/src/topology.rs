//! Topologies (to be written).
