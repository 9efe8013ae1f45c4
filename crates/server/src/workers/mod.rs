//! Background work of a node.

pub mod audit_writer;
pub mod edge;
pub mod heads_file;
pub mod invalidations;
pub mod maintenance;
pub mod usage;
pub mod webhook_dispatcher;
