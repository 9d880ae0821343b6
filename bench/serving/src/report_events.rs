//! The events part's Markdown section and JSON.

use std::fmt::Write;

use serde_json::json;
use skiff_bench_runtime::stats::{Summary, summarize};

use crate::events::{BatchResults, EventRun, EventsResults, Target, bucket_quantile};

/// What the batch's per-event times come to.
#[derive(Debug, Clone)]
pub struct BatchFigures {
    /// First request written, last `202` read (µs).
    pub first_sent_us: i64,
    pub last_accepted_us: i64,
    /// `202` round trips (ms).
    pub accept: Summary,
    /// First and last delivery (the sink's log timestamps, µs); events delivered.
    pub first_delivered_us: i64,
    pub last_delivered_us: i64,
    pub delivered: usize,
    /// Events delivered after the last `202`.
    pub delivered_after_posting: usize,
    /// From the `202` to the sink's line (ms), and from the request's write (ms).
    pub latency: Summary,
    pub latency_from_send: Summary,
    /// Events whose line was read before their `202` arrived.
    pub before_202: usize,
    /// Events delivered more than once.
    pub redelivered: usize,
    /// Most events accepted and not yet delivered at once, from the per-event times.
    pub depth_peak: i64,
}

fn us_to_s(us: i64) -> f64 {
    us as f64 / 1e6
}

pub fn figures(b: &BatchResults) -> BatchFigures {
    let first_sent_us = b.posted.iter().map(|p| p.sent_us).min().unwrap_or(0);
    let last_accepted_us = b.posted.iter().map(|p| p.accepted_us).max().unwrap_or(0);
    let accept = summarize(
        &b.posted
            .iter()
            .map(|p| (p.accepted_us - p.sent_us) as f64 / 1000.0)
            .collect::<Vec<_>>(),
    );
    let delivered: Vec<(i64, i64, i64)> = b
        .posted
        .iter()
        .filter_map(|p| p.delivered_us.map(|d| (p.sent_us, p.accepted_us, d)))
        .collect();
    let first_delivered_us = delivered.iter().map(|d| d.2).min().unwrap_or(0);
    let last_delivered_us = delivered.iter().map(|d| d.2).max().unwrap_or(0);
    let latency = summarize(
        &delivered
            .iter()
            .map(|&(_, a, d)| (d - a) as f64 / 1000.0)
            .collect::<Vec<_>>(),
    );
    let latency_from_send = summarize(
        &delivered
            .iter()
            .map(|&(s, _, d)| (d - s) as f64 / 1000.0)
            .collect::<Vec<_>>(),
    );
    let mut steps: Vec<(i64, i64)> = delivered
        .iter()
        .flat_map(|&(_, a, d)| [(a, 1), (d, -1)])
        .collect();
    // At the same microsecond, deliveries first: the peak is not inflated by ties.
    steps.sort();
    let (mut depth, mut depth_peak) = (0i64, 0i64);
    for (_, step) in steps {
        depth += step;
        depth_peak = depth_peak.max(depth);
    }
    BatchFigures {
        first_sent_us,
        last_accepted_us,
        accept,
        first_delivered_us,
        last_delivered_us,
        delivered: delivered.len(),
        delivered_after_posting: delivered.iter().filter(|d| d.2 > last_accepted_us).count(),
        latency,
        latency_from_send,
        before_202: delivered.iter().filter(|d| d.2 < d.1).count(),
        redelivered: b.posted.iter().filter(|p| p.attempts > 1).count(),
        depth_peak,
    }
}

/// Delivered/s from the counters: from the last sample before the first delivery to the first
/// sample with all of them, and that span.
fn counter_rate(b: &BatchResults) -> Option<(f64, f64)> {
    let target = b.base_delivered + b.events as u64;
    let start = b
        .samples
        .iter()
        .rev()
        .find(|s| s.delivered <= b.base_delivered)
        .or(b.samples.first())?;
    let end = b.samples.iter().find(|s| s.delivered >= target)?;
    let span = us_to_s(end.at_us - start.at_us);
    (span > 0.0).then(|| ((end.delivered - start.delivered) as f64 / span, span))
}

fn ms(us: f64) -> String {
    format!("{:.2}", us / 1000.0)
}

fn run_row(o: &mut String, r: &EventRun) {
    let opt = |v: Option<String>| v.unwrap_or_else(|| "—".into());
    let delivered_during = r
        .delivered_during_run
        .map(|d| format!("{:.0}", d as f64 / r.duration_s));
    // The bucket's upper bound: a bound, where an interpolated value can be far off.
    let hist = |q: f64| {
        r.histogram
            .as_ref()
            .and_then(|h| bucket_quantile(h, q))
            .map(|(_, _, hi)| {
                if hi.is_infinite() {
                    "> 600000".to_owned()
                } else {
                    format!("≤ {}", hi * 1000.0)
                }
            })
    };
    let _ = writeln!(
        o,
        "| {} | {} | {:.0} | {} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} / {} |",
        r.connections,
        r.target.label(),
        r.rps,
        ms(r.p50_us),
        ms(r.p99_us),
        r.per_request(r.daemon_cpu_ms),
        r.per_request(r.sink_cpu_ms),
        opt(delivered_during),
        opt(r.backlog_at_end.map(|b| b.to_string())),
        opt(r.drain_s.map(|d| format!("{d:.2}"))),
        opt(r
            .daemon_cpu_to_drained_ms
            .map(|c| format!("{:.0}", r.per_request(c)))),
        opt(hist(0.5)),
        opt(hist(0.99)),
    );
}

pub fn section(o: &mut String, e: &EventsResults) {
    let s = &e.settings;
    let _ = writeln!(
        o,
        "### Accepted/s at the Broker, beside the Service and the instance\n"
    );
    let _ = writeln!(
        o,
        "Subscriber: Service `{}`, skiff-test-server (its `POST /` is a CloudEvents sink: one stdout line per event, then `202`), `containerConcurrency: {}`, min-scale = max-scale = {}, so the dispatcher keeps up to {} × {} = **{} deliveries in flight**. Trigger `{}` (no filter) on Broker `{}` sends it every event; Broker `{}` has no Trigger, so what it accepts is parsed and matched but not stored. All applied with `skiff apply -f` (the YAML is in `--raw`).\n",
        e.service,
        s.sub_cc,
        s.sub_instances,
        if s.sub_cc > 0 { s.sub_cc } else { 10 },
        s.sub_instances,
        s.capacity(),
        e.trigger,
        e.broker,
        e.no_trigger_broker,
    );
    let _ = writeln!(
        o,
        "wrk, {} s per run (`-t2`, `-t1` at one connection), Lua script: a binary-mode CloudEvent per request (`ce-specversion: 1.0`, a `ce-id` unique per request from the thread's number and a counter, `ce-source`, `ce-type`, `content-type: application/json`, the 18-byte body `{}`), the same requests to each target. One run per cell after a {} s warmup of each target at {} connections; latency is wrk's, request written to answer read (a Broker's `202` comes once the event and its delivery are fsynced in SQLite). The dispatcher delivers while wrk posts; after each Broker run the harness waits until every accepted event is delivered (`skiff_events_received_total` = `skiff_events_delivered_total{{outcome=\"delivered\"}}`) before the next run. CPU: the daemon's from `/proc/PID/stat` (all its threads), the sink's from its cgroup, over the wrk run (per request), and for the Broker from wrk's start until the backlog was drained (per event: ingest + delivery). Delivery latency: the dispatcher's `skiff_event_delivery_latency_seconds` (acceptance → the subscriber's answer) over the run until drained: the upper bound of the bucket (1, 2.5, 5, 10, 25, 50, 100, 250, 500 ms, 1, 2.5, 10 s …) holding the quantile.\n",
        s.seconds,
        crate::events::BODY,
        s.warmup_seconds,
        s.connections.iter().max().copied().unwrap_or(1),
    );
    let _ = writeln!(
        o,
        "| Connections | Target | Requests/s | p50 ms | p99 ms | Daemon CPU µs/req (run) | Sink CPU µs/req (run) | Delivered/s during the run | Backlog at wrk's end | Drained after (s) | Daemon CPU µs/event, to drained | Delivery latency p50 / p99 ms (histogram bucket) |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &e.runs {
        run_row(o, r);
    }
    let _ = writeln!(o);
    let find = |c: usize, t: Target| e.runs.iter().find(|r| r.connections == c && r.target == t);
    let mut ratios = Vec::new();
    for &c in &s.connections {
        if let (Some(b), Some(sv), Some(nt), Some(i)) = (
            find(c, Target::Broker),
            find(c, Target::Service),
            find(c, Target::BrokerNoTrigger),
            find(c, Target::Instance),
        ) {
            ratios.push(format!(
                "{c} connection(s): Broker {:.2}× the Service, {:.2}× the instance; the Broker without Trigger {:.2}× the Service; p50 Broker − Service {:+.2} ms",
                b.rps / sv.rps,
                b.rps / i.rps,
                nt.rps / sv.rps,
                (b.p50_us - sv.p50_us) / 1000.0
            ));
        }
    }
    if !ratios.is_empty() {
        let _ = writeln!(o, "Accepted/s as a share of the same requests' rate:\n");
        for r in ratios {
            let _ = writeln!(o, "- {r}");
        }
        let _ = writeln!(o);
    }

    batch_section(o, e);
}

fn batch_section(o: &mut String, e: &EventsResults) {
    let b = &e.batch;
    let f = figures(b);
    let _ = writeln!(o, "### Delivery of a batch of {} events\n", b.events);
    let _ = writeln!(
        o,
        "The harness's own client posts {} events (`ce-id` `batch-<n>`, the same headers and body) to the Broker over {} keep-alive connections, each sending its next event when its `202` arrives, and notes when each request was written and its `202` read (wall clock, µs). The dispatcher delivers meanwhile. `/metrics` and the scale API are read every 100 ms until every event is delivered; then the sink's lines are read from the daemon's log of the revision (`DATA/logs/default/<revision>.log*`), whose timestamps the daemon takes when it reads each line from the container's stdout (after the sink wrote it, before it answers).\n",
        b.events, b.connections
    );
    let post_s = us_to_s(f.last_accepted_us - f.first_sent_us);
    let deliver_s = us_to_s(f.last_delivered_us - f.first_delivered_us);
    let drain_only_s = us_to_s(f.last_delivered_us - f.last_accepted_us);
    let _ = writeln!(o, "| Figure | Value | How it is measured |");
    let _ = writeln!(o, "|---|---|---|");
    let _ = writeln!(
        o,
        "| Accepted/s while posting | **{:.0}/s** ({} events in {:.2} s); `202` p50 {:.2} ms, p99 {:.2} ms | the client: first request written → last `202` read |",
        b.events as f64 / post_s,
        b.events,
        post_s,
        f.accept.p50,
        f.accept.p99
    );
    let _ = writeln!(
        o,
        "| Delivered/s, first → last delivery | **{:.0}/s** ({} events in {:.2} s) | the sink's log timestamps (µs; the line is read by the daemon's log pump) |",
        (f.delivered.max(1) - 1) as f64 / deliver_s,
        f.delivered,
        deliver_s
    );
    let _ = writeln!(
        o,
        "| Delivered/s after the last `202` (the dispatcher alone) | {} | the same, events whose line is after the last `202` |",
        if drain_only_s > 0.05 && f.delivered_after_posting > 0 {
            format!(
                "{:.0}/s ({} events in {:.2} s)",
                f.delivered_after_posting as f64 / drain_only_s,
                f.delivered_after_posting,
                drain_only_s
            )
        } else {
            format!(
                "— ({} events after the last `202`: the dispatcher kept up)",
                f.delivered_after_posting
            )
        }
    );
    let _ = writeln!(
        o,
        "| Delivered/s from `skiff_events_delivered_total{{outcome=\"delivered\"}}` | {} | the counter read every 100 ms: from the last reading before the first delivery to the first with all of them (±0.1 s at each end) |",
        counter_rate(b).map_or("—".into(), |(r, span)| format!(
            "{r:.0}/s over {span:.1} s"
        ))
    );
    let _ = writeln!(
        o,
        "| Delivery latency, per event | p50 **{:.1} ms**, p90 {:.1} ms, p99 **{:.1} ms**, max {:.1} ms (mean {:.1}) | the sink's line timestamp − the client's `202` (acceptance is before the `202`, so slightly under acceptance → arrival); from the request's write instead: p50 {:.1}, p99 {:.1} ms |",
        f.latency.p50,
        f.latency.p90,
        f.latency.p99,
        f.latency.max,
        f.latency.mean,
        f.latency_from_send.p50,
        f.latency_from_send.p99
    );
    let q = |p: f64| {
        bucket_quantile(&b.histogram, p).map_or("—".into(), |(v, lo, hi)| {
            format!(
                "in {}–{} ms (interpolated {:.0})",
                lo * 1000.0,
                if hi.is_infinite() {
                    "∞".to_owned()
                } else {
                    format!("{}", hi * 1000.0)
                },
                v * 1000.0,
            )
        })
    };
    let hist_n = b.histogram.last().map_or(0, |x| x.1);
    let _ = writeln!(
        o,
        "| Delivery latency, the dispatcher's histogram | p50 {}, p99 {}; mean {:.1} ms ({} observations) | `skiff_event_delivery_latency_seconds` (acceptance → the subscriber's answer), after − before the batch; a quantile is known to its bucket only (the linear interpolation inside it, as Prometheus's `histogram_quantile` does, can be far off in the wide buckets); the mean (sum ÷ count) is exact and checks the per-event mean above |",
        q(0.5),
        q(0.99),
        b.histogram_sum_s * 1000.0 / hist_n.max(1) as f64,
        hist_n
    );
    let gauge_peak = b.samples.iter().map(|x| x.depth).max().unwrap_or(0);
    let _ = writeln!(
        o,
        "| Queue depth, peak | {} from the per-event times; {} read from `skiff_events_queue_depth` | accepted by t − delivered by t, over every `202` and log time; the gauge as read every 100 ms (the dispatcher updates it when it wakes, at most 0.5 s apart) |",
        f.depth_peak, gauge_peak
    );
    let in_flight = b.samples.iter().map(|x| x.in_flight).max().unwrap_or(0);
    // While there was a backlog to deliver.
    let busy: Vec<f64> = b
        .samples
        .iter()
        .filter(|x| x.depth > 0 && x.delivered > b.base_delivered)
        .map(|x| x.in_flight as f64)
        .collect();
    let _ = writeln!(
        o,
        "| Subscriber's capacity used | median {:.0}, at most {} requests in flight at the Service while the queue was not empty (the dispatcher may have {} deliveries in flight) | the scale API's `inFlight` (requests the router has forwarded to the instance and not yet seen answered), every 100 ms |",
        skiff_bench_runtime::stats::median(&busy),
        in_flight,
        e.settings.capacity()
    );
    let n = b.events as f64;
    let _ = writeln!(
        o,
        "| Daemon CPU per event | **{:.0} µs** ({:.0} µs while posting, {:.0} µs after the last `202`) | `/proc/PID/stat` utime + stime, first post → all delivered, ÷ {} |",
        (b.daemon_cpu_posting_ms + b.daemon_cpu_drain_ms) * 1000.0 / n,
        b.daemon_cpu_posting_ms * 1000.0 / n,
        b.daemon_cpu_drain_ms * 1000.0 / n,
        b.events
    );
    let _ = writeln!(
        o,
        "| Sink CPU per event | {:.0} µs | the instance's cgroup `cpu.stat` |",
        b.sink_cpu_ms * 1000.0 / n
    );
    let threads: Vec<String> = b
        .threads
        .iter()
        .filter(|t| t.2 >= 1.0)
        .map(|(name, count, ms)| format!("`{name}` ×{count}: {:.0} µs", ms * 1000.0 / n))
        .collect();
    let _ = writeln!(
        o,
        "| Daemon CPU per event, by thread | {} | `/proc/PID/task/*/stat` by `comm` (digits folded); tokio's blocking threads (SQLite calls) are named like its workers |",
        threads.join("; ")
    );
    let _ = writeln!(
        o,
        "| Checks | {} of {} events delivered per the sink's log ({} lines); {} delivered more than once; {} failed attempts (retried, dead-lettered, dropped); {} lines read before their `202` arrived | |",
        f.delivered, b.events, b.log_lines, f.redelivered, b.failed, f.before_202
    );
    let _ = writeln!(o);

    // A timeline, one row per half second (and the last reading).
    if let Some(first) = b.samples.first() {
        let _ = writeln!(
            o,
            "Over time (seconds from the first post; accepted by the client's `202`s, the rest from the readings):\n"
        );
        let _ = writeln!(
            o,
            "| t (s) | Accepted | Delivered (counter) | Queue depth (gauge) | In flight at the Service |"
        );
        let _ = writeln!(o, "|---|---|---|---|---|");
        let t0 = f.first_sent_us.min(first.at_us);
        let mut next = 0.0;
        let last = b.samples.len() - 1;
        for (i, x) in b.samples.iter().enumerate() {
            let t = us_to_s(x.at_us - t0);
            if t + 1e-9 < next && i != last {
                continue;
            }
            next = (t * 2.0).floor() / 2.0 + 0.5;
            let accepted = b.posted.iter().filter(|p| p.accepted_us <= x.at_us).count();
            let _ = writeln!(
                o,
                "| {t:.1} | {accepted} | {} | {} | {} |",
                x.delivered - b.base_delivered,
                x.depth,
                x.in_flight
            );
        }
        let _ = writeln!(o);
    }
}

fn buckets_json(b: &crate::events::Buckets) -> Vec<serde_json::Value> {
    b.iter()
        .map(|(le, n)| {
            let le = if le.is_infinite() {
                "+Inf".to_owned()
            } else {
                le.to_string()
            };
            json!([le, n])
        })
        .collect()
}

pub fn raw(e: &EventsResults) -> serde_json::Value {
    let run = |r: &EventRun| {
        json!({
            "target": r.target.name(),
            "connections": r.connections,
            "threads": r.threads,
            "requests": r.requests,
            "durationS": r.duration_s,
            "rps": r.rps,
            "p50Us": r.p50_us,
            "p90Us": r.p90_us,
            "p99Us": r.p99_us,
            "maxUs": r.max_us,
            "socketErrors": r.socket_errors,
            "badStatus": r.bad_status,
            "daemonCpuMs": r.daemon_cpu_ms,
            "sinkCpuMs": r.sink_cpu_ms,
            "received": r.received,
            "backlogAtEnd": r.backlog_at_end,
            "drainS": r.drain_s,
            "daemonCpuToDrainedMs": r.daemon_cpu_to_drained_ms,
            "sinkCpuToDrainedMs": r.sink_cpu_to_drained_ms,
            "failed": r.failed,
            "delivered": r.delivered,
            "deliveredDuringRun": r.delivered_during_run,
            "histogram": r.histogram.as_ref().map(buckets_json),
        })
    };
    let b = &e.batch;
    json!({
        "manifests": e.manifests,
        "capacity": e.settings.capacity(),
        "instances": e.instances,
        "subscription": e.subscription,
        "warmup": e.warmup.iter().map(run).collect::<Vec<_>>(),
        "runs": e.runs.iter().map(run).collect::<Vec<_>>(),
        "batch": {
            "events": b.events,
            "connections": b.connections,
            "posted": b.posted.iter().map(|p| json!([p.sent_us, p.accepted_us, p.delivered_us, p.attempts])).collect::<Vec<_>>(),
            "postedColumns": ["sentUs", "acceptedUs", "deliveredUs", "attempts"],
            "samples": b.samples.iter().map(|x| json!({
                "atUs": x.at_us, "received": x.received, "delivered": x.delivered,
                "depth": x.depth, "inFlight": x.in_flight,
            })).collect::<Vec<_>>(),
            "histogram": buckets_json(&b.histogram),
            "histogramSumS": b.histogram_sum_s,
            "daemonCpuPostingMs": b.daemon_cpu_posting_ms,
            "daemonCpuDrainMs": b.daemon_cpu_drain_ms,
            "sinkCpuMs": b.sink_cpu_ms,
            "threads": b.threads.iter().map(|(n, c, ms)| json!({"name": n, "count": c, "cpuMs": ms})).collect::<Vec<_>>(),
            "failed": b.failed,
            "logLines": b.log_lines,
        },
    })
}
