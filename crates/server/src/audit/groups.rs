//! Aggregation of audit entries: requests that would each cost a row although they differ
//! in nothing worth keeping are counted into one entry per group and second instead.
//!
//! Three kinds of request are aggregated:
//! - successful reads (`GET` and `HEAD` answered 2xx or 3xx by a known caller, batched
//!   durability only), grouped by every field of their entry but its id, time, request id
//!   and latency, which the group's entry lists for each request: nothing is lost, and
//!   the groups are written with every group commit (not once a second), so a crash loses
//!   no more than it would with an entry per read ([`Reads`]);
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
    let what = match group.kind {
        Kind::Allowed => "allowed decisions in the second from `time`",
        Kind::Refused => "refused requests in the second from `time`",
        Kind::Overflow => {
            "refused requests in the second from `time` that found the aggregation map full"
        }
    };
    let mut more = serde_json::Map::new();
    if let Some(last) = &group.last_request_id {
        more.insert("lastRequestId".into(), last.as_str().into());
    }
    if group.listed > 0 {
        more.insert(
            "requestIds".into(),
            group.request_ids.split(' ').collect::<Vec<_>>().into(),
        );
    }
    let omitted = group.count.saturating_sub(1 + u64::from(group.listed));
    if omitted > 0 {
        more.insert("requestIdsOmitted".into(), omitted.into());
    }
    if let Some(net) = &group.network {
        more.insert("network".into(), net.as_str().into());
    }
    record.detail = Some(aggregated_detail(
        record.detail.as_deref(),
        what,
        group.count,
        more,
        None,
    ));
    record
}

/// The detail of an aggregated entry. It always begins `{"aggregated":"<what>","count":<n>`
/// (`what` holds no quote), so that the store can read how many requests an entry stands
/// for from the text alone (the access review adds them up); then the first request's own
/// detail, `more`, and `raw`, a key with JSON text already written.
fn aggregated_detail(
    original: Option<&str>,
    what: &str,
    count: u64,
    more: serde_json::Map<String, serde_json::Value>,
    raw: Option<(&str, &[u8])>,
) -> String {
    use std::fmt::Write as _;
    debug_assert!(!what.contains('"') && !what.contains('\\'));
    let mut rest = original
        .and_then(|d| serde_json::from_str::<serde_json::Value>(d).ok())
        .and_then(|d| match d {
            serde_json::Value::Object(map) => Some(map),
            _ => None,
        })
        .unwrap_or_default();
    rest.remove("aggregated");
    rest.remove("count");
    if let Some((key, _)) = raw {
        rest.remove(key);
    }
    rest.extend(more);
    let mut out = String::with_capacity(64 + raw.map_or(0, |(_, r)| r.len()));
    let _ = write!(out, "{{\"aggregated\":\"{what}\",\"count\":{count}");
    let rest = serde_json::Value::Object(rest).to_string();
    if rest.len() > 2 {
        out.push(',');
        out.push_str(&rest[1..rest.len() - 1]);
    }
    if let Some((key, text)) = raw {
        let _ = write!(out, ",\"{key}\":");
        out.push_str(&String::from_utf8_lossy(text));
    }
    out.push('}');
    out
}

/// The most requests one read group lists; the one that fills it queues it, and the next
/// read starts a new group.
pub const READ_GROUP_MAX: u64 = 1_000;

/// What makes two successful reads the same entry: every field of the entry but its id,
/// time, request id and latency (which the group's entry lists per request).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ReadKey {
    workspace: String,
    principal: Option<String>,
    credential: Option<String>,
    action: String,
    resource_type: Option<String>,
    resource_id: Option<String>,
    method: String,
    scope: Option<String>,
    source_ip: Option<String>,
    user_agent: Option<String>,
    status: u16,
    detail: Option<String>,
}

impl ReadKey {
    fn of(record: &AuditRecord, method: &str) -> Self {
        Self {
            workspace: record.workspace_id.to_string(),
            principal: record.principal_id.clone(),
            credential: record.credential_id.clone(),
            action: record.action.clone(),
            resource_type: record.resource_type.clone(),
            resource_id: record.resource_id.clone(),
            method: method.to_owned(),
            scope: record.scope.clone(),
            source_ip: record.source_ip.clone(),
            user_agent: record.user_agent.clone(),
            status: record.status,
            detail: record.detail.clone(),
        }
    }
}

/// A group of successful reads: its first request's entry, how many it counts, and every
/// request as the JSON text `["<request id>",<µs after the first>,<latency µs>]`, comma
/// separated (a buffer that grows by doubling: no allocation per request once grown).
struct ReadGroup {
    record: AuditRecord,
    count: u64,
    requests: Vec<u8>,
}

impl ReadGroup {
    fn new(record: AuditRecord) -> Self {
        let mut group = ReadGroup {
            record,
            count: 0,
            requests: Vec::with_capacity(64),
        };
        let (id, time, latency) = (
            group.record.request_id.clone(),
            group.record.time,
            group.record.latency_us,
        );
        group.list(id.as_deref(), time, latency);
        group
    }

    fn list(
        &mut self,
        request_id: Option<&str>,
        time: chrono::DateTime<chrono::Utc>,
        latency_us: i64,
    ) {
        use std::io::Write as _;
        if self.count > 0 {
            self.requests.push(b',');
        }
        self.count += 1;
        let after = (time - self.record.time).num_microseconds().unwrap_or(0);
        self.requests.push(b'[');
        // The id is whatever the client sent as `x-request-id` (bounded and printable):
        // escaped as JSON by the serializer, never by hand.
        if serde_json::to_writer(&mut self.requests, &request_id).is_err() {
            self.requests.extend_from_slice(b"null");
        }
        let _ = write!(self.requests, ",{after},{latency_us}]");
    }

    /// The group's entry: its first request's as it is for one read, and for more, with
    /// `count`, `aggregated` and `requests` in the detail.
    fn entry(self) -> (AuditRecord, u64) {
        let mut record = self.record;
        if self.count == 1 {
            return (record, 1);
        }
        let mut listed = Vec::with_capacity(self.requests.len() + 2);
        listed.push(b'[');
        listed.extend_from_slice(&self.requests);
        listed.push(b']');
        record.detail = Some(aggregated_detail(
            record.detail.as_deref(),
            READS_AGGREGATED,
            self.count,
            serde_json::Map::new(),
            Some(("requests", &listed)),
        ));
        (record, self.count)
    }
}

/// The `aggregated` text of a read group's entry.
pub const READS_AGGREGATED: &str = "successful reads that differ only in request id, time and latency; `requests` lists each as [requestId, microseconds after `time`, latencyUs]";

/// What [`Reads::add`] did with a read.
#[allow(
    clippy::large_enum_variant,
    reason = "returned once per read and matched at once: boxing would allocate for nothing"
)]
pub enum ReadAdded {
    /// It started a group: the writer should take the groups with its next commit.
    Started,
    /// It was counted into an existing group.
    Folded,
    /// It is to be queued now: as an entry of its own (every group slot is taken), or as
    /// the entry of the group it filled, standing for this many requests.
    Queue(AuditRecord, u64),
}

/// The successful reads of a node waiting for the writer's next commit.
pub struct Reads {
    map: Mutex<ReadMap>,
    /// The most reads held in groups at once; beyond, a read is queued as an entry of its
    /// own, so a stuck store fills the queue (and refuses requests) as it would without
    /// aggregation, and memory stays bounded.
    max_held: u64,
    folded: AtomicU64,
}

#[derive(Default)]
struct ReadMap {
    groups: HashMap<ReadKey, ReadGroup>,
    /// Reads the groups hold.
    held: u64,
}

impl Reads {
    /// An empty set holding at most `max_held` reads at once.
    pub fn new(max_held: usize) -> Self {
        Self {
            map: Mutex::new(ReadMap::default()),
            max_held: max_held as u64,
            folded: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ReadMap> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a successful read into its group, or starts one.
    pub fn add(&self, record: AuditRecord, method: &str) -> ReadAdded {
        let key = ReadKey::of(&record, method);
        let mut map = self.lock();
        if map.held >= self.max_held {
            return ReadAdded::Queue(record, 1);
        }
        if let Some(group) = map.groups.get_mut(&key) {
            group.list(record.request_id.as_deref(), record.time, record.latency_us);
            self.folded.fetch_add(1, Ordering::Relaxed);
            if group.count < READ_GROUP_MAX {
                map.held += 1;
                return ReadAdded::Folded;
            }
            let full = map.groups.remove(&key).map(ReadGroup::entry);
            let Some((record, count)) = full else {
                return ReadAdded::Folded;
            };
            // The group's other reads were held; this one never was.
            map.held -= count - 1;
            drop(map);
            return ReadAdded::Queue(record, count);
        }
        if map.groups.len() >= MAX_GROUPS {
            return ReadAdded::Queue(record, 1);
        }
        map.groups.insert(key, ReadGroup::new(record));
        map.held += 1;
        ReadAdded::Started
    }

    /// Takes every group as its entry and the number of requests it stands for.
    pub fn take(&self) -> Vec<(AuditRecord, u64)> {
        let taken = std::mem::take(&mut *self.lock());
        taken.groups.into_values().map(ReadGroup::entry).collect()
    }

    /// Reads counted into a group since the last call (for the metrics).
    pub fn take_folded(&self) -> u64 {
        self.folded.swap(0, Ordering::Relaxed)
    }
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

    fn read(request_id: &str, detail: Option<&str>) -> AuditRecord {
        let mut r = AuditRecord::system(WorkspaceId::from_trusted("ws_1".into()), "me.read", "me");
        r.status = 200;
        r.request_id = Some(request_id.to_owned());
        r.credential_id = Some("tok_1".into());
        r.detail = detail.map(str::to_owned);
        r
    }

    #[test]
    fn a_read_group_lists_every_read_after_a_fixed_prefix() {
        let reads = Reads::new(100);
        let first = read("r0", Some(r#"{"about":"x"}"#));
        let start = first.time;
        assert!(matches!(reads.add(first, "GET"), ReadAdded::Started));
        for i in 1..3 {
            let mut r = read(&format!("r{i}"), Some(r#"{"about":"x"}"#));
            r.time = start + chrono::Duration::microseconds(i * 10);
            r.latency_us = 7;
            assert!(matches!(reads.add(r, "GET"), ReadAdded::Folded));
        }
        // Another detail is another group.
        assert!(matches!(
            reads.add(read("s0", None), "GET"),
            ReadAdded::Started
        ));
        let mut entries = reads.take();
        entries.sort_by_key(|(_, n)| *n);
        assert_eq!(entries[0].0.detail, None, "a group of one is a plain entry");
        let (record, count) = &entries[1];
        assert_eq!(*count, 3);
        let text = record.detail.as_deref().unwrap_or_default();
        // The prefix the store reads the count from, whatever keys the detail had.
        assert!(
            text.starts_with(&format!(
                r#"{{"aggregated":"{READS_AGGREGATED}","count":3,"#
            )),
            "{text}"
        );
        let detail: serde_json::Value = serde_json::from_str(text).unwrap_or_default();
        assert_eq!(detail["about"], "x");
        assert_eq!(
            detail["requests"],
            serde_json::json!([["r0", 0, 0], ["r1", 10, 7], ["r2", 20, 7]])
        );
        assert!(reads.take().is_empty());
    }

    #[test]
    fn a_full_read_group_and_a_full_budget_go_to_the_queue() {
        let reads = Reads::new(1_500);
        let mut queued = Vec::new();
        for i in 0..READ_GROUP_MAX + 5 {
            if let ReadAdded::Queue(record, n) = reads.add(read(&format!("r{i}"), None), "GET") {
                queued.push((record, n));
            }
        }
        assert_eq!(queued.len(), 1);
        assert_eq!(
            queued[0].1, READ_GROUP_MAX,
            "the read that fills a group queues it"
        );
        // 5 reads held; the budget (1 500) lets 1 495 more in, then each read is queued.
        let mut own = 0;
        for i in 0..1_600 {
            let mut r = read(&format!("x{i}"), None);
            r.credential_id = Some(format!("tok_{}", i % 7));
            if let ReadAdded::Queue(_, 1) = reads.add(r, "GET") {
                own += 1;
            }
        }
        assert_eq!(own, 1_600 - 1_495);
        let held: u64 = reads.take().iter().map(|(_, n)| n).sum();
        assert_eq!(held, 1_500);
    }
}
