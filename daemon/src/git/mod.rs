//! Git scripts: where a `git://` script comes from.
//!
//! `policy` says what a request means and whether it may be served (defaults, URL or
//! local path, `git.allowed_repos`, commit-id syntax); `fetch` is the libgit2 work
//! (listing refs, resolving branches and abbreviated commits, fetching, checking out),
//! run off the runtime under a deadline; `cache` keeps one checkout per repository +
//! commit, pinned while used and evicted least-recently-used, behind [`RepoCache`];
//! `script` turns a `git://` script URI into a file inside a checkout. `url` splits the
//! credentials off a repository URL and redacts them wherever a URL is shown
//! ([`redact_url`], [`Redacted`]); `credentials` gives them (or those of
//! `git.credentials_file` or git's credential helpers) to libgit2 when a server asks.
//! `config` is the section `[git]`, `error` the error type they share.

mod cache;
mod config;
mod credentials;
mod error;
mod fetch;
mod policy;
mod script;
mod url;

pub(crate) use cache::is_key;
pub use cache::{CacheStats, Checkout, Pruned, RepoCache};
pub use config::GitConfig;
pub use error::GitError;
pub use script::script_path;
pub use url::{redact_text, redact_url, Redacted};

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn documented_defaults() {
        let config: GitConfig = toml::from_str("").expect("empty section parses");
        assert_eq!(config, GitConfig::default());
        assert_eq!(config.max_checkouts, 32);
        assert!(config.allowed_repos.is_empty());
        let state = Path::new("/var/lib/oetd");
        assert_eq!(config.cache_dir(state), state.join("git"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<GitConfig>("cache = '/tmp'").expect_err("unknown key");
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
