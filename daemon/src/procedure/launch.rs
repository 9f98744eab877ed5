//! What supervisors start workers with, and work with while they run.

use std::path::PathBuf;
use std::sync::Arc;

use super::config::Settings;
use super::git_services::GitServices;
use super::output::OutputSink;
use super::worker::Workers;
use crate::cgroup::Containment;
use crate::events::EventBus;
use crate::guard::Guard;

/// How workers are started: given once, at start-up.
#[derive(Clone)]
pub struct Launcher {
    pub workers: Workers,
    /// Kills every procedure's processes if oetd dies.
    pub guard: Arc<Guard>,
    pub git: GitServices,
    /// The working directory of filesystem scripts.
    pub work_dir: PathBuf,
    /// How each procedure's processes are kept together.
    pub containment: Containment,
    /// Where the lines scripts print go.
    pub output: Arc<OutputSink>,
}

/// What every supervisor works with.
pub(super) struct Context {
    pub launcher: Launcher,
    pub settings: Settings,
    pub bus: EventBus,
}
