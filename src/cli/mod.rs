//! Subcommands of the `darts` tool.

pub mod gradients;
pub mod search;
pub mod train;
