//! Reconcile passes of the whole control plane, as an ordinary user: the real SQLite store,
//! controller, reconcilers, serving and router, with the in-memory runtime and image store of
//! `skiff_test_utils::fakes` in place of runc and the content store. Each test applies
//! Services through the controller, drives the fake runtime as probes and crashes would, and
//! waits (with a deadline) for what the reconcilers must make of it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use skiff_api::manifest::parse_documents;
use skiff_api::object::{ConditionStatus, Revision};
use skiff_control::controller::{ApplyMode, SystemClock};
use skiff_control::plane::{ControlPlane, Parts};
use skiff_control::runtime::{ImageStore, InstanceRuntime};
use skiff_control::secrets::{KeyFile, SecretStore};
use skiff_control::serving::ServingConfig;
use skiff_control::status::{conditions, reasons};
use skiff_router::{Router, RouterConfig, RouterMetrics};
use skiff_runtime::instance::InstancePlan;
use skiff_store::keys::instance as instance_key;
use skiff_store::{SqliteStore, Store, Txn};
use skiff_test_utils::fakes::{FakeImages, FakeRuntime};

/// The longest any condition is waited for.
const WAIT: Duration = Duration::from_secs(10);
const NS: &str = "default";
const IMAGE: &str = "skiff.local/hello:v1";
const CMD: &[&str] = &["/hello", "--serve"];

/// Polls `check` until it returns `Some`, or panics after [`WAIT`] naming `what`.
async fn until<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// One control plane over a store, a router and the fakes.
struct Plane {
    plane: ControlPlane,
    store: Arc<dyn Store>,
    router: Arc<Router>,
    runtime: Arc<FakeRuntime>,
    images: Arc<FakeImages>,
    secrets: Arc<SecretStore>,
    metrics: skiff_telemetry::Metrics,
    _keys: tempfile::TempDir,
}

fn open_store(dir: &Path) -> Arc<dyn Store> {
    Arc::new(SqliteStore::open(&dir.join("state.db")).expect("opening the store"))
}

impl Plane {
    /// Starts a control plane on `store` with `runtime` and `images`, parking nothing.
    async fn start(
        store: Arc<dyn Store>,
        runtime: Arc<FakeRuntime>,
        images: Arc<FakeImages>,
    ) -> Plane {
        Plane::start_parking(store, runtime, images, 0).await
    }

    /// The same, keeping at most `parked` parked instances.
    async fn start_parking(
        store: Arc<dyn Store>,
        runtime: Arc<FakeRuntime>,
        images: Arc<FakeImages>,
        parked: usize,
    ) -> Plane {
        let (poke, pokes) = tokio::sync::mpsc::unbounded_channel();
        let connector = skiff_runtime::netns::Connector::new(1).expect("a connector");
        let router = Router::new(
            RouterConfig {
                domain: "example.test".into(),
                queue_depth: 10,
                queue_timeout: Duration::from_secs(1),
                threads: 1,
            },
            skiff_control::runtime::NetnsConnect(connector),
            poke,
            RouterMetrics::unregistered(),
        );
        let metrics = skiff_telemetry::Metrics::new("test");
        let keys = tempfile::tempdir().expect("a key directory");
        let secrets = SecretStore::open(
            store.clone(),
            KeyFile::new(keys.path().join("secret.key")),
            Arc::new(SystemClock),
        )
        .await
        .expect("the secret store opens");
        let plane = ControlPlane::start(
            Parts {
                store: store.clone(),
                router: router.clone(),
                pokes,
                runtime: runtime.clone() as Arc<dyn InstanceRuntime>,
                images: images.clone() as Arc<dyn ImageStore>,
                clock: Arc::new(SystemClock),
                domain: "example.test".into(),
                ingress_port: 8080,
                serving: ServingConfig::default(),
                secrets: secrets.clone(),
                prices: Default::default(),
                history_dir: None,
                notify: None,
                default_rollout: None,
                parked_sandboxes: parked,
                frozen_memory_budget: 1 << 30,
            },
            &metrics,
        )
        .await
        .expect("the control plane starts");
        Plane {
            plane,
            store,
            router,
            runtime,
            images,
            secrets,
            metrics,
            _keys: keys,
        }
    }

    /// `skiff_deployments_total` of Service `svc` with `outcome`, if the series exists.
    fn deployments(&self, svc: &str, outcome: &str) -> Option<u64> {
        let prefix = format!(
            r#"skiff_deployments_total{{namespace="{NS}",service="{svc}",outcome="{outcome}"}} "#
        );
        self.metrics
            .render()
            .lines()
            .find_map(|l| l.strip_prefix(&prefix)?.parse().ok())
    }

    /// Waits until Service `svc`'s deployments are `succeeded` and `failed`.
    async fn wait_deployments(&self, svc: &str, succeeded: u64, failed: u64) {
        let what = format!("{svc}'s deployments to be {succeeded} succeeded, {failed} failed");
        until(&what, async || {
            let now = (
                self.deployments(svc, "succeeded"),
                self.deployments(svc, "failed"),
            );
            (now == (Some(succeeded), Some(failed))).then_some(())
        })
        .await;
    }

    /// A fresh store in `dir` and fresh fakes, with [`IMAGE`] registered.
    async fn new(dir: &Path) -> Plane {
        let images = FakeImages::new();
        images.add(IMAGE, CMD);
        Plane::start(open_store(dir), FakeRuntime::new(), images).await
    }

    /// Applies Service `name` running `image`, with `annotations` on its template, as the
    /// API does with a manifest body.
    async fn apply(&self, name: &str, image: &str, annotations: &[(&str, &str)]) {
        let annotations: serde_json::Map<String, serde_json::Value> = annotations
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::Value::from(*v)))
            .collect();
        let body = serde_json::json!({
            "apiVersion": "serving.knative.dev/v1",
            "kind": "Service",
            "metadata": {"name": name},
            "spec": {"template": {
                "metadata": {"annotations": annotations},
                "spec": {"containers": [{"image": image}]}
            }}
        })
        .to_string();
        let mut docs = parse_documents(&body).expect("a manifest");
        let doc = docs.remove(0);
        self.plane
            .controller
            .apply(NS, Some(name), &doc, ApplyMode::CreateOrReplace, false)
            .await
            .expect("apply");
    }

    async fn revision(&self, name: &str) -> Revision {
        self.plane
            .controller
            .get_revision(NS, name)
            .await
            .expect("the revision exists")
    }

    /// Waits until revision `name`'s condition `t` has `status` (and `reason`, when given);
    /// returns the revision.
    async fn wait_condition(
        &self,
        name: &str,
        t: &str,
        status: ConditionStatus,
        reason: Option<&str>,
    ) -> Revision {
        until(
            &format!("{name} {t}={status:?} reason {reason:?}"),
            async || {
                let r = self.revision(name).await;
                let c = r.condition(t)?;
                (c.status == status && (reason.is_none() || c.reason.as_deref() == reason))
                    .then_some(r.clone())
            },
        )
        .await
    }

    /// Waits until revision `name` reports `n` ready instances in its status.
    async fn wait_actual(&self, name: &str, n: u32) -> Revision {
        until(&format!("{name} actualReplicas={n}"), async || {
            let r = self.revision(name).await;
            (r.status.actual_replicas == n).then_some(r)
        })
        .await
    }

    /// The number of ready instances in revision `name`'s router pool.
    fn pool_ready(&self, name: &str) -> usize {
        self.router
            .pool(&(NS.to_owned(), name.to_owned()))
            .map_or(0, |p| p.ready())
    }

    async fn wait_pool_ready(&self, name: &str, n: usize) {
        until(&format!("{name}'s pool to count {n} ready"), async || {
            (self.pool_ready(name) == n).then_some(())
        })
        .await;
    }

    /// Waits until the runtime has started `n` instances in all; returns their plans.
    async fn wait_started(&self, n: usize) -> Vec<InstancePlan> {
        until(&format!("{n} instance(s) started"), async || {
            let s = self.runtime.started();
            (s.len() >= n).then_some(s)
        })
        .await
    }

    /// The stored instance record of `id`.
    async fn record(&self, id: &str) -> Option<InstancePlan> {
        self.store
            .get(&instance_key(NS, id))
            .await
            .expect("reading the store")
            .map(|kv| serde_json::from_slice(&kv.value).expect("an instance plan"))
    }

    async fn shutdown(self) -> (Arc<dyn Store>, Arc<FakeRuntime>, Arc<FakeImages>) {
        self.plane.shutdown(Duration::from_secs(1)).await;
        (self.store, self.runtime, self.images)
    }
}

fn condition<'a>(r: &'a Revision, t: &str) -> &'a skiff_api::object::Condition {
    r.condition(t)
        .unwrap_or_else(|| panic!("{} has no {t} condition", r.metadata.name))
}

/// Start: a min-scale-1 Service gets one instance with the plan its revision and image make,
/// recorded in the store; the revision is Deploying until the instance is ready, then Ready
/// with the instance counted ready in the router's pool; shutdown stops it and forgets its
/// record.
#[tokio::test]
async fn a_min_scale_service_starts_one_instance_that_becomes_ready() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Plane::new(dir.path()).await;
    p.apply(
        "hello",
        IMAGE,
        &[("autoscaling.knative.dev/min-scale", "1")],
    )
    .await;

    let plan = p.wait_started(1).await.remove(0);
    assert_eq!(
        (
            plan.namespace.as_str(),
            plan.service.as_str(),
            plan.revision.as_str()
        ),
        (NS, "hello", "hello-00001")
    );
    assert!(plan.id.starts_with("hello-00001-"), "{}", plan.id);
    assert_eq!(plan.port, 8080);
    assert_eq!(plan.containers.len(), 1);
    let c = &plan.containers[0];
    assert_eq!(c.args, CMD);
    for (k, v) in [
        ("PORT", "8080"),
        ("K_SERVICE", "hello"),
        ("K_REVISION", "hello-00001"),
        ("PATH", "/usr/bin:/bin"),
    ] {
        assert!(
            c.env.contains(&(k.to_owned(), v.to_owned())),
            "{k}={v} missing from {:?}",
            c.env
        );
    }
    let image = skiff_test_utils::fakes::image_record(IMAGE, CMD);
    assert_eq!(
        c.lowers,
        vec![p.images.layer_path(&image.layers[0].diff_id)]
    );
    assert!(c.readiness.is_some(), "the serving container gets a probe");
    assert!(
        plan.scheduled.is_some(),
        "the decision time reaches the runtime"
    );
    // The record is the plan, less the decision time (not recorded).
    let recorded = InstancePlan {
        scheduled: None,
        task: None,
        ..plan.clone()
    };
    assert_eq!(p.record(&plan.id).await.as_ref(), Some(&recorded));
    let pinned = p.revision("hello-00001").await.status.container_statuses;
    assert_eq!(
        pinned[0].image_digest.as_deref(),
        Some(image.pinned().as_str())
    );

    // Started, not ready: the status says so and the pool has no ready instance.
    let r = p
        .wait_condition(
            "hello-00001",
            conditions::READY,
            ConditionStatus::Unknown,
            Some(reasons::DEPLOYING),
        )
        .await;
    assert_eq!(
        condition(&r, conditions::ACTIVE).status,
        ConditionStatus::True
    );
    assert_eq!(p.pool_ready("hello-00001"), 0);

    p.runtime.set_ready(&plan.id, true);
    let r = p
        .wait_condition(
            "hello-00001",
            conditions::READY,
            ConditionStatus::True,
            None,
        )
        .await;
    assert_eq!(
        condition(&r, conditions::RESOURCES_AVAILABLE).status,
        ConditionStatus::True
    );
    p.wait_actual("hello-00001", 1).await;
    p.wait_pool_ready("hello-00001", 1).await;
    let svc = until("the Service to be Ready", async || {
        let s = p
            .plane
            .controller
            .get_service(NS, "hello")
            .await
            .expect("service");
        s.status
            .conditions
            .iter()
            .any(|c| c.condition_type == conditions::READY && c.status == ConditionStatus::True)
            .then_some(s)
    })
    .await;
    assert_eq!(
        svc.status.latest_ready_revision_name.as_deref(),
        Some("hello-00001")
    );
    assert_eq!(p.runtime.started_ids(), vec![plan.id.clone()]);
    // One deployment, succeeded (M15).
    p.wait_deployments("hello", 1, 0).await;

    let (store, runtime, _) = p.shutdown().await;
    assert!(runtime.running_ids().is_empty());
    assert_eq!(runtime.stopped_ids(), vec![plan.id.clone()]);
    assert!(
        store
            .list(skiff_store::keys::INSTANCES)
            .await
            .expect("list")
            .kvs
            .is_empty()
    );
}

/// Pull failure: a Service whose image cannot be resolved gets a revision that is Ready False
/// with ImagePullFailed (and the image in the message), and no instance is started for it,
/// while a Service applied after it does get one.
#[tokio::test]
async fn an_unknown_image_fails_the_revision_and_starts_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Plane::new(dir.path()).await;
    p.apply(
        "broken",
        "skiff.local/missing:v1",
        &[("autoscaling.knative.dev/min-scale", "1")],
    )
    .await;
    let r = p
        .wait_condition(
            "broken-00001",
            conditions::READY,
            ConditionStatus::False,
            Some(reasons::PULL_FAILED),
        )
        .await;
    let message = condition(&r, conditions::READY)
        .message
        .clone()
        .unwrap_or_default();
    assert!(message.contains("skiff.local/missing:v1"), "{message}");
    assert!(r.status.container_statuses.is_empty(), "nothing is pinned");
    assert_eq!(
        p.images.resolved(),
        vec!["skiff.local/missing:v1".to_owned()],
        "one pull until the retry backoff is over, however often the revision is written"
    );

    // A later Service's instance starts: the failed revision's key, queued before it, has been
    // reconciled by then, and it started nothing.
    p.apply(
        "hello",
        IMAGE,
        &[("autoscaling.knative.dev/min-scale", "1")],
    )
    .await;
    let started = p.wait_started(1).await;
    assert!(
        started.iter().all(|plan| plan.service == "hello"),
        "{started:?}"
    );
    let r = p.revision("broken-00001").await;
    assert_eq!(
        condition(&r, conditions::READY).reason.as_deref(),
        Some(reasons::PULL_FAILED),
        "the failure stays"
    );
    assert!(
        p.runtime
            .started()
            .iter()
            .all(|plan| plan.service != "broken")
    );
    let pulls = p.images.resolved();
    assert_eq!(
        pulls.iter().filter(|i| i.contains("missing")).count(),
        1,
        "{pulls:?}"
    );
    p.shutdown().await;
}

/// Crash loop: an instance whose container keeps exiting makes its revision Ready False with
/// reason CrashLoopBackOff, the exit code and the last log lines in the message.
#[tokio::test]
async fn a_crashing_instance_fails_the_revision_with_its_exit_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Plane::new(dir.path()).await;
    p.apply(
        "hello",
        IMAGE,
        &[("autoscaling.knative.dev/min-scale", "1")],
    )
    .await;
    let id = p.wait_started(1).await.remove(0).id;
    p.runtime.crash(&id, 3, &["panic: boom"]);
    let r = p
        .wait_condition(
            "hello-00001",
            conditions::READY,
            ConditionStatus::False,
            Some(reasons::CRASH_LOOP),
        )
        .await;
    let message = condition(&r, conditions::READY)
        .message
        .clone()
        .unwrap_or_default();
    assert!(message.contains("exited with code 3"), "{message}");
    assert!(message.contains("panic: boom"), "{message}");
    let healthy = condition(&r, conditions::CONTAINER_HEALTHY);
    assert_eq!(
        (healthy.status, healthy.reason.as_deref()),
        (ConditionStatus::False, Some(reasons::CRASH_LOOP))
    );
    assert_eq!(p.pool_ready("hello-00001"), 0);
    // One deployment, failed (M15).
    p.wait_deployments("hello", 0, 1).await;
    // The Service's status is refreshed just after the revision's.
    until("the Service to be Ready False", async || {
        let s = p
            .plane
            .controller
            .get_service(NS, "hello")
            .await
            .expect("service");
        s.status
            .conditions
            .iter()
            .any(|c| c.condition_type == conditions::READY && c.status == ConditionStatus::False)
            .then_some(())
    })
    .await;
    p.shutdown().await;
}

/// Readiness flap: ready, not ready, ready again: the router's pool counts 1, 0, 1 ready and
/// the revision's actual replicas follow, while the revision stays Ready once it has been.
#[tokio::test]
async fn a_readiness_flap_moves_the_pool_and_keeps_the_revision_ready() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Plane::new(dir.path()).await;
    p.apply(
        "hello",
        IMAGE,
        &[("autoscaling.knative.dev/min-scale", "1")],
    )
    .await;
    let id = p.wait_started(1).await.remove(0).id;
    let rev = "hello-00001";

    p.runtime.set_ready(&id, true);
    p.wait_pool_ready(rev, 1).await;
    p.wait_condition(rev, conditions::READY, ConditionStatus::True, None)
        .await;
    p.wait_actual(rev, 1).await;

    p.runtime.set_ready(&id, false);
    p.wait_pool_ready(rev, 0).await;
    let r = p.wait_actual(rev, 0).await;
    assert_eq!(
        condition(&r, conditions::READY).status,
        ConditionStatus::True,
        "a revision that has served stays Ready while an instance is not ready"
    );
    assert_eq!(
        condition(&r, conditions::ACTIVE).status,
        ConditionStatus::True
    );

    p.runtime.set_ready(&id, true);
    p.wait_pool_ready(rev, 1).await;
    let r = p.wait_actual(rev, 1).await;
    assert_eq!(
        condition(&r, conditions::READY).status,
        ConditionStatus::True
    );
    assert_eq!(p.runtime.started_ids(), vec![id], "nothing else started");
    assert!(p.runtime.stopped_ids().is_empty(), "nothing was stopped");
    p.shutdown().await;
}

/// Scale to zero and back: an override of 0 drains and stops the ready instance, removes its
/// record and turns the revision's Active False (Ready stays True: it starts on demand); an
/// override of 2 then starts two new instances, each recorded.
#[tokio::test]
async fn scaling_to_zero_stops_and_forgets_then_scaling_up_starts_two() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Plane::new(dir.path()).await;
    p.apply("hello", IMAGE, &[]).await;
    let rev = "hello-00001";
    let first = p.wait_started(1).await.remove(0).id;
    p.runtime.set_ready(&first, true);
    p.wait_pool_ready(rev, 1).await;
    p.wait_condition(rev, conditions::READY, ConditionStatus::True, None)
        .await;
    assert!(p.record(&first).await.is_some());

    p.plane
        .instances
        .set_scale(NS, "hello", 0)
        .await
        .expect("scale to 0");
    until("the instance to be stopped", async || {
        p.runtime.stopped_ids().contains(&first).then_some(())
    })
    .await;
    until("the instance record to be removed", async || {
        p.record(&first).await.is_none().then_some(())
    })
    .await;
    let r = p
        .wait_condition(
            rev,
            conditions::ACTIVE,
            ConditionStatus::False,
            Some(reasons::NO_INSTANCES),
        )
        .await;
    assert_eq!(
        condition(&r, conditions::READY).status,
        ConditionStatus::True
    );
    assert_eq!(p.pool_ready(rev), 0);
    assert!(p.runtime.running_ids().is_empty());

    p.plane
        .instances
        .set_scale(NS, "hello", 2)
        .await
        .expect("scale to 2");
    let started = p.wait_started(3).await;
    let new: Vec<String> = started[1..].iter().map(|plan| plan.id.clone()).collect();
    assert!(!new.contains(&first) && new[0] != new[1], "{new:?}");
    until("two instances running", async || {
        (p.runtime.running_ids().len() == 2).then_some(())
    })
    .await;
    for id in &new {
        assert!(p.record(id).await.is_some(), "{id} is recorded");
    }
    p.wait_condition(rev, conditions::ACTIVE, ConditionStatus::True, None)
        .await;
    assert_eq!(
        p.runtime.started().len(),
        3,
        "no more than two were started"
    );
    p.shutdown().await;
}

/// Daemon restart: a record whose instance still runs is adopted (kept, routed once ready, and
/// no new instance is started for the min-scale-1 Service); a record whose instance is gone
/// is removed.
#[tokio::test]
async fn a_restart_adopts_running_instances_and_forgets_stale_records() {
    let dir = tempfile::tempdir().expect("tempdir");
    // The previous run: a ready instance of a min-scale-1 Service.
    let p = Plane::new(dir.path()).await;
    p.apply(
        "hello",
        IMAGE,
        &[("autoscaling.knative.dev/min-scale", "1")],
    )
    .await;
    let rev = "hello-00001";
    let plan = p.wait_started(1).await.remove(0);
    p.runtime.set_ready(&plan.id, true);
    p.wait_condition(rev, conditions::READY, ConditionStatus::True, None)
        .await;
    p.wait_actual(rev, 1).await;
    p.wait_deployments("hello", 1, 0).await;
    let (store, _, images) = p.shutdown().await;
    let plan = InstancePlan {
        scheduled: None,
        task: None,
        ..plan
    };

    // What a `kill -9` leaves: the instance's record (a clean shutdown removed it), and the
    // record of an instance that did not survive.
    let mut stale = plan.clone();
    stale.id = format!("{rev}-stale");
    for p in [&plan, &stale] {
        store
            .txn(Txn::new().put(
                instance_key(NS, &p.id),
                serde_json::to_vec(p).expect("serializes"),
            ))
            .await
            .expect("writing a record");
    }
    let runtime = FakeRuntime::new();
    // Adopted not ready yet, so the first pass over the revision shows in its status.
    runtime.survive(&plan.id, false);
    let p = Plane::start(store, runtime, images).await;

    assert_eq!(p.runtime.offered().len(), 2, "both records were offered");
    assert_eq!(p.runtime.running_ids(), vec![plan.id.clone()]);
    assert!(
        p.record(&stale.id).await.is_none(),
        "the stale record is gone"
    );
    assert_eq!(p.record(&plan.id).await.as_ref(), Some(&plan));

    // The instance reconciler has looked at the revision once it writes the adopted
    // instance's state (not ready: 0 actual replicas).
    let r = p.wait_actual(rev, 0).await;
    assert_eq!(
        condition(&r, conditions::ACTIVE).status,
        ConditionStatus::True
    );
    assert!(
        p.runtime.started().is_empty(),
        "the adopted instance counts: {:?}",
        p.runtime.started_ids()
    );
    p.runtime.set_ready(&plan.id, true);
    p.wait_pool_ready(rev, 1).await;
    p.wait_actual(rev, 1).await;
    assert!(
        p.runtime.started().is_empty(),
        "{:?}",
        p.runtime.started_ids()
    );
    assert!(
        p.runtime.stopped_ids().is_empty(),
        "the adopted instance was kept"
    );
    // The restarted daemon does not count the revision it found Ready again (M15): a
    // Service applied after it is counted, and the first still shows 0.
    p.apply(
        "second",
        IMAGE,
        &[("autoscaling.knative.dev/min-scale", "1")],
    )
    .await;
    let second = p.wait_started(1).await.remove(0);
    p.runtime.set_ready(&second.id, true);
    p.wait_deployments("second", 1, 0).await;
    assert_eq!(
        (
            p.deployments("hello", "succeeded"),
            p.deployments("hello", "failed")
        ),
        (Some(0), Some(0))
    );
    p.shutdown().await;
}

/// Applies a Service whose container takes env from a Secret and a ConfigMap, through the
/// controller as the API does.
async fn apply_with_secrets(p: &Plane, name: &str) {
    let body = serde_json::json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {"template": {"spec": {"containers": [{
            "image": IMAGE,
            "env": [
                {"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "db", "key": "password"}}},
                {"name": "MAYBE", "valueFrom": {"secretKeyRef": {"name": "db", "key": "nope", "optional": true}}},
                {"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "cfg", "key": "mode"}}}
            ],
            "envFrom": [{"secretRef": {"name": "db"}, "prefix": "DB_"}]
        }]}}}
    })
    .to_string();
    let mut docs = parse_documents(&body).expect("a manifest");
    let doc = docs.remove(0);
    p.plane
        .controller
        .apply(NS, Some(name), &doc, ApplyMode::CreateOrReplace, false)
        .await
        .expect("apply");
}

async fn put_config(p: &Plane, yaml: &str) {
    let doc = parse_documents(yaml).expect("yaml").remove(0);
    let kind = skiff_api::manifest::config_kind(&doc).expect("a config object");
    let v = skiff_api::manifest::config_from_document(&doc, kind).expect("valid");
    p.secrets.apply(v, false).await.expect("stored");
}

/// A revision that needs a missing Secret is not ready, says which Secret and key (never a
/// value), and heals when the Secret and ConfigMap appear; the instance gets the values in
/// memory while its record in the store holds none of the Secret's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_secret_fails_the_revision_until_it_appears() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Plane::new(dir.path()).await;
    apply_with_secrets(&p, "sec").await;
    let r = p
        .wait_condition(
            "sec-00001",
            conditions::READY,
            ConditionStatus::False,
            Some(reasons::CREATE_CONTAINER_CONFIG_ERROR),
        )
        .await;
    let msg = r
        .condition(conditions::READY)
        .and_then(|c| c.message.clone())
        .unwrap_or_default();
    assert!(msg.contains("Secret `db` not found"), "{msg}");
    assert!(msg.contains("ConfigMap `cfg` not found"), "{msg}");
    assert!(
        p.runtime.started().is_empty(),
        "nothing starts without its Secret"
    );

    put_config(&p, "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\nstringData: {password: s3cr3t-value, user: admin}\n").await;
    // Still missing the ConfigMap: the message now names only it.
    let r = until("the message to name only the ConfigMap", async || {
        let r = p.revision("sec-00001").await;
        let m = r.condition(conditions::READY)?.message.clone()?;
        (!m.contains("Secret `db`")).then_some(r)
    })
    .await;
    let msg = r
        .condition(conditions::READY)
        .and_then(|c| c.message.clone())
        .unwrap_or_default();
    assert!(
        msg.contains("key `mode` not found") || msg.contains("ConfigMap `cfg` not found"),
        "{msg}"
    );

    put_config(
        &p,
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: cfg}\ndata: {mode: fast}\n",
    )
    .await;
    let started = p.wait_started(1).await;
    let c = &started[0].containers[0];
    let secret: Vec<(&str, &str)> = c
        .secret_env
        .0
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert!(
        secret.contains(&("DB_PASSWORD", "s3cr3t-value")),
        "{secret:?}"
    );
    assert!(
        secret.contains(&("DB_password", "s3cr3t-value")),
        "{secret:?}"
    );
    assert!(secret.contains(&("DB_user", "admin")), "{secret:?}");
    assert!(
        !c.env.iter().any(|(k, _)| k == "MAYBE"),
        "an optional missing key sets nothing"
    );
    assert!(
        c.env.contains(&("MODE".into(), "fast".into())),
        "{:?}",
        c.env
    );
    assert!(
        !format!("{c:?}").contains("s3cr3t-value"),
        "Debug hides values"
    );
    p.runtime.set_ready(&started[0].id, true);
    p.wait_condition("sec-00001", conditions::READY, ConditionStatus::True, None)
        .await;

    // Neither the instance record nor the Secret's own record holds the value.
    for kv in p.store.list("/").await.expect("list") {
        let text = String::from_utf8_lossy(&kv.value);
        assert!(!text.contains("s3cr3t-value"), "plaintext under {}", kv.key);
    }
    let record = p.record(&started[0].id).await.expect("recorded");
    assert!(record.containers[0].secret_env.0.is_empty());

    // Rotation re-seals the Secret; it still reads back.
    let before = p.secrets.key_id();
    let report = p.secrets.rotate_key().await.expect("rotated");
    assert_ne!(report.key_id, before);
    assert_eq!(report.rewritten, 1);
    let db = p
        .secrets
        .get(skiff_api::config::ConfigKind::Secret, NS, "db")
        .await
        .expect("read")
        .expect("exists");
    assert_eq!(db.data.0["password"], b"s3cr3t-value");
}

/// A Cloud Run Job on the fake runtime: an execution of 3 tasks at parallelism 2 starts two
/// run-to-completion task instances with Cloud Run's variables (no serving contract), a task
/// whose first attempt exits 1 is retried with attempt 1, the execution succeeds with one
/// retry, the job's status and the instance records follow, and nothing is left running.
#[tokio::test]
async fn a_job_execution_runs_its_tasks_to_completion_with_retries() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Plane::new(dir.path()).await;
    let yaml = format!(
        "apiVersion: run.googleapis.com/v1\nkind: Job\nmetadata: {{name: etl}}\nspec:\n  template:\n    spec:\n      taskCount: 3\n      parallelism: 2\n      template:\n        spec:\n          maxRetries: 1\n          containers:\n          - image: {IMAGE}\n"
    );
    let doc = parse_documents(&yaml).expect("yaml").remove(0);
    let job = skiff_api::manifest::job_from_document(&doc).expect("a valid job");
    let jobs = &p.plane.jobs;
    jobs.apply(job, false).await.expect("applied");
    let exec = jobs
        .run(NS, "etl", &Default::default(), "api", None)
        .await
        .expect("an execution");
    let name = exec.metadata.name.clone();
    let running = async |n: usize| {
        until(&format!("{n} task instances running"), async || {
            let t = p.runtime.tasks();
            (t.len() == n).then_some(t)
        })
        .await
    };
    let first = running(2).await;
    let plan = &first[0].plan;
    let task = plan.task.clone().expect("a task plan");
    assert_eq!(task.execution, name);
    let c = &plan.containers[0];
    assert!(c.readiness.is_none() && c.liveness.is_none());
    let env: std::collections::HashMap<_, _> = c.env.iter().cloned().collect();
    assert_eq!(env.get("CLOUD_RUN_JOB").map(String::as_str), Some("etl"));
    assert_eq!(
        env.get("CLOUD_RUN_TASK_COUNT").map(String::as_str),
        Some("3")
    );
    assert!(
        !env.contains_key("PORT") && !env.contains_key("K_SERVICE"),
        "{env:?}"
    );
    assert!(
        p.record(&plan.id).await.is_some(),
        "the attempt is recorded"
    );
    // Task 0 fails its first attempt; task 1 succeeds.
    p.runtime.finish_task(&format!("{name}-0-0"), 1);
    p.runtime.finish_task(&format!("{name}-1-0"), 0);
    let ids = |ts: Vec<skiff_control::runtime::InstanceInfo>| {
        let mut v: Vec<String> = ts.into_iter().map(|i| i.plan.id).collect();
        v.sort();
        v
    };
    let second = until("the retry and the third task", async || {
        let v = ids(p.runtime.tasks());
        (v.len() == 2).then_some(v)
    })
    .await;
    assert_eq!(second, [format!("{name}-0-1"), format!("{name}-2-0")]);
    for id in &second {
        p.runtime.finish_task(id, 0);
    }
    let done = until("the execution to succeed", async || {
        let e = jobs.execution(NS, &name).await.expect("read");
        e.is_done().then_some(e)
    })
    .await;
    assert_eq!(
        done.completion_status(),
        skiff_api::job::CompletionStatus::ExecutionSucceeded
    );
    assert_eq!(
        (done.status.succeeded_count, done.status.retried_count),
        (3, 1)
    );
    assert_eq!(done.status.tasks[0].attempts[0].exit_code, Some(1));
    let j = until("the job's status", async || {
        let j = jobs.get(NS, "etl").await.expect("read");
        let r = j.status.latest_created_execution.clone()?;
        (r.completion_status == skiff_api::job::CompletionStatus::ExecutionSucceeded).then_some(j)
    })
    .await;
    assert_eq!(j.status.execution_count, 1);
    until("the attempts' records to go", async || {
        for id in [&second[0], &second[1], &format!("{name}-0-0")] {
            if p.record(id).await.is_some() {
                return None;
            }
        }
        Some(())
    })
    .await;
    assert!(p.runtime.tasks().is_empty());
    // Serving never saw a task instance.
    assert!(p.plane.instances.runtime().instances().is_empty());
    p.shutdown().await;
}

/// Request records as the router would hand them over: `ok` 2xx and `failed` 500 answers of
/// revision `rev`, arriving now.
fn records(rev: &str, ok: usize, failed: usize) -> Vec<skiff_router::record::RequestRecord> {
    (0..ok + failed)
        .map(|i| skiff_router::record::RequestRecord {
            at: std::time::SystemTime::now(),
            duration: Duration::from_millis(3),
            request_id: format!("r{i}"),
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            parent_span_id: None,
            spans: None,
            method: "GET".into(),
            host: "web.default.example.test".into(),
            path: "/".into(),
            status: if i < failed { 500 } else { 200 },
            bytes: 2,
            complete: true,
            namespace: NS.into(),
            service: "web".into(),
            revision: rev.into(),
            instance: None,
            cold_start: None,
            waited: Duration::ZERO,
            throttled: None,
        })
        .collect()
}

/// Rollouts on the fakes: a new ready revision rolls out from the stable one with the
/// traffic split written with each step; one whose requests fail is rolled back (the
/// Service not Ready, saying why, the deployment counted `rolled_back`); a later one that
/// answers well rolls out to the end and becomes the stable revision.
#[tokio::test]
async fn a_rollout_steps_rolls_back_a_failing_revision_and_completes_a_good_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let p = Plane::new(dir.path()).await;
    let policy = |target: &'static str| {
        [
            ("autoscaling.knative.dev/min-scale", "1"),
            ("autoscaling.knative.dev/target", target),
            ("skiff.dev/rollout", "10,100"),
            ("skiff.dev/rollout-step", "1s"),
            ("skiff.dev/rollout-min-requests", "5"),
        ]
    };
    let ready = async |rev: &str, started: usize| {
        let plan = p
            .wait_started(started)
            .await
            .into_iter()
            .find(|plan| plan.revision == rev)
            .expect("an instance of the revision");
        p.runtime.set_ready(&plan.id, true);
        p.wait_condition(rev, conditions::READY, ConditionStatus::True, None)
            .await;
    };
    let service = async || {
        p.plane
            .controller
            .get_service(NS, "web")
            .await
            .expect("the service")
    };
    p.apply("web", IMAGE, &policy("100")).await;
    ready("web-00001", 1).await;
    p.apply("web", IMAGE, &policy("101")).await;
    ready("web-00002", 2).await;
    // The rollout starts at 10%, its split in the Service's status.
    let s = until("the rollout at 10%", async || {
        let s = service().await;
        let p = s.status.rollout.as_ref()?.current.as_ref()?;
        (p.revision == "web-00002" && p.step == 0).then_some(s)
    })
    .await;
    let split: Vec<(String, i64)> = s
        .status
        .traffic
        .iter()
        .map(|t| (t.revision_name.clone(), t.percent))
        .collect();
    assert_eq!(
        split,
        vec![("web-00001".to_owned(), 90), ("web-00002".to_owned(), 10)]
    );
    // A third of the new revision's requests fail: rolled back before its step is up.
    let since = s
        .status
        .rollout
        .as_ref()
        .and_then(|r| r.current.as_ref())
        .map(|c| c.step_started_at.clone())
        .expect("running");
    until("the step's windows", async || {
        p.plane
            .rollout_windows
            .figures(NS, "web-00002", &since, None)
            .map(|_| ())
    })
    .await;
    p.plane.rollout_windows.took(&records("web-00001", 200, 0));
    p.plane.rollout_windows.took(&records("web-00002", 8, 4));
    let s = until("the rollback", async || {
        let s = service().await;
        let r = s.status.rollout.as_ref()?;
        (r.current.is_none() && r.history.first()?.outcome == "rolled_back").then_some(s)
    })
    .await;
    let ready_cond = s
        .status
        .conditions
        .iter()
        .find(|c| c.condition_type == conditions::READY)
        .expect("Ready");
    assert_eq!(ready_cond.status, ConditionStatus::False);
    assert_eq!(ready_cond.reason.as_deref(), Some(reasons::ROLLOUT_FAILED));
    assert!(
        ready_cond
            .message
            .as_deref()
            .is_some_and(|m| m.contains("5xx 33.3% (4 of 12)")),
        "{ready_cond:?}"
    );
    assert_eq!(s.status.traffic.len(), 1);
    assert_eq!(s.status.traffic[0].revision_name, "web-00001");
    assert_eq!(p.deployments("web", "rolled_back"), Some(1));
    // A later good revision rolls out to the end.
    p.apply("web", IMAGE, &policy("102")).await;
    ready("web-00003", 3).await;
    for step in 0..2 {
        let since = until(&format!("web-00003 at step {step}"), async || {
            let s = service().await;
            let c = s.status.rollout.as_ref()?.current.as_ref()?;
            (c.revision == "web-00003" && c.step == step).then(|| c.step_started_at.clone())
        })
        .await;
        until("the step's windows", async || {
            p.plane
                .rollout_windows
                .figures(NS, "web-00003", &since, None)
                .map(|_| ())
        })
        .await;
        // Both revisions answer well (at 100% the stable one gets nothing).
        p.plane
            .rollout_windows
            .took(&records("web-00001", if step == 0 { 90 } else { 0 }, 0));
        p.plane.rollout_windows.took(&records("web-00003", 20, 0));
    }
    let s = until("the rollout to succeed", async || {
        let s = service().await;
        let r = s.status.rollout.as_ref()?;
        (r.current.is_none() && r.history.first()?.outcome == "succeeded").then_some(s)
    })
    .await;
    let r = s.status.rollout.as_ref().expect("rollout");
    assert_eq!(r.stable_revision.as_deref(), Some("web-00003"));
    assert_eq!(r.held_revision, None);
    assert_eq!(s.status.traffic[0].revision_name, "web-00003");
    assert_eq!(s.status.traffic[0].percent, 100);
    p.shutdown().await;
}

/// Parking on the fakes: a Service at zero gets one parked instance; wanting one unparks it
/// (no fresh start); once it is ready the next is parked; wanting two more unparks that one
/// and starts one fresh; the cap holds across Services; deleting a Service stops its
/// parked instance too.
#[tokio::test]
async fn parked_instances_are_started_first_then_parked_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let images = FakeImages::new();
    images.add(IMAGE, CMD);
    let p = Plane::start_parking(open_store(dir.path()), FakeRuntime::new(), images, 2).await;
    let zero = [("autoscaling.knative.dev/initial-scale", "0")];
    p.apply("web", IMAGE, &zero).await;
    let first = until("a parked instance", async || {
        let parked = p.runtime.parked();
        (parked.len() == 1).then(|| parked[0].id.clone())
    })
    .await;
    assert!(p.runtime.started().is_empty(), "nothing started");
    // Wanted: the parked instance is started, not a fresh one.
    p.plane
        .instances
        .set_scale(NS, "web", 1)
        .await
        .expect("scale");
    until("the parked instance started", async || {
        (p.runtime.unparked_ids() == vec![first.clone()]).then_some(())
    })
    .await;
    assert!(p.runtime.started().is_empty(), "no fresh start");
    // Not parked again while it starts; once it is ready, the next is.
    p.runtime.set_ready(&first, true);
    let second = until("the next parked instance", async || {
        let parked = p.runtime.parked();
        (parked.len() == 2).then(|| parked[1].id.clone())
    })
    .await;
    p.wait_actual("web-00001", 1).await;
    // Three wanted: the parked one, and one fresh.
    p.plane
        .instances
        .set_scale(NS, "web", 3)
        .await
        .expect("scale");
    until("the second unparked and one started", async || {
        (p.runtime.unparked_ids() == vec![first.clone(), second.clone()]
            && p.runtime.started().len() == 1)
            .then_some(())
    })
    .await;
    // Unparked once each: a parked instance is never started twice.
    let mut ids = p.runtime.unparked_ids();
    ids.dedup();
    assert_eq!(ids.len(), p.runtime.unparked_ids().len());
    // The cap (2) holds across Services: two more Services at zero park one each (web has
    // none parked while its instances start), a third parks nothing.
    let held = || {
        p.runtime
            .instances()
            .into_iter()
            .filter(|i| i.status.phase == skiff_runtime::instance::Phase::Parked)
            .count()
    };
    p.apply("api", IMAGE, &zero).await;
    p.apply("jobs", IMAGE, &zero).await;
    until("two parked (the cap)", async || (held() == 2).then_some(())).await;
    p.apply("more", IMAGE, &zero).await;
    let over = tokio::time::timeout(Duration::from_millis(500), async {
        until("more than the cap", async || (held() > 2).then_some(())).await
    })
    .await;
    assert!(over.is_err(), "never more than the cap");
    // Deleting a Service stops its parked instance with the rest.
    let api = p
        .runtime
        .parked()
        .into_iter()
        .find(|plan| plan.service == "api")
        .expect("api parked")
        .id;
    p.plane
        .controller
        .delete_service(NS, "api", None, false)
        .await
        .expect("delete");
    until("the parked instance stopped", async || {
        p.runtime.stopped_ids().contains(&api).then_some(())
    })
    .await;
    // Its place under the cap goes to the Service that had none.
    until("more parks", async || {
        p.runtime
            .parked()
            .iter()
            .any(|plan| plan.service == "more")
            .then_some(())
    })
    .await;
    p.shutdown().await;
}
