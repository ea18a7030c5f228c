//! The Lazarus benchmark harness.
