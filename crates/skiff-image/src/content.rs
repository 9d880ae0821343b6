//! The content store: verified blobs by digest, layers unpacked once by diff_id and shared by
//! every image, and image records in the state store.
//!
//! Layout under `<data_dir>/images/`:
//! - `blobs/sha256/<hex>`: manifests, configs and compressed layers, exactly as pulled;
//! - `layers/sha256/<diff_id hex>/`: one unpacked layer, an overlayfs lower directory;
//! - `tmp/`: downloads and unpacks in progress, emptied at every start.
//!
//! Every write is staged in `tmp/` and renamed into place only once verified, so a crash
//! mid-pull leaves nothing half-made in `blobs/` or `layers/`. Image records (which manifest,
//! which layers, the parsed config) live in the state store under `/images/manifests/<digest>`
//! and tags under `/images/tags/<reference>`, written only after all their content exists.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
pub use skiff_api::wire::{ImageRecord, LayerRecord, RunConfig};
use skiff_store::{Store, StoreError, Txn, TxnOutcome, keys};

use crate::registry::sha256_hex;

/// An image config file, as far as skiff reads it.
#[derive(Debug, Clone, Deserialize)]
pub struct ConfigFile {
    /// `amd64`, ….
    #[serde(default)]
    pub architecture: Option<String>,
    /// `linux`.
    #[serde(default)]
    pub os: Option<String>,
    /// What to run.
    #[serde(default)]
    pub config: Option<RunConfig>,
    /// The layers' diff_ids.
    pub rootfs: RootFs,
}

/// `rootfs` of an image config.
#[derive(Debug, Clone, Deserialize)]
pub struct RootFs {
    /// `layers`.
    #[serde(rename = "type", default)]
    pub kind: String,
    /// `sha256:` of each uncompressed layer, base first.
    pub diff_ids: Vec<String>,
}

/// A content-store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// Filesystem error.
    #[error("{action} `{}`", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The state store failed.
    #[error("image records")]
    Store(#[from] StoreError),
    /// A record is unreadable.
    #[error("image record `{key}` is unreadable")]
    Corrupt {
        /// The key.
        key: String,
        /// The error.
        #[source]
        source: serde_json::Error,
    },
    /// A digest is malformed.
    #[error("`{0}` is not a sha256 digest")]
    BadDigest(String),
}

fn io_err(
    action: &'static str,
    path: &Path,
) -> impl FnOnce(std::io::Error) -> ContentError + use<> {
    let path = path.to_path_buf();
    move |source| ContentError::Io {
        action,
        path,
        source,
    }
}

/// The content store.
#[derive(Clone)]
pub struct ContentStore {
    root: PathBuf,
    store: Arc<dyn Store>,
}

impl ContentStore {
    /// Opens (creating) the content store under `root` and empties its staging area.
    pub fn open(root: &Path, store: Arc<dyn Store>) -> Result<Self, ContentError> {
        for d in ["blobs/sha256", "layers/sha256", "tmp"] {
            let p = root.join(d);
            std::fs::create_dir_all(&p).map_err(io_err("creating", &p))?;
        }
        let tmp = root.join("tmp");
        if let Ok(entries) = std::fs::read_dir(&tmp) {
            for e in entries.flatten() {
                let p = e.path();
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
        Ok(ContentStore {
            root: root.to_path_buf(),
            store,
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The path of a blob (whether or not it exists).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf, ContentError> {
        let hex = sha256_hex(digest).map_err(|_| ContentError::BadDigest(digest.to_owned()))?;
        Ok(self.root.join("blobs/sha256").join(hex))
    }

    /// The directory of an unpacked layer (whether or not it exists).
    pub fn layer_path(&self, diff_id: &str) -> Result<PathBuf, ContentError> {
        let hex = sha256_hex(diff_id).map_err(|_| ContentError::BadDigest(diff_id.to_owned()))?;
        Ok(self.root.join("layers/sha256").join(hex))
    }

    /// Whether a blob is present.
    pub fn has_blob(&self, digest: &str) -> bool {
        self.blob_path(digest).is_ok_and(|p| p.is_file())
    }

    /// Whether a layer is unpacked.
    pub fn has_layer(&self, diff_id: &str) -> bool {
        self.layer_path(diff_id).is_ok_and(|p| p.is_dir())
    }

    /// A fresh staging path.
    pub fn staging(&self, what: &str) -> PathBuf {
        self.root
            .join("tmp")
            .join(format!("{what}-{}", uuid_like()))
    }

    /// Moves a verified staged file or directory into place (another pull may have placed
    /// the same content first; then the staged copy is dropped).
    pub fn commit(&self, staged: &Path, dest: &Path) -> Result<(), ContentError> {
        if dest.exists() {
            let _ = if staged.is_dir() {
                std::fs::remove_dir_all(staged)
            } else {
                std::fs::remove_file(staged)
            };
            return Ok(());
        }
        std::fs::rename(staged, dest).map_err(io_err("moving into place", dest))?;
        if let Some(parent) = dest.parent()
            && let Ok(d) = std::fs::File::open(parent)
        {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// Writes small verified content (a manifest, a config) as a blob.
    pub fn write_blob(&self, digest: &str, bytes: &[u8]) -> Result<PathBuf, ContentError> {
        let dest = self.blob_path(digest)?;
        if dest.is_file() {
            return Ok(dest);
        }
        let staged = self.staging("blob");
        std::fs::write(&staged, bytes).map_err(io_err("writing", &staged))?;
        if let Ok(f) = std::fs::File::open(&staged) {
            let _ = f.sync_all();
        }
        self.commit(&staged, &dest)?;
        Ok(dest)
    }

    /// Records an image and points each of its references at it, atomically.
    pub async fn put_image(&self, record: &ImageRecord) -> Result<(), ContentError> {
        for _ in 0..16 {
            let key = keys::image_manifest(&record.digest);
            let current = self.store.get(&key).await?;
            let mut merged = record.clone();
            let mut txn = Txn::new();
            match &current {
                Some(kv) => {
                    let old: ImageRecord = serde_json::from_slice(&kv.value).map_err(|source| {
                        ContentError::Corrupt {
                            key: key.clone(),
                            source,
                        }
                    })?;
                    for r in old.references {
                        if !merged.references.contains(&r) {
                            merged.references.push(r);
                        }
                    }
                    merged.created_at = old.created_at;
                    txn = txn.when_mod_revision(&key, kv.mod_revision);
                }
                None => txn = txn.when_mod_revision(&key, 0),
            }
            txn = txn.put(
                &key,
                serde_json::to_vec(&merged).expect("records serialize"),
            );
            for r in &record.references {
                if !r.contains('@') {
                    txn = txn.put(
                        keys::image_tag(r),
                        record
                            .index_digest
                            .clone()
                            .unwrap_or_else(|| record.digest.clone())
                            .into_bytes(),
                    );
                }
            }
            if let TxnOutcome::Committed { .. } = self.store.txn(txn).await? {
                return Ok(());
            }
        }
        Err(ContentError::Store(StoreError::Backend {
            operation: "recording an image",
            source: "the image record kept changing".into(),
        }))
    }

    /// Every image.
    pub async fn images(&self) -> Result<Vec<ImageRecord>, ContentError> {
        let mut out = Vec::new();
        for kv in self.store.list(keys::IMAGE_MANIFESTS).await? {
            out.push(serde_json::from_slice(&kv.value).map_err(|source| {
                ContentError::Corrupt {
                    key: kv.key.clone(),
                    source,
                }
            })?);
        }
        Ok(out)
    }

    /// The image a tag (`registry/repo:tag`) points at.
    pub async fn by_tag(&self, reference: &str) -> Result<Option<ImageRecord>, ContentError> {
        let Some(kv) = self.store.get(&keys::image_tag(reference)).await? else {
            return Ok(None);
        };
        let digest = String::from_utf8_lossy(&kv.value).into_owned();
        self.by_digest(&digest).await
    }

    /// The image with this manifest or index digest.
    pub async fn by_digest(&self, digest: &str) -> Result<Option<ImageRecord>, ContentError> {
        if let Some(kv) = self.store.get(&keys::image_manifest(digest)).await? {
            return Ok(Some(serde_json::from_slice(&kv.value).map_err(
                |source| ContentError::Corrupt {
                    key: kv.key.clone(),
                    source,
                },
            )?));
        }
        Ok(self
            .images()
            .await?
            .into_iter()
            .find(|i| i.index_digest.as_deref() == Some(digest)))
    }

    /// Removes an image's record and the tags pointing at it (content stays until GC).
    pub async fn remove_image(&self, record: &ImageRecord) -> Result<(), ContentError> {
        let mut txn = Txn::new().delete(keys::image_manifest(&record.digest));
        for kv in self.store.list(keys::IMAGE_TAGS).await? {
            let target = String::from_utf8_lossy(&kv.value).into_owned();
            if target == record.digest || Some(&target) == record.index_digest.as_ref() {
                txn = txn
                    .when_mod_revision(&kv.key, kv.mod_revision)
                    .delete(kv.key.clone());
            }
        }
        self.store.txn(txn).await?;
        Ok(())
    }

    /// Deletes every blob and layer no image record references. Returns (blobs, layers,
    /// bytes) removed.
    pub async fn sweep(
        &self,
        keep_blobs: &std::collections::HashSet<String>,
        keep_layers: &std::collections::HashSet<String>,
    ) -> Result<(u64, u64, u64), ContentError> {
        let root = self.root.clone();
        let keep_blobs = keep_blobs.clone();
        let keep_layers = keep_layers.clone();
        tokio::task::spawn_blocking(move || {
            let mut removed = (0u64, 0u64, 0u64);
            for (dir, keep, is_layer) in [
                ("blobs/sha256", &keep_blobs, false),
                ("layers/sha256", &keep_layers, true),
            ] {
                let path = root.join(dir);
                let entries = std::fs::read_dir(&path).map_err(io_err("listing", &path))?;
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if keep.contains(&format!("sha256:{name}")) {
                        continue;
                    }
                    let p = e.path();
                    let size = if is_layer {
                        dir_size(&p)
                    } else {
                        e.metadata().map(|m| m.len()).unwrap_or(0)
                    };
                    let res = if is_layer {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    };
                    res.map_err(io_err("removing", &p))?;
                    if is_layer {
                        removed.1 += 1;
                    } else {
                        removed.0 += 1;
                    }
                    removed.2 += size;
                }
            }
            Ok(removed)
        })
        .await
        .unwrap_or_else(|e| {
            Err(ContentError::Io {
                action: "sweeping",
                path: PathBuf::new(),
                source: std::io::Error::other(e.to_string()),
            })
        })
    }
}

fn dir_size(p: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![p.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.flatten() {
                if let Ok(m) = e.path().symlink_metadata() {
                    if m.is_dir() {
                        stack.push(e.path());
                    } else {
                        total += m.len();
                    }
                }
            }
        }
    }
    total
}

/// A short random name for staging paths.
fn uuid_like() -> String {
    let n: u128 = rand::random();
    format!("{n:032x}")
}
