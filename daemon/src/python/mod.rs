//! Python environments for scripts: one virtual environment per project + commit,
//! built with `python -m venv` and pip, shared by the procedures that ask for it.
//!
//! `envs` owns the builds, the environment directory and pip's cache in it, and keeps
//! them within their bounds; `slots` is its bookkeeping (who uses which environment,
//! when it was last used, its size, what eviction may remove). What an environment is
//! built from is any [`Project`] (a git checkout is one), so this module knows nothing
//! of git. `config` is the section `[python]`.

mod config;
mod envs;
mod slots;

pub use config::PythonConfig;
pub use envs::{Env, EnvError, EnvManager, EnvStats, EnvsPruned, Project};

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn documented_defaults() {
        let config: PythonConfig = toml::from_str("").expect("empty section parses");
        assert_eq!(config, PythonConfig::default());
        assert_eq!(config.env_wait_secs, 600);
        assert_eq!(config.interpreter, "python3");
        assert_eq!(config.max_envs, 8);
        assert_eq!(config.max_env_bytes, 10 << 30);
        assert_eq!(config.max_pip_cache_bytes, 2 << 30);
        let state = Path::new("/var/lib/oetd");
        assert_eq!(config.env_dir(state), state.join("envs"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<PythonConfig>("python = 'python3'").expect_err("unknown key");
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
