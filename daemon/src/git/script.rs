//! `git://` script URIs: from a path relative to the repository root to a file inside
//! a checkout, refusing anything that would leave the checkout.

use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};

use super::cache::Checkout;
use super::error::GitError;

/// The file that `script_uri` (`git://relative/path/in/repo.py`) names in `checkout`.
///
/// Absolute paths, `..` components and symbolic links that lead out of the checkout
/// are refused; the result is canonical and is a regular file inside the checkout.
pub fn script_path(checkout: &Checkout, script_uri: &str) -> Result<PathBuf, GitError> {
    let relative = script_uri
        .strip_prefix("git://")
        .ok_or_else(|| GitError::NotGitUri {
            uri: script_uri.to_owned(),
        })?;
    let relative = Path::new(relative);
    if relative.is_absolute() {
        return Err(GitError::AbsoluteScriptPath {
            uri: script_uri.to_owned(),
        });
    }
    if relative
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(GitError::ScriptEscapes {
            uri: script_uri.to_owned(),
        });
    }
    let not_found = || GitError::ScriptNotFound {
        path: relative.display().to_string(),
        repo: checkout.repo().to_owned(),
        commit: checkout.commit().to_owned(),
    };
    if relative.as_os_str().is_empty() {
        return Err(not_found());
    }

    let root = checkout
        .dir()
        .canonicalize()
        .map_err(|e| GitError::cache(checkout.dir(), e))?;
    let joined = root.join(relative);
    let path = match joined.canonicalize() {
        Ok(path) => path,
        Err(e) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
            // Say "escapes" rather than "missing" when the part that exists leads out.
            let leads_out = joined
                .ancestors()
                .find_map(|ancestor| ancestor.canonicalize().ok())
                .is_some_and(|existing| !existing.starts_with(&root));
            return Err(if leads_out {
                GitError::ScriptEscapes {
                    uri: script_uri.to_owned(),
                }
            } else {
                not_found()
            });
        }
        Err(e) => return Err(GitError::cache(checkout.dir(), e)),
    };
    if !path.starts_with(&root) {
        return Err(GitError::ScriptEscapes {
            uri: script_uri.to_owned(),
        });
    }
    // The repository's own metadata is not part of its content.
    if path.starts_with(root.join(".git")) {
        return Err(not_found());
    }
    if !path.is_file() {
        return Err(GitError::ScriptNotAFile {
            path: relative.display().to_string(),
            repo: checkout.repo().to_owned(),
            commit: checkout.commit().to_owned(),
        });
    }
    Ok(path)
}
