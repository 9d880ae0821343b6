//! CloudEvents for skiff's eventing (Knative Eventing's Broker/Trigger model), as pure
//! functions: no I/O, no clock (callers pass `now`), no tokio.
//!
//! - [`event`]: a CloudEvent 1.0 in memory, its attribute rules and its storage form (CloudEvents
//!   JSON with `data_base64`).
//! - [`http`]: the CloudEvents HTTP binding, written by hand: parse a request in binary,
//!   structured or batched mode, encode for delivery in binary mode, read a sink's reply.
//! - [`filter`]: Knative Trigger filters (`filter.attributes` and the `filters` dialects), in
//!   Knative's YAML shape, with validation that names paths.
//! - [`delivery`]: Knative DeliverySpec decisions: the class of a sink's status, backoff,
//!   `Retry-After`, dead letter or drop.
#![forbid(unsafe_code)]

pub mod delivery;
pub mod event;
pub mod filter;
pub mod http;

pub use crate::http::{
    MAX_EVENT_BYTES, ParseError, parse_request, reply_from_response, to_binary, to_structured_json,
};
pub use delivery::{
    BackoffPolicy, Class, DeliveryPolicy, DurationError, Next, classify, next_attempt,
    parse_iso8601_duration,
};
pub use event::{CloudEvent, EventError, SPEC_VERSION};
pub use filter::{Filter, FilterProblem, TriggerFilters};
