//! The runtime with the real runc: a busybox httpd instance starts, becomes ready, answers
//! through the connector, stops, and leaves nothing behind.

use std::sync::Arc;
use std::time::Duration;

use skiff_image::content::ContentStore;
use skiff_image::metrics::ImageMetrics;
use skiff_image::puller::{Puller, no_progress};
use skiff_image::registry::{RegistryClient, RegistryOptions};
use skiff_runtime::instance::{ContainerPlan, InstancePlan, Phase, Scheduled, UserPlan};
use skiff_runtime::oci::{OciRuntime, RuncCli};
use skiff_runtime::probe::{ProbeAction, ProbeSpec};
use skiff_runtime::{Runtime, RuntimeOptions};
use skiff_store::{SqliteStore, Store};
use skiff_test_utils::images::busybox_httpd_image;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn skip() -> bool {
    if !rustix::process::geteuid().is_root()
        || std::process::Command::new("runc")
            .arg("--version")
            .output()
            .is_err()
    {
        eprintln!("skipped: needs root and runc");
        return true;
    }
    false
}

/// An instance of a busybox httpd image starts in runc, becomes ready, serves through the
/// connector, stops on request, and leaves no container, mount, namespace or cgroup.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busybox_httpd_lifecycle() {
    if skip() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&dir.path().join("state.db")).expect("store"));
    let content = ContentStore::open(&dir.path().join("images"), store).expect("content");
    let puller = Puller::new(
        Arc::new(RegistryClient::new(
            RegistryOptions::new(),
            Default::default(),
        )),
        content.clone(),
        ImageMetrics::unregistered(),
    );
    let layout = dir.path().join("layout");
    busybox_httpd_image()
        .expect("image")
        .write_oci_layout(&layout, "v1")
        .expect("layout");
    let image = skiff_image::import::import(
        &puller,
        &layout,
        Some(&"skiff.local/httpd:v1".parse().expect("ref")),
        no_progress(),
    )
    .await
    .expect("import")
    .remove(0);
    let lowers = image
        .layers
        .iter()
        .rev()
        .map(|l| content.layer_path(&l.diff_id).expect("layer"))
        .collect();
    let mut args = image.config.entrypoint.clone().unwrap_or_default();
    args.extend(image.config.cmd.clone().unwrap_or_default());
    let mut opts = RuntimeOptions::new(&dir.path().join("data"));
    // httpd is PID 1 and ignores SIGTERM: every stop waits out the grace.
    opts.termination_grace = Duration::from_secs(5);
    let oci: Arc<dyn OciRuntime> = Arc::new(RuncCli::new("runc", dir.path().join("data/runc")));
    let rt = Runtime::new(opts, oci.clone()).expect("runtime");
    let plan = InstancePlan {
        id: "httpd-00001-test1".into(),
        namespace: "default".into(),
        service: "httpd".into(),
        revision: "httpd-00001".into(),
        containers: vec![ContainerPlan {
            name: "user-container".into(),
            lowers,
            args,
            env: vec![("PORT".into(), "8080".into())],
            secret_env: Default::default(),
            working_dir: None,
            user: UserPlan::default(),
            read_only_rootfs: false,
            capabilities: skiff_runtime::spec::capabilities(&[], &[]),
            seccomp: true,
            memory_limit: Some(64 << 20),
            scratch_limit: Some(64 << 20),
            memory_request: None,
            cpu_quota: None,
            cpu_shares: None,
            mounts: vec![],
            readiness: Some(ProbeSpec {
                action: ProbeAction::Tcp { port: 8080 },
                initial_delay: Duration::ZERO,
                timeout: Duration::from_secs(1),
                period: Duration::from_secs(1),
                success_threshold: 1,
                failure_threshold: 3,
            }),
            liveness: None,
            startup: None,
        }],
        serving: 0,
        port: 8080,
        volumes: vec![],
        drain_timeout: Duration::from_secs(5),
        egress: None,
        scheduled: Some(Scheduled::now()),
        task: None,
    };
    let inst = rt.start(plan).await.expect("start");
    let mut rx = inst.subscribe();
    let ready = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            if rx.borrow().ready {
                return rx.borrow().clone();
            }
            if rx.changed().await.is_err() {
                return rx.borrow().clone();
            }
        }
    })
    .await;
    let ready = match ready {
        Ok(r) => r,
        Err(_) => panic!("not ready within 60 s: {:#?}", inst.status()),
    };
    assert!(ready.ready, "{ready:?}");
    eprintln!("start to ready: {:?} ms", ready.start_to_ready_ms);
    // The start-up phases are there, ready included, and add up to the decision's distance
    // from readiness (the runtime's own start-to-ready is container + ready).
    let phases = ready
        .startup
        .clone()
        .expect("start-up phases of a scheduled instance");
    eprintln!("start-up phases: {phases:?}");
    let (Some(ready_ms), Some(total)) = (phases.ready_ms, phases.total_ms()) else {
        panic!("no ready phase: {phases:?}");
    };
    assert!(phases.scheduled_unix_nanos > 0 && phases.image_ms >= 0.0);
    let start_to_ready = ready.start_to_ready_ms.expect("start to ready");
    assert!((phases.container_ms + ready_ms - start_to_ready).abs() < 1e-6);
    assert!(total >= start_to_ready);
    let mut s = rt
        .connector()
        .connect(inst.netns(), 8080)
        .await
        .expect("connect");
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .expect("write");
    let mut body = String::new();
    s.read_to_string(&mut body).await.expect("read");
    assert!(
        body.starts_with("HTTP/1.") && body.contains("hello from busybox httpd"),
        "{body}"
    );
    let usage = inst.usage();
    assert!(
        usage.memory_bytes > 0 && usage.memory_limit_bytes == 64 << 20,
        "{usage:?}"
    );
    rt.stop("httpd-00001-test1").await.expect("stop");
    assert_eq!(inst.status().phase, Phase::Stopped);
    assert!(
        oci.list().await.expect("list").is_empty(),
        "no container left"
    );
    let instance_dir = dir.path().join("data/run/instances/httpd-00001-test1");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    assert!(
        !mounts.contains(instance_dir.to_str().expect("utf8")),
        "no mount left"
    );
    assert!(
        !dir.path()
            .join("data/run/instances/httpd-00001-test1")
            .exists(),
        "instance dir removed"
    );
    assert!(
        !std::path::Path::new("/sys/fs/cgroup/memory/skiff/httpd-00001-test1-c0").exists(),
        "cgroup removed"
    );
}
