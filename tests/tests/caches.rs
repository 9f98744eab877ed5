//! Months on one host: the Python environments of git scripts are bounded (least
//! recently used first, never one a live procedure uses or one being built), pip's
//! cache too; builds leave the shared checkout as it was fetched, and scripts cannot
//! write into it when oetd runs as a user, as a service does; `oetctl status` tells
//! what the caches hold and `oetctl cache prune` (admins only) empties what is unused.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use oet_protocol::{FunctionArgs, GitArgs, ProcedureState::*, ScriptSpec};
use oet_tests::git::{BuildGate, GitDaemon, TestRepo, PYPROJECT};
use oet_tests::users::{self, TestUser};
use oet_tests::{assert_failed_with, assert_state, wait_for, TestDaemon, DEADLINE};

/// pip must not look for an index: the test project builds with its own backend.
const OFFLINE_PIP: &str = "pip_extra_args = [\"--no-index\", \"--no-build-isolation\"]\n";

fn script_printing(value: &str) -> String {
    format!("import oettestpkg\n\ndef main():\n    print(\"{value}\", oettestpkg.VALUE)\n")
}

fn project_script(repo: &TestRepo, commit: &str, create_env: bool) -> ScriptSpec {
    ScriptSpec::Git {
        script_uri: "git://scripts/observe.py".into(),
        git_args: GitArgs {
            git_repo: Some(repo.url().to_owned()),
            git_branch: None,
            git_commit: Some(commit.to_owned()),
        },
        create_env,
    }
}

/// A daemon whose `[python]` section has the offline pip settings and `python`, logging
/// at debug level (which says when a procedure lets go of its environment).
fn daemon_with(python: &str) -> TestDaemon {
    daemon_with_procedures("", python)
}

/// Like [`daemon_with`], with `procedures` added to `[procedures]`.
fn daemon_with_procedures(procedures: &str, python: &str) -> TestDaemon {
    let mut daemon = TestDaemon::prepare(&format!(
        "{procedures}\n[log]\nlevel = \"debug\"\n\n[python]\n{OFFLINE_PIP}{python}"
    ));
    let mut cmd = daemon.command(None);
    // Python writes bytecode beside what it imports, as it does on an observatory host
    // (a developer's shell may say otherwise).
    cmd.env_remove("PYTHONDONTWRITEBYTECODE");
    daemon.launch_listening(cmd);
    daemon
}

fn env_dir(daemon: &TestDaemon) -> PathBuf {
    daemon.dir.path().join("state/envs")
}

/// The environments on disk, by the commit each is for.
fn envs_on_disk(daemon: &TestDaemon) -> Vec<String> {
    let mut commits: Vec<String> = std::fs::read_dir(env_dir(daemon))
        .expect("env dir")
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|name| !name.starts_with('.'))
        .map(|name| name.rsplit('-').next().unwrap_or_default().to_owned())
        .collect();
    commits.sort();
    commits
}

fn sorted(mut commits: Vec<&String>) -> Vec<String> {
    commits.sort();
    commits.into_iter().cloned().collect()
}

/// Creates the project's procedure at `commit` with an environment; waits for READY.
async fn ready(daemon: &TestDaemon, repo: &TestRepo, commit: &str) -> u64 {
    let summary = daemon
        .create_script_ready(project_script(repo, commit, true), FunctionArgs::default())
        .await;
    assert_state(&summary, Ready);
    summary.id
}

/// Runs main of READY procedure `id` to COMPLETE, and waits until the procedure has
/// let go of its environment; returns what its script printed (after the build's
/// output).
async fn complete(daemon: &TestDaemon, id: u64) -> Vec<String> {
    let done = daemon.run_main(id, FunctionArgs::default()).await;
    assert_state(&done, Complete);
    daemon
        .log_line(&format!("procedure {id} no longer uses its checkout"))
        .expect("the procedure lets go of its environment");
    let output = daemon.output(id).await;
    let built = output
        .iter()
        .position(|line| line == "the Python environment is ready")
        .map_or(0, |at| at + 1);
    output[built..].to_vec()
}

/// Waits for oetd to log that it removed the environment of `commit`.
fn removed(daemon: &TestDaemon, commit: &str) {
    let line = daemon
        .log_line("removed the Python environment")
        .unwrap_or_else(|| panic!("oetd ended before removing the environment of {commit}"));
    assert!(line.contains(commit), "{line}");
}

fn ok(output: &Output) -> String {
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test]
async fn with_a_bound_of_two_four_commits_used_in_turn_leave_the_last_two() {
    let repo = TestRepo::new();
    let daemon = daemon_with("max_envs = 2\n");
    let mut commits = Vec::new();
    for n in 1..=4 {
        let commit = repo.commit_project(PYPROJECT, None, &script_printing(&format!("v{n}")));
        let id = ready(&daemon, &repo, &commit).await;
        commits.push(commit);
        // From the third on, each new environment pushes out the oldest.
        if n >= 3 {
            removed(&daemon, &commits[n - 3]);
        }
        let printed = complete(&daemon, id).await;
        assert_eq!(printed, [format!("v{n} 42")]);
    }
    assert_eq!(
        envs_on_disk(&daemon),
        sorted(vec![&commits[2], &commits[3]])
    );

    let status = ok(&daemon.oetctl(&["--json", "status"]));
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    assert_eq!(status["caches"]["envs"], 2, "{status}");
    assert_eq!(status["caches"]["envs_in_use"], 0, "{status}");
    // Checkouts have their own bound (32): all four are still there.
    assert_eq!(status["caches"]["checkouts"], 4, "{status}");
}

#[tokio::test]
async fn an_environment_in_use_by_a_ready_procedure_is_never_evicted() {
    let repo = TestRepo::new();
    let daemon = daemon_with("max_envs = 1\n");
    let first = repo.commit_project(PYPROJECT, None, &script_printing("first"));
    let second = repo.commit_project(PYPROJECT, None, &script_printing("second"));
    let a = ready(&daemon, &repo, &first).await;
    ready(&daemon, &repo, &second).await;
    // Two environments with a bound of one: both are in use, so both stay.
    daemon
        .log_line("are in use or being built")
        .expect("oetd says why it keeps more than python.max_envs");
    assert_eq!(envs_on_disk(&daemon), sorted(vec![&first, &second]));
    let pruned = ok(&daemon.oetctl(&["--json", "cache", "prune"]));
    let pruned: serde_json::Value = serde_json::from_str(&pruned).expect("JSON");
    assert_eq!(pruned["removed"]["envs"], 0, "{pruned}");
    assert_eq!(pruned["left"]["envs_in_use"], 2, "{pruned}");
    assert_eq!(envs_on_disk(&daemon), sorted(vec![&first, &second]));

    // The first procedure still runs in its environment.
    assert_eq!(complete(&daemon, a).await, ["first 42"]);
    // Once it has ended, its environment goes.
    removed(&daemon, &first);
    assert_eq!(envs_on_disk(&daemon), [second]);
}

#[tokio::test]
async fn eviction_during_the_build_of_another_environment_does_not_disturb_it() {
    let repo = TestRepo::new();
    let gate = BuildGate::new();
    let daemon = daemon_with("max_envs = 1\n");
    // pip's cache holds something from earlier builds.
    let pip_cache = env_dir(&daemon).join(".pip-cache");
    std::fs::create_dir_all(&pip_cache).expect("pip cache");
    std::fs::write(pip_cache.join("earlier-download"), vec![1u8; 64 * 1024]).expect("write");

    let first = repo.commit_project(PYPROJECT, None, &script_printing("first"));
    let a = ready(&daemon, &repo, &first).await;
    complete(&daemon, a).await;
    let gated = repo.commit_project(PYPROJECT, Some(gate.path()), &script_printing("gated"));
    let mut events = daemon.events().await;
    let mut client = daemon.client().await;
    let b = client
        .create(project_script(&repo, &gated, true), FunctionArgs::default())
        .await
        .expect("create")
        .id;
    let writer = gate.wait_for_build(DEADLINE).await;
    let building: Vec<String> = envs_on_disk(&daemon);
    assert_eq!(building, sorted(vec![&first, &gated]));

    // Prune while the build runs: the unused environment goes, the one being built and
    // pip's cache (which the build uses) stay.
    let pruned = ok(&daemon.oetctl(&["--json", "cache", "prune"]));
    let pruned: serde_json::Value = serde_json::from_str(&pruned).expect("JSON");
    assert_eq!(pruned["removed"]["envs"], 1, "{pruned}");
    assert_eq!(pruned["left"]["envs_building"], 1, "{pruned}");
    assert!(
        pruned["pip_cache_kept"]
            .as_str()
            .is_some_and(|why| why.contains("build")),
        "{pruned}"
    );
    assert!(pip_cache.join("earlier-download").exists());
    assert_eq!(envs_on_disk(&daemon), std::slice::from_ref(&gated));
    let copy = env_dir(&daemon).join(".tmp");
    assert!(
        std::fs::read_dir(&copy)
            .expect("scratch dir")
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().starts_with("build-")),
        "the build works on a copy of the project"
    );

    // The build goes on undisturbed.
    drop(writer);
    let summary = wait_for(&mut events, &mut client, b, |s| s == Ready).await;
    assert_state(&summary, Ready);
    assert_eq!(complete(&daemon, b).await, ["gated 42"]);
    let scratch: Vec<_> = std::fs::read_dir(&copy)
        .expect("scratch dir")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(
        scratch.is_empty(),
        "the build's copy is removed: {scratch:?}"
    );

    // With no build running, a prune clears pip's cache.
    let pruned = ok(&daemon.oetctl(&["--json", "cache", "prune"]));
    let pruned: serde_json::Value = serde_json::from_str(&pruned).expect("JSON");
    assert!(
        pruned["removed"]["pip_cache_bytes"].as_u64() >= Some(64 * 1024),
        "{pruned}"
    );
    assert!(!pip_cache.exists());
}

#[tokio::test]
async fn pips_cache_is_cleared_beyond_its_bound_once_no_build_runs() {
    let repo = TestRepo::new();
    let daemon = daemon_with("max_pip_cache_bytes = 4096\n");
    let pip_cache = env_dir(&daemon).join(".pip-cache");
    std::fs::create_dir_all(&pip_cache).expect("pip cache");
    std::fs::write(pip_cache.join("earlier-download"), vec![1u8; 64 * 1024]).expect("write");
    let commit = repo.commit_project(PYPROJECT, None, &script_printing("v"));
    ready(&daemon, &repo, &commit).await;
    let line = daemon
        .log_line("cleared the pip cache")
        .expect("oetd clears pip's cache after the build");
    assert!(line.contains("python.max_pip_cache_bytes"), "{line}");
    assert!(!pip_cache.join("earlier-download").exists());
}

#[tokio::test]
async fn an_evicted_environments_zygote_ends_before_its_files_go() {
    let repo = TestRepo::new();
    // A zygote for an environment's interpreter from its first use on.
    let daemon = daemon_with_procedures("zygote_env_uses = 1\n", "");
    let commit = repo.commit_project(PYPROJECT, None, &script_printing("v"));
    let id = ready(&daemon, &repo, &commit).await;
    let env = entry_for(&env_dir(&daemon), &commit);
    let python = env.join("bin/python");
    daemon
        .log_line(&format!("zygote of {} is up", python.display()))
        .expect("the environment's interpreter gets a zygote");
    complete(&daemon, id).await;
    let zygote_of_env = |status: &serde_json::Value| {
        status["zygotes"]
            .as_array()
            .expect("zygotes")
            .iter()
            .find(|z| z["python"] == python.display().to_string())
            .and_then(|z| z["pid"].as_u64())
    };
    let status = ok(&daemon.oetctl(&["--json", "status"]));
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    let pid = zygote_of_env(&status).expect("the zygote is up") as u32;

    let pruned = ok(&daemon.oetctl(&["--json", "cache", "prune"]));
    let pruned: serde_json::Value = serde_json::from_str(&pruned).expect("JSON");
    assert_eq!(pruned["removed"]["envs"], 1, "{pruned}");
    let status = ok(&daemon.oetctl(&["--json", "status"]));
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    assert_eq!(zygote_of_env(&status), None, "{status}");
    assert!(
        oet_tests::wait_gone(pid, DEADLINE),
        "the zygote {pid} lives on"
    );
}

/// Every file, directory and link under `root` with its kind, mode and contents: equal
/// snapshots mean byte-for-byte equal trees.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u32, Vec<u8>)> {
    let mut found = BTreeMap::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("entry").path();
            let meta = std::fs::symlink_metadata(&path).expect("metadata");
            let contents = if meta.is_file() {
                std::fs::read(&path).expect("read")
            } else if meta.file_type().is_symlink() {
                std::fs::read_link(&path)
                    .expect("link")
                    .into_os_string()
                    .into_encoded_bytes()
            } else {
                stack.push(path.clone());
                Vec::new()
            };
            let relative = path.strip_prefix(root).expect("under root").to_owned();
            found.insert(relative, (meta.mode(), contents));
        }
    }
    found
}

fn digest(snapshot: &BTreeMap<PathBuf, (u32, Vec<u8>)>) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    snapshot.hash(&mut hasher);
    hasher.finish()
}

#[tokio::test]
async fn a_build_leaves_the_shared_checkout_byte_for_byte_unchanged() {
    let repo = TestRepo::new();
    let daemon = daemon_with("");
    let commit = repo.commit_project(PYPROJECT, None, &script_printing("v"));
    // A procedure of a script the commit does not have fetches the commit (the shared
    // checkout), and runs nothing.
    let mut fetch_only = project_script(&repo, &commit, false);
    if let ScriptSpec::Git { script_uri, .. } = &mut fetch_only {
        *script_uri = "git://scripts/absent.py".into();
    }
    let absent = daemon
        .create_script_ready(fetch_only, FunctionArgs::default())
        .await;
    assert_failed_with(&absent, &["does not exist"]);
    let checkouts = daemon.dir.path().join("state/git/checkouts");
    let checkout = std::fs::read_dir(&checkouts)
        .expect("checkouts")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(&commit))
        .expect("the checkout of the commit");
    let before = snapshot(&checkout);
    assert!(before.contains_key(Path::new("oetbackend.py")));
    // Read-only to whatever respects permissions.
    for (path, (mode, _)) in &before {
        assert_eq!(mode & 0o222, 0, "{} is writable", path.display());
    }
    assert_eq!(
        std::fs::metadata(&checkout)
            .expect("meta")
            .permissions()
            .mode()
            & 0o222,
        0
    );

    let id = ready(&daemon, &repo, &commit).await;
    assert_eq!(complete(&daemon, id).await, ["v 42"]);
    let after = snapshot(&checkout);
    let added: Vec<&PathBuf> = after.keys().filter(|p| !before.contains_key(*p)).collect();
    assert!(
        added.is_empty(),
        "the build wrote into the checkout: {added:?}"
    );
    assert_eq!(digest(&before), digest(&after), "the checkout changed");
    assert_eq!(before, after);
}

/// Space `path` takes on disk as `du` counts it (allocated blocks), links not followed.
fn disk_usage(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    let mut total = meta.blocks() * 512;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path).expect("read dir") {
            total += disk_usage(&entry.expect("entry").path());
        }
    }
    total
}

/// `oetctl --json status`'s `caches`.
fn caches(daemon: &TestDaemon) -> serde_json::Value {
    let status = ok(&daemon.oetctl(&["--json", "status"]));
    let status: serde_json::Value = serde_json::from_str(&status).expect("JSON");
    status["caches"].clone()
}

/// The entry of `dir` whose name ends with `commit`.
fn entry_for(dir: &Path, commit: &str) -> PathBuf {
    std::fs::read_dir(dir)
        .expect("read dir")
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with(commit))
        .unwrap_or_else(|| panic!("nothing for {commit} in {}", dir.display()))
}

#[tokio::test]
async fn status_shows_the_counts_and_sizes_of_checkouts_environments_and_pips_cache() {
    let repo = TestRepo::new();
    let daemon = daemon_with("");
    let commit = repo.commit_project(PYPROJECT, None, &script_printing("v"));
    let id = ready(&daemon, &repo, &commit).await;

    let held = caches(&daemon);
    assert_eq!(held["checkouts"], 1, "{held}");
    assert_eq!(held["checkouts_in_use"], 1, "{held}");
    assert_eq!(held["envs"], 1, "{held}");
    assert_eq!(held["envs_in_use"], 1, "{held}");

    complete(&daemon, id).await;
    let checkout = entry_for(&daemon.dir.path().join("state/git/checkouts"), &commit);
    let env = entry_for(&env_dir(&daemon), &commit);
    let pip = disk_usage(&env_dir(&daemon).join(".pip-cache"));
    assert!(pip > 0, "pip cached the wheel it built");
    let unused = caches(&daemon);
    assert_eq!(unused["checkouts_in_use"], 0, "{unused}");
    assert_eq!(unused["envs_in_use"], 0, "{unused}");
    assert_eq!(unused["checkout_bytes"], disk_usage(&checkout), "{unused}");
    assert_eq!(unused["env_bytes"], disk_usage(&env), "{unused}");
    assert_eq!(unused["pip_cache_bytes"], pip, "{unused}");

    let text = ok(&daemon.oetctl(&["status"]));
    assert!(text.contains("Checkouts:   1 (0 in use), "), "{text}");
    assert!(text.contains("Python envs: 1 (0 in use), "), "{text}");
    assert!(text.contains("pip cache:   "), "{text}");

    // An admin (root) prunes it all.
    let pruned = ok(&daemon.oetctl(&["cache", "prune"]));
    assert!(
        pruned.starts_with("removed 1 checkout(s) (") && pruned.contains("1 Python environment(s)"),
        "{pruned}"
    );
    let emptied = caches(&daemon);
    assert_eq!(emptied["checkouts"], 0, "{emptied}");
    assert_eq!(emptied["envs"], 0, "{emptied}");
    assert_eq!(emptied["pip_cache_bytes"], 0, "{emptied}");
    assert!(envs_on_disk(&daemon).is_empty());
    assert!(!checkout.exists() && !env.exists());
}

/// A user other than root for these tests (created if need be), or `None` where that
/// cannot be (the test is then skipped; under CI it fails).
fn other_user() -> Option<TestUser> {
    if let Some(reason) = users::skip_reason() {
        eprintln!("skipped: {reason}");
        return None;
    }
    Some(users::user("oettest-cache", "oettest", &[]))
}

#[tokio::test]
async fn cache_prune_as_a_non_admin_is_denied() {
    let Some(user) = other_user() else {
        return;
    };
    let repo = TestRepo::new();
    let daemon = daemon_with("");
    // The other user may reach the socket (and so read), nothing more.
    for (path, mode) in [(daemon.dir.path(), 0o755), (daemon.socket.as_path(), 0o666)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    }
    let commit = repo.commit_project(PYPROJECT, None, &script_printing("v"));
    let id = ready(&daemon, &repo, &commit).await;
    complete(&daemon, id).await;

    let status = user.oetctl(&daemon, &["status"]);
    assert!(status.status.success(), "a reader reads: {status:?}");
    let refused = user.oetctl(&daemon, &["cache", "prune"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert_eq!(refused.status.code(), Some(1), "not refused: {refused:?}");
    assert!(stderr.contains("permission denied"), "{stderr}");
    assert!(stderr.contains("admin"), "{stderr}");
    let kept = caches(&daemon);
    assert_eq!(
        (&kept["checkouts"], &kept["envs"]),
        (&1.into(), &1.into()),
        "{kept}"
    );
    assert_eq!(envs_on_disk(&daemon), [commit]);
}

/// Tries to add a file to its working directory (the checkout's top) and to its own
/// directory, and to change its own file.
const WRITES_INTO_ITS_CHECKOUT: &str = r#"import os


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    targets = ["written-by-the-script.txt", os.path.join(here, "beside.txt"), __file__]
    refused = 0
    for target in targets:
        try:
            with open(target, "a") as f:
                f.write("x")
        except PermissionError:
            refused += 1
    print(f"refused {refused} of {len(targets)}")
"#;

#[tokio::test]
async fn run_as_a_user_oetd_keeps_scripts_out_of_their_checkout_and_still_removes_it() {
    let Some(user) = other_user() else {
        return;
    };
    // The test's interpreter lives in root's home; the user runs the system's.
    let python = Path::new("/usr/bin/python3");
    if !python.exists() {
        oet_tests::skip_unless_ci("/usr/bin/python3 is not installed");
        return;
    }
    let repo = TestRepo::new();
    let commit = repo.commit(
        &[("scripts/observe.py", WRITES_INTO_ITS_CHECKOUT)],
        "a script that tries to write into its checkout",
    );
    // Served over the network: libgit2 refuses a local repository another user owns.
    let served = GitDaemon::serve(repo.path());

    let mut daemon = TestDaemon::prepare("");
    let state = daemon.dir.path().join("state");
    std::fs::write(
        &daemon.config_path,
        format!(
            "[paths]\nstate_dir = {state:?}\n\n[procedures]\npython = {python:?}\n\n\
             [log]\nlevel = \"debug\"\n"
        ),
    )
    .expect("config");
    let (uid, gid) = (user.uid, user.gid);
    let owned = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(daemon.dir.path())
        .status()
        .expect("chown");
    assert!(owned.success());
    let as_user = [
        "setpriv".to_owned(),
        format!("--reuid={uid}"),
        format!("--regid={gid}"),
        "--init-groups".to_owned(),
        "--".to_owned(),
    ];
    let as_user: Vec<&str> = as_user.iter().map(String::as_str).collect();
    let start = |daemon: &TestDaemon| {
        let mut cmd = daemon.command_under(&as_user);
        // The user's own home, as the service has (git reads its configuration there).
        cmd.env("HOME", daemon.dir.path());
        cmd
    };
    daemon.launch_listening(start(&daemon));

    let script = ScriptSpec::Git {
        script_uri: "git://scripts/observe.py".into(),
        git_args: GitArgs {
            git_repo: Some(served.url.clone()),
            git_branch: None,
            git_commit: Some(commit.clone()),
        },
        create_env: false,
    };
    let ready = daemon
        .create_script_ready(script, FunctionArgs::default())
        .await;
    assert_state(&ready, Ready);
    let checkout = entry_for(&state.join("git/checkouts"), &commit);
    let before = snapshot(&checkout);
    let done = daemon.run_main(ready.id, FunctionArgs::default()).await;
    assert_state(&done, Complete);
    assert_eq!(daemon.output(ready.id).await, ["refused 3 of 3"]);
    assert_eq!(
        snapshot(&checkout),
        before,
        "the script changed its checkout"
    );
    daemon
        .log_line(&format!(
            "procedure {} no longer uses its checkout",
            ready.id
        ))
        .expect("the procedure lets go of its checkout");

    // oetd (not root) removes the read-only checkout it made.
    let pruned = ok(&daemon.oetctl(&["--json", "cache", "prune"]));
    let pruned: serde_json::Value = serde_json::from_str(&pruned).expect("JSON");
    assert_eq!(pruned["removed"]["checkouts"], 1, "{pruned}");
    assert!(!checkout.exists());

    // A read-only tree left in the scratch area by a crash is removed at start-up.
    daemon.kill();
    let leftover = state.join("git/tmp/evicted-0123456789abcdef-leftover");
    std::fs::create_dir_all(leftover.join("sub")).expect("leftover");
    std::fs::write(leftover.join("sub/file.py"), "x = 1\n").expect("leftover file");
    let owned = Command::new("chown")
        .arg("-R")
        .arg(format!("{uid}:{gid}"))
        .arg(&leftover)
        .status()
        .expect("chown");
    assert!(owned.success());
    for dir in [leftover.join("sub"), leftover.clone()] {
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o555)).expect("chmod");
    }
    daemon.launch_listening(start(&daemon));
    assert!(!leftover.exists(), "the read-only leftover is removed");
}
