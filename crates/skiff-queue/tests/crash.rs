//! Crash tests: a producer and a consumer, each in a child process (this test binary run again
//! with an environment variable, as skiff-store's crash test does), SIGKILLed at random moments.
//!
//! - `kill9_never_loses_an_acknowledged_enqueue`: every event whose `enqueue` returned is in
//!   the file after the kill, byte for byte, with exactly its deliveries; every stored event is
//!   whole (a batch is all there or not at all); every reopen passes `quick_check`.
//! - `kill9_between_claim_and_ack_redelivers`: deliveries a killed consumer had claimed but not
//!   acked are still there, leased, and are claimed again (with a higher attempt) once their
//!   lease has run out; nothing is lost, and everything is finally done. A consumer that
//!   drains the queue before its kill point exits by itself; most cycles must still be killed.
//!
//! Set `SKIFF_QUEUE_CRASH_SEED` to replay a run (the seed is printed).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use skiff_queue::{NewEvent, Queue};

/// Set (to the database path) only in a producer child.
const PRODUCER_ENV: &str = "SKIFF_QUEUE_CRASH_PRODUCER";
/// Set (to the database path) only in a consumer child.
const CONSUMER_ENV: &str = "SKIFF_QUEUE_CRASH_CONSUMER";
/// The first unit a producer child writes.
const START_ENV: &str = "SKIFF_QUEUE_CRASH_START";
/// The consumer child's cycle, which sets its made-up time.
const CYCLE_ENV: &str = "SKIFF_QUEUE_CRASH_CYCLE";
/// After this many claims a consumer child stops before acking and waits to be killed (0:
/// never).
const PAUSE_ENV: &str = "SKIFF_QUEUE_CRASH_PAUSE";
/// Overrides the random seed, to replay a failure.
const SEED_ENV: &str = "SKIFF_QUEUE_CRASH_SEED";

const PRODUCER_CYCLES: usize = 40;
const CONSUMER_CYCLES: usize = 40;
/// A producer child stops by itself after this many units per thread, in case its parent is
/// gone.
const CHILD_MAX_UNITS: u64 = 2_000;
/// The producer's two writer threads, so that group commits happen under the kill too.
const PRODUCER_THREADS: u64 = 2;

const SUBSCRIPTIONS: [&str; 3] = [
    "trigger/default/a",
    "trigger/default/b",
    "ping/default/every-minute",
];
/// The consumer's subscription, and one it never touches.
const CONSUMED: &str = "trigger/default/consumed";
const UNTOUCHED: &str = "trigger/default/untouched";
const EVENTS_TO_CONSUME: u64 = 3_000;
const CONSUMER_LEASE: Duration = Duration::from_secs(60);
/// How a killed child ends.
const SIGKILL: i32 = 9;

/// `s` seconds after a fixed origin.
fn t(s: i64) -> Timestamp {
    Timestamp::from_second(1_700_000_000 + s).expect("a valid time")
}

/// xorshift64*: enough randomness to vary kill points, reproducible from a seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn range(&mut self, low: u64, high: u64) -> u64 {
        low + self.next() % (high - low)
    }
}

fn seed() -> u64 {
    match std::env::var(SEED_ENV) {
        Ok(seed) => seed.parse().expect("SKIFF_QUEUE_CRASH_SEED is a u64"),
        Err(_) => {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
                | 1
        }
    }
}

// ---- What the producer writes: pure functions of the unit and event numbers. ----
//
// The producer writes *units*: a unit is one `enqueue` call (one event) or one batch call
// (several events), so the parent can check that a batch is stored whole or not at all.

/// How many events unit `u` has.
fn unit_size(u: u64) -> u64 {
    if u.is_multiple_of(5) { 2 + u % 7 } else { 1 }
}

/// How unit `u` is enqueued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Enqueue,
    EnqueueMany,
    EnqueueEvents,
}

fn method(u: u64) -> Method {
    match (unit_size(u) > 1, u % 3) {
        (false, 0) | (true, 1) => Method::EnqueueEvents,
        (false, _) => Method::Enqueue,
        (true, _) => Method::EnqueueMany,
    }
}

fn source_key(u: u64) -> Option<String> {
    (method(u) == Method::EnqueueEvents).then(|| format!("source/{}", u % 4))
}

/// The subscriptions of event `e` of unit `u`: one to three, in a rotating order.
fn subscriptions(u: u64, e: u64) -> Vec<&'static str> {
    let mix = u.wrapping_mul(31).wrapping_add(e);
    let count = 1 + (mix % 3) as usize;
    (0..count)
        .map(|i| SUBSCRIPTIONS[(mix as usize / 3 + i) % 3])
        .collect()
}

/// The payload of event `e` of unit `u`: a header naming it, then a body that differs per
/// event. Mostly small; one in 64 is 256 KiB to 1 MiB, spilling over many pages.
fn payload(u: u64, e: u64) -> Vec<u8> {
    let mut rng = Rng::new(u.wrapping_mul(1_000_003).wrapping_add(e));
    let len = if rng.next().is_multiple_of(64) {
        rng.range(256 * 1024, 1024 * 1024 + 1)
    } else {
        rng.range(16, 8193)
    } as usize;
    let pattern: Vec<u8> = (0..256).map(|_| rng.next() as u8).collect();
    let mut out = format!("u={u};e={e};len={len};").into_bytes();
    out.extend(pattern.iter().cycle().take(len));
    out
}

/// Reads `(u, e)` back from a payload's header.
fn header(payload: &[u8]) -> Option<(u64, u64)> {
    let mut fields = payload.split(|b| *b == b';');
    let mut field = |name: &str| -> Option<u64> {
        std::str::from_utf8(fields.next()?)
            .ok()?
            .strip_prefix(name)?
            .parse()
            .ok()
    };
    Some((field("u=")?, field("e=")?))
}

fn describe(payload: &[u8]) -> String {
    let text = String::from_utf8_lossy(&payload[..payload.len().min(40)]).into_owned();
    format!("{} bytes starting {text:?}", payload.len())
}

/// Enqueues unit `u` with its method; returns each event's delivery ids.
fn enqueue_unit(queue: &Queue, u: u64) -> Vec<Vec<i64>> {
    let now = t(u as i64);
    let events: Vec<(Vec<u8>, Vec<&str>)> = (0..unit_size(u))
        .map(|e| (payload(u, e), subscriptions(u, e)))
        .collect();
    let ids = match method(u) {
        Method::Enqueue => {
            let (payload, subs) = &events[0];
            vec![queue.enqueue(payload, subs, now).expect("child enqueue")]
        }
        Method::EnqueueMany => {
            let items: Vec<(Vec<u8>, Vec<String>)> = events
                .iter()
                .map(|(p, s)| (p.clone(), s.iter().map(|s| (*s).to_owned()).collect()))
                .collect();
            queue.enqueue_many(&items, now).expect("child enqueue_many")
        }
        Method::EnqueueEvents => {
            let key = source_key(u);
            let new: Vec<NewEvent<'_>> = events
                .iter()
                .map(|(payload, subscriptions)| NewEvent {
                    payload,
                    source_key: key.as_deref(),
                    subscriptions,
                })
                .collect();
            queue
                .enqueue_events(&new, now)
                .expect("child enqueue_events")
        }
    };
    ids.into_iter()
        .map(|ids| ids.into_iter().map(|id| id.get()).collect())
        .collect()
}

#[test]
fn crash_child_producer() {
    // Runs only as the child of `kill9_never_loses_an_acknowledged_enqueue` (a no-op
    // otherwise): two threads enqueue units and print `ACK u e id,id,…` for each event once
    // the call that stored it has returned.
    let Some(path) = std::env::var_os(PRODUCER_ENV) else {
        return;
    };
    let start: u64 = std::env::var(START_ENV)
        .expect("start unit")
        .parse()
        .expect("a number");
    let queue = Queue::open(Path::new(&path)).expect("child open");
    std::thread::scope(|scope| {
        for thread in 0..PRODUCER_THREADS {
            let queue = &queue;
            scope.spawn(move || {
                for i in 0..CHILD_MAX_UNITS {
                    let u = start + i * PRODUCER_THREADS + thread;
                    let ids = enqueue_unit(queue, u);
                    let mut out = std::io::stdout().lock();
                    for (e, ids) in ids.iter().enumerate() {
                        let ids: Vec<String> = ids.iter().map(i64::to_string).collect();
                        if writeln!(out, "ACK {u} {e} {}", ids.join(","))
                            .and_then(|()| out.flush())
                            .is_err()
                        {
                            // The parent is gone; stop writing.
                            return;
                        }
                    }
                }
            });
        }
    });
}

#[test]
fn crash_child_consumer() {
    // Runs only as the child of `kill9_between_claim_and_ack_redelivers` (a no-op
    // otherwise): claims small batches of CONSUMED, printing `CLAIM id attempt` once the
    // claim returned and `ACK id` once each ack returned; with PAUSE_ENV it stops after that
    // many claims, before acking, until it is killed. Exits when nothing is left to claim.
    let Some(path) = std::env::var_os(CONSUMER_ENV) else {
        return;
    };
    let number = |name: &str| -> u64 {
        std::env::var(name)
            .unwrap_or_else(|_| panic!("{name} is set"))
            .parse()
            .expect("a number")
    };
    let cycle = number(CYCLE_ENV);
    let pause = number(PAUSE_ENV);
    let queue = Queue::open(Path::new(&path)).expect("child open");
    let mut rng = Rng::new(cycle);
    let mut out = std::io::stdout().lock();
    // Each cycle runs an hour of made-up time after the last, so every lease an earlier child
    // held has expired; within a cycle the clock moves a millisecond per call.
    let mut now = t(3600 * (cycle as i64 + 1));
    let mut claims = 0;
    loop {
        now += Duration::from_millis(1);
        let limit = rng.range(1, 9) as usize;
        let claimed = queue
            .claim(CONSUMED, now, CONSUMER_LEASE, limit)
            .expect("child claim");
        if claimed.is_empty() {
            writeln!(out, "DRAINED").expect("stdout");
            return;
        }
        for c in &claimed {
            writeln!(out, "CLAIM {} {}", c.delivery, c.attempt).expect("stdout");
        }
        out.flush().expect("stdout");
        claims += 1;
        if claims == pause {
            writeln!(out, "PAUSED").expect("stdout");
            out.flush().expect("stdout");
            // Wait for the SIGKILL: the parent never writes, and keeps the pipe open.
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
            panic!("the parent closed stdin instead of killing the consumer");
        }
        for c in &claimed {
            now += Duration::from_millis(1);
            queue.ack(&c.lease, now).expect("child ack");
            if writeln!(out, "ACK {}", c.delivery)
                .and_then(|()| out.flush())
                .is_err()
            {
                return;
            }
        }
    }
}

/// Kills the child if the test fails before it does.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A running child and its stdout lines.
struct Running {
    child: KillOnDrop,
    lines: mpsc::Receiver<String>,
    reader: std::thread::JoinHandle<()>,
    /// Kept open so that a paused consumer waits instead of reading end-of-file.
    _stdin: Option<ChildStdin>,
}

/// Runs this test binary's `helper` test with `env`, collecting its stdout lines on a thread
/// (so the parent can stop at a deadline; lines written just before the kill still arrive).
fn spawn(helper: &str, env: &[(&str, &str)]) -> Running {
    let exe = std::env::current_exe().expect("locating the test binary");
    let mut command = Command::new(exe);
    command
        .args(["--exact", helper, "--nocapture", "--test-threads=1"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = KillOnDrop(command.spawn().expect("spawning the child"));
    let stdout = child.0.stdout.take().expect("piped stdout");
    let stdin = child.0.stdin.take();
    let (tx, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            match stdout.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            // libtest prints `test <name> ... ` without a newline, so the first line of ours
            // may follow it; a line cut by the kill has no newline and is not ours to count.
            let Some(ours) = ["ACK ", "CLAIM ", "PAUSED", "DRAINED"]
                .iter()
                .filter_map(|tag| line.find(tag))
                .min()
                .and_then(|at| line[at..].strip_suffix('\n'))
            else {
                continue;
            };
            if tx.send(ours.to_owned()).is_err() {
                break;
            }
        }
    });
    Running {
        child,
        lines,
        reader,
        _stdin: stdin,
    }
}

impl Running {
    /// SIGKILLs the child and returns the lines it printed that were not read yet.
    fn kill(mut self, cycle: usize) -> Vec<String> {
        self.child.0.kill().expect("SIGKILL the child");
        let status = self.child.0.wait().expect("reaping the child");
        assert!(!status.success(), "cycle {cycle}: the child was not killed");
        self.reader.join().expect("stdout reader");
        self.lines.try_iter().collect()
    }

    /// SIGKILLs the child unless it has exited already (then, unreaped, it keeps its pid and
    /// its own status); returns its status and the lines that were not read yet.
    fn stop(mut self) -> (ExitStatus, Vec<String>) {
        self.child.0.kill().expect("SIGKILL the child");
        let status = self.child.0.wait().expect("reaping the child");
        self.reader.join().expect("stdout reader");
        (status, self.lines.try_iter().collect())
    }

    /// Waits for the child to exit by itself; returns its status and every line.
    fn finish(mut self) -> (ExitStatus, Vec<String>) {
        // The reader stops at end-of-file, which comes when the child exits.
        let lines = self.lines.iter().collect();
        self.reader.join().expect("stdout reader");
        let status = self.child.0.wait().expect("reaping the child");
        (status, lines)
    }
}

/// When a cycle's child is killed.
#[derive(Debug, Clone, Copy)]
enum KillAt {
    /// After the parent has read this many lines.
    Lines(u64),
    /// This many milliseconds after spawning: sometimes while opening.
    Millis(u64),
}

/// Reads the child's lines until `kill_at`, or until it exits by itself (then `true`).
fn read_until(running: &Running, kill_at: KillAt, spawned: Instant) -> (Vec<String>, bool) {
    let mut lines = Vec::new();
    match kill_at {
        KillAt::Lines(target) => {
            while (lines.len() as u64) < target {
                match running.lines.recv() {
                    Ok(line) => lines.push(line),
                    Err(_) => return (lines, true),
                }
            }
        }
        KillAt::Millis(ms) => {
            let deadline = spawned + Duration::from_millis(ms);
            loop {
                let now = Instant::now();
                if now >= deadline {
                    break;
                }
                match running.lines.recv_timeout(deadline - now) {
                    Ok(line) => lines.push(line),
                    Err(mpsc::RecvTimeoutError::Timeout) => break,
                    Err(mpsc::RecvTimeoutError::Disconnected) => return (lines, true),
                }
            }
        }
    }
    (lines, false)
}

/// The last few lines, for a failure message.
fn last_lines(lines: &[String]) -> &[String] {
    &lines[lines.len().saturating_sub(3)..]
}

fn open(path: &Path, context: &str) -> Queue {
    Queue::open(path).unwrap_or_else(|err| {
        let mut message = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(err) = source {
            message.push_str(&format!(": {err}"));
            source = err.source();
        }
        panic!("{context}: reopening after SIGKILL failed: {message}")
    })
}

/// `PRAGMA integrity_check` (thorough, unlike open's quick_check) on a raw connection.
fn integrity_check(conn: &rusqlite::Connection, context: &str) {
    let mut problems = Vec::new();
    conn.pragma_query(None, "integrity_check", |row| {
        problems.push(row.get::<_, String>(0)?);
        Ok(())
    })
    .expect("integrity_check");
    assert_eq!(problems, ["ok"], "{context}: integrity_check");
}

/// What the producer test knows is stored.
#[derive(Default)]
struct Stored {
    /// Units found in the file, with their events' delivery ids by event number.
    units: BTreeMap<u64, BTreeMap<u64, Vec<i64>>>,
    /// Events already checked byte for byte (by event id).
    checked_up_to: i64,
    events: u64,
    deliveries: BTreeMap<&'static str, u64>,
}

/// A stored delivery: id, subscription, state, attempt, due_at.
type DeliveryRow = (i64, String, String, i64, i64);

/// Checks the events added since the last call, and that they form whole units.
fn check_new_events(conn: &rusqlite::Connection, stored: &mut Stored, context: &str) {
    let mut deliveries: HashMap<i64, Vec<DeliveryRow>> = HashMap::new();
    {
        let mut stmt = conn
            .prepare(
                "SELECT event_id, id, subscription, state, attempt, due_at FROM deliveries
                 WHERE event_id > ?1 ORDER BY id",
            )
            .expect("prepare");
        let rows = stmt
            .query_map([stored.checked_up_to], |row| {
                Ok((
                    row.get::<_, i64>(0)?,
                    (
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                        row.get(5)?,
                    ),
                ))
            })
            .expect("query deliveries");
        for row in rows {
            let (event, delivery) = row.expect("delivery row");
            deliveries.entry(event).or_default().push(delivery);
        }
    }
    let mut stmt = conn
        .prepare(
            "SELECT id, accepted_at, source_key, payload FROM events WHERE id > ?1 ORDER BY id",
        )
        .expect("prepare");
    let mut rows = stmt.query([stored.checked_up_to]).expect("query events");
    let mut new_units = BTreeSet::new();
    while let Some(row) = rows.next().expect("event row") {
        let id: i64 = row.get(0).expect("id");
        let accepted_at: i64 = row.get(1).expect("accepted_at");
        let key: Option<String> = row.get(2).expect("source_key");
        let body: Vec<u8> = row.get(3).expect("payload");
        let (u, e) = header(&body)
            .unwrap_or_else(|| panic!("{context}: event {id} is damaged: {}", describe(&body)));
        assert!(
            body == payload(u, e),
            "{context}: event {id} (unit {u} event {e}) is damaged: {}",
            describe(&body)
        );
        assert_eq!(
            accepted_at,
            t(u as i64).as_microsecond(),
            "{context}: event {id}"
        );
        assert_eq!(key, source_key(u), "{context}: source key of event {id}");
        let rows = deliveries.remove(&id).unwrap_or_default();
        let subs: Vec<&str> = rows.iter().map(|(_, s, _, _, _)| s.as_str()).collect();
        assert_eq!(
            subs,
            subscriptions(u, e),
            "{context}: deliveries of event {id}"
        );
        for (delivery, _, state, attempt, due_at) in &rows {
            assert_eq!(
                (state.as_str(), *attempt, *due_at),
                ("ready", 0, accepted_at),
                "{context}: delivery {delivery}"
            );
        }
        let unit = stored.units.entry(u).or_default();
        assert!(
            unit.insert(e, rows.iter().map(|(d, ..)| *d).collect())
                .is_none(),
            "{context}: unit {u} event {e} is stored twice"
        );
        new_units.insert(u);
        stored.checked_up_to = id;
        stored.events += 1;
        for sub in subscriptions(u, e) {
            *stored.deliveries.entry(sub).or_default() += 1;
        }
    }
    assert!(
        deliveries.is_empty(),
        "{context}: deliveries of missing events: {deliveries:?}"
    );
    // A unit is one transaction: all its events or none.
    for u in new_units {
        let events: Vec<u64> = stored.units[&u].keys().copied().collect();
        let want: Vec<u64> = (0..unit_size(u)).collect();
        assert_eq!(events, want, "{context}: unit {u} is stored in part");
    }
}

#[test]
fn kill9_never_loses_an_acknowledged_enqueue() {
    let seed = seed();
    eprintln!("producer crash test seed {seed} (replay with {SEED_ENV}={seed})");
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().expect("creating a temp dir");
    let db = dir.path().join("broker").join("queue.db");
    let db_text = db.to_str().expect("a UTF-8 temp path").to_owned();
    let started = Instant::now();

    let mut stored = Stored::default();
    let mut next_unit = 0u64;
    let (mut total_acks, mut killed_before_first_ack) = (0u64, 0u64);
    for cycle in 0..PRODUCER_CYCLES {
        let kill_at = if rng.next().is_multiple_of(2) {
            KillAt::Lines(rng.range(1, 80))
        } else {
            KillAt::Millis(rng.range(1, 80))
        };
        let context = format!("cycle {cycle} ({kill_at:?})");
        let start = next_unit.to_string();
        let spawned = Instant::now();
        let running = spawn(
            "crash_child_producer",
            &[(PRODUCER_ENV, &db_text), (START_ENV, &start)],
        );
        let (mut lines, exited) = read_until(&running, kill_at, spawned);
        assert!(
            !exited,
            "{context}: the child exited before being killed; last lines {:?}",
            last_lines(&lines)
        );
        lines.extend(running.kill(cycle));

        // Every acknowledged event: (unit, event, delivery ids).
        let acks: Vec<(u64, u64, Vec<i64>)> = lines
            .iter()
            .map(|line| {
                let mut fields = line
                    .strip_prefix("ACK ")
                    .unwrap_or_else(|| panic!("{context}: unexpected line {line:?}"))
                    .split(' ');
                let mut number = || -> u64 {
                    fields
                        .next()
                        .and_then(|f| f.parse().ok())
                        .unwrap_or_else(|| panic!("malformed ack {line:?}"))
                };
                let (u, e) = (number(), number());
                let ids = fields
                    .next()
                    .unwrap_or_default()
                    .split(',')
                    .map(|id| id.parse().expect("a delivery id"))
                    .collect();
                (u, e, ids)
            })
            .collect();
        total_acks += acks.len() as u64;
        if acks.is_empty() {
            killed_before_first_ack += 1;
        }

        // Reopening runs quick_check; the queue's own counts must agree with the rows.
        let queue = open(&db, &context);
        let conn = rusqlite::Connection::open(&db).expect("raw open");
        check_new_events(&conn, &mut stored, &context);
        for (u, e, ids) in &acks {
            assert!(*u >= next_unit, "{context}: ack of an old unit {u}");
            let got = stored
                .units
                .get(u)
                .and_then(|unit| unit.get(e))
                .unwrap_or_else(|| panic!("{context}: acknowledged unit {u} event {e} is lost"));
            assert_eq!(got, ids, "{context}: delivery ids of unit {u} event {e}");
        }
        let stats = queue.stats().expect("stats");
        assert_eq!(stats.events, stored.events, "{context}: events");
        assert_eq!(
            stats.ready,
            stored.deliveries.values().sum::<u64>(),
            "{context}: ready deliveries"
        );
        let depths = queue.depths().expect("depths");
        for (sub, count) in &stored.deliveries {
            assert_eq!(depths.get(*sub), Some(count), "{context}: depth of {sub}");
        }
        next_unit = stored
            .units
            .keys()
            .next_back()
            .map_or(next_unit, |u| (u + 1).max(next_unit));
        drop(conn);
        // Alternate between leaving the WAL for the next writer and checkpointing it.
        if cycle.is_multiple_of(2) {
            queue.close().expect("closing after verification");
        }
    }

    // Finally, the whole file: a thorough integrity check and every event again.
    let conn = rusqlite::Connection::open(&db).expect("raw open");
    integrity_check(&conn, "after the last cycle");
    let mut again = Stored::default();
    check_new_events(&conn, &mut again, "final check");
    assert_eq!(again.units, stored.units);
    eprintln!(
        "producer crash test: {PRODUCER_CYCLES} SIGKILL cycles ({killed_before_first_ack} before \
         the first ack), {total_acks} acknowledged events verified, {} events in {} units stored, \
         in {:?}",
        stored.events,
        stored.units.len(),
        started.elapsed()
    );
}

#[test]
fn kill9_between_claim_and_ack_redelivers() {
    let seed = seed();
    eprintln!("consumer crash test seed {seed} (replay with {SEED_ENV}={seed})");
    let mut rng = Rng::new(seed);
    let dir = tempfile::tempdir().expect("creating a temp dir");
    let db = dir.path().join("queue.db");
    let db_text = db.to_str().expect("a UTF-8 temp path").to_owned();
    let started = Instant::now();

    let all: BTreeSet<i64> = {
        let queue = Queue::open(&db).expect("open");
        let items: Vec<(Vec<u8>, Vec<String>)> = (0..EVENTS_TO_CONSUME)
            .map(|n| {
                (
                    format!("event {n}").into_bytes(),
                    vec![CONSUMED.to_owned(), UNTOUCHED.to_owned()],
                )
            })
            .collect();
        let ids = queue.enqueue_many(&items, t(0)).expect("enqueue");
        queue.close().expect("close");
        ids.iter().map(|ids| ids[0].get()).collect()
    };

    // What the children reported: each delivery's claims (cycle, attempt), and the acks.
    let mut claims: BTreeMap<i64, Vec<(usize, u32)>> = BTreeMap::new();
    let mut acked: BTreeSet<i64> = BTreeSet::new();
    // Deliveries left leased by a killed child: they must be claimed again later.
    let mut left_leased: BTreeMap<i64, usize> = BTreeMap::new();
    // Cycles whose child was SIGKILLed, and those whose child drained the queue first.
    let (mut paused_kills, mut timed_kills, mut drained_early) = (0u64, 0u64, 0u64);
    for cycle in 0..=CONSUMER_CYCLES {
        // The last cycle is never killed: it drains what is left, including the deliveries
        // killed children left leased. Kill points are bounded so that the queue usually
        // outlasts the other cycles (a child that drains it exits before its kill point).
        let last = cycle == CONSUMER_CYCLES;
        let (kill_at, pause) = match rng.next() % 3 {
            _ if last => (None, 0),
            0 => (Some(KillAt::Millis(rng.range(1, 30))), 0),
            1 => (Some(KillAt::Lines(rng.range(1, 100))), 0),
            _ => (None, rng.range(1, 6)),
        };
        let context = format!("cycle {cycle} (kill {kill_at:?}, pause {pause})");
        let spawned = Instant::now();
        let cycle_text = cycle.to_string();
        let pause_text = pause.to_string();
        let running = spawn(
            "crash_child_consumer",
            &[
                (CONSUMER_ENV, &db_text),
                (CYCLE_ENV, &cycle_text),
                (PAUSE_ENV, &pause_text),
            ],
        );
        let (status, lines) = match kill_at {
            Some(kill_at) => {
                let (mut lines, _) = read_until(&running, kill_at, spawned);
                let (status, rest) = running.stop();
                lines.extend(rest);
                (status, lines)
            }
            None if pause > 0 => {
                // Killed between claim and ack: after its claim printed PAUSED (or it exits
                // first, if nothing was left to claim).
                let mut lines = Vec::new();
                while let Ok(line) = running.lines.recv() {
                    let paused = line == "PAUSED";
                    lines.push(line);
                    if paused {
                        break;
                    }
                }
                let (status, rest) = running.stop();
                lines.extend(rest);
                (status, lines)
            }
            None => running.finish(),
        };
        // SIGKILLed, or exited by itself having drained the queue; anything else fails.
        let killed = status.signal() == Some(SIGKILL);
        if !killed {
            assert!(
                status.success() && lines.last().map(String::as_str) == Some("DRAINED"),
                "{context}: the child exited ({status}) before being killed, without draining; \
                 last lines {:?}",
                last_lines(&lines)
            );
        }
        match (killed, pause) {
            _ if last => assert!(!killed, "{context}: the draining consumer was killed"),
            (true, 0) => timed_kills += 1,
            (true, _) => paused_kills += 1,
            (false, _) => drained_early += 1,
        }

        // Claims and acks of this cycle, in the order printed.
        let mut in_flight: BTreeSet<i64> = BTreeSet::new();
        for line in &lines {
            let mut fields = line.split(' ');
            match fields.next() {
                Some("CLAIM") => {
                    let id: i64 = fields.next().and_then(|f| f.parse().ok()).expect("id");
                    let attempt: u32 = fields.next().and_then(|f| f.parse().ok()).expect("n");
                    assert!(
                        all.contains(&id),
                        "{context}: claimed unknown delivery {id}"
                    );
                    assert!(!acked.contains(&id), "{context}: redelivered acked {id}");
                    let earlier = claims.entry(id).or_default();
                    if let Some((_, previous)) = earlier.last() {
                        assert!(attempt > *previous, "{context}: attempt of {id} went back");
                    }
                    earlier.push((cycle, attempt));
                    left_leased.remove(&id);
                    in_flight.insert(id);
                }
                Some("ACK") => {
                    let id: i64 = fields.next().and_then(|f| f.parse().ok()).expect("id");
                    assert!(in_flight.remove(&id), "{context}: ack of unclaimed {id}");
                    acked.insert(id);
                }
                Some("PAUSED" | "DRAINED") => {}
                _ => panic!("{context}: unexpected line {line:?}"),
            }
        }
        if !killed {
            assert!(
                in_flight.is_empty(),
                "{context}: drained with {in_flight:?} unacked"
            );
        }

        // After the cycle: nothing is lost, acked deliveries are done, and the deliveries a
        // killed child held are still leased (or done, if its ack committed but was not
        // printed).
        let queue = open(&db, &context);
        let conn = rusqlite::Connection::open(&db).expect("raw open");
        let mut states: BTreeMap<i64, (String, i64, i64)> = BTreeMap::new();
        {
            let mut stmt = conn
                .prepare(
                    "SELECT id, state, attempt, due_at FROM deliveries WHERE subscription = ?1",
                )
                .expect("prepare");
            let rows = stmt
                .query_map([CONSUMED], |row| {
                    Ok((row.get(0)?, (row.get(1)?, row.get(2)?, row.get(3)?)))
                })
                .expect("query");
            for row in rows {
                let (id, state) = row.expect("row");
                states.insert(id, state);
            }
        }
        let ids: BTreeSet<i64> = states.keys().copied().collect();
        assert_eq!(ids, all, "{context}: deliveries lost or invented");
        for id in &acked {
            assert_eq!(states[id].0, "done", "{context}: acked {id} is not done");
        }
        let child_now = t(3600 * (cycle as i64 + 1));
        for id in &in_flight {
            let (state, attempt, due_at) = &states[id];
            let claimed_attempt = claims[id].last().map(|(_, a)| *a).unwrap_or(0);
            assert_eq!(
                *attempt,
                i64::from(claimed_attempt),
                "{context}: attempt of {id}"
            );
            match state.as_str() {
                "leased" => {
                    // Leased for the consumer's lease from its (made-up) claim time.
                    let lease_end = Timestamp::from_microsecond(*due_at).expect("time");
                    assert!(
                        lease_end > child_now + CONSUMER_LEASE,
                        "{context}: lease of {id}"
                    );
                    left_leased.insert(*id, cycle);
                }
                "done" => {}
                other => panic!("{context}: in-flight {id} is {other}"),
            }
        }
        for (id, (state, ..)) in &states {
            if !acked.contains(id) && !in_flight.contains(id) && state == "done" {
                // Acked by an earlier child whose print was cut by the kill.
                assert!(
                    claims.contains_key(id),
                    "{context}: {id} done, never claimed"
                );
            }
        }
        if !killed {
            // Nothing was left to claim: every delivery is done, and none is left leased.
            assert!(
                states.values().all(|(state, ..)| state == "done"),
                "{context}: drained, but not everything is done"
            );
            assert!(
                left_leased.is_empty(),
                "{context}: drained, but {left_leased:?} leased"
            );
        }
        let untouched = queue.depth(UNTOUCHED).expect("depth");
        assert_eq!(
            untouched, EVENTS_TO_CONSUME,
            "{context}: untouched subscription"
        );
        drop(conn);
        if cycle.is_multiple_of(2) {
            queue.close().expect("close");
        }
    }

    // Everything was delivered, at least once; every delivery a killed child left leased was
    // claimed again by a later child, with a higher attempt.
    let queue = Queue::open(&db).expect("open");
    assert_eq!(queue.depth(CONSUMED).expect("depth"), 0);
    assert!(left_leased.is_empty(), "never redelivered: {left_leased:?}");
    let redelivered = claims.values().filter(|c| c.len() > 1).count();
    for (id, history) in &claims {
        let cycles: BTreeSet<usize> = history.iter().map(|(c, _)| *c).collect();
        assert_eq!(
            cycles.len(),
            history.len(),
            "{id} claimed twice in one cycle: {history:?}"
        );
    }
    assert_eq!(claims.len(), all.len(), "every delivery was claimed");
    assert!(paused_kills > 0, "no kill landed between claim and ack");
    assert!(redelivered > 0, "no delivery was redelivered");
    // Most cycles must really be killed, not end early because the queue ran dry.
    assert!(
        paused_kills + timed_kills >= CONSUMER_CYCLES as u64 / 2,
        "only {} of {CONSUMER_CYCLES} cycles were killed ({drained_early} drained the queue \
         first)",
        paused_kills + timed_kills
    );
    let stats = queue.stats().expect("stats");
    assert_eq!(stats.done, EVENTS_TO_CONSUME);
    eprintln!(
        "consumer crash test: {CONSUMER_CYCLES} cycles ({paused_kills} SIGKILLed between claim \
         and ack, {timed_kills} at random, {drained_early} drained the queue first), {} \
         deliveries done, {redelivered} redelivered after their lease, in {:?}",
        stats.done,
        started.elapsed()
    );
}
