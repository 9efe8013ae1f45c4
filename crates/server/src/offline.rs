//! Audit operations on the store itself, without a running server: the offline verifier
//! auditors run on a copy of the store (`datastack audit verify --offline`), and the
//! acknowledgement of a recorded chain break by an operator
//! (`datastack audit acknowledge-break`). Both use the same settings as `serve`.

use std::collections::{BTreeSet, HashMap};
use std::io::BufRead;
use std::path::Path;
use std::sync::Arc;

use datastack_core::audit_breaks::{AnchoredHead, MAX_ACK_TEXT, RecordedBreak};
use datastack_core::id::WorkspaceId;
use datastack_store::{HeadDiscrepancy, Store};
use serde::Serialize;

use crate::api::audit::{VerifyResponse, verify_response};
use crate::app::{load_audit_key, store_config};
use crate::config::Config;

/// Why an offline operation could not run (as opposed to finding the chain broken).
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    /// The store could not be opened or read.
    #[error(transparent)]
    Store(#[from] datastack_store::Error),
    /// The audit key, the heads file or an argument is wrong.
    #[error("{0}")]
    Invalid(String),
}

/// What an offline verification found.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct OfflineVerification {
    /// Whether every chain verified and the heads file (if any) showed no tampering.
    pub ok: bool,
    /// One report per workspace, as `GET /api/v1/audit/verify` answers it.
    pub reports: Vec<VerifyResponse>,
    /// The check against the heads file, when one was given.
    pub heads: Option<HeadsCheck>,
}

/// The store checked against a heads file.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeadsCheck {
    /// The file.
    pub file: String,
    /// Its lines.
    pub lines: usize,
    /// The lines the store contradicts.
    pub discrepancies: Vec<HeadDiscrepancy>,
}

/// A heads file as read: its number of lines, and its numbered lines (parsed, or why not).
type HeadLines = (usize, Vec<(usize, Result<AnchoredHead, String>)>);

/// Opens the store read-only with the audit key of `config` (never created here).
async fn open_read_only(config: &Config) -> Result<Store, OfflineError> {
    let key = load_audit_key(config, false).map_err(|e| OfflineError::Invalid(e.to_string()))?;
    let store = Store::open_read_only(&store_config(config))
        .await?
        .with_audit_key(Arc::new(key));
    store.check_audit_key_read_only().await?;
    Ok(store)
}

/// Verifies the chains of the store `config` names without a server and without writing
/// to it: every workspace's, or `workspace`'s only; and, with `heads_file`, checks the
/// store against every head anchored in it.
pub async fn verify(
    config: &Config,
    workspace: Option<&str>,
    heads_file: Option<&Path>,
) -> Result<OfflineVerification, OfflineError> {
    let only = workspace
        .map(WorkspaceId::parse)
        .transpose()
        .map_err(|e| OfflineError::Invalid(format!("--workspace {e}")))?;
    let heads = match heads_file {
        Some(path) => {
            let path = path.to_owned();
            let read = tokio::task::spawn_blocking(move || read_heads(&path))
                .await
                .map_err(|e| OfflineError::Invalid(format!("reading the heads file: {e}")))?;
            Some(read.map_err(|e| {
                OfflineError::Invalid(format!(
                    "cannot read the heads file {}: {e}",
                    heads_file
                        .map(Path::display)
                        .map(|d| d.to_string())
                        .unwrap_or_default()
                ))
            })?)
        }
        None => None,
    };
    let store = open_read_only(config).await?;
    let result = verify_store(&store, only, heads, heads_file).await;
    store.close().await;
    result
}

async fn verify_store(
    store: &Store,
    only: Option<WorkspaceId>,
    heads: Option<HeadLines>,
    heads_file: Option<&Path>,
) -> Result<OfflineVerification, OfflineError> {
    // Every chain the store knows of, including one whose workspace row is gone, and every
    // one the heads file names.
    let mut workspaces: BTreeSet<String> = BTreeSet::new();
    match &only {
        Some(ws) => {
            workspaces.insert(ws.to_string());
        }
        None => {
            for p in store.workspace_policies().await? {
                workspaces.insert(p.id.to_string());
            }
            for (ws, _) in store.signed_heads().await? {
                workspaces.insert(ws.to_string());
            }
            for (_, h) in heads.iter().flat_map(|(_, lines)| lines) {
                if let Ok(h) = h {
                    workspaces.insert(h.workspace_id.clone());
                }
            }
        }
    }
    let mut reports = Vec::new();
    let mut breaks: HashMap<String, Vec<RecordedBreak>> = HashMap::new();
    for ws in workspaces {
        let ws = WorkspaceId::from_trusted(ws);
        let report = store.verify_audit_chain(&ws).await?;
        breaks.insert(ws.to_string(), report.breaks.clone());
        reports.push(verify_response(&ws, report));
    }
    let heads = match heads {
        Some((lines, mut anchored)) => {
            if let Some(ws) = &only {
                anchored
                    .retain(|(_, h)| h.as_ref().map_or(true, |h| h.workspace_id == ws.as_str()));
            }
            let discrepancies = store.check_anchored_heads(&anchored, &breaks).await?;
            Some(HeadsCheck {
                file: heads_file
                    .map(|p| p.display().to_string())
                    .unwrap_or_default(),
                lines,
                discrepancies,
            })
        }
        None => None,
    };
    let ok = reports.iter().all(|r| r.ok)
        && heads
            .as_ref()
            .is_none_or(|h| !h.discrepancies.iter().any(HeadDiscrepancy::is_tampering));
    Ok(OfflineVerification { ok, reports, heads })
}

/// Reads a heads file: its number of lines, and its lines with their numbers, where a line
/// repeating the previous head of its chain is skipped (most passes change nothing).
#[allow(clippy::type_complexity)]
fn read_heads(path: &Path) -> std::io::Result<(usize, Vec<(usize, Result<AnchoredHead, String>)>)> {
    let file = std::fs::File::open(path)?;
    let mut last: HashMap<String, (i64, String)> = HashMap::new();
    let mut out = Vec::new();
    let mut count = 0;
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line?;
        count = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        match AnchoredHead::parse_line(&line) {
            Ok(h) => {
                let id = (h.seq, h.hash.clone());
                if last.get(&h.workspace_id) == Some(&id) {
                    continue;
                }
                last.insert(h.workspace_id.clone(), id);
                out.push((i + 1, Ok(h)));
            }
            Err(e) => out.push((i + 1, Err(e))),
        }
    }
    Ok((count, out))
}

/// An operator acknowledges the break recorded by the marker entry `break_id` in
/// `workspace`'s chain, as `by`, because of `reason`: the acknowledgement is itself an
/// audit entry and a security event. Returns the break.
pub async fn acknowledge_break(
    config: &Config,
    workspace: &str,
    break_id: &str,
    by: &str,
    reason: &str,
) -> Result<RecordedBreak, OfflineError> {
    let workspace = WorkspaceId::parse(workspace)
        .map_err(|e| OfflineError::Invalid(format!("--workspace {e}")))?;
    for (name, text) in [("--by", by), ("--reason", reason)] {
        let text = text.trim();
        if text.is_empty() || text.chars().count() > MAX_ACK_TEXT {
            return Err(OfflineError::Invalid(format!(
                "{name} must be 1 to {MAX_ACK_TEXT} characters"
            )));
        }
        if text.chars().any(char::is_control) {
            return Err(OfflineError::Invalid(format!(
                "{name} must not contain control characters"
            )));
        }
    }
    if !break_id.starts_with("aud_") || break_id.len() > 64 {
        return Err(OfflineError::Invalid(
            "--break must be the id (aud_…) of an audit.chain_break entry, as audit verify lists it"
                .into(),
        ));
    }
    let key = load_audit_key(config, false).map_err(|e| OfflineError::Invalid(e.to_string()))?;
    let store = Store::open(&store_config(config))
        .await?
        .with_audit_key(Arc::new(key));
    let result = async {
        store.check_audit_key().await?;
        store
            .acknowledge_chain_break(&workspace, break_id, by.trim(), reason.trim())
            .await
    }
    .await;
    store.close().await;
    result.map_err(|e| match e {
        datastack_store::Error::NotFound => OfflineError::Invalid(format!(
            "the chain of {workspace} records no break {break_id} in its intact part (audit verify lists the recorded breaks, and where the chain is broken otherwise)"
        )),
        datastack_store::Error::Conflict(m) => OfflineError::Invalid(m),
        other => other.into(),
    })
}
