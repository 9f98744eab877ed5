//! The checkout cache: one working tree per repository + commit.
//!
//! A request, once the policy has accepted it, is resolved to a commit (see `fetch`),
//! which is then fetched into the temp area and renamed into place, so a directory
//! under `checkouts/` is always complete. Concurrent requests for the same commit share
//! one fetch, which runs in a task of its own. Every [`Checkout`] pins its directory;
//! eviction (least recently used, beyond `git.max_checkouts`) only removes checkouts
//! nobody holds. Opening the cache clears the temp area of interrupted fetches and
//! adopts the checkouts already there.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use futures::future::{BoxFuture, FutureExt, Shared};
use git2::Oid;
use tempfile::TempDir;

use crate::state_dir;

use super::config::GitConfig;
use super::error::GitError;
use super::fetch;
use super::policy::{Policy, Request};

/// A checked-out commit. The directory stays in the cache at least as long as this
/// value (or a clone of it) lives.
#[derive(Clone)]
pub struct Checkout {
    repo: String,
    branch: Option<String>,
    commit: String,
    dir: PathBuf,
    pin: Arc<Pin>,
}

impl Checkout {
    /// The repository as used for the cache: a URL, or a canonical local path.
    pub fn repo(&self) -> &str {
        &self.repo
    }

    /// The branch the commit was resolved from, if it was resolved from one.
    pub fn branch(&self) -> Option<&str> {
        self.branch.as_deref()
    }

    /// The full hexadecimal commit id.
    pub fn commit(&self) -> &str {
        &self.commit
    }

    /// The working tree.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cache key: a hash of the repository and the commit, safe as a file name.
    pub(crate) fn key(&self) -> &str {
        &self.pin.key
    }
}

impl fmt::Debug for Checkout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Checkout")
            .field("repo", &self.repo)
            .field("branch", &self.branch)
            .field("commit", &self.commit)
            .field("dir", &self.dir)
            .finish()
    }
}

/// The cache of checkouts. Cheap to clone; clones share the cache.
#[derive(Clone)]
pub struct RepoCache {
    inner: Arc<Inner>,
}

struct Inner {
    policy: Policy,
    /// `git.max_checkouts`.
    max_checkouts: usize,
    /// `git.clone_timeout_secs`.
    timeout_secs: u64,
    checkouts_dir: PathBuf,
    tmp_dir: PathBuf,
    state: Mutex<State>,
    /// How many clones this cache has started.
    clones: AtomicU64,
}

/// A snapshot of the cache, for diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Complete checkouts in the cache.
    pub checkouts: usize,
    /// Checkouts being cloned right now.
    pub cloning: usize,
    /// Complete checkouts that a live [`Checkout`] holds.
    pub pinned: usize,
    /// Clones started since the cache was opened.
    pub clones: u64,
}

type Build = Shared<BoxFuture<'static, Result<(), GitError>>>;

#[derive(Default)]
struct State {
    slots: HashMap<String, Slot>,
    /// Logical clock for least-recently-used ordering.
    clock: u64,
    /// Generation counter, so a pin never releases a slot that replaced its own.
    next_gen: u64,
}

struct Slot {
    gen: u64,
    pins: usize,
    last_used: u64,
    /// Set while the commit is being fetched; `None` once the directory is complete.
    building: Option<Build>,
}

/// Holds one use of a checkout slot; releasing it may let eviction remove the slot.
struct Pin {
    inner: Arc<Inner>,
    key: String,
    gen: u64,
}

impl Drop for Pin {
    fn drop(&mut self) {
        let evicted = {
            let mut state = self.inner.lock();
            if let Some(slot) = state.slots.get_mut(&self.key) {
                if slot.gen == self.gen {
                    slot.pins = slot.pins.saturating_sub(1);
                }
            }
            self.inner.evict(&mut state)
        };
        remove_dirs(evicted);
    }
}

impl RepoCache {
    /// Opens (creating if needed) the cache under `git.cache_dir`, or `<state_dir>/git`.
    /// Leftovers of interrupted fetches are removed and existing checkouts adopted.
    pub fn new(config: GitConfig, state_dir: &Path) -> Result<Self, GitError> {
        let root = config.cache_dir(state_dir);
        let checkouts_dir = root.join("checkouts");
        let tmp_dir = root.join("tmp");
        fs::create_dir_all(&checkouts_dir).map_err(|e| GitError::cache(&checkouts_dir, e))?;
        // Only the names fetches and evictions give their scratch directories, and no
        // link is followed.
        state_dir::remove_own_entries(&tmp_dir, 0o755, |name, _| {
            ["fetch-", "clone-", "evicted-"]
                .iter()
                .any(|prefix| name.starts_with(prefix))
        })
        .map_err(|e| GitError::cache(&tmp_dir, e))?;

        let mut found = Vec::new();
        for entry in fs::read_dir(&checkouts_dir).map_err(|e| GitError::cache(&checkouts_dir, e))? {
            let entry = entry.map_err(|e| GitError::cache(&checkouts_dir, e))?;
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if !is_key(&name) {
                continue;
            }
            let used = entry
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(SystemTime::UNIX_EPOCH);
            found.push((used, name));
        }
        found.sort();

        let inner = Arc::new(Inner {
            policy: Policy::new(&config),
            max_checkouts: config.max_checkouts,
            timeout_secs: config.clone_timeout_secs,
            checkouts_dir,
            tmp_dir,
            state: Mutex::new(State::default()),
            clones: AtomicU64::new(0),
        });
        let evicted = {
            let mut state = inner.lock();
            for (_, key) in found {
                let gen = state.tick_gen();
                let last_used = state.tick();
                state.slots.insert(
                    key,
                    Slot {
                        gen,
                        pins: 0,
                        last_used,
                        building: None,
                    },
                );
            }
            inner.evict(&mut state)
        };
        remove_dirs(evicted);
        Ok(RepoCache { inner })
    }

    /// Replaces `git.allowed_repos`; checkouts already made stay usable.
    pub fn set_allowed_repos(&self, patterns: Vec<String>) {
        self.inner.policy.set_allowed_repos(patterns);
    }

    /// Counts of checkouts, for diagnostics and logs.
    pub fn stats(&self) -> CacheStats {
        let state = self.inner.lock();
        let complete = || state.slots.values().filter(|s| s.building.is_none());
        CacheStats {
            checkouts: complete().count(),
            cloning: state.slots.len() - complete().count(),
            pinned: complete().filter(|s| s.pins > 0).count(),
            clones: self.inner.clones.load(Ordering::Relaxed),
        }
    }

    /// Checks out `commit` (full or abbreviated hex), else the tip of `branch`, else
    /// the tip of `git.default_branch` or the repository's default branch, of `repo`
    /// (a URL or an absolute local path; default `git.default_repo`).
    /// Checks, without fetching anything, that a checkout of `repo` at `branch` or
    /// `commit` would be admitted: a repository is given or configured, a local path is
    /// absolute and exists, the repository is allowed, a commit id looks like one.
    pub async fn check(
        &self,
        repo: Option<&str>,
        branch: Option<&str>,
        commit: Option<&str>,
    ) -> Result<(), GitError> {
        self.inner
            .policy
            .admit(repo, branch, commit)
            .await
            .map(drop)
    }

    pub async fn checkout(
        &self,
        repo: Option<&str>,
        branch: Option<&str>,
        commit: Option<&str>,
    ) -> Result<Checkout, GitError> {
        let Request {
            repo,
            branch,
            commit,
        } = self.inner.policy.admit(repo, branch, commit).await?;
        let resolved = {
            let (remote, tmp_dir) = (repo.clone(), self.inner.tmp_dir.clone());
            fetch::blocking(&repo, self.inner.timeout_secs, move |abort| {
                fetch::resolve(&remote, branch, commit, &tmp_dir, abort)
            })
            .await?
        };

        let key = format!("{}-{}", repo_hash(&repo), resolved.commit);
        let dir = self.inner.checkouts_dir.join(&key);
        let (pin, building) = self.inner.pin(&key, || {
            let inner = self.inner.clone();
            let (repo, dir) = (repo.clone(), dir.clone());
            let (commit, hint) = (resolved.commit, resolved.branch.clone());
            let prefetched = resolved.prefetched;
            start_build(inner, key.clone(), repo, commit, hint, prefetched, dir)
        });
        if let Some(building) = building {
            building.await?;
        }
        touch(&dir);
        Ok(Checkout {
            repo,
            branch: resolved.branch,
            commit: resolved.commit.to_string(),
            dir,
            pin: Arc::new(pin),
        })
    }
}

/// Fetches and checks out in a task of its own, so the checkout completes (and is
/// recorded) even if every requester gives up waiting.
fn start_build(
    inner: Arc<Inner>,
    key: String,
    repo: String,
    commit: Oid,
    branch_hint: Option<String>,
    prefetched: Option<TempDir>,
    dir: PathBuf,
) -> Build {
    inner.clones.fetch_add(1, Ordering::Relaxed);
    let failed_repo = repo.clone();
    let task = tokio::spawn(async move {
        let tmp_dir = inner.tmp_dir.clone();
        let result = fetch::blocking(&repo.clone(), inner.timeout_secs, move |abort| {
            fetch::materialize(
                &repo,
                commit,
                branch_hint.as_deref(),
                prefetched,
                &tmp_dir,
                &dir,
                abort,
            )
        })
        .await;
        let evicted = {
            let mut state = inner.lock();
            match &result {
                Ok(()) => {
                    if let Some(slot) = state.slots.get_mut(&key) {
                        slot.building = None;
                    }
                }
                Err(_) => {
                    state.slots.remove(&key);
                }
            }
            inner.evict(&mut state)
        };
        remove_dirs(evicted);
        result
    });
    task.map(move |joined| {
        joined.unwrap_or_else(|e| {
            Err(GitError::Fetch {
                repo: failed_repo,
                reason: format!("the checkout task failed: {e}"),
            })
        })
    })
    .boxed()
    .shared()
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes a pin on `key`, starting a build with `start` if the slot does not exist.
    /// Returns the build to wait for while the checkout is still being fetched.
    fn pin(self: &Arc<Self>, key: &str, start: impl FnOnce() -> Build) -> (Pin, Option<Build>) {
        let mut state = self.lock();
        let now = state.tick();
        let gen = match state.slots.get_mut(key) {
            Some(slot) => {
                slot.pins += 1;
                slot.last_used = now;
                slot.gen
            }
            None => {
                let gen = state.tick_gen();
                state.slots.insert(
                    key.to_owned(),
                    Slot {
                        gen,
                        pins: 1,
                        last_used: now,
                        building: Some(start()),
                    },
                );
                gen
            }
        };
        let building = state.slots.get(key).and_then(|slot| slot.building.clone());
        let pin = Pin {
            inner: self.clone(),
            key: key.to_owned(),
            gen,
        };
        (pin, building)
    }

    /// Removes the least recently used unpinned checkouts beyond `max_checkouts`.
    /// Each is renamed into the temp area at once (so it can no longer be found) and
    /// returned for deletion outside the lock.
    fn evict(&self, state: &mut State) -> Vec<PathBuf> {
        let mut removed = Vec::new();
        loop {
            let complete = state
                .slots
                .values()
                .filter(|slot| slot.building.is_none())
                .count();
            if complete <= self.max_checkouts {
                break;
            }
            let victim = state
                .slots
                .iter()
                .filter(|(_, slot)| slot.building.is_none() && slot.pins == 0)
                .min_by_key(|(_, slot)| slot.last_used)
                .map(|(key, _)| key.clone());
            let Some(key) = victim else {
                break;
            };
            state.slots.remove(&key);
            let from = self.checkouts_dir.join(&key);
            let to = self.tmp_dir.join(format!("evicted-{key}"));
            match fs::rename(&from, &to) {
                Ok(()) => removed.push(to),
                Err(e) => tracing::warn!("could not evict checkout {}: {e}", from.display()),
            }
        }
        removed
    }
}

impl State {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn tick_gen(&mut self) -> u64 {
        self.next_gen += 1;
        self.next_gen
    }
}

/// A short, stable, file-name-safe digest of the repository string.
fn repo_hash(repo: &str) -> String {
    match Oid::hash_object(git2::ObjectType::Blob, repo.as_bytes()) {
        Ok(oid) => oid.to_string()[..16].to_owned(),
        // Hashing a byte buffer does not fail; keep a deterministic fallback anyway.
        Err(_) => repo
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
                (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
            })
            .to_string(),
    }
}

/// Whether a directory name is a cache key: `<16 hex>-<40 hex>`.
pub(crate) fn is_key(name: &str) -> bool {
    match name.split_once('-') {
        Some((hash, commit)) => {
            hash.len() == 16
                && commit.len() == 40
                && name.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit())
        }
        None => false,
    }
}

/// Marks a checkout as just used, so least-recently-used survives a restart.
fn touch(dir: &Path) {
    if let Ok(file) = fs::File::open(dir) {
        let _ = file.set_modified(SystemTime::now());
    }
}

/// Deletes evicted directories (already renamed out of the way), off the runtime.
fn remove_dirs(dirs: Vec<PathBuf>) {
    if dirs.is_empty() {
        return;
    }
    let work = move || {
        for dir in dirs {
            if let Err(e) = fs::remove_dir_all(&dir) {
                tracing::warn!("could not remove evicted checkout {}: {e}", dir.display());
            }
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => {
            runtime.spawn_blocking(work);
        }
        Err(_) => work(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_recognised() {
        let key = format!("{}-{}", repo_hash("/srv/repo"), "a".repeat(40));
        assert!(is_key(&key));
        assert!(!is_key("clone-x"));
        assert_ne!(repo_hash("/srv/repo"), repo_hash("/srv/repo2"));
    }
}
