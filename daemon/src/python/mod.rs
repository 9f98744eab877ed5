//! Python environments for scripts: one virtual environment per project + commit,
//! built with `python -m venv` and pip, shared by the procedures that ask for it.
//!
//! `envs` owns the builds and the environment directory. What an environment is built
//! from is any [`Project`] (a git checkout is one), so this module knows nothing of
//! git. `config` is the section `[python]`.

mod config;
mod envs;

pub use config::PythonConfig;
pub use envs::{EnvError, EnvManager, Project};

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
        let state = Path::new("/var/lib/oetd");
        assert_eq!(config.env_dir(state), state.join("envs"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<PythonConfig>("python = 'python3'").expect_err("unknown key");
        assert!(err.to_string().contains("unknown field"), "{err}");
    }
}
