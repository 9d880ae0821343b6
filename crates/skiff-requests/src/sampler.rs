//! Which requests' traces are kept. OpenTelemetry's samplers decide at a request's start
//! (the head: `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG`, with their meanings); the
//! router decides again at its end and keeps, whatever the head said, every request that
//! failed, was slow (over its Service's latency SLO) or waited through a cold start.

use std::time::Duration;

use skiff_router::record::RequestRecord;

/// A head sampler, as `OTEL_TRACES_SAMPLER` names them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Sampler {
    /// `always_on`.
    AlwaysOn,
    /// `always_off`.
    AlwaysOff,
    /// `traceidratio`: this share of trace ids, decided from the id alone.
    Ratio(f64),
    /// `parentbased_*`: the client's decision when it sent one, else the root sampler.
    ParentBased(Root),
}

/// The sampler of a `parentbased_*` sampler for requests without a parent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Root {
    /// `parentbased_always_on`.
    AlwaysOn,
    /// `parentbased_always_off`.
    AlwaysOff,
    /// `parentbased_traceidratio`.
    Ratio(f64),
}

/// A sampler's name or argument is not one OpenTelemetry defines.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SamplerError {
    /// Unknown name.
    #[error(
        "unknown sampler `{0}`: use always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
    )]
    Unknown(String),
    /// The ratio is not a number in [0, 1].
    #[error("sampler argument `{0}` is not a ratio between 0 and 1")]
    Ratio(String),
}

impl Default for Sampler {
    /// OpenTelemetry's default: `parentbased_always_on`.
    fn default() -> Self {
        Sampler::ParentBased(Root::AlwaysOn)
    }
}

impl Sampler {
    /// The sampler `name` (`OTEL_TRACES_SAMPLER`) with `arg` (`OTEL_TRACES_SAMPLER_ARG`; the
    /// ratio, 1.0 when absent, as the specification says).
    pub fn parse(name: &str, arg: Option<&str>) -> Result<Sampler, SamplerError> {
        let ratio = || -> Result<f64, SamplerError> {
            let Some(a) = arg.map(str::trim).filter(|a| !a.is_empty()) else {
                return Ok(1.0);
            };
            a.parse::<f64>()
                .ok()
                .filter(|r| (0.0..=1.0).contains(r))
                .ok_or_else(|| SamplerError::Ratio(a.to_owned()))
        };
        Ok(match name.trim() {
            "always_on" => Sampler::AlwaysOn,
            "always_off" => Sampler::AlwaysOff,
            "traceidratio" => Sampler::Ratio(ratio()?),
            "parentbased_always_on" => Sampler::ParentBased(Root::AlwaysOn),
            "parentbased_always_off" => Sampler::ParentBased(Root::AlwaysOff),
            "parentbased_traceidratio" => Sampler::ParentBased(Root::Ratio(ratio()?)),
            other => return Err(SamplerError::Unknown(other.to_owned())),
        })
    }

    /// The head decision for trace `trace_id`; `parent`: the sampled flag of the client's
    /// `traceparent`, if it sent one.
    pub fn head(&self, trace_id: u128, parent: Option<bool>) -> bool {
        match *self {
            Sampler::AlwaysOn => true,
            Sampler::AlwaysOff => false,
            Sampler::Ratio(r) => by_ratio(trace_id, r),
            Sampler::ParentBased(root) => match (parent, root) {
                (Some(p), _) => p,
                (None, Root::AlwaysOn) => true,
                (None, Root::AlwaysOff) => false,
                (None, Root::Ratio(r)) => by_ratio(trace_id, r),
            },
        }
    }
}

/// `TraceIdRatioBased` as OpenTelemetry's SDKs compute it: the trace id's low 8 bytes,
/// shifted right by one, below `ratio` × 2^63. Every SDK then decides alike for one trace.
fn by_ratio(trace_id: u128, ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    if ratio <= 0.0 {
        return false;
    }
    let bound = (ratio * (1u64 << 63) as f64) as u64;
    ((trace_id as u64) >> 1) < bound
}

/// Why a request's trace was kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Keep {
    /// The head sampler chose it.
    Head,
    /// It failed: a 5xx, skiff refused it, or its response was cut short.
    Error,
    /// It took longer than its Service's latency SLO allows.
    Slow,
    /// It waited for an instance to start.
    ColdStart,
}

impl Keep {
    /// The label value: `head`, `error`, `slow`, `cold_start`.
    pub fn as_str(self) -> &'static str {
        match self {
            Keep::Head => "head",
            Keep::Error => "error",
            Keep::Slow => "slow",
            Keep::ColdStart => "cold_start",
        }
    }
}

/// Whether `r`'s trace is kept, and why (the first reason that holds, failures first);
/// `slow_after`: its Service's latency SLO threshold, if it has one (asked only when the
/// answer matters).
pub fn keep(r: &RequestRecord, slow_after: impl FnOnce() -> Option<Duration>) -> Option<Keep> {
    let spans = r.spans?;
    if r.status >= 500 || r.throttled.is_some() || !r.complete {
        Some(Keep::Error)
    } else if r.cold_start.is_some() {
        Some(Keep::ColdStart)
    } else if slow_after().is_some_and(|t| r.duration > t) {
        Some(Keep::Slow)
    } else if spans.sampled {
        Some(Keep::Head)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tests::record;

    #[test]
    fn parses_the_specification_names() {
        assert_eq!(Sampler::parse("always_on", None), Ok(Sampler::AlwaysOn));
        assert_eq!(
            Sampler::parse("traceidratio", Some("0.25")),
            Ok(Sampler::Ratio(0.25))
        );
        assert_eq!(
            Sampler::parse("parentbased_traceidratio", None),
            Ok(Sampler::ParentBased(Root::Ratio(1.0)))
        );
        assert_eq!(
            Sampler::parse("traceidratio", Some("2")),
            Err(SamplerError::Ratio("2".into()))
        );
        assert!(matches!(
            Sampler::parse("jaeger_remote", None),
            Err(SamplerError::Unknown(_))
        ));
        assert_eq!(Sampler::default(), Sampler::ParentBased(Root::AlwaysOn));
    }

    /// A ratio keeps that share of random trace ids, and one trace id always alike.
    #[test]
    fn a_ratio_keeps_its_share() {
        let s = Sampler::Ratio(0.1);
        let mut x: u128 = 0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C834;
        let mut kept = 0;
        for _ in 0..100_000 {
            // xorshift: spread ids without a dependency.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            kept += usize::from(s.head(x, None));
        }
        assert!((9_000..11_000).contains(&kept), "{kept}");
        assert_eq!(s.head(x, None), s.head(x, None));
        assert!(!Sampler::Ratio(0.0).head(u128::MAX, None));
        assert!(Sampler::Ratio(1.0).head(u128::MAX, None));
    }

    #[test]
    fn parent_based_follows_the_client() {
        let s = Sampler::ParentBased(Root::AlwaysOff);
        assert!(s.head(1, Some(true)));
        assert!(!s.head(1, None));
        assert!(!Sampler::ParentBased(Root::AlwaysOn).head(1, Some(false)));
    }

    /// Failed, cold and slow requests are kept whatever the head said; others as it said.
    #[test]
    fn the_tail_keeps_failures_cold_starts_and_slow_requests() {
        let mut r = record(200, false);
        assert_eq!(keep(&r, || None), None);
        r.status = 503;
        assert_eq!(keep(&r, || None), Some(Keep::Error));
        r.status = 200;
        r.complete = false;
        assert_eq!(keep(&r, || None), Some(Keep::Error));
        r.complete = true;
        r.cold_start = Some(Duration::from_millis(40));
        assert_eq!(keep(&r, || None), Some(Keep::ColdStart));
        r.cold_start = None;
        r.duration = Duration::from_millis(400);
        assert_eq!(
            keep(&r, || Some(Duration::from_millis(300))),
            Some(Keep::Slow)
        );
        assert_eq!(keep(&r, || Some(Duration::from_millis(500))), None);
        let sampled = record(200, true);
        assert_eq!(keep(&sampled, || None), Some(Keep::Head));
        // Not traced at all: nothing to keep.
        let mut untraced = record(500, true);
        untraced.spans = None;
        assert_eq!(keep(&untraced, || None), None);
    }
}
