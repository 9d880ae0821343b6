//! OCI and Docker schema 2 manifests and indexes, and platform selection.
//!
//! Both formats share one JSON shape (Docker's v2s2 came first, OCI standardised it), so one
//! set of structs reads both; the media type says which it is.

use serde::{Deserialize, Serialize};

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker schema 2 manifest.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Every manifest type skiff reads, as sent in `Accept` (the registry answers a manifest only
/// when its stored type is listed).
pub const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";
/// Largest manifest accepted (distribution's own limit is 4 MiB).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// A content descriptor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The media type of the content.
    #[serde(default)]
    pub media_type: String,
    /// `sha256:<hex>`.
    pub digest: String,
    /// Size in bytes.
    pub size: u64,
    /// For index entries: the platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<std::collections::BTreeMap<String, String>>,
}

/// A platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// `amd64`, `arm64`, ….
    pub architecture: String,
    /// `linux`, ….
    pub os: String,
    /// `v8`, ….
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A manifest or an index, as read from a registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawManifest {
    /// Always 2.
    pub schema_version: u32,
    /// The media type, when the document states it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// Manifest: the config blob.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Descriptor>,
    /// Manifest: the layers, base first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub layers: Option<Vec<Descriptor>>,
    /// Index: the per-platform manifests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifests: Option<Vec<Descriptor>>,
}

/// What a manifest document turned out to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Parsed {
    /// An image manifest: config and layers.
    Manifest {
        /// The config blob.
        config: Descriptor,
        /// The layers, base first.
        layers: Vec<Descriptor>,
    },
    /// An index of per-platform manifests.
    Index(Vec<Descriptor>),
}

/// Why a manifest is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON of the expected shape.
    #[error("the manifest is not valid JSON: {0}")]
    Json(String),
    /// A media type skiff cannot use (schema 1, artifacts, …).
    #[error("unsupported manifest media type `{0}` (skiff reads OCI and Docker schema 2 images)")]
    MediaType(String),
    /// Neither layers nor manifests.
    #[error("the manifest has neither layers nor per-platform manifests")]
    Shape,
    /// An index has no manifest for this host.
    #[error("no image for {wanted} in the index; it offers: {offered}")]
    NoPlatform {
        /// The platform wanted.
        wanted: String,
        /// The platforms offered.
        offered: String,
    },
    /// A layer of a type skiff cannot unpack.
    #[error("layer {digest} has unsupported media type `{media_type}`")]
    LayerType {
        /// The layer.
        digest: String,
        /// Its media type.
        media_type: String,
    },
}

/// Layer media types skiff unpacks (compression is detected from the bytes).
pub fn is_layer_type(media_type: &str) -> bool {
    matches!(
        media_type,
        "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.diff.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"
            | ""
    )
}

/// Parses a manifest body. `content_type` is the registry's Content-Type header, used when
/// the document does not state its media type.
pub fn parse(body: &[u8], content_type: Option<&str>) -> Result<Parsed, ManifestError> {
    let raw: RawManifest =
        serde_json::from_slice(body).map_err(|e| ManifestError::Json(e.to_string()))?;
    let media_type = raw
        .media_type
        .clone()
        .or_else(|| content_type.map(|c| c.split(';').next().unwrap_or(c).trim().to_owned()))
        .unwrap_or_default();
    match media_type.as_str() {
        OCI_MANIFEST | DOCKER_MANIFEST | OCI_INDEX | DOCKER_LIST | "" | "application/json" => {}
        other => return Err(ManifestError::MediaType(other.to_owned())),
    }
    if raw.schema_version != 2 {
        return Err(ManifestError::MediaType(format!(
            "schema version {}",
            raw.schema_version
        )));
    }
    match (raw.config, raw.layers, raw.manifests) {
        (Some(config), Some(layers), _) => {
            for l in &layers {
                if !is_layer_type(&l.media_type) {
                    return Err(ManifestError::LayerType {
                        digest: l.digest.clone(),
                        media_type: l.media_type.clone(),
                    });
                }
            }
            Ok(Parsed::Manifest { config, layers })
        }
        (_, _, Some(manifests)) => Ok(Parsed::Index(manifests)),
        _ => Err(ManifestError::Shape),
    }
}

/// The platform of this host, in OCI terms.
pub fn host_platform() -> Platform {
    let architecture = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    };
    Platform {
        architecture: architecture.to_owned(),
        os: std::env::consts::OS.to_owned(),
        variant: None,
    }
}

/// Picks the index entry for `wanted`, or says which platforms are offered.
pub fn select_platform<'a>(
    entries: &'a [Descriptor],
    wanted: &Platform,
) -> Result<&'a Descriptor, ManifestError> {
    let matches = |p: &Platform| p.os == wanted.os && p.architecture == wanted.architecture;
    entries
        .iter()
        .find(|d| {
            d.platform.as_ref().is_some_and(|p| {
                matches(p) && (wanted.variant.is_none() || p.variant == wanted.variant)
            })
        })
        .or_else(|| {
            entries
                .iter()
                .find(|d| d.platform.as_ref().is_some_and(matches))
        })
        .ok_or_else(|| ManifestError::NoPlatform {
            wanted: wanted.to_string(),
            offered: {
                let offered: Vec<String> = entries
                    .iter()
                    .filter_map(|d| d.platform.as_ref().map(ToString::to_string))
                    .filter(|p| p != "unknown/unknown")
                    .collect();
                if offered.is_empty() {
                    "nothing usable".to_owned()
                } else {
                    offered.join(", ")
                }
            },
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// OCI and Docker manifests and indexes parse; other types are refused by name.
    #[test]
    fn parses_both_formats() {
        let m = br#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json","config":{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"sha256:aa","size":1},"layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","digest":"sha256:bb","size":2}]}"#;
        assert!(matches!(parse(m, None), Ok(Parsed::Manifest { layers, .. }) if layers.len() == 1));
        let i = br#"{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:cc","size":3,"platform":{"architecture":"arm64","os":"linux"}}]}"#;
        assert!(matches!(parse(i, Some(OCI_INDEX)), Ok(Parsed::Index(e)) if e.len() == 1));
        let s1 = br#"{"schemaVersion":1,"name":"x"}"#;
        assert!(
            parse(
                s1,
                Some("application/vnd.docker.distribution.manifest.v1+prettyjws")
            )
            .is_err()
        );
        let wasm = br#"{"schemaVersion":2,"config":{"mediaType":"x","digest":"sha256:aa","size":1},"layers":[{"mediaType":"application/wasm","digest":"sha256:bb","size":2}]}"#;
        assert!(matches!(
            parse(wasm, None),
            Err(ManifestError::LayerType { .. })
        ));
    }

    /// Platform selection prefers an exact variant, and lists what is offered when nothing fits.
    #[test]
    fn selects_platform() {
        let d = |arch: &str, variant: Option<&str>| Descriptor {
            media_type: OCI_MANIFEST.into(),
            digest: format!("sha256:{arch}"),
            size: 1,
            platform: Some(Platform {
                architecture: arch.into(),
                os: "linux".into(),
                variant: variant.map(Into::into),
            }),
            annotations: None,
        };
        let entries = vec![d("arm64", Some("v8")), d("amd64", None)];
        let amd = Platform {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        };
        assert_eq!(
            select_platform(&entries, &amd).map(|d| d.digest.as_str()),
            Ok("sha256:amd64")
        );
        let err = select_platform(&entries[..1], &amd).expect_err("none");
        assert_eq!(
            err.to_string(),
            "no image for linux/amd64 in the index; it offers: linux/arm64/v8"
        );
    }
}

/// A fetched manifest with its parsed form.
#[derive(Debug, Clone)]
pub struct FetchedParsed {
    /// The bytes as fetched.
    pub fetched: crate::registry::FetchedManifest,
    /// What they hold.
    pub parsed: Parsed,
}
