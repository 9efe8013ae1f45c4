//! The audit chain's heads: a truncated chain (newest entries and head row deleted) stays
//! reported broken after the server appends again, until an operator acknowledges the
//! break; an older head restored is found; the heads anchored outside the database show a
//! rollback that leaves the database consistent, online and to the offline verifier.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{Backend, StoreLocation, TestApp, eventually, on_both_stores};

on_both_stores!(
    a_truncated_chain_stays_broken_until_an_operator_acknowledges_it,
    an_older_head_and_a_rollback_behind_the_anchored_heads_are_found,
);

const WAIT: Duration = Duration::from_secs(15);

async fn verify(app: &TestApp, token: &str) -> Value {
    let r = app.get("/api/v1/audit/verify", token, "read:audit").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body
}

/// Polls verify until `check` holds (with a deadline); returns that answer.
async fn verify_until(app: &TestApp, token: &str, check: impl Fn(&Value) -> bool) -> Value {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let v = verify(app, token).await;
        if check(&v) {
            return v;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "verify never answered as expected; last: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn workspace_id(app: &TestApp, token: &str) -> String {
    app.me(token).await.body["workspace"]["id"]
        .as_str()
        .expect("workspace id")
        .to_owned()
}

async fn items(app: &TestApp, token: &str, path: &str) -> Vec<Value> {
    let r = app.get(path, token, "read:audit").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text);
    r.body["items"].as_array().cloned().unwrap_or_default()
}

async fn wait_for_items(app: &TestApp, token: &str, path: &str) -> Vec<Value> {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let found = items(app, token, path).await;
        if !found.is_empty() {
            return found;
        }
        assert!(std::time::Instant::now() < deadline, "nothing at {path}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The head row as `seq|hash|signature`.
async fn head_row(store: &StoreLocation, ws: &str) -> (i64, String, String) {
    let row = store
        .strings(&format!(
            "SELECT CAST(seq AS TEXT) || '|' || hash || '|' || signature FROM audit_heads \
             WHERE workspace_id = '{ws}'"
        ))
        .await;
    let mut parts = row[0].split('|');
    let seq = parts.next().expect("seq").parse().expect("number");
    (
        seq,
        parts.next().expect("hash").to_owned(),
        parts.next().expect("signature").to_owned(),
    )
}

async fn a_truncated_chain_stays_broken_until_an_operator_acknowledges_it(backend: Backend) {
    let app = TestApp::spawn(backend).await;
    let admin = app.admin().to_owned();
    let ws = workspace_id(&app, &admin).await;
    for i in 0..5 {
        app.create_token(&admin, json!({"label": format!("t{i}")}))
            .await;
    }
    let v = verify_until(&app, &admin, |v| v["checked"].as_u64() >= Some(6)).await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["breaks"], json!([]));

    // The newest three entries and the head row deleted behind the server's back. The cut
    // is fixed first: entries the writer adds meanwhile go with the deleted ones.
    let store = app.store();
    let kept = head_row(store, &ws).await.0 - 3;
    store
        .execute_atomically(&[
            &format!("DELETE FROM audit_entries WHERE workspace_id = '{ws}' AND seq > {kept}"),
            &format!("DELETE FROM audit_heads WHERE workspace_id = '{ws}'"),
        ])
        .await;
    let v = verify(&app, &admin).await;
    assert_eq!(v["ok"], false, "{v}");
    // The server appends again (the verify call itself is audited, and these calls): it
    // does not re-sign a head over the shortened chain as if nothing had happened.
    app.create_token(&admin, json!({"label": "after the cut"}))
        .await;
    let v = verify_until(&app, &admin, |v| {
        v["firstBreak"]["problem"] == "unacknowledged_break"
    })
    .await;
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["firstBreak"]["reason"], "head_missing", "{v}");
    assert_eq!(v["firstBreak"]["resumedAfterSeq"], kept, "{v}");
    let break_id = v["firstBreak"]["id"]
        .as_str()
        .expect("marker id")
        .to_owned();
    assert_eq!(v["firstBreak"]["seq"], kept + 1, "{v}");
    let breaks = v["breaks"].as_array().expect("breaks");
    assert_eq!(breaks.len(), 1, "{v}");
    assert_eq!(breaks[0]["id"], break_id.as_str());
    assert_eq!(breaks[0]["acknowledged"], Value::Null);
    // Still broken after more writes: nothing repairs it silently.
    app.create_token(&admin, json!({"label": "later"})).await;
    let v = verify(&app, &admin).await;
    assert_eq!(v["firstBreak"]["id"], break_id.as_str(), "{v}");
    let alarms = wait_for_items(
        &app,
        &admin,
        "/api/v1/audit/security-events?type=audit.tamper_detected",
    )
    .await;
    assert_eq!(
        alarms[0]["payload"]["firstBreak"]["problem"],
        "head_missing"
    );
    assert_eq!(alarms[0]["payload"]["resumedAfterSeq"], kept);

    // Retention never purges a break no one acknowledged: a purge of everything stops just
    // before the marker.
    let config = store.config();
    let key = datastack_server::app::load_audit_key(&config, false).expect("the key file");
    let direct = datastack_store::Store::open(&datastack_server::app::store_config(&config))
        .await
        .expect("open")
        .with_audit_key(std::sync::Arc::new(key));
    let ws_id = datastack_core::id::WorkspaceId::parse(&ws).expect("ws id");
    let purge = direct
        .purge_audit(&ws_id, chrono::Utc::now() + chrono::Duration::seconds(60))
        .await
        .expect("purge");
    assert_eq!(purge.through, kept, "{purge:?}");
    assert!(purge.refused.is_none(), "{purge:?}");
    direct.close().await;
    let v = verify(&app, &admin).await;
    assert_eq!(v["checkpoint"]["seq"], kept, "{v}");
    assert_eq!(v["firstBreak"]["id"], break_id.as_str(), "{v}");

    // The acknowledgement: an operator command on the store, refused when it names no
    // recorded break or says nothing.
    let err = datastack_server::offline::acknowledge_break(
        &config,
        &ws,
        "aud_00000000000000000000000000",
        "ops@example.com",
        "x",
    )
    .await
    .expect_err("no such break");
    assert!(err.to_string().contains("records no break"), "{err}");
    let err = datastack_server::offline::acknowledge_break(&config, &ws, &break_id, "  ", "x")
        .await
        .expect_err("who is required");
    assert!(err.to_string().contains("--by"), "{err}");
    let err = datastack_server::offline::acknowledge_break(&config, &ws, "tok_1", "ops", "x")
        .await
        .expect_err("not a break id");
    assert!(err.to_string().contains("--break"), "{err}");
    let acked = datastack_server::offline::acknowledge_break(
        &config,
        &ws,
        &break_id,
        "ops@example.com",
        "three entries lost in a database incident",
    )
    .await
    .expect("acknowledged");
    assert_eq!(acked.resumed_after_seq, kept);
    assert_eq!(acked.reason, "head_missing");
    let err = datastack_server::offline::acknowledge_break(
        &config,
        &ws,
        &break_id,
        "ops@example.com",
        "again",
    )
    .await
    .expect_err("acknowledged once");
    assert!(err.to_string().contains("already acknowledged"), "{err}");

    // Now intact from the acknowledged point, and the break is still listed.
    let v = verify(&app, &admin).await;
    assert_eq!(v["ok"], true, "{v}");
    assert_eq!(v["firstBreak"], Value::Null);
    let breaks = v["breaks"].as_array().expect("breaks");
    assert_eq!(breaks.len(), 1, "{v}");
    assert_eq!(breaks[0]["acknowledged"]["by"], "ops@example.com");
    assert_eq!(
        breaks[0]["acknowledged"]["reason"],
        "three entries lost in a database incident"
    );
    // The acknowledgement is audited: an entry and a security event.
    let entries = wait_for_items(
        &app,
        &admin,
        "/api/v1/audit/events?action=audit.break_acknowledged",
    )
    .await;
    assert_eq!(entries.len(), 1);
    assert_eq!(entries[0]["resourceId"], break_id.as_str());
    assert_eq!(entries[0]["detail"]["by"], "ops@example.com");
    let events = wait_for_items(
        &app,
        &admin,
        "/api/v1/audit/security-events?type=audit.break_acknowledged",
    )
    .await;
    assert_eq!(events[0]["payload"]["breakId"], break_id.as_str());
    assert_eq!(events[0]["payload"]["acknowledgedBy"], "ops@example.com");
    app.create_token(&admin, json!({"label": "after the ack"}))
        .await;
    assert_eq!(verify(&app, &admin).await["ok"], true);

    // Entries cut off the end with the head kept: truncated, and once the server appends
    // again, a recorded break of its own that needs its own acknowledgement.
    // The cut is fixed first, and never below the acknowledgement (which the writer may
    // not have followed with two more entries yet).
    let acknowledged_at: i64 = store
        .strings(&format!(
            "SELECT CAST(seq AS TEXT) FROM audit_entries WHERE workspace_id = '{ws}' \
             AND action = 'audit.break_acknowledged'"
        ))
        .await[0]
        .parse()
        .expect("the acknowledgement's seq");
    verify_until(&app, &admin, |v| {
        v["headSeq"].as_i64() >= Some(acknowledged_at + 2)
    })
    .await;
    let kept = head_row(store, &ws).await.0 - 2;
    store
        .execute_atomically(&[&format!(
            "DELETE FROM audit_entries WHERE workspace_id = '{ws}' AND seq > {kept}"
        )])
        .await;
    // Truncated; or, when an entry of an earlier call was still queued and the writer
    // appended it after the cut, the break is already recorded.
    let v = verify(&app, &admin).await;
    let cut_head = match v["firstBreak"]["problem"].as_str() {
        Some("truncated") => v["firstBreak"]["headSeq"].as_i64().expect("headSeq"),
        Some("unacknowledged_break") => v["breaks"][1]["knownHeadSeq"]
            .as_i64()
            .expect("the recorded break's head"),
        _ => panic!("the cut is found: {v}"),
    };
    let v = verify_until(&app, &admin, |v| {
        v["firstBreak"]["problem"] == "unacknowledged_break"
    })
    .await;
    assert_eq!(v["firstBreak"]["reason"], "entries_missing", "{v}");
    assert_eq!(v["firstBreak"]["resumedAfterSeq"], kept, "{v}");
    let breaks = v["breaks"].as_array().expect("breaks");
    assert_eq!(breaks.len(), 2, "{v}");
    assert_eq!(breaks[0]["acknowledged"]["by"], "ops@example.com");
    assert_eq!(breaks[1]["knownHeadSeq"], cut_head, "{v}");
    assert_eq!(breaks[1]["acknowledged"], Value::Null);
    app.stop().await;
}

async fn an_older_head_and_a_rollback_behind_the_anchored_heads_are_found(backend: Backend) {
    let location = std::sync::Arc::new(StoreLocation::new(backend).await);
    let app = TestApp::spawn_on(location.clone(), |c| {
        c.audit_maintenance_interval = Duration::from_millis(200);
    })
    .await;
    let admin = app.admin().to_owned();
    let ws = workspace_id(&app, &admin).await;
    let store = app.store();
    let config = store.config();
    let heads_file: PathBuf = config.data_dir.join("audit-heads.jsonl");
    for i in 0..3 {
        app.create_token(&admin, json!({"label": format!("t{i}")}))
            .await;
    }
    verify_until(&app, &admin, |v| v["checked"].as_u64() >= Some(4)).await;

    // An older head row restored over a chain that went on: found at the next append.
    let (old_seq, old_hash, old_sig) = head_row(store, &ws).await;
    app.create_token(&admin, json!({"label": "t3"})).await;
    verify_until(&app, &admin, |v| v["headSeq"].as_i64() > Some(old_seq + 1)).await;
    store
        .execute_atomically(&[&format!(
            "UPDATE audit_heads SET seq = {old_seq}, hash = '{old_hash}', signature = '{old_sig}' \
             WHERE workspace_id = '{ws}'"
        )])
        .await;
    app.create_token(&admin, json!({"label": "t4"})).await;
    let v = verify_until(&app, &admin, |v| {
        v["firstBreak"]["problem"] == "unacknowledged_break"
    })
    .await;
    assert_eq!(v["firstBreak"]["reason"], "head_behind", "{v}");
    assert_eq!(v["breaks"][0]["knownHeadSeq"], old_seq, "{v}");
    let first = v["firstBreak"]["id"].as_str().expect("id").to_owned();
    datastack_server::offline::acknowledge_break(&config, &ws, &first, "ops", "head restored")
        .await
        .expect("acknowledged");
    verify_until(&app, &admin, |v| v["ok"] == true).await;

    // The maintenance passes anchor every head in the heads file, one signed JSON line
    // each.
    let (base_seq, base_hash, base_sig) = head_row(store, &ws).await;
    app.create_token(&admin, json!({"label": "t5"})).await;
    app.create_token(&admin, json!({"label": "t6"})).await;
    let anchored = eventually(WAIT, || async {
        std::fs::read_to_string(&heads_file)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .any(|l| l["workspaceId"] == ws.as_str() && l["seq"].as_i64() > Some(base_seq + 1))
    })
    .await;
    assert!(anchored, "no head anchored past {base_seq}");
    let line: Value = serde_json::from_str(
        std::fs::read_to_string(&heads_file)
            .expect("heads file")
            .lines()
            .next()
            .expect("a line"),
    )
    .expect("json");
    for field in ["workspaceId", "seq", "hash", "signature", "time"] {
        assert!(!line[field].is_null(), "{line}");
    }
    // The offline verifier agrees with the untampered store and file, beside the server.
    let report = datastack_server::offline::verify(&config, Some(&ws), Some(&heads_file))
        .await
        .expect("offline verify");
    assert!(report.ok, "{report:?}");
    assert_eq!(report.reports.len(), 1);
    let heads = report.heads.as_ref().expect("heads checked");
    assert!(heads.discrepancies.is_empty(), "{report:?}");

    // A rollback that leaves the database consistent: the newer entries deleted and the
    // older, validly signed head restored. Only the anchored heads show it.
    store
        .execute_atomically(&[
            &format!("DELETE FROM audit_entries WHERE workspace_id = '{ws}' AND seq > {base_seq}"),
            &format!(
                "UPDATE audit_heads SET seq = {base_seq}, hash = '{base_hash}', \
                 signature = '{base_sig}' WHERE workspace_id = '{ws}'"
            ),
        ])
        .await;
    let report = datastack_server::offline::verify(&config, Some(&ws), Some(&heads_file))
        .await
        .expect("offline verify");
    assert!(!report.ok, "{report:?}");
    let heads = report.heads.as_ref().expect("heads checked");
    let found = heads
        .discrepancies
        .iter()
        .find(|d| d.workspace_id.as_deref() == Some(ws.as_str()))
        .expect("a discrepancy");
    assert!(found.is_tampering());
    let problem = serde_json::to_value(found.problem).expect("json");
    assert!(problem == "missing" || problem == "rewritten", "{problem}");
    // The node compares with the head it anchored and records the break in the chain.
    let v = verify_until(&app, &admin, |v| {
        v["firstBreak"]["reason"] == "head_rolled_back"
    })
    .await;
    assert_eq!(v["ok"], false);
    let rolled = v["firstBreak"]["id"].as_str().expect("id").to_owned();
    datastack_server::offline::acknowledge_break(&config, &ws, &rolled, "ops", "restored backup")
        .await
        .expect("acknowledged");
    // Acknowledged: what the heads file contradicts from before the break is known
    // history, no longer tampering.
    let report = datastack_server::offline::verify(&config, Some(&ws), Some(&heads_file))
        .await
        .expect("offline verify");
    assert!(report.ok, "{report:?}");
    let heads = report.heads.as_ref().expect("heads checked");
    assert!(!heads.discrepancies.is_empty());
    assert!(
        heads
            .discrepancies
            .iter()
            .all(|d| d.acknowledged && d.explained_by.is_some())
    );
    // A line edited in the file is reported, not trusted.
    let mut text = std::fs::read_to_string(&heads_file).expect("heads file");
    text.push_str(&format!(
        "{{\"workspaceId\":\"{ws}\",\"seq\":1,\"hash\":\"{}\",\"signature\":\"{}\",\"time\":\"2026-01-01T00:00:00Z\"}}\nnot json\n",
        "0".repeat(64),
        "1".repeat(64)
    ));
    let edited = config.data_dir.join("edited-heads.jsonl");
    std::fs::write(&edited, text).expect("write");
    let report = datastack_server::offline::verify(&config, Some(&ws), Some(&edited))
        .await
        .expect("offline verify");
    assert!(!report.ok);
    let problems: Vec<Value> = report
        .heads
        .as_ref()
        .expect("heads")
        .discrepancies
        .iter()
        .filter(|d| d.is_tampering())
        .map(|d| serde_json::to_value(d.problem).expect("json"))
        .collect();
    assert_eq!(
        problems,
        vec![json!("signature_invalid"), json!("unreadable")]
    );
    app.stop().await;
}
