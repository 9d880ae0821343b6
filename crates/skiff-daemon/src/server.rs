//! `skiff server`: opens the data directory and store, serves the API and the ingress, and
//! shuts down in order when told to.

use std::net::SocketAddr;
use std::sync::Arc;

use skiff_store::{SqliteStore, Store};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use skiff_router::conns::{Acceptor, BusyBody, ConnLimits, Conns};

use skiff_control::controller::SystemClock;
use skiff_control::images::Images;
use skiff_control::plane::{ControlPlane, Parts};
use skiff_control::runtime::Runc;
use skiff_control::serving::ServingConfig;

use crate::api::{self, ApiState};
use crate::config::Config;
use crate::datadir::{DataDir, DataDirError, Endpoints, SECRET_KEY_FILE, STORE_FILE};

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
    Images(#[from] skiff_control::images::ImagesError),
    /// The container runtime could not be started.
    #[error("starting the container runtime")]
    Runtime {
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// Recomputing stored status at start failed.
    #[error("reconciling stored services")]
    Reconcile(#[source] skiff_control::controller::ControllerError),
    /// The secret store (its key file) could not be opened.
    #[error("opening the secret store")]
    Secrets(#[source] skiff_control::controller::ControllerError),
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

/// Raises the soft open-file limit to the hard one where allowed; returns the limit now.
fn raise_nofile_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let before = getrlimit(Resource::Nofile);
    let Some(cur) = before.current else {
        return u64::MAX;
    };
    match before.maximum {
        Some(max) if max <= cur => {
            info!(
                limit = cur,
                "open-file limit (the hard limit allows no more)"
            );
            cur
        }
        max => match setrlimit(
            Resource::Nofile,
            Rlimit {
                current: max,
                maximum: max,
            },
        ) {
            Ok(()) => {
                let now = max.unwrap_or(u64::MAX);
                info!(from = cur, to = now, "open-file limit raised");
                now
            }
            Err(e) => {
                warn!(limit = cur, error = %e, "open-file limit could not be raised");
                cur
            }
        },
    }
}

/// The connection bounds of the ingress and the API under an open-file limit of `nofile`.
fn conn_limits(config: &Config, nofile: u64) -> (ConnLimits, ConnLimits) {
    let room = skiff_router::conns::default_max_connections(
        nofile,
        crate::config::INGRESS_FD_SHARE_PERCENT,
    );
    let ingress_max = match config.ingress.max_connections {
        0 => room,
        n if n > room => {
            warn!(
                ingress_max_connections = n,
                open_file_limit = nofile,
                using = room,
                "ingress_max_connections is more than the open-file limit leaves room for; raise the limit (ulimit -n, LimitNOFILE=) to use more"
            );
            room
        }
        n => n,
    };
    let ingress = ConnLimits {
        max_connections: ingress_max.max(16),
        header_read_timeout: config.ingress.header_read_timeout,
        idle_timeout: config.ingress.idle_timeout,
    };
    let api = ConnLimits {
        max_connections: config.api.max_connections,
        ..ingress
    };
    (ingress, api)
}

/// The daemon's two listeners, bound before anything else so a busy port fails fast.
struct Listeners {
    api: TcpListener,
    api_addr: SocketAddr,
    ingress: TcpListener,
    ingress_addr: SocketAddr,
}

impl Listeners {
    async fn bind(config: &Config) -> Result<Self, DaemonError> {
        let api = bind("the API", config.api.listen).await?;
        let ingress = bind("the ingress", config.ingress.listen).await?;
        let addr = |l: &TcpListener, what| {
            l.local_addr()
                .map_err(|source| DaemonError::Serve { what, source })
        };
        Ok(Listeners {
            api_addr: addr(&api, "the API")?,
            ingress_addr: addr(&ingress, "the ingress")?,
            api,
            ingress,
        })
    }
}

/// The container runtime, from the daemon's settings.
fn runtime(config: &Config, data: &DataDir) -> Result<Arc<skiff_runtime::Runtime>, DaemonError> {
    let mut options = skiff_runtime::RuntimeOptions::new(data.path());
    options.runtime = config.runtime.binary.clone();
    options.pids_limit = config.runtime.pids_limit;
    options.termination_grace = config.runtime.termination_grace_period;
    let oci: Arc<dyn skiff_runtime::oci::OciRuntime> = Arc::new(skiff_runtime::oci::RuncCli::new(
        config.runtime.binary.clone(),
        data.path().join("run/runc"),
    ));
    skiff_runtime::Runtime::new(options, oci).map_err(|source| DaemonError::Runtime { source })
}

/// What the control plane is built from, beside the daemon's settings.
struct Built {
    store: Arc<dyn Store>,
    runtime: Arc<skiff_runtime::Runtime>,
    router: Arc<skiff_router::Router>,
    pokes: tokio::sync::mpsc::UnboundedReceiver<skiff_router::RevisionKey>,
    images: Arc<Images>,
    ingress_port: u16,
    secrets: Arc<skiff_control::secrets::SecretStore>,
    data_dir: std::path::PathBuf,
}

/// The control plane over the store, the router and the runtime.
async fn control_plane(
    config: &Config,
    built: Built,
    metrics: &skiff_telemetry::Metrics,
) -> Result<ControlPlane, DaemonError> {
    let parts = Parts {
        store: built.store,
        router: built.router,
        pokes: built.pokes,
        runtime: Arc::new(Runc(built.runtime)),
        images: built.images,
        clock: Arc::new(SystemClock),
        domain: config.daemon.domain.clone(),
        ingress_port: built.ingress_port,
        serving: ServingConfig {
            scale_to_zero_grace: config.autoscaling.scale_to_zero_grace_period,
            enable_scale_to_zero: config.autoscaling.enable_scale_to_zero,
            max_scale_up_rate: config.autoscaling.max_scale_up_rate,
            max_scale_down_rate: config.autoscaling.max_scale_down_rate,
        },
        secrets: built.secrets,
        prices: config.cost.prices(),
        history_dir: Some(built.data_dir),
        notify: crate::alerts::Delivery::new(
            config.alerts.alertmanager_url.clone(),
            config.alerts.alert_webhook_url.clone(),
        )
        .map(|d| Arc::new(d) as Arc<dyn skiff_control::slo::Notify>),
        default_rollout: config.rollout.policy(),
        parked_sandboxes: config.runtime.parked_sandboxes(),
        frozen_memory_budget: config.runtime.frozen_memory_budget(),
    };
    ControlPlane::start(parts, metrics)
        .await
        .map_err(DaemonError::Reconcile)
}

/// The secret store over `store`, with the key file of `secret_key_file` or the data
/// directory's (made at first start).
async fn secret_store(
    config: &Config,
    data: &DataDir,
    store: &Arc<dyn Store>,
) -> Result<Arc<skiff_control::secrets::SecretStore>, DaemonError> {
    let key_file = config
        .daemon
        .secret_key_file
        .clone()
        .unwrap_or_else(|| data.path().join(SECRET_KEY_FILE));
    skiff_control::secrets::SecretStore::open(
        store.clone(),
        skiff_control::secrets::KeyFile::new(key_file),
        Arc::new(SystemClock),
    )
    .await
    .map_err(DaemonError::Secrets)
}

/// Runs the daemon until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), DaemonError> {
    let (ingress_limits, api_limits) = conn_limits(&config, raise_nofile_limit());
    let data = DataDir::open(&config.daemon.data_dir)?;
    let token = data.ensure_token()?;
    let store_path = data.path().join(STORE_FILE);
    let store: Arc<dyn Store> = Arc::new(tokio::task::block_in_place(|| {
        SqliteStore::open(&store_path)
    })?);
    let listen = Listeners::bind(&config).await?;
    let metrics = Arc::new(skiff_telemetry::Metrics::new(env!("CARGO_PKG_VERSION")));
    let images = Arc::new(Images::open(
        &config.images,
        data.path(),
        store.clone(),
        &metrics,
    )?);
    let runtime = runtime(&config, &data)?;
    let (router, pokes, ingress_conns, api_conns) =
        router(&config, &runtime, &metrics, ingress_limits, api_limits);
    let secrets = secret_store(&config, &data, &store).await?;
    network(&config, &runtime, &router, &ingress_conns, &metrics);
    let built = Built {
        secrets: secrets.clone(),
        store: store.clone(),
        runtime: runtime.clone(),
        router: router.clone(),
        pokes,
        images: images.clone(),
        ingress_port: listen.ingress_addr.port(),
        data_dir: data.path().to_path_buf(),
    };
    let plane = control_plane(&config, built, &metrics).await?;
    // Before the ingress serves: every request it answers is observed.
    let telemetry = crate::requests::start(
        &config,
        runtime,
        &router,
        plane.slo.clone(),
        plane.rollout_windows.clone(),
        &metrics,
        shutdown.clone(),
    );
    let api_router = api::router(ApiState {
        controller: plane.controller.clone(),
        token: Arc::new(token),
        max_body_bytes: config.api.max_body_bytes,
        images,
        gc_lock: Arc::default(),
        metrics,
        instances: plane.instances.clone(),
        routes: plane.routes.clone(),
        manifest_permits: api::manifest_permits(),
        secrets,
        slo: plane.slo.clone(),
        history: plane.history.clone(),
        ui: crate::ui::Ui::new(Some(plane.startups.clone()), config.requests.traces_url()),
        jobs: plane.jobs.clone(),
        eventing: plane.eventing.clone(),
        rollouts: plane.rollouts.clone(),
    });
    data.write_endpoints(&Endpoints {
        api: format!("http://{}", listen.api_addr),
        ingress: listen.ingress_addr.to_string(),
        pid: std::process::id(),
    })?;
    info!(api = %listen.api_addr, ingress = %listen.ingress_addr,
        data_dir = %config.daemon.data_dir.display(), domain = %config.daemon.domain, "skiff is ready");
    let grace = config.daemon.shutdown_grace_period;
    let servers = [
        tokio::spawn(serve_api(
            listen.api,
            api_router,
            api_conns,
            shutdown.clone(),
            grace,
        )),
        tokio::spawn(router.serve(listen.ingress, ingress_conns, shutdown.clone(), grace)),
    ];
    shutdown.cancelled().await;
    stop(servers, plane, &store, &config).await;
    if let Some(t) = telemetry {
        // The last request lines written and the last spans exported.
        let _ = tokio::task::spawn_blocking(move || t.shutdown()).await;
    }
    data.remove_endpoints();
    info!("skiff stopped");
    Ok(())
}

/// Shuts down in order: the listeners close and requests in flight drain (up to the
/// shutdown grace), then every instance stops (each held to the same cap), then the store.
async fn stop(
    servers: [tokio::task::JoinHandle<()>; 2],
    plane: ControlPlane,
    store: &Arc<dyn Store>,
    config: &Config,
) {
    let grace = config.daemon.shutdown_grace_period;
    info!(
        grace_seconds = grace.as_secs(),
        "shutting down: no new connections; draining requests"
    );
    drain(servers, grace).await;
    info!(
        termination_grace_seconds = config.runtime.termination_grace_period.as_secs(),
        cap_seconds = grace.as_secs(),
        "stopping instances: SIGTERM, then SIGKILL after the termination grace or the cap"
    );
    plane.shutdown(grace).await;
    if let Err(e) = store.close().await {
        warn!(error = %skiff_telemetry::ErrorChain(&e), "closing the state store");
    }
}

/// Lets the servers finish the requests in flight, for up to `grace`.
/// Serves instances' resolvers and outbound connections (set before the control plane
/// starts: re-adopted instances get them too).
fn network(
    config: &Config,
    runtime: &skiff_runtime::Runtime,
    router: &Arc<skiff_router::Router>,
    ingress_conns: &Conns,
    metrics: &skiff_telemetry::Metrics,
) {
    let upstreams = match config.network.dns_upstream {
        Some(addr) => vec![addr],
        None => crate::network::host_resolvers(
            &std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default(),
        ),
    };
    if upstreams.is_empty() {
        warn!(
            "no DNS server for instances' outside names: set dns_upstream, or nameserver in /etc/resolv.conf"
        );
    }
    info!(egress_default = %config.network.egress_default, dns_upstreams = ?upstreams, "instances' network: resolver and egress through the daemon");
    let egress_metrics = metrics.register("egress", crate::network::EgressMetrics::new);
    runtime.set_network(Arc::new(crate::network::Network::new(
        router.clone(),
        runtime.connector().clone(),
        ingress_conns.clone(),
        config.network.egress_default.clone(),
        upstreams,
        egress_metrics,
    )));
}

async fn drain(servers: [tokio::task::JoinHandle<()>; 2], grace: std::time::Duration) {
    match tokio::time::timeout(grace, futures::future::join_all(servers)).await {
        Ok(ended) => {
            for join in ended.into_iter().filter_map(Result::err) {
                warn!(error = %join, "a server task ended abnormally");
            }
        }
        Err(_) => warn!("grace period over with requests still in flight; closing them"),
    }
}

/// The router (ingress and activator) and the connection bookkeeping of both listeners.
fn router(
    config: &Config,
    runtime: &skiff_runtime::Runtime,
    metrics: &skiff_telemetry::Metrics,
    ingress_limits: ConnLimits,
    api_limits: ConnLimits,
) -> (
    Arc<skiff_router::Router>,
    tokio::sync::mpsc::UnboundedReceiver<skiff_router::RevisionKey>,
    Conns,
    Conns,
) {
    info!(
        ingress_max_connections = ingress_limits.max_connections,
        api_max_connections = api_limits.max_connections,
        header_read_timeout_seconds = ingress_limits.header_read_timeout.as_secs(),
        idle_timeout_seconds = ingress_limits.idle_timeout.as_secs(),
        "connection limits"
    );
    let (poke_tx, pokes) = tokio::sync::mpsc::unbounded_channel();
    let (router_metrics, ingress_conn_metrics) = metrics.register("router", |r| {
        (
            skiff_router::RouterMetrics::new(r),
            skiff_router::conns::ConnMetrics::new(r),
        )
    });
    let api_conn_metrics = metrics.register("api", skiff_router::conns::ConnMetrics::new);
    let router = skiff_router::Router::new(
        skiff_router::RouterConfig {
            domain: config.daemon.domain.clone(),
            queue_depth: config.activator.queue_depth,
            queue_timeout: config.activator.queue_timeout,
            threads: config.ingress.router_threads,
        },
        skiff_control::runtime::NetnsConnect(runtime.connector().clone()),
        poke_tx,
        router_metrics,
    );
    (
        router,
        pokes,
        Conns::new(ingress_limits, ingress_conn_metrics),
        Conns::new(api_limits, api_conn_metrics),
    )
}

/// Serves the API until `shutdown`, then closes the listener at once and lets requests in
/// flight finish for up to `grace`. Its connections are bounded apart from the ingress's, so
/// the API answers whatever the ingress suffers.
async fn serve_api(
    listener: TcpListener,
    app: axum::Router,
    conns: Conns,
    shutdown: CancellationToken,
    grace: std::time::Duration,
) {
    use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
    use tower::Service as _;
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(conns.limits().header_read_timeout);
    let mut acceptor = Acceptor::new(conns.clone(), "API");
    while let Some((stream, _, handle)) = acceptor.next(&listener, &shutdown).await {
        let (app, conn_handle) = (app.clone(), handle.clone());
        let service =
            hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let busy = conn_handle.busy();
                let mut app = app.clone();
                async move {
                    let response = app.call(req.map(axum::body::Body::new)).await?;
                    Ok::<_, std::convert::Infallible>(response.map(|b| BusyBody::new(b, busy)))
                }
            });
        let conn = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        let conns = conns.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = conn => {}
                () = conns.expired(&handle) => {}
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ingress's cap is a share of the open-file limit by default, and never more than
    /// that share however it is set; the API's is its own.
    #[test]
    fn connection_limits_follow_the_open_file_limit() {
        let mut config = Config::defaults();
        let (ingress, api) = conn_limits(&config, 20_000);
        assert_eq!((ingress.max_connections, api.max_connections), (8_000, 512));
        config.ingress.max_connections = 500;
        assert_eq!(conn_limits(&config, 20_000).0.max_connections, 500);
        config.ingress.max_connections = 100_000;
        assert_eq!(conn_limits(&config, 1_024).0.max_connections, 409);
        config.api.max_connections = 64;
        assert_eq!(conn_limits(&config, 1_024).1.max_connections, 64);
        assert_eq!(
            conn_limits(&config, 1_024).1.header_read_timeout,
            config.ingress.header_read_timeout
        );
    }
}
