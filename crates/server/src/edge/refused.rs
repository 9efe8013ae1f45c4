//! The addresses whose per-address bucket refused them recently.
//!
//! A request with a credential the node has never verified costs a store query. Charging
//! every such request to its address before the lookup would throttle legitimate clients
//! that present many credentials from one address (a service holding many API keys, a
//! node after a restart with a cold cache, clients behind one NAT). So the address is
//! charged before the lookup only while its bucket is refusing it (over its limit of
//! failed authentications, or under an abuse penalty): exactly the addresses a flood of
//! unknown credentials comes from. Everyone else is charged after a failed lookup, by the
//! rate-limit stage, as before.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How many addresses are remembered at most: a flood from more addresses than this costs
/// at worst a lookup per request from the addresses forgotten, each still limited by its
/// bucket.
const CAPACITY: usize = 65_536;

/// Addresses (IPv6 by /64, as the buckets count them) refused until some instant.
pub struct RefusedAddresses {
    until: quick_cache::sync::Cache<IpAddr, Instant>,
    /// Milliseconds after `epoch` until which some address is refused (0: never was), so
    /// that while none is, a request pays one atomic load instead of a cache lookup.
    latest_ms: AtomicU64,
    epoch: Instant,
}

impl Default for RefusedAddresses {
    fn default() -> Self {
        Self {
            until: quick_cache::sync::Cache::new(CAPACITY),
            latest_ms: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl RefusedAddresses {
    /// Remembers that `network`'s bucket refuses it for `wait`.
    pub fn refused(&self, network: IpAddr, wait: Duration) {
        let until = Instant::now() + wait;
        let until_ms = u64::try_from(until.duration_since(self.epoch).as_millis())
            .unwrap_or(u64::MAX)
            .saturating_add(1);
        self.latest_ms.fetch_max(until_ms, Ordering::Relaxed);
        self.until.insert(network, until);
    }

    /// Whether `network`'s bucket was refusing it at its last check and still is.
    pub fn refusing(&self, network: IpAddr) -> bool {
        let latest = self.latest_ms.load(Ordering::Relaxed);
        if latest == 0
            || u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX) >= latest
        {
            return false;
        }
        self.until
            .get(&network)
            .is_some_and(|until| until > Instant::now())
    }
}
