//! PingSources, Brokers and Triggers as the daemon stores and returns them: Knative's shape
//! (`apiVersion`, `kind`, `metadata`, `spec`, `status` with conditions) plus the counters skiff
//! keeps in `status`.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::broker::{BrokerSpec, ValidatedBroker};
use super::ping::{PingSourceSpec, ValidatedPingSource};
use super::trigger::{TriggerSpec, ValidatedTrigger};
use super::{EVENTING_API_VERSION, SOURCES_API_VERSION};
use crate::object::{Addressable, Condition, ObjectMeta, condition};

/// Condition: the object does what it says (every other condition holds).
pub const CONDITION_READY: &str = "Ready";
/// PingSource condition: its sink exists.
pub const CONDITION_SINK_PROVIDED: &str = "SinkProvided";
/// PingSource condition: its schedule is running (Knative's name).
pub const CONDITION_DEPLOYED: &str = "Deployed";
/// Broker condition: it accepts events at `status.address.url`.
pub const CONDITION_ADDRESSABLE: &str = "Addressable";
/// Trigger condition: its Broker exists and is ready.
pub const CONDITION_BROKER_READY: &str = "BrokerReady";
/// Trigger condition: its subscriber exists.
pub const CONDITION_SUBSCRIBER_RESOLVED: &str = "SubscriberResolved";
/// Broker and Trigger condition: the dead-letter sink, if any, exists.
pub const CONDITION_DEAD_LETTER_SINK_RESOLVED: &str = "DeadLetterSinkResolved";

/// What skiff observed of a PingSource.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PingSourceStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default)]
    pub observed_generation: i64,
    /// `Ready`, `SinkProvided`, `Deployed`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Where events are sent, once the sink is resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sink_uri: Option<String>,
    /// The schedule time of the last run (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<String>,
    /// The schedule time of the next run (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<String>,
    /// When an event was last delivered (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_delivery_time: Option<String>,
    /// Runs skipped because skiff was not running at their time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub missed_runs: Option<u64>,
}

/// A PingSource as stored and returned by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PingSource {
    /// `sources.knative.dev/v1`.
    pub api_version: String,
    /// `PingSource`.
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// The desired state, with Knative's defaults filled in.
    pub spec: PingSourceSpec,
    /// The observed state.
    #[serde(default)]
    pub status: PingSourceStatus,
}

/// What skiff observed of a Broker.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokerStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default)]
    pub observed_generation: i64,
    /// `Ready`, `Addressable`, `DeadLetterSinkResolved`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Where events are published to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Addressable>,
    /// Where dead letters go, once resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_sink_uri: Option<String>,
    /// Deliveries waiting in its queue.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<u64>,
    /// Events sent to its dead-letter sink (or dropped, without one) so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_lettered: Option<u64>,
}

/// A Broker as stored and returned by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Broker {
    /// `eventing.knative.dev/v1`.
    pub api_version: String,
    /// `Broker`.
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// The desired state.
    pub spec: BrokerSpec,
    /// The observed state.
    #[serde(default)]
    pub status: BrokerStatus,
}

/// What skiff observed of a Trigger.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TriggerStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default)]
    pub observed_generation: i64,
    /// `Ready`, `BrokerReady`, `SubscriberResolved`, `DeadLetterSinkResolved`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Where matching events are sent, once the subscriber is resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriber_uri: Option<String>,
    /// Where dead letters go, once resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_sink_uri: Option<String>,
    /// Events delivered so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivered: Option<u64>,
    /// Delivery attempts that failed so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failed: Option<u64>,
    /// Events sent to the dead-letter sink (or dropped, without one) so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_lettered: Option<u64>,
}

/// A Trigger as stored and returned by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Trigger {
    /// `eventing.knative.dev/v1`.
    pub api_version: String,
    /// `Trigger`.
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// The desired state.
    pub spec: TriggerSpec,
    /// The observed state.
    #[serde(default)]
    pub status: TriggerStatus,
}

impl PingSource {
    /// A PingSource with `metadata` (made by the daemon: uid, times) and the spec of
    /// `source`, and no status yet.
    pub fn new(metadata: ObjectMeta, source: &ValidatedPingSource) -> Self {
        PingSource {
            api_version: SOURCES_API_VERSION.to_owned(),
            kind: "PingSource".to_owned(),
            metadata,
            spec: source.spec.clone(),
            status: PingSourceStatus::default(),
        }
    }

    /// A condition of the PingSource.
    pub fn condition(&self, condition_type: &str) -> Option<&Condition> {
        condition(&self.status.conditions, condition_type)
    }
}

impl Broker {
    /// A Broker with `metadata` and the spec of `broker`, and no status yet.
    pub fn new(metadata: ObjectMeta, broker: &ValidatedBroker) -> Self {
        Broker {
            api_version: EVENTING_API_VERSION.to_owned(),
            kind: "Broker".to_owned(),
            metadata,
            spec: broker.spec.clone(),
            status: BrokerStatus::default(),
        }
    }

    /// A condition of the Broker.
    pub fn condition(&self, condition_type: &str) -> Option<&Condition> {
        condition(&self.status.conditions, condition_type)
    }
}

impl Trigger {
    /// A Trigger with `metadata` and the spec of `trigger`, and no status yet.
    pub fn new(metadata: ObjectMeta, trigger: &ValidatedTrigger) -> Self {
        Trigger {
            api_version: EVENTING_API_VERSION.to_owned(),
            kind: "Trigger".to_owned(),
            metadata,
            spec: trigger.spec.clone(),
            status: TriggerStatus::default(),
        }
    }

    /// A condition of the Trigger.
    pub fn condition(&self, condition_type: &str) -> Option<&Condition> {
        condition(&self.status.conditions, condition_type)
    }
}
