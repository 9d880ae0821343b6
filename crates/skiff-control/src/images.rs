//! The daemon's images: the content store and puller, configured from the daemon's settings,
//! and image resolution for revisions (tag to digest, honouring `imagePullPolicy`).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;

use skiff_api::image::ImageRef;
use skiff_api::object::Revision;
use skiff_image::auth::CredentialStore;
use skiff_image::metrics::ImageMetrics;
use skiff_image::puller::Progress;
use skiff_image::registry::{RegistryClient, RegistryOptions};
use skiff_image::{ContentStore, ImageRecord, PullError, Puller};
use skiff_store::Store;

use std::collections::BTreeMap;
use std::path::PathBuf;

/// Why a revision's image could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    /// The reference is not an image reference (validation should have caught it).
    #[error("{0}")]
    Invalid(String),
    /// `imagePullPolicy: Never` and the image is not present.
    #[error(
        "image {0} is not present and imagePullPolicy is Never; import it with `skiff images import`"
    )]
    NotPresent(String),
    /// The pull failed.
    #[error(transparent)]
    Pull(#[from] PullError),
    /// The content store failed.
    #[error("looking up local images")]
    Content(#[from] skiff_image::content::ContentError),
}

impl ResolveError {
    /// A short reason for conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            ResolveError::Pull(e) => e.reason(),
            ResolveError::NotPresent(_) => "not_present",
            ResolveError::Invalid(_) => "invalid",
            ResolveError::Content(_) => "io",
        }
    }
}

/// Images as the daemon uses them.
pub struct Images {
    /// The puller (which holds the content store).
    pub puller: Arc<Puller>,
}

/// Opening the image store failed.
#[derive(Debug, thiserror::Error)]
pub enum ImagesError {
    /// The content store could not be opened.
    #[error("opening the image content store")]
    Content(#[from] skiff_image::content::ContentError),
    /// The credentials file is unusable.
    #[error("reading registry credentials")]
    Auth(#[from] skiff_image::auth::AuthFileError),
}

/// Registries whose tags are resolved from local images only, as Knative's
/// `registries-skipping-tag-resolving` (imports use `skiff.local/…`).
pub const LOCAL_REGISTRIES: &[&str] = &["skiff.local", "dev.local", "ko.local", "kind.local"];

/// How a revision's image is resolved. Knative resolves a tag to a digest at the registry
/// whenever a revision is created, so a moved tag reaches new revisions; an explicit
/// `imagePullPolicy: IfNotPresent` prefers a local image, `Never` insists on one, and
/// registries in [`LOCAL_REGISTRIES`] resolve locally.
pub fn effective_policy(reference: &ImageRef, policy: Option<&str>) -> &'static str {
    match policy {
        Some("Never") => "Never",
        Some("IfNotPresent") => "IfNotPresent",
        Some("Always") => "Always",
        _ if reference.digest().is_some() => "IfNotPresent",
        _ if LOCAL_REGISTRIES.contains(&reference.registry()) => "IfNotPresent",
        _ => "Always",
    }
}

/// The registry settings images are pulled with.
#[derive(Debug, Clone, Default)]
pub struct ImageSettings {
    /// A Docker-style `auth.json` with registry credentials.
    pub registry_auth_file: Option<PathBuf>,
    /// Registries reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Mirrors tried before each registry, by registry host.
    pub registry_mirrors: BTreeMap<String, Vec<String>>,
}

impl Images {
    /// Opens the content store under `<data_dir>/images` with the daemon's registry settings.
    pub fn open(
        config: &ImageSettings,
        data_dir: &Path,
        store: Arc<dyn Store>,
        metrics: &skiff_telemetry::Metrics,
    ) -> Result<Self, ImagesError> {
        let content = ContentStore::open(&data_dir.join("images"), store)?;
        let credentials = match &config.registry_auth_file {
            Some(p) => CredentialStore::from_file(p)?,
            None => CredentialStore::default(),
        };
        let mut options = RegistryOptions::new();
        options.insecure = config.insecure_registries.clone();
        options.mirrors = config.registry_mirrors.clone();
        let client = Arc::new(RegistryClient::new(options, credentials));
        let image_metrics = metrics.register("image", ImageMetrics::new);
        Ok(Images {
            puller: Puller::new(client, content, image_metrics),
        })
    }

    /// The content store.
    pub fn content(&self) -> &ContentStore {
        self.puller.content()
    }

    /// Resolves a container's image to a local, pinned image, pulling as the policy says.
    pub async fn resolve(
        &self,
        image: &str,
        policy: Option<&str>,
        progress: Progress,
    ) -> Result<ImageRecord, ResolveError> {
        let reference: ImageRef = image
            .parse()
            .map_err(|e: skiff_api::image::ImageRefError| ResolveError::Invalid(e.to_string()))?;
        let local = match reference.digest() {
            Some(d) => self.content().by_digest(d).await?,
            None => self.content().by_tag(&reference.to_string()).await?,
        };
        match (effective_policy(&reference, policy), local) {
            ("Never", Some(img)) | ("IfNotPresent", Some(img)) => Ok(img),
            ("Never", None) => Err(ResolveError::NotPresent(reference.to_string())),
            _ => Ok(self.puller.pull(&reference, progress).await?),
        }
    }
}

/// Every image digest a revision is pinned to.
pub fn digests_in_use(revisions: &[Revision]) -> HashSet<String> {
    revisions
        .iter()
        .flat_map(|r| r.status.container_statuses.iter())
        .filter_map(|c| c.image_digest.as_deref())
        .filter_map(|pinned| pinned.rsplit_once('@').map(|(_, d)| d.to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tags resolve at the registry (Knative), digests and local registries locally; an
    /// explicit policy wins.
    #[test]
    fn default_pull_policy() {
        let r = |s: &str| s.parse::<ImageRef>().expect("valid");
        assert_eq!(effective_policy(&r("nginx"), None), "Always");
        assert_eq!(effective_policy(&r("nginx:latest"), None), "Always");
        assert_eq!(effective_policy(&r("nginx:1.25"), None), "Always");
        assert_eq!(
            effective_policy(&r("skiff.local/hello:v1"), None),
            "IfNotPresent"
        );
        assert_eq!(
            effective_policy(&r("nginx:1.25"), Some("IfNotPresent")),
            "IfNotPresent"
        );
        let d = "nginx@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        assert_eq!(effective_policy(&r(d), None), "IfNotPresent");
        assert_eq!(effective_policy(&r("nginx:1.25"), Some("Always")), "Always");
        assert_eq!(effective_policy(&r("nginx"), Some("Never")), "Never");
    }
}
