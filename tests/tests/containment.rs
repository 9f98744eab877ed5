//! Containment: each procedure's processes live in a cgroup of their own, so that a stop,
//! the end of `main` and even oetd's death end every one of them — also those that left
//! the worker's process group — and the cgroup's limits and measurements apply to them
//! all together.

use std::path::PathBuf;
use std::time::Duration;

use oet_protocol::{Containment, FunctionArgs, ProcedureState::*};
use oet_tests::{
    alive, assert_failed_with, assert_state, live_processes_mentioning, oetd_bin, wait_for,
    wait_gone, TestDaemon,
};

/// Starts processes that leave the worker's process group and ignore SIGTERM: a child in
/// a session of its own, and a classic double-forked daemon. Announces their pids and
/// the worker's, then loops until stopped — or, with `finish`, returns at once.
fn escaping_script(finish: bool) -> String {
    let end = if finish {
        "    return\n"
    } else {
        "    while True:\n        time.sleep(0.05)\n"
    };
    format!(
        r#"
import os, signal, subprocess, time
from pubsub import pub

def daemonise():
    read, write = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.write(write, str(os.getpid()).encode())
            os.execvp("sleep", ["sleep", "1000"])
        os._exit(0)
    os.close(write)
    pid = int(os.read(read, 32))
    os.wait()
    return pid

def main():
    session = subprocess.Popen(
        ["sh", "-c", "trap '' TERM; echo ready; exec sleep 1000"],
        start_new_session=True,
        stdout=subprocess.PIPE,
    )
    session.stdout.readline()
    pub.sendMessage("test.pids", worker=os.getpid(), session=session.pid, daemon=daemonise())
{end}"#
    )
}

/// The processes an escaping script announced.
struct Escapees {
    id: u64,
    pids: Vec<(&'static str, u32)>,
}

impl Escapees {
    fn assert_gone(&self, cause: &str) {
        for (what, pid) in &self.pids {
            assert!(
                wait_gone(*pid, Duration::from_secs(10)),
                "{what} {pid} survived {cause}"
            );
        }
    }
}

/// Runs an [`escaping_script`] and waits until it has announced its processes.
async fn run_escaping(daemon: &TestDaemon, finish: bool) -> Escapees {
    let announced = daemon
        .start_until_announced("escape.py", &escaping_script(finish), "test.pids")
        .await;
    let pids = vec![
        ("the worker", announced.pid("worker")),
        ("the child in its own session", announced.pid("session")),
        ("the double-forked daemon", announced.pid("daemon")),
    ];
    // Each pid was announced by its live process; one that returns at once may
    // already be ended by now.
    if !finish {
        for (what, pid) in &pids {
            assert!(alive(*pid), "{what} {pid} is not running");
        }
    }
    Escapees {
        id: announced.id,
        pids,
    }
}

#[tokio::test]
async fn processes_that_left_the_process_group_are_gone_after_stop() {
    let daemon = TestDaemon::start_with("stop_grace_secs = 0.5");
    if !daemon.has_cgroups().await {
        return;
    }
    let escapees = run_escaping(&daemon, false).await;
    let stopped = daemon
        .client()
        .await
        .stop(escapees.id, false)
        .await
        .expect("stop");
    assert_eq!(stopped[0].state, Stopped);
    escapees.assert_gone("the stop");
}

#[tokio::test]
async fn processes_that_left_the_process_group_are_gone_when_main_returns() {
    let daemon = TestDaemon::start();
    if !daemon.has_cgroups().await {
        return;
    }
    let mut events = daemon.events().await;
    let mut client = daemon.client().await;
    let escapees = run_escaping(&daemon, true).await;
    let done = wait_for(&mut events, &mut client, escapees.id, |_| false).await;
    assert_state(&done, Complete);
    escapees.assert_gone("the end of main");
}

/// The directory procedure cgroups are made in.
async fn cgroup_root(daemon: &TestDaemon) -> PathBuf {
    match daemon.containment().await {
        Containment::Cgroup { root, .. } => PathBuf::from(root),
        other => panic!("no cgroups: {other:?}"),
    }
}

/// The guard of procedures in cgroups under `root` (one for the whole daemon).
fn guards_of(root: &std::path::Path) -> Vec<u32> {
    live_processes_mentioning(&format!("--guard-procedures --root {}", root.display()))
        .iter()
        .filter_map(|line| line.split(':').next()?.parse().ok())
        .collect()
}

#[tokio::test]
async fn processes_that_left_the_process_group_are_gone_after_oetd_is_killed() {
    let mut daemon = TestDaemon::start();
    if !daemon.has_cgroups().await {
        return;
    }
    let root = cgroup_root(&daemon).await;
    let escapees = run_escaping(&daemon, false).await;
    let guards = guards_of(&root);
    assert_eq!(guards.len(), 1, "one guard for the daemon: {guards:?}");
    daemon.signal(libc::SIGKILL);
    daemon.wait();
    escapees.assert_gone("oetd's death");
    // The guard removes the procedure's cgroup, and oetd's, which it made.
    assert!(
        wait_gone(guards[0], Duration::from_secs(20)),
        "the guard lingers"
    );
    assert!(!root.exists(), "{} is left behind", root.display());
}

/// Should the guards die with oetd too, what the script left running in its cgroup is
/// killed by the next oetd on the same state directory, before it serves.
#[tokio::test]
async fn the_next_oetd_kills_what_an_oetd_and_its_guards_left_behind() {
    let mut daemon = TestDaemon::start();
    if !daemon.has_cgroups().await {
        return;
    }
    let root = cgroup_root(&daemon).await;
    let escapees = run_escaping(&daemon, false).await;
    for guard in guards_of(&root) {
        // SAFETY: kill has no memory-safety preconditions.
        unsafe { libc::kill(guard as i32, libc::SIGKILL) };
        assert!(wait_gone(guard, Duration::from_secs(10)));
    }
    daemon.signal(libc::SIGKILL);
    daemon.wait();
    let (_, session) = escapees.pids[1];
    assert!(
        alive(session),
        "the setsid child went with oetd; nothing is left to test"
    );

    let lines = daemon.launch(daemon.command(None));
    let killed = oet_tests::wait_for_line(&lines, "left running")
        .expect("the new oetd tells what it killed");
    assert!(killed.contains(&format!("[{}]", escapees.id)), "{killed}");
    oet_tests::wait_for_line(&lines, "oetd listening on").expect("then it serves");
    for (what, pid) in &escapees.pids[1..] {
        assert!(!alive(*pid), "{what} {pid} survived");
    }
    let procedure_cgroup = root.join(format!("procedure-{}", escapees.id));
    assert!(
        !procedure_cgroup.exists(),
        "{} is left behind",
        procedure_cgroup.display()
    );
}

#[tokio::test]
async fn a_script_over_its_memory_limit_fails_out_of_memory_and_describe_shows_its_use() {
    let daemon = TestDaemon::start_with("memory_max = \"64M\"");
    if !daemon.has_cgroups().await {
        return;
    }
    let failed = daemon
        .run_script(
            "hog.py",
            "def main():\n    hog = []\n    while True:\n        hog.append(b'x' * (4 << 20))\n",
        )
        .await;
    assert_failed_with(&failed, &["out of memory (limit 64 MiB)"]);
    let described = daemon
        .client()
        .await
        .describe(failed.id)
        .await
        .expect("describe");
    let usage = described.resources.expect("the cgroup's measurements");
    assert_eq!(usage.limits.memory_max_bytes, Some(64 << 20));
    let peak = usage.peak_memory_bytes.expect("peak memory");
    assert!(
        (32 << 20..=64 << 20).contains(&peak),
        "peak memory {peak} of a script killed at 64 MiB"
    );
    assert!(usage.cpu_secs.expect("CPU time") > 0.0, "{usage:?}");

    let out = daemon.oetctl(&["procedure", "describe", "--pid", &failed.id.to_string()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Peak memory:  "), "{text}");
    assert!(text.contains("(limit 64 MiB)"), "{text}");
    assert!(text.contains("CPU time:     "), "{text}");
}

#[tokio::test]
async fn a_procedure_within_its_limits_shows_what_it_used() {
    let daemon = TestDaemon::start_with("pids_max = 64\ncpu_max = 1.5");
    if !daemon.has_cgroups().await {
        return;
    }
    let done = daemon
        .run_script(
            "busy.py",
            "def main():\n    data = bytearray(16 << 20)\n    sum(range(10**6))\n",
        )
        .await;
    assert_state(&done, Complete);
    let usage = done.resources.expect("the cgroup's measurements");
    assert!(usage.cpu_secs.expect("CPU time") > 0.0, "{usage:?}");
    assert!(usage.peak_memory_bytes.expect("peak memory") >= 16 << 20);
    assert_eq!(usage.limits.pids_max, Some(64));
    assert_eq!(usage.limits.cpu_max, Some(1.5));
    assert_eq!(usage.limits.memory_max_bytes, None);
}

#[tokio::test]
async fn a_script_cannot_start_more_processes_than_pids_max() {
    let daemon = TestDaemon::start_with("pids_max = 16");
    if !daemon.has_cgroups().await {
        return;
    }
    let failed = daemon
        .run_script(
            "forks.py",
            "import subprocess\n\ndef main():\n    \
             children = [subprocess.Popen(['sleep', '1000']) for _ in range(64)]\n",
        )
        .await;
    assert_failed_with(&failed, &["Resource temporarily unavailable"]);
}

#[tokio::test]
async fn status_says_how_procedures_are_contained() {
    let daemon = TestDaemon::start();
    let out = daemon.oetctl(&["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    match daemon.containment().await {
        Containment::Cgroup { root, .. } => {
            assert!(root.starts_with("/sys/fs/cgroup"), "{root}");
            assert!(
                text.contains(&format!("Containment: a cgroup per procedure under {root}")),
                "{text}"
            );
        }
        Containment::ProcessGroup { reason } => {
            assert!(text.contains("process groups only"), "{text}");
            assert!(text.contains(&reason), "{text}");
        }
    }
}

/// Where no cgroup v2 hierarchy can be written, oetd keeps process groups and says so in
/// its start-up log and in `status`; stopping still works.
#[tokio::test]
async fn without_a_writable_cgroup2_oetd_falls_back_to_process_groups_and_says_so() {
    if let Some(reason) = oet_tests::journal_capture::skip_reason() {
        assert!(std::env::var_os("CI").is_none(), "{reason}");
        eprintln!("skipped: {reason}");
        return;
    }
    let Some(cgroup2) = oet_tests::systemd_sandbox::cgroup2_mount() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI needs a cgroup v2 hierarchy"
        );
        eprintln!("skipped: no cgroup v2 hierarchy is mounted here");
        return;
    };
    let mut daemon = TestDaemon::prepare("");
    // A private mount namespace in which the cgroup2 mount is read-only.
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount -o remount,bind,ro \"$OET_CGROUP2\" && exec \"$0\" \"$@\"")
        .arg(oetd_bin())
        .args(daemon.command(None).get_args())
        .env("OET_CGROUP2", &cgroup2)
        .stdin(std::process::Stdio::null());
    let lines = daemon.launch(cmd);
    let said = oet_tests::wait_for_line(&lines, "process groups only")
        .expect("oetd says in its log that it falls back to process groups");
    assert!(said.contains("cgroup"), "{said}");
    oet_tests::wait_for_line(&lines, "oetd listening on").expect("oetd starts");
    match daemon.containment().await {
        Containment::ProcessGroup { reason } => assert!(!reason.is_empty()),
        other => panic!("expected process groups, got {other:?}"),
    }
    let ready = daemon
        .ready_script(
            "loop.py",
            "import time\n\ndef main():\n    while True:\n        time.sleep(0.05)\n",
        )
        .await;
    daemon.start_main(ready.id, FunctionArgs::default()).await;
    let stopped = daemon
        .client()
        .await
        .stop(ready.id, false)
        .await
        .expect("stop");
    assert_eq!(stopped[0].state, Stopped);
    assert_eq!(stopped[0].resources, None);
}
