//! Alert state over successive evaluations: which alerts fire, since when, and the
//! transitions of each step.
//!
//! An alert is keyed by namespace, Service, what it is about (an objective or the cost
//! budget) and severity. Each step gives the conditions evaluated now; an alert fires once
//! its condition has held for the hold time (0 by default: at once), keeps the instant its
//! condition started holding as `since`, and resolves at the first step where its condition
//! does not hold. There is no hysteresis beyond that: the short window of each burn-rate
//! condition already keeps an alert from flapping on a single good sample.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use crate::report::{ObjectiveKind, Report};
use crate::windows::Severity;

/// What an alert is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertKind {
    /// The availability objective's error budget burns too fast.
    Availability,
    /// The latency objective's error budget burns too fast.
    Latency,
    /// The Service's cost budget is (nearly) spent.
    Budget,
    /// The Service's latest revision was rolled back by its rollout's analysis.
    Rollout,
}

impl From<ObjectiveKind> for AlertKind {
    fn from(kind: ObjectiveKind) -> Self {
        match kind {
            ObjectiveKind::Availability => AlertKind::Availability,
            ObjectiveKind::Latency => AlertKind::Latency,
        }
    }
}

/// Which alert.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AlertKey {
    /// The Service's namespace.
    pub namespace: String,
    /// The Service.
    pub service: String,
    /// What it is about.
    pub kind: AlertKind,
    /// How urgent it is.
    pub severity: Severity,
}

/// The rollout alert's condition: a ticket while the Service's latest revision stands
/// rolled back by its analysis (it resolves when a later rollout succeeds, or the revision is
/// let go).
pub fn rollout_condition(namespace: &str, service: &str, rolled_back: bool) -> Condition {
    Condition {
        key: AlertKey {
            namespace: namespace.to_owned(),
            service: service.to_owned(),
            kind: AlertKind::Rollout,
            severity: Severity::Ticket,
        },
        holds: rolled_back,
    }
}

/// An alert's condition at one evaluation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Condition {
    /// The alert.
    pub key: AlertKey,
    /// Whether its condition holds now.
    pub holds: bool,
}

/// A change of an alert's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase", tag = "state")]
pub enum Transition {
    /// The alert started firing.
    Fired {
        /// The alert.
        key: AlertKey,
        /// When its condition started holding (Unix seconds).
        since: i64,
    },
    /// The alert stopped firing.
    Resolved {
        /// The alert.
        key: AlertKey,
        /// When its condition had started holding.
        since: i64,
        /// The evaluation at which it no longer held.
        at: i64,
    },
}

/// An alert firing now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FiringAlert {
    /// The alert.
    pub key: AlertKey,
    /// When its condition started holding (Unix seconds).
    pub since: i64,
}

/// The state of every alert.
#[derive(Debug, Clone, Default)]
pub struct Alerts {
    /// How long a condition must hold before its alert fires (Prometheus's `for`).
    hold: Duration,
    /// Conditions that hold but not yet for `hold`, with when they started.
    pending: BTreeMap<AlertKey, i64>,
    /// Alerts firing, with when their condition started holding.
    firing: BTreeMap<AlertKey, i64>,
}

impl Alerts {
    /// No alert firing; an alert fires as soon as its condition holds.
    pub fn new() -> Self {
        Self::default()
    }

    /// No alert firing; an alert fires once its condition has held for `hold`.
    pub fn with_hold(hold: Duration) -> Self {
        Alerts {
            hold,
            ..Self::default()
        }
    }

    /// Applies one evaluation. Alerts whose key is not among `conditions` keep their state
    /// (each Service may be evaluated on its own); [`Alerts::forget`] drops a Service's.
    pub fn step(&mut self, now_unix: i64, conditions: &[Condition]) -> Vec<Transition> {
        let hold = i64::try_from(self.hold.as_secs()).unwrap_or(i64::MAX);
        let mut out = Vec::new();
        for c in conditions {
            if !c.holds {
                self.pending.remove(&c.key);
                if let Some(since) = self.firing.remove(&c.key) {
                    out.push(Transition::Resolved {
                        key: c.key.clone(),
                        since,
                        at: now_unix,
                    });
                }
                continue;
            }
            if self.firing.contains_key(&c.key) {
                continue;
            }
            let since = *self.pending.entry(c.key.clone()).or_insert(now_unix);
            if now_unix.saturating_sub(since) >= hold {
                self.pending.remove(&c.key);
                self.firing.insert(c.key.clone(), since);
                out.push(Transition::Fired {
                    key: c.key.clone(),
                    since,
                });
            }
        }
        out
    }

    /// Resolves every alert of a Service (deleted, or no longer with objectives or budget).
    pub fn forget(&mut self, namespace: &str, service: &str, now_unix: i64) -> Vec<Transition> {
        let of = |k: &AlertKey| k.namespace == namespace && k.service == service;
        self.pending.retain(|k, _| !of(k));
        let gone: Vec<AlertKey> = self.firing.keys().filter(|k| of(k)).cloned().collect();
        gone.into_iter()
            .filter_map(|key| {
                let since = self.firing.remove(&key)?;
                Some(Transition::Resolved {
                    key,
                    since,
                    at: now_unix,
                })
            })
            .collect()
    }

    /// The alerts firing now, ordered by key.
    pub fn firing(&self) -> Vec<FiringAlert> {
        self.firing
            .iter()
            .map(|(key, since)| FiringAlert {
                key: key.clone(),
                since: *since,
            })
            .collect()
    }
}

/// The burn-rate conditions of a report: one per objective and severity of its policy, held
/// when any condition of that severity holds.
pub fn slo_conditions(namespace: &str, service: &str, report: &Report) -> Vec<Condition> {
    let mut out = Vec::new();
    for o in &report.objectives {
        let mut severities: Vec<Severity> = o.conditions.iter().map(|c| c.severity).collect();
        severities.sort();
        severities.dedup();
        for severity in severities {
            out.push(Condition {
                key: AlertKey {
                    namespace: namespace.to_owned(),
                    service: service.to_owned(),
                    kind: o.kind.into(),
                    severity,
                },
                holds: o.firing(severity),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(severity: Severity) -> AlertKey {
        AlertKey {
            namespace: "default".into(),
            service: "hello".into(),
            kind: AlertKind::Availability,
            severity,
        }
    }

    fn cond(severity: Severity, holds: bool) -> Condition {
        Condition {
            key: key(severity),
            holds,
        }
    }

    /// A firing alert keeps its `since` while its condition holds and resolves at the first
    /// step where it does not.
    #[test]
    fn fires_keeps_since_and_resolves() {
        let mut a = Alerts::new();
        assert!(a.step(0, &[cond(Severity::Page, false)]).is_empty());
        assert_eq!(
            a.step(10, &[cond(Severity::Page, true)]),
            vec![Transition::Fired {
                key: key(Severity::Page),
                since: 10
            }]
        );
        assert!(a.step(20, &[cond(Severity::Page, true)]).is_empty());
        assert_eq!(a.firing()[0].since, 10);
        // A step about other keys leaves it alone.
        assert!(a.step(25, &[cond(Severity::Ticket, false)]).is_empty());
        assert_eq!(
            a.step(30, &[cond(Severity::Page, false)]),
            vec![Transition::Resolved {
                key: key(Severity::Page),
                since: 10,
                at: 30
            }]
        );
        assert!(a.firing().is_empty());
    }

    /// With a hold time an alert fires only once its condition has held that long, with
    /// `since` when it started; a gap restarts the wait.
    #[test]
    fn hold_delays_firing() {
        let mut a = Alerts::with_hold(Duration::from_secs(60));
        assert!(a.step(0, &[cond(Severity::Page, true)]).is_empty());
        assert!(a.step(30, &[cond(Severity::Page, false)]).is_empty());
        assert!(a.step(40, &[cond(Severity::Page, true)]).is_empty());
        assert!(a.step(90, &[cond(Severity::Page, true)]).is_empty());
        assert_eq!(
            a.step(100, &[cond(Severity::Page, true)]),
            vec![Transition::Fired {
                key: key(Severity::Page),
                since: 40
            }]
        );
    }

    /// Forgetting a Service resolves its alerts and no one else's.
    #[test]
    fn forget_resolves_a_service() {
        let mut a = Alerts::new();
        let mut other = cond(Severity::Page, true);
        other.key.service = "other".into();
        a.step(0, &[cond(Severity::Page, true), other]);
        let t = a.forget("default", "hello", 50);
        assert_eq!(
            t,
            vec![Transition::Resolved {
                key: key(Severity::Page),
                since: 0,
                at: 50
            }]
        );
        assert_eq!(a.firing().len(), 1);
        assert_eq!(a.firing()[0].key.service, "other");
    }

    /// Transitions serialize with a `state` tag and camelCase fields.
    #[test]
    fn transitions_serialize() {
        let t = Transition::Fired {
            key: key(Severity::Ticket),
            since: 5,
        };
        assert_eq!(
            serde_json::to_string(&t).expect("serializes"),
            r#"{"state":"fired","key":{"namespace":"default","service":"hello","kind":"availability","severity":"ticket"},"since":5}"#
        );
    }
}
