//! What preparing a `git://` script takes: the checkout cache and the builder of
//! Python environments, opened together, and how a checkout is a project an
//! environment is built from. Here, so that neither `git` nor `python` knows the other.

use std::path::Path;

use oet_protocol::{CachePruned, CacheUsage};

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

impl GitServices {
    /// Counts and sizes of the checkouts, the environments and pip's cache.
    pub async fn usage(&self) -> CacheUsage {
        let (checkouts, envs) = tokio::join!(self.repos.usage(), self.envs.usage());
        CacheUsage {
            checkouts: checkouts.checkouts as u64,
            checkouts_in_use: checkouts.pinned as u64,
            checkout_bytes: checkouts.bytes,
            envs: envs.envs,
            envs_in_use: envs.in_use,
            envs_building: envs.building,
            env_bytes: envs.bytes,
            pip_cache_bytes: envs.pip_cache_bytes,
        }
    }

    /// Removes every checkout and environment no live procedure uses (environments
    /// first: a build holds its checkout), and pip's cache if no build runs.
    pub async fn prune(&self) -> CachePruned {
        let envs = self.envs.prune().await;
        let checkouts = self.repos.prune().await;
        CachePruned {
            checkouts: checkouts.count,
            checkout_bytes: checkouts.bytes,
            envs: envs.envs,
            env_bytes: envs.env_bytes,
            pip_cache_bytes: envs.pip_cache_bytes,
            pip_cache_kept: envs.pip_cache_kept,
            left: self.usage().await,
        }
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
