//! Spend metering of API keys: every request a key makes through the gateway (or a
//! forward-auth decision, or a `/verify` with a cost) is charged to the key's current
//! period, and refused once the period's limit is reached.
//!
//! The hot path never writes to the database. A node keeps, per key and period, the units
//! it knows to be used (`used`, loaded from the database on first use) and the units it
//! charged since its last flush (`pending`). A request is admitted only while `used` is
//! below the limit, and its price is added in the same atomic step, so on one node the
//! admitted requests can exceed the limit by less than the price of one request. Every
//! second (and at a clean shutdown) the pending units are added to the database in one
//! transaction, which returns the totals: the node then also learns what the other nodes
//! charged.
//!
//! In cluster mode the admission of a key with a limit runs in Redis instead, one atomic
//! script per request over a counter all nodes share, so the bound holds for the whole
//! cluster: at most one request's price over the limit (a key without a limit is admitted
//! without asking Redis). The database still receives every node's pending units
//! (Redis is the admission counter, the database the record); a counter Redis lost is
//! seeded again from the database. While Redis is unreachable, nodes fall back to their own
//! counters.
//!
//! When an upstream reports a request's actual cost, the reservation (the route's
//! `pricePerRequest`) is corrected after the response by the difference.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use datastack_core::apikey::SpendPeriod;
use datastack_core::audit::{AuditRecord, SecurityEvent};
use datastack_core::id::{PrincipalId, TokenId, WorkspaceId};
use datastack_store::{SpendDelta, SpendRecord, SpendThreshold, Store, Trail};
use tokio::sync::OnceCell;

use super::ratelimit::Limiter;
use crate::credentials::Identity;
use crate::metrics::Metrics;

/// A counter in Redis, seeded from the database when missing; admits while under the
/// limit and adds the price in the same step.
///
/// KEYS[1] the counter. ARGV[1] limit (0: none), ARGV[2] price, ARGV[3] the database's
/// total (the seed), ARGV[4] time to live in ms. Returns {admitted (0/1), total}.
const RESERVE_LUA: &str = r#"
local v = redis.call('GET', KEYS[1])
if not v then
  v = ARGV[3]
  redis.call('SET', KEYS[1], v, 'PX', ARGV[4])
end
v = tonumber(v)
local limit = tonumber(ARGV[1])
if limit > 0 and v >= limit then return {0, v} end
v = redis.call('INCRBY', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return {1, v}
"#;

/// How long a Redis counter lives without use (it is seeded again from the database).
const REDIS_COUNTER_TTL: Duration = Duration::from_secs(3600);
/// How long a node keeps the counter of a key it no longer charges: while kept, a limited
/// key's total is read back every flush (so the node sees what other nodes charge); after
/// it, the next use reads the total again.
const IDLE_METER: Duration = Duration::from_secs(10);

/// Raises a Redis counter to the database's total when it is behind (charges admitted on
/// local counters while Redis was unreachable, or a correction that failed).
///
/// KEYS[1] the counter. ARGV[1] the database's total, ARGV[2] time to live in ms.
const RECONCILE_LUA: &str = r#"
local v = tonumber(redis.call('GET', KEYS[1]) or '-1')
local floor = tonumber(ARGV[1])
if v < floor then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) end
return 0
"#;

type MeterKey = (TokenId, SpendPeriod, DateTime<Utc>);

/// One key's spend in one period, on this node.
struct Meter {
    key: TokenId,
    workspace: WorkspaceId,
    owner: PrincipalId,
    period: SpendPeriod,
    start: DateTime<Utc>,
    end: Option<DateTime<Utc>>,
    /// The limit as of the last charge; 0: none.
    limit: AtomicU64,
    /// Units known used in the period (the database's total plus this node's pending).
    used: AtomicI64,
    /// Units charged here and not yet in the database.
    pending: AtomicI64,
    /// Unix seconds of the last charge.
    last_active: AtomicI64,
    loaded: OnceCell<()>,
}

/// A request's charge, to be corrected once the actual cost is known.
pub struct Reservation {
    meter: Arc<Meter>,
    reserved: i64,
    redis: bool,
}

/// A refusal: the key's limit is reached for the period.
#[derive(Debug, Clone)]
pub struct Exceeded {
    /// The limit.
    pub limit: u64,
    /// Units used.
    pub used: i64,
    /// When the period ends (`None`: a `total` limit never resets).
    pub resets_at: Option<DateTime<Utc>>,
}

/// A key's usage in its current period, for `/usage` and `/verify`.
#[derive(Debug, Clone)]
pub struct Usage {
    /// The period.
    pub period: SpendPeriod,
    /// Its start.
    pub start: DateTime<Utc>,
    /// Its end.
    pub end: Option<DateTime<Utc>>,
    /// Units used (recorded plus this node's pending).
    pub used: i64,
    /// The limit, if any.
    pub limit: Option<u64>,
}

impl Usage {
    /// Units left, if there is a limit.
    pub fn remaining(&self) -> Option<u64> {
        self.limit
            .map(|l| l.saturating_sub(u64::try_from(self.used.max(0)).unwrap_or(0)))
    }
}

/// The spend meter of a node.
pub struct SpendMeter {
    store: Store,
    meters: Mutex<HashMap<MeterKey, Arc<Meter>>>,
    script: redis::Script,
    reconcile: redis::Script,
    warn_percent: u8,
    metrics: Arc<Metrics>,
}

fn unix_now() -> i64 {
    Utc::now().timestamp()
}

impl SpendMeter {
    /// A meter over `store`, warning at `warn_percent` of a limit.
    pub fn new(store: Store, warn_percent: u8, metrics: Arc<Metrics>) -> Self {
        Self {
            store,
            meters: Mutex::new(HashMap::new()),
            script: redis::Script::new(RESERVE_LUA),
            reconcile: redis::Script::new(RECONCILE_LUA),
            warn_percent,
            metrics,
        }
    }

    fn meter(&self, identity: &Identity, now: DateTime<Utc>) -> Option<Arc<Meter>> {
        let policy = identity.api_key.as_ref()?;
        let period = policy.metering_period();
        let (start, end) = period.bounds(now);
        let key = (identity.token.id.clone(), period, start);
        let mut meters = self.meters.lock().unwrap_or_else(|p| p.into_inner());
        let meter = meters.entry(key).or_insert_with(|| {
            Arc::new(Meter {
                key: identity.token.id.clone(),
                workspace: identity.workspace.id.clone(),
                owner: identity.principal.id.clone(),
                period,
                start,
                end,
                limit: AtomicU64::new(0),
                used: AtomicI64::new(0),
                pending: AtomicI64::new(0),
                last_active: AtomicI64::new(unix_now()),
                loaded: OnceCell::new(),
            })
        });
        meter
            .limit
            .store(policy.spend_limit.map_or(0, |l| l.units), Ordering::Relaxed);
        meter.last_active.store(unix_now(), Ordering::Relaxed);
        Some(meter.clone())
    }

    async fn load(&self, meter: &Meter) -> Result<(), datastack_store::Error> {
        meter
            .loaded
            .get_or_try_init(|| async {
                let record = self
                    .store
                    .spend_of(&meter.key, meter.period, meter.start)
                    .await?;
                // No charge is made on this meter before its load completes, but a flush
                // may already have read the total in: raise to it, never add twice.
                let pending = meter.pending.load(Ordering::SeqCst);
                meter
                    .used
                    .fetch_max(record.units + pending, Ordering::SeqCst);
                Ok::<(), datastack_store::Error>(())
            })
            .await
            .map(|_| ())
    }

    /// Charges `price` to an API key's current period, or refuses because its limit is
    /// reached. `Ok(None)` for a credential that is not an API key.
    pub async fn reserve(
        &self,
        limiter: &Limiter,
        identity: &Identity,
        price: u64,
    ) -> Result<Result<Option<Reservation>, Exceeded>, datastack_store::Error> {
        let Some(meter) = self.meter(identity, Utc::now()) else {
            return Ok(Ok(None));
        };
        self.load(&meter).await?;
        let price = i64::try_from(price).unwrap_or(i64::MAX);
        let limit = meter.limit.load(Ordering::Relaxed);
        let exceeded = |used: i64| Exceeded {
            limit,
            used,
            resets_at: meter.end,
        };
        // A key without a limit is always admitted: no shared counter to ask (the database
        // still records every unit, and a counter a later limit needs is seeded from it).
        if limit > 0
            && let Some((mut conn, prefix)) = limiter.redis().await
        {
            let seed = meter.used.load(Ordering::SeqCst) - meter.pending.load(Ordering::SeqCst);
            let result: redis::RedisResult<(i64, i64)> = self
                .script
                .key(counter_key(&prefix, &meter))
                .arg(limit)
                .arg(price)
                .arg(seed.max(0))
                .arg(REDIS_COUNTER_TTL.as_millis() as u64)
                .invoke_async(&mut conn)
                .await;
            match result {
                Ok((admitted, total)) => {
                    // The shared total is the best knowledge of the period's use.
                    meter.used.fetch_max(total, Ordering::SeqCst);
                    if admitted == 0 {
                        self.metrics.spend_decision("exceeded");
                        return Ok(Err(exceeded(total)));
                    }
                    meter.pending.fetch_add(price, Ordering::SeqCst);
                    self.metrics.spend_decision("admitted");
                    return Ok(Ok(Some(Reservation {
                        meter,
                        reserved: price,
                        redis: true,
                    })));
                }
                Err(e) => limiter.redis_failed(&e.to_string()),
            }
        }
        let admitted = meter
            .used
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |used| {
                (limit == 0 || used < i64::try_from(limit).unwrap_or(i64::MAX))
                    .then(|| used.saturating_add(price))
            });
        match admitted {
            Ok(_) => {
                meter.pending.fetch_add(price, Ordering::SeqCst);
                self.metrics.spend_decision("admitted");
                Ok(Ok(Some(Reservation {
                    meter,
                    reserved: price,
                    redis: false,
                })))
            }
            Err(used) => {
                self.metrics.spend_decision("exceeded");
                Ok(Err(exceeded(used)))
            }
        }
    }

    /// Corrects a reservation to the actual cost (an upstream's report, or 0 when the
    /// upstream was never reached).
    pub async fn settle(&self, limiter: &Limiter, reservation: Reservation, actual: u64) {
        let actual = i64::try_from(actual).unwrap_or(i64::MAX);
        let delta = actual - reservation.reserved;
        if delta == 0 {
            return;
        }
        let meter = &reservation.meter;
        meter.used.fetch_add(delta, Ordering::SeqCst);
        meter.pending.fetch_add(delta, Ordering::SeqCst);
        if reservation.redis
            && let Some((mut conn, prefix)) = limiter.redis().await
        {
            let key = counter_key(&prefix, meter);
            let result: redis::RedisResult<i64> = redis::cmd("INCRBY")
                .arg(&key)
                .arg(delta)
                .query_async(&mut conn)
                .await;
            if let Err(e) = result {
                limiter.redis_failed(&e.to_string());
            }
        }
    }

    /// What this node knows of a key's current period (after a charge), without a store
    /// query.
    pub fn known(&self, identity: &Identity) -> Option<Usage> {
        let policy = identity.api_key.as_ref()?;
        let period = policy.metering_period();
        let (start, end) = period.bounds(Utc::now());
        let meters = self.meters.lock().unwrap_or_else(|p| p.into_inner());
        let meter = meters.get(&(identity.token.id.clone(), period, start))?;
        Some(Usage {
            period,
            start,
            end,
            used: meter.used.load(Ordering::SeqCst),
            limit: policy.spend_limit.map(|l| l.units),
        })
    }

    /// A key's usage in its current period: what the database holds plus what this node
    /// has not flushed yet.
    pub async fn usage(
        &self,
        key: &TokenId,
        policy: &datastack_core::apikey::ApiKeyPolicy,
    ) -> Result<Usage, datastack_store::Error> {
        let period = policy.metering_period();
        let (start, end) = period.bounds(Utc::now());
        let SpendRecord { units, .. } = self.store.spend_of(key, period, start).await?;
        let pending = {
            let meters = self.meters.lock().unwrap_or_else(|p| p.into_inner());
            meters
                .get(&(key.clone(), period, start))
                .map_or(0, |m| m.pending.load(Ordering::SeqCst))
        };
        Ok(Usage {
            period,
            start,
            end,
            used: units + pending,
            limit: policy.spend_limit.map(|l| l.units),
        })
    }

    /// Adds the pending units of every key to the database, learns the totals (also of
    /// limited keys charged recently but not since the last flush), raises Redis counters
    /// that fell behind, and sends the warning and limit events of the keys that crossed
    /// them. On failure the units stay pending for the next flush. Returns how many keys
    /// were flushed.
    pub async fn flush(&self, limiter: &Limiter) -> Result<usize, datastack_store::Error> {
        let now = unix_now();
        let (batch, meters): (Vec<SpendDelta>, Vec<Arc<Meter>>) = {
            let mut map = self.meters.lock().unwrap_or_else(|p| p.into_inner());
            // Forget idle meters with nothing pending: their next use reads the total
            // again (which also picks up what other nodes charged meanwhile).
            map.retain(|_, m| {
                m.pending.load(Ordering::SeqCst) != 0
                    // A request in flight holds the meter: its correction must land here.
                    || Arc::strong_count(m) > 1
                    || now - m.last_active.load(Ordering::Relaxed) < IDLE_METER.as_secs() as i64
            });
            map.values()
                .filter_map(|m| {
                    let units = m.pending.swap(0, Ordering::SeqCst);
                    // A meter still loading has no total to refresh yet.
                    let limited = m.limit.load(Ordering::Relaxed) > 0 && m.loaded.initialized();
                    (units != 0 || limited).then(|| {
                        (
                            SpendDelta {
                                key: m.key.clone(),
                                period: m.period,
                                period_start: m.start,
                                units,
                            },
                            m.clone(),
                        )
                    })
                })
                .unzip()
        };
        if batch.is_empty() {
            return Ok(0);
        }
        let totals = match self.store.add_spend(&batch).await {
            Ok(t) => t,
            Err(e) => {
                for (d, m) in batch.iter().zip(&meters) {
                    m.pending.fetch_add(d.units, Ordering::SeqCst);
                }
                return Err(e);
            }
        };
        let mut redis = limiter.redis().await;
        for (record, meter) in totals.iter().zip(&meters) {
            // A key deleted meanwhile (its owner deleted): its units have nowhere to go.
            let Some(record) = record else {
                continue;
            };
            // What other nodes charged is now known here too.
            let local = record.units + meter.pending.load(Ordering::SeqCst);
            meter.used.fetch_max(local, Ordering::SeqCst);
            if let Some((conn, prefix)) = redis.as_mut()
                && meter.limit.load(Ordering::Relaxed) > 0
            {
                let result: redis::RedisResult<i64> = self
                    .reconcile
                    .key(counter_key(prefix, meter))
                    .arg(record.units)
                    .arg(REDIS_COUNTER_TTL.as_millis() as u64)
                    .invoke_async(conn)
                    .await;
                if let Err(e) = result {
                    limiter.redis_failed(&e.to_string());
                    redis = None;
                }
            }
            self.thresholds(meter, record).await;
        }
        Ok(batch.len())
    }

    async fn thresholds(&self, meter: &Meter, record: &SpendRecord) {
        let limit = meter.limit.load(Ordering::Relaxed);
        if limit == 0 {
            return;
        }
        let limit_i = i64::try_from(limit).unwrap_or(i64::MAX);
        let warn_at = (i128::from(limit_i) * i128::from(self.warn_percent) + 99) / 100;
        let mut crossed = Vec::new();
        if !record.warned && i128::from(record.units) >= warn_at && self.warn_percent < 100 {
            crossed.push((SpendThreshold::Warning, "api_key.spend_warning"));
        }
        if !record.reached && record.units >= limit_i {
            crossed.push((SpendThreshold::Reached, "api_key.spend_limit_reached"));
        }
        for (threshold, event) in crossed {
            let payload = serde_json::json!({
                "keyId": meter.key,
                "ownerId": meter.owner,
                "period": meter.period.as_str(),
                "periodStart": meter.start,
                "periodEnd": meter.end,
                "used": record.units,
                "limit": limit,
                "warnPercent": self.warn_percent,
            });
            let mut entry = AuditRecord::system(meter.workspace.clone(), event, "api-keys");
            entry.resource_id = Some(meter.key.to_string());
            entry.principal_id = None;
            entry.detail = Some(payload.to_string());
            let trail = Trail::of(entry).with_event(SecurityEvent::new(
                meter.workspace.clone(),
                event,
                payload,
            ));
            match self
                .store
                .mark_spend_threshold(&meter.key, meter.period, meter.start, threshold, &trail)
                .await
            {
                Ok(true) => {
                    self.metrics.security_event(event);
                    tracing::info!(key_id = %meter.key, event, "API key spend threshold crossed");
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(key_id = %meter.key, error = %e, "cannot record a spend event; it is retried on the next flush")
                }
            }
        }
    }
}

fn counter_key(prefix: &str, meter: &Meter) -> String {
    format!(
        "{prefix}spend:{}:{}:{}",
        meter.key,
        meter.period.as_str(),
        meter.start.timestamp()
    )
}
