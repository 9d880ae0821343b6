//! The dashboard in a real headless Chromium: it logs in with the one-time URL `skiff
//! dashboard` prints, opens the executive, on-call and debug views over real Services and
//! traffic, and checks that their figures match the API's. Screenshots of each view go to
//! `$CARGO_TARGET_TMPDIR/dashboard/` (and to `docs/` with `SKIFF_DOCS_SCREENSHOTS=1`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use skiff_test_utils::browser::{Browser, SameSite, skip_without_browser};
use skiff_test_utils::{MAX_WAIT, TestDaemon, wait_for};

use crate::serving::{host, service};
use crate::{apply, assert_code, registry_with_info_image, skip_without_runc, stdout};

/// Requests answered and 5xx of a Service over the last hour, from the metrics API.
async fn api_counts(d: &TestDaemon, name: &str) -> (u64, u64) {
    let m = d
        .client()
        .service_metrics("default", name, "1h", None)
        .await
        .expect("metrics API");
    m.points
        .iter()
        .fold((0, 0), |(n, e), p| (n + p.requests, e + p.errors))
}

fn shots_dir() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("dashboard")
}

/// A screenshot under the target dir, and of the views the README shows into `docs/` when
/// asked.
async fn shoot(b: &Browser, name: &str, in_docs: bool) {
    let path = shots_dir().join(format!("{name}.png"));
    b.screenshot(&path).await.expect("screenshot");
    if in_docs && std::env::var_os("SKIFF_DOCS_SCREENSHOTS").is_some() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
        std::fs::create_dir_all(&docs).expect("docs/");
        std::fs::copy(&path, docs.join(format!("dashboard-{name}.png"))).expect("copy to docs/");
    }
}

/// The success rate as the dashboard writes it.
fn success(errors: u64, total: u64) -> String {
    skiff_ui::chart::format_value(
        1.0 - errors as f64 / total as f64,
        skiff_ui::chart::Unit::Percent,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_what_the_api_says() {
    if skip_without_runc() || skip_without_browser("the_dashboard_shows_what_the_api_says") {
        return;
    }
    let (_reg, d, image) = registry_with_info_image(&[]).await;
    let shop = service("shop", &image, "", "timeoutSeconds: 1", "shop", "").replacen(
        "metadata:\n  name: shop\n",
        "metadata:\n  name: shop\n  annotations:\n    skiff.dev/slo-availability: \"99.9\"\n    skiff.dev/slo-latency: \"300ms@95\"\n    skiff.dev/slo-period: 1h\n    skiff.dev/budget: \"5/day\"\n",
        1,
    );
    apply(&d, &shop);
    apply(&d, &service("api", &image, "", "", "api", ""));
    crate::serving::wait_service_ready(&d, "shop").await;
    crate::serving::wait_service_ready(&d, "api").await;

    // Good requests to both, then 504s (over timeoutSeconds) to shop until its page fires.
    let http = crate::http();
    let (mut api_sent, mut shop_sent) = (0u64, 0u64);
    for _ in 0..30 {
        for (svc, n) in [("api", &mut api_sent), ("shop", &mut shop_sent)] {
            let r = crate::serving::get(&http, &d, &host(svc), "/info").await;
            assert_eq!(r.status, 200, "{}", r.body);
            *n += 1;
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let client = d.client();
    let burning = crate::observability::burn(&d, "shop", &stop);
    let alert =
        crate::observability::wait_for_page(&d, "shop", "AvailabilityBurn", MAX_WAIT * 2).await;
    stop.store(true, Ordering::SeqCst);
    let mut bad_sent = 0;
    for task in burning {
        bad_sent += task.await.expect("load task");
    }
    shop_sent += bad_sent;
    // Every request in the history (it flushes every 10 s).
    let (shop_n, shop_e, api_n, api_e) = wait_for(
        "the history",
        Duration::from_millis(500),
        MAX_WAIT,
        || async {
            let (sn, se) = api_counts(&d, "shop").await;
            let (an, ae) = api_counts(&d, "api").await;
            (sn == shop_sent && an == api_sent).then_some((sn, se, an, ae))
        },
    )
    .await
    .expect("the history has every request");
    assert_eq!(shop_e, bad_sent, "every 504 is a 5xx");
    assert_eq!(api_e, 0);

    // Log in with the one-time URL.
    let o = d.cli(&["dashboard"]);
    assert_code(&o, 0);
    let url = stdout(&o).trim().to_owned();
    assert!(
        url.starts_with(&format!("{}/ui/login?code=", d.api())),
        "{url}"
    );
    let b = Browser::start().await.expect("browser");
    b.goto(&url).await.expect("login");
    assert_eq!(
        b.current_url().await.expect("url"),
        format!("{}/ui/", d.api()),
        "redirected, no code in the URL"
    );
    let cookies = b.cookies().await.expect("cookies");
    let session = cookies
        .iter()
        .find(|c| c.name == "skiff_session")
        .expect("a session cookie");
    assert!(session.http_only, "{session:?}");
    assert_eq!(session.same_site, Some(SameSite::Strict), "{session:?}");

    // Executive: the success rate and the failing Services match the API.
    b.wait_for("[data-card=success] .value", MAX_WAIT)
        .await
        .expect("executive view");
    let total = shop_n + api_n;
    let errors = shop_e + api_e;
    assert_eq!(
        b.text("[data-card=success] .value").await.expect("success"),
        success(errors, total)
    );
    assert_eq!(
        b.text("#failing tr[data-key='default/shop'] td[data-col='1']")
            .await
            .expect("failing shop"),
        shop_e.to_string()
    );
    assert_eq!(
        b.text("#failing tr[data-key='default/shop'] td[data-col='2']")
            .await
            .expect("shop requests"),
        shop_n.to_string()
    );
    let budgets = b.texts("#budgets tbody tr").await.expect("budgets");
    assert!(
        budgets
            .iter()
            .any(|r| r.contains("shop") && r.contains("availability: 99.9%")),
        "{budgets:?}"
    );
    assert!(
        budgets.iter().any(|r| r.contains("cost: $5.00/day")),
        "{budgets:?}"
    );
    assert!(b.texts("#cost svg").await.is_ok());
    shoot(&b, "executive", true).await;

    // On-call: the alert, the SLIs, instances and deployments.
    b.goto(&format!("{}/ui/oncall", d.api()))
        .await
        .expect("on-call");
    let key = format!("default/shop/{}/page", alert.name);
    let row = b
        .text(&format!("#alerts tr[data-key='{key}']"))
        .await
        .expect("the alert's row");
    assert!(
        row.contains("AvailabilityBurn") && row.contains("page"),
        "{row}"
    );
    let scale = client.scale("default", "shop").await.expect("scale API");
    let (ready, desired) = scale
        .revisions
        .iter()
        .fold((0, 0), |(r, d), x| (r + x.ready, d + x.desired));
    let shown = b
        .text("#slis tr[data-key='default/shop'] td[data-col='6']")
        .await
        .expect("ready/desired");
    assert_eq!(shown, format!("{ready}/{desired}"));
    let deployments = b.texts("#deployments tbody tr").await.expect("deployments");
    assert!(
        deployments.iter().any(|r| r.contains("shop-00001")),
        "{deployments:?}"
    );
    assert!(
        deployments.iter().any(|r| r.contains("api-00001")),
        "{deployments:?}"
    );
    shoot(&b, "oncall", true).await;

    // Debug view of shop: instances as the API lists them, start-up phases, the failed
    // requests with their ids, and a request's trail.
    b.click("#slis tr[data-key='default/shop'] td[data-col='0'] a")
        .await
        .expect("to debug");
    b.wait_for("#instances", MAX_WAIT)
        .await
        .expect("debug view");
    let instances = client
        .instances("default", "shop")
        .await
        .expect("instances API");
    let rows = b
        .texts("#instances tbody tr:not(.empty)")
        .await
        .unwrap_or_default();
    assert_eq!(rows.len(), instances.len(), "{rows:?}");
    for i in &instances {
        let id: String = i.id.chars().take(12).collect();
        assert!(rows.iter().any(|r| r.contains(&id)), "{id} in {rows:?}");
    }
    let phases = b.texts("#startup tbody tr").await.expect("start-up table");
    assert!(phases.iter().any(|r| r.starts_with("total")), "{phases:?}");
    let slow = b.texts("#slow tbody tr").await.expect("slow and failed");
    assert!(slow.iter().any(|r| r.contains("504")), "{slow:?}");
    shoot(&b, "debug", true).await;
    b.click("#slow tbody tr td[data-col='1'] a")
        .await
        .expect("a request's trail");
    b.wait_for("[data-card=status]", MAX_WAIT)
        .await
        .expect("trail");
    assert_eq!(
        b.text("[data-card=status] .value").await.expect("status"),
        "504"
    );

    // Live updates: the page refreshes itself within the 5 s period.
    b.goto(&format!("{}/ui/oncall", d.api()))
        .await
        .expect("on-call");
    let before = b.text("#updated").await.expect("updated");
    wait_for(
        "a live update",
        Duration::from_millis(250),
        Duration::from_secs(15),
        || {
            let b = &b;
            let before = before.clone();
            async move { b.text("#updated").await.ok().filter(|t| *t != before) }
        },
    )
    .await
    .expect("the page updates itself");

    // Readable on a phone: nothing wider than the screen but the tables' own scrollers.
    b.set_window_size(390, 844).await.expect("phone width");
    b.goto(&format!("{}/ui/oncall", d.api()))
        .await
        .expect("on-call");
    let overflow = b
        .execute("return document.documentElement.scrollWidth - window.innerWidth")
        .await
        .expect("layout");
    assert!(
        overflow.as_i64().unwrap_or(1) <= 0,
        "page overflows a phone by {overflow}px"
    );
    shoot(&b, "oncall-phone", false).await;
    b.set_window_size(1280, 800).await.expect("desktop width");

    // The same session's cookie, outside the browser: the tables are in the HTML itself
    // (no JavaScript needed), the page is light, and other origins are refused.
    let cookie = format!("skiff_session={}", session.value);
    let http = crate::http();
    let page = |path: &str| {
        http.get(format!("{}{path}", d.api()))
            .header("cookie", &cookie)
    };
    let html = page("/ui/oncall")
        .send()
        .await
        .expect("oncall")
        .text()
        .await
        .expect("html");
    assert!(
        html.contains("data-key=\"default/shop\""),
        "server-rendered rows"
    );
    let mut weight = html.len();
    for asset in ["/ui/assets/style.css", "/ui/assets/live.js"] {
        weight += page(asset)
            .send()
            .await
            .expect("asset")
            .bytes()
            .await
            .expect("asset")
            .len();
    }
    for path in ["/ui/", "/ui/services/default/shop"] {
        weight = weight.max(
            page(path)
                .send()
                .await
                .expect("page")
                .bytes()
                .await
                .expect("page")
                .len(),
        );
    }
    assert!(weight < 300 * 1024, "page weight {weight} bytes");
    let r = http
        .get(format!("{}/ui/oncall", d.api()))
        .send()
        .await
        .expect("no session");
    assert_eq!(r.status(), 401);
    assert!(
        r.text()
            .await
            .unwrap_or_default()
            .contains("skiff dashboard")
    );
    // A cookie a browser sends from another site, or from a Service's page on *.localhost
    // (the same site as localhost), is refused.
    for from in ["cross-site", "same-site"] {
        let r = page("/ui/")
            .header("sec-fetch-site", from)
            .send()
            .await
            .expect("from another origin");
        assert_eq!(r.status(), 403, "a cookie sent {from} is refused");
    }
    let r = http
        .post(format!("{}/ui/logout", d.api()))
        .header("cookie", &cookie)
        .header("origin", "http://evil.example")
        .send()
        .await
        .expect("cross-origin logout");
    assert_eq!(
        r.status(),
        403,
        "a state change from another origin is refused"
    );
    assert_eq!(page("/ui/").send().await.expect("still in").status(), 200);

    // The code works once: the same URL again is refused, and says why.
    b.goto(&url).await.expect("reuse");
    let text = b.text("main").await.expect("login page");
    assert!(text.contains("already used"), "{text}");
    // The code is not in the daemon's log.
    let code = url.rsplit('=').next().unwrap_or_default();
    assert!(!d.log_text().contains(code), "the login code is logged");
    eprintln!(
        "dashboard: shop {shop_n} requests ({shop_e} 5xx), api {api_n}; {} instances of shop; page weight {weight} bytes; screenshots in {}",
        instances.len(),
        shots_dir().display()
    );
    b.close().await.expect("browser closes");
    d.cleanup().await.expect("cleanup");
}
