//! The libgit2 work, all of it blocking: listing a remote's refs (`git ls-remote`),
//! resolving a branch or a full or abbreviated commit id, fetching (shallow where the
//! transport allows) and materializing a checkout, which is built in the cache's temp
//! area and renamed into place. [`blocking`] runs such work off the runtime under the
//! `git.clone_timeout_secs` deadline; on timeout the transfer is told to abort.

use std::fs;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use git2::{Direction, FetchOptions, Oid, RemoteCallbacks, Repository};
use tempfile::TempDir;

use super::error::GitError;

/// What a request resolved to, before anything is checked out.
pub(super) struct Resolved {
    pub commit: Oid,
    pub branch: Option<String>,
    /// A repository in the cache's temp area that already holds the commit (when an
    /// abbreviated commit id had to be fetched to be resolved).
    pub prefetched: Option<TempDir>,
}

/// Runs blocking git work off the runtime, bounded by `clone_timeout_secs`.
pub(super) async fn blocking<T: Send + 'static>(
    repo: &str,
    secs: u64,
    work: impl FnOnce(&AtomicBool) -> Result<T, GitError> + Send + 'static,
) -> Result<T, GitError> {
    let abort = Arc::new(AtomicBool::new(false));
    let task = tokio::task::spawn_blocking({
        let abort = abort.clone();
        move || work(&abort)
    });
    match tokio::time::timeout(Duration::from_secs(secs), task).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(GitError::Fetch {
            repo: repo.to_owned(),
            reason: format!("the git worker failed: {e}"),
        }),
        Err(_) => {
            abort.store(true, Ordering::Relaxed);
            Err(GitError::Timeout {
                repo: repo.to_owned(),
                secs,
            })
        }
    }
}

/// Whether libgit2 reaches `repo` with its local transport, which cannot fetch shallow.
fn is_local(repo: &str) -> bool {
    repo.starts_with('/') || repo.starts_with("file://")
}

fn callbacks(abort: &AtomicBool) -> RemoteCallbacks<'_> {
    let mut callbacks = RemoteCallbacks::new();
    callbacks.transfer_progress(move |_| !abort.load(Ordering::Relaxed));
    callbacks.sideband_progress(move |_| !abort.load(Ordering::Relaxed));
    callbacks
}

struct RemoteRefs {
    heads: Vec<(String, Oid)>,
    default_branch: Option<String>,
}

/// Lists the remote's refs (`git ls-remote`), without fetching anything.
fn ls_remote(repo: &str, abort: &AtomicBool) -> Result<RemoteRefs, GitError> {
    let unreachable = |e: git2::Error| GitError::Unreachable {
        repo: repo.to_owned(),
        reason: e.message().to_owned(),
    };
    let mut remote = git2::Remote::create_detached(repo).map_err(unreachable)?;
    let connection = remote
        .connect_auth(Direction::Fetch, Some(callbacks(abort)), None)
        .map_err(unreachable)?;
    let heads = connection
        .list()
        .map_err(unreachable)?
        .iter()
        .map(|head| (head.name().to_owned(), head.oid()))
        .collect();
    let default_branch = connection
        .default_branch()
        .ok()
        .and_then(|name| name.as_str().map(str::to_owned));
    Ok(RemoteRefs {
        heads,
        default_branch,
    })
}

/// What `branch` or `commit` of `repo` is, as a full commit id: the commit when a full
/// id is given, else by listing the remote's refs (fetching into `tmp_dir` only when an
/// abbreviated id is not a ref tip).
pub(super) fn resolve(
    repo: &str,
    branch: Option<String>,
    commit: Option<String>,
    tmp_dir: &Path,
    abort: &AtomicBool,
) -> Result<Resolved, GitError> {
    if let Some(commit) = commit {
        if commit.len() == 40 {
            if let Ok(oid) = Oid::from_str(&commit) {
                return Ok(Resolved {
                    commit: oid,
                    branch: None,
                    prefetched: None,
                });
            }
        }
        return resolve_abbreviated(repo, &commit.to_ascii_lowercase(), tmp_dir, abort);
    }

    let refs = ls_remote(repo, abort)?;
    let wanted = match branch {
        Some(branch) => branch
            .strip_prefix("refs/heads/")
            .unwrap_or(&branch)
            .to_owned(),
        None => {
            let name = refs
                .default_branch
                .as_deref()
                .and_then(|name| name.strip_prefix("refs/heads/"))
                .ok_or_else(|| GitError::NoDefaultBranch {
                    repo: repo.to_owned(),
                })?;
            name.to_owned()
        }
    };
    let refname = format!("refs/heads/{wanted}");
    let oid = refs
        .heads
        .iter()
        .find(|(name, _)| *name == refname)
        .map(|(_, oid)| *oid)
        .ok_or_else(|| GitError::UnknownBranch {
            repo: repo.to_owned(),
            branch: wanted.clone(),
        })?;
    Ok(Resolved {
        commit: oid,
        branch: Some(wanted),
        prefetched: None,
    })
}

/// An abbreviated id is matched against the remote's ref tips first; failing that,
/// the whole repository is fetched into the temp area and the id resolved there.
fn resolve_abbreviated(
    repo: &str,
    prefix: &str,
    tmp_dir: &Path,
    abort: &AtomicBool,
) -> Result<Resolved, GitError> {
    let refs = ls_remote(repo, abort)?;
    let mut tips: Vec<Oid> = refs
        .heads
        .iter()
        .map(|(_, oid)| *oid)
        .filter(|oid| oid.to_string().starts_with(prefix))
        .collect();
    tips.sort();
    tips.dedup();
    if let [oid] = tips[..] {
        return Ok(Resolved {
            commit: oid,
            branch: None,
            prefetched: None,
        });
    }

    let tmp =
        TempDir::with_prefix_in("fetch-", tmp_dir).map_err(|e| GitError::cache(tmp_dir, e))?;
    let local =
        Repository::init(tmp.path()).map_err(|e| GitError::cache(tmp.path(), e.message()))?;
    fetch_all(&local, repo, abort)?;
    let object = local.revparse_single(prefix).map_err(|e| match e.code() {
        git2::ErrorCode::Ambiguous => GitError::AmbiguousCommit {
            repo: repo.to_owned(),
            commit: prefix.to_owned(),
        },
        _ => GitError::UnknownCommit {
            repo: repo.to_owned(),
            commit: prefix.to_owned(),
        },
    })?;
    let commit = object
        .peel_to_commit()
        .map_err(|_| GitError::UnknownCommit {
            repo: repo.to_owned(),
            commit: prefix.to_owned(),
        })?;
    let oid = commit.id();
    drop(commit);
    drop(object);
    drop(local);
    Ok(Resolved {
        commit: oid,
        branch: None,
        prefetched: Some(tmp),
    })
}

fn fetch(
    local: &Repository,
    repo: &str,
    refspecs: &[&str],
    shallow: bool,
    abort: &AtomicBool,
) -> Result<(), git2::Error> {
    let mut remote = local.remote_anonymous(repo)?;
    let mut options = FetchOptions::new();
    options.remote_callbacks(callbacks(abort));
    options.download_tags(git2::AutotagOption::None);
    if shallow && !is_local(repo) {
        options.depth(1);
    }
    remote.fetch(refspecs, Some(&mut options), None)
}

fn fetch_all(local: &Repository, repo: &str, abort: &AtomicBool) -> Result<(), GitError> {
    let refspecs = [
        "+refs/heads/*:refs/remotes/origin/*",
        "+refs/tags/*:refs/tags/*",
    ];
    fetch(local, repo, &refspecs, false, abort).map_err(|e| {
        if abort.load(Ordering::Relaxed) {
            GitError::Fetch {
                repo: repo.to_owned(),
                reason: "aborted".to_owned(),
            }
        } else if e.class() == git2::ErrorClass::Net || e.class() == git2::ErrorClass::Os {
            GitError::Unreachable {
                repo: repo.to_owned(),
                reason: e.message().to_owned(),
            }
        } else {
            GitError::Fetch {
                repo: repo.to_owned(),
                reason: e.message().to_owned(),
            }
        }
    })
}

/// Gets `commit` into `local`: by id (shallow where possible), else by the branch it
/// was resolved from, else by fetching every branch and tag.
fn fetch_commit(
    local: &Repository,
    repo: &str,
    commit: Oid,
    branch_hint: Option<&str>,
    abort: &AtomicBool,
) -> Result<(), GitError> {
    let has = |local: &Repository| local.find_commit(commit).is_ok();
    let by_id = commit.to_string();
    if fetch(local, repo, &[by_id.as_str()], true, abort).is_ok() && has(local) {
        return Ok(());
    }
    if let Some(branch) = branch_hint {
        let spec = format!("+refs/heads/{branch}:refs/remotes/origin/{branch}");
        if fetch(local, repo, &[spec.as_str()], true, abort).is_ok() && has(local) {
            return Ok(());
        }
    }
    fetch_all(local, repo, abort)?;
    if has(local) {
        Ok(())
    } else {
        Err(GitError::UnknownCommit {
            repo: repo.to_owned(),
            commit: by_id,
        })
    }
}

/// Makes `dir` a complete checkout of `commit`: built in the temp area, renamed into
/// place. An existing `dir` is complete by construction and is kept.
pub(super) fn materialize(
    repo: &str,
    commit: Oid,
    branch_hint: Option<&str>,
    prefetched: Option<TempDir>,
    tmp_dir: &Path,
    dir: &Path,
    abort: &AtomicBool,
) -> Result<(), GitError> {
    if dir.exists() {
        return Ok(());
    }
    let tmp = match prefetched {
        Some(tmp) => tmp,
        None => {
            TempDir::with_prefix_in("clone-", tmp_dir).map_err(|e| GitError::cache(tmp_dir, e))?
        }
    };
    {
        let local =
            Repository::init(tmp.path()).map_err(|e| GitError::cache(tmp.path(), e.message()))?;
        if local.find_commit(commit).is_err() {
            fetch_commit(&local, repo, commit, branch_hint, abort)?;
        }
        let object = local
            .find_commit(commit)
            .map_err(|_| GitError::UnknownCommit {
                repo: repo.to_owned(),
                commit: commit.to_string(),
            })?
            .into_object();
        let mut checkout = git2::build::CheckoutBuilder::new();
        checkout.force();
        local
            .checkout_tree(&object, Some(&mut checkout))
            .and_then(|()| local.set_head_detached(commit))
            .map_err(|e| GitError::cache(tmp.path(), e.message()))?;
    }
    if abort.load(Ordering::Relaxed) {
        return Err(GitError::Fetch {
            repo: repo.to_owned(),
            reason: "aborted".to_owned(),
        });
    }
    let built = tmp.keep();
    match fs::rename(&built, dir) {
        Ok(()) => Ok(()),
        Err(_) if dir.exists() => {
            let _ = fs::remove_dir_all(&built);
            Ok(())
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&built);
            Err(GitError::cache(dir, e))
        }
    }
}
