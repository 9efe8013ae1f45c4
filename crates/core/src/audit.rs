//! The audit trail's records and the rules that make it tamper-evident.
//!
//! Each workspace has one chain of entries. An entry's `hash` is an HMAC-SHA256, under the
//! deployment's audit key, of the previous entry's hash and every field of the entry, so an
//! entry commits to its whole past. Someone who can write the database but does not hold
//! the key can neither change an entry nor recompute the chain after removing one. The
//! chain's head (its last sequence number and hash) is signed with the same key, which makes
//! cutting entries off the end evident too; a signed checkpoint marks where the retained
//! chain starts after a retention purge. A head found missing or stale is never signed
//! again over the shorter chain: the break is recorded in the chain and reported until an
//! operator acknowledges it (see [`crate::audit_breaks`]).
//!
//! [`ChainVerifier`] walks a chain in sequence order and reports the first break.

use std::net::IpAddr;

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use hmac::{Hmac, Mac};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::id::{AuditId, EventId, WorkspaceId};

type HmacSha256 = Hmac<Sha256>;

/// The `prev_hash` of a chain's first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How a request ended, for the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// The operation was performed.
    Allowed,
    /// The caller was refused: no or a bad credential, a scope, a role, a limit.
    Denied,
    /// The request failed for another reason: bad input, a missing record, a server fault.
    Error,
}

impl Outcome {
    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::Denied => "denied",
            Outcome::Error => "error",
        }
    }

    /// Parses a stored or queried name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "allowed" => Some(Outcome::Allowed),
            "denied" => Some(Outcome::Denied),
            "error" => Some(Outcome::Error),
            _ => None,
        }
    }

    /// The outcome an HTTP status stands for: 2xx/3xx allowed; 401, 402, 403 and 429
    /// denied; anything else an error.
    pub fn of_status(status: u16) -> Self {
        match status {
            0..=399 => Outcome::Allowed,
            401 | 402 | 403 | 429 => Outcome::Denied,
            _ => Outcome::Error,
        }
    }
}

/// One audited event, before it joins its workspace's chain. It never holds a secret:
/// credentials appear by id, and `detail` is built from fields chosen by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditRecord {
    /// Its id.
    pub id: AuditId,
    /// When it happened (microsecond precision, as stored).
    pub time: DateTime<Utc>,
    /// The workspace whose chain holds it.
    pub workspace_id: WorkspaceId,
    /// The request it belongs to; `None` for the server's own actions.
    pub request_id: Option<String>,
    /// The acting principal, when known.
    pub principal_id: Option<String>,
    /// The credential used (its id, never its secret), when known.
    pub credential_id: Option<String>,
    /// What was done, e.g. `tokens.create`.
    pub action: String,
    /// The kind of resource acted on, e.g. `tokens`.
    pub resource_type: Option<String>,
    /// The resource's id.
    pub resource_id: Option<String>,
    /// The scope the caller acted with (the `x-datastack-scope` it named).
    pub scope: Option<String>,
    /// The client's address.
    pub source_ip: Option<String>,
    /// The client's `User-Agent`, cut to 256 characters.
    pub user_agent: Option<String>,
    /// How it ended.
    pub outcome: Outcome,
    /// The HTTP status answered (0 for the server's own actions).
    pub status: u16,
    /// How long the request had taken when the entry was made, in microseconds.
    pub latency_us: i64,
    /// A small JSON object with action-specific detail (never a secret).
    pub detail: Option<String>,
}

/// The longest `User-Agent` kept.
pub const MAX_USER_AGENT: usize = 256;

impl AuditRecord {
    /// A record of the server's own action (a purge, an automatic revocation) at `now`.
    pub fn system(workspace_id: WorkspaceId, action: &str, resource_type: &str) -> Self {
        Self {
            id: AuditId::generate(),
            time: now_micros(),
            workspace_id,
            request_id: None,
            principal_id: None,
            credential_id: None,
            action: action.to_owned(),
            resource_type: Some(resource_type.to_owned()),
            resource_id: None,
            scope: None,
            source_ip: None,
            user_agent: None,
            outcome: Outcome::Allowed,
            status: 0,
            latency_us: 0,
            detail: None,
        }
    }
}

/// An entry as stored: a record and its place in the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Its position in its workspace's chain, from 1.
    pub seq: i64,
    /// The previous entry's hash ([`GENESIS`] for the first).
    pub prev_hash: String,
    /// This entry's hash.
    pub hash: String,
    /// What it records.
    pub record: AuditRecord,
}

/// The current time, cut to the microseconds every store keeps.
pub fn now_micros() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// The network a client address is counted in for "new network" detection: its /24 for
/// IPv4, its /64 for IPv6.
pub fn network_of(ip: IpAddr) -> IpNet {
    match ip {
        IpAddr::V4(v4) => match Ipv4Net::new(v4, 24) {
            Ok(net) => IpNet::V4(net.trunc()),
            Err(_) => IpNet::from(ip),
        },
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => network_of(IpAddr::V4(v4)),
            None => match Ipv6Net::new(v6, 64) {
                Ok(net) => IpNet::V6(net.trunc()),
                Err(_) => IpNet::from(ip),
            },
        },
    }
}

/// A security event: something worth telling people about, delivered by webhooks.
#[derive(Debug, Clone, PartialEq)]
pub struct SecurityEvent {
    /// Its id.
    pub id: EventId,
    /// The workspace it concerns.
    pub workspace_id: WorkspaceId,
    /// Its type, e.g. `auth.failure_burst`.
    pub event_type: String,
    /// When it happened.
    pub time: DateTime<Utc>,
    /// Its payload (a JSON object carrying `request_id` when a request caused it).
    pub payload: serde_json::Value,
}

impl SecurityEvent {
    /// A new event at the current time.
    pub fn new(workspace_id: WorkspaceId, event_type: &str, payload: serde_json::Value) -> Self {
        Self {
            id: EventId::generate(),
            workspace_id,
            event_type: event_type.to_owned(),
            time: now_micros(),
            payload,
        }
    }
}

/// Where a workspace's retained chain starts after a purge: the last purged entry's
/// sequence number and hash, signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The workspace.
    pub workspace_id: WorkspaceId,
    /// The last purged entry's sequence number.
    pub seq: i64,
    /// The last purged entry's hash: the first retained entry's `prev_hash`.
    pub hash: String,
    /// Entries older than this were purged.
    pub purged_before: DateTime<Utc>,
    /// The signature.
    pub signature: String,
}

/// A chain's last sequence number and hash, signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The last entry's sequence number (0: empty).
    pub seq: i64,
    /// The last entry's hash ([`GENESIS`] when empty).
    pub hash: String,
    /// The signature.
    pub signature: String,
}

/// Why an audit key could not be read.
#[derive(Debug, thiserror::Error)]
#[error("the audit key must be 64 hexadecimal characters (32 bytes)")]
pub struct BadAuditKey;

/// The deployment's audit key: a 256-bit HMAC key that every node shares.
pub struct AuditKey(Zeroizing<[u8; 32]>);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuditKey({})", self.fingerprint())
    }
}

impl AuditKey {
    /// A new random key.
    pub fn generate() -> Self {
        let mut bytes = Zeroizing::new([0u8; 32]);
        getrandom::fill(bytes.as_mut()).expect("the operating system's random source failed");
        Self(bytes)
    }

    /// Reads a key written by [`AuditKey::to_hex`] (surrounding whitespace is ignored).
    pub fn from_hex(text: &str) -> Result<Self, BadAuditKey> {
        let mut bytes = Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(text.trim(), bytes.as_mut()).map_err(|_| BadAuditKey)?;
        Ok(Self(bytes))
    }

    /// The key as hex, to be written to a key file.
    pub fn to_hex(&self) -> Zeroizing<String> {
        Zeroizing::new(hex::encode(self.0.as_ref()))
    }

    /// A public name of the key (16 hex characters of a hash of it), stored with the
    /// chain so a node started with another key is refused instead of forking the chain.
    pub fn fingerprint(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"datastack audit key fingerprint\0");
        h.update(self.0.as_ref());
        hex::encode(&h.finalize()[..8])
    }

    /// A key for another purpose, derived from this one with HKDF-SHA256 (`purpose` is the
    /// info): the audit key is the one secret every node holds outside the database, so
    /// keys the database keeps sealed are sealed with keys derived from it.
    pub fn derive(&self, purpose: &str) -> Zeroizing<[u8; 32]> {
        let mut out = Zeroizing::new([0u8; 32]);
        hkdf::Hkdf::<Sha256>::new(Some(b"datastack key derivation v1"), self.0.as_ref())
            .expand(purpose.as_bytes(), out.as_mut())
            .expect("32 bytes is a valid HKDF-SHA256 output length");
        out
    }

    fn mac(&self, domain: &[u8]) -> HmacSha256 {
        let mut mac =
            HmacSha256::new_from_slice(self.0.as_ref()).expect("HMAC accepts keys of any length");
        field(&mut mac, Some(domain));
        mac
    }

    fn record_mac(&self, prev_hash: &str, r: &AuditRecord) -> HmacSha256 {
        let mut mac = self.mac(b"entry/v1");
        let time = r.time.to_rfc3339_opts(SecondsFormat::Micros, true);
        let status = r.status.to_string();
        let latency = r.latency_us.to_string();
        for value in [
            Some(prev_hash),
            Some(r.id.as_str()),
            Some(time.as_str()),
            Some(r.workspace_id.as_str()),
            r.request_id.as_deref(),
            r.principal_id.as_deref(),
            r.credential_id.as_deref(),
            Some(r.action.as_str()),
            r.resource_type.as_deref(),
            r.resource_id.as_deref(),
            r.scope.as_deref(),
            r.source_ip.as_deref(),
            r.user_agent.as_deref(),
            Some(r.outcome.as_str()),
            Some(status.as_str()),
            Some(latency.as_str()),
            r.detail.as_deref(),
        ] {
            field(&mut mac, value.map(str::as_bytes));
        }
        mac
    }

    /// The hash of `record` following an entry whose hash is `prev_hash`.
    pub fn link(&self, prev_hash: &str, record: &AuditRecord) -> String {
        hex::encode(self.record_mac(prev_hash, record).finalize().into_bytes())
    }

    /// Whether `entry.hash` is the right hash of its record and `prev_hash`, compared in
    /// constant time.
    pub fn entry_is_intact(&self, entry: &AuditEntry) -> bool {
        verify_hex(
            self.record_mac(&entry.prev_hash, &entry.record),
            &entry.hash,
        )
    }

    fn head_mac(&self, workspace: &WorkspaceId, seq: i64, hash: &str) -> HmacSha256 {
        let mut mac = self.mac(b"head/v1");
        let seq = seq.to_string();
        for value in [workspace.as_str(), seq.as_str(), hash] {
            field(&mut mac, Some(value.as_bytes()));
        }
        mac
    }

    /// Signs a chain head.
    pub fn sign_head(&self, workspace: &WorkspaceId, seq: i64, hash: &str) -> String {
        hex::encode(self.head_mac(workspace, seq, hash).finalize().into_bytes())
    }

    /// Whether a head's signature is right.
    pub fn head_is_intact(&self, workspace: &WorkspaceId, head: &Head) -> bool {
        verify_hex(
            self.head_mac(workspace, head.seq, &head.hash),
            &head.signature,
        )
    }

    fn checkpoint_mac(
        &self,
        workspace: &WorkspaceId,
        seq: i64,
        hash: &str,
        purged_before: DateTime<Utc>,
    ) -> HmacSha256 {
        let mut mac = self.mac(b"checkpoint/v1");
        let seq = seq.to_string();
        let before = purged_before.to_rfc3339_opts(SecondsFormat::Micros, true);
        for value in [workspace.as_str(), seq.as_str(), hash, before.as_str()] {
            field(&mut mac, Some(value.as_bytes()));
        }
        mac
    }

    /// A signed checkpoint after purging every entry up to `seq` (whose hash is `hash`).
    pub fn checkpoint(
        &self,
        workspace: &WorkspaceId,
        seq: i64,
        hash: &str,
        purged_before: DateTime<Utc>,
    ) -> Checkpoint {
        let purged_before = purged_before.trunc_subsecs(6);
        let signature = hex::encode(
            self.checkpoint_mac(workspace, seq, hash, purged_before)
                .finalize()
                .into_bytes(),
        );
        Checkpoint {
            workspace_id: workspace.clone(),
            seq,
            hash: hash.to_owned(),
            purged_before,
            signature,
        }
    }

    /// Whether a checkpoint's signature is right.
    pub fn checkpoint_is_intact(&self, c: &Checkpoint) -> bool {
        verify_hex(
            self.checkpoint_mac(&c.workspace_id, c.seq, &c.hash, c.purged_before),
            &c.signature,
        )
    }
}

/// Feeds one length-framed field: a value cannot run into the next one, and an absent
/// value differs from an empty one.
fn field(mac: &mut HmacSha256, value: Option<&[u8]>) {
    match value {
        None => mac.update(&u32::MAX.to_be_bytes()),
        Some(bytes) => {
            let len = u32::try_from(bytes.len()).unwrap_or(u32::MAX - 1);
            mac.update(&len.to_be_bytes());
            mac.update(bytes);
        }
    }
}

fn verify_hex(mac: HmacSha256, expected_hex: &str) -> bool {
    match hex::decode(expected_hex) {
        Ok(expected) => mac.verify_slice(&expected).is_ok(),
        Err(_) => false,
    }
}

/// The first thing wrong with a chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(
    tag = "problem",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum ChainBreak {
    /// The entry's content (or its recorded predecessor) was changed.
    Altered {
        /// The entry.
        id: String,
        /// Its sequence number.
        seq: i64,
    },
    /// Entries between the last good one and this one are missing.
    Removed {
        /// The first entry after the gap.
        id: String,
        /// Its sequence number.
        seq: i64,
    },
    /// The entry is intact but not where it belongs in the chain.
    Reordered {
        /// The entry.
        id: String,
        /// Its sequence number.
        seq: i64,
    },
    /// Entries after the last one present are missing: the signed head names a later one.
    Truncated {
        /// The last entry present, if any.
        after_id: Option<String>,
        /// The sequence number the signed head names.
        head_seq: i64,
    },
    /// The chain head's signature is wrong.
    HeadForged,
    /// The chain has no head: every workspace's chain starts when the workspace is created,
    /// so its head (and entries) were deleted.
    HeadMissing,
    /// The chain's first entry is not its workspace's creation: the chain was wiped and
    /// started again.
    StartMissing {
        /// The entry found first.
        id: String,
        /// Its sequence number (1).
        seq: i64,
    },
    /// The retention checkpoint's signature is wrong.
    CheckpointForged,
    /// A node found the chain's head missing, behind or ahead of its last entry, or older
    /// than a head anchored outside the database, recorded the break in the chain (the marker entry
    /// `id`) and went on after `resumedAfterSeq`; no operator has acknowledged it yet.
    UnacknowledgedBreak {
        /// The marker entry.
        id: String,
        /// Its sequence number.
        seq: i64,
        /// `head_missing`, `head_behind`, `head_forged`, `entries_missing` or `head_rolled_back`.
        reason: String,
        /// The last position the node could trust.
        resumed_after_seq: i64,
    },
}

/// Walks one workspace's chain in sequence order.
pub struct ChainVerifier<'k> {
    key: &'k AuditKey,
    expected_prev: String,
    expected_seq: i64,
    last_id: Option<String>,
    checked: u64,
    broken: Option<ChainBreak>,
    breaks: crate::audit_breaks::BreakLog,
}

/// What a walk found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The entry is in place.
    Ok,
    /// The entry's link to its predecessor is broken though the entry itself is intact:
    /// the caller tells removal from reordering by looking for the expected successor
    /// ([`ChainVerifier::expected_prev`]) and calls [`ChainVerifier::broken_link`].
    LinkBroken,
    /// The chain is broken; see [`ChainVerifier::result`].
    Broken,
}

impl<'k> ChainVerifier<'k> {
    /// Starts a walk at the chain's beginning, or after `checkpoint` when entries were
    /// purged.
    pub fn new(key: &'k AuditKey, checkpoint: Option<&Checkpoint>) -> Self {
        let mut v = Self {
            key,
            expected_prev: GENESIS.to_owned(),
            expected_seq: 1,
            last_id: None,
            checked: 0,
            broken: None,
            breaks: crate::audit_breaks::BreakLog::default(),
        };
        if let Some(c) = checkpoint {
            if !key.checkpoint_is_intact(c) {
                v.broken = Some(ChainBreak::CheckpointForged);
            }
            v.expected_prev = c.hash.clone();
            v.expected_seq = c.seq + 1;
        }
        v
    }

    /// The hash the next entry must name as its predecessor.
    pub fn expected_prev(&self) -> &str {
        &self.expected_prev
    }

    /// How many entries were found in place.
    pub fn checked(&self) -> u64 {
        self.checked
    }

    /// Checks the next entry.
    pub fn step(&mut self, entry: &AuditEntry) -> Step {
        if self.broken.is_some() {
            return Step::Broken;
        }
        if !self.key.entry_is_intact(entry) {
            self.broken = Some(ChainBreak::Altered {
                id: entry.record.id.to_string(),
                seq: entry.seq,
            });
            return Step::Broken;
        }
        if entry.prev_hash != self.expected_prev {
            return Step::LinkBroken;
        }
        if entry.seq != self.expected_seq {
            // Intact and linked, but renumbered: its sequence number was changed.
            self.broken = Some(ChainBreak::Altered {
                id: entry.record.id.to_string(),
                seq: entry.seq,
            });
            return Step::Broken;
        }
        self.expected_prev = entry.hash.clone();
        self.expected_seq += 1;
        self.last_id = Some(entry.record.id.to_string());
        self.checked += 1;
        self.breaks.observe(entry);
        Step::Ok
    }

    /// Records the break of an entry whose step was [`Step::LinkBroken`]: `successor_exists`
    /// says whether some entry of the chain does name the expected predecessor (the chain
    /// continues elsewhere: reordered) or none does (removed).
    pub fn broken_link(&mut self, entry: &AuditEntry, successor_exists: bool) {
        let (id, seq) = (entry.record.id.to_string(), entry.seq);
        self.broken = Some(if successor_exists {
            ChainBreak::Reordered { id, seq }
        } else {
            ChainBreak::Removed { id, seq }
        });
    }

    /// The break found so far, taken out of the walk.
    pub fn take_break(&mut self) -> Option<ChainBreak> {
        self.broken.take()
    }

    /// The breaks recorded in the part of the chain walked so far, acknowledged or not.
    pub fn recorded_breaks(&self) -> &[crate::audit_breaks::RecordedBreak] {
        self.breaks.breaks()
    }

    /// Ends the walk against the chain's signed head; a recorded break no operator has
    /// acknowledged keeps the chain broken.
    pub fn finish(
        mut self,
        workspace: &WorkspaceId,
        head: Option<&Head>,
    ) -> Result<u64, ChainBreak> {
        if let Some(b) = self.broken.take() {
            return Err(b);
        }
        let Some(head) = head else {
            return Err(ChainBreak::HeadMissing);
        };
        if !self.key.head_is_intact(workspace, head) {
            return Err(ChainBreak::HeadForged);
        }
        if head.seq != self.expected_seq - 1 || head.hash != self.expected_prev {
            return Err(ChainBreak::Truncated {
                after_id: self.last_id,
                head_seq: head.seq,
            });
        }
        if let Some(b) = self.breaks.first_unacknowledged() {
            return Err(ChainBreak::UnacknowledgedBreak {
                id: b.id.clone(),
                seq: b.seq,
                reason: b.reason.clone(),
                resumed_after_seq: b.resumed_after_seq,
            });
        }
        Ok(self.checked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(ws: &WorkspaceId, action: &str) -> AuditRecord {
        let mut r = AuditRecord::system(ws.clone(), action, "tokens");
        r.request_id = Some("req-1".into());
        r
    }

    fn chain(key: &AuditKey, ws: &WorkspaceId, n: usize) -> (Vec<AuditEntry>, Head) {
        let mut prev = GENESIS.to_owned();
        let mut out = Vec::new();
        for i in 0..n {
            let r = record(ws, &format!("a{i}"));
            let hash = key.link(&prev, &r);
            out.push(AuditEntry {
                seq: i as i64 + 1,
                prev_hash: prev.clone(),
                hash: hash.clone(),
                record: r,
            });
            prev = hash;
        }
        let seq = n as i64;
        let head = Head {
            seq,
            hash: prev.clone(),
            signature: key.sign_head(ws, seq, &prev),
        };
        (out, head)
    }

    fn walk(
        key: &AuditKey,
        ws: &WorkspaceId,
        entries: &[AuditEntry],
        head: &Head,
    ) -> Result<u64, ChainBreak> {
        let mut v = ChainVerifier::new(key, None);
        for e in entries {
            if v.step(e) == Step::LinkBroken {
                let exists = entries.iter().any(|x| x.prev_hash == v.expected_prev());
                v.broken_link(e, exists);
            }
        }
        v.finish(ws, Some(head))
    }

    #[test]
    fn an_intact_chain_verifies() {
        let key = AuditKey::generate();
        let ws = WorkspaceId::generate();
        let (entries, head) = chain(&key, &ws, 5);
        assert_eq!(walk(&key, &ws, &entries, &head), Ok(5));
    }

    #[test]
    fn alteration_removal_reordering_and_truncation_are_found() {
        let key = AuditKey::generate();
        let ws = WorkspaceId::generate();
        let (entries, head) = chain(&key, &ws, 5);

        let mut altered = entries.clone();
        altered[2].record.outcome = Outcome::Denied;
        let id = altered[2].record.id.to_string();
        assert_eq!(
            walk(&key, &ws, &altered, &head),
            Err(ChainBreak::Altered { id, seq: 3 })
        );

        let mut removed = entries.clone();
        removed.remove(1);
        let id = removed[1].record.id.to_string();
        assert_eq!(
            walk(&key, &ws, &removed, &head),
            Err(ChainBreak::Removed { id, seq: 3 })
        );

        let mut swapped = entries.clone();
        swapped.swap(1, 2);
        let id = swapped[1].record.id.to_string();
        assert_eq!(
            walk(&key, &ws, &swapped, &head),
            Err(ChainBreak::Reordered { id, seq: 3 })
        );

        let truncated = &entries[..4];
        assert!(matches!(
            walk(&key, &ws, truncated, &head),
            Err(ChainBreak::Truncated { head_seq: 5, .. })
        ));

        let other = AuditKey::generate();
        assert!(matches!(
            walk(&other, &ws, &entries, &head),
            Err(ChainBreak::Altered { seq: 1, .. })
        ));
    }

    #[test]
    fn a_checkpoint_starts_the_retained_chain() {
        let key = AuditKey::generate();
        let ws = WorkspaceId::generate();
        let (entries, head) = chain(&key, &ws, 5);
        let cp = key.checkpoint(&ws, 2, &entries[1].hash, Utc::now());
        let mut v = ChainVerifier::new(&key, Some(&cp));
        for e in &entries[2..] {
            assert_eq!(v.step(e), Step::Ok);
        }
        assert_eq!(v.finish(&ws, Some(&head)), Ok(3));

        let mut forged = cp.clone();
        forged.seq = 3;
        let v = ChainVerifier::new(&key, Some(&forged));
        assert_eq!(
            v.finish(&ws, Some(&head)),
            Err(ChainBreak::CheckpointForged)
        );
    }

    #[test]
    fn keys_round_trip_and_fields_are_framed() {
        let key = AuditKey::generate();
        let again = AuditKey::from_hex(&key.to_hex()).expect("hex");
        assert_eq!(key.fingerprint(), again.fingerprint());
        assert!(AuditKey::from_hex("zz").is_err());
        let ws = WorkspaceId::generate();
        // Moving a character from one field to the next changes the hash.
        let mut a = record(&ws, "ab");
        a.resource_id = Some("c".into());
        let mut b = a.clone();
        b.action = "a".into();
        b.resource_id = Some("bc".into());
        assert_ne!(key.link(GENESIS, &a), key.link(GENESIS, &b));
        let mut c = a.clone();
        c.detail = Some(String::new());
        assert_ne!(key.link(GENESIS, &a), key.link(GENESIS, &c));
    }

    #[test]
    fn networks_group_nearby_addresses() {
        let a: IpAddr = "203.0.113.7".parse().expect("ip");
        let b: IpAddr = "203.0.113.200".parse().expect("ip");
        let c: IpAddr = "203.0.114.1".parse().expect("ip");
        assert_eq!(network_of(a), network_of(b));
        assert_ne!(network_of(a), network_of(c));
        assert_eq!(network_of(a).to_string(), "203.0.113.0/24");
        let v6: IpAddr = "2001:db8:1:2:3:4:5:6".parse().expect("ip");
        assert_eq!(network_of(v6).to_string(), "2001:db8:1:2::/64");
        let mapped: IpAddr = "::ffff:203.0.113.9".parse().expect("ip");
        assert_eq!(network_of(mapped), network_of(a));
    }

    #[test]
    fn outcomes_follow_the_status() {
        assert_eq!(Outcome::of_status(201), Outcome::Allowed);
        assert_eq!(Outcome::of_status(401), Outcome::Denied);
        assert_eq!(Outcome::of_status(429), Outcome::Denied);
        assert_eq!(Outcome::of_status(400), Outcome::Error);
        assert_eq!(Outcome::of_status(500), Outcome::Error);
    }
}
