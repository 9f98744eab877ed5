//! Nothing is silently dropped at the frame limit, and a stalled listener costs a
//! bounded amount of memory: large stack traces and output lines are cut where they are
//! recorded (saying what was cut), an answer that still does not fit is refused with an
//! error, an event that does not fit reaches listeners as a notice naming it.

use oet_protocol::client::StreamItem;
use oet_protocol::{topics, FunctionArgs, ProcedureState, Value};
use oet_tests::{assert_failed_with, next_event, positional, wait_for, TestDaemon, DEADLINE};
use tokio::io::AsyncWriteExt;

#[tokio::test]
async fn a_huge_exception_message_leaves_list_describe_and_listen_working() {
    let daemon = TestDaemon::start();
    let mut listener = daemon.events().await;
    let failed = daemon
        .run_script(
            "huge.py",
            "def main():\n    raise ValueError('head of the message ' + 'x' * 3_000_000 + ' tail of the message')\n",
        )
        .await;
    assert_failed_with(
        &failed,
        &[
            "Traceback",
            "head of the message",
            "tail of the message",
            "bytes cut",
        ],
    );
    let trace = failed.stacktrace.as_deref().expect("a trace");
    assert!(trace.len() < 100_000, "{} bytes kept", trace.len());

    let mut client = daemon.client().await;
    let listed = client.list(vec![]).await.expect("list still works");
    assert_eq!(listed.len(), 1);
    client
        .describe(failed.id)
        .await
        .expect("describe still works");
    // The listener that was there all along saw the stack trace and the failure.
    let stacktrace = next_event(&mut listener, |e| e.topic == topics::STACKTRACE).await;
    assert_eq!(stacktrace.procedure_id(), Some(failed.id));
    next_event(&mut listener, |e| e.topic == topics::FAILED).await;
    let out = daemon.oetctl(&["procedure", "describe", "--pid", &failed.id.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn long_output_lines_are_cut_and_the_logs_still_fit_in_an_answer() {
    let daemon = TestDaemon::start();
    let done = daemon
        .run_script(
            "chatty.py",
            "def main():\n    for n in range(200):\n        print(f'line {n} ' + 'y' * 60_000, flush=True)\n    print('the end')\n",
        )
        .await;
    assert_eq!(done.state, ProcedureState::Complete);
    let logs = daemon.client().await.logs(done.id).await.expect("logs fit");
    let last = logs.lines.last().expect("lines");
    assert_eq!(last.line, "the end");
    let long = &logs.lines[logs.lines.len() - 2];
    assert!(
        long.line.starts_with("line 199 yyy"),
        "{}",
        &long.line[..20]
    );
    assert!(long.line.ends_with("more bytes cut]"), "says what was cut");
    assert!(logs.dropped > 0, "the oldest lines went, and that is said");
    let out = daemon.oetctl(&["procedure", "logs", "--pid", &done.id.to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn an_answer_too_large_for_a_frame_is_refused_with_an_error_saying_so() {
    let daemon = TestDaemon::start_with("\n[server]\nmax_frame_bytes = 16384\n");
    let uri = daemon.script(
        "args.py",
        "def init(*args):\n    pass\n\ndef main():\n    pass\n",
    );
    // Each procedure fits in an answer; the two together do not.
    let args = || positional((0..3).map(|_| Value::from("z".repeat(4000))).collect());
    let first = daemon.create_ready(&uri, args()).await;
    let second = daemon.create_ready(&uri, args()).await;
    assert_eq!(second.state, ProcedureState::Ready);
    let mut client = daemon.client().await;
    let err = client
        .list(vec![])
        .await
        .expect_err("too large")
        .to_string();
    assert!(
        err.contains("more than the frame limit of 16384 bytes"),
        "{err}"
    );
    assert!(err.contains("request.procedure.list"), "{err}");
    // The connection goes on serving, and one at a time they fit.
    client.describe(first.id).await.expect("one fits");
    client.describe(second.id).await.expect("one fits");
}

#[tokio::test]
async fn an_event_too_large_for_a_frame_reaches_listeners_as_a_notice() {
    let daemon = TestDaemon::start_with("\n[server]\nmax_frame_bytes = 65536\n");
    let mut listener = daemon.events().await;
    daemon
        .run_script(
            "big_event.py",
            "from pubsub import pub\n\ndef main():\n    pub.sendMessage('user.big', msg='b' * 200_000)\n    pub.sendMessage('user.small', msg='after')\n",
        )
        .await;
    let notice = next_event(&mut listener, |e| e.topic == topics::EVENT_TOO_LARGE).await;
    assert_eq!(notice.too_large_topic(), Some("user.big"));
    let map = notice.payload.as_map().expect("a map");
    assert!(
        matches!(map.get("bytes"), Some(Value::Int(n)) if *n > 200_000),
        "{notice:?}"
    );
    next_event(&mut listener, |e| e.topic == "user.small").await;
}

/// oetd's resident memory now and at its peak, in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .expect("a memory field")
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[tokio::test]
async fn a_stalled_listener_and_a_fast_publishing_script_keep_oetd_small() {
    let daemon = TestDaemon::start();
    // A listener that subscribes and then never reads another byte.
    let stalled = daemon.client().await.subscribe().await.expect("subscribe");
    // One that reads along, for comparison: it must see the script through.
    let mut reading = daemon.events().await;
    let (_, before) = memory_kib(daemon.pid());

    let uri = daemon.script(
        "flood.py",
        "from pubsub import pub\n\ndef main():\n    blob = 'e' * 400_000\n    for n in range(500):\n        pub.sendMessage('user.flood', n=n, blob=blob)\n",
    );
    let ready = daemon.create_ready(&uri, FunctionArgs::default()).await;
    let mut client = daemon.client().await;
    daemon.start_main(ready.id, FunctionArgs::default()).await;
    let mut lagged = 0;
    let wait = async {
        loop {
            match reading.next().await {
                Some(Ok(StreamItem::Event(e))) if e.procedure_id() == Some(ready.id) => {
                    if e.new_state() == Some(ProcedureState::Complete) {
                        return;
                    }
                }
                Some(Ok(StreamItem::Lagged(n))) => lagged += n,
                Some(Ok(_)) => {}
                other => panic!("the reading listener lost its stream: {other:?}"),
            }
        }
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .expect("the script ends");
    let (now, peak) = memory_kib(daemon.pid());
    eprintln!("oetd RSS: {before} KiB before, {peak} KiB at the peak, {now} KiB after; the reading listener lagged {lagged} events");
    // 200 MB went through; the stalled listener may hold its 16 MiB budget.
    assert!(
        peak < before + 96 * 1024,
        "peak RSS {peak} KiB (from {before} KiB)"
    );

    drop(stalled);
    let done = wait_for(&mut daemon.events().await, &mut client, ready.id, |_| false).await;
    assert_eq!(done.state, ProcedureState::Complete);
    client.status().await.expect("still serving");
    let _ = tokio::io::stderr().flush().await;
}
