//! The dashboard skiff serves under `/ui/`: a one-time login that opens a session, the
//! executive, on-call and debug views rendered on the server as HTML with SVG charts, and the
//! few static assets they use, embedded in the binary.
//!
//! This crate knows nothing of the daemon: the daemon gathers each view's figures (the same
//! functions its API answers with) into the view models here, and this crate renders them.

pub mod auth;
pub mod chart;
pub mod page;
pub mod views;

/// The dashboard's static files (stylesheet and the live-update script), embedded in the
/// binary.
#[derive(rust_embed::Embed)]
#[folder = "assets/"]
pub struct Assets;

/// The content type of an asset by its name.
pub fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("css") => "text/css; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}
