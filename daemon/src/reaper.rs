//! Reapers: guards that outlive the daemon. A reaper is `oetd` re-executed in a minimal
//! mode (`--reap-process-group PGID`) holding the read end of a pipe whose write end
//! only the daemon has. When the pipe closes — because the daemon let go of it, or
//! because the daemon died, even by SIGKILL — the reaper SIGKILLs the whole process
//! group it guards. Script workers and pip builds are guarded this way, so nothing they
//! started survives `oetd`.

use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::path::Path;
use std::process::Stdio;

use tokio::process::{Child, Command};

use crate::process::ProcessGroup;

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
        let child = Command::new(daemon_exe)
            .arg(REAPER_FLAG)
            .arg(group.id().to_string())
            .stdin(Stdio::from(read))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            // Its own group, so a terminal's Ctrl-C reaches neither it nor the worker.
            .process_group(0)
            .spawn()?;
        Ok(Reaper {
            child,
            pipe: Some(write),
        })
    }

    pub async fn release(&mut self) {
        self.pipe = None;
        let _ = self.child.wait().await;
    }
}

/// The reaper's whole life: wait for the pipe on stdin to close, then kill the group.
pub fn run_reaper(args: &[OsString]) -> i32 {
    let Some(group) = args
        .first()
        .and_then(|a| a.to_str())
        .and_then(|a| a.parse::<i32>().ok())
        .and_then(ProcessGroup::from_id)
    else {
        eprintln!("oetd: {REAPER_FLAG} needs a process group id");
        return 2;
    };
    // Signals aimed at a terminal's foreground group must not end the guard early.
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: reading into a valid buffer of the stated length.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 {
            break;
        }
        if n < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
    group.kill();
    0
}
