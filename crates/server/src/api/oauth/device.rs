//! The device authorization grant (RFC 8628): a device without a browser (a CLI, a
//! notebook kernel, a headless job) asks `/oauth2/device_authorization` for a device code
//! and a user code, shows the user code to its user, and polls the token endpoint; the
//! user, signed in elsewhere, approves or denies the code (`POST
//! /api/v1/oauth/device/approve`, or `datastack oauth device approve`); the device then
//! gets an access token acting as that user, and a refresh token when its client may
//! refresh.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{Duration, Utc};
use datastack_core::model::PrincipalKind;
use datastack_core::oauth::{self, GrantType};
use datastack_core::scope::{Scope, ScopeSet};
use datastack_store::{DeviceAuthorization, DevicePoll, DeviceStatus, RefreshToken};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::audit::AuditContext;
use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::pipeline::authorize::{Authorized, ManageTokens};
use crate::pipeline::extract::Json;
use crate::state::AppState;

use super::token::{Minted, TokenResponse, mint};
use super::*;

/// The most device authorizations one client may have waiting at once: a public client
/// proves nothing, so its requests are bounded here (besides the per-address limit).
const MAX_PENDING_PER_CLIENT: i64 = 1000;

/// Attempts to approve or deny a user code one principal may make per minute: a user
/// code has about 34 bits, so guessing one is bounded by this.
const DECISIONS_PER_MINUTE: u32 = 10;

/// The form of a device authorization request (RFC 8628 §3.1).
#[derive(ToSchema)]
#[allow(dead_code)]
pub struct DeviceAuthorizationForm {
    /// The client (a public client authenticates with nothing else).
    client_id: String,
    /// Space-separated scopes, each allowed for the client; default: all of them.
    scope: Option<String>,
    /// One of the client's audiences; default: its first.
    audience: Option<String>,
    /// A confidential client's secret (or HTTP Basic).
    client_secret: Option<String>,
}

/// A device authorization (RFC 8628 §3.2).
#[derive(Serialize, ToSchema)]
pub struct DeviceAuthorizationResponse {
    /// The secret the device polls the token endpoint with.
    pub device_code: String,
    /// What the user enters (case, spaces and dashes do not matter).
    pub user_code: String,
    /// Where the user goes to enter it.
    pub verification_uri: String,
    /// The same, with the code filled in.
    pub verification_uri_complete: String,
    /// Seconds until both codes expire.
    pub expires_in: i64,
    /// The least number of seconds between two polls.
    pub interval: i64,
}

/// Starts a device authorization (RFC 8628 §3.1). Form-encoded; the client must be
/// allowed the device grant. The device shows `user_code` and `verification_uri` to its
/// user, then polls `/oauth2/token` with `grant_type=urn:ietf:params:oauth:grant-type:device_code`.
#[utoipa::path(post, operation_id = "oauthDeviceAuthorization", path = "/oauth2/device_authorization", tag = "oauth",
    request_body(content_type = "application/x-www-form-urlencoded", content = DeviceAuthorizationForm),
    responses((status = 200, body = DeviceAuthorizationResponse), (status = 400, body = OAuthErrorBody),
        (status = 401, body = OAuthErrorBody, description = "invalid_client, with WWW-Authenticate"),
        (status = 429, body = OAuthErrorBody, description = "too many pending authorizations for the client")))]
#[tracing::instrument(skip_all)]
pub async fn device_authorization(
    State(state): State<AppState>,
    audit: AuditContext,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    audit.set_action("oauth.device_authorization", "oauth-clients");
    oauth_answer(start(&state, &audit, &headers, &body).await)
}

async fn start(
    state: &AppState,
    audit: &AuditContext,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<DeviceAuthorizationResponse, OAuthError> {
    let form = Form::parse(headers, body)?;
    let entry = authenticate_client(state, headers, &form, audit).await?;
    let client = &entry.client;
    if !client.allows(GrantType::DeviceCode) {
        return Err(OAuthError::new(
            "unauthorized_client",
            format!("the client may not use {}", GrantType::DeviceCode.as_str()),
        ));
    }
    let scopes = super::token::asked_scopes(&form, &client.scopes)?;
    let audience = super::token::asked_audience(&form, client)?;
    let now = Utc::now();
    let ttl = Duration::from_std(state.config.oauth_device_code_ttl).unwrap_or_default();
    let interval = state.config.oauth_device_poll_interval.as_secs() as i64;
    // A user code collides with a pending one about never; once is retried.
    for _ in 0..2 {
        let device_code = oauth::generate_device_code();
        let user_code = oauth::generate_user_code();
        let user_digest = oauth::user_code_digest(&user_code)
            .ok_or_else(|| OAuthError::new("server_error", "a user code is malformed"))?;
        let d = DeviceAuthorization {
            id: format!("odv_{}", uuid::Uuid::now_v7().simple()),
            client_id: client.id.clone(),
            device_digest_hex: device_code.digest.to_hex(),
            user_code_digest_hex: user_digest.to_hex(),
            scopes: scopes.clone(),
            audience: audience.clone(),
            status: DeviceStatus::Pending,
            subject_id: None,
            workspace_id: None,
            granted_scopes: None,
            interval_seconds: interval,
            last_polled_at: None,
            created_at: now,
            expires_at: now + ttl,
        };
        audit.set_detail(serde_json::json!({
            "clientId": client.id,
            "deviceAuthorizationId": d.id,
            "scopes": d.scopes,
            "audience": d.audience,
            "expiresAt": d.expires_at,
        }));
        let trail = audit.change_in(StatusCode::OK, &client.workspace_id);
        match state
            .store
            .insert_device_authorization(&d, MAX_PENDING_PER_CLIENT, &trail)
            .await
        {
            Ok(true) => {
                audit.mark_recorded();
                let base = public_base(state, headers);
                return Ok(DeviceAuthorizationResponse {
                    device_code: device_code.secret.expose_secret().to_owned(),
                    verification_uri_complete: format!(
                        "{base}/oauth2/device?user_code={user_code}"
                    ),
                    user_code,
                    verification_uri: format!("{base}/oauth2/device"),
                    expires_in: ttl.num_seconds(),
                    interval,
                });
            }
            Ok(false) => {
                let mut refused = OAuthError::new(
                    "slow_down",
                    "the client has too many device authorizations waiting; wait for some to expire",
                );
                refused.status = StatusCode::TOO_MANY_REQUESTS;
                refused.retry_after = Some(60);
                return Err(refused);
            }
            Err(datastack_store::Error::Conflict(_)) => continue,
            Err(e) => return Err(e.into()),
        }
    }
    Err(OAuthError::new(
        "temporarily_unavailable",
        "the server cannot answer now; try again",
    ))
}

/// The device grant at the token endpoint (RFC 8628 §3.4, §3.5).
pub(super) async fn redeem(
    state: &AppState,
    audit: &AuditContext,
    form: &Form,
    entry: &ClientEntry,
) -> Result<TokenResponse, OAuthError> {
    let client = &entry.client;
    let presented = form
        .get("device_code")
        .ok_or_else(|| OAuthError::new("invalid_request", "device_code is missing"))?;
    let unknown = || OAuthError::new("invalid_grant", "the device code is not valid");
    let digest = oauth::parse_device_code(presented).ok_or_else(unknown)?;
    let now = Utc::now();
    let d = match state
        .store
        .poll_device(&client.id, &digest.to_hex(), now)
        .await?
    {
        DevicePoll::Unknown | DevicePoll::Consumed => return Err(unknown()),
        DevicePoll::Expired => {
            return Err(OAuthError::new(
                "expired_token",
                "the device code expired; start again",
            ));
        }
        DevicePoll::Denied => {
            return Err(OAuthError::new(
                "access_denied",
                "the user denied the request",
            ));
        }
        DevicePoll::Pending { too_fast: true } => {
            return Err(OAuthError::new(
                "slow_down",
                "polled before the interval was over; the interval is now 5 seconds longer",
            ));
        }
        DevicePoll::Pending { too_fast: false } => {
            return Err(OAuthError::new(
                "authorization_pending",
                "the user has not approved the request yet",
            ));
        }
        DevicePoll::Approved(d) => d,
    };
    let (Some(subject), Some(workspace), Some(granted)) =
        (&d.subject_id, &d.workspace_id, &d.granted_scopes)
    else {
        return Err(unknown());
    };
    let expires_at = now + Duration::seconds(client.access_token_ttl_seconds);
    let (jwt, access) = mint(
        state,
        client,
        Minted {
            subject,
            workspace,
            scopes: granted.clone(),
            audience: &d.audience,
            now,
            expires_at,
            acting_client: false,
        },
    )?;
    let family_id = format!("orf_{}", uuid::Uuid::now_v7().simple());
    let refresh_secret = client
        .allows(GrantType::RefreshToken)
        .then(oauth::generate_refresh_token);
    let refresh = refresh_secret.as_ref().map(|s| RefreshToken {
        id: format!("ort_{}", uuid::Uuid::now_v7().simple()),
        family_id: family_id.clone(),
        client_id: client.id.clone(),
        subject_id: subject.clone(),
        workspace_id: workspace.clone(),
        digest_hex: s.digest.to_hex(),
        scopes: granted.clone(),
        audience: d.audience.clone(),
        created_at: now,
        expires_at: now + Duration::seconds(client.refresh_token_ttl_seconds),
        used_at: None,
        successor_id: None,
        revoked_at: None,
    });
    audit.set_detail(serde_json::json!({
        "grantType": GrantType::DeviceCode.as_str(),
        "clientId": client.id,
        "tokenId": access.id,
        "subject": subject,
        "scopes": access.scopes,
        "audience": d.audience,
        "expiresAt": expires_at,
        "deviceAuthorizationId": d.id,
        "refreshTokenId": refresh.as_ref().map(|r| r.id.clone()),
    }));
    let trail = audit.change_in(StatusCode::OK, &client.workspace_id);
    if !state
        .store
        .redeem_device(
            &d.id,
            &access,
            &client.id,
            &family_id,
            refresh.as_ref(),
            &trail,
        )
        .await?
    {
        return Err(unknown());
    }
    audit.mark_recorded();
    Ok(TokenResponse {
        access_token: jwt,
        token_type: "Bearer",
        expires_in: (expires_at - now).num_seconds().max(0),
        scope: access.scopes.to_strings().join(" "),
        refresh_token: refresh_secret.map(|s| s.secret.expose_secret().to_owned()),
        issued_token_type: None,
    })
}

/// A user's decision on a device's user code.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DeviceDecisionRequest {
    /// The code the device shows (`BDFG-HJKL`; case, spaces and dashes do not matter).
    pub user_code: String,
    /// `approve` (the default) or `deny`.
    pub decision: Option<String>,
    /// Approve fewer scopes than the device asked for (each among those it asked).
    pub scopes: Option<Vec<String>>,
}

/// What was decided.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceDecision {
    /// `approved` or `denied`.
    pub decision: &'static str,
    /// The client the device authenticated as.
    pub client_id: String,
    /// Its name.
    pub client_name: String,
    /// The scopes the device's token will carry (approved), or asked for (denied).
    pub scopes: Vec<String>,
}

/// Approves or denies a device's user code (RFC 8628 §3.3) as the calling user: the
/// device's token acts as you, with the scopes it asked for that your credential holds.
/// Only users decide (not service principals), only for clients of their workspace or
/// above it, and at most 10 attempts a minute.
#[utoipa::path(post, operation_id = "decideDeviceAuthorization", path = "/api/v1/oauth/device/approve", tag = "oauth",
    security(("bearer" = ["manage:tokens"])),
    params(("x-datastack-scope" = String, Header, description = "manage:tokens")),
    request_body = DeviceDecisionRequest,
    responses((status = 200, body = DeviceDecision), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody, description = "no pending authorization has this user code"),
        (status = 429, body = ErrorBody)))]
#[tracing::instrument(skip_all)]
pub async fn decide(
    State(state): State<AppState>,
    caller: Authorized<ManageTokens>,
    audit: AuditContext,
    Json(body): Json<DeviceDecisionRequest>,
) -> ApiResult<Json<DeviceDecision>> {
    audit.set_action("oauth.device_decision", "oauth-clients");
    let identity = &caller.identity;
    let me = &identity.principal;
    if me.kind != PrincipalKind::User {
        return Err(ApiError::Forbidden(
            "only a user approves a device; a service principal uses client credentials".into(),
        ));
    }
    let approve = match body.decision.as_deref() {
        None | Some("approve") => true,
        Some("deny") => false,
        Some(other) => {
            return Err(ApiError::InvalidRequest(format!(
                "decision: {} is neither approve nor deny",
                shown(other)
            )));
        }
    };
    // Every attempt counts, right or wrong: a refusal that only followed wrong codes would
    // still let a guesser tell a right one.
    let verdict = state
        .edge
        .limiter
        .check(&[crate::edge::ratelimit::Bucket {
            subject: crate::edge::ratelimit::Subject::Credential(format!(
                "device-decisions:{}",
                me.id
            )),
            per_minute: DECISIONS_PER_MINUTE,
        }])
        .await;
    if !verdict.allowed() {
        return Err(ApiError::RateLimited(
            "too many device decisions; wait a minute".into(),
        ));
    }
    let not_found = || ApiError::not_found("pending device authorization with this user code");
    let digest = oauth::user_code_digest(&body.user_code).ok_or_else(not_found)?;
    let d = state
        .store
        .find_pending_device(&digest.to_hex())
        .await?
        .ok_or_else(not_found)?;
    let client = match state.store.get_oauth_client(None, &d.client_id).await {
        Ok(c) => c,
        Err(datastack_store::Error::NotFound) => return Err(not_found()),
        Err(e) => return Err(e.into()),
    };
    // A device of another tenant's client never gets a token for this user.
    if !identity.in_subtree_of(client.workspace_id.as_str()) {
        return Err(not_found());
    }
    audit.set_resource_id(client.id.as_str());
    let granted = if approve {
        // What the device asked for, narrowed to what was approved, that the approving
        // credential holds.
        let asked = match &body.scopes {
            None => d.scopes.clone(),
            Some(list) => {
                let chosen = ScopeSet::parse(list)?;
                if let Some(beyond) = chosen.as_slice().iter().find(|s| !d.scopes.covers(**s)) {
                    return Err(ApiError::InvalidRequest(format!(
                        "scopes: the device did not ask for {beyond}"
                    )));
                }
                chosen
            }
        };
        let held: Vec<String> = asked
            .as_slice()
            .iter()
            .copied()
            .filter(|s: &Scope| identity.token.scopes.covers(*s))
            .map(|s| s.to_string())
            .collect();
        if held.is_empty() {
            return Err(ApiError::Forbidden(
                "your credential holds none of the scopes the device asked for".into(),
            ));
        }
        Some(ScopeSet::parse(&held)?)
    } else {
        None
    };
    let decision = if approve { "approved" } else { "denied" };
    let scopes = granted.as_ref().unwrap_or(&d.scopes).to_strings();
    audit.set_detail(serde_json::json!({
        "decision": decision,
        "clientId": client.id,
        "deviceAuthorizationId": d.id,
        "scopes": scopes,
    }));
    let trail = audit.change(StatusCode::OK);
    if !state
        .store
        .decide_device(&d.id, &me.id, &me.workspace_id, granted.as_ref(), &trail)
        .await?
    {
        return Err(not_found());
    }
    audit.mark_recorded();
    tracing::info!(client_id = %client.id, decision, "device authorization decided");
    Ok(Json(DeviceDecision {
        decision,
        client_id: client.id.to_string(),
        client_name: client.name,
        scopes,
    }))
}

/// The `user_code` of the device page's link.
#[derive(Deserialize)]
pub struct DevicePageQuery {
    user_code: Option<String>,
}

/// The page a device sends its user to (`verification_uri`). Until the console serves a
/// sign-in page here, it says how to approve the code with the CLI or the API.
pub async fn device_page(Query(q): Query<DevicePageQuery>) -> Response {
    // Only a well-formed user code is shown back (it is then letters and a dash).
    let code = q
        .user_code
        .filter(|c| oauth::user_code_digest(c).is_some())
        .unwrap_or_else(|| "THE-CODE".to_owned());
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <title>Approve a device - datastack</title></head><body>\
         <h1>Approve a device</h1>\
         <p>A device asked to act as you. If you started it, approve its code with your own \
         credential:</p>\
         <pre>datastack oauth device approve {code}</pre>\
         <p>or</p>\
         <pre>curl -X POST /api/v1/oauth/device/approve -H 'Authorization: Bearer …' \
         -H 'x-datastack-scope: manage:tokens' -H 'content-type: application/json' \
         -d '{{\"userCode\": \"{code}\"}}'</pre>\
         <p>If you did not start it, deny it: <code>datastack oauth device deny {code}</code>.</p>\
         </body></html>"
    );
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, "default-src 'none'"),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}
