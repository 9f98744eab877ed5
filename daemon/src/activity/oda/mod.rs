//! The observatory data archive (ODA): where SBDs come from and SBIs go.
//!
//! One object-safe trait, [`Oda`], with two backends: [`filesystem`] (the embedded default,
//! a directory of JSON documents) and [`rest`] (the SKA ODA's HTTP resources). The config
//! section `[oda]` chooses one; [`open`] builds it.

mod archive;
pub mod filesystem;
pub mod rest;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use archive::{put_sbd_file, ActivityCall, DocKind, NewSbi, Oda, OdaError, SBI_INTERFACE};
pub use filesystem::FilesystemOda;
pub use rest::RestOda;

/// Which ODA backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OdaBackend {
    /// A directory of JSON documents on this host.
    #[default]
    Filesystem,
    /// A remote ODA over HTTP(S).
    Rest,
}

/// The `[oda]` config section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OdaConfig {
    /// `"filesystem"` (default) or `"rest"`.
    pub backend: OdaBackend,
    /// Directory of the filesystem ODA; default `<state_dir>/oda`. Created on demand.
    pub dir: Option<PathBuf>,
    /// Base URL of the remote ODA (`rest` only), e.g. `http://oda:5000/ska-db-oda/api/v7`.
    pub url: Option<String>,
    /// How long one request to the remote ODA may take, in seconds (`rest` only).
    pub timeout_secs: u64,
}

impl Default for OdaConfig {
    fn default() -> Self {
        OdaConfig {
            backend: OdaBackend::Filesystem,
            dir: None,
            url: None,
            timeout_secs: 10,
        }
    }
}

impl OdaConfig {
    /// Checks the section without opening the ODA; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.backend == OdaBackend::Rest {
            let url = self
                .url
                .as_deref()
                .ok_or("oda: backend \"rest\" needs `url`, the ODA's base URL")?;
            reqwest::Url::parse(url)
                .map_err(|err| format!("oda.url '{url}' is not a URL: {err}"))?;
        }
        crate::limits::check("oda.timeout_secs", self.timeout_secs, 1, 3600)
    }
}

/// Builds the ODA the config names; `state_dir` is the daemon's state directory, under
/// which the filesystem ODA lives unless `dir` is set.
pub fn open(cfg: &OdaConfig, state_dir: &Path) -> Result<Arc<dyn Oda>, OdaError> {
    match cfg.backend {
        OdaBackend::Filesystem => {
            let dir = cfg.dir.clone().unwrap_or_else(|| state_dir.join("oda"));
            Ok(Arc::new(FilesystemOda::new(dir)))
        }
        OdaBackend::Rest => {
            let url = cfg.url.as_deref().ok_or_else(|| {
                OdaError::Config("backend \"rest\" needs `url`, the ODA's base URL".to_owned())
            })?;
            if cfg.timeout_secs == 0 {
                return Err(OdaError::Config(
                    "`timeout_secs` must be at least 1".to_owned(),
                ));
            }
            Ok(Arc::new(RestOda::new(
                url,
                std::time::Duration::from_secs(cfg.timeout_secs),
            )?))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_defaults_and_unknown_keys() {
        let cfg: OdaConfig = toml::from_str("").expect("empty is fine");
        assert_eq!(cfg, OdaConfig::default());
        assert_eq!(cfg.timeout_secs, 10);
        let cfg: OdaConfig =
            toml::from_str("backend = \"rest\"\nurl = \"http://oda/api\"").expect("rest");
        assert_eq!(cfg.backend, OdaBackend::Rest);
        let err = toml::from_str::<OdaConfig>("urll = \"x\"").expect_err("typo");
        assert!(err.to_string().contains("urll"), "{err}");
        let err = toml::from_str::<OdaConfig>("backend = \"postgres\"").expect_err("unknown");
        assert!(err.to_string().contains("postgres"), "{err}");
    }

    #[test]
    fn open_picks_the_backend() {
        let state = tempfile::tempdir().expect("tempdir");
        let oda = open(&OdaConfig::default(), state.path()).expect("filesystem");
        assert_eq!(
            oda.location(),
            state.path().join("oda").display().to_string()
        );
        let rest = OdaConfig {
            backend: OdaBackend::Rest,
            ..OdaConfig::default()
        };
        let err = open(&rest, state.path()).err().expect("no url");
        assert!(err.to_string().contains("needs `url`"), "{err}");
        let rest = OdaConfig {
            backend: OdaBackend::Rest,
            url: Some("ftp://oda".into()),
            ..OdaConfig::default()
        };
        let err = open(&rest, state.path()).err().expect("ftp");
        assert!(err.to_string().contains("http"), "{err}");
    }
}
