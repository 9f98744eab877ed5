//! Repository policy: what a checkout request means and whether it may be served. A
//! repository is a URL, kept as given but for the credentials it may carry (split off,
//! see `url`), or an absolute local path, canonicalized so that one repository always
//! has one name; `git.allowed_repos` (which a configuration reload may replace) says
//! which repositories may be used; a commit id must look like one; `git.default_repo`
//! and `git.default_branch` fill in what a request leaves out.

use std::path::Path;
use std::sync::{PoisonError, RwLock};

use super::config::GitConfig;
use super::error::GitError;
use super::url::{redact_url, Remote};

/// A checkout request the policy has accepted.
pub(super) struct Request {
    /// The repository, normalized: a URL, or a canonical absolute path.
    pub remote: Remote,
    /// The branch asked for; without a commit, `git.default_branch` when none was.
    pub branch: Option<String>,
    /// The commit asked for: 4 to 40 hexadecimal digits.
    pub commit: Option<String>,
}

/// The configured rules for checkout requests.
pub(super) struct Policy {
    default_repo: Option<String>,
    default_branch: Option<String>,
    /// `git.allowed_repos`, which a configuration reload may change.
    allowed: RwLock<Vec<String>>,
}

impl Policy {
    pub fn new(config: &GitConfig) -> Policy {
        Policy {
            default_repo: config.default_repo.clone(),
            default_branch: config.default_branch.clone(),
            allowed: RwLock::new(config.allowed_repos.clone()),
        }
    }

    /// Replaces `git.allowed_repos`.
    pub fn set_allowed_repos(&self, patterns: Vec<String>) {
        *self.allowed.write().unwrap_or_else(PoisonError::into_inner) = patterns;
    }

    /// Checks a request for `repo` (default `git.default_repo`) at `branch` or `commit`
    /// and fills in the defaults.
    pub async fn admit(
        &self,
        repo: Option<&str>,
        branch: Option<&str>,
        commit: Option<&str>,
    ) -> Result<Request, GitError> {
        let repo = repo
            .or(self.default_repo.as_deref())
            .ok_or(GitError::NoRepo)?;
        let remote = Remote::new(&normalize_repo(repo).await?);
        {
            let allowed = self.allowed.read().unwrap_or_else(PoisonError::into_inner);
            if !allowed.is_empty() && !allowed.iter().any(|p| glob_match(p, &remote.url)) {
                return Err(GitError::NotAllowed {
                    repo: remote.shown.clone(),
                });
            }
        }
        if let Some(commit) = commit {
            let valid =
                (4..=40).contains(&commit.len()) && commit.bytes().all(|b| b.is_ascii_hexdigit());
            if !valid {
                return Err(GitError::InvalidCommit {
                    commit: commit.to_owned(),
                });
            }
        }
        let branch = branch.map(str::to_owned).or_else(|| {
            commit
                .is_none()
                .then(|| self.default_branch.clone())
                .flatten()
        });
        Ok(Request {
            remote,
            branch,
            commit: commit.map(str::to_owned),
        })
    }
}

/// A URL stays as given; a local path must be absolute and is canonicalized, so the
/// same repository always gets the same cache key.
async fn normalize_repo(repo: &str) -> Result<String, GitError> {
    let repo = repo.trim();
    let scp_like = match (repo.find(':'), repo.find('/')) {
        (Some(colon), Some(slash)) => colon < slash,
        (Some(_), None) => true,
        _ => false,
    };
    if repo.contains("://") || scp_like {
        return Ok(repo.trim_end_matches('/').to_owned());
    }
    if !Path::new(repo).is_absolute() {
        return Err(GitError::RelativePath {
            repo: redact_url(repo),
        });
    }
    let path = tokio::fs::canonicalize(repo)
        .await
        .map_err(|e| GitError::Unreachable {
            repo: redact_url(repo),
            reason: e.to_string(),
        })?;
    path.into_os_string()
        .into_string()
        .map_err(|_| GitError::Unreachable {
            repo: redact_url(repo),
            reason: "the path is not valid UTF-8".to_owned(),
        })
}

/// `*` matches any run of characters; everything else matches itself.
fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_patterns() {
        assert!(glob_match(
            "https://gitlab.com/ska/*",
            "https://gitlab.com/ska/oet.git"
        ));
        assert!(glob_match("*", "/srv/repo"));
        assert!(glob_match("/srv/*/scripts", "/srv/a/b/scripts"));
        assert!(glob_match("/srv/repo", "/srv/repo"));
        assert!(!glob_match("/srv/repo", "/srv/repo2"));
        assert!(!glob_match(
            "https://gitlab.com/ska/*",
            "https://github.com/ska/x"
        ));
        assert!(glob_match("a*b*c", "aXbYbZc"));
        assert!(!glob_match("a*b*c", "aXbYbZ"));
    }
}
