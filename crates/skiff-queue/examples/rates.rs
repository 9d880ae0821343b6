//! Prints the queue's rates on this machine: enqueue (single, batched, concurrent) and
//! claim + ack. Nothing is asserted; the numbers are for quoting.
//!
//! ```text
//! cargo run --release -p skiff-queue --example rates [DIR]
//! ```
//!
//! The database goes in a temporary directory under DIR (default: the system's temp
//! directory); put it on the disk the daemon would use, since the fsync is most of the cost of
//! an enqueue.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use skiff_queue::Queue;

const PAYLOAD_BYTES: usize = 1024;
const SUB: &str = "trigger/default/bench";
const LEASE: Duration = Duration::from_secs(30);

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let base: PathBuf = std::env::args_os()
        .nth(1)
        .map_or_else(std::env::temp_dir, PathBuf::from);
    let dir = tempfile::tempdir_in(&base)?;
    let queue = Queue::open(&dir.path().join("queue.db"))?;
    let payload = vec![b'x'; PAYLOAD_BYTES];
    println!(
        "skiff-queue rates, {PAYLOAD_BYTES} B payloads, database in {}",
        base.display()
    );

    // One event per call, one caller: one transaction and one fsync per event.
    let n = 2_000;
    let started = Instant::now();
    for _ in 0..n {
        queue.enqueue(&payload, &[SUB], Timestamp::now())?;
    }
    report("enqueue, 1 caller", n, started.elapsed(), "events");

    // The same with four subscriptions per event: one event row, four delivery rows.
    let subs = [
        SUB,
        "trigger/default/b",
        "trigger/default/c",
        "trigger/default/d",
    ];
    let started = Instant::now();
    for _ in 0..n {
        queue.enqueue(&payload, &subs, Timestamp::now())?;
    }
    report("enqueue, 4 subscriptions", n, started.elapsed(), "events");

    // A batched POST of 100 events: one transaction for all of them.
    let batch: Vec<(Vec<u8>, Vec<String>)> = (0..100)
        .map(|_| (payload.clone(), vec![SUB.to_owned()]))
        .collect();
    let batches = 200;
    let started = Instant::now();
    for _ in 0..batches {
        queue.enqueue_many(&batch, Timestamp::now())?;
    }
    report(
        "enqueue_many of 100",
        batches * batch.len(),
        started.elapsed(),
        "events",
    );

    // Concurrent single enqueues, as a broker serving many POSTs at once: group commit.
    for threads in [4, 16, 64] {
        let per_thread = 20_000 / threads;
        let started = Instant::now();
        std::thread::scope(|scope| -> Result<(), skiff_queue::QueueError> {
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    let (queue, payload) = (&queue, &payload);
                    scope.spawn(move || {
                        for _ in 0..per_thread {
                            queue.enqueue(payload, &[SUB], Timestamp::now())?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for handle in handles {
                handle
                    .join()
                    .map_err(|_| skiff_queue::QueueError::Poisoned)??;
            }
            Ok(())
        })?;
        report(
            &format!("enqueue, {threads} callers"),
            threads * per_thread,
            started.elapsed(),
            "events",
        );
    }

    // Claim + ack of what was enqueued above, by batch size.
    for limit in [1, 10, 100] {
        let mut delivered = 0;
        let started = Instant::now();
        while delivered < 10_000 {
            let claimed = queue.claim(SUB, Timestamp::now(), LEASE, limit)?;
            if claimed.is_empty() {
                break;
            }
            for c in &claimed {
                queue.ack(&c.lease, Timestamp::now())?;
            }
            delivered += claimed.len();
        }
        report(
            &format!("claim {limit} + ack each"),
            delivered,
            started.elapsed(),
            "deliveries",
        );
    }

    let started = Instant::now();
    let depths = queue.depths()?;
    let depth_time = started.elapsed();
    let started = Instant::now();
    let stats = queue.stats()?;
    println!(
        "{:<28} {:>9.1} µs ({} subscriptions)",
        "depths",
        depth_time.as_secs_f64() * 1e6,
        depths.len()
    );
    println!(
        "{:<28} {:>9.1} ms ({} deliveries, {} events)",
        "stats",
        started.elapsed().as_secs_f64() * 1e3,
        stats.total(),
        stats.events
    );
    let started = Instant::now();
    let mut compacted = 0;
    loop {
        let c = queue.compact(Timestamp::now(), 10_000)?;
        compacted += c.deliveries;
        if !c.more {
            break;
        }
    }
    report(
        "compact (10000 per call)",
        compacted as usize,
        started.elapsed(),
        "deliveries",
    );
    queue.close()?;
    Ok(())
}

fn report(what: &str, count: usize, elapsed: Duration, unit: &str) {
    let rate = count as f64 / elapsed.as_secs_f64();
    println!(
        "{what:<28} {rate:>9.0} {unit}/s  ({count} in {:.2} s, {:.1} µs each)",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1e6 / count as f64
    );
}
