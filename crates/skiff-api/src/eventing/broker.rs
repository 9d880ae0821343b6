//! `eventing.knative.dev/v1` Broker: a named place events are published to, from which
//! Triggers deliver them.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::delivery::{Delivery, DeliverySpec, check_delivery, defaulted};
use super::{EventingKind, EventingMeta, ValidatedMeta, check_meta};
use crate::problems::{FieldPath, Problems};
use crate::types::null_default;

/// The annotation choosing a Broker's implementation in Knative. skiff has one and records
/// the value as written.
pub const BROKER_CLASS_ANNOTATION: &str = "eventing.knative.dev/broker.class";

/// A Broker as a user writes it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokerManifest {
    /// Must be `eventing.knative.dev/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// Must be `Broker`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Name, namespace, labels, annotations (`eventing.knative.dev/broker.class` is recorded).
    #[serde(default, deserialize_with = "null_default")]
    pub metadata: EventingMeta,
    /// Delivery settings; may be left out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<BrokerSpec>,
}

/// A Broker's settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokerSpec {
    /// Retries and dead-letter sink for the Triggers that set none of their own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliverySpec>,
}

/// A Broker that passed every check.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidatedBroker {
    /// Name, namespace, labels, annotations.
    pub meta: ValidatedMeta,
    /// The spec as stored (the dead-letter sink's namespace filled in).
    pub spec: BrokerSpec,
    /// The `eventing.knative.dev/broker.class` annotation as written.
    pub class: Option<String>,
    /// The delivery settings, if any.
    pub delivery: Option<Delivery>,
}

impl ValidatedBroker {
    /// What the manifest asks for that skiff accepts but that changes nothing, as
    /// `path: why` lines.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if let Some(class) = &self.class {
            let path = FieldPath::parse("metadata.annotations").key(BROKER_CLASS_ANNOTATION);
            out.push(format!(
                "{path}: `{class}` is recorded but has no effect: skiff has one Broker \
                 implementation"
            ));
        }
        out
    }
}

/// Checks a Broker manifest.
pub fn validate_broker(m: BrokerManifest, p: &mut Problems) -> Option<ValidatedBroker> {
    let meta = check_meta(
        EventingKind::Broker,
        m.api_version.as_deref(),
        m.kind.as_deref(),
        &m.metadata,
        p,
    );
    let namespace = super::namespace_of(&m.metadata);
    let spec = m.spec.unwrap_or_default();
    let dp = FieldPath::root().key("spec").key("delivery");
    let delivery = spec
        .delivery
        .as_ref()
        .map(|d| check_delivery(d, &dp, &namespace, p));
    let stored = BrokerSpec {
        delivery: spec.delivery.as_ref().map(|d| defaulted(d, &namespace)),
    };
    Some(ValidatedBroker {
        class: m.metadata.annotations.get(BROKER_CLASS_ANNOTATION).cloned(),
        meta: meta?,
        spec: stored,
        delivery,
    })
}
