//! The shim's configuration: one TOML file, every key optional with a documented default
//! (`config/oet-http.toml` is the shipped copy of the defaults). Unknown keys and wrong
//! types are errors that name the key and the line; values out of range name the key.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Everything `oet-http` can be told.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub oetd: OetdConfig,
    pub stream: StreamConfig,
    pub auth: AuthConfig,
    pub log: LogConfig,
}

/// The HTTP side: `[server]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address and port to listen on.
    pub listen: String,
    /// Path prefix of every endpoint; empty serves them at the root.
    pub prefix: String,
    /// Base of the `uri` of procedures and activities, e.g. `https://oet.example.org`
    /// behind a proxy. Empty: `http://` and the request's `Host`.
    pub public_url: String,
    /// Host names accepted in the `Host` header besides IP addresses, `localhost` and the
    /// host of `public_url`; `"*"` accepts any. Guards an unauthenticated shim against DNS
    /// rebinding.
    pub allowed_hosts: Vec<String>,
    /// HTTP connections served at once; further ones wait to be accepted.
    pub max_connections: usize,
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Seconds a client has to send a request's headers (and an idle connection is kept).
    pub header_timeout_secs: f64,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: "127.0.0.1:5000".into(),
            prefix: "/ska-oso-oet/oet/api/v7".into(),
            public_url: String::new(),
            allowed_hosts: Vec::new(),
            max_connections: 1024,
            max_body_bytes: 256 * 1024,
            header_timeout_secs: 30.0,
        }
    }
}

/// The link to oetd: `[oetd]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OetdConfig {
    /// oetd's control socket. Empty: `OET_SOCKET`, then where `oetctl` looks by default.
    pub socket: String,
    /// Seconds one call to oetd may take (connecting included); a stop waits for the
    /// script to end, so this covers oetd's stop grace period.
    pub timeout_secs: f64,
    /// Seconds `POST /procedures` waits for the new procedure to be READY (or to fail)
    /// before it answers with the procedure as it then is.
    pub ready_wait_secs: f64,
    /// Calls to oetd at once, for each kind: reading calls and operating calls are
    /// counted apart, so that a flood of reads never holds up a stop. The shim then holds
    /// at most 3 × max_calls + 1 connections to oetd (a create holds two), which must stay
    /// below oetd's `server.max_connections_per_uid` for the shim's user.
    pub max_calls: usize,
}

impl Default for OetdConfig {
    fn default() -> Self {
        OetdConfig {
            socket: String::new(),
            timeout_secs: 30.0,
            ready_wait_secs: 30.0,
            max_calls: 8,
        }
    }
}

/// The event stream: `[stream]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StreamConfig {
    /// Seconds between the comment lines that keep an idle stream open through proxies.
    pub heartbeat_secs: f64,
    /// Stream clients served at once; more are answered 503.
    pub max_clients: usize,
    /// Events held for a slow stream client; past that it misses events and is told how
    /// many in a comment line.
    pub buffer: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            heartbeat_secs: 15.0,
            max_clients: 512,
            buffer: 1024,
        }
    }
}

/// Bearer tokens: `[auth]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// File of `TOKEN ROLE` lines (role `read` or `operate`). Empty: no tokens, and every
    /// caller may operate, as far as oetd lets the shim's own user.
    pub tokens_file: String,
}

/// Logging: `[log]`.
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

/// A configuration that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read configuration file {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid configuration file {}: {problem}", path.display())]
    File { path: PathBuf, problem: String },
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

    /// Parses and checks configuration text; the error names the key (and the line).
    pub fn parse(text: &str) -> Result<Config, String> {
        let config: Config = toml::from_str(text).map_err(|err| describe(text, &err))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types cannot; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        let server = &self.server;
        self.listen_addr()?;
        check_prefix(&server.prefix)?;
        if !server.public_url.is_empty()
            && !server.public_url.starts_with("http://")
            && !server.public_url.starts_with("https://")
        {
            return Err(format!(
                "server.public_url must start with http:// or https://, not {:?}",
                server.public_url
            ));
        }
        at_least(server.max_connections, 1, "server.max_connections")?;
        at_least(server.max_body_bytes, 1024, "server.max_body_bytes")?;
        // A body becomes one frame to oetd: leave room for what the frame adds.
        let most = oet_protocol::codec::DEFAULT_MAX_FRAME / 2;
        if server.max_body_bytes > most {
            return Err(format!(
                "server.max_body_bytes must be at most {most} (half of oetd's largest frame)"
            ));
        }
        seconds(server.header_timeout_secs, "server.header_timeout_secs")?;
        seconds(self.oetd.timeout_secs, "oetd.timeout_secs")?;
        seconds(self.oetd.ready_wait_secs, "oetd.ready_wait_secs")?;
        at_least(self.oetd.max_calls, 1, "oetd.max_calls")?;
        seconds(self.stream.heartbeat_secs, "stream.heartbeat_secs")?;
        at_least(self.stream.max_clients, 1, "stream.max_clients")?;
        at_least(self.stream.buffer, 1, "stream.buffer")?;
        Ok(())
    }

    /// The address to listen on.
    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        self.server.listen.parse().map_err(|_| {
            format!(
                "server.listen must be an IP address and port such as 127.0.0.1:5000, not {:?}",
                self.server.listen
            )
        })
    }

    /// oetd's socket, resolving the empty default as `oetctl` does.
    pub fn socket_path(&self) -> PathBuf {
        if self.oetd.socket.is_empty() {
            oet_protocol::paths::client_socket()
        } else {
            PathBuf::from(&self.oetd.socket)
        }
    }

    /// The tokens file, if tokens are configured.
    pub fn tokens_path(&self) -> Option<PathBuf> {
        (!self.auth.tokens_file.is_empty()).then(|| PathBuf::from(&self.auth.tokens_file))
    }
}

/// A duration given in seconds, already checked to be positive and finite.
pub fn secs(value: f64) -> Duration {
    Duration::try_from_secs_f64(value).unwrap_or(Duration::MAX)
}

fn check_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Ok(());
    }
    let plain = prefix
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "-._~/".contains(c));
    if !prefix.starts_with('/') || prefix.ends_with('/') || prefix.contains("//") || !plain {
        return Err(format!(
            "server.prefix must be empty or a path such as /ska-oso-oet/oet/api/v7 (a leading \
             slash, no trailing one, letters, digits and -._~ only), not {prefix:?}"
        ));
    }
    Ok(())
}

fn at_least(value: usize, min: usize, key: &str) -> Result<(), String> {
    if value < min {
        return Err(format!("{key} must be at least {min}"));
    }
    Ok(())
}

fn seconds(value: f64, key: &str) -> Result<(), String> {
    if !(value.is_finite() && value > 0.0 && value <= 86_400.0) {
        return Err(format!(
            "{key} must be a number of seconds above 0 and at most 86400"
        ));
    }
    Ok(())
}

/// Turns a TOML error into one line naming the line number and what is wrong.
fn describe(text: &str, err: &toml::de::Error) -> String {
    let message = err.message().trim().replace('\n', "; ");
    match err.span() {
        Some(span) => {
            let line = text[..span.start.min(text.len())].matches('\n').count() + 1;
            let snippet = text.lines().nth(line - 1).unwrap_or("").trim();
            format!("line {line} (`{snippet}`): {message}")
        }
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../../config/oet-http.toml");

    #[test]
    fn the_shipped_example_is_the_defaults() {
        assert_eq!(Config::parse(EXAMPLE).expect("parses"), Config::default());
    }

    #[test]
    fn the_shipped_example_documents_every_key() {
        let defaults: toml::Table =
            toml::from_str(&toml::to_string(&Config::default()).expect("serialises"))
                .expect("parses");
        for (section, keys) in &defaults {
            assert!(EXAMPLE.contains(&format!("[{section}]")), "[{section}]");
            for key in keys.as_table().expect("a section").keys() {
                assert!(
                    EXAMPLE.contains(&format!("\n{key} = ")),
                    "{section}.{key} is not in config/oet-http.toml"
                );
            }
        }
    }

    #[test]
    fn an_unknown_key_is_named_with_its_line() {
        let err = Config::parse("[server]\nlisten = \"127.0.0.1:1\"\nlisten_port = 2\n")
            .expect_err("unknown key");
        assert!(
            err.contains("line 3") && err.contains("listen_port"),
            "{err}"
        );
    }

    #[test]
    fn values_out_of_range_name_their_key() {
        for (text, key) in [
            ("[server]\nlisten = \"localhost\"", "server.listen"),
            ("[server]\nprefix = \"api/\"", "server.prefix"),
            ("[server]\nprefix = \"/a/{id}\"", "server.prefix"),
            ("[server]\npublic_url = \"ftp://x\"", "server.public_url"),
            ("[server]\nmax_body_bytes = 10", "server.max_body_bytes"),
            (
                "[server]\nmax_body_bytes = 4000000",
                "server.max_body_bytes",
            ),
            ("[oetd]\ntimeout_secs = 0", "oetd.timeout_secs"),
            ("[oetd]\nready_wait_secs = -1", "oetd.ready_wait_secs"),
            ("[stream]\nheartbeat_secs = nan", "stream.heartbeat_secs"),
            ("[stream]\nmax_clients = 0", "stream.max_clients"),
        ] {
            let err = Config::parse(text).expect_err(text);
            assert!(err.contains(key), "{text}: {err}");
        }
        assert!(Config::parse("[server]\nprefix = \"\"").is_ok());
    }
}
