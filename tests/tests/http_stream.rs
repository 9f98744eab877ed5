//! `/stream` of the real `oet-http` over a real `oetd`: a procedure's lifecycle reaches two
//! clients at once, in order and framed exactly as upstream framed it, while 200 idle
//! stream clients are connected and the REST API goes on answering; heartbeats keep an
//! idle stream open; every stream ends cleanly when oetd goes away or the shim stops.

use std::io::Write;
use std::process::{Command, Stdio};

use futures::future::join_all;
use oet_tests::http::{Api, SseMessage, SseStream, TestShim};
use oet_tests::{python, TestDaemon};
use serde_json::json;

const ANNOUNCING: &str = r#"
from pubsub import pub

def init(subarray_id):
    pass

def main(target):
    pub.sendMessage("user.script.announce", msg_src="observation", msg=f"observing {target} ✓")
"#;

/// The messages of one client about procedure `id` (its lifecycle, and its script's
/// events), up to its COMPLETE.
async fn until_complete(stream: &mut SseStream, id: u64) -> Vec<SseMessage> {
    let id = id.to_string();
    let mut seen = Vec::new();
    loop {
        let message = stream.next_data().await.expect("the stream ended early");
        let json = message.json();
        let about = json["msg_src"] == id.as_str()
            || json["cmd"]["process_uid"].as_str() == Some(id.as_str())
            || json["cmd"]["process_uid"] == json!(id.parse::<u64>().expect("id"));
        let complete = json["topic"] == "procedure.lifecycle.statechange"
            && json["msg_src"] == id.as_str()
            && json["new_state"] == "COMPLETE";
        if about
            || json["topic"]
                .as_str()
                .is_some_and(|t| t.starts_with("request."))
        {
            seen.push(message);
        }
        if complete {
            return seen;
        }
    }
}

fn topics_and_states(messages: &[SseMessage]) -> Vec<(String, Option<String>)> {
    messages
        .iter()
        .map(|m| {
            let json = m.json();
            (
                json["topic"].as_str().expect("topic").to_owned(),
                json["new_state"].as_str().map(str::to_owned),
            )
        })
        .collect()
}

/// Checks that each data line is exactly what Python's `json.dumps` writes for it.
fn assert_written_as_python_writes(messages: &[SseMessage]) {
    let lines: Vec<&str> = messages.iter().filter_map(|m| m.data.as_deref()).collect();
    let mut child = Command::new(python())
        .arg("-c")
        .arg(
            "import json, sys\n\
             for line in sys.stdin.read().splitlines():\n    \
             again = json.dumps(json.loads(line))\n    \
             print('same' if again == line else 'differs: ' + again)\n",
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(lines.join("\n").as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("python's answer");
    let verdicts = String::from_utf8_lossy(&out.stdout);
    assert_eq!(verdicts.lines().count(), lines.len(), "{verdicts}");
    for (verdict, line) in verdicts.lines().zip(&lines) {
        assert_eq!(verdict, "same", "data:{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lifecycle_reaches_two_clients_in_order_while_200_idle_clients_wait() {
    let mut daemon = TestDaemon::start();
    let shim = TestShim::start(&daemon.socket);
    let api = Api::default();
    let url = shim.url("/stream");

    let mut idle: Vec<SseStream> = join_all((0..200).map(|_| api.stream(&url))).await;
    let mut first = api.stream(&url).await;
    let mut second = api.stream(&url).await;

    // The REST API answers while 202 streams are open.
    let uri = daemon.script("announcing.py", ANNOUNCING);
    let create = json!({"script": {"script_type": "filesystem", "script_uri": uri},
                        "script_args": {"init": {"kwargs": {"subarray_id": 1}}}});
    let created = api.post(&shim.url("/procedures/"), &create).await;
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.json["id"].as_u64().expect("id");
    let start = json!({"state": "RUNNING", "script_args": {"main": {"args": ["M83"]}}});
    let started = api
        .put(&shim.url(&format!("/procedures/{id}")), &start)
        .await;
    assert_eq!(started.status, 200, "{}", started.text);

    let (seen_first, seen_second) = tokio::join!(
        until_complete(&mut first, id),
        until_complete(&mut second, id)
    );
    assert_eq!(
        seen_first.iter().map(|m| &m.raw).collect::<Vec<_>>(),
        seen_second.iter().map(|m| &m.raw).collect::<Vec<_>>(),
        "both clients see the same messages in the same order"
    );

    // The state changes, in the order GET reports them, with upstream's lifecycle topics.
    let done = api.get(&shim.url(&format!("/procedures/{id}"))).await;
    let history: Vec<String> = done.json["history"]["process_states"]
        .as_array()
        .expect("states")
        .iter()
        .map(|pair| pair[0].as_str().expect("state").to_owned())
        .collect();
    let seen = topics_and_states(&seen_first);
    let changes: Vec<String> = seen.iter().filter_map(|(_, state)| state.clone()).collect();
    assert_eq!(changes, history);
    let lifecycle: Vec<&str> = seen
        .iter()
        .map(|(topic, _)| topic.as_str())
        .filter(|t| {
            t.starts_with("procedure.lifecycle.") && *t != "procedure.lifecycle.statechange"
        })
        .collect();
    assert_eq!(
        lifecycle,
        ["procedure.lifecycle.created", "procedure.lifecycle.started"],
        "{seen:?}"
    );
    let position = |wanted: &str| seen.iter().position(|(t, _)| t == wanted).expect(wanted);
    assert!(position("request.procedure.create") < position("procedure.lifecycle.created"));
    assert!(position("request.procedure.start") < position("procedure.lifecycle.started"));

    // Upstream's keys: the created result is the summary; statechange is from the
    // procedure; the script's message is its own; requests carry their ID and command.
    let by_topic = |topic: &str| {
        seen_first
            .iter()
            .find(|m| m.json()["topic"] == topic)
            .unwrap_or_else(|| panic!("no {topic}"))
            .clone()
    };
    let created = by_topic("procedure.lifecycle.created").json();
    assert_eq!(created["msg_src"], id.to_string());
    assert_eq!(created["result"]["id"], id);
    assert_eq!(created["result"]["state"], "IDLE");
    let started = by_topic("procedure.lifecycle.started").json();
    assert_eq!(started["result"]["state"], "RUNNING");
    assert_eq!(
        started["result"]["script_args"]["init"]["kwargs"]["subarray_id"],
        1
    );
    let announce = by_topic("user.script.announce");
    assert_eq!(
        announce.json(),
        json!({"msg_src": id.to_string(), "msg": "observing M83 ✓", "topic": "user.script.announce"})
    );
    assert!(
        announce.raw.contains(r"\u2713"),
        "non-ASCII escaped: {}",
        announce.raw
    );
    assert_eq!(announce.id, None);
    let request = by_topic("request.procedure.create");
    let request_id: u64 = request
        .id
        .as_deref()
        .expect("a request carries id:")
        .parse()
        .expect("a number");
    assert!(
        request_id > 1_000_000_000_000_000_000,
        "a time in ns: {request_id}"
    );
    let command = &request.json()["cmd"];
    assert_eq!(
        command["script"],
        json!({"script_type": "filesystem", "script_uri": uri})
    );
    assert_eq!(command["init_args"]["kwargs"], json!({"subarray_id": 1}));
    assert!(
        request.json().get("peer_uid").is_none(),
        "who asked stays private"
    );
    let start_request = by_topic("request.procedure.start");
    assert_eq!(
        start_request.json()["cmd"],
        json!({"process_uid": id, "fn_name": "main", "run_args": {"args": ["M83"], "kwargs": {}}, "force_start": false})
    );
    assert_ne!(start_request.id, request.id);

    // Framed as upstream framed it: data:<JSON>, id:<request_id> when there is one.
    for message in &seen_first {
        let data = message.data.as_deref().expect("data");
        let expected = match &message.id {
            Some(id) => format!("data:{data}\nid:{id}\n\n"),
            None => format!("data:{data}\n\n"),
        };
        assert_eq!(message.raw, expected);
    }
    assert_written_as_python_writes(&seen_first);
    // Each message is sent as it happens, on its own: one HTTP chunk each.
    for chunk in &first.chunks {
        let text = String::from_utf8_lossy(chunk);
        assert!(
            text.ends_with("\n\n") && text.matches("\n\n").count() == 1,
            "a chunk holds one message: {text:?}"
        );
    }

    // oetd goes away: every stream, busy or idle, ends cleanly.
    daemon.signal(libc::SIGTERM);
    assert!(daemon.wait().success());
    for stream in [&mut first, &mut second] {
        while stream.next().await.is_some() {}
    }
    let ended = join_all(
        idle.iter_mut()
            .map(|stream| async move { while stream.next().await.is_some() {} }),
    )
    .await;
    assert_eq!(ended.len(), 200);
    let health = api.get(&shim.url("/health")).await;
    assert_eq!(health.status, 503);
}

#[tokio::test]
async fn heartbeats_keep_an_idle_stream_open() {
    let daemon = TestDaemon::start();
    let shim = TestShim::start_with(&daemon.socket, "[stream]\nheartbeat_secs = 0.2\n");
    let mut stream = Api::default().stream(&shim.url("/stream")).await;
    let beat = stream.next().await.expect("a heartbeat");
    assert_eq!(beat.data, None);
    assert_eq!(beat.comments, ["heartbeat"]);
    assert_eq!(beat.raw, ": heartbeat\n\n");
}

#[tokio::test]
async fn streams_end_cleanly_when_the_shim_stops() {
    let daemon = TestDaemon::start();
    let mut shim = TestShim::start(&daemon.socket);
    let api = Api::default();
    let url = shim.url("/stream");
    let mut streams = join_all((0..3).map(|_| api.stream(&url))).await;
    let status = shim.stop();
    assert!(status.success(), "{status:?}");
    for stream in &mut streams {
        assert!(stream.next().await.is_none());
    }
}

#[tokio::test]
async fn a_stream_without_oetd_is_refused_at_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let shim = TestShim::start(&dir.path().join("none.sock"));
    let refused = Api::default().get(&shim.url("/stream")).await;
    assert_eq!(refused.status, 503, "{}", refused.text);
    assert!(refused.text.contains("none.sock"), "{}", refused.text);
}

#[tokio::test]
async fn stream_clients_beyond_the_limit_get_503() {
    let daemon = TestDaemon::start();
    let shim = TestShim::start_with(&daemon.socket, "[stream]\nmax_clients = 2\n");
    let api = Api::default();
    let url = shim.url("/stream");
    let open = join_all((0..2).map(|_| api.stream(&url))).await;
    let refused = api.get(&url).await;
    assert_eq!(refused.status, 503, "{}", refused.text);
    assert!(
        refused.text.contains("stream.max_clients"),
        "{}",
        refused.text
    );
    drop(open);
}

#[tokio::test]
async fn the_shared_subscription_ends_with_its_last_client_and_opens_again() {
    let daemon = TestDaemon::start();
    let config = "[stream]\nheartbeat_secs = 0.1\n[log]\nlevel = \"info,oet_http=debug\"\n";
    let shim = TestShim::start_with(&daemon.socket, config);
    let api = Api::default();
    let url = shim.url("/stream");
    let clients = join_all((0..3).map(|_| api.stream(&url))).await;
    shim.log_line("subscribed to oetd's events")
        .expect("the first client opens the subscription");
    drop(clients);
    // The shim learns that a client left when it next writes to it (a heartbeat).
    shim.log_line("no /stream client left: unsubscribing from oetd")
        .expect("the last client's leaving ends the subscription");
    let mut again = api.stream(&url).await;
    shim.log_line("subscribed to oetd's events")
        .expect("the next client opens a new one");
    assert_eq!(api.get(&shim.url("/procedures/")).await.status, 200);
    let all = again
        .next_where(|e| e["topic"] == "request.procedure.list")
        .await;
    assert_eq!(all.json()["pids"], serde_json::Value::Null, "{}", all.raw);
    // One procedure asked for by ID: the announcement names it, as upstream's did.
    assert_eq!(api.get(&shim.url("/procedures/5")).await.status, 404);
    let one = again
        .next_where(|e| e["topic"] == "request.procedure.list")
        .await;
    assert_eq!(one.json()["pids"], serde_json::json!([5]), "{}", one.raw);
}
