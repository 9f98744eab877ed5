//! Child processes, as the procedure runner (scripts) and the environment builder (pip)
//! both need them: a child leading a process group of its own, so that it and
//! everything it started can be killed at once (and, when it matters, awaited until
//! none is left); a descriptor passed to a child under a fixed number; its output line
//! by line (bounded); and how it ended, in words.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::ExitStatus;
use std::time::Duration;

use futures::Stream;
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

/// A process group led by a child this process spawned, so its id is the leader's pid.
/// Killing the group reaches everything the child started that stayed in its group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcessGroup(Pid);

impl ProcessGroup {
    /// Spawns `command` as the leader of a new process group; tokio waits for it.
    pub fn spawn(command: &mut Command) -> io::Result<(Child, ProcessGroup)> {
        let starting = crate::children::starting();
        let child = command.process_group(0).spawn()?;
        if let Some(pid) = child.id() {
            crate::children::leave_to_tokio(pid, &starting);
        }
        let group = child
            .id()
            .and_then(|pid| i32::try_from(pid).ok())
            .and_then(ProcessGroup::from_id)
            .ok_or_else(|| io::Error::other("the child exited before its pid could be read"))?;
        Ok((child, group))
    }

    /// The group `pgid`. Ids that name no single group of ours are refused: `killpg(0)`
    /// would kill the caller's own group, and 1 is init's.
    pub fn from_id(pgid: i32) -> Option<ProcessGroup> {
        (pgid > 1).then(|| ProcessGroup(Pid::from_raw(pgid)))
    }

    /// The group id, which is the leader's pid.
    pub fn id(self) -> u32 {
        self.0.as_raw().unsigned_abs()
    }

    /// SIGKILLs every member now, without waiting for any to exit. A group that is
    /// already gone is not an error.
    pub fn kill(self) {
        let _ = killpg(self.0, Signal::SIGKILL);
    }

    /// SIGKILLs every member, then waits until each has exited, watching them through
    /// pidfds, so that "nothing of the group is left" holds when this returns — unless
    /// `within` passed first, which is logged.
    pub async fn kill_and_wait(self, within: Duration) {
        if killpg(self.0, Signal::SIGKILL).is_err() {
            return;
        }
        let waits = self.members().into_iter().filter_map(|pid| {
            // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
            let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
            let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
            // SAFETY: `fd` was just returned by pidfd_open and nothing else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: the AsyncFd owns `fd`, which stays open until the AsyncFd is dropped.
            let fd = unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
            }
            .ok()?;
            Some(async move {
                // A pidfd becomes readable when its process has exited.
                let _ = fd.readable().await;
            })
        });
        let all = futures::future::join_all(waits);
        if tokio::time::timeout(within, all).await.is_err() {
            tracing::warn!("processes of group {} did not exit after SIGKILL", self.0);
        }
    }

    /// The live (not yet exited) members of the group.
    fn members(self) -> Vec<i32> {
        let Ok(entries) = std::fs::read_dir("/proc") else {
            return Vec::new();
        };
        let pgid = self.0.as_raw();
        entries
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
                // state, ppid, pgrp, ...
                let stat = crate::children::stat_fields(pid)?;
                let mut fields = stat.split_whitespace();
                let state = fields.next()?;
                let group: i32 = fields.nth(1)?.parse().ok()?;
                (group == pgid && state != "Z" && state != "X").then_some(pid)
            })
            .collect()
    }
}

/// Makes `fd` the descriptor `target` of the child that `command` spawns, without
/// close-on-exec (as systemd passes an activated socket as fd 3). `fd` must still be
/// open when the child is spawned. A tokio command is served through `as_std_mut()`.
pub fn pass_fd(command: &mut std::process::Command, fd: RawFd, target: RawFd) {
    // SAFETY: the hook runs between fork and exec and makes only async-signal-safe
    // calls (fcntl, dup2) on two integers it owns.
    unsafe {
        command.pre_exec(move || install_fd(fd, target));
    }
}

/// In the forked child: `fd` becomes `target`, inheritable across exec.
fn install_fd(fd: RawFd, target: RawFd) -> io::Result<()> {
    if fd == target {
        // dup2 onto itself would leave close-on-exec set; clear it instead.
        // SAFETY: fcntl on a descriptor number only reads and sets its flags.
        let cleared = unsafe {
            let flags = libc::fcntl(target, libc::F_GETFD);
            flags >= 0 && libc::fcntl(target, libc::F_SETFD, flags & !libc::FD_CLOEXEC) >= 0
        };
        if !cleared {
            return Err(io::Error::last_os_error());
        }
    // SAFETY: dup2 on two descriptor numbers; the new one does not carry close-on-exec.
    } else if unsafe { libc::dup2(fd, target) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Signals aimed at a terminal's foreground group must not end a guard early.
pub fn ignore_terminal_signals() {
    // SAFETY: setting a signal disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGINT, libc::SIG_IGN);
        libc::signal(libc::SIGHUP, libc::SIG_IGN);
    }
}

/// Longest output line kept whole; a longer line is replaced by a note saying so.
pub const MAX_LINE: usize = 64 * 1024;

/// The lines a child writes to `pipe`, without their line ends, until it is closed.
/// Bytes that are not UTF-8 are replaced, so a line is never lost for its encoding; a
/// line longer than [`MAX_LINE`] becomes a note, and reading goes on after it (a pipe
/// left unread would block the child).
pub fn lines(pipe: impl AsyncRead + Unpin + Send) -> impl Stream<Item = String> + Send {
    futures::stream::unfold(BufReader::new(pipe), |mut reader| async move {
        next_line(&mut reader).await.map(|line| (line, reader))
    })
}

async fn next_line(reader: &mut (impl AsyncBufRead + Unpin)) -> Option<String> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let buf = reader.fill_buf().await.ok()?;
        if buf.is_empty() {
            // End of the pipe: a last line without its line end still counts.
            return (!line.is_empty() || too_long).then(|| finish(&line, too_long));
        }
        let end = buf.iter().position(|&b| b == b'\n');
        let chunk = &buf[..end.unwrap_or(buf.len())];
        if !too_long {
            if line.len() + chunk.len() > MAX_LINE {
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let used = end.map_or(buf.len(), |at| at + 1);
        reader.consume(used);
        if end.is_some() {
            return Some(finish(&line, too_long));
        }
    }
}

fn finish(line: &[u8], too_long: bool) -> String {
    if too_long {
        return format!("[a line longer than {MAX_LINE} bytes was dropped]");
    }
    String::from_utf8_lossy(line)
        .trim_end_matches('\r')
        .to_owned()
}

/// How a process ended: `exit status 2`, or `signal SIGSEGV (11) (core dumped)`.
pub fn exit_summary(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(signal) = status.signal() {
        let name = Signal::try_from(signal)
            .map(|s| s.as_str().to_owned())
            .unwrap_or_else(|_| format!("signal {signal}"));
        let core = if status.core_dumped() {
            " (core dumped)"
        } else {
            ""
        };
        return format!("signal {name} ({signal}){core}");
    }
    match status.code() {
        Some(code) => format!("exit status {code}"),
        None => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn exits_are_told_by_status_or_signal() {
        assert_eq!(exit_summary(ExitStatus::from_raw(2 << 8)), "exit status 2");
        assert_eq!(
            exit_summary(ExitStatus::from_raw(11)),
            "signal SIGSEGV (11)"
        );
    }

    #[tokio::test]
    async fn lines_are_split_decoded_and_bounded() {
        let long = "x".repeat(MAX_LINE + 1);
        let mut input = b"one\r\ntwo \xff\n".to_vec();
        input.extend_from_slice(format!("{long}\nthree").as_bytes());
        let got: Vec<String> = lines(input.as_slice()).collect().await;
        assert_eq!(got[0], "one");
        assert_eq!(got[1], "two \u{fffd}");
        assert!(got[2].contains("was dropped"), "{}", got[2]);
        assert_eq!(got[3], "three");
        assert_eq!(got.len(), 4);
    }

    /// Spawns `sh -c script` in a group of its own and reads its first output line.
    async fn group_saying(script: &str) -> (Child, ProcessGroup, String) {
        let mut command = Command::new("sh");
        command
            .args(["-c", script])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        let (mut child, group) = ProcessGroup::spawn(&mut command).expect("sh starts");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = std::pin::pin!(lines(stdout));
        let first = lines.next().await.expect("a line from sh");
        (child, group, first)
    }

    #[tokio::test]
    async fn killing_a_group_waits_until_no_member_is_left() {
        let (mut child, group, background) =
            group_saying("sleep 1000 & echo $!; sleep 1000 & wait").await;
        let background: i32 = background.parse().expect("a pid");
        assert_eq!(group.id(), child.id().expect("running"));
        assert!(
            group.members().contains(&background),
            "{:?}",
            group.members()
        );

        group.kill_and_wait(Duration::from_secs(30)).await;
        assert_eq!(group.members(), Vec::<i32>::new());
        let status = child.wait().await.expect("reaped");
        assert_eq!(exit_summary(status), "signal SIGKILL (9)");
    }

    #[test]
    fn groups_that_are_not_ours_are_refused() {
        assert_eq!(ProcessGroup::from_id(0), None);
        assert_eq!(ProcessGroup::from_id(1), None);
        assert_eq!(ProcessGroup::from_id(-5), None);
        assert_eq!(ProcessGroup::from_id(42).map(ProcessGroup::id), Some(42));
    }

    /// A pipe whose write end is passed to `sh` as `target`; returns what sh wrote.
    fn written_through_passed_fd(target: impl Fn(RawFd) -> RawFd) -> std::io::Result<String> {
        use std::io::Read;
        use std::os::fd::AsRawFd;
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let target = target(write.as_raw_fd());
        let mut command = std::process::Command::new("sh");
        command
            .arg("-c")
            .arg(format!("echo through {target} > /proc/self/fd/{target}"));
        pass_fd(&mut command, write.as_raw_fd(), target);
        let status = command.status()?;
        drop(write);
        let mut text = String::new();
        std::fs::File::from(read).read_to_string(&mut text)?;
        assert!(status.success(), "sh could not write to fd {target}");
        Ok(text)
    }

    #[test]
    fn a_passed_fd_arrives_under_its_number_without_close_on_exec() {
        assert_eq!(
            written_through_passed_fd(|_| 9).expect("moved to 9"),
            "through 9\n"
        );
        // Already the right number: only close-on-exec has to go.
        let same = written_through_passed_fd(|fd| fd).expect("kept");
        assert!(same.starts_with("through "), "{same}");
    }
}
