//! skiff's images: an OCI distribution client ([`registry`]), a content store that keeps
//! every blob verified by digest and every layer unpacked once by diff_id ([`content`]),
//! pulls with shared downloads and progress ([`puller`]), imports without a registry
//! ([`import`]), and garbage collection ([`gc`]).
#![forbid(unsafe_code)]

pub mod auth;
pub mod content;
pub mod gc;
pub mod import;
pub mod manifest;
pub mod metrics;
pub mod puller;
pub mod registry;
pub mod unpack;

pub use content::{ContentStore, ImageRecord};
pub use puller::{PullError, PullEvent, Puller};

/// Formats an error with its sources.
pub(crate) fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(x) = src {
        s.push_str(": ");
        s.push_str(&x.to_string());
        src = x.source();
    }
    s
}

/// Installs the process-wide TLS crypto provider (ring) once.
pub(crate) fn rustls_install() -> bool {
    rustls::crypto::ring::default_provider()
        .install_default()
        .is_ok()
}
