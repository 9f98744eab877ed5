//! One procedure's cgroup: made with the procedure's limits before its worker starts,
//! joined by the worker between fork and exec (so nothing the script starts is ever
//! outside it), killed whole with `cgroup.kill`, measured, and removed once empty.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use oet_protocol::{ResourceLimits, ResourceUsage};

use super::files;
use super::hierarchy::Controller;

/// The period `cpu.max` quotas are given for, in microseconds (the kernel's default).
const CPU_PERIOD_USEC: u64 = 100_000;

/// Why a procedure's cgroup could not be made.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot create cgroup {}: {source}", path.display())]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot set {file} of cgroup {} to {value}: {source}", path.display())]
    Limit {
        path: PathBuf,
        file: &'static str,
        value: String,
        source: io::Error,
    },
}

/// Where a procedure's memory is measured and limited.
#[derive(Debug, Clone)]
enum MemoryAt {
    V2,
    V1(PathBuf),
}

/// A procedure's cgroup: its directory in the v2 hierarchy, and its cgroups in v1
/// hierarchies for the controllers v2 lacks here.
#[derive(Debug)]
pub struct ProcedureCgroup {
    dir: PathBuf,
    v1: Vec<PathBuf>,
    memory: Option<MemoryAt>,
    limits: ResourceLimits,
}

/// The name of procedure `id`'s cgroup in each hierarchy.
pub(super) fn name(id: u64) -> String {
    format!("procedure-{id}")
}

/// The procedure ID a cgroup name belongs to, if it is one of [`name`]'s.
pub(super) fn id_of(name: &str) -> Option<u64> {
    name.strip_prefix("procedure-")?.parse().ok()
}

/// Makes `dir`; a leftover of that name (from an oetd that died) is killed and made
/// anew, so that no stranger's process is counted as the procedure's.
fn make(dir: &Path, v2: bool) -> Result<(), CgroupError> {
    let create = |source| CgroupError::Create {
        path: dir.to_owned(),
        source,
    };
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
            if v2 {
                let _ = files::write(dir, "cgroup.kill", "1");
                let _ = files::wait_empty(dir, Duration::from_secs(5));
            }
            files::remove(dir).map_err(create)?;
            std::fs::create_dir(dir).map_err(create)
        }
        other => other.map_err(create),
    }
}

fn set(dir: &Path, file: &'static str, value: String) -> Result<(), CgroupError> {
    files::write(dir, file, &value).map_err(|source| CgroupError::Limit {
        path: dir.to_owned(),
        file,
        value,
        source,
    })
}

impl ProcedureCgroup {
    /// Makes the cgroup `name` under `root` (v2) and under `v1` roots (for the
    /// controllers v2 lacks), with the `wanted` limits where a controller for them is
    /// available. The cgroup's limits record what was applied.
    pub(super) fn create(
        root: &Path,
        v2: &[Controller],
        v1: &[(Controller, PathBuf)],
        name: &str,
        wanted: &ResourceLimits,
    ) -> Result<ProcedureCgroup, CgroupError> {
        let dir = root.join(name);
        make(&dir, true)?;
        let mut cgroup = ProcedureCgroup {
            dir,
            v1: Vec::new(),
            memory: None,
            limits: ResourceLimits::default(),
        };
        // Whatever goes wrong from here, what was made goes with `cgroup`.
        match cgroup.apply(v2, v1, name, wanted) {
            Ok(()) => Ok(cgroup),
            Err(err) => {
                cgroup.remove();
                Err(err)
            }
        }
    }

    fn apply(
        &mut self,
        v2: &[Controller],
        v1: &[(Controller, PathBuf)],
        name: &str,
        wanted: &ResourceLimits,
    ) -> Result<(), CgroupError> {
        let quota = wanted
            .cpu_max
            .map(|cpus| ((cpus * CPU_PERIOD_USEC as f64) as u64).max(1000));
        for controller in Controller::ALL {
            let dir = if v2.contains(&controller) {
                self.dir.clone()
            } else if let Some((_, root)) = v1.iter().find(|(c, _)| *c == controller) {
                // In v1, a cgroup is made only where it is needed: memory always (to
                // measure it), the others for a limit.
                let needed = match controller {
                    Controller::Memory => true,
                    Controller::Pids => wanted.pids_max.is_some(),
                    Controller::Cpu => quota.is_some(),
                };
                if !needed {
                    continue;
                }
                let dir = root.join(name);
                make(&dir, false)?;
                self.v1.push(dir.clone());
                dir
            } else {
                continue;
            };
            let is_v2 = dir == self.dir;
            match controller {
                Controller::Memory => {
                    if let Some(bytes) = wanted.memory_max_bytes {
                        let file = if is_v2 {
                            "memory.max"
                        } else {
                            "memory.limit_in_bytes"
                        };
                        set(&dir, file, bytes.to_string())?;
                        self.limits.memory_max_bytes = Some(bytes);
                    }
                    if is_v2 {
                        // An out-of-memory kill takes the whole procedure, not a part.
                        set(&dir, "memory.oom.group", "1".into())?;
                    }
                    self.memory = Some(if is_v2 {
                        MemoryAt::V2
                    } else {
                        MemoryAt::V1(dir)
                    });
                }
                Controller::Pids => {
                    if let Some(pids) = wanted.pids_max {
                        set(&dir, "pids.max", pids.to_string())?;
                        self.limits.pids_max = Some(pids);
                    }
                }
                Controller::Cpu => {
                    if let Some(quota) = quota {
                        if is_v2 {
                            set(&dir, "cpu.max", format!("{quota} {CPU_PERIOD_USEC}"))?;
                        } else {
                            set(&dir, "cpu.cfs_period_us", CPU_PERIOD_USEC.to_string())?;
                            set(&dir, "cpu.cfs_quota_us", quota.to_string())?;
                        }
                        self.limits.cpu_max = wanted.cpu_max;
                    }
                }
            }
        }
        Ok(())
    }

    /// The cgroup's directory in the v2 hierarchy.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The cgroup's name, the same in every hierarchy.
    pub fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|name| name.to_string_lossy().into_owned())
            .unwrap_or_default()
    }

    /// Every directory of the cgroup, the v2 one first.
    pub fn dirs(&self) -> impl Iterator<Item = &Path> {
        std::iter::once(self.dir.as_path()).chain(self.v1.iter().map(PathBuf::as_path))
    }

    /// The limits the cgroup was given.
    pub fn limits(&self) -> &ResourceLimits {
        &self.limits
    }

    /// The cgroup's `cgroup.procs` files, opened now, so that a child can join the
    /// cgroup between fork and exec (see [`join`]).
    pub fn membership(&self) -> io::Result<Membership> {
        let procs = self
            .dirs()
            .map(|dir| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join("cgroup.procs"))
                    .map(OwnedFd::from)
            })
            .collect::<io::Result<_>>()?;
        Ok(Membership { procs })
    }

    /// Puts process `pid` (with all its threads) into the cgroup. A process that
    /// already runs may have started others that stay outside: spawn through
    /// [`Membership`] where the child is made.
    pub fn add(&self, pid: u32) -> io::Result<()> {
        for dir in self.dirs() {
            files::write(dir, "cgroup.procs", &pid.to_string())?;
        }
        Ok(())
    }

    /// SIGKILLs every process in the cgroup at once, whatever its process group or
    /// session.
    pub fn kill(&self) {
        if let Err(err) = files::write(&self.dir, "cgroup.kill", "1") {
            if err.kind() != io::ErrorKind::NotFound {
                tracing::warn!("cannot kill cgroup {}: {err}", self.dir.display());
            }
        }
    }

    /// Waits (blocking, at most `within`) until no process is left; says whether none is.
    pub fn wait_empty(&self, within: Duration) -> bool {
        match files::wait_empty(&self.dir, within) {
            Ok(empty) => empty,
            // A cgroup that is gone has no process.
            Err(err) if err.kind() == io::ErrorKind::NotFound => true,
            Err(err) => {
                tracing::warn!("cannot watch cgroup {}: {err}", self.dir.display());
                false
            }
        }
    }

    /// What the cgroup measured of its processes so far.
    pub fn usage(&self) -> ResourceUsage {
        let peak = match &self.memory {
            Some(MemoryAt::V2) => files::number(&self.dir, "memory.peak"),
            Some(MemoryAt::V1(dir)) => files::number(dir, "memory.max_usage_in_bytes"),
            None => None,
        };
        ResourceUsage {
            peak_memory_bytes: peak,
            cpu_secs: files::keyed(&self.dir, "cpu.stat", "usage_usec")
                .map(|usec| usec as f64 / 1e6),
            limits: self.limits.clone(),
        }
    }

    /// How many of its processes the kernel's out-of-memory killer ended.
    pub fn oom_kills(&self) -> u64 {
        match &self.memory {
            Some(MemoryAt::V2) => files::keyed(&self.dir, "memory.events", "oom_kill"),
            Some(MemoryAt::V1(dir)) => files::keyed(dir, "memory.oom_control", "oom_kill"),
            None => None,
        }
        .unwrap_or(0)
    }

    /// Removes the cgroup's directories; they must be empty of processes. What cannot
    /// be removed is logged (and left to the next start-up's clean-up).
    pub fn remove(&self) {
        for dir in self.dirs() {
            if let Err(err) = files::remove(dir) {
                tracing::warn!("cannot remove cgroup {}: {err}", dir.display());
            }
        }
    }
}

/// A procedure's `cgroup.procs` files, open, for a child to join them.
pub struct Membership {
    procs: Vec<OwnedFd>,
}

impl Membership {
    /// The descriptors to hand to [`join`] in the child; they stay open as long as this.
    pub fn fds(&self) -> Vec<RawFd> {
        self.procs.iter().map(AsRawFd::as_raw_fd).collect()
    }
}

/// Moves the calling process into the cgroups whose `cgroup.procs` files are open as
/// `fds`. Made to run in a child between fork and exec: it only calls `write`, which is
/// async-signal-safe, and allocates nothing.
pub fn join(fds: &[RawFd]) -> io::Result<()> {
    for fd in fds {
        // "0" names the writing process itself.
        // SAFETY: writing one byte from a static buffer to a descriptor number.
        if unsafe { libc::write(*fd, b"0".as_ptr().cast(), 1) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn procedure_cgroups_are_named_by_id() {
        assert_eq!(name(12), "procedure-12");
        assert_eq!(id_of("procedure-12"), Some(12));
        assert_eq!(id_of("procedure-x"), None);
        assert_eq!(id_of("daemon"), None);
    }
}
