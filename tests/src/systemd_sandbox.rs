//! A real systemd (PID 1) and journald booted in private pid/mount/uts/ipc/net/cgroup
//! namespaces, for end-to-end tests of the shipped units on a machine whose own PID 1 is
//! not systemd. Boots in a fraction of a second; torn down (SIGKILL of the namespace's
//! PID 1, removal of its cgroup) on drop.
//!
//! Two guards make it safe and are checked after every boot; the sandbox refuses to run
//! when either does not hold:
//! 1. systemd's unit path is ONLY the sandbox's own unit directory, which holds journald's
//!    units and empty stand-ins for the standard targets. Otherwise starting any unit with
//!    default dependencies would pull in the host's `sysinit.target`, whose
//!    `systemd-tmpfiles-setup` empties the machine's real `/tmp`.
//! 2. Every host mount is read-only inside. Only the sandbox directory is bound writable;
//!    `/tmp`, `/run`, `/dev`, `/var/{lib,cache,log,tmp}` are private tmpfs.
//!
//! Files that units expect at fixed paths (`/usr/bin/oetd`, `/etc/oet/oetd.toml`, the
//! `oet` user in `/etc/passwd`) are staged before boot with [`SandboxBuilder`] and appear
//! inside through read-only overlays of the host's directories.
//!
//! Create and drop a [`Sandbox`] on one thread: its processes die with that thread (so a
//! killed test run leaves no systemd behind).

use std::fs;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

const INNER: &str = include_str!("sandbox_inner.sh");
const SYSTEMD: &str = "/lib/systemd/systemd";
const BOOT_TIMEOUT: Duration = Duration::from_secs(30);
const EXITED: &str = "X_SANDBOX_EXITED=1";
const STUB_TARGETS: &[&str] = &[
    "basic",
    "local-fs",
    "multi-user",
    "network-online",
    "network-pre",
    "network",
    "nss-lookup",
    "paths",
    "remote-fs",
    "shutdown",
    "slices",
    "sockets",
    "swap",
    "sysinit",
    "time-sync",
    "timers",
];
const JOURNALD_UNITS: &[&str] = &[
    "systemd-journald.service",
    "systemd-journald.socket",
    "systemd-journald-dev-log.socket",
];
/// Mount points that may be writable inside (besides the sandbox directory).
const WRITABLE_INSIDE: &[&str] = &[
    "/tmp",
    "/run",
    "/dev",
    "/var/lib",
    "/var/cache",
    "/var/log",
    "/var/tmp",
    "/sys/fs/cgroup",
    "/proc",
];

/// Why the sandbox cannot run on this machine, if it cannot; tests print it and return.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("the systemd sandbox needs root".into());
    }
    for tool in [
        "unshare",
        "nsenter",
        "systemctl",
        "journalctl",
        "bash",
        "mount",
    ] {
        if Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Some(format!("{tool} is not installed"));
        }
    }
    if !Path::new(SYSTEMD).exists() {
        return Some(format!("{SYSTEMD} is not installed"));
    }
    if cgroup2_mount().is_none() {
        return Some("no cgroup v2 hierarchy is mounted".into());
    }
    match fs::read_to_string("/proc/filesystems") {
        Ok(fss) if fss.lines().any(|l| l.ends_with("\toverlay")) => {}
        _ => return Some("the kernel offers no overlay filesystem".into()),
    }
    let probe = Command::new("unshare")
        .args([
            "--pid", "--fork", "--mount", "--uts", "--ipc", "--net", "--cgroup",
        ])
        .args(["--mount-proc", "true"])
        .output();
    match probe {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "cannot create namespaces: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run unshare: {e}")),
    }
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified`
/// on hybrid hosts).
pub fn cgroup2_mount() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        let point = left.split(' ').nth(4)?;
        (right.split(' ').next() == Some("cgroup2")).then(|| PathBuf::from(point))
    })
}

/// Prepares what the sandbox contains before it boots.
pub struct SandboxBuilder {
    dir: tempfile::TempDir,
    error: Option<io::Error>,
}

impl SandboxBuilder {
    /// A fresh sandbox directory under the system temp dir.
    pub fn new() -> io::Result<Self> {
        let dir = tempfile::Builder::new().prefix("oet-sandbox-").tempdir()?;
        Ok(Self { dir, error: None })
    }

    /// The sandbox directory: same path inside and outside, writable from both.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn record(&mut self, result: io::Result<()>) {
        if let (None, Err(e)) = (&self.error, result) {
            self.error = Some(e);
        }
    }

    fn staged(&self, inside: &str) -> io::Result<PathBuf> {
        let relative = inside.strip_prefix('/').filter(|r| r.contains('/'));
        let Some(relative) = relative else {
            return Err(io::Error::other(format!(
                "{inside}: stage files below a top-level directory, e.g. /usr/bin/x"
            )));
        };
        let top = Path::new("/").join(relative.split('/').next().unwrap_or_default());
        if !top.is_dir() {
            return Err(io::Error::other(format!(
                "{inside}: {} does not exist on the host, so it cannot be overlaid",
                top.display()
            )));
        }
        let path = self.dir.path().join("root").join(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        Ok(path)
    }

    /// Makes `contents` appear at the absolute path `inside` (read-only) with `mode`.
    pub fn file(mut self, inside: &str, contents: impl AsRef<[u8]>, mode: u32) -> Self {
        let result = self.staged(inside).and_then(|path| {
            fs::write(&path, contents)?;
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))
        });
        self.record(result);
        self
    }

    /// Makes the host file `source` appear at `inside`, e.g. a built `oetd` at `/usr/bin/oetd`.
    pub fn copy(mut self, source: &Path, inside: &str) -> Self {
        let result = self
            .staged(inside)
            .and_then(|path| fs::copy(source, path).map(drop));
        self.record(result);
        self
    }

    /// Makes the host directory `source`, with everything in it, appear at `inside`.
    pub fn copy_dir(mut self, source: &Path, inside: &str) -> Self {
        let result = self
            .staged(inside)
            .and_then(|path| copy_tree(source, &path));
        self.record(result);
        self
    }

    /// Applies a sysusers.d snippet (e.g. `systemd/sysusers.d/oet.conf`) on top of the
    /// host's users, so `User=` in the units resolves inside.
    pub fn sysusers(mut self, conf: &Path) -> Self {
        let result = (|| {
            let etc = self.staged("/etc/passwd")?;
            let etc = etc.parent().unwrap_or(Path::new("/"));
            for db in ["passwd", "group", "shadow", "gshadow"] {
                let host = Path::new("/etc").join(db);
                if host.exists() {
                    fs::copy(&host, etc.join(db))?;
                }
            }
            let out = Command::new("systemd-sysusers")
                .arg(format!("--root={}", self.dir.path().join("root").display()))
                .arg(conf)
                .output()?;
            check("systemd-sysusers", &out)
        })();
        self.record(result);
        self
    }

    /// Adds a unit file (it can also be added after boot with [`Sandbox::install_unit`]).
    pub fn unit(mut self, name: &str, contents: &str) -> Self {
        let result = fs::create_dir_all(self.dir.path().join("units"))
            .and_then(|()| fs::write(self.dir.path().join("units").join(name), contents));
        self.record(result);
        self
    }

    /// Boots systemd and journald and checks both guards.
    pub fn boot(self) -> io::Result<Sandbox> {
        if let Some(e) = self.error {
            return Err(e);
        }
        Sandbox::boot(self.dir)
    }
}

/// A running systemd in private namespaces. Dropping it kills everything inside.
pub struct Sandbox {
    dir: tempfile::TempDir,
    cgroup: PathBuf,
    unshare_pid: i32,
    ns_pid: Option<i32>,
    waiter: Option<JoinHandle<io::Result<ExitStatus>>>,
}

impl Sandbox {
    /// Boots an empty sandbox (journald only); shorthand for `SandboxBuilder::new()?.boot()`.
    pub fn boot_empty() -> io::Result<Self> {
        SandboxBuilder::new()?.boot()
    }

    fn boot(dir: tempfile::TempDir) -> io::Result<Self> {
        let dir_path = fs::canonicalize(dir.path())?;
        write_units(&dir_path.join("units"))?;
        write_machine_id(&dir_path)?;
        let inner = dir_path.join("inner.sh");
        fs::write(&inner, INNER)?;

        let cgroup_root =
            cgroup2_mount().ok_or_else(|| io::Error::other("no cgroup v2 hierarchy is mounted"))?;
        remove_stale_cgroups(&cgroup_root);
        static COUNT: AtomicUsize = AtomicUsize::new(0);
        let cgroup = cgroup_root.join(format!(
            "oet-sandbox-{}-{}",
            std::process::id(),
            COUNT.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir(&cgroup).map_err(|e| {
            io::Error::other(format!("cannot create cgroup {}: {e}", cgroup.display()))
        })?;
        let procs = fs::OpenOptions::new()
            .write(true)
            .open(cgroup.join("cgroup.procs"))?;

        let notify_path = dir_path.join("notify.sock");
        let notify = UnixDatagram::bind(&notify_path)?;
        let log = fs::File::create(dir_path.join("boot.log"))?;

        let mut cmd = Command::new("unshare");
        cmd.args([
            "--pid",
            "--fork",
            "--kill-child=SIGKILL",
            "--mount",
            "--uts",
            "--ipc",
        ])
        .args(["--net", "--cgroup", "--mount-proc", "bash"])
        .arg(&inner)
        .arg(&dir_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
        let procs_fd = procs.as_raw_fd();
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                libc::setsid();
                // The sandbox dies with the thread that started it (test killed → no leak).
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) < 0 {
                    return Err(io::Error::last_os_error());
                }
                // Move into the sandbox's cgroup, which the namespace then takes as its root.
                if libc::write(procs_fd, b"0\n".as_ptr().cast(), 2) < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                let _ = fs::remove_dir(&cgroup);
                return Err(e);
            }
        };
        drop(procs);
        let unshare_pid = child.id() as i32;
        let waiter = std::thread::spawn(move || {
            let status = child.wait();
            // Wakes up a boot that waits for READY=1 when the namespace died instead.
            if let Ok(socket) = UnixDatagram::unbound() {
                let _ = socket.send_to(EXITED.as_bytes(), &notify_path);
            }
            status
        });
        let mut sandbox = Sandbox {
            dir,
            cgroup,
            unshare_pid,
            ns_pid: None,
            waiter: Some(waiter),
        };
        sandbox.wait_until_booted(&notify)?;
        sandbox.ns_pid = Some(first_child(unshare_pid).ok_or_else(|| {
            io::Error::other("systemd reported READY=1 but the namespace's PID 1 is gone")
        })?);
        sandbox.check_guards()?;
        Ok(sandbox)
    }

    /// systemd (as a container's PID 1) sends READY=1 to `NOTIFY_SOCKET` once booted.
    fn wait_until_booted(&self, notify: &UnixDatagram) -> io::Result<()> {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let mut buf = [0u8; 4096];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(self.boot_failure("systemd did not report READY=1 in time"));
            }
            notify.set_read_timeout(Some(left))?;
            let n = match notify.recv(&mut buf) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) if e.kind() == io::ErrorKind::TimedOut => continue,
                Err(e) => return Err(e),
            };
            let message = String::from_utf8_lossy(&buf[..n]);
            if message.lines().any(|l| l == EXITED) {
                return Err(self.boot_failure("the sandbox's PID 1 exited during boot"));
            }
            if message.lines().any(|l| l == "READY=1") {
                return Ok(());
            }
        }
    }

    fn boot_failure(&self, what: &str) -> io::Error {
        let log = fs::read_to_string(self.dir.path().join("boot.log")).unwrap_or_default();
        io::Error::other(format!("{what}; boot log:\n{log}"))
    }

    fn check_guards(&self) -> io::Result<()> {
        let units = self.units_dir();
        let unit_path = self.systemctl_ok(&["show", "-P", "UnitPath"])?;
        if Path::new(unit_path.trim()) != units {
            return Err(io::Error::other(format!(
                "guard 1 failed: systemd's unit path is {:?}, not only {}",
                unit_path.trim(),
                units.display()
            )));
        }
        let pid = self.ns_pid.unwrap_or(0);
        let mountinfo = fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
        let dir = self.dir();
        for line in mountinfo.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let (Some(point), Some(options)) = (fields.get(4), fields.get(5)) else {
                continue;
            };
            let allowed = Path::new(point).starts_with(dir)
                || (WRITABLE_INSIDE
                    .iter()
                    .any(|w| Path::new(point).starts_with(w))
                    && !Path::new(point).starts_with("/proc/sys"));
            if !allowed && options.split(',').any(|o| o == "rw") {
                return Err(io::Error::other(format!(
                    "guard 2 failed: {point} is writable inside the sandbox"
                )));
            }
        }
        for probe in ["/.oet-sandbox-rw-test", "/usr/.oet-sandbox-rw-test"] {
            let out = self.exec("touch", &[probe])?;
            if out.status.success() {
                let _ = self.exec("rm", &["-f", probe]);
                return Err(io::Error::other(format!(
                    "guard 2 failed: {probe} could be created inside the sandbox"
                )));
            }
        }
        Ok(())
    }

    /// The sandbox directory: same path inside and outside, writable from both.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The only directory systemd loads units from.
    pub fn units_dir(&self) -> PathBuf {
        self.dir.path().join("units")
    }

    /// The PID (in the host's view) of the namespace's PID 1, systemd.
    pub fn ns_pid(&self) -> i32 {
        self.ns_pid.unwrap_or(0)
    }

    /// The host's path to `inside`, e.g. a socket under the sandbox's private `/run`.
    pub fn host_path(&self, inside: &str) -> PathBuf {
        PathBuf::from(format!(
            "/proc/{}/root/{}",
            self.ns_pid(),
            inside.trim_start_matches('/')
        ))
    }

    /// Writes a unit file and runs `systemctl daemon-reload`.
    pub fn install_unit(&self, name: &str, contents: &str) -> io::Result<()> {
        fs::write(self.units_dir().join(name), contents)?;
        self.systemctl_ok(&["daemon-reload"]).map(drop)
    }

    /// A command that runs `program` inside the sandbox's namespaces.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.ns_pid().to_string())
            .args([
                "--mount", "--pid", "--uts", "--ipc", "--net", "--cgroup", "--",
            ])
            .arg(program)
            .stdin(Stdio::null());
        cmd
    }

    /// Runs `program args` inside the sandbox and returns its output.
    pub fn exec(&self, program: &str, args: &[&str]) -> io::Result<Output> {
        self.command(program).args(args).output()
    }

    /// `systemctl args` inside the sandbox.
    pub fn systemctl(&self, args: &[&str]) -> io::Result<Output> {
        self.exec("systemctl", args)
    }

    /// `systemctl args`, its stdout, or an error carrying its stderr.
    pub fn systemctl_ok(&self, args: &[&str]) -> io::Result<String> {
        let out = self.systemctl(args)?;
        check(&format!("systemctl {}", args.join(" ")), &out)?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `journalctl --no-pager args` inside the sandbox.
    pub fn journalctl(&self, args: &[&str]) -> io::Result<Output> {
        self.command("journalctl")
            .arg("--no-pager")
            .args(args)
            .output()
    }

    /// Waits until `journalctl -f -o json args` shows an entry for which `wanted` is true
    /// and returns it; journald stores entries asynchronously, so reading once may be early.
    pub fn wait_for_journal_entry(
        &self,
        args: &[&str],
        wanted: impl Fn(&serde_json::Value) -> bool,
        timeout: Duration,
    ) -> io::Result<serde_json::Value> {
        let mut child = self
            .command("journalctl")
            .args(["--no-pager", "--follow", "--lines=all", "--output=json"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            // nsenter forks journalctl and does not pass signals on: kill the whole group.
            .process_group(0)
            .spawn()?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| io::Error::other("journalctl has no stdout"))?;
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in io::BufRead::lines(io::BufReader::new(stdout)) {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        let found = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    let entry: serde_json::Value = serde_json::from_str(&line).map_err(|e| {
                        io::Error::other(format!("journalctl printed {line:?}: {e}"))
                    })?;
                    if wanted(&entry) {
                        break Ok(entry);
                    }
                    seen.push(line);
                }
                Err(_) => {
                    break Err(io::Error::other(format!(
                        "no matching journal entry for {args:?} within {timeout:?}; saw:\n{}",
                        seen.join("\n")
                    )))
                }
            }
        };
        // SAFETY: kill has no memory-safety preconditions; the group is the one just made.
        unsafe {
            libc::kill(-(child.id() as i32), libc::SIGKILL);
        }
        let _ = child.wait();
        let _ = reader.join();
        found
    }

    /// The sandbox's cgroup in the host's hierarchy (removed on drop).
    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }

    /// The sandbox's boot log (systemd's own messages before journald).
    pub fn boot_log(&self) -> String {
        fs::read_to_string(self.dir.path().join("boot.log")).unwrap_or_default()
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // Killing the pid namespace's init makes the kernel kill everything inside; unshare
        // then exits, and --kill-child covers a PID 1 we never learnt.
        match self.ns_pid.or_else(|| first_child(self.unshare_pid)) {
            // SAFETY: kill has no memory-safety preconditions.
            Some(pid) => unsafe {
                libc::kill(pid, libc::SIGKILL);
            },
            None if self.waiter.as_ref().is_some_and(|w| !w.is_finished()) => unsafe {
                libc::kill(self.unshare_pid, libc::SIGKILL);
            },
            None => {}
        }
        if let Some(waiter) = self.waiter.take() {
            let _ = waiter.join();
        }
        remove_cgroup_tree(&self.cgroup);
    }
}

fn check(what: &str, out: &Output) -> io::Result<()> {
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )))
}

fn first_child(pid: i32) -> Option<i32> {
    fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// The sandbox's unit directory: journald (the host's units, without the audit socket,
/// which needs the host's audit subsystem), stand-ins for the standard targets, and
/// `sandbox.target`, which systemd boots into.
fn write_units(units: &Path) -> io::Result<()> {
    fs::create_dir_all(units)?;
    for name in STUB_TARGETS {
        let path = units.join(format!("{name}.target"));
        if !path.exists() {
            fs::write(
                path,
                format!("[Unit]\nDescription=sandbox stand-in for {name}.target\nDefaultDependencies=no\n"),
            )?;
        }
    }
    for name in JOURNALD_UNITS {
        let host = fs::read_to_string(Path::new("/lib/systemd/system").join(name))?;
        fs::write(
            units.join(name),
            host.replace(" systemd-journald-audit.socket", ""),
        )?;
    }
    fs::write(
        units.join("sandbox.target"),
        "[Unit]\nDescription=Sandbox boot target\nDefaultDependencies=no\n\
         Wants=systemd-journald.service systemd-journald-dev-log.socket\n\
         After=systemd-journald.service\n",
    )
}

/// A machine ID of the sandbox's own, so journald keeps its journal apart from the host's.
fn write_machine_id(dir: &Path) -> io::Result<()> {
    let uuid = fs::read_to_string("/proc/sys/kernel/random/uuid")?;
    let id: String = uuid.trim().chars().filter(|c| *c != '-').collect();
    let path = dir.join("root/etc/machine-id");
    fs::create_dir_all(dir.join("root/etc"))?;
    let mut file = fs::File::create(path)?;
    writeln!(file, "{id}")
}

/// Empty leftovers of sandboxes whose test process was killed (rmdir fails on busy ones).
fn remove_stale_cgroups(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        let Some(pid) = name
            .strip_prefix("oet-sandbox-")
            .and_then(|rest| rest.split('-').next())
        else {
            continue;
        };
        if !Path::new("/proc").join(pid).exists() {
            remove_cgroup_tree(&entry.path());
        }
    }
}

/// Removes a cgroup and its descendants, deepest first (cgroups only go by rmdir).
fn remove_cgroup_tree(root: &Path) {
    let mut dirs = vec![root.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        if let Ok(entries) = fs::read_dir(&dirs[i]) {
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
        i += 1;
    }
    for dir in dirs.iter().rev() {
        let _ = fs::remove_dir(dir);
    }
}

/// Copies the tree at `from` to `to`, files with their modes; links are copied as links.
fn copy_tree(from: &Path, to: &Path) -> io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_symlink() {
            std::os::unix::fs::symlink(fs::read_link(entry.path())?, &target)?;
        } else {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}
