//! The `lazarus` command.

fn main() {}
