//! skiff's HTTP router and activator.
//!
//! # Design
//! One hyper server (HTTP/1.1 and h2c) on the ingress address. A request's Host picks a
//! route: `<service>.<namespace>.<domain>` splits by the Service's traffic percentages,
//! `<tag>-<service>.<namespace>.<domain>` goes to the tag's revision. The revision's
//! [`Pool`] gives a slot on its least-loaded ready instance that has room under
//! `containerConcurrency`, or holds the request in a bounded queue while the autoscaler
//! (poked at once) starts instances: the activator is this queue, in process. Upstream
//! connections are kept per instance and router thread ([`upstream`]), made inside the
//! network namespace of the endpoint the slot is on, through a [`Connect`] the router is
//! given (it does not know how namespaces are entered). Bodies stream both ways; a slot
//! is released only when the response body ends.
//!
//! A request goes through named steps (`proxy::handle`): request id, host routing and
//! traffic split, forwarding headers, the activator's wait for a slot, the URI rewrite, the
//! forward under the response-start deadline (retrying a request that could not be sent),
//! then an upgrade tunnel or the guarded response body.
//!
//! Timeouts follow Knative and keep apart what Knative users ask to keep apart: the response
//! must start within `responseStartTimeoutSeconds` (when set) and `timeoutSeconds`, or the
//! client gets 504; once it has started, only `idleTimeoutSeconds` (silence between body
//! chunks) ends it. A response that starts at once may stream past `timeoutSeconds`.

#![forbid(unsafe_code)]

pub mod connect;
pub mod conns;
mod metrics;
pub mod pool;
mod proxy;
pub mod record;
pub mod upstream;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use connect::{Connect, ConnectFuture, Explain, ExplainFuture};
pub use metrics::{LATENCY_BUCKETS, RevisionLabels, RouterMetrics, Tally, TallySnapshot, Throttle};
pub use pool::{BudgetStop, ColdStarts, Pool, PoolSpec, RevisionKey};

/// Maps the host a request from inside an instance names (`backend`, `backend.ns.svc`, …)
/// to the Service's host at the ingress ([`Router::serve_internal`]).
pub type HostRewrite = Arc<dyn Fn(&str) -> Option<String> + Send + Sync>;

/// An error of a body in flight.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A body as the router forwards it.
pub type Body = BoxBody<Bytes, BoxError>;

/// Where a host goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRoute {
    /// A Service: revisions and their share of requests (percent).
    Service {
        /// The namespace.
        namespace: String,
        /// The Service.
        service: String,
        /// (revision, percent), percents summing to 100.
        split: Vec<(String, u32)>,
    },
    /// A tag: one revision.
    Tag {
        /// The namespace.
        namespace: String,
        /// The Service.
        service: String,
        /// The revision.
        revision: String,
    },
    /// A known Service that cannot serve, with why.
    Unavailable {
        /// Why, for the 503.
        message: String,
    },
}

/// Router settings.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// Domain of service hosts.
    pub domain: String,
    /// Most requests waiting for one revision.
    pub queue_depth: usize,
    /// Longest a request waits for an instance.
    pub queue_timeout: Duration,
    /// Router threads, each with its own single-threaded runtime and connections into
    /// instances (0: one per CPU).
    pub threads: usize,
}

/// A route with its pools looked up, as requests use it.
#[derive(Debug)]
pub(crate) enum Resolved {
    /// Pools and their shares; `total` is the sum of the shares.
    Split {
        split: Vec<(Arc<Pool>, u32)>,
        total: u32,
    },
    /// One pool (a tag, or a single target).
    One(Arc<Pool>),
    /// The 503 message.
    Unavailable(String),
}

/// The router.
pub struct Router {
    cfg: RouterConfig,
    routes: RwLock<Arc<HashMap<String, Arc<Resolved>>>>,
    pools: RwLock<HashMap<RevisionKey, Arc<Pool>>>,
    instance_pool: RwLock<HashMap<String, RevisionKey>>,
    /// Instances being removed: they never take requests again.
    retired: RwLock<std::collections::HashSet<String>>,
    /// Connections into instances, one set per router thread (a request and its upstream
    /// connection stay on one thread).
    upstreams: Vec<Arc<upstream::Upstreams>>,
    /// Connections into instances for requests made from inside instances
    /// ([`Router::serve_internal`]), which run on the daemon's runtime.
    internal: Arc<upstream::Upstreams>,
    poke: mpsc::UnboundedSender<RevisionKey>,
    metrics: RouterMetrics,
    /// True once the first route table is in; [`Router::serve`] accepts only then.
    routed: tokio::sync::watch::Sender<bool>,
    /// Explains an instance's failures (set once by the daemon).
    explain: std::sync::OnceLock<Arc<dyn Explain>>,
    /// Gets a record of every request (set once by the daemon).
    observer: std::sync::OnceLock<Arc<dyn record::RequestObserver>>,
    /// A host the daemon serves itself (the broker ingress), with its handler (set once).
    local: std::sync::OnceLock<(String, Arc<dyn LocalService>)>,
}

/// A request's answer from a service in the daemon.
pub type LocalFuture =
    std::pin::Pin<Box<dyn std::future::Future<Output = http::Response<Body>> + Send>>;

/// A service the daemon itself answers at a host of the ingress (the broker ingress): it
/// gets the whole request, the request id already set.
pub trait LocalService: Send + Sync + 'static {
    /// Answers one request.
    fn call(&self, req: http::Request<hyper::body::Incoming>) -> LocalFuture;
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("domain", &self.cfg.domain)
            .finish()
    }
}

impl Router {
    /// A router that reaches instances through `connector`; `poke` receives a revision's
    /// key when a request waits for it.
    pub fn new(
        cfg: RouterConfig,
        connector: impl Connect,
        poke: mpsc::UnboundedSender<RevisionKey>,
        metrics: RouterMetrics,
    ) -> Arc<Router> {
        let connector: Arc<dyn Connect> = Arc::new(connector);
        let threads = if cfg.threads == 0 {
            std::thread::available_parallelism().map_or(2, |n| n.get())
        } else {
            cfg.threads
        };
        let upstreams = (0..threads)
            .map(|_| Arc::new(upstream::Upstreams::new(connector.clone())))
            .collect();
        let internal = Arc::new(upstream::Upstreams::new(connector));
        Arc::new(Router {
            cfg,
            routes: RwLock::new(Arc::default()),
            pools: RwLock::new(HashMap::new()),
            instance_pool: RwLock::new(HashMap::new()),
            retired: RwLock::default(),
            upstreams,
            internal,
            poke,
            metrics,
            routed: tokio::sync::watch::Sender::new(false),
            explain: std::sync::OnceLock::new(),
            observer: std::sync::OnceLock::new(),
            local: std::sync::OnceLock::new(),
        })
    }

    /// Sets what explains an instance's failure to answer (once).
    pub fn set_explain(&self, explain: Arc<dyn Explain>) {
        let _ = self.explain.set(explain);
    }

    /// Sets what gets a record of every request that reached a revision (once).
    pub fn set_observer(&self, observer: Arc<dyn record::RequestObserver>) {
        let _ = self.observer.set(observer);
    }

    /// Serves `host` (lowercase, no port) with `service` in the daemon (once).
    pub fn set_local(&self, host: &str, service: Arc<dyn LocalService>) {
        let _ = self.local.set((host.to_ascii_lowercase(), service));
    }

    /// The daemon's own service for `host` (its route key), if it is the local host.
    pub(crate) fn local(&self, host: &str) -> Option<&Arc<dyn LocalService>> {
        self.local.get().filter(|(h, _)| h == host).map(|(_, s)| s)
    }

    /// Why `instance` failed a request, if the runtime knows.
    pub(crate) async fn explain(&self, instance: &str) -> Option<String> {
        match self.explain.get() {
            Some(e) => e.explain(instance).await,
            None => None,
        }
    }

    /// The domain of service hosts.
    pub fn domain(&self) -> &str {
        &self.cfg.domain
    }

    /// Replaces the routing table (host → route). Set the pools the routes name first
    /// ([`Router::set_pool`]); a route to a revision without a pool answers 503.
    pub fn set_routes(&self, routes: HashMap<String, HostRoute>) {
        let resolved = self.resolve(routes);
        *self.routes.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(resolved);
        self.routed.send_replace(true);
    }

    /// Changes the routing table in place: removes `remove`, then adds or replaces `add`.
    /// Costs what changes, not the size of the table. As with [`Router::set_routes`], set
    /// the pools the routes name first.
    pub fn update_routes(&self, remove: &[String], add: HashMap<String, HostRoute>) {
        let resolved = self.resolve(add);
        {
            let mut routes = self.routes.write().unwrap_or_else(|p| p.into_inner());
            // Requests clone a route out, never the table: this does not copy it.
            let table = Arc::make_mut(&mut routes);
            for host in remove {
                table.remove(host);
            }
            table.extend(resolved);
        }
        self.routed.send_replace(true);
    }

    /// Routes resolved against the pools there are now.
    fn resolve(&self, routes: HashMap<String, HostRoute>) -> HashMap<String, Arc<Resolved>> {
        let pools = self.pools.read().unwrap_or_else(|p| p.into_inner());
        let missing = |ns: &str, rev: &str| {
            Resolved::Unavailable(format!(
                "revision `{rev}` in namespace `{ns}` is not available"
            ))
        };
        routes
            .into_iter()
            .map(|(host, route)| {
                let r = match route {
                    HostRoute::Unavailable { message } => Resolved::Unavailable(message),
                    HostRoute::Tag {
                        namespace,
                        revision,
                        ..
                    } => match pools.get(&(namespace.clone(), revision.clone())) {
                        Some(p) => Resolved::One(p.clone()),
                        None => missing(&namespace, &revision),
                    },
                    HostRoute::Service {
                        namespace, split, ..
                    } => {
                        let mut out = Vec::new();
                        let mut gone = None;
                        for (rev, percent) in split {
                            match pools.get(&(namespace.clone(), rev.clone())) {
                                Some(p) => out.push((p.clone(), percent)),
                                None => gone = Some(rev),
                            }
                        }
                        match gone {
                            Some(rev) => missing(&namespace, &rev),
                            None if out.len() == 1 => Resolved::One(out.remove(0).0),
                            None => {
                                let total = out.iter().map(|(_, p)| p).sum();
                                Resolved::Split { split: out, total }
                            }
                        }
                    }
                };
                (host, Arc::new(r))
            })
            .collect()
    }

    /// The hosts routed now, sorted.
    pub fn hosts(&self) -> Vec<String> {
        let mut hosts: Vec<String> = self
            .routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect();
        hosts.sort();
        hosts
    }

    /// Whether `host` (lowercase, no port) is routed now.
    pub fn has_host(&self, host: &str) -> bool {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(host)
    }

    pub(crate) fn route(&self, host: &str) -> Option<Arc<Resolved>> {
        self.routes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
            .cloned()
    }

    /// Creates or updates a revision's pool; returns whether it was created.
    pub fn set_pool(&self, spec: PoolSpec) -> bool {
        let key = (spec.namespace.clone(), spec.revision.clone());
        let mut pools = self.pools.write().unwrap_or_else(|p| p.into_inner());
        match pools.get(&key) {
            Some(p) => {
                if *p.spec() != spec {
                    p.set_spec(spec);
                    // A revision that became unavailable releases its waiters with the reason.
                    p.wake_all();
                }
                false
            }
            None => {
                let handles = self.metrics.handles(&spec);
                pools.insert(key, Pool::with_handles(spec, handles));
                true
            }
        }
    }

    /// Removes revisions' pools and their metric series.
    pub fn remove_pools(&self, remove: &[RevisionKey]) {
        if remove.is_empty() {
            return;
        }
        let mut gone = Vec::new();
        {
            let mut pools = self.pools.write().unwrap_or_else(|p| p.into_inner());
            for k in remove {
                if let Some(p) = pools.remove(k) {
                    // Under the pools lock, so a pool made again for this revision starts
                    // its series after they are removed.
                    self.metrics.forget_revision(&p.handles);
                    gone.push(p);
                }
            }
        }
        // Requests still waiting for a deleted revision are answered now, not at their
        // queue timeout.
        for p in gone {
            let mut spec = (*p.spec()).clone();
            spec.unavailable = Some("the revision was deleted".to_owned());
            p.set_spec(spec);
            p.wake_all();
        }
    }

    /// A revision's pool.
    pub fn pool(&self, key: &RevisionKey) -> Option<Arc<Pool>> {
        self.pools
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// Every pool.
    pub fn pools(&self) -> Vec<(RevisionKey, Arc<Pool>)> {
        self.pools
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// An instance became ready; connections to it are made inside `netns`.
    pub fn instance_ready(&self, key: &RevisionKey, id: &str, netns: Arc<std::os::fd::OwnedFd>) {
        let Some(pool) = self.pool(key) else { return };
        if self
            .retired
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains(id)
        {
            return;
        }
        self.instance_pool
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned(), key.clone());
        if let Some(cold) = pool.add(id, netns) {
            pool.handles.cold_starts.inc();
            pool.handles.cold_start_duration.observe(cold.as_secs_f64());
            info!(revision = %key.1, instance = %id, cold_start_ms = cold.as_secs_f64() * 1000.0, "cold start served");
        }
    }

    /// The instances the router knows.
    pub fn instance_ids(&self) -> Vec<String> {
        self.instance_pool
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Forgets an instance that is gone for good (its id never comes back).
    pub fn forget(&self, id: &str) {
        let key = self
            .instance_pool
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        if let Some(pool) = key.and_then(|k| self.pool(&k)) {
            pool.remove(id);
        }
        for u in self.upstreams.iter().chain(std::iter::once(&self.internal)) {
            u.forget(id);
        }
        self.retired
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    /// An instance is not ready (or stopping): it takes no new requests; those in flight
    /// continue.
    pub fn instance_gone(&self, id: &str) {
        let key = self
            .instance_pool
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned();
        if let Some(pool) = key.and_then(|k| self.pool(&k)) {
            pool.unready(id);
        }
    }

    /// Stops sending new requests to an instance and waits (up to `timeout`) for those in
    /// flight to finish.
    pub async fn drain(&self, id: &str, timeout: Duration) {
        self.retired
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_owned());
        let key = self
            .instance_pool
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(id)
            .cloned();
        let Some(pool) = key.and_then(|k| self.pool(&k)) else {
            return;
        };
        let Some(ep) = pool.drain(id) else { return };
        let deadline = tokio::time::Instant::now() + timeout;
        while ep.in_flight.load(Ordering::Acquire) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.instance_gone(id);
    }

    /// Serves until `shutdown`, then closes the listener at once (new clients are refused,
    /// so a load balancer in front fails over) and lets open connections finish their
    /// requests for up to `grace`. `conns` bounds the client connections.
    ///
    /// No connection is accepted before the first route table is in ([`Router::set_routes`]):
    /// a restarted daemon never answers an existing Service with 404; clients wait in the
    /// listen backlog meanwhile.
    ///
    /// Requests are served thread-per-core, as nginx's workers do: each router thread runs a
    /// single-threaded runtime with its own connections into instances, so a request, its
    /// upstream connection and the response never hop between threads (on a shared 2-core
    /// machine this raised the router's throughput by about a quarter over one
    /// multi-threaded runtime: bench/serving.sh).
    /// One acceptor hands every new client connection to the thread with the fewest open
    /// ones: threads that all waited on the listener themselves let one thread take a whole
    /// burst of connections while the others idled.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        conns: conns::Conns,
        shutdown: CancellationToken,
        grace: Duration,
    ) {
        let mut threads = Vec::new();
        let mut done = Vec::new();
        for (i, up) in self.upstreams.iter().enumerate() {
            let (conn_tx, conn_rx) = mpsc::unbounded_channel();
            let open = Arc::new(AtomicUsize::new(0));
            let (tx, rx) = tokio::sync::oneshot::channel::<()>();
            let (router, up, shutdown, open2, conns) = (
                self.clone(),
                up.clone(),
                shutdown.clone(),
                open.clone(),
                conns.clone(),
            );
            let spawned = std::thread::Builder::new()
                .name(format!("skiff-router-{i}"))
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(
                            router.serve_thread(conn_rx, open2, up, conns, shutdown, grace),
                        ),
                        Err(e) => warn!(error = %e, "router: cannot start a runtime"),
                    }
                    let _ = tx.send(());
                });
            match spawned {
                Ok(_) => {
                    threads.push((conn_tx, open));
                    done.push(rx);
                }
                Err(e) => warn!(error = %e, "router: cannot start a thread"),
            }
        }
        if threads.is_empty() {
            warn!("router: no thread could be started; the ingress does not serve");
            return;
        }
        let mut routed = self.routed.subscribe();
        let routed = tokio::select! {
            r = routed.wait_for(|routed| *routed) => r.is_ok(),
            () = shutdown.cancelled() => false,
        };
        let mut acceptor = conns::Acceptor::new(conns, "ingress");
        while routed && let Some((stream, peer, handle)) = acceptor.next(&listener, &shutdown).await
        {
            let stream = match stream.into_std() {
                Ok(s) => s,
                Err(e) => {
                    warn!(error = %e, "router: cannot hand a connection to a thread");
                    continue;
                }
            };
            let Some((tx, open)) = threads
                .iter()
                .min_by_key(|(_, open)| open.load(Ordering::Relaxed))
            else {
                break;
            };
            open.fetch_add(1, Ordering::Relaxed);
            if tx.send((stream, peer, handle)).is_err() {
                open.fetch_sub(1, Ordering::Relaxed);
                warn!("router: a thread has stopped; connection dropped");
            }
        }
        // New clients are refused from now on; those connected finish their requests.
        drop(listener);
        drop(threads);
        for rx in done {
            let _ = rx.await;
        }
    }

    /// Serves one HTTP/1.1 connection made from inside an instance to a Service by name
    /// (service-to-service): each request's host is passed through `rewrite` (the name the
    /// instance used → the Service's host at the ingress), then the request is handled
    /// exactly as one from outside (traffic split, tags, the activator, timeouts). A host
    /// `rewrite` does not know stays as it is (and is answered 404). The connection counts
    /// against `conns` (the ingress's), with its idle and header timeouts.
    pub async fn serve_internal(
        self: Arc<Self>,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        conns: conns::Conns,
        rewrite: HostRewrite,
    ) {
        let handle = match conns.admit() {
            conns::Admitted::Yes(h) => h,
            conns::Admitted::Refused => return,
        };
        let _ = stream.set_nodelay(true);
        let up = self.internal.clone();
        let peer = Arc::new(proxy::Peer::new(peer, handle.clone()));
        let router = self.clone();
        let service = hyper::service::service_fn(move |mut req| {
            let (router, up, peer, rewrite) =
                (router.clone(), up.clone(), peer.clone(), rewrite.clone());
            async move {
                proxy::rewrite_host(&mut req, &*rewrite);
                let busy = peer.conn.busy();
                let response = proxy::handle(&router, &up, req, &peer).await;
                Ok::<_, std::convert::Infallible>(
                    response.map(|body| conns::BusyBody::new(body, busy)),
                )
            }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(conns.limits().header_read_timeout)
            .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
            .with_upgrades();
        tokio::select! {
            _ = conn => {}
            () = conns.expired(&handle) => {}
        }
    }

    async fn serve_thread(
        self: Arc<Self>,
        mut incoming: mpsc::UnboundedReceiver<(std::net::TcpStream, SocketAddr, conns::ConnHandle)>,
        open: Arc<AtomicUsize>,
        up: Arc<upstream::Upstreams>,
        conns: conns::Conns,
        shutdown: CancellationToken,
        grace: Duration,
    ) {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        // A request head must be complete within the header timeout once it has begun (and
        // a keep-alive connection waits that long for the next one); `conns` closes a
        // connection that sends nothing at all.
        builder
            .http1()
            .timer(hyper_util::rt::TokioTimer::new())
            .header_read_timeout(conns.limits().header_read_timeout);
        builder.http2().timer(hyper_util::rt::TokioTimer::new());
        loop {
            let (stream, peer, handle) = tokio::select! {
                c = incoming.recv() => match c {
                    Some(c) => c,
                    None => break,
                },
                () = shutdown.cancelled() => break,
            };
            let stream = match tokio::net::TcpStream::from_std(stream) {
                Ok(s) => s,
                Err(e) => {
                    open.fetch_sub(1, Ordering::Relaxed);
                    warn!(error = %e, "router: cannot register a connection");
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (router, up) = (self.clone(), up.clone());
            let peer = Arc::new(proxy::Peer::new(peer, handle.clone()));
            let service = hyper::service::service_fn(move |req| {
                let (router, up, peer) = (router.clone(), up.clone(), peer.clone());
                async move {
                    let busy = peer.conn.busy();
                    let response = proxy::handle(&router, &up, req, &peer).await;
                    Ok::<_, std::convert::Infallible>(
                        response.map(|body| conns::BusyBody::new(body, busy)),
                    )
                }
            });
            let conn = builder
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), service);
            let conn = graceful.watch(conn.into_owned());
            let (open, conns) = (open.clone(), conns.clone());
            tokio::spawn(async move {
                tokio::select! {
                    _ = conn => {}
                    () = conns.expired(&handle) => {}
                }
                drop(handle);
                open.fetch_sub(1, Ordering::Relaxed);
            });
        }
        let _ = tokio::time::timeout(grace, graceful.shutdown()).await;
    }
}
