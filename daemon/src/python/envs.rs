//! Per-commit Python environments: `python -m venv --system-site-packages`, then
//! `pip install` of a private copy of the checked-out project.
//!
//! One environment per repository + commit, under `python.env_dir`. It is complete when
//! its marker file exists (written last); anything else in the directory is a partial
//! build and is removed before a rebuild. Concurrent requests for one commit share one
//! build, which runs in a task of its own; each requester receives the output lines
//! from the moment it joins and waits at most `python.env_wait_secs`. The build is
//! cancelled only when every requester has gone (cancelled, timed out or dropped):
//! pip's whole process group is then killed and the partial environment removed.
//!
//! pip builds in the tree it installs from (`build/`, `*.egg-info`, bytecode), so a
//! build installs from a copy of the project made for it in `.tmp/`, and the project's
//! own directory (a shared checkout) is only read.
//!
//! Every environment handed out is pinned by its [`Env`] for as long as its user (a
//! live procedure) holds it. Beyond `python.max_envs` or `python.max_env_bytes`, the
//! least recently used environments that nobody holds and that are not being built are
//! removed, in the background after each build and each release; pip's cache is
//! cleared beyond `python.max_pip_cache_bytes` while no build runs.
//! [`EnvManager::prune`] removes every environment nobody holds, and the pip cache,
//! at once.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs;
use std::io::ErrorKind;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use futures::future::{BoxFuture, FutureExt, Shared};
use futures::StreamExt;
use tokio::io::AsyncRead;
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::disk;
use crate::process::{self, ProcessGroup};
use crate::reaper::Reaper;
use crate::state_dir::{self, EntryKind};

use super::config::PythonConfig;
use super::slots::{Bounds, Slots};

/// Written into an environment when its build has succeeded, and only then.
const MARKER: &str = ".oetd-env-complete";
/// pip's download and wheel cache, shared by all environments, inside `python.env_dir`
/// (the service's home may not be writable, and nothing is written outside our dirs).
const PIP_CACHE: &str = ".pip-cache";
/// Scratch space inside `python.env_dir`: the copies builds install from, and what is
/// being deleted (evicted environments, cleared pip caches). Emptied at start-up.
const TMP: &str = ".tmp";
/// How many lines of a failed command's output the error keeps.
const TAIL_LINES: usize = 40;
/// How long to wait for killed build processes to exit before giving up on them.
const KILL_WAIT: Duration = Duration::from_secs(30);

/// Why a Python environment could not be provided.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error(
        "could not start '{program}': {reason}; check python.interpreter in the oetd configuration"
    )]
    Spawn { program: String, reason: String },
    #[error("creating the Python environment '{dir}' failed ({status}):\n{output}")]
    Venv {
        dir: PathBuf,
        status: String,
        output: String,
    },
    #[error("pip install of {repo} at commit {commit} failed ({status}):\n{output}")]
    Install {
        repo: String,
        commit: String,
        status: String,
        output: String,
    },
    #[error("the Python environment for {repo} at commit {commit} was not ready within python.env_wait_secs ({secs} s)")]
    Timeout {
        repo: String,
        commit: String,
        secs: u64,
    },
    #[error("building the Python environment for {repo} at commit {commit} was cancelled")]
    Cancelled { repo: String, commit: String },
    #[error("the environment directory '{path}' could not be used: {reason}; check python.env_dir and its permissions")]
    Dir { path: PathBuf, reason: String },
}

impl EnvError {
    fn dir(path: &Path, err: impl std::fmt::Display) -> Self {
        EnvError::Dir {
            path: path.to_owned(),
            reason: err.to_string(),
        }
    }
}

/// What an environment is built from: a Python project at one commit of a repository.
/// The builder holds a clone for as long as it builds from [`Project::dir`], so a type
/// that keeps its directory alive while held (a pinned checkout) keeps it for the whole
/// build.
pub trait Project: Clone + Send + Sync + 'static {
    /// Where the project comes from, for messages and the completion marker.
    fn repo(&self) -> &str;
    /// The commit, for messages and the completion marker.
    fn commit(&self) -> &str;
    /// The project's directory. Builds only read it: pip installs a copy of it.
    fn dir(&self) -> &Path;
    /// A file-name-safe name, one per repository + commit: the environment's directory.
    fn key(&self) -> &str;
    /// Whether `name` has the form of a [`Project::key`]. Only such directories are
    /// taken for environments when the environment directory is opened.
    fn is_key(name: &str) -> bool;
}

/// Builds and hands out per-commit environments of projects `P`. Cheap to clone; clones
/// share builds.
pub struct EnvManager<P> {
    inner: Arc<Inner>,
    project: PhantomData<fn(&P)>,
}

impl<P> Clone for EnvManager<P> {
    fn clone(&self) -> Self {
        EnvManager {
            inner: self.inner.clone(),
            project: PhantomData,
        }
    }
}

struct Inner {
    config: PythonConfig,
    env_dir: PathBuf,
    tmp_dir: PathBuf,
    pip_cache: PathBuf,
    /// `oetd` itself, run as a reaper guarding each build's process group, so that a
    /// pip outlives neither a stop nor the daemon. Unset (in library tests), builds are
    /// still killed on cancellation, but not when the process dies.
    reaper_exe: std::sync::OnceLock<PathBuf>,
    /// Told the interpreter of each environment removed, before its files go (see
    /// [`EnvManager::on_removed`]).
    on_removed: std::sync::OnceLock<Removed>,
    state: Mutex<State>,
}

/// What is told of a removed environment's interpreter; done once the future is.
type Removed = Arc<dyn Fn(PathBuf) -> BoxFuture<'static, ()> + Send + Sync>;

#[derive(Default)]
struct State {
    /// Every environment, complete or being built. A slot being built leaves when its
    /// build has failed and cleaned up, just before its result is published.
    slots: Slots<Arc<Build>>,
    /// Space pip's cache takes, once measured.
    pip_cache_bytes: Option<u64>,
    /// A background pass is running; `again` asks it for one more round.
    passing: bool,
    again: bool,
    /// Names what is moved into the scratch area, so no two moves meet.
    moves: u64,
}

/// An environment handed out, and the pin that keeps it from eviction while held.
#[derive(Debug)]
pub struct Env {
    python: PathBuf,
    _pin: EnvPin,
}

impl Env {
    /// The environment's interpreter.
    pub fn python(&self) -> &Path {
        &self.python
    }
}

/// One user's hold on an environment (or on its build, while it runs).
struct EnvPin {
    inner: Arc<Inner>,
    key: String,
    gen: u64,
}

impl std::fmt::Debug for EnvPin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnvPin").field("key", &self.key).finish()
    }
}

impl Drop for EnvPin {
    fn drop(&mut self) {
        self.inner.lock().slots.unpin(&self.key, self.gen);
        self.inner.schedule_pass();
    }
}

/// Counts and sizes of the environments and pip's cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EnvStats {
    /// Complete environments.
    pub envs: u64,
    /// Complete environments a live procedure uses.
    pub in_use: u64,
    /// Environments being built.
    pub building: u64,
    /// Space the complete environments take on disk.
    pub bytes: u64,
    /// Space pip's cache takes on disk.
    pub pip_cache_bytes: u64,
}

/// What a prune removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvsPruned {
    pub envs: u64,
    pub env_bytes: u64,
    /// Space freed by clearing pip's cache.
    pub pip_cache_bytes: u64,
    /// Why pip's cache was kept, if it was.
    pub pip_cache_kept: Option<String>,
}

type LineSink = Arc<dyn Fn(&str) + Send + Sync>;

struct Build {
    done: Shared<BoxFuture<'static, Result<PathBuf, EnvError>>>,
    cancel: CancellationToken,
    sinks: Arc<Sinks>,
}

/// The requesters still waiting for a build; the build is cancelled when none is left.
#[derive(Default)]
struct Sinks {
    inner: Mutex<SinkList>,
}

#[derive(Default)]
struct SinkList {
    next_id: u64,
    sinks: Vec<(u64, LineSink)>,
}

impl Sinks {
    fn lock(&self) -> MutexGuard<'_, SinkList> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn emit(&self, line: &str) {
        let sinks: Vec<LineSink> = self.lock().sinks.iter().map(|(_, s)| s.clone()).collect();
        for sink in sinks {
            sink(line);
        }
    }
}

/// One requester's interest in a build; leaving (or dropping) withdraws it.
struct Interest {
    build: Arc<Build>,
    id: u64,
    left: bool,
}

impl Interest {
    /// Withdraws this interest; returns whether that cancelled the build.
    fn leave(&mut self) -> bool {
        if self.left {
            return false;
        }
        self.left = true;
        let mut list = self.build.sinks.lock();
        list.sinks.retain(|(id, _)| *id != self.id);
        if list.sinks.is_empty() && !self.build.cancel.is_cancelled() {
            self.build.cancel.cancel();
            true
        } else {
            false
        }
    }
}

impl Drop for Interest {
    fn drop(&mut self) {
        self.leave();
    }
}

enum Joined {
    Ready(Env),
    Waiting(Interest, EnvPin),
    /// A build that is winding down after a cancellation; wait for it, then retry.
    Ending(Arc<Build>),
}

impl<P: Project> EnvManager<P> {
    /// Opens (creating if needed) `python.env_dir`, or `<state_dir>/envs`, removing
    /// environments whose build never completed and the scratch area, and adopting the
    /// complete environments (least recently used first, by their marker's time).
    pub fn new(config: PythonConfig, state_dir: &Path) -> Result<Self, EnvError> {
        let env_dir = config.env_dir(state_dir);
        if let Some(parent) = env_dir.parent() {
            fs::create_dir_all(parent).map_err(|e| EnvError::dir(&env_dir, e))?;
        }
        // Only environments, as their names tell, whose build never finished; no link is
        // followed, so the marker is looked for in the directory itself.
        let dir =
            state_dir::open_own_dir(&env_dir, 0o755).map_err(|e| EnvError::dir(&env_dir, e))?;
        dir.remove_own_entries(|name, kind| {
            kind == EntryKind::Dir
                && P::is_key(name)
                && env_dir.join(name).join(MARKER).symlink_metadata().is_err()
        })
        .map_err(|e| EnvError::dir(&env_dir, e))?;
        // The scratch area holds nothing worth keeping across a restart.
        let tmp_dir = env_dir.join(TMP);
        state_dir::remove_own_entries(&tmp_dir, 0o755, |_, _| true)
            .map_err(|e| EnvError::dir(&tmp_dir, e))?;
        let mut state = State::default();
        for (_, key) in complete_envs::<P>(&env_dir)? {
            let gen = state.slots.reserve_gen();
            state
                .slots
                .insert(&key, gen, format!("in {key}"), None, false);
        }
        let inner = Arc::new(Inner {
            pip_cache: env_dir.join(PIP_CACHE),
            config,
            env_dir,
            tmp_dir,
            reaper_exe: std::sync::OnceLock::new(),
            on_removed: std::sync::OnceLock::new(),
            state: Mutex::new(state),
        });
        inner.schedule_pass();
        Ok(EnvManager {
            inner,
            project: PhantomData,
        })
    }

    /// Guards every build's processes with a reaper run from `exe` (the daemon's own
    /// executable), so that they die with the daemon.
    pub fn guard_builds_with(&self, exe: PathBuf) {
        let _ = self.inner.reaper_exe.set(exe);
    }

    /// Has `removed` told the interpreter of each environment eviction or a prune
    /// removes, and waits for what it does before the environment's files are deleted:
    /// whoever keeps a process of that interpreter (a zygote) ends it.
    pub fn on_removed(
        &self,
        removed: impl Fn(PathBuf) -> BoxFuture<'static, ()> + Send + Sync + 'static,
    ) {
        let _ = self.inner.on_removed.set(Arc::new(removed));
    }

    /// The environment for `project`, building it first if needed; it stays (it is
    /// never evicted) while the returned [`Env`] is held. Build output goes to
    /// `on_line`, line by line. Gives up after `python.env_wait_secs`, or when `cancel`
    /// fires; if no other requester is left the build is then stopped and removed
    /// before this returns.
    pub async fn ensure(
        &self,
        project: &P,
        on_line: impl Fn(&str) + Send + Sync + 'static,
        cancel: CancellationToken,
    ) -> Result<Env, EnvError> {
        let sink: LineSink = Arc::new(on_line);
        let secs = self.inner.config.env_wait_secs;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        let timeout = || EnvError::Timeout {
            repo: project.repo().to_owned(),
            commit: project.commit().to_owned(),
            secs,
        };
        let cancelled = || EnvError::Cancelled {
            repo: project.repo().to_owned(),
            commit: project.commit().to_owned(),
        };
        loop {
            let (mut interest, pin) = match self.join(project, &sink) {
                Joined::Ready(env) => return Ok(env),
                Joined::Waiting(interest, pin) => (interest, pin),
                Joined::Ending(build) => {
                    tokio::select! {
                        _ = tokio::time::timeout_at(deadline, build.done.clone()) => {}
                        _ = cancel.cancelled() => return Err(cancelled()),
                    }
                    if tokio::time::Instant::now() >= deadline {
                        return Err(timeout());
                    }
                    continue;
                }
            };
            let done = interest.build.done.clone();
            let failure = tokio::select! {
                result = tokio::time::timeout_at(deadline, done) => match result {
                    Ok(result) => return result.map(|python| Env { python, _pin: pin }),
                    Err(_) => timeout(),
                },
                _ = cancel.cancelled() => cancelled(),
            };
            drop(pin);
            if interest.leave() {
                // We were the last one waiting: let the build kill pip and clean up.
                let _ = interest.build.done.clone().await;
            }
            return Err(failure);
        }
    }

    fn join(&self, project: &P, sink: &LineSink) -> Joined {
        let key = project.key();
        let dir = self.inner.env_dir.join(key);
        let mut state = self.inner.lock();
        let pin = |gen| EnvPin {
            inner: self.inner.clone(),
            key: key.to_owned(),
            gen,
        };
        match state.slots.get(key).map(|slot| slot.building.clone()) {
            Some(Some(build)) => {
                let mut list = build.sinks.lock();
                if build.cancel.is_cancelled() {
                    return Joined::Ending(build.clone());
                }
                let id = list.next_id;
                list.next_id += 1;
                list.sinks.push((id, sink.clone()));
                drop(list);
                let gen = state.slots.pin(key).unwrap_or_default();
                drop(state);
                sink(&format!(
                    "waiting for the Python environment of {} at {} that is being built",
                    project.repo(),
                    project.commit()
                ));
                return Joined::Waiting(
                    Interest {
                        build,
                        id,
                        left: false,
                    },
                    pin(gen),
                );
            }
            Some(None) => {
                if let Some(gen) = state.slots.pin(key) {
                    drop(state);
                    touch(&dir.join(MARKER));
                    return Joined::Ready(Env {
                        python: python_of(&dir),
                        _pin: pin(gen),
                    });
                }
            }
            None => {}
        }

        let sinks = Arc::new(Sinks::default());
        let id = {
            let mut list = sinks.lock();
            list.next_id = 1;
            list.sinks.push((0, sink.clone()));
            0
        };
        let cancel = CancellationToken::new();
        let (repo, commit) = (project.repo().to_owned(), project.commit().to_owned());
        let label = format!("of {repo} at {commit}");
        // The build task finds its slot by generation; the slot is in place before the
        // task can take the lock.
        let gen = state.slots.reserve_gen();
        let task = tokio::spawn(build_task(
            self.inner.clone(),
            project.clone(),
            dir,
            gen,
            sinks.clone(),
            cancel.clone(),
        ));
        let done = task
            .map(move |joined| {
                joined.unwrap_or_else(|e| {
                    Err(EnvError::Install {
                        repo,
                        commit,
                        status: "the build task failed".to_owned(),
                        output: e.to_string(),
                    })
                })
            })
            .boxed()
            .shared();
        let build = Arc::new(Build {
            done,
            cancel,
            sinks,
        });
        state
            .slots
            .insert(key, gen, label, Some(build.clone()), true);
        Joined::Waiting(
            Interest {
                build,
                id,
                left: false,
            },
            pin(gen),
        )
    }

    /// Counts and sizes of the environments and pip's cache, measuring first (off the
    /// runtime) what is not measured yet.
    pub async fn usage(&self) -> EnvStats {
        self.inner.measure().await;
        self.inner.stats()
    }

    /// Removes every complete environment that no procedure uses, and pip's cache if no
    /// build runs, at once; returns once they are deleted.
    pub async fn prune(&self) -> EnvsPruned {
        self.inner.pass(None).await
    }
}

/// The complete environments in `env_dir` (with their marker), oldest use first.
fn complete_envs<P: Project>(env_dir: &Path) -> Result<Vec<(SystemTime, String)>, EnvError> {
    let mut found = Vec::new();
    for entry in fs::read_dir(env_dir).map_err(|e| EnvError::dir(env_dir, e))? {
        let entry = entry.map_err(|e| EnvError::dir(env_dir, e))?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        if !P::is_key(&name) {
            continue;
        }
        if let Ok(marker) = fs::symlink_metadata(entry.path().join(MARKER)) {
            found.push((marker.modified().unwrap_or(SystemTime::UNIX_EPOCH), name));
        }
    }
    found.sort();
    Ok(found)
}

/// Marks an environment as just used, so least-recently-used survives a restart.
fn touch(marker: &Path) {
    if let Ok(file) = fs::File::options().append(true).open(marker) {
        let _ = file.set_modified(SystemTime::now());
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn bounds(&self) -> Bounds {
        Bounds {
            count: self.config.max_envs,
            bytes: self.config.max_env_bytes,
        }
    }

    fn stats(&self) -> EnvStats {
        let state = self.lock();
        let mut stats = EnvStats {
            pip_cache_bytes: state.pip_cache_bytes.unwrap_or(0),
            ..EnvStats::default()
        };
        for (_, slot) in state.slots.iter() {
            if slot.building.is_some() {
                stats.building += 1;
                continue;
            }
            stats.envs += 1;
            stats.in_use += u64::from(slot.pins > 0);
            stats.bytes += slot.bytes.unwrap_or(0);
        }
        stats
    }

    /// Runs a background pass (keeping within the bounds) soon, unless one is running,
    /// which is then asked for one more round. Without a runtime (opening in a test),
    /// nothing is scheduled.
    fn schedule_pass(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        {
            let mut state = self.lock();
            if state.passing {
                state.again = true;
                return;
            }
            state.passing = true;
        }
        let inner = self.clone();
        runtime.spawn(async move {
            loop {
                let bounds = inner.bounds();
                inner.pass(Some(bounds)).await;
                let mut state = inner.lock();
                if !std::mem::take(&mut state.again) {
                    state.passing = false;
                    return;
                }
            }
        });
    }

    /// Measures, off the runtime, the complete environments not measured yet, and
    /// pip's cache if it is not.
    async fn measure(&self) {
        let (unmeasured, pip_cache) = {
            let state = self.lock();
            let pip_cache = state
                .pip_cache_bytes
                .is_none()
                .then(|| self.pip_cache.clone());
            (state.slots.unmeasured(), pip_cache)
        };
        if unmeasured.is_empty() && pip_cache.is_none() {
            return;
        }
        let env_dir = self.env_dir.clone();
        let measured = tokio::task::spawn_blocking(move || {
            let envs: Vec<(String, u64, u64)> = unmeasured
                .into_iter()
                .filter_map(|(key, gen)| {
                    let bytes = disk::tree_size(&env_dir.join(&key)).ok()?;
                    Some((key, gen, bytes))
                })
                .collect();
            let pip = pip_cache.and_then(|dir| disk::tree_size(&dir).ok());
            (envs, pip)
        })
        .await;
        let Ok((envs, pip)) = measured else { return };
        let mut state = self.lock();
        for (key, gen, bytes) in envs {
            if let Some(slot) = state.slots.get_gen(&key, gen) {
                slot.bytes = Some(bytes);
            }
        }
        if pip.is_some() {
            state.pip_cache_bytes = pip;
        }
    }

    /// One pass: measures, then removes the environments beyond `bounds` (every one
    /// nobody uses, with `None`) and clears pip's cache when it is beyond its bound (or
    /// with `None`) and no build runs. Returns once the removed trees are deleted.
    async fn pass(&self, bounds: Option<Bounds>) -> EnvsPruned {
        self.measure().await;
        let mut pruned = EnvsPruned::default();
        let mut interpreters = Vec::new();
        let doomed = {
            let mut state = self.lock();
            let mut doomed = self.evict(&mut state, bounds, &mut pruned, &mut interpreters);
            doomed.extend(self.clear_pip_cache(&mut state, bounds, &mut pruned));
            doomed
        };
        if let Some(removed) = self.on_removed.get() {
            futures::future::join_all(interpreters.into_iter().map(|python| removed(python))).await;
        }
        if !doomed.is_empty() {
            let _ = tokio::task::spawn_blocking(move || {
                for (dir, done) in doomed {
                    match disk::remove_tree(&dir) {
                        Ok(()) => tracing::info!("{done}"),
                        Err(e) => tracing::warn!("could not delete {}: {e}", dir.display()),
                    }
                }
            })
            .await;
        }
        pruned
    }

    /// Moves the environments beyond `bounds` (every one nobody uses, with `None`) out
    /// of the way, so that no request finds them; returns them with what to log once
    /// they are deleted, and adds their interpreters (as they were) to `interpreters`.
    fn evict(
        &self,
        state: &mut State,
        bounds: Option<Bounds>,
        pruned: &mut EnvsPruned,
        interpreters: &mut Vec<PathBuf>,
    ) -> Vec<(PathBuf, String)> {
        let mut doomed = Vec::new();
        for (key, reason) in state.slots.victims(bounds) {
            let Some(gen) = state.slots.get(&key).map(|slot| slot.gen) else {
                continue;
            };
            state.moves += 1;
            let from = self.env_dir.join(&key);
            let to = self.tmp_dir.join(format!("evicted-{key}-{}", state.moves));
            if let Err(e) = fs::rename(&from, &to) {
                tracing::warn!("could not remove environment {}: {e}", from.display());
                continue;
            }
            if let Some(slot) = state.slots.remove_gen(&key, gen) {
                let bytes = slot.bytes.unwrap_or(0);
                let done = format!(
                    "removed the Python environment {} ({bytes} bytes): {reason}",
                    slot.label
                );
                doomed.push((to, done));
                interpreters.push(python_of(&from));
                pruned.envs += 1;
                pruned.env_bytes += bytes;
            }
        }
        if let Some((count, bytes)) = bounds.and_then(|b| state.slots.beyond(b)) {
            tracing::info!(
                "the Python environments ({count}, {bytes} bytes) are beyond \
                 python.max_envs ({}) or python.max_env_bytes ({}), but the ones beyond \
                 are in use or being built; they are removed once no procedure uses them",
                self.config.max_envs,
                self.config.max_env_bytes
            );
        }
        doomed
    }

    /// Moves pip's cache out of the way when it is beyond `python.max_pip_cache_bytes`
    /// (or always, with `None`) and no build uses it.
    fn clear_pip_cache(
        &self,
        state: &mut State,
        bounds: Option<Bounds>,
        pruned: &mut EnvsPruned,
    ) -> Option<(PathBuf, String)> {
        let max = self.config.max_pip_cache_bytes;
        let bytes = state.pip_cache_bytes.unwrap_or(0);
        let why = match bounds {
            None => "the caches were pruned".to_owned(),
            Some(_) if max > 0 && bytes > max => {
                format!("beyond python.max_pip_cache_bytes ({max} bytes)")
            }
            Some(_) => return None,
        };
        if bytes == 0 {
            return None;
        }
        if state.slots.any_building() {
            pruned.pip_cache_kept =
                Some("a build is using it; it is cleared once no build runs".to_owned());
            return None;
        }
        state.moves += 1;
        let to = self.tmp_dir.join(format!("pip-cache-{}", state.moves));
        match fs::rename(&self.pip_cache, &to) {
            Ok(()) => {
                state.pip_cache_bytes = Some(0);
                pruned.pip_cache_bytes = bytes;
                Some((to, format!("cleared the pip cache ({bytes} bytes): {why}")))
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                state.pip_cache_bytes = Some(0);
                None
            }
            Err(e) => {
                let cache = self.pip_cache.display();
                tracing::warn!("could not clear the pip cache {cache}: {e}");
                None
            }
        }
    }
}

fn python_of(env: &Path) -> PathBuf {
    env.join("bin").join("python")
}

/// Builds the environment, removes it again if that failed, and retires the build: a
/// complete environment's slot is measured and no longer building, a failed one's slot
/// is gone. Holding `project` keeps its directory (a pinned checkout) for the whole
/// build.
async fn build_task<P: Project>(
    inner: Arc<Inner>,
    project: P,
    dir: PathBuf,
    gen: u64,
    sinks: Arc<Sinks>,
    cancel: CancellationToken,
) -> Result<PathBuf, EnvError> {
    let run = RunContext {
        pip_cache: inner.pip_cache.clone(),
        reaper_exe: inner.reaper_exe.get().cloned(),
    };
    let copy = inner.tmp_dir.join(format!("build-{}", project.key()));
    let result = build_env(&inner.config, &project, &dir, &copy, &run, &sinks, &cancel).await;
    let (env_dir, remove_env) = (dir.clone(), result.is_err());
    let bytes = tokio::task::spawn_blocking(move || {
        if let Err(e) = disk::remove_tree(&copy) {
            tracing::warn!("could not remove the build copy {}: {e}", copy.display());
        }
        if remove_env {
            if let Err(e) = disk::remove_tree(&env_dir) {
                tracing::warn!(
                    "could not remove broken environment {}: {e}",
                    env_dir.display()
                );
            }
            None
        } else {
            disk::tree_size(&env_dir).ok()
        }
    })
    .await
    .unwrap_or(None);
    {
        let mut state = inner.lock();
        if result.is_ok() {
            if let Some(slot) = state.slots.get_gen(project.key(), gen) {
                slot.building = None;
                slot.bytes = bytes;
            }
        } else {
            state.slots.remove_gen(project.key(), gen);
        }
        // pip's cache may have grown.
        state.pip_cache_bytes = None;
    }
    inner.schedule_pass();
    result
}

async fn build_env(
    config: &PythonConfig,
    project: &impl Project,
    dir: &Path,
    copy: &Path,
    run_context: &RunContext,
    sinks: &Sinks,
    cancel: &CancellationToken,
) -> Result<PathBuf, EnvError> {
    let cancelled = || EnvError::Cancelled {
        repo: project.repo().to_owned(),
        commit: project.commit().to_owned(),
    };
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => sinks.emit(&format!(
            "removed an incomplete environment at {}",
            dir.display()
        )),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(EnvError::dir(dir, e)),
    }

    sinks.emit(&format!(
        "creating a Python environment at {} for {} at {}",
        dir.display(),
        project.repo(),
        project.commit()
    ));
    let mut venv_args: Vec<OsString> =
        vec!["-m".into(), "venv".into(), "--system-site-packages".into()];
    if !config.own_pip {
        venv_args.push("--without-pip".into());
    }
    venv_args.push(dir.into());
    match run(
        Path::new(&config.interpreter),
        &venv_args,
        run_context,
        sinks,
        cancel,
    )
    .await
    {
        Ok(()) => {}
        Err(Failure::Cancelled) => return Err(cancelled()),
        Err(Failure::Spawn(e)) => {
            return Err(EnvError::Spawn {
                program: config.interpreter.clone(),
                reason: e.to_string(),
            })
        }
        Err(Failure::Exit { status, tail }) => {
            return Err(EnvError::Venv {
                dir: dir.to_owned(),
                status,
                output: tail,
            })
        }
    }

    let python = python_of(dir);
    let mut pip_args: Vec<OsString> = vec![
        "-m".into(),
        "pip".into(),
        "install".into(),
        "--disable-pip-version-check".into(),
        "--no-input".into(),
    ];
    if let Some(url) = &config.pip_index_url {
        pip_args.push("--index-url".into());
        pip_args.push(url.into());
    }
    pip_args.extend(config.pip_extra_args.iter().map(OsString::from));
    pip_args.push(copy.into());
    sinks.emit(&format!(
        "installing {} at {} into the environment, from a copy in {}",
        project.repo(),
        project.commit(),
        copy.display()
    ));
    copy_project(project.dir(), copy).await?;
    match run(&python, &pip_args, run_context, sinks, cancel).await {
        Ok(()) => {}
        Err(Failure::Cancelled) => return Err(cancelled()),
        Err(Failure::Spawn(e)) => {
            return Err(EnvError::Spawn {
                program: python.display().to_string(),
                reason: e.to_string(),
            })
        }
        Err(Failure::Exit { status, tail }) => {
            return Err(EnvError::Install {
                repo: project.repo().to_owned(),
                commit: project.commit().to_owned(),
                status,
                output: tail,
            })
        }
    }

    let marker = format!("{}\n{}\n", project.repo(), project.commit());
    tokio::fs::write(dir.join(MARKER), marker)
        .await
        .map_err(|e| EnvError::dir(dir, e))?;
    sinks.emit("the Python environment is ready");
    Ok(python)
}

/// Copies the project for pip to build in, leaving its own directory untouched.
async fn copy_project(project: &Path, copy: &Path) -> Result<(), EnvError> {
    let (from, to) = (project.to_owned(), copy.to_owned());
    tokio::task::spawn_blocking(move || {
        disk::remove_tree(&to).and_then(|()| disk::copy_tree(&from, &to))
    })
    .await
    .map_err(|e| EnvError::dir(copy, e))?
    .map_err(|e| EnvError::dir(copy, e))
}

enum Failure {
    Spawn(std::io::Error),
    Exit { status: String, tail: String },
    Cancelled,
}

/// What every build process is run with.
struct RunContext {
    pip_cache: PathBuf,
    reaper_exe: Option<PathBuf>,
}

/// Runs `program` in a process group of its own, handing each output line (stdout and
/// stderr) to `sinks`. On cancellation the whole group is killed and reaped; with a
/// reaper, also when the daemon dies.
async fn run(
    program: &Path,
    args: &[OsString],
    context: &RunContext,
    sinks: &Sinks,
    cancel: &CancellationToken,
) -> Result<(), Failure> {
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
        .env("PIP_CACHE_DIR", &context.pip_cache)
        .env("PYTHONUNBUFFERED", "1")
        .kill_on_drop(true);
    let (mut child, group) = ProcessGroup::spawn(&mut command).map_err(Failure::Spawn)?;
    // Dropped when this function returns, which lets the reaper kill what is left.
    let _reaper = match &context.reaper_exe {
        Some(exe) => match Reaper::spawn(exe, group) {
            Ok(reaper) => Some(reaper),
            Err(err) => {
                tracing::warn!("build of {} runs unguarded: {err}", program.display());
                None
            }
        },
        None => None,
    };

    let (lines_tx, mut lines) = mpsc::channel::<String>(64);
    if let Some(stdout) = child.stdout.take() {
        tokio::spawn(forward_lines(stdout, lines_tx.clone()));
    }
    if let Some(stderr) = child.stderr.take() {
        tokio::spawn(forward_lines(stderr, lines_tx.clone()));
    }
    drop(lines_tx);

    let work = async {
        let mut tail = VecDeque::with_capacity(TAIL_LINES);
        while let Some(line) = lines.recv().await {
            sinks.emit(&line);
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(line);
        }
        (child.wait().await, tail)
    };
    let finished = tokio::select! {
        biased;
        _ = cancel.cancelled() => None,
        finished = work => Some(finished),
    };
    let Some((status, tail)) = finished else {
        group.kill_and_wait(KILL_WAIT).await;
        let _ = child.wait().await;
        return Err(Failure::Cancelled);
    };
    match status {
        Ok(status) if status.success() => Ok(()),
        Ok(status) => Err(Failure::Exit {
            status: process::exit_summary(status),
            tail: Vec::from(tail).join("\n"),
        }),
        Err(e) => Err(Failure::Exit {
            status: format!("could not be waited for: {e}"),
            tail: Vec::from(tail).join("\n"),
        }),
    }
}

/// Hands every line of `pipe` to `lines`, until the pipe or the receiver closes.
async fn forward_lines(pipe: impl AsyncRead + Unpin + Send, lines: mpsc::Sender<String>) {
    let mut pipe_lines = std::pin::pin!(process::lines(pipe));
    while let Some(line) = pipe_lines.next().await {
        if lines.send(line).await.is_err() {
            return;
        }
    }
}
