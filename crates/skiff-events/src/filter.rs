//! Knative Trigger filters: which events a Trigger delivers.
//!
//! Two forms, as in Knative's Trigger spec:
//! - the legacy `filter: {attributes: {type: x, source: y}}`: every listed attribute must be
//!   present and equal (AND); an empty value matches any value of a present attribute
//!   (Knative's `TriggerAnyFilter`);
//! - the newer `filters: [...]`, all of which must match, each one dialect: `exact`, `prefix`
//!   and `suffix` (one attribute each, compared case-sensitively), `all` and `any` (lists of
//!   filters), `not` (one filter). `cesql` is recognised and refused: skiff does not evaluate
//!   CloudEvents SQL.
//!
//! When both are given, `filters` wins and `filter` is ignored, as in Knative's broker
//! (`buildTriggerFilter`); a Trigger with neither matches every event. An attribute the event
//! does not have never matches, in any dialect (so `not: {exact: {x: y}}` matches events
//! without `x`).
//!
//! [`Filter`] (de)serializes in Knative's YAML shape, `{exact: {type: x}}`, `{any: [...]}`,
//! `{not: {...}}`, so the API crate can embed [`TriggerFilters`] in a Trigger spec.
//! [`TriggerFilters::validate`] reports every problem with its path, e.g.
//! `filters[1].exact: must have exactly one attribute, has 2`.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::event::CloudEvent;

/// One filter expression.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Filter {
    /// The legacy `filter.attributes`: every attribute present and equal (`""` = any value).
    Attributes(BTreeMap<String, String>),
    /// The attribute equals the value.
    Exact(BTreeMap<String, String>),
    /// The attribute starts with the value.
    Prefix(BTreeMap<String, String>),
    /// The attribute ends with the value.
    Suffix(BTreeMap<String, String>),
    /// Every filter matches.
    All(Vec<Filter>),
    /// At least one filter matches.
    Any(Vec<Filter>),
    /// The filter does not match.
    Not(Box<Filter>),
    /// A CloudEvents SQL expression: recognised so it can be refused by name; never matches.
    Cesql(String),
}

/// A Trigger's `filter` and `filters`, as in Knative's Trigger spec.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerFilters {
    /// The legacy attributes filter: `filter: {attributes: {...}}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<Filter>,
    /// The newer filters, all of which must match; when non-empty, `filter` is ignored.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<Filter>,
}

/// One thing wrong with a filter, at a path like `filters[1].exact`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilterProblem {
    /// Where: dialect keys joined by `.`, list indices and map keys in brackets.
    pub path: String,
    /// What is wrong, for the user.
    pub message: String,
}

impl fmt::Display for FilterProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

impl Filter {
    /// Whether `event` passes this filter.
    pub fn matches(&self, event: &CloudEvent) -> bool {
        let each = |map: &BTreeMap<String, String>, test: fn(&str, &str) -> bool| {
            map.iter()
                .all(|(name, value)| event.attribute(name).is_some_and(|have| test(have, value)))
        };
        match self {
            Filter::Attributes(map) => each(map, |have, want| want.is_empty() || have == want),
            Filter::Exact(map) => each(map, |have, want| have == want),
            Filter::Prefix(map) => each(map, |have, want| have.starts_with(want)),
            Filter::Suffix(map) => each(map, |have, want| have.ends_with(want)),
            Filter::All(filters) => filters.iter().all(|f| f.matches(event)),
            // An empty `any` passes, as Knative's (it yields no result, which is not a
            // failure); validate() refuses it.
            Filter::Any(filters) => filters.is_empty() || filters.iter().any(|f| f.matches(event)),
            Filter::Not(filter) => !filter.matches(event),
            Filter::Cesql(_) => false,
        }
    }

    /// Every problem of this filter, with paths relative to it (`exact`, `all[0].prefix`).
    /// `attributes` is accepted at the top only: it is the legacy `filter` form, not a
    /// dialect of `filters`.
    pub fn validate(&self) -> Vec<FilterProblem> {
        let mut problems = Vec::new();
        self.validate_at("", true, &mut problems);
        problems
    }

    fn validate_at(&self, path: &str, top: bool, out: &mut Vec<FilterProblem>) {
        let at = |key: &str| {
            if path.is_empty() {
                key.to_owned()
            } else {
                format!("{path}.{key}")
            }
        };
        match self {
            Filter::Attributes(map) => {
                let here = at("attributes");
                if !top {
                    push(
                        out,
                        here.clone(),
                        "`attributes` is the legacy `filter` form, not a dialect of `filters`; use `exact`".to_owned(),
                    );
                }
                for name in map.keys() {
                    if !is_filter_attribute_name(name) {
                        push(out, format!("{here}[{name}]"), bad_name(name));
                    }
                }
            }
            Filter::Exact(map) => single_attribute(&at("exact"), map, out),
            Filter::Prefix(map) => single_attribute(&at("prefix"), map, out),
            Filter::Suffix(map) => single_attribute(&at("suffix"), map, out),
            Filter::All(filters) | Filter::Any(filters) => {
                let key = if matches!(self, Filter::All(_)) {
                    "all"
                } else {
                    "any"
                };
                let here = at(key);
                if filters.is_empty() {
                    push(
                        out,
                        here.clone(),
                        format!("`{key}` must list at least one filter"),
                    );
                }
                for (i, filter) in filters.iter().enumerate() {
                    filter.validate_at(&format!("{here}[{i}]"), false, out);
                }
            }
            Filter::Not(filter) => filter.validate_at(&at("not"), false, out),
            Filter::Cesql(_) => push(
                out,
                at("cesql"),
                "CESQL filters are not supported; use exact, prefix, suffix, all, any and not"
                    .to_owned(),
            ),
        }
    }
}

fn push(out: &mut Vec<FilterProblem>, path: String, message: String) {
    out.push(FilterProblem { path, message });
}

/// `exact`, `prefix` and `suffix` take exactly one attribute with a non-empty value.
fn single_attribute(path: &str, map: &BTreeMap<String, String>, out: &mut Vec<FilterProblem>) {
    if map.len() != 1 {
        out.push(FilterProblem {
            path: path.to_owned(),
            message: format!("must have exactly one attribute, has {}", map.len()),
        });
    }
    for (name, value) in map {
        if !is_filter_attribute_name(name) {
            out.push(FilterProblem {
                path: format!("{path}[{name}]"),
                message: bad_name(name),
            });
        }
        if value.is_empty() {
            out.push(FilterProblem {
                path: format!("{path}[{name}]"),
                message: "the value must not be empty".to_owned(),
            });
        }
    }
}

/// Knative's rule for attribute names in filters: a lower-case letter, then lower-case letters
/// and digits.
fn is_filter_attribute_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_lowercase())
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
}

fn bad_name(name: &str) -> String {
    format!(
        "`{name}` is not an attribute name: a lower-case letter, then lower-case letters and digits"
    )
}

impl TriggerFilters {
    /// No filter at all: every event matches.
    pub fn none() -> Self {
        Self::default()
    }

    /// Whether the Trigger delivers `event`: `filters` when any, else `filter`, else yes.
    pub fn matches(&self, event: &CloudEvent) -> bool {
        if !self.filters.is_empty() {
            self.filters.iter().all(|f| f.matches(event))
        } else if let Some(filter) = &self.filter {
            filter.matches(event)
        } else {
            true
        }
    }

    /// Every problem, with paths from the Trigger spec: `filter.attributes[Type]`,
    /// `filters[1].exact`, `filters[0].any[2].not.cesql`.
    pub fn validate(&self) -> Vec<FilterProblem> {
        let mut problems = Vec::new();
        if let Some(filter) = &self.filter {
            if matches!(filter, Filter::Attributes(_)) {
                filter.validate_at("filter", true, &mut problems);
            } else {
                problems.push(FilterProblem {
                    path: "filter".to_owned(),
                    message: "only `attributes` goes in `filter`; put exact, prefix, suffix, all, any and not in `filters`".to_owned(),
                });
            }
        }
        for (i, filter) in self.filters.iter().enumerate() {
            filter.validate_at(&format!("filters[{i}]"), false, &mut problems);
        }
        problems
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn event() -> CloudEvent {
        let mut e = CloudEvent::new(
            "1",
            "/apis/v1/namespaces/default/pingsources/p",
            "dev.knative.sources.ping",
        );
        e.subject = Some("orders/42".into());
        e.extensions.insert("region".into(), "eu-west-1".into());
        e
    }

    fn exact(name: &str, value: &str) -> Filter {
        Filter::Exact(map(&[(name, value)]))
    }

    #[test]
    fn attributes_filter_is_an_and_of_exact_matches() {
        let e = event();
        assert!(Filter::Attributes(map(&[])).matches(&e));
        assert!(Filter::Attributes(map(&[("type", "dev.knative.sources.ping")])).matches(&e));
        assert!(
            Filter::Attributes(map(&[
                ("type", "dev.knative.sources.ping"),
                ("region", "eu-west-1")
            ]))
            .matches(&e)
        );
        assert!(
            !Filter::Attributes(map(&[
                ("type", "dev.knative.sources.ping"),
                ("region", "us")
            ]))
            .matches(&e)
        );
        // A missing attribute fails, even with the any-value "".
        assert!(!Filter::Attributes(map(&[("team", "a")])).matches(&e));
        assert!(!Filter::Attributes(map(&[("time", "")])).matches(&e));
        // "" matches any value of a present attribute.
        assert!(Filter::Attributes(map(&[("region", "")])).matches(&e));
        // Case-sensitive.
        assert!(!Filter::Attributes(map(&[("region", "EU-WEST-1")])).matches(&e));
    }

    #[test]
    fn exact_prefix_suffix() {
        let e = event();
        assert!(exact("subject", "orders/42").matches(&e));
        assert!(!exact("subject", "orders/4").matches(&e));
        assert!(Filter::Prefix(map(&[("type", "dev.knative.")])).matches(&e));
        assert!(!Filter::Prefix(map(&[("type", "com.")])).matches(&e));
        assert!(Filter::Suffix(map(&[("source", "/p")])).matches(&e));
        assert!(!Filter::Suffix(map(&[("source", "/q")])).matches(&e));
        // Missing attributes never match.
        assert!(!exact("team", "a").matches(&e));
        assert!(!Filter::Prefix(map(&[("team", "a")])).matches(&e));
        assert!(!Filter::Suffix(map(&[("dataschema", "a")])).matches(&e));
        // Extensions count.
        assert!(Filter::Prefix(map(&[("region", "eu-")])).matches(&e));
    }

    #[test]
    fn all_any_not_nest() {
        let e = event();
        let f = Filter::All(vec![
            Filter::Prefix(map(&[("type", "dev.knative.")])),
            Filter::Any(vec![
                exact("region", "us-east-1"),
                exact("region", "eu-west-1"),
            ]),
            Filter::Not(Box::new(Filter::Suffix(map(&[("subject", "/0")])))),
        ]);
        assert!(f.matches(&e));
        let mut other = e.clone();
        other
            .extensions
            .insert("region".into(), "ap-south-1".into());
        assert!(!f.matches(&other));
        let mut zero = e.clone();
        zero.subject = Some("orders/0".into());
        assert!(!f.matches(&zero));
        // `not` of a missing attribute matches.
        assert!(Filter::Not(Box::new(exact("team", "a"))).matches(&e));
        assert!(
            Filter::Not(Box::new(Filter::Not(Box::new(exact(
                "region",
                "eu-west-1"
            )))))
            .matches(&e)
        );
        assert!(Filter::All(vec![]).matches(&e));
        assert!(Filter::Any(vec![]).matches(&e));
        assert!(!Filter::Cesql("type = 'x'".into()).matches(&e));
    }

    #[test]
    fn trigger_filters_precedence() {
        let e = event();
        assert!(TriggerFilters::none().matches(&e));
        let legacy = TriggerFilters {
            filter: Some(Filter::Attributes(map(&[("type", "other")]))),
            filters: vec![],
        };
        assert!(!legacy.matches(&e));
        // `filters` wins over `filter`.
        let both = TriggerFilters {
            filters: vec![exact("region", "eu-west-1")],
            ..legacy.clone()
        };
        assert!(both.matches(&e));
        // Every element of `filters` must match.
        let two = TriggerFilters {
            filter: None,
            filters: vec![exact("region", "eu-west-1"), exact("subject", "x")],
        };
        assert!(!two.matches(&e));
    }

    #[test]
    fn validate_reports_paths() {
        let t = TriggerFilters {
            filter: Some(Filter::Attributes(map(&[("Type", "x"), ("source", "")]))),
            filters: vec![
                exact("type", "x"),
                Filter::Exact(map(&[("type", "x"), ("source", "y")])),
                Filter::Any(vec![
                    Filter::Prefix(map(&[])),
                    Filter::Not(Box::new(Filter::Cesql("type = 'x'".into()))),
                    Filter::Suffix(map(&[("subject", "")])),
                    Filter::Attributes(map(&[("type", "x")])),
                ]),
                Filter::All(vec![]),
                Filter::Exact(map(&[("my-ext", "v")])),
            ],
        };
        let problems: Vec<String> = t.validate().iter().map(ToString::to_string).collect();
        assert_eq!(
            problems,
            [
                "filter.attributes[Type]: `Type` is not an attribute name: a lower-case letter, then lower-case letters and digits",
                "filters[1].exact: must have exactly one attribute, has 2",
                "filters[2].any[0].prefix: must have exactly one attribute, has 0",
                "filters[2].any[1].not.cesql: CESQL filters are not supported; use exact, prefix, suffix, all, any and not",
                "filters[2].any[2].suffix[subject]: the value must not be empty",
                "filters[2].any[3].attributes: `attributes` is the legacy `filter` form, not a dialect of `filters`; use `exact`",
                "filters[3].all: `all` must list at least one filter",
                "filters[4].exact[my-ext]: `my-ext` is not an attribute name: a lower-case letter, then lower-case letters and digits",
            ]
        );
        assert!(TriggerFilters::none().validate().is_empty());
        let wrong_place = TriggerFilters {
            filter: Some(exact("type", "x")),
            filters: vec![],
        };
        assert_eq!(
            wrong_place.validate()[0].to_string(),
            "filter: only `attributes` goes in `filter`; put exact, prefix, suffix, all, any and not in `filters`"
        );
        assert_eq!(
            Filter::All(vec![exact("type", "")]).validate()[0].to_string(),
            "all[0].exact[type]: the value must not be empty"
        );
        assert!(
            Filter::Attributes(map(&[("type", "x")]))
                .validate()
                .is_empty()
        );
    }

    #[test]
    fn knative_yaml_shape() {
        let yaml = r#"
filter:
  attributes:
    type: dev.knative.sources.ping
    source: /apis/v1/namespaces/default/pingsources/p
filters:
  - exact:
      type: com.example.order
  - any:
      - prefix:
          subject: orders/
      - suffix:
          source: /p
  - not:
      exact:
        region: us-east-1
  - all:
      - cesql: "type = 'x'"
"#;
        let t: TriggerFilters = serde_saphyr::from_str(yaml).expect("parses Knative YAML");
        assert_eq!(
            t.filter,
            Some(Filter::Attributes(map(&[
                ("type", "dev.knative.sources.ping"),
                ("source", "/apis/v1/namespaces/default/pingsources/p"),
            ])))
        );
        assert_eq!(
            t.filters,
            vec![
                exact("type", "com.example.order"),
                Filter::Any(vec![
                    Filter::Prefix(map(&[("subject", "orders/")])),
                    Filter::Suffix(map(&[("source", "/p")])),
                ]),
                Filter::Not(Box::new(exact("region", "us-east-1"))),
                Filter::All(vec![Filter::Cesql("type = 'x'".into())]),
            ]
        );
        let json = serde_json::to_value(&t).expect("serializes");
        assert_eq!(
            json["filters"][0],
            serde_json::json!({"exact": {"type": "com.example.order"}})
        );
        assert_eq!(
            json["filters"][2]["not"],
            serde_json::json!({"exact": {"region": "us-east-1"}})
        );
        assert_eq!(
            serde_json::from_value::<TriggerFilters>(json).expect("round-trips"),
            t
        );
        let empty: TriggerFilters = serde_json::from_str("{}").expect("no filters");
        assert_eq!(empty, TriggerFilters::none());
        assert_eq!(serde_json::to_string(&empty).expect("ser"), "{}");
        assert!(serde_json::from_str::<Filter>(r#"{"regex": {"type": "x"}}"#).is_err());
    }
}
