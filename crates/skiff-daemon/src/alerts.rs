//! Alert delivery: Alertmanager's v2 API (`alertmanager_url`) and/or a webhook
//! (`alert_webhook_url`, Alertmanager's webhook body), as Prometheus would send them.
//! Alertmanager deduplicates by label set; firing alerts are sent again every minute and
//! resolved ones once with their end time. A receiver that fails is logged and tried again
//! at the next send; nothing blocks the evaluation for long (5 s per request).

use std::time::Duration;

use serde_json::{Value, json};
use skiff_api::wire::Alert;
use skiff_control::slo::Notify;
use tracing::warn;

/// How long one delivery may take.
const TIMEOUT: Duration = Duration::from_secs(5);

/// Sends alerts to Alertmanager and/or a webhook.
pub struct Delivery {
    client: reqwest::Client,
    alertmanager: Option<String>,
    webhook: Option<String>,
}

impl Delivery {
    /// A delivery to the receivers given, or `None` when there is none.
    pub fn new(alertmanager: Option<String>, webhook: Option<String>) -> Option<Self> {
        if alertmanager.is_none() && webhook.is_none() {
            return None;
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder().timeout(TIMEOUT).build().ok()?;
        Some(Delivery {
            client,
            alertmanager: alertmanager.map(|u| u.trim_end_matches('/').to_owned()),
            webhook,
        })
    }

    async fn post(&self, url: &str, body: &Value) {
        match self.client.post(url).json(body).send().await {
            Ok(r) if r.status().is_success() => {}
            Ok(r) => warn!(
                url,
                status = r.status().as_u16(),
                "an alert receiver refused the alerts"
            ),
            Err(e) => warn!(url, error = %skiff_telemetry::ErrorChain(&e), "sending alerts failed"),
        }
    }
}

/// One alert as Alertmanager takes it; `ends` for a resolved one.
fn alert(a: &Alert, ends: Option<&str>) -> Value {
    let summary = format!(
        "{} of Service {}/{}: {}",
        a.kind,
        a.namespace,
        a.service,
        match a.kind.as_str() {
            "budget" => "the cost budget is being spent",
            "rollout" => "the latest revision was rolled back by its rollout's analysis",
            _ => "the error budget is burning too fast",
        }
    );
    let command = if a.kind == "rollout" {
        "skiff rollout status"
    } else {
        "skiff slo"
    };
    let mut v = json!({
        "labels": {
            "alertname": a.name,
            "namespace": a.namespace,
            "service": a.service,
            "slo": a.kind,
            "severity": a.severity,
            "source": "skiff",
        },
        "annotations": {
            "summary": summary,
            "description": format!("{command} {} -n {}", a.service, a.namespace),
        },
        "startsAt": a.since,
    });
    if let Some(ends) = ends {
        v["endsAt"] = json!(ends);
    }
    v
}

/// Alertmanager's webhook body (version 4) for `alerts`: the first `firing` are firing,
/// the `resolved` after them resolved. One group: the labels every alert shares.
fn webhook_body(alerts: &[Value], firing: usize, resolved: usize) -> Value {
    let statuses =
        std::iter::repeat_n("firing", firing).chain(std::iter::repeat_n("resolved", resolved));
    let alerts: Vec<Value> = alerts
        .iter()
        .zip(statuses)
        .map(|(a, status)| {
            let mut a = a.clone();
            a["status"] = json!(status);
            a["endsAt"] = a
                .get("endsAt")
                .cloned()
                .unwrap_or(json!("0001-01-01T00:00:00Z"));
            a["generatorURL"] = json!("");
            a["fingerprint"] = json!(fingerprint(&a["labels"]));
            a
        })
        .collect();
    let common = |key: &str| -> Value {
        let Some(first) = alerts.first().and_then(|a| a[key].as_object()) else {
            return json!({});
        };
        let shared: serde_json::Map<String, Value> = first
            .iter()
            .filter(|(k, v)| alerts.iter().all(|a| a[key].get(k.as_str()) == Some(v)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Value::Object(shared)
    };
    json!({
        "version": "4",
        "groupKey": "{}:{source=\"skiff\"}",
        "truncatedAlerts": 0,
        "receiver": "skiff",
        "status": if firing == 0 { "resolved" } else { "firing" },
        "groupLabels": {"source": "skiff"},
        "commonLabels": common("labels"),
        "commonAnnotations": common("annotations"),
        "externalURL": "",
        "alerts": alerts,
    })
}

/// A stable id of a label set (hex of a 64-bit FNV-1a over its sorted pairs), as
/// Alertmanager gives each alert.
fn fingerprint(labels: &Value) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    if let Some(m) = labels.as_object() {
        let mut pairs: Vec<(&String, &Value)> = m.iter().collect();
        pairs.sort_by(|a, b| a.0.cmp(b.0));
        for (k, v) in pairs {
            for b in k
                .bytes()
                .chain([0xff])
                .chain(v.as_str().unwrap_or_default().bytes())
                .chain([0xff])
            {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
    }
    format!("{h:016x}")
}

#[async_trait::async_trait]
impl Notify for Delivery {
    async fn send(&self, firing: &[Alert], resolved: &[Alert]) {
        let now = jiff::Timestamp::now().to_string();
        let alerts: Vec<Value> = firing
            .iter()
            .map(|a| alert(a, None))
            .chain(resolved.iter().map(|a| alert(a, Some(&now))))
            .collect();
        if let Some(am) = &self.alertmanager {
            self.post(
                &format!("{am}/api/v2/alerts"),
                &Value::Array(alerts.clone()),
            )
            .await;
        }
        if let Some(hook) = &self.webhook {
            let body = webhook_body(&alerts, firing.len(), resolved.len());
            self.post(hook, &body).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    fn alert_of(service: &str, severity: &str) -> Alert {
        Alert {
            name: "AvailabilityBurn".into(),
            namespace: "default".into(),
            service: service.into(),
            kind: "availability".into(),
            severity: severity.into(),
            since: "2026-12-05T00:00:00Z".into(),
        }
    }

    /// A webhook gets Alertmanager's webhook body: one firing and one resolved alert with
    /// their statuses, end time and fingerprints, and the labels they share.
    #[tokio::test]
    async fn the_webhook_gets_alertmanagers_body() {
        let got: Arc<Mutex<Vec<Value>>> = Arc::default();
        let keep = got.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |axum::Json(v): axum::Json<Value>| {
                let keep = keep.clone();
                async move {
                    keep.lock().unwrap_or_else(|p| p.into_inner()).push(v);
                    "ok"
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let d = Delivery::new(None, Some(url)).expect("a delivery");
        d.send(&[alert_of("a", "page")], &[alert_of("b", "ticket")])
            .await;
        let bodies = got.lock().unwrap_or_else(|p| p.into_inner()).clone();
        assert_eq!(bodies.len(), 1);
        let b = &bodies[0];
        assert_eq!(b["version"], "4");
        assert_eq!(b["status"], "firing");
        assert_eq!(b["commonLabels"]["alertname"], "AvailabilityBurn");
        assert!(b["commonLabels"].get("service").is_none(), "{b}");
        let alerts = b["alerts"].as_array().expect("alerts");
        assert_eq!(alerts.len(), 2);
        assert_eq!(alerts[0]["status"], "firing");
        assert_eq!(alerts[0]["labels"]["service"], "a");
        assert_eq!(alerts[0]["endsAt"], "0001-01-01T00:00:00Z");
        assert_eq!(alerts[1]["status"], "resolved");
        assert_ne!(alerts[1]["endsAt"], "0001-01-01T00:00:00Z");
        assert_ne!(alerts[0]["fingerprint"], alerts[1]["fingerprint"]);
        assert_eq!(alerts[0]["fingerprint"].as_str().map(str::len), Some(16));
    }
}
