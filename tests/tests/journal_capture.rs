//! The journald capture used by the daemon's journald tests: a real program writing
//! journald's native protocol (util-linux `logger --journald`) is captured field by field,
//! and `JOURNAL_STREAM` names the program's stderr as systemd would.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use oet_tests::journal_capture::{field, skip_reason, JournalCapture};

#[test]
fn a_programs_journald_records_are_captured_with_their_fields() {
    if let Some(reason) = skip_reason() {
        oet_tests::skip_unless_ci(&reason);
        return;
    }
    let capture = JournalCapture::new().unwrap();
    let mut child = capture
        .command("logger")
        .arg("--journald")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"MESSAGE=hello from the script\nPROCEDURE_ID=3\nSTREAM=stdout\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    let record = capture.next_record(Duration::from_secs(10)).unwrap();
    assert_eq!(field(&record, "MESSAGE"), Some("hello from the script"));
    assert_eq!(field(&record, "PROCEDURE_ID"), Some("3"));
    assert_eq!(field(&record, "STREAM"), Some("stdout"));

    let stream = capture
        .command("sh")
        .args([
            "-c",
            "echo \"$JOURNAL_STREAM\"; stat -L -c %d:%i /proc/self/fd/2",
        ])
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&stream.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert!(
        lines.len() == 2 && lines[0] == lines[1] && lines[0].contains(':'),
        "{text}"
    );
}
