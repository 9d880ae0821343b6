//! The instance reconciler: keeps the number of instances of each Service's latest revision at
//! its desired scale, records every instance so a restarted daemon can re-adopt it, and turns
//! instance states into revision conditions.
//!
//! # Design
//! The desired scale is `/scale/<ns>/<service>` (set by `skiff scale`, the manual override
//! until the autoscaler arrives); each running instance's plan is `/instances/<ns>/<id>`,
//! written before the instance starts and removed once it is gone. At start, the recorded
//! plans are offered to [`Runtime::recover`], which re-adopts instances whose containers
//! still run and removes every other trace of the previous run. The reconciler runs on every
//! scale change, every instance event, and every 2 s.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use serde::{Deserialize, Serialize};
use skiff_api::object::{ConditionStatus, Revision, condition, set_condition};
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

/// The desired scale of a Service (manual override).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
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
    kick: Notify,
    lock: tokio::sync::Mutex<()>,
}

impl InstanceManager {
    /// A manager over the runtime.
    pub fn new(
        runtime: Arc<Runtime>,
        controller: Controller,
        images: Arc<Images>,
        store: Arc<dyn Store>,
    ) -> Arc<Self> {
        Arc::new(InstanceManager {
            runtime,
            controller,
            images,
            store,
            kick: Notify::new(),
            lock: Default::default(),
        })
    }

    /// The runtime.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// Asks for a reconcile now.
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Sets a Service's desired scale.
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

    /// A Service's desired scale (0 when never set).
    pub async fn scale(&self, ns: &str, svc: &str) -> Result<u32, ControllerError> {
        Ok(match self.store.get(&scale_key(ns, svc)).await? {
            Some(kv) => serde_json::from_slice::<Scale>(&kv.value)
                .map(|s| s.replicas)
                .unwrap_or(0),
            None => 0,
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
    /// and finally stops every instance.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken, stop_grace_cap: Duration) {
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
        self.runtime.stop_all(stop_grace_cap).await;
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
        let mut desired: BTreeMap<(String, String), u32> = BTreeMap::new();
        for kv in self.store.list("/scale/").await? {
            let parts: Vec<&str> = kv
                .key
                .trim_start_matches("/scale/")
                .splitn(2, '/')
                .collect();
            if let [ns, svc] = parts[..] {
                let n = serde_json::from_slice::<Scale>(&kv.value)
                    .map(|s| s.replicas)
                    .unwrap_or(0);
                desired.insert((ns.to_owned(), svc.to_owned()), n);
            }
        }
        let running = self.runtime.instances();
        let mut services: BTreeMap<(String, String), Vec<Arc<Instance>>> = BTreeMap::new();
        for i in running {
            services
                .entry((i.plan.namespace.clone(), i.plan.service.clone()))
                .or_default()
                .push(i);
        }
        for key in desired.keys() {
            services.entry(key.clone()).or_default();
        }
        for ((ns, svc), instances) in services {
            let want = desired
                .get(&(ns.clone(), svc.clone()))
                .copied()
                .unwrap_or(0);
            let service = match self.controller.get_service(&ns, &svc).await {
                Ok(s) => Some(s),
                Err(ControllerError::NotFound { .. }) => {
                    let _ = self
                        .store
                        .txn(Txn::new().delete(scale_key(&ns, &svc)))
                        .await;
                    None
                }
                Err(e) => return Err(e),
            };
            let target = match &service {
                Some(s) => match &s.status.latest_created_revision_name {
                    Some(name) => self
                        .controller
                        .get_revision(&ns, name)
                        .await
                        .ok()
                        .filter(|r| !needs_images(r)),
                    None => None,
                },
                None => None,
            };
            let live: Vec<&Arc<Instance>> = instances
                .iter()
                .filter(|i| !matches!(i.status().phase, Phase::Stopping | Phase::Stopped))
                .collect();
            let (of_target, others): (Vec<&Arc<Instance>>, Vec<&Arc<Instance>>) =
                live.iter().partition(|i| {
                    target
                        .as_ref()
                        .is_some_and(|t| t.metadata.name == i.plan.revision)
                });
            let want = if service.is_some() { want } else { 0 };
            // Other revisions make way once the target has what it wants, or when the target
            // cannot run at all (manual override: the latest revision is what runs).
            for i in others {
                if target.is_none() || of_target.len() >= want as usize || want == 0 {
                    self.stop_in_background(i.clone());
                }
            }
            if let Some(rev) = &target {
                if of_target.len() < want as usize {
                    for _ in of_target.len()..want as usize {
                        if let Err(e) = self.start_instance(rev).await {
                            warn!(revision = %rev.metadata.name, error = %e, "starting an instance");
                            break;
                        }
                    }
                } else if of_target.len() > want as usize {
                    let mut extra: Vec<&Arc<Instance>> = of_target.clone();
                    // Stop those not ready first, then the newest.
                    extra.sort_by_key(|i| {
                        (i.status().ready, std::cmp::Reverse(i.status().started_at))
                    });
                    for i in extra.into_iter().take(of_target.len() - want as usize) {
                        self.stop_in_background(i.clone());
                    }
                }
            } else if want > 0 {
                for i in of_target {
                    self.stop_in_background(i.clone());
                }
            }
            self.update_statuses(&ns, &svc, want, target.as_ref())
                .await?;
        }
        Ok(())
    }

    fn stop_in_background(&self, inst: Arc<Instance>) {
        if inst.status().phase == Phase::Stopping {
            return;
        }
        let (rt, store) = (self.runtime.clone(), self.store.clone());
        info!(instance = %inst.plan.id, "stopping instance");
        tokio::spawn(async move {
            let _ = rt.stop(&inst.plan.id).await;
            let _ = store
                .txn(Txn::new().delete(instance_key(&inst.plan.namespace, &inst.plan.id)))
                .await;
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

    /// Writes revision conditions from the instances of a Service.
    async fn update_statuses(
        &self,
        ns: &str,
        svc: &str,
        want: u32,
        target: Option<&Revision>,
    ) -> Result<(), ControllerError> {
        let revisions = self.controller.list_revisions(Some(ns), Some(svc)).await?;
        let mut by_rev: HashMap<String, Vec<InstanceStatus>> = HashMap::new();
        for i in self
            .runtime
            .instances()
            .into_iter()
            .filter(|i| i.plan.namespace == ns && i.plan.service == svc)
        {
            by_rev
                .entry(i.plan.revision.clone())
                .or_default()
                .push(i.status());
        }
        for r in revisions.iter().filter(|r| !needs_images(r)) {
            let statuses = by_rev.remove(&r.metadata.name).unwrap_or_default();
            let desired = if target.is_some_and(|t| t.metadata.name == r.metadata.name) {
                want
            } else {
                0
            };
            let now = self.controller.now();
            let pull_failed = condition(&r.status.conditions, "Ready")
                .is_some_and(|c| c.reason.as_deref() == Some(crate::revisions::REASON_PULL_FAILED));
            if pull_failed {
                continue;
            }
            let name = r.metadata.name.clone();
            self.controller
                .update_revision(ns, &name, true, move |r| {
                    let before = (r.status.clone(),);
                    apply_instance_status(r, &statuses, desired, &now);
                    before.0 != r.status
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
    r.status.actual_replicas = actual;
    r.status.desired_replicas = desired;
    let was_ready =
        condition(&r.status.conditions, "Ready").is_some_and(|c| c.status == ConditionStatus::True);
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
            if ready_now > 0 || was_ready {
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
            } else {
                let msg = "the revision's images are pinned; no instance has run yet (`skiff scale SERVICE N` starts instances)".to_owned();
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
    if actual > 0 {
        set(r, "ResourcesAvailable", ConditionStatus::True, None, None);
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
            "ResourcesAvailable",
            ConditionStatus::Unknown,
            Some(REASON_NO_INSTANCES),
            Some("no instance is running".into()),
        );
        set(
            r,
            "Active",
            ConditionStatus::False,
            Some(REASON_NO_INSTANCES),
            Some("no instance is running".into()),
        );
    }
}
