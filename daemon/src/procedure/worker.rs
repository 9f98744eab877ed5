//! Worker processes: spawning the Python harness in its procedure's cgroup (and a
//! process group of its own), signalling it, and making sure nothing it started outlives
//! it — or outlives the daemon.
//!
//! The worker joins its cgroup between fork and exec, so every process the script starts
//! is in it from its first instruction, whatever it does to its process group. Each
//! worker gets a companion reaper (see `crate::reaper`) that kills the whole cgroup (or,
//! without one, the process group) when the procedure ends or the daemon dies, even by
//! SIGKILL. The worker itself also has a parent-death signal, which covers the moment
//! before its reaper exists.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

use crate::cgroup::{self, ProcedureCgroup};
use crate::process::{self, ProcessGroup};
use crate::reaper::{Guarded, Reaper};

/// The worker harness, shipped inside the binary and written out at start-up.
pub const WORKER_HARNESS: &str = include_str!("worker.py");

/// File descriptor number of the worker's channel inside the worker.
const WORKER_FD: i32 = 3;

/// How to start workers.
#[derive(Debug, Clone)]
pub struct WorkerCommand {
    /// The worker harness file written out at start-up.
    pub harness: PathBuf,
    /// This daemon's own executable, re-executed as the reaper.
    pub daemon_exe: PathBuf,
}

/// A started worker process and its reaper.
pub struct Worker {
    pub child: Child,
    group: ProcessGroup,
    cgroup: Option<Arc<ProcedureCgroup>>,
    reaper: Reaper,
}

/// Where a worker's processes are kept: a cgroup, and what its guard removes when
/// oetd is gone.
pub struct Confinement {
    pub cgroup: Arc<ProcedureCgroup>,
    /// The daemon's root cgroups, for the guard to remove if the daemon died.
    pub roots: Vec<PathBuf>,
}

/// The daemon's ends of a worker's channel and output pipes.
pub struct WorkerIo {
    pub channel: tokio::net::UnixStream,
    pub stdout: ChildStdout,
    pub stderr: ChildStderr,
}

impl WorkerCommand {
    /// Starts `python` running the harness for procedure `id`, in a new process group,
    /// and in `confinement`'s cgroup when there is one.
    pub fn spawn(
        &self,
        python: &Path,
        id: u64,
        cwd: &Path,
        confinement: Option<Confinement>,
    ) -> io::Result<(Worker, WorkerIo)> {
        let (ours, theirs) = StdUnixStream::pair()?;
        let their_fd = theirs.as_raw_fd();
        let mut command = Command::new(python);
        command
            .arg("-u")
            .arg(&self.harness)
            .current_dir(cwd)
            .env("OET_WORKER_FD", WORKER_FD.to_string())
            .env("OET_PROCEDURE_ID", id.to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // Opened here, so that the child only has to write to them.
        let membership = match &confinement {
            Some(confinement) => Some(confinement.cgroup.membership()?),
            None => None,
        };
        let cgroup_fds = membership.as_ref().map(cgroup::Membership::fds);
        // SAFETY: only async-signal-safe calls (write, prctl) between fork and exec, on
        // descriptors that stay open until the child is spawned. Registered before the
        // channel is put on its number, which could otherwise be one of these.
        unsafe {
            command.pre_exec(move || {
                if let Some(fds) = &cgroup_fds {
                    cgroup::join(fds)?;
                }
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        process::pass_fd(command.as_std_mut(), their_fd, WORKER_FD);
        let (mut child, group) = ProcessGroup::spawn(&mut command)?;
        drop(membership);
        drop(theirs);
        let guarded = Guarded {
            group,
            cgroups: confinement
                .as_ref()
                .map(|c| c.cgroup.dirs().map(Path::to_owned).collect())
                .unwrap_or_default(),
            roots: confinement
                .as_ref()
                .map(|c| c.roots.clone())
                .unwrap_or_default(),
        };
        let cgroup = confinement.map(|c| c.cgroup);
        let reaper = match Reaper::spawn(&self.daemon_exe, guarded) {
            Ok(reaper) => reaper,
            Err(err) => {
                kill_all(group, cgroup.as_deref());
                return Err(err);
            }
        };
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("no stdout pipe"))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| io::Error::other("no stderr pipe"))?;
        ours.set_nonblocking(true)?;
        let channel = tokio::net::UnixStream::from_std(ours)?;
        Ok((
            Worker {
                child,
                group,
                cgroup,
                reaper,
            },
            WorkerIo {
                channel,
                stdout,
                stderr,
            },
        ))
    }
}

impl Worker {
    /// The worker's process ID, which is also its process group's.
    pub fn pid(&self) -> u32 {
        self.group.id()
    }

    /// Asks the script to stop: the harness turns SIGTERM into an exception.
    pub fn terminate(&self) {
        // ESRCH only means it is already gone.
        let _ = kill(Pid::from_raw(self.pid() as i32), Signal::SIGTERM);
    }

    /// Kills the worker and everything in its cgroup — or, without one, its process
    /// group.
    pub fn kill_all(&self) {
        kill_all(self.group, self.cgroup.as_deref());
    }

    /// The procedure's cgroup, if it has one.
    pub fn cgroup(&self) -> Option<&Arc<ProcedureCgroup>> {
        self.cgroup.as_ref()
    }

    /// Ends the procedure's processes for good: kills whatever is left and lets the
    /// reaper go.
    pub async fn finish(mut self) {
        self.kill_all();
        let _ = self.child.wait().await;
        self.reaper.release().await;
    }
}

fn kill_all(group: ProcessGroup, cgroup: Option<&ProcedureCgroup>) {
    if let Some(cgroup) = cgroup {
        cgroup.kill();
    }
    group.kill();
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
