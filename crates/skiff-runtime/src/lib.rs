//! skiff's runtime: isolated instances in an OCI runtime.
#![deny(unsafe_op_in_unsafe_fn)]

pub mod cgroups;
pub mod instance;
pub mod logs;
pub mod netns;
pub mod oci;
pub mod probe;
pub mod reaper;
pub mod rootfs;
pub mod spec;

pub use instance::{Instance, InstancePlan, Runtime, RuntimeOptions};

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
