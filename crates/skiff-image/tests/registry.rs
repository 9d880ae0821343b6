//! Pulls from a real registry (Debian's docker-registry on a loopback port) into the content
//! store, with images the test builds itself and pushes with skopeo. No mock of the registry.

use std::collections::HashSet;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::{Arc, Barrier, Mutex};
use std::time::Duration;

use skiff_api::image::ImageRef;
use skiff_image::auth::{CredentialStore, Credentials};
use skiff_image::content::ContentStore;
use skiff_image::metrics::ImageMetrics;
use skiff_image::puller::{PullEvent, Puller, no_progress};
use skiff_image::registry::{RegistryClient, RegistryOptions, RetryPolicy};
use skiff_image::{PullError, gc, import};
use skiff_store::{SqliteStore, Store};
use skiff_test_utils::oci::{
    Compression, Entry, ImageBuilder, Layer, big_layer, layer, list_tar, write_oci_index_layout,
};
use skiff_test_utils::registry::{PushFormat, Registry, skip_reason};
use tar::EntryType;

struct Env {
    dir: tempfile::TempDir,
    puller: Arc<Puller>,
}

fn fast_retry(attempts: u32) -> RetryPolicy {
    RetryPolicy {
        attempts,
        base_delay: Duration::from_millis(50),
        max_delay: Duration::from_millis(200),
        max_retry_after: Duration::from_secs(2),
        jitter: false,
    }
}

fn env_with(options: RegistryOptions, creds: CredentialStore) -> Env {
    let dir = tempfile::tempdir().expect("tempdir");
    let store: Arc<dyn Store> =
        Arc::new(SqliteStore::open(&dir.path().join("state.db")).expect("store"));
    let content = ContentStore::open(&dir.path().join("images"), store).expect("content");
    let client = Arc::new(RegistryClient::new(options, creds));
    Env {
        puller: Puller::new(client, content, ImageMetrics::unregistered()),
        dir,
    }
}

fn env() -> Env {
    let mut o = RegistryOptions::new();
    o.retry = fast_retry(3);
    env_with(o, CredentialStore::default())
}

fn skip() -> bool {
    if let Some(why) = skip_reason() {
        eprintln!("skipped: {why}");
        return true;
    }
    false
}

async fn push(
    reg: &Registry,
    image: &ImageBuilder,
    repo_tag: &str,
    format: PushFormat,
) -> skiff_test_utils::oci::ImageInfo {
    let layout = tempfile::tempdir().expect("layout");
    let info = image.write_oci_layout(layout.path(), "t").expect("layout");
    reg.push_oci_layout(layout.path(), "t", repo_tag, format, false)
        .await
        .expect("push");
    info
}

fn r(s: &str) -> ImageRef {
    s.parse().expect("reference")
}

/// Asserts that `dir` holds exactly what the layer's tar says, entry by entry: types, modes,
/// owners, contents, link targets, xattrs; whiteouts as 0/0 character devices and opaque
/// directories marked with `trusted.overlay.opaque=y`; device nodes skipped.
fn assert_layer_matches(dir: &Path, layer: &Layer) {
    let tar_bytes = layer.tar_bytes().expect("tar");
    let entries = list_tar(&tar_bytes[..]).expect("list");
    let mut contents = std::collections::HashMap::new();
    {
        let mut a = tar::Archive::new(&tar_bytes[..]);
        for e in a.entries().expect("entries") {
            let mut e = e.expect("entry");
            let p = e.path().expect("path").into_owned();
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut e, &mut v).expect("read");
            contents.insert(p, v);
        }
    }
    for e in &entries {
        let rel = e
            .path_str()
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned();
        if rel.is_empty() {
            continue;
        }
        let name = Path::new(&rel)
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_owned();
        let full = dir.join(&rel);
        if name == ".wh..wh..opq" {
            let parent = full.parent().expect("parent");
            let v = rustix::fs::lgetxattr(parent, "trusted.overlay.opaque", &mut [0u8; 8])
                .expect("opaque xattr");
            assert_eq!(v, 1, "{rel}");
            assert!(
                !full.exists(),
                "the marker itself is not materialized: {rel}"
            );
            continue;
        }
        if let Some(hidden) = name.strip_prefix(".wh.") {
            let w = full.with_file_name(hidden);
            let m = std::fs::symlink_metadata(&w)
                .unwrap_or_else(|e| panic!("whiteout {}: {e}", w.display()));
            assert!(
                std::os::unix::fs::FileTypeExt::is_char_device(&m.file_type()),
                "{rel} is a char device"
            );
            assert_eq!(m.rdev(), 0, "{rel} is 0/0");
            continue;
        }
        if e.kind == EntryType::Char || e.kind == EntryType::Block {
            assert!(
                std::fs::symlink_metadata(&full).is_err(),
                "device {rel} is skipped"
            );
            continue;
        }
        let m = std::fs::symlink_metadata(&full).unwrap_or_else(|err| panic!("{rel}: {err}"));
        assert_eq!(u64::from(m.uid()), e.uid, "{rel} uid");
        assert_eq!(u64::from(m.gid()), e.gid, "{rel} gid");
        match e.kind {
            EntryType::Directory => {
                assert!(m.is_dir(), "{rel} dir");
                assert_eq!(
                    m.permissions().mode() & 0o7777,
                    e.mode & 0o7777,
                    "{rel} mode"
                );
            }
            EntryType::Regular => {
                assert!(m.is_file(), "{rel} file");
                assert_eq!(
                    m.permissions().mode() & 0o7777,
                    e.mode & 0o7777,
                    "{rel} mode"
                );
                let want = contents.get(Path::new(&e.path_str())).expect("contents");
                assert_eq!(&std::fs::read(&full).expect("read"), want, "{rel} contents");
            }
            EntryType::Symlink => {
                assert!(m.file_type().is_symlink(), "{rel} symlink");
                assert_eq!(
                    std::fs::read_link(&full).expect("link").to_string_lossy(),
                    e.link_str().expect("target"),
                    "{rel} target"
                );
            }
            EntryType::Link => {
                let target = dir.join(e.link_str().expect("target").trim_start_matches("./"));
                assert_eq!(
                    m.ino(),
                    std::fs::metadata(&target).expect("target").ino(),
                    "{rel} is a hard link"
                );
            }
            _ => {}
        }
        for (k, v) in &e.xattrs {
            if k.starts_with("user.") {
                let mut buf = vec![0u8; 256];
                let n = rustix::fs::lgetxattr(&full, k.as_str(), &mut buf).expect("xattr");
                assert_eq!(&buf[..n], &v[..], "{rel} xattr {k}");
            }
        }
    }
}

fn base_layer() -> Layer {
    layer(
        &[
            Entry::dir("etc"),
            Entry::file("etc/motd", "hello\n"),
            Entry::file("etc/config", "v1\n")
                .with_owner(1000, 1001)
                .with_mode(0o640),
            Entry::executable("bin/tool", "#!/bin/sh\necho tool\n").with_mode(0o4755),
            Entry::symlink("bin/alias", "tool"),
            Entry::hardlink("bin/tool2", "bin/tool"),
            Entry::dir("data"),
            Entry::file("data/old", "old\n"),
            Entry::file("etc/tagged", "x").with_xattr("user.skiff", "yes"),
        ],
        Compression::Gzip,
    )
}

fn middle_layer(c: Compression) -> Layer {
    layer(
        &[
            Entry::whiteout("etc/motd"),
            Entry::dir("data"),
            Entry::opaque_dir("data"),
            Entry::file("data/new", "new\n"),
            Entry::char_device("dev/null", 1, 3),
        ],
        c,
    )
}

fn top_layer() -> Layer {
    layer(
        &[Entry::file("etc/config", "v2\n").with_owner(1000, 1001)],
        Compression::None,
    )
}

/// A three-layer image (gzip, zstd, uncompressed) with a whiteout, an opaque directory, a
/// hard link, a symlink, a setuid file, owners and an xattr pulls as OCI, and each unpacked
/// layer matches its tar file by file; the same image as Docker v2s2 reuses every layer.
#[tokio::test]
async fn pulls_and_unpacks_layers_exactly() {
    if skip() {
        return;
    }
    let reg = Registry::start().await.expect("registry");
    let e = env();
    let layers = [base_layer(), middle_layer(Compression::Zstd), top_layer()];
    let mut image = ImageBuilder::new()
        .entrypoint(&["/bin/tool"])
        .cmd(&["--serve"])
        .env("A", "1")
        .working_dir("/data")
        .user("1000")
        .expose("8080/tcp");
    for l in &layers {
        image = image.layer(l.clone());
    }
    let info = push(&reg, &image, "skiff/layers:v1", PushFormat::Oci).await;
    let events = Arc::new(Mutex::new(Vec::new()));
    let ev2 = events.clone();
    let record = e
        .puller
        .pull(
            &r(&format!("{}/skiff/layers:v1", reg.addr())),
            Arc::new(move |ev| ev2.lock().expect("lock").push(ev)),
        )
        .await
        .expect("pull");
    assert_eq!(record.digest, info.manifest_digest);
    assert_eq!(record.config_digest, info.config_digest);
    assert_eq!(record.layers.len(), 3);
    assert_eq!(
        record.config.entrypoint.as_deref(),
        Some(&["/bin/tool".to_owned()][..])
    );
    assert_eq!(record.config.working_dir.as_deref(), Some("/data"));
    assert_eq!(record.config.user.as_deref(), Some("1000"));
    assert_eq!(
        record.pinned(),
        format!("{}/skiff/layers@{}", reg.addr(), info.manifest_digest)
    );
    for (l, rec) in layers.iter().zip(&record.layers) {
        assert_eq!(rec.digest, l.digest());
        assert_eq!(rec.diff_id, l.diff_id());
        assert!(e.puller.content().has_blob(&rec.digest));
        assert_layer_matches(
            &e.puller.content().layer_path(&rec.diff_id).expect("path"),
            l,
        );
    }
    {
        let events = events.lock().expect("lock");
        assert!(
            matches!(events.first(), Some(PullEvent::Resolved { layers, .. }) if layers.len() == 3)
        );
        assert!(matches!(events.last(), Some(PullEvent::Done { .. })));
    }

    // The same layers as Docker v2s2 (skopeo cannot write zstd into v2s2: gzip instead).
    let v2 = ImageBuilder::new()
        .layer(layers[0].clone())
        .layer(middle_layer(Compression::Gzip))
        .layer(layers[2].clone());
    push(&reg, &v2, "skiff/layers:v2s2", PushFormat::V2s2).await;
    let record2 = e
        .puller
        .pull(
            &r(&format!("{}/skiff/layers:v2s2", reg.addr())),
            no_progress(),
        )
        .await
        .expect("pull v2s2");
    assert_ne!(record2.digest, record.digest);
    assert_eq!(
        record2.layers[0].diff_id, record.layers[0].diff_id,
        "layers are shared by diff_id"
    );
    let all = e.puller.content().images().await.expect("images");
    assert_eq!(all.len(), 2);
    drop(e.dir);
}

/// The merged view of the layers through a real overlayfs mount is what the image means:
/// the whiteout hides a file, the opaque directory hides the lower contents, the top layer
/// overrides a file.
#[tokio::test]
async fn overlay_of_unpacked_layers_is_the_image() {
    if skip() {
        return;
    }
    let reg = Registry::start().await.expect("registry");
    let e = env();
    let image = ImageBuilder::new()
        .layer(base_layer())
        .layer(middle_layer(Compression::Zstd))
        .layer(top_layer());
    push(&reg, &image, "skiff/merge:v1", PushFormat::Oci).await;
    let record = e
        .puller
        .pull(&r(&format!("{}/skiff/merge:v1", reg.addr())), no_progress())
        .await
        .expect("pull");
    let lowers: Vec<String> = record
        .layers
        .iter()
        .rev()
        .map(|l| {
            e.puller
                .content()
                .layer_path(&l.diff_id)
                .expect("path")
                .display()
                .to_string()
        })
        .collect();
    let mnt = e.dir.path().join("merged");
    std::fs::create_dir(&mnt).expect("mkdir");
    let status = std::process::Command::new("mount")
        .args([
            "-t",
            "overlay",
            "overlay",
            "-o",
            &format!("lowerdir={}", lowers.join(":")),
        ])
        .arg(&mnt)
        .status()
        .expect("mount");
    assert!(status.success(), "mounting overlay");
    let check = || -> Result<(), String> {
        if mnt.join("etc/motd").exists() {
            return Err("whited-out etc/motd is visible".into());
        }
        if mnt.join("data/old").exists() {
            return Err("data/old under the opaque dir is visible".into());
        }
        if std::fs::read_to_string(mnt.join("data/new"))
            .ok()
            .as_deref()
            != Some("new\n")
        {
            return Err("data/new missing".into());
        }
        if std::fs::read_to_string(mnt.join("etc/config"))
            .ok()
            .as_deref()
            != Some("v2\n")
        {
            return Err("etc/config not overridden".into());
        }
        if std::fs::read_link(mnt.join("bin/alias"))
            .ok()
            .map(|p| p.display().to_string())
            .as_deref()
            != Some("tool")
        {
            return Err("symlink lost".into());
        }
        Ok(())
    };
    let result = check();
    let _ = std::process::Command::new("umount").arg(&mnt).status();
    result.expect("merged view");
}

/// An index with two platforms resolves to this host's; an index without it is refused with
/// the platforms it offers.
#[tokio::test]
async fn picks_platform_from_index() {
    if skip() {
        return;
    }
    let reg = Registry::start().await.expect("registry");
    let e = env();
    let amd = ImageBuilder::new()
        .layer(layer(&[Entry::file("arch", "amd64")], Compression::Gzip))
        .platform("linux", "amd64", None);
    let arm = ImageBuilder::new()
        .layer(layer(&[Entry::file("arch", "arm64")], Compression::Gzip))
        .platform("linux", "arm64", Some("v8"));
    let layout = tempfile::tempdir().expect("layout");
    let index = write_oci_index_layout(layout.path(), "multi", &[amd, arm.clone()]).expect("index");
    reg.push_oci_layout(
        layout.path(),
        "multi",
        "skiff/multi:v1",
        PushFormat::Oci,
        true,
    )
    .await
    .expect("push");
    let record = e
        .puller
        .pull(&r(&format!("{}/skiff/multi:v1", reg.addr())), no_progress())
        .await
        .expect("pull");
    assert_eq!(
        record.index_digest.as_deref(),
        Some(index.index_digest.as_str())
    );
    assert_eq!(record.digest, index.images[0].manifest_digest);
    assert_eq!(record.platform, "linux/amd64");
    let dir = e
        .puller
        .content()
        .layer_path(&record.layers[0].diff_id)
        .expect("path");
    assert_eq!(
        std::fs::read_to_string(dir.join("arch")).expect("read"),
        "amd64"
    );

    let layout = tempfile::tempdir().expect("layout");
    write_oci_index_layout(layout.path(), "arm", &[arm]).expect("index");
    reg.push_oci_layout(
        layout.path(),
        "arm",
        "skiff/armonly:v1",
        PushFormat::Oci,
        true,
    )
    .await
    .expect("push");
    let err = e
        .puller
        .pull(
            &r(&format!("{}/skiff/armonly:v1", reg.addr())),
            no_progress(),
        )
        .await
        .expect_err("no amd64");
    let msg = skiff_telemetry_chain(&err);
    assert!(
        msg.contains("no image for linux/amd64") && msg.contains("linux/arm64/v8"),
        "{msg}"
    );
    assert_eq!(err.reason(), "no_platform");
}

fn skiff_telemetry_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

/// A 64 MiB zstd layer pulls, verified by digest and diff_id, and counts its bytes.
#[tokio::test]
async fn pulls_a_big_layer() {
    if skip() {
        return;
    }
    let reg = Registry::start().await.expect("registry");
    let e = env();
    let big = big_layer("srv/blob.bin", 64 << 20, Compression::Zstd).expect("big layer");
    push(
        &reg,
        &ImageBuilder::new().layer(big.clone()),
        "skiff/big:v1",
        PushFormat::Oci,
    )
    .await;
    let bytes = Arc::new(Mutex::new(0u64));
    let b2 = bytes.clone();
    let record = e
        .puller
        .pull(
            &r(&format!("{}/skiff/big:v1", reg.addr())),
            Arc::new(move |ev| {
                if let PullEvent::Done { bytes, .. } = ev {
                    *b2.lock().expect("lock") = bytes;
                }
            }),
        )
        .await
        .expect("pull");
    let file = e
        .puller
        .content()
        .layer_path(&record.layers[0].diff_id)
        .expect("path")
        .join("srv/blob.bin");
    assert_eq!(std::fs::metadata(&file).expect("file").len(), 64 << 20);
    assert!(
        *bytes.lock().expect("lock") >= big.size(),
        "downloaded bytes are counted"
    );
}

/// Layers that try to write outside their directory are refused, and nothing is stored.
#[tokio::test]
async fn refuses_escaping_layers() {
    if skip() {
        return;
    }
    let reg = Registry::start().await.expect("registry");
    for (name, entries) in [
        ("dotdot", vec![Entry::raw_file("../escape", "pwned")]),
        ("absolute", vec![Entry::raw_file("/escape-abs", "pwned")]),
        (
            "symlink",
            vec![
                Entry::symlink("evil", "/tmp"),
                Entry::raw_file("evil/skiff-pwned", "pwned"),
            ],
        ),
    ] {
        let e = env();
        let l = layer(&entries, Compression::Gzip);
        push(
            &reg,
            &ImageBuilder::new().layer(l.clone()),
            &format!("skiff/{name}:v1"),
            PushFormat::Oci,
        )
        .await;
        let err = e
            .puller
            .pull(
                &r(&format!("{}/skiff/{name}:v1", reg.addr())),
                no_progress(),
            )
            .await
            .expect_err("refused");
        let msg = skiff_telemetry_chain(&err);
        assert_eq!(err.reason(), "unsafe_layer", "{name}: {msg}");
        assert!(msg.contains("the layer is refused"), "{name}: {msg}");
        assert!(
            !e.puller.content().has_layer(l.diff_id()),
            "{name}: no layer stored"
        );
        assert!(
            e.puller
                .content()
                .images()
                .await
                .expect("images")
                .is_empty(),
            "{name}: no image recorded"
        );
        let root = e.puller.content().root().to_path_buf();
        assert!(
            !root.join("layers/escape").exists()
                && !root.join("escape").exists()
                && !Path::new("/escape-abs").exists()
        );
        assert!(
            !Path::new("/tmp/skiff-pwned").exists(),
            "{name}: nothing written through the symlink"
        );
        let tmp: Vec<_> = std::fs::read_dir(root.join("tmp")).expect("tmp").collect();
        assert!(tmp.is_empty(), "{name}: staging cleaned: {tmp:?}");
    }
}

/// A blob corrupted in the registry's storage is refused with the blob and registry named,
/// and nothing of it is stored.
#[tokio::test]
async fn refuses_corrupt_blob() {
    if skip() {
        return;
    }
    let reg = Registry::start().await.expect("registry");
    let e = env();
    let l = layer(
        &[Entry::file("a", "real content that will be corrupted")],
        Compression::Gzip,
    );
    push(
        &reg,
        &ImageBuilder::new().layer(l.clone()),
        "skiff/corrupt:v1",
        PushFormat::Oci,
    )
    .await;
    let blob = reg.blob_path(l.digest());
    let len = std::fs::metadata(&blob).expect("blob").len() as usize;
    std::fs::write(&blob, vec![0x5a; len]).expect("corrupt");
    let err = e
        .puller
        .pull(
            &r(&format!("{}/skiff/corrupt:v1", reg.addr())),
            no_progress(),
        )
        .await
        .expect_err("corrupt");
    let msg = skiff_telemetry_chain(&err);
    assert_eq!(err.reason(), "corrupt", "{msg}");
    assert!(
        msg.contains(l.digest()) && msg.contains(&reg.addr()),
        "{msg}"
    );
    assert!(!e.puller.content().has_blob(l.digest()));
    assert!(
        e.puller
            .content()
            .images()
            .await
            .expect("images")
            .is_empty()
    );
}

/// A registry killed mid-download is retried, then reported clearly; after it comes back the
/// pull succeeds. The progress callback holds the download until the registry is dead, so
/// the kill lands mid-stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn registry_killed_mid_pull() {
    if skip() {
        return;
    }
    let mut reg = Registry::start().await.expect("registry");
    let e = env();
    let big = big_layer("srv/blob.bin", 32 << 20, Compression::None).expect("big layer");
    push(
        &reg,
        &ImageBuilder::new().layer(big.clone()),
        "skiff/killed:v1",
        PushFormat::Oci,
    )
    .await;
    let barrier = Arc::new(Barrier::new(2));
    let once = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (b2, o2) = (barrier.clone(), once.clone());
    let progress = Arc::new(move |ev: PullEvent| {
        if let PullEvent::Layer { done, .. } = ev
            && done > 0
            && !o2.swap(true, std::sync::atomic::Ordering::SeqCst)
        {
            b2.wait(); // the download is under way
            b2.wait(); // the registry is dead
        }
    });
    let puller = e.puller.clone();
    let reference = r(&format!("{}/skiff/killed:v1", reg.addr()));
    let reference2 = reference.clone();
    let pull = tokio::spawn(async move { puller.pull(&reference2, progress).await });
    let b3 = barrier.clone();
    tokio::task::spawn_blocking(move || b3.wait())
        .await
        .expect("join");
    reg.kill();
    let b4 = barrier.clone();
    tokio::task::spawn_blocking(move || b4.wait())
        .await
        .expect("join");
    let err = pull.await.expect("join").expect_err("registry is gone");
    let msg = skiff_telemetry_chain(&err);
    assert_eq!(err.reason(), "unreachable", "{msg}");
    assert!(
        msg.contains(&reg.addr()) && msg.contains("attempts"),
        "{msg}"
    );
    assert!(!e.puller.content().has_blob(big.digest()));
    reg.restart().await.expect("restart");
    let record = e
        .puller
        .pull(&reference, no_progress())
        .await
        .expect("pull after restart");
    assert_eq!(record.layers[0].diff_id, big.diff_id());
}

/// Wrong or missing credentials give a clear 401 error; the right ones pull.
#[tokio::test]
async fn registry_credentials() {
    if skip() {
        return;
    }
    let reg = Registry::start_with_htpasswd("skiff", "s3cret")
        .await
        .expect("registry");
    push(
        &reg,
        &ImageBuilder::new().layer(layer(&[Entry::file("x", "y")], Compression::Gzip)),
        "skiff/private:v1",
        PushFormat::Oci,
    )
    .await;
    let reference = r(&format!("{}/skiff/private:v1", reg.addr()));
    let e = env();
    let err = e
        .puller
        .pull(&reference, no_progress())
        .await
        .expect_err("no credentials");
    let msg = skiff_telemetry_chain(&err);
    assert_eq!(err.reason(), "unauthorized", "{msg}");
    assert!(
        msg.contains("401") && msg.contains("no credentials"),
        "{msg}"
    );
    let mut creds = CredentialStore::default();
    creds.insert(
        &reg.addr(),
        Credentials {
            username: "skiff".into(),
            password: "wrong".into(),
        },
    );
    let mut o = RegistryOptions::new();
    o.retry = fast_retry(3);
    let e = env_with(o.clone(), creds);
    let err = e
        .puller
        .pull(&reference, no_progress())
        .await
        .expect_err("wrong credentials");
    let msg = skiff_telemetry_chain(&err);
    assert!(msg.contains("401") && msg.contains("were refused"), "{msg}");
    let creds = CredentialStore::from_json(&format!(
        r#"{{"auths": {{"{}": {{"username": "skiff", "password": "s3cret"}}}}}}"#,
        reg.addr()
    ))
    .expect("json");
    let e = env_with(o, creds);
    e.puller
        .pull(&reference, no_progress())
        .await
        .expect("right credentials");
}

/// A mirror is tried first; a mirror that lacks the image falls back to the registry.
#[tokio::test]
async fn mirrors_first_then_origin() {
    if skip() {
        return;
    }
    let origin = Registry::start().await.expect("origin");
    let mirror = Registry::start().await.expect("mirror");
    let only_on_mirror =
        ImageBuilder::new().layer(layer(&[Entry::file("from", "mirror")], Compression::Gzip));
    push(&mirror, &only_on_mirror, "skiff/app:v1", PushFormat::Oci).await;
    let only_on_origin =
        ImageBuilder::new().layer(layer(&[Entry::file("from", "origin")], Compression::Gzip));
    push(&origin, &only_on_origin, "skiff/app:v2", PushFormat::Oci).await;
    let mut o = RegistryOptions::new();
    o.retry = fast_retry(2);
    o.mirrors.insert(origin.addr(), vec![mirror.addr()]);
    let e = env_with(o, CredentialStore::default());
    let rec = e
        .puller
        .pull(
            &r(&format!("{}/skiff/app:v1", origin.addr())),
            no_progress(),
        )
        .await
        .expect("via mirror");
    let dir = e
        .puller
        .content()
        .layer_path(&rec.layers[0].diff_id)
        .expect("path");
    assert_eq!(
        std::fs::read_to_string(dir.join("from")).expect("read"),
        "mirror"
    );
    let rec = e
        .puller
        .pull(
            &r(&format!("{}/skiff/app:v2", origin.addr())),
            no_progress(),
        )
        .await
        .expect("fallback");
    let dir = e
        .puller
        .content()
        .layer_path(&rec.layers[0].diff_id)
        .expect("path");
    assert_eq!(
        std::fs::read_to_string(dir.join("from")).expect("read"),
        "origin"
    );
    assert!(
        mirror.log_text().contains("skiff/app/manifests/v2"),
        "the mirror was asked first"
    );
}

/// Concurrent pulls of images sharing a big layer download it once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_pulls_share_one_download() {
    if skip() {
        return;
    }
    let reg = Registry::start().await.expect("registry");
    let e = env();
    let big = big_layer("srv/shared.bin", 24 << 20, Compression::Gzip).expect("big");
    let a = ImageBuilder::new()
        .layer(big.clone())
        .layer(layer(&[Entry::file("who", "a")], Compression::Gzip));
    let b = ImageBuilder::new()
        .layer(big.clone())
        .layer(layer(&[Entry::file("who", "b")], Compression::Gzip));
    push(&reg, &a, "skiff/a:v1", PushFormat::Oci).await;
    push(&reg, &b, "skiff/b:v1", PushFormat::Oci).await;
    let blob_gets = |log: String| {
        log.lines()
            .filter(|l| l.contains("\"GET /v2/") && l.contains(&format!("blobs/{}", big.digest())))
            .count()
    };
    let before = blob_gets(reg.log_text());
    let (p1, p2) = (e.puller.clone(), e.puller.clone());
    let (ra, rb) = (
        r(&format!("{}/skiff/a:v1", reg.addr())),
        r(&format!("{}/skiff/b:v1", reg.addr())),
    );
    let (x, y) = tokio::join!(
        tokio::spawn(async move { p1.pull(&ra, no_progress()).await }),
        tokio::spawn(async move { p2.pull(&rb, no_progress()).await })
    );
    x.expect("join").expect("pull a");
    y.expect("join").expect("pull b");
    let gets = blob_gets(reg.log_text());
    assert_eq!(
        gets.saturating_sub(before),
        1,
        "one download of the shared layer"
    );
}

/// OCI layouts (directory and tar) and docker archives import without a registry.
#[tokio::test]
async fn imports_layouts_and_docker_archives() {
    let e = env();
    let image = ImageBuilder::new().layer(base_layer()).cmd(&["/bin/tool"]);
    let layout = tempfile::tempdir().expect("layout");
    let info = image.write_oci_layout(layout.path(), "v1").expect("layout");
    let tag = r("skiff.local/imported:v1");
    let recs = import::import(&e.puller, layout.path(), Some(&tag), no_progress())
        .await
        .expect("import dir");
    assert_eq!(recs[0].digest, info.manifest_digest);
    assert!(e.puller.content().has_layer(base_layer().diff_id()));
    assert_eq!(
        e.puller
            .content()
            .by_tag("skiff.local/imported:v1")
            .await
            .expect("tag")
            .map(|i| i.digest),
        Some(info.manifest_digest.clone())
    );

    // The same layout as a tar.
    let tarball = e.dir.path().join("layout.tar");
    {
        let mut b = tar::Builder::new(std::fs::File::create(&tarball).expect("tar"));
        b.append_dir_all(".", layout.path()).expect("append");
        b.finish().expect("finish");
    }
    let recs = import::import(
        &e.puller,
        &tarball,
        Some(&r("skiff.local/imported:tar")),
        no_progress(),
    )
    .await
    .expect("import tar");
    assert_eq!(recs[0].digest, info.manifest_digest);

    // A docker save archive, named by its RepoTags.
    let archive = e.dir.path().join("docker.tar");
    image
        .write_docker_archive(&archive, "skiff.local/docker:v1")
        .expect("archive");
    let recs = import::import(&e.puller, &archive, None, no_progress())
        .await
        .expect("import docker");
    assert_eq!(recs[0].references, vec!["skiff.local/docker:v1".to_owned()]);
    assert_eq!(recs[0].layers[0].diff_id, base_layer().diff_id());

    // A blob altered in the layout is refused.
    let bad = tempfile::tempdir().expect("layout");
    image.write_oci_layout(bad.path(), "v1").expect("layout");
    let blob = bad
        .path()
        .join("blobs/sha256")
        .join(base_layer().digest().trim_start_matches("sha256:"));
    std::fs::write(&blob, b"tampered").expect("tamper");
    let e2 = env();
    let err = import::import(&e2.puller, bad.path(), Some(&tag), no_progress())
        .await
        .expect_err("tampered");
    assert!(err.to_string().contains("corrupt"), "{err}");
    // And a directory that is no image at all.
    let err = import::import(&e2.puller, e2.dir.path(), Some(&tag), no_progress())
        .await
        .expect_err("not an image");
    assert!(
        err.to_string()
            .contains("neither an OCI image layout nor a docker save archive"),
        "{err}"
    );
}

/// Garbage collection removes unused images and exactly the content only they used.
#[tokio::test]
async fn gc_keeps_what_is_used() {
    let e = env();
    let shared = base_layer();
    let only_b = layer(&[Entry::file("b", "b")], Compression::Gzip);
    let a = ImageBuilder::new().layer(shared.clone());
    let b = ImageBuilder::new()
        .layer(shared.clone())
        .layer(only_b.clone());
    let la = tempfile::tempdir().expect("a");
    let lb = tempfile::tempdir().expect("b");
    a.write_oci_layout(la.path(), "v1").expect("layout");
    b.write_oci_layout(lb.path(), "v1").expect("layout");
    let ra = import::import(
        &e.puller,
        la.path(),
        Some(&r("skiff.local/a:v1")),
        no_progress(),
    )
    .await
    .expect("a")
    .remove(0);
    import::import(
        &e.puller,
        lb.path(),
        Some(&r("skiff.local/b:v1")),
        no_progress(),
    )
    .await
    .expect("b");
    let in_use: HashSet<String> = [ra.digest.clone()].into();
    let report = gc::collect(e.puller.content(), &in_use, true)
        .await
        .expect("gc");
    assert_eq!(report.images, vec!["skiff.local/b:v1".to_owned()]);
    assert_eq!(report.layers, 1);
    assert!(
        e.puller.content().has_layer(shared.diff_id()),
        "shared layer kept"
    );
    assert!(
        !e.puller.content().has_layer(only_b.diff_id()),
        "b's own layer removed"
    );
    assert!(e.puller.content().has_blob(&ra.config_digest));
    let err: Option<PullError> = None;
    assert!(err.is_none());
}

/// A proxy in front of the real registry that answers the first request for each manifest
/// with 429 + `Retry-After: 1` and the first request for each blob with 503: the pull waits
/// as told, retries, and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn honours_retry_after_and_retries_5xx() {
    if skip() {
        return;
    }
    let reg = Registry::start().await.expect("registry");
    let l = layer(&[Entry::file("x", "throttled")], Compression::Gzip);
    push(
        &reg,
        &ImageBuilder::new().layer(l.clone()),
        "skiff/throttled:v1",
        PushFormat::Oci,
    )
    .await;

    #[derive(Clone)]
    struct Proxy {
        upstream: String,
        seen: Arc<Mutex<Vec<(String, u16, std::time::Instant)>>>,
        http: reqwest::Client,
    }
    async fn handle(
        axum::extract::State(p): axum::extract::State<Proxy>,
        req: axum::extract::Request,
    ) -> axum::response::Response {
        use axum::response::IntoResponse;
        let path = req
            .uri()
            .path_and_query()
            .map(|x| x.to_string())
            .unwrap_or_default();
        let first = !p
            .seen
            .lock()
            .expect("lock")
            .iter()
            .any(|(s, _, _)| s == &path);
        let fault = if first && path.contains("/manifests/") {
            Some((429u16, Some("1")))
        } else if first && path.contains("/blobs/") {
            Some((503u16, None))
        } else {
            None
        };
        if let Some((status, retry_after)) = fault {
            p.seen
                .lock()
                .expect("lock")
                .push((path, status, std::time::Instant::now()));
            let mut resp = (
                axum::http::StatusCode::from_u16(status).expect("status"),
                "{\"errors\":[{\"code\":\"TOOMANYREQUESTS\",\"message\":\"slow down\"}]}",
            )
                .into_response();
            if let Some(ra) = retry_after {
                resp.headers_mut()
                    .insert("retry-after", ra.parse().expect("header"));
            }
            return resp;
        }
        let mut upstream = p.http.get(format!("{}{}", p.upstream, path));
        if let Some(a) = req.headers().get("accept") {
            upstream = upstream.header("accept", a);
        }
        let resp = upstream.send().await.expect("upstream");
        let status = resp.status().as_u16();
        p.seen
            .lock()
            .expect("lock")
            .push((path, status, std::time::Instant::now()));
        let mut out = axum::response::Response::builder().status(status);
        for (k, v) in resp.headers() {
            out = out.header(k, v);
        }
        out.body(axum::body::Body::from(resp.bytes().await.expect("body")))
            .expect("response")
    }
    let _ = rustls::crypto::ring::default_provider().install_default();
    let proxy = Proxy {
        upstream: format!("http://{}", reg.addr()),
        seen: Arc::default(),
        http: reqwest::Client::new(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new()
        .fallback(handle)
        .with_state(proxy.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    let e = env();
    let rec = e
        .puller
        .pull(&r(&format!("{addr}/skiff/throttled:v1")), no_progress())
        .await
        .expect("pull through faults");
    assert_eq!(rec.layers[0].diff_id, l.diff_id());
    let seen = proxy.seen.lock().expect("lock").clone();
    let manifest: Vec<_> = seen
        .iter()
        .filter(|(p, _, _)| p.contains("/manifests/"))
        .collect();
    assert_eq!(manifest[0].1, 429);
    assert_eq!(manifest[1].1, 200);
    // The client's own sleep guarantees the lower bound; nothing here bounds it from above.
    assert!(
        manifest[1].2.duration_since(manifest[0].2) >= Duration::from_millis(950),
        "Retry-After: 1 was honoured"
    );
    let blob: Vec<_> = seen
        .iter()
        .filter(|(p, _, _)| p.contains(l.digest()))
        .collect();
    assert_eq!((blob[0].1, blob[1].1), (503, 200));
    server.abort();
}
