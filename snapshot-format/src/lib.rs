//! The Lazarus image format (`.lzr`).
