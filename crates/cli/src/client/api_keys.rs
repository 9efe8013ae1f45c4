//! `datastack api-keys …`: scoped API keys.

use std::io::Read as _;

use datastack_sdk::{
    Client, CreateApiKey, ListApiKeys, RotationPolicy, SpendLimit, UpdateApiKey, VerifyApiKey,
};
use secrecy::SecretString;

use super::output::{
    Output, api_key_fields, api_key_table, print_created_key, usage_fields, verdict_fields,
};
use super::{Failure, PageArgs, collect_pages};

/// `datastack api-keys …`
#[derive(clap::Subcommand, Debug)]
pub enum ApiKeysCmd {
    /// Create a key. The secret is printed once, alone on stdout; details go to stderr.
    Create {
        /// What the key is for (1–200 characters).
        #[arg(long)]
        name: String,
        /// A scope to grant, e.g. read:jobs; repeat for more (at least one).
        #[arg(long = "scope", value_name = "SCOPE", required = true)]
        scopes: Vec<String>,
        /// Lifetime in days (1–36500).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=36500))]
        expires_in_days: Option<u32>,
        #[command(flatten)]
        limits: LimitArgs,
        /// A JSON object stored with the key (at most 4 KiB).
        #[arg(long, value_name = "JSON")]
        metadata: Option<String>,
        /// Admins only: the service principal (sp_…) the key acts for.
        #[arg(long, value_name = "ID")]
        owner: Option<String>,
    },
    /// List keys (never their secrets).
    List {
        /// One principal's keys (admins; others see their own).
        #[arg(long, value_name = "ID")]
        owner: Option<String>,
        /// active, rotation_due, expired or revoked.
        #[arg(long)]
        status: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one key, with its secrets' expiry.
    Get {
        /// The key id, key_…
        id: String,
    },
    /// Change a key's name, limits, ranges, metadata or rotation policy.
    Update {
        /// The key id, key_…
        id: String,
        /// A new name.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        limits: LimitArgs,
        /// Drop the key's own rate limit (the server default applies).
        #[arg(long, conflicts_with = "rate_limit")]
        no_rate_limit: bool,
        /// Drop the spend limit.
        #[arg(long, conflicts_with = "spend_limit")]
        no_spend_limit: bool,
        /// Allow any address again (the workspace's IP access lists still apply).
        #[arg(long, conflicts_with = "allow_ip")]
        any_ip: bool,
        /// Drop the rotation policy.
        #[arg(long, conflicts_with = "rotate_every_days")]
        no_rotation_policy: bool,
        /// A JSON object replacing the metadata.
        #[arg(long, value_name = "JSON")]
        metadata: Option<String>,
    },
    /// Give a key a new secret (printed once); the previous one keeps working for the
    /// overlap.
    Rotate {
        /// The key id, key_…
        id: String,
        /// How long the previous secret keeps working (default: the server's, 24 h).
        #[arg(long)]
        overlap_seconds: Option<u64>,
    },
    /// Revoke a key; both its secrets are refused from the next request.
    Revoke {
        /// The key id, key_…
        id: String,
    },
    /// Show a key's spend in its current period.
    Usage {
        /// The key id, key_…
        id: String,
    },
    /// Check a key read from standard input (never from the command line, where other
    /// users could see it), as a service that authenticates with datastack keys would.
    Verify {
        /// A scope the key must hold.
        #[arg(long)]
        scope: Option<String>,
        /// The address the key was presented from.
        #[arg(long)]
        ip: Option<String>,
        /// Spend units to charge for this use.
        #[arg(long)]
        cost: Option<u64>,
    },
}

/// The limits a key can carry.
#[derive(clap::Args, Debug)]
pub struct LimitArgs {
    /// Requests per minute (replaces the server's default per credential).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    rate_limit: Option<u32>,
    /// Spend units per period.
    #[arg(long, value_name = "UNITS")]
    spend_limit: Option<u64>,
    /// The spend period: day, month (default) or total.
    #[arg(long, requires = "spend_limit", value_parser = ["day", "month", "total"])]
    spend_period: Option<String>,
    /// A client range the key may be used from (CIDR or address); repeat for more.
    #[arg(long = "allow-ip", value_name = "CIDR")]
    allow_ip: Vec<String>,
    /// Rotate every this many days.
    #[arg(long, value_name = "DAYS")]
    rotate_every_days: Option<u32>,
}

impl LimitArgs {
    fn spend(&self) -> Option<SpendLimit> {
        self.spend_limit.map(|units| SpendLimit {
            units,
            period: self
                .spend_period
                .clone()
                .unwrap_or_else(|| "month".to_owned()),
        })
    }

    fn ranges(&self) -> Option<Vec<String>> {
        (!self.allow_ip.is_empty()).then(|| self.allow_ip.clone())
    }
}

fn metadata(
    text: Option<&str>,
) -> Result<Option<serde_json::Map<String, serde_json::Value>>, Failure> {
    match text {
        None => Ok(None),
        Some(t) => match serde_json::from_str(t) {
            Ok(serde_json::Value::Object(m)) => Ok(Some(m)),
            _ => Err(Failure::Usage("--metadata must be a JSON object".into())),
        },
    }
}

/// Runs `datastack api-keys …`.
pub(super) async fn api_keys(cmd: ApiKeysCmd, client: &Client, out: Output) -> Result<(), Failure> {
    match cmd {
        ApiKeysCmd::Create {
            name,
            scopes,
            expires_in_days,
            limits,
            metadata: meta,
            owner,
        } => {
            let request = CreateApiKey {
                name,
                scopes,
                expires_in_days,
                rate_limit: limits.rate_limit,
                spend_limit: limits.spend(),
                allowed_ip_ranges: limits.ranges(),
                metadata: metadata(meta.as_deref())?,
                rotation_policy: limits
                    .rotate_every_days
                    .map(|interval_days| RotationPolicy { interval_days }),
                owner_id: owner,
            };
            let created = client.create_api_key(&request).await?;
            print_created_key(&created, out);
        }
        ApiKeysCmd::List {
            owner,
            status,
            page,
        } => {
            let limit = page.limit;
            let keys = collect_pages(&page, move |cursor| {
                client.list_api_keys(ListApiKeys {
                    owner_id: owner.clone(),
                    status: status.clone(),
                    limit,
                    cursor,
                })
            })
            .await?;
            out.page(&keys, api_key_table);
        }
        ApiKeysCmd::Get { id } => out.one(&client.get_api_key(&id).await?, api_key_fields),
        ApiKeysCmd::Update {
            id,
            name,
            limits,
            no_rate_limit,
            no_spend_limit,
            any_ip,
            no_rotation_policy,
            metadata: meta,
        } => {
            let update = UpdateApiKey {
                name,
                rate_limit: if no_rate_limit {
                    Some(None)
                } else {
                    limits.rate_limit.map(Some)
                },
                spend_limit: if no_spend_limit {
                    Some(None)
                } else {
                    limits.spend().map(Some)
                },
                allowed_ip_ranges: if any_ip {
                    Some(None)
                } else {
                    limits.ranges().map(Some)
                },
                metadata: metadata(meta.as_deref())?,
                rotation_policy: if no_rotation_policy {
                    Some(None)
                } else {
                    limits
                        .rotate_every_days
                        .map(|interval_days| Some(RotationPolicy { interval_days }))
                },
            };
            out.one(&client.update_api_key(&id, &update).await?, api_key_fields);
        }
        ApiKeysCmd::Rotate {
            id,
            overlap_seconds,
        } => {
            let rotated = client.rotate_api_key(&id, overlap_seconds).await?;
            print_created_key(&rotated, out);
        }
        ApiKeysCmd::Revoke { id } => {
            client.revoke_api_key(&id).await?;
            out.done(&id, "revoked");
        }
        ApiKeysCmd::Usage { id } => out.one(&client.api_key_usage(&id).await?, usage_fields),
        ApiKeysCmd::Verify { scope, ip, cost } => {
            let mut key = String::new();
            std::io::stdin()
                .read_to_string(&mut key)
                .map_err(|e| Failure::Usage(format!("cannot read the key from stdin: {e}")))?;
            let key = key.trim();
            if key.is_empty() {
                return Err(Failure::Usage(
                    "no key on standard input: pipe the key in, e.g. printf %s \"$KEY\" | datastack api-keys verify".into(),
                ));
            }
            let request = VerifyApiKey {
                key: Some(SecretString::from(key.to_owned())),
                scope,
                ip,
                cost,
            };
            let verdict = client.verify_api_key(&request).await?;
            out.one(&verdict, verdict_fields);
            if !verdict.valid {
                return Err(Failure::KeyNotValid);
            }
        }
    }
    Ok(())
}
