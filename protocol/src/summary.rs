//! What the daemon tells about procedures and activities: states, scripts, arguments and
//! history. These are wire types; their JSON views live in [`crate::view`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::value::Value;

/// Seconds since the Unix epoch, as upstream reports times.
pub type Timestamp = f64;

/// Now, as a [`Timestamp`].
pub fn now() -> Timestamp {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// The states of a procedure, in the order they normally come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ProcedureState {
    Creating,
    Idle,
    PrepEnv,
    Loading,
    Initialising,
    Ready,
    Running,
    Complete,
    Stopped,
    Failed,
    Unknown,
}

impl ProcedureState {
    pub const ALL: [ProcedureState; 11] = [
        ProcedureState::Creating,
        ProcedureState::Idle,
        ProcedureState::PrepEnv,
        ProcedureState::Loading,
        ProcedureState::Initialising,
        ProcedureState::Ready,
        ProcedureState::Running,
        ProcedureState::Complete,
        ProcedureState::Stopped,
        ProcedureState::Failed,
        ProcedureState::Unknown,
    ];

    /// The upstream name, e.g. `PREP_ENV`.
    pub fn as_str(self) -> &'static str {
        match self {
            ProcedureState::Creating => "CREATING",
            ProcedureState::Idle => "IDLE",
            ProcedureState::PrepEnv => "PREP_ENV",
            ProcedureState::Loading => "LOADING",
            ProcedureState::Initialising => "INITIALISING",
            ProcedureState::Ready => "READY",
            ProcedureState::Running => "RUNNING",
            ProcedureState::Complete => "COMPLETE",
            ProcedureState::Stopped => "STOPPED",
            ProcedureState::Failed => "FAILED",
            ProcedureState::Unknown => "UNKNOWN",
        }
    }

    /// COMPLETE, STOPPED, FAILED and UNKNOWN are final: nothing follows them.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            ProcedureState::Complete
                | ProcedureState::Stopped
                | ProcedureState::Failed
                | ProcedureState::Unknown
        )
    }
}

impl fmt::Display for ProcedureState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for ProcedureState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ProcedureState::ALL
            .into_iter()
            .find(|state| state.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown procedure state '{s}'"))
    }
}

/// Where a git script comes from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct GitArgs {
    /// Remote URL or local path of the repository; `None` means the configured default.
    pub git_repo: Option<String>,
    /// Branch to resolve; `None` means the repository's default branch.
    pub git_branch: Option<String>,
    /// Commit to use; wins over the branch.
    pub git_commit: Option<String>,
}

/// The script a procedure runs, as the caller asked for it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ScriptSpec {
    /// `file:///abs/path/script.py`
    Filesystem { script_uri: String },
    /// `git://relative/path/in/repo.py`
    Git {
        script_uri: String,
        git_args: GitArgs,
        create_env: bool,
    },
}

impl ScriptSpec {
    pub fn filesystem(uri: impl Into<String>) -> Self {
        ScriptSpec::Filesystem {
            script_uri: uri.into(),
        }
    }

    pub fn uri(&self) -> &str {
        match self {
            ScriptSpec::Filesystem { script_uri } | ScriptSpec::Git { script_uri, .. } => {
                script_uri
            }
        }
    }

    /// `filesystem` or `git`, as upstream names the kinds.
    pub fn script_type(&self) -> &'static str {
        match self {
            ScriptSpec::Filesystem { .. } => "filesystem",
            ScriptSpec::Git { .. } => "git",
        }
    }
}

/// Positional and keyword arguments of one function call.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct FunctionArgs {
    pub args: Vec<Value>,
    pub kwargs: BTreeMap<String, Value>,
}

impl FunctionArgs {
    pub fn is_empty(&self) -> bool {
        self.args.is_empty() && self.kwargs.is_empty()
    }

    /// About how many bytes the arguments hold in memory.
    pub fn approx_bytes(&self) -> usize {
        self.args
            .iter()
            .chain(self.kwargs.values())
            .map(Value::approx_bytes)
            .sum::<usize>()
            + self.kwargs.keys().map(String::len).sum::<usize>()
    }

    /// Checks that every float among the arguments is finite, so that they can travel to
    /// a worker as JSON.
    pub fn check_finite(&self) -> Result<(), crate::value::NonFiniteFloat> {
        self.args
            .iter()
            .chain(self.kwargs.values())
            .try_for_each(Value::check_finite)
    }
}

/// One call of a script function, as recorded in a procedure's history.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    pub function: String,
    pub args: FunctionArgs,
    pub time: Timestamp,
}

/// A state a procedure entered, and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateChange {
    pub state: ProcedureState,
    pub time: Timestamp,
    /// For RUNNING: the function whose call started the run (`main`, ...).
    pub function: Option<String>,
    /// Why oetd recorded this state itself, when nothing the script did caused it, e.g.
    /// that oetd restarted while the procedure was live.
    pub note: Option<String>,
}

impl StateChange {
    /// A state entered now, not caused by a call.
    pub fn now(state: ProcedureState) -> StateChange {
        StateChange {
            state,
            time: now(),
            function: None,
            note: None,
        }
    }
}

/// Where a git script was checked out from, once it is known: what the request left to
/// defaults, resolved.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GitCheckout {
    /// The repository used (a URL, or a canonical local path).
    pub repo: String,
    /// The branch the commit was resolved from, if it was resolved from one.
    pub branch: Option<String>,
    /// The full commit id that ran.
    pub commit: String,
}

/// Everything known about one procedure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ProcedureSummary {
    pub id: u64,
    pub script: ScriptSpec,
    /// For a git script, the checkout it runs from, once fetched.
    pub checkout: Option<GitCheckout>,
    /// Every call made, in order (`init` first when the script has one).
    pub calls: Vec<CallRecord>,
    pub history: Vec<StateChange>,
    pub stacktrace: Option<String>,
    pub state: ProcedureState,
    /// What the procedure's cgroup measured; `None` when the procedure has no cgroup of
    /// its own (containment by process group) or no process yet.
    pub resources: Option<ResourceUsage>,
}

impl ProcedureSummary {
    /// When the procedure was created (its first state change).
    pub fn created_at(&self) -> Timestamp {
        self.history.first().map_or(0.0, |change| change.time)
    }

    /// Arguments per function, the newest call of each function winning (upstream's
    /// `script_args` shape).
    pub fn script_args(&self) -> BTreeMap<String, FunctionArgs> {
        self.calls
            .iter()
            .map(|call| (call.function.clone(), call.args.clone()))
            .collect()
    }
}

/// The resource limits a procedure's cgroup was given; `None` is no limit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ResourceLimits {
    /// `memory.max`: memory the procedure's processes may use together, in bytes.
    pub memory_max_bytes: Option<u64>,
    /// `pids.max`: processes and threads the procedure may have at once.
    pub pids_max: Option<u64>,
    /// `cpu.max`: CPU time per unit of wall time, in CPUs (0.5 is half of one CPU).
    pub cpu_max: Option<f64>,
}

/// What a procedure's cgroup measured of all its processes together, the ones the
/// script started included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct ResourceUsage {
    /// The highest memory use, in bytes; `None` where no memory controller is available.
    pub peak_memory_bytes: Option<u64>,
    /// CPU time used, user and system, in seconds; `None` where it cannot be read.
    pub cpu_secs: Option<f64>,
    pub limits: ResourceLimits,
}

/// A byte count as people read it: `512 B`, `64 MiB`, `1.5 GiB`.
pub fn bytes_text(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = UNITS[0];
    for next in &UNITS[1..] {
        if value < 1024.0 {
            break;
        }
        value /= 1024.0;
        unit = next;
    }
    let text = format!("{value:.1}");
    format!("{} {unit}", text.strip_suffix(".0").unwrap_or(&text))
}

/// The states of an activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ActivityState {
    Requested,
    Prepared,
    Running,
    Complete,
    Failed,
    Stopped,
}

impl FromStr for ActivityState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ActivityState::ALL
            .into_iter()
            .find(|state| state.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown activity state '{s}'"))
    }
}

impl ActivityState {
    pub fn as_str(self) -> &'static str {
        match self {
            ActivityState::Requested => "REQUESTED",
            ActivityState::Prepared => "PREPARED",
            ActivityState::Running => "RUNNING",
            ActivityState::Complete => "COMPLETE",
            ActivityState::Failed => "FAILED",
            ActivityState::Stopped => "STOPPED",
        }
    }

    pub const ALL: [ActivityState; 6] = [
        ActivityState::Requested,
        ActivityState::Prepared,
        ActivityState::Running,
        ActivityState::Complete,
        ActivityState::Failed,
        ActivityState::Stopped,
    ];

    pub fn is_final(self) -> bool {
        matches!(
            self,
            ActivityState::Complete | ActivityState::Failed | ActivityState::Stopped
        )
    }

    /// The event topic announcing this state, e.g. `activity.lifecycle.prepared`.
    pub fn topic(self) -> &'static str {
        match self {
            ActivityState::Requested => "activity.lifecycle.requested",
            ActivityState::Prepared => "activity.lifecycle.prepared",
            ActivityState::Running => "activity.lifecycle.running",
            ActivityState::Complete => "activity.lifecycle.complete",
            ActivityState::Failed => "activity.lifecycle.failed",
            ActivityState::Stopped => "activity.lifecycle.stopped",
        }
    }
}

impl fmt::Display for ActivityState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An activity state and when it was entered.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ActivityStateChange {
    pub state: ActivityState,
    pub time: Timestamp,
}

/// Everything known about one activity.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActivitySummary {
    pub id: u64,
    pub activity_name: String,
    pub sbd_id: String,
    pub sbi_id: Option<String>,
    pub procedure_id: Option<u64>,
    /// Runtime arguments given by the caller, per function.
    pub script_args: BTreeMap<String, FunctionArgs>,
    pub prepare_only: bool,
    pub history: Vec<ActivityStateChange>,
    pub state: ActivityState,
    /// Why the activity did not go on as asked, e.g. `main` could not be started or the
    /// procedure ended UNKNOWN.
    pub error: Option<String>,
}

impl ActivitySummary {
    /// When the activity was requested (its first state change).
    pub fn created_at(&self) -> Timestamp {
        self.history.first().map_or(0.0, |change| change.time)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_read_as_people_write_them() {
        assert_eq!(bytes_text(0), "0 B");
        assert_eq!(bytes_text(1023), "1023 B");
        assert_eq!(bytes_text(64 << 20), "64 MiB");
        assert_eq!(bytes_text(3 << 29), "1.5 GiB");
        assert_eq!(bytes_text((64 << 20) - 1), "64 MiB");
        assert_eq!(bytes_text(1536), "1.5 KiB");
    }
}
