//! Users other than the test's own, for tests of who may do what: created on demand
//! (when running as root, idempotently), and commands run as them with `setpriv`. When
//! `CI` is set, whatever is missing for that fails the test instead of skipping it.

use std::process::Command;

/// A user of this host, created for tests if need be.
#[derive(Debug, Clone)]
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
}

/// Why tests as another user cannot run here, if they cannot. Under `CI` this panics
/// instead: a missing tool must fail the test.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let reason = if unsafe { libc::geteuid() } != 0 {
        Some("running commands as another user needs root".to_owned())
    } else {
        ["setpriv", "useradd", "groupadd"]
            .into_iter()
            .find(|tool| !on_path(tool))
            .map(|tool| format!("{tool} is not installed"))
    };
    if let Some(reason) = &reason {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must be able to run tests as another user: {reason}"
        );
    }
    reason
}

fn on_path(tool: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(tool).is_file()))
}

/// The id of group `name`, creating it if it does not exist.
pub fn group(name: &str) -> u32 {
    if let Some(gid) = group_id(name) {
        return gid;
    }
    let status = Command::new("groupadd")
        .args(["--system", name])
        .status()
        .expect("run groupadd");
    // A parallel test may have created it first.
    group_id(name).unwrap_or_else(|| panic!("groupadd {name} failed: {status}"))
}

fn group_id(name: &str) -> Option<u32> {
    let out = Command::new("getent").args(["group", name]).output().ok()?;
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    line.split(':').nth(2)?.trim().parse().ok()
}

/// User `name` with primary group `primary` and the supplementary `groups`, creating
/// them if they do not exist (an existing user keeps what it has).
pub fn user(name: &str, primary: &str, groups: &[&str]) -> TestUser {
    let gid = group(primary);
    for group_name in groups {
        group(group_name);
    }
    let id = |flag: &str| -> Option<u32> {
        let out = Command::new("id").args([flag, name]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    if id("-u").is_none() {
        let mut cmd = Command::new("useradd");
        cmd.args([
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
        ])
        .args(["--gid", primary]);
        if !groups.is_empty() {
            cmd.args(["--groups", &groups.join(",")]);
        }
        let status = cmd.arg(name).status().expect("run useradd");
        assert!(
            id("-u").is_some(),
            "useradd {name} failed ({status}) and no such user exists"
        );
    }
    TestUser {
        name: name.to_owned(),
        uid: id("-u").expect("a uid"),
        gid: id("-g").unwrap_or(gid),
    }
}

impl TestUser {
    /// The real `oetctl` against `daemon`'s socket, run as this user.
    pub fn oetctl(&self, daemon: &crate::TestDaemon, args: &[&str]) -> std::process::Output {
        self.command(crate::oetctl_bin())
            .arg("--socket")
            .arg(&daemon.socket)
            .args(args)
            .output()
            .expect("run oetctl as another user")
    }

    /// `program args...` run as this user, with its groups from the group database.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("setpriv");
        cmd.arg(format!("--reuid={}", self.uid))
            .arg(format!("--regid={}", self.gid))
            .arg("--init-groups")
            .arg("--")
            .arg(program);
        cmd
    }
}
