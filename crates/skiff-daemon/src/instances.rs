//! The instance reconciler: keeps each revision at the instance count the autoscaler (or a
//! manual override) wants, records every instance so a restarted daemon can re-adopt it, and
//! turns instance states into revision conditions.
//!
//! # Design
//! Each pass first brings the router up to date with the stored Services
//! ([`Serving::sync`]), then compares every revision's running instances with its desired
//! count: the autoscaler's decision, or `/scale/<ns>/<service>` (set by `skiff scale`, a
//! manual override of the latest revision's count). Each running instance's plan is
//! `/instances/<ns>/<id>`, written before the instance starts and removed once it is gone. An
//! instance chosen for removal is drained first (no new requests; those in flight finish, up
//! to the revision's `timeoutSeconds`), then stopped. At start, the recorded plans are offered
//! to [`Runtime::recover`], which re-adopts instances whose containers still run and removes
//! every other trace of the previous run. A pass runs on every scaling decision that changes
//! something, every instance event, and every 2 s.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use skiff_api::object::{ConditionStatus, Revision, Service, condition, set_condition};
use skiff_runtime::cgroups::Usage;
use skiff_runtime::instance::{InstancePlan, InstanceStatus, Phase};
use skiff_runtime::{Instance, Runtime};
use skiff_store::{Store, Txn};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use utoipa::ToSchema;

use crate::controller::{Controller, ControllerError};
use crate::images::Images;
use crate::revisions::needs_images;
use crate::serving::{ScaleStatus, Serving};

/// A manual override of how many instances of a Service's latest revision run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Scale {
    /// Instances wanted for the latest revision.
    pub replicas: u32,
}

/// An instance as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct InstanceView {
    /// The instance id.
    pub id: String,
    /// Its revision.
    pub revision: String,
    /// Its state.
    #[schema(value_type = Object)]
    pub status: InstanceStatus,
    /// Resource usage read from its cgroups.
    #[schema(value_type = Object)]
    pub usage: Usage,
}

/// Reason while a revision has never had a ready instance and none runs.
pub const REASON_NO_INSTANCES: &str = "NoInstances";

fn scale_key(ns: &str, svc: &str) -> String {
    format!("/scale/{ns}/{svc}")
}

fn instance_key(ns: &str, id: &str) -> String {
    format!("/instances/{ns}/{id}")
}

/// Runs instances.
pub struct InstanceManager {
    runtime: Arc<Runtime>,
    controller: Controller,
    images: Arc<Images>,
    store: Arc<dyn Store>,
    serving: Arc<Serving>,
    kick: Arc<Notify>,
    lock: tokio::sync::Mutex<()>,
    /// Held from listing the Services to handing the routes to the router, so a route table
    /// built from an older listing never replaces one built from a newer.
    routes_lock: tokio::sync::Mutex<()>,
    /// Instances being drained and stopped: no longer counted as running.
    retiring: Arc<Mutex<HashSet<String>>>,
}

impl InstanceManager {
    /// A manager over the runtime; `kick` is the notifier [`Serving`] pokes.
    pub fn new(
        runtime: Arc<Runtime>,
        controller: Controller,
        images: Arc<Images>,
        store: Arc<dyn Store>,
        serving: Arc<Serving>,
        kick: Arc<Notify>,
    ) -> Arc<Self> {
        Arc::new(InstanceManager {
            runtime,
            controller,
            images,
            store,
            serving,
            kick,
            lock: Default::default(),
            routes_lock: Default::default(),
            retiring: Arc::default(),
        })
    }

    /// Serving (router and autoscalers).
    pub fn serving(&self) -> &Arc<Serving> {
        &self.serving
    }

    /// The runtime.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Asks for a reconcile now.
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Brings the router in line with the store now, without waiting for a reconcile pass:
    /// the API calls it after a write so the ingress knows an applied Service (and forgets a
    /// deleted one) by the time the client has its answer.
    pub async fn sync_routes(&self) -> Result<(), ControllerError> {
        self.routes().await.map(drop)
    }

    /// Lists Services and revisions and routes by them; returns the listing.
    async fn routes(&self) -> Result<(Vec<Service>, Vec<Revision>), ControllerError> {
        let _guard = self.routes_lock.lock().await;
        let services = self.controller.list_services(None).await?;
        let revisions = self.controller.list_revisions(None, None).await?;
        self.serving.sync(&services, &revisions);
        Ok((services, revisions))
    }

    /// Sets the manual override of a Service's latest revision's instance count.
    pub async fn set_scale(
        &self,
        ns: &str,
        svc: &str,
        replicas: u32,
    ) -> Result<(), ControllerError> {
        self.controller.get_service(ns, svc).await?;
        let key = scale_key(ns, svc);
        let value = serde_json::to_vec(&Scale { replicas }).expect("scale serializes");
        self.store.txn(Txn::new().put(key, value)).await?;
        info!(namespace = ns, service = svc, replicas, "scale set");
        self.kick();
        Ok(())
    }

    /// Removes a Service's manual override: the autoscaler decides again.
    pub async fn clear_scale(&self, ns: &str, svc: &str) -> Result<(), ControllerError> {
        self.controller.get_service(ns, svc).await?;
        self.store
            .txn(Txn::new().delete(scale_key(ns, svc)))
            .await?;
        info!(namespace = ns, service = svc, "scale override removed");
        self.kick();
        Ok(())
    }

    /// A Service's manual override, if set.
    pub async fn scale(&self, ns: &str, svc: &str) -> Result<Option<u32>, ControllerError> {
        Ok(match self.store.get(&scale_key(ns, svc)).await? {
            Some(kv) => serde_json::from_slice::<Scale>(&kv.value)
                .map(|s| s.replicas)
                .ok(),
            None => None,
        })
    }

    /// A Service's scale: the override and each revision's scale, load and decisions.
    pub async fn scale_status(&self, ns: &str, svc: &str) -> Result<ScaleStatus, ControllerError> {
        let service = self.controller.get_service(ns, svc).await?;
        let replicas_override = self.scale(ns, svc).await?;
        let target = service
            .status
            .latest_created_revision_name
            .clone()
            .zip(replicas_override);
        Ok(ScaleStatus {
            replicas_override,
            revisions: self.serving.scale_of(ns, svc, target),
        })
    }

    /// The instances of a Service.
    pub fn instances_of(&self, ns: &str, svc: &str) -> Vec<InstanceView> {
        let mut v: Vec<InstanceView> = self
            .runtime
            .instances()
            .into_iter()
            .filter(|i| i.plan.namespace == ns && i.plan.service == svc)
            .map(|i| InstanceView {
                id: i.plan.id.clone(),
                revision: i.plan.revision.clone(),
                status: i.status(),
                usage: i.usage(),
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Re-adopts or cleans up what a previous run left, then reconciles until `shutdown`,
    /// and finally stops every instance, each killed at most `stop_cap` after that (those
    /// being retired too).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, stop_cap: Duration) {
        let mut plans = Vec::new();
        match self.store.list("/instances/").await {
            Ok(kvs) => {
                for kv in kvs {
                    match serde_json::from_slice::<InstancePlan>(&kv.value) {
                        Ok(p) => plans.push(p),
                        Err(e) => warn!(key = %kv.key, error = %e, "unreadable instance record"),
                    }
                }
            }
            Err(e) => warn!(error = %skiff_telemetry::ErrorChain(&e), "listing instance records"),
        }
        let recorded: Vec<(String, String)> = plans
            .iter()
            .map(|p| (p.namespace.clone(), p.id.clone()))
            .collect();
        let report = self.runtime.recover(plans).await;
        info!(
            adopted = report.adopted.len(),
            containers_removed = report.removed_containers.len(),
            mounts_removed = report.removed_mounts.len(),
            instances_removed = report.removed_instances.len(),
            cgroups_removed = report.removed_cgroups.len(),
            "recovered instances of the previous run"
        );
        for (ns, id) in recorded {
            if !report.adopted.contains(&id) {
                let _ = self
                    .store
                    .txn(Txn::new().delete(instance_key(&ns, &id)))
                    .await;
            }
        }
        let mut events = self.runtime.events();
        loop {
            if let Err(e) = self.reconcile().await {
                warn!(error = %skiff_telemetry::ErrorChain(&e), "reconciling instances");
            }
            tokio::select! {
                () = self.kick.notified() => {}
                ev = events.recv() => {
                    // Coalesce bursts of events into one pass.
                    if ev.is_ok() {
                        while events.try_recv().is_ok() {}
                    }
                }
                () = tokio::time::sleep(Duration::from_secs(2)) => {}
                () = shutdown.cancelled() => break,
            }
        }
        info!("stopping every instance");
        let all = self.runtime.instances();
        self.runtime.stop_all(stop_cap).await;
        for i in all {
            let _ = self
                .store
                .txn(Txn::new().delete(instance_key(&i.plan.namespace, &i.plan.id)))
                .await;
        }
        self.runtime.remove_cgroup_parent();
    }

    async fn reconcile(&self) -> Result<(), ControllerError> {
        let _guard = self.lock.lock().await;
        // Routes first: a revision is drained only once the router no longer chooses it.
        let (services, revisions) = self.routes().await?;
        let mut overrides: HashMap<(String, String), u32> = HashMap::new();
        for kv in self.store.list("/scale/").await? {
            let parts: Vec<&str> = kv
                .key
                .trim_start_matches("/scale/")
                .splitn(2, '/')
                .collect();
            if let [ns, svc] = parts[..] {
                if !services
                    .iter()
                    .any(|s| s.metadata.namespace == ns && s.metadata.name == svc)
                {
                    let _ = self.store.txn(Txn::new().delete(&kv.key)).await;
                    continue;
                }
                if let Ok(scale) = serde_json::from_slice::<Scale>(&kv.value) {
                    overrides.insert((ns.to_owned(), svc.to_owned()), scale.replicas);
                }
            }
        }
        let latest: HashMap<(String, String), String> = services
            .iter()
            .filter_map(|s| {
                Some((
                    (s.metadata.namespace.clone(), s.metadata.name.clone()),
                    s.status.latest_created_revision_name.clone()?,
                ))
            })
            .collect();
        let auto = self.serving.desired();
        let retiring = self
            .retiring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let mut running: HashMap<(String, String), Vec<Arc<Instance>>> = HashMap::new();
        for i in self.runtime.instances() {
            let st = i.status();
            if matches!(st.phase, Phase::Stopping | Phase::Stopped) || retiring.contains(&i.plan.id)
            {
                continue;
            }
            running
                .entry((i.plan.namespace.clone(), i.plan.revision.clone()))
                .or_default()
                .push(i);
        }
        let mut desired_of: HashMap<(String, String), u32> = HashMap::new();
        for r in &revisions {
            let key = (r.metadata.namespace.clone(), r.metadata.name.clone());
            let svc_key = (
                r.metadata.namespace.clone(),
                r.service_name().unwrap_or_default().to_owned(),
            );
            let is_latest = latest.get(&svc_key) == Some(&r.metadata.name);
            let want = match overrides.get(&svc_key) {
                Some(n) if is_latest => *n,
                _ => auto.get(&key).copied().unwrap_or(0),
            };
            desired_of.insert(key.clone(), want);
            let have = running.remove(&key).unwrap_or_default();
            if needs_images(r) {
                continue;
            }
            if have.len() < want as usize {
                for _ in have.len()..want as usize {
                    if let Err(e) = self.start_instance(r).await {
                        warn!(revision = %r.metadata.name, error = %e, "starting an instance");
                        break;
                    }
                }
            } else if have.len() > want as usize {
                let mut extra = have.clone();
                // Remove those not ready first, then the least busy, then the newest.
                let pool = self.serving.router().pool(&key);
                let load = |id: &str| pool.as_ref().map_or(0, |p| p.in_flight_of(id));
                extra.sort_by_key(|i| {
                    let st = i.status();
                    (st.ready, load(&i.plan.id), std::cmp::Reverse(st.started_at))
                });
                for i in extra.into_iter().take(have.len() - want as usize) {
                    self.retire(i);
                }
            }
        }
        // Instances of revisions that no longer exist.
        for (_, instances) in running {
            for i in instances {
                self.retire(i);
            }
        }
        self.update_statuses(&revisions, &desired_of).await?;
        Ok(())
    }

    /// Drains an instance (no new requests; those in flight finish, up to its drain timeout,
    /// the revision's `timeoutSeconds`), then stops it (SIGTERM, SIGKILL after the
    /// termination grace) and forgets its record.
    fn retire(&self, inst: Arc<Instance>) {
        {
            let mut r = self.retiring.lock().unwrap_or_else(|p| p.into_inner());
            if !r.insert(inst.plan.id.clone()) {
                return;
            }
        }
        let (rt, store, serving, retiring, kick) = (
            self.runtime.clone(),
            self.store.clone(),
            self.serving.clone(),
            self.retiring.clone(),
            self.kick.clone(),
        );
        info!(instance = %inst.plan.id, "draining and stopping instance");
        tokio::spawn(async move {
            serving.drain(&inst.plan.id, inst.plan.drain_timeout).await;
            let _ = rt.stop(&inst.plan.id).await;
            let _ = store
                .txn(Txn::new().delete(instance_key(&inst.plan.namespace, &inst.plan.id)))
                .await;
            serving.router().forget(&inst.plan.id);
            retiring
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&inst.plan.id);
            kick.notify_one();
        });
    }

    async fn start_instance(&self, rev: &Revision) -> Result<(), String> {
        let mut images = Vec::new();
        for cs in &rev.status.container_statuses {
            let pinned = cs.image_digest.as_deref().unwrap_or_default();
            let digest = pinned.rsplit_once('@').map(|(_, d)| d).unwrap_or(pinned);
            let image = self
                .images
                .content()
                .by_digest(digest)
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("image {pinned} is no longer in the content store"))?;
            images.push(image);
        }
        let suffix: String = {
            const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
            let mut rng = rand::rng();
            (0..5)
                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
                .collect()
        };
        let id = format!("{}-{suffix}", rev.metadata.name);
        let content = self.images.content().clone();
        let plan = crate::plan::plan(
            rev,
            &images,
            |d| content.layer_path(d).unwrap_or_default(),
            &id,
        )
        .map_err(|e| e.to_string())?;
        let key = instance_key(&plan.namespace, &plan.id);
        self.store
            .txn(Txn::new().put(&key, serde_json::to_vec(&plan).expect("plans serialize")))
            .await
            .map_err(|e| skiff_telemetry::ErrorChain(&e).to_string())?;
        info!(instance = %id, revision = %rev.metadata.name, "starting instance");
        if let Err(e) = self.runtime.start(plan).await {
            let _ = self.store.txn(Txn::new().delete(&key)).await;
            return Err(skiff_telemetry::ErrorChain(&e).to_string());
        }
        Ok(())
    }

    /// Writes revision conditions and replica counts from their instances.
    async fn update_statuses(
        &self,
        revisions: &[Revision],
        desired_of: &HashMap<(String, String), u32>,
    ) -> Result<(), ControllerError> {
        let mut by_rev: HashMap<(String, String), Vec<InstanceStatus>> = HashMap::new();
        for i in self.runtime.instances() {
            by_rev
                .entry((i.plan.namespace.clone(), i.plan.revision.clone()))
                .or_default()
                .push(i.status());
        }
        for r in revisions.iter().filter(|r| !needs_images(r)) {
            let key = (r.metadata.namespace.clone(), r.metadata.name.clone());
            let statuses = by_rev.remove(&key).unwrap_or_default();
            let desired = desired_of.get(&key).copied().unwrap_or(0);
            let pull_failed = condition(&r.status.conditions, "Ready")
                .is_some_and(|c| c.reason.as_deref() == Some(crate::revisions::REASON_PULL_FAILED));
            if pull_failed {
                continue;
            }
            // Nothing to write when nothing changes (the common case on a 2 s pass).
            let now = self.controller.now();
            let mut probe = r.clone();
            apply_instance_status(&mut probe, &statuses, desired, &now);
            if probe.status == r.status {
                continue;
            }
            let (ns, name) = key;
            self.controller
                .update_revision(&ns, &name, true, move |r| {
                    let before = r.status.clone();
                    apply_instance_status(r, &statuses, desired, &now);
                    before != r.status
                })
                .await?;
        }
        Ok(())
    }
}

/// Derives a revision's runtime conditions from its instances.
pub fn apply_instance_status(
    r: &mut Revision,
    instances: &[InstanceStatus],
    desired: u32,
    now: &str,
) {
    let live: Vec<&InstanceStatus> = instances
        .iter()
        .filter(|s| !matches!(s.phase, Phase::Stopped))
        .collect();
    let actual = live
        .iter()
        .filter(|s| matches!(s.phase, Phase::Running | Phase::Starting))
        .count() as u32;
    let ready_now = live.iter().filter(|s| s.ready).count();
    // Knative's actualReplicas counts ready instances.
    r.status.actual_replicas = ready_now as u32;
    r.status.desired_replicas = desired;
    let was_ready =
        condition(&r.status.conditions, "Ready").is_some_and(|c| c.status == ConditionStatus::True);
    // ResourcesAvailable turns True when an instance is first ready and stays so (as in
    // Knative): the revision is known to be able to serve, so scaled to zero it is Ready
    // and starts on demand.
    let ever_ready = ready_now > 0
        || condition(&r.status.conditions, "ResourcesAvailable")
            .is_some_and(|c| c.status == ConditionStatus::True);
    // A container that keeps failing: the newest termination of a container waiting in
    // CrashLoopBackOff.
    let crash = live
        .iter()
        .flat_map(|s| s.containers.iter())
        .filter(|c| c.waiting_reason.as_deref() == Some("CrashLoopBackOff"))
        .filter_map(|c| c.last_termination.as_ref().map(|t| (c, t)))
        .max_by(|a, b| a.1.at.cmp(&b.1.at));
    let set = |r: &mut Revision,
               t: &str,
               s: ConditionStatus,
               reason: Option<&str>,
               msg: Option<String>| {
        set_condition(&mut r.status.conditions, t, s, reason, msg, now)
    };
    match crash {
        Some((c, t)) if ready_now == 0 => {
            let reason = if t.reason == "OOMKilled" {
                "OOMKilled".to_owned()
            } else {
                "CrashLoopBackOff".to_owned()
            };
            let lines = if t.last_lines.is_empty() {
                String::new()
            } else {
                format!("; last log lines:\n{}", t.last_lines.join("\n"))
            };
            let msg = format!(
                "container {} {} ({}; restarted {} times){lines}",
                c.name,
                match t.exit_code {
                    Some(code) => format!("exited with code {code}"),
                    None => "failed to start".to_owned(),
                },
                t.message,
                c.restarts
            );
            set(
                r,
                "ContainerHealthy",
                ConditionStatus::False,
                Some(&reason),
                Some(msg.clone()),
            );
            set(r, "Ready", ConditionStatus::False, Some(&reason), Some(msg));
        }
        _ => {
            if ready_now > 0 || was_ready || (actual == 0 && ever_ready) {
                set(r, "ContainerHealthy", ConditionStatus::True, None, None);
                set(r, "Ready", ConditionStatus::True, None, None);
            } else if actual > 0 {
                let msg = format!("waiting for {actual} instance(s) to become ready");
                set(
                    r,
                    "ContainerHealthy",
                    ConditionStatus::Unknown,
                    Some("Deploying"),
                    Some(msg.clone()),
                );
                set(
                    r,
                    "Ready",
                    ConditionStatus::Unknown,
                    Some("Deploying"),
                    Some(msg),
                );
            } else if condition(&r.status.conditions, "Ready")
                .is_some_and(|c| c.status == ConditionStatus::False)
            {
                // A revision that never served and failed keeps saying why after its
                // instances are gone.
            } else {
                let msg = "no instance has run yet; one starts when the autoscaler asks for it (initial scale, or the first request)".to_owned();
                set(
                    r,
                    "ContainerHealthy",
                    ConditionStatus::Unknown,
                    Some(REASON_NO_INSTANCES),
                    Some(msg.clone()),
                );
                set(
                    r,
                    "Ready",
                    ConditionStatus::Unknown,
                    Some(REASON_NO_INSTANCES),
                    Some(msg),
                );
            }
        }
    }
    if ever_ready {
        set(r, "ResourcesAvailable", ConditionStatus::True, None, None);
    } else {
        set(
            r,
            "ResourcesAvailable",
            ConditionStatus::Unknown,
            Some(if actual > 0 {
                "Deploying"
            } else {
                REASON_NO_INSTANCES
            }),
            Some(if actual > 0 {
                "no instance has been ready yet".into()
            } else {
                "no instance is running".into()
            }),
        );
    }
    if actual > 0 {
        set(
            r,
            "Active",
            ConditionStatus::True,
            None,
            Some(format!("{ready_now} of {actual} instance(s) ready")),
        );
    } else {
        set(
            r,
            "Active",
            ConditionStatus::False,
            Some(REASON_NO_INSTANCES),
            Some("no instance is running".into()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_runtime::instance::{ContainerStatus, Termination};

    fn revision() -> Revision {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Revision",
            "metadata": {"name": "r-00001", "namespace": "default", "uid": "u", "generation": 1, "creationTimestamp": "t"},
            "spec": {"containers": [{"image": "x"}]}
        }))
        .expect("revision")
    }

    fn running(ready: bool) -> InstanceStatus {
        InstanceStatus {
            phase: Phase::Running,
            ready,
            ..Default::default()
        }
    }

    fn crashing() -> InstanceStatus {
        InstanceStatus {
            phase: Phase::Running,
            containers: vec![ContainerStatus {
                name: "user-container".into(),
                waiting_reason: Some("CrashLoopBackOff".into()),
                restarts: 2,
                last_termination: Some(Termination {
                    reason: "Error".into(),
                    exit_code: Some(3),
                    at: "t".into(),
                    message: "exited".into(),
                    last_lines: vec!["boom".into()],
                }),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn ready_status(r: &Revision) -> ConditionStatus {
        condition(&r.status.conditions, "Ready")
            .map(|c| c.status)
            .unwrap_or(ConditionStatus::Unknown)
    }

    /// A revision that has served is Ready at zero (it starts on demand), even when its
    /// last instance crashed before it went; one that never served keeps its failure.
    #[test]
    fn readiness_across_scale_to_zero() {
        let mut r = revision();
        apply_instance_status(&mut r, &[running(false)], 1, "t1");
        assert_eq!(ready_status(&r), ConditionStatus::Unknown);
        apply_instance_status(&mut r, &[running(true)], 1, "t2");
        assert_eq!(ready_status(&r), ConditionStatus::True);
        assert_eq!(
            (r.status.actual_replicas, r.status.desired_replicas),
            (1, 1)
        );
        apply_instance_status(&mut r, &[crashing()], 1, "t3");
        assert_eq!(ready_status(&r), ConditionStatus::False);
        apply_instance_status(&mut r, &[], 0, "t4");
        assert_eq!(
            ready_status(&r),
            ConditionStatus::True,
            "{:?}",
            r.status.conditions
        );
        assert_eq!(
            condition(&r.status.conditions, "Active").map(|c| c.status),
            Some(ConditionStatus::False)
        );

        let mut never = revision();
        apply_instance_status(&mut never, &[crashing()], 1, "t1");
        assert_eq!(ready_status(&never), ConditionStatus::False);
        apply_instance_status(&mut never, &[], 0, "t2");
        let c = condition(&never.status.conditions, "Ready").expect("Ready");
        assert_eq!(c.status, ConditionStatus::False);
        assert!(
            c.message.as_deref().is_some_and(|m| m.contains("boom")),
            "{c:?}"
        );
    }
}
