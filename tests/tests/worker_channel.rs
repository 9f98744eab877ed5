//! The worker channel is untrusted: the script shares the harness's process and can
//! write to the channel itself. Whatever it writes that the harness could not have
//! written at that moment — a state out of turn, junk, a line without end — ends that
//! procedure FAILED as a worker protocol violation, with its processes killed, and
//! leaves the daemon and other procedures alone.

use oet_protocol::{FunctionArgs, ProcedureState::*, ProcedureSummary};
use oet_tests::{alive, assert_failed_with, assert_state, wait_for, TestDaemon};

/// A script whose `main` announces its pid, then does `forge` (Python statements with
/// the channel as `channel`, a socket on the harness's descriptor), then runs on.
fn forging_script(forge: &str) -> String {
    format!(
        r#"
import os, socket, time
from pubsub import pub

def main():
    pub.sendMessage("test.pid", worker=os.getpid())
    channel = socket.socket(fileno=os.dup(3))
{forge}
    while True:
        time.sleep(0.05)
"#
    )
}

/// Runs `forge` in a script's `main` and returns its procedure once it is no longer
/// RUNNING, with the worker's pid, checking that the worker is gone by then.
async fn forge(daemon: &TestDaemon, forge: &str) -> ProcedureSummary {
    let mut announced = daemon
        .start_until_announced("forger.py", &forging_script(forge), "test.pid")
        .await;
    let worker = announced.pid("worker");
    let mut client = daemon.client().await;
    let id = announced.id;
    let ended = wait_for(&mut announced.events, &mut client, id, |s| s != Running).await;
    // By the time the procedure is recorded as no longer running, its process is gone,
    // so nothing can run alongside a procedure started next.
    assert!(
        !alive(worker),
        "worker {worker} still runs although procedure {id} is {}",
        ended.state
    );
    ended
}

#[tokio::test]
async fn a_forged_ready_while_main_runs_fails_the_procedure_and_lets_nothing_run_alongside() {
    let daemon = TestDaemon::start();
    let other = daemon
        .ready_script("other.py", "def main():\n    print('other ran')\n")
        .await;
    let forged = forge(&daemon, "    channel.sendall(b'{\"state\": \"READY\"}\\n')").await;
    assert_failed_with(
        &forged,
        &["worker protocol violation", "READY", "while main runs"],
    );
    // The daemon goes on, and the next procedure runs alone.
    let done = daemon.run_main(other.id, FunctionArgs::default()).await;
    assert_state(&done, Complete);
    daemon.assert_printed(other.id, "other ran").await;
}

#[tokio::test]
async fn a_forged_complete_while_main_runs_on_fails_the_procedure() {
    let daemon = TestDaemon::start();
    let forged = forge(
        &daemon,
        "    channel.sendall(b'{\"state\": \"COMPLETE\"}\\n')",
    )
    .await;
    assert_failed_with(&forged, &["worker protocol violation", "COMPLETE"]);
}

#[tokio::test]
async fn a_state_after_the_final_one_fails_the_procedure() {
    let daemon = TestDaemon::start();
    let forged = forge(
        &daemon,
        "    channel.sendall(b'{\"state\": \"COMPLETE\"}\\n{\"state\": \"RUNNING\"}\\n')",
    )
    .await;
    assert_failed_with(&forged, &["worker protocol violation", "after"]);
}

#[tokio::test]
async fn binary_junk_on_the_channel_fails_the_procedure() {
    let daemon = TestDaemon::start();
    let forged = forge(&daemon, "    channel.sendall(b'\\xff\\xfe\\x00junk\\n')").await;
    assert_failed_with(&forged, &["worker protocol violation", "UTF-8"]);
}

#[tokio::test]
async fn a_line_that_is_not_a_message_fails_the_procedure() {
    let daemon = TestDaemon::start();
    let forged = forge(
        &daemon,
        "    channel.sendall(b'{\"state\": \"READY\", \"by\": \"me\"}\\n')",
    )
    .await;
    assert_failed_with(&forged, &["worker protocol violation", "not a message"]);
}

#[tokio::test]
async fn a_40_mb_line_fails_the_procedure_instead_of_stalling_it() {
    let daemon = TestDaemon::start();
    let forged = forge(&daemon, "    channel.sendall(b'x' * (40 << 20))").await;
    assert_failed_with(&forged, &["worker protocol violation", "longer than"]);
    // The daemon is unaffected.
    let next = daemon
        .run_script("next.py", "def main():\n    pass\n")
        .await;
    assert_state(&next, Complete);
}
