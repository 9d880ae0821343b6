//! The skiff daemon: configuration, the data directory, the REST API and the wiring of the
//! control plane ([`skiff_control`]) and the HTTP ingress, with their orderly start and
//! shutdown.
//!
//! `skiff server` (in the `skiff` binary) loads a [`config::Config`] and calls
//! [`server::run`] with a cancellation token that SIGTERM/SIGINT cancel.
#![forbid(unsafe_code)]

pub mod alerts;
pub mod api;
pub mod config;
pub mod datadir;
pub mod network;
pub mod requests;
pub mod server;
pub mod ui;
