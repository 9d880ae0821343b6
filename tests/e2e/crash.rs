//! Durability under crashes: `kill -9` the daemon at random moments while a client applies
//! updates; after every restart each acknowledged write is there and the store opens.

use std::sync::{Arc, Mutex};

use rand::Rng;
use skiff_test_utils::TestDaemon;

use crate::{SKIFF, service_yaml};

/// What the writer saw acknowledged.
#[derive(Default)]
struct Acked {
    /// (service, TARGET value, revision stamped) per acknowledged apply, in order.
    writes: Vec<(String, String, Option<String>)>,
}

/// At least 50 crash/restart cycles; zero acknowledged writes may be lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_never_loses_an_acknowledged_write() {
    const CYCLES: usize = 50;
    let mut d = TestDaemon::start(SKIFF).await.expect("daemon");
    let acked = Arc::new(Mutex::new(Acked::default()));
    let mut counter = 0u64;
    let mut total_acked = 0usize;
    for cycle in 0..CYCLES {
        let client = d.client();
        let acked_w = acked.clone();
        let start = counter;
        // The writer applies updates to a few services (new revisions) and creates one new
        // service per cycle, as fast as it can, until the daemon dies under it.
        let writer = tokio::spawn(async move {
            let mut n = start;
            loop {
                n += 1;
                let name = if n.is_multiple_of(7) {
                    format!("new-{n}")
                } else {
                    format!("svc-{}", n % 3)
                };
                let target = format!("t{n}");
                match client
                    .apply_service(
                        "default",
                        Some(&name),
                        service_yaml(&name, &target),
                        "application/yaml",
                        false,
                    )
                    .await
                {
                    Ok(applied) => {
                        acked_w.lock().expect("lock").writes.push((
                            name,
                            target,
                            applied.created_revision,
                        ));
                    }
                    Err(_) => return n,
                }
            }
        });
        // At a random moment once this cycle has an acknowledged write (on a loaded machine
        // a fixed delay may pass before the first apply is answered, and prove nothing).
        let acked_c = acked.clone();
        skiff_test_utils::wait_for(
            "a first acknowledged write in this cycle",
            std::time::Duration::from_millis(2),
            skiff_test_utils::MAX_WAIT,
            || {
                let n = acked_c.lock().expect("lock").writes.len();
                async move { (n > 0).then_some(()) }
            },
        )
        .await
        .unwrap_or_else(|e| panic!("cycle {cycle}: {e}"));
        let delay_ms = rand::rng().random_range(0..100);
        tokio::time::sleep(std::time::Duration::from_millis(delay_ms)).await;
        d.kill9();
        counter = writer.await.expect("writer");
        d.restart()
            .await
            .unwrap_or_else(|e| panic!("cycle {cycle}: the daemon did not come back: {e:#}"));

        // Every acknowledged write is present: the last acknowledged value of each service
        // is either its current value or was superseded by a later (possibly unacknowledged)
        // write, and every acknowledged revision exists.
        let client = d.client();
        let writes = std::mem::take(&mut acked.lock().expect("lock").writes);
        total_acked += writes.len();
        let mut last: std::collections::BTreeMap<String, u64> = Default::default();
        for (name, target, revision) in &writes {
            let n: u64 = target[1..].parse().expect("number");
            last.insert(name.clone(), n);
            if let Some(rev) = revision {
                client
                    .get_revision("default", rev)
                    .await
                    .unwrap_or_else(|e| {
                        panic!("cycle {cycle}: acknowledged revision {rev} lost: {e}")
                    });
            }
        }
        for (name, n) in last {
            let svc = client
                .get_service("default", &name)
                .await
                .unwrap_or_else(|e| panic!("cycle {cycle}: acknowledged service {name} lost: {e}"));
            let value = svc
                .spec
                .template
                .as_ref()
                .and_then(|t| t.spec.as_ref())
                .and_then(|s| s.containers[0].env[0].value.clone())
                .expect("value");
            let stored: u64 = value[1..].parse().expect("number");
            assert!(
                stored >= n,
                "cycle {cycle}: service {name} has t{stored}, but t{n} was acknowledged"
            );
            let revisions = client
                .list_revisions(Some("default"), Some(&name))
                .await
                .expect("revisions");
            let latest = svc
                .status
                .latest_created_revision_name
                .clone()
                .expect("latest");
            assert!(
                revisions.iter().any(|r| r.metadata.name == latest),
                "cycle {cycle}: {name}'s latest revision {latest} is missing"
            );
        }
    }
    eprintln!("{CYCLES} kill -9 cycles, {total_acked} acknowledged writes verified, none lost");
    assert!(
        total_acked >= CYCLES,
        "the writer made too little progress to prove anything ({total_acked})"
    );
    d.cleanup().await.expect("cleanup");
}
