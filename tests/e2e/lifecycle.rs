//! Stopping instances whose PID 1 ignores SIGTERM (busybox `httpd` run directly): a deleted
//! Service's instance goes within the termination grace, not after `timeoutSeconds`, and the
//! daemon's own shutdown holds every instance (a retiring one too) to its cap.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use skiff_test_utils::images::{BUSYBOX_HTTPD_INDEX, busybox_httpd_image};
use skiff_test_utils::{MAX_WAIT, TestDaemon, wait_for};

use crate::{apply, assert_code, registry_with_image, skip_without_runc};

/// A Service of busybox `httpd` as the container's PID 1 (it installs no SIGTERM handler,
/// so the kernel drops SIGTERM), with a long request timeout.
fn httpd_service(name: &str, image: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n    spec:\n      timeoutSeconds: 300\n      containers:\n      - image: {image}\n"
    )
}

/// The runtime containers the daemon's runc root knows.
fn containers(data_dir: &Path) -> Vec<String> {
    let root = data_dir.join("run/runc");
    let out = Command::new("runc")
        .arg("--root")
        .arg(&root)
        .args(["list", "-q"])
        .output()
        .expect("runc list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Waits until the Service has a ready instance that answers through the ingress; returns
/// the instance's id.
async fn ready_instance(d: &TestDaemon, svc: &str) -> String {
    let client = d.client();
    let id = wait_for(
        "a ready instance",
        Duration::from_millis(50),
        MAX_WAIT,
        || {
            let client = client.clone();
            async move {
                let list = client.instances("default", svc).await.ok()?;
                let ready = list.iter().find(|i| i.status.ready)?;
                Some(ready.id.clone())
            }
        },
    )
    .await
    .expect("ready instance");
    let r = crate::http()
        .get(format!("http://{}/", d.ingress()))
        .header("host", format!("{svc}.default.localhost"))
        .send()
        .await
        .expect("request to the ingress");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.text().await.expect("body"), BUSYBOX_HTTPD_INDEX);
    id
}

/// Waits until none of the instance's containers runs and its directory is gone.
async fn gone(d: &TestDaemon, id: &str) -> anyhow::Result<()> {
    let dir = d.data_dir().join("run/instances").join(id);
    wait_for(
        "the instance's containers and directory to go",
        Duration::from_millis(50),
        MAX_WAIT,
        || {
            let left = containers(d.data_dir()).iter().any(|c| c.contains(id)) || dir.exists();
            async move { (!left).then_some(()) }
        },
    )
    .await
}

/// A deleted Service whose PID 1 ignores SIGTERM is gone within about the termination grace
/// (2 s here), not its `timeoutSeconds` (300): with no request in flight there is nothing to
/// drain, so SIGTERM comes at once and SIGKILL at the end of the grace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_service_ignoring_sigterm_goes_within_the_termination_grace() {
    if skip_without_runc() {
        return;
    }
    let image = busybox_httpd_image().expect("busybox httpd image");
    let (_reg, d, image) = registry_with_image(
        &image,
        "skiff/httpd:v1",
        &["--termination-grace-period-seconds", "2"],
    )
    .await;
    apply(&d, &httpd_service("lc-delete", &image));
    let id = ready_instance(&d, "lc-delete").await;
    let deleted = Instant::now();
    assert_code(&d.cli(&["delete", "service", "lc-delete"]), 0);
    // MAX_WAIT (60 s) is far below the 300 s the instance used to live on.
    gone(&d, &id)
        .await
        .expect("the deleted Service's instance gone");
    eprintln!(
        "deleted Service's instance gone after {:?}",
        deleted.elapsed()
    );
    let log = d.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("sending SIGKILL") && l.contains(&id)),
        "httpd ignored SIGTERM and was killed at the end of the grace:\n{log}"
    );
    d.cleanup().await.expect("cleanup");
}

/// SIGTERM to the daemon with one instance serving and one retiring (its Service deleted,
/// its PID 1 ignoring SIGTERM through a 120 s termination grace) exits after about its 5 s
/// shutdown grace: shutdown's deadline holds the instance already waiting out its grace
/// too, and nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_sigterm_holds_every_instance_to_its_cap() {
    if skip_without_runc() {
        return;
    }
    let image = busybox_httpd_image().expect("busybox httpd image");
    let (_reg, mut d, image) = registry_with_image(
        &image,
        "skiff/httpd:v1",
        &[
            "--termination-grace-period-seconds",
            "120",
            "--shutdown-grace-period-seconds",
            "5",
        ],
    )
    .await;
    apply(&d, &httpd_service("lc-stay", &image));
    apply(&d, &httpd_service("lc-retire", &image));
    let staying = ready_instance(&d, "lc-stay").await;
    let retiring = ready_instance(&d, "lc-retire").await;
    assert_code(&d.cli(&["delete", "service", "lc-retire"]), 0);
    // The retiring instance has had its SIGTERM (it logs SIGKILL only after 120 s).
    wait_for(
        "the retiring instance to be stopping",
        Duration::from_millis(50),
        MAX_WAIT,
        || {
            let stopping = d
                .log_text()
                .lines()
                .any(|l| l.contains("draining and stopping instance") && l.contains(&retiring));
            async move { stopping.then_some(()) }
        },
    )
    .await
    .expect("retiring");
    let running = containers(d.data_dir());
    assert!(
        [&staying, &retiring]
            .iter()
            .all(|id| running.iter().any(|c| c.contains(id.as_str()))),
        "both instances still run: {running:?}"
    );
    let signalled = Instant::now();
    d.terminate().expect("SIGTERM");
    // wait_exit gives up after MAX_WAIT (60 s): below the 120 s grace the retiring
    // instance would otherwise have had, and far below its 300 s timeoutSeconds.
    assert_eq!(d.wait_exit().await.expect("daemon exits"), Some(0));
    eprintln!("daemon exited {:?} after SIGTERM", signalled.elapsed());
    assert!(
        containers(d.data_dir()).is_empty(),
        "no container outlives the daemon's shutdown"
    );
    d.cleanup().await.expect("cleanup");
}
