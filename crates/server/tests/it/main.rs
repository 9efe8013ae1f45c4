//! The HTTP integration suite: every test runs a real server and speaks to it over
//! loopback, once on SQLite and once on PostgreSQL (see `helpers::on_both_stores`).

mod helpers;

mod api_keys;
mod audit;
mod audit_heads;
mod cluster;
mod contract;
mod edge;
mod edge_rules;
mod fast_path;
mod federation;
mod floods;
mod hostile;
mod input;
mod limits;
mod nginx;
mod oauth;
mod oauth_flows;
mod principals;
mod stalled_readers;
mod surface;
mod tokens;
mod upstream_pool;
mod webhooks;
mod workspaces;
