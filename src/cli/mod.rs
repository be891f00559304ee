//! Subcommands of the `darts` tool.

pub mod gradients;
pub mod inputs;
pub mod search;
pub mod step;
pub mod train;

/// A run stopped by Ctrl-C after writing its checkpoint: the tool exits with status 130, as
/// shells report a command ended by SIGINT, so a script can tell it from a finished run.
#[derive(Debug)]
pub struct Interrupted;

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}
