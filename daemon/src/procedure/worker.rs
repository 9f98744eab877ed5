//! Worker processes: spawning the Python harness in its own process group, signalling
//! it, and making sure nothing it started outlives it — or outlives the daemon.
//!
//! Each worker gets a companion reaper (see `crate::reaper`) that SIGKILLs the worker's
//! whole process group when the procedure ends or the daemon dies, even by SIGKILL. The
//! worker itself also has a parent-death signal, which covers the moment before its
//! reaper exists.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::process::{Child, ChildStderr, ChildStdout, Command};

use crate::process::{self, ProcessGroup};
use crate::reaper::Reaper;

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
    reaper: Reaper,
}

/// The daemon's ends of a worker's channel and output pipes.
pub struct WorkerIo {
    pub channel: tokio::net::UnixStream,
    pub stdout: ChildStdout,
    pub stderr: ChildStderr,
}

impl WorkerCommand {
    /// Starts `python` running the harness for procedure `id`, in a new process group.
    pub fn spawn(&self, python: &Path, id: u64, cwd: &Path) -> io::Result<(Worker, WorkerIo)> {
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
        process::pass_fd(command.as_std_mut(), their_fd, WORKER_FD);
        // SAFETY: only an async-signal-safe call (prctl) between fork and exec.
        unsafe {
            command.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let (mut child, group) = ProcessGroup::spawn(&mut command)?;
        drop(theirs);
        let reaper = match Reaper::spawn(&self.daemon_exe, group) {
            Ok(reaper) => reaper,
            Err(err) => {
                group.kill();
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

    /// Kills the worker and everything in its process group.
    pub fn kill_group(&self) {
        self.group.kill();
    }

    /// Ends the procedure's processes for good: kills whatever is left in the group and
    /// lets the reaper go.
    pub async fn finish(mut self) {
        self.group.kill();
        let _ = self.child.wait().await;
        self.reaper.release().await;
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
