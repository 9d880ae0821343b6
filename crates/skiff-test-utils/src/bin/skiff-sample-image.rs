//! Builds skiff's sample image as an OCI image layout, from the host's static busybox:
//! `httpd` serving a greeting on `$PORT` (8080 by default).
//!
//! ```text
//! skiff-sample-image OUT_DIR [--tag TAG] [--big-layer-mib N]
//! ```
//!
//! `--big-layer-mib` adds a layer of N MiB of incompressible bytes (for pull benchmarks).
//! The quick start imports the result with `skiff images import OUT_DIR --tag skiff.local/hello:v1`.

use std::path::PathBuf;

use anyhow::{Context, bail};
use skiff_test_utils::oci::{Compression, Entry, ImageBuilder, big_layer, busybox_layer, layer};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let mut out: Option<PathBuf> = None;
    let mut tag = "latest".to_owned();
    let mut big_mib: u64 = 0;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--tag" => tag = args.next().context("--tag needs a value")?,
            "--big-layer-mib" => {
                big_mib = args
                    .next()
                    .context("--big-layer-mib needs a value")?
                    .parse()
                    .context("--big-layer-mib takes a number")?
            }
            "-h" | "--help" => {
                println!("usage: skiff-sample-image OUT_DIR [--tag TAG] [--big-layer-mib N]");
                return Ok(());
            }
            other if out.is_none() && !other.starts_with('-') => out = Some(PathBuf::from(other)),
            other => bail!("unexpected argument `{other}`"),
        }
    }
    let out = out.context("usage: skiff-sample-image OUT_DIR [--tag TAG] [--big-layer-mib N]")?;
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let page = "<!doctype html><title>skiff</title><h1>Hello from skiff!</h1>\n";
    let mut image = ImageBuilder::new()
        .layer(busybox_layer(Compression::Gzip)?)
        .layer(layer(
            &[Entry::dir("www"), Entry::file("www/index.html", page)],
            Compression::Gzip,
        ))
        .entrypoint(&["/bin/sh", "-c"])
        // httpd as PID 1 would ignore SIGTERM (PID 1 has no default signal actions), so the
        // shell stays PID 1 and forwards it: the instance stops at once instead of after its
        // whole grace period.
        .cmd(&["echo \"hello: serving /www on port ${PORT:-8080} as $(id -un)\"; httpd -f -v -p \"${PORT:-8080}\" -h /www & pid=$!; trap 'kill -TERM $pid; wait $pid; exit 0' TERM INT; wait $pid"])
        .expose("8080/tcp")
        .label("org.opencontainers.image.title", "skiff sample: hello");
    if big_mib > 0 {
        image = image.layer(big_layer("srv/data.bin", big_mib << 20, Compression::Gzip)?);
    }
    let info = image.write_oci_layout(&out, &tag)?;
    println!("{} {}", out.display(), info.manifest_digest);
    Ok(())
}
