//! `oetctl`, the operator's command-line client of oetd. The library holds what the
//! binary is made of besides the client calls: the command line ([`cli`]), the script
//! argument parsing ([`kwargs`]) and the output ([`render`]). Packaging uses
//! [`command`] to generate the man page and shell completions.

pub mod cli;
pub mod kwargs;
pub mod render;

pub use cli::command;
