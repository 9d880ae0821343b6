//! Images without a registry: `skiff images import` of an OCI image layout (directory or
//! tar) or a `docker save` archive.
//!
//! Every blob is verified against its digest as it is copied into the content store, every
//! layer against its diff_id as it is unpacked; an archive is read entry by entry and never
//! extracted to arbitrary paths.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use skiff_api::image::ImageRef;

use crate::content::{ConfigFile, ContentError, ImageRecord, LayerRecord};
use crate::manifest::{self, Parsed};
use crate::puller::{LayerInfo, LayerStatus, Progress, PullError, PullEvent, Puller};
use crate::registry::{digest_of, sha256_hex};

/// An import failed.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Not an OCI layout or docker archive.
    #[error("`{path}` is neither an OCI image layout nor a docker save archive: {why}")]
    Format {
        /// The input.
        path: String,
        /// What is missing.
        why: String,
    },
    /// A file of the input is unreadable.
    #[error("reading `{path}`")]
    Io {
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// A blob does not match its digest.
    #[error("blob {digest} in the input is corrupt: its content hashes to {actual}")]
    Digest {
        /// The digest named.
        digest: String,
        /// What the bytes hash to.
        actual: String,
    },
    /// The manifest or config is invalid.
    #[error("{0}")]
    Invalid(String),
    /// Storing failed.
    #[error("storing the image")]
    Content(#[from] ContentError),
    /// A layer could not be unpacked.
    #[error("importing the image")]
    Pull(#[from] PullError),
}

fn io(path: &Path) -> impl FnOnce(io::Error) -> ImportError + use<> {
    let path = path.display().to_string();
    move |source| ImportError::Io { path, source }
}

/// Copies `src` into the store as blob `digest` (or computes the digest when `None`),
/// verifying it; returns the digest and size.
fn copy_blob(
    puller: &Puller,
    src: &mut dyn Read,
    digest: Option<&str>,
) -> Result<(String, u64), ImportError> {
    let content = puller.content();
    let staged = content.staging("import");
    let mut out = fs::File::create(&staged).map_err(io(&staged))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 256 * 1024];
    let mut size = 0u64;
    loop {
        let n = src.read(&mut buf).map_err(io(&staged))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        io::Write::write_all(&mut out, &buf[..n]).map_err(io(&staged))?;
        size += n as u64;
    }
    out.sync_all().map_err(io(&staged))?;
    let actual = format!("sha256:{}", hex::encode(hasher.finalize()));
    if let Some(d) = digest
        && d != actual
    {
        let _ = fs::remove_file(&staged);
        return Err(ImportError::Digest {
            digest: d.to_owned(),
            actual,
        });
    }
    content.commit(&staged, &content.blob_path(&actual)?)?;
    Ok((actual, size))
}

/// Where the blobs of an input are.
enum Source {
    Dir(PathBuf),
    /// A tar archive, read whole into a map of small files plus large ones on disk.
    Tar(TarIndex),
}

struct TarIndex {
    files: BTreeMap<String, PathBuf>,
    _dir: PathBuf,
}

impl Drop for TarIndex {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self._dir);
    }
}

fn normalize(p: &Path) -> Option<String> {
    let mut parts = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_string_lossy().into_owned()),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(parts.join("/"))
}

impl Source {
    fn open(&self, name: &str) -> Result<Box<dyn Read>, ImportError> {
        let path = match self {
            Source::Dir(d) => d.join(name),
            Source::Tar(t) => t
                .files
                .get(name)
                .cloned()
                .ok_or_else(|| ImportError::Invalid(format!("the archive has no `{name}`")))?,
        };
        Ok(Box::new(fs::File::open(&path).map_err(io(&path))?))
    }

    fn read_small(&self, name: &str, limit: u64) -> Result<Vec<u8>, ImportError> {
        let mut v = Vec::new();
        self.open(name)?
            .take(limit + 1)
            .read_to_end(&mut v)
            .map_err(|source| ImportError::Io {
                path: name.to_owned(),
                source,
            })?;
        if v.len() as u64 > limit {
            return Err(ImportError::Invalid(format!(
                "`{name}` is larger than {limit} bytes"
            )));
        }
        Ok(v)
    }

    fn exists(&self, name: &str) -> bool {
        match self {
            Source::Dir(d) => d.join(name).is_file(),
            Source::Tar(t) => t.files.contains_key(name),
        }
    }
}

/// Splits a tar archive into regular files in a staging directory (names are sanitized; only
/// regular files are kept).
fn index_tar(puller: &Puller, path: &Path) -> Result<TarIndex, ImportError> {
    let dir = puller.content().staging("archive");
    fs::create_dir_all(&dir).map_err(io(&dir))?;
    let mut index = TarIndex {
        files: BTreeMap::new(),
        _dir: dir.clone(),
    };
    let file = fs::File::open(path).map_err(io(path))?;
    let reader: Box<dyn Read> = {
        let mut buf = io::BufReader::new(file);
        let head = io::BufRead::fill_buf(&mut buf).map_err(io(path))?;
        if head.starts_with(&[0x1f, 0x8b]) {
            Box::new(flate2::read::GzDecoder::new(buf))
        } else {
            Box::new(buf)
        }
    };
    let mut archive = tar::Archive::new(reader);
    for (i, entry) in archive.entries().map_err(io(path))?.enumerate() {
        let mut entry = entry.map_err(io(path))?;
        if entry.header().entry_type() != tar::EntryType::Regular {
            continue;
        }
        let name = entry.path().map_err(io(path))?.into_owned();
        let Some(name) = normalize(&name) else {
            return Err(ImportError::Format {
                path: path.display().to_string(),
                why: format!("entry `{}` escapes the archive", name.display()),
            });
        };
        let dest = dir.join(format!("f{i}"));
        let mut out = fs::File::create(&dest).map_err(io(&dest))?;
        io::copy(&mut entry, &mut out).map_err(io(&dest))?;
        index.files.insert(name, dest);
    }
    Ok(index)
}

#[derive(Deserialize)]
struct OciIndex {
    manifests: Vec<manifest::Descriptor>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DockerManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Imports every image of an OCI layout (dir or tar) or docker archive at `path`. `tag`
/// names the image (required when the input names none). Returns the recorded images.
pub async fn import(
    puller: &Arc<Puller>,
    path: &Path,
    tag: Option<&ImageRef>,
    progress: Progress,
) -> Result<Vec<ImageRecord>, ImportError> {
    let p2 = puller.clone();
    let path2 = path.to_path_buf();
    let source = tokio::task::spawn_blocking(move || -> Result<Source, ImportError> {
        if path2.is_dir() {
            Ok(Source::Dir(path2))
        } else {
            Ok(Source::Tar(index_tar(&p2, &path2)?))
        }
    })
    .await
    .map_err(|e| ImportError::Invalid(e.to_string()))??;
    let source = Arc::new(source);
    if source.exists("index.json") && source.exists("oci-layout") {
        import_oci(puller, &source, path, tag, progress).await
    } else if source.exists("manifest.json") {
        import_docker(puller, &source, tag, progress).await
    } else {
        Err(ImportError::Format {
            path: path.display().to_string(),
            why: "no `oci-layout`+`index.json` nor `manifest.json` at its top".into(),
        })
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ImportError> + Send + 'static,
) -> Result<T, ImportError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ImportError::Invalid(e.to_string()))?
}

fn reference_name(
    tag: Option<&ImageRef>,
    annotated: Option<&str>,
    fallback: &str,
) -> Result<ImageRef, ImportError> {
    if let Some(t) = tag {
        return Ok(t.clone());
    }
    let name = annotated.ok_or_else(|| {
        ImportError::Invalid(format!(
            "the image {fallback} has no name: give one with --tag"
        ))
    })?;
    name.parse::<ImageRef>().map_err(|e| {
        ImportError::Invalid(format!(
            "the name in the input is unusable ({e}); give one with --tag"
        ))
    })
}

async fn import_oci(
    puller: &Arc<Puller>,
    source: &Arc<Source>,
    path: &Path,
    tag: Option<&ImageRef>,
    progress: Progress,
) -> Result<Vec<ImageRecord>, ImportError> {
    let index: OciIndex = serde_json::from_slice(&source.read_small("index.json", 4 << 20)?)
        .map_err(|e| ImportError::Invalid(format!("index.json: {e}")))?;
    let blob_name = |digest: &str| -> Result<String, ImportError> {
        Ok(format!(
            "blobs/sha256/{}",
            sha256_hex(digest)
                .map_err(|_| ImportError::Invalid(format!("bad digest `{digest}`")))?
        ))
    };
    let mut out = Vec::new();
    if index.manifests.is_empty() {
        return Err(ImportError::Format {
            path: path.display().to_string(),
            why: "index.json lists no image".into(),
        });
    }
    for top in &index.manifests {
        let annotated = top
            .annotations
            .as_ref()
            .and_then(|a| a.get("org.opencontainers.image.ref.name"))
            .cloned();
        // A bare tag ("latest") in the annotation needs a repository: only --tag can give it.
        let annotated = annotated.filter(|n| n.contains('/') || n.contains('.'));
        let reference = reference_name(tag, annotated.as_deref(), &top.digest)?;
        let top_bytes = source.read_small(&blob_name(&top.digest)?, 4 << 20)?;
        if digest_of(&top_bytes) != top.digest {
            return Err(ImportError::Digest {
                digest: top.digest.clone(),
                actual: digest_of(&top_bytes),
            });
        }
        puller.content().write_blob(&top.digest, &top_bytes)?;
        let (digest, index_digest, body) = match manifest::parse(&top_bytes, Some(&top.media_type))
            .map_err(|e| ImportError::Invalid(e.to_string()))?
        {
            Parsed::Manifest { .. } => (top.digest.clone(), None, top_bytes),
            Parsed::Index(entries) => {
                let chosen = manifest::select_platform(&entries, &manifest::host_platform())
                    .map_err(|e| ImportError::Invalid(e.to_string()))?;
                let bytes = source.read_small(&blob_name(&chosen.digest)?, 4 << 20)?;
                if digest_of(&bytes) != chosen.digest {
                    return Err(ImportError::Digest {
                        digest: chosen.digest.clone(),
                        actual: digest_of(&bytes),
                    });
                }
                puller.content().write_blob(&chosen.digest, &bytes)?;
                (chosen.digest.clone(), Some(top.digest.clone()), bytes)
            }
        };
        let Parsed::Manifest { config, layers } =
            manifest::parse(&body, None).map_err(|e| ImportError::Invalid(e.to_string()))?
        else {
            return Err(ImportError::Invalid("nested index".into()));
        };
        let mut blobs = vec![(blob_name(&config.digest)?, config.digest.clone())];
        for l in &layers {
            blobs.push((blob_name(&l.digest)?, l.digest.clone()));
        }
        progress(PullEvent::Resolved {
            reference: reference.to_string(),
            digest: index_digest.clone().unwrap_or_else(|| digest.clone()),
            registry: "import".into(),
            layers: layers
                .iter()
                .map(|l| LayerInfo {
                    digest: l.digest.clone(),
                    size: l.size,
                })
                .collect(),
        });
        for (name, d) in blobs {
            if puller.content().has_blob(&d) {
                continue;
            }
            let (src, p) = (source.clone(), puller.clone());
            blocking(move || copy_blob(&p, &mut *src.open(&name)?, Some(&d)).map(|_| ())).await?;
        }
        let record = finish(
            puller,
            &reference,
            digest,
            index_digest,
            &config.digest,
            &layers
                .iter()
                .map(|l| (l.digest.clone(), l.size, l.media_type.clone()))
                .collect::<Vec<_>>(),
            progress.clone(),
        )
        .await?;
        out.push(record);
    }
    Ok(out)
}

async fn import_docker(
    puller: &Arc<Puller>,
    source: &Arc<Source>,
    tag: Option<&ImageRef>,
    progress: Progress,
) -> Result<Vec<ImageRecord>, ImportError> {
    let entries: Vec<DockerManifestEntry> =
        serde_json::from_slice(&source.read_small("manifest.json", 4 << 20)?)
            .map_err(|e| ImportError::Invalid(format!("manifest.json: {e}")))?;
    let mut out = Vec::new();
    for entry in entries {
        let first_tag = entry.repo_tags.as_ref().and_then(|t| t.first()).cloned();
        let reference = reference_name(tag, first_tag.as_deref(), &entry.config)?;
        let (src, p, name) = (source.clone(), puller.clone(), entry.config.clone());
        let (config_digest, config_size) =
            blocking(move || copy_blob(&p, &mut *src.open(&name)?, None)).await?;
        let mut layers = Vec::new();
        for l in &entry.layers {
            let (src, p, name) = (source.clone(), puller.clone(), l.clone());
            let (d, size) = blocking(move || copy_blob(&p, &mut *src.open(&name)?, None)).await?;
            layers.push((
                d,
                size,
                "application/vnd.docker.image.rootfs.diff.tar".to_owned(),
            ));
        }
        // A docker archive has no manifest: write the v2s2 manifest a registry would hold.
        let manifest = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest::DOCKER_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": config_digest, "size": config_size},
            "layers": layers.iter().map(|(d, s, m)| serde_json::json!({"mediaType": m, "digest": d, "size": s})).collect::<Vec<_>>(),
        });
        let body =
            serde_json::to_vec(&manifest).map_err(|e| ImportError::Invalid(e.to_string()))?;
        let digest = digest_of(&body);
        puller.content().write_blob(&digest, &body)?;
        progress(PullEvent::Resolved {
            reference: reference.to_string(),
            digest: digest.clone(),
            registry: "import".into(),
            layers: layers
                .iter()
                .map(|(d, s, _)| LayerInfo {
                    digest: d.clone(),
                    size: *s,
                })
                .collect(),
        });
        out.push(
            finish(
                puller,
                &reference,
                digest,
                None,
                &config_digest,
                &layers,
                progress.clone(),
            )
            .await?,
        );
    }
    Ok(out)
}

/// Reads the config, unpacks every layer (verifying diff_ids), records the image.
async fn finish(
    puller: &Arc<Puller>,
    reference: &ImageRef,
    digest: String,
    index_digest: Option<String>,
    config_digest: &str,
    layers: &[(String, u64, String)],
    progress: Progress,
) -> Result<ImageRecord, ImportError> {
    let config_path = puller.content().blob_path(config_digest)?;
    let config: ConfigFile =
        serde_json::from_slice(&fs::read(&config_path).map_err(io(&config_path))?)
            .map_err(|e| ImportError::Invalid(format!("the image config is invalid: {e}")))?;
    if config.rootfs.diff_ids.len() != layers.len() {
        return Err(ImportError::Invalid(format!(
            "the config lists {} layers but the image has {}",
            config.rootfs.diff_ids.len(),
            layers.len()
        )));
    }
    for ((d, size, _), diff_id) in layers.iter().zip(&config.rootfs.diff_ids) {
        progress(PullEvent::Layer {
            digest: d.clone(),
            status: LayerStatus::Unpacking,
            done: *size,
            total: *size,
        });
        puller.unpack_into_store(d, diff_id).await?;
        progress(PullEvent::Layer {
            digest: d.clone(),
            status: LayerStatus::Done,
            done: *size,
            total: *size,
        });
    }
    let record = ImageRecord {
        digest,
        index_digest,
        references: vec![reference.to_string()],
        repository: format!("{}/{}", reference.registry(), reference.repository()),
        platform: format!(
            "{}/{}",
            config.os.as_deref().unwrap_or("linux"),
            config.architecture.as_deref().unwrap_or("unknown")
        ),
        config_digest: config_digest.to_owned(),
        config: config.config.unwrap_or_default(),
        layers: layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .map(|((d, s, m), diff_id)| LayerRecord {
                digest: d.clone(),
                diff_id: diff_id.clone(),
                size: *s,
                media_type: m.clone(),
            })
            .collect(),
        size: layers.iter().map(|l| l.1).sum(),
        created_at: jiff::Timestamp::now().to_string(),
        source: "import".to_owned(),
    };
    puller.content().put_image(&record).await?;
    progress(PullEvent::Done {
        image: Box::new(record.clone()),
        seconds: 0.0,
        bytes: 0,
    });
    Ok(record)
}
