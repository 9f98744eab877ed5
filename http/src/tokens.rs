//! Bearer tokens: the file that maps each token to a role, and the lookup of a caller's
//! token. The file is refused when others may read it; tokens are compared in constant
//! time, so that response times tell nothing about them.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use oet_protocol::Role;

/// Shortest token accepted: shorter ones are guessable.
pub const MIN_TOKEN_LEN: usize = 16;

/// The tokens of a tokens file.
#[derive(Debug, Clone, PartialEq)]
pub struct Tokens {
    entries: Vec<(Vec<u8>, Role)>,
}

/// Why a tokens file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read tokens file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "tokens file {} is open to others (mode {mode:04o}): make it readable by its owner \
         and group only, e.g. chmod 0640",
        path.display()
    )]
    Exposed { path: PathBuf, mode: u32 },
    #[error("tokens file {}, line {line}: {problem}", path.display())]
    Line {
        path: PathBuf,
        line: usize,
        problem: String,
    },
    #[error("tokens file {} names no token: with it, nobody could use the API", path.display())]
    Empty { path: PathBuf },
}

impl Tokens {
    /// Reads a tokens file, refusing one that others may read or write.
    pub fn load(path: &Path) -> Result<Tokens, TokenError> {
        let read_error = |source| TokenError::Read {
            path: path.to_owned(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read_error)?;
        let mode = meta.mode() & 0o7777;
        if mode & 0o027 != 0 {
            return Err(TokenError::Exposed {
                path: path.to_owned(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_error)?;
        Tokens::parse(&text).map_err(|(line, problem)| match line {
            0 => TokenError::Empty {
                path: path.to_owned(),
            },
            line => TokenError::Line {
                path: path.to_owned(),
                line,
                problem,
            },
        })
    }

    /// Parses `TOKEN ROLE` lines; the error gives the line (0: no token at all) and the
    /// problem.
    pub fn parse(text: &str) -> Result<Tokens, (usize, String)> {
        let mut entries: Vec<(Vec<u8>, Role)> = Vec::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [token, role] = fields[..] else {
                return Err((
                    number,
                    "expected a token and a role (read or operate), separated by a space".into(),
                ));
            };
            let role = match role {
                "read" => Role::Read,
                "operate" => Role::Operate,
                other => {
                    return Err((
                        number,
                        format!("unknown role {other:?}: a token's role is read or operate"),
                    ))
                }
            };
            if token.len() < MIN_TOKEN_LEN || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err((
                    number,
                    format!(
                        "a token must have at least {MIN_TOKEN_LEN} visible ASCII characters \
                         (e.g. from `openssl rand -hex 32`)"
                    ),
                ));
            }
            if entries.iter().any(|(known, _)| known == token.as_bytes()) {
                return Err((number, "this token is given twice".into()));
            }
            entries.push((token.as_bytes().to_vec(), role));
        }
        if entries.is_empty() {
            return Err((0, "no token".into()));
        }
        Ok(Tokens { entries })
    }

    /// The role of `token`, if it is one of ours. Every known token is compared in full.
    pub fn role_of(&self, token: &[u8]) -> Option<Role> {
        let mut found = None;
        for (known, role) in &self.entries {
            if constant_time_eq(known, token) {
                found = Some(*role);
            }
        }
        found
    }
}

/// Whether `a` equals `b`, taking a time that depends on their lengths only.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const READ: &str = "0123456789abcdef-read";
    const OPERATE: &str = "0123456789abcdef-operate";

    #[test]
    fn each_token_has_its_role() {
        let tokens = Tokens::parse(&format!(
            "# who may do what\n{READ} read\n\n  {OPERATE}  operate\n"
        ))
        .expect("parses");
        assert_eq!(tokens.role_of(READ.as_bytes()), Some(Role::Read));
        assert_eq!(tokens.role_of(OPERATE.as_bytes()), Some(Role::Operate));
        assert_eq!(tokens.role_of(b"0123456789abcdef-reax"), None);
        assert_eq!(tokens.role_of(b""), None);
    }

    #[test]
    fn bad_lines_are_named() {
        for (text, line, needle) in [
            (format!("{READ} admin"), 1, "unknown role"),
            (format!("# c\n{READ}"), 2, "expected a token and a role"),
            ("short read".to_owned(), 1, "at least 16"),
            (format!("{READ} read\n{READ} operate"), 2, "twice"),
            ("# nothing\n".to_owned(), 0, "no token"),
        ] {
            let (at, problem) = Tokens::parse(&text).expect_err(&text);
            assert_eq!(at, line, "{text}: {problem}");
            assert!(problem.contains(needle), "{text}: {problem}");
        }
    }

    #[test]
    fn a_file_others_may_read_is_refused() {
        let dir = tempfile_dir();
        let path = dir.join("tokens");
        std::fs::write(&path, format!("{OPERATE} operate\n")).expect("write");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let err = Tokens::load(&path).expect_err("world-readable");
        assert!(err.to_string().contains("mode 0644"), "{err}");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).expect("chmod");
        assert!(Tokens::load(&path).is_ok());
        std::fs::remove_dir_all(dir).expect("clean up");
    }

    fn tempfile_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "oet-http-tokens-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        dir
    }
}
