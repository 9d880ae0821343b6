//! Knative's defaults, applied to a revision's spec when the revision is stamped, so the stored
//! Revision shows the settings it actually runs with (as Knative's defaulting webhook does).

use crate::types::{Probe, RevisionSpec, TcpSocketAction};
use crate::validate::serving_port;

/// Default `timeoutSeconds` (Knative's `revision-timeout-seconds`).
pub const TIMEOUT_SECONDS: i64 = 300;
/// Default `containerConcurrency` (Knative's `container-concurrency`: no limit).
pub const CONTAINER_CONCURRENCY: i64 = 0;
/// The container name Knative gives a revision's only container.
pub const USER_CONTAINER: &str = "user-container";

/// Fills every defaulted field of a (validated) revision spec.
pub fn apply(spec: &mut RevisionSpec) {
    spec.container_concurrency
        .get_or_insert(CONTAINER_CONCURRENCY);
    spec.timeout_seconds.get_or_insert(TIMEOUT_SECONDS);
    let (serving, _) = serving_port(spec);
    let single = spec.containers.len() == 1;
    let taken: Vec<String> = spec
        .containers
        .iter()
        .filter_map(|c| c.name.clone())
        .collect();
    for (i, c) in spec.containers.iter_mut().enumerate() {
        if c.name.is_none() {
            let mut name = if single {
                USER_CONTAINER.to_owned()
            } else {
                format!("{USER_CONTAINER}-{i}")
            };
            while taken.contains(&name) {
                name.push('x');
            }
            c.name = Some(name);
        }
        if i == serving {
            let probe = c.readiness_probe.get_or_insert_with(Probe::default);
            if probe.http_get.is_none()
                && probe.tcp_socket.is_none()
                && probe.exec.is_none()
                && probe.grpc.is_none()
            {
                probe.tcp_socket = Some(TcpSocketAction { port: None });
            }
            probe.success_threshold.get_or_insert(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Container, ContainerPort};

    /// A bare spec gets Knative's defaults: timeouts, names and a TCP readiness probe on the
    /// serving container only.
    #[test]
    fn fills_knative_defaults() {
        let mut spec = RevisionSpec {
            containers: vec![
                Container::default(),
                Container {
                    ports: vec![ContainerPort {
                        container_port: Some(8881),
                        ..Default::default()
                    }],
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        apply(&mut spec);
        assert_eq!(spec.timeout_seconds, Some(300));
        assert_eq!(spec.container_concurrency, Some(0));
        assert_eq!(spec.containers[0].name.as_deref(), Some("user-container-0"));
        assert_eq!(spec.containers[1].name.as_deref(), Some("user-container-1"));
        assert!(spec.containers[0].readiness_probe.is_none());
        let probe = spec.containers[1]
            .readiness_probe
            .as_ref()
            .expect("defaulted");
        assert!(probe.tcp_socket.is_some());
        assert_eq!(probe.success_threshold, Some(1));
    }
}
