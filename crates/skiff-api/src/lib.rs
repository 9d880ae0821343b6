//! skiff's API types: Knative Serving v1 manifests, their validation with field paths, the
//! API objects the daemon stores and returns, and the error body. No I/O.
//!
//! The entry point for manifests is [`manifest::parse_services`] (text) or
//! [`manifest::service_from_document`] (an already parsed JSON value); both return either a
//! [`validate::ValidatedService`] or every problem of the document. [`manifest::parse_objects`]
//! also reads Secrets, ConfigMaps and the Knative Eventing kinds of [`eventing`].
#![forbid(unsafe_code)]

pub mod autoscaling;
pub mod config;
pub mod defaults;
pub mod egress;
pub mod error;
pub mod eventing;
mod fields;
pub mod image;
pub mod job;
pub mod manifest;
pub mod names;
pub mod object;
pub mod problems;
pub mod quantity;
pub mod rollout;
pub mod slo;
mod suggest;
pub mod types;
pub mod validate;
pub mod wire;

pub use error::{ErrorBody, ErrorCode};
pub use object::{Revision, Service};
pub use problems::{FieldPath, Problem, ProblemKind};
pub use types::ServiceManifest;
