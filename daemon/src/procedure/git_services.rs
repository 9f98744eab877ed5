//! What preparing a `git://` script takes: the checkout cache and the builder of
//! Python environments, opened together, and how a checkout is a project an
//! environment is built from. Here, so that neither `git` nor `python` knows the other.

use std::path::Path;

use crate::git::{self, Checkout, GitConfig, GitError, RepoCache};
use crate::python::{EnvError, EnvManager, Project, PythonConfig};

/// The checkout cache and the environment manager, as the procedure runner uses them.
#[derive(Clone)]
pub struct GitServices {
    pub repos: RepoCache,
    pub envs: EnvManager<Checkout>,
}

/// Why the checkout cache or the environment directory could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error(transparent)]
    Git(#[from] GitError),
    #[error(transparent)]
    Env(#[from] EnvError),
}

impl GitServices {
    /// Opens the checkout cache under `cache_base` (systemd's `CACHE_DIRECTORY` when
    /// set) and the environment directory under `state_dir`, unless `git` and `python`
    /// name other places. `daemon_exe` guards pip builds (see `crate::reaper`).
    pub fn open(
        git: &GitConfig,
        python: &PythonConfig,
        state_dir: &Path,
        cache_base: &Path,
        daemon_exe: &Path,
    ) -> Result<GitServices, OpenError> {
        let envs = EnvManager::new(python.clone(), state_dir)?;
        envs.guard_builds_with(daemon_exe.to_owned());
        Ok(GitServices {
            repos: RepoCache::new(git.clone(), cache_base)?,
            envs,
        })
    }
}

impl Project for Checkout {
    fn repo(&self) -> &str {
        Checkout::repo(self)
    }

    fn commit(&self) -> &str {
        Checkout::commit(self)
    }

    fn dir(&self) -> &Path {
        Checkout::dir(self)
    }

    fn key(&self) -> &str {
        Checkout::key(self)
    }

    fn is_key(name: &str) -> bool {
        git::is_key(name)
    }
}
