//! Proves that `skiff_test_utils::browser` drives a real headless Chromium: a page served
//! here on loopback is loaded, text that its JavaScript sets is waited for and read, its
//! `HttpOnly; SameSite=Strict` cookie is seen with those attributes (and hidden from
//! scripts), a screenshot is a PNG of the viewport's size, and once the browser is dropped
//! (or closed, or dropped by a panicking test) no chromedriver or Chromium process is left.
//!
//! Without Chromium the test reports itself skipped, except under CI (`CI` set), where it
//! fails: install it with `apt-get install chromium chromium-driver`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use skiff_test_utils::MAX_WAIT;
use skiff_test_utils::browser::{Browser, SameSite, WINDOW_SIZE, skip_without_browser};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// The page: static items, and a greeting that a script fills in after a moment (so that
/// only waiting finds it).
const PAGE: &str = r#"<!doctype html>
<html>
<head><meta charset="utf-8"><title>skiff browser self-test</title></head>
<body style="background: #f4f6f8; font: 24px sans-serif">
<h1>Browser self-test</h1>
<ul><li class="item">one</li><li class="item">two</li></ul>
<p id="greeting">waiting for JavaScript</p>
<script>
setTimeout(() => {
  const p = document.getElementById("greeting");
  p.textContent = "Hello from JavaScript";
  p.className = "ready";
}, 200);
</script>
</body>
</html>
"#;

/// Serves [`PAGE`] at `/` with a session cookie, and 404 for anything else, on a free
/// loopback port until the test ends.
async fn serve_page() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("binding");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            // Chromium opens spare connections that never send a request: one task each.
            tokio::spawn(answer(stream));
        }
    });
    addr
}

/// Reads one request and answers it, then closes the connection.
async fn answer(mut stream: TcpStream) {
    let mut request = Vec::new();
    let mut buf = [0u8; 4096];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    let request = String::from_utf8_lossy(&request);
    let path = request.split_whitespace().nth(1).unwrap_or_default();
    let response = if path == "/" {
        format!(
            "HTTP/1.1 200 OK\r\n\
             Content-Type: text/html; charset=utf-8\r\n\
             Set-Cookie: skiff_session=s3cret; Path=/; HttpOnly; SameSite=Strict\r\n\
             Content-Length: {}\r\n\
             Connection: close\r\n\r\n{PAGE}",
            PAGE.len()
        )
    } else {
        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
    };
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// The width and height in a PNG's IHDR chunk, after checking the PNG signature.
fn png_size(png: &[u8]) -> (u32, u32) {
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n"),
        "not a PNG: {:02x?}",
        &png[..png.len().min(8)]
    );
    assert_eq!(&png[12..16], b"IHDR", "the first chunk is IHDR");
    let be = |at: usize| u32::from_be_bytes(png[at..at + 4].try_into().expect("4 bytes"));
    (be(16), be(20))
}

/// Whether `pgrep -f` finds a process whose command line contains `path`.
fn pgrep(path: &Path) -> Option<String> {
    let out = Command::new("pgrep")
        .arg("-af")
        .arg(path)
        .output()
        .expect("running pgrep");
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Where the screenshot goes: under Cargo's directory for integration tests' files, where a
/// developer can look at it after the run.
fn screenshot_path() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("browser/self-test.png")
}

#[tokio::test]
async fn browser_loads_a_page_reads_script_text_and_cookies_then_leaves_nothing() {
    if skip_without_browser("browser_loads_a_page_reads_script_text_and_cookies") {
        return;
    }
    let started = Instant::now();
    let addr = serve_page().await;
    let browser = Browser::start().await.expect("starting the browser");
    let dir = browser.dir().to_owned();
    let profile = browser.profile_dir().to_owned();
    assert!(profile.starts_with(&dir));
    let driver = browser.chromedriver_pid().expect("chromedriver runs");
    assert!(
        pgrep(&profile).is_some(),
        "Chromium runs with the profile {}",
        profile.display()
    );
    eprintln!("browser started in {:?}", started.elapsed());

    let url = format!("http://{addr}/");
    browser.goto(&url).await.expect("loading the page");
    assert_eq!(browser.current_url().await.expect("URL"), url);
    assert_eq!(
        browser.title().await.expect("title"),
        "skiff browser self-test"
    );
    assert_eq!(browser.texts(".item").await.expect("items"), ["one", "two"]);
    assert!(browser.texts(".missing").await.expect("none").is_empty());

    // The script's text shows up only after it runs: waiting finds it.
    browser
        .wait_for("#greeting.ready", MAX_WAIT)
        .await
        .expect("the script's text");
    assert_eq!(
        browser.text("#greeting").await.expect("greeting"),
        "Hello from JavaScript"
    );
    assert!(
        browser
            .page_source()
            .await
            .expect("source")
            .contains(r#"<p id="greeting" class="ready">Hello from JavaScript</p>"#),
        "the source is the DOM as the script left it"
    );

    // A selector that never matches fails with the selector and the page in the error.
    let err = browser
        .wait_for("#never", Duration::from_millis(300))
        .await
        .expect_err("nothing matches #never");
    let err = format!("{err:#}");
    assert!(
        err.contains("`#never`") && err.contains(&url) && err.contains("skiff browser self-test"),
        "{err}"
    );
    let err = format!(
        "{:#}",
        browser.text("#never").await.expect_err("no element")
    );
    assert!(err.contains("`#never`") && err.contains(&url), "{err}");

    // The cookie is there, HttpOnly and SameSite=Strict, and scripts do not see it.
    let cookies = browser.cookies().await.expect("cookies");
    let session = cookies
        .iter()
        .find(|c| c.name == "skiff_session")
        .unwrap_or_else(|| panic!("no skiff_session cookie in {cookies:?}"));
    assert_eq!(session.value, "s3cret");
    assert!(session.http_only, "{session:?}");
    assert_eq!(session.same_site, Some(SameSite::Strict), "{session:?}");
    assert_eq!(session.path.as_deref(), Some("/"));
    assert!(!session.secure, "{session:?}");
    let visible = browser
        .execute("return document.cookie;")
        .await
        .expect("script");
    assert_eq!(visible, "", "an HttpOnly cookie is hidden from scripts");

    // The screenshot is a PNG of the window's size.
    let shot = screenshot_path();
    let _ = std::fs::remove_file(&shot);
    browser.screenshot(&shot).await.expect("screenshot");
    let png = std::fs::read(&shot).expect("reading the screenshot");
    assert_eq!(png_size(&png), WINDOW_SIZE, "{}", shot.display());

    // A resized window gives screenshots of the new size.
    browser.set_window_size(800, 600).await.expect("resizing");
    let small = shot.with_file_name("self-test-800.png");
    browser.screenshot(&small).await.expect("screenshot");
    let png = std::fs::read(&small).expect("reading the screenshot");
    assert_eq!(png_size(&png), (800, 600), "{}", small.display());

    // Dropped, the browser leaves no process and no directory behind: nothing runs with
    // the profile (Chromium) or anything else below the browser's directory (its crash
    // handler) in its command line, and chromedriver is gone.
    let dropped = Instant::now();
    drop(browser);
    eprintln!("browser dropped in {:?}", dropped.elapsed());
    if let Some(left) = pgrep(&dir) {
        panic!("processes left after drop:\n{left}");
    }
    assert!(
        !Path::new(&format!("/proc/{driver}")).exists(),
        "chromedriver ({driver}) is gone"
    );
    assert!(!dir.exists(), "{} is removed", dir.display());
    eprintln!("whole test took {:?}", started.elapsed());
}

/// `close` ends the session, so Chromium quits without being killed, and leaves nothing.
#[tokio::test]
async fn browser_close_quits_chromium() {
    if skip_without_browser("browser_close_quits_chromium") {
        return;
    }
    let browser = Browser::start().await.expect("starting the browser");
    let dir = browser.dir().to_owned();
    browser.goto("about:blank").await.expect("about:blank");
    let closing = Instant::now();
    browser.close().await.expect("closing");
    eprintln!("browser closed in {:?}", closing.elapsed());
    if let Some(left) = pgrep(&dir) {
        panic!("processes left after close:\n{left}");
    }
    assert!(!dir.exists(), "{} is removed", dir.display());
}

/// A test that panics still kills the browser; its directory is kept for the evidence.
#[tokio::test]
async fn browser_dropped_by_a_panic_leaves_no_process() {
    if skip_without_browser("browser_dropped_by_a_panic_leaves_no_process") {
        return;
    }
    let (dir_tx, dir_rx) = tokio::sync::oneshot::channel();
    let failing = tokio::spawn(async move {
        let browser = Browser::start().await.expect("starting the browser");
        browser.goto("about:blank").await.expect("about:blank");
        dir_tx
            .send(browser.dir().to_owned())
            .expect("sending the directory");
        panic!("a test failing on purpose, with a browser open");
    });
    let err = failing.await.expect_err("the task panicked");
    assert!(err.is_panic(), "{err}");
    let dir = dir_rx.await.expect("the browser started");
    if let Some(left) = pgrep(&dir) {
        panic!("processes left after a panic:\n{left}");
    }
    assert!(
        dir.join("chromedriver.log").is_file(),
        "{} is kept after a panic",
        dir.display()
    );
    std::fs::remove_dir_all(&dir).expect("removing the kept directory");
}
