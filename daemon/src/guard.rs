//! The procedures' guard: one process for the whole daemon (`oetd --guard-procedures`)
//! that ends every procedure — and every zygote — when oetd dies, even by SIGKILL.
//!
//! The guard holds the read end of a pipe whose write end only oetd has. oetd tells it
//! over the pipe, one line each, which cgroups are live (`+cg NAME`, `-cg NAME`: a
//! procedure's or a zygote's, under oetd's root) and, without cgroups, which process
//! groups (`+pg PGID`, `-pg PGID`). When the pipe closes without `released` — oetd died
//! — the guard kills each live cgroup with `cgroup.kill` (everything in it, whatever its
//! process group), removes it once empty (in the v1 hierarchies too), SIGKILLs each live
//! process group, and removes oetd's root cgroups if nothing else is left in them. A
//! clean shutdown ends everything itself and says `released` first.
//!
//! It knows only the cgroups it was told of, so an oetd started on the same state
//! directory right after never loses a procedure to the guard of the one before.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::{self, BufRead, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::cgroup::files;
use crate::children;
use crate::process::{ignore_terminal_signals, ProcessGroup};

/// The hidden flag that turns `oetd` into the procedures' guard.
pub const GUARD_FLAG: &str = "--guard-procedures";

/// How long the guard waits for a killed cgroup to empty before removing it.
const EMPTY_WAIT: Duration = Duration::from_secs(10);

/// Where the guard finds the cgroups it is told of.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Places {
    /// The v2 directory procedures' and zygotes' cgroups are made in.
    pub root: Option<PathBuf>,
    /// The v1 directories cgroups of the same names may be made in.
    pub v1: Vec<PathBuf>,
    /// Roots oetd made, removed (when empty) after oetd died.
    pub made: Vec<PathBuf>,
}

/// oetd's side: the pipe to the guard.
pub struct Guard {
    pipe: Mutex<Option<std::fs::File>>,
    released: Arc<AtomicBool>,
}

impl Guard {
    /// Starts the guard, `daemon_exe` re-executed, for cgroups in `places`.
    pub fn spawn(daemon_exe: &Path, places: &Places) -> io::Result<Guard> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let mut command = Command::new(daemon_exe);
        command.arg(GUARD_FLAG);
        if let Some(root) = &places.root {
            command.arg("--root").arg(root);
        }
        for dir in &places.v1 {
            command.arg("--v1").arg(dir);
        }
        for dir in &places.made {
            command.arg("--made").arg(dir);
        }
        let starting = children::starting();
        let child = command
            .stdin(Stdio::from(read))
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            // Its own group, so a terminal's Ctrl-C does not reach it.
            .process_group(0)
            .spawn()?;
        let mut exit = children::watch(child.id(), &starting);
        let released = Arc::new(AtomicBool::new(false));
        let clean = released.clone();
        tokio::spawn(async move {
            let status = exit.wait().await;
            if let (Ok(status), false) = (status, clean.load(Ordering::SeqCst)) {
                tracing::error!(
                    "the procedures' guard ended ({}): should oetd die now, procedures \
                     would be killed only by its next start",
                    crate::process::exit_summary(status)
                );
            }
        });
        Ok(Guard {
            pipe: Mutex::new(Some(std::fs::File::from(write))),
            released,
        })
    }

    fn tell(&self, line: &str) {
        let mut pipe = self.pipe.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(file) = pipe.as_mut() {
            // One short line is one atomic write to a pipe.
            if let Err(err) = file.write_all(format!("{line}\n").as_bytes()) {
                tracing::error!("cannot tell the procedures' guard about {line:?}: {err}");
                *pipe = None;
            }
        }
    }

    /// The cgroup `name` under oetd's root is live: killed if oetd dies.
    pub fn cgroup(&self, name: &str) {
        self.tell(&format!("+cg {name}"));
    }

    /// The cgroup `name` is gone.
    pub fn cgroup_gone(&self, name: &str) {
        self.tell(&format!("-cg {name}"));
    }

    /// The process group `group` is live (where there are no cgroups).
    pub fn group(&self, group: ProcessGroup) {
        self.tell(&format!("+pg {}", group.id()));
    }

    /// The process group `group` is gone.
    pub fn group_gone(&self, group: ProcessGroup) {
        self.tell(&format!("-pg {}", group.id()));
    }

    /// A clean shutdown: everything is ended; the guard leaves without killing.
    pub fn release(&self) {
        self.released.store(true, Ordering::SeqCst);
        self.tell("released");
        self.pipe
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
    }
}

/// What the guard knows is live.
#[derive(Debug, Default, PartialEq)]
struct Live {
    cgroups: BTreeSet<String>,
    groups: BTreeSet<i32>,
    released: bool,
}

impl Live {
    fn hear(&mut self, line: &str) {
        match line.split_once(' ') {
            Some(("+cg", name)) if is_name(name) => {
                self.cgroups.insert(name.to_owned());
            }
            Some(("-cg", name)) => {
                self.cgroups.remove(name);
            }
            Some(("+pg", pgid)) => {
                if let Ok(pgid) = pgid.parse() {
                    self.groups.insert(pgid);
                }
            }
            Some(("-pg", pgid)) => {
                if let Ok(pgid) = pgid.parse::<i32>() {
                    self.groups.remove(&pgid);
                }
            }
            _ if line == "released" => self.released = true,
            _ => {}
        }
    }
}

/// A cgroup name is one path component.
fn is_name(name: &str) -> bool {
    !name.is_empty() && name != "." && name != ".." && !name.contains('/')
}

/// The guard's whole life: follow what oetd says until the pipe on stdin closes, then
/// kill and clean up what is live.
pub fn run_guard(args: &[OsString]) -> i32 {
    let Some(places) = parse(args) else {
        eprintln!("oetd: {GUARD_FLAG} takes --root DIR, --v1 DIR and --made DIR options");
        return 2;
    };
    ignore_terminal_signals();
    let mut live = Live::default();
    for line in io::stdin().lock().lines() {
        match line {
            Ok(line) => live.hear(&line),
            Err(_) => break,
        }
    }
    if live.released {
        return 0;
    }
    if let Some(root) = &places.root {
        for name in &live.cgroups {
            let dir = root.join(name);
            if files::write(&dir, "cgroup.kill", "1").is_ok() {
                let _ = files::wait_empty(&dir, EMPTY_WAIT);
            }
            let _ = files::remove(&dir);
            for v1 in &places.v1 {
                let _ = files::remove(&v1.join(name));
            }
        }
    }
    for group in live.groups.iter().filter_map(|g| ProcessGroup::from_id(*g)) {
        group.kill();
    }
    for dir in &places.made {
        let _ = std::fs::remove_dir(dir);
    }
    0
}

fn parse(args: &[OsString]) -> Option<Places> {
    let mut places = Places::default();
    let mut rest = args.iter();
    while let Some(flag) = rest.next() {
        let dir = PathBuf::from(rest.next()?);
        match flag.to_str()? {
            "--root" => places.root = Some(dir),
            "--v1" => places.v1.push(dir),
            "--made" => places.made.push(dir),
            _ => return None,
        }
    }
    Some(places)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_name_the_places() {
        let args: Vec<OsString> = ["--root", "/cg/x", "--v1", "/v1/x", "--made", "/cg/x"]
            .iter()
            .map(OsString::from)
            .collect();
        let places = parse(&args).expect("parses");
        assert_eq!(places.root, Some(PathBuf::from("/cg/x")));
        assert_eq!(places.v1, [PathBuf::from("/v1/x")]);
        assert_eq!(places.made, [PathBuf::from("/cg/x")]);
        assert_eq!(parse(&[]), Some(Places::default()));
        assert!(parse(&[OsString::from("--root")]).is_none());
        assert!(parse(&[OsString::from("--other"), OsString::from("x")]).is_none());
    }

    #[test]
    fn the_guard_follows_what_is_live_and_refuses_paths() {
        let mut live = Live::default();
        for line in [
            "+cg procedure-1",
            "+cg procedure-2",
            "+cg ../escape",
            "+cg a/b",
            "+pg 40",
            "+pg 41",
            "-cg procedure-1",
            "-pg 40",
            "nonsense",
        ] {
            live.hear(line);
        }
        assert_eq!(live.cgroups, BTreeSet::from(["procedure-2".to_owned()]));
        assert_eq!(live.groups, BTreeSet::from([41]));
        assert!(!live.released);
        live.hear("released");
        assert!(live.released);
    }
}
