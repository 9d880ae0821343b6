//! Network namespaces with loopback only, and the connector that reaches an instance's port
//! from the host without any IP address or veth.
//!
//! # Design
//! An instance's namespace is created by a short-lived thread that `unshare`s a new network
//! namespace, brings `lo` up, and bind-mounts its `/proc/thread-self/ns/net` onto a file in
//! skiff's run directory; the thread then exits and the bind mount keeps the namespace
//! alive. Every container of the instance joins it by path (like a pod), so it outlives
//! container restarts.
//!
//! To connect, a dedicated thread enters the namespace (`setns`), creates a TCP socket, and
//! returns to the host's namespace; the socket stays in the instance's namespace, so
//! connecting it to `127.0.0.1:PORT` reaches the instance. The setns dance costs tens of
//! microseconds; it never runs on a tokio worker, whose namespace must not change.

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use rustix::thread::{LinkNameSpaceType, UnshareFlags};
use tokio::sync::oneshot;

/// Where an instance's resolver listens (UDP and TCP), inside its namespace.
pub const DNS_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 11), 53);
/// Where the daemon takes every outbound TCP connection of an instance, inside its namespace
/// (the namespace's own nftables table redirects them here).
pub const EGRESS_ADDR: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 10), 15001);
/// The address Services answer at inside an instance (port 80).
pub const SERVICE_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
/// The address of `host.skiff.internal` inside an instance.
pub const HOST_VIP: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
/// Addresses the resolver hands out for outside names (one per name and instance); with
/// the two above, inside 198.18.0.0/15 (RFC 2544's benchmarking range: never a real peer).
pub const NAME_POOL: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 19, 0, 0), 16);
/// skiff's own range inside instances (the VIPs and the name pool).
pub const SKIFF_RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 15);

/// Network set-up and services the daemon adds to an instance's namespace.
pub trait InstanceNetwork: Send + Sync + 'static {
    /// The nftables ruleset (`nft -f` syntax, in the namespace's own table) for a new
    /// instance; with it the namespace gets a default route through `lo`. `None`: the
    /// namespace keeps loopback only.
    fn ruleset(&self, plan: &crate::InstancePlan) -> Option<String>;
    /// Starts serving the instance's namespace (its resolver, its outbound connections)
    /// until the returned guard is dropped (when the instance is torn down).
    fn attach(
        &self,
        plan: &crate::InstancePlan,
        netns: Arc<OwnedFd>,
    ) -> futures::future::BoxFuture<'static, Box<dyn std::any::Any + Send + Sync>>;
}

/// A network-namespace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A system call failed.
    #[error("{what} (network namespace `{}`)", path.display())]
    Sys {
        /// What was being done.
        what: &'static str,
        /// The namespace file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The worker thread is gone.
    #[error("the namespace worker thread stopped")]
    Worker,
}

fn sys(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> NetnsError + use<> {
    let path = path.to_path_buf();
    move |source| NetnsError::Sys { what, path, source }
}

/// Brings the loopback interface of the current thread's network namespace up.
fn loopback_up() -> std::io::Result<()> {
    // SAFETY: a plain socket(2) call; the fd is owned and closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a valid, newly created descriptor we own.
    let _guard = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    // SAFETY: ifreq is plain old data; zeroed is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (i, b) in b"lo\0".iter().enumerate() {
        req.ifr_name[i] = *b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS reads the flags into `req`, a valid ifreq for this call.
    if unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the union field written by SIOCGIFFLAGS is ifru_flags.
    unsafe {
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    }
    // SAFETY: SIOCSIFFLAGS reads `req`, a valid ifreq with the name and flags set.
    if unsafe { libc::ioctl(fd, libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Adds `default dev lo scope host` to the current thread's namespace (with `ip`, forked
/// from this thread, so in this namespace): every destination is routed, so that the
/// namespace's nftables rules can redirect outbound connections to the daemon. (The
/// `SIOCADDRT` ioctl can only add a link-scoped route, whose connections never complete
/// once redirected to a loopback address.)
fn default_route_via_lo() -> std::io::Result<()> {
    let out = std::process::Command::new("ip")
        .args(["route", "add", "default", "dev", "lo", "scope", "host"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "ip route: {} ({})",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        )));
    }
    Ok(())
}

/// Loads `ruleset` with `nft -f -` in the current thread's namespace (a child inherits the
/// namespaces of the thread that forks it).
fn load_ruleset(ruleset: &str) -> std::io::Result<()> {
    use std::io::Write;
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(ruleset.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "nft: {} ({})",
            String::from_utf8_lossy(&out.stderr).trim(),
            out.status
        )));
    }
    Ok(())
}

/// An instance's network namespace, bind-mounted at a path.
#[derive(Debug)]
pub struct NetNs {
    path: PathBuf,
    file: Arc<OwnedFd>,
}

impl NetNs {
    /// Creates a namespace with `lo` up and pins it at `path` (a file that must not exist).
    pub fn create(path: &Path) -> Result<NetNs, NetnsError> {
        Self::create_with(path, None).map(|(ns, _)| ns)
    }

    /// Creates a namespace with `lo` up, and, given a `ruleset`, loads it into the
    /// namespace (never the host's) and routes every destination through `lo`; pins it at
    /// `path`. The second value is whether the ruleset is in: when loading it fails the
    /// namespace stays loopback-only (the error is returned beside it).
    pub fn create_with(
        path: &Path,
        ruleset: Option<&str>,
    ) -> Result<(NetNs, Option<std::io::Error>), NetnsError> {
        File::create(path).map_err(sys("creating the mount point", path))?;
        let p = path.to_path_buf();
        let ruleset = ruleset.map(str::to_owned);
        let result = std::thread::Builder::new()
            .name("skiff-netns".into())
            .spawn(move || -> Result<Option<std::io::Error>, NetnsError> {
                // SAFETY: only the network namespace is unshared, on a thread that exists
                // for this and exits right after; no fd table is unshared.
                unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNET) }
                    .map_err(|e| sys("unshare", &p)(e.into()))?;
                loopback_up().map_err(sys("bringing lo up", &p))?;
                // The rules first: a route without them would send packets nowhere.
                let egress = ruleset
                    .map(|r| load_ruleset(&r).and_then(|()| default_route_via_lo()))
                    .and_then(Result::err);
                rustix::mount::mount_bind("/proc/thread-self/ns/net", &p)
                    .map_err(|e| sys("bind-mounting", &p)(e.into()))?;
                Ok(egress)
            })
            .map_err(sys("spawning the namespace thread", path))?
            .join()
            .unwrap_or(Err(NetnsError::Worker));
        match result {
            Err(e) => {
                let _ = std::fs::remove_file(path);
                Err(e)
            }
            Ok(egress) => Ok((Self::open(path)?, egress)),
        }
    }

    /// Opens an existing pinned namespace (recovery).
    pub fn open(path: &Path) -> Result<NetNs, NetnsError> {
        let file = File::open(path).map_err(sys("opening", path))?;
        Ok(NetNs {
            path: path.to_path_buf(),
            file: Arc::new(file.into()),
        })
    }

    /// The namespace's path (give it to the runtime as the network namespace).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A handle for the connector.
    pub fn handle(&self) -> Arc<OwnedFd> {
        self.file.clone()
    }

    /// Unpins and removes the namespace file (the namespace dies with its last process).
    pub fn remove(path: &Path) -> Result<(), NetnsError> {
        match rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH) {
            Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => {}
            Err(e) => return Err(sys("unmounting", path)(e.into())),
        }
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(sys("removing", path)(e)),
        }
    }
}

type SocketFn = Box<dyn FnOnce() -> std::io::Result<OwnedFd> + Send>;
type Job = (
    Arc<OwnedFd>,
    SocketFn,
    oneshot::Sender<std::io::Result<OwnedFd>>,
);

/// Creates TCP sockets inside instances' network namespaces, on dedicated threads.
#[derive(Clone)]
pub struct Connector {
    tx: mpsc::Sender<Job>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connector")
    }
}

fn tcp_socket() -> std::io::Result<OwnedFd> {
    Ok(rustix::net::socket_with(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
        None,
    )?)
}

fn socket_in(host: &OwnedFd, netns: &OwnedFd, make: SocketFn) -> std::io::Result<OwnedFd> {
    rustix::thread::move_into_link_name_space(netns.as_fd(), Some(LinkNameSpaceType::Network))?;
    let sock = make();
    // Return to the host namespace whatever happened; a thread stuck in an instance's
    // namespace would create every later socket there.
    let back =
        rustix::thread::move_into_link_name_space(host.as_fd(), Some(LinkNameSpaceType::Network));
    if let Err(e) = back {
        // This thread is no longer trustworthy: end it.
        panic!("cannot return to the host network namespace: {e}");
    }
    sock
}

impl Connector {
    /// Starts `threads` worker threads.
    pub fn new(threads: usize) -> std::io::Result<Connector> {
        let host: Arc<OwnedFd> = Arc::new(File::open("/proc/self/ns/net")?.into());
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            let host = host.clone();
            std::thread::Builder::new()
                .name(format!("skiff-connect-{i}"))
                .spawn(move || {
                    loop {
                        let job = {
                            let Ok(guard) = rx.lock() else { return };
                            match guard.recv() {
                                Ok(job) => job,
                                Err(_) => return,
                            }
                        };
                        let (netns, make, reply) = job;
                        let _ = reply.send(socket_in(&host, &netns, make));
                    }
                })?;
        }
        Ok(Connector { tx })
    }

    /// Runs `make` inside the namespace and returns the socket it made (a socket keeps the
    /// namespace it was created in, whatever happens to the thread afterwards).
    pub async fn make_socket(
        &self,
        netns: Arc<OwnedFd>,
        make: impl FnOnce() -> std::io::Result<OwnedFd> + Send + 'static,
    ) -> Result<OwnedFd, NetnsError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((netns, Box::new(make), reply))
            .map_err(|_| NetnsError::Worker)?;
        rx.await
            .map_err(|_| NetnsError::Worker)?
            .map_err(|source| NetnsError::Sys {
                what: "creating a socket",
                path: PathBuf::new(),
                source,
            })
    }

    /// A TCP listener on `addr` inside the namespace.
    pub async fn listen_tcp(
        &self,
        netns: Arc<OwnedFd>,
        addr: SocketAddrV4,
    ) -> Result<tokio::net::TcpListener, NetnsError> {
        let fd = self
            .make_socket(netns, move || {
                let fd = tcp_socket()?;
                rustix::net::sockopt::set_socket_reuseaddr(&fd, true)?;
                rustix::net::bind(&fd, &std::net::SocketAddr::V4(addr))?;
                rustix::net::listen(&fd, 1024)?;
                Ok(fd)
            })
            .await?;
        tokio::net::TcpListener::from_std(std::net::TcpListener::from(fd)).map_err(|source| {
            NetnsError::Sys {
                what: "registering a listener",
                path: PathBuf::new(),
                source,
            }
        })
    }

    /// A UDP socket bound to `addr` inside the namespace.
    pub async fn bind_udp(
        &self,
        netns: Arc<OwnedFd>,
        addr: SocketAddrV4,
    ) -> Result<tokio::net::UdpSocket, NetnsError> {
        let fd = self
            .make_socket(netns, move || {
                let fd = rustix::net::socket_with(
                    rustix::net::AddressFamily::INET,
                    rustix::net::SocketType::DGRAM,
                    rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
                    None,
                )?;
                rustix::net::bind(&fd, &std::net::SocketAddr::V4(addr))?;
                Ok(fd)
            })
            .await?;
        tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(fd)).map_err(|source| {
            NetnsError::Sys {
                what: "registering a socket",
                path: PathBuf::new(),
                source,
            }
        })
    }

    /// A TCP socket inside the namespace, not yet connected.
    pub async fn socket(&self, netns: Arc<OwnedFd>) -> Result<tokio::net::TcpSocket, NetnsError> {
        let fd = self.make_socket(netns, tcp_socket).await?;
        let std_stream = std::net::TcpStream::from(fd);
        Ok(tokio::net::TcpSocket::from_std_stream(std_stream))
    }

    /// Connects to `127.0.0.1:port` inside the namespace.
    pub async fn connect(
        &self,
        netns: Arc<OwnedFd>,
        port: u16,
    ) -> std::io::Result<tokio::net::TcpStream> {
        let socket = self.socket(netns).await.map_err(std::io::Error::other)?;
        socket
            .connect(std::net::SocketAddr::from(([127, 0, 0, 1], port)))
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root() -> bool {
        rustix::process::geteuid().is_root()
    }

    /// Two namespaces can both listen on the same port, isolated from each other and from
    /// the host, and the connector reaches each one.
    #[tokio::test]
    async fn namespaces_are_isolated_and_reachable() {
        if !root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let a = NetNs::create(&dir.path().join("a")).expect("netns a");
        let b = NetNs::create(&dir.path().join("b")).expect("netns b");
        let connector = Connector::new(1).expect("connector");
        let mut listeners = Vec::new();
        for (ns, name) in [(&a, "a"), (&b, "b")] {
            let sock = connector.socket(ns.handle()).await.expect("socket");
            sock.set_reuseaddr(true).expect("reuse");
            sock.bind(std::net::SocketAddr::from(([127, 0, 0, 1], 18080)))
                .expect("bind");
            let l = sock.listen(16).expect("listen");
            listeners.push((l, name));
        }
        for (l, name) in listeners {
            let server = tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let (mut s, _) = l.accept().await.expect("accept");
                s.write_all(name.as_bytes()).await.expect("write");
            });
            let ns = if name == "a" { &a } else { &b };
            let mut c = connector
                .connect(ns.handle(), 18080)
                .await
                .expect("connect");
            let mut buf = String::new();
            tokio::io::AsyncReadExt::read_to_string(&mut c, &mut buf)
                .await
                .expect("read");
            assert_eq!(buf, name);
            server.await.expect("server");
        }
        // The host's 127.0.0.1:18080 is untouched (nothing listens there).
        assert!(
            tokio::net::TcpStream::connect("127.0.0.1:18080")
                .await
                .is_err()
        );
        NetNs::remove(a.path()).expect("remove a");
        NetNs::remove(b.path()).expect("remove b");
        assert!(!dir.path().join("a").exists());
    }
}
