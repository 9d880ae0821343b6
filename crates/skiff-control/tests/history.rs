//! The history sampler on fakes, without root: what goes into each 10 s sample.

use std::sync::Arc;
use std::time::Duration;

use skiff_control::history::Sampler;
use skiff_control::runtime::InstanceRuntime;
use skiff_control::telemetry::Billing;
use skiff_history::SeriesKey;
use skiff_router::{Connect, ConnectFuture, PoolSpec, Router, RouterConfig, RouterMetrics};

struct NoConnect;

impl Connect for NoConnect {
    fn connect(&self, _: Arc<std::os::fd::OwnedFd>, _: u16) -> ConnectFuture<'_> {
        Box::pin(async { Err(std::io::ErrorKind::Unsupported.into()) })
    }
}

/// A sample holds what the router counted since the last one (and only that), and the
/// instance time billing closed or counts, as deltas; an idle revision gives nothing.
#[tokio::test]
async fn samples_are_deltas_of_what_happened() {
    let (poke, _) = tokio::sync::mpsc::unbounded_channel();
    let router = Router::new(
        RouterConfig {
            domain: "example.test".into(),
            queue_depth: 1,
            queue_timeout: Duration::from_secs(1),
            threads: 1,
        },
        NoConnect,
        poke,
        RouterMetrics::unregistered(),
    );
    router.set_pool(PoolSpec {
        namespace: "default".into(),
        service: "hello".into(),
        revision: "hello-00001".into(),
        container_concurrency: 0,
        port: 8080,
        h2c: false,
        timeout: Duration::from_secs(300),
        response_start_timeout: None,
        idle_timeout: None,
        unavailable: None,
    });
    let pool = router
        .pool(&("default".into(), "hello-00001".into()))
        .expect("a pool");
    let runtime = skiff_test_utils::fakes::FakeRuntime::new();
    let mut sampler = Sampler::new(
        router,
        runtime.clone() as Arc<dyn InstanceRuntime>,
        Arc::new(Billing::default()),
    );
    // Billing reads the instances' start times, which the fake runtime takes from the clock.
    let t0 = jiff::Timestamp::now();
    assert!(sampler.sample(t0).is_empty(), "nothing happened");
    pool.handles.answered(http::StatusCode::OK, 0.004, None);
    pool.handles
        .answered(http::StatusCode::BAD_GATEWAY, 0.2, None);
    let s = sampler.sample(t0);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].0, SeriesKey::new("default", "hello", "hello-00001"));
    assert_eq!((s[0].1.total(), s[0].1.errors()), (2, 1));
    assert!(sampler.sample(t0).is_empty(), "counted once");
    runtime
        .start(skiff_test_utils::fakes::instance_plan("hello-00001-a"))
        .await
        .expect("starts");
    let _ = sampler.sample(t0);
    let s = sampler.sample(t0 + jiff::SignedDuration::from_secs(3600));
    let s = &s[0].1;
    assert_eq!(s.instances_max, 1);
    assert!(s.instance_seconds > 0.0, "{s:?}");
}
