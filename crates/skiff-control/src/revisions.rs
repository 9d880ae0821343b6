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
use tokio::time::Instant;
use tracing::{info, warn};

use crate::controller::{Controller, ControllerError, RevisionKey, parse_revision_key};
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
    /// Each revision whose pull failed: its last retry delay and when it may be tried
    /// again (its own condition writes queue it sooner; they must not pull again).
    backoff: Mutex<HashMap<RevisionKey, (Duration, Instant)>>,
}

impl ImageReconciler {
    /// A reconciler resolving through `images`.
    pub fn new(controller: Controller, images: Arc<dyn ImageStore>) -> Self {
        ImageReconciler {
            controller,
            images,
            backoff: Mutex::default(),
        }
    }

    fn next_retry(&self, key: &RevisionKey) -> Duration {
        let mut b = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        let d = b
            .get(key)
            .map_or(RETRY_MIN, |(d, _)| (*d * 2).min(RETRY_MAX));
        b.insert(key.clone(), (d, Instant::now() + d));
        d
    }

    /// How long a revision whose pull failed still waits for its retry.
    fn retry_in(&self, key: &RevisionKey) -> Option<Duration> {
        let b = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        let (_, at) = b.get(key)?;
        let now = Instant::now();
        (*at > now).then(|| *at - now)
    }
}

#[async_trait]
impl Reconciler for ImageReconciler {
    type Key = RevisionKey;

    fn name(&self) -> &'static str {
        "images"
    }

    fn watches(&self) -> &'static [&'static str] {
        &["/registry/revisions/"]
    }

    async fn keys_for(&self, store_key: &str) -> Vec<RevisionKey> {
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
        if let Some(wait) = self.retry_in(key) {
            return Ok(Next::RequeueAfter(wait));
        }
        if resolve(&self.controller, &*self.images, &revision).await {
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
    let pulling = |message: String| {
        let now = now.clone();
        move |r: &mut Revision| {
            let mut changed = false;
            for t in IMAGE_CONDITIONS {
                let before = r.status.conditions.clone();
                set_condition(
                    &mut r.status.conditions,
                    t,
                    ConditionStatus::Unknown,
                    Some(reasons::PULLING),
                    Some(message.clone()),
                    &now,
                );
                changed |= before != r.status.conditions;
            }
            changed
        }
    };
    let _ = controller
        .update_revision(ns, name, true, pulling("pulling images".into()))
        .await;

    let mut statuses = Vec::new();
    for c in &revision.spec.containers {
        let image = c.image.clone().unwrap_or_default();
        let cname = c.name.clone().unwrap_or_default();
        // Progress: aggregate layer bytes, write at most once a second.
        let state: Arc<Mutex<PullTally>> =
            Arc::new(Mutex::new((HashMap::new(), tokio::time::Instant::now())));
        let (c2, ns2, name2, image2, now2) = (
            controller.clone(),
            ns.to_owned(),
            name.to_owned(),
            image.clone(),
            now.clone(),
        );
        let progress: skiff_image::puller::Progress = Arc::new(move |ev: PullEvent| {
            let message = {
                let mut s = state.lock().unwrap_or_else(|p| p.into_inner());
                match ev {
                    PullEvent::Resolved { layers, .. } => {
                        for l in layers {
                            s.0.insert(l.digest, (0, l.size));
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
                        s.0.insert(digest, (done, total));
                    }
                    _ => {}
                }
                if s.1.elapsed() < Duration::from_secs(1) {
                    return;
                }
                s.1 = tokio::time::Instant::now();
                let (done, total) = s.0.values().fold((0, 0), |a, (d, t)| (a.0 + d, a.1 + t));
                format!(
                    "pulling {image2}: {} of {}",
                    human_bytes(done),
                    human_bytes(total)
                )
            };
            let (c3, ns3, name3, now3) = (c2.clone(), ns2.clone(), name2.clone(), now2.clone());
            tokio::spawn(async move {
                let _ = c3
                    .update_revision(&ns3, &name3, false, move |r: &mut Revision| {
                        // Only while still pulling: a late progress note must not overwrite
                        // the outcome.
                        let still_pulling = r
                            .condition(conditions::READY)
                            .is_some_and(|c| c.reason.as_deref() == Some(reasons::PULLING));
                        if !still_pulling {
                            return false;
                        }
                        let before = r.status.conditions.clone();
                        for t in IMAGE_CONDITIONS {
                            set_condition(
                                &mut r.status.conditions,
                                t,
                                ConditionStatus::Unknown,
                                Some(reasons::PULLING),
                                Some(message.clone()),
                                &now3,
                            );
                        }
                        before != r.status.conditions
                    })
                    .await;
            });
        });
        match images
            .resolve(&image, c.image_pull_policy.as_deref(), progress)
            .await
        {
            Ok(record) => statuses.push(ContainerStatus {
                name: cname,
                image_digest: Some(record.pinned()),
            }),
            Err(e) => {
                let message = format!(
                    "failed to pull {image}: {}",
                    skiff_telemetry::ErrorChain(&e)
                );
                warn!(image = %image, reason = e.reason(), error = %message, "image resolution failed");
                let now = controller.now();
                let _ = controller
                    .update_revision(ns, name, true, move |r: &mut Revision| {
                        for t in IMAGE_CONDITIONS {
                            set_condition(
                                &mut r.status.conditions,
                                t,
                                ConditionStatus::False,
                                Some(reasons::PULL_FAILED),
                                Some(message.clone()),
                                &now,
                            );
                        }
                        true
                    })
                    .await;
                return true;
            }
        }
    }
    let now = controller.now();
    let pinned: Vec<String> = statuses
        .iter()
        .filter_map(|s| s.image_digest.clone())
        .collect();
    info!(images = ?pinned, "revision images pinned");
    let _ = controller
        .update_revision(ns, name, true, move |r: &mut Revision| {
            r.status.container_statuses = statuses.clone();
            for t in IMAGE_CONDITIONS {
                set_condition(
                    &mut r.status.conditions,
                    t,
                    ConditionStatus::Unknown,
                    Some(reasons::NO_INSTANCES),
                    Some(MESSAGE_NO_INSTANCES.to_owned()),
                    &now,
                );
            }
            true
        })
        .await;
    false
}
