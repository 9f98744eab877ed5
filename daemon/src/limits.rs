//! Range checks for configuration values, shared by every section's `validate`: a
//! number outside its range (a duration of `1e20`, `NaN`, a count of zero) is an error
//! that names the key, found when the file is checked or reloaded, not a panic later.

use std::fmt::Display;
use std::time::Duration;

/// Checks that `value` of `key` lies in `min..=max`.
pub fn check<T: PartialOrd + Display>(key: &str, value: T, min: T, max: T) -> Result<(), String> {
    if value < min || value > max {
        return Err(format!(
            "{key} is {value}; it must be between {min} and {max}"
        ));
    }
    Ok(())
}

/// Checks a duration in seconds: a finite number in `min..=max`.
pub fn check_secs(key: &str, value: f64, min: f64, max: f64) -> Result<(), String> {
    if !value.is_finite() {
        return Err(format!(
            "{key} is {value}; it must be a number of seconds between {min} and {max}"
        ));
    }
    check(key, value, min, max)
}

/// A duration in seconds that [`check_secs`] has accepted; anything else is clamped into
/// a range `Duration` can hold, so this never panics.
pub fn secs(value: f64) -> Duration {
    if value.is_finite() {
        Duration::from_secs_f64(value.clamp(0.0, 1e9))
    } else {
        Duration::ZERO
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_range_values_name_their_key() {
        assert!(check("a.count", 5, 1, 10).is_ok());
        let err = check("a.count", 0, 1, 10).unwrap_err();
        assert!(err.contains("a.count is 0"), "{err}");
        for bad in [f64::NAN, f64::INFINITY, 1e20, -1.0] {
            let err = check_secs("a.wait_secs", bad, 0.0, 3600.0).unwrap_err();
            assert!(err.starts_with("a.wait_secs is "), "{err}");
        }
        assert_eq!(secs(1e20), Duration::from_secs(1_000_000_000));
        assert_eq!(secs(f64::NAN), Duration::ZERO);
    }
}
