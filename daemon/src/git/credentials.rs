//! Credentials for fetching: what libgit2 is given when a server asks for them. They
//! come, in this order, from the userinfo of the requested URL, from the file
//! `git.credentials_file` names (one `https://user:token@host[/path]` URL per line, the
//! format of `git credential-store`), and, with `git.credential_helpers`, from the
//! credential helpers of git's configuration for oetd's user. Each source is offered
//! once per transfer; when all are used up, the transfer fails with an error saying
//! which were tried. No secret is ever logged or put in an error.

use std::cell::{Cell, RefCell};
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use git2::{Cred, CredentialType};

use super::error::GitError;
use super::url::{Location, Remote, UserInfo};

/// Where credentials may come from besides the URL: `git.credentials_file` and
/// `git.credential_helpers`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Sources {
    pub file: Option<PathBuf>,
    pub helpers: bool,
}

/// The sources, in the order they are offered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Url,
    File,
    Helpers,
}

impl Source {
    const ALL: [Source; 3] = [Source::Url, Source::File, Source::Helpers];

    fn name(self) -> &'static str {
        match self {
            Source::Url => "the repository URL",
            Source::File => "git.credentials_file",
            Source::Helpers => "git's credential helpers",
        }
    }
}

/// One transfer's dealings with the server's requests for credentials.
pub(super) struct Credentials<'a> {
    remote: &'a Remote,
    sources: &'a Sources,
    /// The next source to offer on this connection.
    next: Cell<usize>,
    /// The source offered last on this connection: refused if the server asks again.
    offered: Cell<Option<Source>>,
    /// The sources whose credentials the server refused, in order.
    refused: RefCell<Vec<Source>>,
    /// The server asked, and there was nothing left to offer.
    exhausted: Cell<bool>,
    /// Why `git.credentials_file` could not be read.
    file_problem: RefCell<Option<String>>,
}

impl<'a> Credentials<'a> {
    pub fn new(remote: &'a Remote, sources: &'a Sources) -> Self {
        Credentials {
            remote,
            sources,
            next: Cell::new(0),
            offered: Cell::new(None),
            refused: RefCell::new(Vec::new()),
            exhausted: Cell::new(false),
            file_problem: RefCell::new(None),
        }
    }

    /// Starts over for one more connection: every source may be offered again.
    pub fn restart(&self) {
        self.next.set(0);
        self.offered.set(None);
    }

    /// libgit2's credentials callback: the next source's credentials, or an error once
    /// there are none left. Being asked again means the last ones were refused.
    pub fn provide(&self, allowed: CredentialType) -> Result<Cred, git2::Error> {
        if let Some(refused) = self.offered.take() {
            let mut list = self.refused.borrow_mut();
            if !list.contains(&refused) {
                list.push(refused);
            }
        }
        while let Some(source) = Source::ALL.get(self.next.get()).copied() {
            self.next.set(self.next.get() + 1);
            let found = match source {
                Source::Url => self.remote.userinfo.clone(),
                Source::File => self.in_file(),
                Source::Helpers => self.of_helpers(),
            };
            let Some(userinfo) = found else { continue };
            let cred = if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) {
                Cred::userpass_plaintext(&userinfo.username, &userinfo.password)
            } else if allowed.contains(CredentialType::USERNAME) {
                Cred::username(&userinfo.username)
            } else {
                continue;
            };
            self.offered.set(Some(source));
            return cred;
        }
        self.exhausted.set(true);
        Err(git2::Error::from_str("no more credentials to offer"))
    }

    fn in_file(&self) -> Option<UserInfo> {
        let path = self.sources.file.as_deref()?;
        match read_file(path, &self.remote.url) {
            Ok(found) => found,
            Err(reason) => {
                *self.file_problem.borrow_mut() = Some(reason);
                None
            }
        }
    }

    fn of_helpers(&self) -> Option<UserInfo> {
        if !self.sources.helpers {
            return None;
        }
        let config = git2::Config::open_default().ok()?;
        let username = self.remote.userinfo.as_ref().map(|u| u.username.as_str());
        // The helper is a child process libgit2 waits for itself; oetd, which reaps the
        // children nobody watches (see `crate::children`), leaves them all alone until
        // it has.
        let _helper = crate::children::starting();
        let helper = git2::CredentialHelper::new(&self.remote.url)
            .config(&config)
            .username(username)
            .execute();
        helper.map(|(username, password)| UserInfo { username, password })
    }

    /// The error to report for a failed transfer, if credentials are why: the server
    /// kept asking after every source was used up (the credentials file could not be
    /// read, none was found, or the server refused them).
    pub fn failure(&self) -> Option<GitError> {
        if !self.exhausted.get() {
            return None;
        }
        if let Some(reason) = self.file_problem.borrow().clone() {
            return Some(GitError::CredentialsFile {
                path: self.sources.file.clone().unwrap_or_default(),
                reason,
            });
        }
        let refused = self.refused.borrow();
        let what = if refused.is_empty() {
            let helpers = if self.sources.helpers {
                "git's credential helpers gave none"
            } else {
                "git's credential helpers are not used (git.credential_helpers)"
            };
            let file = match &self.sources.file {
                Some(_) => "git.credentials_file has none for it",
                None => "git.credentials_file is not set",
            };
            format!("none were found: the URL has none, {file}, {helpers}")
        } else {
            let names: Vec<&str> = refused.iter().map(|s| s.name()).collect();
            format!("the server refused those from {}", names.join(", then "))
        };
        Some(GitError::Credentials {
            repo: self.remote.shown.clone(),
            what,
        })
    }
}

/// The credentials `path` holds for `url`: the first line whose URL serves it. The file
/// must not be readable or writable by every user.
fn read_file(path: &Path, url: &str) -> Result<Option<UserInfo>, String> {
    let meta = fs::metadata(path).map_err(|e| e.to_string())?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(format!(
            "every user may read or change it (mode {mode:o}); make it readable by oetd's user \
             alone (chmod 600, or 640 with oetd's group)"
        ));
    }
    let text = fs::read_to_string(path).map_err(|e| e.to_string())?;
    let Some(remote) = Location::of(url) else {
        return Ok(None);
    };
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let entry = Remote::new(line);
        let (Some(userinfo), Some(location)) = (entry.userinfo.as_ref(), Location::of(&entry.url))
        else {
            continue;
        };
        if location.serves(&remote) {
            return Ok(Some(userinfo.clone()));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::super::url::percent_decode;
    use super::*;

    /// `user:password` as a credentials-file line holds them, percent-decoded.
    fn decoded(user: &str, password: &str) -> UserInfo {
        UserInfo {
            username: percent_decode(user),
            password: percent_decode(password),
        }
    }

    fn file(contents: &str, mode: u32) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        fs::write(file.path(), contents).expect("write");
        fs::set_permissions(file.path(), fs::Permissions::from_mode(mode)).expect("chmod");
        file
    }

    #[test]
    fn the_first_line_that_serves_the_url_gives_the_credentials() {
        let creds = file(
            "# tokens for the observatory's repositories\n\n\
             https://a:1@other.example.org\n\
             https://b:2@git.example.org/elsewhere\n\
             https://c:t%2Fk@git.example.org/obs\n\
             https://d:4@git.example.org\n",
            0o600,
        );
        let found = read_file(creds.path(), "https://git.example.org/obs/scripts.git");
        assert_eq!(found, Ok(Some(decoded("c", "t%2Fk"))));
        let found = read_file(creds.path(), "https://git.example.org/x.git");
        assert_eq!(found, Ok(Some(decoded("d", "4"))));
        assert_eq!(
            read_file(creds.path(), "https://nowhere.example.org/x"),
            Ok(None)
        );
    }

    #[test]
    fn a_file_every_user_may_read_is_refused() {
        let creds = file("https://a:1@host\n", 0o644);
        let err = read_file(creds.path(), "https://host/x").expect_err("refused");
        assert!(err.contains("mode 644"), "{err}");
        let missing = read_file(Path::new("/nonexistent/creds"), "https://host/x");
        assert!(missing.is_err());
    }

    #[test]
    fn each_source_is_offered_once_and_the_failure_names_them() {
        let creds = file("https://file-user:file-token@host\n", 0o600);
        let sources = Sources {
            file: Some(creds.path().to_owned()),
            helpers: false,
        };
        let remote = Remote::new("https://url-user:url-token@host/r.git");
        let credentials = Credentials::new(&remote, &sources);
        assert!(credentials.failure().is_none(), "not asked yet");
        let allowed = CredentialType::USER_PASS_PLAINTEXT;
        assert!(credentials.provide(allowed).is_ok());
        assert!(credentials.provide(allowed).is_ok());
        assert!(
            credentials.failure().is_none(),
            "the file's may yet be accepted"
        );
        // A new connection offers them again; being asked once more refuses the last.
        credentials.restart();
        assert!(credentials.provide(allowed).is_ok());
        assert!(credentials.provide(allowed).is_ok());
        assert!(credentials.provide(allowed).is_err());
        let failure = credentials.failure().expect("a failure").to_string();
        assert!(
            failure.contains("refused those from the repository URL, then git.credentials_file"),
            "{failure}"
        );
        assert!(!failure.contains("url-token") && !failure.contains("file-token"));

        let bare = Remote::new("https://host/r.git");
        let none = Sources::default();
        let credentials = Credentials::new(&bare, &none);
        assert!(credentials.provide(allowed).is_err());
        let failure = credentials.failure().expect("a failure").to_string();
        assert!(failure.contains("none were found"), "{failure}");
    }
}
