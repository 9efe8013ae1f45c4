//! `datastack webhooks …` and `datastack events publish`.

use std::io::Read as _;

use chrono::{DateTime, Utc};
use datastack_sdk::{
    Client, CreateWebhook, Delivery, DeliveryDetail, EventType, ListDeliveries, Page,
    PublishedEvent, UpdateWebhook, Webhook, WebhookWithSecret,
};
use secrecy::{ExposeSecret, SecretString};
use serde_json::Value;

use super::output::{
    Output, Record, print_json, render_fields, render_table, when, when_or, write_stderr,
    write_stdout,
};
use super::{Failure, PageArgs, collect_pages};

/// `datastack webhooks …`
#[derive(clap::Subcommand, Debug)]
pub enum WebhooksCmd {
    /// Register a webhook. Its secret is printed once, alone on stdout; details go to
    /// stderr.
    Create {
        /// Where deliveries go: https://… (http:// only to networks the operator allows).
        #[arg(long)]
        url: String,
        /// An event type, `group.*` or `*`; repeat for more (at least one).
        #[arg(long = "event", value_name = "TYPE", required = true)]
        events: Vec<String>,
        /// For people (at most 500 characters).
        #[arg(long)]
        description: Option<String>,
        /// Deliveries per second at most (1–10000).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        rate_limit: Option<u32>,
        /// A JSON object stored with the webhook (at most 4 KiB).
        #[arg(long, value_name = "JSON")]
        metadata: Option<String>,
        /// Read the secret (whsec_…) from standard input instead of generating one.
        #[arg(long)]
        secret_stdin: bool,
    },
    /// List webhooks (never their secrets).
    List {
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one webhook.
    Get {
        /// The webhook id, wh_…
        id: String,
    },
    /// Change a webhook's URL, events, description, rate limit or metadata.
    Update {
        /// The webhook id, wh_…
        id: String,
        /// A new URL.
        #[arg(long)]
        url: Option<String>,
        /// New event filters (repeat); replaces the old ones.
        #[arg(long = "event", value_name = "TYPE")]
        events: Vec<String>,
        /// A new description.
        #[arg(long, conflicts_with = "no_description")]
        description: Option<String>,
        /// Remove the description.
        #[arg(long)]
        no_description: bool,
        /// A new rate limit.
        #[arg(long, conflicts_with = "no_rate_limit", value_parser = clap::value_parser!(u32).range(1..=10_000))]
        rate_limit: Option<u32>,
        /// Remove the rate limit.
        #[arg(long)]
        no_rate_limit: bool,
        /// A JSON object replacing the metadata.
        #[arg(long, value_name = "JSON")]
        metadata: Option<String>,
    },
    /// Delete a webhook and its deliveries.
    Delete {
        /// The webhook id, wh_…
        id: String,
    },
    /// Pause deliveries (events are kept and sent on resume).
    Pause {
        /// The webhook id, wh_…
        id: String,
    },
    /// Resume a paused or disabled webhook.
    Resume {
        /// The webhook id, wh_…
        id: String,
    },
    /// Send a test.ping to the webhook.
    Test {
        /// The webhook id, wh_…
        id: String,
    },
    /// List a webhook's deliveries, newest first.
    Deliveries {
        /// The webhook id, wh_…
        id: String,
        /// pending, succeeded or failed.
        #[arg(long, value_parser = ["pending", "succeeded", "failed"])]
        status: Option<String>,
        /// One event type.
        #[arg(long = "type", value_name = "TYPE")]
        event_type: Option<String>,
        /// Events queued at or after (RFC 3339).
        #[arg(long)]
        since: Option<DateTime<Utc>>,
        /// Events queued before (RFC 3339).
        #[arg(long)]
        until: Option<DateTime<Utc>>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one delivery with every attempt.
    Delivery {
        /// The webhook id, wh_…
        id: String,
        /// The delivery (event) id, evt_…
        delivery: String,
    },
    /// Send a delivery again now (same request_id and webhook-id).
    Redeliver {
        /// The webhook id, wh_…
        id: String,
        /// The delivery (event) id, evt_…
        delivery: String,
    },
    /// Send again every failed delivery of an event queued since a time.
    Replay {
        /// The webhook id, wh_…
        id: String,
        /// RFC 3339, e.g. 2026-12-08T00:00:00Z.
        #[arg(long)]
        since: DateTime<Utc>,
    },
    /// Give the webhook a new secret (printed once); the old one also signs during the
    /// overlap.
    RotateSecret {
        /// The webhook id, wh_…
        id: String,
        /// How long the old secret keeps signing too (0–604800).
        #[arg(long)]
        overlap_seconds: Option<u64>,
        /// Read the new secret (whsec_…) from standard input instead of generating one.
        #[arg(long)]
        secret_stdin: bool,
    },
    /// List the event types webhooks can take.
    EventTypes,
}

/// `datastack events …`
#[derive(clap::Subcommand, Debug)]
pub enum EventsCmd {
    /// Publish an event an upstream service raised (a type whose source is upstream).
    Publish {
        /// The event type, e.g. job.completed.
        #[arg(long = "type", value_name = "TYPE")]
        event_type: String,
        /// The event's data, a JSON object; `-` reads it from standard input.
        #[arg(long, value_name = "JSON")]
        data: String,
    },
}

fn object(text: Option<&str>) -> Result<Option<serde_json::Map<String, Value>>, Failure> {
    match text {
        None => Ok(None),
        Some(t) => match serde_json::from_str(t) {
            Ok(Value::Object(m)) => Ok(Some(m)),
            _ => Err(Failure::Usage("--metadata must be a JSON object".into())),
        },
    }
}

fn secret_from_stdin() -> Result<SecretString, Failure> {
    let mut text = String::new();
    std::io::stdin()
        .take(4096)
        .read_to_string(&mut text)
        .map_err(|e| Failure::Usage(format!("cannot read the secret from standard input: {e}")))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(Failure::Usage("no secret on standard input".into()));
    }
    Ok(SecretString::from(text.to_owned()))
}

/// Runs `datastack webhooks …`.
pub(super) async fn webhooks(
    cmd: WebhooksCmd,
    client: &Client,
    out: Output,
) -> Result<(), Failure> {
    match cmd {
        WebhooksCmd::Create {
            url,
            events,
            description,
            rate_limit,
            metadata,
            secret_stdin,
        } => {
            let secret = if secret_stdin {
                Some(secret_from_stdin()?.expose_secret().to_owned())
            } else {
                None
            };
            let request = CreateWebhook {
                url,
                events,
                secret,
                description,
                rate_limit,
                metadata: object(metadata.as_deref())?,
            };
            print_with_secret(&client.create_webhook(&request).await?, out);
        }
        WebhooksCmd::List { page } => {
            let limit = page.limit;
            let hooks =
                collect_pages(&page, move |cursor| client.list_webhooks(limit, cursor)).await?;
            out.page(&hooks, webhook_table);
        }
        WebhooksCmd::Get { id } => out.one(&client.get_webhook(&id).await?, webhook_fields),
        WebhooksCmd::Update {
            id,
            url,
            events,
            description,
            no_description,
            rate_limit,
            no_rate_limit,
            metadata,
        } => {
            let update = UpdateWebhook {
                url,
                events: (!events.is_empty()).then_some(events),
                description: if no_description {
                    Some(None)
                } else {
                    description.map(Some)
                },
                rate_limit: if no_rate_limit {
                    Some(None)
                } else {
                    rate_limit.map(Some)
                },
                metadata: object(metadata.as_deref())?.map(Some),
            };
            out.one(&client.update_webhook(&id, &update).await?, webhook_fields);
        }
        WebhooksCmd::Delete { id } => {
            client.delete_webhook(&id).await?;
            out.done(&id, "deleted");
        }
        WebhooksCmd::Pause { id } => out.one(&client.pause_webhook(&id).await?, webhook_fields),
        WebhooksCmd::Resume { id } => out.one(&client.resume_webhook(&id).await?, webhook_fields),
        WebhooksCmd::Test { id } => out.one(&client.test_webhook(&id).await?, event_fields),
        WebhooksCmd::Deliveries {
            id,
            status,
            event_type,
            since,
            until,
            page,
        } => {
            let limit = page.limit;
            let deliveries = collect_pages(&page, |cursor| {
                client.list_webhook_deliveries(
                    &id,
                    ListDeliveries {
                        status: status.clone(),
                        event_type: event_type.clone(),
                        since,
                        until,
                        limit,
                        cursor,
                    },
                )
            })
            .await?;
            out.page(&deliveries, delivery_table);
        }
        WebhooksCmd::Delivery { id, delivery } => {
            let detail = client.get_webhook_delivery(&id, &delivery).await?;
            if out.json {
                print_json(&detail.to_json());
            } else {
                write_stdout(&render_fields(&delivery_fields(&detail.delivery)));
                write_stdout(&attempt_table(&detail));
            }
        }
        WebhooksCmd::Redeliver { id, delivery } => {
            client.redeliver_webhook_delivery(&id, &delivery).await?;
            out.done(&delivery, "queued");
        }
        WebhooksCmd::Replay { id, since } => {
            let n = client.replay_webhook(&id, since).await?;
            if out.json {
                print_json(&serde_json::json!({ "id": id, "replayed": n }));
            } else {
                write_stdout(&format!("replayed {n} failed deliveries of {id}\n"));
            }
        }
        WebhooksCmd::RotateSecret {
            id,
            overlap_seconds,
            secret_stdin,
        } => {
            let secret = if secret_stdin {
                Some(secret_from_stdin()?)
            } else {
                None
            };
            let rotated = client
                .rotate_webhook_secret(&id, overlap_seconds, secret.as_ref())
                .await?;
            print_with_secret(&rotated, out);
        }
        WebhooksCmd::EventTypes => {
            let types = client.webhook_event_types().await?;
            out.list(&types, &[], event_type_table);
        }
    }
    Ok(())
}

/// Runs `datastack events …`.
pub(super) async fn events(cmd: EventsCmd, client: &Client, out: Output) -> Result<(), Failure> {
    match cmd {
        EventsCmd::Publish { event_type, data } => {
            let text = if data == "-" {
                let mut text = String::new();
                std::io::stdin()
                    .take(1024 * 1024)
                    .read_to_string(&mut text)
                    .map_err(|e| {
                        Failure::Usage(format!("cannot read the data from standard input: {e}"))
                    })?;
                text
            } else {
                data
            };
            let data: Value = serde_json::from_str(&text)
                .map_err(|e| Failure::Usage(format!("--data must be JSON: {e}")))?;
            let published = client.publish_event(&event_type, data).await?;
            out.one(&published, event_fields);
        }
    }
    Ok(())
}

impl Record for Webhook {
    fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl Record for Page<Webhook> {
    fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl Record for Page<Delivery> {
    fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl Record for DeliveryDetail {
    fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl Record for PublishedEvent {
    fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

impl Record for EventType {
    fn to_json(&self) -> Value {
        serde_json::to_value(self).unwrap_or(Value::Null)
    }
}

/// A registered or rotated webhook: the secret alone on stdout, details on stderr (or JSON
/// with `secret`).
fn print_with_secret(created: &WebhookWithSecret, out: Output) {
    if out.json {
        let mut value = created.details.to_json();
        if let Value::Object(object) = &mut value {
            object.insert(
                "secret".to_owned(),
                Value::String(created.secret.expose_secret().to_owned()),
            );
        }
        print_json(&value);
        return;
    }
    write_stdout(&format!("{}\n", created.secret.expose_secret()));
    let mut text = render_fields(&webhook_fields(&created.details));
    text.push_str("The secret above is shown only this once: store it now.\n");
    write_stderr(&text);
}

fn webhook_fields(w: &Webhook) -> Vec<(&'static str, String)> {
    let mut fields = vec![
        ("id", w.id.clone()),
        ("url", w.url.clone()),
        ("events", w.events.join(",")),
        ("status", w.status.clone()),
        (
            "rate limit",
            w.rate_limit
                .map_or_else(|| "none".to_owned(), |r| format!("{r}/s")),
        ),
        ("last success", when_or(w.last_success_at.as_ref(), "never")),
        ("created", when(&w.created_at)),
    ];
    if let Some(d) = &w.description {
        fields.push(("description", d.clone()));
    }
    if let Some(r) = &w.disabled_reason {
        fields.push(("disabled because", r.clone()));
    }
    if let Some(t) = &w.failing_since {
        fields.push(("failing since", when(t)));
    }
    if let Some(t) = &w.previous_secret_valid_until {
        fields.push(("old secret signs until", when(t)));
    }
    if let Some(m) = &w.metadata {
        fields.push(("metadata", m.to_string()));
    }
    fields
}

fn webhook_table(hooks: &[Webhook]) -> String {
    let rows = hooks
        .iter()
        .map(|w| {
            vec![
                w.id.clone(),
                w.status.clone(),
                w.events.join(","),
                w.url.clone(),
                when_or(w.last_success_at.as_ref(), "never"),
            ]
        })
        .collect();
    render_table(&["ID", "STATUS", "EVENTS", "URL", "LAST SUCCESS"], rows)
}

fn delivery_fields(d: &Delivery) -> Vec<(&'static str, String)> {
    vec![
        ("id", d.id.clone()),
        ("type", d.event_type.clone()),
        ("status", d.status.clone()),
        ("attempts", d.attempts.to_string()),
        ("next attempt", when_or(d.next_attempt_at.as_ref(), "none")),
        (
            "last status",
            d.last_status_code
                .map_or_else(|| "none".to_owned(), |s| s.to_string()),
        ),
        ("last error", d.last_error.clone().unwrap_or_default()),
        ("queued", when(&d.created_at)),
    ]
}

fn delivery_table(deliveries: &[Delivery]) -> String {
    let rows = deliveries
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                d.event_type.clone(),
                d.status.clone(),
                d.attempts.to_string(),
                d.last_status_code
                    .map_or_else(|| "-".to_owned(), |s| s.to_string()),
                when_or(d.next_attempt_at.as_ref(), "-"),
                when(&d.created_at),
            ]
        })
        .collect();
    render_table(
        &["ID", "TYPE", "STATUS", "ATTEMPTS", "LAST", "NEXT", "QUEUED"],
        rows,
    )
}

fn attempt_table(detail: &DeliveryDetail) -> String {
    let rows = detail
        .attempt_log
        .iter()
        .map(|a| {
            vec![
                a.attempt.to_string(),
                when(&a.started_at),
                a.status_code
                    .map_or_else(|| "-".to_owned(), |s| s.to_string()),
                format!("{} ms", a.latency_ms),
                a.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    render_table(&["ATTEMPT", "STARTED", "STATUS", "LATENCY", "ERROR"], rows)
}

fn event_fields(e: &PublishedEvent) -> Vec<(&'static str, String)> {
    vec![
        ("id", e.id.clone()),
        ("type", e.event_type.clone()),
        ("queued", e.queued.to_string()),
    ]
}

fn event_type_table(types: &[EventType]) -> String {
    let rows = types
        .iter()
        .map(|t| vec![t.name.clone(), t.source.clone(), t.description.clone()])
        .collect();
    render_table(&["TYPE", "SOURCE", "DESCRIPTION"], rows)
}
