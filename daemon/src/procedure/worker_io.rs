//! What a worker process is given: its channel and output pipes (oetd keeps the other
//! ends), and its containment — joining its procedure's cgroup between fork and exec and
//! dying with oetd. Shared by cold starts (`worker`) and zygotes (`zygote`).

use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream as StdUnixStream;
use std::os::unix::process::CommandExt;
use std::process::Command;

use tokio::net::unix::pipe;

use crate::cgroup::{self, ProcedureCgroup};

/// The daemon's ends of a worker's channel and output pipes.
pub struct WorkerIo {
    pub channel: tokio::net::UnixStream,
    pub stdout: pipe::Receiver,
    pub stderr: pipe::Receiver,
}

/// The descriptors a worker is given, made by oetd: its channel and output pipes, with
/// oetd's ends.
pub(super) struct Ends {
    pub ours: WorkerIo,
    pub channel: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

impl Ends {
    pub fn new() -> io::Result<Ends> {
        let (ours, theirs) = StdUnixStream::pair()?;
        ours.set_nonblocking(true)?;
        let (out_read, stdout) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let (err_read, stderr) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        Ok(Ends {
            ours: WorkerIo {
                channel: tokio::net::UnixStream::from_std(ours)?,
                stdout: pipe::Receiver::from_owned_fd(out_read)?,
                stderr: pipe::Receiver::from_owned_fd(err_read)?,
            },
            channel: theirs.into(),
            stdout,
            stderr,
        })
    }
}

/// Makes the child `command` spawns join `cgroup` between fork and exec (so nothing it
/// starts is ever outside it) and die with oetd. The returned files must stay open until
/// the child is spawned.
pub(super) fn contain(
    command: &mut Command,
    cgroup: Option<&ProcedureCgroup>,
) -> io::Result<Option<cgroup::Membership>> {
    // Opened here, so that the child only has to write to them.
    let membership = cgroup.map(ProcedureCgroup::membership).transpose()?;
    let cgroup_fds = membership.as_ref().map(cgroup::Membership::fds);
    // SAFETY: only async-signal-safe calls (write, prctl) between fork and exec, on
    // descriptors that stay open until the child is spawned. Registered before any
    // descriptor is put on its number, which could otherwise be one of these.
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
    Ok(membership)
}
