//! Proves that `skiff-test-server`, built static by `skiff_test_utils::images`, does what
//! runtime tests rely on: every endpoint answers as documented over plain HTTP/1.1, bad
//! requests get a 4xx without hurting the server, signals and crashes end it with the
//! expected status, and the images built around it hold what they should.
//!
//! The server runs directly on the host here (no container), on a free loopback port.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use skiff_test_utils::images::{
    BUSYBOX_HTTPD_INDEX, IMAGE_LABEL, TEST_SERVER_PATH, busybox_httpd_image, runtime_info_image,
    test_server_binary,
};
use skiff_test_utils::oci::{EntryType, ListedEntry, MEDIA_TYPE_LAYER_GZIP, list_tar};
use skiff_test_utils::{MAX_WAIT, wait_for};

/// How often conditions are polled.
const POLL: Duration = Duration::from_millis(10);
/// How long a single HTTP exchange may block before the test fails instead of hanging.
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// A test server process, killed (and its output printed, on failure) when dropped.
struct Server {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

/// How to start a [`Server`].
#[derive(Default)]
struct Launch<'a> {
    args: &'a [&'a str],
    env: &'a [(&'a str, &'a str)],
}

impl Server {
    /// Starts the server with no flags.
    async fn start() -> Server {
        Server::launch(Launch::default()).await
    }

    /// Starts the server on a free port and waits for its "listening" line.
    async fn launch(launch: Launch<'_>) -> Server {
        let binary = test_server_binary().expect("building skiff-test-server");
        // The port is free when checked and could be taken before the server binds it;
        // a server that exits at once is retried on another port.
        for _ in 0..5 {
            let port = free_port();
            let dir = tempfile::Builder::new()
                .prefix("skiff-test-server-")
                .tempdir()
                .expect("temp dir");
            let stdout = std::fs::File::create(dir.path().join("stdout")).expect("stdout file");
            let stderr = std::fs::File::create(dir.path().join("stderr")).expect("stderr file");
            let child = Command::new(&binary)
                .args(launch.args)
                .env("PORT", port.to_string())
                .envs(launch.env.iter().copied())
                .current_dir(dir.path())
                .stdin(Stdio::null())
                .stdout(stdout)
                .stderr(stderr)
                .spawn()
                .expect("spawning skiff-test-server");
            let mut server = Server {
                child: Some(child),
                port,
                dir,
            };
            let ready = wait_for(
                "skiff-test-server to print its listening line",
                POLL,
                MAX_WAIT,
                || {
                    let exited = server.try_wait();
                    let listening = server
                        .stdout()
                        .contains(&format!("listening on :{port} pid="));
                    async move {
                        match exited {
                            Some(status) => Some(Err(status)),
                            None => listening.then_some(Ok(())),
                        }
                    }
                },
            )
            .await
            .expect("the server starts");
            match ready {
                Ok(()) => return server,
                Err(status) if server.stderr().contains("Address already in use") => {
                    eprintln!("port {port} was taken ({status}); trying another");
                }
                Err(status) => panic!(
                    "skiff-test-server exited at start ({status}); stderr:\n{}",
                    server.stderr()
                ),
            }
        }
        panic!("no free port found for skiff-test-server");
    }

    /// `127.0.0.1:PORT`.
    fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The process id.
    fn pid(&self) -> u32 {
        self.child.as_ref().expect("server running").id()
    }

    /// Everything the server wrote to stdout so far.
    fn stdout(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }

    /// Everything the server wrote to stderr so far.
    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// The directory the server runs in.
    fn cwd(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The exit status, if the process has exited.
    fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().expect("try_wait")
    }

    /// Sends `signal` to the server.
    fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.pid() as i32).expect("non-zero pid");
        rustix::process::kill_process(pid, signal).expect("kill");
    }

    /// Waits for the process to exit and returns its status.
    async fn exit_status(&mut self, max: Duration) -> ExitStatus {
        wait_for("skiff-test-server to exit", POLL, max, || {
            let status = self.try_wait();
            async move { status }
        })
        .await
        .expect("the server exits")
    }

    /// A fresh keep-alive connection.
    fn connect(&self) -> Conn {
        Conn::open(self.addr())
    }

    /// `GET path` on a fresh connection.
    fn get(&self, path: &str) -> Resp {
        self.connect()
            .send(&format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n"))
    }

    /// `POST path` with an empty body on a fresh connection.
    fn post(&self, path: &str) -> Resp {
        self.connect().send(&format!(
            "POST {path} HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n"
        ))
    }

    /// The server's `/proc/PID/status` field `key` (first number, e.g. kB or a count).
    fn proc_status(&self, key: &str) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{key}:")))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{key} not in /proc/PID/status"))
    }

    /// User plus system CPU time of the server, in clock ticks.
    fn cpu_ticks(&self) -> u64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).expect("stat");
        // Fields after the `(comm)`; utime and stime are fields 14 and 15 of the whole line.
        let after_comm = stat.rsplit_once(')').expect("comm").1;
        let fields: Vec<&str> = after_comm.split_whitespace().collect();
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "skiff-test-server stdout:\n{}\nskiff-test-server stderr:\n{}",
                self.stdout(),
                self.stderr()
            );
        }
    }
}

/// A port that was free a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding 127.0.0.1:0")
        .port()
}

/// A response as read off the wire.
#[derive(Debug)]
struct Resp {
    status: u16,
    /// Names lowercased.
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// The body was sent chunked; these are its chunks, in order.
    chunks: Option<Vec<Vec<u8>>>,
    /// When the header section had been read.
    headers_at: Instant,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("body is not JSON ({err}): {}", self.text()))
    }
}

/// One client connection.
struct Conn {
    reader: BufReader<TcpStream>,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).expect("connecting to the server");
        stream.set_read_timeout(Some(IO_TIMEOUT)).expect("timeout");
        stream.set_write_timeout(Some(IO_TIMEOUT)).expect("timeout");
        Conn {
            reader: BufReader::new(stream),
        }
    }

    /// Writes raw bytes.
    fn write(&mut self, raw: &[u8]) {
        self.reader.get_mut().write_all(raw).expect("writing");
    }

    /// Writes a raw request and reads the response.
    fn send(&mut self, raw: &str) -> Resp {
        self.write(raw.as_bytes());
        self.read_response().expect("reading a response")
    }

    /// Whether the server closed the connection (reads end-of-file).
    fn is_closed(&mut self) -> bool {
        let mut buf = [0u8; 1];
        matches!(self.reader.read(&mut buf), Ok(0))
    }

    fn line(&mut self) -> anyhow::Result<String> {
        let mut line = String::new();
        self.reader.read_line(&mut line).context("reading a line")?;
        if !line.ends_with("\r\n") {
            bail!("line not ended by CRLF: {line:?}");
        }
        line.truncate(line.len() - 2);
        Ok(line)
    }

    /// Reads one response: Content-Length, chunked, or up to the end of the connection.
    fn read_response(&mut self) -> anyhow::Result<Resp> {
        self.read_response_to(false)
    }

    /// Reads one response to a HEAD request (`head`), whose framing headers describe a
    /// body that is not sent, or to any other request.
    fn read_response_to(&mut self, head: bool) -> anyhow::Result<Resp> {
        let status_line = self.line()?;
        let status = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("bad status line {status_line:?}"))?;
        let mut headers = Vec::new();
        loop {
            let line = self.line()?;
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').context("header without colon")?;
            headers.push((name.to_ascii_lowercase(), value.trim().to_owned()));
        }
        let headers_at = Instant::now();
        let mut resp = Resp {
            status,
            headers,
            body: Vec::new(),
            chunks: None,
            headers_at,
        };
        if head || (100..200).contains(&status) || status == 204 || status == 304 {
            // No body, whatever the headers say.
        } else if resp.header("transfer-encoding") == Some("chunked") {
            let mut chunks = Vec::new();
            loop {
                let size = usize::from_str_radix(&self.line()?, 16).context("chunk size")?;
                if size == 0 {
                    ensure_empty(&self.line()?)?;
                    break;
                }
                let mut chunk = vec![0; size];
                self.reader.read_exact(&mut chunk).context("chunk data")?;
                ensure_empty(&self.line()?)?;
                resp.body.extend_from_slice(&chunk);
                chunks.push(chunk);
            }
            resp.chunks = Some(chunks);
        } else if let Some(len) = resp.header("content-length") {
            let mut body = vec![0; len.parse().context("content-length")?];
            self.reader.read_exact(&mut body).context("body")?;
            resp.body = body;
        } else {
            self.reader.read_to_end(&mut resp.body).context("body")?;
        }
        Ok(resp)
    }
}

fn ensure_empty(line: &str) -> anyhow::Result<()> {
    if !line.is_empty() {
        bail!("expected an empty line, got {line:?}");
    }
    Ok(())
}

// The server announces its port and pid on stdout and a fixed line on stderr.
#[tokio::test]
async fn startup_lines_reach_stdout_and_stderr() {
    let server = Server::start().await;
    assert_eq!(
        server.stdout(),
        format!(
            "skiff-test-server listening on :{} pid={}\n",
            server.port,
            server.pid()
        )
    );
    assert_eq!(server.stderr(), "skiff-test-server stderr check\n");
}

// `GET /` greets (adding `hello <TARGET>` when set), and HEAD sends the headers only.
#[tokio::test]
async fn root_greets_with_target() {
    let plain = Server::start().await;
    let resp = plain.get("/");
    assert_eq!(
        (resp.status, resp.text()),
        (200, "hello from skiff-test-server\n".into())
    );

    let with_target = Server::launch(Launch {
        env: &[("TARGET", "skiff")],
        ..Launch::default()
    })
    .await;
    let resp = with_target.get("/");
    assert_eq!(
        (resp.status, resp.text()),
        (200, "hello from skiff-test-server\nhello skiff\n".into())
    );
    let mut conn = with_target.connect();
    conn.write(b"HEAD / HTTP/1.1\r\nHost: t\r\n\r\n");
    let head = conn.read_response_to(true).expect("HEAD response");
    assert_eq!(
        (head.status, head.header("content-length")),
        (200, Some("41"))
    );
    // No body followed the HEAD response: the next response on the connection lines up.
    let again = conn.send("GET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(again.text(), "hello from skiff-test-server\nhello skiff\n");
}

// `/info` is valid JSON that describes this very process and its environment.
#[tokio::test]
async fn info_describes_the_process() {
    let server = Server::launch(Launch {
        args: &["first", "second arg"],
        env: &[("SKIFF_INFO_TEST", "a \"quoted\"\tvalue\n")],
    })
    .await;
    let resp = server.get("/info");
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("content-type"), Some("application/json"));
    let info = resp.json();
    assert_eq!(info["env"]["SKIFF_INFO_TEST"], "a \"quoted\"\tvalue\n");
    assert_eq!(info["env"]["PORT"], server.port.to_string());
    let args: Vec<&str> = info["args"]
        .as_array()
        .expect("args")
        .iter()
        .map(|a| a.as_str().expect("string"))
        .collect();
    assert_eq!(args[1..], ["first", "second arg"]);
    assert_eq!(info["uid"], rustix::process::getuid().as_raw());
    assert_eq!(info["gid"], rustix::process::getgid().as_raw());
    assert!(info["groups"].is_array(), "{}", info["groups"]);
    assert_eq!(info["cwd"], server.cwd().to_str().expect("UTF-8 temp dir"));
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    assert_eq!(info["hostname"], hostname.trim());
    assert_eq!(info["pid"], server.pid());
    assert_eq!(info["stdin_eof"], true, "stdin is /dev/null");
    for key in [
        "memory/memory.limit_in_bytes",
        "cpu/cpu.cfs_quota_us",
        "cpu/cpu.cfs_period_us",
        "cpu/cpu.shares",
        "pids/pids.max",
        "memory.max",
        "cpu.max",
        "cpu.weight",
        "pids.max",
    ] {
        let value = &info["cgroup"][key];
        assert!(
            value.is_string() || value.is_null(),
            "cgroup {key}: {value}"
        );
    }
    let mounts = info["mounts"].as_array().expect("mounts");
    let root = mounts
        .iter()
        .find(|m| m["mount_point"] == "/")
        .expect("a mount at /");
    assert!(
        root["fs_type"].is_string() && root["options"].is_string(),
        "{root}"
    );
    let proc_mount = mounts.iter().find(|m| m["mount_point"] == "/proc");
    assert_eq!(
        proc_mount.map(|m| &m["fs_type"]),
        Some(&Value::from("proc"))
    );
    let dev: Vec<&str> = info["dev"]
        .as_array()
        .expect("dev")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(dev.contains(&"null") && dev.contains(&"zero"), "{dev:?}");
    for cap in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
        let hex = info["capabilities"][cap].as_str().expect("capability set");
        assert!(
            hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "{cap}={hex}"
        );
    }
    assert!(
        info["no_new_privs"].is_boolean(),
        "{}",
        info["no_new_privs"]
    );
    assert!(info["seccomp"].is_u64(), "{}", info["seccomp"]);
    for file in ["/dev/null", "/dev/zero", "/proc/self/fd/0", "/tmp"] {
        assert_eq!(info["files"][file], true, "{file}");
    }
    assert_eq!(info["files"].as_object().expect("files").len(), 20);
    assert_eq!(info["writable"]["/tmp"], true);
    for place in ["/dev/shm", "/", "/proc/sys/kernel/hostname"] {
        assert!(info["writable"][place].is_boolean(), "{place}");
    }
    let interfaces = info["network_interfaces"].as_array().expect("interfaces");
    assert!(interfaces.contains(&Value::from("lo")), "{interfaces:?}");
    assert!(info["rlimits"]["max_open_files"]["soft"].is_string());
}

// `/headers` echoes method, path, version and headers, for HTTP/1.1 and HTTP/1.0.
#[tokio::test]
async fn headers_are_echoed() {
    let server = Server::start().await;
    let resp = server.connect().send(
        "POST /headers?x=1 HTTP/1.1\r\nHost: example.test\r\nX-Forwarded-For: 10.0.0.1\r\n\
         X-Multi: a\r\nx-multi: b\r\nContent-Length: 4\r\n\r\nbody",
    );
    let v = resp.json();
    assert_eq!(v["method"], "POST");
    assert_eq!(v["path"], "/headers");
    assert_eq!(v["query"], "x=1");
    assert_eq!(v["version"], "HTTP/1.1");
    assert_eq!(v["headers"]["host"], "example.test");
    assert_eq!(v["headers"]["x-forwarded-for"], "10.0.0.1");
    assert_eq!(v["headers"]["x-multi"], "a, b");
    assert_eq!(v["body_len"], 4);

    let mut conn = server.connect();
    let v = conn.send("GET /headers HTTP/1.0\r\n\r\n").json();
    assert_eq!(v["version"], "HTTP/1.0");
    assert_eq!(v["headers"], serde_json::json!({}));
    assert!(conn.is_closed(), "HTTP/1.0 without keep-alive closes");
}

// `/alloc?mb=N` really touches N MiB: the process's peak RSS grows by that much.
#[tokio::test]
async fn alloc_touches_every_page() {
    let server = Server::start().await;
    let before_kb = server.proc_status("VmHWM");
    let resp = server.get("/alloc?mb=64");
    assert_eq!(
        (resp.status, resp.text()),
        (200, "allocated 64 MiB\n".into())
    );
    let after_kb = server.proc_status("VmHWM");
    assert!(
        after_kb >= before_kb + 63 * 1024,
        "peak RSS went from {before_kb} kB to {after_kb} kB"
    );
    assert_eq!(server.get("/alloc").status, 400, "mb is required");
    assert_eq!(server.get("/alloc?mb=lots").status, 400);
}

// `/forkbomb?max=N` starts N parked threads and reports no error below any limit.
#[tokio::test]
async fn forkbomb_starts_threads() {
    let server = Server::start().await;
    let before = server.proc_status("Threads");
    let v = server.get("/forkbomb?max=5").json();
    assert_eq!(v, serde_json::json!({"created": 5, "error": null}));
    // The connection thread may or may not have exited yet; the parked ones stay.
    assert!(server.proc_status("Threads") >= before + 5 - 1);
}

// `/burn?ms=N` spins for N ms of wall time and really uses the CPU meanwhile.
#[tokio::test]
async fn burn_uses_the_cpu() {
    let server = Server::start().await;
    let ticks_before = server.cpu_ticks();
    let start = Instant::now();
    let v = server.get("/burn?ms=300").json();
    let took = start.elapsed();
    assert_eq!(v, serde_json::json!({"spun_ms": 300}));
    assert!(took >= Duration::from_millis(300), "{took:?}");
    // 300 ms of spinning is 30 ticks at 100 Hz; a sleeping server would use none. A machine
    // busy with parallel builds gave it 8 once, so only a sixth is asked for.
    let ticks = server.cpu_ticks() - ticks_before;
    assert!(ticks >= 5, "only {ticks} ticks of CPU in {took:?}");
}

// `/healthz` answers 200 until `POST /start-failing`, then 500 for good.
#[tokio::test]
async fn healthz_fails_after_start_failing() {
    let server = Server::start().await;
    assert_eq!(
        (server.get("/healthz").status, server.get("/healthz").text()),
        (200, "ok\n".into())
    );
    assert_eq!(server.post("/start-failing").status, 200);
    let resp = server.get("/healthz");
    assert_eq!((resp.status, resp.text()), (500, "failing\n".into()));
    assert_eq!(server.get("/healthz").status, 500);
}

// `/ready` is 503 until --ready-after-ms, then 200, and `/set-ready` overrides it both ways.
#[tokio::test]
async fn readiness_follows_the_delay_and_set_ready() {
    let start = Instant::now();
    let server = Server::launch(Launch {
        args: &["--ready-after-ms", "1000"],
        ..Launch::default()
    })
    .await;
    assert_eq!(server.get("/ready").status, 503);
    wait_for("/ready to answer 200", POLL, MAX_WAIT, || {
        let ready = server.get("/ready").status == 200;
        async move { ready.then_some(()) }
    })
    .await
    .expect("ready");
    assert!(start.elapsed() >= Duration::from_millis(1000));
    assert_eq!(server.post("/set-ready?v=false").status, 200);
    assert_eq!(server.get("/ready").status, 503);
    assert_eq!(server.post("/set-ready?v=true").status, 200);
    assert_eq!(server.get("/ready").status, 200);
    assert_eq!(server.post("/set-ready?v=maybe").status, 400);
    let wrong_method = server.get("/set-ready?v=true");
    assert_eq!(
        (wrong_method.status, wrong_method.header("allow")),
        (405, Some("POST"))
    );
}

// `/delay?ms=N` holds the whole response, headers included, for N ms.
#[tokio::test]
async fn delay_holds_the_response() {
    let server = Server::start().await;
    let start = Instant::now();
    let resp = server.get("/delay?ms=250");
    assert_eq!((resp.status, resp.text()), (200, "delayed 250 ms\n".into()));
    assert!(resp.headers_at - start >= Duration::from_millis(250));
}

// `/stream` sends headers at once then a chunk per interval (unchunked to HTTP/1.0).
#[tokio::test]
async fn stream_arrives_chunked_over_time() {
    let server = Server::start().await;
    let start = Instant::now();
    let resp = server.get("/stream?chunks=3&interval_ms=200");
    let done = start.elapsed();
    assert_eq!(resp.status, 200);
    assert_eq!(resp.header("transfer-encoding"), Some("chunked"));
    assert_eq!(resp.header("content-length"), None);
    assert_eq!(
        resp.chunks.as_deref(),
        Some(
            &[
                b"chunk 0\n".to_vec(),
                b"chunk 1\n".to_vec(),
                b"chunk 2\n".to_vec()
            ][..]
        )
    );
    assert!(
        resp.headers_at - start < Duration::from_millis(200),
        "headers took {:?}",
        resp.headers_at - start
    );
    assert!(done >= Duration::from_millis(400), "{done:?}");

    let mut conn = server.connect();
    let old = conn.send("GET /stream?chunks=2 HTTP/1.0\r\n\r\n");
    assert_eq!(old.header("transfer-encoding"), None);
    assert_eq!(old.text(), "chunk 0\nchunk 1\n");
}

// `/concurrency` answers 200 to sequential requests and 500 to both of two overlapping ones.
#[tokio::test]
async fn concurrency_detects_overlap() {
    let server = Server::start().await;
    assert_eq!(server.get("/concurrency").status, 200);
    assert_eq!(server.get("/concurrency").status, 200);

    // The first request is held for a second; the second arrives well within it.
    let mut first = server.connect();
    let mut second = server.connect();
    first.write(b"GET /concurrency?hold_ms=1000 HTTP/1.1\r\nHost: t\r\n\r\n");
    second.write(b"GET /concurrency?hold_ms=1000 HTTP/1.1\r\nHost: t\r\n\r\n");
    let first = first.read_response().expect("first response");
    let second = second.read_response().expect("second response");
    assert_eq!((first.status, second.status), (500, 500));

    assert_eq!(server.get("/concurrency").status, 200, "sequential again");
}

// `/exit?code=N` answers 200 and then the process exits with N.
#[tokio::test]
async fn exit_endpoint_exits_with_the_code() {
    let mut server = Server::start().await;
    let resp = server.get("/exit?code=7");
    assert_eq!(
        (resp.status, resp.text()),
        (200, "exiting with code 7\n".into())
    );
    assert_eq!(resp.header("connection"), Some("close"));
    let status = server.exit_status(MAX_WAIT).await;
    assert_eq!(status.code(), Some(7), "{status}");
}

// `/log` writes its line to the chosen stream, and refuses an unknown stream.
#[tokio::test]
async fn log_lines_reach_their_stream() {
    let server = Server::start().await;
    assert_eq!(server.get("/log?line=to+stdout%21").status, 200);
    assert_eq!(
        server.get("/log?line=to%20stderr&stream=stderr").status,
        200
    );
    // Each line was flushed before its response was sent.
    assert!(
        server.stdout().ends_with("to stdout!\n"),
        "{}",
        server.stdout()
    );
    assert!(
        server.stderr().ends_with("to stderr\n"),
        "{}",
        server.stderr()
    );
    assert_eq!(server.get("/log?line=x&stream=syslog").status, 400);
}

// Unknown paths get 404, known paths with the wrong method 405 with `Allow`.
#[tokio::test]
async fn unknown_paths_and_methods_are_refused() {
    let server = Server::start().await;
    assert_eq!(server.get("/nope").status, 404);
    assert_eq!(server.get("/info/").status, 404);
    let resp = server.post("/info");
    assert_eq!(
        (resp.status, resp.header("allow")),
        (405, Some("GET, HEAD"))
    );
}

// One connection carries many requests, framed exactly, with 100-continue and close honoured.
#[tokio::test]
async fn keep_alive_frames_requests_exactly() {
    let server = Server::start().await;
    let mut conn = server.connect();
    let echo = conn.send("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello");
    assert_eq!((echo.status, echo.text()), (200, "hello".into()));
    let echo = conn.send(
        "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
         3\r\nabc\r\n4;ext=1\r\ndefg\r\n0\r\n\r\n",
    );
    assert_eq!(echo.text(), "abcdefg");
    // Two requests in one write (pipelining) get two responses in order.
    conn.write(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\nGET / HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(conn.read_response().expect("first").text(), "ok\n");
    assert_eq!(conn.read_response().expect("second").status, 200);

    conn.write(
        b"PUT /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n",
    );
    let interim = conn.read_response().expect("100 Continue");
    assert_eq!(interim.status, 100);
    let echo = conn.send("ok");
    assert_eq!(echo.text(), "ok");

    let last = conn.send("GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    assert_eq!(last.header("connection"), Some("close"));
    assert!(conn.is_closed());
}

// Malformed requests get a 4xx and a closed connection, and the server keeps serving.
#[tokio::test]
async fn malformed_requests_are_refused_and_the_server_survives() {
    let server = Server::start().await;
    let cases: &[(&[u8], u16)] = &[
        (b"garbage\r\n\r\n", 400),
        (b"\x00\xff\xfe binary \x01\r\n\r\n", 400),
        (b"GET / HTTP/1.1 extra\r\n\r\n", 400),
        (b"GET nothing HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/3.0\r\n\r\n", 505),
        (b"GET / HTTP/1.1\r\nno colon here\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n: empty name\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nA: 1\r\n folded\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nContent-Length: ten\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400),
        (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n0\r\n\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nxyz\r\n", 400),
        (b"POST /echo HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n", 501),
        (b"POST /echo HTTP/1.1\r\nContent-Length: 1000000000\r\n\r\n", 413),
    ];
    for (raw, status) in cases {
        let mut conn = server.connect();
        conn.write(raw);
        let resp = conn
            .read_response()
            .expect("a response to a malformed request");
        assert_eq!(resp.status, *status, "{}", String::from_utf8_lossy(raw));
        assert_eq!(resp.header("connection"), Some("close"));
        assert!(conn.is_closed(), "{}", String::from_utf8_lossy(raw));
    }
    let long_target = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(20_000));
    assert_eq!(server.connect().send(&long_target).status, 414);
    let many_headers = format!("GET / HTTP/1.1\r\n{}\r\n", "X-A: b\r\n".repeat(300));
    assert_eq!(server.connect().send(&many_headers).status, 431);

    // A request cut off halfway, then a dropped connection.
    let mut cut = server.connect();
    cut.write(b"POST /echo HTTP/1.1\r\nContent-Length: 100\r\n\r\nonly part");
    drop(cut);

    let resp = server.get("/");
    assert_eq!(resp.status, 200);
    assert_eq!(server.get("/info").status, 200);
}

// SIGTERM makes the server log it and exit 0 promptly.
#[tokio::test]
async fn sigterm_exits_zero() {
    let mut server = Server::start().await;
    let start = Instant::now();
    server.signal(rustix::process::Signal::TERM);
    let status = server.exit_status(MAX_WAIT).await;
    let took = start.elapsed();
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(server.stderr().contains("got SIGTERM, exiting\n"));
    eprintln!("SIGTERM to exit: {took:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
}

// With --ignore-sigterm, SIGTERM is only logged: the server keeps serving until SIGKILL.
#[tokio::test]
async fn ignore_sigterm_runs_until_sigkill() {
    let mut server = Server::launch(Launch {
        args: &["--ignore-sigterm"],
        ..Launch::default()
    })
    .await;
    server.signal(rustix::process::Signal::TERM);
    wait_for("the SIGTERM log line", POLL, MAX_WAIT, || {
        let logged = server.stderr().contains("got SIGTERM, ignoring\n");
        async move { logged.then_some(()) }
    })
    .await
    .expect("SIGTERM logged");
    assert_eq!(server.get("/").status, 200);
    assert!(server.try_wait().is_none(), "still running");
    server.signal(rustix::process::Signal::KILL);
    let status = server.exit_status(MAX_WAIT).await;
    assert_eq!(status.signal(), Some(9), "{status}");
}

// --crash-after-ms prints `crashing now` and exits 3, or with --exit-code.
#[tokio::test]
async fn crash_after_exits_with_the_code() {
    for (args, code) in [
        (&["--crash-after-ms", "200"][..], 3),
        (&["--crash-after-ms", "200", "--exit-code", "42"][..], 42),
    ] {
        let mut server = Server::launch(Launch {
            args,
            ..Launch::default()
        })
        .await;
        let status = server.exit_status(MAX_WAIT).await;
        assert_eq!(status.code(), Some(code), "{args:?}: {status}");
        assert!(
            server.stderr().ends_with("crashing now\n"),
            "{}",
            server.stderr()
        );
    }
}

// A bad flag or PORT is a usage error (exit 2) before anything listens.
#[tokio::test]
async fn bad_arguments_exit_2() {
    let binary = test_server_binary().expect("building skiff-test-server");
    for (args, port) in [
        (&["--bogus"][..], "8080"),
        (&["--exit-code", "1"][..], "8080"),
        (&[][..], "not-a-port"),
    ] {
        let out = Command::new(&binary)
            .args(args)
            .env("PORT", port)
            .stdin(Stdio::null())
            .output()
            .expect("running skiff-test-server");
        assert_eq!(out.status.code(), Some(2), "{args:?} PORT={port}");
        assert!(out.stdout.is_empty());
    }
}

/// The layers of the single image in an OCI layout, listed.
fn layout_layers(dir: &std::path::Path) -> (Value, Vec<Vec<ListedEntry>>) {
    let blob = |digest: &str| {
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        dir.join("blobs/sha256").join(hex)
    };
    let read_json = |path: PathBuf| -> Value {
        serde_json::from_slice(&std::fs::read(&path).expect("blob")).expect("JSON blob")
    };
    let index = read_json(dir.join("index.json"));
    let manifest = read_json(blob(
        index["manifests"][0]["digest"].as_str().expect("digest"),
    ));
    let config = read_json(blob(manifest["config"]["digest"].as_str().expect("digest")));
    let layers = manifest["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| {
            assert_eq!(l["mediaType"], MEDIA_TYPE_LAYER_GZIP);
            let file = std::fs::File::open(blob(l["digest"].as_str().expect("digest")))
                .expect("layer blob");
            list_tar(flate2::read::GzDecoder::new(file)).expect("listing a layer")
        })
        .collect();
    (config, layers)
}

// The runtime-info image holds busybox and the 0755 server as root entrypoint, no resolv.conf.
#[tokio::test]
async fn runtime_info_image_holds_the_server() {
    let binary = test_server_binary().expect("building skiff-test-server");
    let size = std::fs::metadata(&binary).expect("binary").len();
    let dir = tempfile::tempdir().expect("temp dir");
    runtime_info_image()
        .expect("building the image")
        .write_oci_layout(dir.path(), "latest")
        .expect("writing the layout");
    let (config, layers) = layout_layers(dir.path());
    assert_eq!(layers.len(), 2);
    let all: Vec<&ListedEntry> = layers.iter().flatten().collect();
    let server = all
        .iter()
        .find(|e| e.path_str() == TEST_SERVER_PATH.trim_start_matches('/'))
        .expect("the test server in a layer");
    assert_eq!(
        (server.kind, server.mode, server.size),
        (EntryType::Regular, 0o755, size)
    );
    assert!(all.iter().any(|e| e.path_str() == "bin/sh"), "busybox sh");
    assert!(!all.iter().any(|e| e.path_str() == "etc/resolv.conf"));
    let c = &config["config"];
    assert_eq!(c["Entrypoint"], serde_json::json!([TEST_SERVER_PATH]));
    assert!(c.get("Cmd").is_none() && c.get("User").is_none(), "{c}");
    assert_eq!(c["ExposedPorts"], serde_json::json!({"8080/tcp": {}}));
    assert_eq!(c["Labels"][IMAGE_LABEL], "runtime-info");
}

// The busybox httpd image holds the page and starts httpd on $PORT through `sh -c`.
#[tokio::test]
async fn busybox_httpd_image_serves_www() {
    let dir = tempfile::tempdir().expect("temp dir");
    let image = busybox_httpd_image().expect("building the image");
    let www = image.layers()[1].tar_bytes().expect("www layer");
    let mut archive = tar::Archive::new(&www[..]);
    let mut index = archive
        .entries()
        .expect("entries")
        .map(|e| e.expect("entry"))
        .find(|e| e.path().expect("path").to_string_lossy() == "www/index.html")
        .expect("www/index.html");
    let mut body = String::new();
    index.read_to_string(&mut body).expect("index.html");
    assert_eq!(body, BUSYBOX_HTTPD_INDEX);
    image
        .write_oci_layout(dir.path(), "latest")
        .expect("writing the layout");
    let (config, _) = layout_layers(dir.path());
    let c = &config["config"];
    assert_eq!(c["Entrypoint"], serde_json::json!(["/bin/sh", "-c"]));
    assert_eq!(
        c["Cmd"],
        serde_json::json!(["exec httpd -f -p \"${PORT:-8080}\" -h /www"])
    );
}
