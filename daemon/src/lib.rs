//! `oetd`, the Observation Execution Tool daemon.
//!
//! The folders tell the architecture: `server/` owns the control socket, `procedure/`
//! owns script processes and their history, `activity/` turns Scheduling Blocks into
//! procedures, `git/` fetches scripts from repositories, `python/` builds their
//! virtual environments, `store` keeps the durable history, `disk` walks the trees kept
//! on disk, `process` spawns and kills process groups, `events` is the bus everything
//! is announced on, and `systemd` is the glue to the service manager.

pub mod activity;
pub mod bounded;
pub mod cgroup;
pub mod children;
pub mod config;
pub mod disk;
pub mod events;
pub mod git;
pub mod guard;
pub mod journal;
pub mod limits;
pub mod procedure;
pub mod process;
pub mod python;
pub mod reaper;
pub mod server;
pub mod state_dir;
pub mod store;
pub mod systemd;
pub mod table;
