//! What an instance reaches beyond its own namespace: a resolver inside it, outbound TCP
//! through the daemon under the revision's egress policy, and other Services by name.
//!
//! # Design
//! Nothing changes on the host. Inside each instance's namespace (its own, created and
//! removed by skiff) the runtime loads one nftables table ([`ruleset`]) and a default route
//! through `lo`; the table sends every outbound TCP connection to the daemon's listener at
//! [`EGRESS_ADDR`] in that namespace (DNAT), and refuses UDP other than to loopback. The
//! daemon decides every connection by the policy, so each refusal is logged and counted (a
//! refused connection is reset at once). The daemon holds three sockets in
//! the namespace, made there with the runtime's setns connector: the resolver on
//! [`DNS_ADDR`] (UDP and TCP) and the egress listener.
//!
//! - **Names.** The resolver answers Service names (`NAME`, `NAME.NS`, `NAME.NS.svc`,
//!   `NAME.NS.svc.cluster.local`, tags `TAG-NAME…`) with [`SERVICE_VIP`];
//!   `host.skiff.internal` with [`HOST_VIP`] when the policy names the host; any other
//!   name it resolves upstream (the host's resolvers or `dns_upstream`) and, when the
//!   policy lets the instance reach some of its addresses, answers with an address of its
//!   own from [`NAME_POOL`] that stands for that name. Refused: NXDOMAIN.
//! - **Connections.** The egress listener reads each connection's original destination
//!   (`SO_ORIGINAL_DST`): the Service address on port 80 hands the connection to the router
//!   (Host rewritten to the Service's host at the ingress, so splits, tags, scale from zero
//!   and timeouts are the ingress's own); a pool address dials the name's addresses from
//!   the host; the host's address dials the host's loopback; any other address is checked
//!   against the policy and dialed. Bytes are then spliced both ways.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use skiff_api::egress::{Cidr, EgressPolicy, HOST_NAME};
use skiff_router::Router;
use skiff_router::conns::Conns;
use skiff_runtime::InstancePlan;
use skiff_runtime::netns::{
    Connector, DNS_ADDR, EGRESS_ADDR, HOST_VIP, InstanceNetwork, NAME_POOL, SERVICE_VIP,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

/// How long an answer of the resolver may be cached.
const TTL: u32 = 30;
/// How long dialing out may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an upstream DNS server has to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(3);
/// Most DNS questions one instance has answered at once (more are dropped: the client
/// asks again).
const MAX_QUERIES: usize = 64;
/// Most outbound connections (and DNS over TCP) one instance holds through the daemon at
/// once: each costs the daemon file descriptors, so an instance must not exhaust them.
const MAX_CONNECTIONS: usize = 1024;

/// Labels of the refusal counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusedLabels {
    /// The instance's namespace.
    pub namespace: String,
    /// `dns` (a name answered NXDOMAIN) or `connect` (a connection refused).
    pub kind: String,
}

/// The egress metrics.
#[derive(Debug, Clone, Default)]
pub struct EgressMetrics {
    /// Names and connections refused by policy.
    pub refused: Family<RefusedLabels, Counter>,
    /// Connections made out (to other Services or outside).
    pub connections: Family<ConnectionLabels, Counter>,
}

/// Labels of the connection counter.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// The instance's namespace.
    pub namespace: String,
    /// `service` (to a Service through the router) or `external`.
    pub target: String,
}

impl EgressMetrics {
    /// Registers the metrics (`skiff_egress_…`).
    pub fn new(registry: &mut prometheus_client::registry::Registry) -> Self {
        let m = EgressMetrics::default();
        registry.register(
            "refused",
            "Names (kind=dns) and connections (kind=connect) of instances refused by their egress policy",
            m.refused.clone(),
        );
        registry.register(
            "connections",
            "Outbound connections of instances, to Services (target=service) or outside (target=external)",
            m.connections.clone(),
        );
        m
    }
}

/// The daemon's side of instances' networks.
#[derive(Clone)]
pub struct Network(Arc<Shared>);

impl std::fmt::Debug for Network {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network")
            .field("upstreams", &self.0.upstreams)
            .finish()
    }
}

struct Shared {
    router: Arc<Router>,
    connector: Connector,
    conns: Conns,
    default_policy: EgressPolicy,
    upstreams: Vec<SocketAddr>,
    domain: String,
    metrics: EgressMetrics,
}

impl Network {
    /// The network of instances: Services through `router` (connections counted in
    /// `conns`, the ingress's), names resolved at `upstreams`, `default_policy` for
    /// revisions without an annotation.
    pub fn new(
        router: Arc<Router>,
        connector: Connector,
        conns: Conns,
        default_policy: EgressPolicy,
        upstreams: Vec<SocketAddr>,
        metrics: EgressMetrics,
    ) -> Self {
        let domain = router.domain().to_owned();
        Network(Arc::new(Shared {
            router,
            connector,
            conns,
            default_policy,
            upstreams,
            domain,
            metrics,
        }))
    }
}

/// The host's resolvers, from `/etc/resolv.conf` (port 53); loopback ones are kept (the
/// daemon resolves from the host).
pub fn host_resolvers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver"))
                .then(|| words.next())
                .flatten()
        })
        .filter_map(|a| a.parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

impl Shared {
    fn policy_of(&self, plan: &InstancePlan) -> EgressPolicy {
        match plan.egress.as_deref().map(str::parse::<EgressPolicy>) {
            None => self.default_policy.clone(),
            Some(Ok(p)) => p,
            Some(Err(e)) => {
                // Validation refuses such an annotation; a record from elsewhere gets nothing.
                warn!(instance = %plan.id, error = %e, "invalid egress annotation; the instance gets no egress");
                EgressPolicy::None
            }
        }
    }
}

/// The nftables ruleset of an instance's namespace: its own table, in its own namespace.
/// Loopback stays as it is; every other TCP connection goes to the daemon's egress
/// listener, which decides by the policy (so that every refusal is logged and counted);
/// UDP goes nowhere but loopback (the resolver is there).
pub fn ruleset() -> String {
    format!(
        "table ip skiff {{\n  chain out_filter {{\n    type filter hook output priority -150; policy accept;\n    ip daddr 127.0.0.0/8 accept\n    meta l4proto tcp accept\n    reject\n  }}\n  chain out_nat {{\n    type nat hook output priority -100; policy accept;\n    ip daddr != 127.0.0.0/8 meta l4proto tcp dnat to {egress}\n  }}\n}}\n",
        egress = EGRESS_ADDR,
    )
}

/// The Service host at the ingress that `name` (as an instance of namespace `ns` wrote it,
/// maybe with a port) stands for: `NAME`, `NAME.NS`, `NAME.NS.svc`,
/// `NAME.NS.svc.cluster.local` or the ingress host itself. Whether it is routed is the
/// caller's question.
pub fn service_host(name: &str, ns: &str, domain: &str) -> Option<String> {
    let name = name
        .rsplit_once(':')
        .filter(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()))
        .map_or(name, |(h, _)| h)
        .trim_end_matches('.')
        .to_ascii_lowercase();
    if name.is_empty() {
        return None;
    }
    if name.ends_with(&format!(".{domain}")) {
        return Some(name);
    }
    let (rest, svc) = if let Some(r) = name.strip_suffix(".svc.cluster.local") {
        (r, true)
    } else if let Some(r) = name.strip_suffix(".svc") {
        (r, true)
    } else {
        (name.as_str(), false)
    };
    let labels: Vec<&str> = rest.split('.').collect();
    match labels.as_slice() {
        [one] if !svc && !one.is_empty() => Some(format!("{one}.{ns}.{domain}")),
        [a, b] if !a.is_empty() && !b.is_empty() => Some(format!("{a}.{b}.{domain}")),
        _ => None,
    }
}

/// Whether `ip` is one of the host's own addresses (binding to it succeeds only then).
fn is_host_addr(ip: Ipv4Addr) -> bool {
    ip.is_loopback()
        || ip.is_unspecified()
        || std::net::UdpSocket::bind(SocketAddrV4::new(ip, 0)).is_ok()
}

/// The addresses the resolver has handed out for outside names, in one instance.
#[derive(Debug, Default)]
pub struct NameTable {
    by_name: HashMap<String, Ipv4Addr>,
    by_addr: HashMap<Ipv4Addr, (String, Vec<Ipv4Addr>)>,
    next: u32,
}

impl NameTable {
    fn capacity() -> u32 {
        (1u32 << (32 - NAME_POOL.1)) - 2
    }

    /// The pool address standing for `name` (reached at `addrs`).
    pub fn assign(&mut self, name: &str, addrs: Vec<Ipv4Addr>) -> Ipv4Addr {
        if let Some(ip) = self.by_name.get(name).copied() {
            self.by_addr.insert(ip, (name.to_owned(), addrs));
            return ip;
        }
        let ip = Ipv4Addr::from(u32::from(NAME_POOL.0) + 1 + self.next % Self::capacity());
        self.next = self.next.wrapping_add(1);
        if let Some((old, _)) = self.by_addr.remove(&ip) {
            self.by_name.remove(&old);
        }
        self.by_name.insert(name.to_owned(), ip);
        self.by_addr.insert(ip, (name.to_owned(), addrs));
        ip
    }

    /// The name and addresses a pool address stands for.
    pub fn lookup(&self, ip: Ipv4Addr) -> Option<(String, Vec<Ipv4Addr>)> {
        self.by_addr.get(&ip).cloned()
    }
}

fn in_pool(ip: Ipv4Addr) -> bool {
    Cidr {
        addr: NAME_POOL.0,
        prefix: NAME_POOL.1,
    }
    .contains(ip)
}

/// One instance's side: who it is, its policy, its names.
struct InstanceNet {
    id: String,
    namespace: String,
    revision: String,
    policy: EgressPolicy,
    names: Mutex<NameTable>,
    /// Questions being answered ([`MAX_QUERIES`]).
    queries: Arc<tokio::sync::Semaphore>,
    /// Connections held ([`MAX_CONNECTIONS`]).
    connections: Arc<tokio::sync::Semaphore>,
}

impl InstanceNet {
    fn new(plan_id: &str, namespace: &str, revision: &str, policy: EgressPolicy) -> Self {
        InstanceNet {
            id: plan_id.to_owned(),
            namespace: namespace.to_owned(),
            revision: revision.to_owned(),
            policy,
            names: Mutex::new(NameTable::default()),
            queries: Arc::new(tokio::sync::Semaphore::new(MAX_QUERIES)),
            connections: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
        }
    }
}

/// What the resolver answers to one question.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// This address (A).
    Addr(Ipv4Addr),
    /// The name exists, with no record of the type asked.
    NoData,
    /// No such name (or refused by policy).
    NxDomain,
    /// The upstream server failed.
    ServFail,
}

impl Shared {
    fn refused(&self, inst: &InstanceNet, kind: &str, what: &str) {
        info!(instance = %inst.id, namespace = %inst.namespace, revision = %inst.revision, policy = %inst.policy, %what, "egress refused by policy");
        self.metrics
            .refused
            .get_or_create(&RefusedLabels {
                namespace: inst.namespace.clone(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    /// The answer to a question for `name` (`a`: type A, else another type).
    async fn resolve(&self, inst: &InstanceNet, name: &str, a: bool) -> Reply {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(host) = service_host(&name, &inst.namespace, &self.domain)
            && self.router.has_host(&host)
        {
            return if a {
                Reply::Addr(SERVICE_VIP)
            } else {
                Reply::NoData
            };
        }
        if name == HOST_NAME {
            if !inst.policy.allows_host(None) {
                self.refused(inst, "dns", &name);
                return Reply::NxDomain;
            }
            return if a {
                Reply::Addr(HOST_VIP)
            } else {
                Reply::NoData
            };
        }
        if !name.contains('.') || name.is_empty() {
            // A single label that is no Service: no search domains, nothing to ask.
            return Reply::NxDomain;
        }
        if !inst.policy.may_resolve(&name) {
            self.refused(inst, "dns", &name);
            return Reply::NxDomain;
        }
        if !a {
            return Reply::NoData;
        }
        let addrs = match upstream_a(&self.upstreams, &name).await {
            Ok(Some(addrs)) => addrs,
            Ok(None) => return Reply::NxDomain,
            Err(e) => {
                warn!(instance = %inst.id, %name, error = %e, "upstream DNS failed");
                return Reply::ServFail;
            }
        };
        let named = inst.policy.allows_named(&name, None);
        let reachable: Vec<Ipv4Addr> = inst
            .policy
            .reachable_addrs(&name, &addrs)
            .into_iter()
            .filter(|ip| named || !is_host_addr(*ip))
            .collect();
        if reachable.is_empty() {
            if addrs.is_empty() {
                return Reply::NoData;
            }
            self.refused(inst, "dns", &name);
            return Reply::NxDomain;
        }
        let ip = inst
            .names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .assign(&name, reachable);
        Reply::Addr(ip)
    }

    /// Answers one DNS message (`None`: not a query worth an answer).
    async fn answer(&self, inst: &InstanceNet, query: &[u8]) -> Option<Vec<u8>> {
        use simple_dns::{CLASS, Name, Packet, PacketFlag, QTYPE, RCODE, ResourceRecord, TYPE};
        let q = Packet::parse(query).ok()?;
        if q.has_flags(PacketFlag::RESPONSE) {
            return None;
        }
        let mut reply = Packet::new_reply(q.id());
        reply.set_flags(PacketFlag::RECURSION_AVAILABLE);
        if q.has_flags(PacketFlag::RECURSION_DESIRED) {
            reply.set_flags(PacketFlag::RECURSION_DESIRED);
        }
        let Some(question) = q.questions.first().cloned() else {
            *reply.rcode_mut() = RCODE::FormatError;
            return reply.build_bytes_vec().ok();
        };
        let name = question.qname.to_string();
        let a = question.qtype == QTYPE::TYPE(TYPE::A);
        let result = self.resolve(inst, &name, a).await;
        debug!(instance = %inst.id, %name, ?result, "resolved");
        reply.questions.push(question.clone());
        match result {
            Reply::Addr(ip) => {
                reply.answers.push(ResourceRecord::new(
                    Name::new_unchecked(&name),
                    CLASS::IN,
                    TTL,
                    simple_dns::rdata::RData::A(simple_dns::rdata::A {
                        address: u32::from(ip),
                    }),
                ));
            }
            Reply::NoData => {}
            Reply::NxDomain => *reply.rcode_mut() = RCODE::NameError,
            Reply::ServFail => *reply.rcode_mut() = RCODE::ServerFailure,
        }
        reply.build_bytes_vec().ok()
    }

    /// Serves the resolver over UDP until `stop`.
    async fn serve_udp(
        self: Arc<Self>,
        inst: Arc<InstanceNet>,
        sock: UdpSocket,
        stop: CancellationToken,
    ) {
        let sock = Arc::new(sock);
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, from) = tokio::select! {
                r = sock.recv_from(&mut buf) => match r {
                    Ok(r) => r,
                    Err(e) => {
                        debug!(error = %e, "resolver: receiving");
                        continue;
                    }
                },
                () = stop.cancelled() => return,
            };
            let Ok(permit) = inst.queries.clone().try_acquire_owned() else {
                debug!(instance = %inst.id, "resolver: too many questions at once; dropped one");
                continue;
            };
            let query = buf[..n].to_vec();
            let (me, inst, sock, stop) = (self.clone(), inst.clone(), sock.clone(), stop.clone());
            tokio::spawn(async move {
                let _permit = permit;
                tokio::select! {
                    reply = me.answer(&inst, &query) => {
                        if let Some(reply) = reply {
                            let _ = sock.send_to(&reply, from).await;
                        }
                    }
                    () = stop.cancelled() => {}
                }
            });
        }
    }

    /// Serves the resolver over TCP (length-prefixed messages) until `stop`.
    async fn serve_tcp(
        self: Arc<Self>,
        inst: Arc<InstanceNet>,
        listener: TcpListener,
        stop: CancellationToken,
    ) {
        loop {
            let (mut stream, _) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(r) => r,
                    Err(_) => continue,
                },
                () = stop.cancelled() => return,
            };
            let Ok(permit) = inst.connections.clone().try_acquire_owned() else {
                continue;
            };
            let (me, inst, stop) = (self.clone(), inst.clone(), stop.clone());
            tokio::spawn(async move {
                let _permit = permit;
                let serve = async {
                    loop {
                        let len = stream.read_u16().await? as usize;
                        let mut query = vec![0u8; len];
                        stream.read_exact(&mut query).await?;
                        let Some(reply) = me.answer(&inst, &query).await else {
                            return Ok::<(), std::io::Error>(());
                        };
                        let len = u16::try_from(reply.len()).unwrap_or(u16::MAX);
                        stream.write_u16(len).await?;
                        stream.write_all(&reply[..usize::from(len)]).await?;
                    }
                };
                tokio::select! {
                    _ = tokio::time::timeout(Duration::from_secs(30), serve) => {}
                    () = stop.cancelled() => {}
                }
            });
        }
    }

    /// Takes the instance's outbound connections until `stop`.
    async fn serve_egress(
        self: Arc<Self>,
        inst: Arc<InstanceNet>,
        listener: TcpListener,
        stop: CancellationToken,
    ) {
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(r) => r,
                    Err(_) => continue,
                },
                () = stop.cancelled() => return,
            };
            let Ok(permit) = inst.connections.clone().try_acquire_owned() else {
                warn!(instance = %inst.id, limit = MAX_CONNECTIONS, "egress: the instance holds too many connections; reset a new one");
                let _ = rustix::net::sockopt::set_socket_linger(&stream, Some(Duration::ZERO));
                continue;
            };
            let (me, inst, stop) = (self.clone(), inst.clone(), stop.clone());
            tokio::spawn(async move {
                let _permit = permit;
                tokio::select! {
                    () = me.connection(&inst, stream, peer) => {}
                    () = stop.cancelled() => {}
                }
            });
        }
    }

    /// Refuses a connection already accepted: a reset, so the app sees it at once.
    fn reset(&self, inst: &InstanceNet, stream: TcpStream, what: &str) {
        self.refused(inst, "connect", what);
        let _ = rustix::net::sockopt::set_socket_linger(&stream, Some(Duration::ZERO));
        drop(stream);
    }

    async fn connection(&self, inst: &InstanceNet, stream: TcpStream, peer: SocketAddr) {
        let dst = match rustix::net::sockopt::ip_original_dst(&stream) {
            Ok(d) => d,
            Err(e) => {
                debug!(instance = %inst.id, error = %e, "egress: no original destination");
                return;
            }
        };
        let (ip, port) = (*dst.ip(), dst.port());
        let count = |target: &str| {
            self.metrics
                .connections
                .get_or_create(&ConnectionLabels {
                    namespace: inst.namespace.clone(),
                    target: target.to_owned(),
                })
                .inc();
        };
        if ip == SERVICE_VIP {
            if port != 80 {
                // Services answer on port 80 only; not an egress refusal.
                let _ = rustix::net::sockopt::set_socket_linger(&stream, Some(Duration::ZERO));
                return;
            }
            count("service");
            let (ns, domain, router) = (
                inst.namespace.clone(),
                self.domain.clone(),
                self.router.clone(),
            );
            let check = router.clone();
            let rewrite: skiff_router::HostRewrite = Arc::new(move |host: &str| {
                service_host(host, &ns, &domain).filter(|h| check.has_host(h))
            });
            router
                .serve_internal(stream, peer, self.conns.clone(), rewrite)
                .await;
            return;
        }
        let targets: Vec<SocketAddr> = if ip == HOST_VIP {
            if !inst.policy.allows_host(Some(port)) {
                return self.reset(inst, stream, &format!("{HOST_NAME}:{port}"));
            }
            vec![SocketAddr::from((Ipv4Addr::LOCALHOST, port))]
        } else if in_pool(ip) {
            let entry = inst
                .names
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .lookup(ip);
            let Some((name, addrs)) = entry else {
                return self.reset(
                    inst,
                    stream,
                    &format!("{ip}:{port} (a name no longer known)"),
                );
            };
            let named_any = inst.policy.allows_named(&name, None);
            if named_any && !inst.policy.allows_named(&name, Some(port)) {
                return self.reset(inst, stream, &format!("{name}:{port}"));
            }
            addrs
                .into_iter()
                .map(|a| SocketAddr::from((a, port)))
                .collect()
        } else {
            if !inst.policy.allows_addr(ip) || is_host_addr(ip) {
                return self.reset(inst, stream, &format!("{ip}:{port}"));
            }
            vec![SocketAddr::from((ip, port))]
        };
        let mut out = None;
        for t in &targets {
            if let Ok(Ok(s)) = tokio::time::timeout(DIAL_TIMEOUT, TcpStream::connect(t)).await {
                out = Some(s);
                break;
            }
        }
        let Some(mut out) = out else {
            debug!(instance = %inst.id, ?targets, "egress: no target answered");
            // Nothing answered: the app's connection is reset at once.
            let _ = rustix::net::sockopt::set_socket_linger(&stream, Some(Duration::ZERO));
            return;
        };
        count("external");
        let _ = out.set_nodelay(true);
        let _ = stream.set_nodelay(true);
        let mut stream = stream;
        let _ = tokio::io::copy_bidirectional(&mut stream, &mut out).await;
    }
}

/// Asks `upstreams` (in turn) for the A records of `name`: `None` when it does not exist.
async fn upstream_a(upstreams: &[SocketAddr], name: &str) -> Result<Option<Vec<Ipv4Addr>>, String> {
    use simple_dns::rdata::RData;
    use simple_dns::{CLASS, Name, Packet, PacketFlag, QCLASS, QTYPE, Question, RCODE, TYPE};
    let qname = Name::new(name).map_err(|e| format!("`{name}`: {e}"))?;
    let id: u16 = rand::random();
    let mut q = Packet::new_query(id);
    q.set_flags(PacketFlag::RECURSION_DESIRED);
    q.questions.push(Question::new(
        qname,
        QTYPE::TYPE(TYPE::A),
        QCLASS::CLASS(CLASS::IN),
        false,
    ));
    let query = q.build_bytes_vec().map_err(|e| e.to_string())?;
    let mut last = "no DNS server configured (dns_upstream, /etc/resolv.conf)".to_owned();
    for up in upstreams {
        let bind: SocketAddr = if up.is_ipv4() {
            SocketAddr::from(([0, 0, 0, 0], 0))
        } else {
            SocketAddr::from(([0u16; 8], 0))
        };
        let attempt = async {
            let sock = UdpSocket::bind(bind).await?;
            sock.connect(up).await?;
            sock.send(&query).await?;
            let mut buf = vec![0u8; 4096];
            loop {
                let n = sock.recv(&mut buf).await?;
                if let Ok(p) = Packet::parse(&buf[..n])
                    && p.id() == id
                {
                    if p.rcode() == RCODE::NameError {
                        return Ok(None);
                    }
                    if p.rcode() != RCODE::NoError {
                        return Err(std::io::Error::other(format!("{:?}", p.rcode())));
                    }
                    let addrs = p
                        .answers
                        .iter()
                        .filter_map(|rr| match &rr.rdata {
                            RData::A(a) => Some(Ipv4Addr::from(a.address)),
                            _ => None,
                        })
                        .collect();
                    return Ok(Some(addrs));
                }
            }
        };
        match tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
            Ok(Ok(r)) => return Ok(r),
            Ok(Err(e)) => last = format!("{up}: {e}"),
            Err(_) => last = format!("{up}: no answer within {}s", UPSTREAM_TIMEOUT.as_secs()),
        }
    }
    Err(last)
}

impl InstanceNetwork for Network {
    fn ruleset(&self, _plan: &InstancePlan) -> Option<String> {
        Some(ruleset())
    }

    fn attach(
        &self,
        plan: &InstancePlan,
        netns: Arc<OwnedFd>,
    ) -> futures::future::BoxFuture<'static, Box<dyn std::any::Any + Send + Sync>> {
        let shared = self.0.clone();
        let inst = Arc::new(InstanceNet::new(
            &plan.id,
            &plan.namespace,
            &plan.revision,
            shared.policy_of(plan),
        ));
        Box::pin(async move {
            let stop = CancellationToken::new();
            let c = &shared.connector;
            match c.bind_udp(netns.clone(), DNS_ADDR).await {
                Ok(s) => {
                    tokio::spawn(shared.clone().serve_udp(inst.clone(), s, stop.clone()));
                }
                Err(e) => {
                    warn!(instance = %inst.id, error = %e, "the instance's resolver (UDP) cannot listen")
                }
            }
            match c.listen_tcp(netns.clone(), DNS_ADDR).await {
                Ok(l) => {
                    tokio::spawn(shared.clone().serve_tcp(inst.clone(), l, stop.clone()));
                }
                Err(e) => {
                    warn!(instance = %inst.id, error = %e, "the instance's resolver (TCP) cannot listen")
                }
            }
            match c.listen_tcp(netns, EGRESS_ADDR).await {
                Ok(l) => {
                    tokio::spawn(shared.clone().serve_egress(inst.clone(), l, stop.clone()));
                }
                Err(e) => {
                    warn!(instance = %inst.id, error = %e, "the instance's egress listener cannot listen")
                }
            }
            Box::new(stop.drop_guard()) as Box<dyn std::any::Any + Send + Sync>
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_names_map_to_ingress_hosts() {
        let h = |n: &str| service_host(n, "default", "localhost");
        assert_eq!(h("backend").as_deref(), Some("backend.default.localhost"));
        assert_eq!(
            h("backend:80").as_deref(),
            Some("backend.default.localhost")
        );
        assert_eq!(
            h("Backend.other").as_deref(),
            Some("backend.other.localhost")
        );
        assert_eq!(
            h("backend.other.svc").as_deref(),
            Some("backend.other.localhost")
        );
        assert_eq!(
            h("backend.other.svc.cluster.local.").as_deref(),
            Some("backend.other.localhost")
        );
        assert_eq!(
            h("v1-backend").as_deref(),
            Some("v1-backend.default.localhost")
        );
        assert_eq!(
            h("backend.default.localhost").as_deref(),
            Some("backend.default.localhost")
        );
        assert_eq!(h("a.b.c"), None);
        assert_eq!(h("x.svc"), None);
        assert_eq!(h(""), None);
    }

    #[test]
    fn names_get_stable_pool_addresses() {
        let mut t = NameTable::default();
        let a = t.assign("a.test", vec![Ipv4Addr::LOCALHOST]);
        let b = t.assign("b.test", vec![Ipv4Addr::new(8, 8, 8, 8)]);
        assert_ne!(a, b);
        assert!(in_pool(a) && in_pool(b));
        assert_eq!(t.assign("a.test", vec![Ipv4Addr::new(1, 2, 3, 4)]), a);
        assert_eq!(
            t.lookup(a),
            Some(("a.test".to_owned(), vec![Ipv4Addr::new(1, 2, 3, 4)]))
        );
        assert_eq!(t.lookup(Ipv4Addr::new(198, 19, 255, 254)), None);
        assert!(!in_pool(SERVICE_VIP) && !in_pool(HOST_VIP));
    }

    #[test]
    fn the_ruleset_sends_tcp_to_the_daemon() {
        let r = ruleset();
        assert!(r.contains("dnat to 127.0.0.10:15001"));
        assert!(r.contains("ip daddr 127.0.0.0/8 accept"));
    }

    /// The ruleset loads in nft (checked in a throwaway namespace of its own, never the
    /// host's; skipped without root or `nft`).
    #[test]
    fn the_ruleset_loads_in_a_namespace() {
        use std::io::Write;
        if !rustix::process::geteuid().is_root()
            || std::process::Command::new("nft")
                .arg("--version")
                .output()
                .is_err()
        {
            eprintln!("skipped: needs root and nft");
            return;
        }
        {
            let rules = ruleset();
            let mut child = std::process::Command::new("unshare")
                .args(["-n", "nft", "-f", "-"])
                .stdin(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("unshare nft");
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(rules.as_bytes())
                .expect("write");
            let out = child.wait_with_output().expect("nft");
            assert!(
                out.status.success(),
                "{}\n{rules}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    struct NoConnect;

    impl skiff_router::Connect for NoConnect {
        fn connect(&self, _: Arc<OwnedFd>, _: u16) -> skiff_router::ConnectFuture<'_> {
            Box::pin(async { Err(std::io::Error::other("no instances here")) })
        }
    }

    /// A DNS server on loopback: `api.test` is 127.0.0.1, `pub.test` 8.8.8.8, nothing else.
    async fn upstream() -> SocketAddr {
        use simple_dns::rdata::{A, RData};
        use simple_dns::{CLASS, Packet, RCODE, ResourceRecord};
        let sock = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = sock.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, from)) = sock.recv_from(&mut buf).await {
                let Ok(q) = Packet::parse(&buf[..n]) else {
                    continue;
                };
                let mut r = Packet::new_reply(q.id());
                let Some(question) = q.questions.first().cloned() else {
                    continue;
                };
                let ip = match question.qname.to_string().as_str() {
                    "api.test" => Some(Ipv4Addr::LOCALHOST),
                    "pub.test" => Some(Ipv4Addr::new(8, 8, 8, 8)),
                    _ => None,
                };
                match ip {
                    Some(ip) => r.answers.push(ResourceRecord::new(
                        question.qname.clone(),
                        CLASS::IN,
                        5,
                        RData::A(A {
                            address: u32::from(ip),
                        }),
                    )),
                    None => *r.rcode_mut() = RCODE::NameError,
                }
                r.questions.push(question);
                if let Ok(bytes) = r.build_bytes_vec() {
                    let _ = sock.send_to(&bytes, from).await;
                }
            }
        });
        addr
    }

    /// A daemon side with one routed Service, `backend` in `default`.
    async fn shared() -> Arc<Shared> {
        let mut reg = prometheus_client::registry::Registry::default();
        let (poke, _) = tokio::sync::mpsc::unbounded_channel();
        let router = Router::new(
            skiff_router::RouterConfig {
                domain: "localhost".into(),
                queue_depth: 1,
                queue_timeout: Duration::from_secs(1),
                threads: 1,
            },
            NoConnect,
            poke,
            skiff_router::RouterMetrics::new(&mut reg),
        );
        router.set_routes(HashMap::from([(
            "backend.default.localhost".to_owned(),
            skiff_router::HostRoute::Unavailable {
                message: "test".into(),
            },
        )]));
        let conns = Conns::new(
            skiff_router::conns::ConnLimits {
                max_connections: 16,
                header_read_timeout: Duration::from_secs(1),
                idle_timeout: Duration::from_secs(1),
            },
            skiff_router::conns::ConnMetrics::new(&mut reg),
        );
        Arc::new(Shared {
            router,
            connector: Connector::new(1).expect("connector"),
            conns,
            default_policy: EgressPolicy::Public,
            upstreams: vec![upstream().await],
            domain: "localhost".into(),
            metrics: EgressMetrics::new(&mut reg),
        })
    }

    fn inst(policy: &str) -> InstanceNet {
        InstanceNet::new("i", "default", "r", policy.parse().expect("policy"))
    }

    /// What the resolver answers under each policy: Services always, named hosts whatever
    /// they resolve to, public addresses by default, the host only when named.
    #[tokio::test]
    async fn answers_follow_the_policy() {
        let s = shared().await;
        let none = inst("none");
        assert_eq!(
            s.resolve(&none, "backend", true).await,
            Reply::Addr(SERVICE_VIP)
        );
        assert_eq!(
            s.resolve(&none, "backend.default.svc.cluster.local.", true)
                .await,
            Reply::Addr(SERVICE_VIP)
        );
        assert_eq!(s.resolve(&none, "backend", false).await, Reply::NoData);
        assert_eq!(s.resolve(&none, "api.test", true).await, Reply::NxDomain);
        assert_eq!(s.resolve(&none, "frontend", true).await, Reply::NxDomain);

        let named = inst("api.test:8080");
        let Reply::Addr(ip) = s.resolve(&named, "api.test", true).await else {
            panic!("named host not resolved");
        };
        assert!(in_pool(ip));
        let entry = named.names.lock().expect("lock").lookup(ip);
        assert_eq!(entry, Some(("api.test".into(), vec![Ipv4Addr::LOCALHOST])));
        assert_eq!(s.resolve(&named, "api.test", false).await, Reply::NoData);
        assert_eq!(s.resolve(&named, "pub.test", true).await, Reply::NxDomain);

        let public = inst("public");
        assert_eq!(s.resolve(&public, "api.test", true).await, Reply::NxDomain);
        let Reply::Addr(ip) = s.resolve(&public, "pub.test", true).await else {
            panic!("public host not resolved");
        };
        assert_eq!(
            public.names.lock().expect("lock").lookup(ip),
            Some(("pub.test".into(), vec![Ipv4Addr::new(8, 8, 8, 8)]))
        );
        assert_eq!(s.resolve(&public, "gone.test", true).await, Reply::NxDomain);
        assert_eq!(s.resolve(&public, HOST_NAME, true).await, Reply::NxDomain);
        let host = inst("host.skiff.internal:7070");
        assert_eq!(
            s.resolve(&host, HOST_NAME, true).await,
            Reply::Addr(HOST_VIP)
        );

        let refused = s
            .metrics
            .refused
            .get_or_create(&RefusedLabels {
                namespace: "default".into(),
                kind: "dns".into(),
            })
            .get();
        assert_eq!(refused, 4, "api.test twice, pub.test, the host");
    }

    /// The wire answer: an A record for a Service, NXDOMAIN for a refused name.
    #[tokio::test]
    async fn wire_answers() {
        use simple_dns::rdata::RData;
        use simple_dns::{CLASS, Name, Packet, QCLASS, QTYPE, Question, RCODE, TYPE};
        let s = shared().await;
        let none = inst("none");
        let query = |name: &'static str| {
            let mut q = Packet::new_query(7);
            q.questions.push(Question::new(
                Name::new_unchecked(name),
                QTYPE::TYPE(TYPE::A),
                QCLASS::CLASS(CLASS::IN),
                false,
            ));
            q.build_bytes_vec().expect("query")
        };
        let bytes = s.answer(&none, &query("backend")).await.expect("answer");
        let r = Packet::parse(&bytes).expect("reply");
        assert_eq!(r.id(), 7);
        assert_eq!(r.rcode(), RCODE::NoError);
        assert!(matches!(
            &r.answers[0].rdata,
            RData::A(a) if Ipv4Addr::from(a.address) == SERVICE_VIP
        ));
        let bytes = s.answer(&none, &query("api.test")).await.expect("answer");
        assert_eq!(
            Packet::parse(&bytes).expect("reply").rcode(),
            RCODE::NameError
        );
        assert!(s.answer(&none, b"garbage").await.is_none());
    }

    /// The resolver over UDP and over TCP (length-prefixed), as an instance's C library
    /// uses them; both stop with the guard's token.
    #[tokio::test]
    async fn udp_and_tcp_transports() {
        use simple_dns::rdata::RData;
        use simple_dns::{CLASS, Name, Packet, QCLASS, QTYPE, Question, TYPE};
        let s = shared().await;
        let inst = Arc::new(inst("none"));
        let stop = CancellationToken::new();
        let udp = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
        let udp_addr = udp.local_addr().expect("addr");
        tokio::spawn(s.clone().serve_udp(inst.clone(), udp, stop.clone()));
        let tcp = TcpListener::bind("127.0.0.1:0").await.expect("tcp");
        let tcp_addr = tcp.local_addr().expect("addr");
        tokio::spawn(s.clone().serve_tcp(inst.clone(), tcp, stop.clone()));
        let mut q = Packet::new_query(9);
        q.questions.push(Question::new(
            Name::new_unchecked("backend.default"),
            QTYPE::TYPE(TYPE::A),
            QCLASS::CLASS(CLASS::IN),
            false,
        ));
        let query = q.build_bytes_vec().expect("query");
        let is_vip = |bytes: &[u8]| {
            let r = Packet::parse(bytes).expect("reply");
            r.id() == 9
                && matches!(&r.answers[0].rdata, RData::A(a) if Ipv4Addr::from(a.address) == SERVICE_VIP)
        };
        let client = UdpSocket::bind("127.0.0.1:0").await.expect("client");
        client.send_to(&query, udp_addr).await.expect("send");
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), client.recv(&mut buf))
            .await
            .expect("a UDP answer")
            .expect("recv");
        assert!(is_vip(&buf[..n]));
        let mut c = TcpStream::connect(tcp_addr).await.expect("connect");
        c.write_u16(u16::try_from(query.len()).expect("len"))
            .await
            .expect("write");
        c.write_all(&query).await.expect("write");
        let len = c.read_u16().await.expect("length");
        let mut reply = vec![0u8; usize::from(len)];
        c.read_exact(&mut reply).await.expect("reply");
        assert!(is_vip(&reply));
        stop.cancel();
    }

    #[test]
    fn resolv_conf_nameservers() {
        assert_eq!(
            host_resolvers("# x\nnameserver 10.0.0.2\nsearch a\nnameserver ::1\nnameserver bad\n"),
            vec![
                "10.0.0.2:53".parse::<SocketAddr>().expect("addr"),
                "[::1]:53".parse().expect("addr")
            ]
        );
    }
}
