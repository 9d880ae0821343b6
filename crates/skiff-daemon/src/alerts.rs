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
        if a.kind == "budget" {
            "the cost budget is being spent"
        } else {
            "the error budget is burning too fast"
        }
    );
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
            "description": format!("skiff slo {} -n {}", a.service, a.namespace),
        },
        "startsAt": a.since,
    });
    if let Some(ends) = ends {
        v["endsAt"] = json!(ends);
    }
    v
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
            let body = json!({
                "version": "4",
                "receiver": "skiff",
                "status": if firing.is_empty() { "resolved" } else { "firing" },
                "alerts": alerts.iter().zip(firing.iter().map(|_| "firing").chain(resolved.iter().map(|_| "resolved")))
                    .map(|(a, status)| { let mut a = a.clone(); a["status"] = json!(status); a })
                    .collect::<Vec<_>>(),
            });
            self.post(hook, &body).await;
        }
    }
}
