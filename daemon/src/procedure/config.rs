//! The `[procedures]` section, and the settings in effect, which a reload replaces.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::limits;

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
    /// Bytes of script output kept per procedure (the oldest lines go first), so that a
    /// procedure's logs fit in one answer.
    pub log_bytes: usize,
    /// Directories filesystem scripts must lie in, after symbolic links are resolved.
    /// Empty: anywhere.
    pub allowed_roots: Vec<String>,
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
            log_bytes: 256 * 1024,
            allowed_roots: Vec::new(),
            abort_script: String::new(),
        }
    }
}

impl ProcedureConfig {
    pub fn stop_grace(&self) -> Duration {
        limits::secs(self.stop_grace_secs)
    }

    pub fn kill_wait(&self) -> Duration {
        limits::secs(self.kill_wait_secs)
    }

    /// Checks the values that types cannot; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        limits::check("procedures.max_running", self.max_running, 1, 1000)?;
        limits::check("procedures.history_size", self.history_size, 1, 100_000)?;
        limits::check("procedures.log_lines", self.log_lines, 1, 1_000_000)?;
        limits::check("procedures.log_bytes", self.log_bytes, 1024, 64 << 20)?;
        if let Some(root) = self.allowed_roots.iter().find(|r| !r.starts_with('/')) {
            return Err(format!(
                "procedures.allowed_roots holds {root:?}, which is not an absolute path"
            ));
        }
        limits::check_secs(
            "procedures.stop_grace_secs",
            self.stop_grace_secs,
            0.0,
            3600.0,
        )?;
        limits::check_secs(
            "procedures.kill_wait_secs",
            self.kill_wait_secs,
            0.0,
            3600.0,
        )?;
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
