//! The original OET's REST API, served by the real `oet-http` over a real `oetd`: the
//! workflow upstream's clients follow (create, start, watch it complete, stop a looping
//! script), activities from an SBD of the original project, every error mapped to its
//! status, and bearer tokens. Every answer is checked against the original's OpenAPI
//! document (where it documents the status) and against the shim's own.

use std::os::unix::fs::PermissionsExt;

use oet_tests::http::{
    conforms, names_field, oet_http_bin, upstream_openapi, Answer, Api, SseStream, TestShim, PREFIX,
};
use oet_tests::TestDaemon;
use serde_json::{json, Value as Json};

/// A client of the shim whose every answer is checked against both OpenAPI documents.
struct Checked<'a> {
    shim: &'a TestShim,
    api: Api,
    upstream: Json,
    ours: Json,
}

impl<'a> Checked<'a> {
    async fn new(shim: &'a TestShim, token: Option<&str>) -> Checked<'a> {
        let ours = Api::default().get(&shim.url("/openapi.json")).await;
        assert_eq!(ours.status, 200);
        Checked {
            shim,
            api: Api::new(token),
            upstream: upstream_openapi(),
            ours: ours.json,
        }
    }

    async fn get(&self, path: &str) -> Answer {
        self.check("get", path, self.api.get(&self.shim.url(path)).await)
    }

    async fn post(&self, path: &str, body: &Json) -> Answer {
        self.check(
            "post",
            path,
            self.api.post(&self.shim.url(path), body).await,
        )
    }

    async fn put(&self, path: &str, body: &Json) -> Answer {
        self.check("put", path, self.api.put(&self.shim.url(path), body).await)
    }

    /// A request built by `build`, checked as `method` on `path`.
    async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Answer {
        let name = method.as_str().to_ascii_lowercase();
        let answer = self.api.raw(method, &self.shim.url(path), build).await;
        self.check(&name, path, answer)
    }

    async fn stream(&self) -> SseStream {
        self.api.stream(&self.shim.url("/stream")).await
    }

    /// Creates a procedure of `uri` with `subarray_id`, answering its summary.
    async fn create(&self, uri: &str, subarray_id: i64) -> Json {
        let body = json!({
            "script": {"script_type": "filesystem", "script_uri": uri},
            "script_args": {"init": {"args": [], "kwargs": {"subarray_id": subarray_id}}},
        });
        let created = self.post("/procedures/", &body).await;
        assert_eq!(created.status, 201, "{}", created.text);
        created.json
    }

    /// Creates a procedure of `uri` and starts its `main`, answering its ID.
    async fn running(&self, uri: &str, subarray_id: i64) -> u64 {
        let id = self.create(uri, subarray_id).await["id"]
            .as_u64()
            .expect("an id");
        let run = json!({"state": "RUNNING", "script_args": {"main": {"args": [], "kwargs": {}}}});
        let started = self.put(&format!("/procedures/{id}"), &run).await;
        assert_eq!(started.status, 200, "{}", started.text);
        id
    }

    /// Checks an answer to `method` on `path` (below the prefix) against upstream's
    /// document wherever it describes the endpoint, and against the shim's own.
    fn check(&self, method: &str, path: &str, answer: Answer) -> Answer {
        let template = format!("{PREFIX}{}", template(path));
        assert!(
            answer.content_type.starts_with("application/json"),
            "{method} {path}: content type {:?}",
            answer.content_type
        );
        let upstream = &self.upstream["paths"][&template][method];
        let status = answer.status;
        if upstream.is_null() {
            // An endpoint of the shim's own (health, the document).
        } else if !upstream["responses"][status.to_string()].is_null() {
            if let Err(err) = conforms(&self.upstream, &template, method, status, &answer.json) {
                panic!("against the original OET's document: {err}");
            }
        } else {
            // Upstream's document lists its successes and 422 only; its other errors were
            // FastAPI's HTTPException: {"detail": ...}.
            assert!(
                status >= 400 && answer.json.get("detail").is_some(),
                "{method} {path}: the original OET's document has no {status} answer like {}",
                answer.text
            );
        }
        if let Err(err) = conforms(&self.ours, &template, method, status, &answer.json) {
            panic!("against the shim's own document: {err}");
        }
        answer
    }
}

/// The documents' path for a concrete one: `/procedures/7/` is `/procedures/{procedure_id}`,
/// `/procedures` is `/procedures/`.
fn template(path: &str) -> String {
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    match segments.as_slice() {
        ["procedures"] => "/procedures/".into(),
        ["activities"] => "/activities/".into(),
        ["procedures", _] => "/procedures/{procedure_id}".into(),
        ["activities", _] => "/activities/{activity_id}".into(),
        _ => path.trim_end_matches('/').into(),
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

#[tokio::test]
async fn the_original_workflow_over_http() {
    let scripts = tempfile::tempdir().expect("temp dir");
    let abort = scripts.path().join("abort.py");
    std::fs::write(&abort, ABORT).expect("abort script");
    let daemon = TestDaemon::start_with(&format!("abort_script = \"file://{}\"", abort.display()));
    let shim = TestShim::start(&daemon.socket);
    let http = Checked::new(&shim, None).await;
    let mut stream = http.stream().await;

    // Create: 201 and a READY summary in upstream's shape.
    let uri = daemon.script("observation.py", OBSERVATION);
    let summary = http.create(&uri, 1).await;
    let id = summary["id"].as_u64().expect("an id");
    let path = format!("/procedures/{id}");
    assert_eq!(summary["uri"], json!(shim.url(&path)));
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
        states(&summary),
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
    for list in ["/procedures/", "/procedures"] {
        let listed = http.get(list).await;
        assert_eq!(listed.status, 200);
        let procedures = listed.json.as_array().expect("a list");
        assert!(procedures.iter().any(|p| p["id"] == id));
    }

    // Start: RUNNING, then COMPLETE as GET sees it.
    let start = json!({"state": "RUNNING",
                       "script_args": {"main": {"args": [], "kwargs": {"target": "M83", "scans": 2}}}});
    let started = http.put(&path, &start).await;
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
    let done = http.get(&format!("{path}/")).await;
    assert_eq!(done.status, 200);
    assert_eq!(done.json["state"], "COMPLETE");
    assert_eq!(states(&done.json)[6..], ["RUNNING", "COMPLETE"]);
    assert_eq!(
        done.json["script_args"]["main"]["kwargs"],
        json!({"target": "M83", "scans": 2})
    );

    // Starting it again is refused with the reason.
    let again = http.put(&path, &start).await;
    assert_eq!(again.status, 409, "{}", again.text);
    let reason = again.json["detail"].as_str().expect("a reason");
    assert!(reason.contains("COMPLETE"), "{reason}");

    // No state changes nothing; a state that cannot be asked for is refused.
    let same = http.put(&path, &json!({})).await;
    assert_eq!(
        (same.status, &same.json["state"]),
        (200, &json!("COMPLETE"))
    );
    let ready = http.put(&path, &json!({"state": "READY"})).await;
    assert_eq!(ready.status, 400, "{}", ready.text);

    // Stop a looping script: the abort message, and STOPPED.
    let looping = daemon.script("looping.py", LOOPING);
    let looping_id = http.running(&looping, 3).await;
    let path = format!("/procedures/{looping_id}");
    let stop = http
        .put(&path, &json!({"state": "STOPPED", "abort": false}))
        .await;
    assert_eq!(stop.status, 200);
    assert_eq!(
        stop.json,
        json!({"abort_message": format!("Successfully stopped script with ID {looping_id}")})
    );
    assert_eq!(http.get(&path).await.json["state"], "STOPPED");
    let not_running = http.put(&path, &json!({"state": "STOPPED"})).await;
    assert_eq!(
        not_running.json,
        json!({"abort_message": format!("Cannot stop script with ID {looping_id}: Script is not running")})
    );

    // Stop with abort: the abort script runs for the stopped procedure's subarray.
    let aborted_id = http.running(&looping, 3).await;
    let stop = http
        .put(
            &format!("/procedures/{aborted_id}"),
            &json!({"state": "STOPPED", "abort": true}),
        )
        .await;
    assert_eq!(
        stop.json,
        json!({"abort_message": format!("Successfully stopped script with ID {aborted_id} and aborted subarray activity")})
    );
    let all = http.get("/procedures/").await;
    let abort_uri = json!(format!("file://{}", abort.display()));
    let abort_procedure = all
        .json
        .as_array()
        .expect("a list")
        .iter()
        .find(|p| p["script"]["script_uri"] == abort_uri)
        .expect("the abort procedure is listed");
    assert_eq!(
        abort_procedure["script_args"]["init"]["kwargs"],
        json!({"subarray_id": 3})
    );

    // An unknown ID: upstream's exact detail.
    for shown in ["999999", "-4", "0"] {
        let missing = http.get(&format!("/procedures/{shown}")).await;
        assert_eq!(missing.status, 404);
        assert_eq!(
            missing.json,
            json!({"detail": format!("No information available for PID={shown}")})
        );
    }
    let missing = http.put("/procedures/999999", &start).await;
    assert_eq!(
        missing.json,
        json!({"detail": "No information available for PID=999999"})
    );
}

#[tokio::test]
async fn bad_requests_get_the_status_that_says_why() {
    let daemon = TestDaemon::start();
    let shim = TestShim::start_with(&daemon.socket, "[server]\nmax_body_bytes = 2048\n");
    let http = Checked::new(&shim, None).await;

    // 422 naming the field.
    let missing_uri = json!({"script": {"script_type": "filesystem"}});
    let invalid = http.post("/procedures/", &missing_uri).await;
    assert_eq!(invalid.status, 422);
    assert!(
        names_field(&invalid, &["script", "script_uri"]),
        "{}",
        invalid.text
    );
    let wrong_type = json!({"script": {"script_type": "filesystem", "script_uri": "file:///x.py"},
                            "script_args": {"init": {"args": {}, "kwargs": []}}});
    let invalid = http.post("/procedures/", &wrong_type).await;
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
    let invalid = http
        .put("/procedures/1", &json!({"state": "SLEEPING"}))
        .await;
    assert!(names_field(&invalid, &["state"]), "{}", invalid.text);
    let not_json = http
        .raw(reqwest::Method::POST, "/procedures/", |r| {
            r.header("content-type", "application/json")
                .body("{\"script\": ")
        })
        .await;
    assert_eq!(not_json.status, 422);
    assert_eq!(not_json.json["detail"][0]["type"], "json_invalid");
    let bad_id = http.get("/procedures/one").await;
    assert_eq!(bad_id.status, 422);
    assert_eq!(
        bad_id.json["detail"][0]["loc"],
        json!(["path", "procedure_id"])
    );

    // 415 for a body not sent as JSON (a web page elsewhere could send that unasked).
    let form = http
        .raw(reqwest::Method::POST, "/procedures/", |r| {
            r.header("content-type", "text/plain")
                .body(missing_uri.to_string())
        })
        .await;
    assert_eq!(form.status, 415);

    // 413 for a body over the limit, whether its length is announced or not.
    let big = json!({"script": {"script_type": "filesystem", "script_uri": "file:///x.py"},
                     "script_args": {"init": {"args": ["x".repeat(4096)]}}})
    .to_string();
    assert_eq!(
        http.post("/procedures/", &serde_json::from_str(&big).expect("JSON"))
            .await
            .status,
        413
    );
    let chunks: Vec<Result<String, std::io::Error>> =
        vec![Ok(big[..1500].into()), Ok(big[1500..].into())];
    let chunked = http
        .raw(reqwest::Method::POST, "/procedures/", |r| {
            r.header("content-type", "application/json")
                .body(reqwest::Body::wrap_stream(futures::stream::iter(chunks)))
        })
        .await;
    assert_eq!(chunked.status, 413);

    // 400: oetd refuses the script, saying why.
    let no_scheme = json!({"script": {"script_type": "filesystem", "script_uri": "/no/scheme.py"}});
    let refused = http.post("/procedures/", &no_scheme).await;
    assert_eq!(refused.status, 400, "{}", refused.text);
    let reason = refused.json["detail"].as_str().expect("a reason");
    assert!(reason.contains("/no/scheme.py"), "{reason}");

    // An unknown SBD or activity: 404 with oetd's reason; an unknown activity ID:
    // upstream's detail object.
    let run = json!({"sbd_id": "sbd-none-1", "activity_name": "observe"});
    let unknown = http.post("/activities/", &run).await;
    assert_eq!(unknown.status, 404, "{}", unknown.text);
    let unknown = http.get("/activities/77").await;
    assert_eq!(
        unknown.json,
        json!({"detail": {"type": "ResourceNotFound", "Message": "No information available for ID=77"}})
    );

    // A Host header the shim was not given (DNS rebinding) is refused.
    let rebound = http
        .raw(reqwest::Method::GET, "/procedures/", |r| {
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
    let delete = http
        .api
        .raw(reqwest::Method::DELETE, &shim.url("/procedures/"), |r| r)
        .await;
    assert_eq!(
        (delete.status, delete.json),
        (405, json!({"detail": "Method Not Allowed"}))
    );
}

#[tokio::test]
async fn without_oetd_the_api_answers_503_and_health_says_so() {
    let dir = tempfile::tempdir().expect("temp dir");
    let shim = TestShim::start(&dir.path().join("no-oetd.sock"));
    let http = Checked::new(&shim, None).await;
    let listed = http.get("/procedures/").await;
    assert_eq!(listed.status, 503);
    let reason = listed.json["detail"].as_str().expect("a reason");
    assert!(reason.contains("no-oetd.sock"), "{reason}");
    assert_eq!(http.get("/health").await.status, 503);

    // With an oetd, a shim is healthy.
    let daemon = TestDaemon::start();
    let shim = TestShim::start(&daemon.socket);
    let http = Checked::new(&shim, None).await;
    let health = http.get("/health").await;
    assert_eq!(health.status, 200);
    let oetd = health.json["oetd"].as_str().expect("oetd's name");
    assert!(oetd.starts_with("oetd "), "{oetd}");
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
    let config = format!("[auth]\ntokens_file = {tokens:?}\n");
    let shim = TestShim::start_with(&daemon.socket, &config);
    let uri = daemon.script("observation.py", OBSERVATION);
    let body = json!({"script": {"script_type": "filesystem", "script_uri": uri}});

    // No token, or an unknown one: 401, saying how to authenticate.
    for token in [None, Some("not-a-token-0123456789")] {
        let anyone = Checked::new(&shim, token).await;
        assert_eq!(anyone.ours["security"], json!([{"bearerAuth": []}]));
        assert_eq!(anyone.get("/procedures/").await.status, 401);
        assert_eq!(anyone.post("/procedures/", &body).await.status, 401);
        let stream = anyone
            .api
            .raw(reqwest::Method::GET, &shim.url("/stream"), |r| r)
            .await;
        assert_eq!(stream.status, 401);
        // Health and the document need no token.
        assert_eq!(anyone.get("/health").await.status, 200);
    }

    // A read token reads, and may not create or start.
    let reader = Checked::new(&shim, Some(READ_TOKEN)).await;
    assert_eq!(reader.get("/procedures/").await.status, 200);
    let refused = reader.post("/procedures/", &body).await;
    assert_eq!(refused.status, 403, "{}", refused.text);
    assert!(refused.text.contains("operate"), "{}", refused.text);
    reader.stream().await;

    // An operate token creates; a read token still cannot start what it created.
    let operator = Checked::new(&shim, Some(OPERATE_TOKEN)).await;
    let id = operator.create(&uri, 1).await["id"]
        .as_u64()
        .expect("an id");
    let path = format!("/procedures/{id}");
    let refused = reader.put(&path, &json!({"state": "RUNNING"})).await;
    assert_eq!(refused.status, 403);
    let unchanged = reader.get(&path).await;
    assert_eq!(
        unchanged.json["state"], "READY",
        "the refused start changed nothing"
    );

    // A token added to the file works after SIGHUP.
    let added = "added-0123456789abcdef";
    let text = format!("{READ_TOKEN} read\n{OPERATE_TOKEN} operate\n{added} read\n");
    std::fs::write(&tokens, text).expect("rewrite");
    shim.signal(libc::SIGHUP);
    shim.log_line("re-read the tokens file")
        .expect("the shim re-reads its tokens");
    let newcomer = Checked::new(&shim, Some(added)).await;
    assert_eq!(newcomer.get("/procedures/").await.status, 200);
}

#[test]
fn a_tokens_file_others_may_read_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let tokens = tokens_file(dir.path(), &format!("{OPERATE_TOKEN} operate\n"), 0o644);
    let config = dir.path().join("oet-http.toml");
    std::fs::write(&config, format!("[auth]\ntokens_file = {tokens:?}\n")).expect("config");
    let out = std::process::Command::new(oet_http_bin())
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
    let http = Checked::new(&shim, None).await;
    let script = daemon.script(
        "observe.py",
        "def init(subarray_id):\n    pass\n\n\
         def main(*args, sb_json=None, sbi_id=None, **kwargs):\n    \
         print(f'observing {sbi_id} from {sb_json}')\n",
    );
    let mut sbd: Json =
        serde_json::from_str(include_str!("../fixtures/sbd/low_sb_example.json")).expect("fixture");
    sbd["activities"]["observe"]["path"] = json!(script);
    let mut client = daemon.client().await;
    let (sbd_id, _) = client
        .put_sbd(sbd.to_string())
        .await
        .expect("store the SBD");

    let mut stream = http.stream().await;
    let run = json!({"sbd_id": sbd_id, "activity_name": "observe",
                     "script_args": {"init": {"args": [], "kwargs": {"subarray_id": 2}}}});
    let started = http.post("/activities/", &run).await;
    assert_eq!(started.status, 201, "{}", started.text);
    let summary = &started.json;
    let id = summary["id"].as_u64().expect("an activity id");
    let path = format!("/activities/{id}");
    assert_eq!(summary["uri"], json!(shim.url(&path)));
    assert_eq!(summary["sbd_id"], json!(sbd_id));
    assert_eq!(summary["activity_name"], "observe");
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
    let done = http.get(&path).await;
    assert_eq!(done.json["state"], "COMPLETE", "{:#}", done.json);
    let states: Vec<&str> = done.json["activity_states"]
        .as_array()
        .expect("states")
        .iter()
        .map(|s| s[0].as_str().expect("state"))
        .collect();
    assert_eq!(states, ["REQUESTED", "PREPARED", "RUNNING", "COMPLETE"]);
    let procedure_id = done.json["procedure_id"].as_u64().expect("its procedure");
    let procedure = http.get(&format!("/procedures/{procedure_id}")).await;
    assert_eq!(procedure.json["state"], "COMPLETE");
    assert_eq!(procedure.json["script"]["script_uri"], json!(script));
    assert_eq!(
        procedure.json["script_args"]["main"]["kwargs"]["sbi_id"],
        done.json["sbi_id"]
    );
    let listed = http.get("/activities").await;
    let activities = listed.json.as_array().expect("a list");
    assert!(activities.iter().any(|a| a["id"] == id));
}

#[tokio::test]
async fn an_oetd_that_does_not_answer_gets_504_in_time_not_a_hung_request() {
    let daemon = TestDaemon::start();
    let shim = TestShim::start_with(&daemon.socket, "[oetd]\ntimeout_secs = 0.5\n");
    let http = Checked::new(&shim, None).await;
    assert_eq!(http.get("/procedures/").await.status, 200);
    daemon.signal(libc::SIGSTOP);
    let stuck = http.get("/procedures/").await;
    let health = http.get("/health").await;
    daemon.signal(libc::SIGCONT);
    assert_eq!(stuck.status, 504, "{}", stuck.text);
    let reason = stuck.json["detail"].as_str().expect("a reason");
    assert!(reason.contains("no answer from oetd"), "{reason}");
    assert!(reason.contains("oetd.timeout_secs"), "{reason}");
    assert_eq!(health.status, 504, "{}", health.text);
    assert_eq!(http.get("/procedures/").await.status, 200);
}
