//! `sources.knative.dev/v1` PingSource: an event on a cron schedule, sent to a Service, Broker
//! or Job.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::destination::{Destination, SinkRef, check_destination, default_namespace};
use super::{EventingKind, EventingMeta, ValidatedMeta, check_meta};
use crate::problems::{FieldPath, Problems};
use crate::types::null_default;

/// The schedule when `spec.schedule` is absent (Knative's default: every minute).
pub const DEFAULT_SCHEDULE: &str = "* * * * *";
/// The CloudEvents context attributes a PingSource sets itself, which `ceOverrides` may not
/// name.
pub const CONTEXT_ATTRIBUTES: &[&str] = &[
    "id",
    "source",
    "specversion",
    "type",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
    "data",
    "data_base64",
];

/// A PingSource as a user writes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PingSourceManifest {
    /// Must be `sources.knative.dev/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Must be `PingSource`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name, namespace, labels, annotations.
    #[serde(default, deserialize_with = "null_default")]
    pub metadata: EventingMeta,
    /// The schedule, the event and where it goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<PingSourceSpec>,
}

/// What a PingSource sends, when and where.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PingSourceSpec {
    /// A 5-field cron schedule; `* * * * *` (every minute) when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<String>,
    /// The IANA time zone the schedule runs in; UTC when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// The media type of the data (the event's `datacontenttype`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// The event's data as text; not with `dataBase64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
    /// The event's data, base64-encoded; not with `data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_base64: Option<String>,
    /// Where the events go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink: Option<Destination>,
    /// Extension attributes added to every event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ce_overrides: Option<CloudEventOverrides>,
}

/// Attributes added to every event a source sends (Knative duck/v1 `CloudEventOverrides`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloudEventOverrides {
    /// Extension attributes by name (lowercase letters and digits).
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub extensions: BTreeMap<String, String>,
}

/// A PingSource that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedPingSource {
    /// Name, namespace, labels, annotations.
    pub meta: ValidatedMeta,
    /// The spec as stored: the schedule and the sink's namespace filled in.
    pub spec: PingSourceSpec,
    /// The cron schedule.
    pub schedule: String,
    /// The time zone, if one is set.
    pub timezone: Option<String>,
    /// The event's `datacontenttype`, if set.
    pub content_type: Option<String>,
    /// The event's data (decoded from `dataBase64`), if any.
    pub data: Option<Vec<u8>>,
    /// Where events go.
    pub sink: SinkRef,
    /// Extension attributes added to every event.
    pub extensions: BTreeMap<String, String>,
}

/// Checks a cron schedule and its time zone.
pub fn check_schedule(schedule: &str, timezone: Option<&str>) -> Result<(), String> {
    if schedule.trim().is_empty() {
        return Err(format!(
            "must not be empty (leave it out for Knative's default, `{DEFAULT_SCHEDULE}`: every minute)"
        ));
    }
    crate::job::check_schedule(schedule.trim(), timezone)
}

/// Checks a CloudEvents attribute name: lowercase letters and digits only (CloudEvents 1.0).
pub fn check_attribute_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("an attribute name must not be empty".into());
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
    {
        return Err(format!(
            "`{name}` is not a CloudEvents attribute name: lowercase letters and digits only"
        ));
    }
    Ok(())
}

/// Checks a media type: `type/subtype`, optionally followed by `; parameters`.
fn check_media_type(value: &str) -> Result<(), String> {
    let essence = value.split(';').next().unwrap_or_default().trim();
    let token = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?={}".contains(c))
    };
    match essence.split_once('/') {
        Some((t, s)) if token(t) && token(s) => Ok(()),
        _ => Err(format!(
            "`{value}` is not a media type (examples: application/json, text/plain; charset=utf-8)"
        )),
    }
}

/// Checks a PingSource manifest.
pub fn validate_ping_source(
    m: PingSourceManifest,
    p: &mut Problems,
) -> Option<ValidatedPingSource> {
    let meta = check_meta(
        EventingKind::PingSource,
        m.api_version.as_deref(),
        m.kind.as_deref(),
        &m.metadata,
        p,
    );
    let namespace = super::namespace_of(&m.metadata);
    let sp = FieldPath::root().key("spec");
    let Some(spec) = m.spec else {
        p.required(&sp);
        return None;
    };
    let schedule = spec
        .schedule
        .clone()
        .unwrap_or_else(|| DEFAULT_SCHEDULE.to_owned());
    // Go reads an empty string as unset.
    let timezone = spec.timezone.clone().filter(|t| !t.is_empty());
    if let Err(e) = check_schedule(&schedule, None) {
        p.invalid(&sp.key("schedule"), e);
    } else if let Some(tz) = &timezone
        && let Err(e) = check_schedule(&schedule, Some(tz))
    {
        p.invalid(&sp.key("timezone"), e);
    }
    if let Some(ct) = &spec.content_type
        && let Err(e) = check_media_type(ct)
    {
        p.invalid(&sp.key("contentType"), e);
    }
    let data = match (&spec.data, &spec.data_base64) {
        (Some(_), Some(_)) => {
            p.invalid(
                &sp.key("dataBase64"),
                "set either `data` or `dataBase64`, not both",
            );
            None
        }
        (Some(text), None) => Some(text.as_bytes().to_vec()),
        (None, Some(encoded)) => {
            match base64::engine::general_purpose::STANDARD.decode(encoded.trim()) {
                Ok(bytes) => Some(bytes),
                Err(_) => {
                    p.invalid(
                        &sp.key("dataBase64"),
                        "not valid base64 (standard alphabet, with padding)",
                    );
                    None
                }
            }
        }
        (None, None) => None,
    };
    let extensions = spec
        .ce_overrides
        .as_ref()
        .map(|o| o.extensions.clone())
        .unwrap_or_default();
    let ext_path = sp.key("ceOverrides").key("extensions");
    for name in extensions.keys() {
        let path = ext_path.key(name.clone());
        if let Err(e) = check_attribute_name(name) {
            p.invalid(&path, e);
        } else if CONTEXT_ATTRIBUTES.contains(&name.as_str()) {
            p.invalid(
                &path,
                format!(
                    "`{name}` is a CloudEvents context attribute, which the PingSource sets \
                     itself; extensions add attributes of their own"
                ),
            );
        }
    }
    let sink = check_destination(spec.sink.as_ref(), &sp.key("sink"), &namespace, p);
    let mut stored = spec;
    stored.schedule = Some(schedule.clone());
    default_namespace(&mut stored.sink, &namespace);
    Some(ValidatedPingSource {
        meta: meta?,
        content_type: stored.content_type.clone(),
        spec: stored,
        schedule,
        timezone,
        data,
        sink: sink?,
        extensions,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Attribute names are CloudEvents': lowercase letters and digits.
    #[test]
    fn attribute_names() {
        for ok in ["type", "myextension", "ext1", "0"] {
            assert!(check_attribute_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Type", "my-ext", "my_ext", "ä", "a.b"] {
            assert!(check_attribute_name(bad).is_err(), "{bad}");
        }
    }

    /// Media types need a type and a subtype; parameters may follow.
    #[test]
    fn media_types() {
        for ok in [
            "application/json",
            "text/plain; charset=utf-8",
            "application/cloudevents+json",
        ] {
            assert!(check_media_type(ok).is_ok(), "{ok}");
        }
        for bad in ["", "json", "/json", "text/", "text /plain", "a/b/c"] {
            assert!(check_media_type(bad).is_err(), "{bad}");
        }
    }

    /// For now the schedule is only checked for being non-empty.
    #[test]
    fn schedules() {
        assert!(check_schedule("*/5 * * * *", Some("Europe/Berlin")).is_ok());
        assert!(check_schedule(" ", None).is_err());
    }
}
