//! Typed async client for the datastack API (`docs/api.md`).
//!
//! [`Client`] sends the request contract's headers for you: `Authorization: Bearer <token>`
//! and the `x-datastack-scope` each endpoint requires. It retries rate-limited and
//! temporarily unavailable calls, honouring `Retry-After`. The token is held as a
//! [`SecretString`](secrecy::SecretString) and never printed.
//!
//! ```no_run
//! use datastack_sdk::{Client, CreateToken, ListUsers, TokenLifetime};
//! use datastack_sdk::secrecy::ExposeSecret;
//!
//! # async fn example() -> datastack_sdk::Result<()> {
//! // DATASTACK_HOST (default http://127.0.0.1:8080) and DATASTACK_TOKEN.
//! let client = Client::from_env()?;
//! let me = client.me().await?;
//! println!("signed in as {}", me.principal.name);
//!
//! let users = client.list_users(ListUsers::default()).await?;
//! for user in users.items {
//!     println!("{} {}", user.id, user.email);
//! }
//!
//! let mut request = CreateToken::new("ci-reader");
//! request.lifetime = Some(TokenLifetime::Days(30));
//! request.scopes = Some(vec!["read:jobs".to_owned()]);
//! let created = client.create_token(request).await?;
//! // The secret is shown this once.
//! let secret: &str = created.token.expose_secret();
//! # let _ = secret;
//! # Ok(())
//! # }
//! ```
#![forbid(unsafe_code)]

mod api_keys;
mod audit;
mod client;
mod edge;
mod error;
mod oauth;
mod types;
mod webhooks;

pub use api_keys::{
    ApiKey, ApiKeyUsage, CreateApiKey, CreatedApiKey, KeySecret, KeyVerdict, ListApiKeys,
    Remaining, RotationPolicy, SpendLimit, UpdateApiKey, VerifyApiKey,
};
pub use audit::{
    AuditEntry, AuditQuery, BulkChange, BulkResult, ChainReport, ReviewItem, ReviewOwner,
    ReviewQuery, SecurityEvent,
};
pub use client::{Client, DEFAULT_HOST};
pub use edge::{
    AbuseFlag, GatewayRoute, IpAccessList, IpAccessListUpdate, IpAccessLists, NewIpAccessList,
    RouteSpec,
};
pub use error::{Error, Result};
pub use oauth::{
    AccessToken, ClientCredentials, CreateOAuthClient, DeviceDecision, OAuthClient,
    OAuthClientWithSecret, SubjectLink, TrustedIssuer, TrustedIssuerRequest, UpdateOAuthClient,
};
pub use types::{
    CreateServicePrincipal, CreateToken, CreateUser, CreateWorkspace, CreatedToken,
    CreatedWorkspace, Credential, ListServicePrincipals, ListTokens, ListUsers, ListWorkspaces, Me,
    Page, ParseValueError, Principal, Role, ServicePrincipal, Status, Token, TokenLifetime,
    UpdateServicePrincipal, UpdateUser, UpdateWorkspace, User, Workspace, WorkspaceSettings,
    WorkspaceSettingsUpdate,
};
pub use webhooks::{
    CreateWebhook, Delivery, DeliveryAttempt, DeliveryDetail, EventType, ListDeliveries,
    PublishedEvent, UpdateWebhook, VerifyError, Webhook, WebhookEvent, WebhookVerifier,
    WebhookWithSecret,
};

/// The `secrecy` crate this SDK's secrets are typed with, re-exported so callers can use
/// [`ExposeSecret`](secrecy::ExposeSecret) without matching its version themselves.
pub use secrecy;
