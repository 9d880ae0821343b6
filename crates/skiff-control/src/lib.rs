//! skiff's control plane: the Service controller, the one owner of status ([`status`]), and
//! the reconcilers that make the world follow the stored objects.
//!
//! # Design
//! Every capability that acts on stored objects is a [`reconciler::Reconciler`]: it names the
//! key prefixes it watches and is called with one key at a time from a [`queue::WorkQueue`]
//! that de-duplicates keys, retries failures with backoff and can requeue after a delay.
//! Deciding is a pure function over observed state; acting is a thin executor. See
//! ARCHITECTURE.md, "Adding a reconciler".
#![forbid(unsafe_code)]

pub mod budget;
pub mod controller;
pub mod deployments;
pub mod dispatch;
pub mod eventing;
pub mod history;
pub mod images;
pub mod instances;
pub mod jobs;
pub mod plan;
pub mod plane;
pub mod queue;
pub mod reconciler;
pub mod revisions;
pub mod rollout;
pub mod routes;
pub mod routing;
pub mod runtime;
pub mod schedules;
pub mod secrets;
pub mod serving;
pub mod slo;
pub mod status;
pub mod telemetry;
