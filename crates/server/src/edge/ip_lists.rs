//! The IP access lists of each workspace, compiled and cached per node. A change made on
//! this node drops the workspace's entry at once; on PostgreSQL every other node drops it
//! when the change's announcement arrives; entries also expire after a short time as a
//! safety net.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use datastack_core::edge::{CompiledList, IpDenial, IpRules, parse_ip_addresses};
use datastack_core::id::WorkspaceId;
use datastack_store::{IpAccessList, Store};

/// How long compiled rules are trusted without an announcement.
const TTL: Duration = Duration::from_secs(30);

struct Entry {
    rules: Arc<IpRules>,
    fetched: Instant,
}

/// Compiled rules per workspace.
pub struct IpRuleCache {
    store: Store,
    cache: quick_cache::sync::Cache<WorkspaceId, Arc<Entry>>,
    /// Bumped by every invalidation: rules read before a bump are not cached after it.
    generation: std::sync::atomic::AtomicU64,
}

/// Compiles the enabled lists of a workspace.
pub fn compile(lists: &[IpAccessList]) -> IpRules {
    IpRules::new(
        lists
            .iter()
            .filter(|l| l.enabled)
            .map(|l| CompiledList {
                id: l.id.to_string(),
                list_type: l.list_type,
                // Stored addresses were validated when written; a bad one is skipped.
                nets: parse_ip_addresses("ipAddresses", &l.ip_addresses).unwrap_or_default(),
            })
            .collect(),
    )
}

impl IpRuleCache {
    /// A cache over `store`.
    pub fn new(store: Store) -> Self {
        Self {
            store,
            cache: quick_cache::sync::Cache::new(10_000),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// The workspace's rules.
    pub async fn rules(
        &self,
        workspace: &WorkspaceId,
    ) -> Result<Arc<IpRules>, datastack_store::Error> {
        if let Some(e) = self
            .cache
            .get(workspace)
            .filter(|e| e.fetched.elapsed() < TTL)
        {
            return Ok(e.rules.clone());
        }
        use std::sync::atomic::Ordering;
        let generation = self.generation.load(Ordering::SeqCst);
        // Boxed: the query makes this future large, and the cached case should not carry it.
        let lists = Box::pin(self.store.list_ip_lists(workspace)).await?;
        let rules = Arc::new(compile(&lists));
        // Cache only what no invalidation raced with (as the credential cache does): an
        // invalidation bumps the generation before it removes the entry.
        if self.generation.load(Ordering::SeqCst) == generation {
            self.cache.insert(
                workspace.clone(),
                Arc::new(Entry {
                    rules: rules.clone(),
                    fetched: Instant::now(),
                }),
            );
            if self.generation.load(Ordering::SeqCst) != generation {
                self.cache.remove(workspace);
            }
        }
        Ok(rules)
    }

    /// Checks `ip` against the workspace's enforced lists.
    pub async fn check(
        &self,
        workspace: &WorkspaceId,
        ip: Option<IpAddr>,
    ) -> Result<Result<(), IpDenial>, datastack_store::Error> {
        Ok(self.rules(workspace).await?.check(ip))
    }

    /// Drops a workspace's rules.
    pub fn invalidate(&self, workspace: &str) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.cache
            .remove(&WorkspaceId::from_trusted(workspace.to_owned()));
    }

    /// Drops everything.
    pub fn clear(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.cache.clear();
    }
}
