//! The state directory: oetd's claim on it and the clean-up of what it left there.
//!
//! One oetd serves one state directory. [`StateDir::claim`] checks that nobody but
//! oetd's user can write to it and takes an exclusive `flock` on `oetd.lock` inside it
//! before anything else there is touched, so a second oetd pointed at the same directory
//! exits at once — naming the first one's PID — and changes nothing. The lock is the
//! kernel's: it ends with the process that holds it, however that ends.
//!
//! Start-up clean-up goes through [`open_own_dir`] and [`remove_own_entries`]: a
//! directory oetd keeps its files in must be a real directory (never a symbolic link,
//! which is refused with an error naming it), and inside it only entries with names
//! oetd gives are removed, walked by descriptor without following any link.

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{fcntl, openat, FcntlArg, OFlag};
use nix::sys::stat::{fstatat, mkdirat, Mode, SFlag};
use nix::unistd::{unlinkat, UnlinkatFlags};

/// The lock file in the state directory; it holds the PID of the oetd that owns it.
pub const LOCK_FILE: &str = "oetd.lock";

/// Why oetd cannot use its state directory, or a directory of its own in it.
#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error("cannot create state directory {}: {source}", path.display())]
    Create { path: PathBuf, source: io::Error },
    #[error("cannot use state directory {}: {source}", path.display())]
    Inspect { path: PathBuf, source: io::Error },
    #[error("state directory {} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error(
        "state directory {} is owned by uid {owner}, not by oetd's uid {uid}; \
         chown it to oetd's user",
        path.display()
    )]
    NotOwned { path: PathBuf, owner: u32, uid: u32 },
    #[error(
        "state directory {} is writable by others (mode {mode:o}); \
         make it writable only by oetd's user, e.g. chmod go-w",
        path.display()
    )]
    Writable { path: PathBuf, mode: u32 },
    #[error("state directory {} is in use by oetd PID {pid}", path.display())]
    InUse { path: PathBuf, pid: String },
    #[error("cannot lock state directory {}: {source}", path.display())]
    Lock { path: PathBuf, source: io::Error },
    #[error(
        "{} is a symbolic link; oetd keeps files of its own there and does not follow \
         links in its directories: replace it by a directory",
        path.display()
    )]
    Link { path: PathBuf },
    #[error("cannot clean up {}: {source}", path.display())]
    Clean { path: PathBuf, source: io::Error },
}

/// oetd's claim on its state directory, held for the daemon's life.
#[derive(Debug)]
pub struct StateDir {
    path: PathBuf,
    /// Holds the lock while it is open.
    _lock: File,
}

impl StateDir {
    /// Creates the directory if needed, checks that only oetd's user can write to it,
    /// and locks it; a directory that another oetd has locked is refused with that
    /// oetd's PID, changing nothing.
    pub fn claim(path: &Path) -> Result<StateDir, StateDirError> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(path)
            .map_err(|source| StateDirError::Create {
                path: path.to_owned(),
                source,
            })?;
        check_private(path)?;
        let lock_path = path.join(LOCK_FILE);
        let lock_error = |source: io::Error| StateDirError::Lock {
            path: path.to_owned(),
            source,
        };
        let lock = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&lock_path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::ELOOP) => StateDirError::Link {
                    path: lock_path.clone(),
                },
                _ => lock_error(e),
            })?;
        let mut lock = lock;
        if !lock_exclusive(&lock).map_err(lock_error)? {
            let mut holder = String::new();
            let _ = lock.read_to_string(&mut holder);
            let pid = holder.trim();
            return Err(StateDirError::InUse {
                path: path.to_owned(),
                pid: if pid.is_empty() || pid.len() > 20 {
                    "(unknown)".to_owned()
                } else {
                    pid.to_owned()
                },
            });
        }
        lock.set_len(0)
            .and_then(|()| lock.rewind())
            .and_then(|()| writeln!(lock, "{}", std::process::id()))
            .map_err(lock_error)?;
        Ok(StateDir {
            path: path.to_owned(),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Takes an exclusive POSIX record lock on the whole of `file`, if no other process holds
/// one; says whether it did. Unlike an `flock`, which belongs to the open file and so to
/// every process sharing it, this lock belongs to this process alone: a child forked to
/// run a script, which has a copy of the descriptor until it execs, does not hold it too,
/// so the lock goes the moment oetd does. (The price: closing any descriptor of the lock
/// file in oetd would let the lock go, so nothing else in oetd opens it.)
fn lock_exclusive(file: &File) -> io::Result<bool> {
    let whole = libc::flock {
        l_type: libc::F_WRLCK as libc::c_short,
        l_whence: libc::SEEK_SET as libc::c_short,
        l_start: 0,
        l_len: 0,
        l_pid: 0,
    };
    match fcntl(file.as_raw_fd(), FcntlArg::F_SETLK(&whole)) {
        Ok(_) => Ok(true),
        Err(Errno::EAGAIN | Errno::EACCES) => Ok(false),
        Err(err) => Err(err.into()),
    }
}

/// The state directory must belong to oetd's user and be writable by nobody else, as
/// scripts' SBD files, environments and the ODA's documents live there.
fn check_private(path: &Path) -> Result<(), StateDirError> {
    let meta = std::fs::metadata(path).map_err(|source| StateDirError::Inspect {
        path: path.to_owned(),
        source,
    })?;
    if !meta.is_dir() {
        return Err(StateDirError::NotADirectory {
            path: path.to_owned(),
        });
    }
    let uid = nix::unistd::geteuid().as_raw();
    if meta.uid() != uid {
        return Err(StateDirError::NotOwned {
            path: path.to_owned(),
            owner: meta.uid(),
            uid,
        });
    }
    if meta.mode() & 0o022 != 0 {
        return Err(StateDirError::Writable {
            path: path.to_owned(),
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(())
}

/// A directory oetd keeps files of its own in, opened without following a link.
#[derive(Debug)]
pub struct OwnDir {
    path: PathBuf,
    fd: OwnedFd,
}

/// Opens (creating with `mode` if missing) `path`, whose parent is already oetd's,
/// refusing it if it is a symbolic link.
pub fn open_own_dir(path: &Path, mode: u32) -> Result<OwnDir, StateDirError> {
    let clean_error = |source: io::Error| StateDirError::Clean {
        path: path.to_owned(),
        source,
    };
    let (parent, name) = match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) => (parent, name),
        _ => {
            return Err(clean_error(io::Error::other(
                "not a directory below another",
            )))
        }
    };
    let parent = File::open(if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    })
    .map_err(clean_error)?;
    match mkdirat(
        Some(parent.as_raw_fd()),
        name,
        Mode::from_bits_truncate(mode),
    ) {
        Ok(()) | Err(Errno::EEXIST) => {}
        Err(e) => return Err(clean_error(e.into())),
    }
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    match openat(Some(parent.as_raw_fd()), name, flags, Mode::empty()) {
        // SAFETY: openat just returned this descriptor and nothing else owns it.
        Ok(fd) => Ok(OwnDir {
            path: path.to_owned(),
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        }),
        // Linux says ENOTDIR, not ELOOP, for a link opened as a directory.
        Err(Errno::ELOOP | Errno::ENOTDIR) if is_link_at(&parent, name) => {
            Err(StateDirError::Link {
                path: path.to_owned(),
            })
        }
        Err(e) => Err(clean_error(e.into())),
    }
}

fn is_link_at(parent: &File, name: &std::ffi::OsStr) -> bool {
    fstatat(
        Some(parent.as_raw_fd()),
        name,
        nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW,
    )
    .is_ok_and(|st| SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFLNK)
}

/// What an entry of a directory is, without following a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    File,
    Dir,
    /// A symbolic link, a socket, a FIFO or a device.
    Other,
}

impl OwnDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Removes the entries whose name and kind `ours` accepts, each with everything
    /// below it. Links are removed as links, never followed. Returns the removed names.
    pub fn remove_own_entries(
        &self,
        ours: impl Fn(&str, EntryKind) -> bool,
    ) -> Result<Vec<String>, StateDirError> {
        let mut removed = Vec::new();
        for (name, kind) in self.entries()? {
            let Some(text) = name.to_str() else {
                continue;
            };
            if ours(text, kind) {
                remove_at(self.fd.as_raw_fd(), &name, kind).map_err(|source| {
                    StateDirError::Clean {
                        path: self.path.join(&name),
                        source,
                    }
                })?;
                removed.push(text.to_owned());
            }
        }
        Ok(removed)
    }

    /// The entries, by name and kind.
    fn entries(&self) -> Result<Vec<(std::ffi::OsString, EntryKind)>, StateDirError> {
        list_at(self.fd.as_raw_fd()).map_err(|source| StateDirError::Clean {
            path: self.path.clone(),
            source,
        })
    }
}

/// Shorthand for [`open_own_dir`] then [`OwnDir::remove_own_entries`].
pub fn remove_own_entries(
    dir: &Path,
    mode: u32,
    ours: impl Fn(&str, EntryKind) -> bool,
) -> Result<Vec<String>, StateDirError> {
    open_own_dir(dir, mode)?.remove_own_entries(ours)
}

fn kind_of(mode: u32) -> EntryKind {
    match SFlag::from_bits_truncate(mode) & SFlag::S_IFMT {
        SFlag::S_IFDIR => EntryKind::Dir,
        SFlag::S_IFREG => EntryKind::File,
        _ => EntryKind::Other,
    }
}

/// The entries of the directory open as `dir` (which stays open), by name and kind.
fn list_at(dir: i32) -> io::Result<Vec<(std::ffi::OsString, EntryKind)>> {
    use std::os::unix::ffi::OsStrExt;
    // A descriptor of its own for the listing, which closes it.
    let listing = openat(
        Some(dir),
        ".",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?;
    let mut listing = nix::dir::Dir::from_fd(listing)?;
    let mut found = Vec::new();
    for entry in listing.iter() {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let name = std::ffi::OsStr::from_bytes(name).to_owned();
        let flags = nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW;
        match fstatat(Some(dir), name.as_os_str(), flags) {
            Ok(stat) => found.push((name, kind_of(stat.st_mode))),
            // Gone since it was listed.
            Err(Errno::ENOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(found)
}

/// Removes `name` in the directory open as `parent`, a directory with everything in it,
/// descending by descriptor without following links. What is already gone (removed by
/// oetd itself meanwhile, as an evicted checkout may be) is not an error.
fn remove_at(parent: i32, name: &std::ffi::OsStr, kind: EntryKind) -> io::Result<()> {
    match remove_tree_at(parent, name, kind) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn remove_tree_at(parent: i32, name: &std::ffi::OsStr, kind: EntryKind) -> io::Result<()> {
    if kind == EntryKind::Dir {
        let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
        let fd = openat(Some(parent), name, flags, Mode::empty())?;
        // SAFETY: openat just returned this descriptor and nothing else owns it.
        let dir = unsafe { OwnedFd::from_raw_fd(fd) };
        for (child, kind) in list_at(dir.as_raw_fd())? {
            remove_at(dir.as_raw_fd(), &child, kind)?;
        }
        drop(dir);
        unlinkat(Some(parent), name, UnlinkatFlags::RemoveDir)?;
    } else {
        unlinkat(Some(parent), name, UnlinkatFlags::NoRemoveDir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether another process can take the lock on `file` now.
    fn free_for_another_process(file: &Path) -> bool {
        let probe = "import fcntl, sys\n\
                     f = open(sys.argv[1], 'r+')\n\
                     try:\n    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\n\
                     except OSError:\n    sys.exit(3)\n";
        let status = std::process::Command::new("python3")
            .args(["-c", probe])
            .arg(file)
            .status()
            .expect("python3 runs");
        match status.code() {
            Some(0) => true,
            Some(3) => false,
            other => panic!("the lock probe failed: {other:?}"),
        }
    }

    #[test]
    fn a_claim_locks_the_directory_for_its_process_alone_and_names_it() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let state = tmp.path().join("state");
        let first = StateDir::claim(&state).expect("first claim");
        let lock = state.join(LOCK_FILE);
        assert!(
            !free_for_another_process(&lock),
            "another process could take the lock"
        );
        drop(first);
        assert!(
            free_for_another_process(&lock),
            "the lock outlived its holder"
        );
        // (Read only now: opening the file in the locking process would let the lock go.)
        let pid = std::fs::read_to_string(&lock).expect("lock file");
        assert_eq!(pid.trim(), std::process::id().to_string());
    }

    #[test]
    fn a_forked_child_does_not_hold_the_lock() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let state = tmp.path().join("state");
        let claim = StateDir::claim(&state).expect("claim");
        // A child that has the descriptor (as one forked to run a script has until it
        // execs) and keeps running after the claim is given up.
        let mut child = std::process::Command::new("sleep");
        child.arg("30");
        // SAFETY: dup2 and fcntl are async-signal-safe; they run between fork and exec.
        let fd = claim._lock.as_raw_fd();
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut child, move || {
                if libc::dup2(fd, 9) < 0 || libc::fcntl(9, libc::F_SETFD, 0) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = child.spawn().expect("sleep");
        drop(claim);
        let free = free_for_another_process(&state.join(LOCK_FILE));
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            free,
            "a child holding the descriptor kept the state directory locked"
        );
    }

    #[test]
    fn a_directory_others_can_write_to_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().expect("tempdir");
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o775))
            .expect("chmod");
        let err = StateDir::claim(tmp.path()).expect_err("group-writable");
        assert!(err.to_string().contains("writable by others"), "{err}");
        assert!(!tmp.path().join(LOCK_FILE).exists());
    }

    #[test]
    fn clean_up_removes_only_accepted_names_and_follows_no_link() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(outside.join("deep")).expect("mkdir");
        std::fs::write(outside.join("deep/keep"), "x").expect("write");
        let dir = tmp.path().join("own");
        std::fs::create_dir_all(dir.join("tmp-1/sub")).expect("mkdir");
        std::fs::write(dir.join("tmp-1/sub/file"), "x").expect("write");
        std::os::unix::fs::symlink(&outside, dir.join("tmp-1/sub/link")).expect("link");
        std::os::unix::fs::symlink(&outside, dir.join("tmp-2")).expect("link");
        std::fs::write(dir.join("keep.txt"), "x").expect("write");

        let mut removed =
            remove_own_entries(&dir, 0o700, |name, _| name.starts_with("tmp-")).expect("clean");
        removed.sort();
        assert_eq!(removed, ["tmp-1", "tmp-2"]);
        assert!(dir.join("keep.txt").exists());
        assert!(outside.join("deep/keep").exists(), "a link was followed");

        let link = tmp.path().join("link");
        std::os::unix::fs::symlink(&outside, &link).expect("link");
        let err = remove_own_entries(&link, 0o700, |_, _| true).expect_err("a link");
        assert!(err.to_string().contains("is a symbolic link"), "{err}");
        assert!(outside.join("deep/keep").exists());
    }
}
