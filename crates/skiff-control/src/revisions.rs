//! The image reconciler: pins every new revision's images to digests, pulling them, and
//! reports progress and failures in the revision's conditions.
//!
//! # Design
//! The key is one revision; store changes to revisions queue it, and a scan at start queues
//! those a previous run left unresolved. A few pulls run at once (one per revision). A failed
//! resolution is looked at again after a backoff (30 s doubling to 5 min) while the revision
//! exists, so an image pushed later heals the revision, as Kubernetes' image-pull backoff
//! does. Once pinned, the revision's store change queues it with the instance reconciler.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use skiff_api::object::{ConditionStatus, ContainerStatus, Revision, set_condition};
use skiff_image::puller::{LayerStatus, PullEvent};
use tracing::{info, warn};

use crate::controller::{Controller, ControllerError, RevisionKey, parse_revision_key};
use crate::images::ResolveError;
use crate::reconciler::{Next, ReconcileError, Reconciler};
use crate::runtime::ImageStore;
use crate::status::{MESSAGE_NO_INSTANCES, conditions, needs_images, reasons};

const RETRY_MIN: Duration = Duration::from_secs(30);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// The conditions the image reconciler writes.
const IMAGE_CONDITIONS: [&str; 2] = [conditions::RESOURCES_AVAILABLE, conditions::READY];

/// Per layer (bytes done, size), and when progress was last written.
type PullTally = (HashMap<String, (u64, u64)>, tokio::time::Instant);

fn human_bytes(n: u64) -> String {
    const MB: f64 = 1024.0 * 1024.0;
    if n as f64 >= MB {
        format!("{:.1} MiB", n as f64 / MB)
    } else {
        format!("{:.1} KiB", n as f64 / 1024.0)
    }
}

/// Pins revisions' images.
pub struct ImageReconciler {
    controller: Controller,
    images: Arc<dyn ImageStore>,
    /// Where a revision's `imagePullSecrets` are read.
    secrets: Arc<crate::secrets::SecretStore>,
    /// Each revision whose pull failed: its last retry delay, and when it may try again.
    /// (Its own status writes queue the key again; they must not bring the retry forward.)
    backoff: Mutex<HashMap<RevisionKey, (Duration, tokio::time::Instant)>>,
}

impl ImageReconciler {
    /// A reconciler resolving through `images`.
    pub fn new(
        controller: Controller,
        images: Arc<dyn ImageStore>,
        secrets: Arc<crate::secrets::SecretStore>,
    ) -> Self {
        ImageReconciler {
            controller,
            images,
            secrets,
            backoff: Mutex::default(),
        }
    }

    fn next_retry(&self, key: &RevisionKey) -> Duration {
        let mut b = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        let d = b
            .get(key)
            .map_or(RETRY_MIN, |(d, _)| (*d * 2).min(RETRY_MAX));
        b.insert(key.clone(), (d, tokio::time::Instant::now() + d));
        d
    }

    /// How long a failed revision still waits before its next try, if it does.
    fn waiting(&self, key: &RevisionKey) -> Option<Duration> {
        let b = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        let (_, at) = b.get(key)?;
        let left = at.saturating_duration_since(tokio::time::Instant::now());
        (!left.is_zero()).then_some(left)
    }
}

#[async_trait]
impl Reconciler for ImageReconciler {
    type Key = RevisionKey;

    fn name(&self) -> &'static str {
        "images"
    }

    fn watches(&self) -> &'static [&'static str] {
        &[skiff_store::keys::REVISIONS, skiff_store::keys::SECRETS]
    }

    async fn keys_for(&self, store_key: &str) -> Vec<RevisionKey> {
        // A Secret: the revisions of its namespace still waiting for images that name it
        // in imagePullSecrets try again now (their backoff is forgotten).
        if let Some((ns, name)) = skiff_store::keys::parse_secret(store_key) {
            let revisions = match self.controller.list_revisions(Some(ns), None).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(error = %skiff_telemetry::ErrorChain(&e), "listing the revisions of a namespace");
                    return Vec::new();
                }
            };
            let keys: Vec<RevisionKey> = revisions
                .into_iter()
                .filter(needs_images)
                .filter(|r| {
                    r.spec
                        .image_pull_secrets
                        .iter()
                        .any(|s| s.name.as_deref() == Some(name))
                })
                .map(|r| (r.metadata.namespace, r.metadata.name))
                .collect();
            let mut b = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
            for k in &keys {
                b.remove(k);
            }
            return keys;
        }
        parse_revision_key(store_key).into_iter().collect()
    }

    async fn all_keys(&self) -> Result<Vec<RevisionKey>, ReconcileError> {
        Ok(self
            .controller
            .list_revisions(None, None)
            .await?
            .into_iter()
            .filter(needs_images)
            .map(|r| (r.metadata.namespace, r.metadata.name))
            .collect())
    }

    async fn reconcile(&self, key: &RevisionKey) -> Result<Next, ReconcileError> {
        let revision = match self.controller.get_revision(&key.0, &key.1).await {
            Ok(r) => r,
            Err(ControllerError::NotFound { .. }) => {
                self.backoff
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(key);
                return Ok(Next::Done);
            }
            Err(e) => return Err(e.into()),
        };
        if !needs_images(&revision) {
            return Ok(Next::Done);
        }
        if let Some(left) = self.waiting(key) {
            return Ok(Next::RequeueAfter(left));
        }
        // The revision's pull secrets are tried first for their registries; the Docker
        // config.json stays in this pull's memory.
        let creds = crate::secrets::pull_credentials(&self.secrets, &revision).await?;
        let retry = skiff_image::auth::with_pull_credentials(
            creds,
            resolve(&self.controller, &*self.images, &revision),
        )
        .await;
        if retry {
            let delay = self.next_retry(key);
            info!(
                revision = %key.1,
                retry_in_seconds = delay.as_secs(),
                "will retry the image pull"
            );
            return Ok(Next::RequeueAfter(delay));
        }
        self.backoff
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        Ok(Next::Done)
    }

    fn workers(&self) -> usize {
        4
    }
}

/// Resolves a revision's images. Returns whether to retry later.
async fn resolve(controller: &Controller, images: &dyn ImageStore, revision: &Revision) -> bool {
    let (ns, name) = (
        revision.metadata.namespace.as_str(),
        revision.metadata.name.as_str(),
    );
    let now = controller.now();
    let _ = controller
        .update_revision(ns, name, true, |r: &mut Revision| {
            set_image_conditions(
                r,
                ConditionStatus::Unknown,
                reasons::PULLING,
                "pulling images",
                &now,
            )
        })
        .await;

    let mut statuses = Vec::new();
    for c in &revision.spec.containers {
        let image = c.image.clone().unwrap_or_default();
        let progress = progress_reporter(controller, ns, name, &image, &now);
        match images
            .resolve(&image, c.image_pull_policy.as_deref(), progress)
            .await
        {
            Ok(record) => statuses.push(ContainerStatus {
                name: c.name.clone().unwrap_or_default(),
                image_digest: Some(record.pinned()),
            }),
            Err(e) => {
                mark_failed(controller, ns, name, &image, &e).await;
                return true;
            }
        }
    }
    mark_pinned(controller, ns, name, statuses).await;
    false
}

/// Sets the conditions the image reconciler owns; returns whether that changed anything.
fn set_image_conditions(
    r: &mut Revision,
    status: ConditionStatus,
    reason: &str,
    message: &str,
    now: &str,
) -> bool {
    let before = r.status.conditions.clone();
    for t in IMAGE_CONDITIONS {
        set_condition(
            &mut r.status.conditions,
            t,
            status,
            Some(reason),
            Some(message.to_owned()),
            now,
        );
    }
    before != r.status.conditions
}

/// A progress callback for pulling `image`: it tallies layer bytes and notes them in the
/// revision's conditions at most once a second.
fn progress_reporter(
    controller: &Controller,
    ns: &str,
    name: &str,
    image: &str,
    now: &str,
) -> skiff_image::puller::Progress {
    let tally: Mutex<PullTally> = Mutex::new((HashMap::new(), tokio::time::Instant::now()));
    let (controller, ns, name, image, now) = (
        controller.clone(),
        ns.to_owned(),
        name.to_owned(),
        image.to_owned(),
        now.to_owned(),
    );
    Arc::new(move |ev: PullEvent| {
        let message = {
            let mut t = tally.lock().unwrap_or_else(|p| p.into_inner());
            record_progress(&mut t, ev, &image)
        };
        if let Some(message) = message {
            note_progress(&controller, &ns, &name, message, &now);
        }
    })
}

/// Adds a pull event to `tally`; returns the progress message when one is due (a second
/// after the last).
fn record_progress(tally: &mut PullTally, ev: PullEvent, image: &str) -> Option<String> {
    match ev {
        PullEvent::Resolved { layers, .. } => {
            for l in layers {
                tally.0.insert(l.digest, (0, l.size));
            }
        }
        PullEvent::Layer {
            digest,
            status,
            done,
            total,
        } => {
            let done = if status == LayerStatus::Downloading {
                done
            } else {
                total
            };
            tally.0.insert(digest, (done, total));
        }
        _ => {}
    }
    if tally.1.elapsed() < Duration::from_secs(1) {
        return None;
    }
    tally.1 = tokio::time::Instant::now();
    let (done, total) = tally
        .0
        .values()
        .fold((0, 0), |a, (d, t)| (a.0 + d, a.1 + t));
    Some(format!(
        "pulling {image}: {} of {}",
        human_bytes(done),
        human_bytes(total)
    ))
}

/// Writes a progress note into a revision's conditions, in the background (the callback
/// runs inside the pull and must not wait on the store).
fn note_progress(controller: &Controller, ns: &str, name: &str, message: String, now: &str) {
    let (controller, ns, name, now) = (
        controller.clone(),
        ns.to_owned(),
        name.to_owned(),
        now.to_owned(),
    );
    tokio::spawn(async move {
        let _ = controller
            .update_revision(&ns, &name, false, move |r: &mut Revision| {
                // Only while still pulling: a late progress note must not overwrite
                // the outcome.
                let still_pulling = r
                    .condition(conditions::READY)
                    .is_some_and(|c| c.reason.as_deref() == Some(reasons::PULLING));
                still_pulling
                    && set_image_conditions(
                        r,
                        ConditionStatus::Unknown,
                        reasons::PULLING,
                        &message,
                        &now,
                    )
            })
            .await;
    });
}

/// Fails a revision whose `image` could not be resolved, saying why.
async fn mark_failed(controller: &Controller, ns: &str, name: &str, image: &str, e: &ResolveError) {
    let message = format!("failed to pull {image}: {}", skiff_telemetry::ErrorChain(e));
    warn!(image = %image, reason = e.reason(), error = %message, "image resolution failed");
    let now = controller.now();
    let _ = controller
        .update_revision(ns, name, true, move |r: &mut Revision| {
            set_image_conditions(
                r,
                ConditionStatus::False,
                reasons::PULL_FAILED,
                &message,
                &now,
            );
            true
        })
        .await;
}

/// Records a revision's pinned images; it then waits for instances.
async fn mark_pinned(
    controller: &Controller,
    ns: &str,
    name: &str,
    statuses: Vec<ContainerStatus>,
) {
    let now = controller.now();
    let pinned: Vec<String> = statuses
        .iter()
        .filter_map(|s| s.image_digest.clone())
        .collect();
    info!(images = ?pinned, "revision images pinned");
    let _ = controller
        .update_revision(ns, name, true, move |r: &mut Revision| {
            r.status.container_statuses = statuses.clone();
            set_image_conditions(
                r,
                ConditionStatus::Unknown,
                reasons::NO_INSTANCES,
                MESSAGE_NO_INSTANCES,
                &now,
            );
            true
        })
        .await;
}
