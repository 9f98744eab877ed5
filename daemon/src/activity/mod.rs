//! Activities: run what a Scheduling Block names.
pub mod oda;
