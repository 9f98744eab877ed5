//! Reapers of pip builds: a reaper is `oetd` re-executed in a minimal mode
//! (`--reap-process-group PGID`) holding the read end of a pipe whose write end only the
//! daemon has. When the pipe closes — because the build ended and the daemon let go of
//! it, or because the daemon died, even by SIGKILL — the reaper kills the build's process
//! group, so nothing a build started survives `oetd`. (Procedures have one guard for all
//! of them: see `crate::guard`.)

use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Stdio;

use tokio::process::{Child, Command};

use crate::children;
use crate::process::{self, ProcessGroup};

/// The hidden flag that turns `oetd` into a reaper.
pub const REAPER_FLAG: &str = "--reap-process-group";

/// A reaper process guarding one process group. Dropping it (or [`Reaper::release`])
/// closes the pipe, so the group is killed.
pub struct Reaper {
    child: Child,
    pipe: Option<OwnedFd>,
}

impl Reaper {
    pub fn spawn(daemon_exe: &Path, group: ProcessGroup) -> io::Result<Reaper> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let mut command = Command::new(daemon_exe);
        command.arg(REAPER_FLAG).arg(group.id().to_string());
        let starting = children::starting();
        let child = command
            .stdin(Stdio::from(read))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            // Its own group, so a terminal's Ctrl-C reaches neither it nor the worker.
            .process_group(0)
            .spawn()?;
        if let Some(pid) = child.id() {
            children::leave_to_tokio(pid, &starting);
        }
        Ok(Reaper {
            child,
            pipe: Some(write),
        })
    }

    /// Lets go: the reaper kills whatever is left of the group, and ends.
    pub async fn release(&mut self) {
        if let Some(pipe) = self.pipe.take() {
            let _ = nix::unistd::write(&pipe, b"released");
        }
        let _ = self.child.wait().await;
    }
}

/// The reaper's whole life: wait for the pipe on stdin to close, then kill the group.
pub fn run_reaper(args: &[OsString]) -> i32 {
    let Some(group) = parse(args) else {
        eprintln!("oetd: {REAPER_FLAG} needs a process group id");
        return 2;
    };
    process::ignore_terminal_signals();
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: reading into a valid buffer of the stated length.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 || (n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted) {
            break;
        }
    }
    group.kill();
    0
}

fn parse(args: &[OsString]) -> Option<ProcessGroup> {
    match args {
        [group] => group
            .to_str()
            .and_then(|a| a.parse::<i32>().ok())
            .and_then(ProcessGroup::from_id),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn arguments_name_a_group() {
        assert_eq!(parse(&args(&["42"])).map(ProcessGroup::id), Some(42));
        assert!(parse(&args(&["1"])).is_none(), "init's group");
        assert!(parse(&args(&["42", "--cgroup", "x"])).is_none());
        assert!(parse(&args(&[])).is_none());
    }
}
