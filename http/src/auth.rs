//! Who is calling: the bearer token of a request and the role it grants, checked before
//! anything is asked of oetd; and the `Host` check that keeps web pages from reaching an
//! unauthenticated shim through DNS rebinding.

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue};
use oet_protocol::Role;

use crate::error::ApiError;
use crate::routes::AppState;
use crate::tokens::{TokenError, Tokens};

/// The tokens in effect, replaced on reload.
pub struct Auth {
    path: Option<PathBuf>,
    tokens: RwLock<Option<Arc<Tokens>>>,
}

impl Auth {
    /// Reads the tokens file, if one is configured.
    pub fn load(path: Option<PathBuf>) -> Result<Auth, TokenError> {
        let tokens = path.as_deref().map(Tokens::load).transpose()?.map(Arc::new);
        Ok(Auth {
            path,
            tokens: RwLock::new(tokens),
        })
    }

    /// No tokens: every caller may operate (as far as oetd lets the shim).
    pub fn open() -> Auth {
        Auth {
            path: None,
            tokens: RwLock::new(None),
        }
    }

    /// Reads the tokens file again; on error the tokens in effect stay. Answers whether
    /// there is a file to read.
    pub fn reload(&self) -> Result<bool, TokenError> {
        let Some(path) = &self.path else {
            return Ok(false);
        };
        let tokens = Arc::new(Tokens::load(path)?);
        *self
            .tokens
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(tokens);
        Ok(true)
    }

    /// Whether callers must present a token.
    pub fn enabled(&self) -> bool {
        self.current().is_some()
    }

    fn current(&self) -> Option<Arc<Tokens>> {
        self.tokens
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The role of the caller who sent `headers`.
    pub fn role(&self, headers: &HeaderMap) -> Result<Role, ApiError> {
        let Some(tokens) = self.current() else {
            return Ok(Role::Operate);
        };
        let value = headers
            .get(header::AUTHORIZATION)
            .ok_or(ApiError::Unauthenticated("Not authenticated"))?;
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim())
            .ok_or(ApiError::Unauthenticated(
                "Not authenticated: send Authorization: Bearer <token>",
            ))?;
        tokens
            .role_of(token.as_bytes())
            .ok_or(ApiError::Unauthenticated("Invalid token"))
    }
}

/// The role of a request's caller.
#[derive(Debug, Clone, Copy)]
pub struct Caller(pub Role);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Caller, ApiError> {
        app.auth.role(&parts.headers).map(Caller)
    }
}

/// Whether a `Host` header names the shim in a way a DNS-rebinding page cannot: an IP
/// address, `localhost`, or a name the configuration allows.
pub fn host_allowed(host: &HeaderValue, allowed: &[String]) -> bool {
    if allowed.iter().any(|name| name == "*") {
        return true;
    }
    let Ok(host) = host.to_str() else {
        return false;
    };
    let name = match host.strip_prefix('[') {
        // An IPv6 literal: "[::1]:5000".
        Some(rest) => match rest.split_once(']') {
            Some((address, _)) => return address.parse::<std::net::Ipv6Addr>().is_ok(),
            None => return false,
        },
        None => match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        },
    };
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    name.parse::<IpAddr>().is_ok()
        || name == "localhost"
        || allowed
            .iter()
            .any(|a| a.trim_end_matches('.').eq_ignore_ascii_case(&name))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_by_address_or_allowed_name() {
        let allowed = vec!["oet.example.org".to_owned()];
        let ok = |host: &str| host_allowed(&HeaderValue::from_str(host).expect("header"), &allowed);
        for host in [
            "127.0.0.1:5000",
            "127.0.0.1",
            "[::1]:5000",
            "localhost:5000",
            "LOCALHOST",
            "oet.example.org",
            "OET.example.org.:80",
            "10.1.2.3:8080",
        ] {
            assert!(ok(host), "{host}");
        }
        for host in [
            "evil.example.com",
            "evil.example.com:5000",
            "localhost.evil.com",
            "[evil]:1",
            "",
        ] {
            assert!(!ok(host), "{host}");
        }
        assert!(host_allowed(
            &HeaderValue::from_static("anything"),
            &["*".to_owned()]
        ));
    }

    #[test]
    fn without_tokens_everyone_may_operate() {
        assert_eq!(
            Auth::open().role(&HeaderMap::new()).expect("open"),
            Role::Operate
        );
    }
}
