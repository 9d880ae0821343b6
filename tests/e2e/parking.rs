//! Parked sandboxes through the real daemon and runc: a revision at zero keeps one instance
//! created ahead (its process held before exec); the first request starts it, and what it
//! runs keeps the runtime contract (env, cgroup limits, user, working directory); a parked
//! sandbox is started once however many requests race for it; another is parked once the
//! first is ready; a deleted revision's parked sandbox leaves nothing behind; a daemon
//! killed with a parked sandbox cleans it up and parks again after its restart.

use std::time::Duration;

use serde_json::Value;
use skiff_api::wire::{InstanceView, Phase, StartKind};
use skiff_test_utils::{MAX_WAIT, TestDaemon, wait_for};

use crate::serving::host;
use crate::{apply, assert_code, registry_with_info_image, skip_without_runc};

/// A Service of the runtime-info image at zero (initial scale 0), with limits, a user and
/// a working directory to check from inside.
fn service(name: &str, image: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/initial-scale: \"0\"\n    spec:\n      containers:\n      - image: {image}\n        workingDir: /tmp/work\n        env:\n        - name: TARGET\n          value: parked\n        resources:\n          limits: {{memory: 200Mi, cpu: 500m}}\n        securityContext:\n          runAsUser: 2020\n          runAsGroup: 2021\n"
    )
}

/// Waits until the Service's instances satisfy `pred`; returns them.
async fn wait_instances(
    d: &TestDaemon,
    svc: &str,
    what: &str,
    pred: impl Fn(&[InstanceView]) -> bool,
) -> Vec<InstanceView> {
    let client = d.client();
    let pred = &pred;
    wait_for(what, Duration::from_millis(20), MAX_WAIT, || {
        let client = client.clone();
        async move {
            let list = client.instances("default", svc).await.ok()?;
            pred(&list).then_some(list)
        }
    })
    .await
    .unwrap_or_else(|e| {
        panic!(
            "{e}\n{}",
            crate::stdout(&d.cli(&["describe", "service", svc]))
        )
    })
}

fn parked(l: &[InstanceView]) -> Vec<&InstanceView> {
    l.iter()
        .filter(|i| {
            i.status.phase == Phase::Parked && i.status.containers.iter().all(|c| c.pid.is_some())
        })
        .collect()
}

/// `GET path` through the ingress.
async fn get(d: &TestDaemon, svc: &str, path: &str) -> (u16, String) {
    let r = crate::http()
        .get(format!("http://{}{path}", d.ingress()))
        .header("host", host(svc))
        .send()
        .await
        .expect("a request to the ingress");
    let status = r.status().as_u16();
    (status, r.text().await.unwrap_or_default())
}

/// runc's containers under the daemon's root.
fn runc_ids(d: &TestDaemon) -> Vec<String> {
    let out = std::process::Command::new("runc")
        .arg("--root")
        .arg(d.data_dir().join("run/runc"))
        .args(["list", "-q"])
        .output()
        .expect("runc list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| l.trim().to_owned())
        .filter(|l| !l.is_empty())
        .collect()
}

/// The first request to a revision at zero starts its parked sandbox, which keeps the
/// runtime contract; concurrent requests start it once; the next one is parked once it is
/// ready; `describe` and the metrics say so; deleting the Service leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parked_sandbox_serves_the_first_request() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) = registry_with_info_image(&[]).await;
    apply(&d, &service("pk-one", &image));
    let list = wait_instances(&d, "pk-one", "a parked sandbox", |l| {
        parked(l).len() == 1 && l.len() == 1
    })
    .await;
    let sandbox = list[0].id.clone();
    assert!(!list[0].status.ready);
    assert!(
        list[0].usage.memory_bytes > 0,
        "its held init is in its cgroup"
    );
    let o = d.cli(&["describe", "service", "pk-one"]);
    assert!(
        crate::stdout(&o).contains(&format!("{sandbox}: parked")),
        "{}",
        crate::stdout(&o)
    );
    let text = crate::serving::metrics_text(&d).await.expect("metrics");
    assert!(
        text.contains("skiff_instance_parked_sandboxes{namespace=\"default\",service=\"pk-one\",revision=\"pk-one-00001\"} 1"),
        "{text}"
    );
    // Eight requests at once: the sandbox is started once, and every request is answered.
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let d_ingress = d.ingress().to_owned();
            tokio::spawn(async move {
                let r = crate::http()
                    .get(format!("http://{d_ingress}/info"))
                    .header("host", host("pk-one"))
                    .send()
                    .await
                    .expect("a request");
                (r.status().as_u16(), r.text().await.unwrap_or_default())
            })
        })
        .collect();
    let mut bodies = Vec::new();
    for t in tasks {
        let (status, body) = t.await.expect("join");
        assert_eq!(status, 200, "{body}");
        bodies.push(body);
    }
    // What runs is the revision's process with its contract.
    let info: Value = serde_json::from_str(&bodies[0]).expect("/info");
    assert_eq!(info["env"]["K_REVISION"], "pk-one-00001");
    assert_eq!(info["env"]["TARGET"], "parked");
    assert_eq!(info["env"]["PORT"], "8080");
    assert_eq!(info["pid"], 1);
    assert_eq!(info["uid"], 2020);
    assert_eq!(info["gid"], 2021);
    assert_eq!(info["cwd"], "/tmp/work");
    let cg = &info["cgroup"];
    assert_eq!(
        cg["memory/memory.limit_in_bytes"].as_str().map(str::trim),
        Some("209715200"),
        "{cg}"
    );
    assert_eq!(
        cg["cpu/cpu.cfs_quota_us"].as_str().map(str::trim),
        Some("50000"),
        "{cg}"
    );
    // The sandbox served, started once, as `parked`; the next one is parked once it is ready.
    let list = wait_instances(&d, "pk-one", "the next sandbox parked", |l| {
        parked(l).len() == 1 && l.iter().any(|i| i.id == sandbox && i.status.ready)
    })
    .await;
    let served = list.iter().find(|i| i.id == sandbox).expect("the sandbox");
    assert_eq!(served.status.start_kind, StartKind::Parked);
    let startup = served.status.startup.as_ref().expect("its start-up phases");
    assert!(startup.ready_ms.is_some(), "{startup:?}");
    let unparked = d
        .log_text()
        .lines()
        .filter(|l| l.contains("unparked") && l.contains(&sandbox))
        .count();
    assert_eq!(unparked, 1, "started once");
    assert!(
        bodies.iter().all(|b| b.contains("pk-one-00001")),
        "every answer came from the revision"
    );
    let text = crate::serving::metrics_text(&d).await.expect("metrics");
    assert!(
        text.lines().any(
            |l| l.starts_with("skiff_instance_startup_duration_seconds_count")
                && l.contains("service=\"pk-one\"")
                && l.contains("kind=\"parked\"")
                && l.contains("phase=\"total\"")
        ),
        "{text}"
    );
    // Deleted with its parked sandbox: nothing is left.
    assert_code(&d.cli(&["delete", "service", "pk-one"]), 0);
    wait_for("nothing left", Duration::from_millis(50), MAX_WAIT, || {
        let data = d.data_dir().join("run/instances");
        let ids = runc_ids(&d);
        async move {
            let empty = std::fs::read_dir(&data).map_or(true, |mut r| r.next().is_none());
            (empty && ids.is_empty()).then_some(())
        }
    })
    .await
    .expect("the instances and their containers are gone");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let run = d.data_dir().join("run").display().to_string();
    assert!(
        !mounts.lines().any(|l| l.contains(&run)),
        "no mount under {run}"
    );
    for h in ["memory", "cpu", "pids"] {
        let p = std::path::Path::new("/sys/fs/cgroup").join(h).join("skiff");
        let left: Vec<String> = std::fs::read_dir(&p)
            .map(|r| {
                r.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with("pk-one-"))
                    .collect()
            })
            .unwrap_or_default();
        assert!(left.is_empty(), "cgroups left in {}: {left:?}", p.display());
    }
    d.cleanup().await.expect("cleanup");
}

/// A daemon killed with a parked sandbox: its restart removes the held container and parks
/// a new one, which serves.
#[tokio::test]
async fn a_restart_cleans_up_and_parks_again() {
    if skip_without_runc() {
        return;
    }
    let (_reg, mut d, image) = registry_with_info_image(&[]).await;
    apply(&d, &service("pk-restart", &image));
    let list = wait_instances(&d, "pk-restart", "a parked sandbox", |l| {
        parked(l).len() == 1
    })
    .await;
    let before = list[0].id.clone();
    d.kill9();
    d.restart().await.expect("restart");
    let list = wait_instances(&d, "pk-restart", "a new parked sandbox", |l| {
        parked(l).len() == 1 && l.iter().all(|i| i.id != before)
    })
    .await;
    let after = list[0].id.clone();
    let ids = runc_ids(&d);
    assert!(
        !ids.iter().any(|c| c.contains(&before)),
        "the old sandbox's container is gone: {ids:?}"
    );
    let (status, body) = get(&d, "pk-restart", "/info").await;
    assert_eq!(status, 200, "{body}");
    let list = wait_instances(&d, "pk-restart", "the sandbox ready", |l| {
        l.iter().any(|i| i.id == after && i.status.ready)
    })
    .await;
    assert_eq!(
        list.iter()
            .find(|i| i.id == after)
            .map(|i| i.status.start_kind),
        Some(StartKind::Parked)
    );
    d.cleanup().await.expect("cleanup");
}

/// With parking off (`--parked-sandboxes 0`) nothing is parked: the first request starts a
/// fresh instance.
#[tokio::test]
async fn parking_can_be_turned_off() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) = registry_with_info_image(&["--parked-sandboxes", "0"]).await;
    apply(&d, &service("pk-off", &image));
    crate::serving::wait_pinned(&d, "pk-off-00001").await;
    let (status, body) = get(&d, "pk-off", "/info").await;
    assert_eq!(status, 200, "{body}");
    let list = wait_instances(&d, "pk-off", "a ready instance", |l| {
        l.iter().any(|i| i.status.ready)
    })
    .await;
    assert!(
        list.iter().all(|i| i.status.phase != Phase::Parked),
        "{list:?}"
    );
    assert!(list.iter().all(|i| i.status.start_kind == StartKind::Fresh));
    d.cleanup().await.expect("cleanup");
}

/// A storm: 200 Services at zero, each with its sandbox parked, woken by one request each at
/// the same moment: every request is answered 200, each by its Service's parked sandbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_200_services_all_answer() {
    if skip_without_runc() {
        return;
    }
    const N: usize = 200;
    let (_reg, d, image) = registry_with_info_image(&["--parked-sandboxes", "200"]).await;
    let client = d.client();
    let names: Vec<String> = (0..N).map(|i| format!("pk-storm-{i:03}")).collect();
    for name in &names {
        let yaml = format!(
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/initial-scale: \"0\"\n    spec:\n      containers:\n      - image: {image}\n"
        );
        client
            .apply_service("default", Some(name), yaml, "application/yaml", false)
            .await
            .expect("apply");
    }
    // Every sandbox parked (one at a time, in the background).
    wait_for(
        "200 parked sandboxes",
        Duration::from_millis(200),
        MAX_WAIT * 4,
        || {
            let client = client.clone();
            let names = &names;
            async move {
                for name in names {
                    let list = client.instances("default", name).await.ok()?;
                    if parked(&list).len() != 1 {
                        return None;
                    }
                }
                Some(())
            }
        },
    )
    .await
    .expect("every Service has its sandbox parked");
    let ingress = d.ingress().to_owned();
    let started = std::time::Instant::now();
    let tasks: Vec<_> = names
        .iter()
        .map(|name| {
            let (ingress, host) = (ingress.clone(), host(name));
            tokio::spawn(async move {
                let t = std::time::Instant::now();
                let r = crate::http()
                    .get(format!("http://{ingress}/"))
                    .header("host", host)
                    .send()
                    .await;
                let status = match r {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        let _ = r.text().await;
                        s
                    }
                    Err(_) => 0,
                };
                (status, t.elapsed())
            })
        })
        .collect();
    let mut times = Vec::with_capacity(N);
    let mut failed = Vec::new();
    for (t, name) in tasks.into_iter().zip(&names) {
        let (status, took) = t.await.expect("join");
        if status != 200 {
            failed.push(format!("{name}: {status}"));
        }
        times.push(took.as_secs_f64() * 1000.0);
    }
    let all = started.elapsed();
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(10)]
    );
    times.sort_by(f64::total_cmp);
    eprintln!(
        "storm of {N} parked Services: all 200 in {:.0} ms; per request p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        all.as_secs_f64() * 1000.0,
        times[N / 2],
        times[N * 99 / 100],
        times[N - 1]
    );
    // Each was served by its parked sandbox.
    for name in names.iter().take(20) {
        let list = client
            .running_instances("default", name)
            .await
            .expect("instances");
        assert!(
            list.iter()
                .any(|i| i.status.start_kind == StartKind::Parked),
            "{name}: {list:?}"
        );
    }
    d.cleanup().await.expect("cleanup");
}

/// `skiff.dev/warm: frozen`: at zero the ready instance is frozen (kept, out of the pool,
/// its memory held, not billed); the next request thaws that same instance, started
/// `frozen`; deleting the Service stops it and leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_instance_is_thawed_by_the_next_request() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) = registry_with_info_image(&[]).await;
    let yaml = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: pk-frozen\nspec:\n  template:\n    metadata:\n      annotations:\n        skiff.dev/warm: frozen\n    spec:\n      containers:\n      - image: {image}\n"
    );
    apply(&d, &yaml);
    let list = wait_instances(&d, "pk-frozen", "a ready instance", |l| {
        l.iter().any(|i| i.status.ready)
    })
    .await;
    let first = list
        .iter()
        .find(|i| i.status.ready)
        .expect("ready")
        .id
        .clone();
    // To zero: frozen, not stopped.
    assert_code(&d.cli(&["scale", "pk-frozen", "0"]), 0);
    let list = wait_instances(&d, "pk-frozen", "the instance frozen", |l| {
        l.iter()
            .any(|i| i.id == first && i.status.phase == Phase::Frozen)
    })
    .await;
    let frozen = list.iter().find(|i| i.id == first).expect("frozen");
    assert!(!frozen.status.ready);
    assert!(frozen.usage.memory_bytes > 0, "it keeps its memory");
    let text = crate::serving::metrics_text(&d).await.expect("metrics");
    assert!(
        text.contains("skiff_instance_frozen{namespace=\"default\",service=\"pk-frozen\",revision=\"pk-frozen-00001\"} 1"),
        "{text}"
    );
    // The autoscaler again (no traffic: it stays frozen), then a request thaws it.
    assert_code(&d.cli(&["scale", "pk-frozen", "auto"]), 0);
    let (status, body) = get(&d, "pk-frozen", "/info").await;
    assert_eq!(status, 200, "{body}");
    let info: Value = serde_json::from_str(&body).expect("/info");
    assert_eq!(
        info["hostname"].as_str().map(str::trim),
        Some(first.as_str()),
        "the frozen instance answered"
    );
    let list = wait_instances(&d, "pk-frozen", "the thawed instance ready", |l| {
        l.iter().any(|i| i.id == first && i.status.ready)
    })
    .await;
    let thawed = list.iter().find(|i| i.id == first).expect("thawed");
    assert_eq!(thawed.status.start_kind, StartKind::Frozen);
    assert!(
        thawed
            .status
            .startup
            .as_ref()
            .is_some_and(|p| p.ready_ms.is_some()),
        "{:?}",
        thawed.status.startup
    );
    assert!(d.log_text().contains("thawed"), "the daemon says so");
    eprintln!("thawed: {:?}", thawed.status.startup);
    // Deleted while running or frozen: nothing left.
    assert_code(&d.cli(&["scale", "pk-frozen", "0"]), 0);
    wait_instances(&d, "pk-frozen", "frozen again", |l| {
        l.iter()
            .any(|i| i.id == first && i.status.phase == Phase::Frozen)
    })
    .await;
    assert_code(&d.cli(&["delete", "service", "pk-frozen"]), 0);
    wait_for("nothing left", Duration::from_millis(50), MAX_WAIT, || {
        let data = d.data_dir().join("run/instances");
        let ids = runc_ids(&d);
        async move {
            let empty = std::fs::read_dir(&data).map_or(true, |mut r| r.next().is_none());
            (empty && ids.is_empty()).then_some(())
        }
    })
    .await
    .expect("the frozen instance is stopped and removed");
    d.cleanup().await.expect("cleanup");
}
