//! Waiting for something outside the node: a deadline, backoff and progress lines.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Result};

use crate::step::RunOptions;
use nodeimage_core::retry::{self, Backoff, Deadline, Poll};

/// How long and how often to wait for something.
#[derive(Debug, Clone)]
pub struct WaitOptions {
    pub deadline: Duration,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// A progress line goes to the console at most this often (every attempt is logged).
    pub announce_every: Duration,
}

impl WaitOptions {
    pub fn minutes(m: u64) -> Self {
        WaitOptions {
            deadline: Duration::from_secs(m * 60),
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(10),
            announce_every: Duration::from_secs(30),
        }
    }
}

/// Rate-limited progress lines for a step that waits on something outside the node.
pub struct Progress<'a> {
    opts: Option<&'a RunOptions>,
    step: &'static str,
    started: Instant,
    every: Duration,
    last: std::cell::Cell<Option<Instant>>,
}

impl<'a> Progress<'a> {
    /// `opts` None: log only (no console lines).
    pub fn new(opts: Option<&'a RunOptions>, step: &'static str, every: Duration) -> Self {
        Progress {
            opts,
            step,
            started: Instant::now(),
            every,
            last: std::cell::Cell::new(None),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Record that the step is still waiting for `what` (the last answer was `last`).
    /// Logged every time; printed to the console (and kernel log) at most every
    /// `every`, and not in the first `every` (most waits are short).
    pub fn waiting(&self, what: &str, attempt: u32, last: &str) {
        let waited = self.started.elapsed();
        tracing::info!(
            step = self.step,
            waiting_for = what,
            attempt,
            waited_s = waited.as_secs(),
            last = last,
            "waiting"
        );
        let due = match self.last.get() {
            None => waited >= self.every,
            Some(t) => t.elapsed() >= self.every,
        };
        if due {
            self.last.set(Some(Instant::now()));
            if let Some(o) = self.opts {
                crate::step::announce(
                    o,
                    &format!(
                        "firstboot: {}: waiting {}s for {what}: {last}",
                        self.step,
                        waited.as_secs()
                    ),
                );
            }
        }
    }
}

/// Call `probe` until it succeeds or the deadline passes, with exponential backoff and
/// progress lines saying what the step waits for and the last answer.
pub fn wait_until(
    progress: &Progress,
    what: &str,
    w: &WaitOptions,
    mut probe: impl FnMut() -> std::result::Result<(), String>,
) -> Result<Duration> {
    let deadline = Deadline::after(w.deadline);
    let mut backoff = Backoff::new(w.initial_backoff, w.max_backoff);
    retry::wait_until(&deadline, &mut backoff, |attempt| match probe() {
        Ok(()) => Poll::Ready(()),
        Err(last) => {
            if !deadline.expired() {
                progress.waiting(what, attempt, &last);
            }
            Poll::Pending(last)
        }
    })
    .map_err(|t| {
        anyhow!(
            "timed out after {}s waiting for {what}; last: {}",
            progress.elapsed().as_secs(),
            t.last
        )
    })?;
    Ok(progress.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_until_succeeds_and_times_out_with_the_last_answer() {
        let p = Progress::new(None, "test", Duration::from_secs(30));
        let w = WaitOptions {
            deadline: Duration::from_millis(300),
            initial_backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(40),
            announce_every: Duration::from_secs(30),
        };
        let mut n = 0;
        wait_until(&p, "three calls", &w, || {
            n += 1;
            if n < 3 {
                Err(format!("call {n}"))
            } else {
                Ok(())
            }
        })
        .unwrap();
        assert_eq!(n, 3);
        let e = wait_until(
            &p,
            "the impossible",
            &w,
            || Err("connection refused".into()),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("waiting for the impossible; last: connection refused"),
            "{e}"
        );
    }
}
