//! Deployments (M15): `skiff_deployments_total{namespace,service,outcome}` counts each new
//! revision once, when it settles: `succeeded` when it is first Ready, `failed` when its
//! Ready condition turns False first (an image that cannot be pulled, a container that
//! crashes or runs out of memory before it is ready, the progress deadline, a missing Secret
//! or ConfigMap). The first of the two counts; what the revision does later does not.
//!
//! # Design
//! A reconciler over Services and revisions. A Service's pass makes its two series (at 0, so
//! `rate()` has them from the start) or, once it is deleted, removes them. A revision's pass
//! reads its Ready condition and asks the pure [`settle`] whether this observation settles
//! it, given what this process saw of it before. Only transitions seen by this process
//! count: a revision first seen already settled (a restart finds it so) counts only if it
//! was created after the process started, so a restart never counts a revision again.
//!
//! # Limitations
//! A revision that settles while the daemon is down is never counted.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use skiff_api::object::{ConditionStatus, Revision};
use skiff_store::keys;
use tracing::info;

use crate::controller::{Controller, ControllerError, RevisionKey, parse_revision_key};
use crate::reconciler::{Next, ReconcileError, Reconciler};
use crate::status::conditions;

/// Where a revision stands, from its Ready condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// Neither ready nor failed yet (resolving, pulling, deploying, no instance yet).
    Pending,
    /// Ready.
    Ready,
    /// Failed (Ready is False).
    Failed,
}

impl Readiness {
    /// A revision's readiness.
    pub fn of(r: &Revision) -> Readiness {
        match r.condition(conditions::READY).map(|c| c.status) {
            Some(ConditionStatus::True) => Readiness::Ready,
            Some(ConditionStatus::False) => Readiness::Failed,
            _ => Readiness::Pending,
        }
    }
}

/// What this process has seen of a revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Pending.
    Pending,
    /// Settled (counted, or found settled).
    Settled,
}

/// How a deployment ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The revision became Ready.
    Succeeded,
    /// It failed before it was ever Ready.
    Failed,
    /// Its rollout's analysis sent its traffic back to the stable revision.
    RolledBack,
}

impl Outcome {
    /// Both outcomes.
    pub const ALL: [Outcome; 3] = [Outcome::Succeeded, Outcome::Failed, Outcome::RolledBack];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::RolledBack => "rolled_back",
        }
    }
}

/// What observing a revision `now` means, given what was `seen` of it before (`None`: this
/// is the first look) and whether it was created after this process started: what it has
/// been seen as from now on, and the outcome to count, if this look settles it.
pub fn settle(
    seen: Option<Seen>,
    now: Readiness,
    created_since_start: bool,
) -> (Seen, Option<Outcome>) {
    let outcome = match now {
        Readiness::Pending => return (seen.unwrap_or(Seen::Pending), None),
        Readiness::Ready => Outcome::Succeeded,
        Readiness::Failed => Outcome::Failed,
    };
    match seen {
        Some(Seen::Pending) => (Seen::Settled, Some(outcome)),
        None if created_since_start => (Seen::Settled, Some(outcome)),
        // Settled before this process looked (a restart), or already counted.
        None | Some(Seen::Settled) => (Seen::Settled, None),
    }
}

/// Labels of deployments.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeploymentLabels {
    namespace: String,
    service: String,
    outcome: &'static str,
}

fn labels(namespace: &str, service: &str, outcome: Outcome) -> DeploymentLabels {
    DeploymentLabels {
        namespace: namespace.to_owned(),
        service: service.to_owned(),
        outcome: outcome.as_str(),
    }
}

/// `skiff_deployments_total{namespace,service,outcome}`.
#[derive(Debug, Clone)]
pub struct DeploymentMetrics {
    deployments: Family<DeploymentLabels, Counter>,
}

impl DeploymentMetrics {
    /// Registers the counter in `registry` (the root one: the name is `skiff_deployments`).
    pub fn new(registry: &mut Registry) -> Self {
        let m = DeploymentMetrics {
            deployments: Family::default(),
        };
        registry.register(
            "deployments",
            "New revisions settled: succeeded (first Ready) or failed (Ready False first); rolled_back counts rollouts their analysis sent back to the stable revision",
            m.deployments.clone(),
        );
        m
    }

    /// Makes a Service's series, at 0.
    pub fn preset(&self, namespace: &str, service: &str) {
        for o in Outcome::ALL {
            self.deployments
                .get_or_create_owned(&labels(namespace, service, o));
        }
    }

    /// Counts a deployment of `service`.
    pub fn count(&self, namespace: &str, service: &str, outcome: Outcome) {
        self.preset(namespace, service);
        self.deployments
            .get_or_create(&labels(namespace, service, outcome))
            .inc();
    }

    /// Removes a deleted Service's series.
    pub fn forget(&self, namespace: &str, service: &str) {
        for o in Outcome::ALL {
            self.deployments.remove(&labels(namespace, service, o));
        }
    }
}

/// What the reconciler looks at.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DeploymentKey {
    /// A Service (namespace, name): its series.
    Service(String, String),
    /// A revision: whether it settled.
    Revision(RevisionKey),
}

/// Counts deployments as revisions settle.
pub struct DeploymentReconciler {
    controller: Controller,
    metrics: DeploymentMetrics,
    /// When this process started, as the controller's clock says.
    started: jiff::Timestamp,
    /// What was seen of each revision.
    seen: Mutex<HashMap<RevisionKey, Seen>>,
}

impl DeploymentReconciler {
    /// A reconciler counting into `metrics`; revisions created before now are not counted
    /// unless seen pending first.
    pub fn new(controller: Controller, metrics: DeploymentMetrics) -> Self {
        let started = controller
            .now()
            .parse()
            .unwrap_or_else(|_| jiff::Timestamp::now());
        DeploymentReconciler {
            controller,
            metrics,
            started,
            seen: Mutex::default(),
        }
    }

    fn created_since_start(&self, r: &Revision) -> bool {
        // Timestamps are whole seconds: one in the start's own second may be the previous
        // process's, so only a later one counts (never twice, rather than always).
        r.metadata
            .creation_timestamp
            .parse::<jiff::Timestamp>()
            .is_ok_and(|t| t > self.started)
    }
}

#[async_trait]
impl Reconciler for DeploymentReconciler {
    type Key = DeploymentKey;

    fn name(&self) -> &'static str {
        "deployments"
    }

    fn watches(&self) -> &'static [&'static str] {
        &[keys::SERVICES, keys::REVISIONS]
    }

    async fn keys_for(&self, store_key: &str) -> Vec<DeploymentKey> {
        if let Some(key) = parse_revision_key(store_key) {
            return vec![DeploymentKey::Revision(key)];
        }
        keys::parse_service(store_key)
            .map(|(ns, name)| DeploymentKey::Service(ns.to_owned(), name.to_owned()))
            .into_iter()
            .collect()
    }

    async fn all_keys(&self) -> Result<Vec<DeploymentKey>, ReconcileError> {
        let services = self.controller.list_services(None).await?;
        let revisions = self.controller.revision_keys().await?;
        Ok(services
            .into_iter()
            .map(|s| DeploymentKey::Service(s.metadata.namespace, s.metadata.name))
            .chain(revisions.into_iter().map(DeploymentKey::Revision))
            .collect())
    }

    async fn reconcile(&self, key: &DeploymentKey) -> Result<Next, ReconcileError> {
        match key {
            DeploymentKey::Service(ns, name) => match self.controller.get_service(ns, name).await {
                Ok(_) => self.metrics.preset(ns, name),
                Err(ControllerError::NotFound { .. }) => self.metrics.forget(ns, name),
                Err(e) => return Err(e.into()),
            },
            DeploymentKey::Revision(rk) => {
                let r = match self.controller.get_revision(&rk.0, &rk.1).await {
                    Ok(r) => r,
                    Err(ControllerError::NotFound { .. }) => {
                        self.seen
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(rk);
                        return Ok(Next::Done);
                    }
                    Err(e) => return Err(e.into()),
                };
                let Some(service) = r.service_name() else {
                    return Ok(Next::Done);
                };
                let created_since_start = self.created_since_start(&r);
                let outcome = {
                    let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
                    let (next, outcome) = settle(
                        seen.get(rk).copied(),
                        Readiness::of(&r),
                        created_since_start,
                    );
                    seen.insert(rk.clone(), next);
                    outcome
                };
                if let Some(o) = outcome {
                    self.metrics.count(&rk.0, service, o);
                    info!(namespace = %rk.0, service, revision = %rk.1, outcome = o.as_str(), "deployment settled");
                }
            }
        }
        Ok(Next::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Readiness::{Failed, Pending, Ready};

    /// A revision seen pending counts once, when it first settles, whichever way; it never
    /// counts again, whatever it does later.
    #[test]
    fn a_pending_revision_counts_once_when_it_settles() {
        let (s, o) = settle(None, Pending, false);
        assert_eq!((s, o), (Seen::Pending, None));
        let (s, o) = settle(Some(s), Pending, false);
        assert_eq!((s, o), (Seen::Pending, None));
        let (s, o) = settle(Some(s), Ready, false);
        assert_eq!((s, o), (Seen::Settled, Some(Outcome::Succeeded)));
        // Ready, then failing, then ready again: nothing more.
        for now in [Ready, Failed, Pending, Ready] {
            assert_eq!(settle(Some(s), now, true), (Seen::Settled, None));
        }
        let (s, o) = settle(Some(Seen::Pending), Failed, false);
        assert_eq!((s, o), (Seen::Settled, Some(Outcome::Failed)));
        assert_eq!(settle(Some(s), Ready, false), (Seen::Settled, None));
    }

    /// A revision first seen settled counts only if it was created after the process
    /// started: one a restart finds ready or failed is not counted again.
    #[test]
    fn a_restart_does_not_count_settled_revisions_again() {
        assert_eq!(settle(None, Ready, false), (Seen::Settled, None));
        assert_eq!(settle(None, Failed, false), (Seen::Settled, None));
        assert_eq!(
            settle(None, Ready, true),
            (Seen::Settled, Some(Outcome::Succeeded))
        );
        assert_eq!(
            settle(None, Failed, true),
            (Seen::Settled, Some(Outcome::Failed))
        );
    }

    fn render(registry: &Registry) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, registry).expect("encodes");
        out
    }

    /// A Service's series exist at 0 from its first pass, count by outcome, and go with it.
    #[test]
    fn series_are_preset_counted_and_forgotten() {
        let mut registry = Registry::with_prefix("skiff");
        let m = DeploymentMetrics::new(&mut registry);
        m.preset("default", "hello");
        let text = render(&registry);
        for o in ["succeeded", "failed"] {
            let line = format!(
                r#"skiff_deployments_total{{namespace="default",service="hello",outcome="{o}"}} 0"#
            );
            assert!(text.contains(&line), "{text}");
        }
        m.count("default", "hello", Outcome::Succeeded);
        let text = render(&registry);
        assert!(
            text.contains(
                r#"skiff_deployments_total{namespace="default",service="hello",outcome="succeeded"} 1"#
            ),
            "{text}"
        );
        m.forget("default", "hello");
        assert!(!render(&registry).contains("hello"));
    }
}
