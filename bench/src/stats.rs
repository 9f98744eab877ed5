//! Turning samples into the printed figures: median and 99th percentile.

use std::time::Duration;

use crate::figures::Figure;

/// The `p`-th percentile (0 < p <= 100) of `samples`, by the nearest-rank method.
pub fn percentile(samples: &[Duration], p: f64) -> Option<Duration> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable();
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

fn millis(value: Option<Duration>) -> String {
    value.map_or_else(
        || "-".into(),
        |d| format!("{:.3} ms", d.as_secs_f64() * 1e3),
    )
}

pub fn header() -> String {
    format!(
        "{:<20} {:>5} {:>11} {:>11}  what",
        "figure", "n", "median", "p99"
    )
}

pub fn row(figure: &Figure, samples: &[Duration]) -> String {
    format!(
        "{:<20} {:>5} {:>11} {:>11}  {}",
        figure.name,
        samples.len(),
        millis(percentile(samples, 50.0)),
        millis(percentile(samples, 99.0)),
        figure.what
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let ms = |n: u64| Duration::from_millis(n);
        let samples: Vec<Duration> = (1..=100).rev().map(ms).collect();
        assert_eq!(percentile(&samples, 50.0), Some(ms(50)));
        assert_eq!(percentile(&samples, 99.0), Some(ms(99)));
        assert_eq!(percentile(&[ms(7)], 99.0), Some(ms(7)));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
