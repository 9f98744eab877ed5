//! Git scripts: the clone cache and per-commit Python environments.
