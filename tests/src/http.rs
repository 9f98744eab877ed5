//! The HTTP shim for end-to-end tests: a real `oet-http` on a free loopback port, talking
//! to a test's `oetd`, killed when the test ends; a client for its JSON API, a reader of
//! its server-sent events, and validation of answers against an OpenAPI document (the
//! original OET's, or the shim's own).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use serde_json::{json, Value as Json};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::{bin_dir, wait_for_line, DEADLINE};

/// The shim's default prefix, as upstream's.
pub const PREFIX: &str = "/ska-oso-oet/oet/api/v7";

/// The original OET's OpenAPI document (7.0.0).
pub const UPSTREAM_OPENAPI: &str = include_str!("../fixtures/rest/upstream-openapi-7.0.0.json");

pub fn oet_http_bin() -> PathBuf {
    bin_dir().join("oet-http")
}

/// A running `oet-http` owned by one test.
pub struct TestShim {
    /// `http://127.0.0.1:<port><prefix>`
    pub base: String,
    /// `127.0.0.1:<port>`
    pub authority: String,
    child: Option<Child>,
    log: std::sync::Mutex<mpsc::Receiver<String>>,
    _dir: tempfile::TempDir,
}

impl TestShim {
    /// Starts the shim for the oetd at `socket` with its defaults.
    pub fn start(socket: &Path) -> TestShim {
        TestShim::start_with(socket, "")
    }

    /// Starts the shim for the oetd at `socket` with `config` as its configuration file,
    /// listening on a free loopback port.
    pub fn start_with(socket: &Path, config: &str) -> TestShim {
        let dir = tempfile::Builder::new()
            .prefix("oet-http-test-")
            .tempdir()
            .expect("temp dir");
        let config_path = dir.path().join("oet-http.toml");
        std::fs::write(&config_path, config).expect("write the shim's config");
        let mut child = Command::new(oet_http_bin())
            .arg("--config")
            .arg(&config_path)
            .arg("--socket")
            .arg(socket)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", oet_http_bin().display()));
        let stderr = child.stderr.take().expect("stderr pipe");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                eprintln!("[oet-http] {line}");
                let _ = tx.send(line);
            }
        });
        let Some(line) = wait_for_line(&rx, "oet-http listening on http://") else {
            let status = child.try_wait();
            panic!("oet-http did not start listening (exit status: {status:?})");
        };
        let url = line
            .split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .expect("the address in the listening line")
            .to_owned();
        let authority = url
            .trim_start_matches("http://")
            .split('/')
            .next()
            .expect("host and port")
            .to_owned();
        TestShim {
            base: url,
            authority,
            child: Some(child),
            log: std::sync::Mutex::new(rx),
            _dir: dir,
        }
    }

    /// The URL of `path` below the prefix, e.g. `url("/procedures/")`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Waits (bounded) for the next line the shim logs that contains `needle`.
    pub fn log_line(&self, needle: &str) -> Option<String> {
        let lines = self.log.lock().ok()?;
        wait_for_line(&lines, needle)
    }

    /// Sends a signal to the shim.
    pub fn signal(&self, signal: i32) {
        let pid = self.child.as_ref().expect("shim running").id();
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(pid as i32, signal);
        }
    }

    /// Sends SIGTERM and waits for the shim to exit.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        self.signal(libc::SIGTERM);
        let mut child = self.child.take().expect("shim running");
        child.wait().expect("wait for oet-http")
    }
}

impl Drop for TestShim {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An HTTP answer: status, content type and body (as JSON when it is JSON).
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub json: Json,
    pub text: String,
}

/// A client of the shim's JSON API, with an optional bearer token.
#[derive(Clone)]
pub struct Api {
    client: reqwest::Client,
    token: Option<String>,
}

impl Default for Api {
    fn default() -> Self {
        Api::new(None)
    }
}

impl Api {
    pub fn new(token: Option<&str>) -> Api {
        Api {
            client: reqwest::Client::builder()
                .timeout(DEADLINE)
                .build()
                .expect("an HTTP client"),
            token: token.map(str::to_owned),
        }
    }

    fn request(&self, method: reqwest::Method, url: &str) -> reqwest::RequestBuilder {
        let request = self.client.request(method, url);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    pub async fn get(&self, url: &str) -> Answer {
        answer(self.request(reqwest::Method::GET, url)).await
    }

    pub async fn post(&self, url: &str, body: &Json) -> Answer {
        self.send(reqwest::Method::POST, url, body).await
    }

    pub async fn put(&self, url: &str, body: &Json) -> Answer {
        self.send(reqwest::Method::PUT, url, body).await
    }

    async fn send(&self, method: reqwest::Method, url: &str, body: &Json) -> Answer {
        let request = self
            .request(method, url)
            .header("content-type", "application/json")
            .body(body.to_string());
        answer(request).await
    }

    /// Sends a request as built by `build` from this client's request for `url`.
    pub async fn raw(
        &self,
        method: reqwest::Method,
        url: &str,
        build: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Answer {
        answer(build(self.request(method, url))).await
    }

    /// Opens `/stream` and waits for its opening newline: from then on, every event is
    /// delivered to it. The stream is read as the bytes on the wire (HTTP/1.1 chunks), so
    /// that a test sees how the shim sends each message; dropping it closes the
    /// connection at once.
    pub async fn stream(&self, url: &str) -> SseStream {
        let opening = SseStream::open(url, self.token.as_deref());
        let mut stream = tokio::time::timeout(DEADLINE, opening)
            .await
            .unwrap_or_else(|_| panic!("GET {url} did not answer within {DEADLINE:?}"));
        let first = stream.chunk().await.expect("the stream's opening");
        assert_eq!(first, b"\n", "the stream opens with a bare newline");
        stream
    }
}

async fn answer(request: reqwest::RequestBuilder) -> Answer {
    let response = request.send().await.expect("HTTP request");
    let status = response.status().as_u16();
    let content_type = content_type(&response);
    let text = response.text().await.expect("HTTP body");
    let json = serde_json::from_str(&text).unwrap_or(Json::Null);
    Answer {
        status,
        content_type,
        json,
        text,
    }
}

fn content_type(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

/// One server-sent message.
#[derive(Debug, Clone, PartialEq)]
pub struct SseMessage {
    /// The text after `data:`.
    pub data: Option<String>,
    /// The text after `id:`.
    pub id: Option<String>,
    /// Comment lines (without the colon).
    pub comments: Vec<String>,
    /// The message exactly as sent, up to and including its blank line.
    pub raw: String,
}

impl SseMessage {
    /// The data as JSON.
    pub fn json(&self) -> Json {
        let data = self.data.as_deref().expect("a data line");
        serde_json::from_str(data).unwrap_or_else(|e| panic!("data is not JSON ({e}): {data}"))
    }

    pub fn topic(&self) -> Option<String> {
        let data = self.data.as_deref()?;
        let json: Json = serde_json::from_str(data).ok()?;
        json["topic"].as_str().map(str::to_owned)
    }
}

/// A `/stream` response being read, on a connection of its own.
pub struct SseStream {
    connection: BufReader<TcpStream>,
    buffer: Vec<u8>,
    /// Everything received after the opening newline.
    pub raw: Vec<u8>,
    /// The HTTP chunks received after the opening newline, as they came.
    pub chunks: Vec<Vec<u8>>,
}

impl SseStream {
    /// Sends `GET url` on a new connection and reads the answer's head, which must be a
    /// chunked 200 of `text/event-stream`.
    async fn open(url: &str, token: Option<&str>) -> SseStream {
        let rest = url.strip_prefix("http://").expect("an http:// URL");
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        let tcp = TcpStream::connect(authority)
            .await
            .expect("connect to the shim");
        let mut connection = BufReader::new(tcp);
        let authorization =
            token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nAccept: text/event-stream\r\n{authorization}\r\n"
        );
        connection
            .get_mut()
            .write_all(request.as_bytes())
            .await
            .expect("send the request");
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            let read = connection
                .read_line(&mut line)
                .await
                .expect("read the head");
            assert!(read > 0, "the shim closed the connection before answering");
            if line == "\r\n" {
                break;
            }
            head.push(line.trim_end().to_ascii_lowercase());
        }
        assert!(head[0].starts_with("http/1.1 200"), "GET {url}: {head:?}");
        assert!(
            head.iter()
                .any(|h| h.starts_with("content-type: text/event-stream")),
            "{head:?}"
        );
        assert!(
            head.iter().any(|h| h == "transfer-encoding: chunked"),
            "{head:?}"
        );
        SseStream {
            connection,
            buffer: Vec::new(),
            raw: Vec::new(),
            chunks: Vec::new(),
        }
    }

    /// The next HTTP chunk; `None` at the end of the response (or of the connection).
    async fn chunk(&mut self) -> Option<Vec<u8>> {
        let reading = async {
            let mut size = String::new();
            if self.connection.read_line(&mut size).await.ok()? == 0 {
                return None;
            }
            let size = usize::from_str_radix(size.trim(), 16).expect("a chunk size");
            let mut data = vec![0; size + 2];
            self.connection.read_exact(&mut data).await.ok()?;
            data.truncate(size);
            (size > 0).then_some(data)
        };
        tokio::time::timeout(DEADLINE, reading)
            .await
            .expect("the stream said something in time")
    }

    /// The next message (or comment block), or `None` when the stream ended.
    pub async fn next(&mut self) -> Option<SseMessage> {
        loop {
            if let Some(end) = find(&self.buffer, b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let raw = String::from_utf8(block).expect("UTF-8 (upstream escapes non-ASCII)");
                let mut message = SseMessage {
                    data: None,
                    id: None,
                    comments: Vec::new(),
                    raw: raw.clone(),
                };
                for line in raw.lines() {
                    if let Some(data) = line.strip_prefix("data:") {
                        message.data = Some(data.to_owned());
                    } else if let Some(id) = line.strip_prefix("id:") {
                        message.id = Some(id.to_owned());
                    } else if let Some(comment) = line.strip_prefix(':') {
                        message.comments.push(comment.trim().to_owned());
                    } else if !line.is_empty() {
                        panic!("unexpected line in the stream: {line:?}");
                    }
                }
                return Some(message);
            }
            let chunk = self.chunk().await?;
            self.raw.extend_from_slice(&chunk);
            self.buffer.extend_from_slice(&chunk);
            self.chunks.push(chunk);
        }
    }

    /// The next message with data (skipping comments); `None` when the stream ended.
    pub async fn next_data(&mut self) -> Option<SseMessage> {
        loop {
            let message = self.next().await?;
            if message.data.is_some() {
                return Some(message);
            }
        }
    }

    /// The next message whose JSON satisfies `pred`.
    pub async fn next_where(&mut self, pred: impl Fn(&Json) -> bool) -> SseMessage {
        loop {
            let message = self.next_data().await.expect("the stream ended early");
            if pred(&message.json()) {
                return message;
            }
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Checks `body`, answered with `status` by `method` on the document's `path`, against
/// the schema `document` gives that answer. `Err` says what is wrong, including a status
/// the document does not list.
pub fn conforms(
    document: &Json,
    path: &str,
    method: &str,
    status: u16,
    body: &Json,
) -> Result<(), String> {
    let operation = &document["paths"][path][method];
    if operation.is_null() {
        return Err(format!("{method} {path} is not in the document"));
    }
    let answer = &operation["responses"][status.to_string()];
    if answer.is_null() {
        return Err(format!("{method} {path} does not document status {status}"));
    }
    let mut schema = answer["content"]["application/json"]["schema"].clone();
    if schema.is_null() {
        return Err(format!("{method} {path} {status} has no JSON schema"));
    }
    if let Json::Object(map) = &mut schema {
        map.insert("components".into(), document["components"].clone());
    }
    let validator = jsonschema::draft202012::new(&schema)
        .map_err(|e| format!("the schema of {method} {path} {status} is invalid: {e}"))?;
    let errors: Vec<String> = validator
        .iter_errors(body)
        .map(|e| format!("{e} at {}", e.instance_path()))
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "{method} {path} {status}: {}\n{body:#}",
            errors.join("; ")
        ))
    }
}

/// The original OET's OpenAPI document.
pub fn upstream_openapi() -> Json {
    serde_json::from_str(UPSTREAM_OPENAPI).expect("the upstream document is JSON")
}

/// A detail that names `needle` somewhere in a 422's field errors.
pub fn names_field(answer: &Answer, field: &[&str]) -> bool {
    let wanted: Vec<Json> = std::iter::once(json!("body"))
        .chain(field.iter().map(|f| json!(f)))
        .collect();
    answer.json["detail"].as_array().is_some_and(|errors| {
        errors
            .iter()
            .any(|e| e["loc"] == Json::Array(wanted.clone()))
    })
}
