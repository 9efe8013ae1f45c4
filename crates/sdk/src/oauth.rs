//! OAuth 2.0 (`read:oauth-clients` / `manage:oauth-clients`): clients (create, list, get,
//! update, rotate the secret, delete), and an access token for a client with the
//! `client_credentials` grant.

use chrono::{DateTime, Utc};
use reqwest::Method;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize};

use crate::client::{Auth, Client, append_query, decode};
use crate::error::{Error, Result};
use crate::types::Page;

const READ_OAUTH_CLIENTS: &str = "read:oauth-clients";
const MANAGE_OAUTH_CLIENTS: &str = "manage:oauth-clients";

/// An OAuth client as listed: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OAuthClient {
    /// Its `client_id`, `ocl_…`.
    pub client_id: String,
    /// Its name.
    pub name: String,
    /// `confidential` or `public`.
    #[serde(rename = "type")]
    pub client_type: String,
    /// The grants it may use.
    pub grant_types: Vec<String>,
    /// Its redirect URIs.
    pub redirect_uris: Vec<String>,
    /// The most its tokens may carry.
    pub scopes: Vec<String>,
    /// The audiences its tokens may be issued for (the first is the default).
    pub audiences: Vec<String>,
    /// Access-token lifetime in seconds.
    pub access_token_ttl_seconds: i64,
    /// Refresh-token lifetime in seconds.
    pub refresh_token_ttl_seconds: i64,
    /// The service principal its `client_credentials` tokens act as.
    pub owner_id: Option<String>,
    /// The current secret's last four characters.
    pub secret_last_four: Option<String>,
    /// When the current secret was issued.
    pub secret_rotated_at: Option<DateTime<Utc>>,
    /// Until when the previous secret still works.
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    /// Who created it.
    pub created_by: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
    /// When it last got a token.
    pub last_used_at: Option<DateTime<Utc>>,
    /// `client_secret_basic`, `private_key_jwt` or `none`.
    #[serde(default)]
    pub token_endpoint_auth_method: Option<String>,
    /// Its public keys for `private_key_jwt`.
    #[serde(default)]
    pub jwks: Option<serde_json::Value>,
    /// Where it publishes them.
    #[serde(default)]
    pub jwks_uri: Option<String>,
}

/// A created client, or one whose secret was rotated, with the secret (shown once).
#[derive(Debug)]
pub struct OAuthClientWithSecret {
    /// The secret, `dcsk…` (`None` for a public client).
    pub client_secret: Option<SecretString>,
    /// The client.
    pub client: OAuthClient,
}

impl<'de> Deserialize<'de> for OAuthClientWithSecret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> std::result::Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct Wire {
            client_secret: Option<String>,
            #[serde(flatten)]
            client: OAuthClient,
        }
        let wire = Wire::deserialize(deserializer)?;
        Ok(Self {
            client_secret: wire.client_secret.map(SecretString::from),
            client: wire.client,
        })
    }
}

/// A client to create.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateOAuthClient {
    /// A name for people.
    pub name: String,
    /// `confidential` (default) or `public`.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub client_type: Option<String>,
    /// The grants it may use (default `client_credentials`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grant_types: Option<Vec<String>>,
    /// Exact redirect URIs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_uris: Option<Vec<String>>,
    /// The most its tokens may carry (default: the caller's scopes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// The audiences its tokens may be issued for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audiences: Option<Vec<String>>,
    /// Access-token lifetime in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token_ttl_seconds: Option<i64>,
    /// Refresh-token lifetime in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token_ttl_seconds: Option<i64>,
    /// The service principal (`sp_…`) its `client_credentials` tokens act as.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_id: Option<String>,
    /// Its public keys (a JWK set): it then authenticates with `private_key_jwt` and gets
    /// no secret.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks: Option<serde_json::Value>,
    /// Where it publishes its JWK set (likewise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
}

/// Changes to a client; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpdateOAuthClient {
    /// A new name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// New redirect URIs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_uris: Option<Vec<String>>,
    /// New allowed scopes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// New audiences.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audiences: Option<Vec<String>>,
    /// New access-token lifetime.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub access_token_ttl_seconds: Option<i64>,
    /// New refresh-token lifetime.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refresh_token_ttl_seconds: Option<i64>,
    /// A new JWK set for `private_key_jwt` (how a client rotates its keys).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks: Option<serde_json::Value>,
    /// A new JWK set URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
}

/// An access token from the token endpoint.
#[derive(Debug)]
pub struct AccessToken {
    /// The token (a JWT), sent as `Authorization: Bearer`.
    pub access_token: SecretString,
    /// Seconds until it expires, counted from the answer.
    pub expires_in: i64,
    /// The scopes it carries.
    pub scopes: Vec<String>,
    /// The refresh token to use next (device and refresh grants, when the client may
    /// refresh): each works once, see [`Client::refresh_access_token`].
    pub refresh_token: Option<SecretString>,
}

/// A user's decision on a device's user code.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceDecision {
    /// `approved` or `denied`.
    pub decision: String,
    /// The client the device authenticated as.
    pub client_id: String,
    /// Its name.
    pub client_name: String,
    /// The scopes the device's token carries (approved) or asked for (denied).
    pub scopes: Vec<String>,
}

/// What to ask the token endpoint for.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCredentials {
    /// The client id, `ocl_…`.
    pub client_id: String,
    /// Scopes (default: all of the client's).
    pub scopes: Option<Vec<String>>,
    /// One of the client's audiences (default: its first).
    pub audience: Option<String>,
}

impl Client {
    /// `POST /api/v1/oauth/clients` (`manage:oauth-clients`): the answer holds a
    /// confidential client's secret, which the server never shows again.
    pub async fn create_oauth_client(
        &self,
        request: &CreateOAuthClient,
    ) -> Result<OAuthClientWithSecret> {
        let url = self.url(&["api", "v1", "oauth", "clients"]);
        self.post_json(url, MANAGE_OAUTH_CLIENTS, request).await
    }

    /// `GET /api/v1/oauth/clients` (`read:oauth-clients`): one page of clients.
    pub async fn list_oauth_clients(
        &self,
        limit: Option<u32>,
        cursor: Option<String>,
    ) -> Result<Page<OAuthClient>> {
        let mut url = self.url(&["api", "v1", "oauth", "clients"]);
        append_query(
            &mut url,
            &[("limit", limit.map(|l| l.to_string())), ("cursor", cursor)],
        );
        decode(self.get(url, READ_OAUTH_CLIENTS).await?).await
    }

    /// `GET /api/v1/oauth/clients/{id}` (`read:oauth-clients`).
    pub async fn get_oauth_client(&self, id: &str) -> Result<OAuthClient> {
        let url = self.url(&["api", "v1", "oauth", "clients", id]);
        decode(self.get(url, READ_OAUTH_CLIENTS).await?).await
    }

    /// `PATCH /api/v1/oauth/clients/{id}` (`manage:oauth-clients`).
    pub async fn update_oauth_client(
        &self,
        id: &str,
        update: &UpdateOAuthClient,
    ) -> Result<OAuthClient> {
        let url = self.url(&["api", "v1", "oauth", "clients", id]);
        self.send_json(Method::PATCH, url, MANAGE_OAUTH_CLIENTS, update)
            .await
    }

    /// `POST /api/v1/oauth/clients/{id}/rotate-secret` (`manage:oauth-clients`): a new
    /// secret; the old one keeps working for `overlap_seconds` (0: it stops now).
    pub async fn rotate_oauth_client_secret(
        &self,
        id: &str,
        overlap_seconds: u64,
    ) -> Result<OAuthClientWithSecret> {
        let url = self.url(&["api", "v1", "oauth", "clients", id, "rotate-secret"]);
        let body = serde_json::json!({ "overlapSeconds": overlap_seconds });
        self.post_json(url, MANAGE_OAUTH_CLIENTS, &body).await
    }

    /// `DELETE /api/v1/oauth/clients/{id}` (`manage:oauth-clients`): every token issued
    /// to the client is refused on every node.
    pub async fn delete_oauth_client(&self, id: &str) -> Result<()> {
        let url = self.url(&["api", "v1", "oauth", "clients", id]);
        self.send(
            Method::DELETE,
            url,
            Auth::Scoped(MANAGE_OAUTH_CLIENTS),
            None,
        )
        .await?;
        Ok(())
    }

    /// `POST /oauth2/token` with `grant_type=client_credentials`, the client
    /// authenticating with HTTP Basic (this client's own token is not sent).
    pub async fn client_credentials_token(
        &self,
        request: &ClientCredentials,
        client_secret: &SecretString,
    ) -> Result<AccessToken> {
        let mut form = vec![("grant_type", "client_credentials".to_owned())];
        if let Some(scopes) = &request.scopes {
            form.push(("scope", scopes.join(" ")));
        }
        if let Some(audience) = &request.audience {
            form.push(("audience", audience.clone()));
        }
        self.token_request(&request.client_id, Some(client_secret), &form)
            .await
    }

    /// `POST /oauth2/token` with `grant_type=refresh_token`: a new access token and the
    /// next refresh token (the one presented stops working; presenting it again after the
    /// server's grace period revokes every token descending from it). A public client
    /// passes no secret.
    pub async fn refresh_access_token(
        &self,
        client_id: &str,
        client_secret: Option<&SecretString>,
        refresh_token: &SecretString,
    ) -> Result<AccessToken> {
        let form = vec![
            ("grant_type", "refresh_token".to_owned()),
            ("refresh_token", refresh_token.expose_secret().to_owned()),
        ];
        self.token_request(client_id, client_secret, &form).await
    }

    /// `POST /api/v1/oauth/device/approve` (`manage:tokens`): approves (or, with
    /// `approve` false, denies) a device's user code as this client's user; `scopes`
    /// narrows what the device asked for.
    pub async fn decide_device(
        &self,
        user_code: &str,
        approve: bool,
        scopes: Option<Vec<String>>,
    ) -> Result<DeviceDecision> {
        let url = self.url(&["api", "v1", "oauth", "device", "approve"]);
        let mut body = serde_json::json!({
            "userCode": user_code,
            "decision": if approve { "approve" } else { "deny" },
        });
        if let Some(scopes) = scopes {
            body["scopes"] = serde_json::json!(scopes);
        }
        self.post_json(url, "manage:tokens", &body).await
    }

    /// A request to the token endpoint: the client authenticates with HTTP Basic, or
    /// names itself in the form when it is public (no secret).
    async fn token_request(
        &self,
        client_id: &str,
        client_secret: Option<&SecretString>,
        form: &[(&str, String)],
    ) -> Result<AccessToken> {
        let url = self.url(&["oauth2", "token"]);
        let mut form = form.to_vec();
        let request = self.http.post(url);
        // RFC 6749 §2.3.1 form-encodes id and secret before Basic joins them; datastack's
        // ids and secrets are letters, digits and `_`, which that leaves as they are.
        let request = match client_secret {
            Some(secret) => request.basic_auth(client_id, Some(secret.expose_secret())),
            None => {
                form.push(("client_id", client_id.to_owned()));
                request
            }
        };
        let response = request.form(&form).send().await?;
        let status = response.status();
        let request_id = response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = response.text().await?;
        if !status.is_success() {
            #[derive(Deserialize)]
            struct OAuthError {
                error: String,
                #[serde(default)]
                error_description: String,
            }
            let (code, message) = match serde_json::from_str::<OAuthError>(&text) {
                Ok(e) => (e.error, e.error_description),
                Err(_) => ("unexpected_response".to_owned(), text),
            };
            return Err(Error::Api {
                status: status.as_u16(),
                code,
                message,
                request_id,
                required_scope: None,
            });
        }
        #[derive(Deserialize)]
        struct Wire {
            access_token: String,
            expires_in: i64,
            #[serde(default)]
            scope: String,
            refresh_token: Option<String>,
        }
        let wire: Wire = serde_json::from_str(&text).map_err(|e| Error::Decode(e.to_string()))?;
        Ok(AccessToken {
            access_token: SecretString::from(wire.access_token),
            expires_in: wire.expires_in,
            scopes: wire
                .scope
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            refresh_token: wire.refresh_token.map(SecretString::from),
        })
    }

    /// A client of the server at `host` acting with a fresh `client_credentials` access
    /// token of the OAuth client `request.client_id`, which it renews by itself before the
    /// token expires (the first token is returned too).
    pub async fn from_client_credentials(
        host: &str,
        request: &ClientCredentials,
        client_secret: &SecretString,
    ) -> Result<(Self, AccessToken)> {
        // Any well-formed placeholder: the token request sends Basic, not this.
        let mut client = Self::new(host, SecretString::from("oauth".to_owned()))?;
        let token = client
            .client_credentials_token(request, client_secret)
            .await?;
        client.set_token(token.access_token.clone());
        client.renewal = Some(std::sync::Arc::new(Renewal::new(
            Grant::ClientCredentials {
                request: request.clone(),
                secret: client_secret.clone(),
            },
            token.expires_in,
        )));
        Ok((client, token))
    }

    /// A client of the server at `host` acting with access tokens it gets from
    /// `refresh_token` (of a device grant): it refreshes at once, and again by itself
    /// before each access token expires. Every refresh rotates the refresh token: keep
    /// [`Client::current_refresh_token`] (the one given here stops working), or the next
    /// start presents a used one, which revokes them all.
    pub async fn from_refresh_token(
        host: &str,
        client_id: &str,
        client_secret: Option<&SecretString>,
        refresh_token: &SecretString,
    ) -> Result<Self> {
        let mut client = Self::new(host, SecretString::from("oauth".to_owned()))?;
        client.renewal = Some(std::sync::Arc::new(Renewal::new(
            Grant::Refresh {
                client_id: client_id.to_owned(),
                secret: client_secret.cloned(),
                refresh: refresh_token.clone(),
            },
            0,
        )));
        client.renew_now().await?;
        Ok(client)
    }

    /// The refresh token to use next, for a client made by [`Client::from_refresh_token`]
    /// (it changes at every renewal).
    pub async fn current_refresh_token(&self) -> Option<SecretString> {
        let renewal = self.renewal.as_ref()?;
        let state = renewal.state.lock().await;
        match &state.grant {
            Grant::Refresh { refresh, .. } => Some(refresh.clone()),
            Grant::ClientCredentials { .. } => None,
        }
    }

    /// Renews the access token now (for a client made by [`Client::from_client_credentials`]
    /// or [`Client::from_refresh_token`]; otherwise nothing to do), e.g. after a 401.
    pub async fn renew_now(&self) -> Result<()> {
        self.renew(true).await
    }

    /// Renews the access token if it is due (four fifths of its lifetime have passed).
    pub(crate) async fn renew_if_due(&self) -> Result<()> {
        self.renew(false).await
    }

    async fn renew(&self, now: bool) -> Result<()> {
        let Some(renewal) = &self.renewal else {
            return Ok(());
        };
        // One renewal at a time; a caller that waited finds it done.
        let mut state = renewal.state.lock().await;
        if !now && std::time::Instant::now() < state.due {
            return Ok(());
        }
        let token = match &state.grant {
            Grant::ClientCredentials { request, secret } => {
                self.client_credentials_token(request, secret).await?
            }
            Grant::Refresh {
                client_id,
                secret,
                refresh,
            } => {
                self.refresh_access_token(client_id, secret.as_ref(), refresh)
                    .await?
            }
        };
        if let (Grant::Refresh { refresh, .. }, Some(next)) =
            (&mut state.grant, token.refresh_token.clone())
        {
            *refresh = next;
        }
        state.due = Renewal::due_after(token.expires_in);
        self.set_token(token.access_token);
        Ok(())
    }
}

/// A trusted external issuer (federation): its tokens are accepted as credentials.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrustedIssuer {
    /// `oti_…`.
    pub id: String,
    /// The exact `iss` of its tokens.
    pub issuer: String,
    /// Its key set URL; `None`: found by OIDC discovery.
    pub jwks_uri: Option<String>,
    /// The accepted audiences.
    pub audiences: Vec<String>,
    /// The accepted signature algorithms.
    pub algorithms: Vec<String>,
    /// `sub` or `email`.
    pub subject_claim: String,
    /// `existing` or `jit`.
    pub provisioning: String,
    /// `scope` or `scp`.
    pub scope_claim: String,
    /// The most its tokens may carry.
    pub scopes: Vec<String>,
    /// Who registered it.
    pub created_by: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// Which principal an issuer's `sub` is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SubjectLink {
    /// The `sub` claim's value.
    pub subject: String,
    /// The principal, `usr_…` or `sp_…`.
    pub principal_id: String,
}

/// A trusted issuer to register, or (with [`Client::update_trusted_issuer`]) what to
/// change: `None` leaves a field as it is (or takes the server's default on creation).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrustedIssuerRequest {
    /// The exact `iss` (creation only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The key set URL (default: discovery; an empty string in an update: discovery).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub jwks_uri: Option<String>,
    /// The accepted audiences (required on creation).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub audiences: Option<Vec<String>>,
    /// The accepted algorithms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub algorithms: Option<Vec<String>>,
    /// `sub` or `email` (creation only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subject_claim: Option<String>,
    /// `existing` or `jit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provisioning: Option<String>,
    /// `scope` or `scp`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope_claim: Option<String>,
    /// The most its tokens may carry.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<String>>,
    /// Subject links to set.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subjects: Option<Vec<SubjectLink>>,
}

impl Client {
    /// `POST /api/v1/oauth/issuers` (`manage:oauth-clients`): trusts an external issuer.
    pub async fn create_trusted_issuer(
        &self,
        request: &TrustedIssuerRequest,
    ) -> Result<TrustedIssuer> {
        let url = self.url(&["api", "v1", "oauth", "issuers"]);
        self.post_json(url, MANAGE_OAUTH_CLIENTS, request).await
    }

    /// `GET /api/v1/oauth/issuers` (`read:oauth-clients`): one page of trusted issuers.
    pub async fn list_trusted_issuers(
        &self,
        limit: Option<u32>,
        cursor: Option<String>,
    ) -> Result<Page<TrustedIssuer>> {
        let mut url = self.url(&["api", "v1", "oauth", "issuers"]);
        append_query(
            &mut url,
            &[("limit", limit.map(|l| l.to_string())), ("cursor", cursor)],
        );
        decode(self.get(url, READ_OAUTH_CLIENTS).await?).await
    }

    /// `GET /api/v1/oauth/issuers/{id}` (`read:oauth-clients`).
    pub async fn get_trusted_issuer(&self, id: &str) -> Result<TrustedIssuer> {
        let url = self.url(&["api", "v1", "oauth", "issuers", id]);
        decode(self.get(url, READ_OAUTH_CLIENTS).await?).await
    }

    /// `PATCH /api/v1/oauth/issuers/{id}` (`manage:oauth-clients`); `issuer` and
    /// `subject_claim` must be `None`.
    pub async fn update_trusted_issuer(
        &self,
        id: &str,
        update: &TrustedIssuerRequest,
    ) -> Result<TrustedIssuer> {
        let url = self.url(&["api", "v1", "oauth", "issuers", id]);
        self.send_json(Method::PATCH, url, MANAGE_OAUTH_CLIENTS, update)
            .await
    }

    /// `DELETE /api/v1/oauth/issuers/{id}` (`manage:oauth-clients`): its tokens are
    /// refused on every node.
    pub async fn delete_trusted_issuer(&self, id: &str) -> Result<()> {
        let url = self.url(&["api", "v1", "oauth", "issuers", id]);
        self.send(
            Method::DELETE,
            url,
            Auth::Scoped(MANAGE_OAUTH_CLIENTS),
            None,
        )
        .await?;
        Ok(())
    }
}

/// How a client renews its access token by itself.
pub(crate) enum Grant {
    /// `client_credentials` with the client's secret.
    ClientCredentials {
        request: ClientCredentials,
        secret: SecretString,
    },
    /// `refresh_token`, with the refresh token to use next.
    Refresh {
        client_id: String,
        secret: Option<SecretString>,
        refresh: SecretString,
    },
}

/// What a self-renewing client keeps.
pub(crate) struct RenewalState {
    grant: Grant,
    /// When the access token is renewed.
    due: std::time::Instant,
}

/// The renewal of a client's access token (shared by its clones).
pub struct Renewal {
    state: tokio::sync::Mutex<RenewalState>,
}

impl Renewal {
    fn new(grant: Grant, expires_in: i64) -> Self {
        Self {
            state: tokio::sync::Mutex::new(RenewalState {
                grant,
                due: Self::due_after(expires_in),
            }),
        }
    }

    /// Four fifths into a lifetime of `expires_in` seconds (at once for none).
    fn due_after(expires_in: i64) -> std::time::Instant {
        let seconds = u64::try_from(expires_in.max(0)).unwrap_or(0) * 4 / 5;
        std::time::Instant::now() + std::time::Duration::from_secs(seconds)
    }
}

impl std::fmt::Debug for Renewal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Renewal([redacted])")
    }
}
