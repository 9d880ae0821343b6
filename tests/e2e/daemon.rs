//! The daemon itself: configuration errors, the data-directory lock, the ingress, graceful
//! shutdown.

use std::process::Command;

use skiff_test_utils::TestDaemon;

use crate::{SKIFF, assert_code, service_yaml, stderr};

/// A bad configuration is refused at start with every problem listed, exit code 2.
#[test]
fn bad_configuration_lists_every_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("skiff.toml");
    std::fs::write(&file, "domian = \"x\"\nlog_format = \"xml\"\n").expect("write");
    let o = Command::new(SKIFF)
        .args([
            "server",
            "--api-listen",
            "nowhere",
            "--enable-scale-to-zero",
            "maybe",
            "--config",
        ])
        .arg(&file)
        .env("SKIFF_MAX_BODY_BYTES", "7")
        .env("SKIFF_MAX_SCALE_DOWN_RATE", "0.5")
        .output()
        .expect("run");
    assert_code(&o, 2);
    let err = stderr(&o);
    for want in [
        "domian",
        "log_format",
        "api_listen (from flag --api-listen)",
        "max_body_bytes (from environment variable SKIFF_MAX_BODY_BYTES)",
        "enable_scale_to_zero (from flag --enable-scale-to-zero): `maybe` must be true or false",
        "max_scale_down_rate (from environment variable SKIFF_MAX_SCALE_DOWN_RATE)",
    ] {
        assert!(err.contains(want), "missing {want:?} in:\n{err}");
    }
}

/// A second daemon on the same data directory is refused; the first keeps serving.
#[tokio::test]
async fn data_dir_is_locked() {
    let d = TestDaemon::start(SKIFF).await.expect("daemon");
    let o = Command::new(SKIFF)
        .args([
            "server",
            "--api-listen",
            "127.0.0.1:0",
            "--ingress-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(d.data_dir())
        .env("SKIFF_CONFIG", "/dev/null")
        .output()
        .expect("run");
    assert_code(&o, 1);
    assert!(
        stderr(&o).contains("another skiff daemon is already using"),
        "{}",
        stderr(&o)
    );
    assert_code(&d.cli(&["get", "services"]), 0);
    d.cleanup().await.expect("cleanup");
}

/// The ingress answers a known Service with 503 and the reason, an unknown host with 404, as
/// soon as the apply (or delete) is answered: no reconcile pass to wait for.
#[tokio::test]
async fn ingress_reports_why_it_cannot_serve() {
    let d = TestDaemon::start(SKIFF).await.expect("daemon");
    crate::apply(&d, &service_yaml("hello", "v1"));
    let http = crate::http();
    let url = format!("http://{}/", d.ingress());
    let get = |host: &'static str| http.get(&url).header("host", host).send();
    let r = get("hello.default.localhost").await.expect("http");
    assert_eq!(r.status().as_u16(), 503);
    assert!(r.headers().contains_key("retry-after"));
    let text = r.text().await.expect("text");
    assert!(
        text.contains("service `hello` in namespace `default` cannot serve requests"),
        "{text}"
    );
    for host in ["nope.default.localhost", "example.com"] {
        let r = get(host).await.expect("http");
        assert_eq!(r.status().as_u16(), 404, "{host}");
    }
    // The ingress forgets a deleted Service by the time the delete is answered.
    assert_code(&d.cli(&["delete", "service", "hello"]), 0);
    let r = get("hello.default.localhost").await.expect("http");
    assert_eq!(r.status().as_u16(), 404);
    d.cleanup().await.expect("cleanup");
}

/// SIGTERM stops the daemon cleanly (exit 0, endpoints removed); state survives a restart.
#[tokio::test]
async fn graceful_shutdown_and_restart_keep_state() {
    let mut d = TestDaemon::start(SKIFF).await.expect("daemon");
    crate::apply(&d, &service_yaml("hello", "v1"));
    assert_eq!(d.stop().await.expect("stop"), Some(0));
    assert!(!d.data_dir().join("endpoints.json").exists());
    assert!(d.log_text().contains("skiff stopped"));
    d.restart().await.expect("restart");
    let svc = d
        .client()
        .get_service("default", "hello")
        .await
        .expect("service survives");
    assert_eq!(
        svc.status.latest_created_revision_name.as_deref(),
        Some("hello-00001")
    );
    d.cleanup().await.expect("cleanup");
}
