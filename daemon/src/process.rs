//! Watching child processes: their output line by line (bounded), and how they ended, in
//! words. Shared by the procedure runner (scripts) and the environment builder (pip).

use std::process::ExitStatus;

use futures::Stream;
use nix::sys::signal::Signal;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncRead, BufReader};

/// Longest output line kept whole; a longer line is replaced by a note saying so.
pub const MAX_LINE: usize = 64 * 1024;

/// The lines a child writes to `pipe`, without their line ends, until it is closed.
/// Bytes that are not UTF-8 are replaced, so a line is never lost for its encoding; a
/// line longer than [`MAX_LINE`] becomes a note, and reading goes on after it (a pipe
/// left unread would block the child).
pub fn lines(pipe: impl AsyncRead + Unpin + Send) -> impl Stream<Item = String> + Send {
    futures::stream::unfold(BufReader::new(pipe), |mut reader| async move {
        next_line(&mut reader).await.map(|line| (line, reader))
    })
}

async fn next_line(reader: &mut (impl AsyncBufRead + Unpin)) -> Option<String> {
    let mut line = Vec::new();
    let mut too_long = false;
    loop {
        let buf = reader.fill_buf().await.ok()?;
        if buf.is_empty() {
            // End of the pipe: a last line without its line end still counts.
            return (!line.is_empty() || too_long).then(|| finish(&line, too_long));
        }
        let end = buf.iter().position(|&b| b == b'\n');
        let chunk = &buf[..end.unwrap_or(buf.len())];
        if !too_long {
            if line.len() + chunk.len() > MAX_LINE {
                too_long = true;
                line = Vec::new();
            } else {
                line.extend_from_slice(chunk);
            }
        }
        let used = end.map_or(buf.len(), |at| at + 1);
        reader.consume(used);
        if end.is_some() {
            return Some(finish(&line, too_long));
        }
    }
}

fn finish(line: &[u8], too_long: bool) -> String {
    if too_long {
        return format!("[a line longer than {MAX_LINE} bytes was dropped]");
    }
    String::from_utf8_lossy(line)
        .trim_end_matches('\r')
        .to_owned()
}

/// How a process ended: `exit status 2`, or `signal SIGSEGV (11) (core dumped)`.
pub fn exit_summary(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    if let Some(signal) = status.signal() {
        let name = Signal::try_from(signal)
            .map(|s| s.as_str().to_owned())
            .unwrap_or_else(|_| format!("signal {signal}"));
        let core = if status.core_dumped() {
            " (core dumped)"
        } else {
            ""
        };
        return format!("signal {name} ({signal}){core}");
    }
    match status.code() {
        Some(code) => format!("exit status {code}"),
        None => status.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::os::unix::process::ExitStatusExt;

    #[test]
    fn exits_are_told_by_status_or_signal() {
        assert_eq!(exit_summary(ExitStatus::from_raw(2 << 8)), "exit status 2");
        assert_eq!(
            exit_summary(ExitStatus::from_raw(11)),
            "signal SIGSEGV (11)"
        );
    }

    #[tokio::test]
    async fn lines_are_split_decoded_and_bounded() {
        let long = "x".repeat(MAX_LINE + 1);
        let mut input = b"one\r\ntwo \xff\n".to_vec();
        input.extend_from_slice(format!("{long}\nthree").as_bytes());
        let got: Vec<String> = lines(input.as_slice()).collect().await;
        assert_eq!(got[0], "one");
        assert_eq!(got[1], "two \u{fffd}");
        assert!(got[2].contains("was dropped"), "{}", got[2]);
        assert_eq!(got[3], "three");
        assert_eq!(got.len(), 4);
    }
}
