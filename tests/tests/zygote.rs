//! The zygote: workers forked from one pre-started Python per interpreter, each still a
//! fresh process that no other script has touched, looking to the operator exactly like a
//! cold start — and a zygote that is contained, dies with oetd, and is replaced if it
//! dies.

use oet_protocol::{FunctionArgs, GitArgs, ProcedureState::*, ScriptSpec, ZygoteStatus};
use oet_tests::git::{TestRepo, PYPROJECT};
use oet_tests::{assert_state, states, wait_gone, TestDaemon, DEADLINE};

/// Waits until oetd logs that a zygote is up, and returns it as `status` shows it.
async fn zygote_up(daemon: &TestDaemon) -> ZygoteStatus {
    daemon
        .log_line("is up (pid")
        .expect("oetd says its zygote is up");
    let zygotes = zygotes(daemon).await;
    assert_eq!(zygotes.len(), 1, "{zygotes:?}");
    zygotes[0].clone()
}

/// The zygotes `oetctl status` shows.
async fn zygotes(daemon: &TestDaemon) -> Vec<ZygoteStatus> {
    daemon
        .client()
        .await
        .status()
        .await
        .expect("status")
        .zygotes
}

/// A script that prints its pid and its parent's at import.
const WHO_AM_I: &str = "import os\nprint(os.getpid(), os.getppid())\n\ndef main():\n    pass\n";

/// The pid and parent pid a [`WHO_AM_I`] procedure printed.
async fn pids(daemon: &TestDaemon, id: u64) -> (u32, u32) {
    let line = daemon.output(id).await.join("");
    let mut words = line.split_whitespace().map(|w| w.parse().expect("a pid"));
    (
        words.next().expect("its pid"),
        words.next().expect("its parent's"),
    )
}

#[tokio::test]
async fn two_creates_get_fresh_workers_forked_by_the_zygote_and_waited_for_by_oetd() {
    let daemon = TestDaemon::start();
    let zygote = zygote_up(&daemon).await;
    assert_eq!(zygote.forks, 0);
    let uri = daemon.script("who.py", WHO_AM_I);
    let first = daemon.create_ready(&uri, FunctionArgs::default()).await;
    let second = daemon.create_ready(&uri, FunctionArgs::default()).await;
    for ready in [&first, &second] {
        assert_state(ready, Ready);
        // Exactly what a cold start shows.
        assert_eq!(states(ready), [Creating, Idle, Loading, Idle, Ready]);
    }
    let (one, one_parent) = pids(&daemon, first.id).await;
    let (two, two_parent) = pids(&daemon, second.id).await;
    assert_ne!(one, two, "each procedure is a process of its own");
    assert!(
        one != zygote.pid && two != zygote.pid,
        "no script runs in the zygote"
    );
    // Double-forked by the zygote, reparented to oetd (a child subreaper), which waits
    // for them.
    assert_eq!((one_parent, two_parent), (daemon.pid(), daemon.pid()));
    let zygotes = zygotes(&daemon).await;
    assert_eq!(zygotes[0].pid, zygote.pid);
    assert_eq!(zygotes[0].forks, 2, "both were forked by the zygote");
    let done = daemon.run_main(first.id, FunctionArgs::default()).await;
    assert_state(&done, Complete);
}

#[tokio::test]
async fn a_script_that_mutates_globals_or_patches_the_harness_is_not_seen_by_the_next() {
    let daemon = TestDaemon::start();
    zygote_up(&daemon).await;
    let meddler = daemon
        .run_script(
            "meddler.py",
            r#"
import json, sys
from pubsub import pub

def main():
    json.MEDDLED = True
    pub.MEDDLED = True
    harness = sys.modules["__main__"]
    harness.MEDDLED = True
    harness._deliver = lambda message: None
"#,
        )
        .await;
    assert_state(&meddler, Complete);
    let next = daemon
        .run_script(
            "next.py",
            r#"
import json, sys
from pubsub import pub

def main():
    harness = sys.modules["__main__"]
    print("json", hasattr(json, "MEDDLED"), "pub", hasattr(pub, "MEDDLED"),
          "harness", hasattr(harness, "MEDDLED"),
          "deliver", harness._deliver.__name__)
"#,
        )
        .await;
    assert_state(&next, Complete);
    daemon
        .assert_printed(
            next.id,
            "json False pub False harness False deliver _deliver",
        )
        .await;
    let zygotes = zygotes(&daemon).await;
    assert_eq!(
        zygotes[0].forks, 2,
        "both ran in workers forked by the zygote"
    );
}

#[tokio::test]
async fn without_a_zygote_workers_start_cold_and_behave_the_same() {
    let daemon = TestDaemon::start_with("zygote = false");
    let status = daemon.client().await.status().await.expect("status");
    assert!(status.zygotes.is_empty(), "{:?}", status.zygotes);
    let uri = daemon.script("who.py", WHO_AM_I);
    let ready = daemon.create_ready(&uri, FunctionArgs::default()).await;
    assert_eq!(states(&ready), [Creating, Idle, Loading, Idle, Ready]);
    let (_, parent) = pids(&daemon, ready.id).await;
    assert_eq!(parent, daemon.pid(), "a cold worker is oetd's own child");
    let done = daemon.run_main(ready.id, FunctionArgs::default()).await;
    assert_state(&done, Complete);
}

#[tokio::test]
async fn the_zygote_never_outlives_oetd() {
    let mut daemon = TestDaemon::start();
    let zygote = zygote_up(&daemon).await;
    daemon.signal(libc::SIGKILL);
    daemon.wait();
    assert!(
        wait_gone(zygote.pid, DEADLINE),
        "zygote {} outlived oetd",
        zygote.pid
    );
}

#[tokio::test]
async fn a_killed_zygote_is_replaced_and_creates_succeed_meanwhile() {
    let daemon = TestDaemon::start();
    let zygote = zygote_up(&daemon).await;
    let uri = daemon.script("who.py", WHO_AM_I);
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(zygote.pid as i32, libc::SIGKILL) };
    assert!(wait_gone(zygote.pid, DEADLINE));
    let meanwhile = daemon.create_ready(&uri, FunctionArgs::default()).await;
    assert_state(&meanwhile, Ready);
    let replaced = zygote_up(&daemon).await;
    assert_ne!(replaced.pid, zygote.pid);
    let after = daemon.create_ready(&uri, FunctionArgs::default()).await;
    assert_state(&after, Ready);
    let zygotes = zygotes(&daemon).await;
    assert_eq!(zygotes[0].pid, replaced.pid);
    assert!(zygotes[0].forks >= 1, "{zygotes:?}");
    let done = daemon.run_main(after.id, FunctionArgs::default()).await;
    assert_state(&done, Complete);
}

/// A git project's script: it needs the project installed in its environment, and prints
/// its pid and its parent's.
const WHO_NEEDS_ITS_PROJECT: &str =
    "import os\nimport oettestpkg\nprint(os.getpid(), os.getppid())\n\ndef main():\n    pass\n";

#[tokio::test]
async fn a_git_environment_used_again_gets_a_zygote_of_its_own() {
    let repo = TestRepo::new();
    repo.commit_project(PYPROJECT, None, WHO_NEEDS_ITS_PROJECT);
    // pip works offline: the project builds itself.
    let daemon = TestDaemon::start_with(
        "zygote_env_uses = 2\n[python]\npip_extra_args = [\"--no-index\", \"--no-build-isolation\"]\n",
    );
    let default = zygote_up(&daemon).await;
    let script = ScriptSpec::Git {
        script_uri: "git://scripts/observe.py".into(),
        git_args: GitArgs {
            git_repo: Some(repo.url().to_owned()),
            git_branch: None,
            git_commit: None,
        },
        create_env: true,
    };
    let mut created = Vec::new();
    for _ in 0..2 {
        let ready = daemon
            .create_script_ready(script.clone(), FunctionArgs::default())
            .await;
        assert_state(&ready, Ready);
        created.push(ready.id);
    }
    // Used twice: the environment's interpreter gets a zygote.
    let line = daemon
        .log_line("is up (pid")
        .expect("a zygote of the environment starts");
    assert!(line.contains("state/envs/"), "{line}");
    let both = zygotes(&daemon).await;
    assert_eq!(both.len(), 2, "{both:?}");
    let env = both
        .iter()
        .find(|z| z.pid != default.pid)
        .expect("the environment's zygote")
        .clone();
    assert!(env.python.contains("state/envs/"), "{env:?}");
    assert_eq!(env.forks, 0);

    let third = daemon
        .create_script_ready(script, FunctionArgs::default())
        .await;
    assert_state(&third, Ready);
    let (pid, parent) = pids(&daemon, third.id).await;
    assert_ne!(pid, env.pid, "no script runs in the zygote");
    assert_eq!(parent, daemon.pid());
    let zygotes = zygotes(&daemon).await;
    let forks = |pid: u32| zygotes.iter().find(|z| z.pid == pid).map(|z| z.forks);
    assert_eq!(
        forks(env.pid),
        Some(1),
        "forked by its environment's zygote"
    );
    assert_eq!(
        forks(default.pid),
        Some(0),
        "never by the default interpreter's, which lacks the project"
    );
    // The environment's procedures run: the project is importable in each.
    for id in created.into_iter().chain([third.id]) {
        let done = daemon.run_main(id, FunctionArgs::default()).await;
        assert_state(&done, Complete);
    }
}
