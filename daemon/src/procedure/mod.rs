//! Procedures: one observing script in one child process, its states and its history.
//!
//! - `records` owns every procedure's record (summary, kept output, the way to its
//!   supervisor) and is the one place where a state changes: each change is checked
//!   against `state`, recorded with its time, logged, and handed to the durable store,
//!   which publishes it once it is written.
//! - `recovery` kills what procedures that were live when oetd stopped left running.
//! - `service` holds the rules of DESIGN 3.3 (create, start, stop, abort, what may run
//!   at once) and hands each new procedure to a supervisor.
//! - `supervisor` drives one procedure's worker process through its life; it reaches the
//!   records only through the narrow [`handle::ProcedureHandle`].
//! - `control` is what the service asks of a supervisor, `launch` what supervisors work
//!   with, `config` the `[procedures]` section and the settings in effect.
//! - `prepare` makes a script runnable (a git checkout, a Python environment: PREP_ENV),
//!   with what `git_services` opens at start-up.
//! - `worker` starts (cold, or forked by the interpreter's zygote: `zygote`) and signals
//!   the worker process (in its cgroup; `worker_io` is what a worker is given),
//!   `worker_link` is the channel to the Python
//!   harness in `worker.py`, `link_check` says which of the
//!   worker's messages may come when (the channel is untrusted), `script` parses script
//!   URIs.
//! - `output` sends the lines scripts print to the journal as their own records,
//!   rate-limited.

mod config;
mod control;
mod error;
pub mod git_services;
mod handle;
mod launch;
mod link_check;
mod output;
mod prepare;
mod records;
pub mod recovery;
pub mod script;
mod service;
pub mod state;
mod supervisor;
pub mod worker;
mod worker_io;
pub mod worker_link;
pub mod zygote;

pub use config::{ProcedureConfig, Settings};
pub use error::ProcedureError;
pub use git_services::GitServices;
pub use launch::Launcher;
pub use output::{OutputSink, OutputTarget};
pub use service::ProcedureService;
pub use worker::WORKER_HARNESS;
