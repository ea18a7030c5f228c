//! The machine a run was made on: kernel, cores, memory, CPU model (from
//! `uname`, `/proc/meminfo` and `/proc/cpuinfo`).

use serde::Serialize;

/// The machine.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    /// Kernel release (`uname -r`).
    pub kernel: String,
    /// CPUs this process may run on.
    pub cores: usize,
    /// Total memory, bytes (`MemTotal`).
    pub memory_bytes: u64,
    /// CPU model name (first `model name` of `/proc/cpuinfo`).
    pub cpu_model: String,
}

impl Machine {
    /// Reads it; unknown fields are empty or zero.
    pub fn probe() -> Machine {
        let uname = rustix::system::uname();
        let field = |text: &str, key: &str| -> Option<String> {
            text.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_owned())
        };
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Machine {
            kernel: uname.release().to_string_lossy().into_owned(),
            cores: std::thread::available_parallelism().map_or(0, usize::from),
            memory_bytes: field(&meminfo, "MemTotal")
                .and_then(|v| v.trim_end_matches("kB").trim().parse::<u64>().ok())
                .map_or(0, |kib| kib * 1024),
            cpu_model: field(&cpuinfo, "model name").unwrap_or_default(),
        }
    }
}
