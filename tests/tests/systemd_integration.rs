//! oetd as systemd starts it, without systemd: the test plays systemd's part with real
//! sockets. A test-owned `NOTIFY_SOCKET` hears READY, STATUS, WATCHDOG and STOPPING; a
//! listener bound by the test is passed as fd 3 (socket activation) and the real `oetctl`
//! works through it; a stale socket file is replaced and a live daemon's is not; the
//! configuration file is checked and printed by the binary; and the journald records
//! carry the fields that `journalctl -u oetd PROCEDURE_ID=...` selects on.

use std::collections::BTreeMap;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use oet_protocol::{ActivityState, Client, FunctionArgs, ProcedureState, ScriptSpec};
use oet_tests::journal_capture::{self, field, JournalCapture, JournalRecord};
use oet_tests::{
    next_event, oetctl_bin, oetd_bin, wait_for, wait_for_activity, wait_for_line, NotifySocket,
    TestDaemon, DEADLINE, SYSTEMD_VARIABLES,
};
use serde_json::Value as Json;

const LOOP: &str = "import time\n\ndef main():\n    while True:\n        time.sleep(0.05)\n";

// ---- sd_notify ------------------------------------------------------------------------

#[tokio::test]
async fn notify_socket_hears_ready_after_listening_then_status_watchdog_and_stopping() {
    let mut daemon = TestDaemon::prepare("");
    let notify_path = daemon.dir.path().join("notify.sock");
    let mut notify = NotifySocket::bind(&notify_path);
    let mut cmd = daemon.command(None);
    // 0.2 s: oetd pings every 0.1 s.
    cmd.env("NOTIFY_SOCKET", &notify_path)
        .env("WATCHDOG_USEC", "200000");
    let _stderr = daemon.launch(cmd);

    // READY=1 is the first thing oetd says, and by then the socket answers.
    notify.until(|l| l == "READY=1").await;
    assert_eq!(notify.seen.len(), 1, "before READY=1: {:#?}", notify.seen);
    let status = Client::connect(&daemon.socket, "oet-tests")
        .await
        .expect("connect as soon as READY=1 arrives")
        .status()
        .await
        .expect("status");
    assert_eq!(status.pid, daemon.pid());

    notify
        .until(|l| l == "STATUS=0 procedures live, none running")
        .await;
    let uri = daemon.script("loop.py", LOOP);
    let ready = daemon.create_ready(&uri, FunctionArgs::default()).await;
    notify
        .until(|l| l == "STATUS=1 procedure live, none running")
        .await;
    let mut events = daemon.events().await;
    let mut client = daemon.client().await;
    let starting = Instant::now();
    client
        .start(ready.id, "main", FunctionArgs::default())
        .await
        .expect("start");
    let running = format!("STATUS=1 procedure live, 1 running: #{} {uri}", ready.id);
    notify.until(|l| l == running).await;

    // Pings keep coming at about half of WATCHDOG_USEC. Five sent after that status
    // line (so after `starting`) take four intervals, 0.4 s nominal: asserted loosely,
    // and by the test's clock, as datagrams may wait in the socket until read.
    let after_status = notify.seen.len();
    let pings_after_status =
        |n: &NotifySocket| NotifySocket::count(&n.seen[after_status..], "WATCHDOG=1");
    while pings_after_status(&notify) < 5 {
        notify.until(|l| l == "WATCHDOG=1").await;
    }
    let took = starting.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "five pings within {took:?}: not paced by WATCHDOG_USEC"
    );

    daemon.signal(libc::SIGTERM);
    notify.until(|l| l == "STOPPING=1").await;
    // (The daemon closes connections once scripts are stopped: listen, do not ask.)
    let stopped = next_event(&mut events, |e| {
        e.procedure_id() == Some(ready.id) && e.new_state().is_some_and(|s| s.is_final())
    })
    .await;
    assert_eq!(stopped.new_state(), Some(ProcedureState::Stopped));
    let exit = daemon.wait();
    assert!(exit.success(), "oetd exited with {exit}");
    assert_eq!(
        NotifySocket::count(&notify.seen, "READY=1"),
        1,
        "READY=1 once: {:#?}",
        notify.seen
    );
}

// ---- socket activation and the socket file ------------------------------------------

fn oetctl(socket: &Path, args: &[&str]) -> Output {
    Command::new(oetctl_bin())
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run oetctl")
}

fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "oetctl failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn a_socket_passed_as_fd3_is_served_and_oetctl_works_through_it() {
    let mut daemon = TestDaemon::prepare("");
    let activated = daemon.dir.path().join("activated.sock");
    let listener = UnixListener::bind(&activated).expect("bind");
    let mut cmd = daemon.command(Some("export LISTEN_FDS=1 LISTEN_PID=$$;"));
    oetd::process::pass_fd(&mut cmd, listener.as_raw_fd(), 3);
    let lines = daemon.launch(cmd);
    drop(listener); // oetd's fd 3 is now the only one
    wait_for_line(&lines, "using the control socket passed by systemd")
        .expect("oetd takes the passed socket");
    wait_for_line(
        &lines,
        &format!("oetd listening on {}", activated.display()),
    )
    .expect("oetd serves the passed socket");

    let uri = daemon.script(
        "hello.py",
        "def init(name):\n    print(f'init {name}')\n\ndef main():\n    print('main ran')\n",
    );
    let table = ok(oetctl(
        &activated,
        &["procedure", "create", &uri, "--name=activated", "--wait"],
    ));
    assert!(table.contains("READY"), "{table}");
    let listened = ok(oetctl(&activated, &["procedure", "start", "--listen"]));
    assert!(listened.contains("COMPLETE"), "{listened}");
    let logs = ok(oetctl(&activated, &["procedure", "logs"]));
    assert!(
        logs.contains("init activated") && logs.contains("main ran"),
        "{logs}"
    );
    let status: Json = serde_json::from_str(&ok(oetctl(&activated, &["--json", "status"])))
        .expect("status is JSON");
    assert_eq!(status["pid"], daemon.pid(), "{status}");
    assert_eq!(
        status["socket"],
        activated.display().to_string(),
        "{status}"
    );
    assert!(
        !daemon.socket.exists(),
        "an activated oetd creates no socket of its own (--socket is ignored)"
    );

    daemon.signal(libc::SIGTERM);
    let exit = daemon.wait();
    assert!(exit.success(), "oetd exited with {exit}");
    assert!(
        activated.exists(),
        "a passed socket belongs to systemd, which removes it"
    );
}

#[tokio::test]
async fn a_stale_socket_file_is_replaced() {
    let mut daemon = TestDaemon::prepare("");
    // A daemon that died without unlinking its socket leaves this behind.
    drop(UnixListener::bind(&daemon.socket).expect("bind"));
    assert!(daemon.socket.exists());
    let lines = daemon.launch(daemon.command(None));
    wait_for_line(&lines, "removing stale socket file").expect("oetd says so");
    wait_for_line(&lines, "oetd listening on").expect("oetd listens");
    let status = daemon.client().await.status().await.expect("status");
    assert_eq!(status.pid, daemon.pid());
}

#[tokio::test]
async fn a_second_oetd_refuses_a_socket_another_oetd_answers_on() {
    let first = TestDaemon::start();
    let mut second = TestDaemon::prepare("");
    second.socket = first.socket.clone();
    let lines = second.launch(second.command(None));
    let exit = second.wait();
    let stderr: Vec<String> = lines.iter().collect();
    assert!(!exit.success(), "the second oetd must not start");
    let expected = format!(
        "another oetd is already listening on {}",
        first.socket.display()
    );
    assert!(stderr.iter().any(|l| l.contains(&expected)), "{stderr:#?}");
    // The first one is untouched.
    let status = first.client().await.status().await.expect("status");
    assert_eq!(status.pid, first.pid());
}

// ---- configuration through the binary -------------------------------------------------

fn oetd(args: &[&std::ffi::OsStr]) -> Output {
    let mut cmd = Command::new(oetd_bin());
    for var in SYSTEMD_VARIABLES {
        cmd.env_remove(var);
    }
    cmd.args(args).output().expect("run oetd")
}

fn with_config(text: &str, flag: &str) -> Output {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), text).expect("write config");
    oetd(&["--config".as_ref(), file.path().as_os_str(), flag.as_ref()])
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn check_config_accepts_a_good_file_and_names_bad_keys() {
    let good = "[procedures]\nhistory_size = 3\n\n[log]\nlevel = \"debug\"\n";
    let out = with_config(good, "--check-config");
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "configuration is valid"
    );

    let unknown = with_config(
        "[procedures]\nhistory_size = 3\nhistroy_size = 4\n",
        "--check-config",
    );
    assert!(!unknown.status.success());
    let err = stderr(&unknown);
    assert!(
        err.contains("histroy_size") && err.contains("line 3"),
        "{err}"
    );

    let bad_type = with_config("[server]\nmax_connections = \"many\"\n", "--check-config");
    assert!(!bad_type.status.success());
    let err = stderr(&bad_type);
    assert!(
        err.contains("max_connections") && err.contains("line 2"),
        "{err}"
    );

    let unknown_section = with_config("[sever]\nsocket = \"/x\"\n", "--check-config");
    assert!(!unknown_section.status.success());
    assert!(stderr(&unknown_section).contains("sever"));
}

#[test]
fn print_config_output_reads_back_as_the_same_configuration() {
    let printed = |out: Output| {
        assert!(out.status.success(), "{}", stderr(&out));
        String::from_utf8(out.stdout).expect("UTF-8")
    };
    let defaults = printed(oetd(&["--print-config".as_ref()]));
    assert_eq!(
        printed(with_config("", "--print-config")),
        defaults,
        "an empty file is the defaults"
    );

    let custom = printed(with_config(
        "[procedures]\nhistory_size = 3\npython = \"/opt/python/bin/python3\"\n",
        "--print-config",
    ));
    assert_ne!(custom, defaults);
    assert!(custom.contains("history_size = 3"), "{custom}");
    for text in [&defaults, &custom] {
        let check = with_config(text, "--check-config");
        assert!(check.status.success(), "{}\n{text}", stderr(&check));
        assert_eq!(&printed(with_config(text, "--print-config")), text);
    }

    let socket = printed(oetd(&[
        "--socket".as_ref(),
        "/run/elsewhere.sock".as_ref(),
        "--print-config".as_ref(),
    ]));
    assert!(
        socket.contains("socket = \"/run/elsewhere.sock\""),
        "{socket}"
    );
}

#[test]
fn the_shipped_example_configuration_is_valid_and_changes_nothing() {
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/oetd.toml");
    let with_example =
        |flag: &str| oetd(&["--config".as_ref(), example.as_os_str(), flag.as_ref()]);
    let check = with_example("--check-config");
    assert!(check.status.success(), "{}", stderr(&check));
    let printed = with_example("--print-config");
    assert!(printed.status.success(), "{}", stderr(&printed));
    assert_eq!(printed.stdout, oetd(&["--print-config".as_ref()]).stdout);
}

// ---- journald fields ------------------------------------------------------------------

const SAMPLE_SBD: &str = include_str!("../fixtures/sbd/testfile_sample_mid_sb.json");

/// Reads the capture on its own thread (journald's socket queue is short, and a full
/// queue would block oetd's logging) until oetd's last record.
fn collect(capture: JournalCapture) -> mpsc::Receiver<JournalRecord> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || loop {
        match capture.next_record(DEADLINE) {
            Ok(record) => {
                let last = field(&record, "MESSAGE") == Some("oetd stopped");
                if tx.send(record).is_err() || last {
                    return;
                }
            }
            Err(err) => {
                eprintln!("journal capture ended: {err}");
                return;
            }
        }
    });
    rx
}

fn message(record: &JournalRecord) -> &str {
    field(record, "MESSAGE").unwrap_or("")
}

#[tokio::test]
async fn journald_records_tell_a_procedures_story_with_its_fields() {
    if let Some(reason) = journal_capture::skip_reason() {
        oet_tests::skip_unless_ci(&reason);
        return;
    }
    let capture = JournalCapture::new().expect("capture");
    let mut daemon = TestDaemon::prepare("journal_burst = 20");
    let mut cmd = capture.command(oetd_bin());
    cmd.args(daemon.command(None).get_args());
    for var in SYSTEMD_VARIABLES {
        cmd.env_remove(var);
    }
    cmd.stdin(std::process::Stdio::null());
    let _stderr = daemon.launch(cmd);
    let records = collect(capture);
    let mut seen = Vec::new();
    let wait_record = |seen: &mut Vec<JournalRecord>, wanted: &dyn Fn(&JournalRecord) -> bool| {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let record = records
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no awaited record ({e}); got {seen:#?}"));
            let done = wanted(&record);
            seen.push(record);
            if done {
                return;
            }
        }
    };
    wait_record(&mut seen, &|r| message(r).starts_with("oetd listening on"));

    // An activity: the sample SBD with its allocate script written by the test.
    let allocate = daemon.script(
        "allocate.py",
        "def init(subarray_id):\n    pass\n\ndef main(*args, **kwargs):\n    print('allocating')\n",
    );
    let mut sbd: Json = serde_json::from_str(SAMPLE_SBD).expect("fixture is JSON");
    sbd["sbd_id"] = "sbd-journal-00001".into();
    sbd["activities"]["allocate"]["path"] = allocate.as_str().into();
    sbd["activities"]["allocate"]["function_args"]["main"] = serde_json::json!({});
    let mut client = daemon.client().await;
    client.put_sbd(sbd.to_string()).await.expect("put SBD");
    let mut events = daemon.events().await;
    let activity = client
        .run_activity(
            "allocate",
            "sbd-journal-00001",
            BTreeMap::new(),
            false,
            false,
        )
        .await
        .expect("run activity");
    let sbi_id = activity.sbi_id.clone().expect("an SBI");
    let done = wait_for_activity(&mut events, &mut client, activity.id, |s| {
        s == ActivityState::Complete
    })
    .await;
    assert_eq!(done.state, ActivityState::Complete, "{:?}", done.error);

    // A procedure whose script prints on both streams.
    let uri = daemon.script(
        "talk.py",
        "import sys\n\ndef main():\n    print('hello on stdout')\n    print('hello on stderr', file=sys.stderr)\n",
    );
    let created = client
        .create(ScriptSpec::filesystem(&uri), FunctionArgs::default())
        .await
        .expect("create");
    let id = created.id;
    wait_for(&mut events, &mut client, id, |s| s == ProcedureState::Ready).await;
    client
        .start(id, "main", FunctionArgs::default())
        .await
        .expect("start");
    let complete = wait_for(&mut events, &mut client, id, |_| false).await;
    assert_eq!(complete.state, ProcedureState::Complete);

    // One that prints more than its budget of 20 lines.
    let chatty = daemon.script(
        "chatty.py",
        "def main():\n    for i in range(50):\n        print(f'chatter {i}')\n",
    );
    let chatty = client
        .create(ScriptSpec::filesystem(&chatty), FunctionArgs::default())
        .await
        .expect("create")
        .id;
    wait_for(&mut events, &mut client, chatty, |s| {
        s == ProcedureState::Ready
    })
    .await;
    client
        .start(chatty, "main", FunctionArgs::default())
        .await
        .expect("start");
    let done = wait_for(&mut events, &mut client, chatty, |_| false).await;
    assert_eq!(done.state, ProcedureState::Complete);

    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait().success());
    wait_record(&mut seen, &|r| message(r) == "oetd stopped");

    let pid = id.to_string();
    let of_procedure: Vec<&JournalRecord> = seen
        .iter()
        .filter(|r| field(r, "PROCEDURE_ID") == Some(&pid))
        .collect();

    // Every state it entered, with its script.
    let states: Vec<&str> = of_procedure
        .iter()
        .filter_map(|r| field(r, "STATE"))
        .collect();
    let history: Vec<&str> = complete.history.iter().map(|c| c.state.as_str()).collect();
    assert_eq!(states, history, "{of_procedure:#?}");
    for record in of_procedure.iter().filter(|r| r.contains_key("STATE")) {
        assert_eq!(
            field(record, "SCRIPT_URI"),
            Some(uri.as_str()),
            "{record:#?}"
        );
        assert_eq!(field(record, "SYSLOG_IDENTIFIER"), Some("oetd"));
        assert_eq!(field(record, "PRIORITY"), Some("6"));
    }

    // The script's lines, as the script's own records of the procedure.
    for (stream, text) in [("stdout", "hello on stdout"), ("stderr", "hello on stderr")] {
        let line = of_procedure
            .iter()
            .find(|r| message(r) == text)
            .unwrap_or_else(|| panic!("no record of {text:?} in {of_procedure:#?}"));
        assert_eq!(field(line, "STREAM"), Some(stream), "{line:#?}");
        assert_eq!(
            field(line, "SYSLOG_IDENTIFIER"),
            Some("oet-script"),
            "{line:#?}"
        );
        assert_eq!(field(line, "SCRIPT_URI"), Some(uri.as_str()), "{line:#?}");
    }
    // A script's budget: 20 of its lines, the rest counted in one record of oetd's.
    let chatty_id = chatty.to_string();
    let of_chatty: Vec<&JournalRecord> = seen
        .iter()
        .filter(|r| field(r, "PROCEDURE_ID") == Some(&chatty_id))
        .collect();
    let printed: Vec<&str> = of_chatty
        .iter()
        .filter(|r| r.contains_key("STREAM"))
        .map(|r| message(r))
        .collect();
    let first: Vec<String> = (0..20).map(|i| format!("chatter {i}")).collect();
    assert_eq!(printed, first, "{of_chatty:#?}");
    let suppressed = of_chatty
        .iter()
        .find(|r| message(r).contains("lines suppressed"))
        .unwrap_or_else(|| panic!("no suppression notice in {of_chatty:#?}"));
    assert!(
        message(suppressed).starts_with(&format!("procedure {chatty}: 30 lines suppressed")),
        "{suppressed:#?}"
    );
    assert_eq!(field(suppressed, "SYSLOG_IDENTIFIER"), Some("oetd"));
    // Nothing the script printed is a record of oetd's.
    assert!(
        seen.iter()
            .all(|r| field(r, "SYSLOG_IDENTIFIER") != Some("oetd")
                || !message(r).contains("chatter")),
        "a script line logged as oetd's"
    );

    // Who started it is part of its story, as an audit record.
    let request = seen
        .iter()
        .find(|r| message(r).starts_with("audit: request.procedure.start by uid"))
        .expect("the start request is audited");
    assert_eq!(field(request, "OET_AUDIT"), Some("1"), "{request:#?}");
    assert_eq!(
        field(request, "AUDIT_REQUEST"),
        Some("request.procedure.start"),
        "{request:#?}"
    );
    assert_eq!(
        field(request, "PROCEDURE_ID"),
        Some(pid.as_str()),
        "{request:#?}"
    );
    assert!(field(request, "PEER_UID").is_some(), "{request:#?}");

    // Whatever the log says about this procedure carries its ID, so that
    // `journalctl PROCEDURE_ID=<id>` finds it.
    let mention = format!("procedure {id} ");
    for record in seen.iter().filter(|r| message(r).contains(&mention)) {
        assert_eq!(
            field(record, "PROCEDURE_ID"),
            Some(pid.as_str()),
            "{record:#?}"
        );
    }

    // The activity's records carry its IDs.
    let aid = activity.id.to_string();
    let of_activity: Vec<&JournalRecord> = seen
        .iter()
        .filter(|r| field(r, "ACTIVITY_ID") == Some(&aid))
        .collect();
    assert!(
        of_activity
            .iter()
            .any(|r| field(r, "STATE") == Some("COMPLETE")),
        "{of_activity:#?}"
    );
    for record in &of_activity {
        assert_eq!(
            field(record, "SBD_ID"),
            Some("sbd-journal-00001"),
            "{record:#?}"
        );
        assert_eq!(
            field(record, "SBI_ID"),
            Some(sbi_id.as_str()),
            "{record:#?}"
        );
    }
    // Nothing went wrong, so nothing is logged as a warning or worse.
    let alarming: Vec<&JournalRecord> = seen
        .iter()
        .filter(|r| field(r, "PRIORITY").is_some_and(|p| p < "5"))
        .collect();
    assert!(alarming.is_empty(), "{alarming:#?}");
    let activity_pid = activity.procedure_id.expect("a procedure").to_string();
    assert!(
        seen.iter()
            .any(|r| field(r, "PROCEDURE_ID") == Some(&activity_pid)
                && message(r) == "allocating"
                && field(r, "STREAM") == Some("stdout")),
        "the activity's script output is a record of its procedure"
    );
}
