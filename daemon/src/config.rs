//! The daemon's configuration: one TOML file, every key optional, embedded defaults for
//! everything. Unknown keys and wrong types are errors that name the key and the line.
//!
//! Each section belongs to the module it configures (`server`, `procedure`, `events`,
//! `activity::oda`, `git`); this module puts them together, checks them without opening
//! anything, and resolves the paths whose defaults depend on the environment.

use std::path::{Path, PathBuf};

use oet_protocol::paths::systemd_directory;
use serde::{Deserialize, Serialize};

use crate::activity::oda::OdaConfig;
use crate::events::EventConfig;
use crate::git::GitConfig;
use crate::procedure::ProcedureConfig;
use crate::server::ServerConfig;

/// Everything `oetd` can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub procedures: ProcedureConfig,
    pub events: EventConfig,
    pub paths: PathConfig,
    pub log: LogConfig,
    pub oda: OdaConfig,
    pub git: GitConfig,
}

/// Where the daemon keeps its files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PathConfig {
    /// State directory (worker harness, scratch files). Empty: `$STATE_DIRECTORY`, then
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

/// A configuration that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
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
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Config::parse(&text).map_err(|problem| ConfigError::File {
            path: path.to_owned(),
            problem,
        })
    }

    /// Parses and checks configuration text; the error names the offending key and line.
    pub fn parse(text: &str) -> Result<Config, Problem> {
        let config: Config = toml::from_str(text).map_err(|e| describe_toml_error(text, &e))?;
        config.validate().map_err(Problem::Value)?;
        Ok(config)
    }

    /// Checks every section, opening nothing.
    fn validate(&self) -> Result<(), String> {
        self.procedures.validate()?;
        self.server.validate()?;
        self.events.validate()?;
        self.oda.validate()?;
        Ok(())
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
        note(self.server != new.server, "server", false);
        note(self.events != new.events, "events", false);
        note(self.paths != new.paths, "paths", false);
        note(self.oda != new.oda, "oda", false);
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
