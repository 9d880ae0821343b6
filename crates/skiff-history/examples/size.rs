//! How big a full history gets, and how long a flush takes.
//!
//! ```text
//! cargo run -p skiff-history --example size --release -- [SERVICES]
//! ```
//!
//! Fills a history in a temporary directory with SERVICES Services (default 100) of one
//! revision each, every one busy all the time (every field of every sample non-zero), in
//! simulated time:
//!
//! 1. from 37 to 2 days before the end, one sample per Service per 5 min, worth 30 busy 10 s
//!    intervals, recorded late (most of them go straight into 5 min rows);
//! 2. two days of live operation: every 10 s, one sample per Service and a flush. During the
//!    second day the first day's 10 s rows are rolled up and the 5 min rows older than 35 days
//!    expire, as in a daemon that has run for more than 35 days.
//!
//! The end state is the steady state: 24 h of 10 s rows and 34 days of 5 min rows per Service.
//! It prints the rows, the bytes on disk per Service, the flush times of the second day and
//! the times of a few queries.
#![forbid(unsafe_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use skiff_history::{
    COARSE_STEP_SECS, FILE_NAME, FINE_STEP_SECS, History, HistoryError, Sample, SeriesKey,
    ServiceKey,
};

const DAY: i64 = 86_400;
/// The simulated end of the run: a multiple of 300 s.
const END: i64 = 1_699_999_800 + 40 * DAY;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let services: u64 = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 100,
    };
    let dir = tempfile::tempdir()?;
    let keys: Vec<SeriesKey> = (0..services)
        .map(|i| {
            SeriesKey::new(
                "default",
                format!("service-{i:04}"),
                format!("service-{i:04}-00001"),
            )
        })
        .collect();
    let mut history = History::open(dir.path())?;

    let started = Instant::now();
    prefill_5_min(&mut history, &keys)?;
    println!(
        "filled 35 days of 5 min samples in {:.1?}",
        started.elapsed()
    );

    let started = Instant::now();
    let steady = live(&mut history, &keys)?;
    println!("ran 2 days of 10 s flushes in {:.1?}", started.elapsed());
    if let Some(written) = steady.written {
        println!(
            "written during the second day (write(2): WAL appends and checkpoints): \
             {:.1} MiB, {:.0} KiB per flush",
            mib(written),
            written as f64 / 1024.0 / steady.flushes.len() as f64
        );
    }

    report(&history, dir.path(), services)?;
    row_sizes(dir.path())?;
    flush_times(services, &steady.flushes);
    queries(&history, &keys[0])?;
    drop(history);
    let started = Instant::now();
    History::open(dir.path())?;
    println!(
        "reopening (with PRAGMA quick_check): {:.1?}",
        started.elapsed()
    );
    Ok(())
}

/// Records one sample per Service per 5 min, each worth 30 busy 10 s intervals, from 37 to 2
/// days before [`END`], at `END - 2 days`.
fn prefill_5_min(history: &mut History, keys: &[SeriesKey]) -> Result<(), HistoryError> {
    let now = END - 2 * DAY;
    // The first flush sets the roll-up boundary to `now - 24 h`: earlier samples are late.
    history.flush(now)?;
    let windows: Vec<i64> = (END - 37 * DAY..now)
        .step_by(COARSE_STEP_SECS as usize)
        .collect();
    for day in windows.chunks(288) {
        for &t in day {
            for (i, key) in keys.iter().enumerate() {
                let mut sample = Sample::default();
                for k in 0..30 {
                    sample.add(&busy(i as u64, t + 10 * k));
                }
                history.record(key, t, &sample);
            }
        }
        history.flush(now)?;
    }
    Ok(())
}

/// The second day of [`live`].
struct Steady {
    /// Each flush: how long it took and whether it rolled up.
    flushes: Vec<(Duration, bool)>,
    /// Bytes the process wrote meanwhile, where `/proc/self/io` tells.
    written: Option<u64>,
}

/// Records and flushes every 10 s for the two days before [`END`], and measures the second.
fn live(history: &mut History, keys: &[SeriesKey]) -> Result<Steady, HistoryError> {
    let mut flushes = Vec::new();
    let mut written_before = None;
    for t in (END - 2 * DAY..END).step_by(FINE_STEP_SECS as usize) {
        if t == END - DAY {
            written_before = bytes_written();
        }
        for (i, key) in keys.iter().enumerate() {
            history.record(key, t, &busy(i as u64, t));
        }
        let started = Instant::now();
        let flushed = history.flush(t + FINE_STEP_SECS)?;
        if t >= END - DAY {
            flushes.push((started.elapsed(), flushed.rolled_up > 0));
        }
    }
    let written = bytes_written().zip(written_before).map(|(a, b)| a - b);
    Ok(Steady { flushes, written })
}

/// Bytes this process has passed to write(2) and friends (Linux only).
fn bytes_written() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines()
        .find_map(|line| line.strip_prefix("wchar: "))
        .and_then(|n| n.trim().parse().ok())
}

fn report(history: &History, dir: &Path, services: u64) -> Result<(), HistoryError> {
    let stats = history.stats()?;
    let wal = std::fs::metadata(dir.join(format!("{FILE_NAME}-wal"))).map_or(0, |m| m.len());
    println!(
        "{services} services: {} rows at 10 s, {} rows at 5 min ({} and {} per service)",
        stats.rows_10s,
        stats.rows_5m,
        stats.rows_10s / services,
        stats.rows_5m / services,
    );
    println!(
        "database: {:.1} MiB ({:.1} MiB free pages), WAL file {:.1} MiB",
        mib(stats.bytes),
        mib(stats.free_bytes),
        mib(wal)
    );
    let rows = (stats.rows_10s + stats.rows_5m).max(1);
    println!(
        "per service: {:.2} MiB on disk, {} bytes per row (all overhead included)",
        mib(stats.bytes / services),
        stats.bytes / rows
    );
    Ok(())
}

/// The average encoded sample, read straight from the file.
fn row_sizes(dir: &Path) -> rusqlite::Result<()> {
    let conn = rusqlite::Connection::open_with_flags(
        dir.join(FILE_NAME),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )?;
    for table in ["samples_10s", "samples_5m"] {
        let average: f64 = conn.query_row(
            &format!("SELECT avg(length(data)) FROM {table}"),
            [],
            |row| row.get(0),
        )?;
        println!("{table}: encoded samples average {average:.1} bytes");
    }
    Ok(())
}

/// Prints the distribution of the steady-state flush times, plain and rolling up.
fn flush_times(services: u64, steady: &[(Duration, bool)]) {
    for (name, rolling) in [("plain", false), ("roll-up", true)] {
        let mut times: Vec<Duration> = steady
            .iter()
            .filter(|(_, r)| *r == rolling)
            .map(|(d, _)| *d)
            .collect();
        if times.is_empty() {
            continue;
        }
        times.sort();
        let at = |q: f64| times[((times.len() - 1) as f64 * q) as usize];
        let mean = times.iter().sum::<Duration>() / times.len() as u32;
        println!(
            "{name} flush of {services} revisions ({} flushes): mean {mean:.2?}, p50 {:.2?}, \
             p99 {:.2?}, max {:.2?}",
            times.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        );
    }
}

/// Times the queries the CLI and SLOs will make.
fn queries(history: &History, key: &SeriesKey) -> Result<(), HistoryError> {
    let service: ServiceKey = key.service_key();
    for (name, from) in [
        ("1 h", END - 3600),
        ("24 h", END - DAY),
        ("30 days", END - 30 * DAY),
    ] {
        // The first run reads pages from disk, the second from SQLite's cache.
        let mut times = Vec::new();
        let mut requests = 0;
        for _ in 0..2 {
            let started = Instant::now();
            requests = history.sum(&service, None, from, END)?.total();
            times.push(started.elapsed());
        }
        println!(
            "sum over {name} for one service: {:.2?} cold, {:.2?} warm ({requests} requests)",
            times[0], times[1]
        );
    }
    let started = Instant::now();
    let points = history.range(&service, None, END - DAY, END, 300)?;
    println!(
        "range over 24 h at 5 min ({} points): {:.2?}",
        points.len(),
        started.elapsed()
    );
    Ok(())
}

/// A busy 10 s interval of Service `i` at `t`: every field non-zero, values varying like real
/// traffic (hundreds of requests, tens per latency bucket, durations to the microsecond).
fn busy(i: u64, t: i64) -> Sample {
    let mut rng = Mix(i.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ t as u64);
    let mut sample = Sample {
        requests_by_class: [
            1 + rng.below(3),
            200 + rng.below(2000),
            1 + rng.below(20),
            1 + rng.below(60),
            1 + rng.below(10),
        ],
        cold_starts: 1 + rng.below(3),
        throttled: 1 + rng.below(5),
        instance_seconds: 10.0 * (1 + rng.below(4)) as f64 - rng.below(1_000_000) as f64 / 1e6,
        instances_max: 1 + rng.below(4) as u32,
        memory_bytes_max: (64 << 20) + rng.below(400 << 20),
        ..Sample::default()
    };
    sample.vcpu_seconds = sample.instance_seconds;
    sample.gib_seconds = sample.instance_seconds * 0.5;
    sample.cpu_used_seconds = sample.instance_seconds * rng.below(1000) as f64 / 1000.0 + 0.001;
    for bucket in &mut sample.latency {
        *bucket = 1 + rng.below(200);
    }
    sample
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

/// splitmix64: a few lines of deterministic variety, no dependency.
struct Mix(u64);

impl Mix {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    }
}
