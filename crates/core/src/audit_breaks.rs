//! Breaks of an audit chain that the chain itself records, their acknowledgement, and the
//! signed heads kept outside the database.
//!
//! When a node finds a chain's head missing, behind the chain's last entry, or older than a
//! head it anchored before, it cannot repair the chain: entries may be gone for good. It
//! keeps appending (nothing accepted is lost) but first appends a marker entry
//! ([`BREAK_ACTION`]) that names the problem and the last position it could still trust.
//! The marker is an ordinary chain entry, signed like every other, so removing it is
//! itself a break. The chain reports broken until an operator appends an acknowledgement
//! entry ([`ACK_ACTION`]) naming the marker; the marker and the acknowledgement stay in the
//! chain, so a verification still lists the break after it is acknowledged.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::audit::{AuditEntry, AuditKey, AuditRecord, Head};
use crate::id::WorkspaceId;

/// The action of the entry that records a break found while appending or anchoring.
pub const BREAK_ACTION: &str = "audit.chain_break";

/// The action of the entry that records an operator's acknowledgement of a break.
pub const ACK_ACTION: &str = "audit.break_acknowledged";

/// The longest name or reason an acknowledgement keeps, in characters.
pub const MAX_ACK_TEXT: usize = 500;

/// A break recorded in the chain, and its acknowledgement once there is one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecordedBreak {
    /// The marker entry's id.
    pub id: String,
    /// The marker entry's sequence number.
    pub seq: i64,
    /// When it was found.
    pub time: DateTime<Utc>,
    /// `head_missing`, `head_behind`, `head_forged`, `entries_missing` or `head_rolled_back`.
    pub reason: String,
    /// The last position the node could trust: the marker follows it.
    pub resumed_after_seq: i64,
    /// The sequence number of the newest head known to have existed, when known (an
    /// anchored head or the stale head row): entries after `resumed_after_seq` up to it
    /// were lost.
    pub known_head_seq: Option<i64>,
    /// The acknowledgement, once given.
    pub acknowledged: Option<Acknowledgement>,
}

impl RecordedBreak {
    /// Whether this break accounts for the loss of a head anchored at `anchored_seq`: it
    /// must have known of a head at least that new. A break that knew of an older head (a
    /// stale head row someone restored) or of none would under-state what was lost, so it
    /// explains nothing about a newer anchored head.
    pub fn accounts_for(&self, anchored_seq: i64) -> bool {
        self.known_head_seq
            .is_some_and(|known| known >= anchored_seq)
    }
}

/// An operator's acknowledgement of a recorded break.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Acknowledgement {
    /// The acknowledgement entry's id.
    pub id: String,
    /// Its sequence number.
    pub seq: i64,
    /// When.
    pub time: DateTime<Utc>,
    /// Who, as the operator gave it.
    pub by: String,
    /// Why, as the operator gave it.
    pub reason: String,
}

/// The detail of a marker entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BreakDetail {
    reason: String,
    resumed_after_seq: i64,
    #[serde(default)]
    known_head_seq: Option<i64>,
}

/// The detail of an acknowledgement entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AckDetail {
    break_id: String,
    by: String,
    reason: String,
}

/// The marker entry recording a break of `workspace`'s chain: `reason` is what was found,
/// `resumed_after_seq` the last position still trusted, `known_head_seq` the newest head
/// known to have existed.
pub fn break_record(
    workspace: WorkspaceId,
    reason: &str,
    resumed_after_seq: i64,
    known_head_seq: Option<i64>,
) -> AuditRecord {
    let mut record = AuditRecord::system(workspace, BREAK_ACTION, "audit");
    let detail = BreakDetail {
        reason: reason.to_owned(),
        resumed_after_seq,
        known_head_seq,
    };
    record.detail = serde_json::to_string(&detail).ok();
    record
}

/// The entry acknowledging the break recorded by the marker `break_id`, by `by`, because
/// of `reason` (both cut to [`MAX_ACK_TEXT`] characters).
pub fn ack_record(workspace: WorkspaceId, break_id: &str, by: &str, reason: &str) -> AuditRecord {
    let mut record = AuditRecord::system(workspace, ACK_ACTION, "audit");
    record.resource_id = Some(break_id.to_owned());
    let detail = AckDetail {
        break_id: break_id.to_owned(),
        by: by.chars().take(MAX_ACK_TEXT).collect(),
        reason: reason.chars().take(MAX_ACK_TEXT).collect(),
    };
    record.detail = serde_json::to_string(&detail).ok();
    record
}

/// Collects the recorded breaks and acknowledgements of a chain, entry by entry, in
/// sequence order. Only entries the chain walk found intact are fed to it.
#[derive(Debug, Default, Clone)]
pub struct BreakLog {
    breaks: Vec<RecordedBreak>,
}

impl BreakLog {
    /// Takes note of an intact entry.
    pub fn observe(&mut self, entry: &AuditEntry) {
        let r = &entry.record;
        let detail = r.detail.as_deref().unwrap_or("{}");
        if r.action == BREAK_ACTION {
            // A marker whose detail cannot be read still records a break: the server
            // wrote it (it verified), so it counts, with what can be told.
            let d = serde_json::from_str::<BreakDetail>(detail).unwrap_or(BreakDetail {
                reason: "unknown".into(),
                resumed_after_seq: entry.seq - 1,
                known_head_seq: None,
            });
            self.breaks.push(RecordedBreak {
                id: r.id.to_string(),
                seq: entry.seq,
                time: r.time,
                reason: d.reason,
                resumed_after_seq: d.resumed_after_seq,
                known_head_seq: d.known_head_seq,
                acknowledged: None,
            });
        } else if r.action == ACK_ACTION
            && let Ok(d) = serde_json::from_str::<AckDetail>(detail)
            && let Some(b) = self
                .breaks
                .iter_mut()
                .find(|b| b.id == d.break_id && b.acknowledged.is_none())
        {
            b.acknowledged = Some(Acknowledgement {
                id: r.id.to_string(),
                seq: entry.seq,
                time: r.time,
                by: d.by,
                reason: d.reason,
            });
        }
    }

    /// Every recorded break, oldest first.
    pub fn breaks(&self) -> &[RecordedBreak] {
        &self.breaks
    }

    /// The oldest break not acknowledged.
    pub fn first_unacknowledged(&self) -> Option<&RecordedBreak> {
        self.breaks.iter().find(|b| b.acknowledged.is_none())
    }

    /// Moves the collected breaks out.
    pub fn into_breaks(self) -> Vec<RecordedBreak> {
        self.breaks
    }
}

/// One signed head as written to the heads file outside the database: one JSON object per
/// line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnchoredHead {
    /// The workspace.
    pub workspace_id: String,
    /// The head's sequence number.
    pub seq: i64,
    /// The head's hash (the entry at `seq`).
    pub hash: String,
    /// The head's signature under the audit key.
    pub signature: String,
    /// When it was written to the file.
    pub time: DateTime<Utc>,
}

impl AnchoredHead {
    /// Reads one line of a heads file.
    pub fn parse_line(line: &str) -> Result<Self, String> {
        let head: Self = serde_json::from_str(line).map_err(|e| e.to_string())?;
        WorkspaceId::parse(&head.workspace_id).map_err(|e| e.to_string())?;
        if head.seq < 0 {
            return Err("seq is negative".into());
        }
        Ok(head)
    }

    /// The line for the file (without its newline).
    pub fn to_line(&self) -> String {
        // Serializing plain data cannot fail; an empty object would be reported as a
        // bad line by the verifier rather than lost silently.
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }

    /// Whether its signature is one the audit key made.
    pub fn is_signed_by(&self, key: &AuditKey) -> bool {
        let ws = WorkspaceId::from_trusted(self.workspace_id.clone());
        key.head_is_intact(
            &ws,
            &Head {
                seq: self.seq,
                hash: self.hash.clone(),
                signature: self.signature.clone(),
            },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::{AuditKey, GENESIS};

    fn entry(seq: i64, record: AuditRecord, key: &AuditKey) -> AuditEntry {
        AuditEntry {
            seq,
            prev_hash: GENESIS.into(),
            hash: key.link(GENESIS, &record),
            record,
        }
    }

    #[test]
    fn a_break_stays_until_acknowledged_and_is_still_listed_after() {
        let key = AuditKey::generate();
        let ws = WorkspaceId::generate();
        let marker = break_record(ws.clone(), "head_missing", 4, None);
        let marker_id = marker.id.to_string();
        let mut log = BreakLog::default();
        log.observe(&entry(5, marker, &key));
        assert_eq!(
            log.first_unacknowledged().map(|b| b.resumed_after_seq),
            Some(4)
        );
        // An acknowledgement of another break changes nothing.
        log.observe(&entry(
            6,
            ack_record(ws.clone(), "aud_other", "me", "x"),
            &key,
        ));
        assert!(log.first_unacknowledged().is_some());
        let long = "y".repeat(MAX_ACK_TEXT + 10);
        log.observe(&entry(7, ack_record(ws, &marker_id, "ops", &long), &key));
        assert!(log.first_unacknowledged().is_none());
        let acked = log.breaks()[0].acknowledged.as_ref().expect("acknowledged");
        assert_eq!(acked.by, "ops");
        assert_eq!(acked.reason.chars().count(), MAX_ACK_TEXT);
    }

    #[test]
    fn anchored_heads_round_trip_and_check_their_signature() {
        let key = AuditKey::generate();
        let ws = WorkspaceId::generate();
        let head = AnchoredHead {
            workspace_id: ws.to_string(),
            seq: 3,
            hash: "ab".repeat(32),
            signature: key.sign_head(&ws, 3, &"ab".repeat(32)),
            time: crate::audit::now_micros(),
        };
        let again = AnchoredHead::parse_line(&head.to_line()).expect("parses");
        assert_eq!(again, head);
        assert!(again.is_signed_by(&key));
        assert!(!again.is_signed_by(&AuditKey::generate()));
        let mut moved = again.clone();
        moved.seq = 2;
        assert!(!moved.is_signed_by(&key));
        assert!(AnchoredHead::parse_line("not json").is_err());
        assert!(AnchoredHead::parse_line(r#"{"workspaceId":"nope","seq":1,"hash":"","signature":"","time":"2026-01-01T00:00:00Z"}"#).is_err());
    }
}
