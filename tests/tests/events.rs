//! Events: what scripts publish reaches listeners and other scripts; lifecycle and
//! request events are on the same bus.

use futures::{SinkExt, StreamExt};
use oet_protocol::client::StreamItem;
use oet_protocol::codec::FrameCodec;
use oet_protocol::{
    ClientMessage, FunctionArgs, Hello, ListProcedures, ProcedureState, Request, RequestBody,
    ServerMessage, Value, PROTOCOL_VERSION,
};
use oet_tests::{next_event, next_event_of, positional, wait_for, TestDaemon};
use tokio::net::UnixStream;
use tokio_util::codec::Framed;

const ANNOUNCER: &str = r#"
from pubsub import pub

def main(message):
    pub.sendMessage("user.script.announce", msg_src="announcer", msg=message)
"#;

#[tokio::test]
async fn a_script_message_reaches_a_listener_with_its_topic_and_payload() {
    let daemon = TestDaemon::start();
    let ready = daemon.ready_script("announce.py", ANNOUNCER).await;
    let mut events = daemon.events().await;
    let args = positional(vec![Value::from("slewing to target")]);
    daemon.start_main(ready.id, args).await;
    let event = next_event_of(&mut events, ready.id, |e| e.topic == "user.script.announce").await;
    assert_eq!(event.msg_src, ready.id.to_string());
    let payload = event.payload.as_map().expect("payload");
    assert_eq!(payload.get("msg"), Some(&Value::from("slewing to target")));
    // The lifecycle of the same procedure is on the same bus.
    let complete = next_event(&mut events, |e| {
        e.topic == "procedure.lifecycle.complete" && e.procedure_id() == Some(ready.id)
    })
    .await;
    assert_eq!(complete.topic, "procedure.lifecycle.complete");
}

#[tokio::test]
async fn an_event_from_one_script_reaches_a_subscriber_in_another() {
    let daemon = TestDaemon::start();
    let listener = daemon
        .ready_script(
            "listener.py",
            r#"
from pubsub import pub

def heard(msg_src, msg):
    pub.sendMessage("test.heard", msg=f"{msg} (from {msg_src})")

def init():
    pub.subscribe(heard, "user.script.announce")

def main():
    pass
"#,
        )
        .await;
    assert_eq!(listener.state, ProcedureState::Ready);

    let announcer = daemon.ready_script("announce.py", ANNOUNCER).await;
    let mut events = daemon.events().await;
    let mut client = daemon.client().await;
    let args = positional(vec![Value::from("on source")]);
    daemon.start_main(announcer.id, args).await;
    let heard = next_event(&mut events, |e| e.topic == "test.heard").await;
    assert_eq!(heard.msg_src, listener.id.to_string());
    assert_eq!(
        heard.payload.as_map().and_then(|m| m.get("msg")),
        Some(&Value::from(format!("on source (from {})", announcer.id)))
    );
    let done = wait_for(&mut events, &mut client, announcer.id, |s| {
        s == ProcedureState::Complete
    })
    .await;
    assert_eq!(done.state, ProcedureState::Complete);
}

#[tokio::test]
async fn a_script_does_not_hear_its_own_messages_twice() {
    let daemon = TestDaemon::start();
    // Another script answers every ping with a pong. oetd hands events to a worker in the
    // order they were published, so by the time the pinger has its three pongs, any echo
    // of its own pings would have reached it already.
    let echo = daemon
        .ready_script(
            "echo.py",
            r#"
from pubsub import pub

def ping(n, msg_src=None):
    pub.sendMessage("test.pong", n=n)

def init():
    pub.subscribe(ping, "test.ping")

def main():
    pass
"#,
        )
        .await;
    assert_eq!(echo.state, ProcedureState::Ready);
    let done = daemon
        .run_script(
            "pinger.py",
            r#"
import threading
from pubsub import pub

pings, pongs = [], []
all_pongs = threading.Event()

def ping(n, msg_src=None):
    pings.append(n)

def pong(n, msg_src=None):
    pongs.append(n)
    if len(pongs) == 3:
        all_pongs.set()

def main():
    pub.subscribe(ping, "test.ping")
    pub.subscribe(pong, "test.pong")
    for n in range(3):
        pub.sendMessage("test.ping", n=n)
    if not all_pongs.wait(60):
        raise RuntimeError(f"pongs {pongs} did not all come")
    print(f"heard {pings}")
"#,
        )
        .await;
    assert_eq!(
        done.state,
        ProcedureState::Complete,
        "{:?}",
        done.stacktrace
    );
    daemon.assert_printed(done.id, "heard [0, 1, 2]").await;
}

#[tokio::test]
async fn requests_are_announced_on_the_bus() {
    let daemon = TestDaemon::start();
    let mut events = daemon.events().await;
    let uri = daemon.script("noop.py", "def main():\n    pass\n");
    daemon.create_ready(&uri, FunctionArgs::default()).await;
    let request = next_event(&mut events, |e| e.topic == "request.procedure.create").await;
    let payload = request.payload.as_map().expect("a map");
    assert_eq!(payload.get("script_uri"), Some(&Value::from(uri.as_str())));
    let script = payload
        .get("script")
        .and_then(Value::as_map)
        .expect("script");
    assert_eq!(script.get("script_type"), Some(&Value::from("filesystem")));
    assert!(matches!(payload.get("request_id"), Some(Value::Int(_))));
}

#[tokio::test]
async fn a_request_is_announced_with_the_id_its_client_gave_it() {
    let daemon = TestDaemon::start();
    let mut events = daemon.events().await;
    let stream = UnixStream::connect(&daemon.socket).await.expect("connect");
    let mut framed: Framed<UnixStream, FrameCodec<ServerMessage, ClientMessage>> =
        Framed::new(stream, FrameCodec::new(1 << 20));
    framed
        .send(ClientMessage::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            client: "events test".into(),
        }))
        .await
        .expect("hello");
    assert!(matches!(
        framed.next().await,
        Some(Ok(ServerMessage::Welcome(_)))
    ));
    let body = RequestBody::ListProcedures(ListProcedures { ids: vec![7, 9] });
    let id = 4_242_424_242;
    framed
        .send(ClientMessage::Request(Request { id, body }))
        .await
        .expect("request");
    let request = next_event(&mut events, |e| e.topic == "request.procedure.list").await;
    assert_eq!(
        request.payload.as_map().and_then(|m| m.get("request_id")),
        Some(&Value::Int(id as i64))
    );
    assert_eq!(
        request.payload.as_map().and_then(|m| m.get("ids")),
        Some(&Value::List(vec![Value::Int(7), Value::Int(9)])),
        "a list request announces the IDs it asked for"
    );
}

#[tokio::test]
async fn a_slow_listener_is_told_how_many_events_it_missed() {
    let daemon = TestDaemon::start_with("[events]\nbuffer = 4");
    let uri = daemon.script(
        "chatty.py",
        r#"
from pubsub import pub

def main():
    padding = "x" * 1024
    for i in range(5000):
        pub.sendMessage("test.chatter", n=i, padding=padding)
"#,
    );
    let ready = daemon.create_ready(&uri, FunctionArgs::default()).await;
    // This subscriber does not read while the script runs: once its socket buffer is
    // full, the bus must drop events for it rather than wait.
    let mut slow = daemon.events().await;
    let mut watcher = daemon.events().await;
    let mut client = daemon.client().await;
    daemon.start_main(ready.id, FunctionArgs::default()).await;
    let done = wait_for(&mut watcher, &mut client, ready.id, |s| {
        s == ProcedureState::Complete
    })
    .await;
    assert_eq!(done.state, ProcedureState::Complete);
    let missed = tokio::time::timeout(oet_tests::DEADLINE, async {
        loop {
            match slow.next().await {
                Some(Ok(oet_protocol::client::StreamItem::Lagged(missed))) => return missed,
                Some(Ok(_)) => continue,
                other => panic!("stream ended without a lag notice: {other:?}"),
            }
        }
    })
    .await
    .expect("a lag notice");
    assert!(missed > 0);
}

/// A script that publishes on every reserved topic, pretending to be oetd, then says it
/// has done so, and returns once the test opens `gate`.
const FORGER: &str = r#"
import os
from pubsub import pub

def main(gate):
    me = int(os.environ["OET_PROCEDURE_ID"])
    pub.sendMessage("procedure.lifecycle.statechange", msg_src="oetd", procedure_id=me,
                    new_state="COMPLETE", previous_state="RUNNING")
    pub.sendMessage("procedure.lifecycle.complete", msg_src="oetd", procedure_id=me)
    pub.sendMessage("activity.lifecycle.complete", msg_src="oetd", activity_id=1)
    pub.sendMessage("request.procedure.stop", msg_src="oetd", cmd={"process_uid": me})
    pub.sendMessage("sb.lifecycle.allocated", msg_src="oetd", sbi_id="sbi-1")
    pub.sendMessage("user.after.forgery", msg_src="oetd")
    with open(gate) as fifo:
        fifo.read()
"#;

#[tokio::test]
async fn forged_lifecycle_events_never_reach_listeners_nor_end_a_listening_start() {
    let daemon = TestDaemon::start();
    let ready = daemon.ready_script("forger.py", FORGER).await;
    let id = ready.id.to_string();
    let gate = oet_tests::git::BuildGate::new();
    let gate_path = gate.path().to_str().expect("utf-8 path").to_owned();
    let mut events = daemon.events().await;
    let listening = std::process::Command::new(oet_tests::oetctl_bin())
        .arg("--socket")
        .arg(&daemon.socket)
        .args(["procedure", "start", "--pid", &id, "--listen"])
        .arg(format!("--gate={gate_path}"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("oetctl starts");

    // What the script published, in order: only its own topics get through, with its
    // procedure as their source.
    let mut seen = Vec::new();
    loop {
        let event = next_event(&mut events, |_| true).await;
        let last = event.topic == "user.after.forgery";
        seen.push(event);
        if last {
            break;
        }
    }
    let from_script: Vec<(&str, &str)> = seen
        .iter()
        .filter(|e| !e.from_daemon())
        .map(|e| (e.topic.as_str(), e.msg_src.as_str()))
        .collect();
    assert_eq!(
        from_script,
        [
            ("sb.lifecycle.allocated", id.as_str()),
            ("user.after.forgery", id.as_str())
        ]
    );
    for event in seen.iter().filter(|e| e.from_daemon()) {
        assert!(
            event.new_state() != Some(ProcedureState::Complete),
            "a COMPLETE reached listeners as oetd's: {event:?}"
        );
        assert!(
            event
                .payload
                .as_map()
                .and_then(|m| m.get("msg_src"))
                .is_none(),
            "{event:?}"
        );
    }
    let payload = seen
        .last()
        .and_then(|e| e.payload.as_map())
        .expect("payload");
    assert_eq!(
        payload.get("msg_src"),
        None,
        "oetd stamps the source, not the script"
    );

    // The listening start has not ended on the forgeries: let the script finish, and it
    // ends on oetd's own COMPLETE, having shown what came after them.
    drop(gate.wait_for_build(oet_tests::DEADLINE).await);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(listening.wait_with_output());
    });
    let out = rx
        .recv_timeout(oet_tests::DEADLINE)
        .expect("oetctl ends with the procedure")
        .expect("oetctl output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let forgery = stdout.find("user.after.forgery").unwrap_or_else(|| {
        panic!("oetctl stopped listening before the script's last event:\n{stdout}")
    });
    let complete = stdout
        .find("\"new_state\":\"COMPLETE\"")
        .unwrap_or_else(|| panic!("no COMPLETE from oetd:\n{stdout}"));
    assert!(forgery < complete, "{stdout}");

    // The drops are noticed once, and counted when the procedure ends.
    let noticed = daemon
        .log_lines_until(&format!("procedure {id} is COMPLETE"))
        .into_iter()
        .filter(|line| line.contains("reserved topic"))
        .count();
    assert_eq!(noticed, 1, "one notice of the dropped events");
    let counted = daemon
        .log_line("events on reserved topics")
        .expect("the count of dropped events");
    assert!(
        counted.contains(&format!("procedure {id}: 4 events")),
        "{counted}"
    );
}

/// Records the topic of every message pypubsub sends in the script's process — those
/// oetd delivers included — without subscribing to anything.
const RECORDER: &str = r#"
import threading
from pubsub import pub

seen = []
sentinel = threading.Event()

class Recorder:
    def notifySend(self, stage, topicObj, pubListener=None):
        if stage == "pre":
            seen.append(topicObj.getName())
    def notifySubscribe(self, *args): pass
    def notifyUnsubscribe(self, *args): pass
    def notifyDeadListener(self, *args): pass
    def notifyNewTopic(self, *args): pass
    def notifyDelTopic(self, *args): pass

pub.addNotificationHandler(Recorder())
pub.setNotificationFlags(sendMessage=True)

def on_sentinel(msg_src=None):
    sentinel.set()

def listen():
    pub.subscribe(on_sentinel, "user.sentinel")

def main():
    if not sentinel.wait(60):
        raise RuntimeError("the sentinel did not come")
    print("seen", sorted(set(seen)))
"#;

const PUBLISHER: &str = r#"
from pubsub import pub

def main(*topics):
    for topic in topics:
        pub.sendMessage(topic)
"#;

#[tokio::test]
async fn workers_receive_only_the_topics_their_scripts_subscribed_to_and_never_requests() {
    let daemon = TestDaemon::start();
    let nothing = daemon.ready_script("nothing.py", RECORDER).await;
    let user_x = daemon
        .ready_script(
            "user_x.py",
            &format!("{RECORDER}\ndef on_x(msg_src=None):\n    pass\n\ndef init():\n    pub.subscribe(on_x, 'user.x')\n"),
        )
        .await;
    let everything = daemon
        .ready_script(
            "everything.py",
            &format!("{RECORDER}\ndef on_all(topic=pub.AUTO_TOPIC, **kwargs):\n    pass\n\ndef init():\n    pub.subscribe(on_all, pub.ALL_TOPICS)\n"),
        )
        .await;
    let publisher = daemon.script("publisher.py", PUBLISHER);
    let mut client = daemon.client().await;
    let topics = |names: &[&str]| positional(names.iter().map(|t| Value::from(*t)).collect());
    // request.procedure.list goes to listeners, never to a worker.
    client.list(vec![]).await.expect("list");
    let first = daemon
        .create_ready(&publisher, FunctionArgs::default())
        .await;
    let done = daemon
        .run_main(first.id, topics(&["user.y", "user", "user.xy", "user.x"]))
        .await;
    assert_eq!(done.state, ProcedureState::Complete);
    // Each listens to the sentinel too, which comes after everything above.
    for id in [nothing.id, user_x.id, everything.id] {
        let listened = daemon.run_call(id, "listen").await;
        assert_eq!(listened.state, ProcedureState::Ready, "{listened:?}");
    }
    let second = daemon
        .create_ready(&publisher, FunctionArgs::default())
        .await;
    let done = daemon.run_main(second.id, topics(&["user.sentinel"])).await;
    assert_eq!(done.state, ProcedureState::Complete);
    for (ready, expected) in [
        (&nothing, "seen ['user.sentinel']"),
        (&user_x, "seen ['user.sentinel', 'user.x']"),
    ] {
        let done = daemon.run_main(ready.id, FunctionArgs::default()).await;
        assert_eq!(done.state, ProcedureState::Complete, "{done:?}");
        daemon.assert_printed(done.id, expected).await;
    }
    let done = daemon
        .run_main(everything.id, FunctionArgs::default())
        .await;
    assert_eq!(done.state, ProcedureState::Complete, "{done:?}");
    let seen = daemon.output(everything.id).await.join("\n");
    for topic in [
        "'user.y'",
        "'user'",
        "'user.xy'",
        "'user.x'",
        "'procedure.lifecycle.statechange'",
    ] {
        assert!(seen.contains(topic), "{topic} not in {seen}");
    }
    assert!(
        !seen.contains("request."),
        "a request reached a worker: {seen}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_listeners_get_every_event_of_a_burst_in_order() {
    const EVENTS: i64 = 10_000;
    let daemon = TestDaemon::start();
    let ready = daemon
        .ready_script(
            "burst.py",
            &format!(
                "from pubsub import pub\n\ndef main():\n    for n in range({EVENTS}):\n        pub.sendMessage('user.burst', n=n)\n"
            ),
        )
        .await;
    let mut listeners = Vec::new();
    for _ in 0..10 {
        listeners.push(daemon.events().await);
    }
    daemon.start_main(ready.id, FunctionArgs::default()).await;
    let readers = listeners.into_iter().map(|mut events| {
        tokio::spawn(async move {
            let mut next = 0;
            while next < EVENTS {
                match events.next().await {
                    Some(Ok(StreamItem::Event(event))) if event.topic == "user.burst" => {
                        let n = event.payload.as_map().and_then(|m| m.get("n")).cloned();
                        assert_eq!(n, Some(Value::Int(next)), "out of order");
                        next += 1;
                    }
                    Some(Ok(StreamItem::Lagged(missed))) => {
                        panic!("a listener lost {missed} events after {next}")
                    }
                    Some(Ok(_)) => {}
                    other => panic!("the stream ended after {next}: {other:?}"),
                }
            }
        })
    });
    let all = futures::future::join_all(readers);
    for reader in tokio::time::timeout(oet_tests::DEADLINE, all)
        .await
        .expect("every listener got every event in time")
    {
        reader.expect("a listener got every event, in order");
    }
}
