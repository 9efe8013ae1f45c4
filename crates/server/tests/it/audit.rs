//! The audit log (C9): every call leaves an entry, the chain shows tampering, retention
//! purges behind a signed checkpoint, security events, the access review and its bulk
//! actions, the auto-revocation policy, the queue's failure policy, and no secret in any
//! entry.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{Backend, StoreLocation, TestApp, eventually, on_both_stores};

on_both_stores!(
    calls_and_changes_are_audited_with_their_context,
    the_export_streams_every_entry_as_json_lines,
    verify_points_at_altered_reordered_and_removed_entries,
    retention_purges_old_entries_behind_a_signed_checkpoint,
    security_events_are_recorded,
    access_review_flags_and_bulk_actions,
    unused_tokens_are_revoked_by_policy_after_notice,
    a_stuck_audit_store_refuses_requests_in_bounded_time_and_loses_nothing,
    no_secret_ever_enters_the_audit_trail,
    a_clean_shutdown_writes_every_queued_entry,
    a_request_is_found_by_its_id_even_inside_an_aggregated_entry,
    successful_reads_are_aggregated_without_losing_any,
);

const WAIT: Duration = Duration::from_secs(10);

async fn entries(app: &TestApp, token: &str, query: &str) -> Vec<Value> {
    let r = app
        .get(
            &format!("/api/v1/audit/events?{query}"),
            token,
            "read:audit",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["items"].as_array().expect("items").clone()
}

async fn events(app: &TestApp, token: &str, event_type: &str) -> Vec<Value> {
    let r = app
        .get(
            &format!("/api/v1/audit/security-events?type={event_type}"),
            token,
            "read:audit",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["items"].as_array().expect("items").clone()
}

/// How many requests entries stand for: `detail.count` for an aggregated entry, else one.
fn requests_in(entries: &[Value]) -> usize {
    entries
        .iter()
        .map(|e| e["detail"]["count"].as_u64().map_or(1, |n| n as usize))
        .sum()
}

/// Waits until a query returns entries standing for at least `n` requests, and returns
/// them.
async fn wait_for_entries(app: &TestApp, token: &str, query: &str, n: usize) -> Vec<Value> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let found = entries(app, token, query).await;
        if requests_in(&found) >= n {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "expected {n} requests for {query}, found {}: {found:?}",
            requests_in(&found)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn wait_for_event(app: &TestApp, token: &str, event_type: &str) -> Vec<Value> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let found = events(app, token, event_type).await;
        if !found.is_empty() {
            return found;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {event_type} event"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// An SQL expression for "`days` days ago" in the store's own timestamp format.
fn days_ago(store: &StoreLocation, days: u32) -> String {
    if store.is_postgres() {
        format!("now() - interval '{days} days'")
    } else {
        format!("strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now', '-{days} days')")
    }
}

async fn verify(app: &TestApp, token: &str) -> Value {
    let r = app.get("/api/v1/audit/verify", token, "read:audit").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body
}

async fn workspace_id(app: &TestApp, token: &str) -> String {
    app.me(token).await.body["workspace"]["id"]
        .as_str()
        .expect("workspace id")
        .to_owned()
}

async fn calls_and_changes_are_audited_with_their_context(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    let me = app.me(&admin).await;
    let admin_id = me.body["principal"]["id"].as_str().expect("id").to_owned();
    let admin_token_id = me.body["credential"]["id"].as_str().expect("id").to_owned();

    // A change: its entry is written with it, so it is there as soon as the answer is.
    let r = app
        .http
        .post(format!("{}/api/v1/auth/tokens", app.base))
        .bearer_auth(&admin)
        .header("x-datastack-scope", "manage:tokens")
        .header("x-request-id", "audit-test-create-1")
        .header("user-agent", "audit-test/1.0")
        .json(&json!({"label": "audited", "scopes": ["read:tokens"]}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::CREATED);
    let created: Value = r.json().await.expect("json");
    let new_id = created["id"].as_str().expect("id").to_owned();
    let found = entries(&app, &admin, "action=tokens.create").await;
    let e = found
        .iter()
        .find(|e| e["resourceId"] == new_id.as_str())
        .unwrap_or_else(|| panic!("the creation is audited at once: {found:?}"));
    assert_eq!(e["requestId"], "audit-test-create-1");
    assert_eq!(e["principalId"], admin_id.as_str());
    assert_eq!(e["credentialId"], admin_token_id.as_str());
    assert_eq!(e["resourceType"], "tokens");
    assert_eq!(e["scope"], "manage:tokens");
    assert_eq!(e["sourceIp"], "127.0.0.1");
    assert_eq!(e["userAgent"], "audit-test/1.0");
    assert_eq!(e["outcome"], "allowed");
    assert_eq!(e["status"], 201);
    assert!(e["latencyUs"].as_i64().expect("latency") >= 0);
    assert_eq!(e["detail"]["scopes"], json!(["read:tokens"]));
    assert!(e["hash"].as_str().expect("hash").len() == 64);

    // Reads and refusals are audited too (written just after the answer).
    let list = app.get("/api/v1/auth/tokens", &admin, "read:tokens").await;
    assert_eq!(list.status, StatusCode::OK);
    let denied = app
        .get(
            "/api/v1/auth/tokens",
            created["token"].as_str().expect("t"),
            "manage:tokens",
        )
        .await;
    assert_eq!(denied.status, StatusCode::FORBIDDEN);
    let bad = app.me(&format!("dapi{}", "0".repeat(72))).await;
    assert_eq!(bad.status, StatusCode::UNAUTHORIZED);
    wait_for_entries(&app, &admin, "action=tokens.list", 2).await;
    let refused = wait_for_entries(&app, &admin, "outcome=denied", 2).await;
    let scope_refusal = refused
        .iter()
        .find(|e| e["status"] == 403)
        .expect("the 403 is audited");
    assert_eq!(scope_refusal["credentialId"], new_id.as_str());
    assert_eq!(scope_refusal["detail"]["requiredScope"], "read:tokens");
    let unknown = refused
        .iter()
        .find(|e| e["status"] == 401)
        .expect("the 401 is audited in the root workspace");
    assert_eq!(unknown["credentialId"], Value::Null);
    assert_eq!(unknown["action"], "me.read");

    // Filters combine; pagination walks every entry once, newest first.
    let by_cred = entries(&app, &admin, &format!("credentialId={new_id}")).await;
    assert!(by_cred.iter().all(|e| e["credentialId"] == new_id.as_str()));
    let all = entries(&app, &admin, "limit=1000").await;
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let q = match &cursor {
            Some(c) => format!("limit=2&cursor={c}"),
            None => "limit=2".to_owned(),
        };
        let r = app
            .get(&format!("/api/v1/audit/events?{q}"), &admin, "read:audit")
            .await;
        for e in r.body["items"].as_array().expect("items") {
            seen.push(e["seq"].as_i64().expect("seq"));
        }
        match r.body["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert!(
        seen.windows(2).all(|w| w[0] > w[1]),
        "newest first: {seen:?}"
    );
    assert!(seen.len() >= all.len(), "every entry once");

    // Bad filters are refused, naming the parameter.
    for (q, field) in [
        ("since=yesterday", "since"),
        ("outcome=maybe", "outcome"),
        ("limit=0", "limit"),
        ("cursor=abc", "cursor"),
        ("colour=blue", "colour"),
    ] {
        let r = app
            .get(&format!("/api/v1/audit/events?{q}"), &admin, "read:audit")
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}");
        assert!(r.text.contains(field), "{q}: {}", r.text);
    }
    // Only admins read the audit log.
    let (_, editor) = app.user_with_token("ed@example.com", "editor").await;
    let r = app.get("/api/v1/audit/events", &editor, "read:audit").await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    app.stop().await;
}

async fn the_export_streams_every_entry_as_json_lines(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    for i in 0..5 {
        app.create_token(&admin, json!({"label": format!("t{i}")}))
            .await;
    }
    let r = app
        .http
        .get(format!(
            "{}/api/v1/audit/export?since=2000-01-01T00:00:00Z",
            app.base
        ))
        .bearer_auth(&admin)
        .header("x-datastack-scope", "read:audit")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(
        r.headers()["content-type"].to_str().expect("ct"),
        "application/x-ndjson"
    );
    let text = r.text().await.expect("body");
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is one JSON entry"))
        .collect();
    let creates = lines
        .iter()
        .filter(|e| e["action"] == "tokens.create")
        .count();
    assert_eq!(creates, 5);
    // Oldest first, and each entry names its predecessor's hash.
    for w in lines.windows(2) {
        assert_eq!(w[1]["seq"].as_i64(), w[0]["seq"].as_i64().map(|s| s + 1));
        assert_eq!(w[1]["prevHash"], w[0]["hash"]);
    }
    // A range that ends in the past holds none of today's entries.
    let r = app
        .get(
            "/api/v1/audit/export?until=2000-01-01T00:00:00Z",
            &admin,
            "read:audit",
        )
        .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text, "");
    let r = app
        .get("/api/v1/audit/export?until=never", &admin, "read:audit")
        .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    app.stop().await;
}

async fn verify_points_at_altered_reordered_and_removed_entries(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    let ws = workspace_id(&app, &admin).await;
    for i in 0..4 {
        app.create_token(&admin, json!({"label": format!("t{i}")}))
            .await;
    }
    let v = verify(&app, &admin).await;
    assert_eq!(v["ok"], true, "{v}");
    assert!(v["checked"].as_u64().expect("checked") >= 5);

    let creates = entries(&app, &admin, "action=tokens.create").await;
    let target = &creates[1];
    let (id, seq) = (
        target["id"].as_str().expect("id").to_owned(),
        target["seq"].as_i64().expect("seq"),
    );
    let store = app.store();
    // Altered: someone rewrites an entry's outcome in the database.
    store
        .execute(&[&format!(
            "UPDATE audit_entries SET outcome = 'denied' WHERE id = '{id}'"
        )])
        .await;
    let v = verify(&app, &admin).await;
    assert_eq!(v["ok"], false);
    assert_eq!(
        v["firstBreak"],
        json!({"problem": "altered", "id": id, "seq": seq})
    );
    store
        .execute(&[&format!(
            "UPDATE audit_entries SET outcome = 'allowed' WHERE id = '{id}'"
        )])
        .await;
    assert_eq!(verify(&app, &admin).await["ok"], true);
    // An outcome no server writes is an alteration too.
    store
        .execute(&[&format!(
            "UPDATE audit_entries SET outcome = 'junk' WHERE id = '{id}'"
        )])
        .await;
    assert_eq!(verify(&app, &admin).await["firstBreak"]["id"], id.as_str());
    store
        .execute(&[&format!(
            "UPDATE audit_entries SET outcome = 'allowed' WHERE id = '{id}'"
        )])
        .await;
    assert_eq!(verify(&app, &admin).await["ok"], true);

    // Reordered: two entries swap places.
    let swap = |a: i64, b: i64| {
        vec![
            format!("UPDATE audit_entries SET seq = -1 WHERE workspace_id = '{ws}' AND seq = {a}"),
            format!("UPDATE audit_entries SET seq = {a} WHERE workspace_id = '{ws}' AND seq = {b}"),
            format!("UPDATE audit_entries SET seq = {b} WHERE workspace_id = '{ws}' AND seq = -1"),
        ]
    };
    let statements = swap(seq, seq + 1);
    let refs: Vec<&str> = statements.iter().map(String::as_str).collect();
    store.execute_atomically(&refs).await;
    let v = verify(&app, &admin).await;
    assert_eq!(v["firstBreak"]["problem"], "reordered", "{v}");
    assert_eq!(v["firstBreak"]["seq"], seq);
    store.execute_atomically(&refs).await;
    let v = verify(&app, &admin).await;
    assert_eq!(v["ok"], true, "{v}");

    // The head row alone deleted: the next append resumes after the last entry (nothing
    // accepted is lost), raises an alarm and records the break in the chain, which stays
    // reported until an operator acknowledges it (see audit_heads.rs).
    store
        .execute(&[&format!(
            "DELETE FROM audit_heads WHERE workspace_id = '{ws}'"
        )])
        .await;
    app.create_token(&admin, json!({"label": "after the head"}))
        .await;
    let alarms = wait_for_event(&app, &admin, "audit.tamper_detected").await;
    assert_eq!(alarms[0]["payload"]["during"], "append");
    let v = verify(&app, &admin).await;
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["firstBreak"]["problem"], "unacknowledged_break", "{v}");
    assert_eq!(v["firstBreak"]["reason"], "head_missing", "{v}");

    // Removed: an entry is deleted; verify names the entry after the gap.
    store
        .execute(&[&format!("DELETE FROM audit_entries WHERE id = '{id}'")])
        .await;
    let v = verify(&app, &admin).await;
    assert_eq!(v["firstBreak"]["problem"], "removed", "{v}");
    assert_eq!(v["firstBreak"]["seq"], seq + 1);
    app.stop().await;
}

async fn retention_purges_old_entries_behind_a_signed_checkpoint(backend: Backend) {
    let store = std::sync::Arc::new(StoreLocation::new(backend).await);
    let app = TestApp::spawn_on(store.clone(), |c| {
        c.audit_maintenance_interval = Duration::from_millis(200);
    })
    .await;
    let admin = app.admin().to_owned();
    let ws = workspace_id(&app, &admin).await;
    for i in 0..3 {
        app.create_token(&admin, json!({"label": format!("t{i}")}))
            .await;
    }
    // Backdating entries past the retention period is tampering (the time is part of each
    // entry's hash): the purge refuses to delete what does not verify, and says so.
    let kept = store
        .strings(&format!(
            "SELECT CAST(created_at AS TEXT) FROM audit_entries WHERE workspace_id = '{ws}' AND seq <= 3 ORDER BY seq"
        ))
        .await;
    store
        .execute(&[&format!(
            "UPDATE audit_entries SET created_at = {} WHERE workspace_id = '{ws}' AND seq <= 3",
            days_ago(&store, 400)
        )])
        .await;
    let alarms = wait_for_event(&app, &admin, "audit.tamper_detected").await;
    assert_eq!(alarms[0]["payload"]["firstBreak"]["problem"], "altered");
    assert_eq!(alarms[0]["payload"]["firstBreak"]["seq"], 1);
    assert_eq!(verify(&app, &admin).await["ok"], false);
    assert!(entries(&app, &admin, "action=audit.purge").await.is_empty());
    for (seq, time) in kept.iter().enumerate() {
        store
            .execute(&[&format!(
                "UPDATE audit_entries SET created_at = '{time}' WHERE workspace_id = '{ws}' AND seq = {}",
                seq + 1
            )])
            .await;
    }
    assert_eq!(verify(&app, &admin).await["ok"], true);

    // A real purge, as the maintenance pass runs it once entries are past retention: here
    // everything older than a second from now, through the store library with the
    // deployment's key.
    let mut config = store.config();
    config.database_max_connections = 2;
    let key = datastack_server::app::load_audit_key(&config, false).expect("the key file");
    let direct = datastack_store::Store::open(&datastack_server::app::store_config(&config))
        .await
        .expect("open")
        .with_audit_key(std::sync::Arc::new(key));
    let cutoff = chrono::Utc::now() + chrono::Duration::seconds(1);
    let ws_id = datastack_core::id::WorkspaceId::parse(&ws).expect("ws id");
    let purge = direct.purge_audit(&ws_id, cutoff).await.expect("purge");
    direct.close().await;
    assert!(purge.purged >= 4, "{purge:?}");
    assert!(purge.refused.is_none());
    let purges = wait_for_entries(&app, &admin, "action=audit.purge", 1).await;
    assert_eq!(purges[0]["detail"]["purged"], purge.purged);
    assert_eq!(purges[0]["detail"]["throughSeq"], purge.through);
    let v = verify(&app, &admin).await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["checkpoint"]["seq"], purge.through);
    let left = entries(&app, &admin, "limit=1000").await;
    assert!(
        left.iter()
            .all(|e| e["seq"].as_i64().expect("seq") > purge.through)
    );

    // A forged checkpoint is found.
    store
        .execute(&["UPDATE audit_checkpoints SET seq = seq + 1"])
        .await;
    assert_eq!(
        verify(&app, &admin).await["firstBreak"]["problem"],
        "checkpoint_forged"
    );
    store
        .execute(&["UPDATE audit_checkpoints SET seq = seq - 1"])
        .await;
    // Deleting a whole chain (entries, head and checkpoint) is evident too. The three
    // deletions go in one transaction so the writer cannot append between them.
    store
        .execute_atomically(&[
            &format!("DELETE FROM audit_entries WHERE workspace_id = '{ws}'"),
            &format!("DELETE FROM audit_heads WHERE workspace_id = '{ws}'"),
            &format!("DELETE FROM audit_checkpoints WHERE workspace_id = '{ws}'"),
        ])
        .await;
    // (Entries of requests still queued may start a new chain meanwhile.)
    let v = verify(&app, &admin).await;
    let problem = v["firstBreak"]["problem"].as_str().expect("broken");
    assert!(matches!(problem, "head_missing" | "start_missing"), "{v}");
    // A chain that starts again after the wipe does not begin with the workspace's creation.
    app.create_token(&admin, json!({"label": "after the wipe"}))
        .await;
    assert_eq!(
        verify(&app, &admin).await["firstBreak"]["problem"],
        "start_missing"
    );

    // Retention is a workspace setting, validated.
    let r = app
        .patch(
            &format!("/api/v1/workspaces/{ws}"),
            &admin,
            "manage:workspaces",
            json!({"settings": {"auditRetentionDays": 90}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["settings"]["auditRetentionDays"], 90);
    let bad = app
        .patch(
            &format!("/api/v1/workspaces/{ws}"),
            &admin,
            "manage:workspaces",
            json!({"settings": {"auditRetentionDays": 0}}),
        )
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert!(bad.text.contains("auditRetentionDays"));
    app.stop().await;
}

async fn security_events_are_recorded(backend: Backend) {
    let store = std::sync::Arc::new(StoreLocation::new(backend).await);
    let app = TestApp::spawn_on(store.clone(), |c| {
        c.auth_failure_burst_threshold = 3;
    })
    .await;
    let admin = app.admin().to_owned();

    // token.created / token.revoked, with the request id that caused them.
    let r = app
        .http
        .post(format!("{}/api/v1/auth/tokens", app.base))
        .bearer_auth(&admin)
        .header("x-datastack-scope", "manage:tokens")
        .header("x-request-id", "evt-create")
        .json(&json!({"label": "evented"}))
        .send()
        .await
        .expect("send");
    let created: Value = r.json().await.expect("json");
    let (secret, id) = (
        created["token"].as_str().expect("t").to_owned(),
        created["id"].as_str().expect("id").to_owned(),
    );
    let created_events = events(&app, &admin, "token.created").await;
    let e = created_events
        .iter()
        .find(|e| e["payload"]["tokenId"] == id.as_str())
        .expect("token.created");
    assert_eq!(e["payload"]["request_id"], "evt-create");
    let r = app
        .delete(
            &format!("/api/v1/auth/tokens/{id}"),
            &admin,
            "manage:tokens",
        )
        .await;
    assert_eq!(r.status, StatusCode::NO_CONTENT);
    let revoked = events(&app, &admin, "token.revoked").await;
    assert!(
        revoked
            .iter()
            .any(|e| e["payload"]["tokenId"] == id.as_str())
    );

    // auth.failure_burst: against one credential (the revoked one) and from one address.
    for _ in 0..3 {
        assert_eq!(app.me(&secret).await.status, StatusCode::UNAUTHORIZED);
    }
    let bursts = wait_for_event(&app, &admin, "auth.failure_burst").await;
    assert!(
        bursts
            .iter()
            .any(|e| e["payload"]["credentialId"] == id.as_str()),
        "{bursts:?}"
    );
    assert!(
        bursts
            .iter()
            .any(|e| e["payload"]["sourceIp"] == "127.0.0.1")
    );

    // credential.new_network: a token used from 127.0.0.1, then from 127.0.1.7 (another
    // /24, still loopback).
    let (token, token_id) = app.create_token(&admin, json!({"label": "roaming"})).await;
    assert_eq!(app.me(&token).await.status, StatusCode::OK);
    wait_for_entries(
        &app,
        &admin,
        &format!("credentialId={token_id}&action=me.read"),
        1,
    )
    .await;
    let elsewhere = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 1, 7]))
        .build()
        .expect("client");
    let r = elsewhere
        .get(format!("{}/api/v1/me", app.base))
        .bearer_auth(&token)
        .header("x-request-id", "from-elsewhere")
        .send()
        .await
        .expect("send from another loopback address");
    assert_eq!(r.status(), StatusCode::OK);
    let moved = wait_for_event(&app, &admin, "credential.new_network").await;
    let e = moved
        .iter()
        .find(|e| e["payload"]["credentialId"] == token_id.as_str())
        .expect("new network for the token");
    assert_eq!(e["payload"]["network"], "127.0.1.0/24");
    assert_eq!(e["payload"]["request_id"], "from-elsewhere");
    // Back on a known network: no second event. Sightings are checked in the batch that
    // writes the call's entry, so once the third entry is written the answer is final.
    assert_eq!(app.me(&token).await.status, StatusCode::OK);
    wait_for_entries(
        &app,
        &admin,
        &format!("credentialId={token_id}&action=me.read"),
        3,
    )
    .await;
    assert_eq!(
        events(&app, &admin, "credential.new_network").await.len(),
        1
    );
    app.stop().await;
}

async fn access_review_flags_and_bulk_actions(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    // Broad but only used to read tokens.
    let (broad, broad_id) = app.create_token(&admin, json!({"label": "broad"})).await;
    for _ in 0..2 {
        let r = app.get("/api/v1/auth/tokens", &broad, "read:tokens").await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // Old and unused.
    let (old, old_id) = app
        .create_token(&admin, json!({"label": "old", "expiresInDays": 365}))
        .await;
    app.store()
        .execute(&[&format!(
            "UPDATE tokens SET created_at = {} WHERE id = '{old_id}'",
            days_ago(app.store(), 100)
        )])
        .await;
    wait_for_entries(
        &app,
        &admin,
        &format!("credentialId={broad_id}&action=tokens.list"),
        2,
    )
    .await;

    let r = app.get("/api/v1/access-review", &admin, "read:audit").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let items = r.body["items"].as_array().expect("items");
    let item = |id: &str| {
        items
            .iter()
            .find(|i| i["credentialId"] == id)
            .unwrap_or_else(|| panic!("{id} is reviewed"))
            .clone()
    };
    let b = item(&broad_id);
    assert_eq!(b["flags"], json!(["never_expires", "over_broad"]));
    assert_eq!(b["suggestedScopes"], json!(["read:tokens"]));
    assert_eq!(b["usedScopes"]["read:tokens"], 2);
    assert_eq!(b["owner"]["email"], "admin@datastack.local");
    let o = item(&old_id);
    assert_eq!(o["flags"], json!(["stale", "rotation_due"]));
    assert_eq!(o["suggestedScopes"], Value::Null);
    let stale = app
        .get("/api/v1/access-review?flag=stale", &admin, "read:audit")
        .await;
    let ids: Vec<&str> = stale.body["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|i| i["credentialId"].as_str())
        .collect();
    assert!(ids.contains(&old_id.as_str()) && !ids.contains(&broad_id.as_str()));
    let bad = app
        .get("/api/v1/access-review?staleDays=0", &admin, "read:audit")
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    // Narrow the broad token to what it used.
    let r = app
        .post(
            "/api/v1/access-review/narrow",
            &admin,
            "manage:tokens",
            json!({"credentialIds": [broad_id, old_id]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["changed"][0]["credentialId"], broad_id.as_str());
    assert_eq!(r.body["changed"][0]["scopes"], json!(["read:tokens"]));
    assert_eq!(r.body["unchanged"], json!([old_id]));
    assert_eq!(
        app.get("/api/v1/auth/tokens", &broad, "read:tokens")
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        app.get("/api/v1/users", &broad, "read:users").await.status,
        StatusCode::FORBIDDEN,
        "the narrowed token lost what it never used"
    );

    // Revoke the stale one (and an unknown id, reported as such).
    let ghost = "tok_0123456789abcdef0123456789abcdef";
    let r = app
        .post(
            "/api/v1/access-review/revoke",
            &admin,
            "manage:tokens",
            json!({"credentialIds": [old_id, ghost]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    assert_eq!(r.body["changed"][0]["credentialId"], old_id.as_str());
    assert_eq!(r.body["notFound"], json!([ghost]));
    assert_eq!(app.me(&old).await.status, StatusCode::UNAUTHORIZED);
    let revokes = entries(
        &app,
        &admin,
        &format!("action=tokens.revoke&resourceId={old_id}"),
    )
    .await;
    assert_eq!(revokes[0]["detail"]["via"], "access_review");
    let narrows = entries(&app, &admin, "action=tokens.narrow").await;
    assert_eq!(narrows[0]["detail"]["to"], json!(["read:tokens"]));

    // Bad input changes nothing; non-admins are refused.
    for body in [
        json!({"credentialIds": []}),
        json!({"credentialIds": ["not-an-id"]}),
        json!({"ids": [broad_id]}),
    ] {
        let r = app
            .post(
                "/api/v1/access-review/revoke",
                &admin,
                "manage:tokens",
                body,
            )
            .await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{}", r.text);
    }
    assert_eq!(app.me(&broad).await.status, StatusCode::OK);
    let (_, editor) = app.user_with_token("ed@example.com", "editor").await;
    let r = app
        .post(
            "/api/v1/access-review/revoke",
            &editor,
            "manage:tokens",
            json!({"credentialIds": [broad_id]}),
        )
        .await;
    assert_eq!(r.status, StatusCode::FORBIDDEN);
    app.stop().await;
}

async fn unused_tokens_are_revoked_by_policy_after_notice(backend: Backend) {
    let store = std::sync::Arc::new(StoreLocation::new(backend).await);
    let app = TestApp::spawn_on(store.clone(), |c| {
        c.audit_maintenance_interval = Duration::from_millis(200);
        c.auto_revoke_notice = Duration::ZERO;
    })
    .await;
    let admin = app.admin().to_owned();
    let ws = workspace_id(&app, &admin).await;
    let (idle, idle_id) = app.create_token(&admin, json!({"label": "idle"})).await;
    let (busy, _) = app.create_token(&admin, json!({"label": "busy"})).await;
    store
        .execute(&[&format!(
            "UPDATE tokens SET created_at = {} WHERE id = '{idle_id}'",
            days_ago(&store, 3)
        )])
        .await;
    let r = app
        .patch(
            &format!("/api/v1/workspaces/{ws}"),
            &admin,
            "manage:workspaces",
            json!({"settings": {"autoRevokeUnusedDays": 2}}),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    let notice = wait_for_event(&app, &admin, "token.auto_revoke_scheduled").await;
    assert_eq!(notice[0]["payload"]["tokenId"], idle_id.as_str());
    // Polling with the idle token would use it (and cancel the notice): watch the events.
    let revoked = wait_for_event(&app, &admin, "token.revoked").await;
    assert!(
        revoked
            .iter()
            .any(|e| e["payload"]["tokenId"] == idle_id.as_str()
                && e["payload"]["reason"] == "unused")
    );
    assert_eq!(app.me(&idle).await.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.me(&busy).await.status, StatusCode::OK);
    wait_for_entries(
        &app,
        &admin,
        &format!("action=tokens.auto_revoke&resourceId={idle_id}"),
        1,
    )
    .await;
    app.stop().await;
}

async fn a_stuck_audit_store_refuses_requests_in_bounded_time_and_loses_nothing(backend: Backend) {
    let store = std::sync::Arc::new(StoreLocation::new(backend).await);
    let app = TestApp::spawn_on(store.clone(), |c| {
        c.audit_queue_capacity = 16;
        c.audit_enqueue_timeout = Duration::from_millis(200);
    })
    .await;
    let admin = app.admin().to_owned();
    let (token, token_id) = app.create_token(&admin, json!({"label": "probe"})).await;
    wait_for_entries(&app, &admin, "action=tokens.create", 1).await;

    let lock = store.lock_audit_writes().await;
    let mut answered = 0;
    let mut refused = 0;
    for _ in 0..200 {
        let started = std::time::Instant::now();
        let r = app.me(&token).await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "no request waits much longer than the enqueue timeout"
        );
        match r.status {
            StatusCode::OK => answered += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                refused += 1;
                if refused == 3 {
                    break;
                }
            }
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    assert_eq!(refused, 3, "a full audit queue refuses requests");
    assert!(answered >= 16);
    lock.release().await;

    // The store is back: requests run again and every answered one was recorded.
    let ok = eventually(WAIT, || async {
        app.me(&token).await.status == StatusCode::OK
    })
    .await;
    assert!(ok);
    answered += 1;
    let recorded = wait_for_entries(
        &app,
        &admin,
        &format!("credentialId={token_id}&action=me.read&outcome=allowed&limit=1000"),
        answered,
    )
    .await;
    assert_eq!(requests_in(&recorded), answered, "nothing answered is lost");
    assert_eq!(verify(&app, &admin).await["ok"], true);
    app.stop().await;
}

async fn no_secret_ever_enters_the_audit_trail(backend: Backend) {
    let store = std::sync::Arc::new(StoreLocation::new(backend).await);
    let app = TestApp::spawn_on(store.clone(), |_| {}).await;
    let admin = app.admin().to_owned();
    let mut secrets = vec![admin.clone()];
    let (t, _) = app.create_token(&admin, json!({"label": "one"})).await;
    secrets.push(t.clone());
    let (_, user_token) = app.user_with_token("u@example.com", "viewer").await;
    secrets.push(user_token.clone());
    let r = app
        .post(
            "/api/v1/workspaces",
            &admin,
            "manage:workspaces",
            json!({"name": "child"}),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.text);
    secrets.push(r.body["adminToken"].as_str().expect("t").to_owned());
    // Secrets in the wrong places: a path, the scope header, the user agent, a bad bearer.
    let _ = app
        .delete(&format!("/api/v1/auth/tokens/{t}"), &admin, "manage:tokens")
        .await;
    let _ = app.get("/api/v1/auth/tokens", &admin, &t).await;
    let _ = app
        .http
        .get(format!("{}/api/v1/me", app.base))
        .bearer_auth(&t)
        .header("user-agent", format!("agent {t}"))
        .send()
        .await
        .expect("send");
    let _ = app
        .call(
            Method::GET,
            "/api/v1/me",
            Some(&format!("{t}x")),
            None,
            None,
        )
        .await;
    wait_for_entries(&app, &admin, "action=me.read", 2).await;
    // A clean stop writes everything queued.
    app.stop().await;

    let mut dump = Vec::new();
    for column in [
        "id",
        "request_id",
        "principal_id",
        "credential_id",
        "action",
        "resource_type",
        "resource_id",
        "scope",
        "source_ip",
        "user_agent",
        "outcome",
        "detail",
        "prev_hash",
        "hash",
    ] {
        dump.extend(
            store
                .strings(&format!("SELECT {column} FROM audit_entries"))
                .await,
        );
    }
    dump.extend(store.strings("SELECT payload FROM security_events").await);
    dump.extend(store.strings("SELECT type FROM security_events").await);
    assert!(dump.len() > 50, "the tables hold the suite's entries");
    let text = dump.join("\n");
    for secret in &secrets {
        assert!(
            !text.contains(secret.as_str()),
            "a secret entered the audit trail"
        );
        assert!(
            !text.contains(&secret[4..40]),
            "part of a secret entered the audit trail"
        );
    }
    assert!(text.contains("[redacted]"), "the user agent was scrubbed");
}

async fn a_clean_shutdown_writes_every_queued_entry(backend: Backend) {
    let store = std::sync::Arc::new(StoreLocation::new(backend).await);
    let app = TestApp::spawn_on(store.clone(), |_| {}).await;
    let admin = app.admin().to_owned();
    let token_id = app.me(&admin).await.body["credential"]["id"]
        .as_str()
        .expect("id")
        .to_owned();
    // The writer is held up (its tables locked), so the answered reads' entries are
    // still queued when the stop begins.
    let lock = store.lock_audit_writes().await;
    let mut answered = 1;
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let (http, url, admin) = (
            app.http.clone(),
            format!("{}/api/v1/me", app.base),
            admin.clone(),
        );
        calls.spawn(async move {
            http.get(url)
                .bearer_auth(admin)
                .send()
                .await
                .expect("send")
                .status()
        });
    }
    while let Some(status) = calls.join_next().await {
        assert_eq!(status.expect("task"), StatusCode::OK);
        answered += 1;
    }
    let stopping = tokio::spawn(app.stop());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !stopping.is_finished(),
        "the stop waits for the queued entries"
    );
    lock.release().await;
    stopping.await.expect("stopped");
    // Each row stands for one read, or for `detail.count` reads (aggregated reads).
    let recorded: u64 = store
        .strings(&format!(
            "SELECT COALESCE(CAST(detail AS TEXT), '{{}}') FROM audit_entries \
             WHERE action = 'me.read' AND credential_id = '{token_id}' AND status = 200"
        ))
        .await
        .iter()
        .map(|d| {
            serde_json::from_str::<Value>(d).expect("detail")["count"]
                .as_u64()
                .unwrap_or(1)
        })
        .sum();
    assert_eq!(recorded, answered, "a graceful stop loses no read");
}

/// `requestId` finds the entry of a request whose id an error body reported, and the
/// aggregated entry that counts an allowed forward-auth decision; `_` in an id is matched
/// literally; a malformed id is refused.
async fn a_request_is_found_by_its_id_even_inside_an_aggregated_entry(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    // A refused call: its error body names the request id (a UUIDv7 datastack generated).
    let refused = app.get("/api/v1/users", &admin, "read:tokens").await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    let id = refused.body["error"]["requestId"]
        .as_str()
        .expect("requestId")
        .to_owned();
    let found = wait_for_entries(&app, &admin, &format!("requestId={id}"), 1).await;
    assert!(
        found.iter().all(|e| e["requestId"] == id.as_str()),
        "{found:?}"
    );
    assert_eq!(found[0]["status"], 403);
    // Allowed forward-auth decisions of one credential and route are aggregated: one entry
    // counts them, listing the ids after the first.
    let route = app
        .post(
            "/api/v1/gateway/routes",
            &admin,
            "manage:gateway",
            json!({"pathPrefix": "/v1/jobs", "resource": "jobs"}),
        )
        .await;
    assert_eq!(route.status, StatusCode::CREATED, "{}", route.text);
    for request_id in ["agg-1", "agg_2", "agg-3"] {
        let r = app
            .http
            .get(format!("{}/auth/verify", app.base))
            .bearer_auth(&admin)
            .header("x-original-uri", "/v1/jobs/7")
            .header("x-original-method", "GET")
            .header("x-request-id", request_id)
            .send()
            .await
            .expect("verify");
        assert_eq!(r.status(), StatusCode::OK);
    }
    // Three quick decisions span at most two seconds: some entry counts two of them.
    let mut aggregated = false;
    for request_id in ["agg-1", "agg_2", "agg-3"] {
        let found = wait_for_entries(&app, &admin, &format!("requestId={request_id}"), 1).await;
        aggregated |= found[0]["detail"]["count"].as_u64().is_some_and(|n| n >= 2);
        assert_eq!(found.len(), 1, "{request_id}: {found:?}");
        let e = &found[0];
        assert_eq!(e["action"], "forward_auth.verify");
        let listed = e["requestId"] == request_id
            || e["detail"]["requestIds"]
                .as_array()
                .is_some_and(|ids| ids.iter().any(|i| i == request_id));
        assert!(listed, "{request_id} not in {e}");
    }
    assert!(aggregated, "no aggregated entry among the decisions");
    // `_` is not a wildcard: `aggX2` matches nothing.
    assert!(entries(&app, &admin, "requestId=aggX2").await.is_empty());
    let bad = app
        .get("/api/v1/audit/events?requestId=a%20b", &admin, "read:audit")
        .await;
    bad.assert_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST");
    app.stop().await;
}

/// Sends `n` concurrent `GET /api/v1/me` with the request ids `{prefix}-{i}`.
async fn concurrent_reads(app: &TestApp, token: &str, prefix: &str, n: usize) {
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..n {
        let request = app
            .http
            .get(format!("{}/api/v1/me", app.base))
            .bearer_auth(token)
            .header("x-request-id", format!("{prefix}-{i}"));
        calls.spawn(async move { request.send().await.expect("send").status() });
    }
    while let Some(status) = calls.join_next().await {
        assert_eq!(status.expect("task"), StatusCode::OK);
    }
}

/// Every read of `prefix` that the `me.read` entries list, with its time (entry time +
/// offset, µs since the epoch) and latency; waits until `n` are listed.
async fn listed_reads(
    app: &TestApp,
    token: &str,
    prefix: &str,
    n: usize,
) -> (Vec<Value>, Vec<(String, i64, i64)>) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let found = entries(app, token, "action=me.read&limit=1000").await;
        let mut mine = Vec::new();
        let mut reads = Vec::new();
        for e in &found {
            let time = chrono::DateTime::parse_from_rfc3339(e["time"].as_str().expect("time"))
                .expect("rfc3339")
                .timestamp_micros();
            let listed: Vec<(String, i64, i64)> = match e["detail"]["requests"].as_array() {
                Some(requests) => requests
                    .iter()
                    .map(|r| {
                        (
                            r[0].as_str().expect("id").to_owned(),
                            time + r[1].as_i64().expect("offset"),
                            r[2].as_i64().expect("latency"),
                        )
                    })
                    .collect(),
                None => vec![(
                    e["requestId"].as_str().expect("requestId").to_owned(),
                    time,
                    e["latencyUs"].as_i64().expect("latency"),
                )],
            };
            if listed
                .iter()
                .any(|(id, _, _)| id.starts_with(&format!("{prefix}-")))
            {
                assert!(
                    listed
                        .iter()
                        .all(|(id, _, _)| id.starts_with(&format!("{prefix}-"))),
                    "a group holds only reads that differ in id, time and latency: {e}"
                );
                mine.push(e.clone());
                reads.extend(listed);
            }
        }
        if reads.len() >= n {
            return (mine, reads);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{} of {n} reads listed: {found:?}",
            reads.len()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Successful reads that differ only in request id, time and latency are written as one
/// entry per group commit that lists each of them: every read is found, once, by its id,
/// with its own time and latency; the chain verifies; a read of another kind (another
/// user agent) is not folded in; and `audit_aggregate_reads = false` writes one entry per
/// read.
async fn successful_reads_are_aggregated_without_losing_any(backend: Backend) {
    let store = std::sync::Arc::new(StoreLocation::new(backend).await);
    let app = TestApp::spawn_on(store.clone(), |_| {}).await;
    let admin = app.admin().to_owned();
    // The writer is held up, so the reads answered meanwhile wait in their group.
    let lock = store.lock_audit_writes().await;
    let before = chrono::Utc::now().timestamp_micros();
    concurrent_reads(&app, &admin, "grp", 40).await;
    let after = chrono::Utc::now().timestamp_micros();
    lock.release().await;
    let (groups, reads) = listed_reads(&app, &admin, "grp", 40).await;
    assert_eq!(reads.len(), 40, "every read once: {groups:?}");
    let mut ids: Vec<&str> = reads.iter().map(|(id, _, _)| id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 40, "no read listed twice");
    for (id, time, latency) in &reads {
        assert!((before..=after).contains(time), "{id}: its own time");
        assert!(*latency >= 0, "{id}: a latency");
    }
    let big = groups
        .iter()
        .find(|e| e["detail"]["count"].as_u64().is_some_and(|n| n >= 2))
        .unwrap_or_else(|| panic!("no aggregated entry: {groups:?}"));
    let listed = big["detail"]["requests"].as_array().expect("requests");
    assert_eq!(big["detail"]["count"].as_u64(), Some(listed.len() as u64));
    assert!(big["detail"]["aggregated"].as_str().is_some());
    assert_eq!(big["requestId"], listed[0][0], "the first read's fields");
    assert_eq!(big["status"], 200);
    assert_eq!(big["outcome"], "allowed");
    // A read inside the group is found by its id.
    let inner = listed.last().and_then(|r| r[0].as_str()).expect("an id");
    let found = entries(&app, &admin, &format!("requestId={inner}")).await;
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0]["id"], big["id"]);
    // A read that differs in more than id, time and latency is an entry of its own.
    let other = app
        .http
        .get(format!("{}/api/v1/me", app.base))
        .bearer_auth(&admin)
        .header("user-agent", "another-agent/1")
        .header("x-request-id", "solo-1")
        .send()
        .await
        .expect("send");
    assert_eq!(other.status(), StatusCode::OK);
    let solo = wait_for_entries(&app, &admin, "requestId=solo-1", 1).await;
    assert_eq!(solo[0]["userAgent"], "another-agent/1");
    assert!(solo[0]["detail"]["count"].is_null(), "{solo:?}");
    assert_eq!(verify(&app, &admin).await["ok"], true);
    app.stop().await;

    // With aggregation off, one entry per read.
    let off = TestApp::spawn_on(
        std::sync::Arc::new(StoreLocation::new(backend).await),
        |c| c.audit_aggregate_reads = false,
    )
    .await;
    let admin = off.admin().to_owned();
    concurrent_reads(&off, &admin, "one", 20).await;
    let (entries_off, reads) = listed_reads(&off, &admin, "one", 20).await;
    assert_eq!(reads.len(), 20);
    assert_eq!(entries_off.len(), 20, "one entry per read");
    off.stop().await;
}
