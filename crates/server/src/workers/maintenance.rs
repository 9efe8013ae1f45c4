//! Periodic maintenance: audit retention (purge, with a signed checkpoint and an entry
//! recording the purge) and the workspace policy that revokes unused tokens (an event
//! first, the revocation after the notice period); expired OAuth access tokens deleted.
//!
//! Several nodes may run it at once: a purge locks its chain, a notice is recorded once per
//! idle period, and a revocation of an already revoked token changes nothing.

use std::sync::Arc;

use chrono::Utc;
use std::collections::HashMap;

use datastack_core::audit::{AuditRecord, ChainBreak, SecurityEvent};
use datastack_core::id::WorkspaceId;
use datastack_store::{Invalidation, Store, Trail, WorkspacePolicy};

use tokio::sync::watch;

use crate::config::Config;
use crate::credentials::CredentialVerifier;
use crate::metrics::Metrics;

/// Runs a pass at start and then every `audit_maintenance_interval`, until `stop`.
pub async fn maintenance(
    store: Store,
    credentials: Arc<CredentialVerifier>,
    config: Arc<Config>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let mut reported = HashMap::new();
    let mut anchor =
        super::heads_file::Anchor::open(config.audit_heads_file.path(&config.data_dir)).await;
    let mut ticker = tokio::time::interval(config.audit_maintenance_interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|s| *s) => break,
        }
        if let Err(e) = run_once(&store, &credentials, &config, &mut reported).await {
            tracing::warn!(error = %e, "audit maintenance failed; it runs again next interval");
        }
        // After the purges, so the anchored heads include their entries.
        if let Err(e) = anchor.pass(&store).await {
            tracing::warn!(error = %e, "anchoring the audit chain heads failed; it runs again next interval");
        }
        metrics.maintenance_pass();
    }
}

/// The chain breaks already reported, so a break found on every pass raises one event.
type Reported = HashMap<WorkspaceId, ChainBreak>;

async fn run_once(
    store: &Store,
    credentials: &CredentialVerifier,
    config: &Config,
    reported: &mut Reported,
) -> Result<(), datastack_store::Error> {
    if let Err(e) = rotation_due(store).await {
        tracing::warn!(error = %e, "the API key rotation pass failed");
    }
    if let Err(e) = expiring_soon(store, config).await {
        tracing::warn!(error = %e, "the credential expiry notice pass failed");
    }
    // An OAuth access token's row is kept one day past its expiry (for the access
    // review's "last use" and for revocation answers), then deleted: the table does not
    // grow with every token ever issued.
    match store
        .purge_expired_oauth_tokens(Utc::now() - chrono::Duration::days(1))
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(deleted = n, "expired OAuth access tokens deleted"),
        Err(e) => tracing::warn!(error = %e, "deleting expired OAuth access tokens failed"),
    }
    // Refresh tokens (used ones are kept until they expire, to detect their reuse) and
    // device authorizations, likewise.
    match store
        .purge_expired_oauth_grants(Utc::now() - chrono::Duration::days(1))
        .await
    {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            deleted = n,
            "expired refresh tokens and device codes deleted"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "deleting expired refresh tokens and device codes failed")
        }
    }
    for policy in store.workspace_policies().await? {
        // One workspace's failure does not stop the others' maintenance.
        if let Err(e) = maintain(store, credentials, config, &policy, reported).await {
            tracing::warn!(workspace = %policy.id, error = %e, "audit maintenance of a workspace failed");
        }
    }
    Ok(())
}

async fn maintain(
    store: &Store,
    credentials: &CredentialVerifier,
    config: &Config,
    policy: &WorkspacePolicy,
    reported: &mut Reported,
) -> Result<(), datastack_store::Error> {
    let days = policy
        .audit_retention_days
        .max(config.audit_min_retention_days);
    let before = Utc::now() - chrono::Duration::days(i64::from(days));
    let purge = store.purge_audit(&policy.id, before).await?;
    if purge.purged > 0 {
        tracing::info!(workspace = %policy.id, purged = purge.purged, through = purge.through, "audit entries past retention purged");
    }
    if let Some(problem) = purge.refused
        && reported.get(&policy.id) != Some(&problem)
    {
        // Never delete what does not verify: the evidence stays, and people are told.
        tracing::error!(workspace = %policy.id, problem = ?problem, "the audit chain does not verify where retention would purge it; purge stopped");
        let event = SecurityEvent::new(
            policy.id.clone(),
            "audit.tamper_detected",
            serde_json::json!({ "firstBreak": problem, "during": "retention purge" }),
        );
        store
            .record_audit_batch(&[], &[event], &[], chrono::Duration::days(30), false)
            .await?;
        reported.insert(policy.id.clone(), problem);
    }
    // The signed head, in the log too: the heads file is the anchor `audit verify --heads`
    // reads, the log a second copy (see docs/audit.md).
    if let Some((seq, hash)) = store.audit_head(&policy.id).await? {
        tracing::info!(workspace = %policy.id, seq, hash = %hash, "audit chain head");
    }
    if policy.auto_revoke_unused_days.is_some() {
        auto_revoke(store, credentials, config, policy).await?;
    }
    Ok(())
}

/// API keys whose rotation policy asks for a new secret get `api_key.rotation_due`, once
/// per rotation (their status reads `rotation_due` until they are rotated).
async fn rotation_due(store: &Store) -> Result<(), datastack_store::Error> {
    for key in store.rotation_due_keys(Utc::now()).await? {
        let due_at = key.policy.rotation_due_at();
        let payload = serde_json::json!({
            "keyId": key.token.id,
            "ownerId": key.token.owner_id,
            "name": key.token.label,
            "rotatedAt": key.policy.rotated_at,
            "rotationDueAt": due_at,
            "intervalDays": key.policy.rotation_interval_days,
        });
        let mut record = AuditRecord::system(
            key.token.workspace_id.clone(),
            "api_key.rotation_due",
            "api-keys",
        );
        record.resource_id = Some(key.token.id.to_string());
        record.principal_id = None;
        record.detail = Some(payload.to_string());
        let trail = Trail::of(record).with_event(SecurityEvent::new(
            key.token.workspace_id.clone(),
            "api_key.rotation_due",
            payload,
        ));
        if store
            .mark_rotation_due_notified(&key.token.id, &trail)
            .await?
        {
            tracing::info!(key_id = %key.token.id, "API key rotation is due");
        }
    }
    Ok(())
}

/// Personal access tokens and API keys expiring within `expiry_notice` get
/// `token.expiring_soon` or `api_key.expiring_soon`, once per credential, so webhooks can
/// tell their owners in time.
async fn expiring_soon(store: &Store, config: &Config) -> Result<(), datastack_store::Error> {
    if config.expiry_notice.is_zero() {
        return Ok(());
    }
    let now = Utc::now();
    let until = now + chrono::Duration::from_std(config.expiry_notice).unwrap_or_default();
    for c in store.expiring_credentials(now, until, 1000).await? {
        let (event, action, resource, field) = if c.id.is_api_key() {
            (
                "api_key.expiring_soon",
                "api_key.expiring_soon",
                "api-keys",
                "keyId",
            )
        } else {
            (
                "token.expiring_soon",
                "token.expiring_soon",
                "tokens",
                "tokenId",
            )
        };
        let payload = serde_json::json!({
            field: c.id,
            "ownerId": c.owner_id,
            "name": c.label,
            "expiresAt": c.expires_at,
        });
        let mut record = AuditRecord::system(c.workspace_id.clone(), action, resource);
        record.resource_id = Some(c.id.to_string());
        record.principal_id = None;
        record.detail = Some(payload.to_string());
        let trail = Trail::of(record).with_event(SecurityEvent::new(
            c.workspace_id.clone(),
            event,
            payload,
        ));
        if store.mark_expiry_notified(&c.id, &trail).await? {
            tracing::info!(credential_id = %c.id, expires_at = %c.expires_at, "credential expires soon");
        }
    }
    Ok(())
}

/// Tokens idle for the policy's days minus the notice period get a notice
/// (`token.auto_revoke_scheduled`); once idle for the full period and noticed at least the
/// notice period ago, they are revoked (`token.revoked`, reason `unused`). A use in between
/// cancels the notice.
async fn auto_revoke(
    store: &Store,
    credentials: &CredentialVerifier,
    config: &Config,
    policy: &WorkspacePolicy,
) -> Result<(), datastack_store::Error> {
    let Some(days) = policy.auto_revoke_unused_days else {
        return Ok(());
    };
    let now = Utc::now();
    let period = chrono::Duration::days(i64::from(days));
    // The notice is at most half the period, so a token is never told on every pass.
    let notice = chrono::Duration::from_std(config.auto_revoke_notice)
        .unwrap_or(chrono::Duration::days(7))
        .min(period / 2);
    for (token, noticed) in store
        .auto_revoke_candidates(&policy.id, now - period + notice)
        .await?
    {
        let idle_since = token.last_used_at.unwrap_or(token.created_at);
        let payload = |extra: serde_json::Value| {
            let mut p = serde_json::json!({
                "tokenId": token.id,
                "ownerId": token.owner_id,
                "label": token.label,
                "idleSince": idle_since,
                "policyDays": days,
            });
            if let (Some(p), Some(e)) = (p.as_object_mut(), extra.as_object()) {
                p.extend(e.clone());
            }
            p
        };
        let record = |action: &str| {
            let mut r = AuditRecord::system(policy.id.clone(), action, "tokens");
            r.resource_id = Some(token.id.to_string());
            r.principal_id = None;
            r.detail = Some(
                serde_json::json!({ "ownerId": token.owner_id, "idleSince": idle_since, "policyDays": days })
                    .to_string(),
            );
            r
        };
        match noticed {
            None => {
                let revoke_at = (idle_since + period).max(now + notice);
                let trail = Trail::of(record("tokens.auto_revoke_scheduled")).with_event(
                    SecurityEvent::new(
                        policy.id.clone(),
                        "token.auto_revoke_scheduled",
                        payload(serde_json::json!({ "revokeAt": revoke_at })),
                    ),
                );
                store
                    .mark_auto_revoke_notified(&token.id, idle_since, &trail)
                    .await?;
            }
            Some(at) if now - idle_since >= period && now - at >= notice => {
                let trail = Trail::of(record("tokens.auto_revoke")).with_event(SecurityEvent::new(
                    policy.id.clone(),
                    "token.revoked",
                    payload(serde_json::json!({ "reason": "unused" })),
                ));
                // Revoked only if still idle since before the period, and noticed as seen.
                match store
                    .revoke_idle_token(&policy.id, &token.id, now - period, at, &trail)
                    .await
                {
                    Ok(revoked) => {
                        credentials.invalidate(&Invalidation::of_token(&revoked));
                        tracing::info!(token_id = %token.id, "unused token revoked by workspace policy");
                    }
                    // Revoked meanwhile by someone else: nothing to do.
                    Err(datastack_store::Error::NotFound) => {}
                    Err(e) => return Err(e),
                }
            }
            Some(_) => {}
        }
    }
    Ok(())
}
