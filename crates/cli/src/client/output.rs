//! How the client commands print: aligned tables and `field value` lines by default, JSON
//! with `--json`. Tables and fields are rendered with plain `format!` padding.

use std::io::Write as _;

use chrono::{DateTime, Utc};
use datastack_sdk::{
    AbuseFlag, ApiKey, ApiKeyUsage, AuditEntry, BulkResult, ChainReport, CreatedApiKey,
    CreatedToken, CreatedWorkspace, GatewayRoute, IpAccessList, KeyVerdict, Me, OAuthClient,
    OAuthClientWithSecret, Page, ReviewItem, SecurityEvent, ServicePrincipal, Token, TrustedIssuer,
    User, Workspace,
};
use secrecy::ExposeSecret;
use serde_json::{Value, json};

/// How the results are printed: a table (the default) or JSON.
#[derive(Clone, Copy)]
pub(super) struct Output {
    /// Print JSON instead of tables.
    pub(super) json: bool,
}

impl Output {
    /// Prints one object as `field value` lines or as JSON.
    pub(super) fn one<T: Record>(self, value: &T, fields: fn(&T) -> Vec<(&'static str, String)>) {
        if self.json {
            print_json(&value.to_json());
        } else {
            write_stdout(&render_fields(&fields(value)));
        }
    }

    /// Prints a page as a table (and where the next page starts on stderr) or as JSON.
    pub(super) fn page<T>(self, page: &Page<T>, table: impl Fn(&[T]) -> String)
    where
        Page<T>: Record,
    {
        if self.json {
            print_json(&page.to_json());
            return;
        }
        write_stdout(&table(&page.items));
        if let Some(cursor) = &page.next_cursor {
            eprintln!("more results: pass --cursor {cursor}, or --all-pages");
        }
    }

    /// Prints a list without paging as a table, or as JSON in the shape of every list:
    /// `{"items": [...], "nextCursor": null}`, with `extra` fields beside them.
    pub(super) fn list<T: Record>(
        self,
        items: &[T],
        extra: &[(&str, Value)],
        table: impl Fn(&[T]) -> String,
    ) {
        if self.json {
            let mut object = serde_json::Map::new();
            object.insert(
                "items".to_owned(),
                Value::Array(items.iter().map(Record::to_json).collect()),
            );
            object.insert("nextCursor".to_owned(), Value::Null);
            for (name, value) in extra {
                object.insert((*name).to_owned(), value.clone());
            }
            print_json(&Value::Object(object));
        } else {
            write_stdout(&table(items));
        }
    }

    /// Prints one object as a one-row table, or as a JSON object.
    pub(super) fn item<T: Record>(self, item: &T, table: impl Fn(&[T]) -> String) {
        if self.json {
            print_json(&item.to_json());
        } else {
            write_stdout(&table(std::slice::from_ref(item)));
        }
    }

    /// Reports that an object is gone.
    pub(super) fn done(self, id: &str, what: &str) {
        if self.json {
            print_json(&json!({ "id": id, what: true }));
        } else {
            write_stdout(&format!("{what} {id}\n"));
        }
    }
}

pub(super) fn print_created_token(created: &CreatedToken, out: Output) {
    if out.json {
        let mut value = created.details.to_json();
        if let Value::Object(object) = &mut value {
            object.insert(
                "token".to_owned(),
                Value::String(created.token.expose_secret().to_owned()),
            );
        }
        print_json(&value);
        return;
    }
    write_stdout(&format!("{}\n", created.token.expose_secret()));
    let details = &created.details;
    let mut text = render_fields(&[
        ("id", details.id.clone()),
        ("label", details.label.clone()),
        ("scopes", details.scopes.join(",")),
        ("expires", when_or(details.expires_at.as_ref(), "never")),
    ]);
    text.push_str("The token above is shown only this once: store it now.\n");
    write_stderr(&text);
}

/// A created client, or one whose secret was rotated: the secret alone on stdout, details
/// on stderr (or JSON with `clientSecret`).
pub(super) fn print_client_with_secret(created: &OAuthClientWithSecret, out: Output) {
    if out.json {
        let mut value = created.client.to_json();
        if let Value::Object(object) = &mut value {
            object.insert(
                "clientSecret".to_owned(),
                created
                    .client_secret
                    .as_ref()
                    .map_or(Value::Null, |s| Value::String(s.expose_secret().to_owned())),
            );
        }
        print_json(&value);
        return;
    }
    let mut text = render_fields(&oauth_client_fields(&created.client));
    match &created.client_secret {
        Some(secret) => {
            write_stdout(&format!("{}\n", secret.expose_secret()));
            text.push_str("The client secret above is shown only this once: store it now.\n");
            write_stderr(&text);
        }
        None => write_stdout(&text),
    }
}

/// The fields of one OAuth client.
pub(super) fn oauth_client_fields(c: &OAuthClient) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("client id", c.client_id.clone()),
        ("name", c.name.clone()),
        ("type", c.client_type.clone()),
        ("grants", c.grant_types.join(",")),
        (
            "owner",
            c.owner_id.clone().unwrap_or_else(|| "none".to_owned()),
        ),
        ("scopes", c.scopes.join(",")),
        ("audiences", c.audiences.join(",")),
        (
            "token lifetime",
            format!("{} s", c.access_token_ttl_seconds),
        ),
        (
            "secret",
            c.secret_last_four
                .as_ref()
                .map_or_else(|| "none".to_owned(), |l| format!("dcsk…{l}")),
        ),
        ("created", when(&c.created_at)),
        ("last used", when_or(c.last_used_at.as_ref(), "never")),
    ];
    if !c.redirect_uris.is_empty() {
        fields.push(("redirect uris", c.redirect_uris.join(",")));
    }
    if let Some(until) = &c.previous_secret_expires_at {
        fields.push(("previous secret until", when(until)));
    }
    fields
}

/// OAuth clients as a table.
pub(super) fn oauth_client_table(clients: &[OAuthClient]) -> String {
    let rows = clients
        .iter()
        .map(|c| {
            vec![
                c.client_id.clone(),
                c.name.clone(),
                c.client_type.clone(),
                c.owner_id.clone().unwrap_or_else(|| "-".to_owned()),
                c.scopes.join(","),
                when_or(c.last_used_at.as_ref(), "never"),
            ]
        })
        .collect();
    render_table(
        &["CLIENT ID", "NAME", "TYPE", "OWNER", "SCOPES", "LAST USED"],
        rows,
    )
}

/// A created or rotated key: the secret alone on stdout, details on stderr (or JSON).
pub(super) fn print_created_key(created: &CreatedApiKey, out: Output) {
    if out.json {
        let mut value = created.details.to_json();
        if let Value::Object(object) = &mut value {
            object.insert(
                "key".to_owned(),
                Value::String(created.key.expose_secret().to_owned()),
            );
        }
        print_json(&value);
        return;
    }
    write_stdout(&format!("{}\n", created.key.expose_secret()));
    let mut text = render_fields(&api_key_fields(&created.details));
    text.push_str("The key above is shown only this once: store it now.\n");
    write_stderr(&text);
}

fn limits(k: &ApiKey) -> String {
    let rate = k
        .rate_limit
        .map_or_else(|| "default".to_owned(), |r| format!("{r}/min"));
    let spend = k.spend_limit.as_ref().map_or_else(
        || "none".to_owned(),
        |l| format!("{}/{}", l.units, l.period),
    );
    format!("rate {rate}, spend {spend}")
}

/// The fields of one key.
pub(super) fn api_key_fields(k: &ApiKey) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("id", k.id.clone()),
        ("name", k.name.clone()),
        ("key", format!("{}…{}", k.prefix, k.last_four)),
        ("status", k.status.clone()),
        ("owner", k.owner_id.clone()),
        ("scopes", k.scopes.join(",")),
        ("limits", limits(k)),
        (
            "ip ranges",
            k.allowed_ip_ranges
                .as_ref()
                .map_or_else(|| "any".to_owned(), |r| r.join(",")),
        ),
        ("created", when(&k.created_at)),
        ("expires", when_or(k.expires_at.as_ref(), "never")),
        ("rotated", when(&k.rotated_at)),
        (
            "rotation due",
            when_or(k.rotation_due_at.as_ref(), "no policy"),
        ),
        ("last used", when_or(k.last_used_at.as_ref(), "never")),
    ];
    for s in k.secrets.iter().filter(|s| !s.current) {
        fields.push((
            "previous key",
            format!(
                "{}…{} until {}",
                k.prefix,
                s.last_four,
                when_or(s.expires_at.as_ref(), "the key expires")
            ),
        ));
    }
    if !k.metadata.is_empty() {
        fields.push(("metadata", Value::Object(k.metadata.clone()).to_string()));
    }
    fields
}

/// Keys as a table.
pub(super) fn api_key_table(keys: &[ApiKey]) -> String {
    let rows = keys
        .iter()
        .map(|k| {
            vec![
                k.id.clone(),
                k.name.clone(),
                format!("{}…{}", k.prefix, k.last_four),
                k.status.clone(),
                k.owner_id.clone(),
                k.scopes.join(","),
                limits(k),
                when_or(k.expires_at.as_ref(), "never"),
                when_or(k.last_used_at.as_ref(), "never"),
            ]
        })
        .collect();
    render_table(
        &[
            "ID",
            "NAME",
            "KEY",
            "STATUS",
            "OWNER",
            "SCOPES",
            "LIMITS",
            "EXPIRES",
            "LAST USED",
        ],
        rows,
    )
}

/// A key's usage.
pub(super) fn usage_fields(u: &ApiKeyUsage) -> Vec<(&'static str, String)> {
    vec![
        ("key", u.key_id.clone()),
        ("period", u.period.clone()),
        ("period start", when(&u.period_start)),
        (
            "period end",
            when_or(u.period_end.as_ref(), "never (total)"),
        ),
        ("used", u.used.to_string()),
        (
            "limit",
            u.limit.map_or_else(|| "none".to_owned(), |l| l.to_string()),
        ),
        (
            "remaining",
            u.remaining
                .map_or_else(|| "unlimited".to_owned(), |r| r.to_string()),
        ),
    ]
}

/// A verdict on a key.
pub(super) fn verdict_fields(v: &KeyVerdict) -> Vec<(&'static str, String)> {
    let opt = |s: &Option<String>| s.clone().unwrap_or_else(|| "-".to_owned());
    let mut fields = vec![
        ("valid", v.valid.to_string()),
        ("code", v.code.clone()),
        ("key", opt(&v.key_id)),
        ("owner", opt(&v.owner)),
    ];
    if let Some(scopes) = &v.scopes {
        fields.push(("scopes", scopes.join(",")));
    }
    if let Some(r) = &v.remaining {
        fields.push((
            "rate limit left",
            r.rate_limit
                .map_or_else(|| "-".to_owned(), |n| n.to_string()),
        ));
        fields.push((
            "spend left",
            r.spend
                .map_or_else(|| "unlimited".to_owned(), |n| n.to_string()),
        ));
    }
    if let Some(at) = &v.resets_at {
        fields.push(("resets", when(at)));
    }
    fields
}

pub(super) fn print_created_workspace(created: &CreatedWorkspace, out: Output) {
    if out.json {
        let mut value = json!({ "workspace": created.workspace.to_json() });
        if let Some(admin) = &created.admin {
            value["admin"] = admin.to_json();
        }
        if let Some(token) = &created.admin_token {
            value["adminToken"] = Value::String(token.expose_secret().to_owned());
        }
        print_json(&value);
        return;
    }
    let mut fields = workspace_fields(&created.workspace);
    if let Some(admin) = &created.admin {
        fields.push(("admin", format!("{} {}", admin.id, admin.email)));
    }
    match &created.admin_token {
        Some(token) => {
            write_stdout(&format!("{}\n", token.expose_secret()));
            let mut text = render_fields(&fields);
            text.push_str("The admin token above is shown only this once: store it now.\n");
            write_stderr(&text);
        }
        None => write_stdout(&render_fields(&fields)),
    }
}

pub(super) fn route_table(routes: &[GatewayRoute]) -> String {
    let rows = routes
        .iter()
        .map(|r| {
            vec![
                r.id.clone().unwrap_or_else(|| "(config)".to_owned()),
                r.path_prefix.clone(),
                r.upstream
                    .clone()
                    .unwrap_or_else(|| "(forward-auth only)".to_owned()),
                r.resource.clone(),
                if r.strip_prefix { "yes" } else { "no" }.to_owned(),
                r.timeout_ms.to_string(),
                r.price_per_request.to_string(),
                r.cost_header.clone().unwrap_or_else(|| "-".to_owned()),
                r.method_scopes
                    .iter()
                    .map(|(m, s)| format!("{m}={s}"))
                    .collect::<Vec<_>>()
                    .join(","),
            ]
        })
        .collect();
    render_table(
        &[
            "ID",
            "PREFIX",
            "UPSTREAM",
            "RESOURCE",
            "STRIP",
            "TIMEOUT MS",
            "PRICE",
            "COST HEADER",
            "METHOD SCOPES",
        ],
        rows,
    )
}

pub(super) fn ip_list_table(lists: &[IpAccessList]) -> String {
    let rows = lists
        .iter()
        .map(|l| {
            vec![
                l.id.clone(),
                l.label.clone(),
                l.list_type.clone(),
                if l.enabled { "enabled" } else { "disabled" }.to_owned(),
                l.ip_addresses.join(","),
                when(&l.updated_at),
            ]
        })
        .collect();
    render_table(
        &["ID", "LABEL", "TYPE", "STATE", "ADDRESSES", "UPDATED"],
        rows,
    )
}

pub(super) fn abuse_table(flags: &[AbuseFlag]) -> String {
    let rows = flags
        .iter()
        .map(|f| {
            vec![
                f.id.clone(),
                format!("{} {}", f.subject_kind, f.subject),
                f.level.to_string(),
                f.rejected.to_string(),
                when(&f.flagged_at),
                when(&f.penalty_until),
                f.status.clone(),
            ]
        })
        .collect();
    render_table(
        &[
            "ID",
            "SUBJECT",
            "LEVEL",
            "REFUSED",
            "FLAGGED",
            "PENALTY UNTIL",
            "STATUS",
        ],
        rows,
    )
}

pub(super) fn token_table(tokens: &[Token], show_owner: bool) -> String {
    let mut headers = vec![
        "ID",
        "LABEL",
        "TOKEN",
        "SCOPES",
        "CREATED",
        "EXPIRES",
        "LAST USED",
    ];
    if show_owner {
        headers.push("OWNER");
    }
    let rows = tokens
        .iter()
        .map(|t| {
            let last_used = match (&t.last_used_at, &t.last_used_ip) {
                (Some(at), Some(ip)) => format!("{} from {ip}", when(at)),
                (Some(at), None) => when(at),
                (None, _) => "never".to_owned(),
            };
            let mut row = vec![
                t.id.clone(),
                t.label.clone(),
                format!("{}…{}", t.prefix, t.last_four),
                t.scopes.join(","),
                when(&t.created_at),
                when_or(t.expires_at.as_ref(), "never"),
                last_used,
            ];
            if show_owner {
                row.push(t.owner_id.clone());
            }
            row
        })
        .collect();
    render_table(&headers, rows)
}

pub(super) fn user_table(users: &[User]) -> String {
    let rows = users
        .iter()
        .map(|u| {
            vec![
                u.id.clone(),
                u.email.clone(),
                u.name.clone(),
                u.role.to_string(),
                u.status.to_string(),
                when(&u.created_at),
            ]
        })
        .collect();
    render_table(&["ID", "EMAIL", "NAME", "ROLE", "STATUS", "CREATED"], rows)
}

pub(super) fn user_fields(user: &User) -> Vec<(&'static str, String)> {
    vec![
        ("id", user.id.clone()),
        ("email", user.email.clone()),
        ("name", user.name.clone()),
        ("role", user.role.to_string()),
        ("status", user.status.to_string()),
        ("workspace", user.workspace_id.clone()),
        ("created", when(&user.created_at)),
        ("updated", when(&user.updated_at)),
    ]
}

pub(super) fn service_principal_table(principals: &[ServicePrincipal]) -> String {
    let rows = principals
        .iter()
        .map(|p| {
            vec![
                p.id.clone(),
                p.name.clone(),
                p.role.to_string(),
                p.status.to_string(),
                when(&p.created_at),
            ]
        })
        .collect();
    render_table(&["ID", "NAME", "ROLE", "STATUS", "CREATED"], rows)
}

pub(super) fn service_principal_fields(
    principal: &ServicePrincipal,
) -> Vec<(&'static str, String)> {
    vec![
        ("id", principal.id.clone()),
        ("name", principal.name.clone()),
        ("role", principal.role.to_string()),
        ("status", principal.status.to_string()),
        ("workspace", principal.workspace_id.clone()),
        ("created", when(&principal.created_at)),
        ("updated", when(&principal.updated_at)),
    ]
}

pub(super) fn workspace_table(workspaces: &[Workspace]) -> String {
    let rows = workspaces
        .iter()
        .map(|w| {
            vec![
                w.id.clone(),
                w.name.clone(),
                max_lifetime(w),
                when(&w.created_at),
            ]
        })
        .collect();
    render_table(&["ID", "NAME", "MAX TOKEN LIFETIME", "CREATED"], rows)
}

pub(super) fn workspace_fields(workspace: &Workspace) -> Vec<(&'static str, String)> {
    vec![
        ("id", workspace.id.clone()),
        ("name", workspace.name.clone()),
        ("status", workspace.status.to_string()),
        ("max token lifetime", max_lifetime(workspace)),
        ("created", when(&workspace.created_at)),
        ("updated", when(&workspace.updated_at)),
    ]
}

fn max_lifetime(workspace: &Workspace) -> String {
    match workspace.settings.max_token_lifetime_days {
        Some(days) => format!("{days} days"),
        None => "none".to_owned(),
    }
}

pub(super) fn me_fields(me: &Me) -> Vec<(&'static str, String)> {
    let principal = &me.principal;
    let who = match &principal.email {
        Some(email) => format!("{} <{email}>", principal.name),
        None => principal.name.clone(),
    };
    vec![
        (
            "principal",
            format!("{} ({})", principal.id, principal.kind),
        ),
        ("name", who),
        ("role", principal.role.to_string()),
        ("status", principal.status.to_string()),
        (
            "workspace",
            format!("{} ({})", me.workspace.id, me.workspace.name),
        ),
        (
            "credential",
            format!("{} ({})", me.credential.id, me.credential.kind),
        ),
        ("scopes", me.credential.scopes.join(",")),
        (
            "expires",
            when_or(me.credential.expires_at.as_ref(), "never"),
        ),
    ]
}

pub(super) fn when(at: &DateTime<Utc>) -> String {
    at.format("%Y-%m-%d %H:%M:%SZ").to_string()
}

pub(super) fn when_or(at: Option<&DateTime<Utc>>, otherwise: &str) -> String {
    at.map_or_else(|| otherwise.to_owned(), when)
}

/// Left-aligned columns separated by two spaces; the last column is not padded.
pub(super) fn render_table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let header_row: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    let mut text = String::new();
    for row in std::iter::once(&header_row).chain(rows.iter()) {
        let last = row.len().saturating_sub(1);
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i == last {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        text.push_str(line.trim_end());
        text.push('\n');
    }
    text
}

/// `name  value` lines with the names aligned.
pub(super) fn render_fields(fields: &[(&str, String)]) -> String {
    let width = fields
        .iter()
        .map(|(name, _)| name.chars().count())
        .max()
        .unwrap_or(0);
    fields
        .iter()
        .map(|(name, value)| format!("{name:<width$}  {value}\n"))
        .collect()
}

/// An API type that prints as JSON.
///
/// The binary does not depend on `serde` itself, so it cannot name `Serialize` in a bound;
/// the conversion is spelled out per concrete type instead.
pub(super) trait Record {
    /// The value as the API would send it.
    fn to_json(&self) -> Value;
}

macro_rules! impl_record {
    ($($ty:ty),* $(,)?) => {
        $(impl Record for $ty {
            fn to_json(&self) -> Value {
                // Serialising plain data structs cannot fail: their keys are strings and
                // their numbers finite.
                serde_json::to_value(self).unwrap_or(Value::Null)
            }
        })*
    };
}

impl_record!(
    Page<AuditEntry>,
    Page<SecurityEvent>,
    Page<ReviewItem>,
    User,
    ServicePrincipal,
    Workspace,
    Token,
    Me,
    Page<User>,
    Page<ServicePrincipal>,
    Page<Workspace>,
    Page<Token>,
    GatewayRoute,
    IpAccessList,
    AbuseFlag,
    ApiKey,
    Page<ApiKey>,
    ApiKeyUsage,
    KeyVerdict,
    OAuthClient,
    Page<OAuthClient>,
    TrustedIssuer,
    Page<TrustedIssuer>,
);

pub(super) fn issuer_fields(i: &TrustedIssuer) -> Vec<(&'static str, String)> {
    vec![
        ("id", i.id.clone()),
        ("issuer", i.issuer.clone()),
        (
            "keys",
            i.jwks_uri
                .clone()
                .unwrap_or_else(|| "by discovery".to_owned()),
        ),
        ("audiences", i.audiences.join(", ")),
        ("algorithms", i.algorithms.join(", ")),
        ("subject claim", i.subject_claim.clone()),
        ("provisioning", i.provisioning.clone()),
        ("scope claim", i.scope_claim.clone()),
        ("scopes", i.scopes.join(" ")),
        ("created", i.created_at.to_rfc3339()),
    ]
}

pub(super) fn issuer_table(issuers: &[TrustedIssuer]) -> String {
    let rows = issuers
        .iter()
        .map(|i| {
            vec![
                i.id.clone(),
                i.issuer.clone(),
                i.subject_claim.clone(),
                i.provisioning.clone(),
                i.scopes.join(","),
            ]
        })
        .collect();
    render_table(&["ID", "ISSUER", "SUBJECT", "PROVISIONING", "SCOPES"], rows)
}

pub(super) fn print_json(value: &Value) {
    let text = serde_json::to_string_pretty(value).unwrap_or_else(|_| "null".to_owned());
    write_stdout(&format!("{text}\n"));
}

/// Writes to stdout, ignoring a closed pipe (`datastack users list | head`) instead of
/// panicking as `println!` would.
pub(super) fn write_stdout(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

pub(super) fn write_stderr(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

pub(super) fn audit_table(entries: &[AuditEntry]) -> String {
    let rows = entries
        .iter()
        .map(|e| {
            vec![
                e.seq.to_string(),
                when(&e.time),
                e.action.clone(),
                e.outcome.clone(),
                e.status.to_string(),
                e.principal_id.clone().unwrap_or_else(|| "-".to_owned()),
                e.credential_id.clone().unwrap_or_else(|| "-".to_owned()),
                e.resource_id.clone().unwrap_or_else(|| "-".to_owned()),
                e.source_ip.clone().unwrap_or_else(|| "-".to_owned()),
                e.request_id.clone().unwrap_or_else(|| "-".to_owned()),
            ]
        })
        .collect();
    render_table(
        &[
            "SEQ",
            "TIME",
            "ACTION",
            "OUTCOME",
            "STATUS",
            "PRINCIPAL",
            "CREDENTIAL",
            "RESOURCE",
            "IP",
            "REQUEST",
        ],
        rows,
    )
}

pub(super) fn security_event_table(events: &[SecurityEvent]) -> String {
    let rows = events
        .iter()
        .map(|e| {
            vec![
                e.id.clone(),
                when(&e.time),
                e.event_type.clone(),
                e.payload.to_string(),
            ]
        })
        .collect();
    render_table(&["ID", "TIME", "TYPE", "PAYLOAD"], rows)
}

pub(super) fn review_table(items: &[ReviewItem]) -> String {
    let rows = items
        .iter()
        .map(|i| {
            vec![
                i.credential_id.clone(),
                i.label.clone(),
                i.owner
                    .as_ref()
                    .map(|o| o.email.clone().unwrap_or_else(|| o.name.clone()))
                    .unwrap_or_else(|| "-".to_owned()),
                i.scopes.join(","),
                format!("{}d", i.age_days),
                i.last_used_at
                    .as_ref()
                    .map_or_else(|| "never".to_owned(), when),
                when_or(i.expires_at.as_ref(), "never"),
                if i.flags.is_empty() {
                    "-".to_owned()
                } else {
                    i.flags.join(",")
                },
                i.suggested_scopes
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |s| s.join(",")),
            ]
        })
        .collect();
    render_table(
        &[
            "CREDENTIAL",
            "LABEL",
            "OWNER",
            "SCOPES",
            "AGE",
            "LAST USED",
            "EXPIRES",
            "FLAGS",
            "SUGGESTED",
        ],
        rows,
    )
}

pub(super) fn print_chain_report(report: &ChainReport, out: Output) {
    if out.json {
        print_json(&serde_json::to_value(report).unwrap_or(Value::Null));
        return;
    }
    let mut fields = vec![
        ("workspace", report.workspace_id.clone()),
        ("intact", report.ok.to_string()),
        ("checked", report.checked.to_string()),
        ("head", report.head_seq.to_string()),
    ];
    if let Some(c) = &report.checkpoint {
        fields.push(("checkpoint", c.to_string()));
    }
    if let Some(b) = &report.first_break {
        let problem = b["problem"].as_str().unwrap_or("broken").to_owned();
        let at = b["id"]
            .as_str()
            .or_else(|| b["afterId"].as_str())
            .unwrap_or("-");
        match b["reason"].as_str() {
            Some(reason) => fields.push((
                "first break",
                format!(
                    "{problem} ({reason}) at {at}, resumed after seq {}",
                    b["resumedAfterSeq"]
                ),
            )),
            None => fields.push(("first break", format!("{problem} at {at}"))),
        }
    }
    for b in &report.breaks {
        let status = match b["acknowledged"].as_object() {
            Some(a) => format!(
                "acknowledged by {} ({})",
                a.get("by").and_then(Value::as_str).unwrap_or("-"),
                a.get("reason").and_then(Value::as_str).unwrap_or("-")
            ),
            None => "NOT acknowledged".to_owned(),
        };
        fields.push((
            "recorded break",
            format!(
                "{} {} at seq {} ({}), resumed after seq {}: {status}",
                b["id"].as_str().unwrap_or("-"),
                b["reason"].as_str().unwrap_or("-"),
                b["seq"],
                b["time"].as_str().unwrap_or("-"),
                b["resumedAfterSeq"]
            ),
        ));
    }
    write_stdout(&render_fields(&fields));
}

pub(super) fn print_bulk(result: &BulkResult, verb: &str, out: Output) {
    if out.json {
        print_json(&serde_json::to_value(result).unwrap_or(Value::Null));
        return;
    }
    let mut text = String::new();
    for c in &result.changed {
        match &c.scopes {
            Some(scopes) => text.push_str(&format!(
                "{verb} {} to {}\n",
                c.credential_id,
                scopes.join(",")
            )),
            None => text.push_str(&format!("{verb} {}\n", c.credential_id)),
        }
    }
    for id in &result.unchanged {
        text.push_str(&format!("unchanged {id}\n"));
    }
    for id in &result.not_found {
        text.push_str(&format!("not found {id}\n"));
    }
    write_stdout(&text);
}
