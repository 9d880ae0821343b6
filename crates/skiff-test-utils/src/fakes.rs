//! In-memory fakes of what the control plane needs from the container runtime and the image
//! store ([`skiff_control::runtime::InstanceRuntime`], [`skiff_control::runtime::ImageStore`]),
//! so reconcile passes run as an ordinary user, with no runc, mounts or network namespaces.
//!
//! The test drives the fakes' state: [`FakeRuntime::set_ready`] and [`FakeRuntime::crash`] change
//! an instance as the real runtime's probes and supervisor would, and publish the same
//! [`InstanceEvent`]s; [`FakeImages::add`] registers an image that resolves.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use sha2::{Digest, Sha256};
use skiff_control::images::ResolveError;
use skiff_control::runtime::{BoxError, ImageStore, InstanceInfo, InstanceRuntime};
use skiff_image::ImageRecord;
use skiff_image::content::{LayerRecord, RunConfig};
use skiff_image::puller::Progress;
use skiff_runtime::cgroups::Usage;
use skiff_runtime::instance::{
    ContainerStatus, InstanceEvent, InstancePlan, InstanceStatus, Phase, RecoveryReport, Scheduled,
    StartKind, Termination,
};
use skiff_runtime::logs::{LogCounts, LogSource};
use tokio::sync::broadcast;

fn now() -> String {
    jiff::Timestamp::now().to_string()
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
struct RuntimeState {
    /// Instances held now, by id.
    instances: BTreeMap<String, InstanceInfo>,
    /// Every plan `start` accepted, in order.
    started: Vec<InstancePlan>,
    /// Every plan `park` was given, in order.
    parked: Vec<InstancePlan>,
    /// Every id `unpark` released, in order.
    unparked: Vec<String>,
    /// Every id frozen, and thawed, in order.
    frozen: Vec<String>,
    thawed: Vec<String>,
    /// Every id `stop` removed, in order.
    stopped: Vec<String>,
    /// When set, `start` fails with this message.
    fail_starts: Option<String>,
    /// Ids whose containers "still run" for `recover`, and whether each is ready.
    surviving: HashMap<String, bool>,
    /// Every plan `recover` was offered.
    offered: Vec<InstancePlan>,
    /// What `log_counts` says.
    log_counts: Vec<(LogSource, LogCounts)>,
}

/// An in-memory [`InstanceRuntime`].
pub struct FakeRuntime {
    state: Mutex<RuntimeState>,
    events: broadcast::Sender<InstanceEvent>,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for FakeRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeRuntime")
            .field("instances", &lock(&self.state).instances.len())
            .finish()
    }
}

/// The status of a freshly started instance, as the real runtime reports it.
fn starting(plan: &InstancePlan) -> InstanceStatus {
    InstanceStatus {
        phase: Phase::Starting,
        started_at: now(),
        containers: plan
            .containers
            .iter()
            .enumerate()
            .map(|(i, c)| ContainerStatus {
                name: c.name.clone(),
                runtime_id: skiff_runtime::instance::container_id(&plan.id, i),
                waiting_reason: Some("ContainerCreating".into()),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

impl FakeRuntime {
    /// An empty runtime.
    pub fn new() -> Arc<FakeRuntime> {
        let (events, _) = broadcast::channel(1024);
        Arc::new(FakeRuntime {
            state: Mutex::default(),
            events,
            dir: tempfile::Builder::new()
                .prefix("skiff-fake-runtime-")
                .tempdir()
                .expect("a temporary directory for the fake runtime"),
        })
    }

    fn publish(&self, info: &InstanceInfo) {
        let _ = self.events.send(InstanceEvent {
            id: info.plan.id.clone(),
            namespace: info.plan.namespace.clone(),
            service: info.plan.service.clone(),
            revision: info.plan.revision.clone(),
            task: info.plan.task.clone(),
            status: info.status.clone(),
        });
    }

    /// Changes instance `id` with `f` and publishes the change; panics when it is not held
    /// (a test driving an instance that does not exist is wrong).
    fn update(&self, id: &str, f: impl FnOnce(&mut InstanceStatus)) {
        let info = {
            let mut st = lock(&self.state);
            let info = st
                .instances
                .get_mut(id)
                .unwrap_or_else(|| panic!("the fake runtime holds no instance `{id}`"));
            f(&mut info.status);
            info.clone()
        };
        self.publish(&info);
    }

    /// Makes instance `id` ready (phase Running, every container running and ready) or not
    /// ready (still running), as its readiness probe would.
    pub fn set_ready(&self, id: &str, ready: bool) {
        self.update(id, |s| {
            s.phase = Phase::Running;
            s.ready = ready;
            s.was_ready |= ready;
            for c in &mut s.containers {
                c.running = true;
                c.ready = ready;
                c.waiting_reason = None;
            }
        });
    }

    /// Makes instance `id`'s first container crash with `exit_code` and wait in
    /// `CrashLoopBackOff`, as the real supervisor reports a container that keeps exiting.
    pub fn crash(&self, id: &str, exit_code: i32, last_lines: &[&str]) {
        self.update(id, |s| {
            s.phase = Phase::Running;
            s.ready = false;
            let c = s
                .containers
                .first_mut()
                .expect("an instance has a container");
            c.running = false;
            c.ready = false;
            c.pid = None;
            c.restarts = c.restarts.saturating_add(1);
            c.waiting_reason = Some("CrashLoopBackOff".into());
            c.last_termination = Some(Termination {
                reason: "Error".into(),
                exit_code: Some(exit_code),
                at: now(),
                message: format!("the container exited with code {exit_code}"),
                last_lines: last_lines.iter().map(|l| (*l).to_owned()).collect(),
            });
        });
    }

    /// Makes a job task's instance `id` end as the real runtime ends one: its container
    /// exits with `exit_code` (0: `Completed`), the instance stops and is removed.
    pub fn finish_task(&self, id: &str, exit_code: i32) {
        let info = {
            let mut st = lock(&self.state);
            let Some(mut info) = st.instances.remove(id) else {
                panic!("the fake runtime holds no instance `{id}`");
            };
            info.status.phase = Phase::Stopped;
            info.status.ready = false;
            for c in &mut info.status.containers {
                c.running = false;
                c.ready = false;
                c.pid = None;
                c.last_termination = Some(Termination {
                    reason: if exit_code == 0 { "Completed" } else { "Error" }.into(),
                    exit_code: Some(exit_code),
                    at: now(),
                    message: format!("the container exited with code {exit_code}"),
                    last_lines: Vec::new(),
                });
            }
            info
        };
        self.publish(&info);
    }

    /// Makes every later `start` fail with `message` (`None`: succeed again).
    pub fn fail_starts(&self, message: Option<&str>) {
        lock(&self.state).fail_starts = message.map(str::to_owned);
    }

    /// Says instance `id` still runs (a previous daemon's): [`recover`](InstanceRuntime::recover)
    /// adopts it, ready or not.
    pub fn survive(&self, id: &str, ready: bool) {
        lock(&self.state).surviving.insert(id.to_owned(), ready);
    }

    /// Every plan `start` accepted, in order.
    pub fn started(&self) -> Vec<InstancePlan> {
        lock(&self.state).started.clone()
    }

    /// Every plan parked, in order.
    pub fn parked(&self) -> Vec<InstancePlan> {
        lock(&self.state).parked.clone()
    }

    /// The ids of every instance frozen, in order.
    pub fn frozen_ids(&self) -> Vec<String> {
        lock(&self.state).frozen.clone()
    }

    /// The ids of every instance thawed, in order.
    pub fn thawed_ids(&self) -> Vec<String> {
        lock(&self.state).thawed.clone()
    }

    /// The ids of every parked instance released, in order.
    pub fn unparked_ids(&self) -> Vec<String> {
        lock(&self.state).unparked.clone()
    }

    /// The ids of every instance started, in order.
    pub fn started_ids(&self) -> Vec<String> {
        lock(&self.state)
            .started
            .iter()
            .map(|p| p.id.clone())
            .collect()
    }

    /// The ids of every instance stopped, in order.
    pub fn stopped_ids(&self) -> Vec<String> {
        lock(&self.state).stopped.clone()
    }

    /// The ids of the instances held now.
    pub fn running_ids(&self) -> Vec<String> {
        lock(&self.state).instances.keys().cloned().collect()
    }

    /// Every plan `recover` was offered.
    pub fn offered(&self) -> Vec<InstancePlan> {
        lock(&self.state).offered.clone()
    }

    /// Sets what [`InstanceRuntime::log_counts`] says.
    pub fn set_log_counts(&self, counts: Vec<(LogSource, LogCounts)>) {
        lock(&self.state).log_counts = counts;
    }
}

#[async_trait]
impl InstanceRuntime for FakeRuntime {
    fn instances(&self) -> Vec<InstanceInfo> {
        lock(&self.state)
            .instances
            .values()
            .filter(|i| i.plan.task.is_none())
            .cloned()
            .collect()
    }

    fn tasks(&self) -> Vec<InstanceInfo> {
        lock(&self.state)
            .instances
            .values()
            .filter(|i| i.plan.task.is_some())
            .cloned()
            .collect()
    }

    fn netns(&self, id: &str) -> Option<Arc<OwnedFd>> {
        if !lock(&self.state).instances.contains_key(id) {
            return None;
        }
        // Any namespace will do: nothing connects through it in these tests.
        let f = File::open("/proc/self/ns/net").expect("opening /proc/self/ns/net");
        Some(Arc::new(f.into()))
    }

    fn usage(&self, _id: &str) -> Usage {
        Usage::default()
    }

    fn events(&self) -> broadcast::Receiver<InstanceEvent> {
        self.events.subscribe()
    }

    async fn start(&self, plan: InstancePlan) -> Result<(), BoxError> {
        let info = {
            let mut st = lock(&self.state);
            if let Some(message) = &st.fail_starts {
                return Err(message.clone().into());
            }
            if st.instances.contains_key(&plan.id) {
                return Err(format!("instance `{}` already exists", plan.id).into());
            }
            let info = InstanceInfo {
                status: starting(&plan),
                plan: plan.clone(),
            };
            st.started.push(plan.clone());
            st.instances.insert(plan.id.clone(), info.clone());
            info
        };
        self.publish(&info);
        Ok(())
    }

    async fn park(&self, plan: InstancePlan) -> Result<(), BoxError> {
        let info = {
            let mut st = lock(&self.state);
            if let Some(message) = &st.fail_starts {
                return Err(message.clone().into());
            }
            if st.instances.contains_key(&plan.id) {
                return Err(format!("instance `{}` already exists", plan.id).into());
            }
            let mut status = starting(&plan);
            status.phase = Phase::Parked;
            let info = InstanceInfo {
                status,
                plan: plan.clone(),
            };
            st.parked.push(plan.clone());
            st.instances.insert(plan.id.clone(), info.clone());
            info
        };
        self.publish(&info);
        Ok(())
    }

    fn unpark(&self, id: &str, _scheduled: Scheduled) -> Result<(), BoxError> {
        {
            let mut st = lock(&self.state);
            match st.instances.get(id) {
                Some(i) if i.status.phase == Phase::Parked => {}
                Some(_) => return Err(format!("instance `{id}` is not parked").into()),
                None => return Err(format!("no instance `{id}`").into()),
            }
            st.unparked.push(id.to_owned());
        }
        self.update(id, |s| {
            s.phase = Phase::Starting;
            s.start_kind = StartKind::Parked;
            s.started_at = now();
        });
        Ok(())
    }

    async fn freeze(&self, id: &str) -> Result<(), BoxError> {
        {
            let mut st = lock(&self.state);
            match st.instances.get(id) {
                Some(i) if i.status.phase == Phase::Running => {}
                Some(_) => return Err(format!("instance `{id}` is not running").into()),
                None => return Err(format!("no instance `{id}`").into()),
            }
            st.frozen.push(id.to_owned());
        }
        self.update(id, |s| {
            s.phase = Phase::Frozen;
            s.ready = false;
            for c in &mut s.containers {
                c.ready = false;
            }
        });
        Ok(())
    }

    async fn thaw(&self, id: &str, _scheduled: Scheduled) -> Result<(), BoxError> {
        {
            let mut st = lock(&self.state);
            match st.instances.get(id) {
                Some(i) if i.status.phase == Phase::Frozen => {}
                Some(_) => return Err(format!("instance `{id}` is not frozen").into()),
                None => return Err(format!("no instance `{id}`").into()),
            }
            st.thawed.push(id.to_owned());
        }
        self.update(id, |s| {
            s.phase = Phase::Running;
            s.start_kind = StartKind::Frozen;
            s.started_at = now();
        });
        Ok(())
    }

    async fn stop(&self, id: &str) {
        let info = {
            let mut st = lock(&self.state);
            let Some(mut info) = st.instances.remove(id) else {
                return;
            };
            st.stopped.push(id.to_owned());
            info.status.phase = Phase::Stopped;
            info.status.ready = false;
            for c in &mut info.status.containers {
                c.running = false;
                c.ready = false;
                c.pid = None;
            }
            info
        };
        self.publish(&info);
    }

    async fn stop_all(&self, _cap: Duration) {
        for id in self.running_ids() {
            self.stop(&id).await;
        }
    }

    async fn recover(&self, plans: Vec<InstancePlan>) -> RecoveryReport {
        let mut report = RecoveryReport::default();
        let mut adopted = Vec::new();
        {
            let mut st = lock(&self.state);
            st.offered.extend(plans.iter().cloned());
            for plan in plans {
                match st.surviving.get(&plan.id).copied() {
                    Some(ready) => {
                        let mut status = starting(&plan);
                        status.phase = Phase::Running;
                        status.ready = ready;
                        status.was_ready = ready;
                        for c in &mut status.containers {
                            c.running = true;
                            c.ready = ready;
                            c.waiting_reason = None;
                        }
                        let info = InstanceInfo { plan, status };
                        report.adopted.push(info.plan.id.clone());
                        st.instances.insert(info.plan.id.clone(), info.clone());
                        adopted.push(info);
                    }
                    None => report.removed_instances.push(plan.id),
                }
            }
        }
        for info in &adopted {
            self.publish(info);
        }
        report
    }

    fn remove_cgroup_parent(&self) {}

    fn log_dir(&self) -> PathBuf {
        self.dir.path().join("logs")
    }

    fn log_counts(&self) -> Vec<(LogSource, LogCounts)> {
        lock(&self.state).log_counts.clone()
    }
}

/// A valid image record for `reference` (e.g. `skiff.local/hello:v1`) whose config runs
/// `cmd`: a digest derived from the reference, one layer.
pub fn image_record(reference: &str, cmd: &[&str]) -> ImageRecord {
    let sha = |s: &str| format!("sha256:{}", hex::encode(Sha256::digest(s.as_bytes())));
    // `registry/repo:tag` → `registry/repo` (a `:` after the last `/` starts the tag).
    let repository = match reference.rsplit_once(':') {
        Some((repo, tag)) if !tag.contains('/') => repo.to_owned(),
        _ => reference.to_owned(),
    };
    ImageRecord {
        digest: sha(&format!("manifest {reference}")),
        index_digest: None,
        references: vec![reference.to_owned()],
        repository,
        platform: "linux/amd64".into(),
        config_digest: sha(&format!("config {reference}")),
        config: RunConfig {
            cmd: Some(cmd.iter().map(|s| (*s).to_owned()).collect()),
            env: Some(vec!["PATH=/usr/bin:/bin".into()]),
            ..Default::default()
        },
        layers: vec![LayerRecord {
            digest: sha(&format!("layer {reference}")),
            diff_id: sha(&format!("diff {reference}")),
            size: 1024,
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip".into(),
        }],
        size: 1024,
        created_at: now(),
        source: "import".into(),
    }
}

/// An in-memory [`ImageStore`]: images the test registered resolve, others do not.
pub struct FakeImages {
    images: Mutex<HashMap<String, ImageRecord>>,
    resolved: Mutex<Vec<String>>,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for FakeImages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeImages")
            .field("images", &lock(&self.images).len())
            .finish()
    }
}

impl FakeImages {
    /// A store with no images.
    pub fn new() -> Arc<FakeImages> {
        Arc::new(FakeImages {
            images: Mutex::default(),
            resolved: Mutex::default(),
            dir: tempfile::Builder::new()
                .prefix("skiff-fake-images-")
                .tempdir()
                .expect("a temporary directory for the fake image store"),
        })
    }

    /// Registers an image for `reference` whose config runs `cmd`; returns its record.
    pub fn add(&self, reference: &str, cmd: &[&str]) -> ImageRecord {
        let record = image_record(reference, cmd);
        self.insert(reference, record.clone());
        record
    }

    /// Registers `record` under `reference`.
    pub fn insert(&self, reference: &str, record: ImageRecord) {
        lock(&self.images).insert(reference.to_owned(), record);
    }

    /// Every reference `resolve` was asked for, in order.
    pub fn resolved(&self) -> Vec<String> {
        lock(&self.resolved).clone()
    }
}

#[async_trait]
impl ImageStore for FakeImages {
    async fn resolve(
        &self,
        image: &str,
        _policy: Option<&str>,
        _progress: Progress,
    ) -> Result<ImageRecord, ResolveError> {
        lock(&self.resolved).push(image.to_owned());
        lock(&self.images)
            .get(image)
            .cloned()
            .ok_or_else(|| ResolveError::NotPresent(image.to_owned()))
    }

    async fn by_digest(&self, digest: &str) -> Result<Option<ImageRecord>, BoxError> {
        Ok(lock(&self.images)
            .values()
            .find(|r| r.digest == digest || r.index_digest.as_deref() == Some(digest))
            .cloned())
    }

    fn layer_path(&self, digest: &str) -> PathBuf {
        self.dir
            .path()
            .join("layers")
            .join(digest.replace(':', "-"))
    }
}

/// A one-container plan for `id` (revision `hello-00001` of Service `hello`), no limits.
pub fn instance_plan(id: &str) -> InstancePlan {
    InstancePlan {
        id: id.into(),
        namespace: "default".into(),
        service: "hello".into(),
        revision: "hello-00001".into(),
        containers: vec![skiff_runtime::instance::ContainerPlan {
            name: "user-container".into(),
            lowers: vec![],
            args: vec!["/hello".into()],
            env: vec![],
            secret_env: Default::default(),
            working_dir: None,
            user: Default::default(),
            read_only_rootfs: false,
            capabilities: vec![],
            seccomp: true,
            memory_limit: None,
            scratch_limit: None,
            memory_request: None,
            cpu_quota: None,
            cpu_shares: None,
            mounts: vec![],
            readiness: None,
            liveness: None,
            startup: None,
        }],
        serving: 0,
        port: 8080,
        volumes: vec![],
        drain_timeout: Duration::from_secs(1),
        egress: None,
        scheduled: None,
        task: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(id: &str) -> InstancePlan {
        instance_plan(id)
    }

    /// Start, readiness, a crash and stop change the instance as the real runtime reports
    /// them, and each change is published.
    #[tokio::test]
    async fn runtime_lifecycle_publishes_each_change() {
        let rt = FakeRuntime::new();
        let mut events = rt.events();
        rt.start(plan("a")).await.expect("start");
        let ev = events.recv().await.expect("start event");
        assert_eq!((ev.id.as_str(), ev.status.phase), ("a", Phase::Starting));
        assert!(rt.netns("a").is_some());

        rt.set_ready("a", true);
        let ev = events.recv().await.expect("ready event");
        assert!(ev.status.ready && ev.status.phase == Phase::Running);

        rt.crash("a", 3, &["boom"]);
        let ev = events.recv().await.expect("crash event");
        let c = &ev.status.containers[0];
        assert_eq!(c.waiting_reason.as_deref(), Some("CrashLoopBackOff"));
        let t = c.last_termination.as_ref().expect("termination");
        assert_eq!(
            (t.exit_code, t.last_lines.clone()),
            (Some(3), vec!["boom".to_owned()])
        );
        assert!(!ev.status.ready);

        rt.stop("a").await;
        let ev = events.recv().await.expect("stop event");
        assert_eq!(ev.status.phase, Phase::Stopped);
        assert!(rt.instances().is_empty() && rt.netns("a").is_none());
        assert_eq!(
            (rt.started_ids(), rt.stopped_ids()),
            (vec!["a".to_owned()], vec!["a".to_owned()])
        );
    }

    /// A start made to fail holds nothing; recover adopts only the ids registered as still
    /// running.
    #[tokio::test]
    async fn failing_starts_and_recovery() {
        let rt = FakeRuntime::new();
        rt.fail_starts(Some("no space left"));
        let e = rt.start(plan("a")).await.expect_err("start fails");
        assert_eq!(e.to_string(), "no space left");
        assert!(rt.instances().is_empty() && rt.started_ids().is_empty());
        rt.fail_starts(None);

        rt.survive("kept", true);
        let report = rt.recover(vec![plan("kept"), plan("gone")]).await;
        assert_eq!(report.adopted, vec!["kept".to_owned()]);
        assert_eq!(report.removed_instances, vec!["gone".to_owned()]);
        let held = rt.instances();
        assert_eq!(held.len(), 1);
        assert!(held[0].status.ready && held[0].status.phase == Phase::Running);
    }

    /// Registered images resolve and are found by digest; others fail as not present.
    #[tokio::test]
    async fn images_resolve_only_when_registered() {
        let images = FakeImages::new();
        let rec = images.add("skiff.local/hello:v1", &["/hello"]);
        assert_eq!(rec.repository, "skiff.local/hello");
        let progress: Progress = Arc::new(|_| {});
        let got = images
            .resolve("skiff.local/hello:v1", None, progress.clone())
            .await
            .expect("resolves");
        assert_eq!(got, rec);
        let (_, digest) = got
            .pinned()
            .rsplit_once('@')
            .map(|(a, b)| (a.to_owned(), b.to_owned()))
            .expect("pinned");
        assert_eq!(images.by_digest(&digest).await.expect("lookup"), Some(rec));
        let err = images
            .resolve("skiff.local/missing:v1", None, progress)
            .await
            .expect_err("unknown image");
        assert!(matches!(err, ResolveError::NotPresent(_)), "{err}");
        assert!(images.layer_path(&digest).starts_with(images.dir.path()));
    }
}
