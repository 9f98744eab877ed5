//! A test-owned stand-in for journald's native socket: runs a program in a private mount
//! namespace whose `/run` is a test directory, so the program's journald output (which
//! tracing-journald always sends to `/run/systemd/journal/socket`) arrives here, record by
//! record, with every field. `JOURNAL_STREAM` is set the way systemd sets it, so the
//! program's own "is stderr the journal?" check is exercised too.

use std::collections::HashMap;
use std::io;
use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

/// One journal record: field name → values (journald allows a field more than once).
pub type JournalRecord = HashMap<String, Vec<String>>;

/// Why a capture cannot run here (needs root for a private mount namespace), if it cannot.
pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("capturing journald output needs root (a private mount namespace)".into());
    }
    match Command::new("unshare")
        .args(["--mount", "--propagation", "private", "true"])
        .output()
    {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(format!(
            "unshare --mount fails: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Some(format!("unshare is not available: {e}")),
    }
}

/// The socket journald records arrive on.
pub struct JournalCapture {
    run: tempfile::TempDir,
    socket: UnixDatagram,
}

impl JournalCapture {
    /// Binds `<temp>/systemd/journal/socket`; `<temp>` becomes `/run` for captured programs.
    pub fn new() -> io::Result<Self> {
        let run = tempfile::tempdir()?;
        std::fs::create_dir_all(run.path().join("systemd/journal"))?;
        let socket = UnixDatagram::bind(run.path().join("systemd/journal/socket"))?;
        Ok(Self { run, socket })
    }

    /// A command running `program` with its journald output captured here. Its `/run` is
    /// the capture's directory, so keep its sockets and state elsewhere (e.g. a temp dir).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(
                "mount --bind \"$OET_CAPTURE_RUN\" /run && \
                 export JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) && \
                 exec \"$0\" \"$@\"",
            )
            .arg(program)
            .env("OET_CAPTURE_RUN", self.run.path());
        cmd
    }

    /// The next record, waiting at most `timeout`.
    pub fn next_record(&self, timeout: Duration) -> io::Result<JournalRecord> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "no journal record arrived in time",
                ));
            }
            self.socket.set_read_timeout(Some(left))?;
            let n = match self.socket.recv(&mut buf) {
                Ok(n) => n,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => return Err(e),
            };
            // tracing-journald sends an empty datagram to check that journald listens.
            if n > 0 {
                return parse_native(&buf[..n]);
            }
        }
    }

    /// Reads the capture on its own thread (journald's socket queue is short, and a full
    /// queue would block the program's logging) until oetd's last record ("oetd
    /// stopped"), handing each record on as it comes.
    pub fn until_oetd_stops(self) -> std::sync::mpsc::Receiver<JournalRecord> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || loop {
            match self.next_record(crate::DEADLINE) {
                Ok(record) => {
                    let last = field(&record, "MESSAGE") == Some("oetd stopped");
                    if tx.send(record).is_err() || last {
                        return;
                    }
                }
                Err(err) => {
                    eprintln!("journal capture ended: {err}");
                    return;
                }
            }
        });
        rx
    }

    /// Records until one satisfies `wanted` (returned last), waiting at most `timeout`.
    pub fn records_until(
        &self,
        wanted: impl Fn(&JournalRecord) -> bool,
        timeout: Duration,
    ) -> io::Result<Vec<JournalRecord>> {
        let deadline = Instant::now() + timeout;
        let mut records = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let record = self.next_record(left).map_err(|e| {
                io::Error::new(e.kind(), format!("{e}; received so far: {records:#?}"))
            })?;
            let done = wanted(&record);
            records.push(record);
            if done {
                return Ok(records);
            }
        }
    }
}

/// The single value of `name` in `record`, if it has exactly one.
pub fn field<'r>(record: &'r JournalRecord, name: &str) -> Option<&'r str> {
    match record.get(name).map(Vec::as_slice) {
        Some([one]) => Some(one),
        _ => None,
    }
}

/// Parses journald's native protocol: per field `NAME=value\n`, or `NAME\n` + 64-bit
/// little-endian length + bytes + `\n` for values that may hold newlines.
pub fn parse_native(mut data: &[u8]) -> io::Result<JournalRecord> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let mut record = JournalRecord::new();
    while !data.is_empty() {
        let nl = data
            .iter()
            .position(|&b| b == b'\n')
            .ok_or_else(|| bad("a field does not end in a newline"))?;
        let head = &data[..nl];
        let (name, value, rest) = match head.iter().position(|&b| b == b'=') {
            Some(eq) => (&head[..eq], &head[eq + 1..], &data[nl + 1..]),
            None => {
                let body = &data[nl + 1..];
                let len: [u8; 8] = body
                    .get(..8)
                    .and_then(|l| l.try_into().ok())
                    .ok_or_else(|| bad("a binary field has no length"))?;
                let len = usize::try_from(u64::from_le_bytes(len))
                    .map_err(|_| bad("a binary field is too long"))?;
                let value = body
                    .get(8..8 + len)
                    .ok_or_else(|| bad("a binary field is truncated"))?;
                if body.get(8 + len) != Some(&b'\n') {
                    return Err(bad("a binary field does not end in a newline"));
                }
                (head, value, &body[9 + len..])
            }
        };
        record
            .entry(String::from_utf8_lossy(name).into_owned())
            .or_default()
            .push(String::from_utf8_lossy(value).into_owned());
        data = rest;
    }
    Ok(record)
}
