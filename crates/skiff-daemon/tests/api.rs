//! The REST API in-process: the real router, controller and SQLite store in a temporary
//! directory, driven with HTTP requests through `tower::ServiceExt::oneshot`.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use serde_json::Value;
use skiff_control::controller::{Controller, SystemClock};
use skiff_daemon::api::{self, ApiState};
use skiff_store::{SqliteStore, Store};
use tower::ServiceExt;

const TOKEN: &str = "test-token-0123456789abcdef";

struct Api {
    router: Router,
    _dir: tempfile::TempDir,
}

impl Api {
    fn new() -> Api {
        let dir = tempfile::tempdir().expect("tempdir");
        let store: Arc<dyn Store> =
            Arc::new(SqliteStore::open(&dir.path().join("state.db")).expect("store"));
        let controller = Controller::new(
            store.clone(),
            "localhost".into(),
            8080,
            Arc::new(SystemClock),
        );
        let metrics = Arc::new(skiff_telemetry::Metrics::new("test"));
        let config = skiff_daemon::config::Config::defaults();
        let images = Arc::new(
            skiff_control::images::Images::open(
                &config.image_settings(),
                dir.path(),
                store.clone(),
                &metrics,
            )
            .expect("images"),
        );
        let oci: Arc<dyn skiff_runtime::oci::OciRuntime> = Arc::new(
            skiff_runtime::oci::RuncCli::new("runc", dir.path().join("run/runc")),
        );
        let runtime =
            skiff_runtime::Runtime::new(skiff_runtime::RuntimeOptions::new(dir.path()), oci)
                .expect("runtime");
        let (poke, _) = tokio::sync::mpsc::unbounded_channel();
        let router = skiff_router::Router::new(
            skiff_router::RouterConfig {
                domain: "localhost".into(),
                queue_depth: 10,
                queue_timeout: std::time::Duration::from_secs(1),
                threads: 1,
            },
            skiff_control::runtime::NetnsConnect(runtime.connector().clone()),
            poke,
            skiff_router::RouterMetrics::unregistered(),
        );
        let runtime: Arc<dyn skiff_control::runtime::InstanceRuntime> =
            Arc::new(skiff_control::runtime::Runc(runtime));
        let serving = skiff_control::serving::Serving::new(
            router,
            runtime.clone(),
            skiff_control::serving::ServingConfig::default(),
            &metrics,
        );
        // Only the route reconciler runs: writes wait for it, and nothing else changes the
        // objects these tests read.
        let mut controllers = skiff_control::reconciler::Controllers::new(store.clone());
        let routes = controllers.add(Arc::new(skiff_control::routing::RouteReconciler::new(
            controller.clone(),
            serving.clone(),
        )));
        tokio::spawn(controllers.run(tokio_util::sync::CancellationToken::new()));
        let secrets = skiff_control::secrets::SecretStore::new(
            store.clone(),
            skiff_control::secrets::KeyFile::new(dir.path().join("secret.key")),
            Arc::new(SystemClock),
        )
        .expect("the secret store opens");
        // Jobs without their reconciler: executions are created and stay pending.
        let jobs = skiff_control::jobs::Jobs::new(
            controller.clone(),
            runtime.clone(),
            images.clone(),
            secrets.clone(),
            metrics.register("job", skiff_control::telemetry::JobMetrics::new),
        );
        let instances = skiff_control::instances::InstanceManager::new(
            runtime,
            controller.clone(),
            images.clone(),
            store,
            serving,
            secrets.clone(),
        );
        let history = skiff_control::history::SharedHistory::default();
        let slo = Arc::new(skiff_control::slo::SloEngine::new(
            controller.clone(),
            history.clone(),
            Default::default(),
            None,
        ));
        let rollouts = skiff_control::rollout::Rollouts::new(controller.clone(), Arc::default());
        let router = api::router(ApiState {
            controller,
            token: Arc::new(TOKEN.into()),
            max_body_bytes: 64 * 1024,
            images,
            gc_lock: Arc::default(),
            metrics,
            instances,
            routes,
            manifest_permits: api::manifest_permits(),
            secrets,
            slo,
            history,
            ui: skiff_daemon::ui::Ui::new(None, None),
            jobs,
            eventing: None,
            rollouts,
        });
        Api { router, _dir: dir }
    }

    async fn call(
        &self,
        method: &str,
        uri: &str,
        body: Option<&str>,
    ) -> (StatusCode, axum::http::HeaderMap, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"));
        if body.is_some() {
            req = req.header(header::CONTENT_TYPE, "application/yaml");
        }
        let req = req
            .body(
                body.map(|b| Body::from(b.to_owned()))
                    .unwrap_or_else(Body::empty),
            )
            .expect("request");
        self.send(req).await
    }

    async fn send(&self, req: Request<Body>) -> (StatusCode, axum::http::HeaderMap, Value) {
        let response = self.router.clone().oneshot(req).await.expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
        (status, headers, value)
    }

    async fn apply(&self, name: &str, yaml: &str) -> (StatusCode, axum::http::HeaderMap, Value) {
        self.call(
            "PUT",
            &format!("/api/v1/namespaces/default/services/{name}"),
            Some(yaml),
        )
        .await
    }
}

fn service(name: &str, env: &str) -> String {
    format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: {name}\nspec:\n  template:\n    spec:\n      containers:\n      - image: nginx\n        env:\n        - name: TARGET\n          value: {env}\n"
    )
}

/// Every API route needs the bearer token; the answer is a 401 error body with a request id.
#[tokio::test]
async fn requires_token() {
    let api = Api::new();
    for (auth, want) in [
        (None, StatusCode::UNAUTHORIZED),
        (Some("Bearer nope"), StatusCode::UNAUTHORIZED),
        (Some("Basic abc"), StatusCode::UNAUTHORIZED),
    ] {
        let mut req = Request::builder().uri("/api/v1/services");
        if let Some(a) = auth {
            req = req.header(header::AUTHORIZATION, a);
        }
        let (status, headers, body) = api.send(req.body(Body::empty()).expect("req")).await;
        assert_eq!(status, want);
        assert_eq!(body["code"], "Unauthorized");
        assert!(body["requestId"].as_str().is_some_and(|s| !s.is_empty()));
        assert!(headers.contains_key(header::WWW_AUTHENTICATE));
    }
    let (status, _, _) = api
        .send(
            Request::builder()
                .uri("/healthz")
                .body(Body::empty())
                .expect("req"),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
}

/// Apply creates a Service and its first revision; a template change stamps the next
/// revision; a metadata-only change and a repeat apply stamp none.
#[tokio::test]
async fn revisions_follow_template_changes() {
    let api = Api::new();
    let (status, headers, body) = api.apply("hello", &service("hello", "v1")).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(headers["skiff-created-revision"], "hello-00001");
    assert_eq!(body["status"]["latestCreatedRevisionName"], "hello-00001");
    assert_eq!(body["status"]["url"], "http://hello.default.localhost:8080");
    assert_eq!(body["metadata"]["generation"], 1);

    let (status, headers, _) = api.apply("hello", &service("hello", "v1")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["skiff-apply-result"], "unchanged");
    assert!(!headers.contains_key("skiff-created-revision"));

    let labelled = service("hello", "v1")
        .replace("  name: hello\n", "  name: hello\n  labels:\n    team: a\n");
    let (_, headers, body) = api.apply("hello", &labelled).await;
    assert_eq!(headers["skiff-apply-result"], "configured");
    assert!(!headers.contains_key("skiff-created-revision"));
    assert_eq!(
        body["metadata"]["generation"], 1,
        "metadata changes do not bump generation"
    );

    let (_, headers, body) = api.apply("hello", &service("hello", "v2")).await;
    assert_eq!(headers["skiff-created-revision"], "hello-00002");
    assert_eq!(body["metadata"]["generation"], 2);

    let (_, _, list) = api
        .call(
            "GET",
            "/api/v1/namespaces/default/revisions?service=hello",
            None,
        )
        .await;
    let names: Vec<&str> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|r| r["metadata"]["name"].as_str())
        .collect();
    assert_eq!(names, ["hello-00001", "hello-00002"]);
    let (_, _, rev) = api
        .call(
            "GET",
            "/api/v1/namespaces/default/revisions/hello-00002",
            None,
        )
        .await;
    assert_eq!(
        rev["metadata"]["labels"]["serving.knative.dev/configurationGeneration"],
        "2"
    );
    assert_eq!(
        rev["spec"]["timeoutSeconds"], 300,
        "Knative defaults are filled in"
    );
    assert_eq!(rev["spec"]["containers"][0]["name"], "user-container");
    assert_eq!(rev["status"]["conditions"][2]["reason"], "ResolvingImages");
}

/// A stale resourceVersion is refused with 409 and nothing changes.
#[tokio::test]
async fn stale_resource_version_conflicts() {
    let api = Api::new();
    let (_, _, created) = api.apply("hello", &service("hello", "v1")).await;
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_owned();
    let pinned = |env: &str, rv: &str| {
        service("hello", env).replace(
            "  name: hello\n",
            &format!("  name: hello\n  resourceVersion: \"{rv}\"\n"),
        )
    };
    let (status, _, _) = api.apply("hello", &pinned("v2", &rv)).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = api.apply("hello", &pinned("v3", &rv)).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["code"], "Conflict");
    let (_, _, now) = api
        .call("GET", "/api/v1/namespaces/default/services/hello", None)
        .await;
    assert_eq!(
        now["spec"]["template"]["spec"]["containers"][0]["env"][0]["value"],
        "v2"
    );
}

/// Concurrent pinned updates from one read: exactly one wins, the others get 409.
#[tokio::test]
async fn concurrent_pinned_updates_never_lose_one_silently() {
    let api = Arc::new(Api::new());
    let (_, _, created) = api.apply("hello", &service("hello", "v0")).await;
    let rv = created["metadata"]["resourceVersion"]
        .as_str()
        .expect("rv")
        .to_owned();
    let mut tasks = Vec::new();
    for i in 0..8 {
        let api = api.clone();
        let yaml = service("hello", &format!("w{i}")).replace(
            "  name: hello\n",
            &format!("  name: hello\n  resourceVersion: \"{rv}\"\n"),
        );
        tasks.push(tokio::spawn(
            async move { api.apply("hello", &yaml).await.0 },
        ));
    }
    let mut ok = 0;
    let mut conflict = 0;
    for t in tasks {
        match t.await.expect("task") {
            StatusCode::OK => ok += 1,
            StatusCode::CONFLICT => conflict += 1,
            other => panic!("unexpected {other}"),
        }
    }
    assert_eq!((ok, conflict), (1, 7));
    let (_, _, list) = api
        .call("GET", "/api/v1/namespaces/default/revisions", None)
        .await;
    assert_eq!(
        list["items"].as_array().map(Vec::len),
        Some(2),
        "one revision per accepted change"
    );
}

/// Unpinned concurrent applies all land, each stamping its own revision.
#[tokio::test]
async fn concurrent_unpinned_applies_all_land() {
    let api = Arc::new(Api::new());
    api.apply("hello", &service("hello", "v0")).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            api.apply("hello", &service("hello", &format!("w{i}")))
                .await
                .0
        }));
    }
    for t in tasks {
        assert_eq!(t.await.expect("task"), StatusCode::OK);
    }
    let (_, _, list) = api
        .call("GET", "/api/v1/namespaces/default/revisions", None)
        .await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(9));
}

/// Invalid manifests get 400 with every problem, its path and its line.
#[tokio::test]
async fn invalid_manifest_lists_problems() {
    let api = Api::new();
    let yaml = service("hello", "v1").replace(
        "      - image: nginx\n",
        "      - image: nginx\n        ports:\n        - name: http\n          protocl: TCP\n",
    );
    let (status, _, body) = api.apply("hello", &yaml).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["code"], "Invalid");
    let details = body["details"].as_array().expect("details");
    assert_eq!(details.len(), 2, "{body}");
    assert_eq!(
        details[0]["path"],
        "spec.template.spec.containers[0].ports[0].name"
    );
    assert_eq!(details[0]["line"], 11);
    assert_eq!(
        details[1]["path"],
        "spec.template.spec.containers[0].ports[0].protocl"
    );
    let (status, _, body) = api.apply("other", &service("hello", "v1")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["details"][0]["path"], "metadata.name");
    let (status, _, body) = api
        .call("PUT", "/api/v1/namespaces/default/services/x", Some("a: ["))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["details"][0]["kind"], "syntax");
    let (status, _, _) = api
        .call("PUT", "/api/v1/namespaces/Bad/services/x", Some("a: 1"))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// Traffic may only name revisions of the Service; a template name already used is refused.
#[tokio::test]
async fn state_dependent_rules() {
    let api = Api::new();
    let pinned = format!(
        "{}  traffic:\n  - revisionName: hello-00009\n    percent: 100\n",
        service("hello", "v1")
    );
    let (status, _, body) = api.apply("hello", &pinned).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["details"][0]["path"], "spec.traffic[0].revisionName");
    assert!(
        body["details"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("no revision `hello-00009`"))
    );

    let byo = |env: &str| {
        service("hello", env).replace(
            "  template:\n",
            "  template:\n    metadata:\n      name: hello-blue\n",
        )
    };
    assert_eq!(api.apply("hello", &byo("v1")).await.0, StatusCode::CREATED);
    let (status, _, body) = api.apply("hello", &byo("v2")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["details"][0]["path"], "spec.template.metadata.name");
    assert!(
        body["details"][0]["message"]
            .as_str()
            .is_some_and(|m| m.contains("already exists"))
    );
}

/// Dry runs validate and answer the would-be result without storing anything.
#[tokio::test]
async fn dry_run_stores_nothing() {
    let api = Api::new();
    let (status, headers, body) = api
        .call(
            "PUT",
            "/api/v1/namespaces/default/services/hello?dryRun=All",
            Some(&service("hello", "v1")),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(headers["skiff-created-revision"], "hello-00001");
    assert_eq!(body["metadata"]["name"], "hello");
    let (status, _, _) = api
        .call("GET", "/api/v1/namespaces/default/services/hello", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, _) = api
        .call(
            "PUT",
            "/api/v1/namespaces/default/services/hello?dryRun=maybe",
            Some(&service("hello", "v1")),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

/// generateName gives a fresh name per create; POST on an existing name is a conflict.
#[tokio::test]
async fn generate_name_and_create_only() {
    let api = Api::new();
    let yaml = service("x", "v1").replace("  name: x\n", "  generateName: gen-\n");
    let (s1, _, b1) = api
        .call("POST", "/api/v1/namespaces/default/services", Some(&yaml))
        .await;
    let (s2, _, b2) = api
        .call("POST", "/api/v1/namespaces/default/services", Some(&yaml))
        .await;
    assert_eq!((s1, s2), (StatusCode::CREATED, StatusCode::CREATED));
    let (n1, n2) = (
        b1["metadata"]["name"].as_str().expect("name"),
        b2["metadata"]["name"].as_str().expect("name"),
    );
    assert!(
        n1.starts_with("gen-") && n1.len() == 9 && n1 != n2,
        "{n1} {n2}"
    );
    assert_eq!(
        b1["status"]["latestCreatedRevisionName"],
        format!("{n1}-00001")
    );
    let (s, _, body) = api
        .call(
            "POST",
            "/api/v1/namespaces/default/services",
            Some(&service("y", "v1")),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{body}");
    let (s, _, body) = api
        .call(
            "POST",
            "/api/v1/namespaces/default/services",
            Some(&service("y", "v1")),
        )
        .await;
    assert_eq!(s, StatusCode::CONFLICT, "{body}");
}

/// Delete removes the Service and its revisions; afterwards both are 404.
#[tokio::test]
async fn delete_cascades() {
    let api = Api::new();
    api.apply("hello", &service("hello", "v1")).await;
    api.apply("hello", &service("hello", "v2")).await;
    let (status, _, body) = api
        .call("DELETE", "/api/v1/namespaces/default/services/hello", None)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["deletedRevisions"].as_array().map(Vec::len), Some(2));
    let (status, _, body) = api
        .call(
            "GET",
            "/api/v1/namespaces/default/revisions/hello-00001",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    let (status, _, _) = api
        .call("DELETE", "/api/v1/namespaces/default/services/hello", None)
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

/// Bad requests of every kind get the error body: no route, wrong method, wrong content
/// type, a body over the limit, bad query parameters.
#[tokio::test]
async fn bad_requests_get_error_bodies() {
    let api = Api::new();
    let (s, _, b) = api.call("GET", "/api/v1/nope", None).await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("NotFound"))
    );
    let (s, _, b) = api
        .call("PATCH", "/api/v1/namespaces/default/services/x", None)
        .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::METHOD_NOT_ALLOWED, Some("MethodNotAllowed"))
    );
    let req = Request::builder()
        .method("PUT")
        .uri("/api/v1/namespaces/default/services/x")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "text/html")
        .body(Body::from("<html>"))
        .expect("req");
    let (s, _, b) = api.send(req).await;
    assert_eq!(
        (s, b["code"].as_str()),
        (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Some("UnsupportedMediaType")
        )
    );
    let big = "a".repeat(100 * 1024);
    let (s, _, b) = api
        .call("PUT", "/api/v1/namespaces/default/services/x", Some(&big))
        .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("PayloadTooLarge"))
    );
    // A chunked body with no Content-Length is cut off at the limit too.
    let stream = futures_stream(200, 1024);
    let req = Request::builder()
        .method("PUT")
        .uri("/api/v1/namespaces/default/services/x")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::from_stream(stream))
        .expect("req");
    let (s, _, _) = api.send(req).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);
    let (s, _, b) = api
        .call("GET", "/api/v1/namespaces/default/revisions?bogus=1", None)
        .await;
    assert_eq!(
        (s, b["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("BadRequest"))
    );
    let (s, _, b) = api
        .call(
            "PUT",
            "/api/v1/namespaces/default/services/x",
            Some(&format!("{}---\n{}", service("x", "a"), service("x", "b"))),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let invalid_utf8 = Request::builder()
        .method("PUT")
        .uri("/api/v1/namespaces/default/services/x")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::from(vec![0xff, 0xfe, 0x00]))
        .expect("req");
    let (s, _, _) = api.send(invalid_utf8).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
}

fn futures_stream(chunks: usize, size: usize) -> impl futures_core_stream::Stream {
    futures_core_stream::iter(chunks, size)
}

/// A tiny stream of byte chunks without pulling in a stream crate.
mod futures_core_stream {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    pub trait Stream:
        futures_core::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static
    {
    }
    impl<T: futures_core::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send + 'static>
        Stream for T
    {
    }

    pub struct Chunks {
        left: usize,
        size: usize,
    }

    pub fn iter(left: usize, size: usize) -> Chunks {
        Chunks { left, size }
    }

    impl futures_core::Stream for Chunks {
        type Item = Result<bytes::Bytes, std::io::Error>;
        fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            if self.left == 0 {
                return Poll::Ready(None);
            }
            self.left -= 1;
            Poll::Ready(Some(Ok(bytes::Bytes::from(vec![b'a'; self.size]))))
        }
    }
}

/// Request ids: the client's sane id is kept and echoed; a hostile one is replaced.
#[tokio::test]
async fn request_ids() {
    let api = Api::new();
    let req = Request::builder()
        .uri("/api/v1/nope")
        .header("x-request-id", "abc-123")
        .body(Body::empty())
        .expect("req");
    let (_, headers, body) = api.send(req).await;
    assert_eq!(headers["x-request-id"], "abc-123");
    assert_eq!(body["requestId"], "abc-123");
    let req = Request::builder()
        .uri("/api/v1/nope")
        .header("x-request-id", "evil\tid with spaces")
        .body(Body::empty())
        .expect("req");
    let (_, headers, _) = api.send(req).await;
    assert_ne!(headers["x-request-id"], "evil\tid with spaces");
}

/// Secrets: stored and read back as keys and sizes (never a value, in any answer); bad
/// input is a 400 naming the path; the kind must match the endpoint; deletes; rotation.
#[tokio::test]
async fn secrets_show_keys_and_sizes_only() {
    let api = Api::new();
    let uri = "/api/v1/namespaces/default/secrets/db";
    let body = "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\ndata: {password: aHVudGVyMi1zZWNyZXQ=}\nstringData: {user: admin}\n";
    let (status, headers, v) = api.call("PUT", uri, Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(headers["skiff-apply-result"], "created");
    let mut answers = vec![v.to_string()];
    assert_eq!(v["sizes"]["password"], 14);
    assert_eq!(v["sizes"]["user"], 5);
    let (status, headers, v) = api.call("PUT", uri, Some(body)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["skiff-apply-result"], "unchanged");
    answers.push(v.to_string());
    let (status, _, v) = api.call("GET", uri, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["type"], "Opaque");
    answers.push(v.to_string());
    let (_, _, v) = api.call("GET", "/api/v1/secrets", None).await;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(1));
    answers.push(v.to_string());
    let (status, _, v) = api.call("POST", "/api/v1/secrets/rotate-key", None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["rewritten"], 1);
    for a in &answers {
        assert!(!a.contains("hunter2"), "{a}");
        assert!(!a.contains("aHVudGVy"), "{a}");
    }

    // Bad base64 and a bad key: 400, each at its path, no value quoted.
    let bad = "apiVersion: v1\nkind: Secret\nmetadata: {name: db}\ndata: {password: 'hunter2!!'}\nstringData: {a/b: x}\n";
    let (status, _, v) = api.call("PUT", uri, Some(bad)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let paths: Vec<&str> = v["details"]
        .as_array()
        .expect("details")
        .iter()
        .filter_map(|d| d["path"].as_str())
        .collect();
    assert_eq!(paths, ["data.password", "stringData.a/b"], "{v}");
    assert!(!v.to_string().contains("hunter2"), "{v}");
    // A ConfigMap sent to the Secrets endpoint.
    let cm = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: db}\ndata: {a: b}\n";
    let (status, _, v) = api.call("PUT", uri, Some(cm)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    // ConfigMaps show their values.
    let (status, _, v) = api
        .call("PUT", "/api/v1/namespaces/default/configmaps/db", Some(cm))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(v["data"]["a"], "b");

    let (status, _, _) = api.call("DELETE", uri, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, v) = api.call("GET", uri, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
}

fn job(name: &str, tasks: u32) -> String {
    format!(
        "apiVersion: run.googleapis.com/v1\nkind: Job\nmetadata:\n  name: {name}\nspec:\n  template:\n    spec:\n      taskCount: {tasks}\n      template:\n        spec:\n          maxRetries: 1\n          containers:\n          - image: skiff.local/job:v1\n            args: [a]\n"
    )
}

/// Jobs: applied (201, then unchanged), read and listed; run with overrides into an
/// execution (201) that lists under its job; bad overrides and unknown fields are 400, a
/// missing job 404; a running execution cannot be deleted (409) until cancelled; deleting
/// the job takes its executions.
#[tokio::test]
async fn jobs_and_executions() {
    let api = Api::new();
    let uri = "/api/v1/namespaces/default/jobs/etl";
    let (status, headers, v) = api.call("PUT", uri, Some(&job("etl", 3))).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    assert_eq!(headers["skiff-apply-result"], "created");
    assert_eq!(v["kind"], "Job");
    let (status, headers, _) = api.call("PUT", uri, Some(&job("etl", 3))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["skiff-apply-result"], "unchanged");
    let (status, _, v) = api
        .call(
            "PUT",
            "/api/v1/namespaces/default/jobs/other",
            Some(&job("etl", 3)),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("does not match")),
        "{v}"
    );
    // Field paths of a bad Job.
    let bad = job("etl", 3).replace("maxRetries: 1", "maxRetries: 11\n          taskCount: 2");
    let (status, _, v) = api.call("PUT", uri, Some(&bad)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let paths: Vec<&str> = v["details"]
        .as_array()
        .expect("details")
        .iter()
        .filter_map(|d| d["path"].as_str())
        .collect();
    assert!(
        paths.contains(&"spec.template.spec.template.spec.maxRetries"),
        "{v}"
    );
    assert!(
        paths.contains(&"spec.template.spec.template.spec.taskCount"),
        "{v}"
    );
    // A Service sent to the Jobs endpoint.
    let (status, _, v) = api.call("PUT", uri, Some(&service("etl", "x"))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (_, _, v) = api.call("GET", "/api/v1/jobs", None).await;
    assert_eq!(v["kind"], "JobList");
    assert_eq!(v["items"].as_array().map(Vec::len), Some(1));

    let run = "/api/v1/namespaces/default/jobs/etl/executions";
    let (status, _, v) = api
        .call(
            "POST",
            run,
            Some(r#"{"containerOverrides": [{"args": ["b", "c"], "env": [{"name": "K", "value": "V"}]}], "taskCount": 2}"#),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    let name = v["metadata"]["name"].as_str().expect("a name").to_owned();
    assert!(name.starts_with("etl-"), "{name}");
    assert_eq!(v["spec"]["taskCount"], 2);
    assert_eq!(
        v["spec"]["template"]["spec"]["containers"][0]["args"],
        serde_json::json!(["b", "c"])
    );
    assert_eq!(v["status"]["tasks"].as_array().map(Vec::len), Some(2));
    // No body is no overrides.
    let (status, _, v) = api.call("POST", run, None).await;
    assert_eq!(status, StatusCode::CREATED, "{v}");
    for (body, want) in [
        (r#"{"tasks": 2}"#, "unknown field `tasks`"),
        (
            r#"{"taskCount": 0}"#,
            "overrides.taskCount: 0 is out of range",
        ),
        (
            r#"{"containerOverrides": [{"name": "nope"}]}"#,
            "no container named `nope`",
        ),
    ] {
        let (status, _, v) = api.call("POST", run, Some(body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {v}");
        assert!(
            v["message"].as_str().is_some_and(|m| m.contains(want)),
            "{want} in {v}"
        );
    }
    let (status, _, v) = api
        .call(
            "POST",
            "/api/v1/namespaces/default/jobs/absent/executions",
            Some("{}"),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{v}");
    assert_eq!(
        v["message"],
        "job `absent` not found in namespace `default`"
    );

    let (_, _, v) = api
        .call("GET", "/api/v1/namespaces/default/executions?job=etl", None)
        .await;
    assert_eq!(v["kind"], "ExecutionList");
    assert_eq!(v["items"].as_array().map(Vec::len), Some(2), "{v}");
    let (_, _, v) = api
        .call(
            "GET",
            "/api/v1/namespaces/default/executions?job=other",
            None,
        )
        .await;
    assert_eq!(v["items"].as_array().map(Vec::len), Some(0), "{v}");
    let exec = format!("/api/v1/namespaces/default/executions/{name}");
    let (status, _, v) = api.call("GET", &exec, None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, _, v) = api.call("DELETE", &exec, None).await;
    assert_eq!(status, StatusCode::CONFLICT, "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("cancel it first")),
        "{v}"
    );
    let (status, _, v) = api.call("POST", &format!("{exec}/cancel"), None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["spec"]["cancelled"], true);
    let (status, _, v) = api.call("GET", &format!("{exec}/logs"), None).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let (status, _, v) = api.call("GET", &format!("{exec}/logs?task=2"), None).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    let (status, _, _) = api
        .call(
            "GET",
            "/api/v1/namespaces/default/executions/etl-zzzzz",
            None,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let (status, _, _) = api.call("DELETE", &format!("{uri}?dryRun=All"), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) = api.call("GET", uri, None).await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = api.call("DELETE", uri, None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) = api.call("GET", &exec, None).await;
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "the job's executions went with it"
    );
    let (status, _, _) = api.call("DELETE", uri, None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
