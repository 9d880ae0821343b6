//! The stored form of a [`Sample`]: [`Totals`], and its row encoding.
//!
//! # Why an encoding of our own
//!
//! A row is written for every busy revision every 10 s, so its size is the history's size.
//! Most of a sample is zero (a healthy service answers 2xx only, in a handful of latency
//! buckets, with no cold starts or refusals), so the encoding is sparse: a bit mask says which
//! of the 36 values are non-zero, and only those follow, each as a LEB128 varint. Durations are
//! stored as whole microseconds, so they are varints too (10 s of one vCPU is 4 bytes instead of
//! an 8-byte float) and, above all, they add up exactly: a day summed from 8,640 10 s rows and
//! from 288 5 min rows gives the same number, bit for bit.
//!
//! `postcard` (serde) was the alternative. It writes every element of a fixed array (one byte
//! per zero at best, so a sample whose requests all fall in three latency buckets still spends
//! 20 bytes on the empty ones), floats as 8 bytes, and would still need the micro-unit
//! conversion and a version byte of ours; the codec below is about 60 lines with no dependency
//! and no serde derive on the public type.
//!
//! # Format, version 1
//!
//! ```text
//! 0x01                      format version
//! varint  mask              bit i set <=> slot i is non-zero (bits 36.. must be clear)
//! varint  value             for each set bit, in increasing i
//! ```
//!
//! Slots: 0–4 requests by class, 5–27 latency buckets, 28 cold starts, 29 throttled, 30–33
//! instance, vCPU, GiB and used-CPU microseconds, 34 instances (max), 35 memory bytes (max).
//! A new layout gets a new version byte; rows of older versions stay readable, so the file
//! never needs rewriting.

use crate::sample::{LATENCY_BUCKETS, Sample};

/// The format version written in the first byte of every row.
const FORMAT_VERSION: u8 = 1;

/// Number of values in a [`Totals`].
pub(crate) const SLOTS: usize = 36;

const REQUESTS: usize = 0;
const LATENCY: usize = REQUESTS + 5;
const COLD_STARTS: usize = LATENCY + LATENCY_BUCKETS;
const THROTTLED: usize = COLD_STARTS + 1;
const INSTANCE_US: usize = THROTTLED + 1;
const VCPU_US: usize = INSTANCE_US + 1;
const GIB_US: usize = VCPU_US + 1;
const CPU_US: usize = GIB_US + 1;
/// Slots from here on are gauges (combined by `max`); those before are counters.
const GAUGES: usize = CPU_US + 1;
const INSTANCES_MAX: usize = GAUGES;
const MEMORY_MAX: usize = GAUGES + 1;
const _: () = assert!(MEMORY_MAX + 1 == SLOTS);

/// Microseconds per second: the resolution of stored durations.
const MICROS: f64 = 1e6;

/// A [`Sample`] as stored and summed inside the crate: every value an integer, durations in
/// microseconds, so that sums are exact and independent of the order of addition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Totals {
    /// The values, in the slot order described in the module documentation.
    pub(crate) slots: [u64; SLOTS],
}

impl Default for Totals {
    fn default() -> Self {
        Totals { slots: [0; SLOTS] }
    }
}

impl Totals {
    /// Adds `other` in: counters saturate, gauges keep the max.
    pub(crate) fn add(&mut self, other: &Totals) {
        let (counters, gauges) = self.slots.split_at_mut(GAUGES);
        for (mine, theirs) in counters.iter_mut().zip(&other.slots[..GAUGES]) {
            *mine = mine.saturating_add(*theirs);
        }
        for (mine, theirs) in gauges.iter_mut().zip(&other.slots[GAUGES..]) {
            *mine = (*mine).max(*theirs);
        }
    }

    /// Whether every value is zero.
    pub(crate) fn is_empty(&self) -> bool {
        self.slots.iter().all(|&v| v == 0)
    }

    /// Back to the public form.
    pub(crate) fn to_sample(self) -> Sample {
        let s = &self.slots;
        let mut sample = Sample::default();
        sample
            .requests_by_class
            .copy_from_slice(&s[REQUESTS..LATENCY]);
        sample.latency.copy_from_slice(&s[LATENCY..COLD_STARTS]);
        sample.cold_starts = s[COLD_STARTS];
        sample.throttled = s[THROTTLED];
        sample.instance_seconds = s[INSTANCE_US] as f64 / MICROS;
        sample.vcpu_seconds = s[VCPU_US] as f64 / MICROS;
        sample.gib_seconds = s[GIB_US] as f64 / MICROS;
        sample.cpu_used_seconds = s[CPU_US] as f64 / MICROS;
        // Only ever set from a u32, unless the row was damaged: then saturate.
        sample.instances_max = u32::try_from(s[INSTANCES_MAX]).unwrap_or(u32::MAX);
        sample.memory_bytes_max = s[MEMORY_MAX];
        sample
    }
}

impl From<&Sample> for Totals {
    /// Rounds durations to the nearest microsecond; a negative, NaN or infinite duration is a
    /// caller's bug and counts as zero rather than poisoning every later sum.
    fn from(sample: &Sample) -> Totals {
        let mut slots = [0; SLOTS];
        slots[REQUESTS..LATENCY].copy_from_slice(&sample.requests_by_class);
        slots[LATENCY..COLD_STARTS].copy_from_slice(&sample.latency);
        slots[COLD_STARTS] = sample.cold_starts;
        slots[THROTTLED] = sample.throttled;
        slots[INSTANCE_US] = micros(sample.instance_seconds);
        slots[VCPU_US] = micros(sample.vcpu_seconds);
        slots[GIB_US] = micros(sample.gib_seconds);
        slots[CPU_US] = micros(sample.cpu_used_seconds);
        slots[INSTANCES_MAX] = u64::from(sample.instances_max);
        slots[MEMORY_MAX] = sample.memory_bytes_max;
        Totals { slots }
    }
}

fn micros(seconds: f64) -> u64 {
    if seconds.is_finite() && seconds > 0.0 {
        // `as` saturates at u64::MAX (585,000 years), which is the intent.
        (seconds * MICROS).round() as u64
    } else {
        0
    }
}

/// A stored row that this build cannot read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The row has no bytes at all.
    #[error("empty row")]
    Empty,
    /// The row was written in a format this build does not know (a newer skiff wrote it).
    #[error("row format version {found}, but this skiff reads only version {FORMAT_VERSION}")]
    UnknownVersion {
        /// The version byte found.
        found: u8,
    },
    /// The row ends in the middle of a value.
    #[error("row truncated")]
    Truncated,
    /// A varint is longer than 64 bits.
    #[error("varint overflows 64 bits")]
    Overflow,
    /// The mask names values this format does not have.
    #[error("mask {mask:#x} names values beyond the {SLOTS} this format has")]
    UnknownValues {
        /// The mask found.
        mask: u64,
    },
    /// Bytes follow the last value.
    #[error("{extra} bytes after the last value")]
    TrailingBytes {
        /// How many.
        extra: usize,
    },
}

/// Encodes `totals` as one row (see the module documentation for the format).
pub(crate) fn encode(totals: &Totals) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    out.push(FORMAT_VERSION);
    let mask = totals
        .slots
        .iter()
        .enumerate()
        .filter(|(_, v)| **v != 0)
        .fold(0u64, |mask, (i, _)| mask | 1 << i);
    put_varint(&mut out, mask);
    for &value in totals.slots.iter().filter(|v| **v != 0) {
        put_varint(&mut out, value);
    }
    out
}

/// Decodes a row written by [`encode`].
pub(crate) fn decode(row: &[u8]) -> Result<Totals, DecodeError> {
    let (&version, mut rest) = row.split_first().ok_or(DecodeError::Empty)?;
    if version != FORMAT_VERSION {
        return Err(DecodeError::UnknownVersion { found: version });
    }
    let mask = take_varint(&mut rest)?;
    if mask >> SLOTS != 0 {
        return Err(DecodeError::UnknownValues { mask });
    }
    let mut totals = Totals::default();
    for (i, slot) in totals.slots.iter_mut().enumerate() {
        if mask & (1 << i) != 0 {
            *slot = take_varint(&mut rest)?;
        }
    }
    if !rest.is_empty() {
        return Err(DecodeError::TrailingBytes { extra: rest.len() });
    }
    Ok(totals)
}

/// Appends `value` as an unsigned LEB128 varint: 7 bits per byte, low bits first, the high bit
/// set on every byte but the last.
fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Reads one varint from the front of `input` and advances past it.
fn take_varint(input: &mut &[u8]) -> Result<u64, DecodeError> {
    let mut value = 0u64;
    for (i, &byte) in input.iter().enumerate() {
        let shift = 7 * i as u32;
        let bits = u64::from(byte & 0x7f);
        // The tenth byte may only carry the 64th bit.
        if shift >= 64 || (shift == 63 && bits > 1) {
            return Err(DecodeError::Overflow);
        }
        value |= bits << shift;
        if byte & 0x80 == 0 {
            *input = &input[i + 1..];
            return Ok(value);
        }
    }
    Err(DecodeError::Truncated)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Totals where each value is zero half the time, and otherwise anything from small to
    /// `u64::MAX`, so both the sparse mask and every varint length are exercised.
    fn totals() -> impl Strategy<Value = Totals> {
        let value = prop_oneof![Just(0u64), 0u64..300, any::<u64>()];
        proptest::array::uniform::<_, SLOTS>(value).prop_map(|slots| Totals { slots })
    }

    proptest! {
        #[test]
        fn round_trip(t in totals()) {
            // Every Totals decodes back to itself.
            prop_assert_eq!(decode(&encode(&t)), Ok(t));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            // Decoding damaged rows returns an error or a value that encodes to a row that
            // decodes to the same value; it never panics.
            if let Ok(t) = decode(&bytes) {
                prop_assert_eq!(decode(&encode(&t)), Ok(t));
            }
        }

        #[test]
        fn sample_conversion_rounds_durations_to_a_microsecond(
            counts in proptest::array::uniform::<_, 5>(any::<u64>()),
            seconds in proptest::array::uniform::<_, 4>(0.0f64..1e9),
            instances in any::<u32>(),
            memory in any::<u64>(),
        ) {
            // A Sample survives the trip through Totals, exactly for integers and to within
            // half a microsecond (plus float rounding) for durations.
            let sample = Sample {
                requests_by_class: counts,
                instance_seconds: seconds[0],
                vcpu_seconds: seconds[1],
                gib_seconds: seconds[2],
                cpu_used_seconds: seconds[3],
                instances_max: instances,
                memory_bytes_max: memory,
                ..Sample::default()
            };
            let back = Totals::from(&sample).to_sample();
            prop_assert_eq!(back.requests_by_class, counts);
            prop_assert_eq!((back.instances_max, back.memory_bytes_max), (instances, memory));
            for (a, b) in [
                (back.instance_seconds, seconds[0]),
                (back.vcpu_seconds, seconds[1]),
                (back.gib_seconds, seconds[2]),
                (back.cpu_used_seconds, seconds[3]),
            ] {
                prop_assert!((a - b).abs() <= 0.5e-6 + b * 1e-15, "{} vs {}", a, b);
            }
        }
    }

    #[test]
    fn empty_totals_are_two_bytes() {
        // An all-zero row is the version and an empty mask (History never writes one, but it
        // must still decode).
        let row = encode(&Totals::default());
        assert_eq!(row, [FORMAT_VERSION, 0]);
        assert_eq!(decode(&row), Ok(Totals::default()));
    }

    #[test]
    fn a_typical_busy_row_is_small() {
        // 2xx and a few 4xx over five latency buckets, 10 s of one instance with 1 vCPU and
        // 0.5 GiB: 39 bytes, of which 7 are the version and the mask.
        let mut sample = Sample {
            requests_by_class: [0, 950, 0, 50, 0],
            instance_seconds: 10.0,
            vcpu_seconds: 10.0,
            gib_seconds: 5.0,
            cpu_used_seconds: 3.217_001,
            instances_max: 1,
            memory_bytes_max: 180 << 20,
            ..Sample::default()
        };
        sample.latency[4..9].copy_from_slice(&[100, 400, 300, 150, 50]);
        let row = encode(&Totals::from(&sample));
        assert_eq!(row.len(), 39, "{row:x?}");
    }

    #[test]
    fn damaged_rows_are_refused() {
        // Each way a row can be unreadable has its own error.
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
        assert_eq!(
            decode(&[2, 0]),
            Err(DecodeError::UnknownVersion { found: 2 })
        );
        assert_eq!(decode(&[1]), Err(DecodeError::Truncated));
        assert_eq!(decode(&[1, 0b11]), Err(DecodeError::Truncated));
        assert_eq!(
            decode(&[1, 0, 7]),
            Err(DecodeError::TrailingBytes { extra: 1 })
        );
        let mut too_long = vec![1];
        too_long.extend([0xff; 10]);
        too_long.push(0);
        assert_eq!(decode(&too_long), Err(DecodeError::Overflow));
        let mut unknown = vec![1];
        put_varint(&mut unknown, 1 << SLOTS);
        assert_eq!(
            decode(&unknown),
            Err(DecodeError::UnknownValues { mask: 1 << SLOTS })
        );
    }

    #[test]
    fn varint_edges() {
        // The largest u64 takes ten bytes and comes back intact.
        for value in [0, 127, 128, 16_383, 16_384, u64::MAX >> 1, u64::MAX] {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            let mut rest = out.as_slice();
            assert_eq!(take_varint(&mut rest), Ok(value));
            assert!(rest.is_empty());
        }
        let mut out = Vec::new();
        put_varint(&mut out, u64::MAX);
        assert_eq!(out.len(), 10);
    }
}
