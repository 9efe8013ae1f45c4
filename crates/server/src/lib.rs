//! The datastack HTTP server.
//!
//! [`Application::build`] opens the store, bootstraps it on first start and binds;
//! [`Application::run_until_stopped`] serves. One module per API area lives in `api`, the
//! request pipeline in `pipeline` (one file per stage), background work in `workers`.
//! This crate never writes SQL: persistence is `datastack-store`'s.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod audit;
pub mod config;
pub mod credentials;
pub mod edge;
pub mod error;
pub(crate) mod fast;
pub mod federation;
pub mod metrics;
pub mod oauth_keys;
pub mod offline;
pub mod openapi;
pub mod pipeline;
pub mod request_id;
pub(crate) mod serve;
pub mod state;
pub mod webhooks;
pub mod workers;

pub use app::{Application, ShutdownHandle, StartError};
pub use config::{Config, ConfigError, ConfigLayer};
