//! The access review: every credential of the workspace with its owner, scopes, age and
//! last use, flagged `stale`, `rotation_due`, `never_expires` or `over_broad` (granted
//! scopes the audit log shows unused, with the narrower set that covers what was used), and
//! bulk actions to revoke or narrow what the review found.

use std::collections::HashMap;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Duration, Utc};
use datastack_core::authz::Role;
use datastack_core::credential::CredentialKind;
use datastack_core::id::TokenId;
use datastack_core::model::Token;
use datastack_core::scope::{Scope, ScopeSet};
use datastack_store::{Invalidation, PageRequest, TokenFilter};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::audit::AuditContext;
use crate::credentials::Identity;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::pipeline::authorize::{Authorized, ManageTokens, ReadAudit};
use crate::pipeline::extract::{Json, Query};
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(review))
        .routes(routes!(bulk_revoke))
        .routes(routes!(bulk_narrow))
}

/// The thresholds of a review (all optional).
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ReviewParams {
    /// Unused for this many days → `stale` (default 30).
    pub stale_days: Option<i64>,
    /// Older than this many days → `rotation_due` (default 90).
    pub rotation_days: Option<i64>,
    /// The audit window whose use decides `over_broad`, in days (default 30).
    pub window_days: Option<i64>,
    /// Only credentials with this flag.
    pub flag: Option<String>,
    /// Page size, 1–200 (default 50).
    pub limit: Option<i64>,
    /// The `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

/// The owner of a reviewed credential.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReviewOwner {
    /// `usr_…` or `sp_…`.
    pub id: String,
    /// Display name.
    pub name: String,
    /// A user's email.
    pub email: Option<String>,
    /// `user` or `service_principal`.
    pub kind: String,
}

/// One credential in the review.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReviewItem {
    /// The credential's id.
    pub credential_id: String,
    /// `personal_access_token`, `api_key` or `oauth_client`.
    pub kind: &'static str,
    /// Its label.
    pub label: String,
    /// Who it acts for.
    pub owner: Option<ReviewOwner>,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// Created.
    #[serde(serialize_with = "crate::api::time::rfc3339")]
    pub created_at: DateTime<Utc>,
    /// Expires; `null`: never.
    #[serde(serialize_with = "crate::api::time::rfc3339_opt")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Last use.
    #[serde(serialize_with = "crate::api::time::rfc3339_opt")]
    pub last_used_at: Option<DateTime<Utc>>,
    /// Age in days.
    pub age_days: i64,
    /// `stale`, `rotation_due`, `never_expires`, `over_broad`.
    pub flags: Vec<&'static str>,
    /// Scopes it acted with in the window, with the number of allowed calls.
    pub used_scopes: HashMap<String, i64>,
    /// For `over_broad`: the narrower set that covers what was used.
    pub suggested_scopes: Option<Vec<String>>,
}

/// One page of the review.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReviewPage {
    /// The credentials.
    pub items: Vec<ReviewItem>,
    /// Pass as `cursor` for the next page; `null` on the last.
    pub next_cursor: Option<String>,
    /// The thresholds used.
    pub stale_days: i64,
    /// The thresholds used.
    pub rotation_days: i64,
    /// The thresholds used.
    pub window_days: i64,
}

fn days_param(name: &str, value: Option<i64>, default: i64) -> ApiResult<i64> {
    match value {
        None => Ok(default),
        Some(d) if (1..=3650).contains(&d) => Ok(d),
        Some(_) => Err(ApiError::InvalidRequest(format!(
            "{name}: must be between 1 and 3650"
        ))),
    }
}

fn admin_only(identity: &Identity) -> ApiResult<()> {
    if identity.principal.role != Role::Admin {
        return Err(ApiError::Forbidden(
            "the access review is for workspace admins".into(),
        ));
    }
    Ok(())
}

/// Lists the workspace's credentials with their review flags.
#[utoipa::path(get, operation_id = "getAccessReview", path = "/api/v1/access-review", tag = "access-review",
    security(("bearer" = ["read:audit"])),
    params(("x-datastack-scope" = String, Header, description = "read:audit"), ReviewParams),
    responses((status = 200, body = ReviewPage), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn review(
    State(state): State<AppState>,
    caller: Authorized<ReadAudit>,
    Query(params): Query<ReviewParams>,
) -> ApiResult<Json<ReviewPage>> {
    admin_only(&caller.identity)?;
    let stale_days = days_param("staleDays", params.stale_days, 30)?;
    let rotation_days = days_param("rotationDays", params.rotation_days, 90)?;
    let window_days = days_param("windowDays", params.window_days, 30)?;
    let flag = match params.flag.as_deref() {
        None => None,
        Some(f @ ("stale" | "rotation_due" | "never_expires" | "over_broad")) => Some(f.to_owned()),
        Some(_) => {
            return Err(ApiError::InvalidRequest(
                "flag: must be stale, rotation_due, never_expires or over_broad".into(),
            ));
        }
    };
    let page = super::PageParams {
        limit: params.limit,
        cursor: params.cursor,
    }
    .to_request()?;
    let ws = &caller.identity.workspace.id;
    let reviewer = Reviewer::load(&state, ws, window_days).await?;
    let now = Utc::now();
    // With a flag filter, keep reading pages until this one is full or the tokens end.
    let mut items = Vec::new();
    let mut request = page.clone();
    let next_cursor = loop {
        let tokens = state
            .store
            .list_tokens(ws, &TokenFilter::Workspace, None, &request)
            .await?;
        // OAuth clients join the same id-ordered stream (`key_…` < `ocl_…` < `tok_…`), so
        // one cursor pages through both.
        let clients = state.store.list_oauth_clients(ws, &request).await?;
        let usage = reviewer.usage(&state, ws, &tokens.items).await?;
        let ids: Vec<String> = tokens.items.iter().map(|t| t.id.to_string()).collect();
        let keys = state.store.api_key_policies(&ids).await?;
        let mut merged: Vec<ReviewItem> = Vec::new();
        for token in tokens.items {
            let id = token.id.to_string();
            let rotated_at = keys.get(&id).map(|k| &k.policy);
            merged.push(reviewer.item(
                token,
                rotated_at,
                usage.get(&id),
                now,
                stale_days,
                rotation_days,
            ));
        }
        merged.extend(
            clients
                .items
                .into_iter()
                .map(|c| reviewer.client_item(c, now, stale_days, rotation_days)),
        );
        merged.sort_by(|a, b| a.credential_id.cmp(&b.credential_id));
        // Each list held at most a page after the cursor: the merged page ends where the
        // first of them that was cut short ends, so nothing is skipped.
        let cut = [
            tokens.next_cursor.as_deref(),
            clients.next_cursor.as_deref(),
        ]
        .into_iter()
        .flatten()
        .min()
        .map(str::to_owned);
        if let Some(cut) = &cut {
            merged.retain(|i| i.credential_id.as_str() <= cut.as_str());
        }
        let more = cut.is_some() || merged.len() > request.limit as usize;
        merged.truncate(request.limit as usize);
        let next = if more {
            merged.last().map(|i| i.credential_id.clone())
        } else {
            None
        };
        for item in merged {
            if flag.as_deref().is_none_or(|f| item.flags.contains(&f)) {
                items.push(item);
            }
        }
        match next {
            Some(c) if flag.is_some() && items.len() < page.limit as usize => {
                request = PageRequest {
                    after: Some(c),
                    limit: page.limit,
                };
            }
            other => break other,
        }
    };
    Ok(Json(ReviewPage {
        items,
        next_cursor,
        stale_days,
        rotation_days,
        window_days,
    }))
}

/// What a review needs besides the tokens: owners and the audit window.
struct Reviewer {
    owners: HashMap<String, ReviewOwner>,
    since: DateTime<Utc>,
}

type Usage = HashMap<String, HashMap<String, i64>>;

impl Reviewer {
    async fn load(
        state: &AppState,
        ws: &datastack_core::id::WorkspaceId,
        window_days: i64,
    ) -> ApiResult<Self> {
        let owners = state
            .store
            .owner_summaries(ws)
            .await?
            .into_iter()
            .map(|o| {
                (
                    o.id.clone(),
                    ReviewOwner {
                        id: o.id,
                        name: o.name,
                        email: o.email,
                        kind: o.kind,
                    },
                )
            })
            .collect();
        Ok(Self {
            owners,
            since: Utc::now() - Duration::days(window_days),
        })
    }

    async fn usage(
        &self,
        state: &AppState,
        ws: &datastack_core::id::WorkspaceId,
        tokens: &[Token],
    ) -> ApiResult<Usage> {
        let ids: Vec<String> = tokens.iter().map(|t| t.id.to_string()).collect();
        let mut usage: Usage = HashMap::new();
        for u in state.store.scope_usage(ws, &ids, self.since).await? {
            usage
                .entry(u.credential_id)
                .or_default()
                .insert(u.scope, u.calls);
        }
        Ok(usage)
    }

    fn item(
        &self,
        token: Token,
        key: Option<&datastack_core::apikey::ApiKeyPolicy>,
        used: Option<&HashMap<String, i64>>,
        now: DateTime<Utc>,
        stale_days: i64,
        rotation_days: i64,
    ) -> ReviewItem {
        let idle_since = token.last_used_at.unwrap_or(token.created_at);
        let mut flags = Vec::new();
        if now - idle_since >= Duration::days(stale_days) {
            flags.push("stale");
        }
        // A key's secret is as old as its last rotation, and its own policy, when it has
        // one, decides when that is too old.
        let secret_issued = key.map_or(token.created_at, |k| k.rotated_at);
        let rotation_due = match key.and_then(datastack_core::apikey::ApiKeyPolicy::rotation_due_at)
        {
            Some(due) => due <= now,
            None => now - secret_issued >= Duration::days(rotation_days),
        };
        if rotation_due {
            flags.push("rotation_due");
        }
        if token.expires_at.is_none() {
            flags.push("never_expires");
        }
        let used = used.cloned().unwrap_or_default();
        let suggested = suggestion(&token.scopes, &used);
        if suggested.is_some() {
            flags.push("over_broad");
        }
        ReviewItem {
            credential_id: token.id.to_string(),
            kind: match token.kind {
                CredentialKind::PersonalAccessToken => "personal_access_token",
                CredentialKind::ApiKey => "api_key",
                CredentialKind::OAuthAccessToken => "oauth_access_token",
            },
            label: token.label,
            owner: self.owners.get(token.owner_id.as_str()).cloned(),
            scopes: token.scopes.to_strings(),
            created_at: token.created_at,
            expires_at: token.expires_at,
            last_used_at: token.last_used_at,
            age_days: (now - token.created_at).num_days(),
            flags,
            used_scopes: used,
            suggested_scopes: suggested.map(|s| s.to_strings()),
        }
    }
}

impl Reviewer {
    /// An OAuth client as a review item: `stale` when it got no token for `stale_days`,
    /// `rotation_due` when its secret is older than `rotation_days`. (What its tokens used
    /// is not attributed to it yet, so it is never `over_broad`.)
    fn client_item(
        &self,
        client: datastack_core::oauth::OAuthClient,
        now: DateTime<Utc>,
        stale_days: i64,
        rotation_days: i64,
    ) -> ReviewItem {
        let mut flags = Vec::new();
        let idle_since = client.last_used_at.unwrap_or(client.created_at);
        if now - idle_since >= Duration::days(stale_days) {
            flags.push("stale");
        }
        if client
            .secret_rotated_at
            .is_some_and(|at| now - at >= Duration::days(rotation_days))
        {
            flags.push("rotation_due");
        }
        ReviewItem {
            credential_id: client.id.to_string(),
            kind: "oauth_client",
            label: client.name,
            owner: client
                .owner_id
                .as_ref()
                .and_then(|o| self.owners.get(o.as_str()).cloned()),
            scopes: client.scopes.to_strings(),
            created_at: client.created_at,
            expires_at: None,
            last_used_at: client.last_used_at,
            age_days: (now - client.created_at).num_days(),
            flags,
            used_scopes: HashMap::new(),
            suggested_scopes: None,
        }
    }
}

/// The narrower grant for a credential that used only part of `granted`: the smallest set
/// covering the scopes it acted with, when that differs from what it holds. Nothing is
/// suggested for a credential unused in the window (that is `stale`).
fn suggestion(granted: &ScopeSet, used: &HashMap<String, i64>) -> Option<ScopeSet> {
    let used: Vec<Scope> = used
        .keys()
        .filter_map(|s| s.parse::<Scope>().ok())
        .filter(|s| granted.covers(*s))
        .collect();
    let narrower = ScopeSet::covering(&used)?;
    (narrower != *granted).then_some(narrower)
}

/// Credentials a bulk action applies to.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BulkRequest {
    /// 1–100 credential ids (`tok_…`).
    pub credential_ids: Vec<String>,
    /// For `narrow`: the audit window in days (default 30).
    pub window_days: Option<i64>,
}

/// What a bulk action did, per credential.
#[derive(Debug, Default, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BulkResponse {
    /// Revoked, or narrowed (with the scopes now granted).
    pub changed: Vec<BulkChange>,
    /// Left as they were (nothing narrower to grant: unused in the window or already
    /// minimal).
    pub unchanged: Vec<String>,
    /// Not found in the workspace (or already revoked).
    pub not_found: Vec<String>,
}

/// One changed credential.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BulkChange {
    /// The credential.
    pub credential_id: String,
    /// For `narrow`, its scopes now.
    pub scopes: Option<Vec<String>>,
}

fn bulk_ids(body: &BulkRequest) -> ApiResult<Vec<TokenId>> {
    if body.credential_ids.is_empty() || body.credential_ids.len() > 100 {
        return Err(ApiError::InvalidRequest(
            "credentialIds: must list 1 to 100 credential ids".into(),
        ));
    }
    let mut ids = body
        .credential_ids
        .iter()
        .enumerate()
        .map(|(i, id)| {
            TokenId::parse(id).map_err(|_| {
                ApiError::InvalidRequest(format!(
                    "credentialIds[{i}]: must be a token (tok_…) or API key (key_…) id"
                ))
            })
        })
        .collect::<ApiResult<Vec<_>>>()?;
    ids.sort();
    ids.dedup();
    Ok(ids)
}

/// Revokes a list of credentials. Each revocation is its own change, with its audit entry
/// and `token.revoked` event; the response says what happened to each.
#[utoipa::path(post, operation_id = "bulkRevokeCredentials", path = "/api/v1/access-review/revoke", tag = "access-review",
    security(("bearer" = ["manage:tokens"])),
    params(("x-datastack-scope" = String, Header, description = "manage:tokens")),
    request_body = BulkRequest,
    responses((status = 200, body = BulkResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn bulk_revoke(
    State(state): State<AppState>,
    caller: Authorized<ManageTokens>,
    audit: AuditContext,
    Json(body): Json<BulkRequest>,
) -> ApiResult<(StatusCode, Json<BulkResponse>)> {
    admin_only(&caller.identity)?;
    let ids = bulk_ids(&body)?;
    let me = &caller.identity.principal;
    let mut out = BulkResponse::default();
    for id in ids {
        // A key is recorded as a key, a token as a token.
        let (action, resource, event, id_field) = if id.is_api_key() {
            ("api_keys.revoke", "api-keys", "api_key.revoked", "keyId")
        } else {
            ("tokens.revoke", "tokens", "token.revoked", "tokenId")
        };
        let trail = audit
            .change_of(
                action,
                resource,
                id.as_str(),
                serde_json::json!({ "via": "access_review" }),
            )
            .with_event(audit.event(
                &me.workspace_id,
                event,
                serde_json::json!({ id_field: id, "revokedBy": me.id, "reason": "access_review" }),
            ));
        match state
            .store
            .revoke_token(&me.workspace_id, &id, None, &trail)
            .await
        {
            Ok(revoked) => {
                crate::edge::apply_invalidation(&state, &Invalidation::of_token(&revoked)).await;
                out.changed.push(BulkChange {
                    credential_id: id.to_string(),
                    scopes: None,
                });
            }
            Err(datastack_store::Error::NotFound) => out.not_found.push(id.to_string()),
            Err(e) => return Err(e.into()),
        }
    }
    audit.set_detail(
        serde_json::json!({ "revoked": out.changed.len(), "notFound": out.not_found.len() }),
    );
    Ok((StatusCode::OK, Json(out)))
}

/// Narrows each listed credential to the scopes the review suggests (the smallest set
/// covering what the audit log shows it used in the window). Credentials with nothing
/// narrower to grant are left unchanged.
#[utoipa::path(post, operation_id = "bulkNarrowCredentials", path = "/api/v1/access-review/narrow", tag = "access-review",
    security(("bearer" = ["manage:tokens"])),
    params(("x-datastack-scope" = String, Header, description = "manage:tokens")),
    request_body = BulkRequest,
    responses((status = 200, body = BulkResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn bulk_narrow(
    State(state): State<AppState>,
    caller: Authorized<ManageTokens>,
    audit: AuditContext,
    Json(body): Json<BulkRequest>,
) -> ApiResult<(StatusCode, Json<BulkResponse>)> {
    admin_only(&caller.identity)?;
    let ids = bulk_ids(&body)?;
    let window_days = days_param("windowDays", body.window_days, 30)?;
    // Narrowing trusts the audit log to show every use; a node that does not record
    // successful reads would narrow away scopes in use.
    if !state.config.audit_successful_reads {
        return Err(ApiError::Conflict(
            "narrowing needs every use in the audit log, and this server does not record successful reads (audit_successful_reads = false)".into(),
        ));
    }
    let ws = caller.identity.workspace.id.clone();
    let reviewer = Reviewer::load(&state, &ws, window_days).await?;
    // The current tokens, to compute each suggestion from what is granted now.
    let mut tokens = Vec::new();
    for id in &ids {
        match state.store.find_token(&ws, id).await? {
            Some(t) if t.revoked_at.is_none() => tokens.push(t),
            _ => {}
        }
    }
    let usage = reviewer.usage(&state, &ws, &tokens).await?;
    let mut out = BulkResponse::default();
    let found: Vec<TokenId> = tokens.iter().map(|t| t.id.clone()).collect();
    out.not_found = ids
        .iter()
        .filter(|id| !found.contains(id))
        .map(ToString::to_string)
        .collect();
    for token in tokens {
        let used = usage.get(token.id.as_str()).cloned().unwrap_or_default();
        let Some(narrower) = suggestion(&token.scopes, &used) else {
            out.unchanged.push(token.id.to_string());
            continue;
        };
        let trail = audit.change_of(
            "tokens.narrow",
            "tokens",
            token.id.as_str(),
            serde_json::json!({ "via": "access_review", "from": token.scopes, "to": narrower }),
        );
        match state
            .store
            .narrow_token_scopes(&ws, &token.id, &token.scopes, &narrower, &trail)
            .await
        {
            Ok(changed) => {
                crate::edge::apply_invalidation(&state, &Invalidation::of_token(&changed)).await;
                out.changed.push(BulkChange {
                    credential_id: token.id.to_string(),
                    scopes: Some(narrower.to_strings()),
                });
            }
            Err(datastack_store::Error::NotFound) => out.not_found.push(token.id.to_string()),
            Err(e) => return Err(e.into()),
        }
    }
    audit.set_detail(
        serde_json::json!({ "narrowed": out.changed.len(), "unchanged": out.unchanged.len() }),
    );
    Ok((StatusCode::OK, Json(out)))
}
