//! The five cron fields: parsing them into bit sets, and searching wall-clock (civil) time,
//! minute by minute in effect but day by day in cost, for the minutes they match.
//!
//! Nothing here knows about time zones; `crate::Schedule` maps the civil minutes found here to
//! instants and applies the DST rules.

use std::fmt;

use jiff::civil::{Date, DateTime};

use crate::ScheduleError;

/// One of the five fields of a cron expression; errors name the field they are about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// The first field, 0–59.
    Minute,
    /// The second field, 0–23.
    Hour,
    /// The third field, 1–31.
    DayOfMonth,
    /// The fourth field, 1–12 or JAN–DEC.
    Month,
    /// The fifth field, 0–7 (0 and 7 are Sunday) or SUN–SAT.
    DayOfWeek,
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Field::Minute => "minute",
            Field::Hour => "hour",
            Field::DayOfMonth => "day-of-month",
            Field::Month => "month",
            Field::DayOfWeek => "day-of-week",
        })
    }
}

/// What a field accepts.
struct Spec {
    field: Field,
    /// Smallest value written.
    min: u32,
    /// Largest value written (7 for day-of-week, which means Sunday like 0).
    max: u32,
    /// Largest value `*` and an open-ended `a/n` reach (6 for day-of-week).
    last: u32,
    /// Names for values, the first one standing for `min`.
    names: &'static [&'static str],
}

const MINUTE: Spec = Spec {
    field: Field::Minute,
    min: 0,
    max: 59,
    last: 59,
    names: &[],
};
const HOUR: Spec = Spec {
    field: Field::Hour,
    min: 0,
    max: 23,
    last: 23,
    names: &[],
};
const DAY_OF_MONTH: Spec = Spec {
    field: Field::DayOfMonth,
    min: 1,
    max: 31,
    last: 31,
    names: &[],
};
const MONTH: Spec = Spec {
    field: Field::Month,
    min: 1,
    max: 12,
    last: 12,
    names: &[
        "JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC",
    ],
};
const DAY_OF_WEEK: Spec = Spec {
    field: Field::DayOfWeek,
    min: 0,
    max: 7,
    last: 6,
    names: &["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"],
};

/// Minutes in a day; a minute of the day is `0..MINUTES_PER_DAY`.
const MINUTES_PER_DAY: u32 = 24 * 60;

/// A parsed 5-field expression as bit sets (bit `v` set when value `v` matches).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fields {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    /// Bit 0 is Sunday; 7 is folded into 0 when parsing.
    weekdays: u64,
    /// Both day fields are restricted, so a day matches when either does (Vixie's and POSIX's
    /// OR rule); otherwise both must match, which reduces to the restricted one.
    day_or: bool,
    /// The hour field is `*` or a step over the whole day: the schedule keeps its cadence across
    /// DST changes instead of being a fixed time of day.
    interval_like: bool,
}

impl Fields {
    /// Parses the five whitespace-separated fields (the caller has split them and expanded macros).
    pub(crate) fn parse(fields: [&str; 5]) -> Result<Fields, ScheduleError> {
        let [minute, hour, dom, month, dow] = fields;
        let minutes = parse_field(minute, &MINUTE)?;
        let hours = parse_field(hour, &HOUR)?;
        let days = parse_field(dom, &DAY_OF_MONTH)?;
        let months = parse_field(month, &MONTH)?;
        let weekdays = parse_field(dow, &DAY_OF_WEEK)?;
        let all_days = full_mask(&DAY_OF_MONTH);
        let all_weekdays = full_mask(&DAY_OF_WEEK);
        Ok(Fields {
            minutes,
            hours,
            days,
            months,
            weekdays,
            day_or: days != all_days && weekdays != all_weekdays,
            interval_like: hour_is_interval(hour),
        })
    }

    /// Whether the hour field makes this an interval-like schedule (see the crate docs on DST).
    pub(crate) fn interval_like(&self) -> bool {
        self.interval_like
    }

    /// Whether some day matches at all. Only a restricted day-of-month with an unrestricted
    /// day-of-week can fail (`0 0 30 2 *`); February counts as having 29 days.
    pub(crate) fn ever_matches(&self) -> bool {
        if self.day_or || self.days == full_mask(&DAY_OF_MONTH) {
            return true;
        }
        const LONGEST: [u32; 13] = [0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
        (1..=12u32).any(|month| {
            bit(self.months, month) && (1..=LONGEST[month as usize]).any(|d| bit(self.days, d))
        })
    }

    /// Whether the day-of-month, month and day-of-week fields match `date`.
    fn day_matches(&self, date: Date) -> bool {
        if !bit(self.months, month_of(date)) {
            return false;
        }
        let dom = bit(self.days, day_of(date));
        let dow = bit(self.weekdays, weekday_of(date));
        if self.day_or { dom || dow } else { dom && dow }
    }

    /// Whether the expression matches the civil minute `m`.
    pub(crate) fn matches(&self, m: Minute) -> bool {
        self.day_matches(m.date)
            && bit(self.hours, m.of_day / 60)
            && bit(self.minutes, m.of_day % 60)
    }

    /// The first matching minute of the day at or after minute-of-day `from`.
    fn next_time(&self, from: u32) -> Option<u32> {
        let (mut h, mut m) = (from / 60, from % 60);
        while h < 24 {
            if bit(self.hours, h) {
                let rest = self.minutes & (u64::MAX << m);
                if rest != 0 {
                    return Some(h * 60 + rest.trailing_zeros());
                }
            }
            h += 1;
            m = 0;
        }
        None
    }

    /// The last matching minute of the day at or before minute-of-day `at`.
    fn prev_time(&self, at: u32) -> Option<u32> {
        let (mut h, mut m) = (at / 60, at % 60);
        loop {
            if bit(self.hours, h) {
                let rest = self.minutes & low_bits(m);
                if rest != 0 {
                    return Some(h * 60 + 63 - rest.leading_zeros());
                }
            }
            if h == 0 {
                return None;
            }
            h -= 1;
            m = 59;
        }
    }

    /// How many matching minutes of the day are in `from..until` (minutes of the day).
    fn count_times(&self, from: u32, until: u32) -> u64 {
        if from >= until {
            return 0;
        }
        let last = until - 1;
        let mut n = 0;
        for h in from / 60..=last / 60 {
            if !bit(self.hours, h) {
                continue;
            }
            let lo = if h == from / 60 { from % 60 } else { 0 };
            let hi = if h == last / 60 { last % 60 } else { 59 };
            let window = low_bits(hi) & !(low_bits(lo) >> 1);
            n += u64::from((self.minutes & window).count_ones());
        }
        n
    }

    /// The first matching civil minute in `from..until` (`until` exclusive, `None`: unbounded).
    ///
    /// Cost is one step per day (a month at a time through months that do not match), so a
    /// search is bounded by the longest wait between two matches: eight years, for 29 February.
    pub(crate) fn next_match(&self, from: Minute, until: Option<Minute>) -> Option<Minute> {
        let mut date = from.date;
        let mut start = from.of_day;
        loop {
            if until.is_some_and(|u| date > u.date) {
                return None;
            }
            if !bit(self.months, month_of(date)) {
                date = date.last_of_month().tomorrow().ok()?;
                start = 0;
                continue;
            }
            if self.day_matches(date)
                && let Some(of_day) = self.next_time(start)
            {
                let found = Minute { date, of_day };
                return until.is_none_or(|u| found < u).then_some(found);
            }
            date = date.tomorrow().ok()?;
            start = 0;
        }
    }

    /// The last matching civil minute in `floor..=at` (`floor` inclusive, `None`: unbounded).
    pub(crate) fn prev_match(&self, at: Minute, floor: Option<Minute>) -> Option<Minute> {
        let mut date = at.date;
        let mut end = at.of_day;
        loop {
            if floor.is_some_and(|f| date < f.date) {
                return None;
            }
            if !bit(self.months, month_of(date)) {
                date = date.first_of_month().yesterday().ok()?;
                end = MINUTES_PER_DAY - 1;
                continue;
            }
            if self.day_matches(date)
                && let Some(of_day) = self.prev_time(end)
            {
                let found = Minute { date, of_day };
                return floor.is_none_or(|f| found >= f).then_some(found);
            }
            date = date.yesterday().ok()?;
            end = MINUTES_PER_DAY - 1;
        }
    }

    /// How many civil minutes in `from..until` match, counted a day at a time.
    pub(crate) fn count_matches(&self, from: Minute, until: Minute) -> u64 {
        let mut n = 0;
        let mut date = from.date;
        while date <= until.date {
            if !bit(self.months, month_of(date)) {
                match date.last_of_month().tomorrow() {
                    Ok(next) => date = next,
                    Err(_) => break,
                }
                continue;
            }
            if self.day_matches(date) {
                let lo = if date == from.date { from.of_day } else { 0 };
                let hi = if date == until.date {
                    until.of_day
                } else {
                    MINUTES_PER_DAY
                };
                n += self.count_times(lo, hi);
            }
            match date.tomorrow() {
                Ok(next) => date = next,
                Err(_) => break,
            }
        }
        n
    }
}

/// A civil (wall-clock) minute: a date and a minute of that day. Cron only names whole minutes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Minute {
    date: Date,
    /// `0..MINUTES_PER_DAY`.
    of_day: u32,
}

impl Minute {
    /// The minute `dt` falls in.
    pub(crate) fn floor(dt: DateTime) -> Minute {
        Minute {
            date: dt.date(),
            of_day: hour_of(dt) * 60 + minute_of(dt),
        }
    }

    /// The first whole minute at or after `dt`.
    pub(crate) fn ceil(dt: DateTime) -> Option<Minute> {
        let floor = Minute::floor(dt);
        if dt.second() == 0 && dt.subsec_nanosecond() == 0 {
            Some(floor)
        } else {
            floor.succ()
        }
    }

    /// Whether `dt` is exactly the start of a minute.
    pub(crate) fn is_whole(dt: DateTime) -> bool {
        dt.second() == 0 && dt.subsec_nanosecond() == 0
    }

    /// The next minute.
    pub(crate) fn succ(self) -> Option<Minute> {
        if self.of_day + 1 < MINUTES_PER_DAY {
            Some(Minute {
                of_day: self.of_day + 1,
                ..self
            })
        } else {
            Some(Minute {
                date: self.date.tomorrow().ok()?,
                of_day: 0,
            })
        }
    }

    /// The previous minute.
    pub(crate) fn pred(self) -> Option<Minute> {
        if self.of_day > 0 {
            Some(Minute {
                of_day: self.of_day - 1,
                ..self
            })
        } else {
            Some(Minute {
                date: self.date.yesterday().ok()?,
                of_day: MINUTES_PER_DAY - 1,
            })
        }
    }

    /// The civil datetime at the start of this minute.
    pub(crate) fn to_datetime(self) -> DateTime {
        // Both fit an i8: of_day < 1440, so the hour is < 24 and the minute < 60.
        let hour = (self.of_day / 60) as i8;
        let minute = (self.of_day % 60) as i8;
        self.date.to_datetime(jiff::civil::time(hour, minute, 0, 0))
    }
}

/// Whether bit `v` of `mask` is set.
fn bit(mask: u64, v: u32) -> bool {
    v < 64 && mask >> v & 1 == 1
}

/// Bits `0..=n` set (n < 64).
fn low_bits(n: u32) -> u64 {
    if n >= 63 { u64::MAX } else { (2u64 << n) - 1 }
}

/// Every value `*` stands for in a field.
fn full_mask(spec: &Spec) -> u64 {
    low_bits(spec.last) & !(low_bits(spec.min) >> 1)
}

fn month_of(date: Date) -> u32 {
    u32::from(date.month().unsigned_abs())
}

fn day_of(date: Date) -> u32 {
    u32::from(date.day().unsigned_abs())
}

fn weekday_of(date: Date) -> u32 {
    u32::from(date.weekday().to_sunday_zero_offset().unsigned_abs())
}

fn hour_of(dt: DateTime) -> u32 {
    u32::from(dt.hour().unsigned_abs())
}

fn minute_of(dt: DateTime) -> u32 {
    u32::from(dt.minute().unsigned_abs())
}

/// Parses one field: a comma-separated list of items, each `*`, a value, or a range `a-b`,
/// optionally with a step `/n`; `a/n` means `a` to the end of the field in steps of `n`.
fn parse_field(text: &str, spec: &Spec) -> Result<u64, ScheduleError> {
    let invalid = |reason: String| ScheduleError::InvalidField {
        field: spec.field,
        text: text.to_owned(),
        reason,
    };
    let mut mask = 0u64;
    for item in text.split(',') {
        if item.is_empty() {
            return Err(invalid("a list has an empty item".to_owned()));
        }
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => (range, Some(parse_step(step, spec, item).map_err(invalid)?)),
            None => (item, None),
        };
        let day_field = matches!(spec.field, Field::DayOfMonth | Field::DayOfWeek);
        let (lo, hi) = if range == "*" || (day_field && range == "?") {
            (spec.min, spec.last)
        } else if let Some((a, b)) = range.split_once('-') {
            let lo = parse_value(a, spec, item)?;
            let mut hi = parse_value(b, spec, item)?;
            // `FRI-SUN`: Sunday closes a range as 7.
            if spec.field == Field::DayOfWeek && hi == 0 && lo > 0 {
                hi = 7;
            }
            if lo > hi {
                return Err(invalid(format!(
                    "the range `{range}` runs backwards; cron ranges do not wrap around, so write \
                     two, e.g. `{lo}-{max},{min}-{hi}`",
                    max = spec.last,
                    min = spec.min,
                )));
            }
            (lo, hi)
        } else {
            let v = parse_value(range, spec, item)?;
            (v, if step.is_some() { spec.last.max(v) } else { v })
        };
        let step = step.unwrap_or(1);
        let mut v = lo;
        while v <= hi {
            let v_bit = if spec.field == Field::DayOfWeek && v == 7 {
                0
            } else {
                v
            };
            mask |= 1 << v_bit;
            v += step;
        }
    }
    Ok(mask)
}

/// Parses the `n` of `/n`.
fn parse_step(step: &str, spec: &Spec, item: &str) -> Result<u32, String> {
    let values = spec.last - spec.min + 1;
    let n = parse_number(step).ok_or_else(|| format!("the step in `{item}` is not a number"))?;
    if n == 0 {
        return Err(format!("the step in `{item}` is 0; a step is at least 1"));
    }
    if n >= u64::from(values) {
        return Err(format!(
            "the step {n} in `{item}` is not below the field's {values} values, so it would match \
             only once; steps restart every {period}, so they cannot express a longer interval",
            period = match spec.field {
                Field::Minute => "hour",
                Field::Hour => "day",
                Field::DayOfMonth => "month",
                Field::Month => "year",
                Field::DayOfWeek => "week",
            }
        ));
    }
    // n < values <= 60, so it fits.
    Ok(n as u32)
}

/// Parses a value: a number in the field's range, or one of its names (any case).
fn parse_value(token: &str, spec: &Spec, item: &str) -> Result<u32, ScheduleError> {
    if let Some(n) = parse_number(token) {
        if n < u64::from(spec.min) || n > u64::from(spec.max) {
            return Err(ScheduleError::OutOfRange {
                field: spec.field,
                value: token.to_owned(),
                min: spec.min,
                max: spec.max,
            });
        }
        // n <= max <= 31.
        return Ok(n as u32);
    }
    if let Some(i) = spec
        .names
        .iter()
        .position(|name| name.eq_ignore_ascii_case(token))
    {
        // At most 12 names.
        return Ok(spec.min + i as u32);
    }
    let expected = match spec.field {
        Field::Month => format!("a number {}-{} or a name JAN-DEC", spec.min, spec.max),
        Field::DayOfWeek => format!("a number {}-{} or a name SUN-SAT", spec.min, spec.max),
        _ => format!("a number {}-{}", spec.min, spec.max),
    };
    let reason = if token.is_empty() {
        format!("`{item}` is missing a value; expected {expected}")
    } else {
        format!("`{token}` is not {expected}")
    };
    Err(ScheduleError::InvalidField {
        field: spec.field,
        text: item.to_owned(),
        reason,
    })
}

/// Digits only (no sign), saturating on absurd lengths so they read as out of range.
fn parse_number(token: &str) -> Option<u64> {
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(token.parse::<u64>().unwrap_or(u64::MAX))
}

/// Whether the hour field is interval-like: one item that is `*`, `0-23`, or a step whose range
/// reaches the end of the day (`*/n`, `a/n`, `a-23/n`). Anything else names fixed hours.
fn hour_is_interval(hour: &str) -> bool {
    if hour.contains(',') {
        return false;
    }
    let (range, stepped) = match hour.split_once('/') {
        Some((range, _)) => (range, true),
        None => (hour, false),
    };
    let whole_day = |r: &str| {
        r == "*"
            || r.split_once('-')
                .is_some_and(|(a, b)| is_zero(a) && b == "23")
    };
    whole_day(range) || (stepped && (!range.contains('-') || range.ends_with("-23")))
}

fn is_zero(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b == b'0')
}

#[cfg(test)]
mod tests {
    use jiff::civil::date;

    use super::*;

    fn fields(expr: &str) -> Fields {
        let parts: Vec<&str> = expr.split_whitespace().collect();
        let parts: [&str; 5] = parts.try_into().expect("five fields");
        Fields::parse(parts).expect("parses")
    }

    fn values(mask: u64) -> Vec<u32> {
        (0..64).filter(|v| bit(mask, *v)).collect()
    }

    #[test]
    fn lists_ranges_steps_and_names_expand_to_their_values() {
        let f = fields("0,15-17,*/20 1-10/3 1/10 JAN-mar,DEC mon-FRI");
        assert_eq!(values(f.minutes), vec![0, 15, 16, 17, 20, 40]);
        assert_eq!(values(f.hours), vec![1, 4, 7, 10]);
        assert_eq!(values(f.days), vec![1, 11, 21, 31]);
        assert_eq!(values(f.months), vec![1, 2, 3, 12]);
        assert_eq!(values(f.weekdays), vec![1, 2, 3, 4, 5]);
    }

    #[test]
    fn sunday_is_0_or_7_and_closes_a_range_as_7() {
        assert_eq!(values(fields("0 0 * * 7").weekdays), vec![0]);
        assert_eq!(values(fields("0 0 * * 5-7").weekdays), vec![0, 5, 6]);
        assert_eq!(values(fields("0 0 * * FRI-SUN").weekdays), vec![0, 5, 6]);
        assert_eq!(values(fields("0 0 * * */2").weekdays), vec![0, 2, 4, 6]);
    }

    #[test]
    fn day_fields_use_or_only_when_both_are_restricted() {
        assert!(fields("0 0 13 * FRI").day_or);
        assert!(!fields("0 0 13 * *").day_or);
        assert!(!fields("0 0 * * FRI").day_or);
        assert!(!fields("0 0 ? * FRI").day_or);
        // `1-31` restricts nothing, so only Fridays match.
        assert!(!fields("0 0 1-31 * FRI").day_or);
        // A step does restrict (Vixie would treat `*/2` as `*` here).
        assert!(fields("0 0 */2 * FRI").day_or);
    }

    #[test]
    fn the_hour_field_decides_interval_like() {
        for hour in ["*", "*/2", "0-23", "00-23", "0-23/4", "3/6", "1-23/2"] {
            assert!(hour_is_interval(hour), "{hour}");
        }
        for hour in ["2", "1,2", "0-22", "1-5", "1-5/2", "*/2,3", "0-23,5"] {
            assert!(!hour_is_interval(hour), "{hour}");
        }
    }

    #[test]
    fn searches_forward_backward_and_counts_alike() {
        let f = fields("*/20 9-10 * * MON");
        // 2026-06-01 is a Monday.
        let from = Minute::floor(date(2026, 5, 30).at(0, 0, 0, 0));
        let got = f.next_match(from, None).expect("a Monday comes");
        assert_eq!(got.to_datetime(), date(2026, 6, 1).at(9, 0, 0, 0));
        let back = f
            .prev_match(Minute::floor(date(2026, 6, 8).at(9, 19, 0, 0)), None)
            .expect("the Monday before");
        assert_eq!(back.to_datetime(), date(2026, 6, 8).at(9, 0, 0, 0));
        let until = Minute::floor(date(2026, 6, 8).at(9, 20, 0, 0));
        // 6 on 1 June, then 9:00 on 8 June (9:20 is excluded).
        assert_eq!(f.count_matches(from, until), 7);
    }

    #[test]
    fn never_matching_days_are_found() {
        assert!(!fields("0 0 30 2 *").ever_matches());
        assert!(!fields("0 0 31 4,6,9,11 *").ever_matches());
        assert!(fields("0 0 29 2 *").ever_matches());
        assert!(fields("0 0 30 2 MON").ever_matches());
    }
}
