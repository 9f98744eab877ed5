//! Repository URLs and the secrets they may carry. A URL such as
//! `https://user:token@host/group/repo.git` holds credentials in its userinfo: they are
//! split off once, when a request is admitted, and handed to libgit2 only when the
//! server asks for them (see `credentials`). Everywhere a repository is shown — errors,
//! logs and journal fields, `describe` and summaries, events, audit records — it is shown
//! redacted (`https://***@host/group/repo.git`), by [`redact_url`], [`redact_text`] or
//! [`Redacted`].

use std::fmt;

/// What replaces a URL's userinfo when the URL is shown.
const HIDDEN: &str = "***";

/// `url` as it may be shown: any userinfo (user, password or token) replaced by `***`.
/// Strings that are not URLs with userinfo (local paths, `host:path`) are unchanged.
pub fn redact_url(url: &str) -> String {
    redact_text(url)
}

/// `text` with the userinfo of every URL in it replaced by `***`: for messages that
/// may quote a URL (a library's error, a command's output).
pub fn redact_text(text: &str) -> String {
    let mut shown = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let authority_start = at + 3;
        shown.push_str(&rest[..authority_start]);
        rest = &rest[authority_start..];
        let authority_end = rest.find(ends_authority).unwrap_or(rest.len());
        if let Some(userinfo_end) = rest[..authority_end].rfind('@') {
            shown.push_str(HIDDEN);
            rest = &rest[userinfo_end..];
        }
    }
    shown.push_str(rest);
    shown
}

/// Where the authority part of a URL (`user:password@host:port`) ends, in free text.
fn ends_authority(c: char) -> bool {
    matches!(c, '/' | '?' | '#' | '\'' | '"' | '<' | '>' | '`') || c.is_whitespace()
}

/// Shows a URL (or a text quoting URLs) with its userinfo redacted, for log records and
/// messages: `tracing::info!("fetching {}", Redacted(url))`.
#[derive(Clone, Copy)]
pub struct Redacted<'a>(pub &'a str);

impl fmt::Display for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&redact_text(self.0))
    }
}

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&redact_text(self.0), f)
    }
}

/// Credentials a repository URL carried in its userinfo, percent-decoded.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct UserInfo {
    pub username: String,
    /// Empty when the URL gave a user (or a token as the user) and no password.
    pub password: String,
}

impl fmt::Debug for UserInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UserInfo(***)")
    }
}

/// A repository as the cache uses it, with its secrets kept apart.
#[derive(Clone, PartialEq, Eq)]
pub(super) struct Remote {
    /// The repository as libgit2 is given it: a URL without userinfo, or a canonical
    /// local path. It names the repository in the cache and is matched against
    /// `git.allowed_repos`, so one repository is one entry whoever's token fetched it.
    pub url: String,
    /// How the repository is shown: the URL as requested, userinfo redacted.
    pub shown: String,
    /// The userinfo the requested URL carried.
    pub userinfo: Option<UserInfo>,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl Remote {
    /// Splits the userinfo off a normalized repository (a URL, or a local path).
    pub fn new(repo: &str) -> Remote {
        let Some((scheme, rest)) = repo.split_once("://") else {
            return Remote {
                url: repo.to_owned(),
                shown: repo.to_owned(),
                userinfo: None,
            };
        };
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let Some(at) = rest[..authority_end].rfind('@') else {
            return Remote {
                url: repo.to_owned(),
                shown: repo.to_owned(),
                userinfo: None,
            };
        };
        let (user, password) = match rest[..at].split_once(':') {
            Some((user, password)) => (user, password),
            None => (&rest[..at], ""),
        };
        let host_and_path = &rest[at + 1..];
        Remote {
            url: format!("{scheme}://{host_and_path}"),
            shown: format!("{scheme}://{HIDDEN}@{host_and_path}"),
            userinfo: Some(UserInfo {
                username: percent_decode(user),
                password: percent_decode(password),
            }),
        }
    }
}

/// The parts of a URL that say where it points: for matching credentials to a remote.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Location<'a> {
    pub scheme: &'a str,
    /// Host and port, as written (compared without regard to case).
    pub host: &'a str,
    /// The path without its trailing `/`, from its leading `/` (empty for none).
    pub path: &'a str,
}

impl<'a> Location<'a> {
    /// The location of a URL without userinfo; `None` for what is not a URL.
    pub fn of(url: &'a str) -> Option<Location<'a>> {
        let (scheme, rest) = url.split_once("://")?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let host = &rest[..end];
        let path = rest[end..].split(['?', '#']).next().unwrap_or("");
        Some(Location {
            scheme,
            host,
            path: path.trim_end_matches('/'),
        })
    }

    /// Whether credentials for `self` (a location as a credentials file names it) serve
    /// `remote`: same scheme and host, and `self`'s path, if it has one, is the remote's
    /// path or a folder above it.
    pub fn serves(&self, remote: &Location<'_>) -> bool {
        let path_matches = self.path.is_empty()
            || remote.path == self.path
            || remote
                .path
                .strip_prefix(self.path)
                .is_some_and(|rest| rest.starts_with('/'));
        self.scheme.eq_ignore_ascii_case(remote.scheme)
            && self.host.eq_ignore_ascii_case(remote.host)
            && path_matches
    }
}

/// `%XX` escapes decoded (userinfo may escape `@`, `:` and `/`); a malformed escape is
/// kept as written.
pub(super) fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(hi), Some(lo)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_is_redacted_wherever_a_url_is_shown() {
        assert_eq!(
            redact_url("https://user:s3cret@gitlab.example.org/obs/scripts.git"),
            "https://***@gitlab.example.org/obs/scripts.git"
        );
        assert_eq!(
            redact_url("https://glpat-TOKEN@host:8443/x"),
            "https://***@host:8443/x"
        );
        assert_eq!(redact_url("https://host/x@y"), "https://host/x@y");
        assert_eq!(redact_url("/srv/repos/scripts"), "/srv/repos/scripts");
        assert_eq!(redact_url("git@host:group/x.git"), "git@host:group/x.git");
        assert_eq!(
            redact_text(
                "fetching from 'http://a:b@h/r' failed; see http://c@d:1/e?x=y and ftp://h/p"
            ),
            "fetching from 'http://***@h/r' failed; see http://***@d:1/e?x=y and ftp://h/p"
        );
        // A password holding '@' (raw) is still hidden whole.
        assert_eq!(redact_url("https://u:p@ss@host/r"), "https://***@host/r");
        assert_eq!(
            redact_url(&redact_url("https://u:p@h/r")),
            "https://***@h/r"
        );
        assert_eq!(Redacted("https://u:p@h/r").to_string(), "https://***@h/r");
    }

    #[test]
    fn a_remote_keeps_its_credentials_apart_from_its_url() {
        let remote = Remote::new("https://oet:t%40ken@git.example.org/obs/scripts.git");
        assert_eq!(remote.url, "https://git.example.org/obs/scripts.git");
        assert_eq!(remote.shown, "https://***@git.example.org/obs/scripts.git");
        let userinfo = remote.userinfo.clone().expect("userinfo");
        assert_eq!(userinfo.username, "oet");
        assert_eq!(userinfo.password, "t@ken");
        assert!(!format!("{remote:?} {userinfo:?}").contains("ken"));

        let token_only = Remote::new("https://TOKEN@host/r");
        let userinfo = token_only.userinfo.expect("userinfo");
        assert_eq!(
            (userinfo.username.as_str(), userinfo.password.as_str()),
            ("TOKEN", "")
        );

        let plain = Remote::new("/srv/repo");
        assert_eq!(
            (plain.url.as_str(), plain.shown.as_str()),
            ("/srv/repo", "/srv/repo")
        );
        assert!(plain.userinfo.is_none());
    }

    #[test]
    fn credentials_serve_their_host_and_the_paths_below_theirs() {
        let remote = Location::of("https://git.example.org/obs/scripts.git").expect("url");
        let serves = |entry: &str| Location::of(entry).expect("url").serves(&remote);
        assert!(serves("https://git.example.org"));
        assert!(serves("https://GIT.example.org/"));
        assert!(serves("https://git.example.org/obs"));
        assert!(serves("https://git.example.org/obs/scripts.git"));
        assert!(!serves("https://git.example.org/ob"));
        assert!(!serves("http://git.example.org"));
        assert!(!serves("https://git.example.org:8443"));
        assert!(!serves("https://other.example.org"));
        assert_eq!(percent_decode("a%2Fb%zz%4"), "a/b%zz%4");
    }
}
