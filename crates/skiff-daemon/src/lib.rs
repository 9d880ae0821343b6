//! The skiff daemon: configuration, the data directory, the Service controller, the REST API
//! and the HTTP ingress, and their orderly start and shutdown.
//!
//! `skiff server` (in the `skiff` binary) loads a [`config::Config`] and calls
//! [`server::run`] with a cancellation token that SIGTERM/SIGINT cancel.
#![forbid(unsafe_code)]

pub mod api;
pub mod config;
pub mod controller;
pub mod datadir;
pub mod images;
pub mod instances;
pub mod plan;
pub mod revisions;
pub mod routes;
pub mod server;
pub mod serving;
pub mod status;
