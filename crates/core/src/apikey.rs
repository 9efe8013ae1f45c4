//! Scoped API keys: what a key carries besides the credential itself (its limits, its
//! address ranges, its metadata, its rotation policy and its previous secret during a
//! rotation's overlap), the spend periods, and the validation of all of it.

use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The most requests per minute a key's own rate limit may allow.
pub const MAX_RATE_LIMIT_PER_MINUTE: u32 = 10_000_000;
/// The most spend units a limit may allow in one period.
pub const MAX_SPEND_UNITS: u64 = 1_000_000_000_000_000;
/// The longest rotation interval, in days (ten years).
pub const MAX_ROTATION_INTERVAL_DAYS: u32 = 3650;
/// The largest serialised `metadata`, in bytes.
pub const MAX_METADATA_BYTES: usize = 4096;
/// The most address ranges one key may carry.
pub const MAX_IP_RANGES: usize = 100;

/// The period a spend limit counts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpendPeriod {
    /// A UTC calendar day.
    Day,
    /// A UTC calendar month.
    Month,
    /// The key's whole life: never resets.
    Total,
}

impl SpendPeriod {
    /// The stored name.
    pub const fn as_str(self) -> &'static str {
        match self {
            SpendPeriod::Day => "day",
            SpendPeriod::Month => "month",
            SpendPeriod::Total => "total",
        }
    }

    /// Reads a stored or requested name.
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "day" => Ok(SpendPeriod::Day),
            "month" => Ok(SpendPeriod::Month),
            "total" => Ok(SpendPeriod::Total),
            _ => Err(Error::invalid(
                "spendLimit.period",
                "must be day, month or total",
            )),
        }
    }

    /// The period containing `at`: its start and, unless it never ends, its end (the
    /// reset time). A `total` period starts at the Unix epoch.
    pub fn bounds(self, at: DateTime<Utc>) -> (DateTime<Utc>, Option<DateTime<Utc>>) {
        match self {
            SpendPeriod::Day => {
                let start = Utc
                    .with_ymd_and_hms(at.year(), at.month(), at.day(), 0, 0, 0)
                    .single()
                    .unwrap_or(at);
                (start, Some(start + Duration::days(1)))
            }
            SpendPeriod::Month => {
                let start = Utc
                    .with_ymd_and_hms(at.year(), at.month(), 1, 0, 0, 0)
                    .single()
                    .unwrap_or(at);
                let (y, m) = if at.month() == 12 {
                    (at.year() + 1, 1)
                } else {
                    (at.year(), at.month() + 1)
                };
                let end = Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0).single();
                (start, end)
            }
            SpendPeriod::Total => (DateTime::<Utc>::UNIX_EPOCH, None),
        }
    }
}

/// How many units a key may spend per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpendLimit {
    /// Units per period, 1 to [`MAX_SPEND_UNITS`].
    pub units: u64,
    /// The period.
    pub period: SpendPeriod,
}

impl SpendLimit {
    /// Checks the bounds.
    pub fn validate(self) -> Result<Self> {
        if self.units == 0 || self.units > MAX_SPEND_UNITS {
            return Err(Error::invalid(
                "spendLimit.units",
                format!("must be between 1 and {MAX_SPEND_UNITS}"),
            ));
        }
        Ok(self)
    }
}

/// The previous secret of a key during a rotation's overlap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreviousSecret {
    /// Its last four characters.
    pub last_four: String,
    /// When it stops working.
    pub expires_at: DateTime<Utc>,
}

/// What an API key carries besides the credential (id, owner, scopes, expiry).
#[derive(Debug, Clone, PartialEq)]
pub struct ApiKeyPolicy {
    /// Its own rate limit, requests per minute; `None`: the server's default per credential.
    pub rate_limit: Option<u32>,
    /// Its spend limit; `None`: usage is metered (per month) but never refused.
    pub spend_limit: Option<SpendLimit>,
    /// The client ranges it may be used from; `None`: anywhere (the workspace's IP access
    /// lists still apply).
    pub allowed_ip_ranges: Option<Vec<IpNet>>,
    /// The owner's metadata: a JSON object of at most [`MAX_METADATA_BYTES`].
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// Rotate every this many days; `None`: no policy.
    pub rotation_interval_days: Option<u32>,
    /// When the current secret was issued (creation or last rotation).
    pub rotated_at: DateTime<Utc>,
    /// When the rotation policy asks for the next rotation (the interval after
    /// `rotated_at`, as stored).
    pub rotation_due_at: Option<DateTime<Utc>>,
    /// The previous secret, while its overlap lasts.
    pub previous: Option<PreviousSecret>,
}

impl ApiKeyPolicy {
    /// The period usage is metered over: the limit's, or a month without a limit.
    pub fn metering_period(&self) -> SpendPeriod {
        self.spend_limit.map_or(SpendPeriod::Month, |l| l.period)
    }

    /// When the rotation policy asks for a new secret, if it has one.
    pub fn rotation_due_at(&self) -> Option<DateTime<Utc>> {
        self.rotation_due_at
    }

    /// The due date an interval gives, counted from the last rotation.
    pub fn due_after(&self, interval_days: Option<u32>) -> Option<DateTime<Utc>> {
        interval_days.map(|d| self.rotated_at + Duration::days(i64::from(d)))
    }

    /// Whether `ip` may use the key (always, when it has no ranges). An unknown address is
    /// refused when ranges are set.
    pub fn admits(&self, ip: Option<std::net::IpAddr>) -> bool {
        match &self.allowed_ip_ranges {
            None => true,
            Some(ranges) => ip
                .map(crate::edge::canonical)
                .is_some_and(|ip| ranges.iter().any(|n| n.contains(&ip))),
        }
    }
}

/// Checks a requested per-key rate limit.
pub fn rate_limit(value: i64) -> Result<u32> {
    if value < 1 || value > i64::from(MAX_RATE_LIMIT_PER_MINUTE) {
        return Err(Error::invalid(
            "rateLimit",
            format!("must be between 1 and {MAX_RATE_LIMIT_PER_MINUTE} requests per minute"),
        ));
    }
    Ok(value as u32)
}

/// Checks a requested rotation interval.
pub fn rotation_interval(value: i64) -> Result<u32> {
    if value < 1 || value > i64::from(MAX_ROTATION_INTERVAL_DAYS) {
        return Err(Error::invalid(
            "rotationPolicy.intervalDays",
            format!("must be between 1 and {MAX_ROTATION_INTERVAL_DAYS}"),
        ));
    }
    Ok(value as u32)
}

/// Checks requested address ranges (IPv4 and IPv6 CIDRs or single addresses).
pub fn ip_ranges(values: &[String]) -> Result<Vec<IpNet>> {
    if values.len() > MAX_IP_RANGES {
        return Err(Error::invalid(
            "allowedIpRanges",
            format!("at most {MAX_IP_RANGES} ranges per key"),
        ));
    }
    crate::edge::parse_ip_addresses("allowedIpRanges", values)
}

/// Checks requested metadata: a JSON object of at most [`MAX_METADATA_BYTES`] serialised.
pub fn metadata(value: serde_json::Value) -> Result<serde_json::Map<String, serde_json::Value>> {
    let serde_json::Value::Object(map) = value else {
        return Err(Error::invalid("metadata", "must be a JSON object"));
    };
    let size = serde_json::to_vec(&map).map_or(usize::MAX, |v| v.len());
    if size > MAX_METADATA_BYTES {
        return Err(Error::invalid(
            "metadata",
            format!("must be at most {MAX_METADATA_BYTES} bytes serialised (got {size})"),
        ));
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().expect("a timestamp")
    }

    #[test]
    fn periods_start_and_end_on_utc_boundaries() {
        let t = at("2026-12-31T23:59:59Z");
        assert_eq!(
            SpendPeriod::Day.bounds(t),
            (at("2026-12-31T00:00:00Z"), Some(at("2027-01-01T00:00:00Z")))
        );
        assert_eq!(
            SpendPeriod::Month.bounds(t),
            (at("2026-12-01T00:00:00Z"), Some(at("2027-01-01T00:00:00Z")))
        );
        assert_eq!(
            SpendPeriod::Month.bounds(at("2026-02-10T08:00:00Z")),
            (at("2026-02-01T00:00:00Z"), Some(at("2026-03-01T00:00:00Z")))
        );
        assert_eq!(SpendPeriod::Total.bounds(t).1, None);
    }

    #[test]
    fn limits_are_bounded() {
        assert!(rate_limit(0).is_err());
        assert!(rate_limit(-5).is_err());
        assert!(rate_limit(i64::from(MAX_RATE_LIMIT_PER_MINUTE) + 1).is_err());
        assert_eq!(rate_limit(600), Ok(600));
        assert!(
            SpendLimit {
                units: 0,
                period: SpendPeriod::Day
            }
            .validate()
            .is_err()
        );
        assert!(rotation_interval(0).is_err());
        assert!(metadata(serde_json::json!([1])).is_err());
        let big = serde_json::json!({ "x": "a".repeat(MAX_METADATA_BYTES) });
        assert!(metadata(big).is_err());
        assert!(ip_ranges(&["10.0.0.0/33".into()]).is_err());
    }

    #[test]
    fn ranges_admit_only_their_addresses() {
        let policy = ApiKeyPolicy {
            rate_limit: None,
            spend_limit: None,
            allowed_ip_ranges: Some(
                ip_ranges(&["10.1.0.0/16".into(), "2001:db8::/32".into()]).expect("ranges"),
            ),
            metadata: serde_json::Map::new(),
            rotation_interval_days: None,
            rotated_at: Utc::now(),
            rotation_due_at: None,
            previous: None,
        };
        assert!(policy.admits(Some("10.1.2.3".parse().expect("ip"))));
        assert!(policy.admits(Some("::ffff:10.1.2.3".parse().expect("ip"))));
        assert!(policy.admits(Some("2001:db8::1".parse().expect("ip"))));
        assert!(!policy.admits(Some("10.2.0.1".parse().expect("ip"))));
        assert!(!policy.admits(None));
    }
}
