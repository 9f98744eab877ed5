//! Control groups: how a procedure's processes are kept together, limited, measured and
//! ended as one — those that left the worker's process group (`setsid`, a double fork)
//! included.
//!
//! - `hierarchy` finds the mounted hierarchies and this process's place in them.
//! - `root` decides at start-up where oetd makes procedure cgroups (or why it cannot),
//!   and kills what an earlier oetd left there.
//! - `procedure` is one procedure's cgroup: limits, joining it between fork and exec,
//!   `cgroup.kill`, measurements.
//! - `files` reads and writes the interface files and waits for a cgroup to empty.

pub mod files;
pub mod hierarchy;
mod procedure;
mod root;

pub use hierarchy::Controller;
pub use procedure::{join, CgroupError, Membership, ProcedureCgroup};
pub use root::{CgroupRoot, Containment};
