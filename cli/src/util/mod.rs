//! Small helpers shared by the subcommands.

pub(crate) mod progress;
pub(crate) mod size;
