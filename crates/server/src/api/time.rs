//! Timestamps in responses: RFC 3339 in UTC with a `Z`, as many fractional digits as the
//! value has (`2026-12-07T10:00:00Z`, `2026-12-07T10:00:00.123456Z`), exactly as chrono's
//! own serialisation writes them, but formatted into one string that is then written at
//! once, instead of character by character through the JSON writer's escaping.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serializer;

/// Serialises a timestamp (`#[serde(serialize_with = "crate::api::time::rfc3339")]`).
pub fn rfc3339<S: Serializer>(time: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&time.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// Serialises an optional timestamp as the timestamp or `null`.
pub fn rfc3339_opt<S: Serializer>(
    time: &Option<DateTime<Utc>>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match time {
        Some(time) => rfc3339(time, serializer),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};

    /// The same text as chrono's own serialisation, whatever the fraction.
    #[test]
    fn same_text_as_chrono() {
        let base = Utc.with_ymd_and_hms(2026, 12, 7, 10, 0, 0).unwrap();
        for nanos in [0, 1_000_000, 123_000_000, 123_456_000, 123_456_789] {
            let t = base + chrono::Duration::nanoseconds(nanos);
            let ours = super::rfc3339(&t, serde_json::value::Serializer).expect("serialises");
            assert_eq!(ours, serde_json::to_value(t).expect("chrono"), "{t:?}");
        }
        let none = super::rfc3339_opt(&None, serde_json::value::Serializer).expect("null");
        assert_eq!(none, serde_json::Value::Null);
    }
}
