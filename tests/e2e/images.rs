//! Images through the daemon: revisions pinned to digests, pull failures in conditions, and
//! the `skiff images` commands, against a real registry.

use std::time::Duration;

use skiff_test_utils::oci::{Compression, Entry, ImageBuilder, busybox_layer, layer};
use skiff_test_utils::registry::{PushFormat, Registry, skip_reason};
use skiff_test_utils::{MAX_WAIT, TestDaemon, wait_for};

use crate::{SKIFF, assert_code, stderr, stdout};

fn service(name: &str, image: &str, target: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n    spec:\n      containers:\n      - image: {image}\n        env:\n        - name: TARGET\n          value: \"{target}\"\n"
    )
}

async fn push(reg: &Registry, image: &ImageBuilder, repo_tag: &str) -> String {
    let dir = tempfile::tempdir().expect("layout");
    let info = image.write_oci_layout(dir.path(), "t").expect("layout");
    reg.push_oci_layout(dir.path(), "t", repo_tag, PushFormat::Oci, false)
        .await
        .expect("push");
    info.manifest_digest
}

async fn pinned(d: &TestDaemon, revision: &str) -> String {
    let client = d.client();
    wait_for(
        &format!("{revision} to be pinned"),
        Duration::from_millis(50),
        MAX_WAIT,
        || {
            let client = client.clone();
            let revision = revision.to_owned();
            async move {
                let r = client.get_revision("default", &revision).await.ok()?;
                r.status.container_statuses.first()?.image_digest.clone()
            }
        },
    )
    .await
    .expect("pinned")
}

/// Applying a Service pulls its image and pins the revision to the digest; moving the tag
/// later never changes that revision; a new template pins to the new digest.
#[tokio::test]
async fn revisions_are_pinned_to_digests() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let reg = Registry::start().await.expect("registry");
    let v1 = ImageBuilder::new()
        .layer(busybox_layer(Compression::Gzip).expect("busybox"))
        .cmd(&["httpd", "-f", "-p", "8080"]);
    let digest1 = push(&reg, &v1, "skiff/hello:v1").await;
    let d = TestDaemon::start(SKIFF).await.expect("daemon");
    let image = format!("{}/skiff/hello:v1", reg.addr());
    crate::apply(&d, &service("hello", &image, "a"));
    let pin1 = pinned(&d, "hello-00001").await;
    assert_eq!(pin1, format!("{}/skiff/hello@{digest1}", reg.addr()));
    let rev = d
        .client()
        .get_revision("default", "hello-00001")
        .await
        .expect("revision");
    let ready = rev.condition("Ready").expect("Ready");
    assert_ne!(
        ready.status,
        skiff_api::object::ConditionStatus::False,
        "pulled; its first instance starts (initial scale): {ready:?}"
    );

    // Move the tag; a metadata-only change keeps the revision and its digest.
    let v2 = ImageBuilder::new()
        .layer(busybox_layer(Compression::Gzip).expect("busybox"))
        .layer(layer(&[Entry::file("v", "2")], Compression::Gzip));
    let digest2 = push(&reg, &v2, "skiff/hello:v1").await;
    assert_ne!(digest1, digest2);
    let labelled = service("hello", &image, "a")
        .replace("  name: hello\n", "  name: hello\n  labels: {team: x}\n");
    crate::apply(&d, &labelled);
    assert_eq!(
        pinned(&d, "hello-00001").await,
        pin1,
        "a revision never changes its digest"
    );
    // A template change stamps a revision pinned to what the tag means now.
    crate::apply(&d, &service("hello", &image, "b"));
    assert_eq!(
        pinned(&d, "hello-00002").await,
        format!("{}/skiff/hello@{digest2}", reg.addr())
    );

    // Both images are in use: removing one is refused; prune keeps them.
    let o = d.cli(&["images", "ls"]);
    assert_code(&o, 0);
    assert!(stdout(&o).contains("yes"), "{}", stdout(&o));
    let o = d.cli(&["images", "rm", &pin1]);
    assert_code(&o, 5);
    assert!(stderr(&o).contains("used by a revision"), "{}", stderr(&o));
    assert_code(&d.cli(&["images", "prune"]), 0);
    assert!(d.client().inspect_image(&pin1).await.is_ok());
    // The metrics count the pulls per registry.
    let metrics = crate::http()
        .get(format!("{}/metrics", d.api()))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        metrics.contains(&format!(
            "skiff_image_pulls_total{{registry=\"{}\",outcome=\"success\"}} 2",
            reg.addr()
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("skiff_image_pull_bytes_total"),
        "{metrics}"
    );
    d.cleanup().await.expect("cleanup");
}

/// An image that does not exist makes the revision and the Service `Ready=False` with
/// reason `ImagePullFailed` and the registry's own message.
#[tokio::test]
async fn missing_image_is_image_pull_failed() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let reg = Registry::start().await.expect("registry");
    let d = TestDaemon::start(SKIFF).await.expect("daemon");
    let image = format!("{}/skiff/nope:v1", reg.addr());
    crate::apply(&d, &service("broken", &image, "a"));
    let client = d.client();
    let service = wait_for(
        "the Service to fail",
        Duration::from_millis(50),
        MAX_WAIT,
        || {
            let client = client.clone();
            async move {
                let s = client.get_service("default", "broken").await.ok()?;
                let ready = s.condition("Ready")?;
                (ready.status == skiff_api::object::ConditionStatus::False).then_some(s)
            }
        },
    )
    .await
    .expect("failed");
    let ready = service.condition("Ready").expect("Ready");
    assert_eq!(ready.reason.as_deref(), Some("RevisionFailed"));
    let rev = client
        .get_revision("default", "broken-00001")
        .await
        .expect("revision");
    let rr = rev.condition("Ready").expect("Ready");
    assert_eq!(rr.reason.as_deref(), Some("ImagePullFailed"));
    let msg = rr.message.clone().unwrap_or_default();
    assert!(
        msg.contains("MANIFEST_UNKNOWN") && msg.contains(&reg.addr()),
        "{msg}"
    );
    let o = d.cli(&["describe", "service", "broken"]);
    assert!(
        stdout(&o).contains("ImagePullFailed") || stdout(&o).contains("RevisionFailed"),
        "{}",
        stdout(&o)
    );
    d.cleanup().await.expect("cleanup");
}

/// `skiff images pull`, `import` (OCI layout and docker archive), `ls`, `inspect`, `rm` and
/// `prune` through the daemon.
#[tokio::test]
async fn images_commands() {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return;
    }
    let reg = Registry::start().await.expect("registry");
    let img = ImageBuilder::new().layer(layer(&[Entry::file("hello", "world")], Compression::Gzip));
    let digest = push(&reg, &img, "skiff/cli:v1").await;
    let d = TestDaemon::start(SKIFF).await.expect("daemon");
    let reference = format!("{}/skiff/cli:v1", reg.addr());
    let o = d.cli(&["images", "pull", &reference]);
    assert_code(&o, 0);
    assert!(stdout(&o).contains(&digest), "{}", stdout(&o));
    assert!(stderr(&o).contains("resolved to"), "{}", stderr(&o));
    let o = d.cli(&["images", "pull", &format!("{}/skiff/absent:v1", reg.addr())]);
    assert_code(&o, 4);
    assert!(stderr(&o).contains("MANIFEST_UNKNOWN"), "{}", stderr(&o));

    let dir = tempfile::tempdir().expect("dir");
    let layout = dir.path().join("layout");
    std::fs::create_dir(&layout).expect("mkdir");
    let local = ImageBuilder::new().layer(layer(&[Entry::file("local", "1")], Compression::Zstd));
    local.write_oci_layout(&layout, "v1").expect("layout");
    let o = d.cli(&[
        "images",
        "import",
        layout.to_str().expect("utf8"),
        "--tag",
        "skiff.local/imported:v1",
    ]);
    assert_code(&o, 0);
    let archive = dir.path().join("docker.tar");
    local
        .write_docker_archive(&archive, "skiff.local/saved:v1")
        .expect("archive");
    assert_code(
        &d.cli(&["images", "import", archive.to_str().expect("utf8")]),
        0,
    );
    let o = d.cli(&[
        "images",
        "import",
        dir.path().join("nothing").to_str().expect("utf8"),
    ]);
    assert_ne!(o.status.code(), Some(0));

    let o = d.cli(&["images", "ls", "-o", "json"]);
    let list: serde_json::Value = serde_json::from_slice(&o.stdout).expect("json");
    let refs: Vec<String> = list
        .as_array()
        .expect("array")
        .iter()
        .flat_map(|v| {
            v["image"]["references"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|r| r.as_str().map(str::to_owned))
        .collect();
    for want in [
        reference.as_str(),
        "skiff.local/imported:v1",
        "skiff.local/saved:v1",
    ] {
        assert!(refs.iter().any(|r| r == want), "{want} in {refs:?}");
    }
    let o = d.cli(&["images", "inspect", "skiff.local/saved:v1", "-o", "json"]);
    assert_code(&o, 0);
    assert!(
        stdout(&o).contains("\"source\": \"import\""),
        "{}",
        stdout(&o)
    );
    assert_code(&d.cli(&["images", "rm", "skiff.local/saved:v1"]), 0);
    assert_code(&d.cli(&["images", "inspect", "skiff.local/saved:v1"]), 4);
    let o = d.cli(&["images", "prune"]);
    assert_code(&o, 0);
    assert!(stdout(&o).contains("freed"), "{}", stdout(&o));
    let o = d.cli(&["images", "ls", "-o", "json"]);
    assert_eq!(stdout(&o).trim(), "[]", "nothing in use, everything pruned");
    d.cleanup().await.expect("cleanup");
}
