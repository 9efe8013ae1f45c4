//! The request id: kept in a task-local while a request is served, so that every error
//! response built further down (by a handler, an extractor, the panic guard) carries the
//! same `requestId`; the rule for ids a client sends; the extension handlers read.

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The request id of the request being served, or `unknown` outside one.
pub fn current() -> String {
    REQUEST_ID
        .try_with(Clone::clone)
        .unwrap_or_else(|_| "unknown".to_owned())
}

/// Runs `f` as the request `id`: error responses built inside carry it (the fast path's
/// counterpart of this stage).
pub(crate) async fn scoped<F: std::future::Future>(id: String, f: F) -> F::Output {
    REQUEST_ID.scope(id, f).await
}

/// The id of a request: its own `x-request-id` when well formed, else a new one.
pub(crate) fn of(headers: &axum::http::HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| well_formed(v))
        .map_or_else(|| uuid::Uuid::now_v7().simple().to_string(), str::to_owned)
}

/// The request's id, also available to handlers as an extension.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Whether an incoming id is kept: 1–128 characters of `A-Z a-z 0-9 - _ . :`, without a
/// run of 64 or more hex digits. The id goes into logs, audit entries and events, so it
/// must not be able to carry a credential (whose random part is 72 hex digits).
pub(crate) fn well_formed(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
        && id
            .split(|c: char| !c.is_ascii_hexdigit())
            .all(|run| run.len() < 64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn well_formed_ids() {
        assert!(super::well_formed("abc-123_x.y:z"));
        assert!(!super::well_formed(""));
        assert!(!super::well_formed("a b"));
        assert!(!super::well_formed("a\nb"));
        assert!(!super::well_formed(&"a".repeat(129)));
        assert!(!super::well_formed(&format!("dapi{}", "0".repeat(72))));
        assert!(super::well_formed(&"0".repeat(32)));
    }
}
