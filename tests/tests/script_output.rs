//! What scripts print: logged as the script's own records, rate-limited per procedure
//! with a counted notice, so that a script printing without end cannot flood oetd's log;
//! and kept, bounded, for `oetctl procedure logs`.

use oet_protocol::ProcedureState::*;
use oet_tests::{assert_state, TestDaemon};

/// 200 MB in lines of 1000 bytes.
const FLOOD: &str = r#"
import sys

def main():
    block = ("y" * 999 + "\n") * 1024
    for _ in range(200):
        sys.stdout.write(block)
    sys.stdout.flush()
    print("the last line")
"#;
const FLOOD_LINES: u64 = 200 * 1024 + 1;

#[tokio::test]
async fn a_script_printing_200_mb_leaves_oetds_log_small_and_says_what_it_suppressed() {
    // Room for the newest 1000 lines of 1000 bytes: here the line count bounds the kept
    // output, not its bytes.
    let daemon = TestDaemon::start_with("log_bytes = 4194304");
    let done = daemon.run_script("flood.py", FLOOD).await;
    assert_state(&done, Complete);
    let id = done.id;

    let notice = daemon
        .log_line("lines suppressed")
        .expect("a record of the suppressed lines");
    assert!(notice.contains(&format!("procedure {id}")), "{notice}");
    // The default budget is 1000 lines per 30 s; the rest is counted.
    let counted: u64 = notice
        .split_whitespace()
        .find_map(|word| word.parse().ok())
        .unwrap_or_else(|| panic!("no count in {notice:?}"));
    assert!(
        (FLOOD_LINES - 1000..=FLOOD_LINES).contains(&counted),
        "{counted} suppressed of {FLOOD_LINES}: {notice}"
    );
    let logged = daemon.log_bytes();
    assert!(
        logged < 2 << 20,
        "oetd logged {logged} bytes for a script that printed 200 MB"
    );

    // `procedure logs` keeps the newest lines, bounded, and says how many went.
    let logs = daemon.client().await.logs(id).await.expect("logs");
    assert_eq!(logs.lines.len(), 1000);
    assert_eq!(logs.dropped, FLOOD_LINES - 1000);
    assert_eq!(
        logs.lines.last().map(|l| l.line.as_str()),
        Some("the last line")
    );
}

#[tokio::test]
async fn each_procedure_has_its_own_budget() {
    let daemon = TestDaemon::start_with("journal_burst = 5");
    let chatty = "def main():\n    for i in range(20):\n        print(f'line {i}')\n";
    let first = daemon.run_script("first.py", chatty).await;
    let second = daemon.run_script("second.py", chatty).await;
    for done in [&first, &second] {
        assert_state(done, Complete);
        let id = done.id;
        let lines = daemon.log_lines_until(&format!("procedure {id}: 15 lines suppressed"));
        let printed: Vec<&String> = lines
            .iter()
            .filter(|l| l.contains(&format!("[procedure {id} stdout]")))
            .collect();
        assert_eq!(printed.len(), 5, "{lines:#?}");
        assert!(printed[0].ends_with("line 0"), "{printed:?}");
    }
}
