//! A real headless Chromium for one test: Debian's `chromium`, driven through
//! `chromedriver` (Debian's `chromium-driver`) over WebDriver with [`fantoccini`], for the
//! end-to-end tests of the dashboard.
//!
//! ```no_run
//! # async fn f() -> anyhow::Result<()> {
//! use skiff_test_utils::browser::{Browser, skip_without_browser};
//! if skip_without_browser("dashboard_lists_services") {
//!     return Ok(());
//! }
//! let browser = Browser::start().await?;
//! browser.goto("http://127.0.0.1:8080/ui/").await?;
//! browser.wait_for("#services tr", skiff_test_utils::MAX_WAIT).await?;
//! assert_eq!(browser.texts("#services td.name").await?, ["hello"]);
//! browser.screenshot("target/ui/services.png").await?;
//! # Ok(()) }
//! ```
//!
//! # Design
//!
//! - Everything the browser writes stays in one temporary directory owned by the
//!   [`Browser`]: the Chromium profile (`--user-data-dir`), and the `HOME`, `TMPDIR` and
//!   XDG directories of chromedriver and Chromium (Chromium puts its crash-report database
//!   and caches under `HOME`, and its singleton socket under `TMPDIR`, where a killed
//!   browser would leave it). chromedriver's output goes to `chromedriver.log` there.
//! - chromedriver starts with `--port=0`: it binds a free port itself and prints it
//!   ("started successfully on port N"), so no other process can take the port in between.
//!   It is ready once `GET /status` answers `"ready": true`, polled with a deadline.
//! - Dropping the [`Browser`] kills chromedriver and every Chromium process with SIGKILL,
//!   through pidfds, and waits (with a deadline) until they have exited. Chromium's
//!   processes are found twice: as descendants of chromedriver, and by the browser's
//!   directory in an option of their command line (`--user-data-dir=DIR/profile`, and the
//!   crash handler's `--database=DIR/home/...`: it detaches from its parent), which survives
//!   their reparenting when chromedriver dies first. This also runs when the test panics.
//!   [`Browser::close`] ends the session first, so that Chromium quits on its own.
//! - When a test panics, the directory (profile and `chromedriver.log`) is kept and its path
//!   printed, as for [`TestDaemon`](crate::TestDaemon).
//! - Every WebDriver command gives up after [`MAX_WAIT`] instead of hanging the test; page
//!   loads are bounded by the same time in chromedriver itself.
//!
//! # Limitations
//!
//! - WebDriver does not expose HTTP statuses or headers: tests check those with an HTTP
//!   client, and what a person sees with this browser.
//! - Element texts are WebDriver's rendered texts: a hidden element's text is empty.

use std::collections::BTreeSet;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use bytes::Bytes;
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{Pid, PidfdFlags, Signal};
use serde_json::{Value, json};

use crate::MAX_WAIT;

/// The Chromium binary (Debian's `chromium` package; a wrapper script that runs
/// `/usr/lib/chromium/chromium`).
pub const CHROMIUM_BIN: &str = "/usr/bin/chromium";
/// The WebDriver server, looked up in `PATH` (Debian's `chromium-driver` package).
pub const CHROMEDRIVER_BIN: &str = "chromedriver";
/// The packages that provide both.
pub const PACKAGES: &str = "chromium chromium-driver";
/// The viewport's size at start: width and height in CSS pixels (the device scale factor
/// is 1, so screenshots have this size too).
pub const WINDOW_SIZE: (u32, u32) = (1280, 800);

/// How often [`Browser::wait_for`] and the start-up checks poll.
const POLL: Duration = Duration::from_millis(50);
/// How long one `GET /status` to chromedriver may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);
/// How long dropping a [`Browser`] waits for its processes to exit after SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// Why browser tests cannot run here, or `None` when they can: they need Chromium and
/// chromedriver (`apt-get install chromium chromium-driver`).
pub fn skip_reason() -> Option<String> {
    missing(
        Path::new(CHROMIUM_BIN),
        find_in_path(CHROMEDRIVER_BIN).as_deref(),
    )
}

/// Whether a browser test should be skipped, printing why: `false` when Chromium and
/// chromedriver are installed. Under CI (`CI` set) a missing browser fails the test instead
/// (it panics), since CI installs both.
#[track_caller]
pub fn skip_without_browser(test: &str) -> bool {
    let Some(why) = skip_reason() else {
        return false;
    };
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: CI must run browser tests: {why}"
    );
    eprintln!("skipped: {test}: {why}");
    true
}

/// What is missing of `chromium` (a path) and `chromedriver` (found in `PATH`, or not).
fn missing(chromium: &Path, chromedriver: Option<&Path>) -> Option<String> {
    let chromium_missing = !chromium.is_file();
    match (chromium_missing, chromedriver.is_none()) {
        (false, false) => None,
        (true, false) => Some(format!(
            "Chromium is not installed at {} (apt-get install chromium)",
            chromium.display()
        )),
        (false, true) => Some(format!(
            "`{CHROMEDRIVER_BIN}` is not in PATH (apt-get install chromium-driver)"
        )),
        (true, true) => Some(format!(
            "Chromium and chromedriver are not installed (apt-get install {PACKAGES})"
        )),
    }
}

fn find_in_path(bin: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join(bin))
            .find(|p| p.is_file())
    })
}

/// A cookie of the current page, as the browser stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cookie {
    /// The cookie's name.
    pub name: String,
    /// Its value.
    pub value: String,
    /// Its `Path` attribute, when the browser reports one.
    pub path: Option<String>,
    /// Whether it is `Secure`.
    pub secure: bool,
    /// Whether it is `HttpOnly` (hidden from JavaScript).
    pub http_only: bool,
    /// Its `SameSite` attribute, when the browser reports one.
    pub same_site: Option<SameSite>,
}

/// A cookie's `SameSite` attribute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SameSite {
    /// `SameSite=Strict`: sent only with requests from the same site.
    Strict,
    /// `SameSite=Lax`: also sent with top-level navigations from other sites.
    Lax,
    /// `SameSite=None`: sent with cross-site requests too.
    None,
}

/// A headless Chromium driven through its own chromedriver, for one test; both are killed
/// when it is dropped.
pub struct Browser {
    /// The WebDriver session; `None` before it is open and after [`Browser::close`].
    client: Option<Client>,
    /// chromedriver, while it runs.
    driver: Option<Child>,
    /// The temporary directory holding everything below; `None` once kept or removed.
    root: Option<tempfile::TempDir>,
    /// `root`'s path, still known after `root` is kept or removed.
    dir: PathBuf,
    /// Chromium's `--user-data-dir`.
    profile: PathBuf,
    /// chromedriver's stdout and stderr.
    log: PathBuf,
    /// chromedriver's base URL, `http://127.0.0.1:PORT`.
    webdriver: String,
}

impl Browser {
    /// Starts chromedriver on a free loopback port and opens a session with a new headless
    /// Chromium ([`WINDOW_SIZE`], a fresh profile). Fails, saying which package to install,
    /// when Chromium or chromedriver is missing.
    pub async fn start() -> anyhow::Result<Browser> {
        if let Some(why) = skip_reason() {
            bail!("cannot start a browser: {why}");
        }
        let root = tempfile::Builder::new()
            .prefix("skiff-test-browser-")
            .tempdir()
            .context("creating the browser's directory")?;
        let dir = root.path().to_owned();
        let profile = dir.join("profile");
        let home = dir.join("home");
        let tmp = dir.join("tmp");
        for d in [&profile, &home, &tmp] {
            std::fs::create_dir(d).with_context(|| format!("creating {}", d.display()))?;
        }
        let log = dir.join("chromedriver.log");
        let out = std::fs::File::create(&log).context("creating chromedriver.log")?;
        let child = Command::new(CHROMEDRIVER_BIN)
            .arg("--port=0")
            .env("HOME", &home)
            .env("TMPDIR", &tmp)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("XDG_CACHE_HOME", home.join(".cache"))
            .env("XDG_DATA_HOME", home.join(".local/share"))
            .stdin(Stdio::null())
            .stdout(out.try_clone().context("chromedriver.log")?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("spawning {CHROMEDRIVER_BIN} (apt-get install {PACKAGES})"))?;
        // From here on, dropping `browser` cleans up whatever has started.
        let mut browser = Browser {
            client: None,
            driver: Some(child),
            root: Some(root),
            dir,
            profile,
            log,
            webdriver: String::new(),
        };
        let port = browser.driver_port().await?;
        browser.webdriver = format!("http://127.0.0.1:{port}");
        browser.wait_ready().await?;
        let client = browser.open_session().await?;
        browser.client = Some(client);
        let (width, height) = WINDOW_SIZE;
        browser.set_window_size(width, height).await?;
        Ok(browser)
    }

    /// Waits for chromedriver to print the port it bound.
    async fn driver_port(&mut self) -> anyhow::Result<u16> {
        const STARTED: &str = "started successfully on port ";
        let deadline = Instant::now() + MAX_WAIT;
        loop {
            let log = self.log_text();
            if let Some(port) = log.lines().find_map(|line| {
                let (_, rest) = line.split_once(STARTED)?;
                rest.trim_end_matches('.').trim().parse::<u16>().ok()
            }) {
                return Ok(port);
            }
            self.check_driver_running()?;
            if Instant::now() >= deadline {
                bail!(
                    "chromedriver printed no port within {MAX_WAIT:?}; its log:\n{}",
                    log.trim_end()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Fails with chromedriver's log when it has exited.
    fn check_driver_running(&mut self) -> anyhow::Result<()> {
        let exited = match self.driver.as_mut() {
            Some(child) => child.try_wait().context("checking on chromedriver")?,
            None => bail!("chromedriver is not running"),
        };
        if let Some(status) = exited {
            self.driver = None;
            bail!(
                "chromedriver exited ({status}); its log:\n{}",
                self.log_text().trim_end()
            );
        }
        Ok(())
    }

    /// Polls chromedriver's `GET /status` until it answers `"ready": true`.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let client: hyper_util::client::legacy::Client<HttpConnector, Empty<Bytes>> =
            hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build_http();
        let uri: http::Uri = format!("{}/status", self.webdriver)
            .parse()
            .context("the status URL")?;
        let deadline = Instant::now() + MAX_WAIT;
        let mut last;
        loop {
            let answer = tokio::time::timeout(STATUS_TIMEOUT, async {
                let resp = client.get(uri.clone()).await.context("GET /status")?;
                let status = resp.status();
                let body = resp
                    .into_body()
                    .collect()
                    .await
                    .context("reading /status")?;
                let body = body.to_bytes();
                anyhow::Ok((status, serde_json::from_slice::<Value>(&body).ok(), body))
            })
            .await;
            match answer {
                Ok(Ok((status, Some(v), _)))
                    if status.is_success() && v["value"]["ready"] == json!(true) =>
                {
                    return Ok(());
                }
                Ok(Ok((status, _, body))) => {
                    last = format!("{status}: {}", String::from_utf8_lossy(&body));
                }
                Ok(Err(e)) => last = format!("{e:#}"),
                Err(_) => last = "GET /status timed out".to_owned(),
            }
            self.check_driver_running()?;
            if Instant::now() >= deadline {
                bail!(
                    "chromedriver was not ready within {MAX_WAIT:?} (last: {last}); its log:\n{}",
                    self.log_text().trim_end()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Opens the WebDriver session, which starts Chromium.
    async fn open_session(&self) -> anyhow::Result<Client> {
        let (width, height) = WINDOW_SIZE;
        let caps = json!({
            "browserName": "chrome",
            "pageLoadStrategy": "normal",
            "timeouts": {
                "pageLoad": MAX_WAIT.as_millis(),
                "script": MAX_WAIT.as_millis(),
                "implicit": 0,
            },
            "goog:chromeOptions": {
                "binary": CHROMIUM_BIN,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", self.profile.display()),
                    "--no-first-run",
                    "--no-default-browser-check",
                ],
            },
        });
        let Value::Object(caps) = caps else {
            unreachable!("a JSON object literal");
        };
        let mut builder = ClientBuilder::new(HttpConnector::new());
        builder.capabilities(caps);
        let connect = builder.connect(&self.webdriver);
        match tokio::time::timeout(MAX_WAIT, connect).await {
            Ok(Ok(client)) => Ok(client),
            Ok(Err(e)) => Err(anyhow!(e)),
            Err(_) => Err(anyhow!("no session within {MAX_WAIT:?}")),
        }
        .with_context(|| {
            format!(
                "opening a WebDriver session with headless Chromium; chromedriver's log:\n{}",
                self.log_text().trim_end()
            )
        })
    }

    /// The WebDriver client, for what the helpers here do not cover.
    pub fn client(&self) -> &Client {
        self.client
            .as_ref()
            .expect("the session is open from start until close")
    }

    /// The browser's temporary directory: the profile, the `HOME` and `TMPDIR` of
    /// chromedriver and Chromium, and `chromedriver.log`. Every Chromium process of this
    /// browser has a path below it in its command line.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Chromium's profile directory (`--user-data-dir`), below [`dir`](Self::dir).
    pub fn profile_dir(&self) -> &Path {
        &self.profile
    }

    /// chromedriver's process id, while it runs.
    pub fn chromedriver_pid(&self) -> Option<u32> {
        self.driver.as_ref().map(Child::id)
    }

    /// chromedriver's base URL (`http://127.0.0.1:PORT`).
    pub fn webdriver_url(&self) -> &str {
        &self.webdriver
    }

    /// chromedriver's output so far (Chromium's wrapper script writes there too).
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Loads `url` and waits for its `load` event.
    pub async fn goto(&self, url: &str) -> anyhow::Result<()> {
        within(format!("loading {url}"), self.client().goto(url)).await
    }

    /// The URL of the current page.
    pub async fn current_url(&self) -> anyhow::Result<String> {
        within("getting the URL", self.client().current_url())
            .await
            .map(String::from)
    }

    /// The title of the current page.
    pub async fn title(&self) -> anyhow::Result<String> {
        within("getting the title", self.client().title()).await
    }

    /// The current page's DOM, serialized as HTML (what scripts made of it, not what the
    /// server sent).
    pub async fn page_source(&self) -> anyhow::Result<String> {
        within("getting the page source", self.client().source()).await
    }

    /// The rendered text of the first element matching the CSS selector `css`.
    pub async fn text(&self, css: &str) -> anyhow::Result<String> {
        let element = self.find(css).await?;
        within(format!("reading the text of `{css}`"), element.text()).await
    }

    /// The rendered texts of every element matching `css`, in document order; empty when
    /// none matches.
    pub async fn texts(&self, css: &str) -> anyhow::Result<Vec<String>> {
        let elements = within(
            format!("finding `{css}`"),
            self.client().find_all(Locator::Css(css)),
        )
        .await?;
        let mut texts = Vec::with_capacity(elements.len());
        for element in elements {
            texts.push(within(format!("reading the text of `{css}`"), element.text()).await?);
        }
        Ok(texts)
    }

    /// The first element matching `css`, or an error naming the selector and the page.
    pub async fn find(&self, css: &str) -> anyhow::Result<Element> {
        match within(
            format!("finding `{css}`"),
            self.client().find(Locator::Css(css)),
        )
        .await
        {
            Ok(element) => Ok(element),
            Err(e) => Err(e.context(format!("no element matches `{css}` {}", self.page().await))),
        }
    }

    /// Polls until an element matches `css`, for at most `max`; returns the first one. The
    /// error on timeout names the selector, the page's URL and title.
    pub async fn wait_for(&self, css: &str, max: Duration) -> anyhow::Result<Element> {
        let deadline = Instant::now() + max;
        let mut last_error;
        loop {
            // Errors while a page loads or navigates are retried until the deadline.
            match within(
                format!("finding `{css}`"),
                self.client().find_all(Locator::Css(css)),
            )
            .await
            {
                Ok(elements) => {
                    if let Some(element) = elements.into_iter().next() {
                        return Ok(element);
                    }
                    last_error = None;
                }
                Err(e) => last_error = Some(e),
            }
            if Instant::now() >= deadline {
                let last = last_error
                    .map(|e| format!(" (last error: {e:#})"))
                    .unwrap_or_default();
                bail!(
                    "timed out after {max:?} waiting for an element matching `{css}` {}{last}",
                    self.page().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Polls until the text of an element matching `css` contains `expected`, for at most
    /// `max`; returns that text. The error on timeout names the selector, the texts seen
    /// last, and the page.
    pub async fn wait_for_text(
        &self,
        css: &str,
        expected: &str,
        max: Duration,
    ) -> anyhow::Result<String> {
        let deadline = Instant::now() + max;
        let mut seen;
        loop {
            match self.texts(css).await {
                Ok(texts) => {
                    if let Some(text) = texts.iter().find(|t| t.contains(expected)) {
                        return Ok(text.clone());
                    }
                    seen = texts;
                }
                Err(e) => seen = vec![format!("<{e:#}>")],
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {max:?} waiting for `{css}` to show {expected:?} (texts: \
                     {seen:?}) {}",
                    self.page().await
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Clicks the first element matching `css`.
    pub async fn click(&self, css: &str) -> anyhow::Result<()> {
        let element = self.find(css).await?;
        within(format!("clicking `{css}`"), element.click()).await
    }

    /// Replaces the value of the first input matching `css` with `text`, as typed.
    pub async fn fill(&self, css: &str, text: &str) -> anyhow::Result<()> {
        let element = self.find(css).await?;
        within(format!("clearing `{css}`"), element.clear()).await?;
        within(format!("typing into `{css}`"), element.send_keys(text)).await
    }

    /// The cookies the browser would send to the current page, `HttpOnly` ones included.
    pub async fn cookies(&self) -> anyhow::Result<Vec<Cookie>> {
        let cookies = within("getting the cookies", self.client().get_all_cookies()).await?;
        Ok(cookies
            .into_iter()
            .map(|c| Cookie {
                name: c.name().to_owned(),
                value: c.value().to_owned(),
                path: c.path().map(str::to_owned),
                secure: c.secure().unwrap_or(false),
                http_only: c.http_only().unwrap_or(false),
                same_site: c.same_site().map(|s| {
                    if s.is_strict() {
                        SameSite::Strict
                    } else if s.is_lax() {
                        SameSite::Lax
                    } else {
                        SameSite::None
                    }
                }),
            })
            .collect())
    }

    /// Resizes the window so that the page's viewport, and so the screenshots, are `width` ×
    /// `height` CSS pixels. (Headless Chromium still counts a toolbar in the window's size:
    /// the window is made larger by what the viewport lacks.)
    pub async fn set_window_size(&self, width: u32, height: u32) -> anyhow::Result<()> {
        let what = || format!("resizing the viewport to {width}x{height}");
        within(what(), self.client().set_window_size(width, height)).await?;
        let (inner_width, inner_height) = self.viewport().await.with_context(what)?;
        if (inner_width, inner_height) == (width, height) {
            return Ok(());
        }
        let outer = |want: u32, got: u32| (2 * want).saturating_sub(got);
        within(
            what(),
            self.client()
                .set_window_size(outer(width, inner_width), outer(height, inner_height)),
        )
        .await?;
        let viewport = self.viewport().await.with_context(what)?;
        if viewport != (width, height) {
            bail!(
                "{}: the viewport is {}x{} after resizing the window",
                what(),
                viewport.0,
                viewport.1
            );
        }
        Ok(())
    }

    /// The viewport's size in CSS pixels (`innerWidth`, `innerHeight`).
    async fn viewport(&self) -> anyhow::Result<(u32, u32)> {
        let size = self
            .execute("return [window.innerWidth, window.innerHeight];")
            .await?;
        let dimension = |i: usize| {
            size[i]
                .as_u64()
                .and_then(|v| u32::try_from(v).ok())
                .with_context(|| format!("the page reported its viewport as {size}"))
        };
        Ok((dimension(0)?, dimension(1)?))
    }

    /// Writes a PNG screenshot of the viewport to `path`, creating its parent directories.
    pub async fn screenshot(&self, path: impl AsRef<Path>) -> anyhow::Result<()> {
        let path = path.as_ref();
        let png = within("taking a screenshot", self.client().screenshot()).await?;
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("creating {}", parent.display()))?;
        }
        std::fs::write(path, png).with_context(|| format!("writing {}", path.display()))
    }

    /// Runs `js` as the body of a function in the page and returns what it returns
    /// (`return document.title;`), as JSON.
    pub async fn execute(&self, js: &str) -> anyhow::Result<Value> {
        within("running a script", self.client().execute(js, Vec::new())).await
    }

    /// Ends the session, so that Chromium quits on its own, then stops chromedriver and
    /// removes the directory; dropping does the same with SIGKILL. Fails if the session
    /// could not be ended or a process is left.
    pub async fn close(mut self) -> anyhow::Result<()> {
        if let Some(client) = self.client.take() {
            within("ending the WebDriver session", client.close()).await?;
        }
        let left = self.kill_all();
        if !left.is_empty() {
            bail!("processes of the browser still running after SIGKILL: {left:?}");
        }
        if let Some(root) = self.root.take() {
            root.close().context("removing the browser's directory")?;
        }
        Ok(())
    }

    /// Where the browser is, for error messages: `on URL (title "…")`.
    async fn page(&self) -> String {
        let Some(client) = &self.client else {
            return "(no session)".to_owned();
        };
        let when = Duration::from_secs(5);
        let url = tokio::time::timeout(when, client.current_url()).await;
        let title = tokio::time::timeout(when, client.title()).await;
        match (url, title) {
            (Ok(Ok(url)), Ok(Ok(title))) => format!("on {url} (title {title:?})"),
            (Ok(Ok(url)), _) => format!("on {url}"),
            _ => "(the page's URL is unknown)".to_owned(),
        }
    }

    /// Kills chromedriver and every Chromium process of this browser, and waits for them to
    /// exit; returns the pids still running after [`KILL_WAIT`].
    fn kill_all(&mut self) -> Vec<i32> {
        let deadline = Instant::now() + KILL_WAIT;
        loop {
            let mut pids: BTreeSet<i32> = processes_with_arg_containing(&self.dir);
            if let Some(child) = &self.driver {
                let driver = child.id() as i32;
                pids.extend(descendants(driver));
                pids.insert(driver);
            }
            if pids.is_empty() {
                return Vec::new();
            }
            // A pidfd names one process even if its pid is reused after it exits.
            let fds: Vec<(i32, OwnedFd)> = pids
                .into_iter()
                .filter_map(|pid| {
                    let fd = rustix::process::pidfd_open(Pid::from_raw(pid)?, PidfdFlags::empty())
                        .ok()?;
                    rustix::process::pidfd_send_signal(&fd, Signal::KILL).ok()?;
                    Some((pid, fd))
                })
                .collect();
            let mut left = wait_exited(&fds, deadline);
            if let Some(mut child) = self.driver.take() {
                // Killed above; this reaps it.
                let _ = child.kill();
                let _ = child.wait();
            }
            // Chromium may have started a process since the scan: scan again until none is
            // left.
            if Instant::now() >= deadline {
                // Still there after SIGKILL: something is very wrong; say so and give up.
                left.extend(processes_with_arg_containing(&self.dir));
                left.sort_unstable();
                left.dedup();
                return left;
            }
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // The session's task cannot run from here; chromedriver goes with the rest.
        self.client = None;
        let left = self.kill_all();
        if !left.is_empty() {
            eprintln!("the browser's processes {left:?} are still running after SIGKILL");
        }
        if std::thread::panicking()
            && let Some(root) = self.root.take()
        {
            let kept = root.keep();
            eprintln!(
                "test failed: the browser's profile and chromedriver.log kept in {}",
                kept.display()
            );
        }
    }
}

/// Runs a WebDriver command, failing with `what` if it fails or takes longer than
/// [`MAX_WAIT`].
async fn within<T, E>(
    what: impl Into<String>,
    fut: impl Future<Output = Result<T, E>>,
) -> anyhow::Result<T>
where
    E: std::error::Error + Send + Sync + 'static,
{
    let what = what.into();
    match tokio::time::timeout(MAX_WAIT, fut).await {
        Ok(result) => result.with_context(|| what),
        Err(_) => Err(anyhow!("{what}: timed out after {MAX_WAIT:?}")),
    }
}

/// The processes with a command-line option (an argument starting with `--`) that contains
/// a path below `path`, such as Chromium's `--user-data-dir=PATH/profile` and its crash handler's
/// `--database=PATH/home/...` (zombies have no command line).
fn processes_with_arg_containing(path: &Path) -> BTreeSet<i32> {
    // `PATH/`, so that a directory whose name merely starts with `path`'s does not match.
    let mut needle = path.as_os_str().as_encoded_bytes().to_vec();
    needle.push(b'/');
    let needle = needle.as_slice();
    let contains = |arg: &[u8]| arg.windows(needle.len()).any(|w| w == needle);
    proc_pids()
        .filter(|&pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                cmdline
                    .split(|&b| b == 0)
                    .any(|arg| arg.starts_with(b"--") && contains(arg))
            })
        })
        .collect()
}

/// The processes below `pid` in the process tree.
fn descendants(pid: i32) -> BTreeSet<i32> {
    let parents: Vec<(i32, i32)> = proc_pids()
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            // `pid (comm) state ppid ...`; comm may hold spaces and parentheses.
            let (_, rest) = stat.rsplit_once(") ")?;
            let ppid = rest.split_whitespace().nth(1)?.parse().ok()?;
            Some((p, ppid))
        })
        .collect();
    let mut found = BTreeSet::new();
    let mut frontier = vec![pid];
    while let Some(parent) = frontier.pop() {
        for &(child, ppid) in &parents {
            if ppid == parent && found.insert(child) {
                frontier.push(child);
            }
        }
    }
    found
}

/// Every pid in `/proc`.
fn proc_pids() -> impl Iterator<Item = i32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
}

/// Waits until every process of `fds` has exited (its pidfd turns readable), until
/// `deadline`; returns the pids of those still running.
fn wait_exited(fds: &[(i32, OwnedFd)], deadline: Instant) -> Vec<i32> {
    loop {
        let mut polled: Vec<PollFd<'_>> = fds
            .iter()
            .map(|(_, fd)| PollFd::new(fd, PollFlags::IN))
            .collect();
        let remaining = deadline.saturating_duration_since(Instant::now());
        let timeout = Timespec::try_from(remaining).unwrap_or(Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        });
        match rustix::event::poll(&mut polled, Some(&timeout)) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return fds.iter().map(|(pid, _)| *pid).collect(),
        }
        let running: Vec<i32> = fds
            .iter()
            .zip(&polled)
            .filter(|(_, p)| !p.revents().contains(PollFlags::IN))
            .map(|((pid, _), _)| *pid)
            .collect();
        if running.is_empty() || Instant::now() >= deadline {
            return running;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_names_the_packages() {
        let none = Path::new("/nonexistent/chromium");
        let driver = Path::new("/usr/bin/chromedriver");
        assert_eq!(
            missing(none, None).as_deref(),
            Some(
                "Chromium and chromedriver are not installed \
                 (apt-get install chromium chromium-driver)"
            )
        );
        let chromium = missing(none, Some(driver)).expect("missing");
        assert!(chromium.contains("apt-get install chromium)"), "{chromium}");
        let here = std::env::current_exe().expect("the test binary");
        let chromedriver = missing(&here, None).expect("missing");
        assert!(
            chromedriver.contains("apt-get install chromium-driver"),
            "{chromedriver}"
        );
        assert_eq!(missing(&here, Some(driver)), None);
    }

    #[test]
    fn descendants_of_this_process_include_a_child() {
        // `cat` on an open pipe lives until it is killed: no timed child.
        let mut child = Command::new("cat")
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("spawning cat");
        let me = std::process::id() as i32;
        assert!(descendants(me).contains(&(child.id() as i32)));
        child.kill().expect("killing cat");
        child.wait().expect("reaping cat");
    }
}
