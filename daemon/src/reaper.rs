//! Reapers: guards that outlive the daemon. A reaper is `oetd` re-executed in a minimal
//! mode (`--reap-process-group PGID [--cgroup DIR]... [--cgroup-root DIR]...`) holding
//! the read end of a pipe whose write end only the daemon has. When the pipe closes —
//! because the daemon let go of it, or because the daemon died, even by SIGKILL — the
//! reaper kills what it guards: the procedure's cgroup with `cgroup.kill` (everything in
//! it, whatever its process group) when it has one, else the process group. It then
//! removes the cgroup once it is empty, and — when the daemon died rather than let go —
//! the daemon's own root cgroups too, if nothing else is left in them. Script workers
//! and pip builds are guarded this way, so nothing they started survives `oetd`.

use std::ffi::OsString;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use crate::cgroup::files;
use crate::process::ProcessGroup;

/// The hidden flag that turns `oetd` into a reaper.
pub const REAPER_FLAG: &str = "--reap-process-group";

/// How long a reaper waits for a killed cgroup to empty before removing it.
const EMPTY_WAIT: Duration = Duration::from_secs(10);

/// What a reaper guards: a process group, and the cgroup its processes are in, if any.
#[derive(Debug, Clone)]
pub struct Guarded {
    pub group: ProcessGroup,
    /// The procedure's cgroup directories, the v2 one first; empty without a cgroup.
    pub cgroups: Vec<PathBuf>,
    /// The daemon's root cgroups, removed (when empty) if the daemon died.
    pub roots: Vec<PathBuf>,
}

impl From<ProcessGroup> for Guarded {
    fn from(group: ProcessGroup) -> Self {
        Guarded {
            group,
            cgroups: Vec::new(),
            roots: Vec::new(),
        }
    }
}

/// A reaper process guarding one process group (and its cgroup). Dropping it (or
/// [`Reaper::release`]) closes the pipe, so what it guards is killed.
pub struct Reaper {
    child: Child,
    pipe: Option<OwnedFd>,
}

impl Reaper {
    pub fn spawn(daemon_exe: &Path, guarded: impl Into<Guarded>) -> io::Result<Reaper> {
        let guarded = guarded.into();
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let mut command = Command::new(daemon_exe);
        command.arg(REAPER_FLAG).arg(guarded.group.id().to_string());
        for dir in &guarded.cgroups {
            command.arg("--cgroup").arg(dir);
        }
        for dir in &guarded.roots {
            command.arg("--cgroup-root").arg(dir);
        }
        let child = command
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

    /// Lets go: the reaper kills whatever is left of what it guards and removes the
    /// procedure's cgroup, but leaves the daemon's roots to the daemon.
    pub async fn release(&mut self) {
        if let Some(pipe) = self.pipe.take() {
            let _ = nix::unistd::write(&pipe, b"released");
        }
        let _ = self.child.wait().await;
    }
}

/// The reaper's whole life: wait for the pipe on stdin to close, then kill and clean up.
pub fn run_reaper(args: &[OsString]) -> i32 {
    let Some(guarded) = parse(args) else {
        eprintln!(
            "oetd: {REAPER_FLAG} needs a process group id, then --cgroup DIR or \
             --cgroup-root DIR options"
        );
        return 2;
    };
    // Signals aimed at a terminal's foreground group must not end the guard early.
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
    let mut released = false;
    let mut buf = [0u8; 64];
    loop {
        // SAFETY: reading into a valid buffer of the stated length.
        let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
        if n == 0 {
            break;
        }
        if n > 0 {
            released = true;
            continue;
        }
        if io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
    match guarded.cgroups.first() {
        Some(cgroup) => {
            // Everything in the cgroup, whatever its process group. The process group
            // id, which may be reused by now, is signalled only if that fails.
            if files::write(cgroup, "cgroup.kill", "1").is_err() && cgroup.exists() {
                guarded.group.kill();
            }
            let _ = files::wait_empty(cgroup, EMPTY_WAIT);
            for dir in &guarded.cgroups {
                let _ = files::remove(dir);
            }
            if !released {
                for root in &guarded.roots {
                    let _ = std::fs::remove_dir(root);
                }
            }
        }
        None => guarded.group.kill(),
    }
    0
}

fn parse(args: &[OsString]) -> Option<Guarded> {
    let group = args
        .first()
        .and_then(|a| a.to_str())
        .and_then(|a| a.parse::<i32>().ok())
        .and_then(ProcessGroup::from_id)?;
    let mut guarded = Guarded::from(group);
    let mut rest = args[1..].iter();
    while let Some(flag) = rest.next() {
        let dir = PathBuf::from(rest.next()?);
        match flag.to_str()? {
            "--cgroup" => guarded.cgroups.push(dir),
            "--cgroup-root" => guarded.roots.push(dir),
            _ => return None,
        }
    }
    Some(guarded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(words: &[&str]) -> Vec<OsString> {
        words.iter().map(OsString::from).collect()
    }

    #[test]
    fn arguments_name_a_group_and_cgroups() {
        let guarded = parse(&args(&[
            "42",
            "--cgroup",
            "/sys/fs/cgroup/x/procedure-1",
            "--cgroup-root",
            "/sys/fs/cgroup/x",
        ]))
        .expect("parses");
        assert_eq!(guarded.group.id(), 42);
        assert_eq!(
            guarded.cgroups,
            [PathBuf::from("/sys/fs/cgroup/x/procedure-1")]
        );
        assert_eq!(guarded.roots, [PathBuf::from("/sys/fs/cgroup/x")]);
        assert!(parse(&args(&["42"])).is_some_and(|g| g.cgroups.is_empty()));
        assert!(parse(&args(&["1"])).is_none(), "init's group");
        assert!(parse(&args(&["42", "--cgroup"])).is_none());
        assert!(parse(&args(&["42", "--other", "x"])).is_none());
    }
}
