//! `datastack oauth …`: OAuth clients, device approvals, and a `client_credentials`
//! access token.

use std::io::Read as _;

use datastack_sdk::{
    Client, ClientCredentials, CreateOAuthClient, SubjectLink, TrustedIssuerRequest,
    UpdateOAuthClient,
};
use secrecy::{ExposeSecret, SecretString};

use super::output::{
    Output, issuer_fields, issuer_table, oauth_client_fields, oauth_client_table,
    print_client_with_secret, print_json, write_stdout,
};
use super::{Failure, PageArgs, collect_pages};

/// `datastack oauth …`
#[derive(clap::Subcommand, Debug)]
pub enum OauthCmd {
    /// OAuth clients.
    Clients {
        /// What to do with clients.
        #[command(subcommand)]
        cmd: ClientsCmd,
    },
    /// Trusted external issuers (federation): your IdP's tokens accepted as credentials.
    Issuers {
        /// What to do with trusted issuers.
        #[command(subcommand)]
        cmd: IssuersCmd,
    },
    /// Approve or deny a device's user code (the device grant): the device's token acts
    /// as you.
    Device {
        /// approve or deny.
        #[command(subcommand)]
        cmd: DeviceCmd,
    },
    /// Get an access token with `client_credentials`. The client secret is read from
    /// standard input (never from the command line, where other users could see it); the
    /// token is printed alone on stdout. Needs no DATASTACK_TOKEN.
    Token {
        /// The client id, ocl_…
        #[arg(long)]
        client_id: String,
        /// A scope to ask for (default: all of the client's); repeat for more.
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
        /// One of the client's audiences (default: its first).
        #[arg(long)]
        audience: Option<String>,
    },
}

/// `datastack oauth issuers …`
#[derive(clap::Subcommand, Debug)]
pub enum IssuersCmd {
    /// Trust an issuer: its access tokens become credentials of this workspace.
    Create {
        /// The exact `iss` of its tokens (https, or http to a loopback address).
        #[arg(long)]
        issuer: String,
        /// sub (default) or email: the claim that names the principal.
        #[arg(long, value_parser = ["sub", "email"])]
        subject_claim: Option<String>,
        #[command(flatten)]
        fields: IssuerFields,
    },
    /// List the workspace's trusted issuers.
    List {
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one trusted issuer.
    Get {
        /// Its id, oti_…
        id: String,
    },
    /// Change a trusted issuer (its issuer and subject claim never change).
    Update {
        /// Its id, oti_…
        id: String,
        #[command(flatten)]
        fields: IssuerFields,
    },
    /// Stop trusting an issuer: its tokens are refused on every node.
    Delete {
        /// Its id, oti_…
        id: String,
    },
}

/// The fields a trusted issuer is created or changed with.
#[derive(clap::Args, Debug)]
pub struct IssuerFields {
    /// Its key set URL (default on create: OIDC discovery; "" on update: discovery).
    #[arg(long)]
    jwks_uri: Option<String>,
    /// An accepted `aud` (required on create); repeat for more.
    #[arg(long = "audience", value_name = "AUD")]
    audiences: Vec<String>,
    /// An accepted algorithm (default RS256, ES256, EdDSA); repeat for more.
    #[arg(long = "algorithm", value_name = "ALG")]
    algorithms: Vec<String>,
    /// existing (unknown subjects refused) or jit (provisioned as viewers).
    #[arg(long, value_parser = ["existing", "jit"])]
    provisioning: Option<String>,
    /// scope or scp: the claim with the token's scopes.
    #[arg(long, value_parser = ["scope", "scp"])]
    scope_claim: Option<String>,
    /// The most its tokens may carry (default on create: your credential's); repeat.
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,
    /// A link SUBJECT=PRINCIPAL_ID (a `sub` and the usr_… or sp_… it is); repeat.
    #[arg(long = "subject", value_name = "SUB=ID")]
    subjects: Vec<String>,
}

impl IssuerFields {
    fn request(
        self,
        issuer: Option<String>,
        subject_claim: Option<String>,
    ) -> Result<TrustedIssuerRequest, Failure> {
        let subjects = self
            .subjects
            .iter()
            .map(|s| {
                s.rsplit_once('=')
                    .map(|(subject, id)| SubjectLink {
                        subject: subject.to_owned(),
                        principal_id: id.to_owned(),
                    })
                    .ok_or_else(|| {
                        Failure::Usage(format!("--subject {s}: expected SUBJECT=PRINCIPAL_ID"))
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TrustedIssuerRequest {
            issuer,
            jwks_uri: self.jwks_uri,
            audiences: listed(self.audiences),
            algorithms: listed(self.algorithms),
            subject_claim,
            provisioning: self.provisioning,
            scope_claim: self.scope_claim,
            scopes: listed(self.scopes),
            subjects: (!subjects.is_empty()).then_some(subjects),
        })
    }
}

/// `datastack oauth device …`
#[derive(clap::Subcommand, Debug)]
pub enum DeviceCmd {
    /// Approve the code a device shows: it gets a token acting as you, with the scopes it
    /// asked for that your credential holds (needs manage:tokens).
    Approve {
        /// The user code, e.g. BDFG-HJKL (case and dashes do not matter).
        user_code: String,
        /// Approve only these of the scopes the device asked for; repeat for more.
        #[arg(long = "scope", value_name = "SCOPE")]
        scopes: Vec<String>,
    },
    /// Deny the code a device shows: its next poll is refused (access_denied).
    Deny {
        /// The user code.
        user_code: String,
    },
}

/// `datastack oauth clients …`
#[derive(clap::Subcommand, Debug)]
pub enum ClientsCmd {
    /// Register a client. A confidential client's secret is printed once, alone on stdout;
    /// details go to stderr.
    Create {
        /// A name for people (1–200 characters).
        #[arg(long)]
        name: String,
        /// The service principal (sp_…) its client_credentials tokens act as.
        #[arg(long, value_name = "ID")]
        owner: Option<String>,
        /// confidential (default) or public.
        #[arg(long = "type", value_parser = ["confidential", "public"])]
        client_type: Option<String>,
        /// A grant it may use (default client_credentials); repeat for more.
        #[arg(long = "grant-type", value_name = "GRANT")]
        grant_types: Vec<String>,
        #[command(flatten)]
        fields: ClientFields,
    },
    /// List the workspace's clients (never their secrets).
    List {
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one client.
    Get {
        /// The client id, ocl_…
        id: String,
    },
    /// Change a client's name, scopes, audiences, redirect URIs or token lifetimes.
    Update {
        /// The client id, ocl_…
        id: String,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        fields: ClientFields,
    },
    /// Give a client a new secret (printed once); the old one keeps working for the
    /// overlap.
    RotateSecret {
        /// The client id, ocl_…
        id: String,
        /// How long the old secret keeps working, in seconds (default 0: it stops now).
        #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u64).range(0..=604_800))]
        overlap_seconds: u64,
    },
    /// Delete a client: every token issued to it is refused on every node.
    Delete {
        /// The client id, ocl_…
        id: String,
    },
}

/// The fields a client is created or changed with.
#[derive(clap::Args, Debug)]
pub struct ClientFields {
    /// A scope its tokens may carry (default on create: your credential's); repeat for more.
    #[arg(long = "scope", value_name = "SCOPE")]
    scopes: Vec<String>,
    /// An audience its tokens may be issued for (the first is the default); repeat.
    #[arg(long = "audience", value_name = "AUD")]
    audiences: Vec<String>,
    /// An exact redirect URI (https, or http to a loopback address); repeat for more.
    #[arg(long = "redirect-uri", value_name = "URI")]
    redirect_uris: Vec<String>,
    /// Access-token lifetime in seconds (60–86400; default 3600).
    #[arg(long, value_parser = clap::value_parser!(i64).range(60..=86_400))]
    access_token_ttl_seconds: Option<i64>,
    /// Refresh-token lifetime in seconds (300–31536000; default 2592000).
    #[arg(long, value_parser = clap::value_parser!(i64).range(300..=31_536_000))]
    refresh_token_ttl_seconds: Option<i64>,
    /// A file with the client's public keys (a JWK set): it authenticates with
    /// private_key_jwt and gets no secret.
    #[arg(long, value_name = "PATH", conflicts_with = "jwks_uri")]
    jwks_file: Option<std::path::PathBuf>,
    /// Where the client publishes its JWK set (likewise).
    #[arg(long, value_name = "URL")]
    jwks_uri: Option<String>,
}

impl ClientFields {
    /// The JWK set of `--jwks-file`, if given.
    fn jwks(&self) -> Result<Option<serde_json::Value>, Failure> {
        let Some(path) = &self.jwks_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|e| Failure::Usage(format!("--jwks-file {}: {e}", path.display())))?;
        serde_json::from_str(&text)
            .map(Some)
            .map_err(|e| Failure::Usage(format!("--jwks-file {}: not JSON: {e}", path.display())))
    }
}

fn listed(values: Vec<String>) -> Option<Vec<String>> {
    (!values.is_empty()).then_some(values)
}

/// Runs `datastack oauth …`.
pub(super) async fn oauth(cmd: OauthCmd, client: &Client, out: Output) -> Result<(), Failure> {
    let cmd = match cmd {
        OauthCmd::Clients { cmd } => cmd,
        OauthCmd::Issuers { cmd } => return issuers(cmd, client, out).await,
        OauthCmd::Device { cmd } => {
            let decided = match cmd {
                DeviceCmd::Approve { user_code, scopes } => {
                    client
                        .decide_device(&user_code, true, listed(scopes))
                        .await?
                }
                DeviceCmd::Deny { user_code } => {
                    client.decide_device(&user_code, false, None).await?
                }
            };
            if out.json {
                print_json(&serde_json::json!({
                    "decision": decided.decision,
                    "clientId": decided.client_id,
                    "clientName": decided.client_name,
                    "scopes": decided.scopes,
                }));
            } else {
                write_stdout(&format!(
                    "{} {} ({}): {}\n",
                    decided.decision,
                    decided.client_name,
                    decided.client_id,
                    decided.scopes.join(" ")
                ));
            }
            return Ok(());
        }
        OauthCmd::Token {
            client_id,
            scopes,
            audience,
        } => {
            let mut secret = String::new();
            std::io::stdin().read_to_string(&mut secret).map_err(|e| {
                Failure::Usage(format!("cannot read the client secret from stdin: {e}"))
            })?;
            let secret = secret.trim();
            if secret.is_empty() {
                return Err(Failure::Usage(
                    "no client secret on standard input: pipe it in, e.g. printf %s \"$SECRET\" | datastack oauth token --client-id ocl_…".into(),
                ));
            }
            let token = client
                .client_credentials_token(
                    &ClientCredentials {
                        client_id,
                        scopes: listed(scopes),
                        audience,
                    },
                    &SecretString::from(secret.to_owned()),
                )
                .await?;
            if out.json {
                print_json(&serde_json::json!({
                    "access_token": token.access_token.expose_secret(),
                    "token_type": "Bearer",
                    "expires_in": token.expires_in,
                    "scope": token.scopes.join(" "),
                }));
            } else {
                write_stdout(&format!("{}\n", token.access_token.expose_secret()));
            }
            return Ok(());
        }
    };
    match cmd {
        ClientsCmd::Create {
            name,
            owner,
            client_type,
            grant_types,
            fields,
        } => {
            let jwks = fields.jwks()?;
            let request = CreateOAuthClient {
                jwks,
                jwks_uri: fields.jwks_uri,
                name,
                client_type,
                grant_types: listed(grant_types),
                redirect_uris: listed(fields.redirect_uris),
                scopes: listed(fields.scopes),
                audiences: listed(fields.audiences),
                access_token_ttl_seconds: fields.access_token_ttl_seconds,
                refresh_token_ttl_seconds: fields.refresh_token_ttl_seconds,
                owner_id: owner,
            };
            let created = client.create_oauth_client(&request).await?;
            print_client_with_secret(&created, out);
        }
        ClientsCmd::List { page } => {
            let limit = page.limit;
            let clients = collect_pages(&page, move |cursor| {
                client.list_oauth_clients(limit, cursor)
            })
            .await?;
            out.page(&clients, oauth_client_table);
        }
        ClientsCmd::Get { id } => {
            out.one(&client.get_oauth_client(&id).await?, oauth_client_fields);
        }
        ClientsCmd::Update { id, name, fields } => {
            let jwks = fields.jwks()?;
            let update = UpdateOAuthClient {
                jwks,
                jwks_uri: fields.jwks_uri,
                name,
                redirect_uris: listed(fields.redirect_uris),
                scopes: listed(fields.scopes),
                audiences: listed(fields.audiences),
                access_token_ttl_seconds: fields.access_token_ttl_seconds,
                refresh_token_ttl_seconds: fields.refresh_token_ttl_seconds,
            };
            out.one(
                &client.update_oauth_client(&id, &update).await?,
                oauth_client_fields,
            );
        }
        ClientsCmd::RotateSecret {
            id,
            overlap_seconds,
        } => {
            let rotated = client
                .rotate_oauth_client_secret(&id, overlap_seconds)
                .await?;
            print_client_with_secret(&rotated, out);
        }
        ClientsCmd::Delete { id } => {
            client.delete_oauth_client(&id).await?;
            out.done(&id, "deleted");
        }
    }
    Ok(())
}

/// Runs `datastack oauth issuers …`.
async fn issuers(cmd: IssuersCmd, client: &Client, out: Output) -> Result<(), Failure> {
    match cmd {
        IssuersCmd::Create {
            issuer,
            subject_claim,
            fields,
        } => {
            let request = fields.request(Some(issuer), subject_claim)?;
            out.one(
                &client.create_trusted_issuer(&request).await?,
                issuer_fields,
            );
        }
        IssuersCmd::List { page } => {
            let limit = page.limit;
            let issuers = collect_pages(&page, move |cursor| {
                client.list_trusted_issuers(limit, cursor)
            })
            .await?;
            out.page(&issuers, issuer_table);
        }
        IssuersCmd::Get { id } => {
            out.one(&client.get_trusted_issuer(&id).await?, issuer_fields);
        }
        IssuersCmd::Update { id, fields } => {
            let request = fields.request(None, None)?;
            out.one(
                &client.update_trusted_issuer(&id, &request).await?,
                issuer_fields,
            );
        }
        IssuersCmd::Delete { id } => {
            client.delete_trusted_issuer(&id).await?;
            out.done(&id, "deleted");
        }
    }
    Ok(())
}
