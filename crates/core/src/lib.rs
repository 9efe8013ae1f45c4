//! Domain types and rules of datastack.
//!
//! This crate knows no I/O: it parses and validates inputs into types that prove their
//! validity, formats and checks credentials, and decides whether a credential may perform
//! an operation. The store persists these types; the server speaks HTTP around them.
#![forbid(unsafe_code)]

pub mod apikey;
pub mod audit;
pub mod audit_breaks;
pub mod authz;
pub mod bounded;
pub mod credential;
pub mod edge;
pub mod error;
pub mod id;
pub mod model;
pub mod oauth;
pub mod route_path;
pub mod scope;
pub mod validate;
pub mod webhook;

pub use error::{Error, Result};
