//! Zygotes: one pre-started Python per interpreter that has imported the worker harness
//! (and pypubsub) and never runs a script. A create asks it to fork a fresh worker, so
//! a procedure costs a fork instead of an interpreter's start-up and shares the
//! interpreter's pages; every worker is still a process no other script has touched.
//!
//! - The default interpreter gets its zygote at start-up; another (a git commit's
//!   environment) once it has been used `procedures.zygote_env_uses` times, up to
//!   `procedures.zygote_max` zygotes. `procedures.zygote = false` turns them off.
//! - oetd sends the zygote, over a `SOCK_SEQPACKET` socket, the procedure's ID and
//!   working directory with the worker's channel and output pipes (`SCM_RIGHTS`); the
//!   zygote forks twice, so the worker is reparented to oetd (a child subreaper), and
//!   answers with its pid. oetd watches the pid and moves the worker into the
//!   procedure's cgroup before it hands it the script (see `worker`).
//! - A zygote lives in a cgroup of its own beside the procedures' (`zygote-<oetd
//!   pid>-<n>`), known to the procedures' guard, and has a parent-death signal: it never
//!   outlives oetd. It ends when its socket closes.
//! - A zygote that dies, or does not answer, is replaced in the background (with a
//!   growing pause if it keeps dying); creates start workers cold meanwhile.

use std::collections::HashMap;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use nix::sys::socket::{self, ControlMessage, MsgFlags, SockFlag, SockType};
use serde::Deserialize;
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;
use tracing::{info, warn};

use super::config::Settings;
use super::worker_io::{self, Ends, WorkerIo};
use crate::cgroup::{CgroupRoot, ProcedureCgroup};
use crate::children::{self, Exit};
use crate::guard::Guard;
use crate::process::{self, ProcessGroup};

/// How long a zygote may take to import what it imports, and to answer a fork.
const START_WITHIN: Duration = Duration::from_secs(60);
const FORK_WITHIN: Duration = Duration::from_secs(10);

/// The longest pause before a zygote that keeps dying is started again.
const MAX_PAUSE: Duration = Duration::from_secs(60);

/// A worker a zygote forked: its pid (oetd's child now), its exit, oetd's ends of its
/// descriptors.
pub struct Forked {
    pub pid: u32,
    pub exit: Exit,
    pub io: WorkerIo,
}

/// What `oetctl status` shows of a zygote.
pub type ZygoteStatus = oet_protocol::ZygoteStatus;

/// The zygotes of every interpreter; cheap to clone.
#[derive(Clone)]
pub struct Zygotes {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    harness: PathBuf,
    root: Option<Arc<CgroupRoot>>,
    guard: Arc<Guard>,
    /// Names zygotes' cgroups apart.
    started: AtomicU64,
    slots: Mutex<HashMap<PathBuf, Slot>>,
}

/// One interpreter's zygote, as far as it goes.
enum Slot {
    /// Used this many times, with no zygote (yet).
    Used(u32),
    /// Being started, or waiting to be started again after dying this many times in a row.
    Starting(u32),
    Up(Arc<Zygote>),
}

/// A running zygote.
struct Zygote {
    pid: u32,
    group: ProcessGroup,
    cgroup: Option<ProcedureCgroup>,
    /// oetd's end of its socket; one fork at a time.
    link: tokio::sync::Mutex<AsyncFd<OwnedFd>>,
    forks: AtomicU64,
    /// Set once it has exited and its cgroup is removed.
    gone: tokio::sync::watch::Sender<bool>,
}

#[derive(Deserialize)]
struct Reply {
    id: Option<u64>,
    pid: Option<u32>,
    error: Option<String>,
}

#[derive(Deserialize)]
struct Hello {
    ready: u32,
}

impl Zygotes {
    pub fn new(
        settings: Settings,
        harness: PathBuf,
        root: Option<Arc<CgroupRoot>>,
        guard: Arc<Guard>,
    ) -> Self {
        Zygotes {
            inner: Arc::new(Inner {
                settings,
                harness,
                root,
                guard,
                started: AtomicU64::new(0),
                slots: Mutex::new(HashMap::new()),
            }),
        }
    }

    fn slots(&self) -> MutexGuard<'_, HashMap<PathBuf, Slot>> {
        self.inner
            .slots
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn enabled(&self) -> bool {
        self.inner.settings.get(|c| c.zygote)
    }

    /// Starts `python`'s zygote now (the default interpreter's), in the background.
    pub fn prestart(&self, python: &Path) {
        if !self.enabled() {
            return;
        }
        let mut slots = self.slots();
        if matches!(slots.get(python), Some(Slot::Up(_) | Slot::Starting(_))) {
            return;
        }
        slots.insert(python.to_owned(), Slot::Starting(0));
        drop(slots);
        self.launch(python.to_owned(), Duration::ZERO);
    }

    /// Ends the zygotes of `gone` (a default interpreter replaced by a reload), or all
    /// when zygotes are turned off.
    pub async fn retire(&self, gone: &[PathBuf]) {
        let enabled = self.enabled();
        let gone: Vec<Arc<Zygote>> = {
            let mut slots = self.slots();
            let retired: Vec<PathBuf> = slots
                .keys()
                .filter(|python| !enabled || gone.contains(python))
                .cloned()
                .collect();
            retired
                .into_iter()
                .filter_map(|python| match slots.remove(&python) {
                    Some(Slot::Up(zygote)) => Some(zygote),
                    _ => None,
                })
                .collect()
        };
        for zygote in gone {
            self.end_and_wait(&zygote).await;
        }
    }

    /// Ends a zygote and waits (a little) until its cgroup is removed.
    async fn end_and_wait(&self, zygote: &Zygote) {
        self.end(zygote);
        let mut gone = zygote.gone.subscribe();
        let _ = tokio::time::timeout(START_WITHIN, gone.wait_for(|gone| *gone)).await;
    }

    /// Ends every zygote (at shutdown).
    pub async fn shutdown(&self) {
        let all: Vec<Arc<Zygote>> = self
            .slots()
            .drain()
            .filter_map(|(_, slot)| match slot {
                Slot::Up(zygote) => Some(zygote),
                _ => None,
            })
            .collect();
        for zygote in all {
            self.end_and_wait(&zygote).await;
        }
    }

    fn end(&self, zygote: &Zygote) {
        if let Some(cgroup) = &zygote.cgroup {
            cgroup.kill();
        }
        zygote.group.kill();
    }

    /// What `oetctl status` shows of the zygotes that are up.
    pub fn status(&self) -> Vec<ZygoteStatus> {
        let mut all: Vec<ZygoteStatus> = self
            .slots()
            .iter()
            .filter_map(|(python, slot)| match slot {
                Slot::Up(zygote) => Some(ZygoteStatus {
                    python: python.display().to_string(),
                    pid: zygote.pid,
                    forks: zygote.forks.load(Ordering::Relaxed),
                }),
                _ => None,
            })
            .collect();
        all.sort_by(|a, b| a.python.cmp(&b.python));
        all
    }

    /// Forks a worker for procedure `id` from `python`'s zygote, if one is up; `None`
    /// means the worker is to be started cold (no zygote, or it failed just now).
    pub async fn fork(&self, python: &Path, id: u64, cwd: &Path) -> Option<Forked> {
        if !self.enabled() {
            return None;
        }
        let zygote = self.count_use(python)?;
        match tokio::time::timeout(FORK_WITHIN, zygote.fork(id, cwd)).await {
            Ok(Ok(forked)) => {
                zygote.forks.fetch_add(1, Ordering::Relaxed);
                Some(forked)
            }
            Ok(Err(err)) => {
                warn!(
                    procedure_id = id,
                    "the zygote of {} (pid {}) could not fork a worker ({err}); it is \
                     replaced, and this worker starts cold",
                    python.display(),
                    zygote.pid
                );
                self.end(&zygote);
                None
            }
            Err(_) => {
                warn!(
                    procedure_id = id,
                    "the zygote of {} (pid {}) did not answer within {FORK_WITHIN:?}; it is \
                     replaced, and this worker starts cold",
                    python.display(),
                    zygote.pid
                );
                self.end(&zygote);
                None
            }
        }
    }

    /// Counts a use of `python`; returns its zygote if it is up, and starts one once an
    /// interpreter has been used often enough.
    fn count_use(&self, python: &Path) -> Option<Arc<Zygote>> {
        let (uses, max) = self
            .inner
            .settings
            .get(|c| (c.zygote_env_uses, c.zygote_max));
        let mut slots = self.slots();
        let running = slots
            .values()
            .filter(|slot| !matches!(slot, Slot::Used(_)))
            .count();
        let slot = slots.entry(python.to_owned()).or_insert(Slot::Used(0));
        match slot {
            Slot::Up(zygote) => Some(zygote.clone()),
            Slot::Starting(_) => None,
            Slot::Used(n) => {
                *n += 1;
                if uses > 0 && *n >= uses && running < max {
                    *slot = Slot::Starting(0);
                    drop(slots);
                    self.launch(python.to_owned(), Duration::ZERO);
                }
                None
            }
        }
    }

    /// Starts `python`'s zygote after `pause`, in the background, and keeps it running.
    fn launch(&self, python: PathBuf, pause: Duration) {
        let zygotes = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(pause).await;
            zygotes.run(python).await;
        });
    }

    /// One life of `python`'s zygote: start it, serve while it lives, then decide
    /// whether to start it again.
    async fn run(&self, python: PathBuf) {
        let still_wanted =
            |slots: &HashMap<PathBuf, Slot>| matches!(slots.get(&python), Some(Slot::Starting(_)));
        if !self.enabled() || !still_wanted(&self.slots()) {
            return;
        }
        let deaths = match self.slots().get(&python) {
            Some(Slot::Starting(deaths)) => *deaths,
            _ => 0,
        };
        let n = self.inner.started.fetch_add(1, Ordering::Relaxed);
        let started = self.start(&python, n).await;
        let (zygote, mut exit) = match started {
            Ok(started) => started,
            Err(err) => {
                warn!(
                    "cannot start a zygote for {}: {err}; workers of it start cold",
                    python.display()
                );
                return self.again(python, deaths + 1);
            }
        };
        let zygote = Arc::new(zygote);
        if !self.serve(&python, &zygote) {
            self.end(&zygote);
            let _ = exit.wait().await;
            self.release(&zygote);
            return;
        }
        info!(
            "zygote of {} is up (pid {}): workers are forked from it",
            python.display(),
            zygote.pid
        );
        let status = exit.wait().await;
        self.release(&zygote);
        let served = zygote.forks.load(Ordering::Relaxed) > 0;
        let mut slots = self.slots();
        let ours = matches!(slots.get(&python), Some(Slot::Up(z)) if Arc::ptr_eq(z, &zygote));
        if !ours {
            // Retired on purpose.
            return;
        }
        slots.insert(python.clone(), Slot::Starting(deaths));
        drop(slots);
        let how = match status {
            Ok(status) => process::exit_summary(status),
            Err(err) => err.to_string(),
        };
        warn!(
            "the zygote of {} (pid {}) ended ({how}); it is started again, and workers \
             start cold meanwhile",
            python.display(),
            zygote.pid
        );
        self.again(python, if served { 0 } else { deaths + 1 });
    }

    /// Puts a zygote that is up in its interpreter's slot, if it is still wanted there.
    fn serve(&self, python: &Path, zygote: &Arc<Zygote>) -> bool {
        let mut slots = self.slots();
        let wanted = matches!(slots.get(python), Some(Slot::Starting(_))) && self.enabled();
        if wanted {
            slots.insert(python.to_owned(), Slot::Up(zygote.clone()));
        }
        wanted
    }

    /// Starts `python`'s zygote again, pausing longer the more often it died in a row.
    fn again(&self, python: PathBuf, deaths: u32) {
        let mut slots = self.slots();
        if !matches!(slots.get(&python), Some(Slot::Starting(_))) {
            return;
        }
        slots.insert(python.clone(), Slot::Starting(deaths));
        drop(slots);
        let pause = match deaths {
            0 => Duration::ZERO,
            n => Duration::from_secs(1 << n.min(6)).min(MAX_PAUSE),
        };
        self.launch(python, pause);
    }

    /// Removes a zygote's cgroup once it has exited.
    fn release(&self, zygote: &Zygote) {
        match (&zygote.cgroup, &self.inner.root) {
            (Some(cgroup), Some(root)) => {
                root.release(cgroup);
                self.inner.guard.cgroup_gone(&cgroup.name());
            }
            _ => self.inner.guard.group_gone(zygote.group),
        }
        zygote.gone.send_replace(true);
    }

    /// Starts a zygote of `python` and waits until it says it is ready.
    async fn start(&self, python: &Path, n: u64) -> io::Result<(Zygote, Exit)> {
        let (ours, theirs) = socket::socketpair(
            socket::AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        let flags = nix::fcntl::fcntl(ours.as_raw_fd(), nix::fcntl::FcntlArg::F_GETFL)?;
        nix::fcntl::fcntl(
            ours.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(
                nix::fcntl::OFlag::from_bits_truncate(flags) | nix::fcntl::OFlag::O_NONBLOCK,
            ),
        )?;
        let cgroup = match &self.inner.root {
            Some(root) => {
                let name = format!("zygote-{}-{n}", std::process::id());
                let cgroup = root.helper(&name).map_err(io::Error::other)?;
                self.inner.guard.cgroup(&name);
                Some(cgroup)
            }
            None => None,
        };
        let spawned = self.spawn(python, &theirs, cgroup.as_ref());
        drop(theirs);
        let (pid, exit) = match spawned {
            Ok(spawned) => spawned,
            Err(err) => {
                if let (Some(cgroup), Some(root)) = (&cgroup, &self.inner.root) {
                    self.inner.guard.cgroup_gone(&cgroup.name());
                    root.release(cgroup);
                }
                return Err(err);
            }
        };
        let group = ProcessGroup::from_id(pid as i32)
            .ok_or_else(|| io::Error::other("the zygote has no pid of its own"))?;
        if cgroup.is_none() {
            self.inner.guard.group(group);
        }
        let zygote = Zygote {
            pid,
            group,
            cgroup,
            // SAFETY: the AsyncFd owns `ours`, which stays open until it is dropped.
            link: tokio::sync::Mutex::new(unsafe {
                AsyncFd::register_with_interest(ours, Interest::READABLE | Interest::WRITABLE)
            }?),
            forks: AtomicU64::new(0),
            gone: tokio::sync::watch::Sender::new(false),
        };
        let hello = tokio::time::timeout(START_WITHIN, async {
            let link = zygote.link.lock().await;
            receive(&link).await
        })
        .await;
        let ready = match hello {
            Ok(Ok(bytes)) => serde_json::from_slice::<Hello>(&bytes)
                .map_err(|e| io::Error::other(format!("it said something else than ready: {e}"))),
            Ok(Err(err)) => Err(err),
            Err(_) => Err(io::Error::other(format!(
                "it was not ready within {START_WITHIN:?}"
            ))),
        };
        match ready {
            Ok(Hello { ready }) if ready == pid => Ok((zygote, exit)),
            Ok(_) => {
                self.end(&zygote);
                Err(io::Error::other("it named another pid as its own"))
            }
            Err(err) => {
                self.end(&zygote);
                let mut exit = exit;
                let _ = exit.wait().await;
                self.release(&zygote);
                Err(err)
            }
        }
    }

    /// Spawns the zygote process: the harness in zygote mode, its socket as fd 3, in its
    /// cgroup from its first instruction, dying with oetd.
    fn spawn(
        &self,
        python: &Path,
        socket: &OwnedFd,
        cgroup: Option<&ProcedureCgroup>,
    ) -> io::Result<(u32, Exit)> {
        let mut command = Command::new(python);
        command
            .arg("-u")
            .arg(&self.inner.harness)
            .env("OET_ZYGOTE_FD", "3")
            .env_remove("OET_PROCEDURE_ID")
            .current_dir("/")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .process_group(0);
        let _membership = worker_io::contain(&mut command, cgroup)?;
        process::pass_fd(&mut command, socket.as_raw_fd(), 3);
        let starting = children::starting();
        let child = command.spawn()?;
        let exit = children::watch(child.id(), &starting);
        Ok((child.id(), exit))
    }
}

impl Zygote {
    /// Asks the zygote for a worker of procedure `id`, working in `cwd`.
    async fn fork(&self, id: u64, cwd: &Path) -> io::Result<Forked> {
        let ends = Ends::new()?;
        let request = serde_json::json!({ "id": id, "cwd": cwd.to_string_lossy() });
        let request = request.to_string();
        let link = self.link.lock().await;
        // Until the pid is watched, a child that exits is not taken for a stray.
        let starting = children::starting();
        let fds = [
            ends.channel.as_raw_fd(),
            ends.stdout.as_raw_fd(),
            ends.stderr.as_raw_fd(),
        ];
        loop {
            let mut ready = link.writable().await?;
            let sent = ready.try_io(|fd| {
                socket::sendmsg::<()>(
                    fd.get_ref().as_raw_fd(),
                    &[IoSlice::new(request.as_bytes())],
                    &[ControlMessage::ScmRights(&fds)],
                    MsgFlags::MSG_NOSIGNAL,
                    None,
                )
                .map_err(io::Error::from)
            });
            match sent {
                Ok(sent) => {
                    sent?;
                    break;
                }
                Err(_would_block) => continue,
            }
        }
        // The zygote has its own copies now; the worker gets them.
        drop((ends.channel, ends.stdout, ends.stderr));
        let reply = receive(&link).await?;
        let reply: Reply = serde_json::from_slice(&reply)
            .map_err(|e| io::Error::other(format!("its answer is not one: {e}")))?;
        if reply.id != Some(id) {
            return Err(io::Error::other("it answered another request"));
        }
        match (reply.pid, reply.error) {
            (Some(pid), None) if pid > 1 && pid != self.pid => {
                let exit = children::watch(pid, &starting);
                Ok(Forked {
                    pid,
                    exit,
                    io: ends.ours,
                })
            }
            (_, Some(error)) => Err(io::Error::other(error)),
            _ => Err(io::Error::other("it named no pid")),
        }
    }
}

/// Receives one message from a zygote; its end is an error.
async fn receive(link: &AsyncFd<OwnedFd>) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 4096];
    loop {
        let mut ready = link.readable().await?;
        match ready.try_io(|fd| {
            socket::recv(fd.get_ref().as_raw_fd(), &mut buf, MsgFlags::empty())
                .map_err(io::Error::from)
        }) {
            Ok(Ok(0)) => return Err(io::Error::other("it closed its socket")),
            Ok(Ok(n)) => {
                buf.truncate(n);
                return Ok(buf);
            }
            Ok(Err(err)) => return Err(err),
            Err(_would_block) => continue,
        }
    }
}
