//! The systemd sandbox itself: boot a real systemd + journald, run a socket-activated
//! `Type=notify` service as a dedicated user with staged files, read its journal with
//! structured fields, stop it, and leave nothing behind.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use oet_tests::systemd_sandbox::{skip_reason, SandboxBuilder};

/// A small socket-activated notify daemon: READY=1 after taking fd 3, WATCHDOG=1 at half
/// the interval, one native journald record with a custom field, "pong" per connection.
const DUMMY: &str = r#"#!/usr/bin/python3
import os, socket, threading, time
def notify(msg):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto(msg.encode(), os.environ["NOTIFY_SOCKET"]); s.close()
def journal(**fields):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.sendto("".join(f"{k}={v}\n" for k, v in fields.items()).encode(), "/run/systemd/journal/socket")
    s.close()
assert os.environ.get("LISTEN_PID") == str(os.getpid()) and os.environ["LISTEN_FDS"] == "1"
listener = socket.socket(fileno=3)
greeting = open("/etc/oet/dummy.conf").read().strip()
state = os.environ["STATE_DIRECTORY"]
open(os.path.join(state, "marker"), "w").write("written")
interval = int(os.environ["WATCHDOG_USEC"]) / 2e6
def watchdog():
    while True:
        notify("WATCHDOG=1"); time.sleep(interval)
threading.Thread(target=watchdog, daemon=True).start()
print(f"dummy starting uid={os.getuid()}", flush=True)
journal(MESSAGE="dummy ready", DUMMY_FIELD=greeting, PRIORITY="6")
notify("READY=1\nSTATUS=serving")
while True:
    conn, _ = listener.accept()
    conn.recv(100)
    conn.sendall(f"pong uid={os.getuid()}\n".encode())
    conn.close()
"#;

const SERVICE: &str = "[Unit]
Description=sandbox dummy notify daemon
Requires=dummy.socket
After=dummy.socket
[Service]
Type=notify
NotifyAccess=main
WatchdogSec=20
User=oet
StateDirectory=oet-dummy
ProtectSystem=strict
PrivateTmp=yes
NoNewPrivileges=yes
ExecStart=/usr/bin/oet-sandbox-dummy
";

fn socket_unit(path: &Path) -> String {
    format!(
        "[Unit]\nDescription=sandbox dummy socket\n[Socket]\nListenStream={}\nSocketMode=0666\nRemoveOnStop=yes\n",
        path.display()
    )
}

#[test]
fn boots_runs_a_notify_service_reads_its_journal_and_tears_down() {
    if let Some(reason) = skip_reason() {
        oet_tests::skip_unless_ci(&reason);
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let started = Instant::now();
    let builder = SandboxBuilder::new().unwrap();
    let socket_path = builder.dir().join("dummy.sock");
    let sandbox = builder
        .file("/usr/bin/oet-sandbox-dummy", DUMMY, 0o755)
        .file("/etc/oet/dummy.conf", "hello-structured\n", 0o644)
        .sysusers(&repo.join("systemd/sysusers.d/oet.conf"))
        .unit("dummy.service", SERVICE)
        .unit("dummy.socket", &socket_unit(&socket_path))
        .boot()
        .unwrap();
    eprintln!("booted in {:?}", started.elapsed());

    sandbox.systemctl_ok(&["start", "dummy.socket"]).unwrap();
    // The first connection activates the service through the socket.
    let mut stream = UnixStream::connect(&socket_path).unwrap();
    stream.write_all(b"ping").unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    assert!(
        reply.starts_with("pong uid=") && !reply.contains("uid=0"),
        "{reply}"
    );

    // Joins the activation's start job, which ends at READY=1.
    sandbox.systemctl_ok(&["start", "dummy.service"]).unwrap();
    let active = sandbox.systemctl(&["is-active", "dummy.service"]).unwrap();
    assert_eq!(String::from_utf8_lossy(&active.stdout).trim(), "active");
    let shown = sandbox
        .systemctl_ok(&[
            "show",
            "dummy.service",
            "-p",
            "WatchdogUSec",
            "-p",
            "StatusText",
            "-p",
            "User",
        ])
        .unwrap();
    for expected in ["WatchdogUSec=20s", "StatusText=serving", "User=oet"] {
        assert!(
            shown.lines().any(|l| l == expected),
            "{expected} not in {shown}"
        );
    }

    let record = sandbox
        .wait_for_journal_entry(
            &["-u", "dummy.service"],
            |e| e["MESSAGE"] == "dummy ready",
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(record["DUMMY_FIELD"], "hello-structured");
    assert_eq!(record["_SYSTEMD_UNIT"], "dummy.service");
    let printed = sandbox
        .wait_for_journal_entry(
            &["-u", "dummy.service", "_TRANSPORT=stdout"],
            |e| {
                e["MESSAGE"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("dummy starting"))
            },
            Duration::from_secs(10),
        )
        .unwrap();
    assert_eq!(printed["_SYSTEMD_UNIT"], "dummy.service");

    sandbox
        .systemctl_ok(&["stop", "dummy.service", "dummy.socket"])
        .unwrap();
    let after = sandbox
        .systemctl(&["is-active", "dummy.service", "dummy.socket"])
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&after.stdout),
        "inactive\ninactive\n"
    );
    assert!(
        !socket_path.exists(),
        "the socket file is removed with the socket unit"
    );

    let (ns_pid, cgroup) = (sandbox.ns_pid(), sandbox.cgroup().to_path_buf());
    let dir = sandbox.dir().to_path_buf();
    drop(sandbox);
    assert!(
        !Path::new(&format!("/proc/{ns_pid}")).exists(),
        "systemd is gone"
    );
    assert!(!cgroup.exists(), "the cgroup is removed");
    assert!(!dir.exists(), "the sandbox directory is removed");
    eprintln!("whole story took {:?}", started.elapsed());
}
