//! One oetd per state directory: a second one refuses to start before it touches
//! anything there, so the first one's work goes on undisturbed; start-up clean-up never
//! follows symbolic links and removes only what oetd itself made; and a state directory
//! that others could write to is refused.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use oet_protocol::{ActivityState, FunctionArgs, GitArgs, ProcedureState::*, ScriptSpec};
use oet_tests::git::{BuildGate, TestRepo, PYPROJECT};
use oet_tests::{assert_state, oetd_bin, wait_for, wait_for_activity, TestDaemon, DEADLINE};
use serde_json::{json, Value as Json};

const SAMPLE_SBD: &str = include_str!("../fixtures/sbd/testfile_sample_mid_sb.json");

/// pip must not look for an index: the test project builds with its own backend.
const OFFLINE_PIP: &str = "[python]\npip_extra_args = [\"--no-index\", \"--no-build-isolation\"]\n";

fn state_dir(daemon: &TestDaemon) -> PathBuf {
    daemon.dir.path().join("state")
}

/// Runs `cmd` to its end (bounded by [`DEADLINE`]) and returns its output.
fn output_within_deadline(mut cmd: Command) -> Output {
    let (tx, rx) = std::sync::mpsc::channel();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("oetd starts");
    let pid = child.id();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(DEADLINE) {
        Ok(out) => out.expect("oetd's output"),
        Err(_) => {
            // SAFETY: kill has no memory-safety preconditions.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("oetd did not exit within {DEADLINE:?}");
        }
    }
}

/// Another oetd on `daemon`'s configuration (so its state directory), with a socket of
/// its own; returns its output once it has exited.
fn second_oetd(daemon: &TestDaemon) -> (Output, PathBuf) {
    let socket = daemon.dir.path().join("second.sock");
    let mut cmd = Command::new(oetd_bin());
    cmd.arg("--socket")
        .arg(&socket)
        .arg("--config")
        .arg(&daemon.config_path);
    for var in oet_tests::SYSTEMD_VARIABLES {
        cmd.env_remove(var);
    }
    (output_within_deadline(cmd), socket)
}

/// Every file below `dir` with its contents, to tell that nothing changed.
/// Every file under `dir` with its contents, but the durable store, which the running
/// oetd may write at any moment.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let store = dir.join("store");
    let mut found = BTreeMap::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(dir) = stack.pop() {
        if dir == store {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let kind = entry.file_type().expect("file type");
            if kind.is_dir() {
                stack.push(path.clone());
                found.insert(path, Vec::new());
            } else if kind.is_file() {
                found.insert(path.clone(), std::fs::read(&path).unwrap_or_default());
            } else {
                found.insert(path, b"(other)".to_vec());
            }
        }
    }
    found
}

/// Observes until `gate` is opened, then reads its SBD file.
const OBSERVE_UNTIL_GATE: &str = r#"
import json

def init(subarray_id):
    pass

def main(gate=None, sb_json=None, sbi_id=None):
    with open(gate) as fifo:
        fifo.read()
    with open(sb_json) as f:
        print("observed", json.load(f)["sbd_id"])
"#;

#[tokio::test]
async fn a_second_oetd_on_the_same_state_directory_exits_and_disturbs_nothing() {
    let repo = TestRepo::new();
    let build_gate = BuildGate::new();
    repo.commit_project(
        PYPROJECT,
        Some(build_gate.path()),
        "def main():\n    import oettestpkg\n",
    );
    let daemon = TestDaemon::start_with(OFFLINE_PIP);
    let mut events = daemon.events().await;
    let mut client = daemon.client().await;

    // An environment being built...
    let building = client
        .create(
            ScriptSpec::Git {
                script_uri: "git://scripts/observe.py".into(),
                git_args: GitArgs {
                    git_repo: Some(repo.url().to_owned()),
                    git_branch: None,
                    git_commit: None,
                },
                create_env: true,
            },
            FunctionArgs::default(),
        )
        .await
        .expect("create");
    let build = build_gate.wait_for_build(DEADLINE).await;

    // ...and an activity observing, with its SBD file in the state directory.
    let script = daemon.script("observe.py", OBSERVE_UNTIL_GATE);
    let observe_gate = BuildGate::new();
    let mut sbd: Json = serde_json::from_str(SAMPLE_SBD).expect("fixture is JSON");
    sbd["sbd_id"] = json!("sbd-lock-00001");
    sbd["activities"]["allocate"]["path"] = json!(script);
    sbd["activities"]["allocate"]["function_args"]["main"] =
        json!({"args": [], "kwargs": {"gate": observe_gate.path()}});
    client.put_sbd(sbd.to_string()).await.expect("put SBD");
    let activity = client
        .run_activity("allocate", "sbd-lock-00001", BTreeMap::new(), false, false)
        .await
        .expect("run activity");
    let observing = observe_gate.wait_for_build(DEADLINE).await;

    let before = snapshot(&state_dir(&daemon));
    let (second, second_socket) = second_oetd(&daemon);
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success(), "the second oetd ran: {stderr}");
    let state = state_dir(&daemon);
    assert!(
        stderr.contains(&format!(
            "state directory {} is in use by oetd PID {}",
            state.display(),
            daemon.pid()
        )),
        "{stderr}"
    );
    assert!(!second_socket.exists(), "the second oetd made its socket");
    assert_eq!(
        snapshot(&state_dir(&daemon)),
        before,
        "the second oetd changed files"
    );

    // The first one's work completes.
    drop(build);
    let ready = wait_for(&mut events, &mut client, building.id, |s| s == Ready).await;
    assert_state(&ready, Ready);
    drop(observing);
    let done = wait_for_activity(&mut events, &mut client, activity.id, |s| {
        s == ActivityState::Complete
    })
    .await;
    assert_eq!(done.state, ActivityState::Complete, "{:?}", done.error);
    let procedure = done.procedure_id.expect("a procedure");
    daemon
        .assert_printed(procedure, "observed sbd-lock-00001")
        .await;
}

#[tokio::test]
async fn start_up_clean_up_does_not_follow_a_symlinked_activities_directory() {
    let daemon = TestDaemon::prepare("");
    let elsewhere = daemon.dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");
    std::fs::write(elsewhere.join("sb-sbi-1-precious.json"), "{}").expect("write");
    let state = state_dir(&daemon);
    std::fs::create_dir_all(&state).expect("mkdir state");
    std::os::unix::fs::symlink(&elsewhere, state.join("activities")).expect("symlink");

    let out = output_within_deadline(daemon.command(None));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "oetd started: {stderr}");
    assert!(
        stderr.contains("activities") && stderr.contains("symbolic link"),
        "{stderr}"
    );
    assert!(
        elsewhere.join("sb-sbi-1-precious.json").exists(),
        "a file behind the link was removed"
    );
    assert!(state.join("activities").is_symlink());
}

#[tokio::test]
async fn start_up_clean_up_removes_only_what_oetd_made() {
    let daemon = TestDaemon::prepare("");
    let state = state_dir(&daemon);
    let activities = state.join("activities");
    let git_tmp = state.join("git/tmp");
    for dir in [&activities, &git_tmp] {
        std::fs::create_dir_all(dir).expect("mkdir");
        std::fs::write(dir.join("notes.txt"), "mine").expect("write");
    }
    std::fs::set_permissions(&activities, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    // What an earlier oetd left: an SBD file and an unfinished fetch.
    std::fs::write(activities.join("sb-sbi-9-x1y2.json"), "{}").expect("write");
    std::fs::create_dir_all(git_tmp.join("fetch-abc/objects")).expect("mkdir");
    // A link to elsewhere, named like oetd's own: removed as a link, not followed.
    let elsewhere = daemon.dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).expect("mkdir");
    std::fs::write(elsewhere.join("keep"), "x").expect("write");
    std::os::unix::fs::symlink(&elsewhere, git_tmp.join("clone-link")).expect("symlink");

    let mut daemon = daemon;
    let lines = daemon.launch(daemon.command(None));
    oet_tests::wait_for_line(&lines, "oetd listening on").expect("oetd starts");
    assert!(activities.join("notes.txt").exists());
    assert!(git_tmp.join("notes.txt").exists());
    assert!(!activities.join("sb-sbi-9-x1y2.json").exists());
    assert!(!git_tmp.join("fetch-abc").exists());
    assert!(!git_tmp.join("clone-link").is_symlink());
    assert!(elsewhere.join("keep").exists(), "a link was followed");
}

#[tokio::test]
async fn a_state_directory_that_others_can_write_to_is_refused() {
    let daemon = TestDaemon::prepare("");
    let state = state_dir(&daemon);
    std::fs::create_dir_all(&state).expect("mkdir");
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let out = output_within_deadline(daemon.command(None));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "oetd started: {stderr}");
    assert!(
        stderr.contains(&format!("state directory {}", state.display()))
            && stderr.contains("writable"),
        "{stderr}"
    );
    assert!(
        std::fs::read_dir(&state).expect("read").next().is_none(),
        "oetd wrote into a state directory it refused"
    );

    // Owned by another user: refused too.
    if !is_root() {
        return;
    }
    std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    std::os::unix::fs::chown(&state, Some(65534), None).expect("chown");
    let out = output_within_deadline(daemon.command(None));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "oetd started: {stderr}");
    assert!(stderr.contains("owned by"), "{stderr}");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
