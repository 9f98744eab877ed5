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
    #[error("'{word}' has an empty keyword name: write keyword arguments as --key=value")]
    EmptyKey { word: String },
    #[error("keyword argument '{key}' is given twice")]
    DuplicateKey { key: String },
    #[error("script URI '{uri}' must start with file:// or git://{hint}")]
    UnknownScheme { uri: String, hint: String },
    #[error("{flag} only applies to git:// scripts, but the script is '{uri}'")]
    GitFlagWithoutGit { flag: &'static str, uri: String },
}

/// Splits the free words after a command into positional and keyword arguments.
///
/// `--key=value` is a keyword argument, anything else (including negative numbers such
/// as `-3`) is positional; order between the two kinds does not matter. Each value goes
/// through [`Value::parse_cli`].
pub fn function_args(words: &[String]) -> Result<FunctionArgs, ArgError> {
    let mut args = Vec::new();
    let mut kwargs = BTreeMap::new();
    for word in words {
        let Some(flag) = word.strip_prefix("--") else {
            args.push(Value::parse_cli(word));
            continue;
        };
        let Some((key, value)) = flag.split_once('=') else {
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

    #[test]
    fn free_words_are_positional_and_key_value_words_are_keywords() {
        let parsed = function_args(&words(&["1", "--subarray_id=3", "hello", "-2"]))
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
        let parsed = function_args(&words(&[
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
            function_args(&words(&["--verbose"])),
            Err(ArgError::MissingValue {
                word: "--verbose".into()
            })
        );
        assert!(matches!(
            function_args(&words(&["--=1"])),
            Err(ArgError::EmptyKey { .. })
        ));
        assert_eq!(
            function_args(&words(&["--a=1", "--a=2"])),
            Err(ArgError::DuplicateKey { key: "a".into() })
        );
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
