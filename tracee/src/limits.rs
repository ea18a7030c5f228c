//! Resource limits of another process (`prlimit(2)`), read at capture and set at restore.
//! `prlimit` works from outside on any process we may ptrace; being its tracer suffices.

use serde::{Deserialize, Serialize};

use crate::error::LimitError;
use crate::process::SeizedProcess;
use crate::sys;

/// The number of resources x86_64 Linux has (`RLIMIT_CPU` = 0 ... `RLIMIT_RTTIME` = 15,
/// `RLIM_NLIMITS`).
pub const RLIMIT_COUNT: u32 = 16;

/// One resource limit; `u64::MAX` is `RLIM_INFINITY`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceLimit {
    /// The soft limit (what the kernel enforces).
    pub soft: u64,
    /// The hard limit (the ceiling for the soft one).
    pub hard: u64,
}

impl SeizedProcess {
    /// The process's limit for `resource` (`0..RLIMIT_COUNT`).
    pub fn resource_limit(&self, resource: u32) -> Result<ResourceLimit, LimitError> {
        let (soft, hard) = sys::prlimit(self.pid, resource, None).map_err(|source| LimitError {
            pid: self.pid,
            resource,
            source,
        })?;
        Ok(ResourceLimit { soft, hard })
    }

    /// Sets the process's limit for `resource`. Raising a hard limit needs
    /// `CAP_SYS_RESOURCE`.
    pub fn set_resource_limit(
        &mut self,
        resource: u32,
        limit: ResourceLimit,
    ) -> Result<(), LimitError> {
        sys::prlimit(self.pid, resource, Some((limit.soft, limit.hard)))
            .map(drop)
            .map_err(|source| LimitError {
                pid: self.pid,
                resource,
                source,
            })
    }
}
