//! Secrets never leave oetd: repositories that demand credentials (a real git smart-HTTP
//! server with basic authentication) are fetched with a token given in the repository
//! URL, with one from `git.credentials_file`, and with one from a git credential helper;
//! and no token appears in anything the test can read — oetctl's output and errors,
//! every event, every log record (stderr, or every field of every journald record), and
//! every file oetd wrote. Where a repository is shown, its credentials read `***`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::Instant;

use oet_protocol::client::StreamItem;
use oet_protocol::EventStream;
use oet_tests::git::{GitHttpServer, TestRepo, PYPROJECT};
use oet_tests::journal_capture::{self, field, JournalCapture, JournalRecord};
use oet_tests::{oetd_bin, TestDaemon, DEADLINE, SYSTEMD_VARIABLES};

const USES_PACKAGE: &str =
    "import oettestpkg\n\ndef main():\n    print(f\"value {oettestpkg.VALUE}\")\n";

/// The tokens of one test, each unique, so that finding one anywhere means it leaked.
struct Tokens {
    /// Given in a repository URL (accepted by server A).
    url: String,
    /// In `git.credentials_file` (accepted by server A).
    file: String,
    /// From the git credential helper (accepted by server B).
    helper: String,
    /// Given in a URL, refused by server C.
    wrong: String,
    /// The one server C would accept, given nowhere.
    c: String,
}

impl Tokens {
    fn new() -> Tokens {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let token = |what: &str| format!("{what}-tok-{}-{nanos:x}", std::process::id());
        Tokens {
            url: token("url"),
            file: token("file"),
            helper: token("helper"),
            wrong: token("wrong"),
            c: token("c"),
        }
    }

    fn all(&self) -> [&str; 5] {
        [&self.url, &self.file, &self.helper, &self.wrong, &self.c]
    }
}

/// Where the daemon's log records go.
enum Logs {
    Stderr,
    Journal(mpsc::Receiver<JournalRecord>),
}

/// Everything the test could read, by where it came from.
#[derive(Default)]
struct Seen(Vec<(String, String)>);

impl Seen {
    fn add(&mut self, source: impl Into<String>, text: impl Into<String>) {
        self.0.push((source.into(), text.into()));
    }

    fn output(&mut self, what: &str, output: &Output) {
        self.add(
            format!("stdout of {what}"),
            String::from_utf8_lossy(&output.stdout),
        );
        self.add(
            format!("stderr of {what}"),
            String::from_utf8_lossy(&output.stderr),
        );
    }

    fn containing(&self, needle: &str) -> Vec<&(String, String)> {
        self.0
            .iter()
            .filter(|(_, text)| text.contains(needle))
            .collect()
    }
}

struct Story {
    daemon: TestDaemon,
    logs: Logs,
    tokens: Tokens,
    repo: TestRepo,
    a: GitHttpServer,
    b: GitHttpServer,
    c: GitHttpServer,
    /// Holds the credentials file and the helper's HOME, outside oetd's directories.
    _secrets: tempfile::TempDir,
    seen: Seen,
}

/// A repository served by three servers demanding credentials, and an oetd whose
/// configuration gives a credentials file (for server A) and git's credential helpers
/// (a store file for server B), logging at debug level; with `journal`, oetd logs to a
/// journald capture, otherwise to stderr.
fn story(journal: Option<JournalCapture>) -> Story {
    let tokens = Tokens::new();
    let repo = TestRepo::new();
    repo.commit_project(PYPROJECT, None, USES_PACKAGE);
    let a = GitHttpServer::serve(repo.path(), &[("oet", &tokens.url), ("oet", &tokens.file)]);
    let b = GitHttpServer::serve(repo.path(), &[("oet", &tokens.helper)]);
    let c = GitHttpServer::serve(repo.path(), &[("oet", &tokens.c)]);

    let secrets = tempfile::tempdir().expect("secrets dir");
    let credentials = secrets.path().join("git-credentials");
    std::fs::write(
        &credentials,
        format!(
            "# the observatory's tokens\n{}\n",
            host_of(&a).replacen("http://", &format!("http://oet:{}@", tokens.file), 1)
        ),
    )
    .expect("credentials file");
    set_mode(&credentials, 0o600);
    let home = secrets.path().join("home");
    std::fs::create_dir(&home).expect("home");
    let store = secrets.path().join("helper-store");
    std::fs::write(
        &store,
        format!(
            "{}\n",
            host_of(&b).replacen("http://", &format!("http://oet:{}@", tokens.helper), 1)
        ),
    )
    .expect("helper store");
    std::fs::write(
        home.join(".gitconfig"),
        format!(
            "[credential]\n\thelper = store --file={}\n",
            store.display()
        ),
    )
    .expect(".gitconfig");

    let mut daemon = TestDaemon::prepare(&format!(
        "\n[log]\nlevel = \"debug\"\n\n[git]\nallowed_repos = [\"http://localhost:*\"]\n\
         credentials_file = {credentials:?}\ncredential_helpers = true\n\n\
         [python]\npip_extra_args = [\"--no-index\", \"--no-build-isolation\"]\n"
    ));
    let logs = match journal {
        None => {
            let mut cmd = daemon.command(None);
            cmd.env("HOME", &home);
            daemon.launch_listening(cmd);
            Logs::Stderr
        }
        Some(capture) => {
            let mut cmd = capture.command(oetd_bin());
            cmd.args(daemon.command(None).get_args()).env("HOME", &home);
            for var in SYSTEMD_VARIABLES {
                cmd.env_remove(var);
            }
            cmd.stdin(std::process::Stdio::null());
            // Its stderr is echoed to the test's output; its records go to the capture.
            drop(daemon.launch(cmd));
            let records = capture.until_oetd_stops();
            let deadline = Instant::now() + DEADLINE;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let record = records.recv_timeout(left).expect("oetd starts");
                if field(&record, "MESSAGE").is_some_and(|m| m.starts_with("oetd listening on")) {
                    break;
                }
            }
            Logs::Journal(records)
        }
    };
    Story {
        daemon,
        logs,
        tokens,
        repo,
        a,
        b,
        c,
        _secrets: secrets,
        seen: Seen::default(),
    }
}

/// `http://localhost:<port>` of a server.
fn host_of(server: &GitHttpServer) -> String {
    let rest = server.url.trim_start_matches("http://");
    format!("http://{}", rest.split('/').next().expect("host"))
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

impl Story {
    fn oetctl(&mut self, args: &[&str]) -> Output {
        let output = self.daemon.oetctl(args);
        self.seen.output(&format!("oetctl {args:?}"), &output);
        output
    }

    /// `oetctl procedure create ... --wait` of the project's script from `repo`,
    /// answering the new procedure's ID and state.
    fn create(&mut self, repo: &str, extra: &[&str]) -> (u64, String) {
        let mut args = vec![
            "--json",
            "procedure",
            "create",
            "git://scripts/observe.py",
            "--create_env",
            "--wait",
        ];
        let repo_arg = format!("--git_repo={repo}");
        args.push(&repo_arg);
        args.extend_from_slice(extra);
        let output = self.oetctl(&args);
        let text = String::from_utf8_lossy(&output.stdout);
        let summary: serde_json::Value = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("create answers a summary ({e}): {text} / {output:?}"));
        let id = summary["id"].as_u64().expect("an id");
        let state = summary["state"].as_str().expect("a state").to_owned();
        (id, state)
    }

    fn describe(&mut self, id: u64) -> String {
        let output = self.oetctl(&["procedure", "describe", "--pid", &id.to_string()]);
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs main of READY procedure `id` to the end with `start --listen`.
    fn run_main(&mut self, id: u64) -> String {
        let output = self.oetctl(&["procedure", "start", "--pid", &id.to_string(), "--listen"]);
        assert!(output.status.success(), "{output:?}");
        let logs = self.oetctl(&["procedure", "logs", "--pid", &id.to_string()]);
        String::from_utf8_lossy(&logs.stdout).into_owned()
    }

    /// Every event the subscription heard, up to oetd's announcement of a final
    /// status request (made last, so that everything before it has arrived).
    async fn drain(&mut self, mut events: EventStream) {
        let mut client = self.daemon.client().await;
        client.status().await.expect("status");
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let item = tokio::time::timeout_at(deadline, events.next())
                .await
                .expect("the status request is announced in time")
                .expect("the stream stays open")
                .expect("an event");
            let StreamItem::Event(event) = item else {
                continue;
            };
            let last = event.topic == "request.status";
            self.seen
                .add(format!("event {}", event.topic), format!("{event:?}"));
            if last {
                return;
            }
        }
    }

    /// Stops oetd and reads every log record it wrote, and every file under the test's
    /// directory (the state directory, the configuration, the scripts).
    fn finish(&mut self) {
        self.daemon.signal(libc::SIGTERM);
        match &self.logs {
            Logs::Stderr => {
                for line in self.daemon.log_until_exit() {
                    self.seen.add("oetd's stderr", line);
                }
            }
            Logs::Journal(records) => {
                while let Ok(record) = records.recv_timeout(DEADLINE) {
                    let last = field(&record, "MESSAGE") == Some("oetd stopped");
                    self.seen.add("a journald record", format!("{record:?}"));
                    if last {
                        break;
                    }
                }
            }
        }
        self.daemon.wait();
        for file in files(self.daemon.dir.path()) {
            let bytes = std::fs::read(&file).unwrap_or_default();
            self.seen.add(
                format!("file {}", file.display()),
                String::from_utf8_lossy(&bytes),
            );
        }
    }
}

/// Every regular file under `root`, links not followed.
fn files(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if kind.is_dir() {
                stack.push(entry.path());
            } else if kind.is_file() {
                found.push(entry.path());
            }
        }
    }
    found
}

async fn tokens_are_used_and_shown_nowhere(journal: Option<JournalCapture>) {
    let mut story = story(journal);
    let events = story.daemon.events().await;
    let first = story.repo.head();
    let second = story
        .repo
        .commit(&[("scripts/extra.py", "X = 1\n")], "a second commit");
    let (a_url, b_url) = (story.a.url.clone(), story.b.url.clone());
    let shown_a = story.a.url_with("***");

    // A token in the URL: used for the fetch, shown as ***.
    let with_token = story.a.url_with(&format!("oet:{}", story.tokens.url));
    let (id, state) = story.create(&with_token, &[&format!("--git_commit={first}")]);
    assert_eq!(state, "READY", "{}", story.describe(id));
    assert!(story.a.served_with(0) > 0, "the URL's token was used");
    let described = story.describe(id);
    assert!(
        described.contains(&format!("repository {shown_a}")),
        "{described}"
    );
    let printed = story.run_main(id);
    assert!(printed.contains("value 42"), "{printed}");

    // No token in the URL: git.credentials_file gives it (after the server refused
    // the first, unauthenticated request).
    let refused_before = story.a.refused();
    let (id, state) = story.create(&a_url, &["--git_branch=main"]);
    assert_eq!(state, "READY", "{}", story.describe(id));
    assert!(story.a.served_with(1) > 0, "the file's token was used");
    assert!(story.a.refused() > refused_before);
    assert!(story.describe(id).contains(&format!("commit {second}")));

    // Server B: neither URL nor file has a token for it; the credential helper does.
    let (id, state) = story.create(&b_url, &[]);
    assert_eq!(state, "READY", "{}", story.describe(id));
    assert!(story.b.served_with(0) > 0, "the helper's token was used");

    // Server C refuses the URL's token, and nothing else has one for it: FAILED, saying
    // why, without the token.
    let wrong = story.c.url_with(&format!("oet:{}", story.tokens.wrong));
    let (id, state) = story.create(&wrong, &[]);
    assert_eq!(state, "FAILED");
    let described = story.describe(id);
    assert!(
        described.contains("refused those from the repository URL"),
        "{described}"
    );
    assert!(described.contains(&story.c.url_with("***")), "{described}");
    assert_eq!(story.c.served_with(0), 0);

    // A server that is not there, and a repository that is not allowed.
    let nowhere = format!("http://oet:{}@localhost:1/repo", story.tokens.url);
    let (id, state) = story.create(&nowhere, &[]);
    assert_eq!(state, "FAILED");
    assert!(story.describe(id).contains("http://***@localhost:1/repo"));
    let forbidden = format!(
        "https://oet:{}@forbidden.example.org/x.git",
        story.tokens.url
    );
    let refused = story.oetctl(&[
        "procedure",
        "create",
        "git://scripts/observe.py",
        &format!("--git_repo={forbidden}"),
    ]);
    assert!(!refused.status.success());
    let message = String::from_utf8_lossy(&refused.stderr);
    assert!(
        message.contains("'https://***@forbidden.example.org/x.git' is not allowed"),
        "{message}"
    );

    for args in [
        &["procedure", "list"][..],
        &["--json", "procedure", "list"],
        &["--json", "procedure", "list", "--all"],
        &["status"],
    ] {
        story.oetctl(args);
    }
    story.drain(events).await;
    story.finish();

    let shown = story.seen.containing(&shown_a);
    assert!(!shown.is_empty(), "the redacted URL is what is shown");
    for token in story.tokens.all() {
        let leaks: Vec<&str> = story
            .seen
            .containing(token)
            .into_iter()
            .map(|(source, _)| source.as_str())
            .collect();
        assert!(leaks.is_empty(), "token {token} appears in: {leaks:#?}");
    }
    // The test did read a lot: oetd's own words about the fetches among them.
    assert!(
        !story
            .seen
            .containing("uses http://***@localhost")
            .is_empty(),
        "the log says which repository a procedure uses, redacted"
    );
}

#[tokio::test]
async fn tokens_work_and_appear_in_no_output_event_stderr_log_or_file() {
    tokens_are_used_and_shown_nowhere(None).await;
}

#[tokio::test]
async fn tokens_work_and_appear_in_no_journald_field() {
    if let Some(reason) = journal_capture::skip_reason() {
        oet_tests::skip_unless_ci(&reason);
        return;
    }
    let capture = JournalCapture::new().expect("capture");
    tokens_are_used_and_shown_nowhere(Some(capture)).await;
}

#[test]
fn the_http_server_of_these_tests_demands_credentials() {
    let repo = TestRepo::new();
    let commit = repo.commit(&[("a.txt", "a\n")], "a");
    let server = GitHttpServer::serve(repo.path(), &[("oet", "right")]);
    let ls = |url: &str| {
        Command::new("git")
            .args(["-c", "credential.helper=", "ls-remote", url])
            .env("GIT_TERMINAL_PROMPT", "0")
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .expect("git ls-remote")
    };
    let anonymous = ls(&server.url);
    assert!(!anonymous.status.success(), "{anonymous:?}");
    let wrong = ls(&server.url_with("oet:wrong"));
    assert!(!wrong.status.success(), "{wrong:?}");
    let right = ls(&server.url_with("oet:right"));
    assert!(right.status.success(), "{right:?}");
    assert!(String::from_utf8_lossy(&right.stdout).contains(&commit));
    assert!(server.refused() >= 2 && server.served_with(0) >= 1);
}
