//! Scheduling Block Definitions (SBDs): the typed view of the JSON document the ODA keeps,
//! and the rule that merges command-line script arguments over the SBD's own.
//!
//! Only what the OET acts on is typed (id, version, telescope, activities); the whole
//! document is kept as it came, because it is written to a file and handed to the script.

use std::collections::BTreeMap;
use std::fmt;

use oet_protocol::{FunctionArgs, GitArgs, ScriptSpec, Value};
use serde_json::Value as Json;

/// Why a document is not a usable SBD.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SbdError {
    #[error("the SBD is not valid JSON: {reason} at line {line}, column {column}")]
    Json {
        line: usize,
        column: usize,
        reason: String,
    },
    #[error("the SBD must be a JSON object, but it is {0}")]
    NotAnObject(&'static str),
    #[error("the SBD has no `sbd_id`; every SBD in the ODA needs one")]
    MissingId,
    #[error("the SBD's `{field}` must be {expected}, but it is {found}")]
    Invalid {
        field: String,
        expected: &'static str,
        found: String,
    },
    #[error("activity '{activity}' of the SBD has no `{field}`")]
    ActivityMissing {
        activity: String,
        field: &'static str,
    },
    #[error(
        "activity '{activity}' of the SBD has kind '{kind}'; the kinds are 'filesystem' and 'git'"
    )]
    UnknownKind { activity: String, kind: String },
    #[error("activity '{activity}' of the SBD is of kind '{kind}', so its path must start with '{expected}', but it is '{path}'")]
    WrongPrefix {
        activity: String,
        kind: &'static str,
        expected: &'static str,
        path: String,
    },
}

/// An activity was asked for that the SBD does not define.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("SBD '{sbd_id}' has no activity '{requested}'; {}", list_activities(.available))]
pub struct UnknownActivity {
    pub sbd_id: String,
    pub requested: String,
    /// The SBD's activity names, sorted.
    pub available: Vec<String>,
}

fn list_activities(names: &[String]) -> String {
    if names.is_empty() {
        "it defines no activities".to_owned()
    } else {
        format!("its activities are: {}", names.join(", "))
    }
}

/// Where an activity's script comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ScriptRef {
    /// `path` is a `file:///...` URI.
    Filesystem { path: String },
    /// `path` is a `git://...` URI relative to the repository root.
    Git {
        path: String,
        repo: String,
        branch: Option<String>,
        commit: Option<String>,
    },
}

impl ScriptRef {
    pub fn path(&self) -> &str {
        match self {
            ScriptRef::Filesystem { path } | ScriptRef::Git { path, .. } => path,
        }
    }
}

/// One entry of an SBD's `activities`: a script and the arguments for its functions.
#[derive(Debug, Clone, PartialEq)]
pub struct ActivityDef {
    pub script: ScriptRef,
    /// Arguments per function name (`init`, `main`, ...).
    pub function_args: BTreeMap<String, FunctionArgs>,
}

impl ActivityDef {
    /// The script as a procedure is created from it.
    pub fn script_spec(&self, create_env: bool) -> ScriptSpec {
        match &self.script {
            ScriptRef::Filesystem { path } => ScriptSpec::filesystem(path.clone()),
            ScriptRef::Git {
                path,
                repo,
                branch,
                commit,
            } => ScriptSpec::Git {
                script_uri: path.clone(),
                git_args: GitArgs {
                    git_repo: Some(repo.clone()),
                    git_branch: branch.clone(),
                    git_commit: commit.clone(),
                },
                create_env,
            },
        }
    }

    /// The SBD's function arguments with the command line's laid over them (DESIGN 5.2).
    ///
    /// Per function named in `overrides`:
    /// - a function the SBD does not mention is added as given;
    /// - positional `args` are replaced when the override gives any, and kept from the
    ///   SBD when it gives none (positional lists cannot be merged meaningfully);
    /// - `kwargs` are merged key by key, the override's value winning.
    ///
    /// Functions that only the SBD mentions are kept unchanged.
    pub fn merged_args(
        &self,
        overrides: &BTreeMap<String, FunctionArgs>,
    ) -> BTreeMap<String, FunctionArgs> {
        let mut merged = self.function_args.clone();
        for (function, over) in overrides {
            let entry = merged.entry(function.clone()).or_default();
            if !over.args.is_empty() {
                entry.args = over.args.clone();
            }
            entry
                .kwargs
                .extend(over.kwargs.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        merged
    }
}

/// A parsed SBD: the fields the OET uses, and the document itself.
#[derive(Debug, Clone, PartialEq)]
pub struct Sbd {
    pub sbd_id: String,
    /// `metadata.version`; 1 when the SBD does not say.
    pub version: u64,
    pub telescope: Option<String>,
    pub interface: Option<String>,
    pub activities: BTreeMap<String, ActivityDef>,
    raw: Json,
}

impl Sbd {
    /// Parses SBD JSON text.
    pub fn parse(text: &str) -> Result<Sbd, SbdError> {
        Sbd::from_json(parse_json(text)?)
    }

    /// Reads the typed view out of an already parsed document.
    pub fn from_json(raw: Json) -> Result<Sbd, SbdError> {
        let doc = raw
            .as_object()
            .ok_or(SbdError::NotAnObject(kind_of(&raw)))?;
        let sbd_id = match doc.get("sbd_id") {
            None | Some(Json::Null) => return Err(SbdError::MissingId),
            Some(Json::String(id)) if !id.is_empty() => id.clone(),
            Some(other) => return Err(invalid("sbd_id", "a non-empty string", other)),
        };
        let version = match doc.get("metadata").map(|m| (m, m.get("version"))) {
            None | Some((Json::Null, _)) | Some((_, None | Some(Json::Null))) => 1,
            Some((Json::Object(_), Some(v))) => v
                .as_u64()
                .filter(|&v| v >= 1)
                .ok_or_else(|| invalid("metadata.version", "a positive integer", v))?,
            Some((other, _)) => return Err(invalid("metadata", "an object", other)),
        };
        let activities = match doc.get("activities") {
            None | Some(Json::Null) => BTreeMap::new(),
            Some(Json::Object(map)) => map
                .iter()
                .map(|(name, def)| Ok((name.clone(), parse_activity(name, def)?)))
                .collect::<Result<_, SbdError>>()?,
            Some(other) => return Err(invalid("activities", "an object", other)),
        };
        Ok(Sbd {
            sbd_id,
            version,
            telescope: optional_string(doc, "telescope")?,
            interface: optional_string(doc, "interface")?,
            activities,
            raw,
        })
    }

    /// The activity called `name`, or an error listing the ones there are.
    pub fn activity(&self, name: &str) -> Result<&ActivityDef, UnknownActivity> {
        self.activities.get(name).ok_or_else(|| UnknownActivity {
            sbd_id: self.sbd_id.clone(),
            requested: name.to_owned(),
            available: self.activities.keys().cloned().collect(),
        })
    }

    /// The whole document, as it came.
    pub fn raw(&self) -> &Json {
        &self.raw
    }

    /// The whole document as indented JSON text, for files and the wire.
    /// Makes this document a new version of its SBD: `version` and `metadata.version`.
    pub fn set_version(&mut self, version: u64) {
        self.version = version;
        if let Some(doc) = self.raw.as_object_mut() {
            let metadata = doc
                .entry("metadata")
                .or_insert_with(|| Json::Object(Default::default()));
            if !metadata.is_object() {
                *metadata = Json::Object(Default::default());
            }
            metadata["version"] = Json::from(version);
        }
    }

    pub fn to_json_string(&self) -> String {
        // Serialising a `serde_json::Value` to a string cannot fail.
        serde_json::to_string_pretty(&self.raw).unwrap_or_default()
    }
}

impl fmt::Display for Sbd {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SBD '{}' version {}", self.sbd_id, self.version)
    }
}

/// Parses JSON text, reporting where it goes wrong.
pub(crate) fn parse_json(text: &str) -> Result<Json, SbdError> {
    serde_json::from_str(text).map_err(|err| {
        let (line, column) = (err.line(), err.column());
        let full = err.to_string();
        let suffix = format!(" at line {line} column {column}");
        SbdError::Json {
            line,
            column,
            reason: full.strip_suffix(&suffix).unwrap_or(&full).to_owned(),
        }
    })
}

fn parse_activity(name: &str, def: &Json) -> Result<ActivityDef, SbdError> {
    let field = |f: &str| format!("activities.{name}.{f}");
    let obj = def
        .as_object()
        .ok_or_else(|| invalid(&format!("activities.{name}"), "an object", def))?;
    let text = |key: &'static str| -> Result<Option<String>, SbdError> {
        match obj.get(key) {
            None | Some(Json::Null) => Ok(None),
            Some(Json::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(invalid(&field(key), "a string", other)),
        }
    };
    let missing = |field: &'static str| SbdError::ActivityMissing {
        activity: name.to_owned(),
        field,
    };
    let kind = text("kind")?.ok_or_else(|| missing("kind"))?;
    let path = text("path")?.ok_or_else(|| missing("path"))?;
    let script = match kind.as_str() {
        "filesystem" => {
            check_prefix(name, "filesystem", "file://", &path)?;
            ScriptRef::Filesystem { path }
        }
        "git" => {
            check_prefix(name, "git", "git://", &path)?;
            ScriptRef::Git {
                path,
                repo: text("repo")?.ok_or_else(|| missing("repo"))?,
                branch: text("branch")?,
                commit: text("commit")?,
            }
        }
        _ => {
            return Err(SbdError::UnknownKind {
                activity: name.to_owned(),
                kind,
            })
        }
    };
    let function_args = match obj.get("function_args") {
        None | Some(Json::Null) => BTreeMap::new(),
        Some(Json::Object(map)) => map
            .iter()
            .map(|(function, args)| {
                let args = parse_function_args(&field(&format!("function_args.{function}")), args)?;
                Ok((function.clone(), args))
            })
            .collect::<Result<_, SbdError>>()?,
        Some(other) => return Err(invalid(&field("function_args"), "an object", other)),
    };
    Ok(ActivityDef {
        script,
        function_args,
    })
}

fn parse_function_args(field: &str, json: &Json) -> Result<FunctionArgs, SbdError> {
    let obj = json
        .as_object()
        .ok_or_else(|| invalid(field, "an object with `args` and `kwargs`", json))?;
    let args = match obj.get("args") {
        None | Some(Json::Null) => Vec::new(),
        Some(Json::Array(items)) => items.iter().cloned().map(Value::from).collect(),
        Some(other) => return Err(invalid(&format!("{field}.args"), "a list", other)),
    };
    let kwargs = match obj.get("kwargs") {
        None | Some(Json::Null) => BTreeMap::new(),
        Some(Json::Object(map)) => map
            .iter()
            .map(|(k, v)| (k.clone(), Value::from(v.clone())))
            .collect(),
        Some(other) => return Err(invalid(&format!("{field}.kwargs"), "an object", other)),
    };
    Ok(FunctionArgs { args, kwargs })
}

fn check_prefix(
    activity: &str,
    kind: &'static str,
    expected: &'static str,
    path: &str,
) -> Result<(), SbdError> {
    if path.starts_with(expected) && path.len() > expected.len() {
        Ok(())
    } else {
        Err(SbdError::WrongPrefix {
            activity: activity.to_owned(),
            kind,
            expected,
            path: path.to_owned(),
        })
    }
}

fn optional_string(
    doc: &serde_json::Map<String, Json>,
    key: &str,
) -> Result<Option<String>, SbdError> {
    match doc.get(key) {
        None | Some(Json::Null) => Ok(None),
        Some(Json::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(invalid(key, "a string", other)),
    }
}

fn invalid(field: &str, expected: &'static str, found: &Json) -> SbdError {
    let mut shown = found.to_string();
    if shown.len() > 60 {
        let cut = (0..=60)
            .rev()
            .find(|&i| shown.is_char_boundary(i))
            .unwrap_or(0);
        shown.truncate(cut);
        shown.push('…');
    }
    SbdError::Invalid {
        field: field.to_owned(),
        expected,
        found: format!("{} {shown}", kind_of(found)),
    }
}

fn kind_of(json: &Json) -> &'static str {
    match json {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "a list",
        Json::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fixture(name: &str) -> String {
        let path = format!(
            "{}/../tests/fixtures/sbd/{name}",
            env!("CARGO_MANIFEST_DIR")
        );
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {path}: {e}"))
    }

    fn with_id(text: &str, id: &str) -> Json {
        let mut json: Json = serde_json::from_str(text).expect("fixture is JSON");
        json["sbd_id"] = json!(id);
        json
    }

    fn sbd_with_activity(activity: Json) -> Json {
        json!({"sbd_id": "sbd-t-1", "telescope": "ska_mid", "activities": {"observe": activity}})
    }

    #[test]
    fn the_sample_mid_sbd_parses() {
        let sbd = Sbd::parse(&fixture("testfile_sample_mid_sb.json")).expect("parses");
        assert_eq!(sbd.sbd_id, "sbi-mvp01-20200325-00013");
        assert_eq!(sbd.version, 1);
        assert_eq!(sbd.telescope.as_deref(), Some("ska_mid"));
        assert_eq!(
            sbd.interface.as_deref(),
            Some("https://schema.skao.int/ska-oso-pdm-sbd/0.1")
        );
        let allocate = sbd.activity("allocate").expect("has allocate");
        assert_eq!(
            allocate.script,
            ScriptRef::Filesystem {
                path: "file:///tmp/scripts/success.py".into()
            }
        );
        assert_eq!(
            allocate.function_args["init"].kwargs["subarray_id"],
            Value::Int(1)
        );
        assert!(allocate.function_args["main"].is_empty());
        // The whole document is kept for the script.
        let text = fixture("testfile_sample_mid_sb.json");
        assert_eq!(
            sbd.raw(),
            &serde_json::from_str::<Json>(&text).expect("JSON")
        );
    }

    #[test]
    fn the_mid_and_low_examples_parse_once_they_have_an_id() {
        // These two come without `sbd_id`, as SBDs do before the ODA has stored them.
        for name in ["mid_sb_example.json", "low_sb_example.json"] {
            let text = fixture(name);
            assert_eq!(Sbd::parse(&text), Err(SbdError::MissingId), "{name}");
            let sbd = Sbd::from_json(with_id(&text, "sbd-x-1")).expect(name);
            let observe = sbd.activity("observe").expect("has observe");
            assert_eq!(
                observe.script.path(),
                "file:///tmp/scripts/hello_world_with_sb.py"
            );
            assert_eq!(
                observe.function_args["init"].kwargs["subarray_id"],
                Value::Int(1)
            );
        }
        let low = Sbd::from_json(with_id(&fixture("low_sb_example.json"), "sbd-x-2")).expect("low");
        assert_eq!(low.telescope.as_deref(), Some("ska_low"));
    }

    #[test]
    fn version_comes_from_metadata_and_defaults_to_one() {
        let mut doc = json!({"sbd_id": "sbd-t-1", "metadata": {"version": 3}});
        assert_eq!(Sbd::from_json(doc.clone()).expect("parses").version, 3);
        doc["metadata"] = json!({"created_by": "me"});
        assert_eq!(Sbd::from_json(doc.clone()).expect("parses").version, 1);
        doc["metadata"] = json!({"version": "two"});
        let err = Sbd::from_json(doc).expect_err("string version");
        assert!(err.to_string().contains("metadata.version"), "{err}");
    }

    #[test]
    fn git_activities_carry_repo_branch_and_commit() {
        let sbd = Sbd::from_json(sbd_with_activity(json!({
            "kind": "git",
            "path": "git://scripts/observe.py",
            "repo": "https://example.org/scripts.git",
            "branch": "main",
            "function_args": {"main": {"args": [1, 2.5], "kwargs": {"x": null}}}
        })))
        .expect("parses");
        let observe = sbd.activity("observe").expect("observe");
        assert_eq!(
            observe.script,
            ScriptRef::Git {
                path: "git://scripts/observe.py".into(),
                repo: "https://example.org/scripts.git".into(),
                branch: Some("main".into()),
                commit: None,
            }
        );
        assert_eq!(
            observe.function_args["main"].args,
            vec![Value::Int(1), Value::Float(2.5)]
        );
        match observe.script_spec(true) {
            ScriptSpec::Git {
                script_uri,
                git_args,
                create_env,
            } => {
                assert_eq!(script_uri, "git://scripts/observe.py");
                assert_eq!(
                    git_args.git_repo.as_deref(),
                    Some("https://example.org/scripts.git")
                );
                assert_eq!(git_args.git_branch.as_deref(), Some("main"));
                assert!(create_env);
            }
            other => panic!("expected a git script, got {other:?}"),
        }
    }

    #[test]
    fn malformed_json_names_line_and_column() {
        let err = Sbd::parse("{\n  \"sbd_id\": \"a\",\n  \"activities\": {,}\n}").expect_err("bad");
        match &err {
            SbdError::Json { line, column, .. } => assert_eq!((*line, *column), (3, 18)),
            other => panic!("expected a JSON error, got {other:?}"),
        }
        assert!(err.to_string().contains("line 3, column 18"), "{err}");
    }

    #[test]
    fn bad_activities_are_named() {
        let cases = [
            (json!({"path": "file:///a.py"}), "has no `kind`"),
            (json!({"kind": "filesystem"}), "has no `path`"),
            (
                json!({"kind": "svn", "path": "file:///a.py"}),
                "has kind 'svn'",
            ),
            (
                json!({"kind": "filesystem", "path": "git://a.py"}),
                "must start with 'file://'",
            ),
            (
                json!({"kind": "git", "path": "file:///a.py", "repo": "r"}),
                "must start with 'git://'",
            ),
            (
                json!({"kind": "git", "path": "git://a.py"}),
                "has no `repo`",
            ),
            (
                json!({"kind": "filesystem", "path": "file:///a.py", "function_args": {"main": {"args": 3}}}),
                "activities.observe.function_args.main.args",
            ),
        ];
        for (activity, expected) in cases {
            let err = Sbd::from_json(sbd_with_activity(activity.clone()))
                .expect_err(&activity.to_string());
            let message = err.to_string();
            assert!(message.contains(expected), "{activity}: {message}");
            assert!(message.contains("observe"), "{activity}: {message}");
        }
    }

    #[test]
    fn documents_that_are_not_sbds_are_refused() {
        assert_eq!(Sbd::parse("[1]"), Err(SbdError::NotAnObject("a list")));
        assert_eq!(Sbd::parse("{}"), Err(SbdError::MissingId));
        let err = Sbd::parse("{\"sbd_id\": 5}").expect_err("numeric id");
        assert!(
            err.to_string()
                .contains("`sbd_id` must be a non-empty string"),
            "{err}"
        );
    }

    #[test]
    fn unknown_activity_lists_the_available_ones() {
        let sbd = Sbd::parse(&fixture("testfile_sample_mid_sb.json")).expect("parses");
        let err = sbd.activity("observe").expect_err("no observe");
        assert_eq!(err.available, vec!["allocate".to_owned()]);
        assert_eq!(
            err.to_string(),
            "SBD 'sbi-mvp01-20200325-00013' has no activity 'observe'; its activities are: allocate"
        );
        let empty = Sbd::from_json(json!({"sbd_id": "s"})).expect("parses");
        let err = empty.activity("observe").expect_err("none");
        assert!(
            err.to_string().ends_with("it defines no activities"),
            "{err}"
        );
    }

    fn args(args: Vec<Value>, kwargs: &[(&str, Value)]) -> FunctionArgs {
        FunctionArgs {
            args,
            kwargs: kwargs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.clone()))
                .collect(),
        }
    }

    #[test]
    fn command_line_args_override_and_extend_per_function() {
        let def = ActivityDef {
            script: ScriptRef::Filesystem {
                path: "file:///a.py".into(),
            },
            function_args: BTreeMap::from([
                (
                    "init".to_owned(),
                    args(vec![Value::Int(1)], &[("subarray_id", Value::Int(1))]),
                ),
                (
                    "main".to_owned(),
                    args(
                        vec![Value::from("a")],
                        &[("keep", Value::Bool(true)), ("change", Value::Int(1))],
                    ),
                ),
            ]),
        };
        let overrides = BTreeMap::from([
            (
                "main".to_owned(),
                args(vec![], &[("change", Value::Int(2)), ("new", Value::Null)]),
            ),
            ("init".to_owned(), args(vec![Value::Int(9)], &[])),
            ("extra".to_owned(), args(vec![], &[("x", Value::Int(3))])),
        ]);
        let merged = def.merged_args(&overrides);
        // kwargs merge key by key; empty override args keep the SBD's args.
        assert_eq!(
            merged["main"],
            args(
                vec![Value::from("a")],
                &[
                    ("keep", Value::Bool(true)),
                    ("change", Value::Int(2)),
                    ("new", Value::Null)
                ]
            )
        );
        // Non-empty override args replace the SBD's; untouched kwargs stay.
        assert_eq!(
            merged["init"],
            args(vec![Value::Int(9)], &[("subarray_id", Value::Int(1))])
        );
        // A function only the command line names is added.
        assert_eq!(merged["extra"], args(vec![], &[("x", Value::Int(3))]));
        // No overrides: the SBD's arguments as they are.
        assert_eq!(def.merged_args(&BTreeMap::new()), def.function_args);
    }
}
