//! Subcommands of the `darts` tool.

pub mod gradients;
