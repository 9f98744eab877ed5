//! Git fixtures for tests: throw-away repositories made with the `git` CLI, a `git daemon`
//! serving one over the network, a smart-HTTP server (`git http-backend`) that demands
//! basic authentication, and a tiny Python project whose in-tree build backend lets pip
//! install it with no index and no build tools.

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

/// A PEP 517 backend that zips `oettestpkg/` into a wheel, staging it in `build/` of the
/// source tree first as setuptools does; with `BLOCK_ON` set, it first reads that FIFO,
/// so a test decides when (whether) the build goes on.
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
    # As setuptools does, stage the build in the source tree.
    staging = os.path.join(here, "build", "lib", NAME)
    os.makedirs(staging, exist_ok=True)
    with open(os.path.join(staging, "__init__.py"), "wb") as f:
        f.write(files[NAME + "/__init__.py"])
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

/// A git smart-HTTP server: `git http-backend` (the CGI program shipped with git)
/// behind a small HTTP server that demands basic authentication, serving one repository
/// at `http://localhost:<port>/<name>`. It accepts only the (user, token) pairs it was
/// given, and counts the requests each pair authorized. Stopped on drop.
pub struct GitHttpServer {
    /// The repository's URL, without credentials.
    pub url: String,
    accepted: std::sync::Arc<std::sync::Mutex<Vec<(String, usize)>>>,
    refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// What one server's handler knows.
#[derive(Clone)]
struct HttpBackend {
    project_root: PathBuf,
    /// `Basic <base64(user:token)>` of each accepted pair, with the pair's count.
    accepted: std::sync::Arc<std::sync::Mutex<Vec<(String, usize)>>>,
    refused: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl GitHttpServer {
    /// Serves `repo` (its parent directory is the project root) to clients that give
    /// one of `credentials` (user, token), on a port of its own, in a thread of its own
    /// (so that a test blocked in a command does not block the server).
    pub fn serve(repo: &Path, credentials: &[(&str, &str)]) -> Self {
        let name = repo
            .file_name()
            .and_then(|n| n.to_str())
            .expect("repo name")
            .to_owned();
        let accepted = std::sync::Arc::new(std::sync::Mutex::new(
            credentials
                .iter()
                .map(|(user, token)| (format!("Basic {}", base64(&format!("{user}:{token}"))), 0))
                .collect(),
        ));
        let refused = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let backend = HttpBackend {
            project_root: repo.parent().expect("repo has a parent").to_owned(),
            accepted: accepted.clone(),
            refused: refused.clone(),
        };
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("non-blocking");
        let port = listener.local_addr().expect("address").port();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let app = axum::Router::new().fallback(cgi).with_state(backend);
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await;
            });
        });
        GitHttpServer {
            url: format!("http://localhost:{port}/{name}"),
            accepted,
            refused,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The URL with `userinfo` (`user:token`) in it.
    pub fn url_with(&self, userinfo: &str) -> String {
        self.url
            .replacen("http://", &format!("http://{userinfo}@"), 1)
    }

    /// How many requests the `index`-th accepted pair authorized.
    pub fn served_with(&self, index: usize) -> usize {
        self.accepted.lock().expect("lock")[index].1
    }

    /// How many requests were refused for want of accepted credentials.
    pub fn refused(&self) -> usize {
        self.refused.load(std::sync::atomic::Ordering::Relaxed)
    }
}

impl Drop for GitHttpServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One request: refused without accepted credentials (401, asking for basic
/// authentication), else handed to `git http-backend` as CGI.
async fn cgi(
    axum::extract::State(backend): axum::extract::State<HttpBackend>,
    method: axum::http::Method,
    uri: axum::http::Uri,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> axum::response::Response {
    use axum::http::{header, StatusCode};
    use axum::response::IntoResponse;

    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let known = {
        let mut accepted = backend.accepted.lock().expect("lock");
        match accepted
            .iter_mut()
            .find(|(expected, _)| expected == authorization)
        {
            Some((_, count)) => {
                *count += 1;
                true
            }
            None => false,
        }
    };
    if !known {
        backend
            .refused
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Basic realm=\"oet-test\"")],
            "authentication required",
        )
            .into_response();
    }
    let header_value = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let mut command = tokio::process::Command::new("git");
    command
        .arg("http-backend")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("GIT_PROJECT_ROOT", &backend.project_root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("REQUEST_METHOD", method.as_str())
        .env("PATH_INFO", uri.path())
        .env("QUERY_STRING", uri.query().unwrap_or(""))
        .env("CONTENT_TYPE", header_value("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("HTTP_CONTENT_ENCODING", header_value("content-encoding"))
        .env("GIT_PROTOCOL", header_value("git-protocol"))
        .env("REMOTE_USER", "oet-test")
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit());
    let mut child = command.spawn().expect("git http-backend starts");
    {
        use tokio::io::AsyncWriteExt;
        let mut stdin = child.stdin.take().expect("stdin");
        stdin
            .write_all(&body)
            .await
            .expect("request body to the backend");
    }
    let output = child
        .wait_with_output()
        .await
        .expect("git http-backend runs");
    let out = output.stdout;
    let (head, body) = match find(&out, b"\r\n\r\n") {
        Some(at) => (&out[..at], &out[at + 4..]),
        None => match find(&out, b"\n\n") {
            Some(at) => (&out[..at], &out[at + 2..]),
            None => (&out[..], &[][..]),
        },
    };
    let mut response = axum::response::Response::builder().status(StatusCode::OK);
    for line in String::from_utf8_lossy(head).lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value
                .split_whitespace()
                .next()
                .and_then(|c| c.parse().ok())
                .unwrap_or(500);
            response = response.status(code);
        } else {
            response = response.header(name.trim(), value);
        }
    }
    response
        .body(axum::body::Body::from(body.to_vec()))
        .expect("a response")
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Standard base64 with padding, for the `Authorization` header.
fn base64(text: &str) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in text.as_bytes().chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn base64_as_http_basic_authentication_writes_it() {
        assert_eq!(super::base64("oet:t0ken"), "b2V0OnQwa2Vu");
        assert_eq!(super::base64("a"), "YQ==");
        assert_eq!(super::base64("ab"), "YWI=");
        assert_eq!(
            super::base64("Aladdin:open sesame"),
            "QWxhZGRpbjpvcGVuIHNlc2FtZQ=="
        );
    }
}
