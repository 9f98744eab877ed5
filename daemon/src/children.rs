//! oetd's child processes that it waits for itself: workers (cold-started or forked by a
//! zygote), zygotes and the guard. oetd is a child subreaper (`PR_SET_CHILD_SUBREAPER`),
//! so a worker a zygote double-forks becomes oetd's child, to be waited for like any
//! other — and so does any process a script left behind when its parent ended.
//!
//! One task takes every SIGCHLD and, for each watched process, asks `waitpid` without
//! waiting whether it has exited: no descriptor per process (a pidfd each would cost a
//! file descriptor per live procedure). After that, the zombies no one watches (a
//! script's orphans, killed with their cgroup) are reaped too — except the children
//! tokio waits for itself (pip builds and their guards, see [`leave_to_tokio`]), and
//! not while a child is being started, whose pid is not known yet.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::process::ExitStatus;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::oneshot;

/// Everything the watcher knows, under one lock.
#[derive(Default)]
struct Table {
    watched: HashMap<i32, oneshot::Sender<ExitStatus>>,
    /// Children spawned through tokio, which reaps them itself.
    tokio: HashSet<i32>,
    /// Children being started whose pid is not yet watched: no stray is reaped meanwhile.
    starting: usize,
}

static TABLE: OnceLock<Mutex<Table>> = OnceLock::new();

fn table() -> MutexGuard<'static, Table> {
    TABLE
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// Makes oetd a child subreaper and starts the task that reaps its children. Call once,
/// inside the runtime, before any worker is started.
pub fn start() -> io::Result<()> {
    // SAFETY: prctl with an integer option and argument only sets a flag of this process.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut children = signal(SignalKind::child())?;
    tokio::spawn(async move {
        while children.recv().await.is_some() {
            reap();
        }
    });
    Ok(())
}

/// How a watched child ended, once it has.
pub struct Exit {
    receiver: oneshot::Receiver<ExitStatus>,
    status: Option<Result<ExitStatus, String>>,
}

impl Exit {
    /// Waits until the child has exited (cancel-safe; answers again once it has).
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if self.status.is_none() {
            let status = (&mut self.receiver)
                .await
                .map_err(|_| "oetd stopped watching the process".to_owned());
            self.status = Some(status);
        }
        match &self.status {
            Some(Ok(status)) => Ok(*status),
            Some(Err(err)) => Err(io::Error::other(err.clone())),
            None => Err(io::Error::other("not waited for")),
        }
    }

    /// Whether the child is known to have exited.
    pub fn has_exited(&mut self) -> bool {
        if self.status.is_none() {
            if let Ok(status) = self.receiver.try_recv() {
                self.status = Some(Ok(status));
            }
        }
        self.status.is_some()
    }
}

/// Held while a child is started and until its pid is watched: a child that exits at once
/// is then not taken for a stray.
pub struct Starting(());

impl Drop for Starting {
    fn drop(&mut self) {
        table().starting -= 1;
        // A SIGCHLD that came meanwhile left its strays for now.
        reap();
    }
}

/// Says that a child is about to be started.
pub fn starting() -> Starting {
    table().starting += 1;
    Starting(())
}

/// Watches child `pid` (which must be oetd's child: spawned by it, or reparented to it).
/// If it exited before it was watched, the reap when `_starting` ends finds it.
pub fn watch(pid: u32, _starting: &Starting) -> Exit {
    let (sender, receiver) = oneshot::channel();
    table().watched.insert(pid as i32, sender);
    Exit {
        receiver,
        status: None,
    }
}

/// Leaves child `pid` to tokio, which waits for it itself: never reaped here.
pub fn leave_to_tokio(pid: u32, _starting: &Starting) {
    table().tokio.insert(pid as i32);
}

/// `waitpid` without waiting: the raw status if `pid` has exited (and is now reaped).
fn try_reap(pid: i32) -> Option<i32> {
    let mut status = 0;
    // SAFETY: waitpid writes the status into a valid integer.
    let reaped = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    (reaped == pid).then_some(status)
}

fn reap() {
    let mut table = table();
    let exited: Vec<(i32, i32)> = table
        .watched
        .keys()
        .filter_map(|pid| try_reap(*pid).map(|status| (*pid, status)))
        .collect();
    for (pid, status) in exited {
        if let Some(sender) = table.watched.remove(&pid) {
            let _ = sender.send(ExitStatus::from_raw(status));
        }
    }
    if table.starting > 0 {
        return;
    }
    let children = own_children();
    table.tokio.retain(|pid| children.contains(pid));
    for pid in children {
        if !table.watched.contains_key(&pid) && !table.tokio.contains(&pid) && is_zombie(pid) {
            try_reap(pid);
        }
    }
}

/// oetd's children, as each of its threads lists them.
fn own_children() -> HashSet<i32> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return HashSet::new();
    };
    tasks
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .flat_map(|list| {
            list.split_whitespace()
                .filter_map(|pid| pid.parse().ok())
                .collect::<Vec<i32>>()
        })
        .collect()
}

fn is_zombie(pid: i32) -> bool {
    stat_fields(pid).is_some_and(|fields| fields.split_whitespace().next() == Some("Z"))
}

/// The fields of `/proc/<pid>/stat` from the state (field 3) on, separated by spaces;
/// `None` when there is no such process. The command name before them (field 2) may
/// hold spaces and parentheses, so they are what follows its last `)`.
pub fn stat_fields(pid: i32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, fields) = stat.rsplit_once(')')?;
    Some(fields.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader};

    /// Blocks until process `pid` has exited (a zombie counts), woken by its pidfd.
    fn wait_exited(pid: i32) {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
        assert!(fd >= 0, "pidfd of {pid}");
        let mut poll = libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for the call's duration; then the descriptor is ours.
        unsafe {
            assert_eq!(libc::poll(&mut poll, 1, 60_000), 1, "{pid} did not exit");
            libc::close(fd);
        }
    }

    #[tokio::test]
    async fn a_watched_child_is_reaped_with_its_status_and_a_stray_is_reaped_too() {
        start().expect("subreaper");
        let starting = starting();
        // sh leaves a child behind, which then becomes ours, unwatched. sh itself is
        // waited for through `watch`, not std.
        #[allow(clippy::zombie_processes)]
        let mut child = std::process::Command::new("sh")
            .args(["-c", "sleep 0.2 & echo $!; exit 3"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sh");
        let mut exit = watch(child.id(), &starting);
        drop(starting);
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("the orphan's pid");
        let orphan: i32 = line.trim().parse().expect("a pid");
        let status = exit.wait().await.expect("status");
        assert_eq!(status.code(), Some(3));
        assert!(exit.has_exited());
        tokio::task::spawn_blocking(move || wait_exited(orphan))
            .await
            .expect("waited");
        reap();
        assert!(
            !own_children().contains(&orphan),
            "the orphan {orphan} was not reaped"
        );
    }

    #[tokio::test]
    async fn a_child_that_exits_before_it_is_watched_is_reaped_when_its_start_ends() {
        // No SIGCHLD task (no `start`): only the end of the start may reap the child.
        let starting = starting();
        #[allow(clippy::zombie_processes)]
        let child = std::process::Command::new("sh")
            .args(["-c", "exit 4"])
            .spawn()
            .expect("sh");
        let pid = child.id();
        // Until it has exited (WNOWAIT: still to be reaped).
        tokio::task::spawn_blocking(move || {
            // SAFETY: waitid writes only into `info`, which lives for the call.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            let waited =
                unsafe { libc::waitid(libc::P_PID, pid, &mut info, libc::WEXITED | libc::WNOWAIT) };
            assert_eq!(waited, 0, "{}", io::Error::last_os_error());
        })
        .await
        .expect("waited");
        let mut exit = watch(pid, &starting);
        drop(starting);
        let status = tokio::time::timeout(std::time::Duration::from_secs(60), exit.wait())
            .await
            .expect("the child is reaped once its start ends")
            .expect("status");
        assert_eq!(status.code(), Some(4));
    }
}
