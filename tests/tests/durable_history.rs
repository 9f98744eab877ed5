//! Nothing lost across restarts and crashes: procedures and activities are in the durable
//! store before any listener hears of them, a restart (even after SIGKILL) finds them
//! all, interrupted ones are recorded as such and what they left running is killed, IDs
//! continue upward, a procedure that ends stays listed, and a store that cannot be
//! written holds its changes until it can.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use oet_protocol::client::StreamItem;
use oet_protocol::{
    topics, ActivityState, EventStream, FunctionArgs, ProcedureState, ProcedureState::*,
    ProcedureSummary, Value,
};
use oet_tests::{
    alive, kwargs, live_processes_mentioning, next_event, parent_of, positional, wait_for,
    wait_for_activity, wait_for_line, wait_gone, NotifySocket, TestDaemon, DEADLINE,
};
use serde_json::{json, Value as Json};

const SAMPLE_SBD: &str = include_str!("../fixtures/sbd/testfile_sample_mid_sb.json");

/// The store file of the first schema (see the store's unit tests for how it was made).
const FIRST_SCHEMA: &[u8] = include_bytes!("../fixtures/store/v1.sqlite");

/// A script that announces its worker's PID and that of a child it spawned, then blocks:
/// in `init` when asked to, else in `main`.
const BLOCKING: &str = r#"
import os, subprocess, time
from pubsub import pub

def init(block_init=False):
    if block_init:
        pub.sendMessage("test.pids", worker=os.getpid(), child=0)
        time.sleep(3600)

def main(**activity):
    child = subprocess.Popen(["sleep", "3600"])
    pub.sendMessage("test.pids", worker=os.getpid(), child=child.pid)
    time.sleep(3600)
"#;

/// The PIDs a [`BLOCKING`] script announced.
async fn announced_pids(events: &mut EventStream) -> (u32, u32) {
    let event = next_event(events, |e| e.topic == "test.pids").await;
    let map = event.payload.as_map().expect("payload map");
    let pid = |key: &str| match map.get(key) {
        Some(Value::Int(pid)) => *pid as u32,
        other => panic!("no {key} pid in {other:?}"),
    };
    (pid("worker"), pid("child"))
}

/// Every state change oetd announced for procedure `id` on `events`, read until the
/// stream ends (oetd was killed): what a listener saw.
async fn announced_states(events: &mut EventStream, id: u64) -> Vec<ProcedureState> {
    let read = async {
        let mut states = Vec::new();
        while let Some(Ok(item)) = events.next().await {
            if let StreamItem::Event(event) = item {
                if event.procedure_id() == Some(id) {
                    states.extend(event.new_state());
                }
            }
        }
        states
    };
    tokio::time::timeout(DEADLINE, read)
        .await
        .expect("the event stream ends with oetd")
}

fn states(summary: &ProcedureSummary) -> Vec<ProcedureState> {
    summary.history.iter().map(|c| c.state).collect()
}

/// The note of a procedure's last state change.
fn last_note(summary: &ProcedureSummary) -> &str {
    summary
        .history
        .last()
        .and_then(|c| c.note.as_deref())
        .unwrap_or_else(|| panic!("no note on the last state of {summary:?}"))
}

fn oetctl_ok(daemon: &TestDaemon, args: &[&str]) -> String {
    let out = daemon.oetctl(args);
    assert!(
        out.status.success(),
        "oetctl {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn finished_procedures_read_back_the_same_after_a_restart_and_ids_go_on() {
    let mut daemon = TestDaemon::start();
    let observe = daemon.script(
        "observe.py",
        "def init(subarray_id):\n    pass\n\ndef main(target, scans=1):\n    print(f'observing {target} x{scans}')\n",
    );
    let ready = daemon
        .create_ready(&observe, kwargs(&[("subarray_id", Value::Int(1))]))
        .await;
    let args = FunctionArgs {
        args: vec![Value::from("NGC 253")],
        kwargs: BTreeMap::from([("scans".to_owned(), Value::Int(2))]),
    };
    let complete = daemon.run_main(ready.id, args).await;
    assert_eq!(complete.state, Complete, "{:?}", complete.stacktrace);
    let failed = daemon
        .run_script(
            "fails.py",
            "def main():\n    raise ValueError('no such subarray')\n",
        )
        .await;
    assert_eq!(failed.state, Failed);

    let looping = daemon
        .ready_script(
            "loops.py",
            "import time\n\ndef main():\n    while True:\n        time.sleep(0.05)\n",
        )
        .await;
    let mut events = daemon.events().await;
    let mut client = daemon.client().await;
    daemon.start_main(looping.id, FunctionArgs::default()).await;
    wait_for(&mut events, &mut client, looping.id, |s| s == Running).await;
    let stopped = client.stop(looping.id, false).await.expect("stop");
    assert_eq!(stopped[0].state, Stopped);
    let ended = [
        complete,
        failed,
        client.describe(looping.id).await.expect("describe"),
    ];
    drop((events, client));

    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait().success());
    daemon.start_again();

    let mut client = daemon.client().await;
    for before in &ended {
        let after = client
            .describe(before.id)
            .await
            .expect("describe after restart");
        assert_eq!(
            &after, before,
            "procedure {} changed across the restart",
            before.id
        );
    }
    let logs = client.logs(ended[0].id).await.expect("logs");
    assert!(
        logs.lines.iter().any(|l| l.line == "observing NGC 253 x2"),
        "{logs:?}"
    );
    let listed = oetctl_ok(&daemon, &["procedure", "list", "--all"]);
    for before in &ended {
        assert!(listed.contains(&format!("\n{}  ", before.id)), "{listed}");
    }
    let next = daemon
        .ready_script("next.py", "def main():\n    pass\n")
        .await;
    assert!(
        next.id > ended[2].id,
        "IDs go on: {} after {}",
        next.id,
        ended[2].id
    );
}

/// Kills oetd at one point of a procedure's life and checks what a restart finds.
struct KillPoint {
    /// Arguments of `init`.
    init: FunctionArgs,
    /// Whether to start `main` before the kill.
    start_main: bool,
    /// Whether the script announces its processes before the kill.
    announces: bool,
    /// Whether to kill right after the create, without waiting for anything.
    at_once: bool,
}

async fn kill_and_restart(point: KillPoint) {
    let mut daemon = TestDaemon::start();
    let uri = daemon.script("blocking.py", BLOCKING);
    let mut events = daemon.events().await;
    let mut client = daemon.client().await;
    let created = client
        .create(oet_protocol::ScriptSpec::filesystem(&uri), point.init)
        .await
        .expect("create");
    let id = created.id;
    let mut processes = None;
    if !point.at_once {
        if point.start_main {
            wait_for(&mut events, &mut client, id, |s| s == Ready).await;
            client
                .start(id, "main", FunctionArgs::default())
                .await
                .expect("start");
        }
        if point.announces {
            processes = Some(announced_pids(&mut events).await);
        } else {
            wait_for(&mut events, &mut client, id, |s| s == Ready).await;
        }
    }
    let state_dir = daemon.dir.path().join("state").display().to_string();
    daemon.kill();
    let announced = announced_states(&mut events, id).await;

    daemon.start_again();
    let mut client = daemon.client().await;
    let after = client.describe(id).await.expect("describe after restart");
    assert_eq!(after.state, Unknown, "{after:?}");
    assert!(
        last_note(&after).contains("oetd restarted"),
        "{:?}",
        after.history.last()
    );
    let recorded = states(&after);
    assert!(
        recorded.starts_with(&announced),
        "every announced state is recorded: announced {announced:?}, recorded {recorded:?}"
    );
    assert_eq!(recorded.last(), Some(&Unknown));
    if let Some((worker, child)) = processes {
        assert!(
            wait_gone(worker, Duration::from_secs(10)),
            "worker {worker} left"
        );
        if child != 0 {
            assert!(
                wait_gone(child, Duration::from_secs(10)),
                "child {child} left"
            );
        }
    }
    // The restarted oetd and its own children (its zygote, perhaps still starting) are
    // not what was left: what the killed oetd left has another parent.
    let workers: Vec<String> = live_processes_mentioning(&state_dir)
        .into_iter()
        .filter(|p| {
            pid_and_parent(p)
                .is_some_and(|(pid, parent)| pid != daemon.pid() && parent != daemon.pid())
        })
        .collect();
    assert!(workers.is_empty(), "left running: {workers:?}");
    let logs = client.logs(id).await.expect("logs");
    assert!(
        logs.not_kept
            .as_deref()
            .is_some_and(|why| why.contains("not kept")),
        "{logs:?}"
    );
    let next = client
        .create(
            oet_protocol::ScriptSpec::filesystem(&uri),
            FunctionArgs::default(),
        )
        .await
        .expect("create after restart");
    assert!(next.id > id);
}

#[tokio::test]
async fn sigkill_while_running_leaves_it_unknown_with_every_announced_state() {
    kill_and_restart(KillPoint {
        init: FunctionArgs::default(),
        start_main: true,
        announces: true,
        at_once: false,
    })
    .await;
}

#[tokio::test]
async fn sigkill_while_initialising_leaves_it_unknown_with_every_announced_state() {
    kill_and_restart(KillPoint {
        init: kwargs(&[("block_init", Value::Bool(true))]),
        start_main: false,
        announces: true,
        at_once: false,
    })
    .await;
}

#[tokio::test]
async fn sigkill_while_ready_leaves_it_unknown_with_every_announced_state() {
    kill_and_restart(KillPoint {
        init: FunctionArgs::default(),
        start_main: false,
        announces: false,
        at_once: false,
    })
    .await;
}

#[tokio::test]
async fn sigkill_right_after_a_create_leaves_it_unknown_with_every_announced_state() {
    kill_and_restart(KillPoint {
        init: FunctionArgs::default(),
        start_main: false,
        announces: false,
        at_once: true,
    })
    .await;
}

/// The pid and the parent's pid of a process listed as "pid: cmdline".
fn pid_and_parent(listed: &str) -> Option<(u32, u32)> {
    let pid = listed.split(':').next()?.parse().ok()?;
    Some((pid, parent_of(pid)?))
}

#[tokio::test]
async fn what_an_interrupted_procedure_left_running_is_killed_at_restart() {
    let mut daemon = TestDaemon::start();
    let ready = daemon.ready_script("blocking.py", BLOCKING).await;
    let mut events = daemon.events().await;
    daemon.start_main(ready.id, FunctionArgs::default()).await;
    let (worker, child) = announced_pids(&mut events).await;
    // Without the guard, nothing else would kill what the script left when oetd dies.
    let guards: Vec<String> = live_processes_mentioning("--guard-procedures")
        .into_iter()
        .filter(|p| pid_and_parent(p).is_some_and(|(_, parent)| parent == daemon.pid()))
        .collect();
    assert_eq!(guards.len(), 1, "{guards:?}");
    assert!(alive(worker), "the worker {worker} runs");
    let guard: i32 = guards[0]
        .split(':')
        .next()
        .and_then(|pid| pid.parse().ok())
        .expect("the guard's pid");
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(guard, libc::SIGKILL) };
    daemon.kill();
    assert!(
        alive(child),
        "the script's child outlived oetd, as it must for this test"
    );

    daemon.start_again();
    assert!(
        wait_gone(child, Duration::from_secs(10)),
        "child {child} of interrupted procedure {} is still running",
        ready.id
    );
    assert!(wait_gone(worker, Duration::from_secs(10)));
    let after = daemon
        .client()
        .await
        .describe(ready.id)
        .await
        .expect("describe");
    assert_eq!(after.state, Unknown);
    let note = last_note(&after);
    assert!(
        note.contains("was RUNNING") && note.contains("killed"),
        "{note}"
    );
}

/// An SBD whose `allocate` activity runs `script_uri`.
fn sbd(sbd_id: &str, script_uri: &str) -> Json {
    let mut sbd: Json = serde_json::from_str(SAMPLE_SBD).expect("fixture is JSON");
    sbd["sbd_id"] = json!(sbd_id);
    sbd["activities"]["allocate"]["path"] = json!(script_uri);
    sbd["activities"]["allocate"]["function_args"]["init"]["kwargs"] = json!({});
    sbd
}

#[tokio::test]
async fn an_interrupted_activity_is_failed_after_restart_with_its_sbi_and_sbd_file_kept() {
    let mut daemon = TestDaemon::start();
    let uri = daemon.script("blocking.py", BLOCKING);
    let mut client = daemon.client().await;
    client
        .put_sbd(sbd("sbd-durable-1", &uri).to_string())
        .await
        .expect("put sbd");
    let mut events = daemon.events().await;
    let started = client
        .run_activity("allocate", "sbd-durable-1", BTreeMap::new(), false, false)
        .await
        .expect("run");
    let running = wait_for_activity(&mut events, &mut client, started.id, |s| {
        s == ActivityState::Running
    })
    .await;
    assert_eq!(running.state, ActivityState::Running);
    let procedure_id = running.procedure_id.expect("a procedure");
    let procedure = client.describe(procedure_id).await.expect("describe");
    let sb_json = match procedure
        .calls
        .last()
        .and_then(|c| c.args.kwargs.get("sb_json"))
    {
        Some(Value::String(path)) => PathBuf::from(path),
        other => panic!("main got no sb_json: {other:?}"),
    };
    assert!(sb_json.exists());

    daemon.kill();
    daemon.start_again();
    let mut client = daemon.client().await;
    let after = client
        .describe_activity(started.id)
        .await
        .expect("describe activity");
    assert_eq!(after.state, ActivityState::Failed);
    assert_eq!(after.sbi_id, running.sbi_id, "the SBI link is intact");
    assert_eq!(after.procedure_id, Some(procedure_id));
    let error = after.error.as_deref().expect("an error");
    assert!(error.contains("oetd restarted"), "{error}");
    assert_eq!(
        after.history.iter().map(|c| c.state).collect::<Vec<_>>(),
        [
            ActivityState::Requested,
            ActivityState::Prepared,
            ActivityState::Running,
            ActivityState::Failed
        ]
    );
    assert_eq!(
        client.describe(procedure_id).await.expect("describe").state,
        Unknown
    );
    assert!(sb_json.exists(), "the SBD copy is kept for inspection");
    let listed = oetctl_ok(&daemon, &["activity", "list", "--all", "--state", "failed"]);
    assert!(
        listed.contains("sbd-durable-1") && listed.contains("FAILED"),
        "{listed}"
    );
}

#[tokio::test]
async fn a_procedure_that_ends_stays_listed_and_stop_and_shutdown_find_what_they_stopped() {
    let daemon = TestDaemon::start_with("history_size = 10");
    let uri = daemon.script("quick.py", "def main():\n    print('done')\n");
    let mut ids = Vec::new();
    for _ in 0..12 {
        ids.push(daemon.create_ready(&uri, FunctionArgs::default()).await.id);
    }
    let pid = ids[2].to_string();
    let out = daemon.oetctl(&["procedure", "start", "--pid", &pid, "--listen"]);
    assert!(
        out.status.success(),
        "start --listen: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let described = oetctl_ok(&daemon, &["procedure", "describe", "--pid", &pid]);
    assert!(described.contains("COMPLETE"), "{described}");
    assert!(oetctl_ok(&daemon, &["procedure", "list"]).contains(&format!("\n{pid}  ")));

    let stop = ids[3].to_string();
    let stopped = oetctl_ok(&daemon, &["procedure", "stop", "--pid", &stop]);
    assert!(stopped.contains("STOPPED"), "{stopped}");
    let logs = oetctl_ok(&daemon, &["procedure", "logs", "--pid", &pid]);
    assert!(logs.contains("done"), "{logs}");

    for _ in 0..6 {
        daemon.create_ready(&uri, FunctionArgs::default()).await;
    }
    daemon.signal(libc::SIGTERM);
    let log = daemon.log_until_exit();
    let complaints: Vec<&String> = log.iter().filter(|l| l.contains("not found")).collect();
    assert!(complaints.is_empty(), "{complaints:#?}");
    assert!(log.iter().any(|l| l.contains("oetd stopped")), "{log:#?}");
}

/// A mount namespace of the test's own, in which a small tmpfs lies over a directory:
/// a file system the test can fill, and free again, under a running oetd.
struct SmallFileSystem {
    holder: Child,
    dir: PathBuf,
}

impl SmallFileSystem {
    fn mount(dir: &Path) -> SmallFileSystem {
        std::fs::create_dir_all(dir).expect("mkdir");
        let script = format!(
            "mount -t tmpfs -o size=4m,mode=0700 oet-test-store '{}' && echo mounted && exec sleep 100000",
            dir.display()
        );
        let mut holder = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdout(Stdio::piped())
            .spawn()
            .expect("unshare (util-linux) runs");
        let mut line = String::new();
        BufReader::new(holder.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read");
        assert_eq!(line.trim(), "mounted", "the tmpfs could not be mounted");
        SmallFileSystem {
            holder,
            dir: dir.to_owned(),
        }
    }

    /// `nsenter --mount=<the namespace> --`, to run a command inside it.
    fn enter(&self) -> Vec<String> {
        vec![
            "nsenter".into(),
            format!("--mount=/proc/{}/ns/mnt", self.holder.id()),
            "--".into(),
        ]
    }

    fn run(&self, command: &str) -> std::process::Output {
        let enter = self.enter();
        Command::new(&enter[0])
            .args(&enter[1..])
            .args(["sh", "-c", command])
            .output()
            .expect("nsenter runs")
    }

    /// Fills the file system to the last block.
    fn fill(&self) {
        let out = self.run(&format!(
            "dd if=/dev/zero of='{}/filler' bs=64k",
            self.dir.display()
        ));
        let said = String::from_utf8_lossy(&out.stderr);
        assert!(said.contains("No space left"), "dd did not fill it: {said}");
    }

    fn free(&self) {
        let out = self.run(&format!("rm '{}/filler'", self.dir.display()));
        assert!(out.status.success(), "{out:?}");
    }
}

impl Drop for SmallFileSystem {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

#[tokio::test]
async fn a_full_store_refuses_creates_keeps_running_scripts_and_writes_their_end_once_it_has_room()
{
    let mut daemon = TestDaemon::prepare("");
    let fs = SmallFileSystem::mount(&daemon.dir.path().join("state/store"));
    let notify_path = daemon.dir.path().join("notify.sock");
    let mut notify = NotifySocket::bind(&notify_path);
    let enter = fs.enter();
    let wrapper: Vec<&str> = enter.iter().map(String::as_str).collect();
    let mut cmd = daemon.command_under(&wrapper);
    cmd.env("NOTIFY_SOCKET", &notify_path);
    daemon.launch_listening(cmd);

    let fifo = daemon.dir.path().join("go.fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let waits = daemon.script(
        "waits.py",
        "def main(fifo):\n    print('waiting')\n    with open(fifo) as f:\n        f.read()\n    print('finished')\n",
    );
    let ready = daemon.create_ready(&waits, FunctionArgs::default()).await;
    let mut events = daemon.events().await;
    let mut client = daemon.client().await;
    client
        .start(
            ready.id,
            "main",
            positional(vec![Value::from(fifo.display().to_string())]),
        )
        .await
        .expect("start");
    wait_for(&mut events, &mut client, ready.id, |s| s == Running).await;

    fs.fill();
    // The store learns it is full on its next write: this create's.
    let accepted = client
        .create(
            oet_protocol::ScriptSpec::filesystem(&waits),
            FunctionArgs::default(),
        )
        .await
        .expect("a create before the store knew");
    let logged = daemon
        .log_line("cannot be written: its file system is full")
        .expect("a log record naming the problem");
    assert!(logged.contains("creates are refused"), "{logged}");
    notify
        .until(|l| l.starts_with("STATUS=STORE FAILING (file system full)"))
        .await;

    let refused = client
        .create(
            oet_protocol::ScriptSpec::filesystem(&waits),
            FunctionArgs::default(),
        )
        .await
        .expect_err("refused while the store is full");
    assert!(
        refused.to_string().contains("its file system is full"),
        "{refused}"
    );
    let status = oetctl_ok(&daemon, &["status"]);
    assert!(status.contains("FAILING"), "{status}");

    // The running script goes on and ends; reads are served meanwhile.
    let fifo_path = fifo.clone();
    tokio::task::spawn_blocking(move || {
        let mut writer = std::fs::OpenOptions::new()
            .write(true)
            .open(fifo_path)
            .expect("open the fifo");
        writer.write_all(b"go").expect("write the fifo");
    })
    .await
    .expect("fifo writer");
    daemon
        .log_line(&format!("procedure {} is COMPLETE", ready.id))
        .expect("the script ends");
    let seen = client
        .describe(ready.id)
        .await
        .expect("describe while full");
    assert_eq!(seen.state, Complete);
    daemon.assert_printed(ready.id, "finished").await;

    // Room again: what waited is written, then announced.
    fs.free();
    let complete = next_event(&mut events, |e| {
        e.topic == topics::STATECHANGE
            && e.procedure_id() == Some(ready.id)
            && e.new_state() == Some(Complete)
    })
    .await;
    assert_eq!(complete.new_state(), Some(Complete));
    daemon
        .log_line("is writable again")
        .expect("the recovery is logged");
    notify
        .until(|l| l.starts_with("STATUS=") && !l.contains("FAILING"))
        .await;
    let after = client
        .create(
            oet_protocol::ScriptSpec::filesystem(&waits),
            FunctionArgs::default(),
        )
        .await
        .expect("creates are accepted again");
    assert!(after.id > accepted.id);
    drop((events, client));

    // What was announced survives a crash.
    daemon.kill();
    let mut cmd = daemon.command_under(&wrapper);
    cmd.env_remove("NOTIFY_SOCKET");
    daemon.launch_listening(cmd);
    let mut client = daemon.client().await;
    let recorded = client
        .describe(ready.id)
        .await
        .expect("describe after restart");
    assert_eq!(recorded.state, Complete);
    assert_eq!(recorded.history, seen.history);
    let accepted = client
        .describe(accepted.id)
        .await
        .expect("the create that was accepted");
    assert!(
        accepted.history.len() > 1,
        "its states were written once the store had room: {accepted:?}"
    );
}

#[tokio::test]
async fn a_corrupt_store_is_reported_and_creates_are_refused_while_reads_work() {
    let mut daemon = TestDaemon::prepare("");
    let store = daemon.dir.path().join("state/store");
    std::fs::create_dir_all(&store).expect("mkdir");
    std::fs::write(store.join("history.sqlite"), vec![0x5a; 16384]).expect("garbage");
    let lines = daemon.launch(daemon.command(None));
    wait_for_line(&lines, "is corrupt").expect("a log record naming the problem");
    wait_for_line(&lines, "oetd listening on").expect("oetd serves all the same");
    let mut client = daemon.client().await;
    let uri = daemon.script("quick.py", "def main():\n    pass\n");
    let refused = client
        .create(
            oet_protocol::ScriptSpec::filesystem(&uri),
            FunctionArgs::default(),
        )
        .await
        .expect_err("refused");
    assert!(
        refused.to_string().contains("move the file aside"),
        "{refused}"
    );
    assert!(client.list(vec![]).await.expect("list").is_empty());
    let status = client.status().await.expect("status");
    assert!(status.store_problem.is_some_and(|p| p.contains("corrupt")));
}

#[tokio::test]
async fn a_store_of_the_first_schema_opens_with_this_oetd() {
    // Its records are from 2024: kept whatever their age, for this test.
    let mut daemon = TestDaemon::prepare("\n[store]\nmax_age_days = 0.0\n");
    let store = daemon.dir.path().join("state/store");
    std::fs::create_dir_all(&store).expect("mkdir");
    std::fs::write(store.join("history.sqlite"), FIRST_SCHEMA).expect("the fixture");
    daemon.launch_listening(daemon.command(None));
    let mut client = daemon.client().await;

    let done = client.describe(1).await.expect("procedure 1");
    assert_eq!(done.state, Complete);
    assert_eq!(done.calls[1].args.args, [Value::from("NGC 253")]);
    let failed = client.describe(2).await.expect("procedure 2");
    assert!(failed
        .stacktrace
        .expect("trace")
        .contains("ValueError: no such subarray"));
    let interrupted = client.describe(3).await.expect("procedure 3");
    assert_eq!(interrupted.state, Unknown);
    assert!(last_note(&interrupted).contains("oetd restarted while procedure 3 was RUNNING"));
    let logs = client.logs(1).await.expect("logs");
    assert_eq!(logs.lines[0].line, "observing NGC 253");
    let activity = client.describe_activity(1).await.expect("activity 1");
    assert_eq!(activity.sbi_id.as_deref(), Some("sbi-mvp01-20240501-00001"));
    let all = client
        .procedure_history(None, None, None)
        .await
        .expect("history");
    assert_eq!(all.iter().map(|p| p.id).collect::<Vec<_>>(), [1, 2, 3]);
    let uri = daemon.script("quick.py", "def main():\n    pass\n");
    let next = client
        .create(
            oet_protocol::ScriptSpec::filesystem(&uri),
            FunctionArgs::default(),
        )
        .await
        .expect("create");
    assert_eq!(
        next.id, 4,
        "IDs continue after the highest the old store issued"
    );
}

#[tokio::test]
async fn list_all_filters_by_state_time_and_count() {
    let daemon = TestDaemon::start_with("history_size = 1");
    let ok = daemon.script("ok.py", "def main():\n    pass\n");
    let bad = daemon.script("bad.py", "def main():\n    raise ValueError('x')\n");
    let mut ended = Vec::new();
    for uri in [&ok, &bad, &ok, &bad] {
        let ready = daemon.create_ready(uri, FunctionArgs::default()).await;
        ended.push(daemon.run_main(ready.id, FunctionArgs::default()).await);
    }
    let mut client = daemon.client().await;
    let failed = client
        .procedure_history(None, Some(Failed), None)
        .await
        .expect("history");
    assert_eq!(
        failed.iter().map(|p| p.id).collect::<Vec<_>>(),
        [ended[1].id, ended[3].id]
    );
    let newest = client
        .procedure_history(None, None, Some(2))
        .await
        .expect("history");
    assert_eq!(
        newest.iter().map(|p| p.id).collect::<Vec<_>>(),
        [ended[2].id, ended[3].id]
    );
    let since = ended[3].created_at();
    let recent = client
        .procedure_history(Some(since), None, None)
        .await
        .expect("history");
    assert_eq!(
        recent.iter().map(|p| p.id).collect::<Vec<_>>(),
        [ended[3].id]
    );
    let text = oetctl_ok(
        &daemon,
        &[
            "procedure",
            "list",
            "--all",
            "--state",
            "complete",
            "--limit",
            "1",
        ],
    );
    let rows: Vec<&str> = text.lines().skip(1).collect();
    assert_eq!(rows.len(), 1, "{text}");
    assert!(rows[0].starts_with(&format!("{}  ", ended[2].id)), "{text}");
    let default = oetctl_ok(&daemon, &["procedure", "list"]);
    assert_eq!(
        default.lines().count(),
        2,
        "only the newest ended: {default}"
    );
}
