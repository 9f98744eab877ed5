//! Activities: run what a Scheduling Block names. `sbd` is the typed view of a Scheduling
//! Block Definition; `oda` is the archive SBDs come from and SBIs go to.
pub mod oda;
pub mod sbd;
