//! Request bodies and path parameters, read and checked before anything is asked of oetd:
//! the body must be JSON sent as JSON and no larger than the limit, and every field is
//! checked against upstream's request models. Each fault is reported with its field, as
//! FastAPI did; all faults of a body are reported at once.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap};
use futures::StreamExt;
use oet_protocol::{FunctionArgs, GitArgs, ProcedureState, RunActivity, ScriptSpec, Value};
use serde_json::{json, Map, Value as Json};

use crate::error::{ApiError, FieldError, Loc};

/// Deepest nesting of a script argument accepted: deeper values are refused here, rather
/// than by oetd's decoder.
pub const MAX_DEPTH: usize = 32;

/// The functions whose arguments a request may give, as upstream's `ScriptArgs` model.
const FUNCTIONS: [&str; 2] = ["init", "main"];

/// `POST /procedures`: the script to load and the arguments of its `init`.
#[derive(Debug, PartialEq)]
pub struct ProcedurePost {
    pub script: ScriptSpec,
    pub init: FunctionArgs,
}

/// `PUT /procedures/{id}`: the state asked for, with `main`'s arguments and the abort flag.
#[derive(Debug, PartialEq)]
pub struct ProcedurePut {
    pub state: Option<ProcedureState>,
    pub main: FunctionArgs,
    pub abort: bool,
}

/// Reads a JSON body: it must say it is JSON (so that a web page elsewhere cannot send one
/// without the browser asking first), arrive within `timeout` and fit in `limit` bytes.
pub async fn read_json(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Json, ApiError> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .is_some_and(|v| {
            v == "application/json" || (v.starts_with("application/") && v.ends_with("+json"))
        });
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(ApiError::TooLarge(limit));
    }
    let bytes = tokio::time::timeout(timeout, read_limited(body, limit))
        .await
        .map_err(|_| {
            ApiError::Timeout(format!(
                "the request body did not arrive within {} s",
                timeout.as_secs_f64()
            ))
        })??;
    serde_json::from_slice(&bytes).map_err(|err| {
        ApiError::field(
            vec![json!("body"), json!(err.column())],
            "json_invalid",
            format!("JSON decode error: {err}"),
        )
    })
}

/// The body's bytes, refusing more than `limit` as they arrive (a chunked body has no
/// length to check beforehand).
async fn read_limited(body: Body, limit: usize) -> Result<Vec<u8>, ApiError> {
    let mut chunks = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = chunks.next().await {
        let chunk = chunk
            .map_err(|err| ApiError::BadRequest(format!("cannot read the request body: {err}")))?;
        if bytes.len() + chunk.len() > limit {
            return Err(ApiError::TooLarge(limit));
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(bytes)
}

/// A path parameter that must be an integer, e.g. `procedure_id`. IDs that cannot exist
/// (negative, or beyond 64 bits) are `Ok(Err(normalised text))`, for a 404 that names them
/// as upstream did.
pub fn path_id(text: &str, name: &str) -> Result<Result<u64, String>, ApiError> {
    let digits = text
        .strip_prefix('-')
        .or_else(|| text.strip_prefix('+'))
        .unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::field(
            vec![json!("path"), json!(name)],
            "int_parsing",
            "Input should be a valid integer, unable to parse string as an integer",
        ));
    }
    let trimmed = digits.trim_start_matches('0');
    let magnitude = if trimmed.is_empty() { "0" } else { trimmed };
    if text.starts_with('-') && magnitude != "0" {
        return Ok(Err(format!("-{magnitude}")));
    }
    Ok(magnitude.parse::<u64>().map_err(|_| magnitude.to_owned()))
}

/// Checks a `POST /procedures` body.
pub fn procedure_post(body: &Json) -> Result<ProcedurePost, ApiError> {
    let mut check = Check::default();
    let root = vec![json!("body")];
    let post = check.object(&root, body).and_then(|fields| {
        let script = check
            .required(&root, fields, "script")
            .and_then(|script| check.script(&at(&root, "script"), script));
        let args = check.script_args(&root, fields);
        Some(ProcedurePost {
            script: script?,
            init: args?.remove("init").unwrap_or_default(),
        })
    });
    check.finish(post)
}

/// Checks a `PUT /procedures/{id}` body.
pub fn procedure_put(body: &Json) -> Result<ProcedurePut, ApiError> {
    let mut check = Check::default();
    let root = vec![json!("body")];
    let put = check.object(&root, body).and_then(|fields| {
        let args = check.script_args(&root, fields);
        let state = match fields.get("state") {
            None | Some(Json::Null) => Some(None),
            Some(state) => check.state(&at(&root, "state"), state).map(Some),
        };
        let abort = check.optional_bool(&root, fields, "abort");
        Some(ProcedurePut {
            state: state?,
            main: args?.remove("main").unwrap_or_default(),
            abort: abort?,
        })
    });
    check.finish(put)
}

/// Checks a `POST /activities` body.
pub fn activity_post(body: &Json) -> Result<RunActivity, ApiError> {
    let mut check = Check::default();
    let root = vec![json!("body")];
    let run = check.object(&root, body).and_then(|fields| {
        let sbd_id = check
            .required(&root, fields, "sbd_id")
            .and_then(|v| check.string(&at(&root, "sbd_id"), v));
        let activity_name = check
            .required(&root, fields, "activity_name")
            .and_then(|v| check.string(&at(&root, "activity_name"), v));
        let script_args = check.script_args(&root, fields);
        let prepare_only = check.optional_bool(&root, fields, "prepare_only");
        let create_env = check.optional_bool(&root, fields, "create_env");
        Some(RunActivity {
            activity_name: activity_name?,
            sbd_id: sbd_id?,
            script_args: script_args?,
            prepare_only: prepare_only?,
            create_env: create_env?,
        })
    });
    check.finish(run)
}

fn at(loc: &Loc, key: &str) -> Loc {
    let mut loc = loc.clone();
    loc.push(json!(key));
    loc
}

/// Collects the faults of one body.
#[derive(Default)]
struct Check {
    errors: Vec<FieldError>,
}

impl Check {
    fn fault(&mut self, loc: &Loc, kind: &'static str, msg: impl Into<String>) {
        self.errors.push(FieldError::new(loc.clone(), kind, msg));
    }

    fn finish<T>(self, value: Option<T>) -> Result<T, ApiError> {
        match value {
            Some(value) if self.errors.is_empty() => Ok(value),
            _ => Err(ApiError::Invalid(self.errors)),
        }
    }

    fn object<'a>(&mut self, loc: &Loc, value: &'a Json) -> Option<&'a Map<String, Json>> {
        match value {
            Json::Object(fields) => Some(fields),
            _ => {
                self.fault(
                    loc,
                    "dict_type",
                    "Input should be a valid dictionary or object",
                );
                None
            }
        }
    }

    fn required<'a>(
        &mut self,
        loc: &Loc,
        fields: &'a Map<String, Json>,
        key: &str,
    ) -> Option<&'a Json> {
        let found = fields.get(key);
        if found.is_none() {
            self.fault(&at(loc, key), "missing", "Field required");
        }
        found
    }

    fn string(&mut self, loc: &Loc, value: &Json) -> Option<String> {
        match value {
            Json::String(s) => Some(s.clone()),
            _ => {
                self.fault(loc, "string_type", "Input should be a valid string");
                None
            }
        }
    }

    fn optional_string(
        &mut self,
        loc: &Loc,
        fields: &Map<String, Json>,
        key: &str,
    ) -> Option<Option<String>> {
        match fields.get(key) {
            None | Some(Json::Null) => Some(None),
            Some(value) => self.string(&at(loc, key), value).map(Some),
        }
    }

    fn optional_bool(&mut self, loc: &Loc, fields: &Map<String, Json>, key: &str) -> Option<bool> {
        match fields.get(key) {
            None => Some(false),
            Some(Json::Bool(b)) => Some(*b),
            Some(_) => {
                self.fault(
                    &at(loc, key),
                    "bool_type",
                    "Input should be a valid boolean",
                );
                None
            }
        }
    }

    fn state(&mut self, loc: &Loc, value: &Json) -> Option<ProcedureState> {
        let found = value.as_str().and_then(|s| {
            ProcedureState::ALL
                .into_iter()
                .find(|state| state.as_str() == s)
        });
        if found.is_none() {
            let names: Vec<String> = ProcedureState::ALL
                .iter()
                .map(|s| format!("'{}'", s.as_str()))
                .collect();
            self.fault(loc, "enum", format!("Input should be {}", names.join(", ")));
        }
        found
    }

    /// `{script_type: "filesystem", script_uri}` or `{script_type: "git", script_uri,
    /// git_args?, create_env?}`.
    fn script(&mut self, loc: &Loc, value: &Json) -> Option<ScriptSpec> {
        let fields = self.object(loc, value)?;
        let kind = match fields.get("script_type") {
            None => {
                self.fault(
                    loc,
                    "union_tag_not_found",
                    "Unable to extract tag using discriminator 'script_type'",
                );
                return None;
            }
            Some(kind) => kind,
        };
        let uri = self
            .required(loc, fields, "script_uri")
            .and_then(|uri| self.string(&at(loc, "script_uri"), uri));
        match kind.as_str() {
            Some("filesystem") => Some(ScriptSpec::Filesystem { script_uri: uri? }),
            Some("git") => {
                let git_args = match fields.get("git_args") {
                    None | Some(Json::Null) => Some(GitArgs::default()),
                    Some(args) => self.git_args(&at(loc, "git_args"), args),
                };
                let create_env = self.optional_bool(loc, fields, "create_env");
                Some(ScriptSpec::Git {
                    script_uri: uri?,
                    git_args: git_args?,
                    create_env: create_env?,
                })
            }
            _ => {
                self.fault(
                    &at(loc, "script_type"),
                    "union_tag_invalid",
                    format!(
                        "Input tag {kind} found using 'script_type' does not match any of the \
                         expected tags: 'filesystem', 'git'"
                    ),
                );
                None
            }
        }
    }

    fn git_args(&mut self, loc: &Loc, value: &Json) -> Option<GitArgs> {
        let fields = self.object(loc, value)?;
        let git_repo = self.optional_string(loc, fields, "git_repo");
        let git_branch = self.optional_string(loc, fields, "git_branch");
        let git_commit = self.optional_string(loc, fields, "git_commit");
        Some(GitArgs {
            git_repo: git_repo?,
            git_branch: git_branch?,
            git_commit: git_commit?,
        })
    }

    /// `script_args`: `{init?: {args, kwargs}, main?: {args, kwargs}}`, absent or null
    /// meaning none. Other function names are refused rather than ignored, so that an
    /// old client's `run` does not silently start `main` without its arguments.
    fn script_args(
        &mut self,
        loc: &Loc,
        fields: &Map<String, Json>,
    ) -> Option<BTreeMap<String, FunctionArgs>> {
        let loc = at(loc, "script_args");
        let functions = match fields.get("script_args") {
            None | Some(Json::Null) => return Some(BTreeMap::new()),
            Some(value) => self.object(&loc, value)?,
        };
        let mut found = BTreeMap::new();
        let mut whole = true;
        for (name, args) in functions {
            let place = at(&loc, name);
            if !FUNCTIONS.contains(&name.as_str()) {
                self.fault(
                    &place,
                    "extra_forbidden",
                    "Extra inputs are not permitted: script_args names the arguments of init \
                     and main only",
                );
                whole = false;
                continue;
            }
            if args.is_null() {
                continue;
            }
            match self.function_args(&place, args) {
                Some(args) => {
                    found.insert(name.clone(), args);
                }
                None => whole = false,
            }
        }
        whole.then_some(found)
    }

    /// `{args: [...], kwargs: {...}}`, each defaulting to empty.
    fn function_args(&mut self, loc: &Loc, value: &Json) -> Option<FunctionArgs> {
        let fields = self.object(loc, value)?;
        let args = match fields.get("args") {
            None => Some(Vec::new()),
            Some(Json::Array(items)) => {
                let mut ok = true;
                for (index, item) in items.iter().enumerate() {
                    let mut place = at(loc, "args");
                    place.push(json!(index));
                    ok &= self.shallow(&place, item);
                }
                ok.then(|| items.iter().cloned().map(Value::from).collect())
            }
            Some(_) => {
                self.fault(
                    &at(loc, "args"),
                    "list_type",
                    "Input should be a valid list",
                );
                None
            }
        };
        let kwargs = match fields.get("kwargs") {
            None => Some(BTreeMap::new()),
            Some(Json::Object(map)) => {
                let mut ok = true;
                for (key, item) in map {
                    let mut place = at(loc, "kwargs");
                    place.push(json!(key));
                    ok &= self.shallow(&place, item);
                }
                ok.then(|| {
                    map.iter()
                        .map(|(k, v)| (k.clone(), Value::from(v.clone())))
                        .collect()
                })
            }
            Some(_) => {
                self.fault(
                    &at(loc, "kwargs"),
                    "dict_type",
                    "Input should be a valid dictionary",
                );
                None
            }
        };
        Some(FunctionArgs {
            args: args?,
            kwargs: kwargs?,
        })
    }

    /// Whether an argument value nests no deeper than [`MAX_DEPTH`]; a fault if it does.
    fn shallow(&mut self, loc: &Loc, value: &Json) -> bool {
        if depth(value) > MAX_DEPTH {
            self.fault(
                loc,
                "too_deep",
                format!("a script argument may nest at most {MAX_DEPTH} levels deep"),
            );
            return false;
        }
        true
    }
}

fn depth(value: &Json) -> usize {
    match value {
        Json::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Json::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn faults(err: ApiError) -> Vec<(String, &'static str)> {
        match err {
            ApiError::Invalid(errors) => errors
                .into_iter()
                .map(|e| {
                    let loc: Vec<String> = e
                        .loc
                        .iter()
                        .map(|p| p.as_str().map_or(p.to_string(), str::to_owned))
                        .collect();
                    (loc.join("."), e.kind)
                })
                .collect(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn a_filesystem_procedure_with_init_arguments() {
        let post = procedure_post(&json!({
            "script": {"script_type": "filesystem", "script_uri": "file:///s.py"},
            "script_args": {"init": {"args": [1, 2.5], "kwargs": {"subarray_id": 1}}},
        }))
        .expect("valid");
        assert_eq!(post.script, ScriptSpec::filesystem("file:///s.py"));
        assert_eq!(post.init.args, vec![Value::Int(1), Value::Float(2.5)]);
        assert_eq!(post.init.kwargs["subarray_id"], Value::Int(1));
    }

    #[test]
    fn a_git_procedure_takes_its_arguments_and_defaults() {
        let post = procedure_post(&json!({
            "script": {"script_type": "git", "script_uri": "git://a.py",
                       "git_args": {"git_repo": "/srv/r", "git_branch": null}, "create_env": true},
        }))
        .expect("valid");
        assert_eq!(
            post.script,
            ScriptSpec::Git {
                script_uri: "git://a.py".into(),
                git_args: GitArgs {
                    git_repo: Some("/srv/r".into()),
                    git_branch: None,
                    git_commit: None
                },
                create_env: true,
            }
        );
        assert!(post.init.is_empty());
    }

    #[test]
    fn every_fault_of_a_body_is_named() {
        let err = procedure_post(&json!({
            "script": {"script_type": "filesystem"},
            "script_args": {"init": {"args": "x", "kwargs": []}, "run": {}},
        }))
        .expect_err("invalid");
        assert_eq!(
            faults(err),
            vec![
                ("body.script.script_uri".into(), "missing"),
                ("body.script_args.init.args".into(), "list_type"),
                ("body.script_args.init.kwargs".into(), "dict_type"),
                ("body.script_args.run".into(), "extra_forbidden"),
            ]
        );
        assert_eq!(
            faults(procedure_post(&json!({})).expect_err("no script")),
            vec![("body.script".into(), "missing")]
        );
        assert_eq!(
            faults(procedure_post(&json!([])).expect_err("not an object")),
            vec![("body".into(), "dict_type")]
        );
        assert_eq!(
            faults(
                procedure_post(&json!({"script": {"script_type": "ftp", "script_uri": "x"}}))
                    .expect_err("bad tag")
            ),
            vec![("body.script.script_type".into(), "union_tag_invalid")]
        );
    }

    #[test]
    fn a_put_names_its_state_and_main_arguments() {
        let put = procedure_put(&json!({
            "state": "RUNNING", "script_args": {"main": {"kwargs": {"scans": 2}}}
        }))
        .expect("valid");
        assert_eq!(put.state, Some(ProcedureState::Running));
        assert_eq!(put.main.kwargs["scans"], Value::Int(2));
        assert!(!put.abort);
        let stop = procedure_put(&json!({"state": "STOPPED", "abort": true})).expect("valid");
        assert_eq!(
            (stop.state, stop.abort),
            (Some(ProcedureState::Stopped), true)
        );
        assert_eq!(procedure_put(&json!({})).expect("a no-op").state, None);
        assert_eq!(
            faults(procedure_put(&json!({"state": "running", "abort": 1})).expect_err("bad")),
            vec![
                ("body.state".into(), "enum"),
                ("body.abort".into(), "bool_type")
            ]
        );
    }

    #[test]
    fn an_activity_needs_its_sbd_and_name() {
        let run = activity_post(&json!({
            "sbd_id": "sbd-1", "activity_name": "observe", "prepare_only": true,
            "script_args": {"init": null, "main": {"args": [1]}}
        }))
        .expect("valid");
        assert_eq!(
            (run.sbd_id.as_str(), run.activity_name.as_str()),
            ("sbd-1", "observe")
        );
        assert!(run.prepare_only && !run.create_env);
        assert_eq!(run.script_args.keys().collect::<Vec<_>>(), vec!["main"]);
        assert_eq!(
            faults(activity_post(&json!({"sbd_id": 5})).expect_err("bad")),
            vec![
                ("body.sbd_id".into(), "string_type"),
                ("body.activity_name".into(), "missing")
            ]
        );
    }

    #[test]
    fn deeply_nested_arguments_are_refused_here() {
        let mut deep = json!(1);
        for _ in 0..=MAX_DEPTH {
            deep = json!([deep]);
        }
        let err = procedure_post(&json!({
            "script": {"script_type": "filesystem", "script_uri": "file:///s.py"},
            "script_args": {"init": {"kwargs": {"deep": deep}}},
        }))
        .expect_err("too deep");
        assert_eq!(
            faults(err),
            vec![("body.script_args.init.kwargs.deep".into(), "too_deep")]
        );
    }

    #[test]
    fn path_ids_are_integers() {
        assert_eq!(path_id("7", "procedure_id").expect("int"), Ok(7));
        assert_eq!(path_id("007", "procedure_id").expect("int"), Ok(7));
        assert_eq!(
            path_id("-3", "procedure_id").expect("int"),
            Err("-3".into())
        );
        assert_eq!(path_id("-0", "procedure_id").expect("int"), Ok(0));
        assert_eq!(
            path_id("99999999999999999999999", "procedure_id").expect("int"),
            Err("99999999999999999999999".into())
        );
        for bad in ["", "x", "1.5", "1e3", "-", " 1"] {
            assert!(path_id(bad, "procedure_id").is_err(), "{bad:?}");
        }
    }
}
