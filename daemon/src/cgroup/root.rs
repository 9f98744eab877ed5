//! Where oetd makes its procedures' cgroups, decided once at start-up.
//!
//! - Under systemd (oetd is a service's main process), the unit's cgroup must be
//!   delegated (`Delegate=yes`). oetd moves itself into the leaf `daemon` below it, so
//!   the unit's cgroup holds no process and can hand controllers down, and makes
//!   `procedure-<id>` beside that leaf.
//! - Elsewhere, oetd makes `oetd-<key>` below its own cgroup, `<key>` standing for its
//!   state directory (one oetd per state directory, so one per such cgroup), and the
//!   procedure cgroups in it. oetd itself stays where it was started. `oetd-<key>` exists
//!   while procedures do: made with the first, removed with the last (and by the guards
//!   of the last ones if oetd dies), so a killed oetd leaves nothing behind.
//!
//! Resource controllers come from the v2 hierarchy where it offers them, otherwise from
//! a v1 hierarchy of the same controller (hybrid hosts), in a cgroup of the same name.
//! Without a writable v2 hierarchy that has `cgroup.kill`, there is no cgroup
//! containment at all, and [`Containment::ProcessGroups`] says why.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use oet_protocol::ResourceLimits;

use super::files;
use super::hierarchy::{Controller, Places};
use super::procedure::{self, CgroupError, ProcedureCgroup};

/// The leaf oetd moves itself into below a delegated unit cgroup.
const DAEMON_LEAF: &str = "daemon";

/// How the processes of procedures are kept together.
#[derive(Debug, Clone)]
pub enum Containment {
    /// A cgroup per procedure, under this root.
    Cgroups(Arc<CgroupRoot>),
    /// Process groups only; the text says why no cgroup can be used.
    ProcessGroups { reason: String },
}

/// The cgroup under which oetd makes its procedures' cgroups.
#[derive(Debug)]
pub struct CgroupRoot {
    dir: PathBuf,
    /// Resource controllers enabled for the procedures' v2 cgroups.
    v2: Vec<Controller>,
    /// Controllers v2 does not offer here, each from a v1 hierarchy: oetd's cgroup there.
    v1: Vec<(Controller, PathBuf)>,
    /// Whether oetd made `dir` (outside a systemd unit), and so removes it when no
    /// procedure cgroup is left in it.
    made: bool,
    /// Procedure cgroups made and not yet released.
    live: Mutex<u64>,
}

impl Containment {
    /// Finds the cgroup hierarchies and sets up oetd's part of them; where that cannot
    /// be done, says why. `state_dir` names oetd's root outside systemd.
    pub fn set_up(state_dir: &Path) -> Containment {
        match CgroupRoot::set_up(state_dir) {
            Ok(root) => Containment::Cgroups(Arc::new(root)),
            Err(reason) => Containment::ProcessGroups { reason },
        }
    }

    /// What `oetctl status` shows.
    pub fn to_wire(&self) -> oet_protocol::Containment {
        match self {
            Containment::Cgroups(root) => oet_protocol::Containment::Cgroup {
                root: root.dir.display().to_string(),
                controllers: root.controllers(),
            },
            Containment::ProcessGroups { reason } => oet_protocol::Containment::ProcessGroup {
                reason: reason.clone(),
            },
        }
    }

    /// The root, when procedures get cgroups.
    pub fn root(&self) -> Option<&Arc<CgroupRoot>> {
        match self {
            Containment::Cgroups(root) => Some(root),
            Containment::ProcessGroups { .. } => None,
        }
    }
}

impl CgroupRoot {
    fn set_up(state_dir: &Path) -> Result<CgroupRoot, String> {
        let places = Places::own().map_err(|e| format!("cannot read /proc/self: {e}"))?;
        let own = places.v2.clone().ok_or_else(|| {
            "no cgroup v2 hierarchy that shows oetd's own cgroup is mounted".to_owned()
        })?;
        let unit = is_service_main_process(&places);
        let (dir, made) = if unit {
            check_delegated(&own)?;
            let leaf = own.join(DAEMON_LEAF);
            mkdir(&leaf).map_err(|e| format!("cannot create cgroup {}: {e}", leaf.display()))?;
            files::write(&leaf, "cgroup.procs", "0")
                .map_err(|e| format!("cannot move oetd into cgroup {}: {e}", leaf.display()))?;
            (own, false)
        } else {
            let dir = own.join(format!("oetd-{}", key(state_dir)));
            mkdir(&dir).map_err(|e| format!("cannot create cgroup {}: {e}", dir.display()))?;
            (dir, true)
        };
        if !dir.join("cgroup.kill").exists() {
            if made {
                let _ = std::fs::remove_dir(&dir);
            }
            return Err(format!(
                "cgroup {} has no cgroup.kill (it needs Linux 5.14 or later)",
                dir.display()
            ));
        }
        let offered = files::read(&dir, "cgroup.controllers").unwrap_or_default();
        let v2: Vec<Controller> = Controller::ALL
            .into_iter()
            .filter(|c| offered.split_whitespace().any(|o| o == c.name()))
            .filter(|c| {
                files::write(&dir, "cgroup.subtree_control", &format!("+{}", c.name())).is_ok()
            })
            .collect();
        let v1 = places
            .v1
            .iter()
            .filter(|(c, _)| !v2.contains(c))
            .filter_map(|(c, own_v1)| {
                let dir = if unit {
                    own_v1.clone()
                } else {
                    own_v1.join(format!("oetd-{}", key(state_dir)))
                };
                let usable = if unit {
                    writable(&dir)
                } else {
                    mkdir(&dir).is_ok()
                };
                usable.then_some((*c, dir))
            })
            .collect();
        let root = CgroupRoot {
            dir,
            v2,
            v1,
            made,
            live: Mutex::new(0),
        };
        root.remove_unused();
        Ok(root)
    }

    /// The directory procedure cgroups are made in (v2).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// oetd's cgroups in the v1 hierarchies, where cgroups of the same names as in `dir`
    /// are made for controllers v2 lacks.
    pub fn v1_dirs(&self) -> Vec<PathBuf> {
        self.v1.iter().map(|(_, dir)| dir.clone()).collect()
    }

    /// The resource controllers procedures get, e.g. `memory` or `pids (v1)`.
    pub fn controllers(&self) -> Vec<String> {
        let mut all: Vec<(Controller, String)> = self
            .v2
            .iter()
            .map(|c| (*c, c.name().to_owned()))
            .chain(
                self.v1
                    .iter()
                    .map(|(c, _)| (*c, format!("{} (v1)", c.name()))),
            )
            .collect();
        all.sort();
        all.into_iter().map(|(_, name)| name).collect()
    }

    /// Whether procedures can be limited by `controller`.
    pub fn has(&self, controller: Controller) -> bool {
        self.v2.contains(&controller) || self.v1.iter().any(|(c, _)| *c == controller)
    }

    /// Makes procedure `id`'s cgroup with the `wanted` limits (those whose controller is
    /// missing here are left out of it). Hand it back to [`CgroupRoot::release`].
    pub fn procedure(
        &self,
        id: u64,
        wanted: &ResourceLimits,
    ) -> Result<ProcedureCgroup, CgroupError> {
        self.make(&procedure::name(id), wanted)
    }

    /// Makes a cgroup for one of oetd's helpers (a zygote), `name` beside the
    /// procedures' and without limits: so it is contained, killed as one, and killed by
    /// the next start-up if oetd dies. Hand it back to [`CgroupRoot::release`].
    pub fn helper(&self, name: &str) -> Result<ProcedureCgroup, CgroupError> {
        self.make(name, &ResourceLimits::default())
    }

    fn make(&self, name: &str, wanted: &ResourceLimits) -> Result<ProcedureCgroup, CgroupError> {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if self.made {
            self.make_root();
        }
        let made = ProcedureCgroup::create(&self.dir, &self.v2, &self.v1, name, wanted);
        if made.is_ok() {
            *live += 1;
        } else if *live == 0 {
            self.remove_root();
        }
        made
    }

    /// Removes a procedure's cgroup (empty of processes by now), and the root with the
    /// last one where oetd made it.
    pub fn release(&self, cgroup: &ProcedureCgroup) {
        let mut live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        cgroup.remove();
        *live = live.saturating_sub(1);
        if *live == 0 {
            self.remove_root();
        }
    }

    /// Makes the root (and oetd's v1 cgroups) with their controllers, if missing.
    fn make_root(&self) {
        if mkdir(&self.dir).is_ok() {
            for c in &self.v2 {
                let _ = files::write(
                    &self.dir,
                    "cgroup.subtree_control",
                    &format!("+{}", c.name()),
                );
            }
        }
        for (_, dir) in &self.v1 {
            let _ = mkdir(dir);
        }
    }

    /// Removes the root where oetd made it, if no procedure cgroup is in it.
    fn remove_unused(&self) {
        let live = self.live.lock().unwrap_or_else(PoisonError::into_inner);
        if *live == 0 {
            self.remove_root();
        }
    }

    fn remove_root(&self) {
        for dir in self.made_dirs() {
            let _ = std::fs::remove_dir(dir);
        }
    }

    /// Kills and removes every procedure (and zygote) cgroup left under the root — by an
    /// oetd that died, so its guard could not finish — and returns the procedures' IDs.
    /// Waits at most `within` for each to empty. For start-up, before procedures are made.
    pub fn kill_leftovers(&self, within: Duration) -> Vec<u64> {
        let mut ids = Vec::new();
        for (dir, id) in leftovers(&self.dir) {
            let _ = files::write(&dir, "cgroup.kill", "1");
            if !files::wait_empty(&dir, within).unwrap_or(false) {
                tracing::warn!(
                    "processes of the leftover cgroup {} did not end after cgroup.kill",
                    dir.display()
                );
            }
            if let Err(err) = files::remove(&dir) {
                tracing::warn!("cannot remove leftover cgroup {}: {err}", dir.display());
            }
            ids.extend(id);
        }
        for (_, root) in &self.v1 {
            for (dir, id) in leftovers(root) {
                let _ = files::remove(&dir);
                if let Some(id) = id.filter(|id| !ids.contains(id)) {
                    ids.push(id);
                }
            }
        }
        ids.sort_unstable();
        self.remove_unused();
        ids
    }

    /// The cgroups oetd made for its root (none under systemd, where the unit's cgroup
    /// is the root): a guard removes them, once empty, when oetd died.
    pub fn made_dirs(&self) -> Vec<PathBuf> {
        if !self.made {
            return Vec::new();
        }
        std::iter::once(self.dir.clone())
            .chain(self.v1.iter().map(|(_, dir)| dir.clone()))
            .collect()
    }
}

/// The procedure cgroups in `dir`, with their procedures' IDs, and zygotes' cgroups.
fn leftovers(dir: &Path) -> Vec<(PathBuf, Option<u64>)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let name = e.file_name();
            let name = name.to_str()?;
            match procedure::id_of(name) {
                Some(id) => Some((e.path(), Some(id))),
                None => name.starts_with("zygote-").then(|| (e.path(), None)),
            }
        })
        .collect()
}

/// Whether oetd is the main process of a systemd service: only then is the cgroup it
/// was started in its own to divide.
fn is_service_main_process(places: &Places) -> bool {
    let exec_pid = std::env::var("SYSTEMD_EXEC_PID")
        .ok()
        .and_then(|pid| pid.parse::<u32>().ok());
    exec_pid == Some(std::process::id())
        && places
            .v2_path
            .as_deref()
            .is_some_and(|path| path.ends_with(".service"))
}

/// A unit's cgroup is oetd's to divide only with `Delegate=yes`: systemd then hands its
/// user the cgroup's files and marks it with the `trusted.delegate` attribute.
fn check_delegated(own: &Path) -> Result<(), String> {
    let refused = || {
        format!(
            "oetd's cgroup {} is not delegated to it; give the unit Delegate=yes",
            own.display()
        )
    };
    if nix::unistd::geteuid().is_root() {
        if delegate_mark(own) == Some(false) {
            return Err(refused());
        }
    } else if !writable(own)
        || !writable(&own.join("cgroup.procs"))
        || !writable(&own.join("cgroup.subtree_control"))
    {
        return Err(refused());
    }
    Ok(())
}

/// systemd's mark on a delegated cgroup: `Some(false)` when the attribute is missing,
/// `None` when it cannot be read at all.
fn delegate_mark(dir: &Path) -> Option<bool> {
    let path = CString::new(dir.as_os_str().as_bytes()).ok()?;
    let mut value = [0u8; 8];
    // SAFETY: a NUL-terminated path and attribute name, and a buffer of the given size.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            c"trusted.delegate".as_ptr(),
            value.as_mut_ptr().cast(),
            value.len(),
        )
    };
    if n >= 0 {
        return Some(value.first() == Some(&b'1'));
    }
    match io::Error::last_os_error().raw_os_error() {
        Some(libc::ENODATA) => Some(false),
        _ => None,
    }
}

fn writable(path: &Path) -> bool {
    nix::unistd::access(path, nix::unistd::AccessFlags::W_OK).is_ok()
}

fn mkdir(dir: &Path) -> io::Result<()> {
    match std::fs::create_dir(dir) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

/// A short stable name for a state directory (FNV-1a of its path), so that oetd finds
/// its own cgroup again after a restart, and oetds of different state directories keep
/// apart.
fn key(state_dir: &Path) -> String {
    let path = std::fs::canonicalize(state_dir).unwrap_or_else(|_| state_dir.to_owned());
    let hash = path
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |hash, byte| {
            (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_directories_have_stable_distinct_keys() {
        let a = key(Path::new("/nonexistent/a"));
        assert_eq!(a, key(Path::new("/nonexistent/a")));
        assert_ne!(a, key(Path::new("/nonexistent/b")));
        assert_eq!(a.len(), 16);
    }
}
