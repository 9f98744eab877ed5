//! Scripts from git repositories, optionally in their own Python environment: the right
//! version of the file runs, environments are built once per commit and shared, failures
//! say why, and a stop during PREP_ENV leaves nothing behind.

use std::path::{Path, PathBuf};

use oet_protocol::{FunctionArgs, GitArgs, ProcedureState, ProcedureState::*, ScriptSpec};
use oet_tests::git::{project_files, TestRepo};
use oet_tests::{next_event, states, wait_for, TestDaemon, DEADLINE};

/// pip must not look for an index: the test project builds with its own backend.
const OFFLINE_PIP: &str = "[git]\npip_extra_args = [\"--no-index\", \"--no-build-isolation\"]\n";

fn git_script(
    repo: &TestRepo,
    path: &str,
    branch: Option<&str>,
    commit: Option<&str>,
    create_env: bool,
) -> ScriptSpec {
    ScriptSpec::Git {
        script_uri: format!("git://{path}"),
        git_args: GitArgs {
            git_repo: Some(repo.url().to_owned()),
            git_branch: branch.map(str::to_owned),
            git_commit: commit.map(str::to_owned),
        },
        create_env,
    }
}

/// Creates a procedure and waits until it is READY or final.
async fn create(daemon: &TestDaemon, script: ScriptSpec) -> oet_protocol::ProcedureSummary {
    let mut events = daemon.events().await;
    let mut client = daemon.client().await;
    let created = client
        .create(script, FunctionArgs::default())
        .await
        .expect("create");
    wait_for(&mut events, &mut client, created.id, |s| s == Ready).await
}

/// Runs main of a READY procedure to its end and returns the lines it printed.
async fn run_main(daemon: &TestDaemon, id: u64) -> (ProcedureState, Vec<String>) {
    let mut events = daemon.events().await;
    let mut client = daemon.client().await;
    client
        .start(id, "main", FunctionArgs::default())
        .await
        .expect("start");
    let done = wait_for(&mut events, &mut client, id, |_| false).await;
    let logs = client.logs(id).await.expect("logs");
    (done.state, logs.lines.into_iter().map(|l| l.line).collect())
}

fn script_printing(text: &str) -> String {
    format!("def main():\n    print({text:?})\n")
}

#[tokio::test]
async fn a_branch_and_an_older_commit_each_run_their_own_version() {
    let repo = TestRepo::new();
    let first = repo.commit(
        &[("scripts/observe.py", &script_printing("version 1"))],
        "v1",
    );
    repo.commit(
        &[("scripts/observe.py", &script_printing("version 2"))],
        "v2",
    );
    repo.git(&["checkout", "--quiet", "-b", "feature"]);
    repo.commit(
        &[("scripts/observe.py", &script_printing("feature version"))],
        "feature",
    );
    repo.git(&["checkout", "--quiet", "main"]);
    let daemon = TestDaemon::start();

    let cases = [
        (Some("feature"), None, "feature version"),
        (None, Some(first.as_str()), "version 1"),
        (None, None, "version 2"),
        // The commit wins over the branch.
        (Some("feature"), Some(&first[..10]), "version 1"),
    ];
    for (branch, commit, expected) in cases {
        let ready = create(
            &daemon,
            git_script(&repo, "scripts/observe.py", branch, commit, false),
        )
        .await;
        assert_eq!(ready.state, Ready, "{:?}", ready.stacktrace);
        assert_eq!(states(&ready), [Creating, Idle, Loading, Idle, Ready]);
        let (state, lines) = run_main(&daemon, ready.id).await;
        assert_eq!(state, Complete);
        assert_eq!(lines, [expected], "branch {branch:?} commit {commit:?}");
    }
}

const USES_PACKAGE: &str =
    "import oettestpkg\n\ndef main():\n    print(f\"value {oettestpkg.VALUE}\")\n";

fn commit_project(repo: &TestRepo, block_on: Option<&Path>) -> String {
    let mut files = project_files(block_on);
    files.push(("scripts/observe.py".into(), USES_PACKAGE.into()));
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    repo.commit(&refs, "project")
}

#[tokio::test]
async fn create_env_installs_the_project_the_script_needs() {
    let repo = TestRepo::new();
    commit_project(&repo, None);
    let daemon = TestDaemon::start_with(OFFLINE_PIP);

    let without = create(
        &daemon,
        git_script(&repo, "scripts/observe.py", None, None, false),
    )
    .await;
    assert_eq!(without.state, Failed);
    let trace = without.stacktrace.expect("stack trace");
    assert!(trace.contains("ModuleNotFoundError"), "{trace}");

    let with = create(
        &daemon,
        git_script(&repo, "scripts/observe.py", None, None, true),
    )
    .await;
    assert_eq!(with.state, Ready, "{:?}", with.stacktrace);
    assert_eq!(
        states(&with),
        [Creating, Idle, PrepEnv, Idle, Loading, Idle, Ready]
    );
    let (state, lines) = run_main(&daemon, with.id).await;
    assert_eq!(state, Complete);
    assert!(lines.contains(&"value 42".to_string()), "{lines:?}");
}

fn make_fifo(dir: &Path) -> PathBuf {
    let fifo = dir.join("build-gate");
    let c_path = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("no NUL");
    // SAFETY: a valid NUL-terminated path.
    let rc = unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
    assert_eq!(rc, 0, "mkfifo failed");
    fifo
}

/// Opening the gate for writing returns once the build backend is reading it, i.e. once
/// the build is under way; dropping the file lets the build go on.
async fn open_gate(fifo: &Path) -> std::fs::File {
    let fifo = fifo.to_owned();
    tokio::time::timeout(
        DEADLINE,
        tokio::task::spawn_blocking(move || {
            std::fs::OpenOptions::new()
                .write(true)
                .open(fifo)
                .expect("open fifo")
        }),
    )
    .await
    .expect("the build reached the backend in time")
    .expect("join")
}

fn env_count(daemon: &TestDaemon) -> usize {
    std::fs::read_dir(daemon.dir.path().join("state/envs"))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn two_procedures_of_one_commit_share_one_environment() {
    let repo = TestRepo::new();
    let gate_dir = tempfile::tempdir().expect("dir");
    let fifo = make_fifo(gate_dir.path());
    commit_project(&repo, Some(&fifo));
    let daemon = TestDaemon::start_with(OFFLINE_PIP);
    let mut events = daemon.events().await;
    let mut client = daemon.client().await;
    let script = git_script(&repo, "scripts/observe.py", None, None, true);
    let first = client
        .create(script.clone(), FunctionArgs::default())
        .await
        .expect("create");
    let second = client
        .create(script, FunctionArgs::default())
        .await
        .expect("create");
    let mut preparing = std::collections::BTreeSet::new();
    while preparing.len() < 2 {
        let event = next_event(&mut events, |e| e.new_state() == Some(PrepEnv)).await;
        preparing.extend(event.procedure_id());
    }
    assert_eq!(preparing, [first.id, second.id].into());
    // Both wait in PREP_ENV while the one build is held at the gate.
    let gate = open_gate(&fifo).await;
    drop(gate);
    for id in [first.id, second.id] {
        let ready = wait_for(&mut events, &mut client, id, |s| s == Ready).await;
        assert_eq!(ready.state, Ready, "{:?}", ready.stacktrace);
    }
    assert_eq!(env_count(&daemon), 1);
    let mut waited = false;
    for id in [first.id, second.id] {
        let logs = client.logs(id).await.expect("logs");
        waited |= logs
            .lines
            .iter()
            .any(|l| l.line.contains("waiting for the Python environment"));
    }
    assert!(
        waited,
        "one procedure should have waited for the other's build"
    );
}

#[tokio::test]
async fn a_failed_install_fails_with_pips_message_and_a_fixed_commit_works() {
    let repo = TestRepo::new();
    commit_project(&repo, None);
    let broken = repo.commit(
        &[(
            "pyproject.toml",
            "[build-system]\nrequires = \"not a list\"\n",
        )],
        "break",
    );
    let daemon = TestDaemon::start_with(OFFLINE_PIP);
    let failed = create(
        &daemon,
        git_script(&repo, "scripts/observe.py", None, Some(&broken), true),
    )
    .await;
    assert_eq!(failed.state, Failed);
    let trace = failed.stacktrace.expect("stack trace");
    assert!(trace.contains("pip install"), "{trace}");
    assert!(trace.contains("build-system.requires"), "{trace}");
    assert_eq!(
        env_count(&daemon),
        0,
        "a broken environment must not be kept"
    );

    let fixed = commit_project(&repo, None);
    let ready = create(
        &daemon,
        git_script(&repo, "scripts/observe.py", None, Some(&fixed), true),
    )
    .await;
    assert_eq!(ready.state, Ready, "{:?}", ready.stacktrace);
}

#[tokio::test]
async fn escaping_paths_and_unknown_commits_fail_clearly_and_write_nothing_outside_the_cache() {
    let repo = TestRepo::new();
    repo.commit(&[("scripts/observe.py", &script_printing("hi"))], "v1");
    let daemon = TestDaemon::start();
    let before = oet_tests::git::tree(daemon.dir.path(), &daemon.dir.path().join("state"));

    let escape = create(
        &daemon,
        git_script(&repo, "../../etc/passwd", None, None, false),
    )
    .await;
    assert_eq!(escape.state, Failed);
    let trace = escape.stacktrace.expect("stack trace");
    assert!(trace.contains("leaves the repository"), "{trace}");

    let unknown = create(
        &daemon,
        git_script(&repo, "scripts/observe.py", None, Some("deadbeef"), false),
    )
    .await;
    assert_eq!(unknown.state, Failed);
    let trace = unknown.stacktrace.expect("stack trace");
    assert!(
        trace.contains("deadbeef") && trace.contains("not found"),
        "{trace}"
    );

    let missing = create(
        &daemon,
        git_script(&repo, "scripts/nope.py", None, None, false),
    )
    .await;
    assert_eq!(missing.state, Failed);
    assert!(missing
        .stacktrace
        .expect("trace")
        .contains("does not exist"));

    let after = oet_tests::git::tree(daemon.dir.path(), &daemon.dir.path().join("state"));
    assert_eq!(before, after, "files appeared outside the state directory");
}

/// Processes whose command line mentions `needle`, other than zombies.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) && oet_tests::alive(pid) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

#[tokio::test]
async fn a_stop_during_prep_env_stops_cleanly_and_leaves_no_pip() {
    let repo = TestRepo::new();
    let gate_dir = tempfile::tempdir().expect("dir");
    let fifo = make_fifo(gate_dir.path());
    commit_project(&repo, Some(&fifo));
    let daemon = TestDaemon::start_with(OFFLINE_PIP);
    let mut client = daemon.client().await;
    let created = client
        .create(
            git_script(&repo, "scripts/observe.py", None, None, true),
            FunctionArgs::default(),
        )
        .await
        .expect("create");
    // Hold the gate open so that pip is mid-build when the stop comes.
    let gate = open_gate(&fifo).await;
    let summary = client.describe(created.id).await.expect("describe");
    assert_eq!(summary.state, PrepEnv);
    // While pip works, the daemon answers.
    assert_eq!(client.list(vec![]).await.expect("list").len(), 1);

    let stopped = client.stop(created.id, false).await.expect("stop");
    assert_eq!(stopped[0].state, Stopped);
    drop(gate);
    let envs = daemon.dir.path().join("state/envs");
    let left = processes_mentioning(envs.to_str().expect("utf-8"));
    assert!(left.is_empty(), "pip processes left behind: {left:?}");
    assert_eq!(env_count(&daemon), 0, "a half-built environment was kept");
}

#[tokio::test]
async fn no_pip_outlives_oetd_being_killed_during_prep_env() {
    let repo = TestRepo::new();
    let gate_dir = tempfile::tempdir().expect("dir");
    let fifo = make_fifo(gate_dir.path());
    commit_project(&repo, Some(&fifo));
    let mut daemon = TestDaemon::start_with(OFFLINE_PIP);
    let mut client = daemon.client().await;
    client
        .create(
            git_script(&repo, "scripts/observe.py", None, None, true),
            FunctionArgs::default(),
        )
        .await
        .expect("create");
    let gate = open_gate(&fifo).await;
    let envs = daemon.dir.path().join("state/envs");
    let building: Vec<u32> = processes_mentioning(envs.to_str().expect("utf-8"))
        .iter()
        .filter_map(|p| p.split(':').next()?.parse().ok())
        .collect();
    assert!(!building.is_empty(), "no build process found mid-build");
    daemon.signal(libc::SIGKILL);
    daemon.wait();
    for pid in building {
        assert!(
            oet_tests::wait_gone(pid, std::time::Duration::from_secs(10)),
            "build process {pid} outlived oetd"
        );
    }
    drop(gate);
}
