//! The `[git]` section of the daemon configuration.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The `git` section of the daemon configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GitConfig {
    /// Where checkouts are cached. Default: `<state dir>/git`.
    pub cache_dir: Option<PathBuf>,
    /// How many checkouts the cache keeps; the least recently used ones that no
    /// procedure uses are removed beyond this. Default: 32.
    pub max_checkouts: usize,
    /// How long resolving a branch or fetching a commit may take, in seconds. Default: 300.
    pub clone_timeout_secs: u64,
    /// Repository URLs or paths that may be used. `*` matches any run of characters,
    /// everything else must match literally, e.g. `https://gitlab.com/ska-telescope/*`.
    /// Empty (the default) allows every repository.
    pub allowed_repos: Vec<String>,
    /// The repository used when a procedure names none. Default: none.
    pub default_repo: Option<String>,
    /// The branch used when a procedure names neither branch nor commit. Default: none,
    /// meaning the repository's own default branch (its remote HEAD).
    pub default_branch: Option<String>,
    /// Keys of `[python]` that older files set here, under their old names. They are
    /// still read so that such files keep working; `crate::config::Config::parse` moves
    /// them to `[python]` (with a warning), so after parsing they are always `None`.
    /// Nothing in this module reads them, and they are never written.
    #[serde(rename = "env_dir", skip_serializing)]
    pub moved_env_dir: Option<PathBuf>,
    #[serde(rename = "env_wait_secs", skip_serializing)]
    pub moved_env_wait_secs: Option<u64>,
    #[serde(rename = "python", skip_serializing)]
    pub moved_python: Option<String>,
    #[serde(rename = "env_own_pip", skip_serializing)]
    pub moved_env_own_pip: Option<bool>,
    #[serde(rename = "pip_index_url", skip_serializing)]
    pub moved_pip_index_url: Option<String>,
    #[serde(rename = "pip_extra_args", skip_serializing)]
    pub moved_pip_extra_args: Option<Vec<String>>,
}

impl Default for GitConfig {
    fn default() -> Self {
        GitConfig {
            cache_dir: None,
            max_checkouts: 32,
            clone_timeout_secs: 300,
            allowed_repos: Vec::new(),
            default_repo: None,
            default_branch: None,
            moved_env_dir: None,
            moved_env_wait_secs: None,
            moved_python: None,
            moved_env_own_pip: None,
            moved_pip_index_url: None,
            moved_pip_extra_args: None,
        }
    }
}

impl GitConfig {
    /// Checks the values that types cannot; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        crate::limits::check("git.max_checkouts", self.max_checkouts, 1, 100_000)?;
        crate::limits::check("git.clone_timeout_secs", self.clone_timeout_secs, 1, 86_400)
    }

    /// The checkout cache directory, given the daemon's state directory.
    pub fn cache_dir(&self, state_dir: &Path) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(|| state_dir.join("git"))
    }
}
