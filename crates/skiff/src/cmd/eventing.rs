//! `skiff get|describe|delete brokers|triggers|pingsources`: Knative Eventing's objects.

use std::fmt::Write as _;

use skiff_api::eventing::Destination;
use skiff_api::eventing::stored::{Broker, PingSource, Trigger};
use skiff_api::object::{Condition, List};
use skiff_client::Client;

use crate::exit::{Exit, OK};
use crate::output::{self, Format, age, table};

/// Which eventing kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventingKind {
    /// Brokers.
    Brokers,
    /// Triggers.
    Triggers,
    /// PingSources.
    Pingsources,
}

impl EventingKind {
    /// `broker`, `trigger`, `pingsource`.
    pub fn singular(self) -> &'static str {
        match self {
            EventingKind::Brokers => "broker",
            EventingKind::Triggers => "trigger",
            EventingKind::Pingsources => "pingsource",
        }
    }

    fn path(self) -> &'static str {
        match self {
            EventingKind::Brokers => "brokers",
            EventingKind::Triggers => "triggers",
            EventingKind::Pingsources => "pingsources",
        }
    }
}

fn ready(conditions: &[Condition]) -> String {
    conditions
        .iter()
        .find(|c| c.condition_type == "Ready")
        .map_or_else(|| "Unknown".to_owned(), |c| c.status.to_string())
}

fn reason(conditions: &[Condition]) -> String {
    conditions
        .iter()
        .find(|c| c.condition_type == "Ready")
        .and_then(|c| c.reason.clone())
        .unwrap_or_default()
}

fn destination(d: Option<&Destination>) -> String {
    match d.and_then(|d| d.reference.as_ref()) {
        Some(r) => format!(
            "{}/{}",
            r.kind.clone().unwrap_or_default(),
            r.name.clone().unwrap_or_default()
        ),
        None => "-".to_owned(),
    }
}

fn print_list<T: serde::Serialize>(
    items: Vec<T>,
    kind: &str,
    api_version: &str,
    format: Format,
    one: bool,
    rows: impl Fn(&[T]) -> comfy_table::Table,
) -> Result<(), Exit> {
    match format {
        Format::Table if items.is_empty() => eprintln!("no {kind} found"),
        Format::Table => output::print_table(&rows(&items)),
        f if one => print!("{}", output::render(&items[0], f)?),
        f => print!(
            "{}",
            output::render(
                &List {
                    api_version: api_version.to_owned(),
                    kind: format!("{kind}List"),
                    items,
                },
                f
            )?
        ),
    }
    Ok(())
}

/// `skiff get brokers|triggers|pingsources [NAME]`.
pub async fn get(
    client: &Client,
    kind: EventingKind,
    name: Option<&str>,
    namespace: &str,
    all_namespaces: bool,
    format: Format,
) -> Result<i32, Exit> {
    let ns = (!all_namespaces).then_some(namespace);
    let one = name.is_some();
    macro_rules! fetch {
        ($t:ty) => {{
            let items: Vec<$t> = match name {
                Some(n) => vec![client.get_eventing(kind.path(), namespace, n).await?],
                None => client.list_eventing(kind.path(), ns).await?,
            };
            items
        }};
    }
    let with_ns = |mut header: Vec<&'static str>| {
        if all_namespaces {
            header.insert(0, "NAMESPACE");
        }
        table(&header)
    };
    match kind {
        EventingKind::Brokers => {
            let items = fetch!(Broker);
            print_list(
                items,
                "Broker",
                skiff_api::eventing::EVENTING_API_VERSION,
                format,
                one,
                |items| {
                    let mut t = with_ns(vec!["NAME", "URL", "READY", "AGE"]);
                    for b in items {
                        let mut row = vec![
                            b.metadata.name.clone(),
                            b.status
                                .address
                                .as_ref()
                                .map_or_else(|| "-".into(), |a| a.url.clone()),
                            ready(&b.status.conditions),
                            age(&b.metadata.creation_timestamp),
                        ];
                        if all_namespaces {
                            row.insert(0, b.metadata.namespace.clone());
                        }
                        t.add_row(row);
                    }
                    t
                },
            )?;
        }
        EventingKind::Triggers => {
            let items = fetch!(Trigger);
            print_list(
                items,
                "Trigger",
                skiff_api::eventing::EVENTING_API_VERSION,
                format,
                one,
                |items| {
                    let mut t = with_ns(vec![
                        "NAME",
                        "BROKER",
                        "SUBSCRIBER",
                        "READY",
                        "REASON",
                        "AGE",
                    ]);
                    for tr in items {
                        let mut row = vec![
                            tr.metadata.name.clone(),
                            tr.spec.broker.clone().unwrap_or_default(),
                            destination(tr.spec.subscriber.as_ref()),
                            ready(&tr.status.conditions),
                            reason(&tr.status.conditions),
                            age(&tr.metadata.creation_timestamp),
                        ];
                        if all_namespaces {
                            row.insert(0, tr.metadata.namespace.clone());
                        }
                        t.add_row(row);
                    }
                    t
                },
            )?;
        }
        EventingKind::Pingsources => {
            let items = fetch!(PingSource);
            print_list(
                items,
                "PingSource",
                skiff_api::eventing::SOURCES_API_VERSION,
                format,
                one,
                |items| {
                    let mut t = with_ns(vec![
                        "NAME", "SCHEDULE", "SINK", "LAST", "NEXT", "READY", "AGE",
                    ]);
                    for p in items {
                        let schedule = match &p.spec.timezone {
                            Some(tz) => {
                                format!("{} ({tz})", p.spec.schedule.clone().unwrap_or_default())
                            }
                            None => p.spec.schedule.clone().unwrap_or_default(),
                        };
                        let mut row = vec![
                            p.metadata.name.clone(),
                            schedule,
                            destination(p.spec.sink.as_ref()),
                            p.status
                                .last_schedule_time
                                .clone()
                                .unwrap_or_else(|| "-".into()),
                            p.status
                                .next_schedule_time
                                .clone()
                                .unwrap_or_else(|| "-".into()),
                            ready(&p.status.conditions),
                            age(&p.metadata.creation_timestamp),
                        ];
                        if all_namespaces {
                            row.insert(0, p.metadata.namespace.clone());
                        }
                        t.add_row(row);
                    }
                    t
                },
            )?;
        }
    }
    Ok(OK)
}

fn line(out: &mut String, k: &str, v: &str) {
    let _ = writeln!(out, "{:<16}{v}", format!("{k}:"));
}

/// `skiff describe broker|trigger|pingsource NAME`.
pub async fn describe(
    client: &Client,
    kind: EventingKind,
    name: &str,
    namespace: &str,
) -> Result<i32, Exit> {
    let mut out = String::new();
    match kind {
        EventingKind::Brokers => {
            let b: Broker = client.get_eventing(kind.path(), namespace, name).await?;
            line(&mut out, "Name", &b.metadata.name);
            line(&mut out, "Namespace", &b.metadata.namespace);
            line(&mut out, "Age", &age(&b.metadata.creation_timestamp));
            line(
                &mut out,
                "Address",
                b.status.address.as_ref().map_or("-", |a| a.url.as_str()),
            );
            if let Some(d) = &b.spec.delivery {
                line(
                    &mut out,
                    "Delivery",
                    &serde_json::to_string(d).unwrap_or_default(),
                );
            }
            if let Some(u) = &b.status.dead_letter_sink_uri {
                line(&mut out, "Dead letters", u);
            }
            out.push_str(&output::conditions(&b.status.conditions));
        }
        EventingKind::Triggers => {
            let t: Trigger = client.get_eventing(kind.path(), namespace, name).await?;
            line(&mut out, "Name", &t.metadata.name);
            line(&mut out, "Namespace", &t.metadata.namespace);
            line(&mut out, "Age", &age(&t.metadata.creation_timestamp));
            line(&mut out, "Broker", t.spec.broker.as_deref().unwrap_or("-"));
            line(
                &mut out,
                "Subscriber",
                &destination(t.spec.subscriber.as_ref()),
            );
            if let Some(u) = &t.status.subscriber_uri {
                line(&mut out, "Subscriber URI", u);
            }
            if let Some(f) = &t.spec.filter {
                line(
                    &mut out,
                    "Filter",
                    &serde_json::to_string(f).unwrap_or_default(),
                );
            }
            if let Some(f) = &t.spec.filters {
                line(
                    &mut out,
                    "Filters",
                    &serde_json::to_string(f).unwrap_or_default(),
                );
            }
            match &t.spec.delivery {
                Some(d) => line(
                    &mut out,
                    "Delivery",
                    &serde_json::to_string(d).unwrap_or_default(),
                ),
                None => line(
                    &mut out,
                    "Delivery",
                    "the Broker's, else skiff's default (retry 3, exponential from PT0.5S)",
                ),
            }
            if let Some(u) = &t.status.dead_letter_sink_uri {
                line(&mut out, "Dead letters", u);
            }
            out.push_str(&output::conditions(&t.status.conditions));
        }
        EventingKind::Pingsources => {
            let p: PingSource = client.get_eventing(kind.path(), namespace, name).await?;
            line(&mut out, "Name", &p.metadata.name);
            line(&mut out, "Namespace", &p.metadata.namespace);
            line(&mut out, "Age", &age(&p.metadata.creation_timestamp));
            line(
                &mut out,
                "Schedule",
                p.spec.schedule.as_deref().unwrap_or("* * * * *"),
            );
            line(
                &mut out,
                "Time zone",
                p.spec.timezone.as_deref().unwrap_or("UTC"),
            );
            line(&mut out, "Sink", &destination(p.spec.sink.as_ref()));
            if let Some(u) = &p.status.sink_uri {
                line(&mut out, "Sink URI", u);
            }
            line(
                &mut out,
                "Last run",
                p.status.last_schedule_time.as_deref().unwrap_or("-"),
            );
            line(
                &mut out,
                "Next run",
                p.status.next_schedule_time.as_deref().unwrap_or("-"),
            );
            line(
                &mut out,
                "Missed runs",
                &p.status.missed_runs.unwrap_or(0).to_string(),
            );
            out.push_str(&output::conditions(&p.status.conditions));
        }
    }
    print!("{out}");
    Ok(OK)
}

/// `skiff delete broker|trigger|pingsource NAME`.
pub async fn delete(
    client: &Client,
    kind: EventingKind,
    name: &str,
    namespace: &str,
) -> Result<i32, Exit> {
    client.delete_eventing(kind.path(), namespace, name).await?;
    println!("{}/{name} deleted", kind.singular());
    Ok(OK)
}
