//! Why a checkout or a script path could not be provided.

use std::path::{Path, PathBuf};

/// Why a checkout or a script path could not be provided.
///
/// Errors are `Clone` because one clone serves every procedure that asked for it. A
/// `repo` is always the repository as shown (`url::redact_url`), never with its
/// credentials, and a `reason` from libgit2 is redacted too.
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
    #[error("repository '{repo}' asks for credentials, and {what}; give a user and token in git.credentials_file, or in a git credential helper with git.credential_helpers = true")]
    Credentials { repo: String, what: String },
    #[error("git.credentials_file '{path}' cannot be used: {reason}")]
    CredentialsFile { path: PathBuf, reason: String },
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
    pub(super) fn cache(path: &Path, err: impl std::fmt::Display) -> Self {
        GitError::Cache {
            path: path.to_owned(),
            reason: super::url::redact_text(&err.to_string()),
        }
    }
}
