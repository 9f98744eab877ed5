//! Worker processes: starting the Python harness for a procedure — forked by the
//! interpreter's zygote when one is up, else cold — in its procedure's cgroup (and a
//! process group of its own), signalling it, and waiting for it.
//!
//! Starting a worker and handing it its script are two steps: a worker is started (and
//! in its cgroup) before the supervisor sends it the script, so nothing a script starts
//! is ever outside the cgroup. A cold worker joins its cgroup between fork and exec; a
//! forked one is moved there by oetd as soon as the zygote names it. Both are oetd's
//! children (a forked one through oetd being a child subreaper) and are waited for
//! through [`crate::children`], without a descriptor each: a live procedure holds three
//! descriptors in oetd, its channel and its two output pipes. The procedures' guard
//! ([`crate::guard`]) kills the procedure's cgroup — or, without one, its process group —
//! if oetd dies; a cold worker also has a parent-death signal from the start, a forked
//! one from when it is handed its script.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, PoisonError, RwLock};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::worker_io::{contain, Ends, WorkerIo};
use super::zygote::{Forked, Zygotes};
use crate::cgroup::ProcedureCgroup;
use crate::children::{self, Exit};
use crate::guard::Guard;
use crate::process::{self, ProcessGroup};

/// The worker harness, shipped inside the binary and written out at start-up.
pub const WORKER_HARNESS: &str = include_str!("worker.py");

/// File descriptor number of the worker's channel inside the worker.
const WORKER_FD: i32 = 3;

/// How long the interpreter may take to say where it is.
const RESOLVE_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// How workers are started: from the interpreter's zygote when one is up, else cold.
#[derive(Clone)]
pub struct Workers {
    /// The worker harness file written out at start-up.
    harness: PathBuf,
    guard: Arc<Guard>,
    zygotes: Zygotes,
    /// `procedures.python`, resolved to the interpreter's own path.
    python: Arc<RwLock<PathBuf>>,
}

/// A started worker process.
pub struct Worker {
    group: ProcessGroup,
    cgroup: Option<Arc<ProcedureCgroup>>,
    guard: Arc<Guard>,
    exit: Exit,
    finished: bool,
}

impl Workers {
    pub fn new(harness: PathBuf, guard: Arc<Guard>, zygotes: Zygotes) -> Self {
        Workers {
            harness,
            guard,
            zygotes,
            python: Arc::default(),
        }
    }

    /// The interpreter of filesystem scripts (and of git scripts without an
    /// environment of their own).
    pub fn python(&self) -> PathBuf {
        self.python
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Makes `name` (`procedures.python`) the default interpreter, resolved once to its
    /// own path, so that a shim on PATH (pyenv's adds ~70 ms) is not paid per procedure,
    /// and starts its zygote. Returns the path.
    pub async fn set_python(&self, name: &str) -> PathBuf {
        let resolved = match resolve_python(name).await {
            Ok(path) => {
                tracing::info!("scripts run with {} ({name})", path.display());
                path
            }
            Err(err) => {
                tracing::warn!(
                    "cannot ask procedures.python ({name}) where it is: {err}; it is looked \
                     up on PATH for each procedure"
                );
                PathBuf::from(name)
            }
        };
        *self.python.write().unwrap_or_else(PoisonError::into_inner) = resolved.clone();
        self.zygotes.prestart(&resolved);
        resolved
    }

    /// The zygotes workers are forked from.
    pub fn zygotes(&self) -> &Zygotes {
        &self.zygotes
    }

    /// Starts a worker running the harness under `python` for procedure `id`, in a new
    /// process group and in `cgroup` when there is one. The worker then says it is up
    /// and waits for its script.
    pub async fn start(
        &self,
        python: &Path,
        id: u64,
        cwd: &Path,
        cgroup: Option<Arc<ProcedureCgroup>>,
    ) -> io::Result<(Worker, WorkerIo)> {
        if let Some(forked) = self.zygotes.fork(python, id, cwd).await {
            let Forked { pid, exit, io } = forked;
            let worker = self.worker(pid, exit, cgroup)?;
            if let Some(cgroup) = &worker.cgroup {
                // Before the script is handed over, which only the supervisor does.
                if let Err(err) = cgroup.add(pid) {
                    return Err(io::Error::other(format!(
                        "cannot move the worker into cgroup {}: {err}",
                        cgroup.dir().display()
                    )));
                }
            }
            return Ok((worker, io));
        }
        self.start_cold(python, id, cwd, cgroup)
    }

    fn worker(
        &self,
        pid: u32,
        exit: Exit,
        cgroup: Option<Arc<ProcedureCgroup>>,
    ) -> io::Result<Worker> {
        let group = i32::try_from(pid)
            .ok()
            .and_then(ProcessGroup::from_id)
            .ok_or_else(|| io::Error::other(format!("the worker was given pid {pid}")))?;
        if cgroup.is_none() {
            self.guard.group(group);
        }
        Ok(Worker {
            group,
            cgroup,
            guard: self.guard.clone(),
            exit,
            finished: false,
        })
    }

    /// Starts `python` on the harness afresh.
    fn start_cold(
        &self,
        python: &Path,
        id: u64,
        cwd: &Path,
        cgroup: Option<Arc<ProcedureCgroup>>,
    ) -> io::Result<(Worker, WorkerIo)> {
        let ends = Ends::new()?;
        let mut command = Command::new(python);
        command
            .arg("-u")
            .arg(&self.harness)
            .current_dir(cwd)
            .env("OET_WORKER_FD", WORKER_FD.to_string())
            .env("OET_PROCEDURE_ID", id.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::from(ends.stdout))
            .stderr(Stdio::from(ends.stderr))
            .process_group(0);
        let membership = contain(&mut command, cgroup.as_deref())?;
        process::pass_fd(&mut command, ends.channel.as_raw_fd(), WORKER_FD);
        let starting = children::starting();
        let child = command.spawn()?;
        let exit = children::watch(child.id(), &starting);
        drop((membership, ends.channel, command));
        Ok((self.worker(child.id(), exit, cgroup)?, ends.ours))
    }
}

/// Asks the interpreter `name` for its own path (`sys.executable`).
async fn resolve_python(name: &str) -> Result<PathBuf, String> {
    let mut command = tokio::process::Command::new(name);
    command
        .args(["-c", "import sys; sys.stdout.write(sys.executable)"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
    let (child, _group) = ProcessGroup::spawn(&mut command).map_err(|e| e.to_string())?;
    let asked = tokio::time::timeout(RESOLVE_WITHIN, child.wait_with_output());
    let output = asked
        .await
        .map_err(|_| format!("it did not answer within {RESOLVE_WITHIN:?}"))?
        .map_err(|e| e.to_string())?;
    if !output.status.success() {
        return Err(format!(
            "it ended with {}",
            process::exit_summary(output.status)
        ));
    }
    let path = PathBuf::from(String::from_utf8_lossy(&output.stdout).into_owned());
    if path.is_absolute() {
        Ok(path)
    } else {
        Err("it did not name an absolute path".into())
    }
}

impl Worker {
    /// The worker's process ID, which is also its process group's.
    pub fn pid(&self) -> u32 {
        self.group.id()
    }

    /// Waits until the worker's process has exited (cancel-safe).
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        self.exit.wait().await
    }

    /// Asks the script to stop: the harness turns SIGTERM into an exception.
    pub fn terminate(&self) {
        // ESRCH only means it is already gone.
        let _ = kill(Pid::from_raw(self.pid() as i32), Signal::SIGTERM);
    }

    /// Kills the worker and everything in its cgroup — or, without one, its process
    /// group.
    pub fn kill_all(&self) {
        if let Some(cgroup) = &self.cgroup {
            cgroup.kill();
        }
        self.group.kill();
    }

    /// The procedure's cgroup, if it has one.
    pub fn cgroup(&self) -> Option<&Arc<ProcedureCgroup>> {
        self.cgroup.as_ref()
    }

    /// Ends the procedure's processes for good: kills whatever is left and waits for the
    /// worker.
    pub async fn finish(mut self) {
        self.kill_all();
        let _ = self.exit.wait().await;
        self.finished = true;
        if self.cgroup.is_none() {
            self.guard.group_gone(self.group);
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if !self.finished && !self.exit.has_exited() {
            self.kill_all();
        }
    }
}

/// A human description of how a process ended, for the stack-trace text of a procedure
/// whose process died without saying why.
pub fn describe_exit(status: ExitStatus) -> String {
    if status.signal().is_some() {
        format!(
            "script process was killed by {}",
            crate::process::exit_summary(status)
        )
    } else {
        format!(
            "script process exited unexpectedly with {}",
            crate::process::exit_summary(status)
        )
    }
}
