//! Scoped API keys: create (the secret is shown once), list, get, update, revoke, rotate
//! with an overlap, usage, and `verify` for services that check keys themselves.
//!
//! A key is a credential like a personal access token (same table, same verification
//! path, cache and revocation fan-out) with its own rate limit, spend limit, address
//! ranges, metadata and rotation policy.

use crate::api::issuance;
use crate::pipeline::extract::{ApiKeyPath, PathId};
use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Duration, Utc};
use datastack_core::apikey::{self, ApiKeyPolicy, SpendLimit, SpendPeriod};
use datastack_core::authz::{self, Role};
use datastack_core::credential::{self, CredentialKind};
use datastack_core::id::{PrincipalId, TokenId};
use datastack_core::model::Principal;
use datastack_core::scope::{Scope, ScopeSet};
use datastack_core::validate;
use datastack_store::{ApiKeyPatch, ApiKeyStatus, Invalidation, StoredApiKey};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{PageParams, page_of};
use crate::audit::AuditContext;
use crate::credentials::Rejection;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::pipeline::authorize::{Authorized, ManageApiKeys, ReadApiKeys};
use crate::pipeline::extract::{Json, Query};
use crate::state::AppState;

pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_keys, create_key))
        .routes(routes!(verify_key))
        .routes(routes!(get_key, update_key, revoke_key))
        .routes(routes!(rotate_key))
        .routes(routes!(key_usage))
}

/// Reads a field that may be absent (`None`), `null` (`Some(None)`) or a value.
fn nullable<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

/// A spend limit as requested.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SpendLimitBody {
    /// Units per period, 1–10^15.
    pub units: i64,
    /// `day` (UTC), `month` (UTC calendar month) or `total` (never resets).
    pub period: String,
}

impl SpendLimitBody {
    fn parse(&self) -> ApiResult<SpendLimit> {
        let units = u64::try_from(self.units).map_err(|_| {
            ApiError::InvalidRequest("spendLimit.units: must be between 1 and 10^15".into())
        })?;
        Ok(SpendLimit {
            units,
            period: SpendPeriod::parse(&self.period)?,
        }
        .validate()?)
    }

    fn of(limit: SpendLimit) -> Self {
        Self {
            units: limit.units as i64,
            period: limit.period.as_str().to_owned(),
        }
    }
}

/// A rotation policy.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RotationPolicyBody {
    /// Rotate every this many days (1–3650): past it the key is `rotation_due` and the
    /// event `api_key.rotation_due` is sent.
    pub interval_days: i64,
}

/// A key to create.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateApiKeyRequest {
    /// What the key is for, 1–200 characters.
    pub name: String,
    /// Scopes to grant, each covered by the calling credential's scopes. The key acts with
    /// these ∩ its owner's role.
    pub scopes: Vec<String>,
    /// Lifetime in days (1–36500); default: the workspace's maximum token lifetime, or
    /// never.
    pub expires_in_days: Option<i64>,
    /// Requests per minute (1–10 000 000); default: the server's limit per credential.
    pub rate_limit: Option<i64>,
    /// Units the key may spend per period; default: unlimited (usage is still metered).
    pub spend_limit: Option<SpendLimitBody>,
    /// Client ranges the key may be used from (IPv4/IPv6 addresses or CIDRs, at most
    /// 100); default: anywhere the workspace's IP access lists admit.
    pub allowed_ip_ranges: Option<Vec<String>>,
    /// A JSON object of at most 4 KiB, returned with the key and by `verify`.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// Rotate every `intervalDays`.
    pub rotation_policy: Option<RotationPolicyBody>,
    /// The key's owner: the caller (default), or a service principal of the workspace
    /// (admins only).
    pub owner_id: Option<String>,
}

/// Changes to a key: absent fields stay, `null` clears a limit, ranges or policy.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateApiKeyRequest {
    /// A new name.
    pub name: Option<String>,
    /// A new rate limit; `null`: the server's default.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<i64>)]
    pub rate_limit: Option<Option<i64>>,
    /// A new spend limit; `null`: none.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<SpendLimitBody>)]
    pub spend_limit: Option<Option<SpendLimitBody>>,
    /// New ranges; `null`: anywhere.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<Vec<String>>)]
    pub allowed_ip_ranges: Option<Option<Vec<String>>>,
    /// New metadata (replaces the old).
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Value>,
    /// A new rotation policy; `null`: none.
    #[serde(default, deserialize_with = "nullable")]
    #[schema(value_type = Option<RotationPolicyBody>)]
    pub rotation_policy: Option<Option<RotationPolicyBody>>,
}

/// One secret of a key.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretInfo {
    /// Its last four characters.
    pub last_four: String,
    /// The current secret (`true`) or the previous one during a rotation's overlap.
    pub current: bool,
    /// When it was issued (the current secret).
    #[serde(serialize_with = "crate::api::time::rfc3339_opt")]
    pub created_at: Option<DateTime<Utc>>,
    /// When it stops working; `null`: with the key.
    #[serde(serialize_with = "crate::api::time::rfc3339_opt")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// A key as listed: never its secret.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyResponse {
    /// Its id, `key_…`.
    pub id: String,
    /// Its name.
    pub name: String,
    /// The secret's type prefix, `dkey`.
    pub prefix: &'static str,
    /// The current secret's last four characters.
    pub last_four: String,
    /// `active`, `rotation_due`, `expired` or `revoked`.
    pub status: &'static str,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// The principal it acts for.
    pub owner_id: String,
    /// Who created it.
    pub created_by: Option<String>,
    /// Creation time.
    #[serde(serialize_with = "crate::api::time::rfc3339")]
    pub created_at: DateTime<Utc>,
    /// Expiry; `null`: never.
    #[serde(serialize_with = "crate::api::time::rfc3339_opt")]
    pub expires_at: Option<DateTime<Utc>>,
    /// Revocation time.
    #[serde(serialize_with = "crate::api::time::rfc3339_opt")]
    pub revoked_at: Option<DateTime<Utc>>,
    /// Last use (written every few seconds).
    #[serde(serialize_with = "crate::api::time::rfc3339_opt")]
    pub last_used_at: Option<DateTime<Utc>>,
    /// Client address of the last use.
    pub last_used_ip: Option<String>,
    /// Requests per minute; `null`: the server's limit per credential.
    pub rate_limit: Option<u32>,
    /// The spend limit.
    pub spend_limit: Option<SpendLimitBody>,
    /// The client ranges; `null`: anywhere.
    pub allowed_ip_ranges: Option<Vec<String>>,
    /// The owner's metadata.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The rotation policy.
    pub rotation_policy: Option<RotationPolicyBody>,
    /// When the current secret was issued.
    #[serde(serialize_with = "crate::api::time::rfc3339")]
    pub rotated_at: DateTime<Utc>,
    /// When the policy asks for the next rotation.
    #[serde(serialize_with = "crate::api::time::rfc3339_opt")]
    pub rotation_due_at: Option<DateTime<Utc>>,
    /// The current secret and, during an overlap, the previous one, with their expiry.
    pub secrets: Vec<SecretInfo>,
}

impl ApiKeyResponse {
    fn of(key: StoredApiKey) -> Self {
        let now = Utc::now();
        let status = ApiKeyStatus::of(&key, now).as_str();
        let StoredApiKey {
            token,
            policy,
            created_by,
        } = key;
        let mut secrets = vec![SecretInfo {
            last_four: token.last_four.clone(),
            current: true,
            created_at: Some(policy.rotated_at),
            expires_at: token.expires_at,
        }];
        if let Some(prev) = &policy.previous
            && prev.expires_at > now
            && token.revoked_at.is_none()
        {
            secrets.push(SecretInfo {
                last_four: prev.last_four.clone(),
                current: false,
                created_at: None,
                expires_at: Some(
                    token
                        .expires_at
                        .map_or(prev.expires_at, |e| e.min(prev.expires_at)),
                ),
            });
        }
        Self {
            id: token.id.to_string(),
            name: token.label,
            prefix: CredentialKind::ApiKey.prefix(),
            last_four: token.last_four,
            status,
            scopes: token.scopes.to_strings(),
            owner_id: token.owner_id.to_string(),
            created_by,
            created_at: token.created_at,
            expires_at: token.expires_at,
            revoked_at: token.revoked_at,
            last_used_at: token.last_used_at,
            last_used_ip: token.last_used_ip,
            rate_limit: policy.rate_limit,
            spend_limit: policy.spend_limit.map(SpendLimitBody::of),
            allowed_ip_ranges: policy
                .allowed_ip_ranges
                .as_ref()
                .map(|r| r.iter().map(ToString::to_string).collect()),
            rotation_due_at: policy.rotation_due_at(),
            metadata: policy.metadata,
            rotation_policy: policy.rotation_interval_days.map(|d| RotationPolicyBody {
                interval_days: i64::from(d),
            }),
            rotated_at: policy.rotated_at,
            secrets,
        }
    }
}

/// A created or rotated key, with its secret: the only time the secret is shown.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreatedApiKeyResponse {
    /// The secret (`dkey…`). Store it now; it cannot be shown again.
    pub key: String,
    /// The key's details.
    #[serde(flatten)]
    pub info: ApiKeyResponse,
}

page_of!(ApiKeyPage, ApiKeyResponse);

/// Which keys to list.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListApiKeysParams {
    /// A principal id. Default: every key of the workspace for admins, your own otherwise.
    pub owner_id: Option<String>,
    /// `active`, `rotation_due`, `expired` or `revoked`.
    pub status: Option<String>,
    /// Page size, 1–200 (default 50).
    pub limit: Option<i64>,
    /// The `nextCursor` of the previous page.
    pub cursor: Option<String>,
}

/// A rotation.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RotateApiKeyRequest {
    /// How long the previous secret keeps working, in seconds (0 to the server's maximum,
    /// 30 days by default). Default 86400.
    pub overlap_seconds: Option<i64>,
}

/// A key's usage in its current period.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageResponse {
    /// The key.
    pub key_id: String,
    /// `day`, `month` or `total` (keys without a spend limit are metered per month).
    pub period: &'static str,
    /// The period's start.
    #[serde(serialize_with = "crate::api::time::rfc3339")]
    pub period_start: DateTime<Utc>,
    /// The period's end, when the count resets; `null` for `total`.
    #[serde(serialize_with = "crate::api::time::rfc3339_opt")]
    pub period_end: Option<DateTime<Utc>>,
    /// Units used in the period.
    pub used: i64,
    /// The limit; `null`: none.
    pub limit: Option<u64>,
    /// Units left; `null`: no limit.
    pub remaining: Option<u64>,
}

/// A key to check.
#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VerifyApiKeyRequest {
    /// The key's secret (`dkey…`).
    pub key: String,
    /// A scope the caller needs the key to hold, e.g. `read:clusters`.
    pub scope: Option<String>,
    /// The client address the key was presented from; checked against the key's ranges
    /// and the workspace's IP access lists.
    pub ip: Option<String>,
    /// Spend units to charge for this use (default 0: only check the limit).
    pub cost: Option<i64>,
}

/// What is left of a key's limits.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Remaining {
    /// Requests left in the rate-limit window.
    pub rate_limit: Option<u32>,
    /// Spend units left in the period; `null`: no limit.
    pub spend: Option<u64>,
}

/// The verdict on a key.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct VerifyApiKeyResponse {
    /// Whether the key may be used.
    pub valid: bool,
    /// `VALID`, `NOT_FOUND`, `EXPIRED`, `REVOKED`, `INSUFFICIENT_SCOPE`, `IP_NOT_ALLOWED`,
    /// `RATE_LIMITED` or `SPEND_LIMIT_EXCEEDED`.
    pub code: &'static str,
    /// The key, when it exists in the caller's workspace.
    pub key_id: Option<String>,
    /// Who the key acts for.
    pub owner: Option<String>,
    /// The key's name.
    pub name: Option<String>,
    /// The key's scopes.
    pub scopes: Option<Vec<String>>,
    /// The key's metadata.
    #[schema(value_type = Option<Object>)]
    pub metadata: Option<serde_json::Map<String, serde_json::Value>>,
    /// What is left of its limits.
    pub remaining: Option<Remaining>,
    /// The key's expiry (the previous secret's during an overlap).
    #[serde(serialize_with = "crate::api::time::rfc3339_opt")]
    pub expires_at: Option<DateTime<Utc>>,
    /// For `SPEND_LIMIT_EXCEEDED`: when the period ends.
    #[serde(serialize_with = "crate::api::time::rfc3339_opt")]
    pub resets_at: Option<DateTime<Utc>>,
}

impl VerifyApiKeyResponse {
    fn invalid(code: &'static str) -> Self {
        Self {
            valid: false,
            code,
            key_id: None,
            owner: None,
            name: None,
            scopes: None,
            metadata: None,
            remaining: None,
            expires_at: None,
            resets_at: None,
        }
    }
}

fn not_found(e: datastack_store::Error) -> ApiError {
    match e {
        datastack_store::Error::NotFound => ApiError::not_found("API key"),
        other => other.into(),
    }
}

/// Non-admins see and change only their own keys.
fn owner_restriction(me: &Principal) -> Option<&PrincipalId> {
    (me.role != Role::Admin).then_some(&me.id)
}

async fn load_visible(state: &AppState, me: &Principal, id: &TokenId) -> ApiResult<StoredApiKey> {
    state
        .store
        .get_api_key(&me.workspace_id, id)
        .await?
        .filter(|k| owner_restriction(me).is_none_or(|o| *o == k.token.owner_id))
        .ok_or_else(|| ApiError::not_found("API key"))
}

fn parse_ranges(list: &[String]) -> ApiResult<Vec<ipnet::IpNet>> {
    Ok(apikey::ip_ranges(list)?)
}

/// Creates an API key for the caller (or, for admins, a service principal).
#[utoipa::path(post, operation_id = "createApiKey", path = "/api/v1/auth/api-keys", tag = "api-keys",
    security(("bearer" = ["manage:api-keys"])),
    params(("x-datastack-scope" = String, Header, description = "manage:api-keys")),
    request_body = CreateApiKeyRequest,
    responses((status = 201, body = CreatedApiKeyResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 413, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn create_key(
    State(state): State<AppState>,
    caller: Authorized<ManageApiKeys>,
    audit: AuditContext,
    Json(body): Json<CreateApiKeyRequest>,
) -> ApiResult<(StatusCode, Json<CreatedApiKeyResponse>)> {
    let me = caller.identity.principal.clone();
    let name = validate::text("name", &body.name, validate::MAX_LABEL_LEN)?;
    if body.scopes.is_empty() {
        return Err(ApiError::InvalidRequest(
            "scopes: name at least one scope (e.g. read:clusters)".into(),
        ));
    }
    let scopes = issuance::within_granted(
        &caller.identity.token.scopes,
        ScopeSet::parse(&body.scopes)?,
        "key",
    )?;
    let rate_limit = body.rate_limit.map(apikey::rate_limit).transpose()?;
    let spend_limit = body
        .spend_limit
        .as_ref()
        .map(SpendLimitBody::parse)
        .transpose()?;
    let allowed_ip_ranges = body
        .allowed_ip_ranges
        .as_deref()
        .map(parse_ranges)
        .transpose()?;
    let metadata = match body.metadata {
        None => serde_json::Map::new(),
        Some(m) => apikey::metadata(m)?,
    };
    let rotation_interval_days = body
        .rotation_policy
        .as_ref()
        .map(|p| apikey::rotation_interval(p.interval_days))
        .transpose()?;
    let lifetime = validate::token_lifetime(body.expires_in_days, None)?;
    let owner = issuance::resolve_owner(
        &state,
        &me,
        body.owner_id.as_deref(),
        issuance::Owners::ServicePrincipals,
    )
    .await?;
    let workspace = state.store.get_workspace(&owner.workspace_id).await?;
    let lifetime = issuance::bounded_lifetime(
        lifetime,
        workspace.settings.max_token_lifetime_days,
        "expiresInDays",
    )?;
    let now = Utc::now();
    let secret = credential::generate(CredentialKind::ApiKey);
    let token = issuance::new_record(
        CredentialKind::ApiKey,
        &owner,
        &name,
        scopes,
        lifetime.map(|l| now + l),
        &secret,
    );
    let policy = ApiKeyPolicy {
        rate_limit,
        spend_limit,
        allowed_ip_ranges,
        metadata,
        rotation_interval_days,
        rotated_at: now,
        rotation_due_at: rotation_interval_days.map(|d| now + Duration::days(i64::from(d))),
        previous: None,
    };
    audit.set_resource_id(token.id.as_str());
    let summary = serde_json::json!({
        "keyId": token.id,
        "ownerId": token.owner_id,
        "createdBy": me.id,
        "scopes": token.scopes,
        "expiresAt": token.expires_at,
        "rateLimit": policy.rate_limit,
        "spendLimit": policy.spend_limit,
        "allowedIpRanges": policy.allowed_ip_ranges.as_ref().map(|r| r.iter().map(ToString::to_string).collect::<Vec<_>>()),
        "rotationIntervalDays": policy.rotation_interval_days,
    });
    audit.set_detail(summary.clone());
    let trail = audit.change(StatusCode::CREATED).with_event(audit.event(
        &token.workspace_id,
        "api_key.created",
        summary,
    ));
    state
        .store
        .insert_api_key(&token, &policy, &caller.identity.token.id, &me.id, &trail)
        .await?;
    audit.mark_recorded();
    tracing::info!(key_id = %token.id, owner = %owner.id, "API key created");
    Ok((
        StatusCode::CREATED,
        Json(CreatedApiKeyResponse {
            key: secret.secret.expose_secret().to_owned(),
            info: ApiKeyResponse::of(StoredApiKey {
                token,
                policy,
                created_by: Some(me.id.to_string()),
            }),
        }),
    ))
}

/// Lists API keys: the workspace's (admins) or your own, by owner and status.
#[utoipa::path(get, operation_id = "listApiKeys", path = "/api/v1/auth/api-keys", tag = "api-keys",
    security(("bearer" = ["read:api-keys"])),
    params(("x-datastack-scope" = String, Header, description = "read:api-keys"), ListApiKeysParams),
    responses((status = 200, body = ApiKeyPage), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn list_keys(
    State(state): State<AppState>,
    caller: Authorized<ReadApiKeys>,
    Query(params): Query<ListApiKeysParams>,
) -> ApiResult<Json<ApiKeyPage>> {
    let me = &caller.identity.principal;
    let page = PageParams {
        limit: params.limit,
        cursor: params.cursor,
    }
    .to_request()?;
    let status = params
        .status
        .as_deref()
        .map(|s| {
            ApiKeyStatus::parse(s).ok_or_else(|| {
                ApiError::InvalidRequest(
                    "status: must be active, rotation_due, expired or revoked".into(),
                )
            })
        })
        .transpose()?;
    let owner = match (params.owner_id.as_deref(), owner_restriction(me)) {
        (None, restricted) => restricted.cloned(),
        (Some(o), Some(mine)) if o == mine.as_str() => Some(mine.clone()),
        (Some(_), Some(_)) => {
            return Err(ApiError::Forbidden(
                "only admins may list other principals' keys".into(),
            ));
        }
        (Some(o), None) => Some(
            PrincipalId::parse(o)
                .map_err(|_| ApiError::InvalidRequest("ownerId: must be a principal id".into()))?,
        ),
    };
    let result = state
        .store
        .list_api_keys(&me.workspace_id, owner.as_ref(), status, &page)
        .await?;
    Ok(Json(ApiKeyPage {
        items: result.items.into_iter().map(ApiKeyResponse::of).collect(),
        next_cursor: result.next_cursor,
    }))
}

/// One API key, with its secrets' expiry.
#[utoipa::path(get, operation_id = "getApiKey", path = "/api/v1/auth/api-keys/{id}", tag = "api-keys",
    security(("bearer" = ["read:api-keys"])),
    params(("x-datastack-scope" = String, Header, description = "read:api-keys"), ("id" = String, Path, description = "key_…")),
    responses((status = 200, body = ApiKeyResponse), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn get_key(
    State(state): State<AppState>,
    caller: Authorized<ReadApiKeys>,
    PathId(id): PathId<ApiKeyPath>,
) -> ApiResult<Json<ApiKeyResponse>> {
    let key = load_visible(&state, &caller.identity.principal, &id).await?;
    Ok(Json(ApiKeyResponse::of(key)))
}

/// Changes a key's name, limits, ranges, metadata or rotation policy; in force on every
/// node at once.
#[utoipa::path(patch, operation_id = "updateApiKey", path = "/api/v1/auth/api-keys/{id}", tag = "api-keys",
    security(("bearer" = ["manage:api-keys"])),
    params(("x-datastack-scope" = String, Header, description = "manage:api-keys"), ("id" = String, Path, description = "key_…")),
    request_body = UpdateApiKeyRequest,
    responses((status = 200, body = ApiKeyResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn update_key(
    State(state): State<AppState>,
    caller: Authorized<ManageApiKeys>,
    audit: AuditContext,
    PathId(id): PathId<ApiKeyPath>,
    Json(body): Json<UpdateApiKeyRequest>,
) -> ApiResult<Json<ApiKeyResponse>> {
    let me = &caller.identity.principal;
    // A key must not loosen its own limits: whoever holds it (or a leaked copy) could.
    if caller.identity.token.id == id {
        return Err(ApiError::Forbidden(
            "an API key cannot change its own settings; use another credential".into(),
        ));
    }
    let patch = ApiKeyPatch {
        name: body
            .name
            .as_deref()
            .map(|n| validate::text("name", n, validate::MAX_LABEL_LEN))
            .transpose()?,
        rate_limit: body
            .rate_limit
            .map(|r| r.map(apikey::rate_limit).transpose())
            .transpose()?,
        spend_limit: body
            .spend_limit
            .map(|l| l.as_ref().map(SpendLimitBody::parse).transpose())
            .transpose()?,
        allowed_ip_ranges: body
            .allowed_ip_ranges
            .map(|r| r.as_deref().map(parse_ranges).transpose())
            .transpose()?,
        metadata: body.metadata.map(apikey::metadata).transpose()?,
        rotation_interval_days: body
            .rotation_policy
            .map(|p| {
                p.map(|p| apikey::rotation_interval(p.interval_days))
                    .transpose()
            })
            .transpose()?,
    };
    audit.set_resource_id(id.as_str());
    // Only the fields the request changes, so a cleared limit (null) differs from one
    // left alone (absent).
    let mut detail = serde_json::json!({ "keyId": id, "changedBy": me.id });
    if let Some(fields) = detail.as_object_mut() {
        if let Some(name) = &patch.name {
            fields.insert("name".into(), name.clone().into());
        }
        if let Some(r) = patch.rate_limit {
            fields.insert("rateLimit".into(), serde_json::json!(r));
        }
        if let Some(l) = patch.spend_limit {
            fields.insert("spendLimit".into(), serde_json::json!(l));
        }
        if let Some(r) = &patch.allowed_ip_ranges {
            let ranges = r
                .as_ref()
                .map(|r| r.iter().map(ToString::to_string).collect::<Vec<_>>());
            fields.insert("allowedIpRanges".into(), serde_json::json!(ranges));
        }
        if patch.metadata.is_some() {
            fields.insert("metadataChanged".into(), true.into());
        }
        if let Some(d) = patch.rotation_interval_days {
            fields.insert("rotationIntervalDays".into(), serde_json::json!(d));
        }
    }
    audit.set_detail(detail.clone());
    let trail = audit.change(StatusCode::OK).with_event(audit.event(
        &me.workspace_id,
        "api_key.updated",
        detail,
    ));
    let key = state
        .store
        .update_api_key(&me.workspace_id, &id, owner_restriction(me), &patch, &trail)
        .await
        .map_err(not_found)?;
    audit.mark_recorded();
    crate::edge::apply_invalidation(&state, &Invalidation::Credential(id.to_string())).await;
    Ok(Json(ApiKeyResponse::of(key)))
}

/// Revokes a key (both secrets during an overlap): refused on every node from the next
/// request.
#[utoipa::path(delete, operation_id = "revokeApiKey", path = "/api/v1/auth/api-keys/{id}", tag = "api-keys",
    security(("bearer" = ["manage:api-keys"])),
    params(("x-datastack-scope" = String, Header, description = "manage:api-keys"), ("id" = String, Path, description = "key_…")),
    responses((status = 204), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn revoke_key(
    State(state): State<AppState>,
    caller: Authorized<ManageApiKeys>,
    audit: AuditContext,
    PathId(id): PathId<ApiKeyPath>,
) -> ApiResult<StatusCode> {
    let me = &caller.identity.principal;
    audit.set_resource_id(id.as_str());
    let trail = audit.change(StatusCode::NO_CONTENT).with_event(audit.event(
        &me.workspace_id,
        "api_key.revoked",
        serde_json::json!({ "keyId": id, "revokedBy": me.id, "reason": "api" }),
    ));
    let revoked = state
        .store
        .revoke_token(&me.workspace_id, &id, owner_restriction(me), &trail)
        .await
        .map_err(not_found)?;
    audit.mark_recorded();
    crate::edge::apply_invalidation(&state, &Invalidation::of_token(&revoked)).await;
    tracing::info!(key_id = %revoked.id, "API key revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// Gives a key a new secret; the previous one keeps working for `overlapSeconds`.
#[utoipa::path(post, operation_id = "rotateApiKey", path = "/api/v1/auth/api-keys/{id}/rotate", tag = "api-keys",
    security(("bearer" = ["manage:api-keys"])),
    params(("x-datastack-scope" = String, Header, description = "manage:api-keys"), ("id" = String, Path, description = "key_…")),
    request_body = RotateApiKeyRequest,
    responses((status = 200, body = CreatedApiKeyResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn rotate_key(
    State(state): State<AppState>,
    caller: Authorized<ManageApiKeys>,
    audit: AuditContext,
    PathId(id): PathId<ApiKeyPath>,
    Json(body): Json<RotateApiKeyRequest>,
) -> ApiResult<Json<CreatedApiKeyResponse>> {
    let me = &caller.identity.principal;
    let max = state.config.api_key_max_rotation_overlap.as_secs() as i64;
    let overlap = match body.overlap_seconds {
        None => state.config.api_key_rotation_overlap.as_secs() as i64,
        Some(s) if (0..=max).contains(&s) => s,
        Some(_) => {
            return Err(ApiError::InvalidRequest(format!(
                "overlapSeconds: must be between 0 and {max}"
            )));
        }
    };
    let previous_until = Utc::now() + Duration::seconds(overlap);
    let secret = credential::generate(CredentialKind::ApiKey);
    audit.set_resource_id(id.as_str());
    let detail = serde_json::json!({
        "keyId": id,
        "rotatedBy": me.id,
        "overlapSeconds": overlap,
        "previousExpiresAt": previous_until,
    });
    audit.set_detail(detail.clone());
    let trail = audit.change(StatusCode::OK).with_event(audit.event(
        &me.workspace_id,
        "api_key.rotated",
        detail,
    ));
    let key = state
        .store
        .rotate_api_key(
            &me.workspace_id,
            &id,
            owner_restriction(me),
            &secret.digest.to_hex(),
            &secret.last_four,
            previous_until,
            &trail,
        )
        .await
        .map_err(not_found)?;
    audit.mark_recorded();
    crate::edge::apply_invalidation(&state, &Invalidation::Credential(id.to_string())).await;
    tracing::info!(key_id = %id, overlap_seconds = overlap, "API key rotated");
    Ok(Json(CreatedApiKeyResponse {
        key: secret.secret.expose_secret().to_owned(),
        info: ApiKeyResponse::of(key),
    }))
}

/// A key's spend in its current period.
#[utoipa::path(get, operation_id = "getApiKeyUsage", path = "/api/v1/auth/api-keys/{id}/usage", tag = "api-keys",
    security(("bearer" = ["read:api-keys"])),
    params(("x-datastack-scope" = String, Header, description = "read:api-keys"), ("id" = String, Path, description = "key_…")),
    responses((status = 200, body = UsageResponse), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn key_usage(
    State(state): State<AppState>,
    caller: Authorized<ReadApiKeys>,
    PathId(id): PathId<ApiKeyPath>,
) -> ApiResult<Json<UsageResponse>> {
    let key = load_visible(&state, &caller.identity.principal, &id).await?;
    let usage = state.edge.spend.usage(&id, &key.policy).await?;
    Ok(Json(UsageResponse {
        key_id: id.to_string(),
        period: usage.period.as_str(),
        period_start: usage.start,
        period_end: usage.end,
        used: usage.used,
        limit: usage.limit,
        remaining: usage.remaining(),
    }))
}

/// Checks a key for a service that authenticates its own callers with datastack keys: the
/// same verification as every request (cache, revocation), then the scope, the address,
/// the key's rate limit (this check counts as a use) and its spend.
#[utoipa::path(post, operation_id = "verifyApiKey", path = "/api/v1/auth/api-keys/verify", tag = "api-keys",
    security(("bearer" = ["read:api-keys"])),
    params(("x-datastack-scope" = String, Header, description = "read:api-keys")),
    request_body = VerifyApiKeyRequest,
    responses((status = 200, body = VerifyApiKeyResponse), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn verify_key(
    State(state): State<AppState>,
    caller: Authorized<ReadApiKeys>,
    audit: AuditContext,
    Json(body): Json<VerifyApiKeyRequest>,
) -> ApiResult<Json<VerifyApiKeyResponse>> {
    let scope = body
        .scope
        .as_deref()
        .map(|s| {
            s.parse::<Scope>()
                .map_err(|e| ApiError::InvalidRequest(format!("scope: {e}")))
        })
        .transpose()?;
    let ip = body
        .ip
        .as_deref()
        .map(|s| {
            s.trim()
                .parse::<std::net::IpAddr>()
                .map_err(|_| ApiError::InvalidRequest("ip: must be an IPv4 or IPv6 address".into()))
        })
        .transpose()?;
    let cost = match body.cost {
        None => 0,
        Some(c) if (0..=1_000_000_000).contains(&c) => c as u64,
        Some(_) => {
            return Err(ApiError::InvalidRequest(
                "cost: must be between 0 and 1000000000".into(),
            ));
        }
    };
    let verdict = verdict(&state, &caller, &audit, body.key, scope, ip, cost).await?;
    audit.set_detail(serde_json::json!({
        "keyId": verdict.key_id,
        "code": verdict.code,
        "scope": body.scope,
        "ip": ip,
    }));
    if let Some(id) = &verdict.key_id {
        audit.set_resource_id(id);
    }
    Ok(Json(verdict))
}

async fn verdict(
    state: &AppState,
    caller: &Authorized<ReadApiKeys>,
    audit: &AuditContext,
    key: String,
    scope: Option<Scope>,
    ip: Option<std::net::IpAddr>,
    cost: u64,
) -> ApiResult<VerifyApiKeyResponse> {
    let secret = SecretString::from(key);
    if !secret
        .expose_secret()
        .starts_with(CredentialKind::ApiKey.prefix())
    {
        return Ok(VerifyApiKeyResponse::invalid("NOT_FOUND"));
    }
    // Looked up without counting as a use: a key of another workspace must not be touched.
    let outcome = state
        .credentials
        .check(&secret)
        .await
        .map_err(|e| ApiError::from(e.0))?;
    let workspace = &caller.identity.workspace.id;
    // A key of another workspace does not exist for this caller.
    let identity = match outcome {
        Ok(identity) if identity.workspace.id == *workspace => identity,
        Err((rejection, Some(identity))) if identity.workspace.id == *workspace => {
            let code = match rejection {
                Rejection::Expired => "EXPIRED",
                Rejection::Malformed | Rejection::Unknown => "NOT_FOUND",
                Rejection::Revoked | Rejection::OwnerSuspended | Rejection::WorkspaceSuspended => {
                    "REVOKED"
                }
            };
            let mut v = VerifyApiKeyResponse::invalid(code);
            v.key_id = Some(identity.token.id.to_string());
            v.expires_at = identity.token.expires_at;
            return Ok(v);
        }
        _ => return Ok(VerifyApiKeyResponse::invalid("NOT_FOUND")),
    };
    let Some(policy) = identity.api_key.as_ref() else {
        return Ok(VerifyApiKeyResponse::invalid("NOT_FOUND"));
    };
    state.credentials.record_use(&identity, ip);
    let mut v = VerifyApiKeyResponse {
        valid: false,
        code: "VALID",
        key_id: Some(identity.token.id.to_string()),
        owner: Some(identity.principal.id.to_string()),
        name: Some(identity.token.label.clone()),
        scopes: Some(identity.token.scopes.to_strings()),
        metadata: Some(policy.metadata.clone()),
        remaining: None,
        expires_at: identity.token.expires_at,
        resets_at: None,
    };
    if let Some(scope) = scope
        && authz::decide(
            Some(&scope.to_string()),
            scope,
            &identity.token.scopes,
            identity.principal.role,
        )
        .is_err()
    {
        v.code = "INSUFFICIENT_SCOPE";
        return Ok(v);
    }
    // The edge's rules: the key's ranges and, for a stated address, the workspace's
    // lists (without an address only the key's ranges can say anything); then the key's
    // and its workspace's rate limits.
    let refused = match ip {
        Some(_) => crate::edge::ip_check(state, &identity, ip).await?.is_err(),
        None => !policy.admits(None),
    };
    if refused {
        v.code = "IP_NOT_ALLOWED";
        return Ok(v);
    }
    let limit = state
        .edge
        .limiter
        .check(&crate::edge::credential_buckets(&state.config, &identity))
        .await;
    let rate_remaining = limit.applies().then_some(limit.remaining);
    if let Some(flagged) = &limit.flagged {
        crate::edge::record_flag(state, audit, Some(&identity), flagged);
    }
    if !limit.allowed() {
        v.code = "RATE_LIMITED";
        v.remaining = Some(Remaining {
            rate_limit: Some(0),
            spend: None,
        });
        return Ok(v);
    }
    let charged = state
        .edge
        .spend
        .reserve(&state.edge.limiter, &identity, cost)
        .await?;
    let spend = state.edge.spend.known(&identity);
    v.remaining = Some(Remaining {
        rate_limit: rate_remaining,
        spend: spend
            .as_ref()
            .and_then(crate::edge::spend::Usage::remaining),
    });
    if let Err(exceeded) = charged {
        v.code = "SPEND_LIMIT_EXCEEDED";
        v.resets_at = exceeded.resets_at;
        return Ok(v);
    }
    v.valid = true;
    Ok(v)
}
