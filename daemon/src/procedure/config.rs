//! The `[procedures]` section, and the settings in effect, which a reload replaces.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How script processes are run and supervised: the `[procedures]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcedureConfig {
    /// Interpreter for scripts: a name looked up on PATH, or an absolute path.
    pub python: String,
    /// Seconds a stopped script gets to finish its `finally:` blocks before its process
    /// group is killed.
    pub stop_grace_secs: f64,
    /// Seconds to wait for a killed process to disappear before calling it UNKNOWN.
    pub kill_wait_secs: f64,
    /// Final procedures kept in the default list: one stays until this many others have
    /// ended after it. Older ones are read from the store.
    pub history_size: usize,
    /// Procedures allowed to be RUNNING at the same time.
    pub max_running: usize,
    /// Lines of script output kept per procedure.
    pub log_lines: usize,
    /// Script run by `stop --run-abort`, given the stopped procedure's `subarray_id`.
    /// Empty: aborting is refused with a message saying so.
    pub abort_script: String,
}

impl Default for ProcedureConfig {
    fn default() -> Self {
        ProcedureConfig {
            python: "python3".into(),
            stop_grace_secs: 5.0,
            kill_wait_secs: 5.0,
            history_size: 10,
            max_running: 1,
            log_lines: 1000,
            abort_script: String::new(),
        }
    }
}

impl ProcedureConfig {
    pub fn stop_grace(&self) -> Duration {
        Duration::from_secs_f64(self.stop_grace_secs.max(0.0))
    }

    pub fn kill_wait(&self) -> Duration {
        Duration::from_secs_f64(self.kill_wait_secs.max(0.0))
    }

    /// Checks the values that types cannot; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_running == 0 {
            return Err("procedures.max_running must be at least 1".into());
        }
        if !self.stop_grace_secs.is_finite() || self.stop_grace_secs < 0.0 {
            return Err("procedures.stop_grace_secs must be a non-negative number".into());
        }
        if !self.kill_wait_secs.is_finite() || self.kill_wait_secs < 0.0 {
            return Err("procedures.kill_wait_secs must be a non-negative number".into());
        }
        Ok(())
    }
}

/// The procedure settings in effect, shared by the service and the supervisors; a
/// configuration reload replaces them.
#[derive(Clone, Default)]
pub struct Settings {
    current: Arc<RwLock<ProcedureConfig>>,
}

impl Settings {
    pub fn new(config: ProcedureConfig) -> Self {
        Settings {
            current: Arc::new(RwLock::new(config)),
        }
    }

    /// One value of the current settings, read without copying the rest (this is on
    /// the path of every line a script prints).
    pub fn get<T>(&self, read: impl FnOnce(&ProcedureConfig) -> T) -> T {
        read(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub fn set(&self, config: ProcedureConfig) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = config;
    }
}
