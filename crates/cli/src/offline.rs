//! `datastack audit verify --offline [--heads FILE]` and `datastack audit
//! acknowledge-break`: audit commands that read the store directly, with the settings of
//! `serve`, and need no running server.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use datastack_server::{Config, ConfigLayer};

/// The store's settings, as `serve` takes them (also from `DATASTACK_*` and the file).
#[derive(Args, Debug, Clone)]
pub struct StoreArgs {
    /// The configuration file (default: ./datastack.toml if it exists).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Directory of the embedded SQLite store (and, by default, of the audit key).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// PostgreSQL URL; when set, the store is PostgreSQL.
    #[arg(long)]
    database_url: Option<String>,
}

impl StoreArgs {
    /// Whether any store setting was given (they only mean something offline).
    pub fn is_set(&self) -> bool {
        self.config.is_some() || self.data_dir.is_some() || self.database_url.is_some()
    }

    fn load(&self) -> Result<Config, datastack_server::ConfigError> {
        let flags = ConfigLayer {
            data_dir: self.data_dir.clone(),
            database_url: self.database_url.clone(),
            ..ConfigLayer::default()
        };
        ConfigLayer::from_file(self.config.as_deref())?
            .merge(ConfigLayer::from_env(std::env::vars())?)
            .merge(flags)
            .build()
    }
}

/// `datastack audit verify` options.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Read the store directly instead of asking a server: every workspace's chain (or
    /// --workspace's), with the store settings and the audit key of `serve`. Never writes.
    #[arg(long)]
    pub offline: bool,
    /// Also check the store against every signed head in this heads file (the
    /// audit-heads.jsonl the maintenance passes append to). This reads the store directly:
    /// it implies --offline.
    #[arg(long, value_name = "FILE")]
    pub heads: Option<PathBuf>,
    /// Only this workspace's chain (offline; online, the caller's workspace is verified).
    #[arg(long, value_name = "ws_…")]
    pub workspace: Option<String>,
    #[command(flatten)]
    pub store: StoreArgs,
}

impl VerifyArgs {
    /// Whether the verification reads the store rather than asking a server.
    pub fn reads_store(&self) -> bool {
        self.offline || self.heads.is_some()
    }
}

/// `datastack audit acknowledge-break` options.
#[derive(Args, Debug)]
pub struct AckArgs {
    /// The workspace whose chain records the break.
    #[arg(long, value_name = "ws_…")]
    pub workspace: String,
    /// The break: the id of its audit.chain_break entry, as `audit verify` lists it.
    #[arg(long = "break", value_name = "aud_…")]
    pub break_id: String,
    /// Who acknowledges it (recorded in the entry), e.g. a name or an email.
    #[arg(long)]
    pub by: String,
    /// Why: what was lost and what was done about it (recorded in the entry).
    #[arg(long)]
    pub reason: String,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Verifies without a server. Exits 0 when every chain is intact and the heads file shows
/// no tampering, 3 when something is broken, 1 when the store cannot be read, 2 on a
/// configuration error.
pub async fn verify(args: VerifyArgs, json: bool) -> ExitCode {
    let config = match args.store.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let result = datastack_server::offline::verify(
        &config,
        args.workspace.as_deref(),
        args.heads.as_deref(),
    )
    .await;
    let verification = match result {
        Ok(v) => v,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let value = serde_json::to_value(&verification).unwrap_or(serde_json::Value::Null);
    if json {
        crate::client::print_value(&value);
    } else {
        for report in value["reports"].as_array().into_iter().flatten() {
            crate::client::print_verify_report(report.clone());
            crate::client::print_text("\n");
        }
        let mut text = String::new();
        if let Some(heads) = value["heads"].as_object() {
            let lines = heads.get("lines").cloned().unwrap_or_default();
            let file = heads.get("file").and_then(|f| f.as_str()).unwrap_or("-");
            let found = heads
                .get("discrepancies")
                .and_then(|d| d.as_array())
                .cloned()
                .unwrap_or_default();
            text.push_str(&format!(
                "heads file {file}: {lines} lines, {} discrepancies\n",
                found.len()
            ));
            for d in found {
                let note = match (d["explainedBy"].as_str(), d["acknowledged"].as_bool()) {
                    (Some(b), Some(true)) => format!(" (acknowledged break {b})"),
                    (Some(b), _) => format!(" (recorded break {b}, NOT acknowledged)"),
                    _ => String::new(),
                };
                text.push_str(&format!(
                    "  {}: {}{note}\n",
                    d["problem"].as_str().unwrap_or("-"),
                    d["message"].as_str().unwrap_or("-")
                ));
            }
        }
        text.push_str(&format!("all intact  {}\n", verification.ok));
        crate::client::print_text(&text);
    }
    if verification.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(3)
    }
}

/// Acknowledges a recorded break. Exits 0 when recorded, 1 when it cannot be (no such
/// break, already acknowledged, the store unreadable), 2 on a configuration error.
pub async fn acknowledge(args: AckArgs) -> ExitCode {
    let config = match args.store.load() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match datastack_server::offline::acknowledge_break(
        &config,
        &args.workspace,
        &args.break_id,
        &args.by,
        &args.reason,
    )
    .await
    {
        Ok(b) => {
            crate::client::print_text(&format!(
                "acknowledged {} ({} at seq {}, resumed after seq {})\n",
                b.id, b.reason, b.seq, b.resumed_after_seq
            ));
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}
