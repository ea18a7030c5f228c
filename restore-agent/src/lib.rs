//! The Lazarus restore agent.
