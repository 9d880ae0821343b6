//! Knative's duck/v1 `Destination`: where a PingSource, Trigger or dead-letter sink sends
//! events. skiff resolves only references to its own objects in the same namespace.

use std::fmt;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::names::check_dns1035_label;
use crate::problems::{FieldPath, ProblemKind, Problems};

use super::EVENTING_API_VERSION;
use crate::types::SERVING_API_VERSION;

/// `apiVersion` of Cloud Run Jobs, which skiff runs once per event when a Job is a sink.
pub const JOBS_API_VERSION: &str = "run.googleapis.com/v1";

/// Where events go, as a user writes it (Knative duck/v1 `Destination`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Destination {
    /// The object events are delivered to: a Service, a Broker or a Job.
    #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
    pub reference: Option<KReference>,
    /// A URL to deliver to. Not supported yet: only `ref` to a Service, Broker or Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
}

/// A reference to an object (Knative duck/v1 `KReference`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct KReference {
    /// `serving.knative.dev/v1`, `eventing.knative.dev/v1` or `run.googleapis.com/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_version: Option<String>,
    /// `Service`, `Broker` or `Job`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The object's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The object's namespace: the referring object's own (the default); no other is
    /// supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The kinds of object skiff delivers events to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SinkKind {
    /// A Knative Service: each event is a POST through the activator.
    Service,
    /// A Broker: the event is published to it again.
    Broker,
    /// A Cloud Run Job: each event starts one execution.
    Job,
}

impl SinkKind {
    /// Every kind, in the order messages list them.
    pub const ALL: [SinkKind; 3] = [SinkKind::Service, SinkKind::Broker, SinkKind::Job];

    /// The kind as written in `ref.kind`.
    pub fn as_str(self) -> &'static str {
        match self {
            SinkKind::Service => "Service",
            SinkKind::Broker => "Broker",
            SinkKind::Job => "Job",
        }
    }

    /// The `ref.apiVersion` that goes with the kind.
    pub fn api_version(self) -> &'static str {
        match self {
            SinkKind::Service => SERVING_API_VERSION,
            SinkKind::Broker => EVENTING_API_VERSION,
            SinkKind::Job => JOBS_API_VERSION,
        }
    }

    /// The kind named `kind`, if skiff delivers to it.
    pub fn from_kind(kind: &str) -> Option<SinkKind> {
        Self::ALL.into_iter().find(|k| k.as_str() == kind)
    }

    /// `Service (serving.knative.dev/v1), Broker (…), Job (…)`, for messages.
    fn supported() -> String {
        Self::ALL
            .iter()
            .map(|k| format!("{k} ({})", k.api_version()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for SinkKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A checked destination: an object of the same namespace as the one that refers to it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SinkRef {
    /// What kind of object.
    pub kind: SinkKind,
    /// Its name.
    pub name: String,
}

impl fmt::Display for SinkRef {
    /// `Service/hello`, as `kubectl` names objects.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// Checks the destination at `at` of an object in `namespace`; `None` when it is missing (a
/// problem says so) or has a problem.
pub(crate) fn check_destination(
    d: Option<&Destination>,
    at: &FieldPath,
    namespace: &str,
    p: &mut Problems,
) -> Option<SinkRef> {
    let Some(d) = d else {
        p.push(
            at,
            ProblemKind::Required,
            "required: a `ref` to the Service, Broker or Job to deliver to",
        );
        return None;
    };
    if d.uri.is_some() {
        p.not_supported(
            &at.key("uri"),
            "a `uri` sink; only ref: to a Service, Broker or Job",
        );
    }
    let rp = at.key("ref");
    let Some(r) = &d.reference else {
        if d.uri.is_none() {
            p.push(
                &rp,
                ProblemKind::Required,
                "required: the Service, Broker or Job to deliver to",
            );
        }
        return None;
    };
    let kind = match r.kind.as_deref() {
        None => {
            p.required(&rp.key("kind"));
            None
        }
        Some(k) => {
            let kind = SinkKind::from_kind(k);
            if kind.is_none() {
                p.not_supported(
                    &rp.key("kind"),
                    format!("sinks of kind `{k}`; supported: {}", SinkKind::supported()),
                );
            }
            kind
        }
    };
    match (r.api_version.as_deref(), kind) {
        (None, _) => p.required(&rp.key("apiVersion")),
        (Some(v), Some(kind)) if v != kind.api_version() => p.invalid(
            &rp.key("apiVersion"),
            format!(
                "`{v}` is not accepted: a {kind} to deliver to is `{}`",
                kind.api_version()
            ),
        ),
        _ => {}
    }
    let name = match r.name.as_deref() {
        None => {
            p.required(&rp.key("name"));
            None
        }
        Some(n) => match check_dns1035_label(n) {
            Ok(()) => Some(n.to_owned()),
            Err(e) => {
                p.invalid(&rp.key("name"), e);
                None
            }
        },
    };
    if let Some(ns) = r.namespace.as_deref()
        && ns != namespace
    {
        p.not_supported(
            &rp.key("namespace"),
            format!("delivering to another namespace (`{ns}`; this object is in `{namespace}`)"),
        );
        return None;
    }
    Some(SinkRef {
        kind: kind?,
        name: name?,
    })
}

/// Fills in `ref.namespace` with the referring object's namespace, as Knative's defaulting
/// does, so the stored spec says where events go.
pub(crate) fn default_namespace(d: &mut Option<Destination>, namespace: &str) {
    if let Some(r) = d.as_mut().and_then(|d| d.reference.as_mut())
        && r.namespace.is_none()
    {
        r.namespace = Some(namespace.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(v: serde_json::Value) -> (Option<SinkRef>, Vec<(String, ProblemKind, String)>) {
        let d: Destination = serde_json::from_value(v).expect("shape");
        let mut p = Problems::new();
        let out = check_destination(Some(&d), &FieldPath::parse("spec.sink"), "default", &mut p);
        let list = p
            .iter()
            .map(|(path, kind, msg)| (path.to_string(), kind, msg.to_owned()))
            .collect();
        (out, list)
    }

    /// Each supported kind with its apiVersion resolves to a typed reference.
    #[test]
    fn supported_kinds() {
        for kind in SinkKind::ALL {
            let (r, p) = check(serde_json::json!({"ref": {
                "apiVersion": kind.api_version(), "kind": kind.as_str(), "name": "target",
                "namespace": "default"
            }}));
            assert!(p.is_empty(), "{p:?}");
            let r = r.expect("resolved");
            assert_eq!(r.kind, kind);
            assert_eq!(r.to_string(), format!("{kind}/target"));
        }
    }

    /// Other kinds are refused naming the supported ones; a known kind with the wrong
    /// apiVersion names the right one.
    #[test]
    fn unsupported_kind_and_wrong_api_version() {
        let (r, p) = check(serde_json::json!({"ref": {
            "apiVersion": "messaging.knative.dev/v1", "kind": "InMemoryChannel", "name": "c"
        }}));
        assert!(r.is_none());
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "spec.sink.ref.kind");
        assert_eq!(p[0].1, ProblemKind::NotSupported);
        assert_eq!(
            p[0].2,
            "not supported by skiff yet (sinks of kind `InMemoryChannel`; supported: \
             Service (serving.knative.dev/v1), Broker (eventing.knative.dev/v1), \
             Job (run.googleapis.com/v1))"
        );
        let (_, p) = check(serde_json::json!({"ref": {
            "apiVersion": "v1", "kind": "Service", "name": "s"
        }}));
        assert_eq!(p[0].0, "spec.sink.ref.apiVersion");
        assert_eq!(
            p[0].2,
            "`v1` is not accepted: a Service to deliver to is `serving.knative.dev/v1`"
        );
    }

    /// `uri`, another namespace, and a reference with nothing in it: each at its path.
    #[test]
    fn uri_namespace_and_missing_fields() {
        let (r, p) = check(serde_json::json!({"uri": "http://example.com/"}));
        assert!(r.is_none());
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].0, "spec.sink.uri");
        assert_eq!(
            p[0].2,
            "not supported by skiff yet (a `uri` sink; only ref: to a Service, Broker or Job)"
        );
        let (r, p) = check(serde_json::json!({"ref": {
            "apiVersion": SERVING_API_VERSION, "kind": "Service", "name": "s", "namespace": "other"
        }}));
        assert!(r.is_none());
        assert_eq!(p[0].0, "spec.sink.ref.namespace");
        assert!(p[0].2.contains("another namespace (`other`"), "{p:?}");
        let (_, p) = check(serde_json::json!({"ref": {}}));
        let paths: Vec<&str> = p.iter().map(|(a, _, _)| a.as_str()).collect();
        assert_eq!(
            paths,
            [
                "spec.sink.ref.kind",
                "spec.sink.ref.apiVersion",
                "spec.sink.ref.name"
            ]
        );
        let (_, p) = check(serde_json::json!({}));
        assert_eq!(p[0].0, "spec.sink.ref");
        assert_eq!(p[0].1, ProblemKind::Required);
        let (_, p) = check(serde_json::json!({"ref": {
            "apiVersion": SERVING_API_VERSION, "kind": "Service", "name": "Bad_Name"
        }}));
        assert_eq!(p[0].0, "spec.sink.ref.name");
    }
}
