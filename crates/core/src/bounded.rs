//! Bounds on what a client can make the server store: every text that reaches an audit
//! entry is cut to a fixed size, on a character boundary, with a visible marker, so that a
//! request carrying a 60 KB header costs no more storage than one carrying 60 bytes.

use std::borrow::Cow;

use crate::audit::{AuditRecord, MAX_USER_AGENT};

/// What replaces the cut-off end of a text that was too long.
pub const TRUNCATED: &str = "…[truncated]";

/// The longest text kept in one short field of an entry (ids, action, resource, scope,
/// address), in bytes.
pub const MAX_FIELD_BYTES: usize = 256;

/// The longest string value kept inside an entry's `detail`, in bytes.
pub const MAX_DETAIL_STRING_BYTES: usize = 512;

/// `text` when it is at most `max` bytes long; otherwise its longest prefix that, followed
/// by [`TRUNCATED`], fits in `max` bytes (cut on a character boundary).
pub fn text(text: &str, max: usize) -> Cow<'_, str> {
    if text.len() <= max {
        return Cow::Borrowed(text);
    }
    let mut end = max.saturating_sub(TRUNCATED.len());
    while end > 0 && !text.is_char_boundary(end) {
        end -= 1;
    }
    Cow::Owned(format!("{}{TRUNCATED}", &text[..end]))
}

/// Cuts every string inside `value` (object keys included) to
/// [`MAX_DETAIL_STRING_BYTES`].
pub fn json(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::String(s) => {
            if let Cow::Owned(cut) = text(s, MAX_DETAIL_STRING_BYTES) {
                *s = cut;
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(json),
        serde_json::Value::Object(map) => {
            let long_keys = map.keys().any(|k| k.len() > MAX_DETAIL_STRING_BYTES);
            if long_keys {
                let old = std::mem::take(map);
                for (k, v) in old {
                    map.insert(text(&k, MAX_DETAIL_STRING_BYTES).into_owned(), v);
                }
            }
            map.values_mut().for_each(json);
        }
        _ => {}
    }
}

fn field(value: &mut Option<String>, max: usize) {
    if let Some(s) = value
        && let Cow::Owned(cut) = text(s, max)
    {
        *s = cut;
    }
}

/// Cuts every text field of `record` to its bound. The fields the server fills from its
/// own data are already short; this is the one place that guarantees it for the ones a
/// client can influence (the user agent, names derived from the method and path, detail
/// strings copied from headers).
pub fn record(record: &mut AuditRecord) {
    field(&mut record.request_id, MAX_FIELD_BYTES);
    field(&mut record.principal_id, MAX_FIELD_BYTES);
    field(&mut record.credential_id, MAX_FIELD_BYTES);
    if let Cow::Owned(cut) = text(&record.action, MAX_FIELD_BYTES) {
        record.action = cut;
    }
    field(&mut record.resource_type, MAX_FIELD_BYTES);
    field(&mut record.resource_id, MAX_FIELD_BYTES);
    field(&mut record.scope, MAX_FIELD_BYTES);
    field(&mut record.source_ip, MAX_FIELD_BYTES);
    // 256 characters of up to 4 bytes each.
    field(&mut record.user_agent, MAX_USER_AGENT * 4);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_text_is_kept_and_long_text_is_cut_on_a_character_boundary() {
        assert_eq!(text("abc", 3), "abc");
        let long = "é".repeat(100);
        let cut = text(&long, 51);
        assert!(cut.len() <= 51, "{cut}");
        assert!(cut.ends_with(TRUNCATED));
        assert!(cut.starts_with("éé"));
        assert_eq!(text("abcdef", 2), TRUNCATED);
    }

    #[test]
    fn every_string_in_a_detail_is_bounded() {
        let long = "m".repeat(60_000);
        let mut v = serde_json::json!({ "method": long, "list": [long], long.clone(): 1 });
        json(&mut v);
        let s = v.to_string();
        assert!(s.len() < 4 * MAX_DETAIL_STRING_BYTES, "{}", s.len());
        assert!(v["method"].as_str().is_some_and(|m| m.ends_with(TRUNCATED)));
    }

    #[test]
    fn a_record_is_bounded() {
        let mut r = AuditRecord::system(
            crate::id::WorkspaceId::from_trusted("ws_x".into()),
            &format!("request.{}", "X".repeat(10_000)),
            "r",
        );
        r.user_agent = Some("u".repeat(10_000));
        record(&mut r);
        assert!(r.action.len() <= MAX_FIELD_BYTES);
        assert!(r.user_agent.is_some_and(|u| u.len() <= MAX_USER_AGENT * 4));
    }
}
