//! The end-to-end test harness: a real `oetd` on a temporary socket with its own state
//! directory, killed when the test ends; helpers to write scripts, talk to the daemon,
//! run the real `oetctl`, and wait for processes to disappear.

pub mod http;
pub mod journal_capture;
pub mod systemd_sandbox;
pub mod users;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use oet_protocol::client::StreamItem;
use oet_protocol::{
    ActivityState, ActivitySummary, Client, Containment, Event, EventStream, FunctionArgs,
    ProcedureState, ProcedureSummary, ScriptSpec, Value,
};
use tempfile::TempDir;

pub mod git;

/// Function arguments that are keywords only.
pub fn kwargs(pairs: &[(&str, Value)]) -> FunctionArgs {
    FunctionArgs {
        args: vec![],
        kwargs: pairs
            .iter()
            .map(|(name, value)| ((*name).to_owned(), value.clone()))
            .collect(),
    }
}

/// Function arguments that are positional only.
pub fn positional(args: Vec<Value>) -> FunctionArgs {
    FunctionArgs {
        args,
        kwargs: Default::default(),
    }
}

/// Passes over a test that needs something this machine lacks (a tool, root, a
/// namespace), saying why — except in CI (`CI` set), where a missing tool fails the
/// test: CI must never be green without having run it.
pub fn skip_unless_ci(reason: &str) {
    if std::env::var_os("CI").is_some() {
        panic!("cannot run this test: {reason}; with CI set, that is a failure, not a skip");
    }
    eprintln!("skipped: {reason}");
}

/// Upper bound for any single wait in a test: a wait that takes longer is a failure,
/// never a pause.
pub const DEADLINE: Duration = Duration::from_secs(60);

/// The directory holding the workspace's built binaries.
pub fn bin_dir() -> PathBuf {
    // Test executables live in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile> directory")
        .to_owned()
}

/// The repository's root, for the files a test checks (units, configurations, fixtures).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ lives in the repository")
        .to_path_buf()
}

/// A file of the repository, as text.
pub fn repo_file(relative: &str) -> String {
    let path = repo().join(relative);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

pub fn oetd_bin() -> PathBuf {
    bin_dir().join("oetd")
}

pub fn oetctl_bin() -> PathBuf {
    bin_dir().join("oetctl")
}

/// The Python interpreter for scripts: `OET_TEST_PYTHON` (the test command sets it to a
/// virtualenv with pypubsub), else `python3`.
pub fn python() -> String {
    std::env::var("OET_TEST_PYTHON").unwrap_or_else(|_| "python3".into())
}

/// The variables systemd sets for a service's main process; a plain test daemon gets none.
pub const SYSTEMD_VARIABLES: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "JOURNAL_STREAM",
    "RUNTIME_DIRECTORY",
    "STATE_DIRECTORY",
    "CACHE_DIRECTORY",
    "LOGS_DIRECTORY",
];

/// A running `oetd` owned by one test.
pub struct TestDaemon {
    pub dir: TempDir,
    pub socket: PathBuf,
    pub config_path: PathBuf,
    child: Option<Child>,
    /// oetd's stderr lines not yet read by [`TestDaemon::log_line`] (for daemons
    /// started by [`TestDaemon::start_with`]).
    log: Option<std::sync::Mutex<mpsc::Receiver<String>>>,
    /// Bytes oetd has written to its stderr (its log, outside journald) so far.
    log_bytes: Arc<AtomicU64>,
}

impl TestDaemon {
    /// Starts oetd with the test interpreter and otherwise default settings.
    pub fn start() -> TestDaemon {
        TestDaemon::start_with("")
    }

    /// Starts oetd with extra TOML appended to `[procedures]` settings; the text may
    /// open further sections.
    pub fn start_with(extra_procedures_toml: &str) -> TestDaemon {
        let mut daemon = TestDaemon::prepare(extra_procedures_toml);
        daemon.launch_listening(daemon.command(None));
        daemon
    }

    /// Starts `cmd` as this test's oetd (see [`TestDaemon::launch`]) and waits until it
    /// listens; its log is then read with [`TestDaemon::log_line`].
    pub fn launch_listening(&mut self, cmd: Command) {
        let lines = self.launch(cmd);
        if wait_for_line(&lines, "oetd listening on").is_none() {
            let status = self.child.as_mut().map(Child::try_wait);
            panic!("oetd did not start listening (exit status: {status:?})");
        }
        self.log = Some(std::sync::Mutex::new(lines));
    }

    /// Starts oetd again on the same socket, configuration and state directory, once
    /// the previous one has exited (see [`TestDaemon::wait`], [`TestDaemon::kill`]).
    pub fn start_again(&mut self) {
        self.launch_listening(self.command(None));
    }

    /// SIGKILLs oetd, as a crash would end it, and waits until it is gone.
    pub fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        self.wait();
    }

    /// Every line oetd logs from now until it exits (bounded by [`DEADLINE`]).
    pub fn log_until_exit(&self) -> Vec<String> {
        let Some(lines) = self.log.as_ref().and_then(|log| log.lock().ok()) else {
            return Vec::new();
        };
        let deadline = Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => seen.push(line),
                Err(mpsc::RecvTimeoutError::Disconnected) => return seen,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    panic!("oetd did not exit within {DEADLINE:?}; it logged {seen:#?}")
                }
            }
        }
    }

    /// Waits (bounded by [`DEADLINE`]) for the next line oetd logs that contains
    /// `needle`; `None` if oetd ended first.
    pub fn log_line(&self, needle: &str) -> Option<String> {
        let lines = self.log.as_ref()?.lock().ok()?;
        wait_for_line(&lines, needle)
    }

    /// The directory, configuration (the test interpreter, state in the directory, plus
    /// `extra_procedures_toml` as in [`TestDaemon::start_with`]) and scripts directory of
    /// a daemon, without starting it: start it with [`TestDaemon::launch`].
    pub fn prepare(extra_procedures_toml: &str) -> TestDaemon {
        let dir = tempfile::Builder::new()
            .prefix("oetd-test-")
            .tempdir()
            .expect("temp dir");
        let socket = dir.path().join("oetd.sock");
        let config_path = dir.path().join("oetd.toml");
        let config = format!(
            "[paths]\nstate_dir = {state:?}\n\n[procedures]\npython = {python:?}\n{extra_procedures_toml}\n",
            state = dir.path().join("state"),
            python = python(),
        );
        std::fs::write(&config_path, config).expect("write config");
        std::fs::create_dir_all(dir.path().join("scripts")).expect("scripts dir");
        TestDaemon {
            dir,
            socket,
            config_path,
            child: None,
            log: None,
            log_bytes: Arc::default(),
        }
    }

    /// `oetd --socket <socket> --config <config>` with stdin and stdout null and without
    /// the variables systemd sets (tests add back the ones they exercise). With
    /// `shell_prefix`, oetd runs as `sh -c '<prefix> exec oetd ...'`, so the prefix can
    /// use `$$`, which is then oetd's own PID (as systemd's `LISTEN_PID` must be).
    pub fn command(&self, shell_prefix: Option<&str>) -> Command {
        let cmd = match shell_prefix {
            Some(prefix) => {
                let mut cmd = Command::new("sh");
                cmd.arg("-c")
                    .arg(format!("{prefix} exec \"$0\" \"$@\""))
                    .arg(oetd_bin());
                cmd
            }
            None => Command::new(oetd_bin()),
        };
        self.with_oetd_args(cmd)
    }

    /// Like [`TestDaemon::command`], with oetd started by `wrapper`, a program and its
    /// arguments that exec the command line after them (e.g. `nsenter --mount=... --`).
    pub fn command_under(&self, wrapper: &[&str]) -> Command {
        let (program, args) = wrapper.split_first().expect("a wrapper program");
        let mut cmd = Command::new(program);
        cmd.args(args).arg(oetd_bin());
        self.with_oetd_args(cmd)
    }

    fn with_oetd_args(&self, mut cmd: Command) -> Command {
        cmd.arg("--socket")
            .arg(&self.socket)
            .arg("--config")
            .arg(&self.config_path);
        for var in SYSTEMD_VARIABLES {
            cmd.env_remove(var);
        }
        cmd.stdin(Stdio::null()).stdout(Stdio::null());
        cmd
    }

    /// Starts `cmd` (normally made by [`TestDaemon::command`], perhaps wrapped) as this
    /// test's oetd, killed when the test ends, without waiting for it to listen. Its
    /// stderr is echoed to the test's output and each line is also sent to the returned
    /// receiver, which disconnects when oetd closes stderr (exits).
    pub fn launch(&mut self, mut cmd: Command) -> mpsc::Receiver<String> {
        assert!(self.child.is_none(), "this TestDaemon already runs an oetd");
        let mut child = cmd
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stderr = child.stderr.take().expect("stderr pipe");
        let (tx, rx) = mpsc::channel();
        let bytes = self.log_bytes.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                bytes.fetch_add(line.len() as u64 + 1, Ordering::Relaxed);
                eprintln!("[oetd] {line}");
                let _ = tx.send(line);
            }
        });
        self.child = Some(child);
        rx
    }

    /// oetd's log lines from now on, up to and including the first that contains
    /// `needle` (waiting for it, bounded by [`DEADLINE`]).
    pub fn log_lines_until(&self, needle: &str) -> Vec<String> {
        let lines = self
            .log
            .as_ref()
            .expect("a daemon started with start_with")
            .lock()
            .expect("log lock");
        let deadline = Instant::now() + DEADLINE;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains(needle);
                    seen.push(line);
                    if done {
                        return seen;
                    }
                }
                Err(e) => panic!("no line containing {needle:?} from oetd ({e}); saw {seen:#?}"),
            }
        }
    }

    /// How many bytes oetd has logged to its stderr so far.
    pub fn log_bytes(&self) -> u64 {
        self.log_bytes.load(Ordering::Relaxed)
    }

    /// How this daemon contains procedures, as `oetctl status` tells.
    pub async fn containment(&self) -> Containment {
        self.client()
            .await
            .status()
            .await
            .expect("status")
            .containment
    }

    /// Whether this daemon gives each procedure a cgroup of its own. Where it cannot
    /// (no writable cgroup v2), the test is skipped with the reason printed — unless `CI`
    /// is set, where that fails the test.
    pub async fn has_cgroups(&self) -> bool {
        match self.containment().await {
            Containment::Cgroup { .. } => true,
            Containment::ProcessGroup { reason } => {
                assert!(
                    std::env::var_os("CI").is_none(),
                    "CI needs a writable cgroup v2 hierarchy: {reason}"
                );
                eprintln!("skipped: procedures are not in cgroups here: {reason}");
                false
            }
        }
    }

    /// The daemon's process ID.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("daemon running").id()
    }

    /// Sends a signal to the daemon.
    /// Sends `signal` to oetd. For SIGSTOP, returns once oetd has stopped: until one of
    /// its threads takes the signal, the others go on serving, so `kill` returning is
    /// not enough.
    pub fn signal(&self, signal: i32) {
        let pid = self.pid();
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(pid as i32, signal);
        }
        if signal == libc::SIGSTOP {
            // SAFETY: waitid writes only into `info`, which lives for the call. WNOWAIT
            // leaves the child waitable for its exit as before.
            let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
            let waited = unsafe {
                libc::waitid(libc::P_PID, pid, &mut info, libc::WSTOPPED | libc::WNOWAIT)
            };
            assert_eq!(
                waited,
                0,
                "waiting for oetd to stop: {}",
                std::io::Error::last_os_error()
            );
        }
    }

    /// Waits for the daemon to exit and returns its exit status.
    /// Waits (bounded by [`DEADLINE`]) for the daemon to exit and returns its exit
    /// status; a daemon that does not exit in time fails the test (and is killed).
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("daemon running");
        let pid = child.id();
        if !wait_gone(pid, DEADLINE) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("oetd (pid {pid}) did not exit within {DEADLINE:?}");
        }
        child.wait().expect("wait for oetd")
    }

    /// Writes a script into the test's scripts directory and returns its `file://` URI.
    pub fn script(&self, name: &str, body: &str) -> String {
        let path = self.dir.path().join("scripts").join(name);
        std::fs::write(&path, body).expect("write script");
        format!("file://{}", path.display())
    }

    /// A connected protocol client.
    pub async fn client(&self) -> Client {
        Client::connect(&self.socket, "oet-tests")
            .await
            .expect("connect to oetd")
    }

    /// A subscribed event stream.
    pub async fn events(&self) -> EventStream {
        self.client().await.subscribe().await.expect("subscribe")
    }

    /// Runs the real `oetctl` against this daemon.
    pub fn oetctl(&self, args: &[&str]) -> Output {
        Command::new(oetctl_bin())
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run oetctl")
    }

    /// Creates a filesystem procedure and waits until it is READY (or final).
    pub async fn create_ready(&self, uri: &str, init: FunctionArgs) -> ProcedureSummary {
        self.create_script_ready(ScriptSpec::filesystem(uri), init)
            .await
    }

    /// Creates a procedure of any script and waits until it is READY (or final).
    pub async fn create_script_ready(
        &self,
        script: ScriptSpec,
        init: FunctionArgs,
    ) -> ProcedureSummary {
        let mut events = self.events().await;
        let mut client = self.client().await;
        let created = client.create(script, init).await.expect("create");
        wait_for(&mut events, &mut client, created.id, |s| {
            s == ProcedureState::Ready
        })
        .await
    }
}

/// A procedure whose script has announced the pids of its processes.
pub struct Announced {
    pub id: u64,
    /// The announcement's payload: pids by name.
    pub pids: std::collections::BTreeMap<String, u32>,
    /// Subscribed since before `main` started.
    pub events: EventStream,
}

impl Announced {
    /// The pid announced as `key`.
    pub fn pid(&self, key: &str) -> u32 {
        *self
            .pids
            .get(key)
            .unwrap_or_else(|| panic!("no {key} pid in {:?}", self.pids))
    }
}

impl TestDaemon {
    /// Writes script `name`, creates its procedure (which must become READY), starts its
    /// `main` and waits for the script's event on `topic`, whose payload holds pids.
    pub async fn start_until_announced(&self, name: &str, body: &str, topic: &str) -> Announced {
        let ready = self.ready_script(name, body).await;
        assert_state(&ready, ProcedureState::Ready);
        let mut events = self.events().await;
        self.start_main(ready.id, FunctionArgs::default()).await;
        let event = next_event_of(&mut events, ready.id, |e| e.topic == topic).await;
        let map = event.payload.as_map().expect("payload map");
        let pids = map
            .iter()
            .map(|(key, value)| match value {
                Value::Int(pid) => (key.clone(), *pid as u32),
                other => panic!("{key} is not a pid: {other:?}"),
            })
            .collect();
        Announced {
            id: ready.id,
            pids,
            events,
        }
    }

    /// Starts `main` of a READY procedure with `args`, without waiting for it.
    pub async fn start_main(&self, id: u64, args: FunctionArgs) {
        self.client()
            .await
            .start(id, "main", args)
            .await
            .expect("start");
    }

    /// Calls `function` (not `main`) of a READY procedure without arguments and waits
    /// until it is READY again (or final).
    pub async fn run_call(&self, id: u64, function: &str) -> ProcedureSummary {
        let mut events = self.events().await;
        let mut client = self.client().await;
        client
            .start(id, function, FunctionArgs::default())
            .await
            .expect("start");
        wait_for(&mut events, &mut client, id, |s| s == ProcedureState::Ready).await
    }

    /// Starts `main` of a READY procedure with `args` and waits until it has ended.
    pub async fn run_main(&self, id: u64, args: FunctionArgs) -> ProcedureSummary {
        let mut events = self.events().await;
        let mut client = self.client().await;
        self.start_main(id, args).await;
        wait_for(&mut events, &mut client, id, |_| false).await
    }

    /// Writes a script and creates its procedure with no arguments for init, waiting
    /// until it is READY (or final).
    pub async fn ready_script(&self, name: &str, body: &str) -> ProcedureSummary {
        self.create_ready(&self.script(name, body), FunctionArgs::default())
            .await
    }

    /// Writes a script, creates its procedure with no arguments for init, which must then
    /// be READY, and runs its main with no arguments to the end.
    pub async fn run_script(&self, name: &str, body: &str) -> ProcedureSummary {
        let ready = self.ready_script(name, body).await;
        assert_state(&ready, ProcedureState::Ready);
        self.run_main(ready.id, FunctionArgs::default()).await
    }

    /// Asserts that procedure `id` has printed `line`.
    pub async fn assert_printed(&self, id: u64, line: &str) {
        let output = self.output(id).await;
        assert!(
            output.iter().any(|printed| printed == line),
            "procedure {id} did not print {line:?}: {output:?}"
        );
    }

    /// The lines procedure `id` has printed so far.
    pub async fn output(&self, id: u64) -> Vec<String> {
        let logs = self.client().await.logs(id).await.expect("logs");
        logs.lines.into_iter().map(|l| l.line).collect()
    }
}

impl Drop for TestDaemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The test's end of `NOTIFY_SOCKET`: every datagram oetd sent, in order.
pub struct NotifySocket {
    socket: tokio::net::UnixDatagram,
    pub seen: Vec<String>,
}

impl NotifySocket {
    pub fn bind(path: &Path) -> NotifySocket {
        NotifySocket {
            socket: tokio::net::UnixDatagram::bind(path).expect("bind the notify socket"),
            seen: Vec::new(),
        }
    }

    /// Receives until a datagram has a line satisfying `wanted`; returns that line.
    pub async fn until(&mut self, wanted: impl Fn(&str) -> bool) -> String {
        let wait = async {
            let mut buf = vec![0u8; 4096];
            loop {
                let n = self.socket.recv(&mut buf).await.expect("receive");
                let message = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push(message.clone());
                if let Some(line) = message.lines().find(|l| wanted(l)) {
                    return line.to_owned();
                }
            }
        };
        match tokio::time::timeout(DEADLINE, wait).await {
            Ok(line) => line,
            Err(_) => panic!("awaited notification did not come; got {:#?}", self.seen),
        }
    }

    /// How many of `messages` have a line that is exactly `line`.
    pub fn count(messages: &[String], line: &str) -> usize {
        messages
            .iter()
            .filter(|m| m.lines().any(|l| l == line))
            .count()
    }
}

/// Waits (bounded by [`DEADLINE`]) for a line containing `needle` among `lines` (from
/// [`TestDaemon::launch`]); `None` when the stream ends first (oetd exited).
pub fn wait_for_line(lines: &mpsc::Receiver<String>, needle: &str) -> Option<String> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.contains(needle) => return Some(line),
            Ok(_) => continue,
            Err(mpsc::RecvTimeoutError::Disconnected) => return None,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                panic!("no line containing {needle:?} from oetd within {DEADLINE:?}")
            }
        }
    }
}

/// Waits (bounded by [`DEADLINE`]) until procedure `id` satisfies `wanted` or is final.
pub async fn wait_for(
    events: &mut EventStream,
    client: &mut Client,
    id: u64,
    wanted: impl Fn(ProcedureState) -> bool,
) -> ProcedureSummary {
    tokio::time::timeout(DEADLINE, events.wait_for(client, id, wanted))
        .await
        .unwrap_or_else(|_| panic!("procedure {id} did not reach the awaited state in time"))
        .expect("wait for state")
}

/// Waits (bounded by [`DEADLINE`]) until activity `id` satisfies `wanted` or is final.
pub async fn wait_for_activity(
    events: &mut EventStream,
    client: &mut Client,
    id: u64,
    wanted: impl Fn(ActivityState) -> bool,
) -> ActivitySummary {
    tokio::time::timeout(DEADLINE, events.wait_for_activity(client, id, wanted))
        .await
        .unwrap_or_else(|_| panic!("activity {id} did not reach the awaited state in time"))
        .expect("wait for activity state")
}

/// The states an activity went through, in order.
pub fn activity_states(summary: &ActivitySummary) -> Vec<ActivityState> {
    summary.history.iter().map(|c| c.state).collect()
}

/// Waits (bounded) for the next event matching `pred`.
pub async fn next_event(events: &mut EventStream, pred: impl Fn(&Event) -> bool) -> Event {
    let wait = async {
        loop {
            match events.next().await {
                Some(Ok(StreamItem::Event(event))) if pred(&event) => return event,
                Some(Ok(_)) => continue,
                Some(Err(err)) => panic!("event stream failed: {err}"),
                None => panic!("event stream closed"),
            }
        }
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .expect("awaited event did not come in time")
}

/// Waits for the next event matching `pred` that procedure `id` (or its script) causes:
/// oetd delivers events in order, so once `id` is final, nothing it did can still come,
/// and the wait fails at once instead of at the deadline.
pub async fn next_event_of(
    events: &mut EventStream,
    id: u64,
    pred: impl Fn(&Event) -> bool,
) -> Event {
    let ended =
        |e: &Event| e.procedure_id() == Some(id) && e.new_state().is_some_and(|s| s.is_final());
    let event = next_event(events, |e| pred(e) || ended(e)).await;
    if pred(&event) {
        return event;
    }
    panic!(
        "procedure {id} ended {:?} before the awaited event",
        event.new_state()
    )
}

/// Waits until procedure `id` reaches a final state, which must be `state`: another final
/// state fails at once.
pub async fn next_final_state(events: &mut EventStream, id: u64, state: ProcedureState) {
    let event = next_event(events, |e| {
        e.procedure_id() == Some(id) && e.new_state().is_some_and(|s| s.is_final())
    })
    .await;
    assert_eq!(event.new_state(), Some(state), "procedure {id}");
}

/// Asserts that a procedure is in `state`, showing its stack trace if it is not.
pub fn assert_state(summary: &ProcedureSummary, state: ProcedureState) {
    assert_eq!(
        summary.state, state,
        "procedure {}: {:?}",
        summary.id, summary.stacktrace
    );
}

/// Asserts that a procedure FAILED with a stack trace containing each of `needles`.
pub fn assert_failed_with(summary: &ProcedureSummary, needles: &[&str]) {
    assert_state(summary, ProcedureState::Failed);
    let trace = summary.stacktrace.as_deref().expect("a stack trace");
    for needle in needles {
        assert!(trace.contains(needle), "{needle:?} not in: {trace}");
    }
}

/// The states a procedure went through, in order.
pub fn states(summary: &ProcedureSummary) -> Vec<ProcedureState> {
    summary.history.iter().map(|c| c.state).collect()
}

/// Whether a process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the parenthesised command name.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// A process's parent, if it exists.
pub fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the parenthesised command name: the state, then the parent's pid.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Live processes (not zombies) whose command line mentions `needle`, as "pid: cmdline".
pub fn live_processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc") {
        let Ok(entry) = entry else { continue };
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) && alive(pid) {
            found.push(format!("{pid}: {cmdline}"));
        }
    }
    found
}

/// Waits (bounded) for a process to end, using a pidfd so that the wait is woken by the
/// exit itself.
pub fn wait_gone(pid: u32, within: Duration) -> bool {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) } as i32;
    if fd < 0 {
        return !alive(pid);
    }
    let mut pollfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the call's duration.
    let ready = unsafe { libc::poll(&mut pollfd, 1, within.as_millis() as i32) };
    // SAFETY: fd is ours.
    unsafe { libc::close(fd) };
    ready == 1 || !alive(pid)
}
