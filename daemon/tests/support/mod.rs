//! Shared helpers for the git tests: throw-away repositories made with the `git` CLI.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

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
        use std::io::BufRead;
        use std::os::unix::process::CommandExt;

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
        let mut child = Command::new("git")
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
                Some(Ok(_)) => continue,
                other => panic!("git daemon did not come up: {other:?}"),
            }
        }
        // Keep draining its log so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        GitDaemon {
            child,
            url: format!("git://127.0.0.1:{port}/{name}"),
        }
    }
}

impl Drop for GitDaemon {
    fn drop(&mut self) {
        if let Ok(pgid) = i32::try_from(self.child.id()) {
            let group = nix::unistd::Pid::from_raw(pgid);
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        }
        let _ = self.child.wait();
    }
}
