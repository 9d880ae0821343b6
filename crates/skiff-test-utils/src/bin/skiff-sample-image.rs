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
use skiff_test_utils::oci::{Compression, big_layer};

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
    let mut image = skiff_test_utils::images::sample_image()?;
    if big_mib > 0 {
        image = image.layer(big_layer("srv/data.bin", big_mib << 20, Compression::Gzip)?);
    }
    let info = image.write_oci_layout(&out, &tag)?;
    println!("{} {}", out.display(), info.manifest_digest);
    Ok(())
}
