//! The queue's behaviour through its public API, on made-up time.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use jiff::Timestamp;
use skiff_queue::{
    Compacted, DeliveryId, DeliveryState, MAX_ERROR_BYTES, MAX_PAYLOAD_BYTES, NewEvent, Queue,
    QueueError, SCHEMA_VERSION,
};

const A: &str = "trigger/default/a";
const B: &str = "trigger/default/b";
const PING: &str = "ping/default/every-minute";
const LEASE: Duration = Duration::from_secs(30);

/// `s` seconds after a fixed origin.
fn t(s: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + s).expect("a valid time")
}

fn open(path: &Path) -> Queue {
    Queue::open(path).unwrap_or_else(|err| panic!("opening {path:?}: {}", chain(&err)))
}

fn temp_queue() -> (tempfile::TempDir, Queue) {
    let dir = tempfile::tempdir().expect("creating a temp dir");
    let queue = open(&dir.path().join("queue.db"));
    (dir, queue)
}

/// An error with its source chain, for assertion messages.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(err) = source {
        out.push_str(": ");
        out.push_str(&err.to_string());
        source = err.source();
    }
    out
}

fn enqueue(
    queue: &Queue,
    payload: &str,
    subscriptions: &[&str],
    now: Timestamp,
) -> Vec<DeliveryId> {
    queue
        .enqueue(payload.as_bytes(), subscriptions, now)
        .expect("enqueue")
}

/// Claims and returns (delivery, payload, attempt) triples.
fn claim(
    queue: &Queue,
    subscription: &str,
    now: Timestamp,
    limit: usize,
) -> Vec<skiff_queue::Claimed> {
    queue.claim(subscription, now, LEASE, limit).expect("claim")
}

fn payloads(claimed: &[skiff_queue::Claimed]) -> Vec<String> {
    claimed
        .iter()
        .map(|c| String::from_utf8(c.payload.clone()).expect("utf-8 payload"))
        .collect()
}

fn is_stale(result: Result<(), QueueError>, want: Option<DeliveryState>) -> bool {
    matches!(result, Err(QueueError::StaleLease { state, .. }) if state == want)
}

#[test]
fn queue_is_send_and_sync() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Queue>();
    shareable::<QueueError>();
}

#[test]
fn enqueue_claim_ack_delivers_each_subscription_once() {
    // One event for two subscriptions is two deliveries; each is claimed once, with its
    // payload and attempt 1, and acked deliveries are gone from the backlog.
    let (_dir, queue) = temp_queue();
    let ids = enqueue(&queue, "hello", &[A, B], t(0));
    assert_eq!(ids.len(), 2);
    assert_ne!(ids[0], ids[1]);
    assert_eq!(queue.depth(A).expect("depth"), 1);
    assert_eq!(queue.depth(B).expect("depth"), 1);

    let got = claim(&queue, A, t(1), 10);
    assert_eq!(payloads(&got), ["hello"]);
    let c = &got[0];
    assert_eq!(c.delivery, ids[0]);
    assert_eq!(c.lease.delivery, ids[0]);
    assert_eq!(c.attempt, 1);
    assert_eq!(c.accepted_at, t(0));
    assert_eq!(c.lease_until, t(1) + LEASE);
    assert_eq!(c.source_key, None);
    // Leased: not claimable again while the lease runs, but still in the backlog.
    assert!(claim(&queue, A, t(2), 10).is_empty());
    assert_eq!(queue.depth(A).expect("depth"), 1);

    queue.ack(&c.lease, t(3)).expect("ack");
    assert_eq!(queue.depth(A).expect("depth"), 0);
    assert!(
        claim(&queue, A, t(1000), 10).is_empty(),
        "done is never redelivered"
    );
    // Acking twice is refused: it is done.
    assert!(is_stale(
        queue.ack(&c.lease, t(4)),
        Some(DeliveryState::Done)
    ));

    // B's delivery of the same event is independent.
    let got = claim(&queue, B, t(5), 10);
    assert_eq!(payloads(&got), ["hello"]);
    assert_eq!(got[0].event, c.event);
    queue.ack(&got[0].lease, t(6)).expect("ack");
    let stats = queue.stats().expect("stats");
    assert_eq!((stats.done, stats.pending(), stats.events), (2, 0, 1));
}

#[test]
fn an_event_for_no_subscription_is_not_stored() {
    let (_dir, queue) = temp_queue();
    assert!(enqueue(&queue, "nobody", &[], t(0)).is_empty());
    let got = queue
        .enqueue_many(
            &[(b"x".to_vec(), vec![]), (b"y".to_vec(), vec![A.to_owned()])],
            t(0),
        )
        .expect("enqueue_many");
    assert_eq!(got.len(), 2);
    assert!(got[0].is_empty());
    assert_eq!(got[1].len(), 1);
    assert_eq!(queue.stats().expect("stats").events, 1);
}

#[test]
fn enqueue_many_is_all_or_nothing() {
    let (_dir, queue) = temp_queue();
    let items: Vec<(Vec<u8>, Vec<String>)> = (0..100)
        .map(|i| {
            (
                format!("e{i}").into_bytes(),
                vec![A.to_owned(), B.to_owned()],
            )
        })
        .collect();
    let ids = queue.enqueue_many(&items, t(0)).expect("enqueue_many");
    assert_eq!(ids.len(), 100);
    assert!(ids.iter().all(|ids| ids.len() == 2));
    let all: BTreeSet<DeliveryId> = ids.iter().flatten().copied().collect();
    assert_eq!(all.len(), 200, "ids are distinct");
    // Claims come back in enqueue order.
    let got = claim(&queue, A, t(0), 1000);
    let want: Vec<String> = (0..100).map(|i| format!("e{i}")).collect();
    assert_eq!(payloads(&got), want);

    // One bad event (a duplicate subscription, an oversized payload) refuses the whole batch.
    let mut bad = items.clone();
    bad[50].1 = vec![A.to_owned(), A.to_owned()];
    assert!(matches!(
        queue.enqueue_many(&bad, t(1)),
        Err(QueueError::InvalidSubscription { .. })
    ));
    let mut bad = items.clone();
    bad[99].0 = vec![0; MAX_PAYLOAD_BYTES + 1];
    assert!(matches!(
        queue.enqueue_many(&bad, t(1)),
        Err(QueueError::PayloadTooLarge { .. })
    ));
    assert_eq!(queue.stats().expect("stats").events, 100);
    assert_eq!(queue.depth(B).expect("depth"), 100);
}

#[test]
fn invalid_events_are_refused_before_anything_is_written() {
    let (_dir, queue) = temp_queue();
    assert!(matches!(
        queue.enqueue(b"x", &[""], t(0)),
        Err(QueueError::InvalidSubscription { .. })
    ));
    let long = "s".repeat(skiff_queue::MAX_SUBSCRIPTION_BYTES + 1);
    assert!(matches!(
        queue.enqueue(b"x", &[long.as_str()], t(0)),
        Err(QueueError::InvalidSubscription { .. })
    ));
    let key = "k".repeat(skiff_queue::MAX_SOURCE_KEY_BYTES + 1);
    assert!(matches!(
        queue.enqueue_events(
            &[NewEvent {
                payload: b"x",
                source_key: Some(&key),
                subscriptions: &[A],
            }],
            t(0)
        ),
        Err(QueueError::SourceKeyTooLong { .. })
    ));
    assert_eq!(queue.stats().expect("stats").events, 0);
    // The largest allowed payload and an empty one are fine, and come back intact.
    let big: Vec<u8> = (0..MAX_PAYLOAD_BYTES).map(|i| (i % 251) as u8).collect();
    queue.enqueue(&big, &[A], t(0)).expect("largest payload");
    queue.enqueue(b"", &[A], t(0)).expect("empty payload");
    let got = claim(&queue, A, t(0), 10);
    assert_eq!(got.len(), 2);
    assert!(got[0].payload == big);
    assert!(got[1].payload.is_empty());
}

#[test]
fn source_key_comes_back_with_claims_and_dead_letters() {
    let (_dir, queue) = temp_queue();
    queue
        .enqueue_events(
            &[NewEvent {
                payload: b"p",
                source_key: Some("pingsource/default/every-minute"),
                subscriptions: &[PING],
            }],
            t(0),
        )
        .expect("enqueue");
    let got = claim(&queue, PING, t(0), 1);
    assert_eq!(
        got[0].source_key.as_deref(),
        Some("pingsource/default/every-minute")
    );
    queue.dead(&got[0].lease, "410 Gone", t(1)).expect("dead");
    let dead = queue.dead_letters(PING, 10).expect("dead letters");
    assert_eq!(
        dead[0].source_key.as_deref(),
        Some("pingsource/default/every-minute")
    );
}

#[test]
fn claim_respects_run_at_limit_and_order() {
    let (_dir, queue) = temp_queue();
    for i in 0..5 {
        enqueue(&queue, &format!("e{i}"), &[A], t(i));
    }
    enqueue(&queue, "other", &[B], t(0));
    // Nothing is due before it was enqueued.
    assert!(claim(&queue, A, t(-1), 10).is_empty());
    // At t(2), e0..e2 are due; the limit takes the oldest two.
    assert_eq!(payloads(&claim(&queue, A, t(2), 2)), ["e0", "e1"]);
    assert_eq!(payloads(&claim(&queue, A, t(2), 10)), ["e2"]);
    assert!(claim(&queue, A, t(2), 10).is_empty());
    assert!(
        claim(&queue, A, t(3), 0).is_empty(),
        "limit 0 claims nothing"
    );
    assert_eq!(payloads(&claim(&queue, A, t(10), 10)), ["e3", "e4"]);
    // Another subscription's deliveries are never mixed in; unknown ones are empty.
    assert_eq!(payloads(&claim(&queue, B, t(10), 10)), ["other"]);
    assert!(claim(&queue, "trigger/default/none", t(10), 10).is_empty());
}

#[test]
fn retried_deliveries_wait_for_their_run_at_and_count_attempts() {
    let (_dir, queue) = temp_queue();
    let id = enqueue(&queue, "flaky", &[A], t(0))[0];
    let first = claim(&queue, A, t(0), 1).remove(0);
    assert_eq!(first.attempt, 1);
    queue
        .retry(&first.lease, t(60), "503 Service Unavailable", t(1))
        .expect("retry");
    // Released: back in the backlog, not due before t(60).
    assert_eq!(queue.depth(A).expect("depth"), 1);
    assert_eq!(queue.next_due(A).expect("next_due"), Some(t(60)));
    assert!(claim(&queue, A, t(59), 10).is_empty());
    // The old lease is spent.
    assert!(is_stale(
        queue.ack(&first.lease, t(2)),
        Some(DeliveryState::Ready)
    ));
    let second = claim(&queue, A, t(60), 10).remove(0);
    assert_eq!(second.delivery, id);
    assert_eq!(second.attempt, 2);
    assert_ne!(second.lease.token, first.lease.token);
    queue
        .retry(&second.lease, t(61), "connection refused", t(61))
        .expect("retry");
    let third = claim(&queue, A, t(61), 10).remove(0);
    assert_eq!(third.attempt, 3);
    queue.ack(&third.lease, t(62)).expect("ack");
}

#[test]
fn an_expired_lease_is_reclaimed_and_the_old_token_refused() {
    // A consumer that dies keeps nothing: when its lease ends the delivery is claimable again
    // with the next attempt number, and the old holder's late ack/retry/dead change nothing.
    let (_dir, queue) = temp_queue();
    let id = enqueue(&queue, "x", &[A], t(0))[0];
    let old = claim(&queue, A, t(0), 1).remove(0);
    assert_eq!(queue.next_due(A).expect("next_due"), Some(t(0) + LEASE));
    // Still leased one microsecond before the lease ends.
    assert!(claim(&queue, A, t(0) + LEASE - Duration::from_micros(1), 10).is_empty());
    let new = claim(&queue, A, t(0) + LEASE, 10).remove(0);
    assert_eq!(new.delivery, id);
    assert_eq!(new.attempt, 2);
    assert_ne!(new.lease, old.lease);

    let leased = Some(DeliveryState::Leased);
    assert!(is_stale(queue.ack(&old.lease, t(40)), leased));
    assert!(is_stale(
        queue.retry(&old.lease, t(50), "late", t(40)),
        leased
    ));
    assert!(is_stale(queue.dead(&old.lease, "late", t(40)), leased));
    let err = queue.ack(&old.lease, t(40)).expect_err("stale");
    assert_eq!(
        err.to_string(),
        format!("the lease on delivery {id} is no longer held (another consumer leased it)")
    );
    // The new holder's lease is intact.
    queue
        .ack(&new.lease, t(41))
        .expect("ack by the current holder");
    assert_eq!(queue.depth(A).expect("depth"), 0);
}

#[test]
fn a_lease_ending_past_the_end_of_time_is_refused() {
    let (_dir, queue) = temp_queue();
    enqueue(&queue, "x", &[A], t(0));
    assert!(matches!(
        queue.claim(A, t(0), Duration::MAX, 1),
        Err(QueueError::TimeOutOfRange { .. })
    ));
    // Nothing was leased.
    assert_eq!(claim(&queue, A, t(0), 1).len(), 1);
}

#[test]
fn a_late_ack_on_an_expired_lease_nobody_took_is_accepted() {
    let (_dir, queue) = temp_queue();
    enqueue(&queue, "x", &[A], t(0));
    let c = claim(&queue, A, t(0), 1).remove(0);
    queue.ack(&c.lease, t(0) + LEASE * 10).expect("late ack");
    assert!(claim(&queue, A, t(10_000), 10).is_empty());
}

#[test]
fn dead_letters_are_kept_and_listed() {
    let (_dir, queue) = temp_queue();
    for i in 0..3 {
        enqueue(&queue, &format!("e{i}"), &[A], t(0));
    }
    let claimed = claim(&queue, A, t(0), 10);
    queue
        .dead(&claimed[0].lease, "400 Bad Request", t(5))
        .expect("dead");
    queue
        .dead(&claimed[2].lease, "exhausted", t(7))
        .expect("dead");
    queue.ack(&claimed[1].lease, t(6)).expect("ack");
    // Dead letters leave the backlog and are never claimed again.
    assert_eq!(queue.depth(A).expect("depth"), 0);
    assert!(claim(&queue, A, t(10_000), 10).is_empty());
    assert!(is_stale(
        queue.ack(&claimed[0].lease, t(8)),
        Some(DeliveryState::Dead)
    ));

    let dead = queue.dead_letters(A, 10).expect("dead letters");
    let summary: Vec<(String, u32, Option<String>, Timestamp)> = dead
        .iter()
        .map(|d| {
            (
                String::from_utf8_lossy(&d.payload).into_owned(),
                d.attempts,
                d.last_error.clone(),
                d.finished_at,
            )
        })
        .collect();
    // Most recent first.
    assert_eq!(
        summary,
        [
            ("e2".to_owned(), 1, Some("exhausted".to_owned()), t(7)),
            ("e0".to_owned(), 1, Some("400 Bad Request".to_owned()), t(5)),
        ]
    );
    assert_eq!(dead[0].delivery, claimed[2].delivery);
    assert_eq!(dead[0].accepted_at, t(0));
    assert_eq!(queue.dead_letters(A, 1).expect("dead letters").len(), 1);
    assert!(queue.dead_letters(B, 10).expect("dead letters").is_empty());
    assert_eq!(queue.stats().expect("stats").dead, 2);

    // A huge error is kept cut, at a character boundary.
    enqueue(&queue, "e3", &[A], t(0));
    let c = claim(&queue, A, t(10), 1).remove(0);
    queue
        .dead(&c.lease, &"é".repeat(MAX_ERROR_BYTES), t(11))
        .expect("dead");
    let error = queue.dead_letters(A, 1).expect("dead letters")[0]
        .last_error
        .clone()
        .expect("an error");
    assert_eq!(error.len(), MAX_ERROR_BYTES);
}

#[test]
fn depths_next_due_and_subscriptions_follow_the_backlog() {
    let (_dir, queue) = temp_queue();
    assert!(queue.depths().expect("depths").is_empty());
    assert!(queue.subscriptions().expect("subscriptions").is_empty());
    assert_eq!(queue.next_due(A).expect("next_due"), None);

    enqueue(&queue, "1", &[A, B], t(10));
    enqueue(&queue, "2", &[A], t(20));
    enqueue(&queue, "3", &[PING], t(30));
    let want: BTreeMap<String, u64> = [(A, 2), (B, 1), (PING, 1)]
        .into_iter()
        .map(|(s, n)| (s.to_owned(), n))
        .collect();
    assert_eq!(queue.depths().expect("depths"), want);
    assert_eq!(queue.subscriptions().expect("subscriptions"), [PING, A, B]);
    assert_eq!(queue.depth("trigger/default/none").expect("depth"), 0);
    assert_eq!(queue.next_due(A).expect("next_due"), Some(t(10)));

    // Claiming leaves the backlog as it is (leased counts), but moves next_due to the lease's
    // end if that is the earliest.
    let c = claim(&queue, A, t(25), 1).remove(0);
    assert_eq!(queue.depth(A).expect("depth"), 2);
    assert_eq!(queue.next_due(A).expect("next_due"), Some(t(20)));
    queue.ack(&c.lease, t(26)).expect("ack");
    let c = claim(&queue, A, t(26), 1).remove(0);
    assert_eq!(queue.next_due(A).expect("next_due"), Some(t(26) + LEASE));
    queue.ack(&c.lease, t(27)).expect("ack");
    assert_eq!(queue.next_due(A).expect("next_due"), None);
    assert_eq!(queue.subscriptions().expect("subscriptions"), [PING, B]);
}

#[test]
fn drop_subscription_removes_only_its_pending_deliveries() {
    let (_dir, queue) = temp_queue();
    let shared = enqueue(&queue, "shared", &[A, B], t(0));
    enqueue(&queue, "only-a", &[A], t(0));
    enqueue(&queue, "leased", &[A], t(0));
    enqueue(&queue, "done", &[A], t(0));
    enqueue(&queue, "dead", &[A], t(0));
    let claimed = claim(&queue, A, t(1), 10);
    assert_eq!(claimed.len(), 5);
    queue.ack(&claimed[3].lease, t(2)).expect("ack");
    queue.dead(&claimed[4].lease, "gone", t(2)).expect("dead");
    // Release two, keep `leased` leased.
    queue
        .retry(&claimed[0].lease, t(3), "x", t(2))
        .expect("retry");
    queue
        .retry(&claimed[1].lease, t(3), "x", t(2))
        .expect("retry");

    assert_eq!(queue.drop_subscription(A).expect("drop"), 3);
    assert_eq!(queue.depth(A).expect("depth"), 0);
    assert!(claim(&queue, A, t(10_000), 10).is_empty());
    // A consumer still holding a dropped lease is told it is gone.
    assert!(is_stale(queue.ack(&claimed[2].lease, t(4)), None));
    // The other subscription still gets the shared event; dead letters stay listable.
    let b = claim(&queue, B, t(5), 10);
    assert_eq!(payloads(&b), ["shared"]);
    assert_eq!(b[0].delivery, shared[1]);
    assert_eq!(queue.dead_letters(A, 10).expect("dead letters").len(), 1);
    // Events only the dropped deliveries needed are gone; `shared`, `done`, `dead` stay.
    assert_eq!(queue.stats().expect("stats").events, 3);
    assert_eq!(queue.drop_subscription(A).expect("drop again"), 0);
}

#[test]
fn compact_deletes_old_done_deliveries_and_keeps_pending_ones() {
    let (_dir, queue) = temp_queue();
    for i in 0..10 {
        enqueue(&queue, &format!("e{i}"), &[A], t(0));
    }
    enqueue(&queue, "pending", &[A, B], t(0));
    let claimed = claim(&queue, A, t(1), 10);
    for (i, c) in claimed.iter().enumerate() {
        queue.ack(&c.lease, t(10 + i as i64)).expect("ack");
    }
    // `pending` is done for A only after this; it is still pending for B.
    let last = claim(&queue, A, t(1), 10).remove(0);
    queue.ack(&last.lease, t(100)).expect("ack");
    enqueue(&queue, "dead", &[PING], t(0));
    let c = claim(&queue, PING, t(1), 1).remove(0);
    queue.dead(&c.lease, "gone", t(2)).expect("dead");

    // Done before t(15): e0..e4, at most 3 per call.
    assert_eq!(
        queue.compact(t(15), 3).expect("compact"),
        Compacted {
            deliveries: 3,
            events: 3,
            more: true
        }
    );
    assert_eq!(
        queue.compact(t(15), 3).expect("compact"),
        Compacted {
            deliveries: 2,
            events: 2,
            more: false
        }
    );
    assert_eq!(
        queue.compact(t(15), 3).expect("compact"),
        Compacted::default()
    );
    // Everything done: the rest of e*, and A's delivery of `pending`, whose event B still needs.
    assert_eq!(
        queue.compact(t(1000), 100).expect("compact"),
        Compacted {
            deliveries: 6,
            events: 5,
            more: false
        }
    );
    let stats = queue.stats().expect("stats");
    assert_eq!(
        (
            stats.ready,
            stats.leased,
            stats.done,
            stats.dead,
            stats.events
        ),
        (1, 0, 0, 1, 2)
    );
    assert_eq!(payloads(&claim(&queue, B, t(2000), 10)), ["pending"]);
    assert_eq!(queue.dead_letters(PING, 10).expect("dead letters").len(), 1);
}

#[test]
fn ids_are_never_reused() {
    let (_dir, queue) = temp_queue();
    let first = enqueue(&queue, "x", &[A], t(0))[0];
    queue.drop_subscription(A).expect("drop");
    let c = claim(&queue, A, t(0), 1);
    assert!(c.is_empty());
    let second = enqueue(&queue, "y", &[A], t(0))[0];
    assert!(second > first, "{second} reuses {first}");
}

#[test]
fn stats_count_states_and_the_oldest_pending_delivery() {
    let (_dir, queue) = temp_queue();
    let stats = queue.stats().expect("stats");
    assert_eq!(stats, skiff_queue::Stats::default());
    assert_eq!(stats.oldest_pending_age(t(0)), None);
    enqueue(&queue, "old", &[A], t(5));
    enqueue(&queue, "new", &[A, B], t(9));
    let c = claim(&queue, A, t(10), 1).remove(0);
    assert_eq!(payloads(std::slice::from_ref(&c)), ["old"]);
    let stats = queue.stats().expect("stats");
    assert_eq!(
        (
            stats.ready,
            stats.leased,
            stats.done,
            stats.dead,
            stats.events
        ),
        (2, 1, 0, 0, 2)
    );
    assert_eq!(stats.total(), 3);
    assert_eq!(stats.oldest_pending, Some(t(5)));
    assert_eq!(
        stats.oldest_pending_age(t(65)),
        Some(Duration::from_secs(60))
    );
    assert_eq!(stats.oldest_pending_age(t(0)), Some(Duration::ZERO));
    queue.ack(&c.lease, t(11)).expect("ack");
    assert_eq!(queue.stats().expect("stats").oldest_pending, Some(t(9)));
}

#[test]
fn reopening_keeps_events_leases_and_dead_letters() {
    let dir = tempfile::tempdir().expect("creating a temp dir");
    // A missing parent directory is created.
    let path = dir.path().join("queue").join("events.db");
    let (leased, dead_id) = {
        let queue = open(&path);
        enqueue(&queue, "ready", &[A], t(0));
        enqueue(&queue, "leased", &[A], t(0));
        enqueue(&queue, "dead", &[B], t(0));
        enqueue(&queue, "later", &[B], t(0));
        let r = claim(&queue, A, t(0), 1).remove(0);
        queue.retry(&r.lease, t(100), "503", t(1)).expect("retry");
        let leased = claim(&queue, A, t(2), 10);
        assert_eq!(payloads(&leased), ["leased"]);
        let d = claim(&queue, B, t(2), 1).remove(0);
        queue.dead(&d.lease, "gone", t(3)).expect("dead");
        queue.close().expect("close");
        assert!(matches!(queue.depths(), Err(QueueError::Closed)));
        assert!(matches!(queue.close(), Err(QueueError::Closed)));
        (leased.into_iter().next().expect("one"), d.delivery)
    };
    // Reopened twice: once after a clean close, once after a drop without close.
    for _ in 0..2 {
        let queue = open(&path);
        assert_eq!(queue.depth(A).expect("depth"), 2);
        assert_eq!(queue.depth(B).expect("depth"), 1);
        assert_eq!(queue.next_due(A).expect("next_due"), Some(t(2) + LEASE));
        assert_eq!(
            queue.dead_letters(B, 10).expect("dead")[0].delivery,
            dead_id
        );
        let stats = queue.stats().expect("stats");
        assert_eq!(
            (stats.ready, stats.leased, stats.dead, stats.events),
            (2, 1, 1, 4)
        );
    }
    let queue = open(&path);
    // The lease survived the restart; its holder can still ack it.
    queue.ack(&leased.lease, t(4)).expect("ack across reopen");
    // Tokens keep increasing across reopen, so the retried delivery gets a new one.
    let again = claim(&queue, A, t(100), 10).remove(0);
    assert_eq!(again.attempt, 2);
    assert!(again.lease.token.get() > leased.lease.token.get());
    assert_eq!(payloads(&claim(&queue, B, t(100), 10)), ["later"]);
}

#[test]
fn a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().expect("creating a temp dir");
    let path = dir.path().join("queue.db");
    drop(open(&path));
    {
        let conn = rusqlite::Connection::open(&path).expect("raw open");
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .expect("bump version");
    }
    let err = Queue::open(&path).expect_err("newer schema");
    assert!(
        matches!(err, QueueError::NewerSchema { found, supported, .. }
            if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
        "{err:?}"
    );
    assert!(err.to_string().contains("a newer skiff wrote it"), "{err}");
}

#[test]
fn foreign_and_damaged_files_are_refused() {
    let dir = tempfile::tempdir().expect("creating a temp dir");
    // Another application's SQLite database.
    let foreign = dir.path().join("foreign.db");
    rusqlite::Connection::open(&foreign)
        .expect("raw open")
        .execute_batch("CREATE TABLE t (x INTEGER)")
        .expect("create");
    assert!(matches!(
        Queue::open(&foreign),
        Err(QueueError::NotAQueue { found: 0, .. })
    ));
    // Not a database at all.
    let text = dir.path().join("text.db");
    std::fs::write(&text, "x".repeat(8192)).expect("write");
    assert!(matches!(
        Queue::open(&text),
        Err(QueueError::NotADatabase { .. })
    ));
    // A queue whose pages were overwritten in the middle.
    let damaged = dir.path().join("damaged.db");
    {
        let queue = open(&damaged);
        let payload = vec![7u8; 64 * 1024];
        for i in 0..20 {
            queue.enqueue(&payload, &[A], t(i)).expect("enqueue");
        }
        queue.close().expect("close");
    }
    let mut bytes = std::fs::read(&damaged).expect("read");
    assert!(bytes.len() > 16 * 4096);
    for b in &mut bytes[4 * 4096..12 * 4096] {
        *b = 0xa5;
    }
    std::fs::write(&damaged, &bytes).expect("write");
    let err = Queue::open(&damaged).expect_err("damaged");
    assert!(
        matches!(
            err,
            QueueError::Corrupt { .. } | QueueError::NotADatabase { .. }
        ),
        "{}",
        chain(&err)
    );
}

#[test]
fn concurrent_enqueues_are_all_stored_with_distinct_ids() {
    // Threads enqueueing at once share group commits; each still gets exactly its own ids,
    // and every event is stored once.
    let (_dir, queue) = temp_queue();
    const THREADS: usize = 8;
    const PER_THREAD: usize = 200;
    let results: Vec<Vec<(usize, Vec<DeliveryId>)>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|thread| {
                let queue = &queue;
                scope.spawn(move || {
                    (0..PER_THREAD)
                        .map(|i| {
                            let n = thread * PER_THREAD + i;
                            let subs: &[&str] = if n.is_multiple_of(2) { &[A] } else { &[A, B] };
                            let ids = if n.is_multiple_of(10) {
                                let items = vec![(n.to_string().into_bytes(), vec![A.to_owned()])];
                                queue
                                    .enqueue_many(&items, t(0))
                                    .expect("enqueue_many")
                                    .remove(0)
                            } else {
                                queue
                                    .enqueue(n.to_string().as_bytes(), subs, t(0))
                                    .expect("enqueue")
                            };
                            (n, ids)
                        })
                        .collect()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("enqueue thread"))
            .collect()
    });
    let mut all = BTreeSet::new();
    let mut by_id = BTreeMap::new();
    for (n, ids) in results.into_iter().flatten() {
        // Odd events go to A and B; even ones (every tenth through enqueue_many) to A.
        let want = if n.is_multiple_of(2) { 1 } else { 2 };
        assert_eq!(ids.len(), want, "event {n}");
        for id in ids {
            assert!(all.insert(id), "{id} handed out twice");
            by_id.insert(id, n);
        }
    }
    let total = THREADS * PER_THREAD;
    let b_count = total / 2;
    assert_eq!(queue.depth(A).expect("depth"), total as u64);
    assert_eq!(queue.depth(B).expect("depth"), b_count as u64);
    // Every delivery of A carries the payload its id was returned for.
    for c in claim(&queue, A, t(1), total) {
        let n = by_id[&c.delivery];
        assert_eq!(c.payload, n.to_string().into_bytes());
    }
}
