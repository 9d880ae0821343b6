//! Cron schedules in IANA time zones, as pure functions of a clock: when a schedule fires,
//! and what a scheduler should do at `now` after downtime, across DST changes and with a
//! concurrency policy. No tokio, no wall clock: every function takes the time it is asked about.
//!
//! # Expressions
//! Five fields, `minute hour day-of-month month day-of-week`, separated by spaces or tabs:
//! - each field is `*`, a value, a range `a-b`, or a comma-separated list of these;
//! - a step `/n` follows `*` or a range (`*/15`, `8-18/2`); `a/n` means `a` to the field's end
//!   in steps of `n` (Kubernetes' and cronie's reading, so `0/15` works). A step must be smaller
//!   than the number of values in its field: `*/90` in minutes is refused, because steps restart
//!   every hour and cannot mean "every 90 minutes";
//! - months take `JAN`–`DEC`, days of the week `SUN`–`SAT` (any case, ranges allowed); day of
//!   week 0 and 7 are Sunday; `?` means `*` in the two day fields;
//! - the macros `@yearly` `@annually` (`0 0 1 1 *`), `@monthly` (`0 0 1 * *`), `@weekly`
//!   (`0 0 * * 0`), `@daily` `@midnight` (`0 0 * * *`) and `@hourly` (`0 * * * *`).
//!
//! Refused, each with a message saying why: seconds or years (6 or 7 fields), a `CRON_TZ=`/`TZ=`
//! prefix (the time zone is its own field), `@reboot` and `@every`, Quartz's `L`, `W` and `#`,
//! backwards ranges, and expressions that can never fire (`0 0 30 2 *`).
//!
//! **Day of month and day of week** follow the Vixie/POSIX rule: when both are restricted, a
//! day matches if *either* matches (`0 0 13 * FRI` fires on every 13th and every Friday); when
//! one is unrestricted, only the other one counts. "Unrestricted" means matching every value:
//! `*`, `?`, `*/1` or `1-31`. Vixie cron also treats `*/2` as unrestricted because it starts with
//! `*`; skiff, like Kubernetes, counts `*/2` as a restriction (so `0 0 */2 * FRI` is odd days *or*
//! Fridays).
//!
//! # Time zones and DST
//! A schedule runs on wall-clock time in its IANA time zone (UTC when none is given). When
//! clocks change, what happens depends on the hour field:
//! - **Fixed-hour schedules** (the hour field names hours: `30 2 * * *`, `0 1-5 * * *`,
//!   `*/15 2 * * *`) behave like Debian's cron. A time that falls in a spring-forward gap runs
//!   **once**, at the first instant after the gap (03:00 local time when 02:00 jumps to 03:00);
//!   several times in the same gap (`0,30 2 * * *`) run once together, not once each. A time
//!   in a fall-back's repeated hour runs **once**, at its first occurrence, and not again when
//!   the hour repeats (Kubernetes runs it twice, kubernetes/kubernetes#121594).
//! - **Interval-like schedules** (the hour field is `*`, `0-23`, or a step reaching the end of
//!   the day: `*/2`, `1/3`, `0-23/4`) keep their cadence in real time: a gap simply has no fire
//!   times, and a repeated hour has fire times in both of its passes (`*/15 * * * *` fires every
//!   15 real minutes straight through a fall-back).
//!
//! # Missed runs
//! [`decide`] looks at the due times in `(max(last, since), now]` (a fire time equal to `now` is
//! due). It runs only the **latest** one, once, and reports how many earlier ones it skips as
//! `missed`; there is no "too many missed" limit and no backfill. When the latest due time is
//! more than `starting_deadline` before `now`, it is skipped instead. The latest due time is found
//! by walking back from `now`, and `missed` is an exact count computed a day at a time (each day
//! contributes its number of matching minutes, corrected at each DST change), so a year of
//! downtime on a minute schedule costs a few hundred steps, not half a million.
//!
//! # Limitations
//! - Time zone names are looked up in the system's tzdb (`/usr/share/zoneinfo`, or `$TZDIR`),
//!   through jiff; a zone unknown there is refused.
//! - Cron has minute resolution; fire times are whole minutes of local time, except that a
//!   fixed-hour time caught in a gap fires at the instant the gap ends.
#![forbid(unsafe_code)]

mod decide;
mod expr;

use jiff::Timestamp;
use jiff::tz::{AmbiguousOffset, Offset, TimeZone};

pub use decide::{ConcurrencyPolicy, Decision, ParsePolicyError, SkipReason, decide};
pub use expr::Field;
use expr::{Fields, Minute};

/// Why an expression or time zone was refused. `Display` gives the reason as a user should
/// read it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The expression is empty or blank.
    #[error(
        "the schedule is empty; write 5 fields (minute hour day-of-month month day-of-week) or a \
         macro such as @daily"
    )]
    Empty,
    /// The expression does not have 5 fields.
    #[error(
        "`{expression}` has {found} fields; skiff takes 5 (minute hour day-of-month month \
         day-of-week){}",
        field_count_hint(*found)
    )]
    FieldCount {
        /// The expression as given.
        expression: String,
        /// How many fields it has.
        found: usize,
    },
    /// The expression starts with `CRON_TZ=` or `TZ=`.
    #[error(
        "`{prefix}=` in the schedule is not supported; leave it out and put the time zone in the \
         timezone field (an IANA name like Europe/Berlin)"
    )]
    TimeZonePrefix {
        /// `CRON_TZ` or `TZ`, as written.
        prefix: String,
    },
    /// An `@` macro skiff does not know.
    #[error("{}", unknown_macro_message(name))]
    UnknownMacro {
        /// The macro as written, with its `@`.
        name: String,
    },
    /// A macro followed by more text.
    #[error("the macro {name} stands alone; nothing may follow it")]
    MacroNotAlone {
        /// The macro as written, with its `@`.
        name: String,
    },
    /// A value outside its field's range.
    #[error("{field} value {value} is out of range {min}-{max}")]
    OutOfRange {
        /// The field.
        field: Field,
        /// The value as written.
        value: String,
        /// The smallest value the field takes.
        min: u32,
        /// The largest value the field takes.
        max: u32,
    },
    /// A field that does not parse.
    #[error("{field} field `{text}`: {reason}")]
    InvalidField {
        /// The field.
        field: Field,
        /// The field, or the item of it, as written.
        text: String,
        /// What is wrong with it.
        reason: String,
    },
    /// No date ever matches the day-of-month and month fields.
    #[error("`{expression}` never fires: none of its months has any of its days of the month")]
    NeverFires {
        /// The expression as given.
        expression: String,
    },
    /// The time zone was given but is blank.
    #[error("the time zone is empty; leave it out for UTC or give an IANA name like Europe/Berlin")]
    EmptyTimeZone,
    /// The time zone is not in the tz database.
    #[error(
        "unknown time zone `{name}`: not an IANA time zone name like Europe/Berlin{}",
        suggestion.as_deref().map(|s| format!("; did you mean {s}?")).unwrap_or_default()
    )]
    UnknownTimeZone {
        /// The name as given.
        name: String,
        /// The closest known name, when one is close.
        suggestion: Option<String>,
    },
}

fn field_count_hint(found: usize) -> &'static str {
    match found {
        6 => "; seconds are not supported",
        7 => "; seconds and years are not supported",
        _ => "",
    }
}

fn unknown_macro_message(name: &str) -> String {
    const KNOWN: &str = "@yearly @annually @monthly @weekly @daily @midnight @hourly";
    if name.eq_ignore_ascii_case("@reboot") {
        format!("@reboot is not a time schedule; skiff takes {KNOWN} or 5 fields")
    } else if name.eq_ignore_ascii_case("@every") {
        "@every is not supported; write a step instead, e.g. `*/5 * * * *` for every 5 minutes"
            .to_owned()
    } else {
        format!("unknown macro `{name}`; skiff takes {KNOWN}")
    }
}

/// A parsed cron expression in a time zone: the single source of its fire times.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    /// The expression as given (trimmed).
    expression: String,
    /// The zone's IANA name, or `UTC`.
    timezone: String,
    /// The zone, loaded once: offsets, transitions and ambiguity come from here.
    tz: TimeZone,
    /// What the five fields match, as bit sets.
    fields: Fields,
}

impl Schedule {
    /// Parses a standard 5-field cron expression (minute hour day-of-month month day-of-week;
    /// names like MON/JAN, ranges, lists, steps, `*`; and the macros @yearly @annually @monthly
    /// @weekly @daily @midnight @hourly) in IANA time zone `timezone` (None = UTC).
    ///
    /// Refuses, with a message for the user: 6 or 7 fields, `CRON_TZ=`/`TZ=` prefixes, unknown
    /// time zone names, out-of-range values (naming the field), empty input, and expressions
    /// that never fire. See the crate docs for the full syntax.
    pub fn parse(expr: &str, timezone: Option<&str>) -> Result<Schedule, ScheduleError> {
        let expression = expr.trim();
        let tokens: Vec<&str> = expression.split_whitespace().collect();
        let Some(first) = tokens.first() else {
            return Err(ScheduleError::Empty);
        };
        if let Some((prefix, _)) = first.split_once('=')
            && (prefix.eq_ignore_ascii_case("CRON_TZ") || prefix.eq_ignore_ascii_case("TZ"))
        {
            return Err(ScheduleError::TimeZonePrefix {
                prefix: prefix.to_owned(),
            });
        }
        let parts: [&str; 5] = if first.starts_with('@') {
            let expanded = match first.to_ascii_lowercase().as_str() {
                "@yearly" | "@annually" => ["0", "0", "1", "1", "*"],
                "@monthly" => ["0", "0", "1", "*", "*"],
                "@weekly" => ["0", "0", "*", "*", "0"],
                "@daily" | "@midnight" => ["0", "0", "*", "*", "*"],
                "@hourly" => ["0", "*", "*", "*", "*"],
                _ => {
                    return Err(ScheduleError::UnknownMacro {
                        name: (*first).to_owned(),
                    });
                }
            };
            if tokens.len() > 1 {
                return Err(ScheduleError::MacroNotAlone {
                    name: (*first).to_owned(),
                });
            }
            expanded
        } else {
            let found = tokens.len();
            tokens.try_into().map_err(|_| ScheduleError::FieldCount {
                expression: expression.to_owned(),
                found,
            })?
        };
        let fields = Fields::parse(parts)?;
        if !fields.ever_matches() {
            return Err(ScheduleError::NeverFires {
                expression: expression.to_owned(),
            });
        }
        let (tz, timezone) = zone(timezone)?;
        Ok(Schedule {
            expression: expression.to_owned(),
            timezone,
            tz,
            fields,
        })
    }

    /// The expression as given (surrounding whitespace trimmed).
    pub fn expression(&self) -> &str {
        &self.expression
    }

    /// The time zone's IANA name as the tz database spells it, or `UTC` when none was given.
    pub fn timezone(&self) -> &str {
        &self.timezone
    }

    /// Whether the schedule is interval-like (its hour field is `*`, `0-23`, or a step reaching
    /// the end of the day) rather than fixed-hour; this decides its behaviour across DST changes.
    pub fn is_interval_like(&self) -> bool {
        self.fields.interval_like()
    }

    /// The first fire time strictly after `after`.
    ///
    /// `None` only past the end of the supported calendar (year 9999).
    pub fn next_after(&self, after: Timestamp) -> Option<Timestamp> {
        self.first_fire(after, None)
    }

    /// The last fire time at or before `at`.
    pub fn last_at_or_before(&self, at: Timestamp) -> Option<Timestamp> {
        self.last_fire(at, None)
    }

    /// Every fire time in (from, to], at most `limit`, in order.
    pub fn fires_between(&self, from: Timestamp, to: Timestamp, limit: usize) -> Vec<Timestamp> {
        let mut fires = Vec::new();
        let mut cursor = from;
        while fires.len() < limit {
            match self.first_fire(cursor, Some(to)) {
                Some(t) => {
                    fires.push(t);
                    cursor = t;
                }
                None => break,
            }
        }
        fires
    }

    /// How many fire times lie strictly between `after` and `before`, exactly.
    ///
    /// Counted a day at a time rather than fire by fire, so a year of a minute schedule costs
    /// about 365 steps.
    pub fn count_between(&self, after: Timestamp, before: Timestamp) -> u64 {
        if before <= after {
            return 0;
        }
        let mut n = 0;
        let mut walk = Segments::forward(&self.tz, after);
        loop {
            let seg = walk.current();
            let hi = seg.end.map_or(before, |e| e.min(before));
            if let Some(prev) = seg.prev_offset
                && seg.start < before
                && self.gap_fire(seg.start, prev, seg.offset)
            {
                // The gap's fire is the instant the gap ends; when that instant is itself a
                // matching whole minute, the segment's own count has it already.
                let civil = seg.offset.to_datetime(seg.start);
                if !(Minute::is_whole(civil) && self.fields.matches(Minute::floor(civil))) {
                    n += 1;
                }
            }
            if let (Some(lo), Some(until)) =
                (seg.civil_lo(), Minute::ceil(seg.offset.to_datetime(hi)))
                && lo < until
            {
                n += self.fields.count_matches(lo, until);
                if !self.fields.interval_like() {
                    // A fixed-hour time repeated by a fall-back counts once, at its first
                    // occurrence. The repeats are the segment's first matches (the repeated
                    // hour directly follows the change), so they are counted off from the
                    // front.
                    let mut c = Some(lo);
                    while let Some(m) = c.and_then(|c| self.fields.next_match(c, Some(until))) {
                        if !self.is_repeat(m, seg.offset) {
                            break;
                        }
                        n = n.saturating_sub(1);
                        c = m.succ();
                    }
                }
            }
            match seg.end {
                Some(end) if end < before => walk.advance(),
                _ => return n,
            }
        }
    }

    /// The first fire time in `(after, until]` (`until` = None: unbounded).
    fn first_fire(&self, after: Timestamp, until: Option<Timestamp>) -> Option<Timestamp> {
        if until.is_some_and(|u| u <= after) {
            return None;
        }
        let mut walk = Segments::forward(&self.tz, after);
        loop {
            let seg = walk.current();
            if let Some(prev) = seg.prev_offset
                && self.gap_fire(seg.start, prev, seg.offset)
            {
                return Some(seg.start);
            }
            // Civil minutes of this segment: from its start, up to (excluding) its end and
            // (including) `until`.
            let end = seg
                .end
                .and_then(|e| Minute::ceil(seg.offset.to_datetime(e)));
            let last = until.and_then(|u| Minute::floor(seg.offset.to_datetime(u)).succ());
            let bound = match (end, last) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let mut c = seg.civil_lo();
            while let Some(m) = c.and_then(|c| self.fields.next_match(c, bound)) {
                if self.fields.interval_like() || !self.is_repeat(m, seg.offset) {
                    return seg.offset.to_timestamp(m.to_datetime()).ok();
                }
                c = m.succ();
            }
            let end = seg.end?;
            if until.is_some_and(|u| end > u) {
                return None;
            }
            walk.advance();
        }
    }

    /// The last fire time in `(after, at]` (`after` = None: unbounded).
    fn last_fire(&self, at: Timestamp, after: Option<Timestamp>) -> Option<Timestamp> {
        // The segment holding `at` starts at the last transition at or before it.
        let probe = at
            .checked_add(jiff::SignedDuration::from_nanos(1))
            .unwrap_or(at);
        let mut transitions = self.tz.preceding(probe);
        let mut offset = self.tz.to_offset(at);
        let mut hi = Some(Minute::floor(offset.to_datetime(at)));
        loop {
            let start = transitions.next().map(|t| t.timestamp());
            let from_start = start.and_then(|s| Minute::ceil(offset.to_datetime(s)));
            let from_after = after.and_then(|a| Minute::floor(offset.to_datetime(a)).succ());
            let floor = match (from_start, from_after) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            let mut c = hi;
            while let Some(m) = c.and_then(|c| self.fields.prev_match(c, floor)) {
                if self.fields.interval_like() || !self.is_repeat(m, offset) {
                    return offset.to_timestamp(m.to_datetime()).ok();
                }
                c = m.pred();
            }
            let start = start?;
            if after.is_some_and(|a| start <= a) {
                return None;
            }
            let before = self.tz.to_offset(
                start
                    .checked_sub(jiff::SignedDuration::from_nanos(1))
                    .unwrap_or(start),
            );
            if self.gap_fire(start, before, offset) {
                return Some(start);
            }
            hi = Minute::ceil(before.to_datetime(start)).and_then(Minute::pred);
            offset = before;
        }
    }

    /// Whether a fixed-hour schedule fires at `at`, the instant a spring-forward gap (the
    /// offset going from `before` to `after`) ends, because it matches a time in the gap.
    fn gap_fire(&self, at: Timestamp, before: Offset, after: Offset) -> bool {
        if self.fields.interval_like() || after.seconds() <= before.seconds() {
            return false;
        }
        let (Some(lo), Some(hi)) = (
            Minute::ceil(before.to_datetime(at)),
            Minute::ceil(after.to_datetime(at)),
        ) else {
            return false;
        };
        self.fields.next_match(lo, Some(hi)).is_some()
    }

    /// Whether civil minute `m`, read with `offset`, is the second occurrence of a time a
    /// fall-back repeats.
    fn is_repeat(&self, m: Minute, offset: Offset) -> bool {
        match self.tz.to_ambiguous_timestamp(m.to_datetime()).offset() {
            AmbiguousOffset::Fold { before, .. } => before != offset,
            _ => false,
        }
    }
}

/// Looks the time zone up; `None` is UTC.
fn zone(name: Option<&str>) -> Result<(TimeZone, String), ScheduleError> {
    let Some(name) = name else {
        return Ok((TimeZone::UTC, "UTC".to_owned()));
    };
    let name = name.trim();
    if name.is_empty() {
        return Err(ScheduleError::EmptyTimeZone);
    }
    match TimeZone::get(name) {
        Ok(tz) if !machine_dependent(name) => {
            let canonical = tz.iana_name().unwrap_or(name).to_owned();
            Ok((tz, canonical))
        }
        _ => Err(ScheduleError::UnknownTimeZone {
            name: name.to_owned(),
            suggestion: closest_zone(name),
        }),
    }
}

/// Entries of a zoneinfo directory that are not zones of their own but follow the machine's
/// configuration (Debian links `localtime` to `/etc/localtime`).
fn machine_dependent(name: &str) -> bool {
    name.eq_ignore_ascii_case("localtime") || name.eq_ignore_ascii_case("posixrules")
}

/// The known zone name closest to `name`, if it is close enough to be a typo.
fn closest_zone(name: &str) -> Option<String> {
    let lower = name.to_ascii_lowercase();
    jiff::tz::db()
        .available()
        .filter(|known| !machine_dependent(known.as_str()))
        .map(|known| {
            let score = strsim::jaro_winkler(&lower, &known.as_str().to_ascii_lowercase());
            (score, known)
        })
        .filter(|(score, _)| *score >= 0.9)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, known)| known.as_str().to_owned())
}

/// A stretch of time with one UTC offset: from a transition (or the starting point) to the next.
#[derive(Clone, Copy)]
struct Segment {
    /// Where it starts: a transition, or the instant a forward walk started after.
    start: Timestamp,
    /// Whether `start` is the walk's exclusive starting point rather than a transition.
    start_exclusive: bool,
    /// The offset in force before `start`, when `start` is a transition.
    prev_offset: Option<Offset>,
    /// The offset in force.
    offset: Offset,
    /// The next transition (exclusive end), if any.
    end: Option<Timestamp>,
}

impl Segment {
    /// The first civil minute that can fire in this segment.
    fn civil_lo(&self) -> Option<Minute> {
        let civil = self.offset.to_datetime(self.start);
        if self.start_exclusive {
            Minute::floor(civil).succ()
        } else {
            Minute::ceil(civil)
        }
    }
}

/// Walks a time zone's constant-offset segments forward from an instant.
struct Segments<'t> {
    transitions: jiff::tz::TimeZoneFollowingTransitions<'t>,
    current: Segment,
    /// The transition ending `current`, with the offset it brings.
    next: Option<(Timestamp, Offset)>,
}

impl<'t> Segments<'t> {
    /// Starts at the segment holding `after`, with `after` itself excluded.
    fn forward(tz: &'t TimeZone, after: Timestamp) -> Segments<'t> {
        let mut transitions = tz.following(after);
        let next = transitions.next().map(|t| (t.timestamp(), t.offset()));
        Segments {
            transitions,
            current: Segment {
                start: after,
                start_exclusive: true,
                prev_offset: None,
                offset: tz.to_offset(after),
                end: next.map(|(at, _)| at),
            },
            next,
        }
    }

    /// The segment the walk is on.
    fn current(&self) -> Segment {
        self.current
    }

    /// Moves to the next segment (no-op after the last transition).
    fn advance(&mut self) {
        let Some((at, offset)) = self.next else {
            return;
        };
        let following = self.transitions.next().map(|t| (t.timestamp(), t.offset()));
        self.current = Segment {
            start: at,
            start_exclusive: false,
            prev_offset: Some(self.current.offset),
            offset,
            end: following.map(|(at, _)| at),
        };
        self.next = following;
    }
}

#[cfg(test)]
mod tests;
