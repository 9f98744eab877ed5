//! A remote ODA over HTTP(S), through the SKA ODA's REST resources:
//! `GET {base}/sbds/{sbd_id}`, `PUT {base}/sbds/{sbd_id}` (or `POST {base}/sbds` for an
//! SBD without an id), `POST {base}/sbis` (the server assigns `sbi_id` and returns the
//! stored SBI), `GET {base}/sbis/{sbi_id}`.
//!
//! Ids are percent-encoded as single path segments. Every request is bounded by the
//! configured timeout; an answer other than 2xx surfaces with its status and body.

use std::error::Error as _;
use std::time::Duration;

use reqwest::header::{ACCEPT, CONTENT_TYPE};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value as Json;

use super::archive::{DocKind, NewSbi, Oda, OdaError};
use crate::activity::sbd::{parse_json, Sbd};

/// How much of a remote's error body is kept for the message.
const BODY_SHOWN: usize = 1000;

/// The ODA behind one base URL.
#[derive(Debug, Clone)]
pub struct RestOda {
    client: reqwest::Client,
    base: Url,
    timeout: Duration,
}

impl RestOda {
    /// `base` is the ODA API's base URL, e.g. `http://oda:5000/ska-db-oda/api/v7`.
    pub fn new(base: &str, timeout: Duration) -> Result<Self, OdaError> {
        let url = Url::parse(base)
            .map_err(|err| OdaError::Config(format!("`url` \"{base}\" is not a URL: {err}")))?;
        if !matches!(url.scheme(), "http" | "https") || url.cannot_be_a_base() {
            return Err(OdaError::Config(format!(
                "`url` \"{base}\" must be an http:// or https:// URL"
            )));
        }
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|err| OdaError::Config(format!("cannot set up HTTP: {}", chain(&err))))?;
        Ok(RestOda {
            client,
            base: url,
            timeout,
        })
    }

    /// `{base}/{segments...}`, each segment percent-encoded.
    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        // Cannot fail: `new` refused URLs that cannot be a base.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// Sends one request and returns the body of a 2xx answer. A 404 becomes `NotFound`
    /// when `wanted` names the document asked for.
    async fn call(
        &self,
        method: Method,
        url: Url,
        body: Option<Vec<u8>>,
        wanted: Option<(DocKind, &str)>,
    ) -> Result<Vec<u8>, OdaError> {
        let mut request = self
            .client
            .request(method.clone(), url.clone())
            .header(ACCEPT, "application/json");
        if let Some(body) = body {
            request = request.header(CONTENT_TYPE, "application/json").body(body);
        }
        let unreachable = |err: reqwest::Error| OdaError::Unreachable {
            url: url.to_string(),
            cause: if err.is_timeout() {
                format!("no answer within {} s", self.timeout.as_secs_f64())
            } else {
                chain(&err)
            },
        };
        let response = request.send().await.map_err(unreachable)?;
        let status = response.status();
        let body = response.bytes().await.map_err(unreachable)?.to_vec();
        match (status, wanted) {
            (status, _) if status.is_success() => Ok(body),
            (StatusCode::NOT_FOUND, Some((kind, id))) => Err(OdaError::NotFound {
                kind,
                id: id.to_owned(),
                detail: format!(" ({method} {url} answered 404: {})", shown(&body)),
            }),
            (status, _) => Err(OdaError::Remote {
                url: format!("{method} {url}"),
                status: status.as_u16(),
                body: shown(&body),
            }),
        }
    }
}

#[async_trait::async_trait]
impl Oda for RestOda {
    fn location(&self) -> String {
        self.base.to_string()
    }

    async fn get_sbd(&self, sbd_id: &str) -> Result<Sbd, OdaError> {
        check_id(DocKind::Sbd, sbd_id)?;
        let url = self.url(&["sbds", sbd_id]);
        let body = self
            .call(Method::GET, url.clone(), None, Some((DocKind::Sbd, sbd_id)))
            .await?;
        parse_sbd(&url, &body)
    }

    async fn put_sbd(&self, json: &str) -> Result<Sbd, OdaError> {
        let raw = parse_json(json).map_err(|err| OdaError::Malformed(err.to_string()))?;
        let (method, url) = match raw.get("sbd_id").and_then(Json::as_str) {
            Some(id) => {
                check_id(DocKind::Sbd, id)?;
                (Method::PUT, self.url(&["sbds", id]))
            }
            None => (Method::POST, self.url(&["sbds"])),
        };
        let body = self
            .call(method, url.clone(), Some(json.as_bytes().to_vec()), None)
            .await?;
        parse_sbd(&url, &body)
    }

    async fn create_sbi(&self, sbi: &NewSbi) -> Result<String, OdaError> {
        let doc = serde_json::to_vec(&sbi.to_pdm_json()?)
            .map_err(|err| OdaError::Malformed(format!("cannot record the SBI: {err}")))?;
        let url = self.url(&["sbis"]);
        let body = self
            .call(Method::POST, url.clone(), Some(doc), None)
            .await?;
        serde_json::from_slice::<Json>(&body)
            .ok()
            .and_then(|stored| {
                stored
                    .get("sbi_id")
                    .and_then(Json::as_str)
                    .map(str::to_owned)
            })
            .filter(|id| !id.is_empty())
            .ok_or_else(|| {
                OdaError::Malformed(format!(
                    "the ODA at {url} stored the SBI but answered without an `sbi_id`: {}",
                    shown(&body)
                ))
            })
    }

    async fn get_sbi(&self, sbi_id: &str) -> Result<Json, OdaError> {
        check_id(DocKind::Sbi, sbi_id)?;
        let url = self.url(&["sbis", sbi_id]);
        let body = self
            .call(Method::GET, url.clone(), None, Some((DocKind::Sbi, sbi_id)))
            .await?;
        serde_json::from_slice(&body)
            .map_err(|err| OdaError::Malformed(format!("the SBI from {url} is not JSON: {err}")))
    }
}

/// `.` and `..` would be swallowed by URL path normalisation, so they are refused.
fn check_id(kind: DocKind, id: &str) -> Result<(), OdaError> {
    let reason = match id {
        "" => "it is empty",
        "." | ".." => "it is a relative path",
        _ => return Ok(()),
    };
    Err(OdaError::InvalidId {
        kind,
        id: id.to_owned(),
        reason,
    })
}

fn parse_sbd(url: &Url, body: &[u8]) -> Result<Sbd, OdaError> {
    let text = String::from_utf8_lossy(body);
    Sbd::parse(&text).map_err(|err| OdaError::Malformed(format!("the SBD from {url}: {err}")))
}

/// A remote body for a message: text, trimmed, bounded.
fn shown(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "(empty body)".to_owned();
    }
    match text.char_indices().nth(BODY_SHOWN) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// The causes under an HTTP client error, which say more than its own message.
fn chain(err: &reqwest::Error) -> String {
    let mut causes = Vec::new();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !causes.contains(&text) {
            causes.push(text);
        }
        source = cause.source();
    }
    if causes.is_empty() {
        err.to_string()
    } else {
        causes.join(": ")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};
    use std::time::SystemTime;

    use axum::body::Bytes;
    use axum::extract::{Path, State};
    use axum::http::StatusCode;
    use axum::routing::{get, post};
    use axum::Router;
    use serde_json::json;

    use super::*;
    use crate::activity::oda::{ActivityCall, SBI_INTERFACE};

    /// What the test ODA server holds.
    #[derive(Default)]
    struct Store {
        sbds: BTreeMap<String, Json>,
        sbis: BTreeMap<String, Json>,
    }

    type Shared = Arc<Mutex<Store>>;
    type Answer = (StatusCode, String);

    fn lock(store: &Shared) -> std::sync::MutexGuard<'_, Store> {
        store
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn get_sbd(State(store): State<Shared>, Path(id): Path<String>) -> Answer {
        match id.as_str() {
            "boom" => (StatusCode::INTERNAL_SERVER_ERROR, "database on fire".into()),
            "slow" => std::future::pending().await,
            "garbage" => (StatusCode::OK, "{\"sbd_id\": ".into()),
            _ => match lock(&store).sbds.get(&id) {
                Some(sbd) => (StatusCode::OK, sbd.to_string()),
                None => (
                    StatusCode::NOT_FOUND,
                    json!({"detail": format!("SBD {id} not found")}).to_string(),
                ),
            },
        }
    }

    async fn put_sbd(State(store): State<Shared>, Path(id): Path<String>, body: Bytes) -> Answer {
        let Ok(mut sbd) = serde_json::from_slice::<Json>(&body) else {
            return (StatusCode::UNPROCESSABLE_ENTITY, "not JSON".into());
        };
        sbd["sbd_id"] = json!(id);
        lock(&store).sbds.insert(id, sbd.clone());
        (StatusCode::OK, sbd.to_string())
    }

    async fn post_sbi(State(store): State<Shared>, body: Bytes) -> Answer {
        let Ok(mut sbi) = serde_json::from_slice::<Json>(&body) else {
            return (StatusCode::UNPROCESSABLE_ENTITY, "not JSON".into());
        };
        if sbi["sbd_ref"] == json!("refuse-me") {
            return (StatusCode::UNPROCESSABLE_ENTITY, "sbd_ref refused".into());
        }
        let mut store = lock(&store);
        let id = format!("sbi-srv-{}", store.sbis.len() + 1);
        sbi["sbi_id"] = json!(id);
        store.sbis.insert(id, sbi.clone());
        (StatusCode::OK, sbi.to_string())
    }

    async fn get_sbi(State(store): State<Shared>, Path(id): Path<String>) -> Answer {
        match lock(&store).sbis.get(&id) {
            Some(sbi) => (StatusCode::OK, sbi.to_string()),
            None => (StatusCode::NOT_FOUND, "no such SBI".into()),
        }
    }

    /// Starts a real HTTP server on a free loopback port; returns its base URL.
    async fn serve(store: Shared) -> String {
        let api = Router::new()
            .route("/sbds/{id}", get(get_sbd).put(put_sbd))
            .route("/sbis", post(post_sbi))
            .route("/sbis/{id}", get(get_sbi))
            .with_state(store);
        let app = Router::new().nest("/oda/api/v7", api);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/oda/api/v7")
    }

    fn sample_sbd(id: &str) -> Json {
        let path = format!(
            "{}/../tests/fixtures/sbd/testfile_sample_mid_sb.json",
            env!("CARGO_MANIFEST_DIR")
        );
        let mut sbd: Json =
            serde_json::from_str(&std::fs::read_to_string(path).expect("fixture")).expect("JSON");
        sbd["sbd_id"] = json!(id);
        sbd
    }

    fn oda(base: &str) -> RestOda {
        RestOda::new(base, Duration::from_secs(5)).expect("valid")
    }

    #[tokio::test]
    async fn sbds_are_fetched_and_sbis_created_over_http() {
        let store = Shared::default();
        let weird = "sbd with/slash?and#hash";
        lock(&store)
            .sbds
            .insert("sbd-1".into(), sample_sbd("sbd-1"));
        lock(&store).sbds.insert(weird.into(), sample_sbd(weird));
        // A trailing slash on the base makes no difference.
        let oda = oda(&format!("{}/", serve(store.clone()).await));

        let sbd = oda.get_sbd("sbd-1").await.expect("get");
        assert_eq!(sbd.sbd_id, "sbd-1");
        assert!(sbd.activity("allocate").is_ok());
        // Ids travel as one percent-encoded path segment.
        assert_eq!(oda.get_sbd(weird).await.expect("weird id").sbd_id, weird);

        let call = ActivityCall {
            activity_name: "allocate".into(),
            function_args: BTreeMap::new(),
            runtime_args: BTreeMap::new(),
            executed_at: SystemTime::now(),
        };
        let sbi_id = oda
            .create_sbi(&NewSbi::for_activity(&sbd, call))
            .await
            .expect("create");
        assert_eq!(sbi_id, "sbi-srv-1");
        let stored = lock(&store).sbis["sbi-srv-1"].clone();
        assert_eq!(stored["sbd_ref"], json!("sbd-1"));
        assert_eq!(stored["interface"], json!(SBI_INTERFACE));
        assert_eq!(stored["activities"][0]["activity_ref"], json!("allocate"));
        // The remote gets the PDM shape only.
        assert!(stored["activities"][0].get("function_args").is_none());
        assert_eq!(oda.get_sbi(&sbi_id).await.expect("get sbi"), stored);

        let put = oda
            .put_sbd(&sample_sbd("sbd-2").to_string())
            .await
            .expect("put");
        assert_eq!(put.sbd_id, "sbd-2");
        assert_eq!(oda.get_sbd("sbd-2").await.expect("get").sbd_id, "sbd-2");
    }

    #[tokio::test]
    async fn remote_errors_surface_with_status_and_body() {
        let oda = oda(&serve(Shared::default()).await);

        let err = oda.get_sbd("sbd-missing").await.expect_err("404");
        assert!(
            matches!(
                err,
                OdaError::NotFound {
                    kind: DocKind::Sbd,
                    ..
                }
            ),
            "{err}"
        );
        let message = err.to_string();
        assert!(
            message.starts_with("the ODA has no SBD 'sbd-missing'"),
            "{message}"
        );
        assert!(message.contains("SBD sbd-missing not found"), "{message}");

        let err = oda.get_sbd("boom").await.expect_err("500");
        match &err {
            OdaError::Remote { status, body, .. } => {
                assert_eq!(*status, 500);
                assert_eq!(body, "database on fire");
            }
            other => panic!("expected a remote error, got {other}"),
        }
        assert!(
            err.to_string().contains("answered 500: database on fire"),
            "{err}"
        );

        let err = oda.get_sbd("garbage").await.expect_err("garbage");
        assert!(matches!(err, OdaError::Malformed(_)), "{err}");
        assert!(err.to_string().contains("line 1, column 11"), "{err}");

        let sbd = Sbd::from_json(sample_sbd("refuse-me")).expect("sbd");
        let call = ActivityCall {
            activity_name: "allocate".into(),
            function_args: BTreeMap::new(),
            runtime_args: BTreeMap::new(),
            executed_at: SystemTime::now(),
        };
        let err = oda
            .create_sbi(&NewSbi::for_activity(&sbd, call))
            .await
            .expect_err("422");
        assert!(
            err.to_string().contains("answered 422: sbd_ref refused"),
            "{err}"
        );

        let err = oda.get_sbd("..").await.expect_err("dots");
        assert!(matches!(err, OdaError::InvalidId { .. }), "{err}");
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let base = serve(Shared::default()).await;
        let oda = RestOda::new(&base, Duration::from_millis(200)).expect("valid");
        let err = oda.get_sbd("slow").await.expect_err("timeout");
        match &err {
            OdaError::Unreachable { url, cause } => {
                assert!(url.ends_with("/sbds/slow"), "{url}");
                assert!(cause.contains("no answer within 0.2 s"), "{cause}");
            }
            other => panic!("expected unreachable, got {other}"),
        }
    }

    #[tokio::test]
    async fn an_unreachable_oda_is_named() {
        // A port that was free a moment ago: nothing listens there now.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let oda = oda(&format!("http://{addr}/api"));
        let err = oda.get_sbd("sbd-1").await.expect_err("refused");
        match &err {
            OdaError::Unreachable { url, cause } => {
                assert_eq!(url, &format!("http://{addr}/api/sbds/sbd-1"));
                assert!(cause.to_lowercase().contains("refused"), "{cause}");
            }
            other => panic!("expected unreachable, got {other}"),
        }
    }

    #[test]
    fn bad_base_urls_are_configuration_errors() {
        for base in ["not a url", "ftp://oda/api", "mailto:oda@example.org"] {
            let err = RestOda::new(base, Duration::from_secs(1)).expect_err(base);
            assert!(matches!(err, OdaError::Config(_)), "{base}: {err}");
        }
    }
}
