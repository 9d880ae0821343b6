//! `eventing.knative.dev/v1` Trigger: which events of a Broker go to a subscriber, with the
//! attribute filter and the CloudEvents Subscriptions API filters (`exact`, `prefix`,
//! `suffix`, `all`, `any`, `not`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::delivery::{Delivery, DeliverySpec, check_delivery, defaulted};
use super::destination::{Destination, SinkKind, SinkRef, check_destination, default_namespace};
use super::ping::check_attribute_name;
use super::{EventingKind, EventingMeta, ValidatedMeta, check_meta};
use crate::names::check_dns1035_label;
use crate::problems::{FieldPath, ProblemKind, Problems};
use crate::types::null_default;

/// A Trigger as a user writes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggerManifest {
    /// Must be `eventing.knative.dev/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Must be `Trigger`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name, namespace, labels, annotations.
    #[serde(default, deserialize_with = "null_default")]
    pub metadata: EventingMeta,
    /// The Broker, the filters and the subscriber.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<TriggerSpec>,
}

/// Which events of which Broker go where.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggerSpec {
    /// The Broker in the Trigger's namespace the events come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<String>,
    /// Exact matches on attributes, all of which must hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<TriggerFilter>,
    /// Subscriptions API filter expressions, all of which must hold; when set they replace
    /// `filter` (Knative's rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Vec<SubscriptionsApiFilter>>,
    /// Where matching events go.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriber: Option<Destination>,
    /// Retries and dead-letter sink; replaces the Broker's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

/// The attribute filter of a Trigger.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggerFilter {
    /// Attribute name to the value it must have; an empty value matches any value.
    #[serde(
        default,
        deserialize_with = "null_default",
        skip_serializing_if = "BTreeMap::is_empty"
    )]
    pub attributes: BTreeMap<String, String>,
}

/// One filter expression of the CloudEvents Subscriptions API; exactly one field is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(no_recursion)]
pub struct SubscriptionsApiFilter {
    /// True when every nested expression is (at least one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<Vec<SubscriptionsApiFilter>>,
    /// True when at least one nested expression is (at least one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub any: Option<Vec<SubscriptionsApiFilter>>,
    /// True when the nested expression is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not: Option<Box<SubscriptionsApiFilter>>,
    /// One attribute and the value it must equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<BTreeMap<String, String>>,
    /// One attribute and the value it must start with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<BTreeMap<String, String>>,
    /// One attribute and the value it must end with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suffix: Option<BTreeMap<String, String>>,
}

/// A checked filter expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// The attribute equals the value.
    Exact {
        /// The attribute's name.
        attribute: String,
        /// The value.
        value: String,
    },
    /// The attribute starts with the value.
    Prefix {
        /// The attribute's name.
        attribute: String,
        /// The value.
        value: String,
    },
    /// The attribute ends with the value.
    Suffix {
        /// The attribute's name.
        attribute: String,
        /// The value.
        value: String,
    },
    /// Every expression holds.
    All(Vec<Filter>),
    /// At least one expression holds.
    Any(Vec<Filter>),
    /// The expression does not hold.
    Not(Box<Filter>),
}

/// A Trigger that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedTrigger {
    /// Name, namespace, labels, annotations.
    pub meta: ValidatedMeta,
    /// The spec as stored (references' namespaces filled in).
    pub spec: TriggerSpec,
    /// The Broker's name.
    pub broker: String,
    /// `spec.filter.attributes`: exact matches, an empty value matching any value. Ignored
    /// when `filters` is not empty.
    pub attributes: BTreeMap<String, String>,
    /// `spec.filters`, all of which must hold.
    pub filters: Vec<Filter>,
    /// Where matching events go.
    pub subscriber: SinkRef,
    /// The Trigger's own delivery settings, if any (they replace the Broker's).
    pub delivery: Option<Delivery>,
}

impl ValidatedTrigger {
    /// What the manifest asks for that skiff accepts but that changes nothing, as
    /// `path: why` lines.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.attributes.is_empty() && !self.filters.is_empty() {
            out.push(
                "spec.filter: ignored because spec.filters is set (Knative's rule: `filters` \
                 replaces `filter`)"
                    .to_owned(),
            );
        }
        out
    }
}

const DIALECTS: &str = "exact, prefix, suffix, all, any or not";

/// Checks the one `attribute: value` pair of an `exact`, `prefix` or `suffix` expression.
fn single_pair(
    map: &BTreeMap<String, String>,
    at: &FieldPath,
    p: &mut Problems,
) -> Option<(String, String)> {
    if map.len() != 1 {
        p.invalid(
            at,
            format!(
                "must hold exactly one `attribute: value` (has {}); combine several with `all` \
                 or `any`",
                map.len()
            ),
        );
        return None;
    }
    let (attribute, value) = map.iter().next()?;
    let path = at.key(attribute.clone());
    if let Err(e) = check_attribute_name(attribute) {
        p.invalid(&path, e);
        return None;
    }
    if value.is_empty() {
        p.invalid(&path, "the value must not be empty");
        return None;
    }
    Some((attribute.clone(), value.clone()))
}

/// Checks a nested list of `all` or `any`.
fn filter_list(
    list: &[SubscriptionsApiFilter],
    at: &FieldPath,
    p: &mut Problems,
) -> Option<Vec<Filter>> {
    if list.is_empty() {
        p.invalid(at, "must hold at least one filter expression");
        return None;
    }
    let checked: Vec<Option<Filter>> = list
        .iter()
        .enumerate()
        .map(|(i, f)| check_filter(f, &at.index(i), p))
        .collect();
    checked.into_iter().collect()
}

/// Checks one filter expression at `at`.
fn check_filter(f: &SubscriptionsApiFilter, at: &FieldPath, p: &mut Problems) -> Option<Filter> {
    let set: Vec<&str> = [
        ("exact", f.exact.is_some()),
        ("prefix", f.prefix.is_some()),
        ("suffix", f.suffix.is_some()),
        ("all", f.all.is_some()),
        ("any", f.any.is_some()),
        ("not", f.not.is_some()),
    ]
    .into_iter()
    .filter_map(|(name, on)| on.then_some(name))
    .collect();
    match set.as_slice() {
        [] => {
            p.push(
                at,
                ProblemKind::Required,
                format!(
                    "required: one of {DIALECTS} (an empty expression matches every event; \
                     remove it instead)"
                ),
            );
            return None;
        }
        [_] => {}
        [first, rest @ ..] => {
            for extra in rest {
                p.invalid(
                    &at.key(*extra),
                    format!(
                        "one expression per list item, and `{first}` is already set; combine \
                         them with `all` or `any`"
                    ),
                );
            }
            return None;
        }
    }
    let pair =
        |m: &BTreeMap<String, String>, key: &str, p: &mut Problems| single_pair(m, &at.key(key), p);
    if let Some(m) = &f.exact {
        let (attribute, value) = pair(m, "exact", p)?;
        return Some(Filter::Exact { attribute, value });
    }
    if let Some(m) = &f.prefix {
        let (attribute, value) = pair(m, "prefix", p)?;
        return Some(Filter::Prefix { attribute, value });
    }
    if let Some(m) = &f.suffix {
        let (attribute, value) = pair(m, "suffix", p)?;
        return Some(Filter::Suffix { attribute, value });
    }
    if let Some(list) = &f.all {
        return filter_list(list, &at.key("all"), p).map(Filter::All);
    }
    if let Some(list) = &f.any {
        return filter_list(list, &at.key("any"), p).map(Filter::Any);
    }
    let not = f.not.as_deref()?;
    check_filter(not, &at.key("not"), p).map(|f| Filter::Not(Box::new(f)))
}

/// Checks a Trigger manifest.
pub fn validate_trigger(m: TriggerManifest, p: &mut Problems) -> Option<ValidatedTrigger> {
    let meta = check_meta(
        EventingKind::Trigger,
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
    let broker = match spec.broker.as_deref() {
        None => {
            p.push(
                &sp.key("broker"),
                ProblemKind::Required,
                "required: the name of the Broker in this namespace",
            );
            None
        }
        Some(b) => match check_dns1035_label(b) {
            Ok(()) => Some(b.to_owned()),
            Err(e) => {
                p.invalid(&sp.key("broker"), e);
                None
            }
        },
    };
    let attributes = spec
        .filter
        .as_ref()
        .map(|f| f.attributes.clone())
        .unwrap_or_default();
    let ap = sp.key("filter").key("attributes");
    for name in attributes.keys() {
        if let Err(e) = check_attribute_name(name) {
            p.invalid(&ap.key(name.clone()), e);
        }
    }
    let fp = sp.key("filters");
    let filters: Option<Vec<Filter>> = spec
        .filters
        .as_deref()
        .unwrap_or_default()
        .iter()
        .enumerate()
        .map(|(i, f)| check_filter(f, &fp.index(i), p))
        .collect::<Vec<_>>()
        .into_iter()
        .collect();
    let subscriber = check_destination(
        spec.subscriber.as_ref(),
        &sp.key("subscriber"),
        &namespace,
        p,
    );
    if let (Some(s), Some(b)) = (&subscriber, &broker)
        && s.kind == SinkKind::Broker
        && s.name == *b
    {
        p.invalid(
            &sp.key("subscriber").key("ref").key("name"),
            format!(
                "the subscriber is the Trigger's own Broker `{b}`: every event would come back \
                 to this Trigger"
            ),
        );
    }
    let dp = sp.key("delivery");
    let delivery = spec
        .delivery
        .as_ref()
        .map(|d| check_delivery(d, &dp, &namespace, p));
    let mut stored = spec;
    default_namespace(&mut stored.subscriber, &namespace);
    stored.delivery = stored.delivery.as_ref().map(|d| defaulted(d, &namespace));
    Some(ValidatedTrigger {
        meta: meta?,
        spec: stored,
        broker: broker?,
        attributes,
        filters: filters?,
        subscriber: subscriber?,
        delivery,
    })
}
