//! Latency histograms (hdrhistogram, nanoseconds) and the small statistics the report
//! needs: percentiles, CDF points, medians over rounds.

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Highest latency a histogram records (60 s, in ns); longer samples are clamped.
pub const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// A histogram of latencies in nanoseconds, 3 significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("static histogram bounds are valid")
}

/// Records `ns` (clamped to the histogram's range).
pub fn record(h: &mut Histogram<u64>, ns: u64) {
    let _ = h.record(ns.clamp(1, MAX_LATENCY_NS));
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Percentiles {
    /// Samples.
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

/// Extracts [`Percentiles`] from a histogram of nanoseconds. An empty histogram gives
/// zeros with `count == 0`.
pub fn percentiles(h: &Histogram<u64>) -> Percentiles {
    let us = |ns: u64| ns as f64 / 1000.0;
    if h.is_empty() {
        return Percentiles {
            count: 0,
            mean_us: 0.0,
            p50_us: 0.0,
            p90_us: 0.0,
            p99_us: 0.0,
            p999_us: 0.0,
            max_us: 0.0,
        };
    }
    Percentiles {
        count: h.len(),
        mean_us: h.mean() / 1000.0,
        p50_us: us(h.value_at_quantile(0.50)),
        p90_us: us(h.value_at_quantile(0.90)),
        p99_us: us(h.value_at_quantile(0.99)),
        p999_us: us(h.value_at_quantile(0.999)),
        max_us: us(h.max()),
    }
}

/// Quantiles at which [`cdf`] samples a histogram: dense in the tail.
pub const CDF_QUANTILES: [f64; 24] = [
    0.0, 0.01, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.97, 0.98, 0.99,
    0.995, 0.998, 0.999, 0.9995, 0.9999, 0.99999, 1.0,
];

/// CDF points `[latency_us, quantile]` of a histogram of nanoseconds (empty if empty).
pub fn cdf(h: &Histogram<u64>) -> Vec<[f64; 2]> {
    if h.is_empty() {
        return Vec::new();
    }
    CDF_QUANTILES
        .iter()
        .map(|&q| [h.value_at_quantile(q) as f64 / 1000.0, q])
        .collect()
}

/// Median of `values` (mean of the middle two for an even count); `None` when empty.
/// NaNs are ignored.
pub fn median(values: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = new_histogram();
        // 1..=1000 µs, one sample each.
        for us in 1..=1000u64 {
            record(&mut h, us * 1000);
        }
        let p = percentiles(&h);
        assert_eq!(p.count, 1000);
        // 3 significant digits: values are exact to within 0.1%.
        let close = |got: f64, want: f64| (got - want).abs() <= want * 0.001 + 0.001;
        assert!(close(p.p50_us, 500.0), "p50 {}", p.p50_us);
        assert!(close(p.p90_us, 900.0), "p90 {}", p.p90_us);
        assert!(close(p.p99_us, 990.0), "p99 {}", p.p99_us);
        assert!(close(p.p999_us, 999.0), "p99.9 {}", p.p999_us);
        assert!(close(p.max_us, 1000.0), "max {}", p.max_us);
        assert!(close(p.mean_us, 500.5), "mean {}", p.mean_us);
    }

    #[test]
    fn tail_sample_moves_only_the_tail() {
        let mut h = new_histogram();
        for _ in 0..999 {
            record(&mut h, 20_000);
        }
        record(&mut h, 5_000_000);
        let p = percentiles(&h);
        assert!((p.p50_us - 20.0).abs() < 0.05);
        assert!((p.p99_us - 20.0).abs() < 0.05);
        assert!((p.max_us - 5000.0).abs() < 5.0);
        let c = cdf(&h);
        assert_eq!(c.len(), CDF_QUANTILES.len());
        assert_eq!(c.first().unwrap()[1], 0.0);
        assert!((c.last().unwrap()[0] - 5000.0).abs() < 5.0);
        assert!(c.windows(2).all(|w| w[0][0] <= w[1][0]), "CDF is monotone");
    }

    #[test]
    fn empty_and_clamped() {
        let mut h = new_histogram();
        assert_eq!(percentiles(&h).count, 0);
        assert!(cdf(&h).is_empty());
        record(&mut h, 0);
        record(&mut h, u64::MAX);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0]), Some(3.0));
        assert_eq!(median(&[5.0, 1.0, 3.0]), Some(3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 2.0]), Some(2.0));
    }
}
