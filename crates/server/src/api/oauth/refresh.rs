//! The `refresh_token` grant (RFC 6749 §6) with rotation and reuse detection.
//!
//! Every use of a refresh token gives a new one (its successor) and the used one stops
//! working. Presenting a used refresh token again means two parties hold it — the client
//! and a thief — so the whole family (every refresh token descending from the same grant,
//! and every access token issued from it) is revoked at once and
//! `oauth.refresh_reuse_detected` is recorded. One exception keeps honest clients working:
//! within the grace period (`oauth_refresh_grace_seconds`) after the use, the same client
//! presenting the same token (a retry after a lost answer, or two requests racing) gets
//! the same successor again (derived from the presented secret, never stored) with a new
//! access token.

use chrono::{Duration, Utc};
use datastack_core::oauth::{self, OAuthClient};
use datastack_store::{RefreshToken, Rotation};
use secrecy::ExposeSecret;

use crate::audit::AuditContext;
use crate::state::AppState;

use super::token::{Minted, TokenResponse, mint};
use super::*;

fn invalid_grant() -> OAuthError {
    OAuthError::new(
        "invalid_grant",
        "the refresh token is invalid, expired, revoked or was issued to another client",
    )
}

/// Answers a `refresh_token` grant for an authenticated client.
pub(super) async fn refresh(
    state: &AppState,
    audit: &AuditContext,
    form: &Form,
    entry: &ClientEntry,
) -> Result<TokenResponse, OAuthError> {
    let client = &entry.client;
    let presented = form
        .get("refresh_token")
        .ok_or_else(|| OAuthError::new("invalid_request", "refresh_token is missing"))?;
    let digest = oauth::parse_refresh_token(presented).ok_or_else(invalid_grant)?;
    // Twice at most: a request that loses the race to use the token reads it again and is
    // then inside the grace period.
    for _ in 0..2 {
        let Some(parent) = state.store.get_refresh_token(&digest.to_hex()).await? else {
            return Err(invalid_grant());
        };
        let now = Utc::now();
        if parent.client_id != client.id || parent.revoked_at.is_some() || parent.expires_at <= now
        {
            return Err(invalid_grant());
        }
        let workspace = state.store.get_workspace(&parent.workspace_id).await?;
        if workspace.status != datastack_core::model::Status::Active {
            return Err(invalid_grant());
        }
        let scopes = super::token::asked_scopes(form, &parent.scopes)?;
        let expires_at = now + Duration::seconds(client.access_token_ttl_seconds);
        let (jwt, access) = mint(
            state,
            client,
            Minted {
                subject: &parent.subject_id,
                workspace: &parent.workspace_id,
                scopes,
                audience: &parent.audience,
                now,
                expires_at,
                acting_client: false,
            },
        )?;
        let detail = |grace: bool| {
            serde_json::json!({
                "grantType": "refresh_token",
                "clientId": client.id,
                "tokenId": access.id,
                "subject": parent.subject_id,
                "scopes": access.scopes,
                "audience": parent.audience,
                "expiresAt": expires_at,
                "refreshTokenId": parent.id,
                "familyId": parent.family_id,
                "grace": grace,
            })
        };
        let scope_text = access.scopes.to_strings().join(" ");
        let answer = |refresh_token: String| TokenResponse {
            access_token: jwt.clone(),
            token_type: "Bearer",
            expires_in: (expires_at - now).num_seconds().max(0),
            scope: scope_text.clone(),
            refresh_token: Some(refresh_token),
            issued_token_type: None,
        };
        match (parent.used_at, &parent.successor_id) {
            (None, _) => {
                let successor_id = format!("ort_{}", uuid::Uuid::now_v7().simple());
                let secret = oauth::refresh_successor(presented, &successor_id);
                let successor = RefreshToken {
                    id: successor_id,
                    family_id: parent.family_id.clone(),
                    client_id: client.id.clone(),
                    subject_id: parent.subject_id.clone(),
                    workspace_id: parent.workspace_id.clone(),
                    digest_hex: secret.digest.to_hex(),
                    scopes: parent.scopes.clone(),
                    audience: parent.audience.clone(),
                    created_at: now,
                    expires_at: now + Duration::seconds(client.refresh_token_ttl_seconds),
                    used_at: None,
                    successor_id: None,
                    revoked_at: None,
                };
                audit.set_detail(detail(false));
                let trail = audit.change_in(StatusCode::OK, &client.workspace_id);
                match state
                    .store
                    .rotate_refresh_token(&parent.id, &successor, &access, &trail)
                    .await?
                {
                    Rotation::Rotated => {
                        audit.mark_recorded();
                        return Ok(answer(secret.secret.expose_secret().to_owned()));
                    }
                    Rotation::SubjectGone => return Err(invalid_grant()),
                    Rotation::Raced => continue,
                }
            }
            (Some(used_at), Some(successor_id))
                if now - used_at
                    <= Duration::from_std(state.config.oauth_refresh_grace).unwrap_or_default() =>
            {
                // Within the grace period: the successor already issued, again.
                let secret = oauth::refresh_successor(presented, successor_id);
                audit.set_detail(detail(true));
                let trail = audit.change_in(StatusCode::OK, &client.workspace_id);
                if !state
                    .store
                    .insert_family_access_token(&parent.family_id, &client.id, &access, &trail)
                    .await?
                {
                    return Err(invalid_grant());
                }
                audit.mark_recorded();
                return Ok(answer(secret.secret.expose_secret().to_owned()));
            }
            (Some(_), _) => {
                return Err(reuse_detected(state, audit, client, &parent).await);
            }
        }
    }
    Err(invalid_grant())
}

/// A used refresh token presented after the grace period: the family is revoked and the
/// reuse recorded (audit entry and security event).
async fn reuse_detected(
    state: &AppState,
    audit: &AuditContext,
    client: &OAuthClient,
    parent: &RefreshToken,
) -> OAuthError {
    audit.set_action("oauth.refresh_reuse_detected", "oauth-clients");
    let detail = serde_json::json!({
        "clientId": client.id,
        "refreshTokenId": parent.id,
        "familyId": parent.family_id,
        "subject": parent.subject_id,
        "usedAt": parent.used_at,
    });
    audit.set_detail(detail.clone());
    let trail = audit
        .change_in(StatusCode::BAD_REQUEST, &parent.workspace_id)
        .with_event(audit.event(&parent.workspace_id, "oauth.refresh_reuse_detected", detail));
    match state
        .store
        .revoke_refresh_family(&parent.family_id, &trail)
        .await
    {
        Ok(digests) => {
            audit.mark_recorded();
            state.metrics.security_event("oauth.refresh_reuse_detected");
            for d in digests {
                crate::edge::apply_invalidation(state, &datastack_store::Invalidation::Token(d))
                    .await;
            }
            tracing::warn!(client_id = %client.id, family_id = %parent.family_id,
                "a used refresh token was presented again; its family is revoked");
            invalid_grant()
        }
        Err(e) => e.into(),
    }
}

/// Revokes the family of the refresh token with `digest_hex` if `client` was issued it
/// (RFC 7009 §2.1: revoking a refresh token revokes the access tokens of its grant too).
/// Returns whether a family was revoked now.
pub(super) async fn revoke_family(
    state: &AppState,
    audit: &AuditContext,
    client: &OAuthClient,
    digest_hex: &str,
) -> Result<bool, OAuthError> {
    let Some(token) = state.store.get_refresh_token(digest_hex).await? else {
        return Ok(false);
    };
    if token.client_id != client.id || token.revoked_at.is_some() {
        return Ok(false);
    }
    audit.set_detail(serde_json::json!({
        "clientId": client.id,
        "refreshTokenId": token.id,
        "familyId": token.family_id,
    }));
    let trail = audit.change_in(StatusCode::OK, &token.workspace_id);
    let digests = state
        .store
        .revoke_refresh_family(&token.family_id, &trail)
        .await?;
    audit.mark_recorded();
    for d in digests {
        crate::edge::apply_invalidation(state, &datastack_store::Invalidation::Token(d)).await;
    }
    Ok(true)
}
