//! The libgit2 work, all of it blocking: listing a remote's refs (`git ls-remote`),
//! resolving a branch or a full or abbreviated commit id, fetching (shallow where the
//! transport allows) and materializing a checkout, which is built in the cache's temp
//! area and renamed into place. [`blocking`] runs such work off the runtime under the
//! `git.clone_timeout_secs` deadline; on timeout the transfer is told to abort. A
//! [`Transfer`] is one such piece of work against one remote: libgit2 is given the URL
//! without credentials, asks for them through the credentials callback when the server
//! wants them, and every error names the repository as it is shown.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use git2::{Direction, FetchOptions, Oid, RemoteCallbacks, Repository};
use tempfile::TempDir;

use super::credentials::{Credentials, Sources};
use super::error::GitError;
use super::url::{redact_text, Remote};
use crate::disk;

/// What a request resolved to, before anything is checked out.
pub(super) struct Resolved {
    pub commit: Oid,
    pub branch: Option<String>,
    /// A repository in the cache's temp area that already holds the commit (when an
    /// abbreviated commit id had to be fetched to be resolved).
    pub prefetched: Option<TempDir>,
}

/// Runs blocking git work off the runtime, bounded by `clone_timeout_secs`. `repo` is
/// the repository as shown.
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

/// Whether libgit2 reaches `url` with its local transport, which cannot fetch shallow.
fn is_local(url: &str) -> bool {
    url.starts_with('/') || url.starts_with("file://")
}

/// One piece of git work against one remote: its URL, its credentials, and the flag
/// that aborts it.
pub(super) struct Transfer<'a> {
    remote: &'a Remote,
    credentials: Credentials<'a>,
    abort: &'a AtomicBool,
}

impl<'a> Transfer<'a> {
    pub fn new(remote: &'a Remote, sources: &'a Sources, abort: &'a AtomicBool) -> Self {
        Transfer {
            remote,
            credentials: Credentials::new(remote, sources),
            abort,
        }
    }

    /// The repository as shown, for errors.
    fn shown(&self) -> String {
        self.remote.shown.clone()
    }

    fn callbacks(&self) -> RemoteCallbacks<'_> {
        self.credentials.restart();
        let mut callbacks = RemoteCallbacks::new();
        callbacks.transfer_progress(move |_| !self.abort.load(Ordering::Relaxed));
        callbacks.sideband_progress(move |_| !self.abort.load(Ordering::Relaxed));
        callbacks.credentials(move |_, _, allowed| self.credentials.provide(allowed));
        callbacks
    }

    /// The error for a failed libgit2 call: aborted, credentials missing or refused,
    /// the network (made by `unreachable`), or else the fetch.
    fn error(&self, e: &git2::Error, network_only: bool) -> GitError {
        let reason = redact_text(e.message());
        if self.abort.load(Ordering::Relaxed) {
            return GitError::Fetch {
                repo: self.shown(),
                reason: "aborted".to_owned(),
            };
        }
        if let Some(failure) = self.credentials.failure() {
            return failure;
        }
        let network = matches!(
            e.class(),
            git2::ErrorClass::Net | git2::ErrorClass::Os | git2::ErrorClass::Http
        );
        if network_only || network {
            GitError::Unreachable {
                repo: self.shown(),
                reason,
            }
        } else {
            GitError::Fetch {
                repo: self.shown(),
                reason,
            }
        }
    }
}

struct RemoteRefs {
    heads: Vec<(String, Oid)>,
    default_branch: Option<String>,
}

/// Lists the remote's refs (`git ls-remote`), without fetching anything.
fn ls_remote(transfer: &Transfer<'_>) -> Result<RemoteRefs, GitError> {
    let unreachable = |e: git2::Error| transfer.error(&e, true);
    let mut remote =
        git2::Remote::create_detached(transfer.remote.url.as_str()).map_err(unreachable)?;
    let connection = remote
        .connect_auth(Direction::Fetch, Some(transfer.callbacks()), None)
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
    transfer: &Transfer<'_>,
    branch: Option<String>,
    commit: Option<String>,
    tmp_dir: &Path,
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
        return resolve_abbreviated(transfer, &commit.to_ascii_lowercase(), tmp_dir);
    }

    let refs = ls_remote(transfer)?;
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
                    repo: transfer.shown(),
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
            repo: transfer.shown(),
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
    transfer: &Transfer<'_>,
    prefix: &str,
    tmp_dir: &Path,
) -> Result<Resolved, GitError> {
    let refs = ls_remote(transfer)?;
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
    fetch_all(&local, transfer)?;
    let object = local.revparse_single(prefix).map_err(|e| match e.code() {
        git2::ErrorCode::Ambiguous => GitError::AmbiguousCommit {
            repo: transfer.shown(),
            commit: prefix.to_owned(),
        },
        _ => GitError::UnknownCommit {
            repo: transfer.shown(),
            commit: prefix.to_owned(),
        },
    })?;
    let commit = object
        .peel_to_commit()
        .map_err(|_| GitError::UnknownCommit {
            repo: transfer.shown(),
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
    transfer: &Transfer<'_>,
    refspecs: &[&str],
    shallow: bool,
) -> Result<(), git2::Error> {
    let url = transfer.remote.url.as_str();
    let mut remote = local.remote_anonymous(url)?;
    let mut options = FetchOptions::new();
    options.remote_callbacks(transfer.callbacks());
    options.download_tags(git2::AutotagOption::None);
    if shallow && !is_local(url) {
        options.depth(1);
    }
    remote.fetch(refspecs, Some(&mut options), None)
}

fn fetch_all(local: &Repository, transfer: &Transfer<'_>) -> Result<(), GitError> {
    let refspecs = [
        "+refs/heads/*:refs/remotes/origin/*",
        "+refs/tags/*:refs/tags/*",
    ];
    fetch(local, transfer, &refspecs, false).map_err(|e| transfer.error(&e, false))
}

/// Gets `commit` into `local`: by id (shallow where possible), else by the branch it
/// was resolved from, else by fetching every branch and tag.
fn fetch_commit(
    local: &Repository,
    transfer: &Transfer<'_>,
    commit: Oid,
    branch_hint: Option<&str>,
) -> Result<(), GitError> {
    let has = |local: &Repository| local.find_commit(commit).is_ok();
    let by_id = commit.to_string();
    if fetch(local, transfer, &[by_id.as_str()], true).is_ok() && has(local) {
        return Ok(());
    }
    if let Some(branch) = branch_hint {
        let spec = format!("+refs/heads/{branch}:refs/remotes/origin/{branch}");
        if fetch(local, transfer, &[spec.as_str()], true).is_ok() && has(local) {
            return Ok(());
        }
    }
    fetch_all(local, transfer)?;
    if has(local) {
        Ok(())
    } else {
        Err(GitError::UnknownCommit {
            repo: transfer.shown(),
            commit: by_id,
        })
    }
}

/// Makes `dir` a complete, read-only checkout of `commit`: built in the temp area,
/// renamed into place. An existing `dir` is complete by construction and is kept.
pub(super) fn materialize(
    transfer: &Transfer<'_>,
    commit: Oid,
    branch_hint: Option<&str>,
    prefetched: Option<TempDir>,
    tmp_dir: &Path,
    dir: &Path,
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
            fetch_commit(&local, transfer, commit, branch_hint)?;
        }
        let object = local
            .find_commit(commit)
            .map_err(|_| GitError::UnknownCommit {
                repo: transfer.shown(),
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
    if transfer.abort.load(Ordering::Relaxed) {
        return Err(GitError::Fetch {
            repo: transfer.shown(),
            reason: "aborted".to_owned(),
        });
    }
    // Read-only to everything that respects permissions: builds work on copies, and a
    // script shares its checkout with every other procedure of the commit. The top
    // directory stays writable until it is in place (a directory moved to another
    // parent must be writable), then is made read-only too.
    for entry in fs::read_dir(tmp.path()).map_err(|e| GitError::cache(tmp.path(), e))? {
        let path = entry.map_err(|e| GitError::cache(tmp.path(), e))?.path();
        disk::make_read_only(&path).map_err(|e| GitError::cache(&path, e))?;
    }
    let built = tmp.keep();
    match fs::rename(&built, dir) {
        Ok(()) => {
            let mode = fs::Permissions::from_mode(0o555);
            fs::set_permissions(dir, mode).map_err(|e| GitError::cache(dir, e))
        }
        Err(_) if dir.exists() => {
            let _ = disk::remove_tree(&built);
            Ok(())
        }
        Err(e) => {
            let _ = disk::remove_tree(&built);
            Err(GitError::cache(dir, e))
        }
    }
}
