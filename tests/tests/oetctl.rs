//! The operator's story told through the real `oetctl` binary against a real `oetd`:
//! create and wait, start and watch, describe, read the logs, stop, listen, and the
//! one-line errors when something is wrong.

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;

use oet_protocol::ProcedureState;
use oet_tests::{oetctl_bin, TestDaemon, DEADLINE};
use serde_json::Value as Json;

const OBSERVE: &str = r#"
def init(subarray_id):
    print(f"init for subarray {subarray_id}")

def main(*args, **kwargs):
    print(f"main {list(args)} {sorted(kwargs.items())}")

def calibrate(target):
    print(f"calibrating on {target}")
"#;

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts success and returns stdout.
fn ok(output: Output) -> String {
    assert!(
        output.status.success(),
        "oetctl failed ({}): stdout:\n{}\nstderr:\n{}",
        output.status,
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

/// Asserts failure with exit status 1 and exactly one `oetctl: ...` line on stderr, and
/// returns that line.
fn one_line_failure(output: &Output) -> String {
    failure_with(output, 1)
}

/// Asserts a refused command line: exit status 2 and exactly one `oetctl: ...` line on
/// stderr, which it returns.
fn usage_failure(output: &Output) -> String {
    failure_with(output, 2)
}

fn failure_with(output: &Output, code: i32) -> String {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(output),
        stderr(output)
    );
    let err = stderr(output);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line on stderr, got:\n{err}");
    assert!(lines[0].starts_with("oetctl: "), "{err}");
    lines[0].to_owned()
}

/// The ID in the first data row of a procedure table.
/// Runs oetctl against `socket` (where nobody need listen).
fn oetctl_at(socket: &std::path::Path, args: &[&str]) -> Output {
    Command::new(oetctl_bin())
        .arg("--socket")
        .arg(socket)
        .args(args)
        .output()
        .expect("run oetctl")
}

fn first_id(table: &str) -> u64 {
    let mut lines = table.lines();
    assert!(
        lines.next().is_some_and(|h| h.starts_with("ID  Script")),
        "a procedure table:\n{table}"
    );
    lines
        .next()
        .and_then(|row| row.split_whitespace().next())
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no procedure row in:\n{table}"))
}

fn json(text: &str) -> Json {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

#[test]
fn without_a_daemon_oetctl_says_so_in_one_line() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("nobody.sock");
    let output = Command::new(oetctl_bin())
        .arg("--socket")
        .arg(&socket)
        .args(["procedure", "list"])
        .output()
        .expect("run oetctl");
    let line = one_line_failure(&output);
    assert!(
        line.starts_with(&format!(
            "oetctl: cannot connect to oetd at {}: ",
            socket.display()
        )),
        "{line}"
    );
    assert!(line.contains("is oetd running?"), "{line}");
    assert!(stdout(&output).is_empty());

    // OET_SOCKET is honoured when --socket is absent.
    let output = Command::new(oetctl_bin())
        .env("OET_SOCKET", &socket)
        .arg("status")
        .output()
        .expect("run oetctl");
    assert!(one_line_failure(&output).contains(&socket.display().to_string()));
}

#[test]
fn a_wrong_command_line_is_refused_before_connecting() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("nobody.sock");
    let run = |args: &[&str]| oetctl_at(&socket, args);
    let output = run(&["procedure", "create", "file:///x.py", "--git_branch=dev"]);
    assert_eq!(
        usage_failure(&output),
        "oetctl: --git_branch only applies to git:// scripts, but the script is 'file:///x.py'"
    );
    usage_failure(&run(&["procedure", "list", "--pid", "seven"]));

    // A script keyword without a value, a word that is no option: wrong command lines.
    let line = usage_failure(&run(&["procedure", "start", "--scans", "2"]));
    assert!(line.contains("'--scans' is not an option"), "{line}");
    assert!(line.contains("--key=value"), "{line}");
    let line = usage_failure(&run(&[
        "procedure",
        "create",
        "file:///x.py",
        "--wait",
        "--bogus",
    ]));
    assert!(line.contains("'--bogus'"), "{line}");
    // After `--`, oetctl's own option is the script's argument, and said so.
    let line = usage_failure(&run(&["procedure", "start", "--", "--listen"]));
    assert!(line.contains("'--listen' comes after --"), "{line}");
    assert!(!line.contains("is not an option"), "{line}");
}

#[test]
fn with_json_a_failure_is_a_json_object_and_keeps_its_exit_status() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("nobody.sock");
    let run = |args: &[&str]| oetctl_at(&socket, args);
    for (args, code, kind) in [
        (&["--json", "procedure", "list"][..], 1, "unreachable"),
        (
            &["procedure", "start", "--scans", "2", "--json"][..],
            2,
            "usage",
        ),
        (
            &["procedure", "list", "--pid", "x", "--json"][..],
            2,
            "usage",
        ),
    ] {
        let output = run(args);
        assert_eq!(
            output.status.code(),
            Some(code),
            "{args:?}: {}",
            stderr(&output)
        );
        let error = json(stderr(&output).trim());
        assert_eq!(error["exit_code"], code, "{error}");
        assert_eq!(error["error"]["kind"], kind, "{error}");
        assert!(
            error["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{error}"
        );
        assert!(stdout(&output).is_empty(), "{args:?}");
    }
}

#[test]
fn words_that_look_like_mistyped_keywords_are_passed_on_with_a_warning() {
    let daemon = TestDaemon::start();
    let uri = daemon.script("observe.py", OBSERVE);
    let table = ok(daemon.oetctl(&["procedure", "create", &uri, "--subarray_id=1", "--wait"]));
    let id = first_id(&table).to_string();
    let output = daemon.oetctl(&[
        "procedure",
        "start",
        "--pid",
        &id,
        "--listen",
        "scans=2",
        "-n=1",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let warnings = stderr(&output);
    assert!(
        warnings.contains("'scans=2' is passed to the script as a positional string")
            && warnings.contains("write --scans=2"),
        "{warnings}"
    );
    assert!(warnings.contains("'-n=1'"), "{warnings}");
    let out = ok(daemon.oetctl(&["procedure", "logs", "--pid", &id]));
    assert!(out.contains("main ['scans=2', '-n=1'] []"), "{out}");
}

#[test]
fn create_wait_start_listen_describe_logs_and_list() {
    let daemon = TestDaemon::start();
    let uri = daemon.script("observe.py", OBSERVE);

    let table = ok(daemon.oetctl(&["procedure", "create", &uri, "--subarray_id=3", "--wait"]));
    let id = first_id(&table);
    assert!(table.contains(&uri), "{table}");
    assert!(
        table
            .lines()
            .nth(1)
            .is_some_and(|row| row.ends_with("READY")),
        "{table}"
    );

    // Script arguments around oetctl's own flags; --pid defaults to the newest.
    let out = ok(daemon.oetctl(&[
        "procedure",
        "start",
        "7",
        "--listen",
        "--mode=fast",
        "[1, 2]",
    ]));
    let event_lines: Vec<&str> = out.lines().take_while(|l| !l.is_empty()).collect();
    let new_states: Vec<&str> = event_lines
        .iter()
        .filter(|line| line.contains("procedure.lifecycle.statechange"))
        .filter_map(|line| line.split("\"new_state\":\"").nth(1))
        .filter_map(|rest| rest.split('"').next())
        .collect();
    assert_eq!(new_states, ["RUNNING", "COMPLETE"], "{out}");
    let summary_table = out
        .split("\n\n")
        .last()
        .unwrap_or_else(|| panic!("a summary after the events:\n{out}"));
    assert_eq!(first_id(summary_table), id);
    assert!(summary_table.trim_end().ends_with("COMPLETE"), "{out}");

    let described = ok(daemon.oetctl(&["procedure", "describe"]));
    let history: Vec<&str> = described
        .split("History:\n")
        .nth(1)
        .and_then(|rest| rest.split("\n\n").next())
        .unwrap_or_else(|| panic!("a history section:\n{described}"))
        .lines()
        .skip(1)
        .filter_map(|line| line.split_whitespace().nth(1))
        .collect();
    assert_eq!(
        history,
        [
            "CREATING",
            "IDLE",
            "LOADING",
            "IDLE",
            "INITIALISING",
            "READY",
            "RUNNING",
            "COMPLETE"
        ],
        "{described}"
    );
    let calls: Vec<Vec<&str>> = described
        .split("Calls:\n")
        .nth(1)
        .unwrap_or_else(|| panic!("a calls section:\n{described}"))
        .lines()
        .skip(1)
        .take_while(|line| !line.is_empty())
        .map(|line| line.split_whitespace().skip(1).collect())
        .collect();
    assert_eq!(
        calls,
        [
            vec!["init", "[]", r#"{"subarray_id":3}"#],
            vec!["main", "[7,[1,2]]", r#"{"mode":"fast"}"#]
        ],
        "{described}"
    );
    assert!(!described.contains("Stack trace"), "{described}");

    let logs = ok(daemon.oetctl(&["procedure", "logs", "--pid", &id.to_string()]));
    let printed: Vec<&str> = logs
        .lines()
        .filter_map(|line| line.split_once("  stdout  ").map(|(_, text)| text))
        .collect();
    assert_eq!(
        printed,
        ["init for subarray 3", "main [7, [1, 2]] [('mode', 'fast')]"],
        "{logs}"
    );

    let listed = json(&ok(daemon.oetctl(&["procedure", "list", "--json"])));
    let first = &listed[0];
    assert_eq!(first["id"], id);
    assert_eq!(first["state"], "COMPLETE");
    assert_eq!(first["script"]["script_type"], "filesystem");
    assert_eq!(first["script"]["script_uri"], uri.as_str());
    assert_eq!(
        first["script_args"]["main"],
        serde_json::json!({"args": [7, [1, 2]], "kwargs": {"mode": "fast"}})
    );
    let table = ok(daemon.oetctl(&["procedure", "list"]));
    assert_eq!(first_id(&table), id);
}

#[test]
fn json_anywhere_on_the_line_gives_the_summary_as_json() {
    let daemon = TestDaemon::start();
    let uri = daemon.script("observe.py", OBSERVE);
    let created = json(&ok(daemon.oetctl(&[
        "procedure",
        "create",
        &uri,
        "--subarray_id=1",
        "--wait",
        "--json",
    ])));
    assert_eq!(created["state"], "READY");
    assert_eq!(
        created["script_args"]["init"],
        serde_json::json!({"args": [], "kwargs": {"subarray_id": 1}})
    );
    let states: Vec<&str> = created["history"]["process_states"]
        .as_array()
        .expect("process_states")
        .iter()
        .filter_map(|pair| pair[0].as_str())
        .collect();
    assert_eq!(states.last(), Some(&"READY"));

    let status = json(&ok(daemon.oetctl(&["--json", "status"])));
    assert_eq!(status["procedures_live"], 1);
    assert_eq!(status["running"], serde_json::json!([]));
}

#[test]
fn create_wait_shows_the_stack_trace_and_fails_when_init_raises() {
    let daemon = TestDaemon::start();
    let uri = daemon.script(
        "bad_init.py",
        "def init():\n    raise RuntimeError(\"dish 4 is stowed\")\n",
    );
    let output = daemon.oetctl(&["procedure", "create", &uri, "--wait"]);
    let line = one_line_failure(&output);
    let out = stdout(&output);
    let id = first_id(&out);
    assert_eq!(line, format!("oetctl: procedure {id} ended FAILED"));
    assert!(out.contains("FAILED"), "{out}");
    assert!(out.contains("Stack trace:"), "{out}");
    assert!(out.contains("RuntimeError: dish 4 is stowed"), "{out}");
}

#[test]
fn start_listen_fails_when_main_raises() {
    let daemon = TestDaemon::start();
    let uri = daemon.script(
        "bad_main.py",
        "def main():\n    raise ValueError(\"no sky tonight\")\n",
    );
    let id = first_id(&ok(daemon.oetctl(&["procedure", "create", &uri, "--wait"])));
    let output = daemon.oetctl(&["procedure", "start", "--pid", &id.to_string(), "--listen"]);
    assert_eq!(
        one_line_failure(&output),
        format!("oetctl: procedure {id} ended FAILED")
    );
    let out = stdout(&output);
    assert!(
        out.contains(r#""new_state":"FAILED""#),
        "the FAILED state change is shown:\n{out}"
    );
    assert!(out.contains("ValueError: no sky tonight"), "{out}");
}

#[test]
fn start_listen_of_another_function_returns_when_ready_again() {
    let daemon = TestDaemon::start();
    let uri = daemon.script("observe.py", OBSERVE);
    ok(daemon.oetctl(&["procedure", "create", &uri, "--subarray_id=2", "--wait"]));
    let out = ok(daemon.oetctl(&[
        "procedure",
        "start",
        "--function",
        "calibrate",
        "--target=\"3C 273\"",
        "--listen",
    ]));
    let summary_table = out.split("\n\n").last().unwrap_or_default();
    assert!(summary_table.trim_end().ends_with("READY"), "{out}");
    let logs = ok(daemon.oetctl(&["procedure", "logs"]));
    assert!(logs.contains("stdout  calibrating on 3C 273"), "{logs}");
}

#[test]
fn stop_without_pid_stops_the_running_procedure() {
    let daemon = TestDaemon::start();
    let uri = daemon.script(
        "forever.py",
        "import threading\n\ndef main():\n    threading.Event().wait()\n",
    );
    let id = first_id(&ok(daemon.oetctl(&["procedure", "create", &uri, "--wait"])));
    let started = ok(daemon.oetctl(&["procedure", "start"]));
    assert_eq!(first_id(&started), id);

    let stopped = json(&ok(daemon.oetctl(&["procedure", "stop", "--json"])));
    assert_eq!(stopped[0]["id"], id);
    assert_eq!(stopped[0]["state"], ProcedureState::Stopped.as_str());

    let output = daemon.oetctl(&["procedure", "stop"]);
    assert_eq!(
        one_line_failure(&output),
        "oetctl: no procedure is RUNNING; name the one to stop with --pid"
    );
}

#[test]
fn an_unknown_pid_is_a_one_line_error() {
    let daemon = TestDaemon::start();
    let line = one_line_failure(&daemon.oetctl(&["procedure", "describe", "--pid", "99"]));
    assert!(line.contains("not found"), "{line}");
    assert!(line.contains("99"), "{line}");
    let line = one_line_failure(&daemon.oetctl(&["procedure", "logs"]));
    assert_eq!(
        line,
        "oetctl: oetd has no procedures; create one with 'oetctl procedure create'"
    );
}

#[test]
fn listen_prints_the_events_of_the_chosen_topics() {
    let daemon = TestDaemon::start();
    let uri = daemon.script("observe.py", OBSERVE);
    let mut listener = Command::new(oetctl_bin())
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["listen", "--topic", "procedure.lifecycle.state"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run oetctl listen");

    // The listener says on stderr when it is subscribed; from then on nothing is missed.
    let stderr = listener.stderr.take().expect("stderr pipe");
    let mut stderr_lines = BufReader::new(stderr).lines();
    let first = stderr_lines.next().and_then(Result::ok).unwrap_or_default();
    assert!(
        first.starts_with("oetctl: listening to oetd at "),
        "{first}"
    );

    let (tx, lines) = mpsc::channel();
    let stdout = listener.stdout.take().expect("stdout pipe");
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });

    let id = first_id(&ok(daemon.oetctl(&[
        "procedure",
        "create",
        &uri,
        "--subarray_id=1",
        "--wait",
    ])));
    let mut seen = Vec::new();
    loop {
        let line = lines
            .recv_timeout(DEADLINE)
            .unwrap_or_else(|_| panic!("no READY event in time; saw:\n{}", seen.join("\n")));
        let done = line.contains(r#""new_state":"READY""#);
        seen.push(line);
        if done {
            break;
        }
    }
    listener.kill().expect("interrupt oetctl listen");
    listener.wait().expect("reap oetctl listen");

    for line in &seen {
        let fields: Vec<&str> = line.splitn(4, "  ").collect();
        assert_eq!(fields.len(), 4, "time, topic, source, payload: {line}");
        assert_eq!(fields[1], "procedure.lifecycle.statechange", "{line}");
        let payload = json(fields[3]);
        assert_eq!(payload["procedure_id"], id, "{line}");
    }
    assert_eq!(
        seen.first()
            .and_then(|line| line.split("\"new_state\":\"").nth(1))
            .and_then(|rest| rest.split('"').next()),
        Some("CREATING"),
        "{seen:?}"
    );
}

#[test]
fn status_counts_as_live_only_what_has_not_ended() {
    let daemon = TestDaemon::start();
    let uri = daemon.script("quick.py", "def main():\n    pass\n");
    let id = first_id(&ok(daemon.oetctl(&["procedure", "create", &uri, "--wait"]))).to_string();
    let status = json(&ok(daemon.oetctl(&["status", "--json"])));
    assert_eq!(status["procedures_live"], 1, "{status}");
    ok(daemon.oetctl(&["procedure", "start", "--pid", &id, "--listen"]));
    let status = json(&ok(daemon.oetctl(&["status", "--json"])));
    assert_eq!(
        status["procedures_live"], 0,
        "a COMPLETE procedure is not live: {status}"
    );
    let text = ok(daemon.oetctl(&["status"]));
    assert!(text.contains("0 live"), "{text}");
}

#[test]
fn scripts_that_cannot_run_are_refused_in_one_line_and_cost_no_history() {
    let daemon = TestDaemon::start();
    let missing = format!("file://{}/scripts/missing.py", daemon.dir.path().display());
    for (args, says) in [
        (
            vec!["procedure", "create", missing.as_str()],
            "cannot be used on this host",
        ),
        (
            vec![
                "procedure",
                "create",
                "git://observe.py",
                "--git_repo=relative/repo",
            ],
            "is relative",
        ),
        (
            vec!["procedure", "create", "git://observe.py"],
            "no git repository was given",
        ),
    ] {
        let line = one_line_failure(&daemon.oetctl(&args));
        assert!(line.starts_with("oetctl: invalid request: "), "{line}");
        assert!(line.contains(says), "{args:?}: {line}");
    }
    let listed = json(&ok(daemon.oetctl(&["procedure", "list", "--json"])));
    assert_eq!(listed, serde_json::json!([]), "refusals recorded nothing");
    // ... and took no ID.
    let uri = daemon.script("ok.py", "def main():\n    pass\n");
    assert_eq!(
        first_id(&ok(daemon.oetctl(&["procedure", "create", &uri]))),
        1
    );
}
