//! Turning samples into the printed figures: median and 99th percentile, in the
//! figure's unit.

use crate::figures::{Figure, Outcome};

/// The `p`-th percentile (0 < p <= 100) of `samples`, by the nearest-rank method.
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_unstable_by(f64::total_cmp);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted.get(rank.clamp(1, sorted.len()) - 1).copied()
}

fn value(value: Option<f64>, unit: &str) -> String {
    match value {
        Some(v) if v.abs() >= 100.0 => format!("{v:.0} {unit}"),
        Some(v) => format!("{v:.3} {unit}"),
        None => "-".into(),
    }
}

pub fn header() -> String {
    format!(
        "{:<24} {:>6} {:>14} {:>14}  what",
        "figure", "n", "median", "p99"
    )
}

pub fn row(figure: &Figure, outcome: &Outcome) -> String {
    let note = if outcome.note.is_empty() {
        String::new()
    } else {
        format!(" [{}]", outcome.note)
    };
    format!(
        "{:<24} {:>6} {:>14} {:>14}  {}{note}",
        figure.name,
        outcome.values.len(),
        value(percentile(&outcome.values, 50.0), figure.unit),
        value(percentile(&outcome.values, 99.0), figure.unit),
        figure.what
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_by_nearest_rank() {
        let samples: Vec<f64> = (1..=100).rev().map(f64::from).collect();
        assert_eq!(percentile(&samples, 50.0), Some(50.0));
        assert_eq!(percentile(&samples, 99.0), Some(99.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
    }
}
