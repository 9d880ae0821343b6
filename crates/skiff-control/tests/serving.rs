//! `Serving::update`: the route reconciler's changes reach the router and the autoscalers
//! Service by Service, without root.

use std::sync::Arc;
use std::time::Duration;

use skiff_api::object::{LABEL_SERVICE, Revision};
use skiff_control::routes::RouteTable;
use skiff_control::runtime::InstanceRuntime;
use skiff_control::serving::{ServiceRoutes, Serving, ServingConfig};
use skiff_router::{Connect, ConnectFuture, Router, RouterConfig, RouterMetrics};
use tokio::sync::mpsc;

struct NoConnect;

impl Connect for NoConnect {
    fn connect(&self, _: Arc<std::os::fd::OwnedFd>, _: u16) -> ConnectFuture<'_> {
        Box::pin(async { Err(std::io::ErrorKind::Unsupported.into()) })
    }
}

fn serving() -> Arc<Serving> {
    let (poke, _) = mpsc::unbounded_channel();
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
    let runtime = skiff_test_utils::fakes::FakeRuntime::new() as Arc<dyn InstanceRuntime>;
    Serving::new(
        router,
        runtime,
        ServingConfig::default(),
        &skiff_telemetry::Metrics::new("test"),
    )
}

fn revision(svc: &str) -> Revision {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "serving.knative.dev/v1",
        "kind": "Revision",
        "metadata": {"name": format!("{svc}-00001"), "namespace": "default", "uid": "u",
                     "generation": 1, "creationTimestamp": "2026-01-01T00:00:00Z",
                     "labels": {LABEL_SERVICE: svc}},
        "spec": {"containers": [{"image": "x"}]}
    }))
    .expect("a revision")
}

/// What the route reconciler hands over for Service `svc` with one revision, routed
/// to it (or, with `None`, the Service deleted with its revision).
fn routes<'a>(svc: &str, r: Option<&'a Revision>) -> ServiceRoutes<'a> {
    let mut table = RouteTable::default();
    if let Some(r) = r {
        table.pools.push(skiff_control::routes::pool_spec(r));
        table
            .reachable
            .insert(("default".into(), r.metadata.name.clone()));
        table.hosts.insert(
            format!("{svc}.default.example.test"),
            skiff_router::HostRoute::Service {
                namespace: "default".into(),
                service: svc.into(),
                split: vec![(r.metadata.name.clone(), 100)],
            },
        );
    }
    ServiceRoutes {
        key: ("default".into(), svc.into()),
        table,
        revisions: r.into_iter().collect(),
    }
}

fn pools(s: &Serving) -> Vec<String> {
    let mut v: Vec<String> = s.router().pools().into_iter().map(|(k, _)| k.1).collect();
    v.sort();
    v
}

/// An update changes only the Services it names; a full one also removes the others.
#[tokio::test]
async fn updates_touch_only_the_services_named() {
    let s = serving();
    let (a, b, c) = (revision("a"), revision("b"), revision("c"));
    s.update(vec![routes("a", Some(&a)), routes("b", Some(&b))], true);
    assert_eq!(
        s.router().hosts(),
        ["a.default.example.test", "b.default.example.test"]
    );
    let pool_a = s.router().pool(&("default".into(), "a-00001".into()));
    // c is added and b deleted; a, not named, keeps its route and the very same pool.
    s.update(vec![routes("c", Some(&c)), routes("b", None)], false);
    assert_eq!(
        s.router().hosts(),
        ["a.default.example.test", "c.default.example.test"]
    );
    assert_eq!(pools(&s), ["a-00001", "c-00001"]);
    assert!(Arc::ptr_eq(
        &pool_a.expect("a's pool"),
        &s.router()
            .pool(&("default".into(), "a-00001".into()))
            .expect("a's pool")
    ));
    assert!(s.has_decided(&("default".into(), "c-00001".into())));
    assert!(!s.has_decided(&("default".into(), "b-00001".into())));
    // A full update naming only c: a goes, with its autoscaler.
    s.update(vec![routes("c", Some(&c))], true);
    assert_eq!(s.router().hosts(), ["c.default.example.test"]);
    assert_eq!(pools(&s), ["c-00001"]);
    assert!(!s.has_decided(&("default".into(), "a-00001".into())));
}

/// When two Services make the same host, the one that claimed it last keeps it when the
/// other lets it go.
#[tokio::test]
async fn a_shared_host_stays_with_its_last_owner() {
    let s = serving();
    let (a, b) = (revision("a"), revision("b"));
    let mut ra = routes("a", Some(&a));
    let shared = "x-a.default.example.test".to_owned();
    ra.table.hosts.insert(
        shared.clone(),
        skiff_router::HostRoute::Unavailable {
            message: "a's".into(),
        },
    );
    s.update(vec![ra], false);
    let mut rb = routes("b", Some(&b));
    rb.table.hosts.insert(
        shared.clone(),
        skiff_router::HostRoute::Unavailable {
            message: "b's".into(),
        },
    );
    s.update(vec![rb], false);
    // a drops it (its tag removed): b still has it.
    s.update(vec![routes("a", Some(&a))], false);
    assert!(s.router().hosts().contains(&shared));
    s.update(vec![routes("b", Some(&b))], false);
    assert!(!s.router().hosts().contains(&shared));
}

/// A Service whose cost budget is published as spent has its revisions re-decided at once:
/// a request waiting for a revision at zero starts nothing (the revision had no instance
/// when its budget was spent), its pool says why so that refusals say `budget`, and its
/// scale says so; another Service is untouched. Once the stop is lifted, the waiting request
/// gets its instance at once.
#[tokio::test]
async fn a_spent_budget_holds_the_services_revisions() {
    use skiff_control::budget::{BudgetStop, BudgetStops};
    let s = serving();
    let (a, b) = (revision("a"), revision("b"));
    s.update(vec![routes("a", Some(&a)), routes("b", Some(&b))], true);
    // From here: the revisions' first decisions are made.
    let scaled = Arc::new(std::sync::Mutex::new(Vec::new()));
    {
        let scaled = scaled.clone();
        s.on_scaled(Box::new(move |k| {
            scaled.lock().expect("not poisoned").push(k.1.clone())
        }));
    }
    let (ka, kb) = (
        ("default".to_owned(), "a-00001".to_owned()),
        ("default".to_owned(), "b-00001".to_owned()),
    );
    assert_eq!(s.desired_of(&ka), 0, "an old idle revision is at zero");
    let pool = s.router().pool(&ka).expect("a's pool");
    let waiter = {
        let pool = pool.clone();
        tokio::spawn(async move { pool.acquire(5, Duration::from_secs(60), || {}).await })
    };
    while pool.waiting() == 0 {
        tokio::task::yield_now().await;
    }
    let stop = BudgetStop {
        dollars: 0.000001,
        per: skiff_api::slo::BudgetPeriod::Day,
        until_unix: 1_800_057_600,
    };
    let spent: BudgetStops = [(("default".to_owned(), "a".to_owned()), stop)].into();
    s.set_budget_stops(Arc::new(spent));
    assert_eq!(s.desired_of(&ka), 0, "held at the none it had");
    let why = pool.budget_stop().expect("the pool knows");
    assert_eq!(
        (why.budget.as_str(), why.until.as_str()),
        ("$0.000001/day", "2027-01-16T00:00:00Z")
    );
    let scale = s.scale_of("default", "a", None);
    assert!(
        scale[0].decisions.is_empty() || scale[0].decisions[0].desired == 0,
        "{scale:?}"
    );
    assert!(
        s.budget_stop_of("default", "a")
            .is_some_and(|w| w.contains("the cost budget ($0.000001/day) is spent")),
        "{:?}",
        s.budget_stop_of("default", "a")
    );
    let b_pool = s.router().pool(&kb).expect("b's pool");
    assert!(b_pool.budget_stop().is_none() && s.budget_stop_of("default", "b").is_none());
    assert!(
        scaled.lock().expect("not poisoned").is_empty(),
        "nothing changed scale"
    );

    s.set_budget_stops(Arc::default());
    assert_eq!(s.desired_of(&ka), 1, "the waiting request gets an instance");
    assert!(pool.budget_stop().is_none());
    assert_eq!(*scaled.lock().expect("not poisoned"), ["a-00001"]);
    waiter.abort();
}
