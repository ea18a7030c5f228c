//! Progress while the benchmark runs: an indicatif bar when stderr is a
//! terminal, plain lines otherwise (CI logs, tests).

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// The progress display.
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    done: u64,
    total: u64,
}

impl Progress {
    /// For `total` steps.
    pub(crate) fn new(total: u64) -> Self {
        let bar = std::io::stderr().is_terminal().then(|| {
            let bar = ProgressBar::new(total);
            bar.set_style(
                ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
                    .expect("the template is valid")
                    .progress_chars("=> "),
            );
            bar
        });
        Self {
            bar,
            done: 0,
            total,
        }
    }

    /// Starts the next step.
    pub(crate) fn step(&mut self, what: &str) {
        self.done += 1;
        match &self.bar {
            Some(bar) => {
                bar.set_position(self.done - 1);
                bar.set_message(what.to_owned());
            }
            None => eprintln!("bench [{}/{}] {what}", self.done, self.total),
        }
    }

    /// Clears the bar.
    pub(crate) fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
