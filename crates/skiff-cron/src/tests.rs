//! Schedules and decisions on a simulated clock: plain timestamps in, fire times and decisions
//! out, around the 2026 DST changes of America/New_York (2026-03-08 02:00→03:00, 2026-11-01
//! 02:00→01:00) and Europe/Berlin (2026-03-29 02:00→03:00, 2026-10-25 03:00→02:00).

use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp};
use proptest::prelude::*;

use super::*;

const NY: &str = "America/New_York";
const BERLIN: &str = "Europe/Berlin";

fn schedule(expr: &str, tz: &str) -> Schedule {
    Schedule::parse(expr, Some(tz)).expect("the expression parses")
}

/// An instant written with its offset, e.g. `2026-03-08T03:00-04:00`.
fn at(s: &str) -> Timestamp {
    s.parse().expect("a timestamp with an offset")
}

/// Fire times as local times with their offsets, for readable assertions.
fn local(s: &Schedule, fires: &[Timestamp]) -> Vec<String> {
    let tz = TimeZone::get(s.timezone()).expect("the zone exists");
    fires
        .iter()
        .map(|t| {
            t.to_zoned(tz.clone())
                .strftime("%Y-%m-%dT%H:%M%:z")
                .to_string()
        })
        .collect()
}

/// The fire times in (from, to], as local times.
fn fires(s: &Schedule, from: &str, to: &str) -> Vec<String> {
    local(s, &s.fires_between(at(from), at(to), 10_000))
}

fn err(expr: &str, tz: Option<&str>) -> String {
    Schedule::parse(expr, tz)
        .expect_err("the expression is refused")
        .to_string()
}

// ---------------------------------------------------------------------------------------------
// Parsing

#[test]
fn six_and_seven_fields_are_refused_with_the_reason() {
    assert_eq!(
        err("0 0 * * * *", None),
        "`0 0 * * * *` has 6 fields; skiff takes 5 (minute hour day-of-month month day-of-week); \
         seconds are not supported"
    );
    assert!(
        err("0 0 0 * * * 2027", None)
            .contains("has 7 fields; skiff takes 5 (minute hour day-of-month month day-of-week)")
    );
    assert!(err("0 0 * *", None).contains("has 4 fields; skiff takes 5"));
}

#[test]
fn empty_input_is_refused() {
    assert!(err("", None).starts_with("the schedule is empty"));
    assert!(err(" \t ", None).starts_with("the schedule is empty"));
}

#[test]
fn cron_tz_prefixes_point_to_the_timezone_field() {
    for expr in ["CRON_TZ=Europe/Berlin 0 2 * * *", "TZ=UTC 0 2 * * *"] {
        let msg = err(expr, None);
        assert!(msg.contains("is not supported"), "{msg}");
        assert!(
            msg.contains("put the time zone in the timezone field"),
            "{msg}"
        );
    }
}

#[test]
fn unknown_time_zones_are_refused_as_not_iana() {
    let msg = err("0 2 * * *", Some("Mars/Olympus_Mons"));
    assert_eq!(
        msg,
        "unknown time zone `Mars/Olympus_Mons`: not an IANA time zone name like Europe/Berlin"
    );
    let msg = err("0 2 * * *", Some("Europe/Berln"));
    assert!(msg.ends_with("; did you mean Europe/Berlin?"), "{msg}");
    assert!(err("0 2 * * *", Some("+02:00")).contains("not an IANA time zone name"));
    assert!(err("0 2 * * *", Some(" ")).starts_with("the time zone is empty"));
    // The machine's own zone is not a zone a schedule can carry.
    assert!(err("0 2 * * *", Some("localtime")).contains("not an IANA time zone name"));
}

#[test]
fn the_zone_defaults_to_utc_and_is_named_as_the_tzdb_spells_it() {
    let s = Schedule::parse("0 2 * * *", None).expect("parses");
    assert_eq!(s.timezone(), "UTC");
    assert_eq!(s.expression(), "0 2 * * *");
    let s = Schedule::parse("  0 2 * * *\n", Some(BERLIN)).expect("parses");
    assert_eq!(s.timezone(), BERLIN);
    assert_eq!(s.expression(), "0 2 * * *");
}

#[test]
fn out_of_range_values_name_their_field() {
    let cases = [
        ("60 * * * *", "minute value 60 is out of range 0-59"),
        ("0 24 * * *", "hour value 24 is out of range 0-23"),
        ("0 0 0 * *", "day-of-month value 0 is out of range 1-31"),
        ("0 0 32 * *", "day-of-month value 32 is out of range 1-31"),
        ("0 0 * 13 *", "month value 13 is out of range 1-12"),
        ("0 0 * * 8", "day-of-week value 8 is out of range 0-7"),
        ("0-99 * * * *", "minute value 99 is out of range 0-59"),
        (
            "99999999999999999999 * * * *",
            "minute value 99999999999999999999 is out of range 0-59",
        ),
    ];
    for (expr, want) in cases {
        assert_eq!(err(expr, None), want, "{expr}");
    }
}

#[test]
fn malformed_fields_say_what_is_wrong() {
    let cases = [
        ("x * * * *", "minute field `x`: `x` is not a number 0-59"),
        (
            "0 0 * FOO *",
            "month field `FOO`: `FOO` is not a number 1-12 or a name JAN-DEC",
        ),
        ("0 0 * MON *", "month field `MON`"),
        ("0 0 * * JAN", "day-of-week field `JAN`"),
        ("0 0 L * *", "day-of-month field `L`"),
        ("0 0 * * 5#3", "day-of-week field `5#3`"),
        ("*/0 * * * *", "the step in `*/0` is 0"),
        ("*/90 * * * *", "steps restart every hour"),
        ("0 22-2 * * *", "the range `22-2` runs backwards"),
        ("1,,2 * * * *", "a list has an empty item"),
        ("0 ? * * *", "hour field `?`"),
        ("-5 * * * *", "`-5` is missing a value"),
        ("@reboot", "@reboot is not a time schedule"),
        ("@every 5m", "@every is not supported"),
        ("@fortnightly", "unknown macro `@fortnightly`"),
        ("@daily 0", "stands alone"),
        ("0 0 30 2 *", "never fires"),
        ("0 0 31 4,6,9,11 *", "never fires"),
    ];
    for (expr, want) in cases {
        let msg = err(expr, None);
        assert!(msg.contains(want), "{expr}: {msg}");
    }
}

#[test]
fn macros_expand_to_their_five_fields() {
    let from = at("2026-05-05T10:30Z");
    let cases = [
        ("@yearly", "0 0 1 1 *"),
        ("@annually", "0 0 1 1 *"),
        ("@monthly", "0 0 1 * *"),
        ("@weekly", "0 0 * * 0"),
        ("@daily", "0 0 * * *"),
        ("@midnight", "0 0 * * *"),
        ("@hourly", "0 * * * *"),
        ("@HOURLY", "0 * * * *"),
    ];
    for (mac, fields) in cases {
        let a = Schedule::parse(mac, None).expect("macro parses");
        let b = Schedule::parse(fields, None).expect("fields parse");
        assert_eq!(
            a.fires_between(from, at("2028-01-01T00:00Z"), 100),
            b.fires_between(from, at("2028-01-01T00:00Z"), 100),
            "{mac}"
        );
        assert_eq!(a.expression(), mac);
    }
}

#[test]
fn hourly_fires_at_the_top_of_every_hour() {
    let s = Schedule::parse("@hourly", None).expect("parses");
    assert_eq!(
        fires(&s, "2026-05-05T10:00Z", "2026-05-05T13:00Z"),
        [
            "2026-05-05T11:00+00:00",
            "2026-05-05T12:00+00:00",
            "2026-05-05T13:00+00:00"
        ]
    );
}

#[test]
fn names_ranges_lists_and_steps_combine() {
    // 09:00 and 17:30 on weekdays.
    let s = schedule("0,30 9-17/8 * * mon-FRI", BERLIN);
    assert_eq!(
        fires(&s, "2026-05-08T08:00+02:00", "2026-05-12T00:00+02:00"),
        [
            "2026-05-08T09:00+02:00",
            "2026-05-08T09:30+02:00",
            "2026-05-08T17:00+02:00",
            "2026-05-08T17:30+02:00",
            "2026-05-11T09:00+02:00",
            "2026-05-11T09:30+02:00",
            "2026-05-11T17:00+02:00",
            "2026-05-11T17:30+02:00",
        ]
    );
    // `0/15` is read as `0-59/15`, as Kubernetes reads it.
    let a = Schedule::parse("0/15 * * * *", None).expect("parses");
    let b = Schedule::parse("*/15 * * * *", None).expect("parses");
    let from = at("2026-01-01T00:00Z");
    assert_eq!(
        a.fires_between(from, at("2026-01-02T00:00Z"), 1000),
        b.fires_between(from, at("2026-01-02T00:00Z"), 1000)
    );
}

#[test]
fn schedules_run_on_wall_clock_time_in_their_zone() {
    // 09:00 in Berlin is 08:00 UTC in winter and 07:00 UTC in summer.
    let s = schedule("0 9 * * *", BERLIN);
    assert_eq!(
        s.next_after(at("2026-01-10T00:00Z")),
        Some(at("2026-01-10T08:00Z"))
    );
    assert_eq!(
        s.next_after(at("2026-07-10T00:00Z")),
        Some(at("2026-07-10T07:00Z"))
    );
}

#[test]
fn next_after_is_strictly_after() {
    let s = schedule("30 2 * * *", NY);
    let fire = at("2026-05-05T02:30-04:00");
    assert_eq!(
        s.next_after(fire - SignedDuration::from_nanos(1)),
        Some(fire)
    );
    assert_eq!(s.next_after(fire), Some(at("2026-05-06T02:30-04:00")));
    assert_eq!(s.last_at_or_before(fire), Some(fire));
    assert_eq!(
        s.last_at_or_before(fire - SignedDuration::from_nanos(1)),
        Some(at("2026-05-04T02:30-04:00"))
    );
}

#[test]
fn fires_between_is_half_open_and_limited() {
    let s = schedule("*/10 * * * *", NY);
    let got = fires(&s, "2026-05-05T10:00-04:00", "2026-05-05T10:30-04:00");
    assert_eq!(
        got,
        [
            "2026-05-05T10:10-04:00",
            "2026-05-05T10:20-04:00",
            "2026-05-05T10:30-04:00"
        ]
    );
    let limited = s.fires_between(
        at("2026-05-05T10:00-04:00"),
        at("2026-05-06T10:00-04:00"),
        2,
    );
    assert_eq!(limited.len(), 2);
    assert!(
        s.fires_between(
            at("2026-05-05T10:30-04:00"),
            at("2026-05-05T10:00-04:00"),
            9
        )
        .is_empty()
    );
}

#[test]
fn february_29_fires_only_in_leap_years() {
    let s = schedule("0 0 29 2 *", "UTC");
    assert_eq!(
        fires(&s, "2026-01-01T00:00Z", "2033-01-01T00:00Z"),
        ["2028-02-29T00:00+00:00", "2032-02-29T00:00+00:00"]
    );
    // 2100 is not a leap year: eight years between 2096 and 2104.
    assert_eq!(
        s.next_after(at("2096-03-01T00:00Z")),
        Some(at("2104-02-29T00:00Z"))
    );
    assert_eq!(
        s.last_at_or_before(at("2104-02-28T00:00Z")),
        Some(at("2096-02-29T00:00Z"))
    );
}

#[test]
fn day_of_month_or_day_of_week_when_both_are_restricted() {
    // Vixie/POSIX OR: the 13th of each month and every Friday.
    let s = schedule("0 12 13 * FRI", "UTC");
    assert_eq!(
        fires(&s, "2026-03-01T00:00Z", "2026-04-01T00:00Z"),
        [
            "2026-03-06T12:00+00:00",
            "2026-03-13T12:00+00:00",
            "2026-03-20T12:00+00:00",
            "2026-03-27T12:00+00:00",
        ]
    );
    // 13 May 2026 is a Wednesday; it fires because of the day of month.
    assert_eq!(
        fires(&s, "2026-05-09T00:00Z", "2026-05-16T00:00Z"),
        ["2026-05-13T12:00+00:00", "2026-05-15T12:00+00:00"]
    );
    // With the day of week unrestricted only the 13th counts, and the other way round.
    let s = schedule("0 12 13 * *", "UTC");
    assert_eq!(
        fires(&s, "2026-03-01T00:00Z", "2026-04-01T00:00Z"),
        ["2026-03-13T12:00+00:00"]
    );
    let s = schedule("0 12 * * FRI", "UTC");
    assert_eq!(fires(&s, "2026-03-01T00:00Z", "2026-04-01T00:00Z").len(), 4);
}

// ---------------------------------------------------------------------------------------------
// DST: spring forward

#[test]
fn a_fixed_time_in_the_spring_gap_runs_once_when_the_gap_ends() {
    for (tz, day_before, gap_day, day_after) in [
        (NY, "2026-03-07", "2026-03-08", "2026-03-09"),
        (BERLIN, "2026-03-28", "2026-03-29", "2026-03-30"),
    ] {
        let s = schedule("30 2 * * *", tz);
        let got = fires(
            &s,
            &format!("{day_before}T00:00Z"),
            &format!("{day_after}T12:00Z"),
        );
        let (std, dst) = if tz == NY {
            ("-05:00", "-04:00")
        } else {
            ("+01:00", "+02:00")
        };
        assert_eq!(
            got,
            [
                format!("{day_before}T02:30{std}"),
                format!("{gap_day}T03:00{dst}"),
                format!("{day_after}T02:30{dst}"),
            ],
            "{tz}"
        );
    }
}

#[test]
fn several_fixed_times_in_one_gap_run_once_together() {
    for (tz, gap_day, dst) in [
        (NY, "2026-03-08", "-04:00"),
        (BERLIN, "2026-03-29", "+02:00"),
    ] {
        let from = format!("{gap_day}T00:00{dst}");
        let to = format!("{gap_day}T05:00{dst}");
        for expr in ["0,30 2 * * *", "*/15 2 * * *", "0-59 2 * * *"] {
            let s = schedule(expr, tz);
            assert_eq!(
                fires(&s, &from, &to),
                [format!("{gap_day}T03:00{dst}")],
                "{tz} {expr}"
            );
        }
        // 03:00 is also a time of its own here: still one run at 03:00, then 03:30.
        let s = schedule("0,30 2,3 * * *", tz);
        assert_eq!(
            fires(&s, &from, &to),
            [
                format!("{gap_day}T03:00{dst}"),
                format!("{gap_day}T03:30{dst}")
            ],
            "{tz}"
        );
    }
}

#[test]
fn interval_schedules_have_no_fires_in_the_spring_gap() {
    let s = schedule("*/15 * * * *", NY);
    assert_eq!(
        fires(&s, "2026-03-08T01:30-05:00", "2026-03-08T03:15-04:00"),
        [
            "2026-03-08T01:45-05:00",
            "2026-03-08T03:00-04:00",
            "2026-03-08T03:15-04:00"
        ]
    );
    let s = schedule("*/15 * * * *", BERLIN);
    assert_eq!(
        fires(&s, "2026-03-29T01:30+01:00", "2026-03-29T03:15+02:00"),
        [
            "2026-03-29T01:45+01:00",
            "2026-03-29T03:00+02:00",
            "2026-03-29T03:15+02:00"
        ]
    );
    // Every two hours: 02:00 does not exist that day, so the next is 04:00.
    let s = schedule("0 */2 * * *", BERLIN);
    assert_eq!(
        fires(&s, "2026-03-29T00:00+01:00", "2026-03-29T04:00+02:00"),
        ["2026-03-29T04:00+02:00"]
    );
    // A whole day of an hourly schedule has 23 fires.
    let s = schedule("@hourly", NY);
    assert_eq!(
        s.fires_between(
            at("2026-03-08T00:00-05:00"),
            at("2026-03-09T00:00-04:00"),
            99
        )
        .len(),
        23
    );
}

// ---------------------------------------------------------------------------------------------
// DST: fall back

#[test]
fn a_fixed_time_in_the_repeated_hour_runs_once_at_its_first_occurrence() {
    // New York repeats 01:00–01:59, Berlin 02:00–02:59.
    let s = schedule("30 1 * * *", NY);
    assert_eq!(
        fires(&s, "2026-10-31T12:00-04:00", "2026-11-02T12:00-05:00"),
        ["2026-11-01T01:30-04:00", "2026-11-02T01:30-05:00"]
    );
    // kubernetes/kubernetes#121594: a 02:00 Berlin job ran twice.
    let s = schedule("0 2 * * *", BERLIN);
    assert_eq!(
        fires(&s, "2026-10-24T12:00+02:00", "2026-10-26T12:00+01:00"),
        ["2026-10-25T02:00+02:00", "2026-10-26T02:00+01:00"]
    );
    // Several times in the repeated hour, or a step within it: first pass only.
    let s = schedule("*/15 2 * * *", BERLIN);
    assert_eq!(
        fires(&s, "2026-10-25T00:00+02:00", "2026-10-25T12:00+01:00"),
        [
            "2026-10-25T02:00+02:00",
            "2026-10-25T02:15+02:00",
            "2026-10-25T02:30+02:00",
            "2026-10-25T02:45+02:00",
        ]
    );
}

#[test]
fn asking_from_inside_the_second_pass_does_not_repeat_a_fixed_time() {
    let s = schedule("30 1 * * *", NY);
    // 01:10 EST, after 01:30 EDT has fired.
    assert_eq!(
        s.next_after(at("2026-11-01T01:10-05:00")),
        Some(at("2026-11-02T01:30-05:00"))
    );
    assert_eq!(
        s.last_at_or_before(at("2026-11-01T01:50-05:00")),
        Some(at("2026-11-01T01:30-04:00"))
    );
}

#[test]
fn interval_schedules_fire_in_both_passes_of_the_repeated_hour() {
    let s = schedule("*/15 * * * *", NY);
    let got = s.fires_between(
        at("2026-11-01T00:50-04:00"),
        at("2026-11-01T02:00-05:00"),
        99,
    );
    assert_eq!(
        local(&s, &got),
        [
            "2026-11-01T01:00-04:00",
            "2026-11-01T01:15-04:00",
            "2026-11-01T01:30-04:00",
            "2026-11-01T01:45-04:00",
            "2026-11-01T01:00-05:00",
            "2026-11-01T01:15-05:00",
            "2026-11-01T01:30-05:00",
            "2026-11-01T01:45-05:00",
            "2026-11-01T02:00-05:00",
        ]
    );
    // Every 15 real minutes.
    for pair in got.windows(2) {
        assert_eq!(
            pair[1].duration_since(pair[0]),
            SignedDuration::from_mins(15)
        );
    }
    let s = schedule("*/15 * * * *", BERLIN);
    let got = s.fires_between(
        at("2026-10-25T01:50+02:00"),
        at("2026-10-25T03:00+01:00"),
        99,
    );
    assert_eq!(got.len(), 9);
    assert_eq!(got[4], at("2026-10-25T02:00+01:00"));
    // A whole day of an hourly schedule has 25 fires.
    let s = schedule("@hourly", BERLIN);
    assert_eq!(
        s.fires_between(
            at("2026-10-25T00:00+02:00"),
            at("2026-10-26T00:00+01:00"),
            99
        )
        .len(),
        25
    );
}

#[test]
fn other_zone_shapes_follow_the_same_rules() {
    // Santiago springs forward at midnight (2026-09-06 00:00→01:00): midnight runs at 01:00.
    let s = schedule("0 0 * * *", "America/Santiago");
    assert_eq!(
        fires(&s, "2026-09-05T12:00-04:00", "2026-09-07T12:00-03:00"),
        ["2026-09-06T01:00-03:00", "2026-09-07T00:00-03:00"]
    );
    // Lord Howe moves by half an hour (2026-10-04 02:00→02:30).
    let s = schedule("15 2 * * *", "Australia/Lord_Howe");
    assert_eq!(
        fires(&s, "2026-10-03T12:00+10:30", "2026-10-04T12:00+11:00"),
        ["2026-10-04T02:30+11:00"]
    );
}

#[test]
fn counts_match_the_fires_across_a_year_of_dst_changes() {
    let from = at("2026-01-01T00:00Z");
    let to = at("2027-01-01T00:00Z");
    for tz in [NY, BERLIN] {
        for expr in [
            "30 1 * * *",
            "30 2 * * *",
            "0,30 2 * * *",
            "*/15 * * * *",
            "*/7 1-3 * * *",
            "@hourly",
        ] {
            let s = schedule(expr, tz);
            // fires_between includes `to`; count_between does not.
            let all = s.fires_between(from, to, 100_000);
            let open = all.iter().filter(|t| **t < to).count() as u64;
            assert_eq!(s.count_between(from, to), open, "{tz} {expr}");
        }
        // One run a day for a fixed time, whatever DST does to it.
        assert_eq!(schedule("30 1 * * *", tz).count_between(from, to), 365);
        assert_eq!(schedule("30 2 * * *", tz).count_between(from, to), 365);
        // Every real minute of the year.
        assert_eq!(
            schedule("* * * * *", tz).count_between(from, to),
            365 * 1440 - 1
        );
    }
}

// ---------------------------------------------------------------------------------------------
// decide

fn run(scheduled: &str, missed: u64, replace: bool) -> Decision {
    Decision::Run {
        scheduled: at(scheduled),
        missed,
        replace,
    }
}

#[test]
fn nothing_due_means_wait_for_the_next_fire() {
    let s = schedule("0 * * * *", "UTC");
    let d = decide(
        &s,
        Some(at("2026-05-05T10:00Z")),
        at("2026-01-01T00:00Z"),
        at("2026-05-05T10:59:59Z"),
        None,
        ConcurrencyPolicy::Allow,
        false,
    );
    assert_eq!(
        d,
        Decision::Wait {
            until: Some(at("2026-05-05T11:00Z"))
        }
    );
}

#[test]
fn a_fire_time_equal_to_now_is_due_and_last_is_not() {
    let s = schedule("0 * * * *", "UTC");
    let last = Some(at("2026-05-05T10:00Z"));
    let since = at("2026-01-01T00:00Z");
    let d = decide(
        &s,
        last,
        since,
        at("2026-05-05T11:00Z"),
        None,
        ConcurrencyPolicy::Allow,
        false,
    );
    assert_eq!(d, run("2026-05-05T11:00Z", 0, false));
    let d = decide(
        &s,
        Some(at("2026-05-05T11:00Z")),
        since,
        at("2026-05-05T11:00Z"),
        None,
        ConcurrencyPolicy::Allow,
        false,
    );
    assert_eq!(
        d,
        Decision::Wait {
            until: Some(at("2026-05-05T12:00Z"))
        }
    );
}

#[test]
fn never_run_counts_from_since_excluding_it() {
    let s = schedule("0 * * * *", "UTC");
    let since = at("2026-05-05T10:00Z");
    let d = decide(
        &s,
        None,
        since,
        at("2026-05-05T10:30Z"),
        None,
        ConcurrencyPolicy::Allow,
        false,
    );
    assert_eq!(
        d,
        Decision::Wait {
            until: Some(at("2026-05-05T11:00Z"))
        }
    );
    let d = decide(
        &s,
        None,
        since,
        at("2026-05-05T12:10Z"),
        None,
        ConcurrencyPolicy::Allow,
        false,
    );
    assert_eq!(d, run("2026-05-05T12:00Z", 1, false));
}

#[test]
fn an_update_after_the_last_run_does_not_make_older_times_due() {
    let s = schedule("0 * * * *", "UTC");
    // Last run at 08:00, schedule changed at 10:30: 09:00 and 10:00 were not due under it.
    let d = decide(
        &s,
        Some(at("2026-05-05T08:00Z")),
        at("2026-05-05T10:30Z"),
        at("2026-05-05T11:05Z"),
        None,
        ConcurrencyPolicy::Allow,
        false,
    );
    assert_eq!(d, run("2026-05-05T11:00Z", 0, false));
}

#[test]
fn after_downtime_only_the_latest_due_time_runs_and_the_rest_are_counted() {
    let s = schedule("0 * * * *", "UTC");
    let d = decide(
        &s,
        Some(at("2026-05-05T00:00Z")),
        at("2026-01-01T00:00Z"),
        at("2026-05-05T05:30Z"),
        None,
        ConcurrencyPolicy::Allow,
        false,
    );
    assert_eq!(d, run("2026-05-05T05:00Z", 4, false));
}

#[test]
fn a_year_of_downtime_on_a_minute_schedule_is_counted_exactly() {
    for tz in [NY, BERLIN, "UTC"] {
        let s = schedule("* * * * *", tz);
        let last = at("2025-01-01T00:00Z");
        let now = at("2026-01-01T00:00:30Z");
        let d = decide(
            &s,
            Some(last),
            last,
            now,
            None,
            ConcurrencyPolicy::Allow,
            false,
        );
        assert_eq!(d, run("2026-01-01T00:00Z", 365 * 1440 - 1, false), "{tz}");
    }
    // Ten years of a sparse schedule, too.
    let s = schedule("30 2 * * *", NY);
    let d = decide(
        &s,
        Some(at("2016-01-01T00:00Z")),
        at("2016-01-01T00:00Z"),
        at("2026-01-01T12:00Z"),
        None,
        ConcurrencyPolicy::Allow,
        false,
    );
    assert_eq!(d, run("2026-01-01T02:30-05:00", 3653, false));
}

#[test]
fn a_latest_due_time_past_the_starting_deadline_is_skipped() {
    let s = schedule("0 * * * *", "UTC");
    let last = Some(at("2026-05-05T00:00Z"));
    let since = at("2026-01-01T00:00Z");
    let deadline = Some(Duration::from_secs(600));
    let d = decide(
        &s,
        last,
        since,
        at("2026-05-05T05:10:01Z"),
        deadline,
        ConcurrencyPolicy::Allow,
        false,
    );
    assert_eq!(
        d,
        Decision::Skip {
            scheduled: at("2026-05-05T05:00Z"),
            missed: 4,
            reason: SkipReason::DeadlineExceeded
        }
    );
    // Exactly at the deadline is still in time.
    let d = decide(
        &s,
        last,
        since,
        at("2026-05-05T05:10Z"),
        deadline,
        ConcurrencyPolicy::Allow,
        false,
    );
    assert_eq!(d, run("2026-05-05T05:00Z", 4, false));
    // An absurd deadline never expires.
    let d = decide(
        &s,
        last,
        since,
        at("2026-05-05T05:10:01Z"),
        Some(Duration::MAX),
        ConcurrencyPolicy::Allow,
        false,
    );
    assert_eq!(d, run("2026-05-05T05:00Z", 4, false));
}

#[test]
fn concurrency_policy_decides_what_an_active_run_means() {
    let s = schedule("0 * * * *", "UTC");
    let last = Some(at("2026-05-05T10:00Z"));
    let since = at("2026-01-01T00:00Z");
    let now = at("2026-05-05T11:00:05Z");
    let go = |policy, active| decide(&s, last, since, now, None, policy, active);
    assert_eq!(
        go(ConcurrencyPolicy::Allow, true),
        run("2026-05-05T11:00Z", 0, false)
    );
    assert_eq!(
        go(ConcurrencyPolicy::Allow, false),
        run("2026-05-05T11:00Z", 0, false)
    );
    assert_eq!(
        go(ConcurrencyPolicy::Forbid, true),
        Decision::Skip {
            scheduled: at("2026-05-05T11:00Z"),
            missed: 0,
            reason: SkipReason::ConcurrencyForbid
        }
    );
    assert_eq!(
        go(ConcurrencyPolicy::Forbid, false),
        run("2026-05-05T11:00Z", 0, false)
    );
    assert_eq!(
        go(ConcurrencyPolicy::Replace, true),
        run("2026-05-05T11:00Z", 0, true)
    );
    assert_eq!(
        go(ConcurrencyPolicy::Replace, false),
        run("2026-05-05T11:00Z", 0, false)
    );
}

#[test]
fn the_deadline_is_checked_before_the_policy() {
    let s = schedule("0 * * * *", "UTC");
    let d = decide(
        &s,
        Some(at("2026-05-05T10:00Z")),
        at("2026-01-01T00:00Z"),
        at("2026-05-05T11:30Z"),
        Some(Duration::from_secs(60)),
        ConcurrencyPolicy::Forbid,
        true,
    );
    assert!(
        matches!(
            d,
            Decision::Skip {
                reason: SkipReason::DeadlineExceeded,
                ..
            }
        ),
        "{d:?}"
    );
}

#[test]
fn a_clock_that_went_back_does_not_rerun_times_already_scheduled() {
    let s = schedule("0 * * * *", "UTC");
    let d = decide(
        &s,
        Some(at("2026-05-05T12:00Z")),
        at("2026-01-01T00:00Z"),
        at("2026-05-05T10:30Z"),
        None,
        ConcurrencyPolicy::Allow,
        false,
    );
    assert_eq!(
        d,
        Decision::Wait {
            until: Some(at("2026-05-05T13:00Z"))
        }
    );
}

#[test]
fn concurrency_policy_parses_and_prints_its_names() {
    for p in [
        ConcurrencyPolicy::Allow,
        ConcurrencyPolicy::Forbid,
        ConcurrencyPolicy::Replace,
    ] {
        assert_eq!(p.to_string().parse::<ConcurrencyPolicy>(), Ok(p));
    }
    assert_eq!(ConcurrencyPolicy::default(), ConcurrencyPolicy::Allow);
    let e = "forbid"
        .parse::<ConcurrencyPolicy>()
        .expect_err("case matters");
    assert_eq!(
        e.to_string(),
        "unknown concurrency policy `forbid`; use Allow, Forbid or Replace (names are \
         case-sensitive: Forbid)"
    );
    assert!("Never".parse::<ConcurrencyPolicy>().is_err());
}

/// A scheduler loop on a simulated clock: `decide` every `tick` from `from` to `to`, recording
/// each decision's time as `last` as the driver would. Returns the times run and skipped, and
/// the total reported missed.
fn drive(
    s: &Schedule,
    from: Timestamp,
    to: Timestamp,
    tick: SignedDuration,
) -> (Vec<Timestamp>, u64) {
    let mut last = None;
    let mut runs = Vec::new();
    let mut missed_total = 0;
    let mut now = from;
    while now <= to {
        match decide(s, last, from, now, None, ConcurrencyPolicy::Allow, false) {
            Decision::Run {
                scheduled, missed, ..
            }
            | Decision::Skip {
                scheduled, missed, ..
            } => {
                assert!(scheduled <= now && last.is_none_or(|l| scheduled > l));
                runs.push(scheduled);
                missed_total += missed;
                last = Some(scheduled);
            }
            Decision::Wait { until } => {
                assert!(until.is_some_and(|u| u > now), "waits for the future");
            }
        }
        now += tick;
    }
    (runs, missed_total)
}

#[test]
fn a_scheduler_ticking_through_dst_days_runs_each_fixed_time_once() {
    let tick = SignedDuration::from_secs(20);
    let cases = [
        (
            NY,
            "30 1 * * *",
            "2026-11-01T00:00-04:00",
            "2026-11-01T03:00-05:00",
            vec!["2026-11-01T01:30-04:00"],
        ),
        (
            BERLIN,
            "0 2 * * *",
            "2026-10-25T00:00+02:00",
            "2026-10-25T04:00+01:00",
            vec!["2026-10-25T02:00+02:00"],
        ),
        (
            NY,
            "0,30 2 * * *",
            "2026-03-08T00:00-05:00",
            "2026-03-08T05:00-04:00",
            vec!["2026-03-08T03:00-04:00"],
        ),
        (
            BERLIN,
            "30 2 * * *",
            "2026-03-29T00:00+01:00",
            "2026-03-29T05:00+02:00",
            vec!["2026-03-29T03:00+02:00"],
        ),
    ];
    for (tz, expr, from, to, want) in cases {
        let s = schedule(expr, tz);
        let (runs, missed) = drive(&s, at(from), at(to), tick);
        assert_eq!(local(&s, &runs), want, "{tz} {expr}");
        assert_eq!(missed, 0);
    }
}

// ---------------------------------------------------------------------------------------------
// Properties

/// One item of a generated field, kept structured so an oracle can expand it independently.
#[derive(Debug, Clone)]
enum Item {
    Star,
    Value(u32),
    Range(u32, u32),
    Step(Option<(u32, u32)>, u32),
}

/// A field: its items, and the bounds `*` covers.
#[derive(Debug, Clone)]
struct GenField {
    items: Vec<Item>,
    min: u32,
    last: u32,
}

impl GenField {
    fn text(&self) -> String {
        let items: Vec<String> = self
            .items
            .iter()
            .map(|i| match i {
                Item::Star => "*".to_owned(),
                Item::Value(v) => v.to_string(),
                Item::Range(a, b) => format!("{a}-{b}"),
                Item::Step(None, n) => format!("*/{n}"),
                Item::Step(Some((a, b)), n) => format!("{a}-{b}/{n}"),
            })
            .collect();
        items.join(",")
    }

    /// The values it matches (7 folded to 0 by the caller for day of week).
    fn values(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for i in &self.items {
            match *i {
                Item::Star => out.extend(self.min..=self.last),
                Item::Value(v) => out.push(v),
                Item::Range(a, b) => out.extend(a..=b),
                Item::Step(None, n) => out.extend((self.min..=self.last).step_by(n as usize)),
                Item::Step(Some((a, b)), n) => out.extend((a..=b).step_by(n as usize)),
            }
        }
        out
    }
}

fn gen_field(min: u32, max: u32, last: u32, hot: Vec<u32>) -> impl Strategy<Value = GenField> {
    let value = prop_oneof![3 => proptest::sample::select(hot), 1 => min..=max];
    let width = last - min + 1;
    let item = prop_oneof![
        3 => Just(Item::Star),
        4 => value.clone().prop_map(Item::Value),
        2 => (value.clone(), 0..4u32).prop_map(move |(a, len)| Item::Range(a, (a + len).min(max))),
        2 => (1..width).prop_map(|n| Item::Step(None, n)),
        1 => (min..=max, min..=max, 1..width).prop_map(|(a, b, n)| {
            let (a, b) = if a <= b { (a, b) } else { (b, a) };
            Item::Step(Some((a, b.max(a))), n)
        }),
    ];
    proptest::collection::vec(item, 1..3).prop_map(move |items| GenField { items, min, last })
}

#[derive(Debug, Clone)]
struct GenExpr {
    fields: [GenField; 5],
}

impl GenExpr {
    fn text(&self) -> String {
        self.fields
            .iter()
            .map(GenField::text)
            .collect::<Vec<_>>()
            .join(" ")
    }

    /// The oracle, written from the spec rather than from the crate's bit sets.
    fn oracle(&self) -> Oracle {
        let set = |f: &GenField| {
            let mut s = [false; 64];
            for v in f.values() {
                s[v as usize] = true;
            }
            s
        };
        let [minute, hour, dom, month, dow] = &self.fields;
        let mut weekdays = [false; 64];
        for v in dow.values() {
            weekdays[(v % 7) as usize] = true;
        }
        let days = set(dom);
        let dom_all = (1..=31).all(|d| days[d]);
        let dow_all = (0..7).all(|d| weekdays[d]);
        Oracle {
            minutes: set(minute),
            hours: set(hour),
            days,
            months: set(month),
            weekdays,
            either_day: !dom_all && !dow_all,
            interval_like: self.interval_like(),
        }
    }

    /// Interval-like by the spec: the hour field is one `*`, `0-23`, or a step over the day.
    fn interval_like(&self) -> bool {
        matches!(
            self.fields[1].items.as_slice(),
            [
                Item::Star
                    | Item::Step(None, _)
                    | Item::Range(0, 23)
                    | Item::Step(Some((_, 23)), _)
            ]
        )
    }
}

/// Which values each field of a generated expression matches.
struct Oracle {
    minutes: [bool; 64],
    hours: [bool; 64],
    days: [bool; 64],
    months: [bool; 64],
    weekdays: [bool; 64],
    /// Both day fields restricted: either may match.
    either_day: bool,
    interval_like: bool,
}

impl Oracle {
    /// Does the expression match this local time?
    fn matches(&self, dt: jiff::civil::DateTime) -> bool {
        let dom = self.days[dt.day() as usize];
        let dow = self.weekdays[dt.weekday().to_sunday_zero_offset() as usize];
        let day = if self.either_day {
            dom || dow
        } else {
            dom && dow
        };
        dt.second() == 0
            && self.minutes[dt.minute() as usize]
            && self.hours[dt.hour() as usize]
            && self.months[dt.month() as usize]
            && day
    }
}

fn gen_expr() -> impl Strategy<Value = GenExpr> {
    (
        gen_field(0, 59, 59, vec![0, 15, 30, 45, 59]),
        // Hours around the DST changes of the zones below.
        gen_field(0, 23, 23, vec![0, 1, 2, 3]),
        prop_oneof![4 => Just(GenField { items: vec![Item::Star], min: 1, last: 31 }), 1 => gen_field(1, 31, 31, vec![1, 25, 29, 31])],
        prop_oneof![4 => Just(GenField { items: vec![Item::Star], min: 1, last: 12 }), 1 => gen_field(1, 12, 12, vec![2, 3, 10, 11])],
        prop_oneof![3 => Just(GenField { items: vec![Item::Star], min: 0, last: 6 }), 1 => gen_field(0, 7, 6, vec![0, 6, 7])],
    )
        .prop_map(|(a, b, c, d, e)| GenExpr { fields: [a, b, c, d, e] })
}

const ZONES: [&str; 7] = [
    "UTC",
    NY,
    BERLIN,
    "Australia/Lord_Howe",
    "America/Santiago",
    "Asia/Kolkata",
    "Australia/Sydney",
];

/// A window of a few days, mostly centred on one of the zone's transitions in 2024–2030.
fn gen_window() -> impl Strategy<Value = (&'static str, Timestamp, Timestamp)> {
    (
        proptest::sample::select(ZONES.to_vec()),
        2024..2031i16,
        0..3usize,
        -40..40i64,
        12..96i64,
    )
        .prop_map(|(zone, year, nth, shift_h, len_h)| {
            let tz = TimeZone::get(zone).expect("zone");
            let start = jiff::civil::date(year, 1, 1)
                .at(0, 0, 0, 0)
                .to_zoned(tz.clone())
                .expect("exists")
                .timestamp();
            let centre = tz
                .following(start)
                .nth(nth)
                .map_or(start, |t| t.timestamp());
            let from = centre + SignedDuration::from_hours(shift_h)
                - SignedDuration::from_hours(len_h / 2)
                + SignedDuration::from_secs(7);
            (zone, from, from + SignedDuration::from_hours(len_h))
        })
}

/// The fire times by brute force, minute by minute in real time, straight from the rules.
fn brute_force(g: &Oracle, tz: &TimeZone, from: Timestamp, to: Timestamp) -> Vec<Timestamp> {
    let mut fires = Vec::new();
    let first = Timestamp::from_second(from.as_second() - from.as_second().rem_euclid(60))
        .expect("in range");
    let mut t = first;
    while t <= to {
        if t > from {
            let civil = tz.to_datetime(t);
            if g.matches(civil) {
                let first_occurrence =
                    tz.to_ambiguous_timestamp(civil).earlier().expect("exists") == t;
                if g.interval_like || first_occurrence {
                    fires.push(t);
                }
            }
        }
        t += SignedDuration::from_mins(1);
    }
    if !g.interval_like {
        // Gap fires: a transition forward whose skipped minutes include a match.
        for tr in tz.following(from) {
            let at = tr.timestamp();
            if at > to {
                break;
            }
            let before = tz.to_offset(at - SignedDuration::from_nanos(1));
            if tr.offset() <= before {
                continue;
            }
            let mut c = before.to_datetime(at);
            let end = tr.offset().to_datetime(at);
            let mut hit = false;
            while c < end {
                hit |= g.matches(c);
                c += SignedDuration::from_mins(1);
            }
            if hit && !fires.contains(&at) {
                fires.push(at);
            }
        }
        fires.sort();
    }
    fires
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Fire times are strictly increasing, each is matched by the expression in local time (or
    /// is the end of a gap holding a match, for a fixed-hour schedule), a fixed-hour schedule
    /// never fires twice for one local time, and the backward search and the count agree.
    #[test]
    fn next_after_increases_and_fires_only_on_matches(g in gen_expr(), (zone, from, _) in gen_window()) {
        let s = Schedule::parse(&g.text(), Some(zone));
        prop_assume!(s.is_ok());
        let s = s.expect("checked");
        prop_assert_eq!(s.is_interval_like(), g.interval_like());
        let tz = TimeZone::get(zone).expect("zone");
        let oracle = g.oracle();
        let mut t = from;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..40 {
            let Some(next) = s.next_after(t) else { break };
            prop_assert!(next > t);
            let civil = tz.to_datetime(next);
            if !oracle.matches(civil) {
                // Only the documented gap case: a transition forward, with a match in the gap.
                prop_assert!(!g.interval_like(), "{} fired off-pattern at {}", g.text(), civil);
                let tr = tz.preceding(next + SignedDuration::from_nanos(1)).next().expect("a transition");
                prop_assert_eq!(tr.timestamp(), next);
            }
            if !g.interval_like() {
                prop_assert!(seen.insert(civil), "{} fired twice at {}", g.text(), civil);
            }
            prop_assert_eq!(s.last_at_or_before(next), Some(next));
            prop_assert_eq!(s.next_after(s.last_at_or_before(next - SignedDuration::from_nanos(1)).expect("earlier fire")), Some(next));
            t = next;
        }
    }

    /// Over windows around DST changes, the fire times equal a brute-force walk of every real
    /// minute, and `count_between` counts them exactly.
    #[test]
    fn fires_equal_brute_force_around_transitions(g in gen_expr(), (zone, from, to) in gen_window()) {
        let s = Schedule::parse(&g.text(), Some(zone));
        prop_assume!(s.is_ok());
        let s = s.expect("checked");
        let tz = TimeZone::get(zone).expect("zone");
        let got = s.fires_between(from, to, 100_000);
        let want = brute_force(&g.oracle(), &tz, from, to);
        prop_assert_eq!(&got, &want, "{} in {}", g.text(), zone);
        let open = got.iter().filter(|t| **t < to).count() as u64;
        prop_assert_eq!(s.count_between(from, to), open);
    }

    /// A scheduler ticking at any interval runs each due time at most once, in order, and every
    /// fire time is either run or counted as missed.
    #[test]
    fn a_ticking_scheduler_accounts_for_every_fire(g in gen_expr(), (zone, from, to) in gen_window(), tick_min in 1..180i64) {
        let s = Schedule::parse(&g.text(), Some(zone));
        prop_assume!(s.is_ok());
        let s = s.expect("checked");
        let tick = SignedDuration::from_mins(tick_min);
        let (runs, missed) = drive(&s, from, to, tick);
        let mut end = from;
        while end + tick <= to {
            end += tick;
        }
        let all = s.fires_between(from, end, 100_000);
        prop_assert!(runs.windows(2).all(|w| w[0] < w[1]));
        prop_assert!(runs.iter().all(|r| all.contains(r)));
        prop_assert_eq!(runs.len() as u64 + missed, all.len() as u64);
    }
}
