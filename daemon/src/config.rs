//! The daemon's configuration: one TOML file, every key optional, embedded defaults for
//! everything. Unknown keys and wrong types are errors that name the key and the line.
//!
//! Each section belongs to the module it configures (`server`, `procedure`, `events`,
//! `activity::oda`, `git`, `python`, `store`); this module puts them together, checks them
//! without opening anything, and resolves the paths whose defaults depend on the
//! environment. Keys that moved to another section keep working under their old names,
//! with a warning naming the new one.

use std::path::{Path, PathBuf};

use oet_protocol::paths::systemd_directory;
use serde::{Deserialize, Serialize};

use crate::activity::oda::OdaConfig;
use crate::events::EventConfig;
use crate::git::GitConfig;
use crate::procedure::ProcedureConfig;
use crate::python::PythonConfig;
use crate::server::{AccessConfig, ServerConfig};
use crate::store::StoreConfig;

/// Everything `oetd` can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub access: AccessConfig,
    pub procedures: ProcedureConfig,
    pub events: EventConfig,
    pub paths: PathConfig,
    pub log: LogConfig,
    pub oda: OdaConfig,
    pub git: GitConfig,
    pub python: PythonConfig,
    pub store: StoreConfig,
    /// One warning per deprecated key the file used (see [`Config::deprecations`]).
    #[serde(skip)]
    deprecations: Vec<String>,
}

/// Where the daemon keeps its files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PathConfig {
    /// State directory (worker harness, the durable store, SBD files). Empty: `$STATE_DIRECTORY`, then
    /// `/var/lib/oet` for root, else `$XDG_STATE_HOME/oet`, `~/.local/state/oet` or
    /// `/tmp/oetd-<uid>/state`.
    pub state_dir: String,
}

/// Logging.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `error`, `warn`, `info`, `debug` or `trace`, or a tracing filter directive.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
        }
    }
}

/// What a configuration reload found changed.
#[derive(Debug, Default, PartialEq)]
pub struct ConfigChanges {
    /// Keys or sections whose new values take effect at once.
    pub live: Vec<String>,
    /// Keys or sections whose new values need a restart of oetd.
    pub restart: Vec<String>,
}

/// The largest configuration file read.
pub const MAX_FILE_BYTES: u64 = 1024 * 1024;

/// A configuration that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("configuration file {} is not a regular file ({kind}); give the path of a file", path.display())]
    NotRegular { path: PathBuf, kind: &'static str },
    #[error("configuration file {} is larger than {MAX_FILE_BYTES} bytes; is it the right file?", path.display())]
    TooLarge { path: PathBuf },
    #[error("invalid configuration file {}: {problem}", path.display())]
    File { path: PathBuf, problem: Problem },
}

/// What is wrong with a configuration's text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Problem {
    /// Not TOML, an unknown key, or a wrong type.
    #[error("line {line} (`{snippet}`): {message}")]
    Syntax {
        line: usize,
        snippet: String,
        message: String,
    },
    #[error("{0}")]
    Unplaced(String),
    /// A value out of its range; the text names the key.
    #[error("{0}")]
    Value(String),
}

impl Config {
    /// Reads and checks a configuration file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = read_bounded(path)?;
        Config::parse(&text).map_err(|problem| ConfigError::File {
            path: path.to_owned(),
            problem,
        })
    }

    /// Parses and checks configuration text; the error names the offending key and line.
    pub fn parse(text: &str) -> Result<Config, Problem> {
        let mut config: Config = toml::from_str(text).map_err(|e| describe_toml_error(text, &e))?;
        config.adopt_moved_keys(text)?;
        config.validate().map_err(Problem::Value)?;
        Ok(config)
    }

    /// What the file said in a way that is deprecated, one warning each, to be logged.
    pub fn deprecations(&self) -> &[String] {
        &self.deprecations
    }

    /// Moves the `[python]` keys that older files set in `[git]` to `[python]`, noting a
    /// deprecation for each. A key given under both names must have one value.
    fn adopt_moved_keys(&mut self, text: &str) -> Result<(), Problem> {
        // Which keys of [python] the file wrote, rather than left to their defaults.
        let table: toml::Table = toml::from_str(text).map_err(|e| describe_toml_error(text, &e))?;
        let mut moved = MovedKeys {
            written: table.get("python").and_then(toml::Value::as_table),
            notes: Vec::new(),
        };
        let (git, python) = (&mut self.git, &mut self.python);
        let env_dir = git.moved_env_dir.take().map(Some);
        moved.adopt(env_dir, "env_dir", &mut python.env_dir, "env_dir")?;
        let wait = git.moved_env_wait_secs.take();
        moved.adopt(
            wait,
            "env_wait_secs",
            &mut python.env_wait_secs,
            "env_wait_secs",
        )?;
        let interpreter = git.moved_python.take();
        moved.adopt(
            interpreter,
            "python",
            &mut python.interpreter,
            "interpreter",
        )?;
        let own_pip = git.moved_env_own_pip.take();
        moved.adopt(own_pip, "env_own_pip", &mut python.own_pip, "own_pip")?;
        let index = git.moved_pip_index_url.take().map(Some);
        moved.adopt(
            index,
            "pip_index_url",
            &mut python.pip_index_url,
            "pip_index_url",
        )?;
        let extra = git.moved_pip_extra_args.take();
        moved.adopt(
            extra,
            "pip_extra_args",
            &mut python.pip_extra_args,
            "pip_extra_args",
        )?;
        self.deprecations = moved.notes;
        Ok(())
    }

    /// Checks every section, opening nothing.
    fn validate(&self) -> Result<(), String> {
        self.procedures.validate()?;
        self.server.validate()?;
        self.access.validate()?;
        self.events.validate()?;
        self.oda.validate()?;
        self.git.validate()?;
        self.python.validate()?;
        self.store.validate()?;
        Ok(())
    }

    /// This configuration with the paths whose defaults depend on the environment
    /// resolved to the ones in effect, for showing.
    pub fn in_effect(&self) -> Config {
        let mut shown = self.clone();
        shown.server.socket = self.socket_path().display().to_string();
        shown.paths.state_dir = self.state_dir().display().to_string();
        shown
    }

    /// The control socket path, resolving the empty default.
    pub fn socket_path(&self) -> PathBuf {
        if self.server.socket.is_empty() {
            oet_protocol::paths::daemon_socket()
        } else {
            PathBuf::from(&self.server.socket)
        }
    }

    /// Where cached, re-creatable data goes: systemd's `CACHE_DIRECTORY` when set,
    /// otherwise the state directory.
    pub fn cache_dir(&self) -> PathBuf {
        systemd_directory("CACHE_DIRECTORY").unwrap_or_else(|| self.state_dir())
    }

    /// Compares this configuration with a newly read one: applies nothing, but says which
    /// changes can take effect at once (`live`) and which need a restart (`restart`), by
    /// their keys.
    pub fn changes(&self, new: &Config) -> ConfigChanges {
        let mut changes = ConfigChanges::default();
        let mut note = |changed: bool, key: &str, live: bool| {
            if changed {
                if live {
                    changes.live.push(key.to_owned());
                } else {
                    changes.restart.push(key.to_owned());
                }
            }
        };
        note(self.log != new.log, "log.level", true);
        note(self.procedures != new.procedures, "procedures", true);
        note(self.access != new.access, "access", true);
        note(
            self.git.allowed_repos != new.git.allowed_repos,
            "git.allowed_repos",
            true,
        );
        let git_rest = |c: &GitConfig| GitConfig {
            allowed_repos: Vec::new(),
            ..c.clone()
        };
        note(git_rest(&self.git) != git_rest(&new.git), "git", false);
        note(self.python != new.python, "python", false);
        note(self.server != new.server, "server", false);
        note(self.events != new.events, "events", false);
        note(self.paths != new.paths, "paths", false);
        note(self.oda != new.oda, "oda", false);
        note(self.store != new.store, "store", false);
        changes
    }

    /// The state directory, resolving the empty default.
    pub fn state_dir(&self) -> PathBuf {
        if !self.paths.state_dir.is_empty() {
            return PathBuf::from(&self.paths.state_dir);
        }
        let env_dir = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
        if let Some(dir) = systemd_directory("STATE_DIRECTORY") {
            return dir;
        }
        if nix::unistd::Uid::current().is_root() {
            return PathBuf::from("/var/lib/oet");
        }
        if let Some(dir) = env_dir("XDG_STATE_HOME") {
            return PathBuf::from(dir).join("oet");
        }
        if let Some(home) = env_dir("HOME") {
            return PathBuf::from(home).join(".local/state/oet");
        }
        oet_protocol::paths::user_runtime_dir().join("state")
    }
}

/// Reads a configuration file: a regular file (after following symbolic links) of at
/// most [`MAX_FILE_BYTES`]. Opening does not wait for a writer (a FIFO), and reading
/// never goes past the limit (`/dev/zero`).
fn read_bounded(path: &Path) -> Result<String, ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};

    let read_err = |source| ConfigError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(read_err)?;
    let kind = file.metadata().map_err(read_err)?.file_type();
    if !kind.is_file() {
        let kind = if kind.is_dir() {
            "a directory"
        } else if kind.is_char_device() || kind.is_block_device() {
            "a device"
        } else if kind.is_fifo() {
            "a FIFO"
        } else {
            "a socket or another special file"
        };
        return Err(ConfigError::NotRegular {
            path: path.to_owned(),
            kind,
        });
    }
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_err)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(ConfigError::TooLarge {
            path: path.to_owned(),
        });
    }
    String::from_utf8(bytes).map_err(|_| {
        read_err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "it is not UTF-8 text",
        ))
    })
}

/// Carries keys that moved from `[git]` to `[python]` over to their new names.
struct MovedKeys<'a> {
    /// The `[python]` section as written in the file, if it is there.
    written: Option<&'a toml::Table>,
    notes: Vec<String>,
}

impl MovedKeys<'_> {
    /// Applies `git.<old_key>` (when given) as `python.<new_key>`.
    fn adopt<T: PartialEq>(
        &mut self,
        old: Option<T>,
        old_key: &str,
        new: &mut T,
        new_key: &str,
    ) -> Result<(), Problem> {
        let Some(old) = old else {
            return Ok(());
        };
        let written = self
            .written
            .is_some_and(|section| section.contains_key(new_key));
        if written && *new != old {
            return Err(Problem::Value(format!(
                "git.{old_key} and python.{new_key} are both set, to different values; \
                 git.{old_key} is the deprecated name of python.{new_key}: remove it"
            )));
        }
        *new = old;
        self.notes.push(format!(
            "git.{old_key} is deprecated and was applied as python.{new_key}; \
             move it to the [python] section as `{new_key}`"
        ));
        Ok(())
    }
}

/// Turns a TOML error into one line naming the line number and what is wrong.
fn describe_toml_error(text: &str, err: &toml::de::Error) -> Problem {
    let message = err.message().trim().replace('\n', "; ");
    match err.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let snippet = text.lines().nth(line - 1).unwrap_or("").trim().to_owned();
            Problem::Syntax {
                line,
                snippet,
                message,
            }
        }
        None => Problem::Unplaced(message),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_is_the_defaults() {
        let example = include_str!("../../config/oetd.toml");
        assert_eq!(Config::parse(example).expect("parses"), Config::default());
    }

    #[test]
    fn the_shipped_example_documents_every_key() {
        let example = include_str!("../../config/oetd.toml");
        let defaults: toml::Table =
            toml::from_str(&toml::to_string(&Config::default()).expect("serialises"))
                .expect("parses");
        for (section, keys) in &defaults {
            assert!(example.contains(&format!("[{section}]")), "[{section}]");
            for key in keys.as_table().expect("a section").keys() {
                assert!(
                    example.contains(&format!("\n{key} = ")),
                    "{section}.{key} is not in config/oetd.toml"
                );
            }
        }
    }

    #[test]
    fn empty_file_is_the_defaults() {
        assert_eq!(Config::parse("").expect("parses"), Config::default());
    }

    #[test]
    fn unknown_key_is_named_with_its_line() {
        let err = Config::parse("[procedures]\nhistory_size = 3\nhistroy = 4\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("histroy"), "{err}");
        assert!(err.contains("line 3"), "{err}");
    }

    #[test]
    fn wrong_type_is_named() {
        let err = Config::parse("[procedures]\nmax_running = \"two\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(err.contains("max_running"), "{err}");
    }

    #[test]
    fn zero_running_is_refused() {
        let err = Config::parse("[procedures]\nmax_running = 0\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("procedures.max_running"), "{err}");
    }

    #[test]
    fn python_keys_under_git_still_work_and_are_named_as_deprecated() {
        let config = Config::parse(
            "[git]\nmax_checkouts = 4\npython = \"/opt/py/bin/python3\"\nenv_wait_secs = 30\n\
             env_dir = \"/srv/envs\"\nenv_own_pip = true\n\
             pip_index_url = \"https://pypi.example.org/simple\"\npip_extra_args = [\"--no-index\"]\n",
        )
        .expect("the old names parse");
        assert_eq!(
            config.python,
            PythonConfig {
                env_dir: Some(PathBuf::from("/srv/envs")),
                env_wait_secs: 30,
                interpreter: "/opt/py/bin/python3".into(),
                own_pip: true,
                pip_index_url: Some("https://pypi.example.org/simple".into()),
                pip_extra_args: vec!["--no-index".into()],
            }
        );
        let git = GitConfig {
            max_checkouts: 4,
            ..GitConfig::default()
        };
        assert_eq!(config.git, git, "nothing is left under the old names");

        let warnings = config.deprecations();
        assert_eq!(warnings.len(), 6, "{warnings:?}");
        for (old, new) in [
            ("git.python ", "python.interpreter"),
            ("git.env_own_pip ", "python.own_pip"),
            ("git.env_wait_secs ", "python.env_wait_secs"),
        ] {
            assert!(
                warnings
                    .iter()
                    .any(|w| w.starts_with(old) && w.contains("deprecated") && w.contains(new)),
                "{old} -> {new}: {warnings:?}"
            );
        }

        // What --print-config shows uses the new names only.
        let printed = toml::to_string(&config).expect("serialises");
        assert!(
            printed.contains("[python]\nenv_dir = \"/srv/envs\""),
            "{printed}"
        );
        let reread = Config::parse(&printed).expect("the printed file parses");
        assert_eq!(reread.python, config.python);
        assert!(reread.deprecations().is_empty());
    }

    #[test]
    fn a_key_under_its_old_and_new_name_must_agree() {
        let err = Config::parse(
            "[git]\npython = \"python3.11\"\n[python]\ninterpreter = \"python3.12\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("git.python"), "{err}");
        assert!(err.contains("python.interpreter"), "{err}");
        // Written as the default value is still written.
        let err = Config::parse("[git]\nenv_wait_secs = 30\n[python]\nenv_wait_secs = 600\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("git.env_wait_secs") && err.contains("python.env_wait_secs"),
            "{err}"
        );

        let same = Config::parse("[git]\nenv_wait_secs = 30\n[python]\nenv_wait_secs = 30\n")
            .expect("one value under both names");
        assert_eq!(same.python.env_wait_secs, 30);
        assert_eq!(same.deprecations().len(), 1);
    }

    #[test]
    fn python_settings_need_a_restart_under_either_name() {
        let running = Config::default();
        for text in [
            "[python]\nenv_wait_secs = 5\n",
            "[git]\nenv_wait_secs = 5\n",
        ] {
            let changes = running.changes(&Config::parse(text).expect("parses"));
            assert_eq!(changes.restart, ["python"], "{text}");
            assert!(changes.live.is_empty(), "{text}");
        }
    }

    #[test]
    fn every_duration_out_of_range_is_an_error_naming_its_key() {
        for (section, key) in [
            ("procedures", "stop_grace_secs"),
            ("procedures", "kill_wait_secs"),
            ("server", "handshake_timeout_secs"),
            ("server", "frame_timeout_secs"),
        ] {
            for bad in ["1e20", "nan", "inf", "-1.0"] {
                let err = Config::parse(&format!("[{section}]\n{key} = {bad}\n"))
                    .unwrap_err()
                    .to_string();
                assert!(err.contains(&format!("{section}.{key}")), "{bad}: {err}");
            }
        }
        for (section, key) in [
            ("git", "clone_timeout_secs"),
            ("python", "env_wait_secs"),
            ("oda", "timeout_secs"),
            ("events", "buffer"),
            ("procedures", "history_size"),
            ("procedures", "log_lines"),
            ("server", "max_connections"),
        ] {
            let err = Config::parse(&format!("[{section}]\n{key} = 0\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("{section}.{key}")), "{err}");
            let err = Config::parse(&format!("[{section}]\n{key} = 9223372036854775807\n"))
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("{section}.{key}")), "{err}");
        }
    }

    #[test]
    fn only_a_regular_file_of_bounded_size_is_read() {
        let err = Config::load(Path::new("/dev/zero"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("not a regular file (a device)"), "{err}");
        let dir = tempfile::tempdir().expect("temp dir");
        let err = Config::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("a directory"), "{err}");
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
        let err = Config::load(&fifo).unwrap_err().to_string();
        assert!(err.contains("a FIFO"), "{err}");
        let big = dir.path().join("big.toml");
        std::fs::write(&big, "#".repeat(MAX_FILE_BYTES as usize + 1)).expect("write");
        let err = Config::load(&big).unwrap_err().to_string();
        assert!(err.contains("larger than"), "{err}");
    }

    #[test]
    fn the_oda_section_is_checked() {
        let config =
            Config::parse("[oda]\nbackend = \"rest\"\nurl = \"http://oda/api\"\n").expect("parses");
        assert_eq!(config.oda.url.as_deref(), Some("http://oda/api"));
        let err = Config::parse("[oda]\nbackend = \"rest\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs `url`"), "{err}");
    }
}
