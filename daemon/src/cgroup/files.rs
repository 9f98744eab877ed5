//! Reading and writing a cgroup's interface files, and waiting for a cgroup to empty.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// Writes `value` to the interface file `name` of cgroup `dir` in one write, as the
/// kernel wants.
pub fn write(dir: &Path, name: &str, value: &str) -> io::Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join(name))?;
    file.write_all(value.as_bytes())
}

/// The contents of interface file `name` of cgroup `dir`.
pub fn read(dir: &Path, name: &str) -> io::Result<String> {
    std::fs::read_to_string(dir.join(name))
}

/// The value of `key` in a flat-keyed file such as `cpu.stat` (`usage_usec 1234`).
pub fn keyed(dir: &Path, name: &str, key: &str) -> Option<u64> {
    read(dir, name).ok()?.lines().find_map(|line| {
        let (k, v) = line.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok())?
    })
}

/// A single number, such as `memory.peak`.
pub fn number(dir: &Path, name: &str) -> Option<u64> {
    read(dir, name).ok()?.trim().parse().ok()
}

/// Whether the v2 cgroup `dir` has no live process left, as its `cgroup.events` says.
fn is_empty(events: &File) -> io::Result<bool> {
    let mut buf = [0u8; 256];
    let n = events.read_at(&mut buf, 0)?;
    let text = String::from_utf8_lossy(&buf[..n]);
    Ok(text.lines().any(|line| line.trim() == "populated 0"))
}

/// Waits until the v2 cgroup `dir` is empty, at most `within`; says whether it is. The
/// kernel wakes a `poll` for `POLLPRI` on `cgroup.events` whenever the file changes, so
/// this sleeps until the last process has gone. Blocking: run it off the async threads.
pub fn wait_empty(dir: &Path, within: Duration) -> io::Result<bool> {
    let events = File::open(dir.join("cgroup.events"))?;
    let deadline = Instant::now() + within;
    loop {
        // Reading after each wake-up re-arms the notification.
        if is_empty(&events)? {
            return Ok(true);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(false);
        }
        let mut poll = libc::pollfd {
            fd: events.as_raw_fd(),
            events: libc::POLLPRI,
            revents: 0,
        };
        let millis = i32::try_from(left.as_millis().max(1)).unwrap_or(i32::MAX);
        // SAFETY: one valid pollfd for the duration of the call.
        let ready = unsafe { libc::poll(&mut poll, 1, millis) };
        if ready < 0 {
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

/// Removes cgroup `dir` (which must be empty of processes), and any child cgroups below
/// it, deepest first. A cgroup that is already gone is not an error.
pub fn remove(dir: &Path) -> io::Result<()> {
    if let Ok(entries) = std::fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                remove(&entry.path())?;
            }
        }
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}
