//! journald's native protocol, for records that are not oetd's own (the lines scripts
//! print): one record is one datagram of `NAME=value` fields to journald's socket.
//!
//! Records go through a bounded queue to one task that sends them as journald takes
//! them, so a burst waits for journald instead of being lost to its short socket queue,
//! and a journald that does not keep up costs at most the queue, never a stalled caller:
//! a record that finds the queue full is refused, for the caller to count.

use std::io;
use std::path::{Path, PathBuf};

use tokio::net::UnixDatagram;
use tokio::sync::mpsc;

/// Where journald listens for native records.
pub const SOCKET: &str = "/run/systemd/journal/socket";

/// The way into the journal: a queue drained by a sending task.
#[derive(Debug, Clone)]
pub struct Journal {
    queue: mpsc::Sender<Vec<u8>>,
}

impl Journal {
    /// Connects to journald; records queue up to `capacity`. Needs a tokio runtime.
    pub fn connect(capacity: usize) -> io::Result<Journal> {
        Journal::connect_to(Path::new(SOCKET), capacity)
    }

    pub fn connect_to(path: &Path, capacity: usize) -> io::Result<Journal> {
        let socket = UnixDatagram::unbound()?;
        socket.connect(path)?;
        let (queue, records) = mpsc::channel(capacity.max(1));
        tokio::spawn(send_all(socket, records, path.to_owned()));
        Ok(Journal { queue })
    }

    /// Queues one record made of `fields` (upper-case names, as journald wants them);
    /// false if the queue is full.
    pub fn send(&self, fields: &[(&str, &str)]) -> bool {
        self.queue.try_send(encode(fields)).is_ok()
    }
}

async fn send_all(socket: UnixDatagram, mut records: mpsc::Receiver<Vec<u8>>, path: PathBuf) {
    let mut failed = false;
    while let Some(record) = records.recv().await {
        if let Err(err) = socket.send(&record).await {
            // Said once: every later record would say the same.
            if !failed {
                tracing::warn!("cannot send script output to {}: {err}", path.display());
                failed = true;
            }
        }
    }
}

/// One record in the native protocol: `NAME=value\n`, or, for a value holding a newline,
/// `NAME\n`, its length as 64-bit little-endian, the value and `\n`.
pub fn encode(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, value) in fields {
        out.extend_from_slice(name.as_bytes());
        if value.contains('\n') {
            out.push(b'\n');
            out.extend_from_slice(&(value.len() as u64).to_le_bytes());
        } else {
            out.push(b'=');
        }
        out.extend_from_slice(value.as_bytes());
        out.push(b'\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_encoded_plain_or_with_their_length() {
        assert_eq!(
            encode(&[("MESSAGE", "hello"), ("PROCEDURE_ID", "3")]),
            b"MESSAGE=hello\nPROCEDURE_ID=3\n"
        );
        let mut expected = b"MESSAGE\n".to_vec();
        expected.extend_from_slice(&3u64.to_le_bytes());
        expected.extend_from_slice(b"a\nb\n");
        assert_eq!(encode(&[("MESSAGE", "a\nb")]), expected);
    }

    #[tokio::test]
    async fn a_burst_waits_for_the_reader_instead_of_being_lost() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("socket");
        let server = std::os::unix::net::UnixDatagram::bind(&path).expect("bind");
        let journal = Journal::connect_to(&path, 1000).expect("connect");
        // Far more than a datagram socket queues before its reader reads.
        for n in 0..500 {
            assert!(journal.send(&[("MESSAGE", &n.to_string())]));
        }
        let reading = tokio::task::spawn_blocking(move || {
            let mut buf = [0u8; 64];
            (0..500)
                .map(|_| {
                    let n = server.recv(&mut buf).expect("recv");
                    String::from_utf8_lossy(&buf[..n]).into_owned()
                })
                .collect::<Vec<_>>()
        });
        let got = reading.await.expect("reader");
        assert_eq!(got.first().map(String::as_str), Some("MESSAGE=0\n"));
        assert_eq!(got.last().map(String::as_str), Some("MESSAGE=499\n"));
    }
}
