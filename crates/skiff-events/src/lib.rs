//! CloudEvents for skiff's eventing, as pure functions: no I/O, no clock (callers pass `now`).
//!
//! - [`event`]: a CloudEvent 1.0 in memory, its attribute rules and its storage form.
#![forbid(unsafe_code)]

pub mod event;
pub mod filter;
pub mod http;

pub use crate::http::{MAX_EVENT_BYTES, ParseError};
pub use event::{CloudEvent, EventError, SPEC_VERSION};
pub use filter::{Filter, FilterProblem, TriggerFilters};
