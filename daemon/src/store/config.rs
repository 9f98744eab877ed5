//! The `[store]` section: where the durable history lives and how much of it is kept.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The durable store of procedures and activities: the `[store]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// The database file. Empty: `<state_dir>/store/history.sqlite`.
    pub path: String,
    /// Days a final procedure or activity is kept after it ended; 0 keeps them
    /// regardless of age.
    pub max_age_days: f64,
    /// Final procedures kept, the newest; 0 keeps any number. Live ones are never
    /// removed.
    pub max_procedures: u64,
    /// Final activities kept, the newest; 0 keeps any number.
    pub max_activities: u64,
    /// Seconds between two passes of retention in the background.
    pub retention_interval_secs: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            path: String::new(),
            max_age_days: 90.0,
            max_procedures: 100_000,
            max_activities: 100_000,
            retention_interval_secs: 600,
        }
    }
}

impl StoreConfig {
    /// The database file, resolving the empty default against the state directory.
    pub fn file(&self, state_dir: &Path) -> PathBuf {
        if self.path.is_empty() {
            state_dir.join("store").join("history.sqlite")
        } else {
            PathBuf::from(&self.path)
        }
    }

    /// The age bound, if there is one.
    pub fn max_age(&self) -> Option<Duration> {
        (self.max_age_days > 0.0).then(|| Duration::from_secs_f64(self.max_age_days * 86_400.0))
    }

    pub fn retention_interval(&self) -> Duration {
        Duration::from_secs(self.retention_interval_secs.max(1))
    }

    /// Checks the values that types cannot; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if !self.max_age_days.is_finite() || self.max_age_days < 0.0 {
            return Err("store.max_age_days must be a non-negative number".into());
        }
        if self.max_age_days > 1e6 {
            return Err(
                "store.max_age_days must be at most 1000000 (use 0 for no age bound)".into(),
            );
        }
        crate::limits::check(
            "store.retention_interval_secs",
            self.retention_interval_secs,
            1,
            365 * 86_400,
        )
    }
}
