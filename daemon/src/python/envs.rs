//! Per-commit Python environments: `python -m venv --system-site-packages`, then
//! `pip install` of the checked-out project.
//!
//! One environment per repository + commit, under `python.env_dir`. It is complete when
//! its marker file exists (written last); anything else in the directory is a partial
//! build and is removed before a rebuild. Concurrent requests for one commit share one
//! build, which runs in a task of its own; each requester receives the output lines
//! from the moment it joins and waits at most `python.env_wait_secs`. The build is
//! cancelled only when every requester has gone (cancelled, timed out or dropped):
//! pip's whole process group is then killed and the partial environment removed.

use std::collections::{HashMap, VecDeque};
use std::ffi::OsString;
use std::fs;
use std::io::ErrorKind;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt, Shared};
use futures::StreamExt;
use tokio::io::AsyncRead;
use tokio::process::Command;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::process::{self, ProcessGroup};
use crate::reaper::Reaper;
use crate::state_dir::{self, EntryKind};

use super::config::PythonConfig;

/// Written into an environment when its build has succeeded, and only then.
const MARKER: &str = ".oetd-env-complete";
/// pip's download and wheel cache, shared by all environments, inside `python.env_dir`
/// (the service's home may not be writable, and nothing is written outside our dirs).
const PIP_CACHE: &str = ".pip-cache";
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
/// The builder holds a clone for as long as pip installs from [`Project::dir`], so a
/// type that keeps its directory alive while held (a pinned checkout) keeps it for the
/// whole build.
pub trait Project: Clone + Send + Sync + 'static {
    /// Where the project comes from, for messages and the completion marker.
    fn repo(&self) -> &str;
    /// The commit, for messages and the completion marker.
    fn commit(&self) -> &str;
    /// The project's directory, which pip installs.
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
    /// `oetd` itself, run as a reaper guarding each build's process group, so that a
    /// pip outlives neither a stop nor the daemon. Unset (in library tests), builds are
    /// still killed on cancellation, but not when the process dies.
    reaper_exe: std::sync::OnceLock<PathBuf>,
    /// Builds in progress, by project key. An entry leaves when its build has ended
    /// and cleaned up, just before its result is published.
    builds: Mutex<HashMap<String, Arc<Build>>>,
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
    Ready(PathBuf),
    Waiting(Interest),
    /// A build that is winding down after a cancellation; wait for it, then retry.
    Ending(Arc<Build>),
}

impl<P: Project> EnvManager<P> {
    /// Opens (creating if needed) `python.env_dir`, or `<state_dir>/envs`, removing
    /// environments whose build never completed.
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
        Ok(EnvManager {
            inner: Arc::new(Inner {
                config,
                env_dir,
                reaper_exe: std::sync::OnceLock::new(),
                builds: Mutex::new(HashMap::new()),
            }),
            project: PhantomData,
        })
    }

    /// Guards every build's processes with a reaper run from `exe` (the daemon's own
    /// executable), so that they die with the daemon.
    pub fn guard_builds_with(&self, exe: PathBuf) {
        let _ = self.inner.reaper_exe.set(exe);
    }

    /// The interpreter of the environment for `project`, building the environment
    /// first if needed. Build output goes to `on_line`, line by line. Gives up after
    /// `python.env_wait_secs`, or when `cancel` fires; if no other requester is left the
    /// build is then stopped and removed before this returns.
    pub async fn ensure(
        &self,
        project: &P,
        on_line: impl Fn(&str) + Send + Sync + 'static,
        cancel: CancellationToken,
    ) -> Result<PathBuf, EnvError> {
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
            let mut interest = match self.join(project, &sink) {
                Joined::Ready(python) => return Ok(python),
                Joined::Waiting(interest) => interest,
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
                    Ok(result) => return result,
                    Err(_) => timeout(),
                },
                _ = cancel.cancelled() => cancelled(),
            };
            if interest.leave() {
                // We were the last one waiting: let the build kill pip and clean up.
                let _ = interest.build.done.clone().await;
            }
            return Err(failure);
        }
    }

    fn join(&self, project: &P, sink: &LineSink) -> Joined {
        let dir = self.inner.env_dir.join(project.key());
        let mut builds = self
            .inner
            .builds
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(build) = builds.get(project.key()) {
            let mut list = build.sinks.lock();
            if build.cancel.is_cancelled() {
                return Joined::Ending(build.clone());
            }
            let id = list.next_id;
            list.next_id += 1;
            list.sinks.push((id, sink.clone()));
            drop(list);
            sink(&format!(
                "waiting for the Python environment of {} at {} that is being built",
                project.repo(),
                project.commit()
            ));
            return Joined::Waiting(Interest {
                build: build.clone(),
                id,
                left: false,
            });
        }
        if dir.join(MARKER).exists() {
            return Joined::Ready(python_of(&dir));
        }

        let sinks = Arc::new(Sinks::default());
        let id = {
            let mut list = sinks.lock();
            list.next_id = 1;
            list.sinks.push((0, sink.clone()));
            0
        };
        let cancel = CancellationToken::new();
        let task = tokio::spawn(build_task(
            self.inner.clone(),
            project.clone(),
            dir,
            sinks.clone(),
            cancel.clone(),
        ));
        let (repo, commit) = (project.repo().to_owned(), project.commit().to_owned());
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
        builds.insert(project.key().to_owned(), build.clone());
        Joined::Waiting(Interest {
            build,
            id,
            left: false,
        })
    }
}

fn python_of(env: &Path) -> PathBuf {
    env.join("bin").join("python")
}

/// Builds the environment, removes it again if that failed, and retires the build.
/// Holding `project` keeps its directory (a pinned checkout) for the whole install.
async fn build_task<P: Project>(
    inner: Arc<Inner>,
    project: P,
    dir: PathBuf,
    sinks: Arc<Sinks>,
    cancel: CancellationToken,
) -> Result<PathBuf, EnvError> {
    let run = RunContext {
        pip_cache: inner.env_dir.join(PIP_CACHE),
        reaper_exe: inner.reaper_exe.get().cloned(),
    };
    let result = build_env(&inner.config, &project, &dir, &run, &sinks, &cancel).await;
    if result.is_err() {
        if let Err(e) = tokio::fs::remove_dir_all(&dir).await {
            if e.kind() != ErrorKind::NotFound {
                tracing::warn!("could not remove broken environment {}: {e}", dir.display());
            }
        }
    }
    inner
        .builds
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .remove(project.key());
    result
}

async fn build_env(
    config: &PythonConfig,
    project: &impl Project,
    dir: &Path,
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
    pip_args.push(project.dir().into());
    sinks.emit(&format!(
        "installing {} into the environment",
        project.dir().display()
    ));
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
