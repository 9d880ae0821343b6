//! Knative-shaped status, computed as a pure function of a Service, its revisions and what the
//! daemon can observe. The controller stores the result with every write, and recomputes it
//! at start (so a changed domain or port shows at once).

use skiff_api::object::{
    Addressable, ConditionStatus, Revision, RevisionStatus, Service, ServiceStatus, TrafficStatus,
    condition, set_condition,
};
use skiff_api::types::TrafficTarget;

/// What status computation needs to know besides the objects.
#[derive(Debug, Clone)]
pub struct StatusContext {
    /// The domain of service URLs.
    pub domain: String,
    /// The ingress port, shown in URLs unless it is 80.
    pub ingress_port: u16,
    /// The current time, RFC 3339.
    pub now: String,
}

impl StatusContext {
    /// `http://<host>[:port]`.
    pub fn url(&self, host: &str) -> String {
        if self.ingress_port == 80 {
            format!("http://{host}")
        } else {
            format!("http://{host}:{}", self.ingress_port)
        }
    }
}

/// The reason of a revision whose images are not resolved yet.
pub const REASON_RESOLVING: &str = "ResolvingImages";
/// The message that goes with [`REASON_RESOLVING`].
pub const MESSAGE_RESOLVING: &str = "resolving the revision's images to digests";

/// Why a revision cannot serve, as anyone who reaches the ingress may read it: one phrase
/// made from its `Ready` reason alone. Condition messages stay behind the API token: they
/// can hold a container's output, host paths and a registry's answers.
pub fn public_failure(reason: Option<&str>) -> String {
    match reason {
        Some("CrashLoopBackOff") => "its container keeps exiting (CrashLoopBackOff)".to_owned(),
        Some("OOMKilled") => "its container ran out of memory (OOMKilled)".to_owned(),
        Some(crate::revisions::REASON_PULL_FAILED) => {
            "its image could not be pulled (ImagePullFailed)".to_owned()
        }
        // Reasons are skiff's own CamelCase words; anything else is not repeated.
        Some(r)
            if !r.is_empty() && r.len() <= 64 && r.bytes().all(|b| b.is_ascii_alphanumeric()) =>
        {
            format!("it failed ({r})")
        }
        _ => "it failed".to_owned(),
    }
}

/// The initial status of a freshly stamped revision.
pub fn initial_revision_status(now: &str) -> RevisionStatus {
    let mut status = RevisionStatus {
        observed_generation: 1,
        ..Default::default()
    };
    for t in ["ResourcesAvailable", "ContainerHealthy", "Ready"] {
        set_condition(
            &mut status.conditions,
            t,
            ConditionStatus::Unknown,
            Some(REASON_RESOLVING),
            Some(MESSAGE_RESOLVING.to_owned()),
            now,
        );
    }
    set_condition(
        &mut status.conditions,
        "Active",
        ConditionStatus::Unknown,
        Some("NoInstances"),
        Some("no instance of this revision is running".to_owned()),
        now,
    );
    status
}

fn is_ready(r: &Revision) -> bool {
    r.condition("Ready")
        .is_some_and(|c| c.status == ConditionStatus::True)
}

/// The traffic targets of a Service: its own, or 100% to the latest revision.
pub fn traffic_targets(service: &Service) -> Vec<TrafficTarget> {
    service.spec.traffic.clone().unwrap_or_else(|| {
        vec![TrafficTarget {
            latest_revision: Some(true),
            percent: Some(100),
            ..Default::default()
        }]
    })
}

/// Computes a Service's status from its revisions (those labelled with its name).
pub fn service_status(
    service: &Service,
    revisions: &[&Revision],
    ctx: &StatusContext,
) -> ServiceStatus {
    let mut status = ServiceStatus {
        observed_generation: service.metadata.generation,
        conditions: service.status.conditions.clone(),
        ..Default::default()
    };
    let name = &service.metadata.name;
    let ns = &service.metadata.namespace;
    let url = ctx.url(&format!("{name}.{ns}.{}", ctx.domain));
    status.url = Some(url.clone());
    status.address = Some(Addressable { url });

    let mut ordered: Vec<&Revision> = revisions.to_vec();
    ordered.sort_by_key(|r| r.configuration_generation());
    let latest_created = ordered.last().copied();
    let latest_ready = ordered.iter().rev().find(|r| is_ready(r)).copied();
    status.latest_created_revision_name = latest_created.map(|r| r.metadata.name.clone());
    status.latest_ready_revision_name = latest_ready.map(|r| r.metadata.name.clone());

    // ConfigurationsReady mirrors the latest created revision.
    let (cfg_status, cfg_reason, cfg_message) =
        match latest_created.and_then(|r| r.condition("Ready")) {
            Some(c) if c.status == ConditionStatus::True => (ConditionStatus::True, None, None),
            Some(c) => (
                c.status,
                Some(if c.status == ConditionStatus::False {
                    "RevisionFailed".to_owned()
                } else {
                    c.reason
                        .clone()
                        .unwrap_or_else(|| "RevisionNotReady".to_owned())
                }),
                Some(format!(
                    "revision {} is not ready: {}",
                    latest_created
                        .map(|r| r.metadata.name.as_str())
                        .unwrap_or_default(),
                    c.message.clone().unwrap_or_default()
                )),
            ),
            None => (
                ConditionStatus::Unknown,
                Some("RevisionMissing".to_owned()),
                Some("no revision has been created".to_owned()),
            ),
        };
    set_condition(
        &mut status.conditions,
        "ConfigurationsReady",
        cfg_status,
        cfg_reason.as_deref(),
        cfg_message,
        &ctx.now,
    );

    // RoutesReady: every traffic target resolves to a ready revision.
    let mut resolved = Vec::new();
    let mut missing: Option<String> = None;
    for t in traffic_targets(service) {
        let target = match &t.revision_name {
            Some(rev) => ordered.iter().find(|r| &r.metadata.name == rev).copied(),
            None => latest_ready,
        };
        match target {
            Some(r) if is_ready(r) => resolved.push(TrafficStatus {
                tag: t.tag.clone(),
                revision_name: r.metadata.name.clone(),
                latest_revision: t.revision_name.is_none(),
                percent: t.percent.unwrap_or(0),
                url: t
                    .tag
                    .as_ref()
                    .map(|tag| ctx.url(&format!("{tag}-{name}.{ns}.{}", ctx.domain))),
            }),
            _ => {
                if missing.is_none() {
                    missing = Some(match &t.revision_name {
                        Some(rev) => format!("revision {rev} is not ready"),
                        None => format!(
                            "configuration {name} is waiting for a revision to become ready"
                        ),
                    });
                }
            }
        }
    }
    match missing {
        None => {
            status.traffic = resolved;
            set_condition(
                &mut status.conditions,
                "RoutesReady",
                ConditionStatus::True,
                None,
                None,
                &ctx.now,
            );
        }
        Some(message) => set_condition(
            &mut status.conditions,
            "RoutesReady",
            ConditionStatus::Unknown,
            Some("RevisionMissing"),
            Some(message),
            &ctx.now,
        ),
    }

    let cfg = condition(&status.conditions, "ConfigurationsReady").cloned();
    let routes = condition(&status.conditions, "RoutesReady").cloned();
    let (ready, reason, message) = match (cfg, routes) {
        (Some(c), Some(r))
            if c.status == ConditionStatus::True && r.status == ConditionStatus::True =>
        {
            (ConditionStatus::True, None, None)
        }
        (Some(c), _) if c.status != ConditionStatus::True => (c.status, c.reason, c.message),
        (_, Some(r)) => (r.status, r.reason, r.message),
        _ => (ConditionStatus::Unknown, None, None),
    };
    set_condition(
        &mut status.conditions,
        "Ready",
        ready,
        reason.as_deref(),
        message,
        &ctx.now,
    );
    // Keep a stable, Knative-like order.
    let order = |t: &str| match t {
        "ConfigurationsReady" => 0,
        "Ready" => 1,
        "RoutesReady" => 2,
        _ => 3,
    };
    status.conditions.sort_by_key(|c| order(&c.condition_type));
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::object::{LABEL_SERVICE, ObjectMeta};
    use skiff_api::types::ServiceSpec;

    fn ctx() -> StatusContext {
        StatusContext {
            domain: "localhost".into(),
            ingress_port: 8080,
            now: "2026-11-25T00:00:00Z".into(),
        }
    }

    fn service(traffic: Option<Vec<TrafficTarget>>) -> Service {
        Service {
            api_version: "serving.knative.dev/v1".into(),
            kind: "Service".into(),
            metadata: ObjectMeta {
                name: "hello".into(),
                namespace: "default".into(),
                generation: 2,
                ..Default::default()
            },
            spec: ServiceSpec {
                template: None,
                traffic,
            },
            status: Default::default(),
        }
    }

    fn revision(name: &str, generation: i64, ready: ConditionStatus) -> Revision {
        let mut status = initial_revision_status("t");
        set_condition(
            &mut status.conditions,
            "Ready",
            ready,
            Some("Because"),
            Some("details".into()),
            "t",
        );
        Revision {
            api_version: "serving.knative.dev/v1".into(),
            kind: "Revision".into(),
            metadata: ObjectMeta {
                name: name.into(),
                namespace: "default".into(),
                labels: [
                    (LABEL_SERVICE.to_owned(), "hello".to_owned()),
                    (
                        skiff_api::object::LABEL_CONFIGURATION_GENERATION.to_owned(),
                        generation.to_string(),
                    ),
                ]
                .into(),
                ..Default::default()
            },
            spec: Default::default(),
            autoscaling: Default::default(),
            status,
        }
    }

    /// With no ready revision, the Service is Unknown with the revision's reason, and has a URL.
    #[test]
    fn not_ready_until_a_revision_is() {
        let r1 = revision("hello-00001", 1, ConditionStatus::Unknown);
        let s = service_status(&service(None), &[&r1], &ctx());
        assert_eq!(
            s.url.as_deref(),
            Some("http://hello.default.localhost:8080")
        );
        assert_eq!(
            s.latest_created_revision_name.as_deref(),
            Some("hello-00001")
        );
        assert_eq!(s.latest_ready_revision_name, None);
        assert_eq!(s.observed_generation, 2);
        let ready = condition(&s.conditions, "Ready").expect("ready");
        assert_eq!(ready.status, ConditionStatus::Unknown);
        assert_eq!(ready.reason.as_deref(), Some("Because"));
        assert!(s.traffic.is_empty());
    }

    /// Traffic resolves latest targets to the latest ready revision and pinned ones to
    /// themselves; tags get their own URLs.
    #[test]
    fn resolves_traffic() {
        let r1 = revision("hello-00001", 1, ConditionStatus::True);
        let r2 = revision("hello-00002", 2, ConditionStatus::True);
        let r3 = revision("hello-00003", 3, ConditionStatus::Unknown);
        let traffic = vec![
            TrafficTarget {
                revision_name: Some("hello-00001".into()),
                percent: Some(50),
                tag: Some("old".into()),
                ..Default::default()
            },
            TrafficTarget {
                latest_revision: Some(true),
                percent: Some(50),
                ..Default::default()
            },
        ];
        let s = service_status(&service(Some(traffic)), &[&r1, &r3, &r2], &ctx());
        assert_eq!(
            s.latest_created_revision_name.as_deref(),
            Some("hello-00003")
        );
        assert_eq!(s.latest_ready_revision_name.as_deref(), Some("hello-00002"));
        assert_eq!(s.traffic.len(), 2);
        assert_eq!(
            s.traffic[0].url.as_deref(),
            Some("http://old-hello.default.localhost:8080")
        );
        assert_eq!(s.traffic[1].revision_name, "hello-00002");
        assert!(s.traffic[1].latest_revision);
        // Routes are ready, but the latest created revision is not: the Service is not Ready.
        assert_eq!(
            condition(&s.conditions, "RoutesReady").map(|c| c.status),
            Some(ConditionStatus::True)
        );
        assert_eq!(
            condition(&s.conditions, "Ready").map(|c| c.status),
            Some(ConditionStatus::Unknown)
        );
    }

    /// A failed latest revision makes the Service False with RevisionFailed.
    #[test]
    fn failed_revision_fails_the_service() {
        let r1 = revision("hello-00001", 1, ConditionStatus::False);
        let s = service_status(&service(None), &[&r1], &ctx());
        let ready = condition(&s.conditions, "Ready").expect("ready");
        assert_eq!(ready.status, ConditionStatus::False);
        assert_eq!(ready.reason.as_deref(), Some("RevisionFailed"));
    }

    /// Port 80 is left out of URLs.
    #[test]
    fn port_80_is_implicit() {
        let mut c = ctx();
        c.ingress_port = 80;
        assert_eq!(c.url("a.b.c"), "http://a.b.c");
    }
}
