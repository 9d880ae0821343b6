//! The autoscaler on a simulated clock: buckets fed second by second, decisions every 2 s.

use proptest::prelude::*;

use super::*;

/// Drives an autoscaler second by second. `load(t)` is the concurrency at second t; `ready`
/// instances follow the decisions instantly (the driver is not what is tested here).
struct Sim {
    a: Autoscaler,
    s: Settings,
    t_ms: u64,
    ready: u32,
    log: Vec<Decision>,
}

impl Sim {
    fn new(s: Settings, ready: u32) -> Self {
        Sim {
            a: Autoscaler::new(0),
            s,
            t_ms: 0,
            ready,
            log: Vec::new(),
        }
    }

    /// Runs `secs` seconds at concurrency `load`, deciding every 2 s; returns the last decision.
    fn run(&mut self, secs: u64, load: f64, waiting: u32) -> Decision {
        for _ in 0..secs {
            self.a.record(Bucket {
                at_ms: self.t_ms,
                concurrency: load,
                requests: load as u64,
            });
            self.t_ms += 1000;
            if self.t_ms.is_multiple_of(2000) {
                let d = self.a.decide(&self.s, self.t_ms, self.ready, waiting);
                self.ready = d.desired;
                self.log.push(d);
            }
        }
        self.log.last().cloned().expect("at least one decision")
    }
}

fn cc10() -> Settings {
    Settings {
        container_concurrency: 10,
        ..Default::default()
    }
}

/// Targets: containerConcurrency × 70%, the annotation capped by it, the defaults otherwise.
#[test]
fn effective_targets() {
    assert_eq!(Settings::default().effective_target(), 70.0);
    assert_eq!(cc10().effective_target(), 7.0);
    assert_eq!(
        Settings {
            target: Some(5.0),
            ..cc10()
        }
        .effective_target(),
        3.5
    );
    assert_eq!(
        Settings {
            target: Some(50.0),
            ..cc10()
        }
        .effective_target(),
        7.0
    );
    assert_eq!(
        Settings {
            metric: Metric::Rps,
            ..Default::default()
        }
        .effective_target(),
        140.0
    );
    assert_eq!(Settings::default().panic_window_ms(), 6000);
}

/// Steady load of 35 concurrent requests with a per-instance target of 7 settles at 5.
#[test]
fn steady_load() {
    let mut sim = Sim::new(cc10(), 1);
    let d = sim.run(120, 35.0, 0);
    assert_eq!(d.desired, 5, "{d:?}");
    assert!(!d.panicking);
}

/// A 10× burst enters panic mode and scales within the panic window, long before the stable
/// window would; panic never scales down, and ends a stable window after the burst.
#[test]
fn burst_panics() {
    let mut sim = Sim::new(cc10(), 1);
    sim.run(90, 7.0, 0);
    assert_eq!(sim.ready, 1);
    let before = sim.log.len();
    sim.run(6, 70.0, 0);
    let during: Vec<&Decision> = sim.log[before..].iter().collect();
    assert!(during.iter().any(|d| d.panicking), "{during:?}");
    assert_eq!(sim.ready, 10, "the burst is served within 6 s: {during:?}");
    // Load falls back: panic holds the peak until a stable window has passed.
    sim.run(20, 7.0, 0);
    assert!(
        sim.log
            .last()
            .is_some_and(|d| d.panicking && d.desired == 10)
    );
    sim.run(70, 7.0, 0);
    assert!(!sim.log.last().expect("d").panicking);
}

/// Ramping down never more than halves the instances per decision.
#[test]
fn ramp_down_at_most_halves() {
    let mut sim = Sim::new(
        Settings {
            stable_window_ms: 6000,
            scale_to_zero_grace_ms: 0,
            ..cc10()
        },
        1,
    );
    sim.run(30, 70.0, 0);
    assert_eq!(sim.ready, 10);
    let start = sim.log.len();
    sim.run(30, 0.0, 0);
    let seq: Vec<u32> = sim.log[start - 1..].iter().map(|d| d.desired).collect();
    for w in seq.windows(2) {
        assert!(w[1] >= w[0] / 2, "halving at most: {seq:?}");
    }
    assert_eq!(*seq.last().expect("last"), 0, "{seq:?}");
}

/// An idle revision keeps one instance for the stable window and the grace period, then goes
/// to zero; a waiting request brings it back at once.
#[test]
fn scale_to_zero_and_back() {
    let s = Settings {
        stable_window_ms: 10_000,
        scale_to_zero_grace_ms: 4000,
        ..cc10()
    };
    let mut sim = Sim::new(s, 1);
    sim.run(10, 0.0, 0);
    assert_eq!(sim.ready, 1, "held while young: {:?}", sim.log);
    sim.run(2, 0.0, 0);
    assert_eq!(sim.ready, 1, "grace period: {:?}", sim.log.last());
    sim.run(6, 0.0, 0);
    assert_eq!(sim.ready, 0, "{:?}", sim.log.last());
    assert!(
        sim.log.iter().any(|d| d.reason.contains("scaled to zero")),
        "{:?}",
        sim.log
    );
    let d = sim.a.decide(&sim.s, sim.t_ms + 10, 0, 3);
    assert_eq!(d.desired, 1, "{d:?}");
    assert!(d.reason.contains("waiting"));
}

/// min-scale and max-scale bound every decision; initial and activation scale apply.
#[test]
fn bounds_initial_and_activation() {
    let mut sim = Sim::new(
        Settings {
            min_scale: 2,
            max_scale: 4,
            ..cc10()
        },
        2,
    );
    assert_eq!(sim.run(60, 700.0, 0).desired, 4);
    assert_eq!(sim.run(200, 0.0, 0).desired, 2);
    let mut a = Autoscaler::new(0);
    let s = Settings {
        initial_scale: 3,
        ..cc10()
    };
    assert_eq!(
        a.decide(&s, 2000, 0, 0).desired,
        3,
        "initial scale for a new revision"
    );
    let s = Settings {
        activation_scale: 2,
        initial_scale: 0,
        ..cc10()
    };
    let mut a = Autoscaler::new(0);
    assert_eq!(
        a.decide(&s, 100_000, 0, 1).desired,
        2,
        "activation scale from zero"
    );
    a.record(Bucket {
        at_ms: 100_000,
        concurrency: 1.0,
        requests: 1,
    });
    assert_eq!(
        a.decide(&s, 102_000, 2, 0).desired,
        2,
        "traffic keeps at least activation scale"
    );
}

/// Scale-down delay keeps the highest decision of its window.
#[test]
fn scale_down_delay_holds() {
    let s = Settings {
        stable_window_ms: 6000,
        scale_down_delay_ms: 10_000,
        scale_to_zero_grace_ms: 0,
        ..cc10()
    };
    let mut sim = Sim::new(s, 1);
    sim.run(20, 35.0, 0);
    assert_eq!(sim.ready, 5);
    sim.run(8, 0.0, 0);
    assert_eq!(sim.ready, 5, "held by the delay: {:?}", sim.log.last());
    sim.run(20, 0.0, 0);
    assert!(sim.ready < 5);
}

proptest! {
    /// Whatever the load, decisions stay within [min, max], and a waiting request never sees
    /// zero.
    #[test]
    fn invariants(loads in proptest::collection::vec(0.0f64..500.0, 1..80), min in 0u32..3, extra in 0u32..6, waiting in 0u32..3) {
        let s = Settings { min_scale: min, max_scale: min + extra + 1, stable_window_ms: 6000, scale_to_zero_grace_ms: 2000, ..cc10() };
        let mut a = Autoscaler::new(0);
        let mut ready = 1;
        for (i, l) in loads.iter().enumerate() {
            let t = (i as u64 + 1) * 1000;
            a.record(Bucket { at_ms: t - 1000, concurrency: *l, requests: 0 });
            let d = a.decide(&s, t, ready, waiting);
            prop_assert!(d.desired >= s.min_scale);
            prop_assert!(d.desired <= s.max_scale);
            if waiting > 0 {
                prop_assert!(d.desired >= 1);
            }
            ready = d.desired;
        }
    }
}

/// Decisions between bucket ticks, or with ticks that fire late, read the whole window: at a
/// steady concurrency of 20 the panic average stays 20 (it read 5/6 of it when the window
/// was cut by timestamp).
#[test]
fn jittered_ticks_read_whole_windows() {
    let s = Settings {
        container_concurrency: 2,
        utilization: 1.0,
        ..Settings::default()
    };
    let mut a = Autoscaler::new(0);
    let mut t = 0u64;
    for i in 0..30u64 {
        // Ticks land 0–40 ms late, buckets stamped one second before their tick.
        t += 1000 + (i * 7) % 41;
        a.record(Bucket {
            at_ms: t - 1000,
            concurrency: 20.0,
            requests: 400,
        });
        // A decision on the tick and one 500 ms later (a poke between ticks).
        for now in [t, t + 500] {
            let d = a.decide(&s, now, 10, 0);
            if i >= 6 {
                assert!((d.panic_average - 20.0).abs() < 1e-9, "t={now}: {d:?}");
                assert_eq!(d.desired, 10, "t={now}: {d:?}");
            }
        }
    }
}

/// Knative's smoothing coefficient: 6 one-second buckets (the default panic window) decay by
/// about 0.215 per second so that they weigh 0.9999 together; 60 (the stable window) hit the
/// 0.2 floor.
#[test]
fn smoothing_coefficients() {
    let a6 = smoothing_coefficient(6);
    assert!(
        (a6 - (1.0 - 0.0001_f64.powf(1.0 / 6.0))).abs() < 1e-12,
        "{a6}"
    );
    assert!((1.0 - (1.0 - a6).powi(6) - 0.9999).abs() < 1e-9, "{a6}");
    assert_eq!(smoothing_coefficient(60), 0.2);
    assert_eq!(smoothing_coefficient(0), smoothing_coefficient(1));
}

fn weighted(s: Settings) -> Settings {
    Settings {
        aggregation: Aggregation::WeightedExponential,
        ..s
    }
}

/// The weighted average by hand: buckets [10, 10, 5, 5] (newest last) over a 4-second window
/// weigh 5α + 5α(1−α) + 10α(1−α)² + 10α(1−α)³; reversed, the recent 10s dominate. A steady
/// load averages to itself (within the 0.9999 precision).
#[test]
fn weighted_average_by_hand() {
    let mut b = VecDeque::new();
    for (i, v) in [10.0, 10.0, 5.0, 5.0].into_iter().enumerate() {
        b.push_back(Bucket {
            at_ms: i as u64 * 1000,
            concurrency: v,
            requests: 0,
        });
    }
    let a = smoothing_coefficient(4);
    let m = 1.0 - a;
    let expected = 5.0 * a + 5.0 * a * m + 10.0 * a * m * m + 10.0 * a * m * m * m;
    let w = average(
        &b,
        4000,
        4000,
        0,
        Metric::Concurrency,
        Aggregation::WeightedExponential,
    );
    assert!((w - expected).abs() < 1e-9, "{w} vs {expected}");
    let linear = average(&b, 4000, 4000, 0, Metric::Concurrency, Aggregation::Linear);
    assert_eq!(linear, 7.5);
    assert!(w < linear, "older 10s weigh less: {w}");
    let reversed: VecDeque<Bucket> = b
        .iter()
        .zip([5.0, 5.0, 10.0, 10.0])
        .map(|(x, v)| Bucket {
            concurrency: v,
            ..*x
        })
        .collect();
    let w = average(
        &reversed,
        4000,
        4000,
        0,
        Metric::Concurrency,
        Aggregation::WeightedExponential,
    );
    assert!(w > 9.9, "recent 10s dominate: {w}");

    let steady: VecDeque<Bucket> = (0..60)
        .map(|i| Bucket {
            at_ms: i * 1000,
            concurrency: 8.0,
            requests: 0,
        })
        .collect();
    for window in [6000, 60_000] {
        let w = average(
            &steady,
            60_000,
            window,
            0,
            Metric::Concurrency,
            Aggregation::WeightedExponential,
        );
        assert!((w - 8.0).abs() < 8.0 * 2e-4, "window {window}: {w}");
    }
    // Seconds without buckets count as zeros: 2 s of silence past the tick's slack.
    let w = average(
        &steady,
        62_000,
        6000,
        0,
        Metric::Concurrency,
        Aggregation::WeightedExponential,
    );
    let a6 = smoothing_coefficient(6);
    assert!((w - 8.0 * (1.0 - a6).powi(2)).abs() < 1e-3, "{w}");
}

/// A step after a quiet minute: the weighted stable average follows it within seconds (the
/// linear one takes the whole window), so the stable decision scales up sooner, and a drop
/// is followed as fast.
#[test]
fn weighted_follows_steps_sooner() {
    let base = Settings {
        container_concurrency: 10,
        utilization: 1.0,
        // No panic: only the stable window decides.
        panic_threshold: 10.0,
        min_scale: 1,
        ..Settings::default()
    };
    let mut lin = Sim::new(base.clone(), 1);
    let mut wei = Sim::new(weighted(base), 1);
    lin.run(60, 5.0, 0);
    wei.run(60, 5.0, 0);
    let l = lin.run(4, 40.0, 0);
    let w = wei.run(4, 40.0, 0);
    assert!(l.stable_average < 10.0, "{l:?}");
    assert!(w.stable_average > 20.0, "{w:?}");
    assert_eq!(l.desired, 1, "{l:?}");
    assert!(w.desired >= 3, "{w:?}");
    assert!(w.reason.starts_with("stable:"), "{w:?}");
    // Back to 5: after 20 s the step weighs 0.8^20 in the weighted average; the linear one still
    // carries the step.
    let l = lin.run(20, 5.0, 0);
    let w = wei.run(20, 5.0, 0);
    assert!((w.stable_average - 5.0).abs() < 0.5, "{w:?}");
    assert!(l.stable_average > 6.0, "{l:?}");
    assert_eq!(w.desired, 1, "{w:?}");
}

/// After a daemon restart, a revision older than its stable window does not get its initial
/// scale again (an idle one stays at zero); one younger gets it for what remains of the
/// window.
#[test]
fn restart_keeps_initial_scale_to_new_revisions() {
    let s = Settings {
        initial_scale: 2,
        ..cc10()
    };
    // Restarted at t = 5 s; the revision is 10 minutes old and idle.
    let mut old = Autoscaler::with_age(5000, 600_000);
    let d = old.decide(&s, 7000, 0, 0);
    assert_eq!(d.desired, 0, "{d:?}");
    assert!(!d.reason.contains("initial-scale"), "{d:?}");
    // A request still wakes it.
    assert_eq!(old.decide(&s, 8000, 0, 1).desired, 1);
    // 20 s old at the restart: initial scale for the remaining 40 s of the window.
    let mut young = Autoscaler::with_age(5000, 20_000);
    let d = young.decide(&s, 7000, 0, 0);
    assert_eq!(d.desired, 2, "{d:?}");
    assert!(d.reason.starts_with("initial-scale 2"), "{d:?}");
    assert_eq!(young.decide(&s, 44_000, 2, 0).desired, 2);
    let d = young.decide(&s, 46_000, 2, 0);
    assert!(!d.reason.contains("initial-scale"), "{d:?}");
}
