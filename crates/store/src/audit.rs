//! The audit trail: appending to each workspace's hash chain (in the caller's transaction
//! or in batches), querying, exporting, verifying and purging it; security events; the
//! networks each credential was used from.

use chrono::{DateTime, Duration, Utc};
use datastack_core::audit::{
    AuditEntry, AuditKey, AuditRecord, ChainBreak, ChainVerifier, Checkpoint, Head, Outcome,
    SecurityEvent, Step,
};
use datastack_core::audit_breaks::RecordedBreak;
use datastack_core::id::{AuditId, EventId, WorkspaceId};

use crate::{Backend, Error, Result, Store, with_pool};

/// What a change writes to the audit trail in its own transaction: its entries and the
/// security events it raises.
#[derive(Debug, Clone, Default)]
pub struct Trail {
    /// Audit entries.
    pub records: Vec<AuditRecord>,
    /// Security events.
    pub events: Vec<SecurityEvent>,
}

impl Trail {
    /// A trail of one entry.
    pub fn of(record: AuditRecord) -> Self {
        Self {
            records: vec![record],
            events: Vec::new(),
        }
    }

    /// Adds an event.
    pub fn with_event(mut self, event: SecurityEvent) -> Self {
        self.events.push(event);
        self
    }
}

/// One use of a credential from a network, for "new network" detection.
#[derive(Debug, Clone)]
pub struct Sighting {
    /// The credential.
    pub credential_id: String,
    /// Its workspace.
    pub workspace_id: WorkspaceId,
    /// The network (`203.0.113.0/24`, `2001:db8::/64`).
    pub network: String,
    /// The client address.
    pub ip: String,
    /// When.
    pub at: DateTime<Utc>,
    /// The request.
    pub request_id: Option<String>,
}

/// Which entries a query returns; `None` matches everything.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// At or after.
    pub since: Option<DateTime<Utc>>,
    /// Before.
    pub until: Option<DateTime<Utc>>,
    /// The acting principal.
    pub principal_id: Option<String>,
    /// The credential.
    pub credential_id: Option<String>,
    /// The action, e.g. `tokens.create`.
    pub action: Option<String>,
    /// The resource type, e.g. `tokens`.
    pub resource_type: Option<String>,
    /// The resource id.
    pub resource_id: Option<String>,
    /// The outcome.
    pub outcome: Option<Outcome>,
    /// The client address.
    pub source_ip: Option<String>,
    /// A request id: the entry of that request, or an aggregated entry that lists it in
    /// its `requestIds` or `lastRequestId`. Only ids of `A-Z a-z 0-9 - _ . :` (as the
    /// server keeps them).
    pub request_id: Option<String>,
}

/// The result of verifying one workspace's chain.
#[derive(Debug, Clone)]
pub struct ChainReport {
    /// How many entries were found in place.
    pub checked: u64,
    /// The first break, if any.
    pub broken: Option<ChainBreak>,
    /// Where the retained chain starts: the checkpoint's sequence number and purge time.
    pub checkpoint: Option<(i64, DateTime<Utc>)>,
    /// The signed head's sequence number.
    pub head_seq: i64,
    /// The breaks recorded in the chain, acknowledged or not, oldest first: an
    /// acknowledged break stays listed.
    pub breaks: Vec<RecordedBreak>,
}

/// What a purge did.
#[derive(Debug, Clone, Default)]
pub struct Purge {
    /// Entries deleted.
    pub purged: u64,
    /// The last purged sequence number.
    pub through: i64,
    /// The chain did not verify where the purge would have deleted: nothing from there on
    /// was purged.
    pub refused: Option<ChainBreak>,
}

/// A workspace's retention and revocation policy, for the maintenance worker.
#[derive(Debug, Clone)]
pub struct WorkspacePolicy {
    /// The workspace.
    pub id: WorkspaceId,
    /// Audit retention in days.
    pub audit_retention_days: u32,
    /// Auto-revocation of unused tokens, in days.
    pub auto_revoke_unused_days: Option<u32>,
}

/// One credential's use of one scope in the review window.
#[derive(Debug, Clone)]
pub struct ScopeUse {
    /// The credential.
    pub credential_id: String,
    /// The scope it acted with.
    pub scope: String,
    /// How many allowed calls.
    pub calls: i64,
}

/// How many rows one INSERT statement carries, largest first (19 columns each: well under
/// both engines' limit on bound parameters).
pub(crate) const INSERT_SIZES: [usize; 4] = [256, 32, 4, 1];

/// The `INSERT` of `size` entries (one of [`INSERT_SIZES`]) for the engine of `_tx`, built
/// once per size. PostgreSQL's placeholders are numbered (`$1`, `$2`, …); SQLite's are
/// anonymous (`?`): SQLite looks a named or numbered parameter's name up by a linear scan,
/// so binding thousands of them costs time quadratic in their number.
pub(crate) fn insert_entries_sql<DB: Dialect>(
    _tx: &sqlx::Transaction<'_, DB>,
    size: usize,
) -> &'static str {
    static NUMBERED: std::sync::OnceLock<[String; 4]> = std::sync::OnceLock::new();
    static ANONYMOUS: std::sync::OnceLock<[String; 4]> = std::sync::OnceLock::new();
    let (cell, numbered) = if DB::NUMBERED_PLACEHOLDERS {
        (&NUMBERED, true)
    } else {
        (&ANONYMOUS, false)
    };
    let all = cell.get_or_init(|| {
        INSERT_SIZES.map(|rows| {
            let columns = ENTRY_COLUMNS.split(',').count();
            let mut sql = format!("INSERT INTO audit_entries ({ENTRY_COLUMNS}) VALUES ");
            for row in 0..rows {
                sql.push_str(if row == 0 { "(" } else { ", (" });
                for column in 0..columns {
                    if column > 0 {
                        sql.push_str(", ");
                    }
                    if numbered {
                        sql.push('$');
                        sql.push_str(&(row * columns + column + 1).to_string());
                    } else {
                        sql.push('?');
                    }
                }
                sql.push(')');
            }
            sql
        })
    });
    let i = INSERT_SIZES
        .iter()
        .position(|s| *s == size)
        .unwrap_or(INSERT_SIZES.len() - 1);
    &all[i]
}

pub(crate) const ENTRY_COLUMNS: &str = "workspace_id, seq, id, created_at, request_id, principal_id, \
     credential_id, action, resource_type, resource_id, scope, source_ip, user_agent, outcome, \
     status, latency_us, detail, prev_hash, hash";

/// Inside a `with_pool!` transaction `$tx`, appends `$records` (an iterator of
/// `&AuditRecord`) to their workspaces' chains under `$key`. Workspaces are locked in id
/// order (their head rows), so concurrent appenders on several nodes serialise per chain
/// and cannot deadlock.
macro_rules! append_audit {
    ($tx:ident, $key:expr, $records:expr) => {{
        let mut by_workspace: std::collections::BTreeMap<&str, Vec<&datastack_core::audit::AuditRecord>> =
            std::collections::BTreeMap::new();
        for r in $records {
            by_workspace.entry(r.workspace_id.as_str()).or_default().push(r);
        }
        for (workspace, records) in by_workspace {
            // The head, locked: on PostgreSQL the UPDATE locks the head row, and on SQLite
            // the transaction already holds the write lock. A chain without a head yet
            // gets one (a write, which on SQLite takes the write lock before the head is
            // read); a node that loses the race to create it locks the winner's row once
            // that commits. On SQLite the same statement reads the chain's last entry; on
            // PostgreSQL that takes a statement of its own, whose snapshot is taken after
            // the lock and so sees what another node committed while this one waited.
            let with_last = $crate::audit::reads_last_with_head(&$tx);
            let head_sql = if with_last {
                "UPDATE audit_heads SET seq = seq WHERE workspace_id = $1 \
                 RETURNING seq, hash, signature, \
                 (SELECT e.seq FROM audit_entries e WHERE e.workspace_id = $1 ORDER BY e.seq DESC LIMIT 1), \
                 (SELECT e.hash FROM audit_entries e WHERE e.workspace_id = $1 ORDER BY e.seq DESC LIMIT 1)"
            } else {
                "UPDATE audit_heads SET seq = seq WHERE workspace_id = $1 \
                 RETURNING seq, hash, signature, CAST(NULL AS BIGINT), CAST(NULL AS TEXT)"
            };
            type HeadRow = (i64, String, String, Option<i64>, Option<String>);
            let read: Option<HeadRow> = sqlx::query_as(head_sql)
                .bind(workspace)
                .fetch_optional(&mut *$tx)
                .await?;
            let (created, (mut seq, mut prev, signature, last_seq, last_hash)) = match read {
                Some(head) => (0, head),
                None => {
                    let created = sqlx::query(
                        "INSERT INTO audit_heads (workspace_id, seq, hash, signature) VALUES ($1, 0, $2, '') \
                         ON CONFLICT (workspace_id) DO NOTHING",
                    )
                    .bind(workspace)
                    .bind(datastack_core::audit::GENESIS)
                    .execute(&mut *$tx)
                    .await?
                    .rows_affected();
                    let head: HeadRow = sqlx::query_as(head_sql).bind(workspace).fetch_one(&mut *$tx).await?;
                    (created, head)
                }
            };
            // A head row written without the audit key (forged, or copied from another
            // position) anchors nothing: appending after it would sign a chain someone cut
            // back. Only the row this transaction just created is unsigned by design.
            let forged_head = created != 1
                && !$key.head_is_intact(
                    &datastack_core::id::WorkspaceId::from_trusted(workspace.to_owned()),
                    &datastack_core::audit::Head { seq, hash: prev.clone(), signature },
                );
            // What the chain really holds: its last entry, or the checkpoint when every
            // entry was purged. A head that is missing (deleted), behind it (an old head
            // row restored) or ahead of it (entries deleted from the end) cannot be
            // repaired: entries may be lost. The chain goes on after its last entry, so
            // nothing accepted is lost, but a marker entry records the break first, and the
            // chain reports broken until an operator acknowledges it
            // (`datastack audit acknowledge-break`).
            let mut last: Option<(i64, String)> = if with_last {
                last_seq.zip(last_hash)
            } else {
                sqlx::query_as(
                    "SELECT seq, hash FROM audit_entries WHERE workspace_id = $1 ORDER BY seq DESC LIMIT 1",
                )
                .bind(workspace)
                .fetch_optional(&mut *$tx)
                .await?
            };
            if last.is_none() {
                last = sqlx::query_as("SELECT seq, hash FROM audit_checkpoints WHERE workspace_id = $1")
                    .bind(workspace)
                    .fetch_optional(&mut *$tx)
                    .await?;
            }
            let found = match &last {
                Some((last_seq, _)) if created == 1 => Some(("head_missing", *last_seq, None)),
                // A forged head, or one at the last entry's position with another hash, says
                // nothing about what was lost.
                Some((last_seq, last_hash))
                    if forged_head || (*last_seq == seq && *last_hash != prev) =>
                {
                    Some(("head_forged", *last_seq, None))
                }
                Some((last_seq, _)) if *last_seq > seq => Some(("head_behind", *last_seq, Some(seq))),
                // Retention only ever purges a prefix, so a last entry below the head means
                // entries were deleted from the end.
                Some((last_seq, _)) if *last_seq < seq => Some(("entries_missing", *last_seq, Some(seq))),
                _ => None,
            };
            let marker = match (found, last) {
                (Some((reason, last_seq, stale_head)), Some((_, last_hash))) => {
                    let ws = datastack_core::id::WorkspaceId::from_trusted(workspace.to_owned());
                    let event = datastack_core::audit::SecurityEvent::new(
                        ws.clone(),
                        "audit.tamper_detected",
                        serde_json::json!({
                            "firstBreak": { "problem": reason },
                            "during": "append",
                            "resumedAfterSeq": last_seq,
                            "staleHeadSeq": stale_head,
                        }),
                    );
                    $crate::audit::insert_events!($tx, std::iter::once(&event));
                    tracing::error!(workspace, last_seq, reason, "the audit chain's head was missing or stale; the break is recorded in the chain and stays reported until acknowledged");
                    seq = last_seq;
                    prev = last_hash;
                    Some(datastack_core::audit_breaks::break_record(ws, reason, last_seq, stale_head))
                }
                _ => None,
            };
            let records: Vec<&datastack_core::audit::AuditRecord> =
                marker.iter().chain(records.into_iter()).collect();
            let mut rest: &[&datastack_core::audit::AuditRecord] = &records;
            while !rest.is_empty() {
                // Rows go in statements of a few fixed sizes, so each connection caches at
                // most four prepared INSERTs instead of one per batch size.
                let size = $crate::audit::INSERT_SIZES
                    .into_iter()
                    .find(|s| *s <= rest.len())
                    .unwrap_or(1);
                let (chunk, tail) = rest.split_at(size);
                rest = tail;
                let mut links = Vec::with_capacity(chunk.len());
                for r in chunk {
                    seq += 1;
                    let hash = $key.link(&prev, r);
                    links.push((seq, std::mem::replace(&mut prev, hash.clone()), hash));
                }
                let mut insert = sqlx::query($crate::audit::insert_entries_sql(&$tx, size));
                for (r, (seq, prev, hash)) in chunk.iter().zip(links) {
                    insert = insert
                        .bind(r.workspace_id.as_str())
                        .bind(seq)
                        .bind(r.id.as_str())
                        .bind(r.time)
                        .bind(r.request_id.as_deref())
                        .bind(r.principal_id.as_deref())
                        .bind(r.credential_id.as_deref())
                        .bind(r.action.as_str())
                        .bind(r.resource_type.as_deref())
                        .bind(r.resource_id.as_deref())
                        .bind(r.scope.as_deref())
                        .bind(r.source_ip.as_deref())
                        .bind(r.user_agent.as_deref())
                        .bind(r.outcome.as_str())
                        .bind(i64::from(r.status))
                        .bind(r.latency_us)
                        .bind(r.detail.as_deref())
                        .bind(prev)
                        .bind(hash);
                }
                insert.execute(&mut *$tx).await?;
            }
            let ws = datastack_core::id::WorkspaceId::from_trusted(workspace.to_owned());
            sqlx::query(
                "UPDATE audit_heads SET seq = $2, hash = $3, signature = $4 WHERE workspace_id = $1",
            )
            .bind(workspace)
            .bind(seq)
            .bind(&prev)
            .bind($key.sign_head(&ws, seq, &prev))
            .execute(&mut *$tx)
            .await?;
        }
    }};
}
pub(crate) use append_audit;

/// Whether the statement that locks a chain's head can also read its last entry (see
/// [`append_audit`]): on SQLite, whose write transaction sees every commit; not on
/// PostgreSQL, where that statement's snapshot predates the lock it may wait for.
pub(crate) fn reads_last_with_head<DB: Dialect>(_: &sqlx::Transaction<'_, DB>) -> bool {
    DB::READS_LAST_WITH_HEAD
}

/// What the audit's statements need to know of an engine.
pub(crate) trait Dialect: sqlx::Database {
    /// See [`reads_last_with_head`].
    const READS_LAST_WITH_HEAD: bool;
    /// Whether placeholders are numbered (`$1`) rather than anonymous (`?`).
    const NUMBERED_PLACEHOLDERS: bool;
}

impl Dialect for sqlx::Sqlite {
    const READS_LAST_WITH_HEAD: bool = true;
    const NUMBERED_PLACEHOLDERS: bool = false;
}

impl Dialect for sqlx::Postgres {
    const READS_LAST_WITH_HEAD: bool = false;
    const NUMBERED_PLACEHOLDERS: bool = true;
}

/// Inside a `with_pool!` transaction `$tx`, stores security events and puts each in the
/// outbox of the webhooks that take it.
macro_rules! insert_events {
    ($tx:ident, $events:expr) => {{
        for e in $events {
            sqlx::query(
                "INSERT INTO security_events (id, workspace_id, type, created_at, payload) \
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(e.id.as_str())
            .bind(e.workspace_id.as_str())
            .bind(&e.event_type)
            .bind(e.time)
            .bind(e.payload.to_string())
            .execute(&mut *$tx)
            .await?;
            let _queued = $crate::webhooks::enqueue_event!(
                $tx,
                e.id.as_str(),
                e.workspace_id.as_str(),
                e.event_type.as_str(),
                e.time,
                &e.payload
            );
        }
    }};
}
pub(crate) use insert_events;

/// Inside a `with_pool!` transaction `$tx` of a method of `$store`, writes a [`Trail`].
macro_rules! write_trail {
    ($store:expr, $tx:ident, $trail:expr) => {{
        let key = $store.audit_key()?;
        $crate::audit::append_audit!($tx, key, $trail.records.iter());
        $crate::audit::insert_events!($tx, $trail.events.iter());
    }};
}
pub(crate) use write_trail;

#[derive(sqlx::FromRow)]
pub(crate) struct EntryRow {
    workspace_id: String,
    pub(crate) seq: i64,
    id: String,
    created_at: DateTime<Utc>,
    request_id: Option<String>,
    principal_id: Option<String>,
    credential_id: Option<String>,
    action: String,
    resource_type: Option<String>,
    resource_id: Option<String>,
    scope: Option<String>,
    source_ip: Option<String>,
    user_agent: Option<String>,
    outcome: String,
    status: i64,
    latency_us: i64,
    detail: Option<String>,
    prev_hash: String,
    hash: String,
}

impl EntryRow {
    pub(crate) fn into_domain(self) -> Result<AuditEntry> {
        let outcome = Outcome::parse(&self.outcome);
        let status = u16::try_from(self.status).ok();
        // A stored outcome or status no server writes was put there by someone else: the
        // entry must not verify, whatever it is mapped to.
        let hash = if outcome.is_some() && status.is_some() {
            self.hash
        } else {
            String::new()
        };
        Ok(AuditEntry {
            seq: self.seq,
            prev_hash: self.prev_hash,
            hash,
            record: AuditRecord {
                id: AuditId::from_trusted(self.id),
                time: self.created_at,
                workspace_id: WorkspaceId::from_trusted(self.workspace_id),
                request_id: self.request_id,
                principal_id: self.principal_id,
                credential_id: self.credential_id,
                action: self.action,
                resource_type: self.resource_type,
                resource_id: self.resource_id,
                scope: self.scope,
                source_ip: self.source_ip,
                user_agent: self.user_agent,
                outcome: outcome.unwrap_or(Outcome::Error),
                status: status.unwrap_or(u16::MAX),
                latency_us: self.latency_us,
                detail: self.detail,
            },
        })
    }
}

#[derive(sqlx::FromRow)]
struct EventRow {
    id: String,
    workspace_id: String,
    #[sqlx(rename = "type")]
    event_type: String,
    created_at: DateTime<Utc>,
    payload: String,
}

impl EventRow {
    fn into_domain(self) -> Result<SecurityEvent> {
        Ok(SecurityEvent {
            id: EventId::from_trusted(self.id),
            workspace_id: WorkspaceId::from_trusted(self.workspace_id),
            event_type: self.event_type,
            time: self.created_at,
            payload: serde_json::from_str(&self.payload)
                .map_err(|e| Error::Corrupt(format!("security event payload: {e}")))?,
        })
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct CheckpointRow {
    workspace_id: String,
    seq: i64,
    hash: String,
    purged_before: DateTime<Utc>,
    signature: String,
}

impl CheckpointRow {
    pub(crate) fn into_domain(self) -> Checkpoint {
        Checkpoint {
            workspace_id: WorkspaceId::from_trusted(self.workspace_id),
            seq: self.seq,
            hash: self.hash,
            purged_before: self.purged_before,
            signature: self.signature,
        }
    }
}

#[derive(sqlx::FromRow)]
pub(crate) struct HeadRow {
    pub(crate) seq: i64,
    pub(crate) hash: String,
    pub(crate) signature: String,
}

impl Store {
    /// The audit key this store signs with.
    pub(crate) fn audit_key(&self) -> Result<&AuditKey> {
        self.audit_key
            .as_deref()
            .ok_or_else(|| Error::Corrupt("the store was opened without an audit key".into()))
    }

    /// The fingerprint of the key this store's audit log is signed with, if a node has
    /// recorded one (needs no key).
    pub async fn recorded_audit_key_fingerprint(&self) -> Result<Option<String>> {
        Ok(with_pool!(self, pool => {
            sqlx::query_scalar("SELECT fingerprint FROM audit_key WHERE id = 1")
                .fetch_optional(pool)
                .await?
        }))
    }

    /// Records the audit key's fingerprint on first use and refuses a different key
    /// afterwards: entries signed with two keys could not be verified as one chain.
    pub async fn check_audit_key(&self) -> Result<()> {
        let fingerprint = self.audit_key()?.fingerprint();
        let stored: String = with_pool!(self, pool => {
            sqlx::query(
                "INSERT INTO audit_key (id, fingerprint, created_at) VALUES (1, $1, $2) \
                 ON CONFLICT (id) DO NOTHING",
            )
            .bind(&fingerprint)
            .bind(Utc::now())
            .execute(pool)
            .await?;
            sqlx::query_scalar("SELECT fingerprint FROM audit_key WHERE id = 1")
                .fetch_one(pool)
                .await?
        });
        if stored != fingerprint {
            return Err(Error::AuditKeyMismatch {
                stored,
                configured: fingerprint,
            });
        }
        Ok(())
    }

    /// The first workspace, created at bootstrap: entries that belong to no workspace
    /// (a failed authentication with an unknown credential) go to its chain.
    pub async fn root_workspace_id(&self) -> Result<Option<WorkspaceId>> {
        let id: Option<String> = with_pool!(self, pool => {
            sqlx::query_scalar(
                "SELECT id FROM workspaces WHERE parent_id IS NULL ORDER BY created_at, id LIMIT 1",
            )
            .fetch_optional(pool)
            .await?
        });
        Ok(id.map(WorkspaceId::from_trusted))
    }

    /// Writes a batch of entries and events in one transaction (group commit), and records
    /// the credential sightings, raising `credential.new_network` for a credential seen
    /// before but not from this network within `new_network_window`. Returns the events
    /// raised. `retried` says an earlier attempt of the same batch failed: its commit may
    /// have gone through unconfirmed, so the batch is skipped if its first entry is there.
    pub async fn record_audit_batch(
        &self,
        records: &[AuditRecord],
        events: &[SecurityEvent],
        sightings: &[Sighting],
        new_network_window: Duration,
        retried: bool,
    ) -> Result<Vec<SecurityEvent>> {
        let key = self.audit_key()?;
        let mut ordered: Vec<&Sighting> = sightings.iter().collect();
        ordered.sort_by(|a, b| (&a.credential_id, &a.network).cmp(&(&b.credential_id, &b.network)));
        ordered.dedup_by(|a, b| a.credential_id == b.credential_id && a.network == b.network);
        // On SQLite the write lock is taken at the start: a deferred transaction that reads
        // first and then writes cannot wait for a writer that holds the lock (SQLite gives
        // up at once instead of running the busy handler), so the batch would fail and
        // wait for its retry while requests queue behind it.
        let begin = match self.backend() {
            crate::Backend::Sqlite => "BEGIN IMMEDIATE",
            crate::Backend::Postgres => "BEGIN",
        };
        with_pool!(self, pool => {
            let mut tx = pool.begin_with(begin).await?;
            // A retry of a batch whose commit succeeded but was not confirmed (a lost
            // connection) must not append it twice: its first entry tells. A first attempt
            // holds entries no commit has seen, so it skips the query.
            if let Some(first) = records.first().filter(|_| retried) {
                let seen: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_entries WHERE id = $1")
                    .bind(first.id.as_str())
                    .fetch_one(&mut *tx)
                    .await?;
                if seen > 0 {
                    return Ok(Vec::new());
                }
            }
            let mut raised = Vec::new();
            // Sightings first: the chain heads are locked last and held briefly.
            for s in ordered {
                let last: Option<DateTime<Utc>> = sqlx::query_scalar(
                    "SELECT last_seen_at FROM credential_networks WHERE credential_id = $1 AND network = $2",
                )
                .bind(&s.credential_id)
                .bind(&s.network)
                .fetch_optional(&mut *tx)
                .await?;
                let fresh = last.is_some_and(|t| s.at - t < new_network_window);
                if !fresh {
                    let known: i64 = sqlx::query_scalar(
                        "SELECT COUNT(*) FROM credential_networks WHERE credential_id = $1 AND network <> $2",
                    )
                    .bind(&s.credential_id)
                    .bind(&s.network)
                    .fetch_one(&mut *tx)
                    .await?;
                    if known > 0 {
                        raised.push(SecurityEvent::new(
                            s.workspace_id.clone(),
                            "credential.new_network",
                            serde_json::json!({
                                "request_id": s.request_id,
                                "credentialId": s.credential_id,
                                "network": s.network,
                                "sourceIp": s.ip,
                                "lastSeenFromNetwork": last,
                                "windowDays": new_network_window.num_days(),
                            }),
                        ));
                    }
                }
                sqlx::query(
                    "INSERT INTO credential_networks (credential_id, network, last_seen_at) VALUES ($1, $2, $3) \
                     ON CONFLICT (credential_id, network) DO UPDATE SET last_seen_at = excluded.last_seen_at \
                     WHERE credential_networks.last_seen_at < excluded.last_seen_at",
                )
                .bind(&s.credential_id)
                .bind(&s.network)
                .bind(s.at)
                .execute(&mut *tx)
                .await?;
            }
            append_audit!(tx, key, records.iter());
            insert_events!(tx, events.iter().chain(raised.iter()));
            tx.commit().await?;
            Ok(raised)
        })
    }

    /// Entries of `workspace` matching `filter`, newest first, starting below sequence
    /// number `before` when given. Returns the page and the cursor of the next one.
    pub async fn query_audit(
        &self,
        workspace: &WorkspaceId,
        filter: &AuditFilter,
        before: Option<i64>,
        limit: u32,
    ) -> Result<(Vec<AuditEntry>, Option<i64>)> {
        let sql = format!(
            "SELECT {ENTRY_COLUMNS} FROM audit_entries WHERE workspace_id = $1 AND seq < $2 \
               AND ($3 IS NULL OR created_at >= $3) AND ($4 IS NULL OR created_at < $4) \
               AND ($5 IS NULL OR principal_id = $5) AND ($6 IS NULL OR credential_id = $6) \
               AND ($7 IS NULL OR action = $7) AND ($8 IS NULL OR resource_type = $8) \
               AND ($9 IS NULL OR resource_id = $9) AND ($10 IS NULL OR outcome = $10) \
               AND ($11 IS NULL OR source_ip = $11) \
               AND ($13 IS NULL OR request_id = $13 OR detail LIKE $14 ESCAPE '\\') \
             ORDER BY seq DESC LIMIT $12"
        );
        // The id as a JSON string inside an aggregated entry's detail; `_` is the one LIKE
        // wildcard a kept request id can hold.
        let listed = filter
            .request_id
            .as_deref()
            .map(|id| format!("%\"{}\"%", id.replace('_', "\\_")));
        let rows: Vec<EntryRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(workspace.as_str())
                .bind(before.unwrap_or(i64::MAX))
                .bind(filter.since)
                .bind(filter.until)
                .bind(filter.principal_id.as_deref())
                .bind(filter.credential_id.as_deref())
                .bind(filter.action.as_deref())
                .bind(filter.resource_type.as_deref())
                .bind(filter.resource_id.as_deref())
                .bind(filter.outcome.map(Outcome::as_str))
                .bind(filter.source_ip.as_deref())
                .bind(i64::from(limit) + 1)
                .bind(filter.request_id.as_deref())
                .bind(listed.as_deref())
                .fetch_all(pool)
                .await?
        });
        let mut entries = rows
            .into_iter()
            .map(EntryRow::into_domain)
            .collect::<Result<Vec<_>>>()?;
        let next = if entries.len() > limit as usize {
            entries.truncate(limit as usize);
            entries.last().map(|e| e.seq)
        } else {
            None
        };
        Ok((entries, next))
    }

    /// Up to `limit` entries of `workspace` in `[since, until)` after sequence number
    /// `after`, oldest first: one page of an export.
    pub async fn audit_export_page(
        &self,
        workspace: &WorkspaceId,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        after: i64,
        limit: u32,
    ) -> Result<Vec<AuditEntry>> {
        let sql = format!(
            "SELECT {ENTRY_COLUMNS} FROM audit_entries WHERE workspace_id = $1 AND seq > $2 \
               AND ($3 IS NULL OR created_at >= $3) AND ($4 IS NULL OR created_at < $4) \
             ORDER BY seq LIMIT $5"
        );
        let rows: Vec<EntryRow> = with_pool!(self, pool => {
            sqlx::query_as(&sql)
                .bind(workspace.as_str())
                .bind(after)
                .bind(since)
                .bind(until)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await?
        });
        rows.into_iter().map(EntryRow::into_domain).collect()
    }

    /// Walks `workspace`'s chain from its checkpoint (or its start) to its signed head, in
    /// one consistent snapshot, and reports the first break.
    pub async fn verify_audit_chain(&self, workspace: &WorkspaceId) -> Result<ChainReport> {
        const PAGE: i64 = 1000;
        let key = self.audit_key()?;
        let select = format!(
            "SELECT {ENTRY_COLUMNS} FROM audit_entries WHERE workspace_id = $1 AND seq > $2 \
             AND seq <= $3 ORDER BY seq LIMIT $4"
        );
        let postgres = self.backend() == Backend::Postgres;
        with_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            if postgres {
                sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
                    .execute(&mut *tx)
                    .await?;
            }
            let head: Option<HeadRow> = sqlx::query_as(
                "SELECT seq, hash, signature FROM audit_heads WHERE workspace_id = $1",
            )
            .bind(workspace.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            let checkpoint: Option<CheckpointRow> = sqlx::query_as(
                "SELECT workspace_id, seq, hash, purged_before, signature FROM audit_checkpoints \
                 WHERE workspace_id = $1",
            )
            .bind(workspace.as_str())
            .fetch_optional(&mut *tx)
            .await?;
            let checkpoint = checkpoint.map(CheckpointRow::into_domain);
            let head = head.map(|h| Head { seq: h.seq, hash: h.hash, signature: h.signature });
            let mut verifier = ChainVerifier::new(key, checkpoint.as_ref());
            // Entries appended after the head was read are not part of this snapshot's
            // chain; everything up to the head is (and anything beyond it is a forgery
            // the head check reports).
            let last = head.as_ref().map_or(i64::MAX, |h| h.seq);
            let mut after = i64::MIN;
            let mut start_missing = None;
            'walk: loop {
                let rows: Vec<EntryRow> = sqlx::query_as(&select)
                    .bind(workspace.as_str())
                    .bind(after)
                    .bind(last)
                    .bind(PAGE)
                    .fetch_all(&mut *tx)
                    .await?;
                let n = rows.len();
                for row in rows {
                    let entry = row.into_domain()?;
                    after = entry.seq;
                    // A chain without a checkpoint starts with its workspace's creation: a
                    // chain wiped and started again does not.
                    if entry.seq == 1
                        && checkpoint.is_none()
                        && !(matches!(
                            entry.record.action.as_str(),
                            "workspaces.create" | "workspaces.bootstrap"
                        ) && entry.record.resource_id.as_deref() == Some(workspace.as_str()))
                    {
                        start_missing = Some(ChainBreak::StartMissing {
                            id: entry.record.id.to_string(),
                            seq: 1,
                        });
                    }
                    match verifier.step(&entry) {
                        Step::Ok => {}
                        Step::Broken => break 'walk,
                        Step::LinkBroken => {
                            let successor: i64 = sqlx::query_scalar(
                                "SELECT COUNT(*) FROM audit_entries WHERE workspace_id = $1 AND prev_hash = $2",
                            )
                            .bind(workspace.as_str())
                            .bind(verifier.expected_prev())
                            .fetch_one(&mut *tx)
                            .await?;
                            verifier.broken_link(&entry, successor > 0);
                            break 'walk;
                        }
                    }
                }
                if (n as i64) < PAGE {
                    break;
                }
            }
            // Entries past the signed head were added without the key.
            let beyond: i64 = match &head {
                Some(h) => sqlx::query_scalar(
                    "SELECT COUNT(*) FROM audit_entries WHERE workspace_id = $1 AND seq > $2",
                )
                .bind(workspace.as_str())
                .bind(h.seq)
                .fetch_one(&mut *tx)
                .await?,
                None => 0,
            };
            tx.rollback().await?;
            let checked = verifier.checked();
            let breaks = verifier.recorded_breaks().to_vec();
            let mut broken = start_missing.or(verifier.finish(workspace, head.as_ref()).err());
            if broken.is_none() && beyond > 0 {
                broken = Some(ChainBreak::HeadForged);
            }
            Ok(ChainReport {
                checked,
                broken,
                checkpoint: checkpoint.map(|c| (c.seq, c.purged_before)),
                head_seq: head.map_or(0, |h| h.seq),
                breaks,
            })
        })
    }

    /// Purges `workspace`'s entries older than `before`: the chain's prefix that ends just
    /// before its first entry at or after `before` (so an entry dated in the past cannot
    /// take newer ones with it). Each batch of up to 5 000 entries is first checked against
    /// the key, then deleted in its own short transaction that moves the signed checkpoint
    /// forward; appenders are never blocked by a long delete. A segment that does not
    /// verify is not purged: the purge stops and reports the break. The purge is recorded
    /// as an entry. Several nodes may purge at once: the checkpoint only moves forward.
    pub async fn purge_audit(
        &self,
        workspace: &WorkspaceId,
        before: DateTime<Utc>,
    ) -> Result<Purge> {
        const CHUNK: i64 = 5000;
        let key = self.audit_key()?;
        let select = format!(
            "SELECT {ENTRY_COLUMNS} FROM audit_entries WHERE workspace_id = $1 AND seq > $2 \
             AND seq <= $3 ORDER BY seq"
        );
        let (head, first_kept, checkpoint): (Option<i64>, Option<i64>, Option<CheckpointRow>) = with_pool!(self, pool => {
            let head: Option<i64> = sqlx::query_scalar("SELECT seq FROM audit_heads WHERE workspace_id = $1")
                .bind(workspace.as_str())
                .fetch_optional(pool)
                .await?;
            let first_kept: Option<i64> = sqlx::query_scalar(
                "SELECT MIN(seq) FROM audit_entries WHERE workspace_id = $1 AND created_at >= $2",
            )
            .bind(workspace.as_str())
            .bind(before)
            .fetch_one(pool)
            .await?;
            let checkpoint: Option<CheckpointRow> = sqlx::query_as(
                "SELECT workspace_id, seq, hash, purged_before, signature FROM audit_checkpoints \
                 WHERE workspace_id = $1",
            )
            .bind(workspace.as_str())
            .fetch_optional(pool)
            .await?;
            (head, first_kept, checkpoint)
        });
        let Some(head) = head else {
            return Ok(Purge::default());
        };
        let checkpoint = checkpoint.map(CheckpointRow::into_domain);
        let mut through = first_kept.map_or(head, |s| s - 1).min(head);
        let mut from = checkpoint.as_ref().map_or(0, |c| c.seq);
        // A break nobody acknowledged is evidence: it is never purged.
        if through > from
            && let Some(marker) = self
                .first_unacknowledged_break(workspace, from, through)
                .await?
        {
            through = through.min(marker - 1);
        }
        if through <= from {
            return Ok(Purge::default());
        }
        let mut verifier = ChainVerifier::new(key, checkpoint.as_ref());
        let mut outcome = Purge::default();
        while from < through {
            let end = (from + CHUNK).min(through);
            let result: std::result::Result<u64, ChainBreak> = with_pool!(self, pool => {
                let rows: Vec<EntryRow> = sqlx::query_as(&select)
                    .bind(workspace.as_str())
                    .bind(from)
                    .bind(end)
                    .fetch_all(pool)
                    .await?;
                let mut last_hash = None;
                let mut broken = None;
                for row in rows {
                    let entry = row.into_domain()?;
                    match verifier.step(&entry) {
                        Step::Ok => last_hash = Some(entry.hash.clone()),
                        Step::LinkBroken => {
                            verifier.broken_link(&entry, false);
                            broken = verifier.take_break();
                            break;
                        }
                        Step::Broken => {
                            broken = verifier.take_break();
                            break;
                        }
                    }
                }
                match (broken, last_hash) {
                    (Some(b), _) => Err(b),
                    (None, Some(hash)) if verifier.checked() as i64 == end - checkpoint.as_ref().map_or(0, |c| c.seq) => {
                        let cp = key.checkpoint(workspace, end, &hash, before);
                        let mut tx = pool.begin().await?;
                        let purged = sqlx::query(
                            "DELETE FROM audit_entries WHERE workspace_id = $1 AND seq > $2 AND seq <= $3",
                        )
                        .bind(workspace.as_str())
                        .bind(from)
                        .bind(end)
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                        sqlx::query(
                            "INSERT INTO audit_checkpoints (workspace_id, seq, hash, purged_before, signature, created_at) \
                             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (workspace_id) DO UPDATE SET \
                             seq = excluded.seq, hash = excluded.hash, purged_before = excluded.purged_before, \
                             signature = excluded.signature, created_at = excluded.created_at \
                             WHERE audit_checkpoints.seq < excluded.seq",
                        )
                        .bind(workspace.as_str())
                        .bind(cp.seq)
                        .bind(&cp.hash)
                        .bind(cp.purged_before)
                        .bind(&cp.signature)
                        .bind(Utc::now())
                        .execute(&mut *tx)
                        .await?;
                        tx.commit().await?;
                        Ok(purged)
                    }
                    // Entries are missing from the segment (or it is empty).
                    _ => Err(ChainBreak::Removed { id: String::new(), seq: from + 1 }),
                }
            });
            match result {
                Ok(n) => {
                    outcome.purged += n;
                    outcome.through = end;
                    from = end;
                }
                Err(b) => {
                    // Another node purging the same chain moves the checkpoint past what
                    // this one read: that is not tampering.
                    let now_at: Option<i64> = with_pool!(self, pool => {
                        sqlx::query_scalar("SELECT seq FROM audit_checkpoints WHERE workspace_id = $1")
                            .bind(workspace.as_str())
                            .fetch_optional(pool)
                            .await?
                    });
                    if now_at.unwrap_or(0) <= from {
                        outcome.refused = Some(b);
                    }
                    break;
                }
            }
        }
        if outcome.purged > 0 {
            let mut record = AuditRecord::system(workspace.clone(), "audit.purge", "audit");
            record.detail = Some(
                serde_json::json!({
                    "purged": outcome.purged,
                    "purgedBefore": before,
                    "throughSeq": outcome.through,
                })
                .to_string(),
            );
            with_pool!(self, pool => {
                let mut tx = pool.begin().await?;
                append_audit!(tx, key, std::iter::once(&record));
                tx.commit().await?;
            });
        }
        Ok(outcome)
    }

    /// A chain's signed head: its last sequence number and hash.
    pub async fn audit_head(&self, workspace: &WorkspaceId) -> Result<Option<(i64, String)>> {
        Ok(with_pool!(self, pool => {
            sqlx::query_as("SELECT seq, hash FROM audit_heads WHERE workspace_id = $1")
                .bind(workspace.as_str())
                .fetch_optional(pool)
                .await?
        }))
    }

    /// Every workspace's audit retention and auto-revocation policy.
    pub async fn workspace_policies(&self) -> Result<Vec<WorkspacePolicy>> {
        let rows: Vec<(String, Option<i64>, Option<i64>)> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, audit_retention_days, auto_revoke_unused_days FROM workspaces ORDER BY id",
            )
            .fetch_all(pool)
            .await?
        });
        Ok(rows
            .into_iter()
            .map(|(id, retention, revoke)| WorkspacePolicy {
                id: WorkspaceId::from_trusted(id),
                audit_retention_days: retention.and_then(|d| u32::try_from(d).ok()).unwrap_or(
                    datastack_core::model::WorkspaceSettings::DEFAULT_AUDIT_RETENTION_DAYS,
                ),
                auto_revoke_unused_days: revoke.and_then(|d| u32::try_from(d).ok()),
            })
            .collect())
    }

    /// Security events of `workspace`, newest first, of one type when given, starting
    /// below the id `before`.
    pub async fn list_security_events(
        &self,
        workspace: &WorkspaceId,
        event_type: Option<&str>,
        before: Option<&str>,
        limit: u32,
    ) -> Result<(Vec<SecurityEvent>, Option<String>)> {
        let rows: Vec<EventRow> = with_pool!(self, pool => {
            sqlx::query_as(
                "SELECT id, workspace_id, type, created_at, payload FROM security_events \
                 WHERE workspace_id = $1 AND ($2 IS NULL OR type = $2) AND ($3 IS NULL OR id < $3) \
                 ORDER BY id DESC LIMIT $4",
            )
            .bind(workspace.as_str())
            .bind(event_type)
            .bind(before)
            .bind(i64::from(limit) + 1)
            .fetch_all(pool)
            .await?
        });
        let mut events = rows
            .into_iter()
            .map(EventRow::into_domain)
            .collect::<Result<Vec<_>>>()?;
        let next = if events.len() > limit as usize {
            events.truncate(limit as usize);
            events.last().map(|e| e.id.to_string())
        } else {
            None
        };
        Ok((events, next))
    }

    /// For each of `credentials`, the scopes it acted with in allowed calls since `since`,
    /// with how many calls (an aggregated entry counts every request it stands for).
    pub async fn scope_usage(
        &self,
        workspace: &WorkspaceId,
        credentials: &[String],
        since: DateTime<Utc>,
    ) -> Result<Vec<ScopeUse>> {
        if credentials.is_empty() {
            return Ok(Vec::new());
        }
        // An aggregated entry stands for `count` requests: its detail begins
        // `{"aggregated":"<text without quotes>","count":<n>` (the server writes it so), which
        // is read from the text, without parsing JSON that tampering could have broken.
        let calls = match self.backend() {
            crate::Backend::Sqlite => {
                "CASE WHEN detail LIKE '{\"aggregated\":\"%' \
                 THEN MAX(CAST(substr(detail, instr(detail, '\",\"count\":') + 10) AS INTEGER), 1) \
                 ELSE 1 END"
            }
            crate::Backend::Postgres => {
                "CASE WHEN detail LIKE '{\"aggregated\":\"%' \
                 THEN COALESCE(CAST(substring(detail FROM '^\\{\"aggregated\":\"[^\"]*\",\"count\":([0-9]{1,18})') AS BIGINT), 1) \
                 ELSE 1 END"
            }
        };
        let rows: Vec<(String, String, i64)> = with_pool!(self, pool => {
            let mut q = sqlx::QueryBuilder::new(format!(
                "SELECT credential_id, scope, CAST(SUM({calls}) AS BIGINT) FROM audit_entries WHERE workspace_id = "
            ));
            q.push_bind(workspace.as_str());
            q.push(" AND created_at >= ");
            q.push_bind(since);
            q.push(" AND outcome = 'allowed' AND scope IS NOT NULL AND credential_id IN (");
            let mut list = q.separated(", ");
            for c in credentials {
                list.push_bind(c.as_str());
            }
            q.push(") GROUP BY credential_id, scope");
            q.build_query_as().fetch_all(pool).await?
        });
        Ok(rows
            .into_iter()
            .map(|(credential_id, scope, calls)| ScopeUse {
                credential_id,
                scope,
                calls,
            })
            .collect())
    }
}
