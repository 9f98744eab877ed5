//! The checkout cache: one working tree per repository + commit.
//!
//! A request names a repository (or takes the configured default), a branch and/or a
//! commit. The branch is resolved to a commit by listing the remote's refs, without
//! cloning; the commit is then fetched (shallow where the transport allows) into a
//! temporary directory inside the cache and renamed into place, so a directory under
//! `checkouts/` is always complete. Concurrent requests for the same commit share one
//! fetch. Every [`Checkout`] pins its directory; eviction (least recently used, beyond
//! `git.max_checkouts`) only removes checkouts nobody holds.
//!
//! libgit2 is blocking, so every git operation runs on `spawn_blocking` under the
//! `git.clone_timeout_secs` deadline; on timeout the transfer is told to abort.

use std::collections::HashMap;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use futures::future::{BoxFuture, FutureExt, Shared};
use git2::{Direction, FetchOptions, Oid, RemoteCallbacks, Repository};
use tempfile::TempDir;

use super::{GitConfig, GitError};

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
    config: GitConfig,
    /// `git.allowed_repos`, which a configuration reload may change.
    allowed: std::sync::RwLock<Vec<String>>,
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

/// What a request resolved to, before anything is checked out.
struct Resolved {
    commit: Oid,
    branch: Option<String>,
    /// A repository in the cache's temp area that already holds the commit (when an
    /// abbreviated commit id had to be fetched to be resolved).
    prefetched: Option<TempDir>,
}

impl RepoCache {
    /// Opens (creating if needed) the cache under `git.cache_dir`, or `<state_dir>/git`.
    /// Leftovers of interrupted fetches are removed and existing checkouts adopted.
    pub fn new(config: GitConfig, state_dir: &Path) -> Result<Self, GitError> {
        let root = config.cache_dir(state_dir);
        let checkouts_dir = root.join("checkouts");
        let tmp_dir = root.join("tmp");
        for dir in [&checkouts_dir, &tmp_dir] {
            fs::create_dir_all(dir).map_err(|e| GitError::cache(dir, e))?;
        }
        for entry in fs::read_dir(&tmp_dir).map_err(|e| GitError::cache(&tmp_dir, e))? {
            let entry = entry.map_err(|e| GitError::cache(&tmp_dir, e))?;
            let path = entry.path();
            let removed = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            removed.map_err(|e| GitError::cache(&path, e))?;
        }

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
            allowed: std::sync::RwLock::new(config.allowed_repos.clone()),
            config,
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

    /// Counts of checkouts, for diagnostics and logs.
    /// Replaces `git.allowed_repos`; checkouts already made stay usable.
    pub fn set_allowed_repos(&self, patterns: Vec<String>) {
        *self
            .inner
            .allowed
            .write()
            .unwrap_or_else(PoisonError::into_inner) = patterns;
    }

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
    pub async fn checkout(
        &self,
        repo: Option<&str>,
        branch: Option<&str>,
        commit: Option<&str>,
    ) -> Result<Checkout, GitError> {
        let config = &self.inner.config;
        let repo = repo
            .or(config.default_repo.as_deref())
            .ok_or(GitError::NoRepo)?;
        let repo = normalize_repo(repo).await?;
        {
            let allowed = self
                .inner
                .allowed
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            if !allowed.is_empty() && !allowed.iter().any(|p| glob_match(p, &repo)) {
                return Err(GitError::NotAllowed { repo });
            }
        }
        if let Some(commit) = commit {
            let valid =
                (4..=40).contains(&commit.len()) && commit.bytes().all(|b| b.is_ascii_hexdigit());
            if !valid {
                return Err(GitError::InvalidCommit {
                    commit: commit.to_owned(),
                });
            }
        }

        let branch = branch.map(str::to_owned).or_else(|| {
            commit
                .is_none()
                .then(|| config.default_branch.clone())
                .flatten()
        });
        let resolved = {
            let (repo, branch, commit) = (repo.clone(), branch.clone(), commit.map(str::to_owned));
            let tmp_dir = self.inner.tmp_dir.clone();
            self.inner
                .blocking(&repo.clone(), move |abort| {
                    resolve(&repo, branch, commit, &tmp_dir, abort)
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
        let result = {
            let repo = repo.clone();
            inner
                .blocking(&repo.clone(), move |abort| {
                    materialize(
                        &repo,
                        commit,
                        branch_hint.as_deref(),
                        prefetched,
                        &tmp_dir,
                        &dir,
                        abort,
                    )
                })
                .await
        };
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
            if complete <= self.config.max_checkouts {
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

    /// Runs blocking git work off the runtime, bounded by `clone_timeout_secs`.
    async fn blocking<T: Send + 'static>(
        &self,
        repo: &str,
        work: impl FnOnce(&AtomicBool) -> Result<T, GitError> + Send + 'static,
    ) -> Result<T, GitError> {
        let abort = Arc::new(AtomicBool::new(false));
        let task = tokio::task::spawn_blocking({
            let abort = abort.clone();
            move || work(&abort)
        });
        let secs = self.config.clone_timeout_secs;
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

/// A URL stays as given; a local path must be absolute and is canonicalized, so the
/// same repository always gets the same cache key.
async fn normalize_repo(repo: &str) -> Result<String, GitError> {
    let repo = repo.trim();
    let scp_like = match (repo.find(':'), repo.find('/')) {
        (Some(colon), Some(slash)) => colon < slash,
        (Some(_), None) => true,
        _ => false,
    };
    if repo.contains("://") || scp_like {
        return Ok(repo.trim_end_matches('/').to_owned());
    }
    if !Path::new(repo).is_absolute() {
        return Err(GitError::RelativePath {
            repo: repo.to_owned(),
        });
    }
    let path = tokio::fs::canonicalize(repo)
        .await
        .map_err(|e| GitError::Unreachable {
            repo: repo.to_owned(),
            reason: e.to_string(),
        })?;
    path.into_os_string()
        .into_string()
        .map_err(|_| GitError::Unreachable {
            repo: repo.to_owned(),
            reason: "the path is not valid UTF-8".to_owned(),
        })
}

/// Whether libgit2 reaches `repo` with its local transport, which cannot fetch shallow.
fn is_local(repo: &str) -> bool {
    repo.starts_with('/') || repo.starts_with("file://")
}

/// `*` matches any run of characters; everything else matches itself.
fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
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

fn resolve(
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
fn materialize(
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_patterns() {
        assert!(glob_match(
            "https://gitlab.com/ska/*",
            "https://gitlab.com/ska/oet.git"
        ));
        assert!(glob_match("*", "/srv/repo"));
        assert!(glob_match("/srv/*/scripts", "/srv/a/b/scripts"));
        assert!(glob_match("/srv/repo", "/srv/repo"));
        assert!(!glob_match("/srv/repo", "/srv/repo2"));
        assert!(!glob_match(
            "https://gitlab.com/ska/*",
            "https://github.com/ska/x"
        ));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("a*b*c", "aXbYbZ"));
    }

    #[test]
    fn keys_are_recognised() {
        let key = format!("{}-{}", repo_hash("/srv/repo"), "a".repeat(40));
        assert!(is_key(&key));
        assert!(!is_key("clone-x"));
        assert_ne!(repo_hash("/srv/repo"), repo_hash("/srv/repo2"));
    }
}
