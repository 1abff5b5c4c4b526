//! Retrying and polling with one vocabulary: a [`Backoff`] says how long to pause between
//! tries, a [`Deadline`] says when to give up, and [`wait_until`] tries, pauses and tries
//! again until the probe is ready or the deadline has passed.
//!
//! Blocking (`std::thread::sleep`): both programs run one thing at a time, and a retry
//! loop that sleeps is the simplest one to read. Every pause is clipped to the deadline,
//! so a wait never overruns it by more than one try.

use std::time::{Duration, Instant};

/// Exponential backoff: `initial`, doubled after every pause up to `max`. With
/// [`Backoff::with_jitter`] ("equal jitter") half of each delay is fixed and the other
/// half random, so clients that failed together spread out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
    jitter: bool,
}

impl Backoff {
    /// Start at `initial` (at most `max`), double up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let initial = initial.min(max);
        Backoff {
            initial,
            max,
            next: initial,
            jitter: false,
        }
    }

    /// The same pause every time (polling).
    pub fn constant(every: Duration) -> Self {
        Backoff::new(every, every)
    }

    /// Randomise the second half of every delay.
    pub fn with_jitter(mut self) -> Self {
        self.jitter = true;
        self
    }

    /// The pause before the next try; the one after it is twice as long (capped).
    pub fn next_delay(&mut self) -> Duration {
        let d = self.next;
        self.next = self.next.saturating_mul(2).min(self.max);
        self.jittered(d)
    }

    /// The pause after the `failures`-th failure in a row (1-based), without changing the
    /// state: `initial · 2^(failures-1)`, capped at `max` (and jittered when asked).
    pub fn delay_after(&self, failures: u32) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32 << failures.saturating_sub(1).min(20))
            .min(self.max);
        self.jittered(exp)
    }

    /// Start again from `initial`.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }

    fn jittered(&self, d: Duration) -> Duration {
        if !self.jitter {
            return d;
        }
        use rand::Rng;
        let half = d / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(rand::thread_rng().gen_range(0..=nanos))
    }
}

impl Iterator for Backoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        Some(self.next_delay())
    }
}

/// When to give up, and when the clock started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    start: Instant,
    end: Instant,
}

impl Deadline {
    /// `limit` from now.
    pub fn after(limit: Duration) -> Self {
        Deadline::starting_at(Instant::now(), limit)
    }

    /// `limit` from `start`.
    pub fn starting_at(start: Instant, limit: Duration) -> Self {
        // A limit too large for the clock is "never" in practice: a century.
        let end = start
            .checked_add(limit)
            .or_else(|| start.checked_add(Duration::from_secs(100 * 365 * 86_400)))
            .unwrap_or(start);
        Deadline { start, end }
    }

    /// This deadline, or `limit` from now when that comes first (a bounded wait inside a
    /// longer one). The new deadline's clock starts now.
    pub fn within(&self, limit: Duration) -> Deadline {
        let inner = Deadline::after(limit);
        Deadline {
            start: inner.start,
            end: inner.end.min(self.end),
        }
    }

    pub fn started(&self) -> Instant {
        self.start
    }

    /// Time since the clock started.
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Time left; zero once the deadline has passed.
    pub fn remaining(&self) -> Duration {
        self.end.saturating_duration_since(Instant::now())
    }

    pub fn expired(&self) -> bool {
        Instant::now() >= self.end
    }

    /// Sleep for `d`, but not past the deadline.
    pub fn sleep(&self, d: Duration) {
        let d = d.min(self.remaining());
        if !d.is_zero() {
            std::thread::sleep(d);
        }
    }
}

/// What one try of [`wait_until`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Poll<T, W> {
    /// Done: stop and return this.
    Ready(T),
    /// Not yet (`W` says why): pause for the next backoff delay, then try again.
    Pending(W),
    /// Not yet, but something moved: try again at once, without a pause.
    Again(W),
}

/// The deadline passed before the probe was ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimedOut<W> {
    /// What the last try said.
    pub last: W,
    /// How many tries were made.
    pub attempts: u32,
    /// Time since the deadline's clock started.
    pub waited: Duration,
}

/// Call `probe` (with the 1-based attempt number) until it is [`Poll::Ready`] or the
/// deadline has passed. The first try always runs; after a [`Poll::Pending`] the loop
/// pauses for `backoff`'s next delay, clipped to the deadline, so the last try falls on
/// the deadline. A probe that must stop early with an error returns `Ready(Err(..))`.
pub fn wait_until<T, W>(
    deadline: &Deadline,
    backoff: &mut Backoff,
    mut probe: impl FnMut(u32) -> Poll<T, W>,
) -> Result<T, TimedOut<W>> {
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let (last, pause) = match probe(attempts) {
            Poll::Ready(t) => return Ok(t),
            Poll::Pending(w) => (w, true),
            Poll::Again(w) => (w, false),
        };
        if deadline.expired() {
            return Err(TimedOut {
                last,
                attempts,
                waited: deadline.elapsed(),
            });
        }
        if pause {
            deadline.sleep(backoff.next_delay());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(350));
        let v: Vec<Duration> = b.by_ref().take(4).collect();
        assert_eq!(v, [ms(100), ms(200), ms(350), ms(350)]);
        b.reset();
        assert_eq!(b.next_delay(), ms(100));
        assert_eq!(
            Backoff::constant(ms(50)).take(3).collect::<Vec<_>>(),
            [ms(50); 3]
        );
        assert_eq!(b.delay_after(1), ms(100));
        assert_eq!(b.delay_after(3), ms(350));
        assert_eq!(b.delay_after(60), ms(350));
    }

    #[test]
    fn jitter_keeps_the_fixed_half() {
        let ms = Duration::from_millis;
        let b = Backoff::new(ms(400), ms(400)).with_jitter();
        for _ in 0..50 {
            let d = b.delay_after(1);
            assert!(d >= ms(200) && d <= ms(400), "{d:?}");
        }
    }

    #[test]
    fn deadlines_nest_and_never_overflow() {
        let outer = Deadline::after(Duration::from_millis(50));
        let inner = outer.within(Duration::from_secs(3600));
        assert!(inner.remaining() <= Duration::from_millis(50));
        let never = Deadline::after(Duration::MAX);
        assert!(!never.expired() && never.remaining() > Duration::from_secs(86_400));
        let past = Deadline::after(Duration::ZERO);
        assert!(past.expired() && past.remaining().is_zero());
    }

    #[test]
    fn wait_until_is_ready_pending_again_and_times_out_with_the_last_answer() {
        let ms = Duration::from_millis;
        let d = Deadline::after(ms(500));
        let mut b = Backoff::new(ms(5), ms(20));
        let r = wait_until(&d, &mut b, |n| {
            if n < 3 {
                Poll::Pending(n)
            } else {
                Poll::Ready(n * 10)
            }
        });
        assert_eq!(r, Ok(30));
        // Again: no pause at all.
        let d = Deadline::after(Duration::from_secs(60));
        let mut b = Backoff::constant(Duration::from_secs(60));
        let t = Instant::now();
        let r = wait_until(&d, &mut b, |n| {
            if n < 100 {
                Poll::Again(())
            } else {
                Poll::Ready(n)
            }
        });
        assert_eq!(r, Ok(100));
        assert!(t.elapsed() < Duration::from_secs(5));
        // The deadline passes: the last answer and the count of tries.
        let d = Deadline::after(ms(60));
        let mut b = Backoff::constant(ms(10));
        let e = wait_until(&d, &mut b, |n| Poll::<(), _>::Pending(format!("try {n}"))).unwrap_err();
        assert!(e.attempts >= 2, "{e:?}");
        assert_eq!(e.last, format!("try {}", e.attempts));
        assert!(e.waited >= ms(60));
    }
}
