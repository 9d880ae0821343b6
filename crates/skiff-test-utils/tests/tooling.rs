//! Proves that the image builders in `skiff_test_utils::oci` write images that real tools
//! (skopeo 1.9, distribution 2.8) accept, and that `skiff_test_utils::registry` runs, guards
//! and restarts a real registry.
//!
//! Tests that need the registry or skopeo print `skipped: ...` and pass when not root or when
//! `docker-registry`/`skopeo` are missing.

use std::path::Path;

use anyhow::Context;
use serde_json::Value;
use skiff_test_utils::oci::{
    BUSYBOX_APPLETS, Compression, Entry, EntryType, HOST_BUSYBOX, ImageBuilder,
    MEDIA_TYPE_DOCKER_LIST, MEDIA_TYPE_DOCKER_MANIFEST, MEDIA_TYPE_INDEX, MEDIA_TYPE_LAYER_ZSTD,
    MEDIA_TYPE_MANIFEST, big_layer, busybox_layer, layer, sha256_digest, sha256_reader,
};
use skiff_test_utils::registry::{PushFormat, Registry, skip_reason, skopeo};

/// Prints why a registry test cannot run here, and says whether to skip it.
fn skipped(test: &str) -> bool {
    match skip_reason() {
        Some(why) => {
            eprintln!("skipped: {test}: {why}");
            true
        }
        None => false,
    }
}

/// A three-layer image: gzip (files, a symlink, a hard link, an xattr), `middle` (a whiteout,
/// an opaque directory) and uncompressed (a device node, an executable).
fn three_layer_image(middle: Compression) -> ImageBuilder {
    let base = layer(
        &[
            Entry::dir("etc"),
            Entry::file("etc/hello", b"hello from the base layer\n"),
            Entry::file("etc/motd", b"deleted by the next layer\n"),
            Entry::symlink("etc/greeting", "hello"),
            Entry::hardlink("etc/hello.hard", "etc/hello"),
            Entry::file("etc/capable", b"x").with_xattr("user.skiff", b"tested"),
            Entry::dir("var"),
            Entry::dir("var/cache"),
            Entry::file("var/cache/old", b"hidden by the opaque marker\n"),
        ],
        Compression::Gzip,
    );
    let middle = layer(
        &[
            Entry::whiteout("etc/motd"),
            Entry::dir("var/cache"),
            Entry::opaque_dir("var/cache"),
            Entry::file("var/cache/new", b"only child left\n"),
        ],
        middle,
    );
    let top = layer(
        &[
            Entry::dir("dev"),
            Entry::char_device("dev/null", 1, 3),
            Entry::executable("entrypoint.sh", b"#!/bin/sh\nexec \"$@\"\n"),
        ],
        Compression::None,
    );
    ImageBuilder::new()
        .layer(base)
        .layer(middle)
        .layer(top)
        .entrypoint(&["/entrypoint.sh"])
        .cmd(&["sleep", "1"])
        .env("PATH", "/bin")
        .working_dir("/tmp")
        .user("2020:2020")
        .expose("8080/tcp")
        .label("dev.skiff.test", "three-layers")
}

/// The `Layers` digests of a `skopeo inspect` summary.
fn layer_digests(inspect: &Value) -> Vec<String> {
    inspect["Layers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn read_json(path: &Path) -> anyhow::Result<Value> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))
}

// A 3-layer image (gzip, zstd, plain; whiteout, opaque dir, hard link, symlink, xattr) written
// as an OCI layout is pushed byte for byte as OCI. As v2s2, skopeo 1.9 refuses the zstd
// layer; the same image with a gzip middle layer converts, keeping the gzip layers' digests
// and the config, with the plain layer gzipped on the way.
#[tokio::test]
async fn three_layer_image_pushes_as_oci_and_v2s2() -> anyhow::Result<()> {
    if skipped("three_layer_image_pushes_as_oci_and_v2s2") {
        return Ok(());
    }
    let layout = tempfile::tempdir()?;
    let zstd_image = three_layer_image(Compression::Zstd);
    let info = zstd_image.write_oci_layout(layout.path(), "zstd")?;
    let kinds: Vec<&str> = info.layers.iter().map(|l| l.media_type.as_str()).collect();
    assert_eq!(
        kinds,
        [
            Compression::Gzip.media_type(),
            MEDIA_TYPE_LAYER_ZSTD,
            Compression::None.media_type()
        ]
    );
    let listed = zstd_image.layers()[1].list()?;
    let names: Vec<String> = listed.iter().map(|e| e.path_str()).collect();
    assert_eq!(
        names,
        [
            "etc/.wh.motd",
            "var/cache/",
            "var/cache/.wh..wh..opq",
            "var/cache/new"
        ]
    );
    let gzip_info = three_layer_image(Compression::Gzip).write_oci_layout(layout.path(), "gzip")?;
    let registry = Registry::start().await?;

    // skopeo 1.9 cannot express zstd in a Docker manifest, and does not recompress to get
    // there (not even with --dest-compress-format gzip).
    let refused = registry
        .push_oci_layout(
            layout.path(),
            "zstd",
            "skiff/three-refused:v2s2",
            PushFormat::V2s2,
            false,
        )
        .await
        .expect_err("skopeo 1.9 refuses zstd layers in v2s2");
    assert!(
        format!("{refused:#}").contains("zstd compression is not supported for docker images"),
        "{refused:#}"
    );

    // v2s2 goes before the OCI push: skopeo reuses a blob the registry already has, so once
    // the plain layer is stored as is, a later v2s2 push would reference it uncompressed.
    registry
        .push_oci_layout(
            layout.path(),
            "gzip",
            "skiff/three-v2s2:v1",
            PushFormat::V2s2,
            false,
        )
        .await?;
    let raw = registry.inspect("skiff/three-v2s2:v1", true).await?;
    assert_eq!(raw["mediaType"], MEDIA_TYPE_DOCKER_MANIFEST);
    assert_eq!(raw["config"]["digest"], gzip_info.config_digest.as_str());
    let pushed = layer_digests(&registry.inspect("skiff/three-v2s2:v1", false).await?);
    assert_eq!(pushed.len(), 3);
    assert_eq!(pushed[0], gzip_info.layers[0].digest);
    assert_eq!(pushed[1], gzip_info.layers[1].digest);
    assert_ne!(
        pushed[2], gzip_info.layers[2].digest,
        "the plain layer is gzipped"
    );
    assert_eq!(
        raw["layers"][2]["mediaType"],
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );

    registry
        .push_oci_layout(
            layout.path(),
            "zstd",
            "skiff/three:oci",
            PushFormat::Oci,
            false,
        )
        .await?;
    let inspect = registry.inspect("skiff/three:oci", false).await?;
    let ours: Vec<String> = info.layers.iter().map(|l| l.digest.clone()).collect();
    assert_eq!(layer_digests(&inspect), ours);
    assert_eq!(inspect["Digest"], info.manifest_digest.as_str());
    assert_eq!(inspect["Labels"]["dev.skiff.test"], "three-layers");
    let stored = registry.get("/v2/skiff/three/manifests/oci").await?;
    assert_eq!(stored.status, 200);
    assert_eq!(
        sha256_digest(&stored.body),
        info.manifest_digest,
        "the manifest is stored byte for byte"
    );
    assert_eq!(stored.header("content-type"), Some(MEDIA_TYPE_MANIFEST));
    registry.cleanup().await
}

// A two-platform image index (linux/amd64, linux/arm64/v8) is pushed with --all: as OCI the
// registry serves our index byte for byte, as v2s2 a Docker manifest list with both platforms.
#[tokio::test]
async fn two_platform_index_pushes_with_all() -> anyhow::Result<()> {
    if skipped("two_platform_index_pushes_with_all") {
        return Ok(());
    }
    let layout = tempfile::tempdir()?;
    let images = [
        ImageBuilder::new()
            .platform("linux", "amd64", None)
            .layer(layer(&[Entry::file("arch", b"amd64\n")], Compression::Gzip)),
        ImageBuilder::new()
            .platform("linux", "arm64", Some("v8"))
            .layer(layer(&[Entry::file("arch", b"arm64\n")], Compression::Zstd)),
    ];
    let info = skiff_test_utils::oci::write_oci_index_layout(layout.path(), "multi", &images)?;
    let registry = Registry::start().await?;

    registry
        .push_oci_layout(
            layout.path(),
            "multi",
            "skiff/multi:oci",
            PushFormat::Oci,
            true,
        )
        .await?;
    let index = registry.inspect("skiff/multi:oci", true).await?;
    assert_eq!(index["mediaType"], MEDIA_TYPE_INDEX);
    let platforms: Vec<(String, String)> = index["manifests"]
        .as_array()
        .context("manifests")?
        .iter()
        .map(|m| {
            (
                m["platform"]["architecture"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned(),
                m["digest"].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    assert_eq!(
        platforms,
        [
            ("amd64".to_owned(), info.images[0].manifest_digest.clone()),
            ("arm64".to_owned(), info.images[1].manifest_digest.clone()),
        ]
    );
    assert_eq!(index["manifests"][1]["platform"]["variant"], "v8");
    let stored = registry.get("/v2/skiff/multi/manifests/oci").await?;
    assert_eq!(sha256_digest(&stored.body), info.index_digest);
    // Every platform's manifest was pushed, not just the host's.
    let arm = registry
        .get(&format!(
            "/v2/skiff/multi/manifests/{}",
            info.images[1].manifest_digest
        ))
        .await?;
    assert_eq!(arm.status, 200);

    // The gzip-only amd64 image converts; the zstd arm64 one would not, so push amd64 twice.
    let gzip_images = [
        images[0].clone(),
        ImageBuilder::new()
            .platform("linux", "arm64", Some("v8"))
            .layer(layer(&[Entry::file("arch", b"arm64\n")], Compression::Gzip)),
    ];
    skiff_test_utils::oci::write_oci_index_layout(layout.path(), "gzip", &gzip_images)?;
    registry
        .push_oci_layout(
            layout.path(),
            "gzip",
            "skiff/multi:v2s2",
            PushFormat::V2s2,
            true,
        )
        .await?;
    let list = registry.inspect("skiff/multi:v2s2", true).await?;
    assert_eq!(list["mediaType"], MEDIA_TYPE_DOCKER_LIST);
    let archs: Vec<&str> = list["manifests"]
        .as_array()
        .context("manifests")?
        .iter()
        .filter_map(|m| m["platform"]["architecture"].as_str())
        .collect();
    assert_eq!(archs, ["amd64", "arm64"]);
    registry.cleanup().await
}

// A registry started with htpasswd answers 401 with a Basic challenge to anonymous requests
// (over plain HTTP), refuses a wrong password, and serves pushes and pulls with the right one.
#[tokio::test]
async fn htpasswd_registry_requires_credentials() -> anyhow::Result<()> {
    if skipped("htpasswd_registry_requires_credentials") {
        return Ok(());
    }
    let registry = Registry::start_with_htpasswd("alice", "s3cret").await?;
    let layout = tempfile::tempdir()?;
    let info = ImageBuilder::new()
        .layer(layer(&[Entry::file("secret", b"42\n")], Compression::Gzip))
        .write_oci_layout(layout.path(), "v1")?;
    registry
        .push_oci_layout(
            layout.path(),
            "v1",
            "skiff/private:v1",
            PushFormat::Oci,
            false,
        )
        .await?;

    let anonymous = registry
        .get_anonymous("/v2/skiff/private/manifests/v1")
        .await?;
    assert_eq!(anonymous.status, 401);
    assert_eq!(
        anonymous.header("www-authenticate"),
        Some("Basic realm=\"skiff-test\"")
    );
    let addr = registry.addr();
    let image = format!("docker://{addr}/skiff/private:v1");
    let err = skopeo(&["inspect", "--tls-verify=false", "--no-creds", &image])
        .await
        .expect_err("anonymous pull refused");
    assert!(
        format!("{err:#}").contains("unauthorized: authentication required"),
        "{err:#}"
    );
    let err = skopeo(&[
        "inspect",
        "--tls-verify=false",
        "--creds",
        "alice:wrong",
        &image,
    ])
    .await
    .expect_err("wrong password refused");
    assert!(!format!("{err:#}").contains("wrong"), "password redacted");

    let authed = registry.get("/v2/skiff/private/manifests/v1").await?;
    assert_eq!(authed.status, 200);
    let inspect = registry.inspect("skiff/private:v1", false).await?;
    assert_eq!(inspect["Digest"], info.manifest_digest.as_str());
    registry.cleanup().await
}

// A docker-save archive is read by skopeo (docker-archive transport): its layers are our
// uncompressed tars (digest = diff_id) and the copy to an OCI layout keeps the diff_ids.
#[tokio::test]
async fn docker_archive_is_accepted_by_skopeo() -> anyhow::Result<()> {
    if skipped("docker_archive_is_accepted_by_skopeo") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let archive = dir.path().join("image.tar");
    let image = three_layer_image(Compression::Zstd);
    let image_id = image.write_docker_archive(&archive, "skiff/archived:v1")?;
    let diff_ids: Vec<String> = image
        .layers()
        .iter()
        .map(|l| l.diff_id().to_owned())
        .collect();
    assert_eq!(image_id, sha256_digest(&image.config_json()));

    let source = format!("docker-archive:{}", archive.display());
    let inspect: Value = serde_json::from_str(&skopeo(&["inspect", &source]).await?)?;
    assert_eq!(layer_digests(&inspect), diff_ids);
    assert_eq!(inspect["Architecture"], "amd64");

    let out = dir.path().join("oci");
    skopeo(&[
        "copy".to_owned(),
        source,
        format!("oci:{}:copied", out.display()),
    ])
    .await?;
    let index = read_json(&out.join("index.json"))?;
    let manifest_digest = index["manifests"][0]["digest"]
        .as_str()
        .context("manifest digest")?;
    let manifest = read_json(&out.join("blobs/sha256").join(&manifest_digest[7..]))?;
    let config_digest = manifest["config"]["digest"].as_str().context("config")?;
    let config = read_json(&out.join("blobs/sha256").join(&config_digest[7..]))?;
    assert_eq!(config["rootfs"]["diff_ids"], serde_json::json!(diff_ids));
    assert_eq!(
        config["config"]["Entrypoint"],
        serde_json::json!(["/entrypoint.sh"])
    );
    Ok(())
}

// The busybox layer holds the host's static /bin/busybox, a symlink per applet, /tmp with
// mode 1777, and passwd/group entries for root, app (2020) and nobody (65534).
#[test]
fn busybox_layer_has_binary_and_applets() -> anyhow::Result<()> {
    if !Path::new(HOST_BUSYBOX).exists() {
        eprintln!("skipped: busybox_layer_has_binary_and_applets: {HOST_BUSYBOX} is missing");
        return Ok(());
    }
    let layer = busybox_layer(Compression::Gzip)?;
    let listed = layer.list()?;
    let find = |path: &str| {
        listed
            .iter()
            .find(|e| e.path_str() == path)
            .with_context(|| format!("{path} not in the busybox layer"))
    };
    let busybox = find("bin/busybox")?;
    assert_eq!(busybox.kind, EntryType::Regular);
    assert_eq!(busybox.mode, 0o755);
    assert_eq!(busybox.size, std::fs::metadata(HOST_BUSYBOX)?.len());
    for applet in BUSYBOX_APPLETS {
        let link = find(&format!("bin/{applet}"))?;
        assert_eq!(link.kind, EntryType::Symlink, "{applet}");
        assert_eq!(link.link_str().as_deref(), Some("busybox"), "{applet}");
    }
    assert_eq!(find("tmp/")?.mode, 0o1777);
    let tar = layer.tar_bytes()?;
    let mut archive = tar::Archive::new(&tar[..]);
    let mut passwd = String::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry.path_bytes().as_ref() == b"etc/passwd" {
            std::io::Read::read_to_string(&mut entry, &mut passwd)?;
        }
    }
    assert!(passwd.contains("app:x:2020:2020:"), "{passwd}");
    assert!(passwd.contains("nobody:x:65534:65534:"), "{passwd}");
    find("etc/group")?;
    Ok(())
}

// After SIGKILL the registry is down; restarted on the same port and storage it still serves
// the pushed manifest and blobs, and blob_path names the file holding a blob.
#[tokio::test]
async fn killed_registry_restarts_with_content() -> anyhow::Result<()> {
    if skipped("killed_registry_restarts_with_content") {
        return Ok(());
    }
    let mut registry = Registry::start().await?;
    let layout = tempfile::tempdir()?;
    let info = ImageBuilder::new()
        .layer(layer(
            &[Entry::file("kept", b"survives\n")],
            Compression::Gzip,
        ))
        .write_oci_layout(layout.path(), "v1")?;
    registry
        .push_oci_layout(
            layout.path(),
            "v1",
            "skiff/durable:v1",
            PushFormat::Oci,
            false,
        )
        .await?;
    let blob = &info.layers[0];
    let on_disk = std::fs::read(registry.blob_path(&blob.digest))?;
    assert_eq!(sha256_digest(&on_disk), blob.digest);

    let addr = registry.addr();
    registry.kill();
    assert!(registry.pid().is_none());
    assert!(
        tokio::net::TcpStream::connect(&addr).await.is_err(),
        "nothing listens after the kill"
    );
    registry.restart().await?;
    assert_eq!(registry.addr(), addr);
    let inspect = registry.inspect("skiff/durable:v1", false).await?;
    assert_eq!(inspect["Digest"], info.manifest_digest.as_str());
    let served = registry
        .get(&format!("/v2/skiff/durable/blobs/{}", blob.digest))
        .await?;
    assert_eq!(served.status, 200);
    assert_eq!(sha256_digest(&served.body), blob.digest);
    registry.cleanup().await
}

// A 64 MiB zstd layer is streamed to a file with correct digest, size and diff_id, and pushes
// to the registry intact.
#[tokio::test]
async fn big_layer_streams_and_pushes() -> anyhow::Result<()> {
    const SIZE: u64 = 64 << 20;
    let big = tokio::task::spawn_blocking(|| big_layer("data/big.bin", SIZE, Compression::Zstd))
        .await??;
    assert!(big.size() > SIZE, "noise does not compress: {}", big.size());
    assert!(big.tar_size > SIZE);
    let (digest, size) = sha256_reader(big.open_blob()?)?;
    assert_eq!((digest.as_str(), size), (big.digest(), big.size()));
    let listed = big.list()?;
    let names: Vec<String> = listed.iter().map(|e| e.path_str()).collect();
    assert_eq!(names, ["data/", "data/big.bin"]);
    assert_eq!(listed[1].size, SIZE);
    if skipped("big_layer_streams_and_pushes (push part)") {
        return Ok(());
    }
    let layout = tempfile::tempdir()?;
    let image = ImageBuilder::new().layer(big.clone());
    let info = tokio::task::spawn_blocking({
        let dir = layout.path().to_owned();
        move || image.write_oci_layout(&dir, "big")
    })
    .await??;
    let registry = Registry::start().await?;
    registry
        .push_oci_layout(layout.path(), "big", "skiff/big:v1", PushFormat::Oci, false)
        .await?;
    let stored = registry.blob_path(big.digest());
    assert_eq!(std::fs::metadata(&stored)?.len(), big.size());
    let inspect = registry.inspect("skiff/big:v1", false).await?;
    assert_eq!(inspect["Digest"], info.manifest_digest.as_str());
    registry.cleanup().await
}
