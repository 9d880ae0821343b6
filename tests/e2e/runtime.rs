//! Instances in real runc through the daemon: the runtime contract checked from inside the
//! container (by the workspace's runtime-info server), limits, probes, restarts, logs,
//! recovery after `kill -9`, and that nothing is left behind.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use skiff_client::Client;
use skiff_runtime::netns::Connector;
use skiff_test_utils::{MAX_WAIT, TestDaemon, wait_for};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::{apply, assert_code, indent, registry_with_info_image, skip_without_runc, stdout};

/// A Service of the runtime-info image with `extra` container fields and `spec_extra`
/// revision fields (YAML, indented as container / spec fields).
pub(crate) fn service(name: &str, image: &str, container_extra: &str, spec_extra: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n    spec:\n{}      containers:\n      - image: {image}\n{}",
        indent(spec_extra, 6),
        indent(container_extra, 8)
    )
}

/// Waits until the Service has an instance satisfying `pred`, and returns it.
pub(crate) async fn instance_where(
    d: &TestDaemon,
    svc: &str,
    what: &str,
    pred: impl Fn(&Value) -> bool,
) -> Value {
    let client = d.client();
    let last = Arc::new(std::sync::Mutex::new(Value::Null));
    let last2 = last.clone();
    let found = wait_for(what, Duration::from_millis(50), MAX_WAIT, || {
        let (client, last) = (client.clone(), last2.clone());
        let found = client.clone();
        let _ = found;
        let svc = svc.to_owned();
        let pred = &pred;
        async move {
            let list = instances_json(&client, &svc).await?;
            *last.lock().expect("lock") = Value::Array(list.clone());
            list.into_iter().find(|i| pred(i))
        }
    })
    .await;
    match found {
        Ok(v) => v,
        Err(e) => panic!("{e}; last instances: {:#}", last.lock().expect("lock")),
    }
}

/// The Service's instances as JSON, the form these tests inspect.
async fn instances_json(client: &Client, svc: &str) -> Option<Vec<Value>> {
    let list = client.running_instances("default", svc).await.ok()?;
    Some(
        list.iter()
            .map(|i| serde_json::to_value(i).expect("an instance view is JSON"))
            .collect(),
    )
}

pub(crate) fn ready(i: &Value) -> bool {
    i["status"]["ready"] == true
}

/// An HTTP request into an instance's network namespace (no IP, no router: the namespace
/// the project created itself).
pub(crate) async fn http(
    d: &TestDaemon,
    instance: &str,
    method: &str,
    path: &str,
) -> (u16, String) {
    let ns = d
        .data_dir()
        .join("run/instances")
        .join(instance)
        .join("netns");
    let fd: std::os::fd::OwnedFd = std::fs::File::open(&ns).expect("netns").into();
    let connector = Connector::new(1).expect("connector");
    let mut s = connector
        .connect(Arc::new(fd), 8080)
        .await
        .expect("connect into the instance");
    s.write_all(format!("{method} {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(30), s.read_to_end(&mut raw)).await;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Deletes `services` and waits until no instance of the daemon is left (parked ones
/// included: a Service at zero keeps a parked sandbox while it exists).
async fn delete_and_wait(d: &TestDaemon, services: &[&str]) {
    for svc in services {
        assert_code(&d.cli(&["delete", "service", svc]), 0);
    }
    wait_for(
        "the instances to go",
        Duration::from_millis(50),
        MAX_WAIT,
        || {
            let data = d.data_dir().join("run/instances");
            async move {
                std::fs::read_dir(&data)
                    .map_or(true, |mut r| r.next().is_none())
                    .then_some(())
            }
        },
    )
    .await
    .expect("instances gone");
}

/// Nothing of the daemon's instances is left: no runtime container, mount, namespace file,
/// instance directory or cgroup.
fn assert_nothing_left(data: &Path, services: &[&str]) {
    let out = std::process::Command::new("runc")
        .arg("--root")
        .arg(data.join("run/runc"))
        .args(["list", "-q"])
        .output()
        .expect("runc list");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "",
        "runc list is empty"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let run = data.join("run").display().to_string();
    assert!(
        !mounts.lines().any(|l| l.contains(&run)),
        "no mount under {run}"
    );
    let instances: Vec<_> = std::fs::read_dir(data.join("run/instances"))
        .map(|r| r.flatten().collect())
        .unwrap_or_default();
    assert!(
        instances.is_empty(),
        "no instance directory left: {instances:?}"
    );
    for h in ["memory", "cpu", "pids", "cpuacct"] {
        let p = Path::new("/sys/fs/cgroup").join(h).join("skiff");
        let left: Vec<String> = std::fs::read_dir(&p)
            .map(|r| {
                r.flatten()
                    .filter(|e| e.path().is_dir())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        // Other tests run at the same time: only this test's Services count.
        let ours: Vec<&String> = left
            .iter()
            .filter(|n| services.iter().any(|s| n.starts_with(&format!("{s}-"))))
            .collect();
        assert!(ours.is_empty(), "cgroups left in {}: {ours:?}", p.display());
    }
}

/// Every promise of the runtime contract, checked from inside the instance: env, pid 1,
/// hostname, stdin at EOF, cgroup limits, capabilities, no_new_privs, seccomp, /dev files,
/// writable /tmp and /dev/shm, read-only /proc/sys, loopback-only network; `skiff describe`
/// shows usage and `skiff logs` the output.
#[tokio::test]
async fn runtime_contract() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) = registry_with_info_image(&[]).await;
    let yaml = service(
        "rt-contract",
        &image,
        "env:\n- name: TARGET\n  value: contract\nports:\n- containerPort: 8080\nresources:\n  limits: {memory: 350Mi, cpu: 500m}\n  requests: {cpu: 250m}\n",
        "",
    );
    apply(&d, &yaml);
    assert_code(&d.cli(&["scale", "rt-contract", "1"]), 0);
    let inst = instance_where(&d, "rt-contract", "a ready instance", ready).await;
    let id = inst["id"].as_str().expect("id").to_owned();
    let (status, body) = http(&d, &id, "GET", "/info").await;
    assert_eq!(status, 200, "{body}");
    let info: Value = serde_json::from_str(&body).expect("info json");
    let env = &info["env"];
    assert_eq!(env["PORT"], "8080");
    assert_eq!(env["K_SERVICE"], "rt-contract");
    assert_eq!(env["K_CONFIGURATION"], "rt-contract");
    assert_eq!(env["K_REVISION"], "rt-contract-00001");
    assert_eq!(env["TARGET"], "contract");
    assert_eq!(info["pid"], 1);
    assert_eq!(info["hostname"].as_str().map(str::trim), Some(id.as_str()));
    assert_eq!(info["stdin_eof"], true);
    assert_eq!(info["uid"], 0);
    let cg = &info["cgroup"];
    assert_eq!(
        cg["memory/memory.limit_in_bytes"].as_str().map(str::trim),
        Some("367001600"),
        "{cg}"
    );
    assert_eq!(
        cg["cpu/cpu.cfs_quota_us"].as_str().map(str::trim),
        Some("50000"),
        "{cg}"
    );
    assert_eq!(
        cg["cpu/cpu.cfs_period_us"].as_str().map(str::trim),
        Some("100000"),
        "{cg}"
    );
    assert_eq!(
        cg["cpu/cpu.shares"].as_str().map(str::trim),
        Some("256"),
        "{cg}"
    );
    assert_eq!(
        cg["pids/pids.max"].as_str().map(str::trim),
        Some("1024"),
        "{cg}"
    );
    let caps = &info["capabilities"];
    // Docker's default set without NET_RAW: chown, dac_override, fowner, fsetid, kill, setgid,
    // setuid, setpcap, net_bind_service, sys_chroot, mknod, audit_write, setfcap.
    let eff =
        u64::from_str_radix(caps["CapEff"].as_str().unwrap_or_default().trim(), 16).expect("hex");
    let want: u64 = [0, 1, 3, 4, 5, 6, 7, 8, 10, 18, 27, 29, 31]
        .iter()
        .map(|b| 1u64 << b)
        .sum();
    assert_eq!(eff, want, "effective capabilities {caps}");
    assert_eq!(eff & (1 << 13), 0, "no NET_RAW");
    assert!(
        info["no_new_privs"] == true || info["no_new_privs"] == "1",
        "no_new_privs: {}",
        info["no_new_privs"]
    );
    assert!(
        info["seccomp"] == 2 || info["seccomp"] == "2",
        "seccomp filter mode: {}",
        info["seccomp"]
    );
    let files = &info["files"];
    for f in [
        "/dev/fd",
        "/dev/full",
        "/dev/null",
        "/dev/ptmx",
        "/dev/random",
        "/dev/stdin",
        "/dev/stdout",
        "/dev/stderr",
        "/dev/tty",
        "/dev/urandom",
        "/dev/zero",
        "/proc/self/fd/0",
        "/proc/self/fd/1",
        "/proc/self/fd/2",
        "/tmp",
        "/etc/resolv.conf",
        "/etc/hosts",
        "/etc/hostname",
    ] {
        assert_eq!(files[f], true, "{f} exists: {files}");
    }
    assert_eq!(files["/dev/console"], false, "no /dev/console");
    let w = &info["writable"];
    assert_eq!(w["/tmp"], true);
    assert_eq!(w["/dev/shm"], true);
    assert_eq!(w["/proc/sys/kernel/hostname"], false, "read-only /proc/sys");
    assert_eq!(
        info["network_interfaces"],
        serde_json::json!(["lo"]),
        "loopback only"
    );
    let mounts = info["mounts"].to_string();
    assert!(
        mounts.contains("overlay") && mounts.contains("tmpfs"),
        "{mounts}"
    );

    // Usage in describe, logs of both streams.
    let o = d.cli(&["describe", "service", "rt-contract"]);
    let out = stdout(&o);
    assert!(
        out.contains("Instances:") && out.contains(&id) && out.contains("350.0Mi"),
        "{out}"
    );
    http(
        &d,
        &id,
        "GET",
        "/log?line=hello-from-the-test&stream=stdout",
    )
    .await;
    let client = d.client();
    wait_for("the log line", Duration::from_millis(50), MAX_WAIT, || {
        let client = client.clone();
        async move {
            let mut lines = Vec::new();
            client
                .logs("default", "rt-contract", &[], |l| lines.push(l))
                .await
                .ok()?;
            (lines
                .iter()
                .any(|l| l.line == "hello-from-the-test" && l.stream == "stdout")
                && lines
                    .iter()
                    .any(|l| l.stream == "stderr" && l.line.contains("stderr check")))
            .then_some(())
        }
    })
    .await
    .expect("logs");
    let o = d.cli(&["logs", "rt-contract", "--tail", "1", "--timestamps"]);
    let out = stdout(&o);
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(out.contains(&id), "{out}");

    assert_code(&d.cli(&["scale", "rt-contract", "0"]), 0);
    wait_for(
        "the instance to go",
        Duration::from_millis(50),
        MAX_WAIT,
        || {
            let client = d.client();
            async move {
                client
                    .running_instances("default", "rt-contract")
                    .await
                    .ok()
                    .filter(|l| l.is_empty())
                    .map(|_| ())
            }
        },
    )
    .await
    .expect("stopped");
    let o = d.cli(&["logs", "rt-contract"]);
    assert!(
        stdout(&o).contains("hello-from-the-test"),
        "logs are kept after the instance ends"
    );
    delete_and_wait(&d, &["rt-contract"]).await;
    assert_nothing_left(d.data_dir(), &["rt-contract"]);
    d.cleanup().await.expect("cleanup");
}

/// securityContext and the process: runAsUser, workingDir, args, read-only rootfs; and
/// runAsNonRoot refuses to run an image as root.
#[tokio::test]
async fn security_context_and_process() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) = registry_with_info_image(&[]).await;
    let yaml = service(
        "rt-user",
        &image,
        "args: [\"--ready-after-ms\", \"0\", \"extra-arg\"]\nworkingDir: /tmp/work\nsecurityContext:\n  runAsUser: 2020\n  runAsGroup: 2021\n  readOnlyRootFilesystem: true\n",
        "",
    );
    apply(&d, &yaml);
    assert_code(&d.cli(&["scale", "rt-user", "1"]), 0);
    let inst = instance_where(&d, "rt-user", "a ready instance", ready).await;
    let (_, body) = http(&d, inst["id"].as_str().expect("id"), "GET", "/info").await;
    let info: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(info["uid"], 2020);
    assert_eq!(info["gid"], 2021);
    assert_eq!(info["cwd"], "/tmp/work");
    assert!(
        info["args"].to_string().contains("extra-arg"),
        "{}",
        info["args"]
    );
    assert_eq!(info["writable"]["/"], false, "read-only root filesystem");
    assert_eq!(info["writable"]["/tmp"], true);
    assert_eq!(
        info["capabilities"]["CapEff"]
            .as_str()
            .map(|s| u64::from_str_radix(s.trim(), 16).unwrap_or(1)),
        Some(0),
        "non-root has no effective capabilities"
    );

    apply(
        &d,
        &service(
            "rt-nonroot",
            &image,
            "securityContext:\n  runAsNonRoot: true\n",
            "",
        ),
    );
    assert_code(&d.cli(&["scale", "rt-nonroot", "1"]), 0);
    let client = d.client();
    let rev = wait_for(
        "the revision to fail",
        Duration::from_millis(50),
        MAX_WAIT,
        || {
            let client = client.clone();
            async move {
                let r = client
                    .get_revision("default", "rt-nonroot-00001")
                    .await
                    .ok()?;
                (r.condition("Ready")?.status == skiff_api::object::ConditionStatus::False)
                    .then_some(r)
            }
        },
    )
    .await
    .expect("failed");
    let msg = rev
        .condition("Ready")
        .and_then(|c| c.message.clone())
        .unwrap_or_default();
    assert!(msg.contains("runAsNonRoot"), "{msg}");
    d.cleanup().await.expect("cleanup");
}

/// Limits: with 350Mi, allocating 100 MB and 200 MB works and 500 MB is OOM-killed and
/// reported as OOMKilled (137); a fork bomb stops at the pids limit; the CPU quota shows up
/// as throttling.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) = registry_with_info_image(&["--pids-limit", "64"]).await;
    apply(
        &d,
        &service(
            "rt-limits",
            &image,
            "resources:\n  limits: {memory: 350Mi, cpu: 100m}\n",
            "",
        ),
    );
    assert_code(&d.cli(&["scale", "rt-limits", "1"]), 0);
    let inst = instance_where(&d, "rt-limits", "a ready instance", ready).await;
    let id = inst["id"].as_str().expect("id").to_owned();
    assert_eq!(http(&d, &id, "GET", "/alloc?mb=100").await.0, 200);
    assert_eq!(http(&d, &id, "GET", "/alloc?mb=200").await.0, 200);
    let (_, body) = http(&d, &id, "GET", "/burn?ms=1500").await;
    assert!(body.contains("spun_ms"), "{body}");
    let usage =
        instance_where(&d, "rt-limits", "usage", |i| i["id"] == id.as_str()).await["usage"].clone();
    assert!(
        usage["throttledPeriods"].as_u64().unwrap_or(0) > 0,
        "CPU quota throttled: {usage}"
    );
    // 500 MB: the kernel kills the process; the instance records why and restarts it.
    let (status, _) = http(&d, &id, "GET", "/alloc?mb=500").await;
    assert_ne!(status, 200, "allocating past the limit cannot succeed");
    let after = instance_where(&d, "rt-limits", "an OOM kill recorded", |i| {
        i["id"] == id.as_str()
            && i["status"]["containers"][0]["lastTermination"]["reason"] == "OOMKilled"
            && i["status"]["containers"][0]["restarts"]
                .as_u64()
                .unwrap_or(0)
                >= 1
    })
    .await;
    let term = &after["status"]["containers"][0]["lastTermination"];
    assert_eq!(term["exitCode"], 137, "{term}");
    instance_where(
        &d,
        "rt-limits",
        "the instance ready again after the restart",
        |i| i["id"] == id.as_str() && ready(i),
    )
    .await;
    // Last (its threads park for good): a fork bomb stops at the pids limit.
    let (status, body) = http(&d, &id, "GET", "/forkbomb?max=1000").await;
    assert_eq!(status, 200, "{body}");
    let created: Value = serde_json::from_str(&body).expect("json");
    assert!(created["created"].as_u64().unwrap_or(1000) < 64, "{body}");
    let usage =
        instance_where(&d, "rt-limits", "usage", |i| i["id"] == id.as_str()).await["usage"].clone();
    assert!(
        usage["pidsLimitHits"].as_u64().unwrap_or(0) > 0,
        "the fork bomb hit the pids limit: {usage}"
    );
    assert!(usage["pids"].as_u64().unwrap_or(99) <= 64, "{usage}");
    d.cleanup().await.expect("cleanup");
}

/// Free bytes of the file system holding `path`, for an unprivileged user.
fn free_bytes(path: &Path) -> u64 {
    let st = rustix::fs::statvfs(path).expect("statvfs");
    st.f_bavail * st.f_frsize
}

/// Storage: a non-root user writes to a disk emptyDir and to an emptyDir mounted at /tmp
/// (which replaces the runtime's), each bounded (ENOSPC past its sizeLimit); a 2 GiB write
/// into the writable layer of an instance limited to 256Mi ends in ENOSPC or an OOM kill,
/// and the host's disk keeps its free space.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storage_is_writable_and_bounded() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) = registry_with_info_image(&[]).await;
    apply(
        &d,
        &service(
            "rt-storage",
            &image,
            "securityContext: {runAsUser: 2020, runAsGroup: 2021}\nresources:\n  limits: {memory: 256Mi}\nvolumeMounts:\n- {name: data, mountPath: /data}\n- {name: scratch, mountPath: /tmp}\n",
            "volumes:\n- name: data\n  emptyDir: {}\n- name: scratch\n  emptyDir: {sizeLimit: 16Mi}\n",
        ),
    );
    apply(
        &d,
        &service(
            "rt-layer",
            &image,
            "resources:\n  limits: {memory: 256Mi}\n",
            "",
        ),
    );
    assert_code(&d.cli(&["scale", "rt-storage", "1"]), 0);
    assert_code(&d.cli(&["scale", "rt-layer", "1"]), 0);
    let inst = instance_where(&d, "rt-storage", "a ready instance", ready).await;
    let id = inst["id"].as_str().expect("id").to_owned();
    let (_, body) = http(&d, &id, "GET", "/info").await;
    let info: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(info["uid"], 2020, "{body}");
    for path in ["/data/a", "/tmp/a"] {
        let (status, body) = http(&d, &id, "POST", &format!("/write?path={path}&mib=4")).await;
        assert_eq!(status, 200, "uid 2020 writes {path}: {body}");
    }
    // The /tmp emptyDir is the volume (16Mi), not the runtime's tmpfs (half the limit).
    let (status, body) = http(&d, &id, "POST", "/write?path=/tmp/big&mib=64").await;
    assert_eq!(status, 507, "past the sizeLimit: {body}");
    let answer: Value = serde_json::from_str(&body).expect("json");
    assert_eq!(answer["errno"], 28, "ENOSPC: {body}");
    assert!(answer["written_mib"].as_u64().unwrap_or(99) < 16, "{body}");

    let layer = instance_where(&d, "rt-layer", "a ready instance", ready).await;
    let layer_id = layer["id"].as_str().expect("id").to_owned();
    let free_before = free_bytes(d.data_dir());
    let (status, body) = http(&d, &layer_id, "POST", "/write?path=/big&mib=2048").await;
    let free_after = free_bytes(d.data_dir());
    eprintln!("a 2 GiB write into the writable layer of a 256Mi instance: {status} {body}");
    match status {
        // ENOSPC: the layer's tmpfs is full.
        507 => {
            let answer: Value = serde_json::from_str(&body).expect("json");
            assert_eq!(answer["errno"], 28, "{body}");
        }
        // The connection was cut: the memory limit's OOM kill, which the instance records.
        0 => {
            instance_where(&d, "rt-layer", "an OOM kill recorded", |i| {
                i["id"] == layer_id.as_str()
                    && i["status"]["containers"][0]["lastTermination"]["reason"] == "OOMKilled"
            })
            .await;
        }
        other => panic!("a 2 GiB write into a 256Mi instance answered {other}: {body}"),
    }
    assert!(
        free_after + (64 << 20) >= free_before,
        "the host disk lost {} MiB",
        (free_before - free_after) >> 20
    );

    delete_and_wait(&d, &["rt-storage", "rt-layer"]).await;
    assert_nothing_left(d.data_dir(), &["rt-storage", "rt-layer"]);
    d.cleanup().await.expect("cleanup");
}

/// A request through the ingress to Service `svc`: (status, body).
async fn ingress_get(d: &TestDaemon, svc: &str, path: &str) -> (u16, String) {
    let resp = crate::http()
        .get(format!("http://{}{path}", d.ingress()))
        .header("host", format!("{svc}.default.localhost"))
        .send()
        .await
        .expect("the ingress answers");
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

/// Failures that explain themselves: an app listening on the wrong port shows in the
/// revision's condition with the refused probe and the port, turns into
/// ProgressDeadlineExceeded at its deadline, and a request waiting for it gets that reason
/// in a 503 then (not at the activator's 60 s timeout); a request cut by an OOM kill gets a
/// 502 naming the instance and its memory limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_explain_themselves() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) = registry_with_info_image(&[]).await;
    // busybox httpd on 9090 while the Service says 8080.
    apply(
        &d,
        &format!(
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: rt-port\nspec:\n  template:\n    metadata:\n      annotations:\n        serving.knative.dev/progress-deadline: 4s\n    spec:\n      containers:\n      - image: {image}\n        command: [httpd, -f, -p, \"9090\", -h, /]\n        ports: [{{containerPort: 8080}}]\n"
        ),
    );
    let (status, body) = ingress_get(&d, "rt-port", "/").await;
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("ProgressDeadlineExceeded") && body.contains("rt-port-00001"),
        "the waiting request is told why: {body}"
    );
    assert!(
        !body.contains("refused"),
        "the public answer has no detail: {body}"
    );
    let r = d
        .client()
        .get_revision("default", "rt-port-00001")
        .await
        .expect("the revision");
    let ready = r
        .status
        .conditions
        .iter()
        .find(|c| c.condition_type == "Ready")
        .expect("Ready")
        .clone();
    assert_eq!(
        ready.reason.as_deref(),
        Some("ProgressDeadlineExceeded"),
        "{ready:?}"
    );
    let m = ready.message.unwrap_or_default();
    assert!(
        m.contains("readiness probe failing since")
            && m.contains("port 8080")
            && m.contains("refused")
            && m.contains("is the app listening on $PORT=8080?"),
        "{m}"
    );
    let o = d.cli(&["describe", "revision", "rt-port-00001"]);
    assert_code(&o, 0);
    assert!(
        stdout(&o).contains("ProgressDeadlineExceeded") && stdout(&o).contains("$PORT=8080"),
        "{}",
        stdout(&o)
    );

    apply(
        &d,
        &service(
            "rt-oom",
            &image,
            "resources:\n  limits: {memory: 64Mi}\n",
            "",
        ),
    );
    let (status, body) = ingress_get(&d, "rt-oom", "/alloc?mb=300").await;
    assert_eq!(status, 502, "{body}");
    assert!(
        body.contains("out of memory")
            && body.contains("memory limit 64Mi")
            && body.contains("rt-oom-00001-"),
        "the 502 names the instance and its limit: {body}"
    );

    for svc in ["rt-port", "rt-oom"] {
        assert_code(&d.cli(&["delete", "service", svc]), 0);
    }
    d.cleanup().await.expect("cleanup");
}

/// Probes: readiness gates Ready (httpGet and exec); a liveness failure restarts the
/// container and it recovers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) = registry_with_info_image(&[]).await;
    apply(
        &d,
        &service(
            "rt-probes",
            &image,
            "args: [\"--ready-after-ms\", \"1500\"]\nreadinessProbe:\n  httpGet: {path: /ready}\n  periodSeconds: 1\nlivenessProbe:\n  httpGet: {path: /healthz}\n  periodSeconds: 1\n  failureThreshold: 2\n",
            "",
        ),
    );
    assert_code(&d.cli(&["scale", "rt-probes", "1"]), 0);
    // Running but not ready while /ready answers 503.
    instance_where(&d, "rt-probes", "a running, not ready instance", |i| {
        i["status"]["phase"] == "running"
            && !ready(i)
            && i["status"]["containers"][0]["running"] == true
    })
    .await;
    let rev = d
        .client()
        .get_revision("default", "rt-probes-00001")
        .await
        .expect("revision");
    assert_ne!(
        rev.condition("Ready").map(|c| c.status),
        Some(skiff_api::object::ConditionStatus::True),
        "not Ready before the probe passes"
    );
    let inst = instance_where(&d, "rt-probes", "the instance ready", ready).await;
    let id = inst["id"].as_str().expect("id").to_owned();
    wait_for(
        "the revision Ready",
        Duration::from_millis(50),
        MAX_WAIT,
        || {
            let c = d.client();
            async move {
                (c.get_revision("default", "rt-probes-00001")
                    .await
                    .ok()?
                    .condition("Ready")?
                    .status
                    == skiff_api::object::ConditionStatus::True)
                    .then_some(())
            }
        },
    )
    .await
    .expect("ready");
    // Liveness: make /healthz fail; the container is restarted and recovers.
    assert_eq!(http(&d, &id, "POST", "/start-failing").await.0, 200);
    let restarted = instance_where(&d, "rt-probes", "a liveness restart", |i| {
        i["status"]["containers"][0]["restarts"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    })
    .await;
    assert_eq!(
        restarted["status"]["containers"][0]["lastTermination"]["reason"],
        "LivenessFailed"
    );
    instance_where(&d, "rt-probes", "ready again after the restart", |i| {
        ready(i)
            && i["status"]["containers"][0]["restarts"]
                .as_u64()
                .unwrap_or(0)
                >= 1
    })
    .await;

    // An exec readiness probe.
    apply(
        &d,
        &service(
            "rt-exec",
            &image,
            "args: [\"--ready-after-ms\", \"1000\"]\nreadinessProbe:\n  exec: {command: [sh, -c, \"wget -q -O /dev/null http://127.0.0.1:8080/ready\"]}\n  periodSeconds: 1\n",
            "",
        ),
    );
    assert_code(&d.cli(&["scale", "rt-exec", "1"]), 0);
    instance_where(
        &d,
        "rt-exec",
        "running, not ready (exec probe failing)",
        |i| i["status"]["containers"][0]["running"] == true && !ready(i),
    )
    .await;
    instance_where(&d, "rt-exec", "ready through the exec probe", ready).await;
    d.cleanup().await.expect("cleanup");
}

/// A crashing entrypoint gives the revision a crash-loop reason with its exit code and last
/// log lines; stop honours the grace period of a process that ignores SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_loop_and_grace() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) =
        registry_with_info_image(&["--termination-grace-period-seconds", "2"]).await;
    apply(
        &d,
        &service(
            "rt-crash",
            &image,
            "args: [\"--crash-after-ms\", \"50\"]\n",
            "",
        ),
    );
    assert_code(&d.cli(&["scale", "rt-crash", "1"]), 0);
    let client = d.client();
    let rev = wait_for(
        "a crash-loop reason",
        Duration::from_millis(50),
        MAX_WAIT,
        || {
            let client = client.clone();
            async move {
                let r = client
                    .get_revision("default", "rt-crash-00001")
                    .await
                    .ok()?;
                (r.condition("Ready")?.reason.as_deref() == Some("CrashLoopBackOff")).then_some(r)
            }
        },
    )
    .await
    .expect("crash loop");
    let ready = rev.condition("Ready").expect("Ready");
    assert_eq!(ready.status, skiff_api::object::ConditionStatus::False);
    let msg = ready.message.clone().unwrap_or_default();
    assert!(
        msg.contains("exited with code 3") && msg.contains("crashing now"),
        "{msg}"
    );
    let svc = client
        .get_service("default", "rt-crash")
        .await
        .expect("service");
    assert_eq!(
        svc.condition("Ready").map(|c| c.status),
        Some(skiff_api::object::ConditionStatus::False)
    );
    assert_code(&d.cli(&["scale", "rt-crash", "0"]), 0);

    // Grace: the daemon's termination grace (2 s) is the instance's grace period; the
    // process ignores SIGTERM.
    apply(
        &d,
        &service(
            "rt-grace",
            &image,
            "args: [\"--ignore-sigterm\"]\n",
            "timeoutSeconds: 2\n",
        ),
    );
    assert_code(&d.cli(&["scale", "rt-grace", "1"]), 0);
    instance_where(&d, "rt-grace", "ready", |i| i["status"]["ready"] == true).await;
    let started = std::time::Instant::now();
    assert_code(&d.cli(&["scale", "rt-grace", "0"]), 0);
    wait_for(
        "the instance to go",
        Duration::from_millis(20),
        MAX_WAIT,
        || {
            let c = d.client();
            async move {
                c.running_instances("default", "rt-grace")
                    .await
                    .ok()
                    .filter(|l| l.is_empty())
                    .map(|_| ())
            }
        },
    )
    .await
    .expect("gone");
    // The lower bound is the daemon's own timer; nothing bounds it from above.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "SIGKILL came only after the grace period"
    );
    let o = d.cli(&["logs", "rt-grace"]);
    assert!(
        stdout(&o).contains("got SIGTERM, ignoring"),
        "{}",
        stdout(&o)
    );
    wait_for(
        "crash-loop instance gone",
        Duration::from_millis(50),
        MAX_WAIT,
        || {
            let c = d.client();
            async move {
                c.running_instances("default", "rt-crash")
                    .await
                    .ok()
                    .filter(|l| l.is_empty())
                    .map(|_| ())
            }
        },
    )
    .await
    .expect("gone");
    delete_and_wait(&d, &["rt-crash", "rt-grace"]).await;
    assert_nothing_left(d.data_dir(), &["rt-crash", "rt-grace"]);
    d.cleanup().await.expect("cleanup");
}

/// Two containers share one network namespace like a pod: the sidecar is reachable on its
/// own port from the serving container's namespace.
#[tokio::test]
async fn sidecars_share_the_network() {
    if skip_without_runc() {
        return;
    }
    let (_reg, d, image) = registry_with_info_image(&[]).await;
    let yaml = format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: rt-pod\nspec:\n  template:\n    spec:\n      containers:\n      - name: app\n        image: {image}\n        ports: [{{containerPort: 8080}}]\n      - name: sidecar\n        image: {image}\n        command: [/bin/sh, -c, \"mkdir -p /tmp/w && echo sidecar > /tmp/w/index.html && exec httpd -f -p 9090 -h /tmp/w\"]\n"
    );
    apply(&d, &yaml);
    assert_code(&d.cli(&["scale", "rt-pod", "1"]), 0);
    let inst = instance_where(&d, "rt-pod", "ready", ready).await;
    let id = inst["id"].as_str().expect("id");
    let ns = d.data_dir().join("run/instances").join(id).join("netns");
    let fd: std::os::fd::OwnedFd = std::fs::File::open(&ns).expect("netns").into();
    let connector = Connector::new(1).expect("connector");
    let fd = Arc::new(fd);
    let body = wait_for(
        "the sidecar on 9090",
        Duration::from_millis(50),
        MAX_WAIT,
        || {
            let (c, fd) = (connector.clone(), fd.clone());
            async move {
                let mut s = c.connect(fd, 9090).await.ok()?;
                s.write_all(b"GET /index.html HTTP/1.0\r\n\r\n")
                    .await
                    .ok()?;
                let mut out = String::new();
                s.read_to_string(&mut out).await.ok()?;
                out.contains("sidecar").then_some(out)
            }
        },
    )
    .await
    .expect("sidecar reachable");
    assert!(body.contains("200"), "{body}");
    d.cleanup().await.expect("cleanup");
}

/// `kill -9` of the daemon with instances running: the restarted daemon re-adopts them (same
/// ids, still serving); an instance whose container died meanwhile is replaced; after the
/// test nothing is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_after_kill_9() {
    if skip_without_runc() {
        return;
    }
    let (_reg, mut d, image) = registry_with_info_image(&[]).await;
    apply(&d, &service("rt-recover", &image, "", ""));
    assert_code(&d.cli(&["scale", "rt-recover", "2"]), 0);
    let client = d.client();
    let both = wait_for(
        "two ready instances",
        Duration::from_millis(50),
        MAX_WAIT,
        || {
            let c = client.clone();
            async move {
                let l = instances_json(&c, "rt-recover").await?;
                (l.len() == 2 && l.iter().all(ready)).then_some(l)
            }
        },
    )
    .await
    .expect("two ready");
    let ids: Vec<String> = both
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_owned())
        .collect();
    d.kill9();
    // While the daemon is down, one instance's container dies.
    let victim_pid = both[1]["status"]["containers"][0]["pid"]
        .as_i64()
        .expect("pid");
    let _ = std::process::Command::new("kill")
        .args(["-9", &victim_pid.to_string()])
        .status();
    d.restart().await.expect("restart");
    let client = d.client();
    let after = wait_for(
        "two ready instances again",
        Duration::from_millis(50),
        MAX_WAIT,
        || {
            let c = client.clone();
            async move {
                let l = instances_json(&c, "rt-recover").await?;
                (l.len() == 2 && l.iter().all(ready)).then_some(l)
            }
        },
    )
    .await
    .expect("recovered");
    let after_ids: Vec<String> = after
        .iter()
        .map(|i| i["id"].as_str().expect("id").to_owned())
        .collect();
    assert!(
        after_ids.contains(&ids[0]),
        "the live instance was re-adopted: {ids:?} -> {after_ids:?}"
    );
    assert!(
        !after_ids.contains(&ids[1]),
        "the dead one was replaced: {ids:?} -> {after_ids:?}"
    );
    assert_eq!(
        http(&d, &ids[0], "GET", "/").await.0,
        200,
        "the adopted instance serves"
    );
    assert!(
        d.log_text()
            .contains("recovered instances of the previous run")
    );
    assert_code(&d.cli(&["scale", "rt-recover", "0"]), 0);
    wait_for(
        "instances gone",
        Duration::from_millis(50),
        MAX_WAIT,
        || {
            let c = d.client();
            async move {
                c.running_instances("default", "rt-recover")
                    .await
                    .ok()
                    .filter(|l| l.is_empty())
                    .map(|_| ())
            }
        },
    )
    .await
    .expect("gone");
    delete_and_wait(&d, &["rt-recover"]).await;
    assert_nothing_left(d.data_dir(), &["rt-recover"]);
    d.cleanup().await.expect("cleanup");
}
