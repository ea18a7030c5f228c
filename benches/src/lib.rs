//! The Lazarus benchmark harness.

pub mod capture;
