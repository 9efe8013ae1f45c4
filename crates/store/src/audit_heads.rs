//! Chain heads beyond the walk: the signed heads anchored outside the database and checked
//! against the store, the breaks a node records in a chain and an operator acknowledges,
//! and a read-only way to open the store for auditors.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use chrono::Utc;
use datastack_core::audit::{Head, SecurityEvent};
use datastack_core::audit_breaks::{
    ACK_ACTION, AnchoredHead, BREAK_ACTION, BreakLog, RecordedBreak, ack_record, break_record,
};
use datastack_core::id::WorkspaceId;
use serde::Serialize;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqlitePoolOptions};

use crate::audit::{ENTRY_COLUMNS, EntryRow, HeadRow, append_audit, insert_events};
use crate::{Db, Error, Result, Store, StoreConfig, with_pool};

/// What the store holds at an anchored head's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HeadCheck {
    /// The entry at that position has that hash: the chain still contains the head.
    Matches,
    /// The position was purged by retention (before the checkpoint): nothing to compare.
    Purged,
    /// The chain has no entry at that position: it was cut back below the head.
    Missing,
    /// The entry at that position has another hash: the chain was rewritten.
    Rewritten,
    /// The line's signature is not one the audit key made: the file was edited.
    SignatureInvalid,
    /// The line is not an anchored head.
    Unreadable,
}

/// One line of a heads file that the store contradicts.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeadDiscrepancy {
    /// The line number in the file, from 1.
    pub line: usize,
    /// The workspace the line names.
    pub workspace_id: Option<String>,
    /// The anchored sequence number.
    pub seq: Option<i64>,
    /// What is wrong.
    pub problem: HeadCheck,
    /// The same, for people.
    pub message: String,
    /// The break recorded in the chain that accounts for it, when one does.
    pub explained_by: Option<String>,
    /// Whether that break was acknowledged by an operator: then the discrepancy is known
    /// history, not tampering.
    pub acknowledged: bool,
}

impl HeadDiscrepancy {
    /// Whether it shows tampering no operator has acknowledged.
    pub fn is_tampering(&self) -> bool {
        !self.acknowledged
    }
}

impl Store {
    /// Opens the store without ever writing to it: SQLite read-only, PostgreSQL in
    /// read-only transactions. Nothing is migrated; the store must exist.
    pub async fn open_read_only(config: &StoreConfig) -> Result<Self> {
        match config {
            StoreConfig::Sqlite { dir } => {
                let file = dir.join("datastack.db");
                if !Path::new(&file).exists() {
                    return Err(Error::Database(sqlx::Error::Configuration(
                        format!("there is no store in {}", dir.display()).into(),
                    )));
                }
                let options = SqliteConnectOptions::new()
                    .filename(file)
                    .read_only(true)
                    .busy_timeout(Duration::from_secs(10));
                let pool = SqlitePoolOptions::new()
                    .max_connections(2)
                    .connect_with(options)
                    .await?;
                Ok(Self {
                    db: Db::Sqlite(pool),
                    channel: String::new(),
                    pg_url: None,
                    audit_key: None,
                })
            }
            StoreConfig::Postgres { url, .. } => {
                // Every transaction of these connections is read-only, so even a bug could
                // not write.
                let options = PgConnectOptions::from_str(url)?.options([
                    ("default_transaction_read_only", "on"),
                    ("client_min_messages", "warning"),
                ]);
                let pool = PgPoolOptions::new()
                    .max_connections(2)
                    .acquire_timeout(Duration::from_secs(10))
                    .connect_with(options)
                    .await?;
                Ok(Self {
                    db: Db::Postgres(pool),
                    channel: String::new(),
                    pg_url: Some(url.clone()),
                    audit_key: None,
                })
            }
        }
    }

    /// Refuses an audit key other than the one the store's chains were written with,
    /// without writing anything (a store that never recorded a key accepts any).
    pub async fn check_audit_key_read_only(&self) -> Result<()> {
        let fingerprint = self.audit_key()?.fingerprint();
        let stored: Option<String> = with_pool!(self, pool => {
            sqlx::query_scalar("SELECT fingerprint FROM audit_key WHERE id = 1")
                .fetch_optional(pool)
                .await?
        });
        match stored {
            Some(stored) if stored != fingerprint => Err(Error::AuditKeyMismatch {
                stored,
                configured: fingerprint,
            }),
            _ => Ok(()),
        }
    }

    /// Every workspace's signed chain head whose signature the audit key made, in
    /// workspace order (a forged head is the verifier's to report, not to anchor).
    pub async fn signed_heads(&self) -> Result<Vec<(WorkspaceId, Head)>> {
        let key = self.audit_key()?;
        let rows: Vec<(String, i64, String, String)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT workspace_id, seq, hash, signature FROM audit_heads ORDER BY workspace_id",
            )
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|(ws, seq, hash, signature)| {
                (
                    WorkspaceId::from_trusted(ws),
                    Head {
                        seq,
                        hash,
                        signature,
                    },
                )
            })
            .filter(|(ws, head)| key.head_is_intact(ws, head))
            .collect())
    }

    /// What the store holds at position `seq` of `workspace`'s chain, against `hash`.
    pub async fn check_head(
        &self,
        workspace: &WorkspaceId,
        seq: i64,
        hash: &str,
    ) -> Result<HeadCheck> {
        if seq == 0 {
            return Ok(HeadCheck::Matches);
        }
        let (entry, checkpoint) = with_pool!(self, pool => {
            let entry: Option<String> = sqlx::query_scalar(
                "SELECT hash FROM audit_entries WHERE workspace_id = $1 AND seq = $2",
            )
            .bind(workspace.as_str())
            .bind(seq)
            .fetch_optional(pool)
            .await?;
            let checkpoint: Option<crate::audit::CheckpointRow> = sqlx::query_as(
                "SELECT workspace_id, seq, hash, purged_before, signature FROM audit_checkpoints \
                 WHERE workspace_id = $1",
            )
            .bind(workspace.as_str())
            .fetch_optional(pool)
            .await?;
            (entry, checkpoint)
        });
        // A checkpoint written without the audit key purged nothing: it must not excuse a
        // missing head as purged.
        let key = self.audit_key()?;
        let checkpoint = checkpoint
            .map(crate::audit::CheckpointRow::into_domain)
            .filter(|c| key.checkpoint_is_intact(c))
            .map(|c| (c.seq, c.hash));
        // Hashes are public values; comparing them in plain time gives nothing away.
        Ok(match (entry, checkpoint) {
            (Some(h), _) if h == hash => HeadCheck::Matches,
            (Some(_), _) => HeadCheck::Rewritten,
            (None, Some((cp, h))) if cp == seq => {
                if h == hash {
                    HeadCheck::Matches
                } else {
                    HeadCheck::Rewritten
                }
            }
            (None, Some((cp, _))) if seq < cp => HeadCheck::Purged,
            (None, _) => HeadCheck::Missing,
        })
    }

    /// Checks anchored heads (numbered lines of a heads file, or a node's own memory of
    /// them) against the store: each must be signed with the audit key, and the chain must
    /// still hold an entry with that hash at that position. `breaks` are the breaks
    /// recorded in each workspace's chain (by workspace id): a recorded break accounts for
    /// the discrepancies of heads anchored before it was found (the chain lost or rewrote
    /// its past at that break), and they are no tampering once it is acknowledged; a head
    /// anchored after the last break must match. Returns the discrepancies.
    pub async fn check_anchored_heads(
        &self,
        heads: &[(usize, Result<AnchoredHead, String>)],
        breaks: &HashMap<String, Vec<RecordedBreak>>,
    ) -> Result<Vec<HeadDiscrepancy>> {
        let key = self.audit_key()?;
        let mut seen: HashMap<(String, i64, String), HeadCheck> = HashMap::new();
        let mut out = Vec::new();
        for (line, head) in heads {
            let head = match head {
                Ok(h) => h,
                Err(message) => {
                    out.push(HeadDiscrepancy {
                        line: *line,
                        workspace_id: None,
                        seq: None,
                        problem: HeadCheck::Unreadable,
                        message: format!("line {line} is not an anchored head: {message}"),
                        explained_by: None,
                        acknowledged: false,
                    });
                    continue;
                }
            };
            let check = if !head.is_signed_by(key) {
                HeadCheck::SignatureInvalid
            } else {
                let id = (head.workspace_id.clone(), head.seq, head.hash.clone());
                match seen.get(&id) {
                    Some(c) => *c,
                    None => {
                        let ws = WorkspaceId::from_trusted(head.workspace_id.clone());
                        let c = self.check_head(&ws, head.seq, &head.hash).await?;
                        seen.insert(id, c);
                        c
                    }
                }
            };
            if matches!(check, HeadCheck::Matches | HeadCheck::Purged) {
                continue;
            }
            let explained = (check != HeadCheck::SignatureInvalid)
                .then(|| breaks.get(&head.workspace_id))
                .flatten()
                .and_then(|list| list.iter().find(|b| b.accounts_for(head.seq)));
            let what = match check {
                HeadCheck::Missing => "the chain no longer reaches it (truncated)",
                HeadCheck::Rewritten => "the chain holds another entry there (rewritten)",
                HeadCheck::SignatureInvalid => "its signature is wrong (the line was edited)",
                _ => "it does not match",
            };
            out.push(HeadDiscrepancy {
                line: *line,
                workspace_id: Some(head.workspace_id.clone()),
                seq: Some(head.seq),
                problem: check,
                message: format!(
                    "line {line}: head {} of {} anchored at {}: {what}",
                    head.seq,
                    head.workspace_id,
                    head.time.to_rfc3339()
                ),
                explained_by: explained.map(|b| b.id.clone()),
                acknowledged: explained.is_some_and(|b| b.acknowledged.is_some()),
            });
        }
        Ok(out)
    }

    /// Records in `workspace`'s chain a break found outside the append path (a head older
    /// than one anchored before): a marker entry after the current head, and an
    /// `audit.tamper_detected` event.
    pub async fn record_chain_break(
        &self,
        workspace: &WorkspaceId,
        reason: &str,
        resumed_after_seq: i64,
        known_head_seq: Option<i64>,
    ) -> Result<()> {
        let key = self.audit_key()?;
        let record = break_record(workspace.clone(), reason, resumed_after_seq, known_head_seq);
        let event = SecurityEvent::new(
            workspace.clone(),
            "audit.tamper_detected",
            serde_json::json!({
                "firstBreak": { "problem": reason },
                "during": "anchoring",
                "resumedAfterSeq": resumed_after_seq,
                "anchoredHeadSeq": known_head_seq,
            }),
        );
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            append_audit!(tx, key, std::iter::once(&record));
            insert_events!(tx, std::iter::once(&event));
            tx.commit().await?;
        });
        Ok(())
    }

    /// An operator acknowledges the break the marker entry `break_id` records in
    /// `workspace`'s chain: an `audit.break_acknowledged` entry naming it, who and why,
    /// and a security event of the same type. Returns the break as it was recorded.
    /// `NotFound` when the intact part of the chain records no such break; `Conflict`
    /// when it is already acknowledged.
    pub async fn acknowledge_chain_break(
        &self,
        workspace: &WorkspaceId,
        break_id: &str,
        by: &str,
        reason: &str,
    ) -> Result<RecordedBreak> {
        let key = self.audit_key()?;
        let report = self.verify_audit_chain(workspace).await?;
        let Some(found) = report.breaks.into_iter().find(|b| b.id == break_id) else {
            return Err(Error::NotFound);
        };
        if let Some(a) = &found.acknowledged {
            return Err(Error::Conflict(format!(
                "the break {break_id} was already acknowledged by {} at {}",
                a.by,
                a.time.to_rfc3339()
            )));
        }
        let record = ack_record(workspace.clone(), break_id, by, reason);
        let event = SecurityEvent::new(
            workspace.clone(),
            ACK_ACTION,
            serde_json::json!({
                "breakId": found.id,
                "breakSeq": found.seq,
                "problem": found.reason,
                "resumedAfterSeq": found.resumed_after_seq,
                "knownHeadSeq": found.known_head_seq,
                "acknowledgedBy": record_text(by),
                "reason": record_text(reason),
                "acknowledgedAt": Utc::now(),
            }),
        );
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            append_audit!(tx, key, std::iter::once(&record));
            insert_events!(tx, std::iter::once(&event));
            tx.commit().await?;
        });
        Ok(found)
    }

    /// The sequence number of the oldest break marker of `workspace`'s chain in
    /// `(after, through]` that no acknowledgement names: retention keeps it and everything
    /// after it. Only when the range holds a marker are the acknowledgements (anywhere
    /// later in the chain) read, so a purge of a chain without breaks reads only the range.
    pub(crate) async fn first_unacknowledged_break(
        &self,
        workspace: &WorkspaceId,
        after: i64,
        through: i64,
    ) -> Result<Option<i64>> {
        let markers = format!(
            "SELECT {ENTRY_COLUMNS} FROM audit_entries WHERE workspace_id = $1 \
             AND seq > $2 AND seq <= $3 AND action = $4 ORDER BY seq"
        );
        let acks = format!(
            "SELECT {ENTRY_COLUMNS} FROM audit_entries WHERE workspace_id = $1 \
             AND seq > $2 AND action = $3 ORDER BY seq"
        );
        let rows: Vec<EntryRow> = with_pool!(self, pool => {
            let mut rows: Vec<EntryRow> = sqlx::query_as(&markers)
                .bind(workspace.as_str())
                .bind(after)
                .bind(through)
                .bind(BREAK_ACTION)
                .fetch_all(pool)
                .await?;
            if let Some(first) = rows.first().map(|r| r.seq) {
                let more: Vec<EntryRow> = sqlx::query_as(&acks)
                    .bind(workspace.as_str())
                    .bind(first)
                    .bind(ACK_ACTION)
                    .fetch_all(pool)
                    .await?;
                rows.extend(more);
            }
            rows
        });
        let mut log = BreakLog::default();
        for row in rows {
            log.observe(&row.into_domain()?);
        }
        Ok(log.first_unacknowledged().map(|b| b.seq))
    }

    /// Whether an anchored head carries a signature the audit key made.
    pub fn is_signed_head(&self, head: &AnchoredHead) -> Result<bool> {
        Ok(head.is_signed_by(self.audit_key()?))
    }

    /// A workspace's signed head row, read as stored.
    pub async fn signed_head(&self, workspace: &WorkspaceId) -> Result<Option<Head>> {
        let row: Option<HeadRow> = with_pool!(self, pool => {
            sqlx::query_as("SELECT seq, hash, signature FROM audit_heads WHERE workspace_id = $1")
                .bind(workspace.as_str())
                .fetch_optional(pool)
                .await?
        });
        Ok(row.map(|h| Head {
            seq: h.seq,
            hash: h.hash,
            signature: h.signature,
        }))
    }
}

/// What an acknowledgement keeps of an operator's text.
fn record_text(text: &str) -> String {
    text.chars()
        .take(datastack_core::audit_breaks::MAX_ACK_TEXT)
        .collect()
}
