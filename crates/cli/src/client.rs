//! The client subcommands of the `datastack` binary: tokens, users, service principals,
//! workspaces and whoami. They speak only the public API, through `datastack-sdk`.
//!
//! Output goes to stdout as an aligned table, or as JSON with `--json`. Errors go to stderr
//! as `error: <CODE> <message> (request <id>)`; the exit code is 1 for a failed call and 2
//! for a usage or configuration problem. No token is ever printed, except the one-time
//! secret of a token just created.

mod api_keys;
mod oauth;
mod output;
mod webhooks;

use std::fmt;
use std::future::Future;
use std::process::ExitCode;

use chrono::{DateTime, Utc};
use datastack_sdk::{
    AuditQuery, Client, CreateServicePrincipal, CreateToken, CreateUser, CreateWorkspace,
    IpAccessListUpdate, ListServicePrincipals, ListTokens, ListUsers, ListWorkspaces,
    NewIpAccessList, Page, ReviewQuery, Role, RouteSpec, Status, TokenLifetime,
    UpdateServicePrincipal, UpdateUser, UpdateWorkspace, WorkspaceSettings,
    WorkspaceSettingsUpdate,
};
use secrecy::SecretString;

use output::{
    Output, abuse_table, audit_table, ip_list_table, me_fields, print_bulk, print_chain_report,
    print_created_token, print_created_workspace, review_table, route_table, security_event_table,
    service_principal_fields, service_principal_table, token_table, user_fields, user_table,
    workspace_fields, workspace_table,
};

/// Where the client commands connect and how they print; flattened into each client
/// command group, so the flags work anywhere after the group's name (and `serve` does not
/// list them).
#[derive(clap::Args, Clone)]
pub struct Connection {
    /// Base URL of the datastack server.
    #[arg(
        long,
        env = "DATASTACK_HOST",
        default_value = "http://127.0.0.1:8080",
        global = true
    )]
    pub host: String,
    /// The credential to call the API with: a personal access token (dapi…) or an API key
    /// (dkey…). Prefer the environment variable: a flag is visible to other users in the
    /// process list.
    #[arg(long, env = "DATASTACK_TOKEN", hide_env_values = true, global = true)]
    pub token: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Written by hand so that debug-printing the command line never shows the token.
impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("host", &self.host)
            .field("token", &self.token.as_ref().map(|_| "[redacted]"))
            .field("json", &self.json)
            .finish()
    }
}

/// The client subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum ClientCommand {
    /// Create, list and revoke personal access tokens.
    Tokens {
        #[command(flatten)]
        conn: Connection,
        /// What to do with tokens.
        #[command(subcommand)]
        cmd: TokensCmd,
    },
    /// Create, list, rotate and revoke scoped API keys, see their usage, verify one.
    ApiKeys {
        #[command(flatten)]
        conn: Connection,
        /// What to do with API keys.
        #[command(subcommand)]
        cmd: api_keys::ApiKeysCmd,
    },
    /// Register webhooks, follow their deliveries, redeliver and replay.
    Webhooks {
        #[command(flatten)]
        conn: Connection,
        /// What to do with webhooks.
        #[command(subcommand)]
        cmd: webhooks::WebhooksCmd,
    },
    /// Publish events from upstream services to the workspace's webhooks.
    Events {
        #[command(flatten)]
        conn: Connection,
        /// What to do with events.
        #[command(subcommand)]
        cmd: webhooks::EventsCmd,
    },
    /// Register and manage OAuth clients; get a client_credentials access token.
    Oauth {
        #[command(flatten)]
        conn: Connection,
        /// What to do with OAuth.
        #[command(subcommand)]
        cmd: oauth::OauthCmd,
    },
    /// Manage the users of the workspace.
    Users {
        #[command(flatten)]
        conn: Connection,
        /// What to do with users.
        #[command(subcommand)]
        cmd: UsersCmd,
    },
    /// Manage service principals (non-human owners of API keys and OAuth clients).
    ServicePrincipals {
        #[command(flatten)]
        conn: Connection,
        /// What to do with service principals.
        #[command(subcommand)]
        cmd: ServicePrincipalsCmd,
    },
    /// Manage workspaces.
    Workspaces {
        #[command(flatten)]
        conn: Connection,
        /// What to do with workspaces.
        #[command(subcommand)]
        cmd: WorkspacesCmd,
    },
    /// Show the principal, workspace and credential the token belongs to.
    Whoami {
        #[command(flatten)]
        conn: Connection,
    },
    /// Query, export and verify the audit log; list security events (admins).
    Audit {
        #[command(flatten)]
        conn: Connection,
        /// What to do with the audit log.
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Review every credential of the workspace: owner, scopes, age, last use and flags
    /// (stale, rotation_due, never_expires, over_broad); revoke or narrow in bulk (admins).
    AccessReview {
        #[command(flatten)]
        conn: Connection,
        /// What to do; without a subcommand, list the review.
        #[command(subcommand)]
        cmd: Option<ReviewCmd>,
        #[command(flatten)]
        query: ReviewArgs,
    },
    /// Manage gateway routes (path prefix → upstream and resource).
    Gateway {
        #[command(flatten)]
        conn: Connection,
        /// What to do with the gateway.
        #[command(subcommand)]
        cmd: GatewayCmd,
    },
    /// Manage the workspace's IP access lists.
    IpAccessLists {
        #[command(flatten)]
        conn: Connection,
        /// What to do with IP access lists.
        #[command(subcommand)]
        cmd: IpListsCmd,
    },
    /// List and clear clients flagged for sending while rate-limited.
    AbuseFlags {
        #[command(flatten)]
        conn: Connection,
        /// What to do with abuse flags.
        #[command(subcommand)]
        cmd: AbuseCmd,
    },
}

impl ClientCommand {
    /// Where the command connects and how it prints.
    pub fn conn(&self) -> &Connection {
        match self {
            ClientCommand::Tokens { conn, .. }
            | ClientCommand::ApiKeys { conn, .. }
            | ClientCommand::Webhooks { conn, .. }
            | ClientCommand::Events { conn, .. }
            | ClientCommand::Oauth { conn, .. }
            | ClientCommand::Users { conn, .. }
            | ClientCommand::ServicePrincipals { conn, .. }
            | ClientCommand::Workspaces { conn, .. }
            | ClientCommand::Whoami { conn }
            | ClientCommand::Audit { conn, .. }
            | ClientCommand::AccessReview { conn, .. }
            | ClientCommand::Gateway { conn, .. }
            | ClientCommand::IpAccessLists { conn, .. }
            | ClientCommand::AbuseFlags { conn, .. } => conn,
        }
    }
}

/// `datastack gateway …`
#[derive(clap::Subcommand, Debug)]
pub enum GatewayCmd {
    /// Gateway routes.
    Routes {
        /// What to do with routes.
        #[command(subcommand)]
        cmd: RoutesCmd,
    },
}

/// `datastack gateway routes …`
#[derive(clap::Subcommand, Debug)]
pub enum RoutesCmd {
    /// List every route in force (configured and managed).
    List,
    /// Show one route.
    Get {
        /// The route's id (`rt_…`).
        id: String,
    },
    /// Create a route (admins of the root workspace).
    Create {
        #[command(flatten)]
        spec: RouteArgs,
    },
    /// Replace a route (admins of the root workspace).
    Replace {
        /// The route's id (`rt_…`).
        id: String,
        #[command(flatten)]
        spec: RouteArgs,
    },
    /// Delete a route (admins of the root workspace).
    Delete {
        /// The route's id (`rt_…`).
        id: String,
    },
}

/// A route's settings on the command line.
#[derive(clap::Args, Debug)]
pub struct RouteArgs {
    /// Requests under this path prefix use the route, e.g. /v1/clusters.
    #[arg(long)]
    path_prefix: String,
    /// The resource of its scopes: clusters, jobs, notebooks, pipelines, sql, …
    #[arg(long)]
    resource: String,
    /// The upstream base URL, e.g. http://127.0.0.1:9001 (omit for forward-auth only).
    #[arg(long)]
    upstream: Option<String>,
    /// Remove the prefix before forwarding.
    #[arg(long)]
    strip_prefix: bool,
    /// Upstream timeout in milliseconds (default 30000).
    #[arg(long)]
    timeout_ms: Option<u32>,
    /// Spend units per request.
    #[arg(long)]
    price_per_request: Option<u64>,
    /// The upstream response header that reports a request's actual cost (default
    /// x-datastack-cost).
    #[arg(long)]
    cost_header: Option<String>,
    /// Forward the client's Authorization header to the upstream.
    #[arg(long)]
    forward_authorization: bool,
    /// A per-method scope override, METHOD=SCOPE (repeatable), e.g. POST=read:jobs.
    #[arg(long = "method-scope")]
    method_scopes: Vec<String>,
    /// Forward client headers whose name contains `_` (identity and forwarding headers
    /// are dropped in every spelling regardless).
    #[arg(long)]
    allow_underscore_headers: bool,
    /// Forward path and method override headers (X-Original-URL, X-HTTP-Method-Override, …).
    #[arg(long)]
    allow_override_headers: bool,
}

/// A whole IP access list, as `create` and `replace` take it.
#[derive(clap::Args, Debug)]
pub struct IpListArgs {
    /// A name, unique in the workspace.
    #[arg(long)]
    label: String,
    /// ALLOW or BLOCK.
    #[arg(long = "type")]
    list_type: String,
    /// An address or CIDR range (repeatable).
    #[arg(long = "address", required = true)]
    addresses: Vec<String>,
    /// Disabled (not enforced).
    #[arg(long)]
    disabled: bool,
    /// Apply even if it refuses your own address.
    #[arg(long)]
    allow_lockout: bool,
}

impl IpListArgs {
    /// The list to send, and whether a lockout is allowed.
    fn into_request(self) -> (NewIpAccessList, bool) {
        (
            NewIpAccessList {
                label: self.label,
                list_type: self.list_type.to_ascii_uppercase(),
                ip_addresses: self.addresses,
                enabled: self.disabled.then_some(false),
            },
            self.allow_lockout,
        )
    }
}

/// `datastack ip-access-lists …`
#[derive(clap::Subcommand, Debug)]
pub enum IpListsCmd {
    /// List the workspace's lists.
    List,
    /// Show one list.
    Get {
        /// The list's id (`ipl_…`).
        id: String,
    },
    /// Replace a list whole: label, type, addresses and state (enabled unless --disabled).
    Replace {
        /// The list's id (`ipl_…`).
        id: String,
        #[command(flatten)]
        list: IpListArgs,
    },
    /// Create a list (enforced at once unless --disabled).
    Create {
        #[command(flatten)]
        list: IpListArgs,
    },
    /// Change a list's label, type, addresses or state.
    Update {
        /// The list's id (`ipl_…`).
        id: String,
        /// A new label.
        #[arg(long)]
        label: Option<String>,
        /// ALLOW or BLOCK.
        #[arg(long = "type")]
        list_type: Option<String>,
        /// New addresses (repeatable), replacing the old ones.
        #[arg(long = "address")]
        addresses: Vec<String>,
        /// Enable the list.
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        /// Disable the list.
        #[arg(long)]
        disable: bool,
        /// Apply even if it refuses your own address.
        #[arg(long)]
        allow_lockout: bool,
    },
    /// Delete a list.
    Delete {
        /// The list's id (`ipl_…`).
        id: String,
        /// Apply even if it refuses your own address.
        #[arg(long)]
        allow_lockout: bool,
    },
}

/// `datastack abuse-flags …`
#[derive(clap::Subcommand, Debug)]
pub enum AbuseCmd {
    /// List flags not cleared (newest first).
    List {
        /// Include cleared flags.
        #[arg(long)]
        all: bool,
        /// At most this many (1–500).
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Clear a flag: the penalty is lifted on every node.
    Clear {
        /// The flag's id (`abf_…`).
        id: String,
    },
}

/// `datastack audit …`
#[derive(clap::Subcommand, Debug)]
pub enum AuditCmd {
    /// Entries, newest appended first (chain order), filtered.
    Query {
        /// At or after this time (RFC 3339, e.g. 2026-11-23T00:00:00Z).
        #[arg(long)]
        since: Option<DateTime<Utc>>,
        /// Before this time (RFC 3339).
        #[arg(long)]
        until: Option<DateTime<Utc>>,
        /// The acting principal (usr_…/sp_…).
        #[arg(long)]
        principal: Option<String>,
        /// The credential (tok_…).
        #[arg(long)]
        credential: Option<String>,
        /// The action, e.g. tokens.create.
        #[arg(long)]
        action: Option<String>,
        /// The resource type, e.g. tokens.
        #[arg(long)]
        resource_type: Option<String>,
        /// The resource id.
        #[arg(long)]
        resource: Option<String>,
        /// allowed, denied or error.
        #[arg(long, value_parser = ["allowed", "denied", "error"])]
        outcome: Option<String>,
        /// The client address.
        #[arg(long)]
        ip: Option<String>,
        /// A request id, as an error message reports it: the request's entry, or the
        /// aggregated entry that counts it.
        #[arg(long)]
        request_id: Option<String>,
        /// Entries per page (1–1000; server default 100).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: Option<u32>,
        /// Start at this cursor (the `nextCursor` of a previous page).
        #[arg(long, conflicts_with = "all_pages")]
        cursor: Option<String>,
        /// Follow `nextCursor` until the last page.
        #[arg(long)]
        all_pages: bool,
    },
    /// Write the entries of a time range as JSON Lines (oldest first) to stdout or a file.
    Export {
        /// At or after this time (RFC 3339); default: the oldest retained.
        #[arg(long)]
        since: Option<DateTime<Utc>>,
        /// Before this time (RFC 3339); default: now.
        #[arg(long)]
        until: Option<DateTime<Utc>>,
        /// Write to this file instead of stdout.
        #[arg(long, short)]
        output: Option<std::path::PathBuf>,
    },
    /// Walk the workspace's hash chain and report the first altered, removed or reordered
    /// entry and every break recorded in it. With --offline, read the store directly
    /// (every chain, no server needed, nothing written); with --heads, also check the store
    /// against the signed heads anchored in a heads file. Exits 3 when a chain is broken.
    Verify(crate::offline::VerifyArgs),
    /// Operator, with the store's settings: acknowledge a break recorded in a chain
    /// (an audit.chain_break entry that verify lists). The acknowledgement is itself an
    /// audit entry and a security event; verify then reports the chain intact and still
    /// lists the break.
    AcknowledgeBreak(crate::offline::AckArgs),
    /// Security events (auth.failure_burst, credential.new_network, token.created, …).
    SecurityEvents {
        /// Only this type.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Events per page (1–1000).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: Option<u32>,
        /// Start at this cursor.
        #[arg(long)]
        cursor: Option<String>,
    },
}

/// `datastack access-review …`
#[derive(clap::Subcommand, Debug)]
pub enum ReviewCmd {
    /// Revoke these credentials.
    Revoke {
        /// Credential ids (tok_…).
        #[arg(required = true, num_args = 1..=100)]
        ids: Vec<String>,
    },
    /// Narrow these credentials to the scopes they used in the window.
    Narrow {
        /// Credential ids (tok_…).
        #[arg(required = true, num_args = 1..=100)]
        ids: Vec<String>,
    },
}

/// The thresholds of an access review.
#[derive(clap::Args, Debug)]
pub struct ReviewArgs {
    /// Unused this many days → stale (default 30).
    #[arg(long, global = true, value_parser = clap::value_parser!(u32).range(1..=3650))]
    stale_days: Option<u32>,
    /// Older than this many days → rotation_due (default 90).
    #[arg(long, global = true, value_parser = clap::value_parser!(u32).range(1..=3650))]
    rotation_days: Option<u32>,
    /// The audit window that decides over_broad and narrowing, in days (default 30).
    #[arg(long, global = true, value_parser = clap::value_parser!(u32).range(1..=3650))]
    window_days: Option<u32>,
    /// Only credentials with this flag.
    #[arg(long, value_parser = ["stale", "rotation_due", "never_expires", "over_broad"])]
    flag: Option<String>,
    /// One page of this many credentials (1–200) instead of every page.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=200))]
    limit: Option<u32>,
    /// Start at this cursor (the `nextCursor` of a previous page); one page.
    #[arg(long)]
    cursor: Option<String>,
}

/// `datastack tokens …`
#[derive(clap::Subcommand, Debug)]
pub enum TokensCmd {
    /// Create a token. The secret is printed once, alone on stdout; details go to stderr.
    Create {
        /// A label to recognise the token by (1–200 characters).
        #[arg(long)]
        label: String,
        /// Lifetime in days (1–36500). Without a lifetime the token gets the workspace
        /// maximum, or never expires if there is none.
        #[arg(long, conflicts_with = "lifetime_seconds", value_parser = clap::value_parser!(u32).range(1..=36500))]
        expires_in_days: Option<u32>,
        /// Lifetime in seconds (1–3153600000).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3_153_600_000))]
        lifetime_seconds: Option<u64>,
        /// A scope to grant, e.g. read:jobs; repeat for more. Default: all-apis.
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// Admins only: create the token for this user or service principal (usr_…/sp_…),
        /// e.g. a new user's first token.
        #[arg(long, value_name = "ID")]
        owner: Option<String>,
    },
    /// List tokens (never their secrets).
    List {
        /// Admins only: the tokens of this principal id, or of everyone with `all`.
        #[arg(long, value_name = "ID|all")]
        owner: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Revoke a token; its next use gets 401.
    Revoke {
        /// The token id, tok_…
        id: String,
    },
}

/// `datastack users …`
#[derive(clap::Subcommand, Debug)]
pub enum UsersCmd {
    /// List users.
    List {
        /// Only users with this role: admin, editor or viewer.
        #[arg(long)]
        role: Option<Role>,
        /// Only users with this status: active or suspended.
        #[arg(long)]
        status: Option<Status>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one user.
    Get {
        /// The user id, usr_…
        id: String,
    },
    /// Create a user.
    Create {
        /// The email address, unique in the workspace.
        #[arg(long)]
        email: String,
        /// The display name.
        #[arg(long)]
        name: String,
        /// The role: admin, editor or viewer (default viewer).
        #[arg(long)]
        role: Option<Role>,
    },
    /// Change a user's name, role or status.
    Update {
        /// The user id, usr_…
        id: String,
        /// A new display name.
        #[arg(long)]
        name: Option<String>,
        /// A new role: admin, editor or viewer.
        #[arg(long)]
        role: Option<Role>,
        /// A new status: active or suspended.
        #[arg(long)]
        status: Option<Status>,
    },
    /// Suspend a user: every token of the user gets 401 at once.
    Suspend {
        /// The user id, usr_…
        id: String,
    },
    /// Activate a suspended user.
    Activate {
        /// The user id, usr_…
        id: String,
    },
    /// Delete a user and revoke its tokens.
    Delete {
        /// The user id, usr_…
        id: String,
    },
}

/// `datastack service-principals …`
#[derive(clap::Subcommand, Debug)]
pub enum ServicePrincipalsCmd {
    /// List service principals.
    List {
        /// Only service principals with this role: admin, editor or viewer.
        #[arg(long)]
        role: Option<Role>,
        /// Only service principals with this status: active or suspended.
        #[arg(long)]
        status: Option<Status>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one service principal.
    Get {
        /// The service principal id.
        id: String,
    },
    /// Create a service principal.
    Create {
        /// The name.
        #[arg(long)]
        name: String,
        /// The role: admin, editor or viewer (default viewer).
        #[arg(long)]
        role: Option<Role>,
    },
    /// Change a service principal's name, role or status.
    Update {
        /// The service principal id.
        id: String,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        /// A new role: admin, editor or viewer.
        #[arg(long)]
        role: Option<Role>,
        /// A new status: active or suspended.
        #[arg(long)]
        status: Option<Status>,
    },
    /// Suspend a service principal: its credentials get 401 at once.
    Suspend {
        /// The service principal id.
        id: String,
    },
    /// Activate a suspended service principal.
    Activate {
        /// The service principal id.
        id: String,
    },
    /// Delete a service principal and revoke its credentials.
    Delete {
        /// The service principal id.
        id: String,
    },
}

/// `datastack workspaces …`
#[derive(clap::Subcommand, Debug)]
pub enum WorkspacesCmd {
    /// List the caller's workspace and every workspace below it.
    List {
        /// Only the direct children of this workspace, ws_…
        #[arg(long, value_name = "ID")]
        parent: Option<String>,
        /// Only workspaces with this status of their own: active or suspended.
        #[arg(long)]
        status: Option<Status>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one workspace.
    Get {
        /// The workspace id, ws_…
        id: String,
    },
    /// Suspend a workspace below yours: every credential in it and below it is refused.
    Suspend {
        /// The workspace id, ws_…
        id: String,
    },
    /// Activate a suspended workspace.
    Activate {
        /// The workspace id, ws_…
        id: String,
    },
    /// Create a workspace and its first admin. The admin's token is printed once, alone on
    /// stdout; details go to stderr.
    Create {
        /// The name.
        #[arg(long)]
        name: String,
        /// The email of the first admin.
        #[arg(long)]
        admin_email: Option<String>,
        /// The first admin's name (default Administrator).
        #[arg(long)]
        admin_name: Option<String>,
        /// The longest lifetime a personal access token may have, in days.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        max_token_lifetime_days: Option<u32>,
        /// How long audit entries are kept, in days (default 365).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=36500))]
        audit_retention_days: Option<u32>,
        /// Revoke personal access tokens unused for this many days.
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=36500))]
        auto_revoke_unused_days: Option<u32>,
        /// Start with the enforcement of IP access lists suspended.
        #[arg(long)]
        suspend_ip_access_lists: bool,
        /// Let upstream services retain the workspace's data.
        #[arg(long)]
        data_retention_consent: bool,
    },
    /// Change a workspace's name or settings.
    Update {
        /// The workspace id, ws_…
        id: String,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        /// Set the longest lifetime a personal access token may have, in days.
        #[arg(long, conflicts_with = "clear_max_token_lifetime", value_parser = clap::value_parser!(u32).range(1..))]
        max_token_lifetime_days: Option<u32>,
        /// Remove the maximum token lifetime.
        #[arg(long)]
        clear_max_token_lifetime: bool,
        /// Keep audit entries this many days.
        #[arg(long, conflicts_with = "default_audit_retention", value_parser = clap::value_parser!(u32).range(1..=36500))]
        audit_retention_days: Option<u32>,
        /// Go back to the default audit retention (365 days).
        #[arg(long)]
        default_audit_retention: bool,
        /// Revoke personal access tokens unused for this many days.
        #[arg(long, conflicts_with = "no_auto_revoke", value_parser = clap::value_parser!(u32).range(1..=36500))]
        auto_revoke_unused_days: Option<u32>,
        /// Stop revoking unused tokens.
        #[arg(long)]
        no_auto_revoke: bool,
        /// Suspend the enforcement of the workspace's IP access lists.
        #[arg(long, conflicts_with = "resume_ip_access_lists")]
        suspend_ip_access_lists: bool,
        /// Enforce the workspace's IP access lists again.
        #[arg(long)]
        resume_ip_access_lists: bool,
        /// Let upstream services retain the workspace's data.
        #[arg(long, conflicts_with = "no_data_retention_consent")]
        data_retention_consent: bool,
        /// Withdraw that consent.
        #[arg(long)]
        no_data_retention_consent: bool,
    },
}

/// Paging flags shared by the list commands.
#[derive(clap::Args, Debug)]
pub struct PageArgs {
    /// Items per page (1–200; server default 50).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=200))]
    limit: Option<u32>,
    /// Start at this cursor (the `nextCursor` of a previous page).
    #[arg(long, conflicts_with = "all_pages")]
    cursor: Option<String>,
    /// Follow `nextCursor` until the last page and print everything.
    #[arg(long)]
    all_pages: bool,
}

/// Prints a JSON value as `--json` does.
pub(crate) fn print_value(value: &serde_json::Value) {
    output::print_json(value);
}

/// Prints text to stdout, ignoring a closed pipe.
pub(crate) fn print_text(text: &str) {
    output::write_stdout(text);
}

/// Prints one chain report (an offline verification's) as `audit verify` prints the
/// server's.
pub(crate) fn print_verify_report(report: serde_json::Value) {
    match serde_json::from_value::<datastack_sdk::ChainReport>(report) {
        Ok(report) => print_chain_report(&report, Output { json: false }),
        Err(e) => output::write_stdout(&format!("unreadable report: {e}\n")),
    }
}

/// Runs one client command against the server `conn` names and returns the exit code.
pub async fn run(cmd: ClientCommand) -> ExitCode {
    let conn = &cmd.conn().clone();
    // Getting an OAuth token needs the client's secret, not a credential of one's own.
    let needs_no_token = matches!(
        cmd,
        ClientCommand::Oauth {
            cmd: oauth::OauthCmd::Token { .. },
            ..
        }
    );
    let token = match conn.token.as_deref().map(str::trim) {
        Some(token) if !token.is_empty() => SecretString::from(token.to_owned()),
        _ if needs_no_token => SecretString::from("none".to_owned()),
        _ => {
            return report(
                &Failure::Usage(
                    "no credential: set DATASTACK_TOKEN to a personal access token (dapi…) or an API key (dkey…), or pass --token".into(),
                ),
                &conn.host,
                conn.json,
            );
        }
    };
    let client = match Client::new(&conn.host, token) {
        Ok(client) => client,
        Err(error) => return report(&Failure::Sdk(error), &conn.host, conn.json),
    };
    let out = Output { json: conn.json };
    let outcome = match cmd {
        ClientCommand::Tokens { cmd, .. } => tokens(cmd, &client, out).await,
        ClientCommand::ApiKeys { cmd, .. } => api_keys::api_keys(cmd, &client, out).await,
        ClientCommand::Webhooks { cmd, .. } => webhooks::webhooks(cmd, &client, out).await,
        ClientCommand::Events { cmd, .. } => webhooks::events(cmd, &client, out).await,
        ClientCommand::Oauth { cmd, .. } => oauth::oauth(cmd, &client, out).await,
        ClientCommand::Users { cmd, .. } => users(cmd, &client, out).await,
        ClientCommand::ServicePrincipals { cmd, .. } => service_principals(cmd, &client, out).await,
        ClientCommand::Workspaces { cmd, .. } => workspaces(cmd, &client, out).await,
        ClientCommand::Whoami { .. } => whoami(&client, out).await,
        ClientCommand::Audit { cmd, .. } => audit(cmd, &client, out).await,
        ClientCommand::AccessReview { cmd, query, .. } => {
            access_review(cmd, query, &client, out).await
        }
        ClientCommand::Gateway {
            cmd: GatewayCmd::Routes { cmd },
            ..
        } => routes(cmd, &client, out).await,
        ClientCommand::IpAccessLists { cmd, .. } => ip_lists(cmd, &client, out).await,
        ClientCommand::AbuseFlags { cmd, .. } => abuse_flags(cmd, &client, out).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => report(&failure, &conn.host, conn.json),
    }
}

/// Why a command failed.
enum Failure {
    /// The SDK call failed.
    Sdk(datastack_sdk::Error),
    /// The command line asks for something impossible that clap cannot express.
    Usage(String),
    /// The audit chain is broken (exit 3).
    ChainBroken,
    /// `api-keys verify` found the key not valid (exit 4).
    KeyNotValid,
}

impl From<datastack_sdk::Error> for Failure {
    fn from(error: datastack_sdk::Error) -> Self {
        Self::Sdk(error)
    }
}

/// Reports a failure on stderr, as `error: …` or, with `--json`, as the API's error shape
/// `{"error": {"code", "message", "requestId"?, "requiredScope"?}}`, and returns the exit
/// code: 1 a failed call, 2 a usage or configuration problem, 3 a broken audit chain, 4 a
/// key `api-keys verify` found not valid.
fn report(failure: &Failure, host: &str, json: bool) -> ExitCode {
    use datastack_sdk::Error;
    let (code, message, request_id, required, exit): (
        &str,
        String,
        Option<&str>,
        Option<&str>,
        u8,
    ) = match failure {
        Failure::Sdk(Error::Api {
            code,
            message,
            request_id,
            required_scope,
            ..
        }) => (
            code,
            in_cli_terms(message, required_scope.as_deref()),
            request_id.as_deref(),
            required_scope.as_deref(),
            1,
        ),
        Failure::Sdk(Error::Transport(error)) => {
            // reqwest keeps the useful part ("connection refused") in the source chain.
            let mut text = format!("cannot reach {host}: {error}");
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            ("UNREACHABLE", text, None, None, 1)
        }
        Failure::Sdk(Error::Config(message)) => ("USAGE", message.clone(), None, None, 2),
        Failure::Sdk(Error::Decode(message)) => (
            "UNEXPECTED_ANSWER",
            format!("unexpected answer from {host}: {message}"),
            None,
            None,
            1,
        ),
        Failure::Usage(message) => ("USAGE", message.clone(), None, None, 2),
        // The report and the verdict are already on stdout.
        Failure::ChainBroken => return ExitCode::from(3),
        Failure::KeyNotValid => return ExitCode::from(4),
    };
    if json {
        let mut error = serde_json::json!({ "code": code, "message": message });
        if let Some(id) = request_id {
            error["requestId"] = id.into();
        }
        if let Some(scope) = required {
            error["requiredScope"] = scope.into();
        }
        eprintln!("{}", serde_json::json!({ "error": error }));
    } else {
        let code = if matches!(code, "USAGE" | "UNREACHABLE" | "UNEXPECTED_ANSWER") {
            String::new()
        } else {
            format!("{code} ")
        };
        match request_id {
            Some(id) => eprintln!("error: {code}{message} (request {id})"),
            None => eprintln!("error: {code}{message}"),
        }
    }
    ExitCode::from(exit)
}

/// An API message rewritten in the CLI's terms: the CLI sends the scope header and query
/// parameters itself, so a message about them names the flag or the scope instead.
fn in_cli_terms(message: &str, required_scope: Option<&str>) -> String {
    let needed = required_scope.map_or_else(
        || "the scope this command needs".to_owned(),
        |s| format!("the scope {s}, which this command needs"),
    );
    if message.contains("x-datastack-scope") {
        return if message.contains("not granted") {
            format!("the credential does not hold {needed}")
        } else if message.contains("role does not hold") {
            format!("your role does not allow {needed}")
        } else {
            format!("the credential cannot act with {needed}")
        };
    }
    message.replace(
        "repeat with ?allowLockout=true",
        "repeat with --allow-lockout",
    )
}

fn route_spec(args: RouteArgs) -> Result<RouteSpec, Failure> {
    let mut method_scopes = std::collections::BTreeMap::new();
    for pair in args.method_scopes {
        let Some((method, scope)) = pair.split_once('=') else {
            return Err(Failure::Usage(format!(
                "--method-scope {pair:?}: expected METHOD=SCOPE, e.g. POST=read:jobs"
            )));
        };
        method_scopes.insert(method.trim().to_ascii_uppercase(), scope.trim().to_owned());
    }
    Ok(RouteSpec {
        path_prefix: args.path_prefix,
        upstream: args.upstream,
        resource: args.resource,
        strip_prefix: args.strip_prefix.then_some(true),
        timeout_ms: args.timeout_ms,
        price_per_request: args.price_per_request,
        cost_header: args.cost_header,
        forward_authorization: args.forward_authorization.then_some(true),
        method_scopes,
        allow_underscore_headers: args.allow_underscore_headers.then_some(true),
        allow_override_headers: args.allow_override_headers.then_some(true),
    })
}

async fn routes(cmd: RoutesCmd, client: &Client, out: Output) -> Result<(), Failure> {
    match cmd {
        RoutesCmd::List => {
            let routes = client.list_routes().await?;
            out.list(&routes, &[], route_table);
        }
        RoutesCmd::Get { id } => out.item(&client.get_route(&id).await?, route_table),
        RoutesCmd::Create { spec } => {
            let created = client.create_route(&route_spec(spec)?).await?;
            out.item(&created, route_table);
        }
        RoutesCmd::Replace { id, spec } => {
            let replaced = client.replace_route(&id, &route_spec(spec)?).await?;
            out.item(&replaced, route_table);
        }
        RoutesCmd::Delete { id } => {
            client.delete_route(&id).await?;
            out.done(&id, "deleted");
        }
    }
    Ok(())
}

async fn ip_lists(cmd: IpListsCmd, client: &Client, out: Output) -> Result<(), Failure> {
    match cmd {
        IpListsCmd::List => {
            let lists = client.list_ip_access_lists().await?;
            if lists.enforcement_suspended && !out.json {
                eprintln!("note: the workspace has suspended the enforcement of its lists");
            }
            out.list(
                &lists.items,
                &[(
                    "enforcementSuspended",
                    serde_json::Value::Bool(lists.enforcement_suspended),
                )],
                ip_list_table,
            );
        }
        IpListsCmd::Get { id } => out.item(&client.get_ip_access_list(&id).await?, ip_list_table),
        IpListsCmd::Replace { id, list } => {
            let (list, allow_lockout) = list.into_request();
            let replaced = client
                .replace_ip_access_list(&id, &list, allow_lockout)
                .await?;
            out.item(&replaced, ip_list_table);
        }
        IpListsCmd::Create { list } => {
            let (list, allow_lockout) = list.into_request();
            let created = client.create_ip_access_list(&list, allow_lockout).await?;
            out.item(&created, ip_list_table);
        }
        IpListsCmd::Update {
            id,
            label,
            list_type,
            addresses,
            enable,
            disable,
            allow_lockout,
        } => {
            let update = IpAccessListUpdate {
                label,
                list_type: list_type.map(|t| t.to_ascii_uppercase()),
                ip_addresses: (!addresses.is_empty()).then_some(addresses),
                enabled: if enable {
                    Some(true)
                } else if disable {
                    Some(false)
                } else {
                    None
                },
            };
            let updated = client
                .update_ip_access_list(&id, &update, allow_lockout)
                .await?;
            out.item(&updated, ip_list_table);
        }
        IpListsCmd::Delete { id, allow_lockout } => {
            client.delete_ip_access_list(&id, allow_lockout).await?;
            out.done(&id, "deleted");
        }
    }
    Ok(())
}

async fn abuse_flags(cmd: AbuseCmd, client: &Client, out: Output) -> Result<(), Failure> {
    match cmd {
        AbuseCmd::List { all, limit } => {
            let flags = client.list_abuse_flags(all, limit).await?;
            out.list(&flags, &[], abuse_table);
        }
        AbuseCmd::Clear { id } => {
            let flag = client.clear_abuse_flag(&id).await?;
            out.item(&flag, abuse_table);
        }
    }
    Ok(())
}

async fn tokens(cmd: TokensCmd, client: &Client, out: Output) -> Result<(), Failure> {
    match cmd {
        TokensCmd::Create {
            label,
            expires_in_days,
            lifetime_seconds,
            owner,
            scopes,
        } => {
            let lifetime = match (expires_in_days, lifetime_seconds) {
                (Some(days), _) => Some(TokenLifetime::Days(days)),
                (None, Some(seconds)) => Some(TokenLifetime::Seconds(seconds)),
                (None, None) => None,
            };
            let request = CreateToken {
                label,
                lifetime,
                scopes: (!scopes.is_empty()).then_some(scopes),
                owner_id: owner,
            };
            let created = client.create_token(request).await?;
            print_created_token(&created, out);
        }
        TokensCmd::List { owner, page } => {
            let show_owner = owner.is_some();
            let limit = page.limit;
            let tokens = collect_pages(&page, move |cursor| {
                client.list_tokens(ListTokens {
                    limit,
                    cursor,
                    owner_id: owner.clone(),
                })
            })
            .await?;
            out.page(&tokens, |tokens| token_table(tokens, show_owner));
        }
        TokensCmd::Revoke { id } => {
            client.revoke_token(&id).await?;
            out.done(&id, "revoked");
        }
    }
    Ok(())
}

async fn users(cmd: UsersCmd, client: &Client, out: Output) -> Result<(), Failure> {
    match cmd {
        UsersCmd::List { role, status, page } => {
            let limit = page.limit;
            let users = collect_pages(&page, move |cursor| {
                client.list_users(ListUsers {
                    limit,
                    cursor,
                    role,
                    status,
                })
            })
            .await?;
            out.page(&users, user_table);
        }
        UsersCmd::Get { id } => out.one(&client.get_user(&id).await?, user_fields),
        UsersCmd::Create { email, name, role } => {
            let user = client.create_user(CreateUser { email, name, role }).await?;
            out.one(&user, user_fields);
        }
        UsersCmd::Update {
            id,
            name,
            role,
            status,
        } => {
            if name.is_none() && role.is_none() && status.is_none() {
                return Err(nothing_to_update("--name, --role or --status"));
            }
            let user = client
                .update_user(&id, UpdateUser { name, role, status })
                .await?;
            out.one(&user, user_fields);
        }
        UsersCmd::Suspend { id } => out.one(&client.suspend_user(&id).await?, user_fields),
        UsersCmd::Activate { id } => out.one(&client.activate_user(&id).await?, user_fields),
        UsersCmd::Delete { id } => {
            client.delete_user(&id).await?;
            out.done(&id, "deleted");
        }
    }
    Ok(())
}

async fn service_principals(
    cmd: ServicePrincipalsCmd,
    client: &Client,
    out: Output,
) -> Result<(), Failure> {
    match cmd {
        ServicePrincipalsCmd::List { role, status, page } => {
            let limit = page.limit;
            let principals = collect_pages(&page, move |cursor| {
                client.list_service_principals(ListServicePrincipals {
                    limit,
                    cursor,
                    role,
                    status,
                })
            })
            .await?;
            out.page(&principals, service_principal_table);
        }
        ServicePrincipalsCmd::Get { id } => {
            let principal = client.get_service_principal(&id).await?;
            out.one(&principal, service_principal_fields);
        }
        ServicePrincipalsCmd::Create { name, role } => {
            let principal = client
                .create_service_principal(CreateServicePrincipal { name, role })
                .await?;
            out.one(&principal, service_principal_fields);
        }
        ServicePrincipalsCmd::Update {
            id,
            name,
            role,
            status,
        } => {
            if name.is_none() && role.is_none() && status.is_none() {
                return Err(nothing_to_update("--name, --role or --status"));
            }
            let request = UpdateServicePrincipal { name, role, status };
            let principal = client.update_service_principal(&id, request).await?;
            out.one(&principal, service_principal_fields);
        }
        ServicePrincipalsCmd::Suspend { id } => {
            let principal = client.suspend_service_principal(&id).await?;
            out.one(&principal, service_principal_fields);
        }
        ServicePrincipalsCmd::Activate { id } => {
            let principal = client.activate_service_principal(&id).await?;
            out.one(&principal, service_principal_fields);
        }
        ServicePrincipalsCmd::Delete { id } => {
            client.delete_service_principal(&id).await?;
            out.done(&id, "deleted");
        }
    }
    Ok(())
}

async fn workspaces(cmd: WorkspacesCmd, client: &Client, out: Output) -> Result<(), Failure> {
    match cmd {
        WorkspacesCmd::List {
            parent,
            status,
            page,
        } => {
            let limit = page.limit;
            let workspaces = collect_pages(&page, move |cursor| {
                client.list_workspaces(ListWorkspaces {
                    limit,
                    cursor,
                    parent_id: parent.clone(),
                    status,
                })
            })
            .await?;
            out.page(&workspaces, workspace_table);
        }
        WorkspacesCmd::Get { id } => out.one(&client.get_workspace(&id).await?, workspace_fields),
        WorkspacesCmd::Suspend { id } => {
            out.one(&client.suspend_workspace(&id).await?, workspace_fields)
        }
        WorkspacesCmd::Activate { id } => {
            out.one(&client.activate_workspace(&id).await?, workspace_fields)
        }
        WorkspacesCmd::Create {
            name,
            admin_email,
            admin_name,
            max_token_lifetime_days,
            audit_retention_days,
            auto_revoke_unused_days,
            suspend_ip_access_lists,
            data_retention_consent,
        } => {
            let settings = WorkspaceSettings {
                max_token_lifetime_days,
                audit_retention_days,
                auto_revoke_unused_days,
                ip_access_lists_suspended: suspend_ip_access_lists.then_some(true),
                data_retention_consent: data_retention_consent.then_some(true),
            };
            let request = CreateWorkspace {
                name,
                admin_email,
                admin_name,
                settings: (settings != WorkspaceSettings::default()).then_some(settings),
            };
            let created = client.create_workspace(request).await?;
            print_created_workspace(&created, out);
        }
        WorkspacesCmd::Update {
            id,
            name,
            max_token_lifetime_days,
            clear_max_token_lifetime,
            audit_retention_days,
            default_audit_retention,
            auto_revoke_unused_days,
            no_auto_revoke,
            suspend_ip_access_lists,
            resume_ip_access_lists,
            data_retention_consent,
            no_data_retention_consent,
        } => {
            // A value sets, the clearing flag sends null, neither keeps.
            let change = |value: Option<u32>, clear: bool| match (value, clear) {
                (Some(v), _) => Some(Some(v)),
                (None, true) => Some(None),
                (None, false) => None,
            };
            let switch = |on: bool, off: bool| (on || off).then_some(on);
            let settings = WorkspaceSettingsUpdate {
                max_token_lifetime_days: change(max_token_lifetime_days, clear_max_token_lifetime),
                audit_retention_days: change(audit_retention_days, default_audit_retention),
                auto_revoke_unused_days: change(auto_revoke_unused_days, no_auto_revoke),
                ip_access_lists_suspended: switch(suspend_ip_access_lists, resume_ip_access_lists),
                data_retention_consent: switch(data_retention_consent, no_data_retention_consent),
            };
            let settings = (settings != WorkspaceSettingsUpdate::default()).then_some(settings);
            if name.is_none() && settings.is_none() {
                return Err(nothing_to_update(
                    "--name or a setting (see datastack workspaces update --help)",
                ));
            }
            let request = UpdateWorkspace { name, settings };
            let workspace = client.update_workspace(&id, request).await?;
            out.one(&workspace, workspace_fields);
        }
    }
    Ok(())
}

async fn audit(cmd: AuditCmd, client: &Client, out: Output) -> Result<(), Failure> {
    match cmd {
        AuditCmd::Query {
            since,
            until,
            principal,
            credential,
            action,
            resource_type,
            resource,
            outcome,
            ip,
            request_id,
            limit,
            cursor,
            all_pages,
        } => {
            let paging = PageArgs {
                limit: None,
                cursor,
                all_pages,
            };
            let page = collect_pages(&paging, |cursor| {
                client.audit_events(AuditQuery {
                    since,
                    until,
                    principal_id: principal.clone(),
                    credential_id: credential.clone(),
                    action: action.clone(),
                    resource_type: resource_type.clone(),
                    resource_id: resource.clone(),
                    outcome: outcome.clone(),
                    source_ip: ip.clone(),
                    request_id: request_id.clone(),
                    limit,
                    cursor,
                })
            })
            .await?;
            out.page(&page, audit_table);
        }
        AuditCmd::Export {
            since,
            until,
            output,
        } => {
            let written = match output {
                Some(path) => {
                    let mut file = std::fs::File::create(&path).map_err(|e| {
                        Failure::Usage(format!("cannot create {}: {e}", path.display()))
                    })?;
                    client.audit_export(since, until, &mut file).await?
                }
                None => {
                    let mut stdout = std::io::stdout();
                    client.audit_export(since, until, &mut stdout).await?
                }
            };
            eprintln!("exported {written} bytes");
        }
        AuditCmd::Verify(args) => {
            if args.store.is_set() || args.workspace.is_some() {
                return Err(Failure::Usage(
                    "--workspace, --config, --data-dir and --database-url read the store: they need --offline"
                        .into(),
                ));
            }
            let report = client.audit_verify().await?;
            print_chain_report(&report, out);
            if !report.ok {
                return Err(Failure::ChainBroken);
            }
        }
        // Run by main without a server; never reached here.
        AuditCmd::AcknowledgeBreak(_) => {
            return Err(Failure::Usage(
                "acknowledge-break reads the store directly".into(),
            ));
        }
        AuditCmd::SecurityEvents {
            event_type,
            limit,
            cursor,
        } => {
            let page = client.security_events(event_type, limit, cursor).await?;
            out.page(&page, security_event_table);
        }
    }
    Ok(())
}

async fn access_review(
    cmd: Option<ReviewCmd>,
    query: ReviewArgs,
    client: &Client,
    out: Output,
) -> Result<(), Failure> {
    match cmd {
        None => {
            // Every page, unless a page size or a cursor asks for one.
            let one_page = query.limit.is_some() || query.cursor.is_some();
            let paging = PageArgs {
                limit: None,
                cursor: query.cursor.clone(),
                all_pages: !one_page,
            };
            let page = collect_pages(&paging, |cursor| {
                client.access_review(ReviewQuery {
                    stale_days: query.stale_days,
                    rotation_days: query.rotation_days,
                    window_days: query.window_days,
                    flag: query.flag.clone(),
                    limit: Some(query.limit.unwrap_or(200)),
                    cursor,
                })
            })
            .await?;
            out.page(&page, review_table);
        }
        Some(ReviewCmd::Revoke { ids }) => {
            let result = client.access_review_revoke(&ids).await?;
            print_bulk(&result, "revoked", out);
        }
        Some(ReviewCmd::Narrow { ids }) => {
            let result = client.access_review_narrow(&ids, query.window_days).await?;
            print_bulk(&result, "narrowed", out);
        }
    }
    Ok(())
}

async fn whoami(client: &Client, out: Output) -> Result<(), Failure> {
    let me = client.me().await?;
    out.one(&me, me_fields);
    Ok(())
}

fn nothing_to_update(flags: &str) -> Failure {
    Failure::Usage(format!("nothing to update: pass at least one of {flags}"))
}

/// Fetches the page the flags ask for, or every page from the first with `--all-pages`.
async fn collect_pages<T, F, Fut>(page: &PageArgs, mut fetch: F) -> Result<Page<T>, Failure>
where
    F: FnMut(Option<String>) -> Fut,
    Fut: Future<Output = datastack_sdk::Result<Page<T>>>,
{
    let first = fetch(page.cursor.clone()).await?;
    if !page.all_pages {
        return Ok(first);
    }
    let mut items = first.items;
    let mut next = first.next_cursor;
    while let Some(cursor) = next {
        let more = fetch(Some(cursor)).await?;
        items.extend(more.items);
        next = more.next_cursor;
    }
    Ok(Page {
        items,
        next_cursor: None,
    })
}
