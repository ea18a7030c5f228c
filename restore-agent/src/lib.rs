//! The Lazarus restore agent.

pub mod uffd;
