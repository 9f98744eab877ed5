//! Procedures: one observing script in one child process, its states and its history.
//!
//! `service` owns the procedure table and the rules; `runner` drives one procedure's
//! process through its life; `supervisor` spawns, signals and reaps processes;
//! `worker_link` is the channel to the Python harness in `worker.py`; `state` says which
//! state may follow which; `script` parses script URIs; `git_services` opens what a
//! `git://` script needs (checkouts and Python environments).

pub mod git_services;
pub mod runner;
pub mod script;
pub mod service;
pub mod state;
pub mod supervisor;
pub mod worker_link;

pub use git_services::GitServices;
pub use service::ProcedureService;

/// The worker harness, shipped inside the binary and written out at start-up.
pub const WORKER_HARNESS: &str = include_str!("worker.py");
