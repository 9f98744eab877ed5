//! The `[procedures]` section, and the settings in effect, which a reload replaces.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use oet_protocol::ResourceLimits;
use serde::{Deserialize, Serialize};

use crate::limits;

/// How script processes are run and supervised: the `[procedures]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcedureConfig {
    /// Interpreter for scripts: a name looked up on PATH, or an absolute path. Resolved
    /// once (at start-up and on reload) to the interpreter's own path.
    pub python: String,
    /// Fork workers from a zygote per interpreter (a Python that has imported the worker
    /// harness and pypubsub once) instead of starting each interpreter afresh.
    pub zygote: bool,
    /// Uses after which another interpreter than `python` (a git commit's environment)
    /// gets a zygote of its own. 0: never.
    pub zygote_env_uses: u32,
    /// Zygotes running at most, the default interpreter's included.
    pub zygote_max: usize,
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
    /// `memory.max` of each procedure's cgroup: bytes, or with a suffix K, M, G or T
    /// (powers of 1024). Empty: no limit.
    pub memory_max: String,
    /// `pids.max` of each procedure's cgroup: processes and threads at once. 0: no limit.
    pub pids_max: u64,
    /// `cpu.max` of each procedure's cgroup, in CPUs (0.5 is half of one). 0: no limit.
    pub cpu_max: f64,
    /// Lines of one procedure's output sent to the journal (or oetd's stderr) per
    /// `journal_interval_secs`; beyond that they are counted, and only kept.
    pub journal_burst: u64,
    /// Lines of all procedures' output together sent per `journal_interval_secs`.
    pub journal_burst_total: u64,
    /// The interval of the two bursts above, in seconds.
    pub journal_interval_secs: f64,
}

impl Default for ProcedureConfig {
    fn default() -> Self {
        ProcedureConfig {
            python: "python3".into(),
            zygote: true,
            zygote_env_uses: 2,
            zygote_max: 4,
            stop_grace_secs: 5.0,
            kill_wait_secs: 5.0,
            history_size: 10,
            max_running: 1,
            log_lines: 1000,
            log_bytes: 256 * 1024,
            allowed_roots: Vec::new(),
            abort_script: String::new(),
            memory_max: String::new(),
            pids_max: 0,
            cpu_max: 0.0,
            journal_burst: 1000,
            journal_burst_total: 5000,
            journal_interval_secs: 30.0,
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

    pub fn journal_interval(&self) -> Duration {
        limits::secs(self.journal_interval_secs)
    }

    /// The limits each procedure's cgroup is to get. Call on a validated configuration.
    pub fn limits(&self) -> ResourceLimits {
        ResourceLimits {
            memory_max_bytes: parse_bytes(&self.memory_max).ok().flatten(),
            pids_max: (self.pids_max > 0).then_some(self.pids_max),
            cpu_max: (self.cpu_max > 0.0).then_some(self.cpu_max),
        }
    }

    /// Checks the values that types cannot; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        parse_bytes(&self.memory_max).map_err(|e| format!("procedures.memory_max: {e}"))?;
        if !self.cpu_max.is_finite() {
            return Err(format!(
                "procedures.cpu_max is {}; it must be a number of CPUs",
                self.cpu_max
            ));
        }
        limits::check("procedures.cpu_max", self.cpu_max, 0.0, 4096.0)?;
        limits::check("procedures.pids_max", self.pids_max, 0, 4_194_304)?;
        limits::check(
            "procedures.journal_burst",
            self.journal_burst,
            1,
            10_000_000,
        )?;
        limits::check(
            "procedures.journal_burst_total",
            self.journal_burst_total,
            1,
            100_000_000,
        )?;
        limits::check_secs(
            "procedures.journal_interval_secs",
            self.journal_interval_secs,
            0.001,
            86_400.0,
        )?;
        limits::check("procedures.max_running", self.max_running, 1, 1000)?;
        limits::check(
            "procedures.zygote_env_uses",
            self.zygote_env_uses,
            0,
            1_000_000,
        )?;
        limits::check("procedures.zygote_max", self.zygote_max, 1, 64)?;
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

/// A size such as `512M`: bytes, or a number with K, M, G or T (powers of 1024, an
/// optional `iB` or `B` after). Empty is `None`, no limit.
fn parse_bytes(text: &str) -> Result<Option<u64>, String> {
    let text = text.trim();
    if text.is_empty() {
        return Ok(None);
    }
    let invalid = || format!("{text:?} is not a size such as 512M or 2G");
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let number: u64 = number.parse().map_err(|_| invalid())?;
    let unit = unit.trim().to_ascii_uppercase();
    let unit = unit
        .strip_suffix("IB")
        .or_else(|| unit.strip_suffix('B'))
        .unwrap_or(&unit);
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        "T" => 40,
        _ => return Err(invalid()),
    };
    let bytes = number.checked_mul(1 << shift).ok_or_else(invalid)?;
    if bytes == 0 {
        return Err(format!(
            "{text:?} leaves no memory; leave it empty for no limit"
        ));
    }
    Ok(Some(bytes))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_bytes_or_binary_units() {
        assert_eq!(parse_bytes(""), Ok(None));
        assert_eq!(parse_bytes("4096"), Ok(Some(4096)));
        assert_eq!(parse_bytes("64M"), Ok(Some(64 << 20)));
        assert_eq!(parse_bytes("2 GiB"), Ok(Some(2 << 30)));
        assert_eq!(parse_bytes("512k"), Ok(Some(512 << 10)));
        for bad in ["64X", "M", "-1", "1.5G", "0", "99999999999T"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn limits_leave_out_what_is_not_set() {
        let config = ProcedureConfig {
            memory_max: "1G".into(),
            cpu_max: 0.5,
            ..ProcedureConfig::default()
        };
        assert_eq!(
            config.limits(),
            ResourceLimits {
                memory_max_bytes: Some(1 << 30),
                pids_max: None,
                cpu_max: Some(0.5),
            }
        );
        assert_eq!(
            ProcedureConfig::default().limits(),
            ResourceLimits::default()
        );
    }
}
