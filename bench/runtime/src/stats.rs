//! Order statistics of a sample.

/// p50, p90, p99, min, max and mean of a sample, in the sample's unit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub min: f64,
    pub max: f64,
    pub mean: f64,
}

/// The `p`-th percentile (0–100) of sorted data by linear interpolation between the closest
/// ranks (numpy's default, `(n-1)·p/100`).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0],
        n => {
            let rank = (n - 1) as f64 * p / 100.0;
            let lo = rank.floor() as usize;
            let hi = rank.ceil() as usize;
            sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
        }
    }
}

pub fn summarize(xs: &[f64]) -> Summary {
    let mut s: Vec<f64> = xs.to_vec();
    s.sort_by(f64::total_cmp);
    Summary {
        n: s.len(),
        p50: percentile(&s, 50.0),
        p90: percentile(&s, 90.0),
        p99: percentile(&s, 99.0),
        min: s.first().copied().unwrap_or(f64::NAN),
        max: s.last().copied().unwrap_or(f64::NAN),
        mean: if s.is_empty() {
            f64::NAN
        } else {
            s.iter().sum::<f64>() / s.len() as f64
        },
    }
}

pub fn median(xs: &[f64]) -> f64 {
    summarize(xs).p50
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate() {
        let xs: Vec<f64> = (1..=10).map(f64::from).collect();
        let s = summarize(&xs);
        assert_eq!(s.p50, 5.5);
        assert!((s.p90 - 9.1).abs() < 1e-9);
        assert!((s.p99 - 9.91).abs() < 1e-9);
        assert_eq!((s.min, s.max, s.mean), (1.0, 10.0, 5.5));
        assert_eq!(summarize(&[3.0]).p99, 3.0);
    }
}
