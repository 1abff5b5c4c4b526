//! Download progress: an indicatif bar when stderr is a terminal, otherwise `tracing`
//! lines at start, every ~10 s, and at the end.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How download progress is shown.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ProgressMode {
    /// A progress bar when stderr is a terminal, plain `tracing` log lines otherwise.
    #[default]
    Auto,
    /// Never draw a bar; the start/end `tracing` lines are still emitted.
    Never,
}

impl ProgressMode {
    pub(crate) fn bars(self) -> bool {
        self == ProgressMode::Auto && std::io::stderr().is_terminal()
    }
}

const LOG_EVERY: Duration = Duration::from_secs(10);

/// Progress of one artifact across all its attempts and sources.
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    url: String,
    started: Instant,
    last_log: Instant,
    pos: u64,
    total: Option<u64>,
}

impl Progress {
    pub fn new(bars: bool, multi: Option<&MultiProgress>, label: &str) -> Self {
        let bar = bars.then(|| {
            let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{msg:24!} {spinner} waiting")
                    .expect("valid template"),
            );
            let bar = match multi {
                Some(m) => m.add(bar),
                None => bar,
            };
            bar.set_message(label.to_string());
            bar
        });
        let now = Instant::now();
        Progress {
            bar,
            url: String::new(),
            started: now,
            last_log: now,
            pos: 0,
            total: None,
        }
    }

    /// A transfer from `url` begins at `offset` (non-zero when resuming).
    pub fn start(&mut self, url: &str, offset: u64, total: Option<u64>) {
        self.url = url.to_string();
        self.pos = offset;
        self.total = total;
        self.last_log = Instant::now();
        if let Some(bar) = &self.bar {
            match total {
                Some(t) => {
                    bar.set_length(t);
                    bar.set_style(
                        ProgressStyle::with_template(
                            "{msg:24!} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {eta}",
                        )
                        .expect("valid template")
                        .progress_chars("=> "),
                    );
                }
                None => {
                    bar.unset_length();
                    bar.set_style(
                        ProgressStyle::with_template("{msg:24!} {spinner} {bytes} {bytes_per_sec}")
                            .expect("valid template"),
                    );
                }
            }
            bar.reset_eta();
            bar.set_position(offset);
            tracing::debug!(url = %self.url, offset, total, "download started");
        } else {
            tracing::info!(url = %self.url, offset, total, "download started");
        }
    }

    pub fn inc(&mut self, n: u64) {
        self.pos += n;
        match &self.bar {
            Some(bar) => bar.set_position(self.pos),
            None => {
                if self.last_log.elapsed() >= LOG_EVERY {
                    self.last_log = Instant::now();
                    tracing::info!(url = %self.url, bytes = self.pos, total = self.total,
                        elapsed = ?self.started.elapsed(), "downloading");
                }
            }
        }
    }

    /// The artifact is in the cache.
    pub fn finish(&self) {
        let elapsed = self.started.elapsed();
        match &self.bar {
            Some(bar) => {
                bar.finish_and_clear();
                tracing::debug!(url = %self.url, bytes = self.pos, ?elapsed, "download finished");
            }
            None => {
                tracing::info!(url = %self.url, bytes = self.pos, ?elapsed, "download finished")
            }
        }
    }

    /// The artifact could not be fetched.
    pub fn fail(&self) {
        if let Some(bar) = &self.bar {
            bar.abandon();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bar_templates_are_valid() {
        let multi = MultiProgress::new();
        for total in [Some(1000), None] {
            for m in [None, Some(&multi)] {
                let mut p = Progress::new(true, m, "kubelet");
                p.start("http://127.0.0.1/x", 10, total);
                p.inc(500);
                p.finish();
                let p = Progress::new(true, m, "kubelet");
                p.fail();
            }
        }
    }
}
