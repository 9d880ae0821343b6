//! Knative Eventing manifests: `sources.knative.dev/v1` PingSource and
//! `eventing.knative.dev/v1` Broker and Trigger, read strictly with field paths, validated,
//! and the objects the API stores and returns ([`stored`]).
//!
//! # Design
//! Documents are read the way Services and Secrets are ([`crate::manifest`]): typed structs
//! whose required fields are `Option`s, so validation reports every problem at once; each
//! unknown key is sorted by this module's `classify_*` functions into output-only fields
//! (skipped, so `skiff get -o yaml | skiff apply -f -` works), Knative fields skiff does not
//! support yet (refused by name), fields Knative itself refuses, and typos (with a "did you
//! mean"). Validation then gives the typed view the daemon acts on: a [`SinkRef`] for every
//! destination, a [`Delivery`] with parsed durations, a [`Filter`] tree for a Trigger.
//!
//! What skiff refuses by name, because it does not do it yet:
//! - destinations other than a `ref` to a Service, Broker or Job in the same namespace
//!   (`uri`, other kinds, `ref.namespace` elsewhere, `ref.group`, `CACerts`, `audience`);
//! - a Broker's `spec.config`, a Trigger's `spec.brokerRef`, CESQL filters, `format: json`;
//! - `metadata.generateName`, `ownerReferences` and `finalizers`.
//!
//! No `skiff.dev/` annotation is defined for these kinds yet, so any is an unknown one.

mod broker;
mod delivery;
mod destination;
mod ping;
pub mod stored;
#[cfg(test)]
mod tests;
mod trigger;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

pub use broker::{
    BROKER_CLASS_ANNOTATION, BrokerManifest, BrokerSpec, ValidatedBroker, validate_broker,
};
pub use delivery::{BackoffPolicy, Delivery, DeliverySpec, parse_iso8601_duration};
pub use destination::{Destination, JOBS_API_VERSION, KReference, SinkKind, SinkRef};
pub use ping::{
    CONTEXT_ATTRIBUTES, CloudEventOverrides, DEFAULT_SCHEDULE, PingSourceManifest, PingSourceSpec,
    ValidatedPingSource, check_attribute_name, check_schedule, validate_ping_source,
};
pub use stored::{Broker, BrokerStatus, PingSource, PingSourceStatus, Trigger, TriggerStatus};
pub use trigger::{
    Filter, SubscriptionsApiFilter, TriggerFilter, TriggerManifest, TriggerSpec, ValidatedTrigger,
    validate_trigger,
};

use crate::fields;
use crate::manifest::{Document, OUTPUT_ONLY_META, Object, Refusal, typed_as};
use crate::names::{
    check_dns1035_label, check_dns1123_label, check_label_value, check_qualified_name,
};
use crate::object::ObjectMeta;
use crate::problems::{FieldPath, ProblemKind, Problems};
use crate::types::null_default;
use crate::validate::{DEFAULT_NAMESPACE, MAX_ANNOTATIONS_BYTES, SKIFF_ANNOTATION_PREFIX};

/// `apiVersion` of PingSources.
pub const SOURCES_API_VERSION: &str = "sources.knative.dev/v1";
/// `apiVersion` of Brokers and Triggers.
pub const EVENTING_API_VERSION: &str = "eventing.knative.dev/v1";

/// Which eventing object a document is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventingKind {
    /// A `sources.knative.dev/v1` PingSource.
    PingSource,
    /// An `eventing.knative.dev/v1` Broker.
    Broker,
    /// An `eventing.knative.dev/v1` Trigger.
    Trigger,
}

impl EventingKind {
    /// Every kind.
    pub const ALL: [EventingKind; 3] = [
        EventingKind::PingSource,
        EventingKind::Broker,
        EventingKind::Trigger,
    ];

    /// The kind as written in `kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventingKind::PingSource => "PingSource",
            EventingKind::Broker => "Broker",
            EventingKind::Trigger => "Trigger",
        }
    }

    /// The one `apiVersion` skiff reads the kind in.
    pub fn api_version(self) -> &'static str {
        match self {
            EventingKind::PingSource => SOURCES_API_VERSION,
            EventingKind::Broker | EventingKind::Trigger => EVENTING_API_VERSION,
        }
    }

    /// The kind of `doc` by its `kind` alone, so that a wrong `apiVersion` is reported by
    /// the kind's own checks, naming the right one.
    pub fn of(doc: &Document) -> Option<EventingKind> {
        let kind = doc.kind()?;
        Self::ALL.into_iter().find(|k| k.as_str() == kind)
    }
}

impl fmt::Display for EventingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The metadata a user may set on a PingSource, Broker or Trigger.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventingMeta {
    /// The name, a DNS-1035 label (as a Service's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The namespace; `default` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Labels.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub annotations: BTreeMap<String, String>,
    /// When set, the update applies only if the stored object still has this version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<String>,
}

/// Checked metadata of a PingSource, Broker or Trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatedMeta {
    /// The name.
    pub name: String,
    /// The namespace (defaulted).
    pub namespace: String,
    /// The namespace as the manifest gives it.
    pub manifest_namespace: Option<String>,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    pub annotations: BTreeMap<String, String>,
    /// The version the write is conditional on.
    pub resource_version: Option<String>,
}

impl ValidatedMeta {
    /// The stored metadata of a new object with id `uid`, created at `now` (RFC 3339):
    /// generation 1, no resource version yet.
    pub fn object_meta(&self, uid: impl Into<String>, now: &str) -> ObjectMeta {
        ObjectMeta {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            generate_name: None,
            uid: uid.into(),
            generation: 1,
            resource_version: String::new(),
            creation_timestamp: now.to_owned(),
            labels: self.labels.clone(),
            annotations: self.annotations.clone(),
        }
    }
}

/// The namespace of an object: as written, or `default`.
fn namespace_of(meta: &EventingMeta) -> String {
    meta.namespace
        .clone()
        .unwrap_or_else(|| DEFAULT_NAMESPACE.to_owned())
}

/// Checks `apiVersion`, `kind` and `metadata`; the checked metadata when the name is usable.
fn check_meta(
    kind: EventingKind,
    api_version: Option<&str>,
    k: Option<&str>,
    meta: &EventingMeta,
    p: &mut Problems,
) -> Option<ValidatedMeta> {
    let root = FieldPath::root();
    match api_version {
        None => p.required(&root.key("apiVersion")),
        Some(v) if v == kind.api_version() => {}
        Some(v) => p.invalid(
            &root.key("apiVersion"),
            format!(
                "`{v}` is not accepted: skiff reads a {kind} as `{}`",
                kind.api_version()
            ),
        ),
    }
    match k {
        None => p.required(&root.key("kind")),
        Some(k) if k == kind.as_str() => {}
        Some(k) => p.invalid(
            &root.key("kind"),
            format!("`{k}` is not accepted: must be `{kind}`"),
        ),
    }
    let mp = root.key("metadata");
    let name = match &meta.name {
        None => {
            p.required(&mp.key("name"));
            None
        }
        Some(n) => match check_dns1035_label(n) {
            Ok(()) => Some(n.clone()),
            Err(e) => {
                p.invalid(&mp.key("name"), e);
                None
            }
        },
    };
    let namespace = namespace_of(meta);
    if let Err(e) = check_dns1123_label(&namespace) {
        p.invalid(&mp.key("namespace"), e);
    }
    if let Some(rv) = &meta.resource_version
        && rv.parse::<i64>().map_or(true, |v| v < 0)
    {
        p.invalid(
            &mp.key("resourceVersion"),
            format!("`{rv}` is not a resource version (copy it from `skiff get -o yaml`)"),
        );
    }
    for (key, value) in &meta.labels {
        let path = mp.key("labels").key(key.clone());
        if let Err(e) = check_qualified_name(key) {
            p.invalid(&path, format!("invalid label key: {e}"));
        }
        if let Err(e) = check_label_value(value) {
            p.invalid(&path, e);
        }
    }
    let mut size = 0;
    for (key, value) in &meta.annotations {
        size += key.len() + value.len();
        let path = mp.key("annotations").key(key.clone());
        if let Err(e) = check_qualified_name(key) {
            p.invalid(&path, format!("invalid annotation key: {e}"));
        }
        if key.starts_with(SKIFF_ANNOTATION_PREFIX) {
            p.push(
                &path,
                ProblemKind::UnknownField,
                format!("unknown skiff annotation (none is defined for a {kind})"),
            );
        }
    }
    if size > MAX_ANNOTATIONS_BYTES {
        p.invalid(
            &mp.key("annotations"),
            format!("annotations total {size} bytes; at most {MAX_ANNOTATIONS_BYTES} are allowed"),
        );
    }
    Some(ValidatedMeta {
        name: name?,
        namespace,
        manifest_namespace: meta.namespace.clone(),
        labels: meta.labels.clone(),
        annotations: meta.annotations.clone(),
        resource_version: meta.resource_version.clone(),
    })
}

/// Whether the struct at `pattern` is a `Destination`.
fn is_destination(pattern: &str) -> bool {
    matches!(
        pattern,
        "spec.sink" | "spec.subscriber" | "spec.delivery.deadLetterSink"
    )
}

/// Whether the struct at `pattern` is the `ref` of a `Destination`.
fn is_reference(pattern: &str) -> bool {
    pattern.strip_suffix(".ref").is_some_and(is_destination)
}

/// Whether the struct at `pattern` is a Subscriptions API filter expression.
fn is_filter(pattern: &str) -> bool {
    pattern.starts_with("spec.filters[]") && (pattern.ends_with("[]") || pattern.ends_with(".not"))
}

/// Refusals shared by the three kinds.
fn classify_common(parent: &str, key: &str) -> Option<Refusal> {
    use Refusal::*;
    Some(match (parent, key) {
        ("", "status") => OutputOnly,
        ("metadata", k) if OUTPUT_ONLY_META.contains(&k) => OutputOnly,
        ("metadata", "ownerReferences" | "finalizers") => {
            NotSupported("owner references and finalizers")
        }
        ("metadata", "generateName") => {
            NotSupported("generateName on a PingSource, Broker or Trigger; set metadata.name")
        }
        (p, "CACerts") if is_destination(p) => {
            NotSupported("CA certificates for a sink; skiff delivers to its own objects")
        }
        (p, "audience") if is_destination(p) => NotSupported("OIDC audiences for a sink"),
        (p, "group") if is_reference(p) => {
            NotSupported("`group` in a reference (experimental in Knative); write `apiVersion`")
        }
        _ => return None,
    })
}

fn classify_ping_source(parent: &str, key: &str) -> Option<Refusal> {
    use Refusal::*;
    Some(match (parent, key) {
        ("spec", "delivery") => NotAllowed(
            "Knative's PingSource has no `delivery`; to retry, send to a Broker and set \
             `delivery` on its Trigger",
        ),
        ("spec", "jsonData") => {
            NotAllowed("`jsonData` belongs to older PingSource versions; v1 calls it `data`")
        }
        _ => return classify_common(parent, key),
    })
}

fn classify_broker(parent: &str, key: &str) -> Option<Refusal> {
    match (parent, key) {
        ("spec", "config") => Some(Refusal::NotSupported("broker config objects")),
        _ => classify_common(parent, key),
    }
}

fn classify_trigger(parent: &str, key: &str) -> Option<Refusal> {
    use Refusal::*;
    Some(match (parent, key) {
        ("spec", "brokerRef") => NotSupported(
            "`brokerRef` (a Broker in another namespace); name the Broker in `spec.broker`",
        ),
        (p, "cesql" | "sql") if is_filter(p) => {
            NotSupported("CESQL filters; use exact, prefix, suffix, all, any or not")
        }
        ("spec.filter", "exact" | "prefix" | "suffix" | "all" | "any" | "not" | "cesql") => {
            NotAllowed(
                "`spec.filter` holds only `attributes`; filter expressions go in the \
                 `spec.filters` list",
            )
        }
        _ => return classify_common(parent, key),
    })
}

/// Field lists shared by the three kinds, for "did you mean" hints.
fn common_fields(pattern: &str) -> &'static [&'static str] {
    match pattern {
        "metadata" => fields::of::<EventingMeta>(),
        "spec.delivery" => fields::of::<DeliverySpec>(),
        p if is_destination(p) => fields::of::<Destination>(),
        p if is_reference(p) => fields::of::<KReference>(),
        _ => &[],
    }
}

fn ping_source_fields(pattern: &str) -> &'static [&'static str] {
    match pattern {
        "" => fields::of::<PingSourceManifest>(),
        "spec" => fields::of::<PingSourceSpec>(),
        "spec.ceOverrides" => fields::of::<CloudEventOverrides>(),
        p => common_fields(p),
    }
}

fn broker_fields(pattern: &str) -> &'static [&'static str] {
    match pattern {
        "" => fields::of::<BrokerManifest>(),
        "spec" => fields::of::<BrokerSpec>(),
        p => common_fields(p),
    }
}

fn trigger_fields(pattern: &str) -> &'static [&'static str] {
    match pattern {
        "" => fields::of::<TriggerManifest>(),
        "spec" => fields::of::<TriggerSpec>(),
        "spec.filter" => fields::of::<TriggerFilter>(),
        p if is_filter(p) => fields::of::<SubscriptionsApiFilter>(),
        p => common_fields(p),
    }
}

/// Reads `doc` as `M` and validates it with `validate`.
fn read<M: for<'de> Deserialize<'de>, V>(
    doc: &Document,
    classify: fn(&str, &str) -> Option<Refusal>,
    accepted_fields: fn(&str) -> &'static [&'static str],
    validate: fn(M, &mut Problems) -> Option<V>,
) -> Result<V, Problems> {
    let mut problems = Problems::new();
    if !doc.value.is_object() {
        problems.invalid(
            &FieldPath::root(),
            "a manifest must be a mapping with apiVersion, kind, metadata and spec",
        );
        return Err(problems);
    }
    let manifest: Option<M> = typed_as(&doc.value, &mut problems, classify, accepted_fields);
    match manifest.and_then(|m| validate(m, &mut problems)) {
        Some(v) if problems.is_empty() => Ok(v),
        _ => Err(problems),
    }
}

/// Reads and validates one document as a PingSource.
pub fn ping_source_from_document(doc: &Document) -> Result<ValidatedPingSource, Problems> {
    read(
        doc,
        classify_ping_source,
        ping_source_fields,
        validate_ping_source,
    )
}

/// Reads and validates one document as a Broker.
pub fn broker_from_document(doc: &Document) -> Result<ValidatedBroker, Problems> {
    read(doc, classify_broker, broker_fields, validate_broker)
}

/// Reads and validates one document as a Trigger.
pub fn trigger_from_document(doc: &Document) -> Result<ValidatedTrigger, Problems> {
    read(doc, classify_trigger, trigger_fields, validate_trigger)
}

/// Reads and validates one document of kind `kind` as an [`Object`].
pub fn object_from_document(doc: &Document, kind: EventingKind) -> Result<Object, Problems> {
    Ok(match kind {
        EventingKind::PingSource => Object::PingSource(Box::new(ping_source_from_document(doc)?)),
        EventingKind::Broker => Object::Broker(Box::new(broker_from_document(doc)?)),
        EventingKind::Trigger => Object::Trigger(Box::new(trigger_from_document(doc)?)),
    })
}
