//! Per-commit Python environments, built by the real `python3 -m venv` and pip from a
//! tiny project committed to a test repository. The project carries its own in-tree
//! build backend, so pip needs no index and no build tools (`--no-index`,
//! `--no-build-isolation`).

use oet_tests::git as support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use oet_tests::live_processes_mentioning;
use oetd::git::{Checkout, GitConfig, RepoCache};
use oetd::python::{Env, EnvError, EnvManager, PythonConfig};
use support::{BuildGate, TestRepo, PYPROJECT};
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

struct Fixture {
    repo: TestRepo,
    state: TempDir,
    cache: RepoCache,
    envs: EnvManager<Checkout>,
}

impl Fixture {
    fn new(config: PythonConfig) -> Self {
        let state = TempDir::new().expect("state dir");
        let config = PythonConfig {
            pip_extra_args: vec!["--no-index".into(), "--no-build-isolation".into()],
            ..config
        };
        Fixture {
            repo: TestRepo::new(),
            cache: RepoCache::new(GitConfig::default(), state.path()).expect("cache"),
            envs: EnvManager::new(config, state.path()).expect("envs"),
            state,
        }
    }

    /// Commits the project (its build blocking on `block_on` if given); returns the commit.
    fn commit_project(&self, pyproject: &str, block_on: Option<&Path>) -> String {
        self.repo
            .commit_project(pyproject, block_on, "import oettestpkg\n")
    }

    /// Commits the project with its build held at a new gate, and checks it out.
    async fn gated_checkout(&self) -> (BuildGate, Checkout) {
        let gate = BuildGate::new();
        let commit = self.commit_project(PYPROJECT, Some(gate.path()));
        (gate, self.checkout(&commit).await)
    }

    /// Asks for the environment of `checkout` in a task of its own, ignoring the build's
    /// lines, until `cancel` says the requester left.
    fn spawn_ensure(
        &self,
        checkout: &Checkout,
        cancel: &CancellationToken,
    ) -> tokio::task::JoinHandle<Result<Env, EnvError>> {
        let (envs, checkout, cancel) = (self.envs.clone(), checkout.clone(), cancel.clone());
        tokio::spawn(async move { envs.ensure(&checkout, |_| {}, cancel).await })
    }

    async fn checkout(&self, commit: &str) -> Checkout {
        self.cache
            .checkout(Some(self.repo.url()), None, Some(commit))
            .await
            .expect("checkout")
    }

    fn env_dir(&self) -> PathBuf {
        self.state.path().join("envs")
    }

    /// Live processes working in the environment directory (pip, the build backend).
    fn builders(&self) -> Vec<String> {
        live_processes_mentioning(self.env_dir().to_str().expect("utf-8"))
    }

    /// Environments (not pip's cache, not the scratch area) in the environment directory.
    fn envs_on_disk(&self) -> usize {
        std::fs::read_dir(self.env_dir())
            .expect("env dir")
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| !e.file_name().to_string_lossy().starts_with('.'))
            })
            .count()
    }
}

/// Collects the lines a build hands to one requester.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    fn sink(&self) -> impl Fn(&str) + Send + Sync + 'static {
        let lines = self.0.clone();
        move |line: &str| lines.lock().expect("lines lock").push(line.to_owned())
    }

    fn all(&self) -> Vec<String> {
        self.0.lock().expect("lines lock").clone()
    }

    fn count(&self, prefix: &str) -> usize {
        self.all().iter().filter(|l| l.starts_with(prefix)).count()
    }
}

fn python_says(python: &Path, code: &str) -> Result<String, String> {
    let output = Command::new(python)
        .args(["-c", code])
        .output()
        .expect("python runs");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    } else {
        Err(String::from_utf8_lossy(&output.stderr).into_owned())
    }
}

/// Asserts that `python` imports the test project and sees its value.
fn assert_has_project(python: &Path) {
    assert_eq!(
        python_says(python, "import oettestpkg; print(oettestpkg.VALUE)").as_deref(),
        Ok("42")
    );
}

/// How long a test waits for the project's build to reach its gate.
const BUILD_START: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_share_one_environment_that_has_the_project() {
    let fx = Fixture::new(PythonConfig::default());
    let commit = fx.commit_project(PYPROJECT, None);
    let checkout = fx.checkout(&commit).await;

    let (first, second) = (Lines::default(), Lines::default());
    let (a, b) = tokio::join!(
        fx.envs
            .ensure(&checkout, first.sink(), CancellationToken::new()),
        fx.envs
            .ensure(&checkout, second.sink(), CancellationToken::new()),
    );
    let env = a.expect("first requester gets the environment");
    let python = env.python();
    assert_eq!(b.expect("second requester gets it too").python(), python);

    // The second joined the first's build (and hears its output from then on).
    let (creating, waiting) = (
        "creating a Python environment",
        "waiting for the Python environment",
    );
    assert_eq!((first.count(creating), first.count(waiting)), (1, 0));
    assert_eq!(second.count(waiting), 1, "{:?}", second.all());
    assert!(second.count(creating) <= 1);
    assert!(
        first
            .all()
            .iter()
            .any(|l| l.contains("Successfully installed oettestpkg-0.1")),
        "pip's output reaches the requester: {:?}",
        first.all()
    );
    assert!(python.starts_with(fx.env_dir()));

    assert_has_project(python);
    let system = python_says(Path::new("python3"), "import oettestpkg").expect_err("not installed");
    assert!(system.contains("ModuleNotFoundError"), "{system}");
    // The system site packages are visible inside the environment.
    assert_eq!(
        python_says(python, "import sys; print(sys.prefix != sys.base_prefix)").as_deref(),
        Ok("True")
    );

    // The environment persists: a manager opened later reuses it without building.
    let later = EnvManager::new(
        PythonConfig {
            pip_extra_args: vec!["--no-index".into()],
            ..PythonConfig::default()
        },
        fx.state.path(),
    )
    .expect("reopen");
    let lines = Lines::default();
    let again = later
        .ensure(&checkout, lines.sink(), CancellationToken::new())
        .await
        .expect("reused");
    assert_eq!(again.python(), python);
    assert!(lines.all().is_empty(), "{:?}", lines.all());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_install_reports_pip_and_is_not_reused() {
    let fx = Fixture::new(PythonConfig::default());
    let broken = fx.commit_project("[build-system\nrequires = []\n", None);
    let checkout = fx.checkout(&broken).await;

    let lines = Lines::default();
    let err = fx
        .envs
        .ensure(&checkout, lines.sink(), CancellationToken::new())
        .await
        .expect_err("broken metadata");
    assert!(matches!(err, EnvError::Install { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("Expected ']'"),
        "pip's message is in the error: {text}"
    );
    assert!(text.contains(&broken), "{text}");
    assert_eq!(fx.envs_on_disk(), 0, "the broken environment is removed");

    // Asking again builds again (and fails again) rather than reusing anything.
    let lines = Lines::default();
    fx.envs
        .ensure(&checkout, lines.sink(), CancellationToken::new())
        .await
        .expect_err("still broken");
    assert_eq!(lines.count("creating a Python environment"), 1);
    assert_eq!(fx.envs_on_disk(), 0);

    let fixed = fx.commit_project(PYPROJECT, None);
    let checkout = fx.checkout(&fixed).await;
    let python = fx
        .envs
        .ensure(&checkout, Lines::default().sink(), CancellationToken::new())
        .await
        .expect("fixed commit installs");
    assert_has_project(python.python());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_build_kills_pip_and_removes_the_environment() {
    let fx = Fixture::new(PythonConfig::default());
    let (gate, checkout) = fx.gated_checkout().await;

    let cancel = CancellationToken::new();
    let build = fx.spawn_ensure(&checkout, &cancel);
    let writer = gate.wait_for_build(BUILD_START).await;
    assert!(!fx.builders().is_empty(), "pip is running");

    cancel.cancel();
    let err = build.await.expect("join").expect_err("cancelled");
    assert!(matches!(err, EnvError::Cancelled { .. }), "{err:?}");
    assert_eq!(fx.builders(), Vec::<String>::new());
    assert_eq!(fx.envs_on_disk(), 0, "the partial environment is removed");
    drop(writer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_requester_leaving_does_not_stop_a_shared_build() {
    let fx = Fixture::new(PythonConfig::default());
    let (gate, checkout) = fx.gated_checkout().await;

    let leaving = CancellationToken::new();
    let first = fx.spawn_ensure(&checkout, &leaving);
    let writer = gate.wait_for_build(BUILD_START).await;
    let (lines_tx, mut second_lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    let second = tokio::spawn({
        let (envs, checkout) = (fx.envs.clone(), checkout.clone());
        let sink = move |line: &str| {
            let _ = lines_tx.send(line.to_owned());
        };
        async move { envs.ensure(&checkout, sink, CancellationToken::new()).await }
    });

    // Once the second requester has joined the build, the first leaves.
    let joined = second_lines
        .recv()
        .await
        .expect("the second requester hears from the build");
    assert!(
        joined.starts_with("waiting for the Python environment"),
        "{joined}"
    );
    leaving.cancel();
    let err = first.await.expect("join").expect_err("first left");
    assert!(matches!(err, EnvError::Cancelled { .. }), "{err:?}");

    // Let the backend go on: closing the FIFO ends its read.
    drop(writer);
    let python = second
        .await
        .expect("join")
        .expect("the build went on for the second");
    assert_has_project(python.python());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_is_bounded_by_env_wait_secs() {
    let fx = Fixture::new(PythonConfig {
        env_wait_secs: 1,
        ..PythonConfig::default()
    });
    let (_gate, checkout) = fx.gated_checkout().await;

    let err = fx
        .envs
        .ensure(&checkout, |_| {}, CancellationToken::new())
        .await
        .expect_err("the build never finishes");
    assert!(matches!(err, EnvError::Timeout { secs: 1, .. }), "{err:?}");
    assert!(err.to_string().contains("python.env_wait_secs"), "{err}");
    // Nobody else wanted it: the build was stopped and removed.
    assert_eq!(fx.builders(), Vec::<String>::new());
    assert_eq!(fx.envs_on_disk(), 0);
}

#[test]
fn opening_removes_environments_whose_build_never_finished() {
    let state = TempDir::new().expect("state dir");
    let envs = state.path().join("envs");
    let key = format!("{}-{}", "0123456789abcdef", "a".repeat(40));
    let partial = envs.join(&key);
    let complete = envs.join(format!("{}-{}", "0123456789abcdef", "b".repeat(40)));
    let pip_cache = envs.join(".pip-cache");
    for dir in [&partial, &complete, &pip_cache] {
        std::fs::create_dir_all(dir.join("bin")).expect("dirs");
    }
    std::fs::write(complete.join(".oetd-env-complete"), "repo\ncommit\n").expect("marker");

    EnvManager::<Checkout>::new(PythonConfig::default(), state.path()).expect("open");
    assert!(
        !partial.exists(),
        "a build interrupted by a crash is not reused"
    );
    assert!(complete.exists() && pip_cache.exists());
}
