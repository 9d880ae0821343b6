//! A typed client of skiff's REST API. The CLI uses nothing else to talk to the daemon.
//!
//! Errors keep what the server said: an API error carries the server's
//! [`ErrorBody`](skiff_api::ErrorBody) (code, message, request id and, for invalid manifests,
//! every problem with its field path).
#![forbid(unsafe_code)]

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use skiff_api::config::{ConfigKind, ConfigMapView, RotateKeyReport, SecretView};
use skiff_api::job::{Execution, Job, Overrides};
use skiff_api::object::{DeleteResponse, List, Revision, Service};
use skiff_api::wire::{
    APPLY_RESULT_HEADER, CREATED_REVISION_HEADER, GcReport, ImageView, InstanceView, LogLine,
    PullEvent, Scale, ScaleStatus, VersionInfo,
};
use skiff_api::{ErrorBody, ErrorCode};

/// A call to the API failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error.
    #[error("{}", .body.message)]
    Api {
        /// The HTTP status.
        status: u16,
        /// The server's error body.
        body: ErrorBody,
    },
    /// The server could not be reached.
    #[error("cannot reach the skiff daemon at {server}")]
    Connect {
        /// The server URL.
        server: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The request failed in transit or timed out.
    #[error("the request to {server} failed")]
    Transport {
        /// The server URL.
        server: String,
        /// The transport error.
        #[source]
        source: reqwest::Error,
    },
    /// The server's answer was not what the API promises.
    #[error("unexpected answer from {server} (HTTP {status}): {detail}")]
    Unexpected {
        /// The server URL.
        server: String,
        /// The HTTP status.
        status: u16,
        /// What was wrong.
        detail: String,
    },
    /// The server URL is not usable.
    #[error("`{0}` is not a server URL such as http://127.0.0.1:7070")]
    BadServer(String),
}

impl ClientError {
    /// The API error code, when the server answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { body, .. } => Some(body.code),
            _ => None,
        }
    }
}

/// The result of an apply.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The Service as stored (or as it would be, for a dry run).
    pub service: Service,
    /// `created`, `configured` or `unchanged`.
    pub result: String,
    /// The revision the apply stamped, if any.
    pub created_revision: Option<String>,
    /// The server's warnings (`Warning` headers): settings accepted that change nothing.
    pub warnings: Vec<String>,
}

/// The result of applying a Job.
#[derive(Debug, Clone)]
pub struct AppliedJob {
    /// The Job as stored (or as it would be, for a dry run).
    pub job: Job,
    /// `created`, `configured` or `unchanged`.
    pub result: String,
}

/// The text of a `Warning` header (`299 - "text"`, RFC 7234); other forms as they are.
fn warning_text(value: &str) -> String {
    let rest = value.trim();
    let rest = rest
        .split_once(' ')
        .filter(|(code, _)| code.len() == 3 && code.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|(_, r)| r.trim_start().split_once(' '))
        .map_or(rest, |(_agent, text)| text.trim());
    rest.strip_prefix('"')
        .and_then(|t| t.strip_suffix('"'))
        .unwrap_or(rest)
        .to_owned()
}

/// A client of one daemon.
#[derive(Debug, Clone)]
pub struct Client {
    base: url::Url,
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    /// A client of the daemon at `server` (`http://host:port`), authenticating with `token`.
    pub fn new(server: &str, token: Option<String>) -> Result<Client, ClientError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let base = url::Url::parse(server)
            .ok()
            .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
            .ok_or_else(|| ClientError::BadServer(server.to_owned()))?;
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(120))
            .user_agent(concat!("skiff-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|source| ClientError::Transport {
                server: server.to_owned(),
                source,
            })?;
        Ok(Client { base, token, http })
    }

    /// The server URL.
    pub fn server(&self) -> &str {
        self.base.as_str().trim_end_matches('/')
    }

    fn url(&self, path: &str, query: &[(&str, &str)]) -> url::Url {
        let mut url = self.base.clone();
        url.set_path(path);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, ClientError> {
        let request = match &self.token {
            Some(t) => request.bearer_auth(t),
            None => request,
        };
        let response = request.send().await.map_err(|source| {
            if source.is_connect() {
                ClientError::Connect {
                    server: self.server().to_owned(),
                    source,
                }
            } else {
                ClientError::Transport {
                    server: self.server().to_owned(),
                    source,
                }
            }
        })?;
        if response.status().is_success() {
            return Ok(response);
        }
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|source| ClientError::Transport {
                server: self.server().to_owned(),
                source,
            })?;
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(body) => Err(ClientError::Api {
                status: status.as_u16(),
                body,
            }),
            Err(_) => Err(ClientError::Unexpected {
                server: self.server().to_owned(),
                status: status.as_u16(),
                detail: String::from_utf8_lossy(&bytes).chars().take(300).collect(),
            }),
        }
    }

    async fn json<T: DeserializeOwned>(
        &self,
        response: reqwest::Response,
    ) -> Result<T, ClientError> {
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|source| ClientError::Transport {
                server: self.server().to_owned(),
                source,
            })?;
        serde_json::from_slice(&bytes).map_err(|e| ClientError::Unexpected {
            server: self.server().to_owned(),
            status: status.as_u16(),
            detail: format!("the body is not the expected JSON: {e}"),
        })
    }

    async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<T, ClientError> {
        let response = self.send(self.http.get(self.url(path, query))).await?;
        self.json(response).await
    }

    /// Applies one manifest document (`body` is its JSON or YAML text). `name` is the Service's
    /// name; `None` creates one from `metadata.generateName`.
    pub async fn apply_service(
        &self,
        namespace: &str,
        name: Option<&str>,
        body: String,
        content_type: &str,
        dry_run: bool,
    ) -> Result<Applied, ClientError> {
        let query: &[(&str, &str)] = if dry_run { &[("dryRun", "All")] } else { &[] };
        let (method, path) = match name {
            Some(n) => (
                Method::PUT,
                format!("/api/v1/namespaces/{namespace}/services/{n}"),
            ),
            None => (
                Method::POST,
                format!("/api/v1/namespaces/{namespace}/services"),
            ),
        };
        let request = self
            .http
            .request(method, self.url(&path, query))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        let response = self.send(request).await?;
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        let result = header(APPLY_RESULT_HEADER).unwrap_or_else(|| {
            if response.status() == StatusCode::CREATED {
                "created"
            } else {
                "configured"
            }
            .to_owned()
        });
        let created_revision = header(CREATED_REVISION_HEADER);
        let warnings = response
            .headers()
            .get_all(reqwest::header::WARNING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(warning_text)
            .collect();
        let service = self.json(response).await?;
        Ok(Applied {
            service,
            result,
            created_revision,
            warnings,
        })
    }

    /// Creates or replaces a Secret or ConfigMap from a manifest body; returns what the apply
    /// did (`created`, `configured`, `unchanged`).
    pub async fn apply_config(
        &self,
        kind: ConfigKind,
        namespace: &str,
        name: &str,
        body: String,
        content_type: &str,
        dry_run: bool,
    ) -> Result<String, ClientError> {
        let query: &[(&str, &str)] = if dry_run { &[("dryRun", "All")] } else { &[] };
        let path = format!(
            "/api/v1/namespaces/{namespace}/{}/{name}",
            config_path(kind)
        );
        let request = self
            .http
            .put(self.url(&path, query))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        let response = self.send(request).await?;
        let result = response
            .headers()
            .get(APPLY_RESULT_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_else(|| "configured".to_owned());
        let _: serde_json::Value = self.json(response).await?;
        Ok(result)
    }

    /// A Secret: its type, keys and sizes (never values).
    pub async fn get_secret(&self, namespace: &str, name: &str) -> Result<SecretView, ClientError> {
        self.get(
            &format!("/api/v1/namespaces/{namespace}/secrets/{name}"),
            &[],
        )
        .await
    }

    /// The Secrets of a namespace, or of all (`None`).
    pub async fn list_secrets(
        &self,
        namespace: Option<&str>,
    ) -> Result<Vec<SecretView>, ClientError> {
        let path = match namespace {
            Some(ns) => format!("/api/v1/namespaces/{ns}/secrets"),
            None => "/api/v1/secrets".to_owned(),
        };
        let list: List<SecretView> = self.get(&path, &[]).await?;
        Ok(list.items)
    }

    /// A ConfigMap.
    pub async fn get_config_map(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<ConfigMapView, ClientError> {
        self.get(
            &format!("/api/v1/namespaces/{namespace}/configmaps/{name}"),
            &[],
        )
        .await
    }

    /// The ConfigMaps of a namespace, or of all (`None`).
    pub async fn list_config_maps(
        &self,
        namespace: Option<&str>,
    ) -> Result<Vec<ConfigMapView>, ClientError> {
        let path = match namespace {
            Some(ns) => format!("/api/v1/namespaces/{ns}/configmaps"),
            None => "/api/v1/configmaps".to_owned(),
        };
        let list: List<ConfigMapView> = self.get(&path, &[]).await?;
        Ok(list.items)
    }

    /// Deletes a Secret or ConfigMap.
    pub async fn delete_config(
        &self,
        kind: ConfigKind,
        namespace: &str,
        name: &str,
    ) -> Result<(), ClientError> {
        let url = self.url(
            &format!(
                "/api/v1/namespaces/{namespace}/{}/{name}",
                config_path(kind)
            ),
            &[],
        );
        self.send(self.http.delete(url)).await?;
        Ok(())
    }

    /// Re-encrypts every Secret under a new key.
    pub async fn rotate_secret_key(&self) -> Result<RotateKeyReport, ClientError> {
        let response = self
            .send(self.http.post(self.url("/api/v1/secrets/rotate-key", &[])))
            .await?;
        self.json(response).await
    }

    /// Creates or replaces a Broker, Trigger or PingSource (`kind`: `brokers`, `triggers`,
    /// `pingsources`) from a manifest body; returns what the apply did and the warnings.
    pub async fn apply_eventing(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
        body: String,
        content_type: &str,
        dry_run: bool,
    ) -> Result<(String, Vec<String>), ClientError> {
        let query: &[(&str, &str)] = if dry_run { &[("dryRun", "All")] } else { &[] };
        let request = self
            .http
            .put(self.url(
                &format!("/api/v1/namespaces/{namespace}/{kind}/{name}"),
                query,
            ))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        let response = self.send(request).await?;
        let result = response
            .headers()
            .get(APPLY_RESULT_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_else(|| "configured".to_owned());
        let warnings = response
            .headers()
            .get_all(reqwest::header::WARNING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .map(|v| v.trim_start_matches("299 - ").trim_matches('"').to_owned())
            .collect();
        let _: serde_json::Value = self.json(response).await?;
        Ok((result, warnings))
    }

    /// A Broker, Trigger or PingSource (`kind`: `brokers`, `triggers`, `pingsources`).
    pub async fn get_eventing<T: serde::de::DeserializeOwned>(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<T, ClientError> {
        self.get(
            &format!("/api/v1/namespaces/{namespace}/{kind}/{name}"),
            &[],
        )
        .await
    }

    /// The Brokers, Triggers or PingSources of a namespace, or of all (`None`).
    pub async fn list_eventing<T: serde::de::DeserializeOwned>(
        &self,
        kind: &str,
        namespace: Option<&str>,
    ) -> Result<Vec<T>, ClientError> {
        let path = match namespace {
            Some(ns) => format!("/api/v1/namespaces/{ns}/{kind}"),
            None => format!("/api/v1/{kind}"),
        };
        let list: List<T> = self.get(&path, &[]).await?;
        Ok(list.items)
    }

    /// Deletes a Broker, Trigger or PingSource.
    pub async fn delete_eventing(
        &self,
        kind: &str,
        namespace: &str,
        name: &str,
    ) -> Result<(), ClientError> {
        let url = self.url(
            &format!("/api/v1/namespaces/{namespace}/{kind}/{name}"),
            &[],
        );
        self.send(self.http.delete(url)).await?;
        Ok(())
    }

    /// Reads a Service.
    pub async fn get_service(&self, namespace: &str, name: &str) -> Result<Service, ClientError> {
        self.get(
            &format!("/api/v1/namespaces/{namespace}/services/{name}"),
            &[],
        )
        .await
    }

    /// Lists Services of a namespace, or of all namespaces.
    pub async fn list_services(
        &self,
        namespace: Option<&str>,
    ) -> Result<Vec<Service>, ClientError> {
        let path = match namespace {
            Some(ns) => format!("/api/v1/namespaces/{ns}/services"),
            None => "/api/v1/services".to_owned(),
        };
        Ok(self.get::<List<Service>>(&path, &[]).await?.items)
    }

    /// Deletes a Service and its revisions.
    pub async fn delete_service(
        &self,
        namespace: &str,
        name: &str,
        dry_run: bool,
    ) -> Result<DeleteResponse, ClientError> {
        let query: &[(&str, &str)] = if dry_run { &[("dryRun", "All")] } else { &[] };
        let url = self.url(
            &format!("/api/v1/namespaces/{namespace}/services/{name}"),
            query,
        );
        let response = self.send(self.http.delete(url)).await?;
        self.json(response).await
    }

    /// Lists revisions of a namespace (or all), optionally of one Service.
    pub async fn list_revisions(
        &self,
        namespace: Option<&str>,
        service: Option<&str>,
    ) -> Result<Vec<Revision>, ClientError> {
        let path = match namespace {
            Some(ns) => format!("/api/v1/namespaces/{ns}/revisions"),
            None => "/api/v1/revisions".to_owned(),
        };
        let query: Vec<(&str, &str)> = service.map(|s| vec![("service", s)]).unwrap_or_default();
        Ok(self.get::<List<Revision>>(&path, &query).await?.items)
    }

    /// Reads a revision.
    pub async fn get_revision(&self, namespace: &str, name: &str) -> Result<Revision, ClientError> {
        self.get(
            &format!("/api/v1/namespaces/{namespace}/revisions/{name}"),
            &[],
        )
        .await
    }

    /// Lists images with whether revisions use them.
    pub async fn list_images(&self) -> Result<Vec<ImageView>, ClientError> {
        self.get("/api/v1/images", &[]).await
    }

    /// Shows one image.
    pub async fn inspect_image(&self, reference: &str) -> Result<ImageView, ClientError> {
        self.get("/api/v1/images/inspect", &[("ref", reference)])
            .await
    }

    /// Removes an image no revision uses.
    pub async fn remove_image(&self, reference: &str) -> Result<ImageView, ClientError> {
        let response = self
            .send(
                self.http
                    .delete(self.url("/api/v1/images", &[("ref", reference)])),
            )
            .await?;
        self.json(response).await
    }

    /// Removes unused images and content.
    pub async fn prune_images(&self) -> Result<GcReport, ClientError> {
        let response = self
            .send(self.http.post(self.url("/api/v1/images/prune", &[])))
            .await?;
        self.json(response).await
    }

    /// Pulls an image, calling `on_event` for each progress event; returns the last event
    /// (`done` or `error`).
    pub async fn pull_image(
        &self,
        reference: &str,
        on_event: impl FnMut(&PullEvent),
    ) -> Result<PullEvent, ClientError> {
        let response = self
            .send(
                self.http
                    .post(self.url("/api/v1/images/pull", &[("ref", reference)])),
            )
            .await?;
        self.events(response, on_event).await
    }

    /// Uploads an image archive (OCI layout tar or docker save tar) for import.
    pub async fn import_image(
        &self,
        archive: &std::path::Path,
        tag: Option<&str>,
        on_event: impl FnMut(&PullEvent),
    ) -> Result<PullEvent, ClientError> {
        let file = tokio::fs::File::open(archive)
            .await
            .map_err(|e| ClientError::Unexpected {
                server: self.server().to_owned(),
                status: 0,
                detail: format!("cannot read {}: {e}", archive.display()),
            })?;
        let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::new(file));
        let query: Vec<(&str, &str)> = tag.map(|t| vec![("tag", t)]).unwrap_or_default();
        let request = self
            .http
            .post(self.url("/api/v1/images/import", &query))
            .header(reqwest::header::CONTENT_TYPE, "application/x-tar")
            .timeout(Duration::from_secs(3600))
            .body(body);
        let response = self.send(request).await?;
        self.events(response, on_event).await
    }

    async fn events(
        &self,
        response: reqwest::Response,
        mut on_event: impl FnMut(&PullEvent),
    ) -> Result<PullEvent, ClientError> {
        use futures::StreamExt;
        let mut stream = response.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        let mut last = None;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| ClientError::Transport {
                server: self.server().to_owned(),
                source,
            })?;
            buf.extend_from_slice(&chunk);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let ev: PullEvent =
                    serde_json::from_slice(&line).map_err(|e| ClientError::Unexpected {
                        server: self.server().to_owned(),
                        status: 200,
                        detail: format!("a progress line is not an event: {e}"),
                    })?;
                on_event(&ev);
                last = Some(ev);
            }
        }
        last.ok_or_else(|| ClientError::Unexpected {
            server: self.server().to_owned(),
            status: 200,
            detail: "the progress stream ended without a result".into(),
        })
    }

    /// Sets how many instances of a Service's latest revision run (manual override); returns
    /// the override as stored.
    pub async fn set_scale(
        &self,
        namespace: &str,
        name: &str,
        replicas: u32,
    ) -> Result<Scale, ClientError> {
        let url = self.url(
            &format!("/api/v1/namespaces/{namespace}/services/{name}/scale"),
            &[],
        );
        let body = serde_json::to_string(&Scale { replicas }).expect("a scale serializes");
        let response = self
            .send(
                self.http
                    .put(url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body),
            )
            .await?;
        self.json(response).await
    }

    /// Removes the manual override: the autoscaler decides again.
    pub async fn clear_scale(&self, namespace: &str, name: &str) -> Result<(), ClientError> {
        let url = self.url(
            &format!("/api/v1/namespaces/{namespace}/services/{name}/scale"),
            &[],
        );
        self.send(self.http.delete(url)).await?;
        Ok(())
    }

    /// A Service's scale: the override, and per revision desired and ready instances, load,
    /// cold starts and recent scaling decisions.
    pub async fn scale(&self, namespace: &str, name: &str) -> Result<ScaleStatus, ClientError> {
        self.get(
            &format!("/api/v1/namespaces/{namespace}/services/{name}/scale"),
            &[],
        )
        .await
    }

    /// A one-time login for the dashboard.
    pub async fn dashboard_login(&self) -> Result<skiff_api::wire::DashboardLogin, ClientError> {
        let response = self
            .send(self.http.post(self.url("/api/v1/dashboard/login", &[])))
            .await?;
        self.json(response).await
    }

    /// The alerts firing now.
    pub async fn alerts(&self) -> Result<skiff_api::wire::AlertList, ClientError> {
        self.get("/api/v1/alerts", &[]).await
    }

    /// Every Service's SLO and budget as last evaluated.
    pub async fn slos(&self) -> Result<skiff_api::wire::SloList, ClientError> {
        self.get("/api/v1/slos", &[]).await
    }

    /// The SLOs as a Prometheus rules file.
    pub async fn slo_rules(&self) -> Result<String, ClientError> {
        let response = self
            .send(self.http.get(self.url("/api/v1/slos/rules", &[])))
            .await?;
        response.text().await.map_err(|e| ClientError::Unexpected {
            server: self.server().to_owned(),
            status: 200,
            detail: format!("reading the rules: {e}"),
        })
    }

    /// A Service's metrics from the history, since `since` (a duration or RFC 3339 time).
    pub async fn service_metrics(
        &self,
        namespace: &str,
        name: &str,
        since: &str,
        step: Option<i64>,
    ) -> Result<skiff_api::wire::ServiceMetrics, ClientError> {
        let step = step.map(|s| s.to_string());
        let mut query = vec![("since", since)];
        if let Some(s) = &step {
            query.push(("step", s));
        }
        self.get(
            &format!("/api/v1/namespaces/{namespace}/services/{name}/metrics"),
            &query,
        )
        .await
    }

    /// Every Service over the last minute.
    pub async fn top(&self) -> Result<skiff_api::wire::Top, ClientError> {
        self.get("/api/v1/top", &[]).await
    }

    /// The instances of a Service that run (or start, or stop): [`Client::instances`]
    /// without the parked ones.
    pub async fn running_instances(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<InstanceView>, ClientError> {
        let mut list = self.instances(namespace, name).await?;
        list.retain(|i| i.status.phase != skiff_api::wire::Phase::Parked);
        Ok(list)
    }

    /// The instances of a Service with their status and usage, parked ones included.
    pub async fn instances(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Vec<InstanceView>, ClientError> {
        self.get(
            &format!("/api/v1/namespaces/{namespace}/services/{name}/instances"),
            &[],
        )
        .await
    }

    /// Streams a Service's logs, calling `on_line` for each; returns when the server ends the
    /// stream (at once unless `follow`).
    pub async fn logs(
        &self,
        namespace: &str,
        name: &str,
        query: &[(&str, String)],
        on_line: impl FnMut(LogLine),
    ) -> Result<(), ClientError> {
        let path = format!("/api/v1/namespaces/{namespace}/services/{name}/logs");
        self.ndjson(&path, query, on_line).await
    }

    /// Streams a Service's request log, calling `on_line` for each request; returns when the
    /// server ends the stream (at once unless `follow`).
    pub async fn request_log(
        &self,
        namespace: &str,
        name: &str,
        query: &[(&str, String)],
        on_line: impl FnMut(skiff_api::wire::RequestLogLine),
    ) -> Result<(), ClientError> {
        let path = format!("/api/v1/namespaces/{namespace}/services/{name}/requests");
        self.ndjson(&path, query, on_line).await
    }

    /// One request of a Service by its request id, with its instance's lines around it.
    pub async fn request_trail(
        &self,
        namespace: &str,
        name: &str,
        id: &str,
    ) -> Result<skiff_api::wire::RequestTrail, ClientError> {
        let mut url = self.url(
            &format!("/api/v1/namespaces/{namespace}/services/{name}/requests"),
            &[],
        );
        // A client's request id may hold anything printable: one encoded segment.
        if let Ok(mut segments) = url.path_segments_mut() {
            segments.push(id);
        }
        let response = self.send(self.http.get(url)).await?;
        self.json(response).await
    }

    /// Streams the NDJSON lines of `path`, calling `on_line` for each one that parses.
    async fn ndjson<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
        mut on_line: impl FnMut(T),
    ) -> Result<(), ClientError> {
        use futures::StreamExt;
        let q: Vec<(&str, &str)> = query.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let url = self.url(path, &q);
        let response = self
            .send(
                self.http
                    .get(url)
                    .timeout(Duration::from_secs(365 * 24 * 3600)),
            )
            .await?;
        let mut stream = response.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| ClientError::Transport {
                server: self.server().to_owned(),
                source,
            })?;
            buf.extend_from_slice(&chunk);
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                if let Ok(l) = serde_json::from_slice::<T>(&line) {
                    on_line(l);
                }
            }
        }
        Ok(())
    }

    /// Creates or updates a Job from a manifest body (its JSON or YAML text).
    pub async fn apply_job(
        &self,
        namespace: &str,
        name: &str,
        body: String,
        content_type: &str,
        dry_run: bool,
    ) -> Result<AppliedJob, ClientError> {
        let query: &[(&str, &str)] = if dry_run { &[("dryRun", "All")] } else { &[] };
        let request = self
            .http
            .put(self.url(
                &format!("/api/v1/namespaces/{namespace}/jobs/{name}"),
                query,
            ))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        let response = self.send(request).await?;
        let result = response
            .headers()
            .get(APPLY_RESULT_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .unwrap_or_else(|| {
                if response.status() == StatusCode::CREATED {
                    "created"
                } else {
                    "configured"
                }
                .to_owned()
            });
        let job = self.json(response).await?;
        Ok(AppliedJob { job, result })
    }

    /// Reads a Job.
    pub async fn get_job(&self, namespace: &str, name: &str) -> Result<Job, ClientError> {
        self.get(&format!("/api/v1/namespaces/{namespace}/jobs/{name}"), &[])
            .await
    }

    /// Lists the Jobs of a namespace, or of all (`None`).
    pub async fn list_jobs(&self, namespace: Option<&str>) -> Result<Vec<Job>, ClientError> {
        let path = match namespace {
            Some(ns) => format!("/api/v1/namespaces/{ns}/jobs"),
            None => "/api/v1/jobs".to_owned(),
        };
        Ok(self.get::<List<Job>>(&path, &[]).await?.items)
    }

    /// Deletes a Job with its executions (a dry run only checks that it exists).
    pub async fn delete_job(
        &self,
        namespace: &str,
        name: &str,
        dry_run: bool,
    ) -> Result<(), ClientError> {
        let query: &[(&str, &str)] = if dry_run { &[("dryRun", "All")] } else { &[] };
        let url = self.url(
            &format!("/api/v1/namespaces/{namespace}/jobs/{name}"),
            query,
        );
        self.send(self.http.delete(url)).await?;
        Ok(())
    }

    /// Runs a Job with `overrides`: the execution it created.
    pub async fn run_job(
        &self,
        namespace: &str,
        name: &str,
        overrides: &Overrides,
    ) -> Result<Execution, ClientError> {
        let url = self.url(
            &format!("/api/v1/namespaces/{namespace}/jobs/{name}/executions"),
            &[],
        );
        let body = serde_json::to_string(overrides).expect("overrides serialize");
        let response = self
            .send(
                self.http
                    .post(url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body),
            )
            .await?;
        self.json(response).await
    }

    /// The executions of a namespace (of one Job), newest first.
    pub async fn list_executions(
        &self,
        namespace: &str,
        job: Option<&str>,
    ) -> Result<Vec<Execution>, ClientError> {
        let query: Vec<(&str, &str)> = job.map(|j| vec![("job", j)]).unwrap_or_default();
        Ok(self
            .get::<List<Execution>>(
                &format!("/api/v1/namespaces/{namespace}/executions"),
                &query,
            )
            .await?
            .items)
    }

    /// Reads an execution.
    pub async fn get_execution(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Execution, ClientError> {
        self.get(
            &format!("/api/v1/namespaces/{namespace}/executions/{name}"),
            &[],
        )
        .await
    }

    /// Cancels an execution; returns it as it stands (an ended one unchanged).
    pub async fn cancel_execution(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Execution, ClientError> {
        let url = self.url(
            &format!("/api/v1/namespaces/{namespace}/executions/{name}/cancel"),
            &[],
        );
        let response = self.send(self.http.post(url)).await?;
        self.json(response).await
    }

    /// A Service's rollout.
    pub async fn rollout(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<skiff_api::rollout::RolloutReport, ClientError> {
        let url = self.url(
            &format!("/api/v1/namespaces/{namespace}/services/{name}/rollout"),
            &[],
        );
        let response = self.send(self.http.get(url)).await?;
        self.json(response).await
    }

    /// Pauses, resumes, promotes or aborts a Service's rollout (`action`).
    pub async fn rollout_command(
        &self,
        namespace: &str,
        name: &str,
        action: &str,
    ) -> Result<skiff_api::rollout::RolloutReport, ClientError> {
        let url = self.url(
            &format!("/api/v1/namespaces/{namespace}/services/{name}/rollout/{action}"),
            &[],
        );
        let response = self.send(self.http.post(url)).await?;
        self.json(response).await
    }

    /// Sends a Service's latest-revision traffic back to `to` (default: the previous
    /// revision).
    pub async fn rollback(
        &self,
        namespace: &str,
        name: &str,
        to: Option<&str>,
    ) -> Result<skiff_api::rollout::RolloutReport, ClientError> {
        let url = self.url(
            &format!("/api/v1/namespaces/{namespace}/services/{name}/rollback"),
            &[],
        );
        let body = serde_json::json!({ "to": to }).to_string();
        let response = self
            .send(
                self.http
                    .post(url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(body),
            )
            .await?;
        self.json(response).await
    }

    /// Deletes an execution that has ended.
    pub async fn delete_execution(&self, namespace: &str, name: &str) -> Result<(), ClientError> {
        let url = self.url(
            &format!("/api/v1/namespaces/{namespace}/executions/{name}"),
            &[],
        );
        self.send(self.http.delete(url)).await?;
        Ok(())
    }

    /// Streams an execution's task output (`task`, `since`, `tail`, `follow` in `query`),
    /// calling `on_line` for each line; returns when the server ends the stream (at once
    /// unless following, else when the execution ends).
    pub async fn execution_logs(
        &self,
        namespace: &str,
        name: &str,
        query: &[(&str, String)],
        on_line: impl FnMut(LogLine),
    ) -> Result<(), ClientError> {
        let path = format!("/api/v1/namespaces/{namespace}/executions/{name}/logs");
        self.ndjson(&path, query, on_line).await
    }

    /// The daemon's version information.
    pub async fn version(&self) -> Result<VersionInfo, ClientError> {
        self.get("/api/v1/version", &[]).await
    }
}

/// The path segment of a kind of configuration object.
fn config_path(kind: ConfigKind) -> &'static str {
    match kind {
        ConfigKind::Secret => "secrets",
        ConfigKind::ConfigMap => "configmaps",
    }
}

#[cfg(test)]
mod tests {
    use super::warning_text;

    /// `Warning` headers as the daemon (and the Kubernetes API server) write them, and others.
    #[test]
    fn warning_texts() {
        assert_eq!(
            warning_text(r#"299 - "a.b: has no effect""#),
            "a.b: has no effect"
        );
        assert_eq!(warning_text(r#"299 skiff "x y""#), "x y");
        assert_eq!(warning_text("free text"), "free text");
        assert_eq!(warning_text(""), "");
    }
}
