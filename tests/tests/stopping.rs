//! Stopping scripts: politely, then by force; nothing a script started survives, not even
//! when oetd itself is killed.

use std::time::{Duration, Instant};

use oet_protocol::{FunctionArgs, ProcedureState::*, Value};
use oet_tests::{
    assert_failed_with, assert_state, kwargs, next_final_state, wait_for, wait_gone, TestDaemon,
};

/// A script that announces its own pid and that of a `sleep` child it spawned, then
/// loops until stopped. With `stubborn`, it swallows the stop exception and goes on. The
/// announcement is made inside the loop's `try:`, so a stop that follows it at once
/// always meets the script's handler.
fn looping_script(stubborn: bool) -> String {
    let handler = if stubborn {
        "        except BaseException:\n            print('ignoring the stop')\n"
    } else {
        "        except BaseException:\n            print('cleaning up')\n            raise\n"
    };
    format!(
        r#"
import os, subprocess, time
from pubsub import pub

def main():
    child = subprocess.Popen(["sleep", "1000"])
    announced = False
    while True:
        try:
            if not announced:
                announced = True
                pub.sendMessage("test.pids", worker=os.getpid(), child=child.pid)
            time.sleep(0.05)
{handler}"#
    )
}

/// A looping script's procedure, running, with the processes it announced.
struct Looping {
    id: u64,
    worker: u32,
    child: u32,
}

impl Looping {
    /// Asserts that the script's worker and its child both end within ten seconds of
    /// `cause`.
    fn assert_gone(&self, cause: &str) {
        let Looping { worker, child, .. } = self;
        assert!(
            wait_gone(*worker, Duration::from_secs(10)),
            "worker {worker} survived {cause}"
        );
        assert!(
            wait_gone(*child, Duration::from_secs(10)),
            "child {child} survived {cause}"
        );
    }
}

/// Writes a [`looping_script`] as `name`, starts it and waits until it has announced
/// its processes.
async fn run_until_pids(daemon: &TestDaemon, name: &str, stubborn: bool) -> Looping {
    let announced = daemon
        .start_until_announced(name, &looping_script(stubborn), "test.pids")
        .await;
    Looping {
        id: announced.id,
        worker: announced.pid("worker"),
        child: announced.pid("child"),
    }
}

#[tokio::test]
async fn stop_ends_a_looping_script_and_its_children() {
    let daemon = TestDaemon::start();
    let looping = run_until_pids(&daemon, "loop.py", false).await;
    let id = looping.id;

    // While it runs, the daemon answers promptly.
    let mut client = daemon.client().await;
    let listed = client.list(vec![]).await.expect("list");
    assert_eq!(listed[0].state, Running);
    assert_eq!(client.describe(id).await.expect("describe").state, Running);

    let stopped = client.stop(id, false).await.expect("stop");
    assert_eq!(stopped[0].state, Stopped);
    looping.assert_gone("the stop");
    // The script's handler ran.
    daemon.assert_printed(id, "cleaning up").await;
}

#[tokio::test]
async fn a_script_that_ignores_the_stop_is_killed_after_the_grace_period() {
    let daemon = TestDaemon::start_with("stop_grace_secs = 0.5");
    let looping = run_until_pids(&daemon, "stubborn.py", true).await;
    let mut client = daemon.client().await;
    let stopped = client.stop(looping.id, false).await.expect("stop");
    assert_eq!(stopped[0].state, Stopped);
    looping.assert_gone("the stop");
    daemon.assert_printed(looping.id, "ignoring the stop").await;
}

#[tokio::test]
async fn oetctl_says_it_waits_for_a_script_that_ignores_the_stop_and_for_how_long() {
    let daemon = TestDaemon::start_with("stop_grace_secs = 3");
    let looping = run_until_pids(&daemon, "stubborn.py", true).await;
    let output = daemon.oetctl(&["procedure", "stop", "--pid", &looping.id.to_string()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "procedure {} has not ended since SIGTERM",
            looping.id
        )) && stderr.contains("at most 3 s"),
        "{stderr}"
    );
    looping.assert_gone("the stop");
}

#[tokio::test]
async fn a_segfault_fails_the_procedure_naming_the_signal() {
    let daemon = TestDaemon::start();
    let failed = daemon
        .run_script(
            "segv.py",
            "import os, signal\n\ndef main():\n    os.kill(os.getpid(), signal.SIGSEGV)\n",
        )
        .await;
    assert_failed_with(&failed, &["SIGSEGV"]);
    // The daemon keeps serving.
    let again = daemon
        .ready_script("ok.py", "def main():\n    pass\n")
        .await;
    assert_eq!(again.state, Ready);
}

#[tokio::test]
async fn only_one_procedure_runs_at_a_time_and_only_ready_ones_start() {
    let daemon = TestDaemon::start();
    let running = run_until_pids(&daemon, "loop.py", false).await.id;
    let uri = daemon.script("loop.py", &looping_script(false));
    let second = daemon.create_ready(&uri, FunctionArgs::default()).await;
    let mut client = daemon.client().await;
    let err = client
        .start(second.id, "main", FunctionArgs::default())
        .await
        .expect_err("second start refused");
    let text = err.to_string();
    assert!(text.contains(&format!("procedure {running}")), "{text}");
    assert!(text.contains("RUNNING"), "{text}");
    let err = client
        .start(running, "main", FunctionArgs::default())
        .await
        .expect_err("start of a RUNNING procedure refused");
    assert!(err.to_string().starts_with("invalid state"), "{err}");
    let err = client
        .start(999, "main", FunctionArgs::default())
        .await
        .expect_err("unknown procedure");
    assert!(
        err.to_string().contains("no procedure with ID 999"),
        "{err}"
    );
    client.stop(running, false).await.expect("stop");
}

#[tokio::test]
async fn stop_with_abort_runs_the_abort_script_for_the_same_subarray() {
    let daemon_dir = tempfile::tempdir().expect("dir");
    let abort = daemon_dir.path().join("abort.py");
    std::fs::write(
        &abort,
        "def init(subarray_id):\n    global SUB\n    SUB = subarray_id\n\ndef main():\n    print(f'aborting subarray {SUB}')\n",
    )
    .expect("abort script");
    let daemon = TestDaemon::start_with(&format!("abort_script = \"file://{}\"", abort.display()));
    let uri = daemon.script(
        "observe.py",
        "import time\n\ndef init(subarray_id):\n    pass\n\ndef main():\n    while True:\n        time.sleep(0.05)\n",
    );
    let init = kwargs(&[("subarray_id", Value::Int(3))]);
    let ready = daemon.create_ready(&uri, init).await;
    daemon.start_main(ready.id, FunctionArgs::default()).await;
    let mut client = daemon.client().await;
    let mut events = daemon.events().await;
    let summaries = client.stop(ready.id, true).await.expect("stop with abort");
    assert_eq!(summaries.len(), 2);
    assert_eq!(summaries[0].state, Stopped);
    let aborting = &summaries[1];
    assert_eq!(aborting.script.uri(), format!("file://{}", abort.display()));
    assert_eq!(
        aborting.script_args()["init"].kwargs["subarray_id"],
        Value::Int(3)
    );
    let done = wait_for(&mut events, &mut client, aborting.id, |s| s == Complete).await;
    assert_state(&done, Complete);
    daemon
        .assert_printed(aborting.id, "aborting subarray 3")
        .await;
}

#[tokio::test]
async fn stop_with_abort_needs_a_subarray_and_changes_nothing_without_one() {
    let daemon = TestDaemon::start_with("abort_script = \"file:///nonexistent/abort.py\"");
    let ready = daemon
        .ready_script("idle.py", "def main():\n    pass\n")
        .await;
    let mut client = daemon.client().await;
    let err = client.stop(ready.id, true).await.expect_err("refused");
    assert!(err.to_string().contains("subarray_id"), "{err}");
    assert_eq!(
        client.describe(ready.id).await.expect("describe").state,
        Ready
    );
}

#[tokio::test]
async fn stop_with_abort_refuses_a_procedure_with_several_subarrays_and_stops_nothing() {
    let daemon = TestDaemon::start_with("abort_script = \"file:///nonexistent/abort.py\"");
    let uri = daemon.script(
        "two.py",
        "def init(subarray_id):\n    pass\n\ndef other(subarray_id):\n    pass\n\ndef main():\n    pass\n",
    );
    let ready = daemon
        .create_ready(&uri, kwargs(&[("subarray_id", Value::Int(1))]))
        .await;
    let mut client = daemon.client().await;
    let mut events = daemon.events().await;
    client
        .start(ready.id, "other", kwargs(&[("subarray_id", Value::Int(2))]))
        .await
        .expect("call other");
    wait_for(&mut events, &mut client, ready.id, |s| s == Ready).await;
    let err = client.stop(ready.id, true).await.expect_err("refused");
    let message = err.to_string();
    assert!(message.contains("more than one subarray_id"), "{message}");
    assert!(message.contains('1') && message.contains('2'), "{message}");
    assert_eq!(
        client.describe(ready.id).await.expect("describe").state,
        Ready,
        "a refused stop stops nothing"
    );
}

#[tokio::test]
async fn no_script_process_survives_oetd_being_killed() {
    let mut daemon = TestDaemon::start();
    let looping = run_until_pids(&daemon, "loop.py", false).await;
    daemon.signal(libc::SIGKILL);
    daemon.wait();
    looping.assert_gone("oetd");
}

#[tokio::test]
async fn sigterm_stops_running_scripts_and_exits_cleanly() {
    let mut daemon = TestDaemon::start();
    let looping = run_until_pids(&daemon, "loop.py", false).await;
    let mut events = daemon.events().await;
    daemon.signal(libc::SIGTERM);
    next_final_state(&mut events, looping.id, Stopped).await;
    let status = daemon.wait();
    assert!(status.success(), "oetd exited with {status}");
    looping.assert_gone("SIGTERM");
    assert!(
        !daemon.socket.exists(),
        "oetd left its socket file {} behind",
        daemon.socket.display()
    );
}

#[tokio::test]
async fn sigterm_kills_a_script_that_ignores_the_stop_after_the_grace_and_exits_cleanly() {
    let grace = Duration::from_millis(500);
    let mut daemon = TestDaemon::start_with("stop_grace_secs = 0.5");
    let looping = run_until_pids(&daemon, "stubborn.py", true).await;
    let mut events = daemon.events().await;
    let sent = Instant::now();
    daemon.signal(libc::SIGTERM);
    next_final_state(&mut events, looping.id, Stopped).await;
    let status = daemon.wait();
    let took = sent.elapsed();
    assert!(status.success(), "oetd exited with {status}");
    // The script had its grace period, then was killed; oetd did not linger (the margin
    // is generous for a loaded machine, and far below the unit's TimeoutStopSec=30s).
    assert!(
        took >= grace,
        "stopped after {took:?}, before the grace period"
    );
    assert!(
        took < grace + Duration::from_secs(5),
        "oetd took {took:?} to exit"
    );
    looping.assert_gone("SIGTERM");
}
