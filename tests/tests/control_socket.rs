//! The control socket against what an attacker can send or hold open: deeply nested
//! values before and after the handshake, connections that say nothing, half a frame or
//! a byte a second, a flood that exhausts oetd's file descriptors, a runtime directory
//! that others can write to. oetd goes on serving, and an operator's stop gets through.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use oet_protocol::codec::{encode, FrameCodec};
use oet_protocol::{
    ClientMessage, CreateProcedure, FunctionArgs, Hello, ProcedureState, Request, RequestBody,
    ScriptSpec, ServerMessage, Value, Welcome, PROTOCOL_VERSION,
};
use oet_tests::users;
use oet_tests::{wait_for, wait_for_line, TestDaemon, DEADLINE};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

const LOOP: &str = "import time\n\ndef main():\n    while True:\n        time.sleep(0.05)\n";

async fn still_serving(daemon: &TestDaemon) {
    let mut client = daemon.client().await;
    let status = client.status().await.expect("status");
    assert_eq!(status.pid, daemon.pid());
}

/// Reads what the daemon answers until it closes the connection.
async fn answer_then_close(stream: &mut UnixStream) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut answer))
        .await
        .expect("daemon closes the connection")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}

/// A `create` request frame whose single init argument is a list nested `levels` deep,
/// written as an attacker would: two bytes a level.
fn deeply_nested_request(levels: usize) -> Vec<u8> {
    let shallow = ClientMessage::Request(Request {
        id: 1,
        body: RequestBody::CreateProcedure(CreateProcedure {
            script: ScriptSpec::filesystem("file:///tmp/x.py"),
            init_args: FunctionArgs {
                args: vec![Value::Null],
                kwargs: BTreeMap::new(),
            },
        }),
    });
    let mut body = encode(&shallow).expect("encode");
    // The shallow message ends with the argument (Null) and the empty kwargs.
    assert_eq!(body[body.len() - 2..], [0, 0]);
    body.truncate(body.len() - 2);
    for _ in 0..levels {
        body.extend_from_slice(&[5, 1]); // Value::List of one item
    }
    body.extend_from_slice(&[0, 0]);
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&body);
    frame
}

type ClientTransport = Framed<UnixStream, FrameCodec<ServerMessage, ClientMessage>>;

async fn handshaken(daemon: &TestDaemon) -> ClientTransport {
    let stream = UnixStream::connect(&daemon.socket).await.expect("connect");
    let mut framed: ClientTransport = Framed::new(stream, FrameCodec::new(1 << 20));
    framed
        .send(ClientMessage::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            client: "attacker".into(),
        }))
        .await
        .expect("hello");
    match framed.next().await {
        Some(Ok(ServerMessage::Welcome(Welcome::Accepted { .. }))) => framed,
        other => panic!("no welcome: {other:?}"),
    }
}

#[tokio::test]
async fn deeply_nested_arguments_before_the_handshake_are_refused_unread() {
    let daemon = TestDaemon::start();
    let mut stream = UnixStream::connect(&daemon.socket).await.expect("connect");
    let frame = deeply_nested_request(100_000);
    assert!(frame.len() < 1 << 20, "within the frame limit");
    stream.write_all(&frame).await.expect("write");
    let answer = answer_then_close(&mut stream).await;
    assert!(answer.contains("must start with a hello"), "{answer}");
    still_serving(&daemon).await;
}

#[tokio::test]
async fn deeply_nested_arguments_after_the_handshake_are_refused() {
    let daemon = TestDaemon::start();
    let mut framed = handshaken(&daemon).await;
    framed
        .get_mut()
        .write_all(&deeply_nested_request(100_000))
        .await
        .expect("write");
    match framed.next().await {
        Some(Ok(ServerMessage::Malformed(err))) => {
            assert!(err.message.contains("nested more than"), "{}", err.message)
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    still_serving(&daemon).await;
    assert!(
        daemon
            .client()
            .await
            .list(vec![])
            .await
            .expect("list")
            .is_empty(),
        "nothing was created"
    );
}

#[tokio::test]
async fn silent_half_sent_and_trickling_connections_are_closed_after_their_timeouts() {
    let daemon = TestDaemon::start_with(
        "\n[server]\nhandshake_timeout_secs = 0.5\nframe_timeout_secs = 0.5\n",
    );
    let mut silent = UnixStream::connect(&daemon.socket).await.expect("connect");
    let mut half_hello = UnixStream::connect(&daemon.socket).await.expect("connect");
    half_hello
        .write_all(&[0, 0, 0, 40, 0, 2])
        .await
        .expect("write");
    let trickling = UnixStream::connect(&daemon.socket).await.expect("connect");
    let (mut trickle_read, mut trickle_write) = trickling.into_split();
    // One byte every 100 ms of a hello that never ends: each byte arrives well within
    // any per-read timeout, but the handshake as a whole has 0.5 s.
    let trickler = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        let started = Instant::now();
        while started.elapsed() < DEADLINE {
            tick.tick().await;
            if trickle_write.write_all(&[0]).await.is_err() {
                return true;
            }
        }
        false
    });
    answer_then_close(&mut silent).await;
    answer_then_close(&mut half_hello).await;
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, trickle_read.read_to_end(&mut rest))
        .await
        .expect("the trickling connection is closed")
        .expect("read");
    assert!(trickler.await.expect("trickler"), "writes fail once closed");

    // After the handshake, a frame begun and never finished is closed too.
    let mut framed = handshaken(&daemon).await;
    framed
        .get_mut()
        .write_all(&[0, 0, 1, 0, 1])
        .await
        .expect("write");
    match framed.next().await {
        Some(Ok(ServerMessage::Malformed(err))) => {
            assert!(
                err.message.contains("not completed within"),
                "{}",
                err.message
            )
        }
        other => panic!("expected the connection to be closed, got {other:?}"),
    }
    still_serving(&daemon).await;
}

/// What a peer who may only read holds open, run as that user: `count` connections
/// that complete the handshake and then stay idle. Prints how many were welcomed and
/// how many refused, then holds them until its stdin closes.
const READER_FLOOD: &str = r#"
import socket, struct, sys
path, count, version = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
name = b"reader-flood"
# ClientMessage::Hello: variant 0, the version (a one-byte varint), the name.
hello = bytes([0, version, len(name)]) + name
held, welcomed, refused = [], 0, 0
for _ in range(count):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    try:
        s.sendall(struct.pack(">I", len(hello)) + hello)
    except OSError:
        pass  # refused at once: the refusal is already waiting to be read
    answer = s.recv(4096)
    if b"max_connections_per_uid" in answer:
        refused += 1
    else:
        welcomed += 1
    held.append(s)
print(f"welcomed {welcomed} refused {refused}", flush=True)
sys.stdin.read()
"#;

#[tokio::test]
async fn an_operator_stops_a_script_while_hundreds_of_connections_are_held_open() {
    let reader = users::skip_reason()
        .is_none()
        .then(|| users::user("oettest-reader", "oettest", &[]));
    let mut daemon = TestDaemon::prepare(
        "\n[server]\nmax_connections = 64\nmax_connections_per_uid = 8\nhandshake_timeout_secs = 60\n",
    );
    std::fs::set_permissions(daemon.dir.path(), std::fs::Permissions::from_mode(0o755))
        .expect("chmod");
    std::fs::write(
        &daemon.config_path,
        std::fs::read_to_string(&daemon.config_path).expect("read")
            + "socket_mode = \"0666\"\nworld_writable_socket = true\n",
    )
    .expect("config");
    let lines = daemon.launch(daemon.command(None));
    wait_for_line(&lines, "oetd listening on").expect("oetd starts");

    let uri = daemon.script("loop.py", LOOP);
    let ready = daemon.create_ready(&uri, FunctionArgs::default()).await;
    daemon.start_main(ready.id, FunctionArgs::default()).await;

    // Hundreds of connections that never complete a handshake: silent, half a frame,
    // and a byte a second.
    let mut held = Vec::new();
    for n in 0..300 {
        // One that finds the listen backlog full is simply not held.
        let Ok(mut stream) = UnixStream::connect(&daemon.socket).await else {
            continue;
        };
        match n % 3 {
            0 => {}
            1 => stream.write_all(&[0, 0]).await.expect("half a length"),
            _ => {
                stream.write_all(&[0, 0, 0, 200]).await.expect("a length");
            }
        }
        held.push(stream);
    }
    let trickling: Vec<_> = held
        .drain(..)
        .enumerate()
        .map(|(n, stream)| {
            tokio::spawn(async move {
                let mut stream = stream;
                if n % 3 != 2 {
                    let _ = tokio::time::timeout(DEADLINE, stream.read_u8()).await;
                    return;
                }
                let mut tick = tokio::time::interval(Duration::from_secs(1));
                let started = Instant::now();
                while started.elapsed() < DEADLINE {
                    tick.tick().await;
                    if stream.write_all(&[1]).await.is_err() {
                        return;
                    }
                }
            })
        })
        .collect();

    // A peer who may only read holds handshaken idle connections, up to its cap.
    let mut flood = reader.as_ref().map(|reader| {
        let mut child = reader
            .command("/usr/bin/python3")
            .arg("-c")
            .arg(READER_FLOOD)
            .arg(&daemon.socket)
            .arg("20")
            .arg(PROTOCOL_VERSION.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the reader's flood");
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).expect("read");
        assert_eq!(line.trim(), "welcomed 8 refused 12", "per-uid cap");
        child
    });

    // The operator's stop gets in, and at once.
    let stop = oet_tests::oetctl_bin();
    let started = Instant::now();
    let output = std::process::Command::new(stop)
        .args(["--timeout", "10", "--socket"])
        .arg(&daemon.socket)
        .args(["procedure", "stop", "--pid", &ready.id.to_string()])
        .output()
        .expect("run oetctl");
    assert!(
        output.status.success(),
        "the stop did not get through in {:?}: {}",
        started.elapsed(),
        String::from_utf8_lossy(&output.stderr)
    );
    let mut events = daemon.events().await;
    let mut client = daemon.client().await;
    let stopped = wait_for(&mut events, &mut client, ready.id, |_| false).await;
    assert_eq!(stopped.state, ProcedureState::Stopped);

    if let Some(mut child) = flood.take() {
        drop(child.stdin.take());
        child.wait().expect("the flood ends");
    }
    for task in trickling {
        task.abort();
    }
}

/// `cmd` run with the given soft and hard limits of open files.
fn with_open_file_limit(
    mut cmd: std::process::Command,
    soft: u64,
    hard: u64,
) -> std::process::Command {
    // SAFETY: setrlimit is async-signal-safe and touches only the child's own limits.
    unsafe {
        cmd.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

#[test]
fn running_out_of_file_descriptors_backs_off_instead_of_spinning() {
    let mut daemon = TestDaemon::prepare("\n[server]\nhandshake_timeout_secs = 60\n");
    let lines = daemon.launch(with_open_file_limit(daemon.command(None), 64, 64));
    wait_for_line(&lines, "oetd listening on").expect("oetd starts");
    let socket = daemon.socket.clone();
    // More connections than oetd has descriptors; those it cannot accept wait in the
    // listen backlog.
    let flood: Vec<_> = (0..100)
        .filter_map(|_| std::os::unix::net::UnixStream::connect(&socket).ok())
        .collect();
    let first = wait_for_line(&lines, "cannot accept connections").expect("out of descriptors");
    assert!(first.contains("open-file limit is 64"), "{first}");

    // Measured over a window while the descriptors stay exhausted.
    let cpu = || cpu_ticks(daemon.pid());
    let before = cpu();
    let window = Instant::now();
    let mut logged = 0;
    while window.elapsed() < Duration::from_secs(2) {
        if let Ok(line) = lines.recv_timeout(Duration::from_millis(100)) {
            logged += line.len() + 1;
        }
    }
    let used = cpu() - before;
    assert!(
        used < 50,
        "oetd used {used} CPU ticks in 2 s while out of descriptors"
    );
    assert!(
        logged < 2048,
        "oetd logged {logged} bytes in 2 s while out of descriptors"
    );

    drop(flood);
    wait_for_line(&lines, "accepting connections again").expect("recovers");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(still_serving(&daemon));
}

/// User and system CPU time of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("comm")
        .1
        .split_whitespace()
        .collect();
    // utime and stime are fields 14 and 15; after the command name, 12 and 13.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

#[test]
fn oetd_raises_its_open_file_limit_to_the_hard_limit() {
    let mut daemon = TestDaemon::prepare("");
    let lines = daemon.launch(with_open_file_limit(daemon.command(None), 256, 4096));
    let raised = wait_for_line(&lines, "open-file limit").expect("logged");
    assert!(raised.contains("raised from 256 to 4096"), "{raised}");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", daemon.pid())).expect("limits");
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("a line");
    let numbers: Vec<&str> = open_files.split_whitespace().skip(3).take(2).collect();
    assert_eq!(numbers, ["4096", "4096"], "{open_files}");
}

/// Starts oetd with its socket at `socket`, expecting it to refuse to start; returns
/// what it said.
fn start_expecting_refusal(daemon: &mut TestDaemon, socket: std::path::PathBuf) -> String {
    daemon.socket = socket;
    let lines = daemon.launch(daemon.command(None));
    let mut said = String::new();
    let deadline = Instant::now() + DEADLINE;
    loop {
        match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(line) if line.contains("oetd listening on") => panic!("oetd started: {said}"),
            Ok(line) => said.push_str(&(line + "\n")),
            // stderr closed: oetd has exited.
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(err) => panic!("oetd neither started nor exited: {err}"),
        }
    }
    assert!(!daemon.wait().success(), "{said}");
    said
}

#[test]
fn a_runtime_directory_others_can_write_to_is_refused() {
    let mut daemon = TestDaemon::prepare("");
    let run = daemon.dir.path().join("run");
    std::fs::create_dir(&run).expect("mkdir");
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    let err = start_expecting_refusal(&mut daemon, run.join("oetd.sock"));
    assert!(err.contains("refusing to use"), "{err}");
    assert!(err.contains("writable by anyone"), "{err}");
    assert!(!run.join("oetd.sock").exists(), "no socket was made");

    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o770)).expect("chmod");
    let err = start_expecting_refusal(&mut daemon, run.join("oetd.sock"));
    assert!(err.contains("writable by its group"), "{err}");

    if users::skip_reason().is_none() {
        let other = users::user("oettest-reader", "oettest", &[]);
        std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        std::os::unix::fs::chown(&run, Some(other.uid), None).expect("chown");
        let err = start_expecting_refusal(&mut daemon, run.join("oetd.sock"));
        assert!(
            err.contains(&format!("owned by uid {}", other.uid)),
            "{err}"
        );
    }
}

#[tokio::test]
async fn oetd_makes_its_runtime_directory_private_and_gives_the_socket_its_mode() {
    let mut daemon = TestDaemon::prepare("\n[server]\nsocket_mode = \"0640\"\n");
    daemon.socket = daemon.dir.path().join("new/run/oetd.sock");
    let lines = daemon.launch(daemon.command(None));
    wait_for_line(&lines, "oetd listening on").expect("oetd starts");
    let mode = |path: &std::path::Path| {
        std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777
    };
    let dir = daemon.socket.parent().expect("dir").to_owned();
    assert!(
        mode(&dir) == 0o700 || mode(&dir) == 0o710,
        "{:o}",
        mode(&dir)
    );
    assert_eq!(mode(&daemon.socket), 0o640);
    still_serving(&daemon).await;

    let check = |toml: &str| {
        std::fs::write(&daemon.config_path, toml).expect("config");
        std::process::Command::new(oet_tests::oetd_bin())
            .arg("--config")
            .arg(&daemon.config_path)
            .arg("--check-config")
            .output()
            .expect("run oetd")
    };
    let refused = check("[server]\nsocket_mode = \"0666\"\n");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(stderr.contains("world_writable_socket"), "{stderr}");
    assert!(
        check("[server]\nsocket_mode = \"0666\"\nworld_writable_socket = true\n")
            .status
            .success()
    );
}

#[test]
fn oetctl_gives_up_on_a_daemon_that_does_not_answer() {
    let dir = tempfile::tempdir().expect("temp dir");
    let socket = dir.path().join("silent.sock");
    // A socket that accepts into its backlog and never says a word.
    let _listener = std::os::unix::net::UnixListener::bind(&socket).expect("bind");
    let started = Instant::now();
    let output = std::process::Command::new(oet_tests::oetctl_bin())
        .arg("--socket")
        .arg(&socket)
        .args(["--timeout", "0.5", "status"])
        .output()
        .expect("run oetctl");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("did not answer the connection within 0.5 s"),
        "{stderr}"
    );
    assert!(started.elapsed() < DEADLINE);
    let _ = std::io::stderr().flush();
}

/// Descriptors oetd holds now.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fd dir")
        .count()
}

/// oetd's child processes now.
fn children(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .expect("task dir")
        .flatten()
        .filter_map(|task| std::fs::read_to_string(task.path().join("children")).ok())
        .map(|list| list.split_whitespace().count())
        .sum()
}

#[tokio::test]
async fn a_live_procedure_holds_at_most_three_file_descriptors_and_one_process() {
    // README: "Each live procedure holds 3 descriptors", which sizes LimitNOFILE.
    let daemon = TestDaemon::start();
    let uri = daemon.script("idle.py", "def main():\n    pass\n");
    let mut client = daemon.client().await;
    let mut events = daemon.events().await;
    // Warm up whatever oetd opens once (its runtime's threads, the first procedure).
    let first = daemon.create_ready(&uri, FunctionArgs::default()).await;
    let before = open_fds(daemon.pid());
    let processes_before = children(daemon.pid());
    let mut ids = Vec::new();
    for _ in 0..20 {
        let created = client
            .create(ScriptSpec::filesystem(&uri), FunctionArgs::default())
            .await
            .expect("create");
        ids.push(created.id);
    }
    for id in &ids {
        let ready = wait_for(&mut events, &mut client, *id, |s| {
            s == ProcedureState::Ready
        })
        .await;
        assert_eq!(ready.state, ProcedureState::Ready);
    }
    let after = open_fds(daemon.pid());
    let per_procedure = (after - before) as f64 / ids.len() as f64;
    eprintln!("{before} descriptors with one procedure, {after} with 21: {per_procedure} each");
    assert!(
        per_procedure <= 3.0,
        "{per_procedure} descriptors per procedure"
    );
    // The worker alone: no guard per procedure.
    assert_eq!(
        children(daemon.pid()) - processes_before,
        ids.len(),
        "processes per live procedure"
    );
    assert_eq!(first.state, ProcedureState::Ready);
}
