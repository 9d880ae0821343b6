//! Garbage collection: removes images no revision uses, then every blob and layer no
//! remaining image references. What a revision or an instance uses is never removed.

use std::collections::HashSet;

pub use skiff_api::wire::GcReport;
use tracing::info;

use crate::content::{ContentError, ContentStore, ImageRecord};

/// Whether `image` is one of `in_use` (pinned references or digests).
pub fn used(image: &ImageRecord, in_use: &HashSet<String>) -> bool {
    in_use.contains(&image.digest)
        || image
            .index_digest
            .as_ref()
            .is_some_and(|d| in_use.contains(d))
        || image.references.iter().any(|r| in_use.contains(r))
}

/// Removes every image not in `in_use` (when `remove_unused`), then sweeps content no
/// remaining image references.
pub async fn collect(
    content: &ContentStore,
    in_use: &HashSet<String>,
    remove_unused: bool,
) -> Result<GcReport, ContentError> {
    let mut report = GcReport::default();
    let mut keep = Vec::new();
    for image in content.images().await? {
        if remove_unused && !used(&image, in_use) {
            content.remove_image(&image).await?;
            report.images.push(
                image
                    .references
                    .first()
                    .cloned()
                    .unwrap_or_else(|| image.digest.clone()),
            );
        } else {
            keep.push(image);
        }
    }
    let mut blobs = HashSet::new();
    let mut layers = HashSet::new();
    for image in &keep {
        blobs.insert(image.digest.clone());
        if let Some(d) = &image.index_digest {
            blobs.insert(d.clone());
        }
        blobs.insert(image.config_digest.clone());
        for l in &image.layers {
            blobs.insert(l.digest.clone());
            layers.insert(l.diff_id.clone());
        }
    }
    let (b, l, bytes) = content.sweep(&blobs, &layers).await?;
    report.blobs = b;
    report.layers = l;
    report.bytes = bytes;
    info!(
        images = report.images.len(),
        blobs = b,
        layers = l,
        bytes,
        "image garbage collected"
    );
    Ok(report)
}
