//! Git scripts: where a `git://` script comes from.
//!
//! `policy` says what a request means and whether it may be served (defaults, URL or
//! local path, `git.allowed_repos`, commit-id syntax); `fetch` is the libgit2 work
//! (listing refs, resolving branches and abbreviated commits, fetching, checking out),
//! run off the runtime under a deadline; `cache` keeps one checkout per repository +
//! commit, pinned while used and evicted least-recently-used, behind [`RepoCache`];
//! `script` turns a `git://` script URI into a file inside a checkout. This module owns
//! the configuration section `git` and the error type they share.

mod cache;
mod fetch;
mod policy;
mod script;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub(crate) use cache::is_key;
pub use cache::{CacheStats, Checkout, RepoCache};
pub use script::script_path;

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
    /// The checkout cache directory, given the daemon's state directory.
    pub fn cache_dir(&self, state_dir: &Path) -> PathBuf {
        self.cache_dir
            .clone()
            .unwrap_or_else(|| state_dir.join("git"))
    }
}

/// Why a checkout or a script path could not be provided.
///
/// Errors are `Clone` because one clone serves every procedure that asked for it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GitError {
    #[error("no git repository was given and git.default_repo is not configured; pass git_repo or set git.default_repo")]
    NoRepo,
    #[error("repository '{repo}' is not allowed by git.allowed_repos; add a matching pattern to git.allowed_repos in the oetd configuration")]
    NotAllowed { repo: String },
    #[error("local repository path '{repo}' is relative; give an absolute path or a URL")]
    RelativePath { repo: String },
    #[error("repository '{repo}' could not be reached: {reason}")]
    Unreachable { repo: String, reason: String },
    #[error("branch '{branch}' does not exist in repository '{repo}'")]
    UnknownBranch { repo: String, branch: String },
    #[error("repository '{repo}' does not say which branch is its default; pass git_branch or set git.default_branch")]
    NoDefaultBranch { repo: String },
    #[error("git_commit '{commit}' is not a commit id; give 4 to 40 hexadecimal digits")]
    InvalidCommit { commit: String },
    #[error("commit '{commit}' was not found in repository '{repo}' (searched all its branches and tags)")]
    UnknownCommit { repo: String, commit: String },
    #[error("commit '{commit}' is ambiguous in repository '{repo}'; give more hexadecimal digits")]
    AmbiguousCommit { repo: String, commit: String },
    #[error("fetching from repository '{repo}' failed: {reason}")]
    Fetch { repo: String, reason: String },
    #[error(
        "fetching from repository '{repo}' took longer than git.clone_timeout_secs ({secs} s)"
    )]
    Timeout { repo: String, secs: u64 },
    #[error("the git cache at '{path}' could not be used: {reason}; check git.cache_dir and its permissions")]
    Cache { path: PathBuf, reason: String },
    #[error("script URI '{uri}' does not start with git://")]
    NotGitUri { uri: String },
    #[error("script URI '{uri}' names an absolute path; git:// paths are relative to the repository root")]
    AbsoluteScriptPath { uri: String },
    #[error("script URI '{uri}' leaves the repository; '..' and symbolic links out of the repository are refused")]
    ScriptEscapes { uri: String },
    #[error("script '{path}' does not exist in repository '{repo}' at commit {commit}")]
    ScriptNotFound {
        path: String,
        repo: String,
        commit: String,
    },
    #[error("script '{path}' in repository '{repo}' at commit {commit} is not a regular file")]
    ScriptNotAFile {
        path: String,
        repo: String,
        commit: String,
    },
}

impl GitError {
    fn cache(path: &Path, err: impl std::fmt::Display) -> Self {
        GitError::Cache {
            path: path.to_owned(),
            reason: err.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documented_defaults() {
        let config: GitConfig = toml::from_str("").expect("empty section parses");
        assert_eq!(config, GitConfig::default());
        assert_eq!(config.max_checkouts, 32);
        assert!(config.allowed_repos.is_empty());
        let state = Path::new("/var/lib/oetd");
        assert_eq!(config.cache_dir(state), state.join("git"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<GitConfig>("cache = '/tmp'").expect_err("unknown key");
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
