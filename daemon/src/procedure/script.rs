//! Script URIs, parsed once into what the daemon can run.

use std::path::PathBuf;

use oet_protocol::{ProtocolError, ScriptSpec};

/// A script the daemon knows how to find.
#[derive(Debug, Clone, PartialEq)]
pub enum Script {
    /// An absolute path on this host.
    File(PathBuf),
    /// A path inside a git repository, resolved when the procedure is prepared.
    Git { path: String },
}

/// Checks a script spec's URI against its kind.
pub fn parse(spec: &ScriptSpec) -> Result<Script, ProtocolError> {
    match spec {
        ScriptSpec::Filesystem { script_uri } => {
            let path = script_uri.strip_prefix("file://").ok_or_else(|| {
                ProtocolError::invalid_request(format!(
                    "filesystem script URI '{script_uri}' must start with file://"
                ))
            })?;
            if !path.starts_with('/') {
                return Err(ProtocolError::invalid_request(format!(
                    "filesystem script URI '{script_uri}' must name an absolute path (file:///path/to/script.py)"
                )));
            }
            Ok(Script::File(PathBuf::from(path)))
        }
        ScriptSpec::Git { script_uri, .. } => {
            let path = script_uri.strip_prefix("git://").ok_or_else(|| {
                ProtocolError::invalid_request(format!(
                    "git script URI '{script_uri}' must start with git://"
                ))
            })?;
            if path.is_empty() {
                return Err(ProtocolError::invalid_request(format!(
                    "git script URI '{script_uri}' names no file"
                )));
            }
            Ok(Script::Git {
                path: path.to_owned(),
            })
        }
    }
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
