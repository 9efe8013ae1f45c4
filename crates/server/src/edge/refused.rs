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
use std::time::{Duration, Instant};

/// How many addresses are remembered at most: a flood from more addresses than this costs
/// at worst a lookup per request from the addresses forgotten, each still limited by its
/// bucket.
const CAPACITY: usize = 65_536;

/// Addresses (IPv6 by /64, as the buckets count them) refused until some instant.
pub struct RefusedAddresses {
    until: quick_cache::sync::Cache<IpAddr, Instant>,
}

impl Default for RefusedAddresses {
    fn default() -> Self {
        Self {
            until: quick_cache::sync::Cache::new(CAPACITY),
        }
    }
}

impl RefusedAddresses {
    /// Remembers that `network`'s bucket refuses it for `wait`.
    pub fn refused(&self, network: IpAddr, wait: Duration) {
        self.until.insert(network, Instant::now() + wait);
    }

    /// Whether `network`'s bucket was refusing it at its last check and still is.
    pub fn refusing(&self, network: IpAddr) -> bool {
        self.until
            .get(&network)
            .is_some_and(|until| until > Instant::now())
    }
}
