//! Resident memory over time: a thread reading `VmRSS` from
//! `/proc/PID/status` at a fixed interval, from the start of a restore until
//! it is stopped or the process is gone.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Most samples kept per run (at 10 ms: 10 minutes).
const MAX_SAMPLES: usize = 60_000;

/// `VmRSS` of `pid` (`None`: self), MiB; `None` if the process is gone.
pub(crate) fn rss_mib(pid: Option<i32>) -> Option<f64> {
    let path = match pid {
        Some(p) => format!("/proc/{p}/status"),
        None => "/proc/self/status".to_owned(),
    };
    let text = std::fs::read_to_string(path).ok()?;
    let kib: f64 = text
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kib / 1024.0)
}

/// A running sampler; [`RssSampler::stop`] returns the samples.
pub(crate) struct RssSampler {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<[f64; 2]>>>,
}

impl RssSampler {
    /// Samples `pid` (`None`: this process, minus `base` MiB) every
    /// `interval`, times in ms since `t0`.
    pub(crate) fn start(pid: Option<i32>, base: f64, t0: Instant, interval: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("bench-rss".into())
            .spawn(move || {
                let mut out = Vec::new();
                while !flag.load(Ordering::Relaxed) && out.len() < MAX_SAMPLES {
                    let Some(mib) = rss_mib(pid) else { break };
                    out.push([t0.elapsed().as_secs_f64() * 1e3, (mib - base).max(0.0)]);
                    std::thread::sleep(interval);
                }
                out
            })
            .ok();
        Self { stop, thread }
    }

    /// Stops it and returns the samples (none if its thread could not start).
    pub(crate) fn stop(mut self) -> Vec<[f64; 2]> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
