//! The revision reconciler: pins every new revision's images to digests, pulling them, and
//! reports progress and failures in the revision's conditions.
//!
//! # Design
//! One task receives revision keys (from the controller when it stamps a revision, and from a
//! scan at start) and handles each in its own task, one at a time per revision. A failed
//! resolution is retried with backoff (30 s doubling to 5 min) while the revision exists, so
//! an image pushed later heals the revision, as Kubernetes' image-pull backoff does.
//! **(next)** the runtime reconciler starts instances once images are pinned.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use skiff_api::object::{ConditionStatus, ContainerStatus, Revision, set_condition};
use skiff_image::puller::{LayerStatus, PullEvent};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::controller::{Controller, RevisionKey};
use crate::images::Images;
use crate::instances::REASON_NO_INSTANCES;

/// Called when a revision's images are pinned (starts instances at once).
pub type OnPinned = Arc<dyn Fn() + Send + Sync>;

/// Reason while images are being pulled.
pub const REASON_PULLING: &str = "Pulling";
/// Reason when an image cannot be pulled.
pub const REASON_PULL_FAILED: &str = "ImagePullFailed";

const RETRY_MIN: Duration = Duration::from_secs(30);
const RETRY_MAX: Duration = Duration::from_secs(300);

/// Per layer (bytes done, size), and when progress was last written.
type PullTally = (HashMap<String, (u64, u64)>, tokio::time::Instant);

/// Whether a revision still needs its images pinned.
pub fn needs_images(r: &Revision) -> bool {
    r.spec.containers.len()
        != r.status
            .container_statuses
            .iter()
            .filter(|c| c.image_digest.is_some())
            .count()
}

fn human_bytes(n: u64) -> String {
    const MB: f64 = 1024.0 * 1024.0;
    if n as f64 >= MB {
        format!("{:.1} MiB", n as f64 / MB)
    } else {
        format!("{:.1} KiB", n as f64 / 1024.0)
    }
}

/// Runs the reconciler until `shutdown`.
pub async fn run(
    controller: Controller,
    images: Arc<Images>,
    mut rx: mpsc::UnboundedReceiver<RevisionKey>,
    tx: mpsc::UnboundedSender<RevisionKey>,
    on_pinned: OnPinned,
    shutdown: CancellationToken,
) {
    let tracker = TaskTracker::new();
    let busy: Arc<Mutex<HashSet<RevisionKey>>> = Arc::default();
    let backoff: Arc<Mutex<HashMap<RevisionKey, Duration>>> = Arc::default();
    // Revisions left unresolved by a previous run.
    match controller.list_revisions(None, None).await {
        Ok(all) => {
            for r in all.iter().filter(|r| needs_images(r)) {
                let _ = tx.send((r.metadata.namespace.clone(), r.metadata.name.clone()));
            }
        }
        Err(e) => warn!(error = %skiff_telemetry::ErrorChain(&e), "listing revisions at start"),
    }
    loop {
        let key = tokio::select! {
            k = rx.recv() => match k { Some(k) => k, None => break },
            () = shutdown.cancelled() => break,
        };
        {
            let mut b = busy.lock().unwrap_or_else(|p| p.into_inner());
            if !b.insert(key.clone()) {
                continue;
            }
        }
        let (controller, images, busy, backoff, tx, shutdown, on_pinned) = (
            controller.clone(),
            images.clone(),
            busy.clone(),
            backoff.clone(),
            tx.clone(),
            shutdown.clone(),
            on_pinned.clone(),
        );
        let span = info_span!("revision", namespace = %key.0, revision = %key.1);
        tracker.spawn(
            async move {
                let retry = resolve(&controller, &images, &key).await;
                if !retry {
                    on_pinned();
                }
                busy.lock().unwrap_or_else(|p| p.into_inner()).remove(&key);
                if retry {
                    let delay = {
                        let mut b = backoff.lock().unwrap_or_else(|p| p.into_inner());
                        let d = b.get(&key).map_or(RETRY_MIN, |d| (*d * 2).min(RETRY_MAX));
                        b.insert(key.clone(), d);
                        d
                    };
                    info!(
                        retry_in_seconds = delay.as_secs(),
                        "will retry the image pull"
                    );
                    tokio::select! {
                        () = tokio::time::sleep(delay) => { let _ = tx.send(key); }
                        () = shutdown.cancelled() => {}
                    }
                } else {
                    backoff
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&key);
                }
            }
            .instrument(span),
        );
    }
    tracker.close();
    // Pulls in flight are abandoned at shutdown; staging is cleaned at the next start.
    let _ = tokio::time::timeout(Duration::from_secs(2), tracker.wait()).await;
}

/// Resolves a revision's images. Returns whether to retry later.
async fn resolve(controller: &Controller, images: &Images, key: &RevisionKey) -> bool {
    let (ns, name) = (key.0.as_str(), key.1.as_str());
    let revision = match controller.get_revision(ns, name).await {
        Ok(r) => r,
        Err(_) => return false,
    };
    if !needs_images(&revision) {
        return false;
    }
    let now = controller.now();
    let pulling = |message: String| {
        let now = now.clone();
        move |r: &mut Revision| {
            let mut changed = false;
            for t in ["ResourcesAvailable", "Ready"] {
                let before = r.status.conditions.clone();
                set_condition(
                    &mut r.status.conditions,
                    t,
                    ConditionStatus::Unknown,
                    Some(REASON_PULLING),
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
                            .condition("Ready")
                            .is_some_and(|c| c.reason.as_deref() == Some(REASON_PULLING));
                        if !still_pulling {
                            return false;
                        }
                        let before = r.status.conditions.clone();
                        for t in ["ResourcesAvailable", "Ready"] {
                            set_condition(
                                &mut r.status.conditions,
                                t,
                                ConditionStatus::Unknown,
                                Some(REASON_PULLING),
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
                        for t in ["ResourcesAvailable", "Ready"] {
                            set_condition(
                                &mut r.status.conditions,
                                t,
                                ConditionStatus::False,
                                Some(REASON_PULL_FAILED),
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
            let msg = "the revision's images are pinned; no instance has run yet (`skiff scale SERVICE N` starts instances)";
            for t in ["ResourcesAvailable", "Ready"] {
                set_condition(&mut r.status.conditions, t, ConditionStatus::Unknown, Some(REASON_NO_INSTANCES), Some(msg.to_owned()), &now);
            }
            true
        })
        .await;
    false
}
