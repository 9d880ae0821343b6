//! Typed `autoscaling.knative.dev/*` settings, parsed and range-checked from annotations.
//!
//! The keys, accepted spellings (including the legacy camelCase ones such as `minScale`) and
//! ranges follow knative/serving `pkg/apis/autoscaling/annotation_validation.go`. skiff runs
//! Knative's KPA only, so the HPA class and its `cpu`/`memory` metrics are refused by name.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::names::parse_go_duration;
use crate::problems::{FieldPath, ProblemKind, Problems};

/// The annotation prefix of autoscaling settings.
pub const PREFIX: &str = "autoscaling.knative.dev/";

/// Shortest stable window Knative accepts.
pub const WINDOW_MIN: Duration = Duration::from_secs(6);
/// Longest stable window (and scale-down delay, and retention) Knative accepts.
pub const WINDOW_MAX: Duration = Duration::from_secs(3600);

/// One setting and every key that spells it, preferred spelling first.
struct Key {
    setting: Setting,
    keys: &'static [&'static str],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setting {
    Class,
    Metric,
    Target,
    TargetUtilization,
    TargetBurstCapacity,
    MinScale,
    MaxScale,
    InitialScale,
    ActivationScale,
    ScaleDownDelay,
    Window,
    PanicWindowPercentage,
    PanicThresholdPercentage,
    ScaleToZeroRetention,
    MetricAggregation,
}

const KEYS: &[Key] = &[
    Key {
        setting: Setting::Class,
        keys: &["autoscaling.knative.dev/class"],
    },
    Key {
        setting: Setting::Metric,
        keys: &["autoscaling.knative.dev/metric"],
    },
    Key {
        setting: Setting::Target,
        keys: &["autoscaling.knative.dev/target"],
    },
    Key {
        setting: Setting::TargetUtilization,
        keys: &["autoscaling.knative.dev/target-utilization-percentage"],
    },
    Key {
        setting: Setting::TargetBurstCapacity,
        keys: &["autoscaling.knative.dev/target-burst-capacity"],
    },
    Key {
        setting: Setting::MinScale,
        keys: &[
            "autoscaling.knative.dev/min-scale",
            "autoscaling.knative.dev/minScale",
        ],
    },
    Key {
        setting: Setting::MaxScale,
        keys: &[
            "autoscaling.knative.dev/max-scale",
            "autoscaling.knative.dev/maxScale",
        ],
    },
    Key {
        setting: Setting::InitialScale,
        keys: &[
            "autoscaling.knative.dev/initial-scale",
            "autoscaling.knative.dev/initialScale",
        ],
    },
    Key {
        setting: Setting::ActivationScale,
        keys: &["autoscaling.knative.dev/activation-scale"],
    },
    Key {
        setting: Setting::ScaleDownDelay,
        keys: &[
            "autoscaling.knative.dev/scale-down-delay",
            "autoscaling.knative.dev/scaleDownDelay",
        ],
    },
    Key {
        setting: Setting::Window,
        keys: &["autoscaling.knative.dev/window"],
    },
    Key {
        setting: Setting::PanicWindowPercentage,
        keys: &[
            "autoscaling.knative.dev/panic-window-percentage",
            "autoscaling.knative.dev/panicWindowPercentage",
        ],
    },
    Key {
        setting: Setting::PanicThresholdPercentage,
        keys: &[
            "autoscaling.knative.dev/panic-threshold-percentage",
            "autoscaling.knative.dev/panicThresholdPercentage",
        ],
    },
    Key {
        setting: Setting::ScaleToZeroRetention,
        keys: &["autoscaling.knative.dev/scale-to-zero-pod-retention-period"],
    },
    Key {
        setting: Setting::MetricAggregation,
        keys: &[
            "autoscaling.knative.dev/metric-aggregation-algorithm",
            "autoscaling.knative.dev/metricAggregationAlgorithm",
        ],
    },
];

/// Every annotation key skiff understands under `autoscaling.knative.dev/`.
pub fn known_keys() -> impl Iterator<Item = &'static str> {
    KEYS.iter().flat_map(|k| k.keys.iter().copied())
}

/// The metric the autoscaler follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum Metric {
    /// Requests in flight per instance.
    Concurrency,
    /// Requests per second per instance.
    Rps,
}

/// How metric buckets are averaged over a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub enum Aggregation {
    /// Every bucket weighs the same.
    Linear,
    /// Recent buckets weigh more.
    WeightedExponential,
}

/// The autoscaling settings a revision asked for; `None` means "use the default".
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingSettings {
    /// The metric (default concurrency).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<Metric>,
    /// Target value of the metric per instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<f64>,
    /// Share of the target actually aimed at, 1–100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_utilization_percentage: Option<f64>,
    /// Spare capacity to keep, in requests; -1 means the activator always stays in the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_burst_capacity: Option<f64>,
    /// Fewest instances.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_scale: Option<u32>,
    /// Most instances (0: no limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_scale: Option<u32>,
    /// Instances started when a revision is created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_scale: Option<u32>,
    /// Fewest instances once scaled up from zero.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub activation_scale: Option<u32>,
    /// How long scale-down decisions are held back, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_delay_seconds: Option<u64>,
    /// The stable window, in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_seconds: Option<u64>,
    /// The panic window as a share of the stable window, 1–100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub panic_window_percentage: Option<f64>,
    /// Load, as a share of capacity, that starts panic mode, 110–1000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub panic_threshold_percentage: Option<f64>,
    /// How long the last instance stays after the revision turns idle, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_to_zero_retention_ms: Option<u64>,
    /// How buckets are averaged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric_aggregation: Option<Aggregation>,
}

fn parse_f64(v: &str) -> Option<f64> {
    v.trim().parse::<f64>().ok().filter(|f| f.is_finite())
}

fn parse_count(v: &str) -> Result<u32, String> {
    match v.trim().parse::<i64>() {
        Ok(n) if n < 0 => Err(format!("`{v}` must be 0 or more")),
        Ok(n) => u32::try_from(n)
            .ok()
            .filter(|n| *n <= i32::MAX as u32)
            .ok_or_else(|| format!("`{v}` is out of range (0 to {})", i32::MAX)),
        Err(_) => Err(format!("`{v}` must be a whole number")),
    }
}

impl AutoscalingSettings {
    /// Parses and checks every `autoscaling.knative.dev/*` annotation of `annotations`, whose
    /// path is `at`. Problems are recorded at each annotation's own path.
    pub fn from_annotations(
        annotations: &BTreeMap<String, String>,
        at: &FieldPath,
        problems: &mut Problems,
    ) -> AutoscalingSettings {
        let mut s = AutoscalingSettings::default();
        for (key, _) in annotations.range(PREFIX.to_owned()..) {
            if !key.starts_with(PREFIX) {
                break;
            }
            if !known_keys().any(|k| k == key) {
                let suggestion = crate::suggest::closest(key, known_keys())
                    .map(|k| format!("; did you mean `{k}`?"))
                    .unwrap_or_default();
                problems.push(
                    &at.key(key.clone()),
                    ProblemKind::UnknownField,
                    format!("unknown autoscaling annotation{suggestion}"),
                );
            }
        }
        for entry in KEYS {
            let present: Vec<&str> = entry
                .keys
                .iter()
                .copied()
                .filter(|k| annotations.contains_key(*k))
                .collect();
            let Some(key) = present.first().copied() else {
                continue;
            };
            let path = at.key(key);
            if present.len() > 1 {
                problems.invalid(&path, format!("set only one of {}", present.join(", ")));
                continue;
            }
            let value = annotations.get(key).map(String::as_str).unwrap_or_default();
            s.set(entry.setting, value, &path, problems);
        }
        if let (Some(min), Some(max)) = (s.min_scale, s.max_scale)
            && max != 0
            && max < min
        {
            let path = at.key(present_key(annotations, Setting::MaxScale));
            problems.invalid(
                &path,
                format!("max-scale={max} is less than min-scale={min}"),
            );
        }
        if let (Some(act), Some(max)) = (s.activation_scale, s.max_scale)
            && max != 0
            && act > max
        {
            let path = at.key(present_key(annotations, Setting::ActivationScale));
            problems.invalid(
                &path,
                format!("activation-scale={act} is more than max-scale={max}"),
            );
        }
        s
    }

    fn set(&mut self, setting: Setting, v: &str, path: &FieldPath, problems: &mut Problems) {
        let pct = |lo: f64, hi: f64, problems: &mut Problems| -> Option<f64> {
            match parse_f64(v) {
                Some(f) if (lo..=hi).contains(&f) => Some(f),
                Some(_) => {
                    problems.invalid(path, format!("`{v}` is out of range ({lo} to {hi})"));
                    None
                }
                None => {
                    problems.invalid(path, format!("`{v}` must be a number"));
                    None
                }
            }
        };
        let duration = |lo: Duration, problems: &mut Problems| -> Option<Duration> {
            match parse_go_duration(v.trim()) {
                Ok(d) if d < lo || d > WINDOW_MAX => {
                    problems.invalid(
                        path,
                        format!(
                            "`{v}` is out of range ({} to {})",
                            crate::names::format_duration(lo),
                            crate::names::format_duration(WINDOW_MAX)
                        ),
                    );
                    None
                }
                Ok(d) => Some(d),
                Err(e) => {
                    problems.invalid(path, e);
                    None
                }
            }
        };
        match setting {
            Setting::Class => match v.trim() {
                "kpa.autoscaling.knative.dev" | "kpa" => {}
                "hpa.autoscaling.knative.dev" | "hpa" => problems.not_supported(
                    path,
                    "the HPA class; skiff scales with Knative's KPA, `kpa.autoscaling.knative.dev`",
                ),
                other => problems.invalid(
                    path,
                    format!(
                        "unknown autoscaler class `{other}`: use `kpa.autoscaling.knative.dev`"
                    ),
                ),
            },
            Setting::Metric => match v.trim() {
                "concurrency" => self.metric = Some(Metric::Concurrency),
                "rps" => self.metric = Some(Metric::Rps),
                "cpu" | "memory" => problems.not_supported(
                    path,
                    format!(
                        "the `{}` metric needs the HPA class; use `concurrency` or `rps`",
                        v.trim()
                    ),
                ),
                other => problems.invalid(
                    path,
                    format!("unknown metric `{other}`: use `concurrency` or `rps`"),
                ),
            },
            Setting::Target => match parse_f64(v) {
                Some(f) if f >= 0.01 => self.target = Some(f),
                Some(_) => problems.invalid(path, format!("target `{v}` must be at least 0.01")),
                None => problems.invalid(path, format!("`{v}` must be a number")),
            },
            Setting::TargetUtilization => {
                self.target_utilization_percentage = pct(1.0, 100.0, problems)
            }
            Setting::TargetBurstCapacity => match parse_f64(v) {
                Some(f) if f >= 0.0 || f == -1.0 => self.target_burst_capacity = Some(f),
                _ => problems.invalid(path, format!("`{v}` must be -1 or a number of 0 or more")),
            },
            Setting::MinScale => match parse_count(v) {
                Ok(n) => self.min_scale = Some(n),
                Err(e) => problems.invalid(path, e),
            },
            Setting::MaxScale => match parse_count(v) {
                Ok(n) => self.max_scale = Some(n),
                Err(e) => problems.invalid(path, e),
            },
            Setting::InitialScale => match parse_count(v) {
                Ok(n) => self.initial_scale = Some(n),
                Err(e) => problems.invalid(path, e),
            },
            Setting::ActivationScale => match parse_count(v) {
                Ok(n) if n >= 1 => self.activation_scale = Some(n),
                Ok(_) => problems.invalid(path, "must be 1 or more"),
                Err(e) => problems.invalid(path, e),
            },
            Setting::ScaleDownDelay => {
                if let Some(d) = duration(Duration::ZERO, problems) {
                    if d.subsec_nanos() != 0 {
                        problems.invalid(path, "must be a whole number of seconds");
                    } else {
                        self.scale_down_delay_seconds = Some(d.as_secs());
                    }
                }
            }
            Setting::Window => {
                if let Some(d) = duration(WINDOW_MIN, problems) {
                    if d.subsec_nanos() != 0 {
                        problems.invalid(path, "must be a whole number of seconds");
                    } else {
                        self.window_seconds = Some(d.as_secs());
                    }
                }
            }
            Setting::PanicWindowPercentage => {
                self.panic_window_percentage = pct(1.0, 100.0, problems)
            }
            Setting::PanicThresholdPercentage => {
                self.panic_threshold_percentage = pct(110.0, 1000.0, problems)
            }
            Setting::ScaleToZeroRetention => {
                if let Some(d) = duration(Duration::ZERO, problems) {
                    self.scale_to_zero_retention_ms = Some(d.as_millis() as u64);
                }
            }
            Setting::MetricAggregation => match v.trim() {
                "linear" => self.metric_aggregation = Some(Aggregation::Linear),
                "weighted-exponential" | "weightedExponential" => {
                    self.metric_aggregation = Some(Aggregation::WeightedExponential)
                }
                other => problems.invalid(
                    path,
                    format!("unknown algorithm `{other}`: use `linear` or `weighted-exponential`"),
                ),
            },
        }
    }
}

fn present_key(annotations: &BTreeMap<String, String>, setting: Setting) -> String {
    KEYS.iter()
        .find(|k| k.setting == setting)
        .and_then(|k| k.keys.iter().find(|key| annotations.contains_key(**key)))
        .map(|k| (*k).to_owned())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(pairs: &[(&str, &str)]) -> (AutoscalingSettings, Vec<String>) {
        let map = pairs
            .iter()
            .map(|(k, v)| (format!("{PREFIX}{k}"), (*v).to_owned()))
            .collect();
        let mut problems = Problems::new();
        let at = FieldPath::parse("spec.template.metadata.annotations");
        let s = AutoscalingSettings::from_annotations(&map, &at, &mut problems);
        let msgs = problems
            .into_problems(|_, _| None)
            .into_iter()
            .map(|p| p.to_string())
            .collect();
        (s, msgs)
    }

    /// Every documented setting parses into its typed field.
    #[test]
    fn parses_every_setting() {
        let (s, problems) = parse(&[
            ("class", "kpa.autoscaling.knative.dev"),
            ("metric", "rps"),
            ("target", "10"),
            ("target-utilization-percentage", "80"),
            ("target-burst-capacity", "-1"),
            ("min-scale", "1"),
            ("max-scale", "5"),
            ("initial-scale", "2"),
            ("activation-scale", "3"),
            ("scale-down-delay", "15m"),
            ("window", "40s"),
            ("panic-window-percentage", "20.5"),
            ("panic-threshold-percentage", "150"),
            ("scale-to-zero-pod-retention-period", "1m5s"),
            ("metric-aggregation-algorithm", "weighted-exponential"),
        ]);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(s.metric, Some(Metric::Rps));
        assert_eq!(s.target, Some(10.0));
        assert_eq!(s.target_utilization_percentage, Some(80.0));
        assert_eq!(s.target_burst_capacity, Some(-1.0));
        assert_eq!(
            (s.min_scale, s.max_scale, s.initial_scale),
            (Some(1), Some(5), Some(2))
        );
        assert_eq!(s.activation_scale, Some(3));
        assert_eq!(s.scale_down_delay_seconds, Some(900));
        assert_eq!(s.window_seconds, Some(40));
        assert_eq!(s.panic_window_percentage, Some(20.5));
        assert_eq!(s.panic_threshold_percentage, Some(150.0));
        assert_eq!(s.scale_to_zero_retention_ms, Some(65_000));
        assert_eq!(s.metric_aggregation, Some(Aggregation::WeightedExponential));
    }

    /// The legacy camelCase keys are accepted; setting both spellings is refused.
    #[test]
    fn legacy_keys() {
        let (s, problems) = parse(&[("minScale", "2"), ("maxScale", "4")]);
        assert!(problems.is_empty());
        assert_eq!((s.min_scale, s.max_scale), (Some(2), Some(4)));
        let (_, problems) = parse(&[("minScale", "2"), ("min-scale", "3")]);
        assert_eq!(problems.len(), 1);
        assert!(problems[0].contains("set only one of"), "{problems:?}");
    }

    /// Out-of-range and malformed values are refused at their own annotation's path.
    #[test]
    fn range_checks() {
        let cases: &[(&str, &str, &str)] = &[
            ("window", "5s", "out of range"),
            ("window", "2h", "out of range"),
            ("window", "10500ms", "whole number of seconds"),
            ("panic-window-percentage", "0", "out of range"),
            ("panic-threshold-percentage", "100", "out of range"),
            ("target", "0", "at least 0.01"),
            ("target-utilization-percentage", "101", "out of range"),
            ("target-burst-capacity", "-2", "-1 or a number"),
            ("min-scale", "-1", "0 or more"),
            ("max-scale", "many", "whole number"),
            ("activation-scale", "0", "1 or more"),
            ("scale-down-delay", "1.5s", "whole number of seconds"),
            ("metric", "latency", "unknown metric"),
            ("metric", "cpu", "not supported by skiff yet"),
            (
                "class",
                "hpa.autoscaling.knative.dev",
                "not supported by skiff yet",
            ),
            ("metric-aggregation-algorithm", "max", "unknown algorithm"),
            (
                "min-scal",
                "1",
                "did you mean `autoscaling.knative.dev/min-scale`",
            ),
        ];
        for (key, value, want) in cases {
            let (_, problems) = parse(&[(key, value)]);
            assert_eq!(problems.len(), 1, "{key}={value}: {problems:?}");
            assert!(problems[0].contains(want), "{key}={value}: {problems:?}");
            assert!(
                problems[0]
                    .starts_with("spec.template.metadata.annotations.autoscaling.knative.dev/")
            );
        }
        let (_, problems) = parse(&[("min-scale", "5"), ("max-scale", "2")]);
        assert!(
            problems[0].contains("max-scale=2 is less than min-scale=5"),
            "{problems:?}"
        );
    }
}
