//! `skiff server`: opens the data directory and store, serves the API and the ingress, and
//! shuts down in order when told to.

use std::net::SocketAddr;
use std::sync::Arc;

use skiff_store::{SqliteStore, Store};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::controller::{Controller, SystemClock};
use crate::datadir::{DataDir, DataDirError, Endpoints, STORE_FILE};
use crate::serving::{Serving, ServingConfig};

/// The daemon could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The data directory could not be prepared.
    #[error("preparing the data directory")]
    DataDir(#[from] DataDirError),
    /// The state store could not be opened.
    #[error("opening the state store")]
    Store(#[from] skiff_store::OpenError),
    /// A listener could not be bound.
    #[error("listening for {what} on {addr}{hint}")]
    Bind {
        /// `the API` or `the ingress`.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Advice for the common causes.
        hint: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The image content store could not be opened.
    #[error("opening images")]
    Images(#[from] crate::images::ImagesError),
    /// The container runtime could not be started.
    #[error("starting the container runtime")]
    Runtime {
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Recomputing stored status at start failed.
    #[error("reconciling stored services")]
    Reconcile(#[source] crate::controller::ControllerError),
    /// A server failed while running.
    #[error("serving {what}")]
    Serve {
        /// `the API` or `the ingress`.
        what: &'static str,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

async fn bind(what: &'static str, addr: SocketAddr) -> Result<TcpListener, DaemonError> {
    TcpListener::bind(addr).await.map_err(|source| {
        let hint = match source.kind() {
            std::io::ErrorKind::AddrInUse => " (the address is in use: is another skiff running? choose another with --api-listen / --ingress-listen)",
            std::io::ErrorKind::PermissionDenied => " (permission denied: ports below 1024 need root)",
            _ => "",
        };
        DaemonError::Bind { what, addr, hint, source }
    })
}

/// Runs the daemon until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), DaemonError> {
    let data = DataDir::open(&config.data_dir)?;
    let token = data.ensure_token()?;
    let store_path = data.path().join(STORE_FILE);
    let store: Arc<dyn Store> = Arc::new(tokio::task::block_in_place(|| {
        SqliteStore::open(&store_path)
    })?);

    let api_listener = bind("the API", config.api_listen).await?;
    let ingress_listener = bind("the ingress", config.ingress_listen).await?;
    let api_addr = api_listener
        .local_addr()
        .map_err(|source| DaemonError::Serve {
            what: "the API",
            source,
        })?;
    let ingress_addr = ingress_listener
        .local_addr()
        .map_err(|source| DaemonError::Serve {
            what: "the ingress",
            source,
        })?;

    let metrics = Arc::new(skiff_telemetry::Metrics::new(env!("CARGO_PKG_VERSION")));
    let images = Arc::new(crate::images::Images::open(
        &config,
        data.path(),
        store.clone(),
        &metrics,
    )?);
    let (revision_tx, revision_rx) = tokio::sync::mpsc::unbounded_channel();
    let controller = Controller::new(
        store.clone(),
        config.domain.clone(),
        ingress_addr.port(),
        Arc::new(SystemClock),
    )
    .with_revision_events(revision_tx.clone());
    let updated = controller
        .reconcile_all()
        .await
        .map_err(DaemonError::Reconcile)?;
    info!(updated, "stored services reconciled");

    let mut runtime_options = skiff_runtime::RuntimeOptions::new(data.path());
    runtime_options.runtime = config.runtime.clone();
    runtime_options.pids_limit = config.pids_limit;
    let oci: Arc<dyn skiff_runtime::oci::OciRuntime> = Arc::new(skiff_runtime::oci::RuncCli::new(
        config.runtime.clone(),
        data.path().join("run/runc"),
    ));
    let runtime = skiff_runtime::Runtime::new(runtime_options, oci)
        .map_err(|source| DaemonError::Runtime { source })?;
    let (poke_tx, poke_rx) = tokio::sync::mpsc::unbounded_channel();
    let router_metrics = metrics.register("router", skiff_router::RouterMetrics::new);
    let router = skiff_router::Router::new(
        skiff_router::RouterConfig {
            domain: config.domain.clone(),
            queue_depth: config.activator_queue_depth,
            queue_timeout: config.activator_queue_timeout,
            threads: config.router_threads,
        },
        runtime.connector().clone(),
        poke_tx,
        router_metrics,
    );
    let kick = Arc::new(tokio::sync::Notify::new());
    let serving = Serving::new(
        router.clone(),
        runtime.clone(),
        ServingConfig {
            scale_to_zero_grace: config.scale_to_zero_grace_period,
            enable_scale_to_zero: config.enable_scale_to_zero,
            max_scale_up_rate: config.max_scale_up_rate,
            max_scale_down_rate: config.max_scale_down_rate,
        },
        kick.clone(),
        &metrics,
    );
    let instances = crate::instances::InstanceManager::new(
        runtime,
        controller.clone(),
        images.clone(),
        store.clone(),
        serving.clone(),
        kick,
    );
    // Instances stop on their own shutdown signal, after the API and ingress have drained.
    let instances_stop = tokio_util::sync::CancellationToken::new();
    let instance_task = tokio::spawn(
        instances
            .clone()
            .run(instances_stop.clone(), config.shutdown_grace_period),
    );
    let follower = tokio::spawn(serving.clone().follow_runtime(instances_stop.clone()));
    let autoscaler = tokio::spawn(
        serving
            .clone()
            .run_autoscaler(poke_rx, instances_stop.clone()),
    );
    let kicker = instances.clone();
    let reconciler = tokio::spawn(crate::revisions::run(
        controller.clone(),
        images.clone(),
        revision_rx,
        revision_tx,
        Arc::new(move || kicker.kick()),
        shutdown.clone(),
    ));
    let api_router = api::router(ApiState {
        controller: controller.clone(),
        token: Arc::new(token),
        max_body_bytes: config.max_body_bytes,
        images,
        gc_lock: Arc::default(),
        metrics,
        instances: instances.clone(),
    });
    // Service changes (applies, deletes, status) re-route at once.
    let watcher = {
        let (instances, shutdown) = (instances.clone(), shutdown.clone());
        let mut events = store.watch();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    ev = events.recv() => match ev {
                        Ok(ev) if ev.key.starts_with("/registry/") => instances.kick(),
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => instances.kick(),
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                    },
                    () = shutdown.cancelled() => break,
                }
            }
        })
    };

    data.write_endpoints(&Endpoints {
        api: format!("http://{api_addr}"),
        ingress: ingress_addr.to_string(),
        pid: std::process::id(),
    })?;
    info!(
        api = %api_addr,
        ingress = %ingress_addr,
        data_dir = %config.data_dir.display(),
        domain = %config.domain,
        "skiff is ready"
    );

    let stop_api = shutdown.clone();
    let api_server = tokio::spawn(async move {
        axum::serve(api_listener, api_router)
            .with_graceful_shutdown(async move { stop_api.cancelled().await })
            .await
    });
    let ingress_server = tokio::spawn(router.serve(
        ingress_listener,
        shutdown.clone(),
        config.shutdown_grace_period,
    ));
    let _ = controller;

    shutdown.cancelled().await;
    info!(
        grace_seconds = config.shutdown_grace_period.as_secs(),
        "shutting down: no new connections; draining requests"
    );
    let drained = tokio::time::timeout(config.shutdown_grace_period, async {
        let api = api_server.await;
        let ingress = ingress_server.await;
        (api, ingress)
    })
    .await;
    let mut result = Ok(());
    match drained {
        Ok((api, ingress)) => {
            match api {
                Ok(Ok(())) => {}
                Ok(Err(source)) => {
                    result = Err(DaemonError::Serve {
                        what: "the API",
                        source,
                    })
                }
                Err(join) => warn!(error = %join, "API server task ended abnormally"),
            }
            if let Err(join) = ingress {
                warn!(error = %join, "ingress task ended abnormally");
            }
        }
        Err(_) => warn!("grace period over with requests still in flight; closing them"),
    }
    let _ = watcher.await;
    let _ = reconciler.await;
    info!("stopping instances: SIGTERM, then SIGKILL after each one's grace period");
    instances_stop.cancel();
    let _ = instance_task.await;
    let _ = follower.await;
    let _ = autoscaler.await;
    if let Err(e) = store.close().await {
        warn!(error = %skiff_telemetry::ErrorChain(&e), "closing the state store");
    }
    data.remove_endpoints();
    info!("skiff stopped");
    result
}
