//! The `[python]` section of the daemon configuration.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The `python` section of the daemon configuration: how script environments are built.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PythonConfig {
    /// Where per-commit virtual environments live. Default: `<state dir>/envs`.
    pub env_dir: Option<PathBuf>,
    /// How long a procedure waits for its Python environment to be built (by itself or
    /// by another procedure of the same commit), in seconds. Default: 600.
    pub env_wait_secs: u64,
    /// The interpreter that creates virtual environments. Default: `python3`.
    pub interpreter: String,
    /// Give each environment a pip of its own (runs ensurepip, which takes seconds).
    /// Default: false: the interpreter's own pip, visible through the system site
    /// packages, installs into the environment.
    pub own_pip: bool,
    /// Passed to pip as `--index-url` when set. Default: none (pip's own setting).
    pub pip_index_url: Option<String>,
    /// Extra arguments passed to `pip install` before the project path, e.g.
    /// `["--no-index", "--find-links", "/srv/wheels"]`. Default: none.
    pub pip_extra_args: Vec<String>,
}

impl Default for PythonConfig {
    fn default() -> Self {
        PythonConfig {
            env_dir: None,
            env_wait_secs: 600,
            interpreter: "python3".to_owned(),
            own_pip: false,
            pip_index_url: None,
            pip_extra_args: Vec::new(),
        }
    }
}

impl PythonConfig {
    /// Checks the values that types cannot; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        crate::limits::check("python.env_wait_secs", self.env_wait_secs, 1, 86_400)
    }

    /// The environment directory, given the daemon's state directory.
    pub fn env_dir(&self, state_dir: &Path) -> PathBuf {
        self.env_dir
            .clone()
            .unwrap_or_else(|| state_dir.join("envs"))
    }
}
