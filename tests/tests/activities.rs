//! Activities as an operator runs them: put an SBD into the ODA, run one of its
//! activities, and watch the SBI recorded, the script prepared and started, and the
//! activity's states follow its procedure — with the filesystem ODA and with a real HTTP
//! ODA, through the protocol and through the real `oetctl`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::Router;
use oet_protocol::{
    topics, ActivityState, ActivitySummary, Client, ClientError, ErrorKind, EventStream,
    FunctionArgs, ProcedureState, ProcedureSummary, ScriptSpec, Value,
};
use oet_tests::git::TestRepo;
use oet_tests::{activity_states, kwargs, next_event, wait_for, wait_for_activity, TestDaemon};
use serde_json::{json, Value as Json};

const SAMPLE_SBD: &str = include_str!("../fixtures/sbd/testfile_sample_mid_sb.json");

/// Writes what it was given into `out`, so the test can see it; raises or blocks on
/// request.
const ALLOCATE: &str = r#"
import json
import os
import time

def init(subarray_id):
    print(f"init for subarray {subarray_id}")

def main(out=None, sb_json=None, sbi_id=None, raise_msg=None, block=False):
    if raise_msg:
        raise Exception(raise_msg)
    if block:
        print("observing until stopped")
        time.sleep(3600)
    sb = None
    mode = None
    if sb_json is not None:
        with open(sb_json) as f:
            sb = json.load(f)
        mode = os.stat(sb_json).st_mode & 0o777
    with open(out, "w") as f:
        json.dump({"sb": sb, "sb_json": sb_json, "sbi_id": sbi_id, "mode": mode}, f)
"#;

/// The sample mid SBD with its `allocate` activity pointed at a script of the test,
/// writing its findings to `out`.
fn sample_sbd(sbd_id: &str, script_uri: &str, out: &Path) -> Json {
    let mut sbd: Json = serde_json::from_str(SAMPLE_SBD).expect("fixture is JSON");
    sbd["sbd_id"] = json!(sbd_id);
    let allocate = &mut sbd["activities"]["allocate"];
    allocate["path"] = json!(script_uri);
    allocate["function_args"]["main"]["kwargs"]["out"] = json!(out.display().to_string());
    sbd
}

fn state_dir(daemon: &TestDaemon) -> PathBuf {
    daemon.dir.path().join("state")
}

fn sbi_files(daemon: &TestDaemon) -> Vec<PathBuf> {
    files_in(&state_dir(daemon).join("oda/sbis"))
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(dir) {
        Ok(entries) => entries.map(|e| e.expect("dir entry").path()).collect(),
        Err(_) => Vec::new(),
    }
}

fn read_json(path: &Path) -> Json {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()))
}

/// Script arguments of an activity request, by function name.
type ScriptArgs = BTreeMap<String, FunctionArgs>;

fn main_kwargs(pairs: &[(&str, Value)]) -> ScriptArgs {
    BTreeMap::from([("main".to_owned(), kwargs(pairs))])
}

/// The states of an activity that ran its script and ended in `end`.
fn ran_to(end: ActivityState) -> [ActivityState; 4] {
    [
        ActivityState::Requested,
        ActivityState::Prepared,
        ActivityState::Running,
        end,
    ]
}

/// An operator's connection to the daemon: a client to make requests and an event stream,
/// subscribed before any request, to wait on.
struct Operator {
    events: EventStream,
    client: Client,
}

impl Operator {
    async fn connect(daemon: &TestDaemon) -> Operator {
        Operator {
            events: daemon.events().await,
            client: daemon.client().await,
        }
    }

    /// Asks for `activity` of `sbd_id` to run, neither prepare-only nor listening.
    async fn try_run(
        &mut self,
        activity: &str,
        sbd_id: &str,
        script_args: ScriptArgs,
    ) -> Result<ActivitySummary, ClientError> {
        self.client
            .run_activity(activity, sbd_id, script_args, false, false)
            .await
    }

    /// Runs the `allocate` activity of `sbd_id`, which must be accepted.
    async fn run(&mut self, sbd_id: &str, script_args: ScriptArgs) -> ActivitySummary {
        self.try_run("allocate", sbd_id, script_args)
            .await
            .expect("run")
    }

    /// Waits until activity `id` is in `state` (or final).
    async fn wait_until(&mut self, id: u64, state: ActivityState) -> ActivitySummary {
        wait_for_activity(&mut self.events, &mut self.client, id, |s| s == state).await
    }

    /// Waits until activity `id` has ended.
    async fn wait_end(&mut self, id: u64) -> ActivitySummary {
        wait_for_activity(&mut self.events, &mut self.client, id, |_| false).await
    }

    /// Every procedure in the daemon's list.
    async fn procedures(&mut self) -> Vec<ProcedureSummary> {
        self.client.list(vec![]).await.expect("list")
    }

    /// Every activity in the daemon's list.
    async fn activities(&mut self) -> Vec<ActivitySummary> {
        self.client.list_activities(vec![]).await.expect("list")
    }
}

/// The sample SBD with id `sbd_id` for a daemon, its script written into the daemon's
/// scripts directory; returns the SBD and the file where the script writes its findings.
fn sample_for(daemon: &TestDaemon, sbd_id: &str) -> (Json, PathBuf) {
    let uri = daemon.script("allocate.py", ALLOCATE);
    let out = daemon.dir.path().join(format!("{sbd_id}.out.json"));
    (sample_sbd(sbd_id, &uri, &out), out)
}

/// Puts the sample SBD (script written by the test) into the daemon's ODA.
async fn put_sample(daemon: &TestDaemon, sbd_id: &str) -> PathBuf {
    let (sbd, out) = sample_for(daemon, sbd_id);
    let stored = daemon
        .client()
        .await
        .put_sbd(sbd.to_string())
        .await
        .expect("put SBD");
    assert_eq!(stored, (sbd_id.to_owned(), 1));
    out
}

#[tokio::test]
async fn an_activity_runs_its_script_with_the_sbd_and_a_recorded_sbi() {
    let daemon = TestDaemon::start();
    let out = put_sample(&daemon, "sbd-mvp01-00001").await;
    let mut op = Operator::connect(&daemon).await;
    let mut watch = daemon.events().await;

    let requested = op.run("sbd-mvp01-00001", ScriptArgs::new()).await;
    assert_eq!(requested.state, ActivityState::Requested);
    assert_eq!(requested.sbd_id, "sbd-mvp01-00001");
    let sbi_id = requested.sbi_id.clone().expect("an SBI id");
    let pid = requested.procedure_id.expect("a procedure");

    let done = op.wait_until(requested.id, ActivityState::Complete).await;
    assert_eq!(activity_states(&done), ran_to(ActivityState::Complete));
    let times: Vec<f64> = done.history.iter().map(|c| c.time).collect();
    assert!(times.windows(2).all(|w| w[0] <= w[1]), "{times:?}");
    let procedure = op.client.describe(pid).await.expect("procedure");
    assert_eq!(procedure.state, ProcedureState::Complete);
    assert_eq!(
        procedure
            .calls
            .first()
            .map(|c| c.args.kwargs["subarray_id"].clone()),
        Some(Value::Int(1)),
        "init gets the SBD's arguments"
    );

    // The SBI in the ODA refers to the SBD and records the call.
    let sbi = read_json(&state_dir(&daemon).join(format!("oda/sbis/{sbi_id}.json")));
    assert_eq!(sbi["sbi_id"], json!(sbi_id));
    assert_eq!(sbi["sbd_ref"], "sbd-mvp01-00001");
    assert_eq!(sbi["sbd_version"], 1);
    assert_eq!(sbi["telescope"], "ska_mid");
    assert_eq!(sbi["activities"][0]["activity_ref"], "allocate");

    // The script got the SBD (a private file, the same document) and the SBI's id.
    let seen = read_json(&out);
    let (expected, _) = sample_for(&daemon, "sbd-mvp01-00001");
    assert_eq!(seen["sb"], expected);
    assert_eq!(seen["sbi_id"], json!(sbi_id));
    assert_eq!(seen["mode"], json!(0o600));
    let sb_json = PathBuf::from(seen["sb_json"].as_str().expect("sb_json path"));
    assert!(sb_json.starts_with(state_dir(&daemon)), "{sb_json:?}");

    // The story on the bus, in order.
    for topic in [
        "activity.lifecycle.requested",
        "activity.lifecycle.prepared",
        "activity.lifecycle.running",
        topics::SB_STARTED,
        "activity.lifecycle.complete",
    ] {
        let event = next_event(&mut watch, |e| e.topic == topic).await;
        if topic == topics::SB_STARTED {
            let payload = event.payload.as_map().expect("a map");
            assert_eq!(payload["sbd_id"], Value::from("sbd-mvp01-00001"));
            assert_eq!(payload["sbi_id"], Value::from(sbi_id.as_str()));
            assert_eq!(event.activity_id(), Some(requested.id));
        }
    }

    assert_eq!(op.activities().await, vec![done]);
}

#[tokio::test]
async fn prepare_only_waits_for_the_operator_to_start_main() {
    let daemon = TestDaemon::start();
    let out = put_sample(&daemon, "sbd-prep-1").await;
    let mut op = Operator::connect(&daemon).await;
    let requested = op
        .client
        .run_activity("allocate", "sbd-prep-1", ScriptArgs::new(), true, false)
        .await
        .expect("run");
    assert!(requested.prepare_only);
    let pid = requested.procedure_id.expect("procedure");
    let prepared = op.wait_until(requested.id, ActivityState::Prepared).await;
    assert_eq!(prepared.state, ActivityState::Prepared);
    let ready = wait_for(&mut op.events, &mut op.client, pid, |s| {
        s == ProcedureState::Ready
    })
    .await;
    assert_eq!(ready.state, ProcedureState::Ready);
    assert_eq!(
        op.client
            .describe_activity(requested.id)
            .await
            .expect("describe")
            .state,
        ActivityState::Prepared
    );

    // A plain procedure start, as an operator would give it.
    let args = main_kwargs(&[("out", Value::from(out.display().to_string()))]);
    op.client
        .start(pid, "main", args["main"].clone())
        .await
        .expect("start");
    let done = op.wait_until(requested.id, ActivityState::Complete).await;
    assert_eq!(activity_states(&done), ran_to(ActivityState::Complete));
}

#[tokio::test]
async fn a_failing_main_fails_the_activity_with_the_message_in_the_stack_trace() {
    let daemon = TestDaemon::start();
    put_sample(&daemon, "sbd-fail-1").await;
    let mut op = Operator::connect(&daemon).await;
    let script_args = main_kwargs(&[("raise_msg", Value::from("fail"))]);
    let requested = op.run("sbd-fail-1", script_args.clone()).await;
    assert_eq!(requested.script_args, script_args);
    let done = op.wait_end(requested.id).await;
    assert_eq!(done.state, ActivityState::Failed);
    assert_eq!(activity_states(&done), ran_to(ActivityState::Failed));
    let procedure = op
        .client
        .describe(requested.procedure_id.expect("procedure"))
        .await
        .expect("procedure");
    assert_eq!(procedure.state, ProcedureState::Failed);
    let trace = procedure.stacktrace.expect("a stack trace");
    assert!(trace.contains("Exception: fail"), "{trace}");
    // The activity says why, itself.
    let error = done.error.expect("a FAILED activity says why");
    assert!(error.starts_with("Exception: fail"), "{error}");
    assert!(
        error.contains(&format!("see procedure {}", procedure.id)),
        "{error}"
    );
    let output = daemon.oetctl(&["activity", "describe", "--aid", &requested.id.to_string()]);
    let described = String::from_utf8_lossy(&output.stdout);
    assert!(described.contains("Error: Exception: fail"), "{described}");
}

#[tokio::test]
async fn stopping_the_procedure_stops_the_activity() {
    let daemon = TestDaemon::start_with("stop_grace_secs = 5");
    put_sample(&daemon, "sbd-stop-1").await;
    let mut op = Operator::connect(&daemon).await;
    let block = main_kwargs(&[("block", Value::Bool(true))]);
    let requested = op.run("sbd-stop-1", block).await;
    let running = op.wait_until(requested.id, ActivityState::Running).await;
    assert_eq!(running.state, ActivityState::Running);
    let stopped = op
        .client
        .stop(requested.procedure_id.expect("procedure"), false)
        .await
        .expect("stop");
    assert_eq!(stopped[0].state, ProcedureState::Stopped);
    let done = op.wait_end(requested.id).await;
    assert_eq!(done.state, ActivityState::Stopped);
}

/// Asserts that a request was refused with `kind` and a message containing `text`.
fn assert_refused<T: std::fmt::Debug>(result: Result<T, ClientError>, kind: ErrorKind, text: &str) {
    match result {
        Err(ClientError::Daemon(err)) => {
            assert_eq!(err.kind, kind, "{err}");
            assert!(
                err.message.contains(text),
                "'{text}' not in: {}",
                err.message
            );
        }
        other => panic!("expected a refusal containing '{text}', got {other:?}"),
    }
}

#[tokio::test]
async fn bad_requests_are_refused_clearly_and_create_nothing() {
    let daemon = TestDaemon::start();
    put_sample(&daemon, "sbd-good-1").await;
    let mut op = Operator::connect(&daemon).await;
    let none = ScriptArgs::new;

    assert_refused(
        op.try_run("allocate", "sbd-nope", none()).await,
        ErrorKind::NotFound,
        "the ODA has no SBD 'sbd-nope'",
    );
    assert_refused(
        op.try_run("observe", "sbd-good-1", none()).await,
        ErrorKind::NotFound,
        "SBD 'sbd-good-1' has no activity 'observe'; its activities are: allocate",
    );
    assert_refused(
        op.client.put_sbd("{\"sbd_id\": \"x\",".to_owned()).await,
        ErrorKind::InvalidRequest,
        "not valid JSON",
    );

    // Documents that reached the ODA by other means and cannot be used.
    let sbds = state_dir(&daemon).join("oda/sbds");
    std::fs::create_dir_all(sbds.join("sbd-torn")).expect("mkdir");
    std::fs::write(sbds.join("sbd-torn/1.json"), "{\"sbd_id\": ").expect("write");
    assert_refused(
        op.try_run("allocate", "sbd-torn", none()).await,
        ErrorKind::InvalidRequest,
        "not valid JSON",
    );
    let no_script =
        json!({"sbd_id": "sbd-noscript", "activities": {"allocate": {"kind": "filesystem"}}});
    op.client
        .put_sbd(no_script.to_string())
        .await
        .expect_err("refused on the way in");
    std::fs::create_dir_all(sbds.join("sbd-noscript")).expect("mkdir");
    std::fs::write(sbds.join("sbd-noscript/1.json"), no_script.to_string()).expect("write");
    assert_refused(
        op.try_run("allocate", "sbd-noscript", none()).await,
        ErrorKind::InvalidRequest,
        "activity 'allocate' of the SBD has no `path`",
    );
    let mut missing = sample_sbd(
        "sbd-missing",
        "file:///nonexistent/allocate.py",
        Path::new("/tmp/x"),
    );
    missing["metadata"]["version"] = json!(2);
    assert_eq!(
        op.client.put_sbd(missing.to_string()).await.expect("put"),
        ("sbd-missing".to_owned(), 2)
    );
    assert_refused(
        op.try_run("allocate", "sbd-missing", none()).await,
        ErrorKind::InvalidRequest,
        "script /nonexistent/allocate.py cannot be used on this host",
    );
    assert_refused(
        op.try_run(
            "allocate",
            "sbd-good-1",
            main_kwargs(&[("x", Value::Float(f64::INFINITY))]),
        )
        .await,
        ErrorKind::InvalidRequest,
        "invalid script argument for main",
    );

    assert!(op.procedures().await.is_empty(), "no procedure");
    assert!(op.activities().await.is_empty());
    assert!(
        sbi_files(&daemon).is_empty(),
        "no SBI: {:?}",
        sbi_files(&daemon)
    );
    assert!(files_in(&state_dir(&daemon).join("activities")).is_empty());
    assert_refused(
        op.client.describe_activity(1).await,
        ErrorKind::NotFound,
        "no activity with ID 1",
    );
}

#[tokio::test]
async fn the_sbd_file_goes_when_the_procedure_leaves_the_history() {
    let daemon = TestDaemon::start_with("history_size = 1");
    let out = put_sample(&daemon, "sbd-hist-1").await;
    let mut op = Operator::connect(&daemon).await;
    let first = op.run("sbd-hist-1", ScriptArgs::new()).await;
    op.wait_end(first.id).await;
    let sb_json = PathBuf::from(read_json(&out)["sb_json"].as_str().expect("path"));
    assert!(
        sb_json.exists(),
        "kept while its procedure is in the history"
    );

    // A newer procedure ends; the history keeps only it.
    let ready = daemon
        .ready_script("noop.py", "def main():\n    pass\n")
        .await;
    daemon.run_main(ready.id, FunctionArgs::default()).await;
    assert_eq!(
        op.procedures().await.len(),
        1,
        "the first procedure was forgotten"
    );
    assert!(op.activities().await.is_empty());
    assert!(!sb_json.exists(), "{} should be removed", sb_json.display());
}

/// A small ODA over HTTP: SBDs by id, SBIs posted and given ids.
#[derive(Default)]
struct RemoteOda {
    sbds: BTreeMap<String, Json>,
    sbis: Vec<Json>,
}

type Shared = Arc<Mutex<RemoteOda>>;

fn lock(oda: &Shared) -> std::sync::MutexGuard<'_, RemoteOda> {
    oda.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn serve_oda(oda: Shared) -> String {
    async fn get_sbd(
        State(oda): State<Shared>,
        UrlPath(id): UrlPath<String>,
    ) -> (StatusCode, String) {
        match lock(&oda).sbds.get(&id) {
            Some(sbd) => (StatusCode::OK, sbd.to_string()),
            None => (
                StatusCode::NOT_FOUND,
                json!({"detail": format!("no SBD {id}")}).to_string(),
            ),
        }
    }
    async fn post_sbi(State(oda): State<Shared>, body: Bytes) -> (StatusCode, String) {
        let Ok(mut sbi) = serde_json::from_slice::<Json>(&body) else {
            return (StatusCode::UNPROCESSABLE_ENTITY, "not JSON".into());
        };
        let mut oda = lock(&oda);
        sbi["sbi_id"] = json!(format!("sbi-remote-{}", oda.sbis.len() + 1));
        oda.sbis.push(sbi.clone());
        (StatusCode::OK, sbi.to_string())
    }
    let app = Router::new().nest(
        "/ska-db-oda/api/v7",
        Router::new()
            .route("/sbds/{id}", get(get_sbd))
            .route("/sbis", post(post_sbi))
            .with_state(oda),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/ska-db-oda/api/v7")
}

#[tokio::test]
async fn a_remote_oda_serves_the_sbd_and_records_the_sbi() {
    let remote = Shared::default();
    let url = serve_oda(remote.clone()).await;
    let daemon = TestDaemon::start_with(&format!("\n[oda]\nbackend = \"rest\"\nurl = {url:?}\n"));
    let (sbd, out) = sample_for(&daemon, "sbd-remote-1");
    lock(&remote)
        .sbds
        .insert("sbd-remote-1".into(), sbd.clone());

    let mut op = Operator::connect(&daemon).await;
    let requested = op.run("sbd-remote-1", ScriptArgs::new()).await;
    assert_eq!(requested.sbi_id.as_deref(), Some("sbi-remote-1"));
    let done = op.wait_end(requested.id).await;
    assert_eq!(done.state, ActivityState::Complete);

    let sbis = lock(&remote).sbis.clone();
    assert_eq!(sbis.len(), 1);
    assert_eq!(sbis[0]["sbd_ref"], "sbd-remote-1");
    assert_eq!(sbis[0]["sbd_version"], 1);
    assert_eq!(sbis[0]["activities"][0]["activity_ref"], "allocate");
    let seen = read_json(&out);
    assert_eq!(seen["sb"], sbd);
    assert_eq!(seen["sbi_id"], "sbi-remote-1");

    // The remote's refusal reaches the caller with its status and body.
    assert_refused(
        op.try_run("allocate", "sbd-absent", ScriptArgs::new())
            .await,
        ErrorKind::NotFound,
        "no SBD sbd-absent",
    );
    assert_eq!(lock(&remote).sbis.len(), 1, "no SBI for a refused request");
}

fn ok(output: std::process::Output) -> String {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "oetctl failed ({}): stdout:\n{stdout}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// Runs `oetctl activity run allocate <sbd_id>` followed by `args`.
fn oetctl_run_allocate(daemon: &TestDaemon, sbd_id: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec!["activity", "run", "allocate", sbd_id];
    all.extend_from_slice(args);
    daemon.oetctl(&all)
}

#[tokio::test]
async fn oetctl_puts_an_sbd_and_runs_lists_and_describes_activities() {
    let daemon = TestDaemon::start();
    let (mut sbd, _) = sample_for(&daemon, "unused");
    // Loaded without an id, as a new SBD is: the ODA gives it one.
    sbd.as_object_mut().expect("object").remove("sbd_id");
    let file = daemon.dir.path().join("new_sbd.json");
    std::fs::write(&file, sbd.to_string()).expect("write SBD");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).expect("chmod");

    let stored = ok(daemon.oetctl(&["oda", "put-sbd", &file.display().to_string()]));
    let sbd_id = stored
        .trim()
        .strip_prefix("stored SBD ")
        .and_then(|rest| rest.strip_suffix(" version 1"))
        .unwrap_or_else(|| panic!("unexpected put-sbd output: {stored}"))
        .to_owned();
    assert!(sbd_id.starts_with("sbd-oet-"), "{sbd_id}");

    let listened = ok(oetctl_run_allocate(
        &daemon,
        &sbd_id,
        &[
            "--listen",
            "--script-args",
            r#"{"init": {"kwargs": {"subarray_id": 2}}}"#,
        ],
    ));
    for topic in [
        "activity.lifecycle.requested",
        "procedure.lifecycle.statechange",
        "activity.lifecycle.prepared",
        "sb.lifecycle.started",
        "activity.lifecycle.complete",
    ] {
        assert!(
            listened.contains(topic),
            "{topic} missing from:\n{listened}"
        );
    }
    assert!(listened.trim_end().ends_with("COMPLETE"), "{listened}");

    let table = ok(daemon.oetctl(&["activity", "list"]));
    let mut lines = table.lines();
    assert!(
        lines
            .next()
            .is_some_and(|h| h.starts_with("ID  Activity  SBD")),
        "{table}"
    );
    let row: Vec<&str> = lines.next().expect("a row").split_whitespace().collect();
    assert_eq!(row[0], "1");
    assert_eq!(row[1], "allocate");
    assert_eq!(row[2], sbd_id);
    assert_eq!(row.last(), Some(&"COMPLETE"));

    let described = ok(daemon.oetctl(&["activity", "describe"]));
    assert!(described.contains("History:"), "{described}");
    assert!(described.contains("{\"subarray_id\":2}"), "{described}");
    let json: Json = serde_json::from_str(&ok(
        daemon.oetctl(&["activity", "describe", "--aid", "1", "--json"])
    ))
    .expect("JSON");
    assert_eq!(json["sbd_id"], json!(sbd_id));
    assert_eq!(json["state"], "COMPLETE");
    let states: Vec<&str> = json["activity_states"]
        .as_array()
        .expect("states")
        .iter()
        .filter_map(|pair| pair[0].as_str())
        .collect();
    assert_eq!(states, ["REQUESTED", "PREPARED", "RUNNING", "COMPLETE"]);
    let procedure = json["procedure_id"].as_u64().expect("procedure id");
    let init_args = daemon
        .client()
        .await
        .describe(procedure)
        .await
        .expect("procedure")
        .calls[0]
        .args
        .kwargs["subarray_id"]
        .clone();
    assert_eq!(
        init_args,
        Value::Int(2),
        "--script-args are laid over the SBD's"
    );

    // Failures are one line and a non-zero status.
    let output = daemon.oetctl(&["activity", "run", "observe", &sbd_id]);
    assert_eq!(output.status.code(), Some(1));
    let err = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(err.contains("its activities are: allocate"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    // Malformed --script-args are a wrong command line.
    let output = oetctl_run_allocate(&daemon, &sbd_id, &["--script-args", "[1]"]);
    assert_eq!(output.status.code(), Some(2));
    let failed = oetctl_run_allocate(
        &daemon,
        &sbd_id,
        &[
            "--listen",
            "--script-args",
            r#"{"main": {"kwargs": {"raise_msg": "fail"}}}"#,
        ],
    );
    assert_eq!(failed.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&failed.stderr).contains("ended FAILED"),
        "{}",
        String::from_utf8_lossy(&failed.stderr)
    );
}

#[tokio::test]
async fn an_activity_that_cannot_start_main_stays_prepared_and_says_why() {
    let daemon = TestDaemon::start();
    put_sample(&daemon, "sbd-busy-1").await;
    let ready = daemon
        .ready_script(
            "busy.py",
            "import time\n\ndef main():\n    time.sleep(3600)\n",
        )
        .await;
    let mut op = Operator::connect(&daemon).await;
    daemon.start_main(ready.id, FunctionArgs::default()).await;

    let requested = op.run("sbd-busy-1", ScriptArgs::new()).await;
    let event = next_event(&mut op.events, |e| {
        e.topic == "activity.lifecycle.error" && e.activity_id() == Some(requested.id)
    })
    .await;
    assert_eq!(event.msg_src, "oetd");
    let summary = op
        .client
        .describe_activity(requested.id)
        .await
        .expect("describe");
    assert_eq!(summary.state, ActivityState::Prepared);
    let error = summary.error.expect("an error");
    assert!(
        error.contains("could not be started") && error.contains("RUNNING"),
        "{error}"
    );
    // Stopped while it waits, the activity says it was stopped, not that main could not
    // start.
    let waiting = requested.procedure_id.expect("its procedure");
    op.client.stop(waiting, false).await.expect("stop it");
    let done = op.wait_end(requested.id).await;
    assert_eq!(done.state, ActivityState::Stopped);
    assert_eq!(done.error, None, "a stale error outlived the stop");
    op.client
        .stop(ready.id, false)
        .await
        .expect("stop the busy one");
}

#[tokio::test]
async fn a_git_activity_runs_the_script_of_its_commit() {
    let daemon = TestDaemon::start();
    let repo = TestRepo::new();
    let commit = repo.commit(&[("scripts/allocate.py", ALLOCATE)], "allocate");
    // A later commit on the branch must not be the one that runs.
    repo.commit(
        &[(
            "scripts/allocate.py",
            "def main(**kwargs):\n    raise Exception('the wrong commit ran')\n",
        )],
        "break it",
    );

    let out = daemon.dir.path().join("git.out.json");
    let sbd = json!({
        "sbd_id": "sbd-git-1",
        "telescope": "ska_low",
        "activities": {"allocate": {
            "kind": "git",
            "path": "git://scripts/allocate.py",
            "repo": repo.url(),
            "branch": "main",
            "commit": commit,
            "function_args": {
                "init": {"kwargs": {"subarray_id": 3}},
                "main": {"kwargs": {"out": out.display().to_string()}},
            },
        }},
    });
    let mut op = Operator::connect(&daemon).await;
    op.client.put_sbd(sbd.to_string()).await.expect("put");
    let requested = op.run("sbd-git-1", ScriptArgs::new()).await;
    let procedure = op
        .client
        .describe(requested.procedure_id.expect("procedure"))
        .await
        .expect("procedure");
    match &procedure.script {
        ScriptSpec::Git {
            script_uri,
            git_args,
            create_env,
        } => {
            assert_eq!(script_uri, "git://scripts/allocate.py");
            assert_eq!(git_args.git_repo.as_deref(), Some(repo.url()));
            assert_eq!(git_args.git_branch.as_deref(), Some("main"));
            assert_eq!(git_args.git_commit.as_deref(), Some(commit.as_str()));
            assert!(!create_env);
        }
        other => panic!("expected a git script, got {other:?}"),
    }
    let done = op.wait_end(requested.id).await;
    let procedure = op.client.describe(procedure.id).await.expect("procedure");
    assert_eq!(
        done.state,
        ActivityState::Complete,
        "stack trace: {:?}",
        procedure.stacktrace
    );
    let seen = read_json(&out);
    assert_eq!(seen["sb"], sbd);
    assert_eq!(seen["sbi_id"], json!(done.sbi_id));
}
