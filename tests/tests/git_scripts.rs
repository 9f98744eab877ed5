//! Scripts from git repositories, optionally in their own Python environment: the right
//! version of the file runs, environments are built once per commit and shared, failures
//! say why, and a stop during PREP_ENV leaves nothing behind.

use std::path::{Path, PathBuf};

use oet_protocol::{FunctionArgs, GitArgs, ProcedureState::*, ScriptSpec};
use oet_tests::git::{BuildGate, TestRepo, PYPROJECT};
use oet_tests::{
    assert_failed_with, assert_state, live_processes_mentioning, next_event, states, wait_for,
    TestDaemon, DEADLINE,
};

/// pip must not look for an index: the test project builds with its own backend.
const OFFLINE_PIP: &str = "[python]\npip_extra_args = [\"--no-index\", \"--no-build-isolation\"]\n";

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

/// The project's script, run in an environment built from the project at `commit` (else
/// the default branch).
fn project_script(repo: &TestRepo, commit: Option<&str>) -> ScriptSpec {
    git_script(repo, "scripts/observe.py", None, commit, true)
}

/// Creates a procedure and waits until it is READY or final.
async fn create(daemon: &TestDaemon, script: ScriptSpec) -> oet_protocol::ProcedureSummary {
    daemon
        .create_script_ready(script, FunctionArgs::default())
        .await
}

/// Runs main of a READY procedure, which must complete, and returns the lines it printed.
async fn run_main(daemon: &TestDaemon, id: u64) -> Vec<String> {
    let done = daemon.run_main(id, FunctionArgs::default()).await;
    assert_state(&done, Complete);
    daemon.output(id).await
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
    let second = repo.commit(
        &[("scripts/observe.py", &script_printing("version 2"))],
        "v2",
    );
    repo.git(&["checkout", "--quiet", "-b", "feature"]);
    repo.commit(
        &[("scripts/observe.py", &script_printing("feature version"))],
        "feature",
    );
    repo.git(&["checkout", "--quiet", "main"]);
    let feature = repo.git(&["rev-parse", "feature"]).trim().to_owned();
    let daemon = TestDaemon::start();

    let cases = [
        (
            Some("feature"),
            None,
            "feature version",
            feature.as_str(),
            Some("feature"),
        ),
        (
            None,
            Some(first.as_str()),
            "version 1",
            first.as_str(),
            None,
        ),
        (None, None, "version 2", second.as_str(), Some("main")),
        // The commit wins over the branch.
        (
            Some("feature"),
            Some(&first[..10]),
            "version 1",
            first.as_str(),
            None,
        ),
    ];
    for (branch, commit, expected, ran, ran_branch) in cases {
        let ready = create(
            &daemon,
            git_script(&repo, "scripts/observe.py", branch, commit, false),
        )
        .await;
        assert_state(&ready, Ready);
        assert_eq!(states(&ready), [Creating, Idle, Loading, Idle, Ready]);
        // The commit that runs is known, also when the request named a branch or nothing.
        let checkout = ready.checkout.clone().expect("the checkout is recorded");
        assert_eq!(checkout.commit, ran, "branch {branch:?} commit {commit:?}");
        assert_eq!(checkout.branch.as_deref(), ran_branch);
        let described = daemon.oetctl(&["procedure", "describe", "--pid", &ready.id.to_string()]);
        let described = String::from_utf8_lossy(&described.stdout);
        assert!(described.contains(&format!("commit {ran}")), "{described}");
        let lines = run_main(&daemon, ready.id).await;
        assert_eq!(lines, [expected], "branch {branch:?} commit {commit:?}");
    }
}

const USES_PACKAGE: &str =
    "import oettestpkg\n\ndef main():\n    print(f\"value {oettestpkg.VALUE}\")\n";

fn commit_project(repo: &TestRepo, block_on: Option<&Path>) -> String {
    repo.commit_project(PYPROJECT, block_on, USES_PACKAGE)
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
    assert_failed_with(&without, &["ModuleNotFoundError"]);

    let with = create(&daemon, project_script(&repo, None)).await;
    assert_state(&with, Ready);
    assert_eq!(
        states(&with),
        [Creating, Idle, PrepEnv, Idle, Loading, Idle, Ready]
    );
    let lines = run_main(&daemon, with.id).await;
    assert!(lines.contains(&"value 42".to_string()), "{lines:?}");
}

/// Where the daemon builds Python environments.
fn env_dir(daemon: &TestDaemon) -> PathBuf {
    daemon.dir.path().join("state/envs")
}

/// Live processes working in the daemon's environment directory (pip, the build backend).
fn builders(daemon: &TestDaemon) -> Vec<String> {
    live_processes_mentioning(env_dir(daemon).to_str().expect("utf-8"))
}

/// A daemon with offline pip, and a repository whose project builds only once the test
/// opens `gate`.
fn gated_project() -> (TestDaemon, TestRepo, BuildGate) {
    let repo = TestRepo::new();
    let gate = BuildGate::new();
    commit_project(&repo, Some(gate.path()));
    (TestDaemon::start_with(OFFLINE_PIP), repo, gate)
}

fn env_count(daemon: &TestDaemon) -> usize {
    std::fs::read_dir(env_dir(daemon))
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter(|e| e.path().is_dir() && !e.file_name().to_string_lossy().starts_with('.'))
                .count()
        })
        .unwrap_or(0)
}

#[tokio::test]
async fn two_procedures_of_one_commit_share_one_environment() {
    let (daemon, repo, gate) = gated_project();
    let mut events = daemon.events().await;
    let mut client = daemon.client().await;
    let script = project_script(&repo, None);
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
    let writer = gate.wait_for_build(DEADLINE).await;
    drop(writer);
    for id in [first.id, second.id] {
        let ready = wait_for(&mut events, &mut client, id, |s| s == Ready).await;
        assert_state(&ready, Ready);
    }
    assert_eq!(env_count(&daemon), 1);
    let mut waited = false;
    for id in [first.id, second.id] {
        waited |= daemon
            .output(id)
            .await
            .iter()
            .any(|line| line.contains("waiting for the Python environment"));
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
    let failed = create(&daemon, project_script(&repo, Some(&broken))).await;
    assert_failed_with(&failed, &["pip install", "build-system.requires"]);
    assert_eq!(
        env_count(&daemon),
        0,
        "a broken environment must not be kept"
    );

    let fixed = commit_project(&repo, None);
    let ready = create(&daemon, project_script(&repo, Some(&fixed))).await;
    assert_state(&ready, Ready);
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
    assert_failed_with(&escape, &["leaves the repository"]);

    let unknown = create(
        &daemon,
        git_script(&repo, "scripts/observe.py", None, Some("deadbeef"), false),
    )
    .await;
    assert_failed_with(&unknown, &["deadbeef", "not found"]);

    let missing = create(
        &daemon,
        git_script(&repo, "scripts/nope.py", None, None, false),
    )
    .await;
    assert_failed_with(&missing, &["does not exist"]);

    let after = oet_tests::git::tree(daemon.dir.path(), &daemon.dir.path().join("state"));
    assert_eq!(before, after, "files appeared outside the state directory");
}

#[tokio::test]
async fn a_stop_during_prep_env_stops_cleanly_and_leaves_no_pip() {
    let (daemon, repo, gate) = gated_project();
    let mut client = daemon.client().await;
    let created = client
        .create(project_script(&repo, None), FunctionArgs::default())
        .await
        .expect("create");
    // Hold the gate open so that pip is mid-build when the stop comes.
    let writer = gate.wait_for_build(DEADLINE).await;
    let summary = client.describe(created.id).await.expect("describe");
    assert_eq!(summary.state, PrepEnv);
    // While pip works, the daemon answers.
    assert_eq!(client.list(vec![]).await.expect("list").len(), 1);

    let stopped = client.stop(created.id, false).await.expect("stop");
    assert_eq!(stopped[0].state, Stopped);
    drop(writer);
    let left = builders(&daemon);
    assert!(left.is_empty(), "pip processes left behind: {left:?}");
    assert_eq!(env_count(&daemon), 0, "a half-built environment was kept");
}

#[tokio::test]
async fn no_pip_outlives_oetd_being_killed_during_prep_env() {
    let (mut daemon, repo, gate) = gated_project();
    let mut client = daemon.client().await;
    client
        .create(project_script(&repo, None), FunctionArgs::default())
        .await
        .expect("create");
    let writer = gate.wait_for_build(DEADLINE).await;
    let building: Vec<u32> = builders(&daemon)
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
    drop(writer);
}
