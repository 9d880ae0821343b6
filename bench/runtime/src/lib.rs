//! What skiff's benchmarks share: the bare-runc floor ([`floor`]), removing and checking what a
//! run leaves behind ([`cleanup`]), facts about the machine ([`machine`]) and order statistics
//! ([`stats`]). `start-bench` (this package's binary) and `serving-bench` (`bench/serving`)
//! use them.

pub mod cleanup;
pub mod floor;
pub mod machine;
pub mod stats;
