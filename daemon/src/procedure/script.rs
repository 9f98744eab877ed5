//! Script URIs, parsed once into what the daemon can run.

use std::path::PathBuf;

use oet_protocol::{GitArgs, ScriptSpec};

/// A script the daemon knows how to find.
#[derive(Debug, Clone, PartialEq)]
pub enum Script {
    /// An absolute path on this host.
    File(PathBuf),
    /// A path inside a git repository, resolved when the procedure is prepared.
    Git {
        uri: String,
        args: GitArgs,
        create_env: bool,
    },
}

/// A script URI that does not fit its kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScriptError {
    #[error("filesystem script URI '{0}' must start with file://")]
    NotFileUri(String),
    #[error("filesystem script URI '{0}' must name an absolute path (file:///path/to/script.py)")]
    RelativeFile(String),
    #[error("git script URI '{0}' must start with git://")]
    NotGitUri(String),
    #[error("git script URI '{0}' names no file")]
    EmptyGitPath(String),
    #[error("script {uri} cannot be used: {reason}")]
    Unresolvable { uri: String, reason: String },
    #[error("script {uri} is {resolved}, outside the directories procedures.allowed_roots allows ({roots})")]
    OutsideRoots {
        uri: String,
        resolved: String,
        roots: String,
    },
    #[error("script {path} cannot be used on this host: {reason}")]
    Unusable { path: String, reason: String },
    #[error("script {0} is not a file")]
    NotAFile(String),
}

/// Checks that a filesystem script is a file this host has.
pub async fn check_file(path: &std::path::Path) -> Result<(), ScriptError> {
    match tokio::fs::metadata(path).await {
        Ok(meta) if meta.is_file() => Ok(()),
        Ok(_) => Err(ScriptError::NotAFile(path.display().to_string())),
        Err(err) => Err(ScriptError::Unusable {
            path: path.display().to_string(),
            reason: err.to_string(),
        }),
    }
}

/// Checks a script spec's URI against its kind.
pub fn parse(spec: &ScriptSpec) -> Result<Script, ScriptError> {
    match spec {
        ScriptSpec::Filesystem { script_uri } => {
            let path = script_uri
                .strip_prefix("file://")
                .ok_or_else(|| ScriptError::NotFileUri(script_uri.clone()))?;
            if !path.starts_with('/') {
                return Err(ScriptError::RelativeFile(script_uri.clone()));
            }
            Ok(Script::File(PathBuf::from(path)))
        }
        ScriptSpec::Git {
            script_uri,
            git_args,
            create_env,
        } => {
            let path = script_uri
                .strip_prefix("git://")
                .ok_or_else(|| ScriptError::NotGitUri(script_uri.clone()))?;
            if path.is_empty() {
                return Err(ScriptError::EmptyGitPath(script_uri.clone()));
            }
            Ok(Script::Git {
                uri: script_uri.clone(),
                args: git_args.clone(),
                create_env: *create_env,
            })
        }
    }
}

/// Checks a filesystem script against `procedures.allowed_roots`: with roots given, the
/// script, resolved through symbolic links, must be a regular file below one of them
/// (themselves resolved). Returns the path to run: the resolved one, so that the file
/// checked is the file run. Without roots, the path as given.
pub fn check_roots(script: Script, roots: &[String]) -> Result<Script, ScriptError> {
    let Script::File(path) = script else {
        return Ok(script);
    };
    if roots.is_empty() {
        return Ok(Script::File(path));
    }
    let uri = format!("file://{}", path.display());
    let resolved = std::fs::canonicalize(&path).map_err(|err| ScriptError::Unresolvable {
        uri: uri.clone(),
        reason: err.to_string(),
    })?;
    if !resolved.is_file() {
        return Err(ScriptError::Unresolvable {
            uri,
            reason: format!("{} is not a regular file", resolved.display()),
        });
    }
    let inside = roots
        .iter()
        .filter_map(|root| std::fs::canonicalize(root).ok())
        .any(|root| resolved.starts_with(root));
    if !inside {
        return Err(ScriptError::OutsideRoots {
            uri,
            resolved: resolved.display().to_string(),
            roots: roots.join(", "),
        });
    }
    Ok(Script::File(resolved))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_uris_need_the_prefix_and_an_absolute_path() {
        assert_eq!(
            parse(&ScriptSpec::filesystem("file:///tmp/a.py")).expect("valid"),
            Script::File(PathBuf::from("/tmp/a.py"))
        );
        assert!(parse(&ScriptSpec::filesystem("/tmp/a.py")).is_err());
        assert!(parse(&ScriptSpec::filesystem("git://a.py")).is_err());
        assert!(parse(&ScriptSpec::filesystem("file://relative.py")).is_err());
    }

    #[test]
    fn scripts_outside_the_allowed_roots_are_refused_after_resolving_links() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path().join("scripts");
        std::fs::create_dir(&root).expect("mkdir");
        let inside = root.join("ok.py");
        std::fs::write(&inside, "").expect("write");
        let outside = dir.path().join("secret");
        std::fs::write(&outside, "").expect("write");
        let link = root.join("link.py");
        std::os::unix::fs::symlink(&outside, &link).expect("symlink");
        let roots = [root.display().to_string()];
        let canonical = std::fs::canonicalize(&inside).expect("canonical");

        assert_eq!(
            check_roots(Script::File(inside.clone()), &roots),
            Ok(Script::File(canonical))
        );
        let err = check_roots(Script::File(link), &roots).unwrap_err();
        assert!(matches!(err, ScriptError::OutsideRoots { .. }), "{err}");
        assert!(err.to_string().contains("secret"), "{err}");
        let err = check_roots(Script::File(root.join("missing.py")), &roots).unwrap_err();
        assert!(matches!(err, ScriptError::Unresolvable { .. }), "{err}");
        assert_eq!(
            check_roots(Script::File(outside.clone()), &[]),
            Ok(Script::File(outside))
        );
    }

    #[test]
    fn git_uris_need_their_prefix() {
        let git = |uri: &str| ScriptSpec::Git {
            script_uri: uri.into(),
            git_args: Default::default(),
            create_env: false,
        };
        assert!(parse(&git("git://scripts/a.py")).is_ok());
        assert!(parse(&git("file:///a.py")).is_err());
        assert!(parse(&git("git://")).is_err());
    }
}
