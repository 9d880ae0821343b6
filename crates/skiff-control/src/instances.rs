//! The instance reconciler: keeps each revision at the instance count the autoscaler (or a
//! manual override) wants, records every instance so a restarted daemon can re-adopt it, and
//! turns instance states into revision conditions.
//!
//! # Design
//! The key is one revision. A pass reads the revision, its Service's override
//! (`/scale/<ns>/<service>`, set by `skiff scale` for the latest revision) and the
//! autoscaler's desired count, takes the runtime's instances of that revision, and asks the
//! pure [`plan`] what to do: start some, retire some, or wait until the router no longer
//! routes a deleted revision. The executor then acts and writes the revision's conditions
//! ([`crate::status::apply_instance_status`]). Each running instance's plan is
//! `/instances/<ns>/<id>`, written before it starts and removed once it is gone. An instance
//! chosen for removal is drained (no new requests; those in flight finish, up to the
//! revision's `timeoutSeconds`), then stopped. At start, [`InstanceManager::recover`] offers
//! the recorded plans to the runtime, which re-adopts instances whose containers still run.
//! Keys come from the store (revisions, Services, overrides), from runtime events and from
//! the autoscaler.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;
use skiff_api::object::Revision;
use skiff_api::wire::{InstanceView, Scale, ScaleStatus};
use skiff_runtime::instance::{InstancePlan, InstanceStatus, Phase, Scheduled};
use skiff_store::{Store, Txn, keys};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::controller::{Controller, ControllerError, RevisionKey};
use crate::reconciler::{Handle, Next, ReconcileError, Reconciler};
use crate::runtime::{ImageStore, InstanceInfo, InstanceRuntime};
use crate::secrets::{self, SecretStore};
use crate::serving::Serving;
use crate::status::{self, needs_images, pull_failed};

/// One instance of the revision being planned.
#[derive(Debug, Clone, PartialEq)]
pub struct Observed {
    /// The instance id.
    pub id: String,
    /// Whether it takes requests.
    pub ready: bool,
    /// When it started (RFC 3339; orders newest first among equals).
    pub started_at: String,
    /// Requests in flight to it.
    pub in_flight: u32,
}

/// What the reconciler knows of one revision.
#[derive(Debug, Clone, PartialEq)]
pub struct RevisionState<'a> {
    /// The revision, or `None` once deleted.
    pub revision: Option<&'a Revision>,
    /// Whether the router still has a pool for it.
    pub routed: bool,
    /// Instances wanted.
    pub desired: u32,
    /// Its live instances (not stopping, not being retired, not parked).
    pub live: Vec<Observed>,
    /// Its parked instances (created, their processes held before exec), not retiring.
    pub parked: Vec<String>,
    /// Whether it keeps one parked instance (it may take requests, has not failed, and the
    /// daemon's cap of parked sandboxes allows it).
    pub park: bool,
    /// Its frozen instances (`skiff.dev/warm: frozen`).
    pub frozen: Vec<String>,
    /// Whether an instance it no longer wants at zero is frozen rather than stopped.
    pub freeze: bool,
}

/// What to do for one revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Thaw this frozen instance.
    Thaw(String),
    /// Freeze this instance (drained first) instead of stopping it.
    Freeze(String),
    /// Start this parked instance's processes.
    Unpark(String),
    /// Start this many instances.
    Start(u32),
    /// Park an instance (created ahead, started when wanted).
    Park,
    /// Drain and stop this instance.
    Retire(String),
    /// The revision is gone but the router still routes it: look again shortly, so no
    /// instance is drained while the router could still choose it.
    WaitForRoutes,
}

/// Decides what brings one revision to its desired count: parked instances are started
/// first, then new ones; one parked instance is kept (made once every live instance is
/// ready, so that parking never competes with a start) while `park` says so. Pure: the
/// reconcile pass's tests call it with plain values.
pub fn plan(state: &RevisionState<'_>) -> Vec<Action> {
    let retire_parked = || {
        state
            .parked
            .iter()
            .chain(&state.frozen)
            .map(|id| Action::Retire(id.clone()))
    };
    let Some(revision) = state.revision else {
        if state.routed && !state.live.is_empty() {
            return vec![Action::WaitForRoutes];
        }
        return state
            .live
            .iter()
            .map(|i| Action::Retire(i.id.clone()))
            .chain(retire_parked())
            .collect();
    };
    if needs_images(revision) || pull_failed(revision) {
        return retire_parked().collect();
    }
    let (have, want) = (state.live.len(), state.desired as usize);
    let mut actions = Vec::new();
    let mut parked = state.parked.iter();
    let mut frozen = state.frozen.iter();
    if have < want {
        let mut missing = want - have;
        // Thawed first (its app is warm), then parked, then fresh.
        for id in frozen.by_ref().take(missing) {
            actions.push(Action::Thaw(id.clone()));
            missing -= 1;
        }
        for id in parked.by_ref().take(missing) {
            actions.push(Action::Unpark(id.clone()));
            missing -= 1;
        }
        if missing > 0 {
            actions.push(Action::Start(missing as u32));
        }
    } else {
        let mut extra: Vec<&Observed> = state.live.iter().collect();
        // Remove those not ready first, then the least busy, then the newest.
        extra.sort_by(|a, b| {
            (a.ready, a.in_flight)
                .cmp(&(b.ready, b.in_flight))
                .then_with(|| b.started_at.cmp(&a.started_at))
        });
        let mut going: Vec<&Observed> = extra.into_iter().take(have - want).collect();
        // At zero, a ready one is kept frozen instead (one per revision).
        if want == 0
            && state.freeze
            && state.frozen.is_empty()
            && let Some(pos) = going.iter().position(|i| i.ready)
        {
            let kept = going.remove(pos);
            actions.push(Action::Freeze(kept.id.clone()));
        }
        actions.extend(going.into_iter().map(|i| Action::Retire(i.id.clone())));
    }
    let frozen_left: Vec<&String> = frozen.collect();
    let keep_frozen = if state.freeze { 1 } else { 0 };
    actions.extend(
        frozen_left
            .iter()
            .skip(keep_frozen)
            .map(|id| Action::Retire((*id).clone())),
    );
    let left: Vec<&String> = parked.collect();
    if state.park {
        let settled = actions.is_empty() && state.live.iter().all(|i| i.ready);
        if state.parked.is_empty() && settled {
            actions.push(Action::Park);
        }
        // One is kept.
        actions.extend(left.iter().skip(1).map(|id| Action::Retire((*id).clone())));
    } else {
        actions.extend(left.iter().map(|id| Action::Retire((*id).clone())));
    }
    actions
}

/// Runs instances.
pub struct InstanceManager {
    runtime: Arc<dyn InstanceRuntime>,
    controller: Controller,
    images: Arc<dyn ImageStore>,
    store: Arc<dyn Store>,
    serving: Arc<Serving>,
    /// Secrets and ConfigMaps, read when an instance starts.
    secrets: Arc<SecretStore>,
    /// Instances being drained and stopped: no longer counted as live.
    retiring: Arc<Mutex<HashSet<String>>>,
    /// This reconciler's own queue, for what finishes outside a pass.
    handle: OnceLock<Handle<RevisionKey>>,
    /// At most this many parked instances in all (0: none).
    parked_max: usize,
    /// When each revision last had an instance parked: at most one per [`PARK_INTERVAL`],
    /// so one whose parked instances keep failing does not spin.
    last_parked: Mutex<std::collections::HashMap<RevisionKey, tokio::time::Instant>>,
    /// Revisions that would keep a parked instance but for the cap: one is queued again
    /// whenever a pass ends with room under it.
    waiting_to_park: Mutex<std::collections::BTreeSet<RevisionKey>>,
    /// Revisions whose instance is being parked (in the background, one at a time).
    parking: Mutex<HashSet<RevisionKey>>,
    /// One parking at a time: parking is background work, never competing with starts.
    park_slot: Arc<tokio::sync::Semaphore>,
    /// This manager, for the background parkings (set by [`InstanceManager::attach`]).
    me: OnceLock<std::sync::Weak<InstanceManager>>,
    /// Frozen instances may hold at most this much memory in all.
    frozen_budget: u64,
}

/// The least time between two parkings for one revision.
pub const PARK_INTERVAL: Duration = Duration::from_secs(1);

impl InstanceManager {
    /// A manager over `runtime` that parks nothing.
    pub fn new(
        runtime: Arc<dyn InstanceRuntime>,
        controller: Controller,
        images: Arc<dyn ImageStore>,
        store: Arc<dyn Store>,
        serving: Arc<Serving>,
        secrets: Arc<SecretStore>,
    ) -> Arc<Self> {
        Self::with_parking(runtime, controller, images, store, serving, secrets, 0)
    }

    /// The same manager, letting frozen instances hold at most `bytes` in all.
    pub fn with_frozen_budget(mut self: Arc<Self>, bytes: u64) -> Arc<Self> {
        if let Some(m) = Arc::get_mut(&mut self) {
            m.frozen_budget = bytes;
        }
        self
    }

    /// A manager that keeps one parked instance per revision that may take requests, up to
    /// `max` in all.
    pub fn with_parking(
        runtime: Arc<dyn InstanceRuntime>,
        controller: Controller,
        images: Arc<dyn ImageStore>,
        store: Arc<dyn Store>,
        serving: Arc<Serving>,
        secrets: Arc<SecretStore>,
        max: usize,
    ) -> Arc<Self> {
        Arc::new(InstanceManager {
            runtime,
            controller,
            images,
            store,
            serving,
            secrets,
            retiring: Arc::default(),
            handle: OnceLock::new(),
            parked_max: max,
            last_parked: Mutex::default(),
            waiting_to_park: Mutex::default(),
            parking: Mutex::default(),
            park_slot: Arc::new(tokio::sync::Semaphore::new(1)),
            me: OnceLock::new(),
            frozen_budget: 0,
        })
    }

    /// Gives the manager its queue (once registered) and follows runtime events into it
    /// until `shutdown` (the returned task).
    pub fn attach(
        self: &Arc<Self>,
        handle: Handle<RevisionKey>,
        shutdown: CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let _ = self.handle.set(handle.clone());
        let _ = self.me.set(Arc::downgrade(self));
        let mut events = self.runtime.events();
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    ev = events.recv() => match ev {
                        Ok(ev) if ev.task.is_none() => handle.enqueue((ev.namespace, ev.revision)),
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                            for k in me.revisions_with_instances() {
                                handle.enqueue(k);
                            }
                        }
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    },
                    () = shutdown.cancelled() => break,
                }
            }
        })
    }

    fn enqueue(&self, key: RevisionKey) {
        if let Some(h) = self.handle.get() {
            h.enqueue(key);
        }
    }

    /// Serving (router and autoscalers).
    pub fn serving(&self) -> &Arc<Serving> {
        &self.serving
    }

    /// The runtime.
    pub fn runtime(&self) -> &Arc<dyn InstanceRuntime> {
        &self.runtime
    }

    fn revisions_with_instances(&self) -> HashSet<RevisionKey> {
        self.runtime
            .instances()
            .into_iter()
            .map(|i| (i.plan.namespace, i.plan.revision))
            .collect()
    }

    /// Sets the manual override of a Service's latest revision's instance count.
    pub async fn set_scale(
        &self,
        ns: &str,
        svc: &str,
        replicas: u32,
    ) -> Result<(), ControllerError> {
        self.controller.get_service(ns, svc).await?;
        let value = serde_json::to_vec(&Scale { replicas }).expect("scale serializes");
        self.store
            .txn(Txn::new().put(keys::scale(ns, svc), value))
            .await?;
        info!(namespace = ns, service = svc, replicas, "scale set");
        Ok(())
    }

    /// Removes a Service's manual override: the autoscaler decides again.
    pub async fn clear_scale(&self, ns: &str, svc: &str) -> Result<(), ControllerError> {
        self.controller.get_service(ns, svc).await?;
        self.store
            .txn(Txn::new().delete(keys::scale(ns, svc)))
            .await?;
        info!(namespace = ns, service = svc, "scale override removed");
        Ok(())
    }

    /// A Service's manual override, if set.
    pub async fn scale(&self, ns: &str, svc: &str) -> Result<Option<u32>, ControllerError> {
        Ok(match self.store.get(&keys::scale(ns, svc)).await? {
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
            scale_up_stopped: self.serving.budget_stop_of(ns, svc),
            revisions: self.serving.scale_of(ns, svc, target),
        })
    }

    /// The instances of a Service: those that run (or start, or stop) first, by id, then
    /// the parked and frozen ones.
    pub fn instances_of(&self, ns: &str, svc: &str) -> Vec<InstanceView> {
        let mut v: Vec<InstanceView> = self
            .runtime
            .instances()
            .into_iter()
            .filter(|i| i.plan.namespace == ns && i.plan.service == svc)
            .map(|i| InstanceView {
                usage: self.runtime.usage(&i.plan.id),
                id: i.plan.id,
                revision: i.plan.revision,
                status: i.status,
            })
            .collect();
        // Those that run first; parked and frozen ones (held for later) after them.
        let held = |i: &InstanceView| matches!(i.status.phase, Phase::Parked | Phase::Frozen);
        v.sort_by(|a, b| (held(a), &a.id).cmp(&(held(b), &b.id)));
        v
    }

    /// Re-adopts what a previous run left (instances whose containers still run) and removes
    /// every other trace of it. Runs before the reconcilers start.
    pub async fn recover(&self) {
        let mut plans = Vec::new();
        match self.store.list(keys::INSTANCES).await {
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
        // Values from Secrets are not recorded: read them again, so a re-adopted
        // instance's restarts get them (the values of now).
        // A job task's container never restarts: it needs none.
        for p in plans.iter_mut().filter(|p| p.task.is_none()) {
            if let Err(e) = self.refill_secret_env(p).await {
                warn!(instance = %p.id, error = %skiff_telemetry::ErrorChain(&*e), "re-reading the Secrets of a re-adopted instance; its restarts will lack them");
            }
        }
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
                    .txn(Txn::new().delete(keys::instance(&ns, &id)))
                    .await;
            }
        }
    }

    /// Fills in a recorded plan's environment from Secrets (which the record leaves out).
    async fn refill_secret_env(&self, p: &mut InstancePlan) -> Result<(), ReconcileError> {
        let rev = self
            .controller
            .get_revision(&p.namespace, &p.revision)
            .await?;
        if secrets::references(&rev.spec).is_empty() {
            return Ok(());
        }
        let images = self.pinned_images(&rev).await?;
        let values = secrets::values_for(&self.secrets, &p.namespace, &rev.spec).await?;
        let fresh =
            crate::plan::plan(&rev, &images, |d| self.images.layer_path(d), &p.id, &values)?;
        for (c, f) in p.containers.iter_mut().zip(fresh.containers) {
            c.secret_env = f.secret_env;
        }
        Ok(())
    }

    async fn pinned_images(
        &self,
        rev: &Revision,
    ) -> Result<Vec<skiff_image::ImageRecord>, ReconcileError> {
        let mut images = Vec::new();
        for cs in &rev.status.container_statuses {
            let pinned = cs.image_digest.as_deref().unwrap_or_default();
            let digest = pinned.rsplit_once('@').map(|(_, d)| d).unwrap_or(pinned);
            let image = self
                .images
                .by_digest(digest)
                .await?
                .ok_or_else(|| format!("image {pinned} is no longer in the content store"))?;
            images.push(image);
        }
        Ok(images)
    }

    /// What `r` needs from Secrets and ConfigMaps that is missing now (see
    /// [`crate::plan::missing_config`]).
    async fn missing_config(&self, r: &Revision) -> Result<Vec<String>, ControllerError> {
        if secrets::references(&r.spec).is_empty() {
            return Ok(Vec::new());
        }
        let values = secrets::values_for(&self.secrets, &r.metadata.namespace, &r.spec).await?;
        Ok(crate::plan::missing_config(&r.spec, &values))
    }

    /// Stops every instance, each killed at most `cap` after this (those being retired too),
    /// and forgets their records (daemon shutdown, after the reconcilers have stopped).
    pub async fn stop_all(&self, cap: Duration) {
        // No parking from now on: wait for one in progress, then close the slot (a parking
        // queued behind it finds it closed and parks nothing).
        let slot = self.park_slot.acquire().await;
        self.park_slot.close();
        drop(slot);
        info!("stopping every instance");
        let all = self.runtime.instances();
        self.runtime.stop_all(cap).await;
        for i in all {
            let _ = self
                .store
                .txn(Txn::new().delete(keys::instance(&i.plan.namespace, &i.plan.id)))
                .await;
        }
        self.runtime.remove_cgroup_parent();
    }

    /// Queues a revision waiting to park when there is room under the cap.
    fn offer_parking_room(&self) {
        if self.parked_max == 0 {
            return;
        }
        let retiring = self
            .retiring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        if self.parked_total(&retiring) >= self.parked_max {
            return;
        }
        let next = self
            .waiting_to_park
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_first();
        if let Some(key) = next {
            self.enqueue(key);
        }
    }

    /// Parked instances held in all (and being parked), those being retired left out.
    fn parked_total(&self, retiring: &HashSet<String>) -> usize {
        let held = self
            .runtime
            .instances()
            .iter()
            .filter(|i| i.status.phase == Phase::Parked && !retiring.contains(&i.plan.id))
            .count();
        held + self.parking.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Parks an instance of `r` in the background, one parking at a time, then looks at the
    /// revision again.
    fn park_in_background(&self, key: &RevisionKey, r: &Revision) {
        let Some(me) = self.me.get().and_then(std::sync::Weak::upgrade) else {
            return;
        };
        me.parking
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.clone());
        let (key, r) = (key.clone(), r.clone());
        tokio::spawn(async move {
            if let Ok(_slot) = me.park_slot.clone().acquire_owned().await
                && let Err(e) = me.make_instance(&r, true).await
            {
                warn!(revision = %r.metadata.name, error = %skiff_telemetry::ErrorChain(&*e), "parking an instance failed");
            }
            me.parking
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&key);
            me.enqueue(key);
        });
    }

    /// The instances wanted for `r`: the override for a Service's latest revision, else the
    /// autoscaler's.
    async fn desired(&self, r: &Revision) -> Result<u32, ControllerError> {
        let (ns, name) = (&r.metadata.namespace, &r.metadata.name);
        let auto = self.serving.desired_of(&(ns.clone(), name.clone()));
        let Some(svc) = r.service_name() else {
            return Ok(auto);
        };
        let Some(replicas) = self.scale(ns, svc).await? else {
            return Ok(auto);
        };
        let latest = match self.controller.get_service(ns, svc).await {
            Ok(s) => s.status.latest_created_revision_name,
            Err(ControllerError::NotFound { .. }) => None,
            Err(e) => return Err(e),
        };
        Ok(if latest.as_deref() == Some(name) {
            replicas
        } else {
            auto
        })
    }

    /// Drains an instance (no new requests; those in flight finish, up to its drain timeout,
    /// the revision's `timeoutSeconds`), then stops it (SIGTERM, SIGKILL after the
    /// termination grace) and forgets its record.
    fn retire(&self, inst: InstanceInfo) {
        self.put_away(inst, false);
    }

    /// Drains an instance, then freezes it (it stays, frozen, out of the router's pool);
    /// one that cannot be frozen within the daemon's memory budget, or at all, is stopped.
    fn freeze(&self, inst: InstanceInfo) {
        self.put_away(inst, true);
    }

    /// Drains an instance, then freezes it (`freeze`, within the budget) or stops it; the
    /// revision is looked at again afterwards.
    fn put_away(&self, inst: InstanceInfo, freeze: bool) {
        {
            let mut r = self.retiring.lock().unwrap_or_else(|p| p.into_inner());
            if !r.insert(inst.plan.id.clone()) {
                return;
            }
        }
        let (rt, store, serving, retiring) = (
            self.runtime.clone(),
            self.store.clone(),
            self.serving.clone(),
            self.retiring.clone(),
        );
        let budget = self.frozen_budget;
        let handle = self.handle.get().cloned();
        if !freeze {
            info!(instance = %inst.plan.id, "draining and stopping instance");
        }
        tokio::spawn(async move {
            let plan = inst.plan;
            // What frozen instances hold, read before the drain (this one still runs).
            let room = freeze
                && {
                    let held: u64 = rt
                        .instances()
                        .iter()
                        .filter(|i| i.status.phase == Phase::Frozen)
                        .map(|i| rt.usage(&i.plan.id).memory_bytes)
                        .sum();
                    let mine = rt.usage(&plan.id).memory_bytes;
                    if held + mine > budget {
                        info!(instance = %plan.id, held, mine, budget, "not frozen: over the frozen memory budget; stopping it");
                    }
                    held + mine <= budget
                };
            serving.drain(&plan.id, plan.drain_timeout).await;
            let frozen = room
                && match rt.freeze(&plan.id).await {
                    Ok(()) => true,
                    Err(e) => {
                        warn!(instance = %plan.id, error = %skiff_telemetry::ErrorChain(&*e), "freezing failed; stopping it");
                        false
                    }
                };
            if !frozen {
                rt.stop(&plan.id).await;
                let _ = store
                    .txn(Txn::new().delete(keys::instance(&plan.namespace, &plan.id)))
                    .await;
            }
            // Out of the router, its drain forgotten: a frozen one rejoins once thawed.
            serving.router().forget(&plan.id);
            retiring
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&plan.id);
            if let Some(h) = handle {
                h.enqueue((plan.namespace, plan.revision));
            }
        });
    }

    async fn start_instance(&self, rev: &Revision) -> Result<(), ReconcileError> {
        self.make_instance(rev, false).await
    }

    /// Makes an instance of `rev` and starts it, or parks it (`park`).
    async fn make_instance(&self, rev: &Revision, park: bool) -> Result<(), ReconcileError> {
        // The decision: the instance's start-up phases (M5) count from here.
        let scheduled = Scheduled::now();
        let images = self.pinned_images(rev).await?;
        let suffix: String = {
            const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
            let mut rng = rand::rng();
            (0..5)
                .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
                .collect()
        };
        let id = format!("{}-{suffix}", rev.metadata.name);
        // The values of the Secrets and ConfigMaps it references live in memory only for
        // this start: the recorded plan leaves Secrets' out.
        let values = secrets::values_for(&self.secrets, &rev.metadata.namespace, &rev.spec).await?;
        let mut plan =
            crate::plan::plan(rev, &images, |d| self.images.layer_path(d), &id, &values)?;
        plan.scheduled = Some(scheduled);
        let key = keys::instance(&plan.namespace, &plan.id);
        self.store
            .txn(Txn::new().put(&key, serde_json::to_vec(&plan).expect("plans serialize")))
            .await?;
        let made = if park {
            info!(instance = %id, revision = %rev.metadata.name, "parking instance");
            self.runtime.park(plan).await
        } else {
            info!(instance = %id, revision = %rev.metadata.name, "starting instance");
            self.runtime.start(plan).await
        };
        if let Err(e) = made {
            let _ = self.store.txn(Txn::new().delete(&key)).await;
            return Err(e);
        }
        Ok(())
    }

    /// Writes a revision's conditions and replica counts from its instances.
    async fn write_status(
        &self,
        r: &Revision,
        instances: &[InstanceInfo],
        desired: u32,
        missing: Vec<String>,
    ) -> Result<(), ControllerError> {
        if needs_images(r) || pull_failed(r) {
            return Ok(());
        }
        let statuses: Vec<InstanceStatus> = instances.iter().map(|i| i.status.clone()).collect();
        // Nothing to write when nothing changes.
        let now = self.controller.now();
        let mut probe = r.clone();
        let apply = move |r: &mut Revision| {
            status::apply_config_error(r, &missing, &now, false);
            status::apply_instance_status(r, &statuses, desired, &now);
            status::apply_config_error(r, &missing, &now, true);
        };
        apply(&mut probe);
        if probe.status == r.status {
            return Ok(());
        }
        let (ns, name) = (&r.metadata.namespace, &r.metadata.name);
        self.controller
            .update_revision(ns, name, true, move |r| {
                let before = r.status.clone();
                apply(r);
                before != r.status
            })
            .await?;
        Ok(())
    }
}

#[async_trait]
impl Reconciler for InstanceManager {
    type Key = RevisionKey;

    fn name(&self) -> &'static str {
        "instances"
    }

    fn watches(&self) -> &'static [&'static str] {
        &[
            keys::REVISIONS,
            keys::SERVICES,
            keys::SCALES,
            keys::SECRETS,
            keys::CONFIGMAPS,
        ]
    }

    async fn keys_for(&self, store_key: &str) -> Vec<RevisionKey> {
        if let Some(key) = crate::controller::parse_revision_key(store_key) {
            return vec![key];
        }
        // A Secret or ConfigMap: the revisions of its namespace that reference it.
        if let Some((kind, ns, name)) = secrets::parse_config_key(store_key) {
            return match self.controller.list_revisions(Some(ns), None).await {
                Ok(revisions) => referencing(&revisions, kind, name),
                Err(e) => {
                    warn!(error = %skiff_telemetry::ErrorChain(&e), "listing the revisions of a namespace");
                    Vec::new()
                }
            };
        }
        // A Service or its override: its revisions (the latest may have changed).
        let Some((ns, svc)) =
            keys::parse_service(store_key).or_else(|| keys::parse_scale(store_key))
        else {
            return Vec::new();
        };
        match self.controller.revision_keys_of(ns, svc).await {
            Ok(keys) => keys,
            Err(e) => {
                warn!(error = %skiff_telemetry::ErrorChain(&e), "listing a Service's revisions");
                Vec::new()
            }
        }
    }

    async fn all_keys(&self) -> Result<Vec<RevisionKey>, ReconcileError> {
        let mut keys: HashSet<RevisionKey> =
            self.controller.revision_keys().await?.into_iter().collect();
        keys.extend(self.revisions_with_instances());
        Ok(keys.into_iter().collect())
    }

    async fn reconcile(&self, key: &RevisionKey) -> Result<Next, ReconcileError> {
        let revision = match self.controller.get_revision(&key.0, &key.1).await {
            Ok(r) => Some(r),
            Err(ControllerError::NotFound { .. }) => {
                self.last_parked
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(key);
                None
            }
            Err(e) => return Err(e.into()),
        };
        // Until the autoscaler knows the revision (just after a restart, before the route
        // reconciler's first table), its desired count reads 0: acting on that would retire
        // the instances just adopted. It queues the key once it decides.
        if revision.is_some() && !self.serving.has_decided(key) {
            return Ok(Next::RequeueAfter(Duration::from_millis(50)));
        }
        let desired = match &revision {
            Some(r) => self.desired(r).await?,
            None => 0,
        };
        let instances: Vec<InstanceInfo> = self
            .runtime
            .instances()
            .into_iter()
            .filter(|i| i.plan.namespace == key.0 && i.plan.revision == key.1)
            .collect();
        let retiring = self
            .retiring
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let pool = self.serving.router().pool(key);
        let held: Vec<&InstanceInfo> = instances
            .iter()
            .filter(|i| !matches!(i.status.phase, Phase::Stopping | Phase::Stopped))
            .filter(|i| !retiring.contains(&i.plan.id))
            .collect();
        let (parked, held): (Vec<&InstanceInfo>, Vec<&InstanceInfo>) = held
            .into_iter()
            .partition(|i| i.status.phase == Phase::Parked);
        let (frozen, live): (Vec<&InstanceInfo>, Vec<&InstanceInfo>) = held
            .into_iter()
            .partition(|i| i.status.phase == Phase::Frozen);
        let missing = match &revision {
            Some(r) => self.missing_config(r).await?,
            None => Vec::new(),
        };
        let parkable = self.parked_max > 0
            && pool.is_some()
            && missing.is_empty()
            && revision.as_ref().is_some_and(|r| {
                r.condition(status::conditions::READY)
                    .is_none_or(|c| c.status != skiff_api::object::ConditionStatus::False)
            });
        let room = !parked.is_empty() || self.parked_total(&retiring) < self.parked_max;
        {
            let mut waiting = self
                .waiting_to_park
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if parkable && !room {
                waiting.insert(key.clone());
            } else {
                waiting.remove(key);
            }
        }
        let park = parkable && room;
        let state = RevisionState {
            revision: revision.as_ref(),
            routed: pool.is_some(),
            desired,
            live: live
                .iter()
                .map(|i| Observed {
                    id: i.plan.id.clone(),
                    ready: i.status.ready,
                    started_at: i.status.started_at.clone(),
                    in_flight: pool.as_ref().map_or(0, |p| p.in_flight_of(&i.plan.id)),
                })
                .collect(),
            parked: parked.iter().map(|i| i.plan.id.clone()).collect(),
            park,
            frozen: frozen.iter().map(|i| i.plan.id.clone()).collect(),
            freeze: pool.is_some()
                && revision
                    .as_ref()
                    .is_some_and(|r| skiff_api::validate::warm_frozen(&r.metadata.annotations)),
        };
        let mut failed = None;
        let mut requeue = None;
        let decided = Scheduled::now();
        for action in plan(&state) {
            match action {
                Action::WaitForRoutes => return Ok(Next::RequeueAfter(Duration::from_millis(50))),
                Action::Retire(id) => {
                    if let Some(i) = live
                        .iter()
                        .chain(&parked)
                        .chain(&frozen)
                        .find(|i| i.plan.id == id)
                    {
                        self.retire((*i).clone());
                    }
                }
                Action::Thaw(id) => {
                    if let Err(e) = self.runtime.thaw(&id, decided).await {
                        warn!(instance = %id, error = %skiff_telemetry::ErrorChain(&*e), "thawing failed; starting a fresh instance");
                        if let Some(i) = frozen.iter().find(|i| i.plan.id == id) {
                            self.retire((*i).clone());
                        }
                        if let Some(r) = &revision
                            && let Err(e) = self.start_instance(r).await
                        {
                            failed = Some(e);
                        }
                    }
                }
                Action::Freeze(id) => {
                    if let Some(i) = live.iter().find(|i| i.plan.id == id) {
                        self.freeze((*i).clone());
                    }
                }
                Action::Unpark(id) => match self.runtime.unpark(&id, decided) {
                    Ok(()) => {}
                    Err(e) => {
                        // Gone meanwhile, or started already: a fresh start instead.
                        warn!(instance = %id, error = %skiff_telemetry::ErrorChain(&*e), "unparking failed; starting a fresh instance");
                        if let Some(r) = &revision
                            && let Err(e) = self.start_instance(r).await
                        {
                            failed = Some(e);
                        }
                    }
                },
                Action::Park => {
                    let Some(r) = &revision else { continue };
                    if self
                        .parking
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .contains(key)
                    {
                        continue;
                    }
                    let wait = {
                        let mut last = self.last_parked.lock().unwrap_or_else(|p| p.into_inner());
                        let now = tokio::time::Instant::now();
                        match last.get(key) {
                            Some(at) if now.duration_since(*at) < PARK_INTERVAL => {
                                Some(PARK_INTERVAL - now.duration_since(*at))
                            }
                            _ => {
                                last.insert(key.clone(), now);
                                None
                            }
                        }
                    };
                    match wait {
                        Some(after) => requeue = Some(after),
                        None => self.park_in_background(key, r),
                    }
                }
                Action::Start(n) => {
                    let Some(r) = &revision else { continue };
                    // Nothing can start without what it needs; the status says what, and a
                    // change to the Secret or ConfigMap queues the revision again.
                    if !missing.is_empty() {
                        continue;
                    }
                    for _ in 0..n {
                        if let Err(e) = self.start_instance(r).await {
                            failed = Some(e);
                            break;
                        }
                    }
                }
            }
        }
        if let Some(r) = &revision {
            let now: Vec<InstanceInfo> = self
                .runtime
                .instances()
                .into_iter()
                .filter(|i| i.plan.namespace == key.0 && i.plan.revision == key.1)
                .collect();
            self.write_status(r, &now, desired, missing).await?;
            // A revision still trying to become ready is looked at again at its deadline.
            let statuses: Vec<InstanceStatus> = now.iter().map(|i| i.status.clone()).collect();
            if failed.is_none()
                && let Some(after) = status::progress_recheck(r, &statuses, &self.controller.now())
            {
                return Ok(Next::RequeueAfter(after));
            }
        }
        self.offer_parking_room();
        match (failed, requeue) {
            (Some(e), _) => Err(e),
            (None, Some(after)) => Ok(Next::RequeueAfter(after)),
            (None, None) => Ok(Next::Done),
        }
    }

    fn workers(&self) -> usize {
        4
    }
}

/// The keys of the revisions among `revisions` that reference the Secret or ConfigMap `name`.
pub fn referencing(
    revisions: &[Revision],
    kind: skiff_api::config::ConfigKind,
    name: &str,
) -> Vec<RevisionKey> {
    revisions
        .iter()
        .filter(|r| secrets::references(&r.spec).contains(&(kind, name.to_owned())))
        .map(|r| (r.metadata.namespace.clone(), r.metadata.name.clone()))
        .collect()
}

/// Queues a revision's key with the instance reconciler (the autoscaler's hook).
pub fn on_scaled(manager: &Arc<InstanceManager>) -> impl Fn(&RevisionKey) + Send + Sync + use<> {
    let weak = Arc::downgrade(manager);
    move |key: &RevisionKey| {
        if let Some(m) = weak.upgrade() {
            m.enqueue(key.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn revision(pinned: bool) -> Revision {
        let mut r: Revision = serde_json::from_value(serde_json::json!({
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Revision",
            "metadata": {"name": "r-00001", "namespace": "default", "uid": "u", "generation": 1, "creationTimestamp": "t"},
            "spec": {"containers": [{"image": "x"}]}
        }))
        .expect("revision");
        if pinned {
            r.status.container_statuses = vec![skiff_api::object::ContainerStatus {
                name: "user-container".into(),
                image_digest: Some("x@sha256:00".into()),
            }];
        }
        r
    }

    fn inst(id: &str, ready: bool, started_at: &str, in_flight: u32) -> Observed {
        Observed {
            id: id.into(),
            ready,
            started_at: started_at.into(),
            in_flight,
        }
    }

    /// Too few instances: start the difference; enough: nothing.
    #[test]
    fn starts_up_to_the_desired_count() {
        let r = revision(true);
        let mut s = RevisionState {
            revision: Some(&r),
            routed: true,
            desired: 3,
            live: vec![inst("a", true, "t1", 0)],
            parked: Vec::new(),
            park: false,
            frozen: Vec::new(),
            freeze: false,
        };
        assert_eq!(plan(&s), vec![Action::Start(2)]);
        s.desired = 1;
        assert_eq!(plan(&s), vec![]);
    }

    /// Scaling down removes instances not ready first, then the least busy, then the newest.
    #[test]
    fn scale_down_picks_the_cheapest_instances() {
        let r = revision(true);
        let s = RevisionState {
            revision: Some(&r),
            routed: true,
            desired: 1,
            live: vec![
                inst("busy", true, "t1", 5),
                inst("idle-old", true, "t1", 0),
                inst("idle-new", true, "t2", 0),
                inst("unready", false, "t0", 0),
            ],
            parked: Vec::new(),
            park: false,
            frozen: Vec::new(),
            freeze: false,
        };
        assert_eq!(
            plan(&s),
            vec![
                Action::Retire("unready".into()),
                Action::Retire("idle-new".into()),
                Action::Retire("idle-old".into()),
            ]
        );
    }

    /// Scale to zero retires every instance.
    #[test]
    fn scale_to_zero_retires_all() {
        let r = revision(true);
        let s = RevisionState {
            revision: Some(&r),
            routed: true,
            desired: 0,
            live: vec![inst("a", true, "t1", 0), inst("b", true, "t2", 0)],
            parked: Vec::new(),
            park: false,
            frozen: Vec::new(),
            freeze: false,
        };
        assert_eq!(plan(&s).len(), 2);
    }

    /// A revision whose images are not pinned, or whose pull failed, starts nothing.
    #[test]
    fn nothing_starts_before_images_are_pinned() {
        let unpinned = revision(false);
        let s = RevisionState {
            revision: Some(&unpinned),
            routed: true,
            desired: 2,
            live: vec![],
            parked: Vec::new(),
            park: false,
            frozen: Vec::new(),
            freeze: false,
        };
        assert_eq!(plan(&s), vec![]);
        let mut failed = revision(true);
        skiff_api::object::set_condition(
            &mut failed.status.conditions,
            status::conditions::READY,
            skiff_api::object::ConditionStatus::False,
            Some(status::reasons::PULL_FAILED),
            Some("no such image".into()),
            "t",
        );
        let s = RevisionState {
            revision: Some(&failed),
            ..s
        };
        assert_eq!(plan(&s), vec![]);
    }

    /// A revision keeps one parked instance; a start unparks it before starting new ones,
    /// and the next is parked only once every live instance is ready.
    #[test]
    fn parked_instances_start_first_and_one_is_kept() {
        let r = revision(true);
        let mut s = RevisionState {
            revision: Some(&r),
            routed: true,
            desired: 0,
            live: vec![],
            parked: Vec::new(),
            park: true,
            frozen: Vec::new(),
            freeze: false,
        };
        assert_eq!(plan(&s), vec![Action::Park]);
        s.parked = vec!["p".into()];
        assert_eq!(plan(&s), vec![], "one is kept");
        s.desired = 2;
        assert_eq!(plan(&s), vec![Action::Unpark("p".into()), Action::Start(1)]);
        // Starting: no parking yet.
        s.parked.clear();
        s.live = vec![inst("p", false, "t1", 0), inst("n", false, "t2", 0)];
        assert_eq!(plan(&s), vec![]);
        // Ready: the next one is parked.
        s.live = vec![inst("p", true, "t1", 0), inst("n", true, "t2", 0)];
        assert_eq!(plan(&s), vec![Action::Park]);
        // Extra parked instances go, and all of them when parking stops.
        s.parked = vec!["x".into(), "y".into()];
        assert_eq!(plan(&s), vec![Action::Retire("y".into())]);
        s.park = false;
        assert_eq!(
            plan(&s),
            vec![Action::Retire("x".into()), Action::Retire("y".into())]
        );
        // A deleted revision's parked instances go with the rest.
        s.revision = None;
        s.routed = false;
        assert!(plan(&s).contains(&Action::Retire("x".into())));
    }

    /// With `skiff.dev/warm: frozen`, going to zero freezes one ready instance (the others
    /// stop); wanted again, the frozen one is thawed before anything is unparked or started.
    #[test]
    fn a_frozen_instance_is_kept_at_zero_and_thawed_first() {
        let r = revision(true);
        let mut s = RevisionState {
            revision: Some(&r),
            routed: true,
            desired: 0,
            live: vec![inst("a", true, "t1", 0), inst("b", false, "t2", 0)],
            parked: vec!["p".into()],
            park: true,
            frozen: Vec::new(),
            freeze: true,
        };
        assert_eq!(
            plan(&s),
            vec![Action::Freeze("a".into()), Action::Retire("b".into())]
        );
        // Not at zero: scaling down stops.
        s.desired = 1;
        s.live = vec![inst("a", true, "t1", 0), inst("c", true, "t3", 0)];
        assert_eq!(plan(&s), vec![Action::Retire("c".into())]);
        // Frozen and wanted: thawed, then parked, then fresh.
        s.live.clear();
        s.frozen = vec!["a".into()];
        s.desired = 3;
        assert_eq!(
            plan(&s),
            vec![
                Action::Thaw("a".into()),
                Action::Unpark("p".into()),
                Action::Start(1)
            ]
        );
        // One frozen is kept; without the annotation none is.
        s.desired = 0;
        s.frozen = vec!["a".into(), "x".into()];
        assert_eq!(plan(&s), vec![Action::Retire("x".into())]);
        s.freeze = false;
        assert_eq!(
            plan(&s),
            vec![Action::Retire("a".into()), Action::Retire("x".into())]
        );
    }

    /// A deleted revision's instances are retired only once the router has let it go.
    #[test]
    fn a_deleted_revision_waits_for_the_router() {
        let mut s = RevisionState {
            revision: None,
            routed: true,
            desired: 0,
            live: vec![inst("a", true, "t1", 2)],
            parked: Vec::new(),
            park: false,
            frozen: Vec::new(),
            freeze: false,
        };
        assert_eq!(plan(&s), vec![Action::WaitForRoutes]);
        s.routed = false;
        assert_eq!(plan(&s), vec![Action::Retire("a".into())]);
        s.live.clear();
        s.routed = true;
        assert_eq!(plan(&s), vec![], "nothing left to wait for");
    }
}
