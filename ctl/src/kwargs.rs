//! Script arguments the way upstream's `oet` CLI took them: free words become positional
//! arguments, `--key=value` words become keyword arguments, and every value is JSON when
//! it parses as JSON, else a string. Also turns a script URI plus the git flags into a
//! [`ScriptSpec`].

use std::collections::BTreeMap;
use std::path::Path;

use oet_protocol::{FunctionArgs, GitArgs, ScriptSpec, Value};

/// Why the script arguments or the script URI given on the command line cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArgError {
    #[error(
        "'{word}' is not an option of this command, and a keyword argument for the script \
         needs a value: write it as --key=value"
    )]
    MissingValue { word: String },
    #[error(
        "'{word}' comes after --, so it is an argument for the script, not oetctl's \
         option, and a keyword argument needs a value: put oetctl's options before --, \
         or write {word}=VALUE"
    )]
    OptionAfterDoubleDash { word: String },
    #[error("'{word}' has an empty keyword name: write keyword arguments as --key=value")]
    EmptyKey { word: String },
    #[error("keyword argument '{key}' is given twice")]
    DuplicateKey { key: String },
    #[error("script URI '{uri}' must start with file:// or git://{hint}")]
    UnknownScheme { uri: String, hint: String },
    #[error("{flag} only applies to git:// scripts, but the script is '{uri}'")]
    GitFlagWithoutGit { flag: &'static str, uri: String },
    #[error("--script-args is not JSON: {0}")]
    ScriptArgsJson(String),
    #[error(
        "--script-args{at} must be {expected}, e.g. '{{\"main\": {{\"args\": [1], \"kwargs\": {{\"x\": 2}}}}}}'"
    )]
    ScriptArgsShape { at: String, expected: &'static str },
}

/// Splits the free words after a command into positional and keyword arguments.
///
/// `--key=value` is a keyword argument, anything else (including negative numbers such
/// as `-3`) is positional; order between the two kinds does not matter. Each value goes
/// through [`Value::parse_cli`]. `own_option` tells whether a word is one of the
/// command's own options: among the free words it can only have come after a `--`.
pub fn function_args(
    words: &[String],
    own_option: impl Fn(&str) -> bool,
) -> Result<FunctionArgs, ArgError> {
    let mut args = Vec::new();
    let mut kwargs = BTreeMap::new();
    for word in words {
        let Some(flag) = word.strip_prefix("--") else {
            args.push(Value::parse_cli(word));
            continue;
        };
        let Some((key, value)) = flag.split_once('=') else {
            if own_option(word) {
                return Err(ArgError::OptionAfterDoubleDash { word: word.clone() });
            }
            return Err(ArgError::MissingValue { word: word.clone() });
        };
        if key.is_empty() {
            return Err(ArgError::EmptyKey { word: word.clone() });
        }
        if kwargs
            .insert(key.to_owned(), Value::parse_cli(value))
            .is_some()
        {
            return Err(ArgError::DuplicateKey {
                key: key.to_owned(),
            });
        }
    }
    Ok(FunctionArgs { args, kwargs })
}

/// Warnings for free words that are taken as positional arguments although they look
/// like a mistyped keyword argument: `scans=2` and `-scans=2` (upstream's CLI took them
/// as positional strings too; so does oetctl, but it says so).
pub fn suspicious(words: &[String]) -> Vec<String> {
    words
        .iter()
        .filter_map(|word| {
            let (key, _) = word.trim_start_matches('-').split_once('=')?;
            let dashes = word.len() - word.trim_start_matches('-').len();
            let identifier = key
                .chars()
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_')
                && key.chars().all(|c| c.is_alphanumeric() || c == '_');
            (identifier && dashes < 2).then(|| {
                format!(
                    "'{word}' is passed to the script as a positional string; \
                     for a keyword argument write --{}",
                    word.trim_start_matches('-')
                )
            })
        })
        .collect()
}

/// Parses `--script-args`: a JSON object mapping function names to
/// `{"args": [...], "kwargs": {...}}` (either key may be left out).
pub fn script_args(text: &str) -> Result<BTreeMap<String, FunctionArgs>, ArgError> {
    use serde_json::Value as Json;
    let json: Json =
        serde_json::from_str(text).map_err(|err| ArgError::ScriptArgsJson(err.to_string()))?;
    let shape = |at: String, expected| ArgError::ScriptArgsShape { at, expected };
    let Json::Object(functions) = json else {
        return Err(shape(String::new(), "an object of function names"));
    };
    let mut parsed = BTreeMap::new();
    for (function, spec) in functions {
        let Json::Object(mut spec) = spec else {
            return Err(shape(
                format!(".{function}"),
                "an object with \"args\" and/or \"kwargs\"",
            ));
        };
        let args = match spec.remove("args") {
            None | Some(Json::Null) => Vec::new(),
            Some(Json::Array(items)) => items.into_iter().map(Value::from).collect(),
            Some(_) => return Err(shape(format!(".{function}.args"), "a list")),
        };
        let kwargs = match spec.remove("kwargs") {
            None | Some(Json::Null) => BTreeMap::new(),
            Some(Json::Object(map)) => map.into_iter().map(|(k, v)| (k, Value::from(v))).collect(),
            Some(_) => return Err(shape(format!(".{function}.kwargs"), "an object")),
        };
        if let Some(other) = spec.keys().next() {
            return Err(shape(
                format!(".{function}.{other}"),
                "absent: only \"args\" and \"kwargs\" are known",
            ));
        }
        parsed.insert(function, FunctionArgs { args, kwargs });
    }
    Ok(parsed)
}

/// The git flags of `procedure create`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GitOptions {
    pub git_repo: Option<String>,
    pub git_branch: Option<String>,
    pub git_commit: Option<String>,
    pub create_env: bool,
}

impl GitOptions {
    /// The first flag that was given, by its command-line name.
    fn first_given(&self) -> Option<&'static str> {
        [
            (self.git_repo.is_some(), "--git_repo"),
            (self.git_branch.is_some(), "--git_branch"),
            (self.git_commit.is_some(), "--git_commit"),
            (self.create_env, "--create_env"),
        ]
        .into_iter()
        .find_map(|(given, flag)| given.then_some(flag))
    }
}

/// Builds the script specification from a URI and the git flags: `file://` scripts
/// take no git flags; `git://` scripts take them all.
pub fn script_spec(uri: &str, git: GitOptions) -> Result<ScriptSpec, ArgError> {
    if uri.starts_with("file://") {
        if let Some(flag) = git.first_given() {
            return Err(ArgError::GitFlagWithoutGit {
                flag,
                uri: uri.to_owned(),
            });
        }
        return Ok(ScriptSpec::filesystem(uri));
    }
    if uri.starts_with("git://") {
        return Ok(ScriptSpec::Git {
            script_uri: uri.to_owned(),
            git_args: GitArgs {
                git_repo: git.git_repo,
                git_branch: git.git_branch,
                git_commit: git.git_commit,
            },
            create_env: git.create_env,
        });
    }
    Err(ArgError::UnknownScheme {
        uri: uri.to_owned(),
        hint: file_uri_hint(uri),
    })
}

/// For a word that looks like a local path, suggests the `file://` URI the operator
/// probably meant.
fn file_uri_hint(uri: &str) -> String {
    if uri.contains("://") {
        return String::new();
    }
    let path = Path::new(uri);
    let absolute = if path.is_absolute() {
        Some(path.to_owned())
    } else {
        std::env::current_dir().ok().map(|dir| dir.join(path))
    };
    match absolute {
        Some(abs) => format!(" (did you mean file://{}?)", abs.display()),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(list: &[&str]) -> Vec<String> {
        list.iter().map(|w| w.to_string()).collect()
    }

    fn function_args_of(words: &[String]) -> Result<FunctionArgs, ArgError> {
        function_args(words, |word| word == "--listen")
    }

    #[test]
    fn an_option_after_a_double_dash_is_explained() {
        let err = function_args_of(&words(&["--listen"])).expect_err("no value");
        assert!(err.to_string().contains("comes after --"), "{err}");
        let err = function_args_of(&words(&["--scans"])).expect_err("no value");
        assert!(err.to_string().contains("is not an option"), "{err}");
    }

    #[test]
    fn key_value_words_without_two_dashes_are_positional_with_a_warning() {
        let list = words(&["scans=2", "-scans=2", "--scans=2", "a=b=c", "x", "=1", "-3"]);
        let parsed = function_args_of(&list).expect("valid");
        assert_eq!(parsed.args[0], Value::from("scans=2"));
        assert_eq!(parsed.args[1], Value::from("-scans=2"));
        let warnings = suspicious(&list);
        assert_eq!(warnings.len(), 3, "{warnings:?}");
        assert!(warnings[0].contains("write --scans=2"), "{warnings:?}");
        assert!(warnings[1].contains("'-scans=2'"), "{warnings:?}");
        assert!(warnings[2].contains("'a=b=c'"), "{warnings:?}");
    }

    #[test]
    fn free_words_are_positional_and_key_value_words_are_keywords() {
        let parsed = function_args_of(&words(&["1", "--subarray_id=3", "hello", "-2"]))
            .expect("valid arguments");
        assert_eq!(
            parsed.args,
            vec![Value::Int(1), Value::from("hello"), Value::Int(-2)]
        );
        assert_eq!(parsed.kwargs.len(), 1);
        assert_eq!(parsed.kwargs["subarray_id"], Value::Int(3));
    }

    #[test]
    fn values_are_json_when_they_parse_and_strings_otherwise() {
        let parsed = function_args_of(&words(&[
            "--list=[1, 2.5, \"x\"]",
            "--map={\"a\": null}",
            "--flag=true",
            "--name=not json",
            "--eq=a=b",
            "--empty=",
        ]))
        .expect("valid arguments");
        let kw = &parsed.kwargs;
        assert_eq!(
            kw["list"],
            Value::List(vec![Value::Int(1), Value::Float(2.5), Value::from("x")])
        );
        let map = kw["map"].as_map().expect("a map");
        assert_eq!(map["a"], Value::Null);
        assert_eq!(kw["flag"], Value::Bool(true));
        assert_eq!(kw["name"], Value::from("not json"));
        assert_eq!(kw["eq"], Value::from("a=b"), "only the first '=' splits");
        assert_eq!(kw["empty"], Value::from(""));
    }

    #[test]
    fn keyword_words_without_a_value_or_name_are_refused() {
        assert_eq!(
            function_args_of(&words(&["--verbose"])),
            Err(ArgError::MissingValue {
                word: "--verbose".into()
            })
        );
        assert!(matches!(
            function_args_of(&words(&["--=1"])),
            Err(ArgError::EmptyKey { .. })
        ));
        assert_eq!(
            function_args_of(&words(&["--a=1", "--a=2"])),
            Err(ArgError::DuplicateKey { key: "a".into() })
        );
    }

    #[test]
    fn script_args_are_json_per_function() {
        let parsed =
            script_args(r#"{"main": {"kwargs": {"raise_msg": "fail"}}, "init": {"args": [1]}}"#)
                .expect("valid");
        assert_eq!(parsed["main"].kwargs["raise_msg"], Value::from("fail"));
        assert!(parsed["main"].args.is_empty());
        assert_eq!(parsed["init"].args, vec![Value::Int(1)]);
        assert!(script_args("{}").expect("empty").is_empty());
        for (bad, expected) in [
            ("{", "not JSON"),
            ("[1]", "an object of function names"),
            (r#"{"main": 1}"#, "--script-args.main must be an object"),
            (
                r#"{"main": {"args": {}}}"#,
                "--script-args.main.args must be a list",
            ),
            (
                r#"{"main": {"kwarg": {}}}"#,
                "--script-args.main.kwarg must be absent",
            ),
        ] {
            let err = script_args(bad).expect_err(bad).to_string();
            assert!(err.contains(expected), "{bad}: {err}");
        }
    }

    #[test]
    fn file_uris_become_filesystem_scripts() {
        assert_eq!(
            script_spec("file:///opt/scripts/hello.py", GitOptions::default()),
            Ok(ScriptSpec::filesystem("file:///opt/scripts/hello.py"))
        );
    }

    #[test]
    fn git_uris_carry_the_git_flags() {
        let git = GitOptions {
            git_repo: Some("https://example.org/scripts.git".into()),
            git_branch: Some("dev".into()),
            git_commit: None,
            create_env: true,
        };
        assert_eq!(
            script_spec("git://scripts/hello.py", git),
            Ok(ScriptSpec::Git {
                script_uri: "git://scripts/hello.py".into(),
                git_args: GitArgs {
                    git_repo: Some("https://example.org/scripts.git".into()),
                    git_branch: Some("dev".into()),
                    git_commit: None,
                },
                create_env: true,
            })
        );
    }

    #[test]
    fn git_flags_with_a_file_uri_are_refused() {
        let git = GitOptions {
            git_commit: Some("abc123".into()),
            ..GitOptions::default()
        };
        let err = script_spec("file:///x.py", git).expect_err("git flag on a file script");
        assert_eq!(
            err.to_string(),
            "--git_commit only applies to git:// scripts, but the script is 'file:///x.py'"
        );
        let env_only = GitOptions {
            create_env: true,
            ..GitOptions::default()
        };
        assert!(matches!(
            script_spec("file:///x.py", env_only),
            Err(ArgError::GitFlagWithoutGit {
                flag: "--create_env",
                ..
            })
        ));
    }

    #[test]
    fn other_uris_are_refused_with_a_hint_for_plain_paths() {
        let err = script_spec("/opt/hello.py", GitOptions::default()).expect_err("no scheme");
        assert_eq!(
            err.to_string(),
            "script URI '/opt/hello.py' must start with file:// or git:// \
             (did you mean file:///opt/hello.py?)"
        );
        let err = script_spec("http://x/y.py", GitOptions::default()).expect_err("bad scheme");
        assert_eq!(
            err.to_string(),
            "script URI 'http://x/y.py' must start with file:// or git://"
        );
    }
}
