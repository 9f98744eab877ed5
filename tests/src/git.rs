//! Git fixtures for tests: throw-away repositories made with the `git` CLI, a `git daemon`
//! serving one over the network, and a tiny Python project whose in-tree build backend
//! lets pip install it with no index and no build tools.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

/// Runs `git` in `dir` and returns its trimmed standard output.
pub fn git(dir: &Path, args: &[&str]) -> String {
    let output = Command::new("git")
        .args([
            "-c",
            "user.name=OET Test",
            "-c",
            "user.email=oet-test@example.invalid",
            "-c",
            "init.defaultBranch=main",
            "-c",
            "commit.gpgsign=false",
        ])
        .args(args)
        .current_dir(dir)
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .output()
        .expect("git runs");
    assert!(
        output.status.success(),
        "git {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

/// A repository in a temp directory, with helpers to commit files.
pub struct TestRepo {
    _root: TempDir,
    path: PathBuf,
}

impl Default for TestRepo {
    fn default() -> Self {
        Self::new()
    }
}

impl TestRepo {
    pub fn new() -> Self {
        let root = TempDir::new().expect("temp dir");
        let path = root.path().join("repo");
        std::fs::create_dir(&path).expect("repo dir");
        git(&path, &["init", "--quiet"]);
        TestRepo { _root: root, path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn url(&self) -> &str {
        self.path.to_str().expect("utf-8 temp path")
    }

    /// Writes `files` (path, contents) and commits them; returns the commit id.
    pub fn commit(&self, files: &[(&str, &str)], message: &str) -> String {
        for (name, contents) in files {
            let file = self.path.join(name);
            if let Some(parent) = file.parent() {
                std::fs::create_dir_all(parent).expect("parent dir");
            }
            std::fs::write(&file, contents).expect("write file");
            git(&self.path, &["add", name]);
        }
        git(
            &self.path,
            &["commit", "--quiet", "--allow-empty", "-m", message],
        );
        self.head()
    }

    pub fn head(&self) -> String {
        git(&self.path, &["rev-parse", "HEAD"])
    }

    pub fn git(&self, args: &[&str]) -> String {
        git(&self.path, args)
    }
}

/// Every file and directory under `root`, relative, sorted, skipping `skip`.
pub fn tree(root: &Path, skip: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("dir entry").path();
            if path.starts_with(skip) {
                continue;
            }
            found.push(path.strip_prefix(root).expect("under root").to_owned());
            if path.is_dir() && !path.is_symlink() {
                stack.push(path);
            }
        }
    }
    found.sort();
    found
}

/// A `git daemon` serving one repository on a loopback port; killed on drop.
pub struct GitDaemon {
    child: std::process::Child,
    pub url: String,
}

impl GitDaemon {
    /// Serves `repo` (its parent directory is the base path) and returns once the
    /// daemon says it is listening.
    pub fn serve(repo: &Path) -> Self {
        let base = repo.parent().expect("repo has a parent");
        let name = repo
            .file_name()
            .and_then(|n| n.to_str())
            .expect("repo name");
        // A port the kernel just handed out and nobody holds.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let url = format!("git://127.0.0.1:{port}/{name}");
        Self::serve_with(Command::new("git"), base, port, url)
    }

    /// Runs `git daemon` through `git` (`git` itself, or e.g. a command that enters a
    /// sandbox first) on 127.0.0.1:`port`, serving the repositories under `base`, and
    /// returns once it says it is listening; `url` is what the test reaches it by.
    pub fn serve_with(mut git: Command, base: &Path, port: u16, url: String) -> Self {
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;

        let mut child = git
            .args([
                "daemon",
                "--verbose",
                "--export-all",
                "--reuseaddr",
                "--listen=127.0.0.1",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--base-path={}", base.display()))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            // `git daemon` runs `git-daemon` as a child: a group of their own lets
            // drop end both.
            .process_group(0)
            .spawn()
            .expect("git daemon starts");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = std::io::BufReader::new(stderr).lines();
        loop {
            match lines.next() {
                Some(Ok(line)) if line.contains("Ready to rumble") => break,
                Some(Ok(line)) => eprintln!("[git daemon] {line}"),
                other => panic!("git daemon did not come up: {other:?}"),
            }
        }
        // Keep passing its log on (it tells why a fetch failed), so that it never
        // blocks on a full pipe.
        std::thread::spawn(move || {
            for line in lines.map_while(Result::ok) {
                eprintln!("[git daemon] {line}");
            }
        });
        GitDaemon { child, url }
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        if let Ok(pgid) = i32::try_from(self.child.id()) {
            // SAFETY: killpg has no memory-safety preconditions.
            unsafe {
                libc::killpg(pgid, libc::SIGKILL);
            }
        }
        let _ = self.child.wait();
    }
}

/// `pyproject.toml` of the test project: its build backend is `oetbackend.py` beside it.
pub const PYPROJECT: &str = r#"[build-system]
requires = []
build-backend = "oetbackend"
backend-path = ["."]
"#;

/// A PEP 517 backend that zips `oettestpkg/` into a wheel; with `BLOCK_ON` set, it
/// first reads that FIFO, so a test decides when (whether) the build goes on.
pub const BACKEND: &str = r#"
import base64, hashlib, os, zipfile

NAME, VERSION = "oettestpkg", "0.1"
DIST = NAME + "-" + VERSION


def get_requires_for_build_wheel(config_settings=None):
    return []


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    if BLOCK_ON:
        with open(BLOCK_ON) as fifo:
            fifo.read()
    here = os.path.dirname(os.path.abspath(__file__))
    with open(os.path.join(here, NAME, "__init__.py"), "rb") as f:
        files = {NAME + "/__init__.py": f.read()}
    files[DIST + ".dist-info/METADATA"] = (
        "Metadata-Version: 2.1\nName: %s\nVersion: %s\n" % (NAME, VERSION)
    ).encode()
    files[DIST + ".dist-info/WHEEL"] = (
        b"Wheel-Version: 1.0\nGenerator: oet-test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    )
    record = []
    wheel = DIST + "-py3-none-any.whl"
    with zipfile.ZipFile(os.path.join(wheel_directory, wheel), "w") as z:
        for name, data in files.items():
            z.writestr(name, data)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            record.append("%s,sha256=%s,%d" % (name, digest.decode(), len(data)))
        record.append(DIST + ".dist-info/RECORD,,")
        z.writestr(DIST + ".dist-info/RECORD", "\n".join(record) + "\n")
    return wheel
"#;

/// A FIFO that the test project's build reads before it goes on (pass [`BuildGate::path`]
/// as `block_on` to [`TestRepo::commit_project`]), so a test decides when, and whether,
/// the build proceeds.
pub struct BuildGate {
    _dir: TempDir,
    fifo: PathBuf,
}

impl Default for BuildGate {
    fn default() -> Self {
        Self::new()
    }
}

impl BuildGate {
    pub fn new() -> Self {
        let dir = TempDir::new().expect("gate dir");
        let fifo = dir.path().join("build-gate");
        let c_path = std::ffi::CString::new(fifo.to_str().expect("utf-8")).expect("no NUL");
        // SAFETY: a valid NUL-terminated path.
        let rc = unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) };
        assert_eq!(rc, 0, "mkfifo failed: {}", std::io::Error::last_os_error());
        BuildGate { _dir: dir, fifo }
    }

    pub fn path(&self) -> &Path {
        &self.fifo
    }

    /// Opens the gate for writing, which returns once the build backend is reading it:
    /// the build is then provably under way. Fails the test if that takes longer than
    /// `within`. Dropping the returned file lets the build go on.
    pub async fn wait_for_build(&self, within: Duration) -> std::fs::File {
        let fifo = self.fifo.clone();
        let open =
            tokio::task::spawn_blocking(move || std::fs::OpenOptions::new().write(true).open(fifo));
        tokio::time::timeout(within, open)
            .await
            .unwrap_or_else(|_| panic!("the build did not reach the backend within {within:?}"))
            .expect("join")
            .expect("open fifo")
    }
}

impl TestRepo {
    /// Commits the test project (package `oettestpkg` with `VALUE = 42`, built by its
    /// in-tree backend) with `pyproject` as its `pyproject.toml` and `script` as
    /// `scripts/observe.py`; with `block_on`, its build first reads that FIFO (see
    /// [`BuildGate`]). Returns the commit id.
    pub fn commit_project(&self, pyproject: &str, block_on: Option<&Path>, script: &str) -> String {
        let block_on = match block_on {
            Some(path) => format!("{:?}", path.to_str().expect("utf-8 path")),
            None => "None".to_owned(),
        };
        let backend = format!("BLOCK_ON = {block_on}\n{BACKEND}");
        self.commit(
            &[
                ("pyproject.toml", pyproject),
                ("oetbackend.py", &backend),
                ("oettestpkg/__init__.py", "VALUE = 42\n"),
                ("scripts/observe.py", script),
            ],
            "project",
        )
    }
}
