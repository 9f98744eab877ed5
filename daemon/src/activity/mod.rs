//! Activities: run what a Scheduling Block names. `sbd` is the typed view of a Scheduling
//! Block Definition; `oda` is the archive SBDs come from and SBIs go to; `service` owns the
//! activity table and turns an activity into a procedure.
pub mod oda;
pub mod sbd;
pub mod service;

pub use service::{ActivityError, ActivityService};
