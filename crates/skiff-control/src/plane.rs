//! The control plane, assembled: the controller, serving, and every reconciler registered
//! with one [`Controllers`] runner. The daemon builds the parts it owns (store, router,
//! runtime, images) and hands them here.

use std::sync::Arc;
use std::time::Duration;

use skiff_router::{RevisionKey, Router};
use skiff_store::Store;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::controller::{Clock, Controller, ControllerError};
use crate::deployments::{DeploymentMetrics, DeploymentReconciler};
use crate::instances::{InstanceManager, on_scaled};
use crate::reconciler::{Controllers, Handle};
use crate::revisions::ImageReconciler;
use crate::routing::RouteReconciler;
use crate::runtime::{ImageStore, InstanceRuntime};
use crate::secrets::SecretStore;
use crate::serving::{Serving, ServingConfig};

/// How long shutdown waits for reconciles in progress (an image pull is abandoned; its
/// staging is cleaned at the next start).
const RECONCILE_STOP_GRACE: Duration = Duration::from_secs(2);

/// What the control plane is built from.
pub struct Parts {
    /// The state store.
    pub store: Arc<dyn Store>,
    /// The router (the ingress's routes and the activator).
    pub router: Arc<Router>,
    /// Revisions whose waiting requests want a scaling decision now (from the router).
    pub pokes: mpsc::UnboundedReceiver<RevisionKey>,
    /// The container runtime.
    pub runtime: Arc<dyn InstanceRuntime>,
    /// The image store.
    pub images: Arc<dyn ImageStore>,
    /// The clock status timestamps come from.
    pub clock: Arc<dyn Clock>,
    /// The domain of Service URLs.
    pub domain: String,
    /// The ingress port, shown in URLs.
    pub ingress_port: u16,
    /// Autoscaling settings.
    pub serving: ServingConfig,
    /// Secrets and ConfigMaps.
    pub secrets: Arc<SecretStore>,
    /// The prices cost is computed at.
    pub prices: crate::telemetry::Prices,
    /// Where the metrics history is kept (`None`: no history, SLOs or budgets).
    pub history_dir: Option<std::path::PathBuf>,
    /// Where alerts go, besides `GET /api/v1/alerts`.
    pub notify: Option<Arc<dyn crate::slo::Notify>>,
    /// The rollout policy of revisions that set none.
    pub default_rollout: Option<skiff_api::rollout::RolloutPolicy>,
    /// At most this many parked instances (one per revision that may take requests; 0:
    /// none).
    pub parked_sandboxes: usize,
    /// Frozen instances (`skiff.dev/warm: frozen`) may hold at most this much memory.
    pub frozen_memory_budget: u64,
}

/// The running control plane.
pub struct ControlPlane {
    /// The Service controller (the API writes through it).
    pub controller: Controller,
    /// Instances (the API reads and scales through it).
    pub instances: Arc<InstanceManager>,
    /// The route reconciler's handle: its watermark is what writes wait on.
    pub routes: Handle<String>,
    /// SLOs, budgets and alerts.
    pub slo: Arc<crate::slo::SloEngine>,
    /// The metrics history.
    pub history: crate::history::SharedHistory,
    /// Jobs and their executions (the API reads and writes through it).
    pub jobs: Arc<crate::jobs::Jobs>,
    /// Brokers, Triggers and PingSources, and their event queue (`None` without a data
    /// directory).
    pub eventing: Option<Arc<crate::eventing::Eventing>>,
    /// Instances' start-up phases, with each revision's recent starts.
    pub startups: Arc<crate::telemetry::StartupMetrics>,
    /// Rollouts (the API reads and commands them through it).
    pub rollouts: crate::rollout::Rollouts,
    /// The request windows rollouts compare revisions over (request records go there).
    pub rollout_windows: Arc<crate::rollout::RolloutWindows>,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl ControlPlane {
    /// Re-adopts the previous run's instances, starts every reconciler (and a recompute of
    /// stored status) and returns once the first route table is in the router.
    pub async fn start(
        parts: Parts,
        metrics: &skiff_telemetry::Metrics,
    ) -> Result<Self, ControllerError> {
        let (domain, ingress_port) = (parts.domain.clone(), parts.ingress_port);
        let events_router = parts.router.clone();
        let controller = Controller::new(
            parts.store.clone(),
            parts.domain,
            parts.ingress_port,
            parts.clock,
        )
        .with_default_rollout(parts.default_rollout);
        parts
            .router
            .set_explain(Arc::new(crate::runtime::ExplainFailures(
                parts.runtime.clone(),
            )));
        let registered = crate::telemetry::register(
            metrics,
            parts.runtime.clone(),
            parts.router.clone(),
            parts.prices,
        );
        let sampler = crate::history::Sampler::new(
            parts.router.clone(),
            parts.runtime.clone(),
            registered.follower.billing(),
        );
        let serving = Serving::new(parts.router, parts.runtime.clone(), parts.serving, metrics);
        let instances = InstanceManager::with_parking(
            parts.runtime,
            controller.clone(),
            parts.images.clone(),
            parts.store.clone(),
            serving.clone(),
            parts.secrets.clone(),
            parts.parked_sandboxes,
        )
        .with_frozen_budget(parts.frozen_memory_budget);
        instances.recover().await;

        let stop = CancellationToken::new();
        // The route reconciler runs first, alone: the ingress waits for its first table, and
        // the others' first passes (every revision each) would only compete with it.
        let mut first = Controllers::new(parts.store.clone());
        let routes = first.add(Arc::new(RouteReconciler::new(
            controller.clone(),
            serving.clone(),
        )));
        let mut rest = Controllers::new(parts.store);
        rest.add(Arc::new(ImageReconciler::new(
            controller.clone(),
            parts.images.clone(),
            parts.secrets.clone(),
        )));
        let instance_queue = rest.add(instances.clone());
        let jobs = crate::jobs::Jobs::new(
            controller.clone(),
            instances.runtime().clone(),
            parts.images.clone(),
            parts.secrets.clone(),
            registered.jobs.clone(),
        );
        let execution_queue = rest.add(Arc::new(crate::jobs::ExecutionReconciler(jobs.clone())));
        rest.add(Arc::new(crate::schedules::JobScheduler(jobs.clone())));
        let mut event_tasks = Vec::new();
        let eventing = match &parts.history_dir {
            Some(dir) => {
                let path = dir.join("events.db");
                let queue = tokio::task::spawn_blocking(move || skiff_queue::Queue::open(&path))
                    .await
                    .map_err(|e| ControllerError::BadRequest {
                        message: format!("opening the event queue: {e}"),
                    })?
                    .map_err(|e| ControllerError::BadRequest {
                        message: format!(
                            "opening the event queue: {}",
                            skiff_telemetry::ErrorChain(&e)
                        ),
                    })?;
                let eventing = crate::eventing::Eventing::new(
                    controller.clone(),
                    Arc::new(queue),
                    jobs.clone(),
                    serving.clone(),
                    domain,
                    ingress_port,
                    metrics.register_root(crate::dispatch::EventMetrics::new),
                );
                let reconciler = Arc::new(crate::eventing::EventingReconciler {
                    eventing: eventing.clone(),
                    handle: std::sync::OnceLock::new(),
                });
                let handle = rest.add(reconciler.clone());
                let _ = reconciler.handle.set(handle);
                events_router.set_local(
                    &eventing.ingress_host(),
                    Arc::new(crate::dispatch::Ingress(eventing.clone())),
                );
                let client = reqwest::Client::builder()
                    .no_proxy()
                    .pool_max_idle_per_host(256)
                    .build()
                    .map_err(|e| ControllerError::BadRequest {
                        message: format!("building the event delivery client: {e}"),
                    })?;
                event_tasks.push(tokio::spawn(crate::dispatch::run(
                    eventing.clone(),
                    client,
                    stop.clone(),
                )));
                Some(eventing)
            }
            None => None,
        };
        let deployments = metrics.register_root(DeploymentMetrics::new);
        rest.add(Arc::new(DeploymentReconciler::new(
            controller.clone(),
            deployments.clone(),
        )));
        let rollout_windows = Arc::new(crate::rollout::RolloutWindows::default());
        rest.add(Arc::new(crate::rollout::RolloutReconciler::new(
            controller.clone(),
            rollout_windows.clone(),
            deployments,
        )));
        let rollouts = crate::rollout::Rollouts::new(controller.clone(), rollout_windows.clone());
        let follower = instances.attach(instance_queue, stop.clone());
        let task_follower = jobs.attach(execution_queue, stop.clone());
        let startups = registered.follower.startup();
        serving.on_scaled(Box::new(on_scaled(&instances)));
        let mut tasks = vec![
            follower,
            task_follower,
            tokio::spawn(serving.clone().follow_runtime(stop.clone())),
            tokio::spawn(registered.follower.follow(stop.clone())),
            tokio::spawn(serving.clone().run_autoscaler(parts.pokes, stop.clone())),
            tokio::spawn(first.run(stop.clone())),
        ];
        tasks.extend(event_tasks);
        // The first route table, before the ingress accepts: a restart never answers an
        // existing Service with 404.
        routes.wait_observed(0, Duration::MAX).await;
        tasks.push(tokio::spawn(rest.run(stop.clone())));
        // Stored status is recomputed (a changed domain or port shows in URLs) beside serving:
        // routing does not depend on it, so a restart does not wait for every Service.
        let history = crate::history::SharedHistory::default();
        let slo = Arc::new(crate::slo::SloEngine::new(
            controller.clone(),
            history.clone(),
            parts.prices,
            parts.notify,
        ));
        // Services whose cost budget is spent stop scaling up, from the engine's evaluations.
        tasks.push(tokio::spawn(
            serving.follow_budgets(slo.budget_stops(), stop.clone()),
        ));
        if let Some(dir) = parts.history_dir {
            tasks.push(tokio::spawn(crate::history::run(
                dir,
                history.clone(),
                sampler,
                slo.clone(),
                stop.clone(),
            )));
        }
        let refresh = controller.clone();
        tasks.push(tokio::spawn(async move {
            match refresh.reconcile_all().await {
                Ok(updated) => info!(updated, "stored services reconciled"),
                Err(e) => {
                    warn!(error = %skiff_telemetry::ErrorChain(&e), "recomputing stored status")
                }
            }
        }));
        Ok(ControlPlane {
            controller,
            instances,
            routes,
            slo,
            history,
            jobs,
            eventing,
            startups,
            rollouts,
            rollout_windows,
            stop,
            tasks,
        })
    }

    /// Stops the reconcilers and the autoscaler, then every instance (each given at most
    /// `cap` between SIGTERM and SIGKILL).
    pub async fn shutdown(self, cap: Duration) {
        self.stop.cancel();
        let done = futures::future::join_all(self.tasks);
        if tokio::time::timeout(RECONCILE_STOP_GRACE, done)
            .await
            .is_err()
        {
            warn!("reconciles still in progress at shutdown were abandoned");
        }
        self.instances.stop_all(cap).await;
    }
}
