//! Background work of a node.

pub mod invalidations;
pub mod usage;
