//! Aggregation of audit entries: requests that would each cost a row although they differ
//! in nothing worth keeping are counted into one entry per group and second instead.
//!
//! Two kinds of request are aggregated:
//! - allowed forward-auth decisions (batched durability only), grouped by workspace,
//!   credential, route, method, scope and source address, because one entry per decision
//!   would cost more than the decision;
//! - refused requests (every 401, 402, 403 and 429), grouped by workspace, credential (when
//!   known), action, resource, method, scope, source **network** (/24, /64), status and
//!   detail, because a flood of refusals must not cost a row each.
//!
//! The map is bounded: beyond [`MAX_GROUPS`] groups, a new allowed decision is queued as
//! an entry of its own (as without aggregation); beyond `audit_refusal_groups` groups of
//! refusals (or a full map), a new refusal is folded into one overflow group per workspace
//! and status, so a flood of refusals from any number of networks neither grows the map
//! nor costs more than that many rows a second.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use datastack_core::audit::{AuditRecord, network_of};

/// The most distinct groups held at once (besides the overflow groups, at most one per
/// workspace and status).
pub const MAX_GROUPS: usize = 10_000;

/// The action of an overflow group's entry.
pub const OVERFLOW_ACTION: &str = "audit.refusals_overflow";

/// What makes two requests the same for the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    workspace: String,
    credential: Option<String>,
    action: String,
    resource_id: Option<String>,
    method: String,
    scope: Option<String>,
    /// The address for allowed decisions (new-network detection reads it); the network
    /// for refusals.
    source: Option<String>,
    status: u16,
    detail: Option<String>,
}

/// The group of an allowed forward-auth decision, as the fast path knows it without
/// building an entry: the addresses of the identity and the route (kept alive by the
/// group's [`Pins`], so equal addresses mean the same identity and route), the method
/// decided on, the scope and the source address. It stands for the same group as the
/// entry's [`Key`] would: the identity fixes workspace and credential, the route the
/// resource and detail.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DecisionKey {
    /// `Arc::as_ptr` of the identity.
    pub identity: usize,
    /// `Arc::as_ptr` of the route.
    pub route: usize,
    /// The method decided on.
    pub method: axum::http::Method,
    /// The scope the caller acted with.
    pub scope: datastack_core::scope::Scope,
    /// The source address.
    pub source: Option<std::net::IpAddr>,
}

/// What a [`DecisionKey`]'s group holds alive.
#[derive(Debug, Clone)]
pub struct Pins(
    pub std::sync::Arc<crate::credentials::Identity>,
    pub std::sync::Arc<crate::edge::routes::ActiveRoute>,
);

/// A group's key: an entry's fields, or a fast-path decision.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum GroupKey {
    Entry(Key),
    Decision(DecisionKey),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Allowed,
    Refused,
    Overflow,
}

/// How many request ids after the first an aggregated entry lists (so that a request can
/// be found by its id); the rest are counted in `requestIdsOmitted`.
pub const LISTED_REQUEST_IDS: u32 = 50;

/// A group: its first request's entry, how many requests it counts, the ids of the next
/// ones (up to [`LISTED_REQUEST_IDS`]) and the last one's id.
#[derive(Debug, Clone)]
struct Group {
    record: AuditRecord,
    count: u64,
    /// The ids of the requests counted after the first, space-separated (a buffer that
    /// grows by doubling: no allocation per request once grown).
    request_ids: String,
    /// How many ids `request_ids` holds.
    listed: u32,
    last_request_id: Option<String>,
    network: Option<String>,
    kind: Kind,
    _pins: Option<Pins>,
}

impl Group {
    fn new(record: AuditRecord, network: Option<String>, kind: Kind, pins: Option<Pins>) -> Self {
        Group {
            last_request_id: record.request_id.clone(),
            record,
            count: 1,
            request_ids: String::new(),
            listed: 0,
            network,
            kind,
            _pins: pins,
        }
    }

    /// Counts one more request, with its id.
    fn fold(&mut self, request_id: Option<&str>) {
        self.count += 1;
        let Some(id) = request_id else { return };
        if self.listed < LISTED_REQUEST_IDS {
            if !self.request_ids.is_empty() {
                self.request_ids.push(' ');
            }
            self.request_ids.push_str(id);
            self.listed += 1;
        }
        match &mut self.last_request_id {
            // The buffer is reused: no allocation per request.
            Some(last) => {
                last.clear();
                last.push_str(id);
            }
            none => *none = Some(id.to_owned()),
        }
    }

    /// Counts `newer`'s requests after this group's own.
    fn absorb(&mut self, newer: Group) {
        let mut ids = std::iter::once(newer.record.request_id.as_deref())
            .chain(newer.request_ids.split(' ').map(Some))
            .flatten()
            .filter(|id| !id.is_empty());
        // Each of the newer group's requests, with its id while ids are known (beyond the
        // listed ones, only counted).
        for _ in 0..newer.count {
            self.fold(ids.next());
        }
        if newer.last_request_id.is_some() {
            self.last_request_id = newer.last_request_id;
        }
    }
}

/// The groups of a node, with counters for the metrics.
pub struct Groups {
    map: Mutex<HashMap<GroupKey, Group>>,
    /// Groups of refusals in the map, and the most there may be.
    refused: AtomicU64,
    max_refused: u64,
    /// Requests counted into a group that already had an entry on its way.
    folded: AtomicU64,
    /// Refusals folded into an overflow group because the map was full.
    overflowed: AtomicU64,
}

/// Counters since the last call of [`Groups::take_counters`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Counters {
    /// Requests that cost no entry of their own.
    pub folded: u64,
    /// Refusals folded into an overflow group.
    pub overflowed: u64,
}

/// The network of a recorded address, as text (the address itself if it does not parse).
fn network(source_ip: Option<&str>) -> Option<String> {
    source_ip.map(|ip| {
        ip.parse()
            .map_or_else(|_| ip.to_owned(), |a| network_of(a).to_string())
    })
}

impl Groups {
    /// An empty set holding at most `max_refused` groups of refusals at once.
    pub fn new(max_refused: usize) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            refused: AtomicU64::new(0),
            max_refused: max_refused as u64,
            folded: AtomicU64::new(0),
            overflowed: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<GroupKey, Group>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn key(record: &AuditRecord, method: &str, source: Option<String>) -> Key {
        Key {
            workspace: record.workspace_id.to_string(),
            credential: record.credential_id.clone(),
            action: record.action.clone(),
            resource_id: record.resource_id.clone(),
            method: method.to_owned(),
            scope: record.scope.clone(),
            source,
            status: record.status,
            detail: record.detail.clone(),
        }
    }

    /// Counts an allowed decision. Returns the record when the map is full: it is then
    /// queued as an entry of its own.
    pub fn add_allowed(&self, record: AuditRecord, method: &str) -> Option<AuditRecord> {
        let key = Self::key(&record, method, record.source_ip.clone());
        self.add(GroupKey::Entry(key), record, Kind::Allowed, None, None)
    }

    /// Counts a refusal; a full map folds it into its workspace's overflow group.
    pub fn add_refused(&self, record: AuditRecord, method: &str) {
        let net = network(record.source_ip.as_deref());
        let key = Self::key(&record, method, net.clone());
        if let Some(record) = self.add(GroupKey::Entry(key), record, Kind::Refused, net, None) {
            self.overflowed.fetch_add(1, Ordering::Relaxed);
            let key = Key {
                workspace: record.workspace_id.to_string(),
                credential: None,
                action: OVERFLOW_ACTION.to_owned(),
                resource_id: None,
                method: String::new(),
                scope: None,
                source: None,
                status: record.status,
                detail: None,
            };
            let key = GroupKey::Entry(key);
            let mut map = self.lock();
            match map.get_mut(&key) {
                Some(g) => {
                    g.fold(record.request_id.as_deref());
                    self.folded.fetch_add(1, Ordering::Relaxed);
                }
                None => {
                    let mut record = record;
                    record.action = OVERFLOW_ACTION.to_owned();
                    record.principal_id = None;
                    record.credential_id = None;
                    record.resource_type = None;
                    record.resource_id = None;
                    record.scope = None;
                    record.source_ip = None;
                    record.user_agent = None;
                    record.detail = None;
                    map.insert(key, Group::new(record, None, Kind::Overflow, None));
                }
            }
        }
    }

    /// Counts `record` into its group, or starts one; returns it when there is no room.
    /// Counts an allowed decision into its existing group (the fast path's audit of the
    /// requests after a group's first: no entry is built). False when there is no group
    /// yet: the caller builds the entry and calls [`Self::add_decision`].
    pub fn fold_decision(&self, key: &DecisionKey, request_id: &str) -> bool {
        let key = GroupKey::Decision(key.clone());
        let mut map = self.lock();
        let Some(g) = map.get_mut(&key) else {
            return false;
        };
        g.fold(Some(request_id));
        drop(map);
        self.folded.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Starts the group of an allowed decision with its first entry (or counts into it);
    /// returns the entry when the map is full.
    pub fn add_decision(
        &self,
        key: DecisionKey,
        record: AuditRecord,
        pins: Pins,
    ) -> Option<AuditRecord> {
        self.add(
            GroupKey::Decision(key),
            record,
            Kind::Allowed,
            None,
            Some(pins),
        )
    }

    fn add(
        &self,
        key: GroupKey,
        record: AuditRecord,
        kind: Kind,
        network: Option<String>,
        pins: Option<Pins>,
    ) -> Option<AuditRecord> {
        let mut map = self.lock();
        if let Some(g) = map.get_mut(&key) {
            g.fold(record.request_id.as_deref());
            self.folded.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if map.len() >= MAX_GROUPS
            || (kind == Kind::Refused && self.refused.load(Ordering::Relaxed) >= self.max_refused)
        {
            return Some(record);
        }
        if kind == Kind::Refused {
            self.refused.fetch_add(1, Ordering::Relaxed);
        }
        map.insert(key, Group::new(record, network, kind, pins));
        None
    }

    /// Takes every group as its entry and the number of requests it stands for.
    pub fn take(&self) -> Vec<(AuditRecord, u64)> {
        let taken = {
            let mut map = self.lock();
            self.refused.store(0, Ordering::Relaxed);
            std::mem::take(&mut *map)
        };
        taken.into_values().map(|g| (entry(&g), g.count)).collect()
    }

    /// Hands every group to `send` as its entry and count; the groups `send` refuses stay
    /// (merged with what was counted meanwhile). Returns how many were sent.
    pub fn flush(&self, mut send: impl FnMut(AuditRecord, u64) -> bool) -> usize {
        let taken = {
            let mut map = self.lock();
            if map.is_empty() {
                return 0;
            }
            self.refused.store(0, Ordering::Relaxed);
            std::mem::take(&mut *map)
        };
        let mut sent = 0;
        let mut left = Vec::new();
        for (key, group) in taken {
            if send(entry(&group), group.count) {
                sent += 1;
            } else {
                left.push((key, group));
            }
        }
        if !left.is_empty() {
            let mut map = self.lock();
            for (key, group) in left {
                match map.get_mut(&key) {
                    // The kept group is older: it stays first, and counts the newer.
                    Some(newer) => {
                        let newer_group = std::mem::replace(newer, group);
                        newer.absorb(newer_group);
                    }
                    None => {
                        if group.kind == Kind::Refused {
                            self.refused.fetch_add(1, Ordering::Relaxed);
                        }
                        map.insert(key, group);
                    }
                }
            }
        }
        sent
    }

    /// The counters since the last call.
    pub fn take_counters(&self) -> Counters {
        Counters {
            folded: self.folded.swap(0, Ordering::Relaxed),
            overflowed: self.overflowed.swap(0, Ordering::Relaxed),
        }
    }
}

/// The entry of a group: its first request's, with, when it stands for more than one
/// request (always for an overflow group), `count`, `aggregated`, `lastRequestId`,
/// `requestIds` (the ids of the next requests, up to [`LISTED_REQUEST_IDS`]) and
/// `requestIdsOmitted` (those not listed) in the detail, and for refusals the source
/// `network`.
fn entry(group: &Group) -> AuditRecord {
    let mut record = group.record.clone();
    if group.count == 1 && group.kind != Kind::Overflow {
        return record;
    }
    let mut detail = record
        .detail
        .as_deref()
        .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .filter(serde_json::Value::is_object)
        .unwrap_or_else(|| serde_json::json!({}));
    detail["count"] = serde_json::Value::from(group.count);
    let what = match group.kind {
        Kind::Allowed => "allowed decisions in the second from `time`",
        Kind::Refused => "refused requests in the second from `time`",
        Kind::Overflow => {
            "refused requests in the second from `time` that found the aggregation map full"
        }
    };
    detail["aggregated"] = serde_json::Value::from(what);
    if let Some(last) = &group.last_request_id {
        detail["lastRequestId"] = serde_json::Value::from(last.as_str());
    }
    if group.listed > 0 {
        detail["requestIds"] = group.request_ids.split(' ').collect::<Vec<_>>().into();
    }
    let omitted = group.count.saturating_sub(1 + u64::from(group.listed));
    if omitted > 0 {
        detail["requestIdsOmitted"] = serde_json::Value::from(omitted);
    }
    if let Some(net) = &group.network {
        detail["network"] = serde_json::Value::from(net.as_str());
    }
    record.detail = Some(detail.to_string());
    record
}

#[cfg(test)]
mod tests {
    use super::*;
    use datastack_core::id::WorkspaceId;

    fn refusal(ip: &str, request_id: &str) -> AuditRecord {
        let mut r =
            AuditRecord::system(WorkspaceId::from_trusted("ws_root".into()), "me.read", "me");
        r.status = 401;
        r.outcome = datastack_core::audit::Outcome::Denied;
        r.source_ip = Some(ip.to_owned());
        r.request_id = Some(request_id.to_owned());
        r
    }

    #[test]
    fn refusals_from_one_network_make_one_entry_with_a_count() {
        let groups = Groups::new(1_000);
        groups.add_refused(refusal("203.0.113.5", "a"), "GET");
        groups.add_refused(refusal("203.0.113.9", "b"), "GET");
        groups.add_refused(refusal("198.51.100.1", "c"), "GET");
        let mut entries = groups.take();
        entries.sort_by_key(|(_, n)| *n);
        assert_eq!(entries.len(), 2);
        let (record, count) = &entries[1];
        assert_eq!(*count, 2);
        let detail: serde_json::Value =
            serde_json::from_str(record.detail.as_deref().unwrap_or("{}")).unwrap_or_default();
        assert_eq!(detail["count"], 2);
        assert_eq!(detail["network"], "203.0.113.0/24");
        assert_eq!(detail["lastRequestId"], "b");
        assert_eq!(record.request_id.as_deref(), Some("a"));
        // A single refusal's entry is as it would be without aggregation.
        assert_eq!(entries[0].0.detail, None);
    }

    #[test]
    fn a_full_map_folds_refusals_into_an_overflow_group() {
        let groups = Groups::new(MAX_GROUPS);
        for i in 0..MAX_GROUPS + 500 {
            let mut r = refusal("203.0.113.5", &format!("r{i}"));
            r.resource_id = Some(format!("usr_{i:032x}"));
            groups.add_refused(r, "GET");
        }
        let entries = groups.take();
        assert_eq!(entries.len(), MAX_GROUPS + 1);
        let overflow = entries
            .iter()
            .find(|(r, _)| r.action == OVERFLOW_ACTION)
            .map(|(_, n)| *n);
        assert_eq!(overflow, Some(500));
        assert_eq!(groups.take_counters().overflowed, 500);
    }

    #[test]
    fn refusals_beyond_their_share_fold_into_an_overflow_group() {
        let groups = Groups::new(100);
        for i in 0..300u32 {
            let ip = format!("10.{}.{}.1", i / 256, i % 256);
            groups.add_refused(refusal(&ip, &format!("r{i}")), "GET");
        }
        let entries = groups.take();
        assert_eq!(entries.len(), 101);
        let total: u64 = entries.iter().map(|(_, n)| n).sum();
        assert_eq!(total, 300, "every refusal is counted");
        // After a flush, the share is free again.
        groups.add_refused(refusal("198.51.100.1", "x"), "GET");
        assert_eq!(groups.take()[0].0.action, "me.read");
    }
}
