//! The dashboard skiff serves under `/ui/`: a one-time login that opens a session, the
//! executive, on-call and debug views rendered on the server as HTML with SVG charts, and the
//! few static assets they use, embedded in the binary.
//!
//! This crate knows nothing of the daemon: the daemon gathers each view's figures (the same
//! functions its API answers with) into the view models here, and this crate renders them.

pub mod chart;
