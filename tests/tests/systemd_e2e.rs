//! The shipped units under a real systemd and journald (booted in private namespaces by
//! the sandbox harness): the socket activates oetd on the first `oetctl` call, oetd runs
//! as the `oet` user with the unit's hardening, reports ready and status, keeps the
//! watchdog fed, gives each procedure a cgroup of its own in the unit's delegated cgroup,
//! stops a running script cleanly on `systemctl stop`, and
//! `journalctl -u oetd PROCEDURE_ID=1` tells that procedure's story with its fields and
//! its script's output.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use oet_tests::systemd_sandbox::{skip_reason, Sandbox, SandboxBuilder};
use oet_tests::{oetctl_bin, oetd_bin};
use serde_json::Value as Json;

/// The script: announces its subarray, then prints a tick every 0.1 s until stopped,
/// and says so when it is stopped.
const OBSERVE: &str = r#"import time

def init(subarray_id):
    print(f"init for subarray {subarray_id}", flush=True)
    with open("/proc/self/cgroup") as f:
        print("in cgroup", f.read().strip().split("::")[-1], flush=True)

def main():
    tick = 0
    try:
        while True:
            tick += 1
            print(f"tick {tick}", flush=True)
            time.sleep(0.1)
    except BaseException:
        print("cleaning up", flush=True)
        raise
"#;
const SCRIPT: &str = "/usr/share/oet-test/observe.py";
const SOCKET: &str = "/run/oet/oetd.sock";
/// Long enough to hold nothing up, short enough that a starved watchdog would fire while
/// the test watches (oetd pings every second).
const WATCHDOG_SEC: u64 = 2;
const WAIT: Duration = Duration::from_secs(20);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
        .to_path_buf()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn oetctl(sandbox: &Sandbox, args: &[&str]) -> String {
    let out = sandbox
        .command("/usr/bin/oetctl")
        .args(["--socket", SOCKET])
        .args(args)
        .output()
        .expect("run oetctl in the sandbox");
    assert!(
        out.status.success(),
        "oetctl {args:?} failed ({}): {}\njournal:\n{}",
        out.status,
        text(&out),
        journal_text(sandbox)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `systemctl show oetd.service -p <property>` value.
fn property(sandbox: &Sandbox, name: &str) -> String {
    sandbox
        .systemctl_ok(&["show", "oetd.service", "-P", name])
        .expect("systemctl show")
        .trim()
        .to_owned()
}

fn is_active(sandbox: &Sandbox, unit: &str) -> String {
    let out = sandbox.systemctl(&["is-active", unit]).expect("is-active");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn journal_text(sandbox: &Sandbox) -> String {
    sandbox
        .journalctl(&["-u", "oetd.service", "-o", "short-precise"])
        .map(|out| text(&out))
        .unwrap_or_default()
}

/// The sandbox with oetd installed as the package installs it: both binaries, the
/// `oet` user, the shipped units unchanged, and `config` as /etc/oet/oetd.toml.
fn with_oetd(builder: SandboxBuilder, config: &str) -> SandboxBuilder {
    let repo = repo();
    builder
        .copy(&oetd_bin(), "/usr/bin/oetd")
        .copy(&oetctl_bin(), "/usr/bin/oetctl")
        .file("/etc/oet/oetd.toml", config, 0o644)
        .sysusers(&repo.join("systemd/sysusers.d/oet.conf"))
        .unit("oetd.service", &read(&repo.join("systemd/oetd.service")))
        .unit("oetd.socket", &read(&repo.join("systemd/oetd.socket")))
}

fn message(entry: &Json) -> &str {
    entry["MESSAGE"].as_str().unwrap_or("")
}

#[test]
fn oetd_runs_as_a_socket_activated_service_under_real_systemd() {
    if let Some(reason) = skip_reason() {
        oet_tests::skip_unless_ci(&reason);
        return;
    }
    let builder = SandboxBuilder::new().expect("sandbox directory");
    // The shipped units unchanged; a drop-in only shortens the watchdog so that the test
    // can watch it not fire.
    let drop_in = builder.dir().join("units/oetd.service.d");
    std::fs::create_dir_all(&drop_in).expect("drop-in directory");
    std::fs::write(
        drop_in.join("test.conf"),
        format!("[Service]\nWatchdogSec={WATCHDOG_SEC}\n"),
    )
    .expect("drop-in");
    // ProtectHome hides the test's own interpreter under /root and PrivateTmp its temp
    // files: the service gets the system Python and a script under /usr/share.
    let config = "[procedures]\npython = \"/usr/bin/python3\"\nstop_grace_secs = 2.0\n";
    let sandbox = with_oetd(builder, config)
        .file(SCRIPT, OBSERVE, 0o644)
        .boot()
        .expect("boot the sandbox");

    sandbox
        .systemctl_ok(&["start", "oetd.socket"])
        .expect("start oetd.socket");
    assert_eq!(is_active(&sandbox, "oetd.socket"), "active");
    assert_eq!(
        is_active(&sandbox, "oetd.service"),
        "inactive",
        "oetd starts on the first connection, not before"
    );

    // The first oetctl call starts oetd through the socket.
    let uri = format!("file://{SCRIPT}");
    let created = oetctl(
        &sandbox,
        &["procedure", "create", &uri, "--subarray_id=1", "--wait"],
    );
    assert!(created.contains("READY"), "{created}");
    // Joins the activation's start job, which ends with oetd's READY=1.
    sandbox
        .systemctl_ok(&["start", "oetd.service"])
        .expect("oetd.service starts");
    assert_eq!(is_active(&sandbox, "oetd.service"), "active");
    assert_eq!(property(&sandbox, "User"), "oet");
    assert_eq!(
        property(&sandbox, "WatchdogUSec"),
        format!("{WATCHDOG_SEC}s")
    );
    let main_pid = property(&sandbox, "MainPID");
    assert_ne!(main_pid, "0");
    assert_eq!(
        property(&sandbox, "StatusText"),
        "1 procedure live, none running"
    );

    // systemd records each WATCHDOG=1 it accepts from oetd.
    let pinged = property(&sandbox, "WatchdogTimestampMonotonic");
    assert_ne!(pinged, "0", "systemd has a watchdog ping from oetd");

    let started = oetctl(&sandbox, &["procedure", "start"]);
    assert!(started.contains("RUNNING"), "{started}");
    // Well past the watchdog timeout by the script's own clock (>= 3 s of ticks), oetd
    // is the same process, never restarted.
    let ticks = (WATCHDOG_SEC * 10 * 3 / 2).to_string();
    sandbox
        .wait_for_journal_entry(
            &["-u", "oetd.service", "PROCEDURE_ID=1", "STREAM=stdout"],
            |e| message(e).ends_with(&format!("tick {ticks}")),
            WAIT,
        )
        .expect("the script keeps printing");
    assert_eq!(is_active(&sandbox, "oetd.service"), "active");
    assert_eq!(property(&sandbox, "MainPID"), main_pid);
    assert_eq!(property(&sandbox, "NRestarts"), "0");
    assert_ne!(
        property(&sandbox, "WatchdogTimestampMonotonic"),
        pinged,
        "oetd kept pinging"
    );
    assert_eq!(
        property(&sandbox, "StatusText"),
        format!("1 procedure live, 1 running: #1 {uri}")
    );

    // The unit's cgroup is delegated: oetd sits in a leaf of it, the script in a cgroup
    // of its own beside that.
    let unit_cgroup = property(&sandbox, "ControlGroup");
    assert!(unit_cgroup.ends_with("/oetd.service"), "{unit_cgroup}");
    let status = oetctl(&sandbox, &["--json", "status"]);
    let status: Json = serde_json::from_str(&status).expect("status JSON");
    assert_eq!(status["containment"]["mode"], "cgroup", "{status}");
    assert_eq!(
        status["containment"]["root"],
        format!("/sys/fs/cgroup{unit_cgroup}").as_str(),
        "{status}"
    );
    let oetd_cgroup = sandbox
        .exec("cat", &[&format!("/proc/{main_pid}/cgroup")])
        .expect("oetd's cgroup");
    let oetd_cgroup = String::from_utf8_lossy(&oetd_cgroup.stdout).into_owned();
    assert!(
        oetd_cgroup
            .lines()
            .any(|line| line == format!("0::{unit_cgroup}/daemon")),
        "{oetd_cgroup}"
    );
    sandbox
        .wait_for_journal_entry(
            &["-u", "oetd.service", "PROCEDURE_ID=1", "STREAM=stdout"],
            |e| message(e) == format!("in cgroup {unit_cgroup}/procedure-1"),
            WAIT,
        )
        .expect("the script runs in the procedure's cgroup");

    // Stopping the service stops the running script, and oetd exits cleanly.
    sandbox
        .systemctl_ok(&["stop", "oetd.service"])
        .expect("systemctl stop oetd");
    assert_eq!(is_active(&sandbox, "oetd.service"), "inactive");
    assert_eq!(property(&sandbox, "Result"), "success");
    assert_eq!(property(&sandbox, "ExecMainStatus"), "0");
    let stopped = sandbox
        .wait_for_journal_entry(
            &["-u", "oetd.service", "PROCEDURE_ID=1", "STATE=STOPPED"],
            |_| true,
            WAIT,
        )
        .expect("the script's STOPPED state is in the journal");
    assert_eq!(stopped["SCRIPT_URI"], uri.as_str());
    let log = journal_text(&sandbox);
    assert!(
        !log.to_lowercase().contains("watchdog timeout"),
        "the watchdog fired:\n{log}"
    );

    // `journalctl -u oetd PROCEDURE_ID=1` tells the procedure's story.
    let out = sandbox
        .journalctl(&["-u", "oetd", "PROCEDURE_ID=1", "-o", "json"])
        .expect("journalctl");
    let entries: Vec<Json> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    let states: Vec<&str> = entries.iter().filter_map(|e| e["STATE"].as_str()).collect();
    for state in ["CREATING", "READY", "RUNNING", "STOPPED"] {
        assert!(states.contains(&state), "{state} not in {states:?}");
    }
    assert_eq!(states.last(), Some(&"STOPPED"), "{states:?}");
    eprintln!(
        "procedure 1 in the journal: {} entries, states {states:?}",
        entries.len()
    );
    for entry in &entries {
        assert_eq!(entry["_SYSTEMD_UNIT"], "oetd.service", "{entry}");
        // The script's lines are its own records, not oetd's.
        let identifier = if entry.get("STREAM").is_some() {
            "oet-script"
        } else {
            "oetd"
        };
        assert_eq!(entry["SYSLOG_IDENTIFIER"], identifier, "{entry}");
        if entry.get("STATE").is_some() || entry.get("STREAM").is_some() {
            assert_eq!(entry["SCRIPT_URI"], uri.as_str(), "{entry}");
        }
    }
    for printed in ["init for subarray 1", "tick 1", "cleaning up"] {
        assert!(
            entries
                .iter()
                .any(|e| e["STREAM"] == "stdout" && message(e) == printed),
            "no script line {printed:?} in the procedure's journal:\n{log}"
        );
    }

    // The socket stayed: the next call starts a fresh oetd.
    assert_eq!(is_active(&sandbox, "oetd.socket"), "active");
    let status = oetctl(&sandbox, &["--json", "status"]);
    let status: Json = serde_json::from_str(&status).expect("status JSON");
    assert_ne!(status["pid"].to_string(), main_pid, "{status}");

    // Without Delegate=yes, oetd keeps process groups, and says so.
    sandbox
        .systemctl_ok(&["stop", "oetd.service"])
        .expect("stop oetd");
    std::fs::write(drop_in.join("undelegated.conf"), "[Service]\nDelegate=no\n").expect("drop-in");
    sandbox
        .systemctl_ok(&["daemon-reload"])
        .expect("daemon-reload");
    let status = oetctl(&sandbox, &["--json", "status"]);
    let status: Json = serde_json::from_str(&status).expect("status JSON");
    assert_eq!(status["containment"]["mode"], "process_group", "{status}");
    let reason = status["containment"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("Delegate=yes"), "{status}");
    sandbox
        .wait_for_journal_entry(
            &["-u", "oetd.service", "-t", "oetd"],
            |e| message(e).contains("contained by process groups only"),
            WAIT,
        )
        .expect("the start-up log says so");
    sandbox
        .systemctl_ok(&["stop", "oetd.service", "oetd.socket"])
        .expect("stop both units");
    assert!(
        !sandbox.host_path(SOCKET).exists(),
        "the socket file goes with the socket unit"
    );
}

/// A git project whose script needs the project installed and a ctypes callback (which
/// libffi must make without memory both writable and executable).
const NEEDS_ITS_PROJECT: &str = r#"import ctypes
import oettestpkg

DOUBLE = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)

def main():
    doubled = DOUBLE(lambda x: 2 * x)
    print(f"value {oettestpkg.VALUE} callback {doubled(21)}", flush=True)
"#;

#[test]
fn the_hardened_service_fetches_git_scripts_builds_their_environment_and_runs_them() {
    if let Some(reason) = skip_reason() {
        oet_tests::skip_unless_ci(&reason);
        return;
    }
    let project = oet_tests::git::TestRepo::new();
    project.commit_project(oet_tests::git::PYPROJECT, None, NEEDS_ITS_PROJECT);
    // pip works offline: the project builds itself, with no index and no build tools.
    let config = "[procedures]\npython = \"/usr/bin/python3\"\n\n[python]\n\
                  interpreter = \"/usr/bin/python3\"\n\
                  pip_extra_args = [\"--no-index\", \"--no-build-isolation\"]\n";
    let sandbox = with_oetd(SandboxBuilder::new().expect("sandbox directory"), config)
        .copy_dir(project.path(), "/usr/share/oet-test/project")
        .boot()
        .expect("boot the sandbox");
    sandbox
        .systemctl_ok(&["start", "oetd.socket"])
        .expect("start oetd.socket");

    // The repository is served over TCP inside the sandbox's own network namespace, so
    // that the fetch goes through the service's socket restrictions.
    let served = oet_tests::git::GitDaemon::serve_with(
        sandbox.command("git"),
        std::path::Path::new("/usr/share/oet-test"),
        9418,
        "git://127.0.0.1/project".into(),
    );

    let git_repo = format!("--git_repo={}", served.url);
    let created = oetctl(
        &sandbox,
        &[
            "procedure",
            "create",
            "git://scripts/observe.py",
            &git_repo,
            "--create_env",
            "--wait",
            "--timeout",
            "300",
        ],
    );
    assert!(created.contains("READY"), "{created}");
    let done = oetctl(&sandbox, &["procedure", "start", "--listen"]);
    assert!(done.trim_end().ends_with("COMPLETE"), "{done}");
    let logs = oetctl(&sandbox, &["procedure", "logs"]);
    assert!(logs.contains("value 42 callback 42"), "{logs}");

    drop(served);
    sandbox
        .systemctl_ok(&["stop", "oetd.service", "oetd.socket"])
        .expect("stop");
}
