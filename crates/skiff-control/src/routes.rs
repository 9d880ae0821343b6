//! The routing table, as a pure function of Services and their revisions: which host goes to
//! which revisions in what shares, how each revision is served, and which revisions are
//! reachable at all (the others scale to zero at once).
//!
//! # Design
//! A Service whose `status.traffic` is resolved (RoutesReady) is routed exactly as its status
//! says: `<service>.<namespace>.<domain>` splits by percent, `<tag>-<service>…` goes to the
//! tag's revision. Before that (a new Service whose first revision has not been ready yet, or
//! a traffic block naming a revision that is not ready), each target resolves as Knative
//! would hold it: a named revision that has not failed, else the latest ready revision, else
//! the latest created one if it has not failed. Requests to such a revision wait in the
//! activator while it starts instead of failing. A Service with nothing to serve answers 503
//! with why.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use skiff_api::object::{ConditionStatus, Revision, Service};
use skiff_api::types::TrafficTarget;
use skiff_router::{HostRoute, PoolSpec, RevisionKey};

use crate::status::{public_failure, traffic_targets};

/// What the router and the autoscaler are told.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteTable {
    /// Host (no port) → route.
    pub hosts: HashMap<String, HostRoute>,
    /// Every revision's serving settings.
    pub pools: Vec<PoolSpec>,
    /// Revisions that may get requests, or must run to become ready (the latest created).
    pub reachable: HashSet<RevisionKey>,
}

/// Why a failed revision cannot serve, for the public 503: its name, the failure in one
/// phrase from the condition's reason (never its message), and where to see the detail.
fn failed(r: &Revision) -> Option<String> {
    r.condition("Ready")
        .filter(|c| c.status == ConditionStatus::False)
        .map(|c| {
            format!(
                "revision `{}` is not ready: {}; see `skiff describe service {} -n {}`",
                r.metadata.name,
                public_failure(c.reason.as_deref()),
                r.service_name().unwrap_or(&r.metadata.name),
                r.metadata.namespace,
            )
        })
}

fn ready(r: &Revision) -> bool {
    r.condition("Ready")
        .is_some_and(|c| c.status == ConditionStatus::True)
}

fn secs(v: Option<i64>) -> Option<Duration> {
    v.filter(|s| *s > 0)
        .map(|s| Duration::from_secs(s.clamp(1, 3600) as u64))
}

/// How a revision is served.
pub fn pool_spec(r: &Revision) -> PoolSpec {
    let (serving, port) = skiff_api::validate::serving_port(&r.spec);
    let h2c = r
        .spec
        .containers
        .get(serving)
        .and_then(|c| c.ports.first())
        .and_then(|p| p.name.as_deref())
        == Some("h2c");
    PoolSpec {
        namespace: r.metadata.namespace.clone(),
        service: r.service_name().unwrap_or_default().to_owned(),
        revision: r.metadata.name.clone(),
        container_concurrency: r
            .spec
            .container_concurrency
            .and_then(|c| u32::try_from(c).ok())
            .unwrap_or(0),
        port,
        h2c,
        timeout: secs(r.spec.timeout_seconds).unwrap_or(Duration::from_secs(300)),
        response_start_timeout: secs(r.spec.response_start_timeout_seconds),
        idle_timeout: secs(r.spec.idle_timeout_seconds),
        unavailable: failed(r),
    }
}

/// A traffic target resolved to a revision: (revision, percent, tag).
type Target = (String, u32, Option<String>);

/// Builds the table for `services` and their `revisions` under `domain`.
pub fn build<'a>(
    services: impl IntoIterator<Item = &'a Service>,
    revisions: impl IntoIterator<Item = &'a Revision>,
    domain: &str,
) -> RouteTable {
    let revisions: Vec<&Revision> = revisions.into_iter().collect();
    let mut by_service = revisions_by_service(&revisions);
    let mut table = RouteTable::default();
    for s in services {
        let key = (s.metadata.namespace.clone(), s.metadata.name.clone());
        let revs = by_service.remove(&key).unwrap_or_default();
        table.merge(build_service(Some(s), revs, domain));
    }
    for (_, revs) in by_service {
        table.merge(build_service(None, revs, domain));
    }
    table
}

/// The part of the table that one Service (`None` once it is deleted) and its revisions
/// make: its hosts, and its revisions' pools and reachability.
pub fn build_service(s: Option<&Service>, revisions: Vec<&Revision>, domain: &str) -> RouteTable {
    let mut table = RouteTable {
        pools: revisions.iter().map(|r| pool_spec(r)).collect(),
        ..Default::default()
    };
    if let Some(s) = s {
        route_service(&mut table, s, revisions, domain);
    }
    table
}

impl RouteTable {
    fn merge(&mut self, other: RouteTable) {
        self.hosts.extend(other.hosts);
        self.pools.extend(other.pools);
        self.reachable.extend(other.reachable);
    }
}

/// The revisions of each Service, by (namespace, service); revisions of no Service under an
/// empty name.
fn revisions_by_service<'a>(
    revisions: &[&'a Revision],
) -> BTreeMap<(String, String), Vec<&'a Revision>> {
    let mut by_service: BTreeMap<(String, String), Vec<&'a Revision>> = BTreeMap::new();
    for &r in revisions {
        by_service
            .entry((
                r.metadata.namespace.clone(),
                r.service_name().unwrap_or_default().to_owned(),
            ))
            .or_default()
            .push(r);
    }
    by_service
}

/// Adds one Service's hosts and reachable revisions to `table`, from its revisions `revs`.
fn route_service(table: &mut RouteTable, s: &Service, mut revs: Vec<&Revision>, domain: &str) {
    revs.sort_by_key(|r| r.configuration_generation());
    let latest_created = revs.last().copied();
    let latest_ready = revs.iter().rev().find(|r| ready(r)).copied();
    // The latest created revision runs its initial scale to become ready (a failing one
    // keeps retrying with back-off until its autoscaler lets it go after a window).
    if let Some(r) = latest_created {
        table
            .reachable
            .insert((s.metadata.namespace.clone(), r.metadata.name.clone()));
    }
    let (targets, problem) = if s.status.traffic.is_empty() {
        resolve_targets(s, &revs, latest_ready, latest_created)
    } else {
        (status_targets(s), None)
    };
    // A revision whose images are not pinned yet can still be waited for; one that
    // failed (or vanished) takes the whole Service down with its reason, as Knative's
    // Route does not become ready either.
    match problem {
        Some(why) => route_unavailable(table, s, &targets, &why, domain),
        None => route_targets(table, s, &targets, domain),
    }
}

/// The targets of a Service whose `status.traffic` is resolved: exactly as it says.
fn status_targets(s: &Service) -> Vec<Target> {
    s.status
        .traffic
        .iter()
        .map(|t| {
            (
                t.revision_name.clone(),
                u32::try_from(t.percent).unwrap_or(0),
                t.tag.clone(),
            )
        })
        .collect()
}

/// The targets of a Service whose traffic is not resolved yet, each resolved as Knative
/// would hold it (see [`resolve_target`]); and why the first that does not resolve cannot.
fn resolve_targets(
    s: &Service,
    revs: &[&Revision],
    latest_ready: Option<&Revision>,
    latest_created: Option<&Revision>,
) -> (Vec<Target>, Option<String>) {
    let mut targets = Vec::new();
    let mut problem: Option<String> = None;
    for t in traffic_targets(s) {
        match resolve_target(&t, revs, latest_ready, latest_created) {
            Ok(rev) => targets.push((
                rev,
                u32::try_from(t.percent.unwrap_or(0)).unwrap_or(0),
                t.tag.clone(),
            )),
            Err(why) => {
                problem.get_or_insert(why);
            }
        }
    }
    (targets, problem)
}

/// The revision a target goes to: the one it names if that has not failed; for the latest,
/// the latest ready revision, else the latest created one if that has not failed. Otherwise
/// why not.
fn resolve_target(
    t: &TrafficTarget,
    revs: &[&Revision],
    latest_ready: Option<&Revision>,
    latest_created: Option<&Revision>,
) -> Result<String, String> {
    match &t.revision_name {
        Some(rev) => match revs.iter().find(|r| &r.metadata.name == rev) {
            Some(r) => unless_failed(r),
            None => Err(format!("revision `{rev}` does not exist")),
        },
        None => match (latest_ready, latest_created) {
            (Some(r), _) => Ok(r.metadata.name.clone()),
            (None, Some(r)) => unless_failed(r),
            (None, None) => Err("no revision has been created".to_owned()),
        },
    }
}

/// A revision's name, or why it failed.
fn unless_failed(r: &Revision) -> Result<String, String> {
    match failed(r) {
        None => Ok(r.metadata.name.clone()),
        Some(why) => Err(why),
    }
}

/// Routes a Service that cannot serve, and its tags, to a 503 saying `why`.
fn route_unavailable(
    table: &mut RouteTable,
    s: &Service,
    targets: &[Target],
    why: &str,
    domain: &str,
) {
    let (ns, name) = (&s.metadata.namespace, &s.metadata.name);
    let message = format!("service `{name}` in namespace `{ns}` cannot serve requests: {why}");
    table.hosts.insert(
        format!("{name}.{ns}.{domain}"),
        HostRoute::Unavailable {
            message: message.clone(),
        },
    );
    for (_, _, tag) in targets {
        if let Some(tag) = tag {
            table.hosts.insert(
                format!("{tag}-{name}.{ns}.{domain}"),
                HostRoute::Unavailable {
                    message: message.clone(),
                },
            );
        }
    }
}

/// Routes a Service's host by its targets' shares (summed per revision; 0% targets are
/// reachable only through their tags) and each tag's host to its revision.
fn route_targets(table: &mut RouteTable, s: &Service, targets: &[Target], domain: &str) {
    let (ns, name) = (&s.metadata.namespace, &s.metadata.name);
    let mut split: Vec<(String, u32)> = Vec::new();
    for (rev, percent, tag) in targets {
        table.reachable.insert((ns.clone(), rev.clone()));
        if *percent > 0 {
            match split.iter_mut().find(|(r, _)| r == rev) {
                Some((_, p)) => *p += percent,
                None => split.push((rev.clone(), *percent)),
            }
        }
        if let Some(tag) = tag {
            table.hosts.insert(
                format!("{tag}-{name}.{ns}.{domain}"),
                HostRoute::Tag {
                    namespace: ns.clone(),
                    service: name.clone(),
                    revision: rev.clone(),
                },
            );
        }
    }
    let route = if split.is_empty() {
        HostRoute::Unavailable {
            message: format!(
                "service `{name}` in namespace `{ns}` sends no traffic to any revision (every target has 0%); use a tag URL"
            ),
        }
    } else {
        HostRoute::Service {
            namespace: ns.clone(),
            service: name.clone(),
            split,
        }
    };
    table.hosts.insert(format!("{name}.{ns}.{domain}"), route);
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_api::object::{
        LABEL_CONFIGURATION_GENERATION, LABEL_SERVICE, ObjectMeta, TrafficStatus, set_condition,
    };
    use skiff_api::types::TrafficTarget;

    fn service(
        name: &str,
        traffic: Option<Vec<TrafficTarget>>,
        status: Vec<TrafficStatus>,
    ) -> Service {
        let mut s: Service = serde_json::from_value(serde_json::json!({
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": "default", "uid": "u", "generation": 1, "creationTimestamp": "t"},
            "spec": {"template": {"spec": {"containers": [{"image": "x"}]}}}
        }))
        .expect("service");
        s.spec.traffic = traffic;
        s.status.traffic = status;
        s
    }

    fn revision(svc: &str, generation: i64, ready: Option<ConditionStatus>) -> Revision {
        let mut r: Revision = serde_json::from_value(serde_json::json!({
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Revision",
            "metadata": {"name": format!("{svc}-{generation:05}"), "namespace": "default", "uid": "u", "generation": 1, "creationTimestamp": "t"},
            "spec": {"containers": [{"image": "x", "ports": [{"name": "h2c", "containerPort": 9000}]}],
                     "containerConcurrency": 3, "timeoutSeconds": 10, "idleTimeoutSeconds": 5}
        }))
        .expect("revision");
        r.metadata = ObjectMeta {
            labels: [
                (LABEL_SERVICE.to_owned(), svc.to_owned()),
                (
                    LABEL_CONFIGURATION_GENERATION.to_owned(),
                    generation.to_string(),
                ),
            ]
            .into(),
            ..r.metadata
        };
        if let Some(st) = ready {
            set_condition(
                &mut r.status.conditions,
                "Ready",
                st,
                Some("X"),
                Some("it broke".into()),
                "now",
            );
        }
        r
    }

    fn ts(rev: &str, percent: i64, tag: Option<&str>) -> TrafficStatus {
        TrafficStatus {
            tag: tag.map(str::to_owned),
            revision_name: rev.to_owned(),
            latest_revision: false,
            percent,
            url: None,
        }
    }

    fn key(rev: &str) -> RevisionKey {
        ("default".into(), rev.into())
    }

    /// A resolved status routes as it says: split, tags, reachability.
    #[test]
    fn routes_resolved_traffic() {
        let s = service(
            "a",
            None,
            vec![ts("a-00001", 50, None), ts("a-00002", 50, Some("new"))],
        );
        let revs = [
            revision("a", 1, Some(ConditionStatus::True)),
            revision("a", 2, Some(ConditionStatus::True)),
            revision("a", 3, None),
        ];
        let t = build(&[s], &revs, "localhost");
        assert_eq!(
            t.hosts.get("a.default.localhost"),
            Some(&HostRoute::Service {
                namespace: "default".into(),
                service: "a".into(),
                split: vec![("a-00001".into(), 50), ("a-00002".into(), 50)]
            })
        );
        assert_eq!(
            t.hosts.get("new-a.default.localhost"),
            Some(&HostRoute::Tag {
                namespace: "default".into(),
                service: "a".into(),
                revision: "a-00002".into()
            })
        );
        // The latest created (not ready yet) runs to become ready.
        assert!(t.reachable.contains(&key("a-00003")));
        assert!(t.reachable.contains(&key("a-00001")));
        assert_eq!(t.pools.len(), 3);
        let p = &t.pools[0];
        assert!(p.h2c);
        assert_eq!((p.port, p.container_concurrency), (9000, 3));
        assert_eq!(p.timeout, Duration::from_secs(10));
        assert_eq!(p.idle_timeout, Some(Duration::from_secs(5)));
    }

    /// A new Service whose first revision is not ready yet is held on that revision.
    #[test]
    fn holds_a_new_service_on_its_first_revision() {
        let s = service("b", None, vec![]);
        let t = build(
            &[s],
            &[revision("b", 1, Some(ConditionStatus::Unknown))],
            "localhost",
        );
        assert_eq!(
            t.hosts.get("b.default.localhost"),
            Some(&HostRoute::Service {
                namespace: "default".into(),
                service: "b".into(),
                split: vec![("b-00001".into(), 100)]
            })
        );
    }

    /// A failed first revision makes the Service unavailable, with the reason; an older
    /// ready revision keeps serving while a newer one fails.
    #[test]
    fn failed_revisions() {
        let t = build(
            &[service("c", None, vec![])],
            &[revision("c", 1, Some(ConditionStatus::False))],
            "localhost",
        );
        // The public message names the revision and the reason, never the condition's
        // message (container output, paths, registry answers).
        match t.hosts.get("c.default.localhost") {
            Some(HostRoute::Unavailable { message }) => {
                assert_eq!(
                    message,
                    "service `c` in namespace `default` cannot serve requests: revision `c-00001` is not ready: it failed (X); see `skiff describe service c -n default`"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(
            t.reachable.contains(&key("c-00001")),
            "a failed latest revision keeps retrying"
        );
        assert!(t.pools[0].unavailable.is_some());
        let s = service("d", None, vec![ts("d-00001", 100, None)]);
        let t = build(
            &[s],
            &[
                revision("d", 1, Some(ConditionStatus::True)),
                revision("d", 2, Some(ConditionStatus::False)),
            ],
            "localhost",
        );
        assert_eq!(
            t.hosts.get("d.default.localhost"),
            Some(&HostRoute::Service {
                namespace: "default".into(),
                service: "d".into(),
                split: vec![("d-00001".into(), 100)]
            })
        );
        assert!(t.reachable.contains(&key("d-00001")) && t.reachable.contains(&key("d-00002")));
    }

    /// Revisions no target names are unreachable; 0% tagged targets only get tag hosts.
    #[test]
    fn unreachable_and_zero_percent() {
        let s = service(
            "e",
            None,
            vec![ts("e-00002", 100, None), ts("e-00001", 0, Some("old"))],
        );
        let revs = [
            revision("e", 1, Some(ConditionStatus::True)),
            revision("e", 2, Some(ConditionStatus::True)),
            revision("f", 1, Some(ConditionStatus::True)),
        ];
        let t = build(&[s], &revs, "localhost");
        assert!(t.reachable.contains(&key("e-00001")));
        assert!(!t.reachable.contains(&key("f-00001")));
        assert_eq!(
            t.hosts.get("old-e.default.localhost"),
            Some(&HostRoute::Tag {
                namespace: "default".into(),
                service: "e".into(),
                revision: "e-00001".into()
            })
        );
        assert_eq!(t.hosts.len(), 2);
    }
}
