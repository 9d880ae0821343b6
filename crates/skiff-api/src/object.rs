//! API objects as the daemon stores and returns them: Services and Revisions with their
//! metadata and Knative-shaped status.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::autoscaling::AutoscalingSettings;
use crate::types::{RevisionSpec, SERVING_API_VERSION, ServiceSpec};

/// Label on a Revision naming its Service.
pub const LABEL_SERVICE: &str = "serving.knative.dev/service";
/// Label on a Revision naming its Configuration (the Service's name in skiff).
pub const LABEL_CONFIGURATION: &str = "serving.knative.dev/configuration";
/// Label on a Revision with its Configuration generation.
pub const LABEL_CONFIGURATION_GENERATION: &str = "serving.knative.dev/configurationGeneration";
/// Label on a Revision with its Service's uid.
pub const LABEL_SERVICE_UID: &str = "serving.knative.dev/serviceUID";

/// Metadata of a stored object.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ObjectMeta {
    /// The name, unique in the namespace.
    pub name: String,
    /// The namespace.
    pub namespace: String,
    /// The prefix the name was generated from, if it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generate_name: Option<String>,
    /// A unique id for this incarnation of the object.
    pub uid: String,
    /// Increases with every change to `spec`.
    pub generation: i64,
    /// Changes with every write; send it back to update only what you read.
    #[serde(default)]
    pub resource_version: String,
    /// When the object was created (RFC 3339).
    pub creation_timestamp: String,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
}

/// `True`, `False` or `Unknown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ConditionStatus {
    /// The condition holds.
    True,
    /// The condition does not hold.
    False,
    /// Not known yet.
    Unknown,
}

impl std::fmt::Display for ConditionStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        })
    }
}

/// One aspect of an object's state, as Knative reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    /// `Ready`, `ConfigurationsReady`, `RoutesReady`, `ResourcesAvailable`, ….
    #[serde(rename = "type")]
    pub condition_type: String,
    /// Whether it holds.
    pub status: ConditionStatus,
    /// A CamelCase reason when it does not hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// A sentence for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When `status` last changed (RFC 3339).
    pub last_transition_time: String,
}

/// Sets a condition, keeping its transition time when its status does not change.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    condition_type: &str,
    status: ConditionStatus,
    reason: Option<&str>,
    message: Option<String>,
    now: &str,
) {
    let reason = reason.map(str::to_owned);
    match conditions
        .iter_mut()
        .find(|c| c.condition_type == condition_type)
    {
        Some(c) => {
            if c.status != status {
                c.last_transition_time = now.to_owned();
            }
            c.status = status;
            c.reason = reason;
            c.message = message;
        }
        None => conditions.push(Condition {
            condition_type: condition_type.to_owned(),
            status,
            reason,
            message,
            last_transition_time: now.to_owned(),
        }),
    }
}

/// Finds a condition by type.
pub fn condition<'a>(conditions: &'a [Condition], condition_type: &str) -> Option<&'a Condition> {
    conditions
        .iter()
        .find(|c| c.condition_type == condition_type)
}

/// An address.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Addressable {
    /// The URL.
    pub url: String,
}

/// One resolved entry of a Service's traffic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrafficStatus {
    /// The tag, if the target has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<String>,
    /// The revision that receives this share.
    pub revision_name: String,
    /// Whether the target follows the latest ready revision.
    pub latest_revision: bool,
    /// The share of requests.
    pub percent: i64,
    /// The tag's own URL, for tagged targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// What skiff observed of a Service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default)]
    pub observed_generation: i64,
    /// `Ready`, `ConfigurationsReady` and `RoutesReady`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Where the Service answers: `http://<name>.<namespace>.<domain>[:port]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// The same URL, as Knative's addressable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Addressable>,
    /// The newest revision stamped from the template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_created_revision_name: Option<String>,
    /// The newest revision that became ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_ready_revision_name: Option<String>,
    /// The traffic split as it is served.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<TrafficStatus>,
    /// The rollout in progress, the stable revision and past rollouts (skiff's own), when a
    /// rollout policy applies or a rollback was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<crate::rollout::RolloutStatus>,
}

/// A Knative Service as stored and returned by the API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Service {
    /// `serving.knative.dev/v1`.
    pub api_version: String,
    /// `Service`.
    pub kind: String,
    /// Metadata.
    pub metadata: ObjectMeta,
    /// The desired state, as applied.
    pub spec: ServiceSpec,
    /// The observed state.
    #[serde(default)]
    pub status: ServiceStatus,
}

impl Service {
    /// A condition of the Service.
    pub fn condition(&self, condition_type: &str) -> Option<&Condition> {
        condition(&self.status.conditions, condition_type)
    }
}

/// The image a container of a revision runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerStatus {
    /// The container's name.
    pub name: String,
    /// The image pinned to its digest, once resolved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_digest: Option<String>,
}

/// What skiff observed of a Revision.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RevisionStatus {
    /// The generation this status describes.
    #[serde(default)]
    pub observed_generation: i64,
    /// `Ready`, `ResourcesAvailable`, `ContainerHealthy`, `Active`.
    #[serde(default)]
    pub conditions: Vec<Condition>,
    /// Per container, the image digest.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub container_statuses: Vec<ContainerStatus>,
    /// Instances running now.
    #[serde(default)]
    pub actual_replicas: u32,
    /// Instances wanted now.
    #[serde(default)]
    pub desired_replicas: u32,
}

/// An immutable snapshot of a Service's template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Revision {
    /// `serving.knative.dev/v1`.
    pub api_version: String,
    /// `Revision`.
    pub kind: String,
    /// Metadata, with labels naming the Service and configuration generation.
    pub metadata: ObjectMeta,
    /// The template's spec with Knative's defaults filled in.
    pub spec: RevisionSpec,
    /// The autoscaling settings read from the template's annotations.
    #[serde(default)]
    pub autoscaling: AutoscalingSettings,
    /// The observed state.
    #[serde(default)]
    pub status: RevisionStatus,
}

impl Revision {
    /// The configuration generation that stamped this revision (0 if the label is missing or
    /// malformed): the order in which a Service's revisions were created.
    pub fn configuration_generation(&self) -> i64 {
        self.metadata
            .labels
            .get(LABEL_CONFIGURATION_GENERATION)
            .and_then(|g| g.parse().ok())
            .unwrap_or(0)
    }

    /// A condition of the Revision.
    pub fn condition(&self, condition_type: &str) -> Option<&Condition> {
        condition(&self.status.conditions, condition_type)
    }

    /// The Service the revision belongs to.
    pub fn service_name(&self) -> Option<&str> {
        self.metadata.labels.get(LABEL_SERVICE).map(String::as_str)
    }
}

/// A list of objects.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct List<T> {
    /// `serving.knative.dev/v1`.
    pub api_version: String,
    /// `ServiceList` or `RevisionList`.
    pub kind: String,
    /// The objects, ordered by namespace and name.
    pub items: Vec<T>,
}

impl<T> List<T> {
    /// A list of `kind`.
    pub fn new(kind: &str, items: Vec<T>) -> Self {
        List {
            api_version: SERVING_API_VERSION.to_owned(),
            kind: kind.to_owned(),
            items,
        }
    }
}

/// What the server answers to a delete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeleteResponse {
    /// The deleted Service.
    pub name: String,
    /// Its namespace.
    pub namespace: String,
    /// The revisions deleted with it.
    pub deleted_revisions: Vec<String>,
}
