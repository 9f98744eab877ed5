//! The original OET's REST API, served by the real `oet-http` over a real `oetd`: the
//! workflow upstream's clients follow (create, start, watch it complete, stop a looping
//! script), activities from an SBD of the original project, every error mapped to its
//! status, and bearer tokens. Every answer is checked against the original's OpenAPI
//! document (where it documents the status) and against the shim's own.

use std::os::unix::fs::PermissionsExt;

use oet_tests::http::{conforms, names_field, upstream_openapi, Answer, Api, TestShim, PREFIX};
use oet_tests::TestDaemon;
use serde_json::{json, Value as Json};

/// Both OpenAPI documents, to check answers against.
struct Documents {
    upstream: Json,
    ours: Json,
}

impl Documents {
    async fn of(shim: &TestShim) -> Documents {
        let ours = Api::default().get(&shim.url("/openapi.json")).await;
        assert_eq!(ours.status, 200);
        Documents {
            upstream: upstream_openapi(),
            ours: ours.json,
        }
    }

    /// Checks an answer to `method` on `path` (below the prefix, as the documents write
    /// it) against the shim's document, and against upstream's wherever upstream
    /// documents that status; returns the answer for more checks.
    fn check(&self, answer: Answer, method: &str, path: &str) -> Answer {
        let template = format!("{PREFIX}{path}");
        assert!(
            answer.content_type.starts_with("application/json"),
            "{method} {path}: content type {:?}",
            answer.content_type
        );
        let upstream = &self.upstream["paths"][&template][method];
        if upstream.is_null() {
            // An endpoint of the shim's own (health, the document).
        } else if !upstream["responses"][answer.status.to_string()].is_null() {
            if let Err(err) = conforms(
                &self.upstream,
                &template,
                method,
                answer.status,
                &answer.json,
            ) {
                panic!("against the original OET's document: {err}");
            }
        } else {
            // Upstream's document lists its successes and 422 only; its other errors were
            // FastAPI's HTTPException: {"detail": ...}.
            assert!(
                answer.status >= 400 && answer.json.get("detail").is_some(),
                "{method} {path}: the original OET's document has no {} answer like {}",
                answer.status,
                answer.text
            );
        }
        if let Err(err) = conforms(&self.ours, &template, method, answer.status, &answer.json) {
            panic!("against the shim's own document: {err}");
        }
        answer
    }
}

const OBSERVATION: &str = r#"
from pubsub import pub

def init(subarray_id):
    print(f"init on subarray {subarray_id}")

def main(target="nowhere", scans=1):
    for scan in range(scans):
        pub.sendMessage("user.script.announce", msg_src="observation", msg=f"scan {scan} of {target}")
"#;

const LOOPING: &str = r#"
import time

def init(subarray_id):
    pass

def main():
    print("observing until stopped", flush=True)
    while True:
        time.sleep(0.05)
"#;

const ABORT: &str = r#"
def init(subarray_id):
    print(f"aborting subarray {subarray_id}")

def main():
    pass
"#;

fn states(summary: &Json) -> Vec<&str> {
    summary["history"]["process_states"]
        .as_array()
        .expect("process_states")
        .iter()
        .map(|pair| pair[0].as_str().expect("a state"))
        .collect()
}

fn post_script(uri: &str, subarray_id: i64) -> Json {
    json!({
        "script": {"script_type": "filesystem", "script_uri": uri},
        "script_args": {"init": {"args": [], "kwargs": {"subarray_id": subarray_id}}},
    })
}

#[tokio::test]
async fn the_original_workflow_over_http() {
    let scripts = tempfile::tempdir().expect("temp dir");
    let abort = scripts.path().join("abort.py");
    std::fs::write(&abort, ABORT).expect("abort script");
    let daemon = TestDaemon::start_with(&format!("abort_script = \"file://{}\"", abort.display()));
    let shim = TestShim::start(&daemon.socket);
    let docs = Documents::of(&shim).await;
    let api = Api::default();
    let mut stream = api.stream(&shim.url("/stream")).await;

    // Create: 201 and a READY summary in upstream's shape.
    let uri = daemon.script("observation.py", OBSERVATION);
    let created = docs.check(
        api.post(&shim.url("/procedures/"), &post_script(&uri, 1))
            .await,
        "post",
        "/procedures/",
    );
    assert_eq!(created.status, 201, "{}", created.text);
    let summary = &created.json;
    let id = summary["id"].as_u64().expect("an id");
    assert_eq!(
        summary["uri"],
        json!(shim.url(&format!("/procedures/{id}")))
    );
    assert_eq!(summary["state"], "READY", "{summary:#}");
    assert_eq!(
        summary["script"],
        json!({"script_type": "filesystem", "script_uri": uri})
    );
    assert_eq!(
        summary["script_args"]["init"],
        json!({"args": [], "kwargs": {"subarray_id": 1}})
    );
    assert_eq!(
        states(summary),
        [
            "CREATING",
            "IDLE",
            "LOADING",
            "IDLE",
            "INITIALISING",
            "READY"
        ]
    );
    assert_eq!(summary["history"]["stacktrace"], Json::Null);

    // Listed, with and without upstream's trailing slash.
    for path in ["/procedures/", "/procedures"] {
        let listed = docs.check(api.get(&shim.url(path)).await, "get", "/procedures/");
        assert_eq!(listed.status, 200);
        assert!(listed
            .json
            .as_array()
            .expect("a list")
            .iter()
            .any(|p| p["id"] == id));
    }

    // Start: RUNNING, then COMPLETE as GET sees it.
    let start = json!({"state": "RUNNING", "script_args": {"main": {"args": [], "kwargs": {"target": "M83", "scans": 2}}}});
    let started = docs.check(
        api.put(&shim.url(&format!("/procedures/{id}")), &start)
            .await,
        "put",
        "/procedures/{procedure_id}",
    );
    assert_eq!(started.status, 200, "{}", started.text);
    assert_eq!(started.json["id"], id);
    assert!(matches!(
        started.json["state"].as_str(),
        Some("RUNNING" | "COMPLETE")
    ));
    let id_text = id.to_string();
    stream
        .next_where(|e| {
            e["topic"] == "procedure.lifecycle.statechange"
                && e["msg_src"] == id_text.as_str()
                && e["new_state"] == "COMPLETE"
        })
        .await;
    let done = docs.check(
        api.get(&shim.url(&format!("/procedures/{id}/"))).await,
        "get",
        "/procedures/{procedure_id}",
    );
    assert_eq!(done.status, 200);
    assert_eq!(done.json["state"], "COMPLETE");
    assert_eq!(states(&done.json)[6..], ["RUNNING", "COMPLETE"]);
    assert_eq!(
        done.json["script_args"]["main"]["kwargs"],
        json!({"target": "M83", "scans": 2})
    );

    // Starting it again is refused with the reason.
    let again = docs.check(
        api.put(&shim.url(&format!("/procedures/{id}")), &start)
            .await,
        "put",
        "/procedures/{procedure_id}",
    );
    assert_eq!(again.status, 409, "{}", again.text);
    assert!(
        again.json["detail"]
            .as_str()
            .expect("a reason")
            .contains("COMPLETE"),
        "{}",
        again.text
    );

    // No state changes nothing; a state that cannot be asked for is refused.
    let same = docs.check(
        api.put(&shim.url(&format!("/procedures/{id}")), &json!({}))
            .await,
        "put",
        "/procedures/{procedure_id}",
    );
    assert_eq!(
        (same.status, &same.json["state"]),
        (200, &json!("COMPLETE"))
    );
    let ready = docs.check(
        api.put(
            &shim.url(&format!("/procedures/{id}")),
            &json!({"state": "READY"}),
        )
        .await,
        "put",
        "/procedures/{procedure_id}",
    );
    assert_eq!(ready.status, 400, "{}", ready.text);

    // Stop a looping script: the abort message, and STOPPED.
    let looping = daemon.script("looping.py", LOOPING);
    let created = docs.check(
        api.post(&shim.url("/procedures/"), &post_script(&looping, 3))
            .await,
        "post",
        "/procedures/",
    );
    let looping_id = created.json["id"].as_u64().expect("an id");
    let url = shim.url(&format!("/procedures/{looping_id}"));
    let run = json!({"state": "RUNNING", "script_args": {"main": {"args": [], "kwargs": {}}}});
    assert_eq!(
        docs.check(
            api.put(&url, &run).await,
            "put",
            "/procedures/{procedure_id}"
        )
        .status,
        200
    );
    let stop = docs.check(
        api.put(&url, &json!({"state": "STOPPED", "abort": false}))
            .await,
        "put",
        "/procedures/{procedure_id}",
    );
    assert_eq!(stop.status, 200);
    assert_eq!(
        stop.json,
        json!({"abort_message": format!("Successfully stopped script with ID {looping_id}")})
    );
    let stopped = docs.check(api.get(&url).await, "get", "/procedures/{procedure_id}");
    assert_eq!(stopped.json["state"], "STOPPED");
    let not_running = docs.check(
        api.put(&url, &json!({"state": "STOPPED"})).await,
        "put",
        "/procedures/{procedure_id}",
    );
    assert_eq!(
        not_running.json,
        json!({"abort_message": format!("Cannot stop script with ID {looping_id}: Script is not running")})
    );

    // Stop with abort: the abort script runs for the stopped procedure's subarray.
    let created = docs.check(
        api.post(&shim.url("/procedures/"), &post_script(&looping, 3))
            .await,
        "post",
        "/procedures/",
    );
    let aborted_id = created.json["id"].as_u64().expect("an id");
    let url = shim.url(&format!("/procedures/{aborted_id}"));
    assert_eq!(
        docs.check(
            api.put(&url, &run).await,
            "put",
            "/procedures/{procedure_id}"
        )
        .status,
        200
    );
    let stop = docs.check(
        api.put(&url, &json!({"state": "STOPPED", "abort": true}))
            .await,
        "put",
        "/procedures/{procedure_id}",
    );
    assert_eq!(
        stop.json,
        json!({"abort_message": format!("Successfully stopped script with ID {aborted_id} and aborted subarray activity")})
    );
    let all = docs.check(
        api.get(&shim.url("/procedures/")).await,
        "get",
        "/procedures/",
    );
    let abort_procedure = all
        .json
        .as_array()
        .expect("a list")
        .iter()
        .find(|p| p["script"]["script_uri"] == json!(format!("file://{}", abort.display())))
        .expect("the abort procedure is listed");
    assert_eq!(
        abort_procedure["script_args"]["init"]["kwargs"],
        json!({"subarray_id": 3})
    );

    // An unknown ID: upstream's exact detail.
    for path in ["/procedures/999999", "/procedures/-4", "/procedures/0"] {
        let missing = docs.check(
            api.get(&shim.url(path)).await,
            "get",
            "/procedures/{procedure_id}",
        );
        let shown = path.rsplit('/').next().expect("id");
        assert_eq!(missing.status, 404);
        assert_eq!(
            missing.json,
            json!({"detail": format!("No information available for PID={shown}")})
        );
    }
    let missing = docs.check(
        api.put(&shim.url("/procedures/999999"), &start).await,
        "put",
        "/procedures/{procedure_id}",
    );
    assert_eq!(
        missing.json,
        json!({"detail": "No information available for PID=999999"})
    );
}

#[tokio::test]
async fn bad_requests_get_the_status_that_says_why() {
    let daemon = TestDaemon::start();
    let shim = TestShim::start_with(&daemon.socket, "[server]\nmax_body_bytes = 2048\n");
    let docs = Documents::of(&shim).await;
    let api = Api::default();
    let url = shim.url("/procedures/");

    // 422 naming the field.
    let missing_uri = json!({"script": {"script_type": "filesystem"}});
    let invalid = docs.check(api.post(&url, &missing_uri).await, "post", "/procedures/");
    assert_eq!(invalid.status, 422);
    assert!(
        names_field(&invalid, &["script", "script_uri"]),
        "{}",
        invalid.text
    );
    let wrong_type = json!({"script": {"script_type": "filesystem", "script_uri": "file:///x.py"},
                            "script_args": {"init": {"args": {}, "kwargs": []}}});
    let invalid = docs.check(api.post(&url, &wrong_type).await, "post", "/procedures/");
    assert!(
        names_field(&invalid, &["script_args", "init", "args"]),
        "{}",
        invalid.text
    );
    assert!(
        names_field(&invalid, &["script_args", "init", "kwargs"]),
        "{}",
        invalid.text
    );
    let invalid = docs.check(
        api.put(&shim.url("/procedures/1"), &json!({"state": "SLEEPING"}))
            .await,
        "put",
        "/procedures/{procedure_id}",
    );
    assert!(names_field(&invalid, &["state"]), "{}", invalid.text);
    let not_json = docs.check(
        api.raw(reqwest::Method::POST, &url, |r| {
            r.header("content-type", "application/json")
                .body("{\"script\": ")
        })
        .await,
        "post",
        "/procedures/",
    );
    assert_eq!(
        (not_json.status, &not_json.json["detail"][0]["type"]),
        (422, &json!("json_invalid"))
    );
    let bad_id = docs.check(
        api.get(&shim.url("/procedures/one")).await,
        "get",
        "/procedures/{procedure_id}",
    );
    assert_eq!(bad_id.status, 422);
    assert_eq!(
        bad_id.json["detail"][0]["loc"],
        json!(["path", "procedure_id"])
    );

    // 415 for a body not sent as JSON (a web page elsewhere could send that unasked).
    let form = docs.check(
        api.raw(reqwest::Method::POST, &url, |r| {
            r.header("content-type", "text/plain")
                .body(missing_uri.to_string())
        })
        .await,
        "post",
        "/procedures/",
    );
    assert_eq!(form.status, 415);

    // 413 for a body over the limit, whether its length is announced or not.
    let big = json!({"script": {"script_type": "filesystem", "script_uri": "file:///x.py"},
                     "script_args": {"init": {"args": ["x".repeat(4096)]}}});
    assert_eq!(
        docs.check(api.post(&url, &big).await, "post", "/procedures/")
            .status,
        413
    );
    let chunks: Vec<Result<String, std::io::Error>> = vec![
        Ok(big.to_string()[..1500].into()),
        Ok(big.to_string()[1500..].into()),
    ];
    let chunked = docs.check(
        api.raw(reqwest::Method::POST, &url, |r| {
            r.header("content-type", "application/json")
                .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        })
        .await,
        "post",
        "/procedures/",
    );
    assert_eq!(chunked.status, 413);

    // 400: oetd refuses the script, saying why.
    let refused = docs.check(
        api.post(
            &url,
            &json!({"script": {"script_type": "filesystem", "script_uri": "/no/scheme.py"}}),
        )
        .await,
        "post",
        "/procedures/",
    );
    assert_eq!(refused.status, 400, "{}", refused.text);
    assert!(
        refused.json["detail"]
            .as_str()
            .expect("a reason")
            .contains("/no/scheme.py"),
        "{}",
        refused.text
    );

    // An unknown SBD or activity: 404 with oetd's reason; an unknown activity ID:
    // upstream's detail object.
    let run = json!({"sbd_id": "sbd-none-1", "activity_name": "observe"});
    let unknown = docs.check(
        api.post(&shim.url("/activities/"), &run).await,
        "post",
        "/activities/",
    );
    assert_eq!(unknown.status, 404, "{}", unknown.text);
    let unknown = docs.check(
        api.get(&shim.url("/activities/77")).await,
        "get",
        "/activities/{activity_id}",
    );
    assert_eq!(
        unknown.json,
        json!({"detail": {"type": "ResourceNotFound", "Message": "No information available for ID=77"}})
    );

    // A Host header the shim was not given (DNS rebinding) is refused.
    let rebound = api
        .raw(reqwest::Method::GET, &url, |r| {
            r.header("host", "attacker.example.com")
        })
        .await;
    assert_eq!(rebound.status, 400);
    assert!(
        rebound.text.contains("server.allowed_hosts"),
        "{}",
        rebound.text
    );

    // A method the path does not have.
    let delete = api.raw(reqwest::Method::DELETE, &url, |r| r).await;
    assert_eq!(
        (delete.status, delete.json),
        (405, json!({"detail": "Method Not Allowed"}))
    );
}

#[tokio::test]
async fn without_oetd_the_api_answers_503_and_health_says_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let shim = TestShim::start(&dir.path().join("no-oetd.sock"));
    let docs = Documents::of(&shim).await;
    let api = Api::default();
    let listed = docs.check(
        api.get(&shim.url("/procedures/")).await,
        "get",
        "/procedures/",
    );
    assert_eq!(listed.status, 503);
    assert!(
        listed.json["detail"]
            .as_str()
            .expect("a reason")
            .contains("no-oetd.sock"),
        "{}",
        listed.text
    );
    let health = docs.check(api.get(&shim.url("/health")).await, "get", "/health");
    assert_eq!(health.status, 503);

    // Once oetd is there, the same shim serves.
    let daemon = TestDaemon::start();
    let shim = TestShim::start(&daemon.socket);
    let health = docs.check(api.get(&shim.url("/health")).await, "get", "/health");
    assert_eq!(health.status, 200);
    assert!(health.json["oetd"]
        .as_str()
        .expect("oetd's name")
        .starts_with("oetd "));
}

const READ_TOKEN: &str = "read-0123456789abcdef";
const OPERATE_TOKEN: &str = "operate-0123456789abcdef";

fn tokens_file(dir: &std::path::Path, text: &str, mode: u32) -> std::path::PathBuf {
    let path = dir.join("tokens");
    std::fs::write(&path, text).expect("write tokens");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).expect("chmod");
    path
}

#[tokio::test]
async fn tokens_decide_who_may_read_and_who_may_operate() {
    let daemon = TestDaemon::start();
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = tokens_file(
        dir.path(),
        &format!("# role per token\n{READ_TOKEN} read\n{OPERATE_TOKEN} operate\n"),
        0o600,
    );
    let shim = TestShim::start_with(
        &daemon.socket,
        &format!("[auth]\ntokens_file = {:?}\n", tokens),
    );
    let docs = Documents::of(&shim).await;
    assert_eq!(docs.ours["security"], json!([{"bearerAuth": []}]));
    let uri = daemon.script("observation.py", OBSERVATION);
    let body = post_script(&uri, 1);
    let url = shim.url("/procedures/");

    // No token, or an unknown one: 401, saying how to authenticate.
    for api in [Api::default(), Api::new(Some("not-a-token-0123456789"))] {
        for answer in [api.get(&url).await, api.post(&url, &body).await] {
            assert_eq!(answer.status, 401, "{}", answer.text);
        }
        let raw = api
            .raw(reqwest::Method::GET, &shim.url("/stream"), |r| r)
            .await;
        assert_eq!(raw.status, 401);
    }
    let unauthenticated = Api::default().raw(reqwest::Method::GET, &url, |r| r).await;
    docs.check(unauthenticated, "get", "/procedures/");

    // A read token reads, and may not create or start.
    let reader = Api::new(Some(READ_TOKEN));
    assert_eq!(
        docs.check(reader.get(&url).await, "get", "/procedures/")
            .status,
        200
    );
    let refused = docs.check(reader.post(&url, &body).await, "post", "/procedures/");
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert!(refused.text.contains("operate"), "{}", refused.text);
    reader.stream(&shim.url("/stream")).await;

    // An operate token creates; a read token still cannot start what it created.
    let operator = Api::new(Some(OPERATE_TOKEN));
    let created = docs.check(operator.post(&url, &body).await, "post", "/procedures/");
    assert_eq!(created.status, 201, "{}", created.text);
    let id = created.json["id"].as_u64().expect("an id");
    let start = json!({"state": "RUNNING"});
    let refused = docs.check(
        reader
            .put(&shim.url(&format!("/procedures/{id}")), &start)
            .await,
        "put",
        "/procedures/{procedure_id}",
    );
    assert_eq!(refused.status, 403);
    let listed = docs.check(
        reader.get(&shim.url(&format!("/procedures/{id}"))).await,
        "get",
        "/procedures/{procedure_id}",
    );
    assert_eq!(
        listed.json["state"], "READY",
        "the refused start changed nothing"
    );

    // Health and the document need no token.
    assert_eq!(Api::default().get(&shim.url("/health")).await.status, 200);

    // A token added to the file works after SIGHUP.
    let added = "added-0123456789abcdef";
    std::fs::write(
        &tokens,
        format!("{READ_TOKEN} read\n{OPERATE_TOKEN} operate\n{added} read\n"),
    )
    .expect("rewrite");
    shim.signal(libc::SIGHUP);
    shim.log_line("re-read the tokens file")
        .expect("the shim re-reads its tokens");
    assert_eq!(Api::new(Some(added)).get(&url).await.status, 200);
}

#[test]
fn a_tokens_file_others_may_read_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = tokens_file(dir.path(), &format!("{OPERATE_TOKEN} operate\n"), 0o644);
    let config = dir.path().join("oet-http.toml");
    std::fs::write(&config, format!("[auth]\ntokens_file = {tokens:?}\n")).expect("config");
    let out = std::process::Command::new(oet_tests::http::oet_http_bin())
        .arg("--config")
        .arg(&config)
        .arg("--check-config")
        .output()
        .expect("run oet-http");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("mode 0644") && stderr.contains(&tokens.display().to_string()),
        "{stderr}"
    );
}

#[tokio::test]
async fn an_activity_of_an_original_sbd_runs_to_completion_over_http() {
    let daemon = TestDaemon::start();
    let shim = TestShim::start(&daemon.socket);
    let docs = Documents::of(&shim).await;
    let api = Api::default();
    let script = daemon.script(
        "observe.py",
        "def init(subarray_id):\n    pass\n\ndef main(*args, sb_json=None, sbi_id=None, **kwargs):\n    print(f'observing {sbi_id} from {sb_json}')\n",
    );
    let mut sbd: Json =
        serde_json::from_str(include_str!("../fixtures/sbd/low_sb_example.json")).expect("fixture");
    sbd["activities"]["observe"]["path"] = json!(script);
    let mut client = daemon.client().await;
    let (sbd_id, _) = client
        .put_sbd(sbd.to_string())
        .await
        .expect("store the SBD");

    let mut stream = api.stream(&shim.url("/stream")).await;
    let run = json!({"sbd_id": sbd_id, "activity_name": "observe",
                     "script_args": {"init": {"args": [], "kwargs": {"subarray_id": 2}}}});
    let started = docs.check(
        api.post(&shim.url("/activities/"), &run).await,
        "post",
        "/activities/",
    );
    assert_eq!(started.status, 201, "{}", started.text);
    let summary = &started.json;
    let id = summary["id"].as_u64().expect("an activity id");
    assert_eq!(
        summary["uri"],
        json!(shim.url(&format!("/activities/{id}")))
    );
    assert_eq!(
        (
            summary["sbd_id"].as_str(),
            summary["activity_name"].as_str()
        ),
        (Some(sbd_id.as_str()), Some("observe"))
    );
    assert_eq!(summary["prepare_only"], false);
    assert_eq!(summary["activity_states"][0][0], "REQUESTED");
    assert!(summary["sbi_id"].is_string(), "{summary:#}");
    assert_eq!(
        summary["script_args"]["init"]["kwargs"],
        json!({"subarray_id": 2})
    );

    stream
        .next_where(|e| e["topic"] == "activity.lifecycle.complete" && e["activity_id"] == id)
        .await;
    let done = docs.check(
        api.get(&shim.url(&format!("/activities/{id}"))).await,
        "get",
        "/activities/{activity_id}",
    );
    assert_eq!(done.json["state"], "COMPLETE", "{:#}", done.json);
    let states: Vec<&str> = done.json["activity_states"]
        .as_array()
        .expect("states")
        .iter()
        .map(|s| s[0].as_str().expect("state"))
        .collect();
    assert_eq!(states, ["REQUESTED", "PREPARED", "RUNNING", "COMPLETE"]);
    let procedure_id = done.json["procedure_id"].as_u64().expect("its procedure");
    let procedure = docs.check(
        api.get(&shim.url(&format!("/procedures/{procedure_id}")))
            .await,
        "get",
        "/procedures/{procedure_id}",
    );
    assert_eq!(procedure.json["state"], "COMPLETE");
    assert_eq!(procedure.json["script"]["script_uri"], json!(script));
    assert_eq!(
        procedure.json["script_args"]["main"]["kwargs"]["sbi_id"],
        done.json["sbi_id"]
    );
    let listed = docs.check(
        api.get(&shim.url("/activities")).await,
        "get",
        "/activities/",
    );
    assert!(listed
        .json
        .as_array()
        .expect("a list")
        .iter()
        .any(|a| a["id"] == id));
}
