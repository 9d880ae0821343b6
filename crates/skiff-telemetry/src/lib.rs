//! Telemetry shared by every skiff component: log set-up and error-chain formatting.
//!
//! # Design
//! Components log through `tracing` with short lowercase messages and data in fields. The
//! binary installs one subscriber at start ([`init_logging`]); libraries never install one.
//! Errors are logged whole through [`ErrorChain`], so each layer's `Display` only describes
//! itself (see STYLE.md, "Errors"). Metrics registries join this crate when serving arrives.
#![forbid(unsafe_code)]

use std::error::Error;
use std::fmt;
use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

pub use prometheus_client;

/// The daemon's metrics: one root registry (prefix `skiff`) with a sub-registry per
/// component (`skiff_image_…`, `skiff_router_…`), and `skiff_build_info`.
pub struct Metrics {
    registry: std::sync::Mutex<prometheus_client::registry::Registry>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Metrics")
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct BuildLabels {
    version: String,
}

impl Metrics {
    /// A root registry with `skiff_build_info{version}`.
    pub fn new(version: &str) -> Self {
        use prometheus_client::metrics::family::Family;
        use prometheus_client::metrics::gauge::Gauge;
        let mut registry = prometheus_client::registry::Registry::with_prefix("skiff");
        let build: Family<BuildLabels, Gauge> = Family::default();
        build
            .get_or_create(&BuildLabels {
                version: version.to_owned(),
            })
            .set(1);
        registry.register("build_info", "skiff build information", build);
        Metrics {
            registry: std::sync::Mutex::new(registry),
        }
    }

    /// Lets a component register its metrics under `skiff_<component>_`.
    pub fn register<T>(
        &self,
        component: &str,
        f: impl FnOnce(&mut prometheus_client::registry::Registry) -> T,
    ) -> T {
        let mut root = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        f(root.sub_registry_with_prefix(component))
    }

    /// Lets a component register metrics under `skiff_` itself.
    pub fn register_root<T>(
        &self,
        f: impl FnOnce(&mut prometheus_client::registry::Registry) -> T,
    ) -> T {
        let mut root = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut root)
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let root = self.registry.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &root);
        out
    }

    /// The same in Prometheus' text format 0.0.4, for clients that do not ask for
    /// OpenMetrics (`curl`, `promtool check metrics`): see [`prometheus_text`].
    pub fn render_prometheus(&self) -> String {
        prometheus_text(&self.render())
    }
}

/// OpenMetrics text as Prometheus' text format 0.0.4: a counter's `HELP` and `TYPE` name
/// its `_total` samples (OpenMetrics names the family), `unknown` is `untyped`, and
/// exemplars, `UNIT` lines, `_created` samples of counters and `# EOF` go (0.0.4 has none).
/// prometheus-client writes only OpenMetrics; this is the small difference, not a parser.
pub fn prometheus_text(openmetrics: &str) -> String {
    let counters: std::collections::HashSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let meta = ["# HELP ", "# TYPE "]
            .into_iter()
            .find_map(|p| line.strip_prefix(p).map(|rest| (p, rest)));
        if let Some((prefix, rest)) = meta {
            let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
            let suffix = if counters.contains(name) {
                "_total"
            } else {
                ""
            };
            let tail = if prefix == "# TYPE " && tail == "unknown" {
                "untyped"
            } else {
                tail
            };
            out.push_str(&format!("{prefix}{name}{suffix} {tail}\n"));
            continue;
        }
        let sample = line.split(" # {").next().unwrap_or(line);
        let name = sample.split(['{', ' ']).next().unwrap_or_default();
        if name
            .strip_suffix("_created")
            .is_some_and(|family| counters.contains(family))
        {
            continue;
        }
        out.push_str(sample);
        out.push('\n');
    }
    out
}

/// How log lines are written to standard error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines, for a terminal.
    Text,
    /// One JSON object a line, for log shippers.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format `{other}`: use `text` or `json`"
            )),
        }
    }
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// A log filter directive was not understood.
#[derive(Debug, thiserror::Error)]
#[error("invalid log filter `{filter}`")]
pub struct InvalidFilter {
    /// The directive as given.
    pub filter: String,
    #[source]
    source: tracing_subscriber::filter::ParseError,
}

/// Checks a filter directive such as `info,skiff_store=debug` without installing it.
pub fn parse_filter(filter: &str) -> Result<EnvFilter, InvalidFilter> {
    EnvFilter::try_new(filter).map_err(|source| InvalidFilter {
        filter: filter.to_owned(),
        source,
    })
}

/// Installs the process-wide subscriber. Call once, from the binary.
///
/// A second call (as happens when tests start several daemons in one process) is ignored.
pub fn init_logging(filter: &str, format: LogFormat) -> Result<(), InvalidFilter> {
    let filter = parse_filter(filter)?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(true);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    Ok(())
}

/// Formats an error with all of its sources: `outer: middle: root`.
///
/// Use it in log fields (`error = %ErrorChain(&err)`) and in user-facing messages where the
/// whole cause matters.
pub struct ErrorChain<'a>(pub &'a (dyn Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(err) = source {
            write!(f, ": {err}")?;
            source = err.source();
        }
        Ok(())
    }
}

impl fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Counters' metadata names their samples, exemplars and `# EOF` go, the rest is kept.
    #[test]
    fn openmetrics_becomes_prometheus_text() {
        let om = "# HELP skiff_requests Requests.\n# TYPE skiff_requests counter\nskiff_requests_total{code=\"200\"} 3 # {trace_id=\"ab\"} 1.0 1700000000.1\nskiff_requests_created{code=\"200\"} 1700000000.0\n# HELP skiff_latency_seconds Latency.\n# TYPE skiff_latency_seconds histogram\n# UNIT skiff_latency_seconds seconds\nskiff_latency_seconds_bucket{le=\"0.5\"} 2 # {trace_id=\"cd\"} 0.4\nskiff_latency_seconds_sum 0.7\n# TYPE skiff_x unknown\nskiff_x 1\n# EOF\n";
        let want = "# HELP skiff_requests_total Requests.\n# TYPE skiff_requests_total counter\nskiff_requests_total{code=\"200\"} 3\n# HELP skiff_latency_seconds Latency.\n# TYPE skiff_latency_seconds histogram\nskiff_latency_seconds_bucket{le=\"0.5\"} 2\nskiff_latency_seconds_sum 0.7\n# TYPE skiff_x untyped\nskiff_x 1\n";
        assert_eq!(prometheus_text(om), want);
    }

    #[derive(Debug, thiserror::Error)]
    #[error("opening the store")]
    struct Outer(#[source] std::io::Error);

    /// The chain shows every layer once, outermost first.
    #[test]
    fn error_chain_lists_every_source() {
        let err = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(
            ErrorChain(&err).to_string(),
            "opening the store: disk on fire"
        );
    }

    /// A bad filter is reported with the directive that caused it.
    #[test]
    fn bad_filter_is_named() {
        let err = parse_filter("info,=[").expect_err("not a valid directive");
        assert!(err.to_string().contains("info,=["));
    }
}
