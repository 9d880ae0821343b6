//! Progressive rollouts as pure functions: no I/O and no clock. The caller passes the time,
//! the revisions' health and what their requests did since the step began.
//!
//! - [`window`]: one revision's requests over a step (count, 5xx, an HDR histogram of
//!   durations), made into [`skiff_api::rollout::Figures`].
//! - [`analysis`]: the checks of a step, the canary against the stable revision on the same
//!   step's requests: `errors` (5xx share over the stable's plus N points), `latency` (p95
//!   over N × the stable's) and `slo` (the Service's error budgets burnt over N × their
//!   rate).
//! - [`plan`]: when a rollout starts, what a look at it decides (wait, restart the step's
//!   window, advance, complete, roll back), and the commands (pause, resume, promote, abort,
//!   rollback) as changes of a Service's [`skiff_api::rollout::RolloutStatus`].
//!
//! # The statistics
//!
//! A step's error check must not roll back a good canary over one unlucky 5xx, nor keep a
//! bad one for a whole step once it is plainly bad. So the canary's 5xx count is tested
//! against the allowed rate `t` (the stable's rate plus the allowed points) with the
//! Chernoff bound on the binomial tail, `P(X ≥ k) ≤ exp(−n·D(k/n ‖ t))`: a bound, so the
//! test only errs towards keeping the canary. While the step runs, a look fails it only at
//! p < 0.001 and with 3 or more 5xx (it looks often); at the step's end, at p < 0.05 and
//! with at least the step's minimum of canary requests. The bound is a few lines; a
//! statistics crate would bring its exact tails and much else unused.
#![forbid(unsafe_code)]

pub mod analysis;
pub mod plan;
pub mod window;

pub use analysis::{Outcome, SloTargets, Verdict, analyse};
pub use plan::{CommandError, Decision, Health, Observation, decide};
pub use window::Window;
