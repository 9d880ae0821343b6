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
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use rustix::thread::{LinkNameSpaceType, UnshareFlags};
use tokio::sync::oneshot;

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

/// An instance's network namespace, bind-mounted at a path.
#[derive(Debug)]
pub struct NetNs {
    path: PathBuf,
    file: Arc<OwnedFd>,
}

impl NetNs {
    /// Creates a namespace with `lo` up and pins it at `path` (a file that must not exist).
    pub fn create(path: &Path) -> Result<NetNs, NetnsError> {
        File::create(path).map_err(sys("creating the mount point", path))?;
        let p = path.to_path_buf();
        let result = std::thread::Builder::new()
            .name("skiff-netns".into())
            .spawn(move || -> Result<(), NetnsError> {
                // SAFETY: only the network namespace is unshared, on a thread that exists
                // for this and exits right after; no fd table is unshared.
                unsafe { rustix::thread::unshare_unsafe(UnshareFlags::NEWNET) }
                    .map_err(|e| sys("unshare", &p)(e.into()))?;
                loopback_up().map_err(sys("bringing lo up", &p))?;
                rustix::mount::mount_bind("/proc/thread-self/ns/net", &p)
                    .map_err(|e| sys("bind-mounting", &p)(e.into()))?;
                Ok(())
            })
            .map_err(sys("spawning the namespace thread", path))?
            .join()
            .unwrap_or(Err(NetnsError::Worker));
        if let Err(e) = result {
            let _ = std::fs::remove_file(path);
            return Err(e);
        }
        Self::open(path)
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

type Job = (Arc<OwnedFd>, oneshot::Sender<std::io::Result<OwnedFd>>);

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

fn socket_in(host: &OwnedFd, netns: &OwnedFd) -> std::io::Result<OwnedFd> {
    rustix::thread::move_into_link_name_space(netns.as_fd(), Some(LinkNameSpaceType::Network))?;
    let sock = rustix::net::socket_with(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::CLOEXEC | rustix::net::SocketFlags::NONBLOCK,
        None,
    );
    // Return to the host namespace whatever happened; a thread stuck in an instance's
    // namespace would create every later socket there.
    let back =
        rustix::thread::move_into_link_name_space(host.as_fd(), Some(LinkNameSpaceType::Network));
    if let Err(e) = back {
        // This thread is no longer trustworthy: end it.
        panic!("cannot return to the host network namespace: {e}");
    }
    Ok(sock?)
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
                        let (netns, reply) = job;
                        let _ = reply.send(socket_in(&host, &netns));
                    }
                })?;
        }
        Ok(Connector { tx })
    }

    /// A TCP socket inside the namespace, not yet connected.
    pub async fn socket(&self, netns: Arc<OwnedFd>) -> Result<tokio::net::TcpSocket, NetnsError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((netns, reply))
            .map_err(|_| NetnsError::Worker)?;
        let fd = rx
            .await
            .map_err(|_| NetnsError::Worker)?
            .map_err(|source| NetnsError::Sys {
                what: "creating a socket",
                path: PathBuf::new(),
                source,
            })?;
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
