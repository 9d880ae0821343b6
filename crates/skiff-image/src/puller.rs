//! Pulling an image: resolve its manifest (mirrors first), pick the platform, fetch the
//! config and layers concurrently, unpack each layer once, record the image.
//!
//! # Design
//! Every blob download and every layer unpack runs as a *flight* keyed by digest: a spawned
//! task that any number of pulls may await. Two revisions needing the same layer at once
//! cause one download; a pull whose client goes away does not cancel a download others wait
//! on. Progress is reported through a callback as [`PullEvent`]s (the API streams them).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::future::{BoxFuture, FutureExt, Shared};
use futures::{StreamExt, TryStreamExt};
use skiff_api::image::ImageRef;
pub use skiff_api::wire::{LayerInfo, LayerStatus, PullEvent};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::content::{ConfigFile, ContentError, ContentStore, ImageRecord, LayerRecord};
use crate::manifest::{self, Descriptor, ManifestError, Parsed, Platform};
use crate::metrics::{FailureLabels, ImageMetrics, OutcomeLabels, RegistryLabel};
use crate::registry::{Endpoint, RegistryClient, RegistryError};
use crate::unpack::{UnpackError, unpack_layer};

/// How many layers download at once per pull.
pub const LAYER_CONCURRENCY: usize = 3;

/// Where progress goes.
pub type Progress = Arc<dyn Fn(PullEvent) + Send + Sync>;

/// A progress sink that drops everything.
pub fn no_progress() -> Progress {
    Arc::new(|_| {})
}

/// A pull failed.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// The registry failed.
    #[error("pulling {reference}")]
    Registry {
        /// The reference.
        reference: String,
        /// The registry's failure.
        #[source]
        source: RegistryError,
    },
    /// The manifest is unusable.
    #[error("pulling {reference} from {registry}")]
    Manifest {
        /// The reference.
        reference: String,
        /// The registry.
        registry: String,
        /// What is wrong with it.
        #[source]
        source: ManifestError,
    },
    /// The image config is unusable.
    #[error("pulling {reference}: the image config is invalid: {message}")]
    Config {
        /// The reference.
        reference: String,
        /// What is wrong.
        message: String,
    },
    /// A layer could not be unpacked.
    #[error("unpacking layer {digest}")]
    Unpack {
        /// The layer blob.
        digest: String,
        /// The failure.
        #[source]
        source: UnpackError,
    },
    /// The content store failed.
    #[error("storing image content")]
    Content(#[from] ContentError),
    /// A shared download or unpack failed (the same error another pull saw).
    #[error(transparent)]
    Shared(Arc<PullError>),
    /// A background task died.
    #[error("a download task ended abnormally: {0}")]
    Task(String),
}

impl PullError {
    /// A short reason for metrics and revision conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            PullError::Registry { source, .. } => source.reason(),
            PullError::Manifest {
                source: ManifestError::NoPlatform { .. },
                ..
            } => "no_platform",
            PullError::Manifest { .. } | PullError::Config { .. } => "invalid",
            PullError::Unpack {
                source: UnpackError::DiffIdMismatch { .. },
                ..
            } => "corrupt",
            PullError::Unpack {
                source: UnpackError::Unsafe { .. } | UnpackError::DanglingHardlink { .. },
                ..
            } => "unsafe_layer",
            PullError::Unpack { .. } | PullError::Content(_) | PullError::Task(_) => "io",
            PullError::Shared(e) => e.reason(),
        }
    }
}

type FlightResult = Result<(), Arc<PullError>>;

struct Flight {
    done: Shared<BoxFuture<'static, FlightResult>>,
    bytes: watch::Receiver<u64>,
}

#[derive(Default)]
struct Flights(Mutex<HashMap<String, Flight>>);

impl Flights {
    /// Joins the flight for `key`, or starts it with `start(bytes_sender)`.
    fn join<F>(
        &self,
        key: &str,
        start: impl FnOnce(watch::Sender<u64>) -> F,
    ) -> (
        Shared<BoxFuture<'static, FlightResult>>,
        watch::Receiver<u64>,
    )
    where
        F: std::future::Future<Output = Result<(), PullError>> + Send + 'static,
    {
        let mut flights = self.0.lock().unwrap_or_else(|p| p.into_inner());
        flights.retain(|_, f| f.done.peek().is_none());
        if let Some(f) = flights.get(key)
            && f.done.peek().is_none()
        {
            return (f.done.clone(), f.bytes.clone());
        }
        let (tx, rx) = watch::channel(0u64);
        // A download shared by pulls runs with the credentials of the pull that started it.
        let task = match crate::auth::pull_credentials() {
            Some(creds) => tokio::spawn(crate::auth::with_pull_credentials(creds, start(tx))),
            None => tokio::spawn(start(tx)),
        };
        let done = async move {
            match task.await {
                Ok(r) => r.map_err(Arc::new),
                Err(e) => Err(Arc::new(PullError::Task(e.to_string()))),
            }
        }
        .boxed()
        .shared();
        flights.insert(
            key.to_owned(),
            Flight {
                done: done.clone(),
                bytes: rx.clone(),
            },
        );
        (done, rx)
    }
}

/// Pulls images into a content store.
pub struct Puller {
    client: Arc<RegistryClient>,
    content: ContentStore,
    metrics: ImageMetrics,
    platform: Platform,
    flights: Flights,
}

fn shared(e: Arc<PullError>) -> PullError {
    PullError::Shared(e)
}

impl Puller {
    /// A puller for this host's platform.
    pub fn new(
        client: Arc<RegistryClient>,
        content: ContentStore,
        metrics: ImageMetrics,
    ) -> Arc<Self> {
        Arc::new(Puller {
            client,
            content,
            metrics,
            platform: manifest::host_platform(),
            flights: Flights::default(),
        })
    }

    /// The content store.
    pub fn content(&self) -> &ContentStore {
        &self.content
    }

    /// Pulls `reference`, reporting progress; returns the recorded image.
    pub async fn pull(
        self: &Arc<Self>,
        reference: &ImageRef,
        progress: Progress,
    ) -> Result<ImageRecord, PullError> {
        let started = Instant::now();
        let registry = reference.registry().to_owned();
        let bytes = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let result = self
            .pull_inner(reference, progress.clone(), bytes.clone())
            .await;
        let downloaded = bytes.load(std::sync::atomic::Ordering::Relaxed);
        let seconds = started.elapsed().as_secs_f64();
        let outcome = if result.is_ok() { "success" } else { "failure" };
        self.metrics
            .pulls
            .get_or_create(&OutcomeLabels {
                registry: registry.clone(),
                outcome: outcome.into(),
            })
            .inc();
        self.metrics
            .pull_seconds
            .get_or_create(&RegistryLabel {
                registry: registry.clone(),
            })
            .observe(seconds);
        self.metrics
            .bytes
            .get_or_create(&RegistryLabel {
                registry: registry.clone(),
            })
            .inc_by(downloaded);
        match &result {
            Ok(image) => {
                info!(reference = %reference, digest = %image.digest, seconds, bytes = downloaded, "image pulled");
                progress(PullEvent::Done {
                    image: Box::new(image.clone()),
                    seconds,
                    bytes: downloaded,
                });
            }
            Err(e) => {
                self.metrics
                    .failures
                    .get_or_create(&FailureLabels {
                        registry,
                        reason: e.reason().into(),
                    })
                    .inc();
                let message = crate::chain(e).to_string();
                warn!(reference = %reference, error = %message, "image pull failed");
                progress(PullEvent::Error {
                    message,
                    reason: e.reason().into(),
                });
            }
        }
        result
    }

    async fn resolve(
        &self,
        reference: &ImageRef,
    ) -> Result<(manifest::FetchedParsed, Endpoint), PullError> {
        let reference_str = reference.to_string();
        let tag_or_digest = reference
            .digest()
            .or(reference.tag())
            .unwrap_or("latest")
            .to_owned();
        let repo = reference.repository();
        let mut last_err = None;
        for ep in self.client.endpoints(reference.registry()) {
            match self.client.fetch_manifest(&ep, repo, &tag_or_digest).await {
                Ok(fetched) => {
                    let parsed = manifest::parse(&fetched.body, fetched.content_type.as_deref())
                        .map_err(|source| PullError::Manifest {
                            reference: reference_str.clone(),
                            registry: ep.host.clone(),
                            source,
                        })?;
                    return Ok((manifest::FetchedParsed { fetched, parsed }, ep));
                }
                Err(e) if ep.mirror => {
                    warn!(mirror = %ep.host, reference = %reference_str, error = %crate::chain(&e), "mirror failed; trying the next source");
                    last_err = Some(e);
                }
                Err(e) => {
                    last_err = Some(e);
                    break;
                }
            }
        }
        Err(PullError::Registry {
            reference: reference_str,
            source: last_err.unwrap_or(RegistryError::BadDigest("no endpoint".into())),
        })
    }

    async fn pull_inner(
        self: &Arc<Self>,
        reference: &ImageRef,
        progress: Progress,
        bytes: Arc<std::sync::atomic::AtomicU64>,
    ) -> Result<ImageRecord, PullError> {
        let reference_str = reference.to_string();
        let repo = reference.repository().to_owned();
        let (top, ep) = self.resolve(reference).await?;
        let top_digest = top.fetched.digest.clone();
        self.content.write_blob(&top_digest, &top.fetched.body)?;
        let (manifest_digest, index_digest, config_desc, layers) = match top.parsed {
            Parsed::Manifest { config, layers } => (top_digest.clone(), None, config, layers),
            Parsed::Index(entries) => {
                let chosen =
                    manifest::select_platform(&entries, &self.platform).map_err(|source| {
                        PullError::Manifest {
                            reference: reference_str.clone(),
                            registry: ep.host.clone(),
                            source,
                        }
                    })?;
                let fetched = self
                    .client
                    .fetch_manifest(&ep, &repo, &chosen.digest)
                    .await
                    .map_err(|source| PullError::Registry {
                        reference: reference_str.clone(),
                        source,
                    })?;
                let parsed = manifest::parse(&fetched.body, fetched.content_type.as_deref())
                    .map_err(|source| PullError::Manifest {
                        reference: reference_str.clone(),
                        registry: ep.host.clone(),
                        source,
                    })?;
                self.content.write_blob(&fetched.digest, &fetched.body)?;
                match parsed {
                    Parsed::Manifest { config, layers } => {
                        (fetched.digest, Some(top_digest.clone()), config, layers)
                    }
                    Parsed::Index(_) => {
                        return Err(PullError::Manifest {
                            reference: reference_str,
                            registry: ep.host.clone(),
                            source: ManifestError::Shape,
                        });
                    }
                }
            }
        };
        progress(PullEvent::Resolved {
            reference: reference_str.clone(),
            digest: index_digest
                .clone()
                .unwrap_or_else(|| manifest_digest.clone()),
            registry: ep.host.clone(),
            layers: layers
                .iter()
                .map(|l| LayerInfo {
                    digest: l.digest.clone(),
                    size: l.size,
                })
                .collect(),
        });

        // The config.
        self.ensure_blob(&ep, &repo, &config_desc, no_progress(), bytes.clone())
            .await?;
        let config_bytes =
            std::fs::read(self.content.blob_path(&config_desc.digest)?).map_err(|source| {
                ContentError::Io {
                    action: "reading",
                    path: self
                        .content
                        .blob_path(&config_desc.digest)
                        .unwrap_or_default(),
                    source,
                }
            })?;
        let config: ConfigFile =
            serde_json::from_slice(&config_bytes).map_err(|e| PullError::Config {
                reference: reference_str.clone(),
                message: e.to_string(),
            })?;
        if config.rootfs.diff_ids.len() != layers.len() {
            return Err(PullError::Config {
                reference: reference_str,
                message: format!(
                    "it lists {} layers but the manifest has {}",
                    config.rootfs.diff_ids.len(),
                    layers.len()
                ),
            });
        }

        // The layers, a few at a time.
        let owned: Vec<(Descriptor, String)> = layers
            .iter()
            .cloned()
            .zip(config.rootfs.diff_ids.iter().cloned())
            .collect();
        let jobs = owned.into_iter().map(|(desc, diff_id)| {
            let this = self.clone();
            let ep = ep.clone();
            let repo = repo.clone();
            let progress = progress.clone();
            let bytes = bytes.clone();
            async move {
                this.ensure_layer(&ep, &repo, &desc, &diff_id, progress, bytes)
                    .await
            }
        });
        futures::stream::iter(jobs)
            .buffer_unordered(LAYER_CONCURRENCY)
            .try_collect::<Vec<()>>()
            .await?;

        let record = ImageRecord {
            digest: manifest_digest,
            index_digest,
            references: vec![reference_str],
            repository: format!("{}/{}", reference.registry(), reference.repository()),
            platform: format!(
                "{}/{}",
                config.os.as_deref().unwrap_or("linux"),
                config.architecture.as_deref().unwrap_or("unknown")
            ),
            config_digest: config_desc.digest.clone(),
            config: config.config.unwrap_or_default(),
            layers: layers
                .iter()
                .zip(config.rootfs.diff_ids.iter())
                .map(|(d, diff_id)| LayerRecord {
                    digest: d.digest.clone(),
                    diff_id: diff_id.clone(),
                    size: d.size,
                    media_type: d.media_type.clone(),
                })
                .collect(),
            size: layers.iter().map(|l| l.size).sum(),
            created_at: jiff::Timestamp::now().to_string(),
            source: "registry".to_owned(),
        };
        self.content.put_image(&record).await?;
        Ok(record)
    }

    /// Makes sure a blob is in the store, downloading it (once, however many ask).
    async fn ensure_blob(
        self: &Arc<Self>,
        ep: &Endpoint,
        repo: &str,
        desc: &Descriptor,
        progress: Progress,
        bytes: Arc<std::sync::atomic::AtomicU64>,
    ) -> Result<(), PullError> {
        if self.content.has_blob(&desc.digest) {
            return Ok(());
        }
        let this = self.clone();
        let ep2 = ep.clone();
        let repo2 = repo.to_owned();
        let desc2 = desc.clone();
        let (done, mut rx) =
            self.flights
                .join(&format!("blob:{}", desc.digest), move |tx| async move {
                    let dest = this.content.blob_path(&desc2.digest)?;
                    let staged = this.content.staging("download");
                    let report = move |n: u64| {
                        let _ = tx.send(n);
                    };
                    let result = this
                        .client
                        .fetch_blob(&ep2, &repo2, &desc2, &staged, &report)
                        .await;
                    match result {
                        Ok(()) => {
                            this.content.commit(&staged, &dest)?;
                            Ok(())
                        }
                        Err(source) => {
                            let _ = std::fs::remove_file(&staged);
                            Err(PullError::Registry {
                                reference: format!("{}/{}@{}", ep2.host, repo2, desc2.digest),
                                source,
                            })
                        }
                    }
                });
        let digest = desc.digest.clone();
        let total = desc.size;
        let mut last = 0u64;
        let mut done = done;
        loop {
            tokio::select! {
                r = &mut done => {
                    let now = *rx.borrow();
                    bytes.fetch_add(now.saturating_sub(last), std::sync::atomic::Ordering::Relaxed);
                    return r.map_err(shared);
                }
                changed = rx.changed() => {
                    if changed.is_err() {
                        // The flight finished; its result follows.
                        let r = (&mut done).await;
                        let now = *rx.borrow();
                        bytes.fetch_add(now.saturating_sub(last), std::sync::atomic::Ordering::Relaxed);
                        return r.map_err(shared);
                    }
                    let now = *rx.borrow();
                    bytes.fetch_add(now.saturating_sub(last), std::sync::atomic::Ordering::Relaxed);
                    last = now;
                    progress(PullEvent::Layer { digest: digest.clone(), status: LayerStatus::Downloading, done: now, total });
                }
            }
        }
    }

    /// Makes sure a layer is unpacked (once, however many ask).
    async fn ensure_layer(
        self: &Arc<Self>,
        ep: &Endpoint,
        repo: &str,
        desc: &Descriptor,
        diff_id: &str,
        progress: Progress,
        bytes: Arc<std::sync::atomic::AtomicU64>,
    ) -> Result<(), PullError> {
        if self.content.has_layer(diff_id) {
            self.metrics.layers_cached.inc();
            progress(PullEvent::Layer {
                digest: desc.digest.clone(),
                status: LayerStatus::Cached,
                done: desc.size,
                total: desc.size,
            });
            return Ok(());
        }
        self.ensure_blob(ep, repo, desc, progress.clone(), bytes)
            .await?;
        progress(PullEvent::Layer {
            digest: desc.digest.clone(),
            status: LayerStatus::Unpacking,
            done: desc.size,
            total: desc.size,
        });
        let this = self.clone();
        let desc2 = desc.clone();
        let diff_id2 = diff_id.to_owned();
        let (done, _) = self
            .flights
            .join(&format!("layer:{diff_id}"), move |_| async move {
                this.unpack_into_store(&desc2.digest, &diff_id2).await
            });
        done.await.map_err(shared)?;
        progress(PullEvent::Layer {
            digest: desc.digest.clone(),
            status: LayerStatus::Done,
            done: desc.size,
            total: desc.size,
        });
        Ok(())
    }

    /// Unpacks a stored blob into the layer directory for `diff_id`, verifying it.
    pub async fn unpack_into_store(
        &self,
        blob_digest: &str,
        diff_id: &str,
    ) -> Result<(), PullError> {
        let dest = self.content.layer_path(diff_id)?;
        if dest.is_dir() {
            return Ok(());
        }
        let blob = self.content.blob_path(blob_digest)?;
        let staged = self.content.staging("layer");
        let diff = diff_id.to_owned();
        let staged2 = staged.clone();
        let result =
            tokio::task::spawn_blocking(move || unpack_layer(&blob, &staged2, Some(&diff)))
                .await
                .map_err(|e| PullError::Task(e.to_string()))?;
        match result {
            Ok(stats) => {
                tracing::debug!(
                    diff_id,
                    entries = stats.entries,
                    bytes = stats.bytes,
                    "layer unpacked"
                );
                self.content.commit(&staged, &dest)?;
                Ok(())
            }
            Err(source) => {
                let _ = std::fs::remove_dir_all(&staged);
                Err(PullError::Unpack {
                    digest: blob_digest.to_owned(),
                    source,
                })
            }
        }
    }
}
