//! Capture a process (or ranges of the calling process) into a Lazarus image.
