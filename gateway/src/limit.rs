//! Token buckets that keep one client from flooding the gateway. Sans-IO:
//! time is passed in, so tests need no clock.

use tokio::time::Instant;

/// `rate` tokens per second, holding at most `burst`.
#[derive(Debug)]
pub struct Bucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// A full bucket; `rate == 0` means unlimited.
    pub fn new(rate: u32, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: f64::from(rate),
            burst,
            tokens: burst,
            at: now,
        }
    }

    /// Takes one token if there is one.
    pub fn take(&mut self, now: Instant) -> bool {
        self.take_up_to(1, now) == 1
    }

    /// Takes up to `n` tokens; returns how many it took.
    pub fn take_up_to(&mut self, n: usize, now: Instant) -> usize {
        if self.rate == 0.0 {
            return n;
        }
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
        // Whole tokens only; `tokens` is at most `burst`, a u32.
        let taken = (self.tokens.floor() as usize).min(n);
        self.tokens -= taken as f64;
        taken
    }

    /// How long until one token is there (zero if one is).
    pub fn wait(&self, now: Instant) -> std::time::Duration {
        if self.rate == 0.0 {
            return std::time::Duration::ZERO;
        }
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        let missing = 1.0 - (self.tokens + elapsed * self.rate);
        std::time::Duration::from_secs_f64((missing / self.rate).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn allows_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = Bucket::new(10, 5, t0);
        assert_eq!((0..8).filter(|_| b.take(t0)).count(), 5, "the burst");
        assert!(!b.take(t0));
        assert!(
            b.take(t0 + Duration::from_millis(100)),
            "one token per 100 ms"
        );
        assert!(!b.take(t0 + Duration::from_millis(150)));
        let later = t0 + Duration::from_secs(60);
        assert_eq!(
            (0..8).filter(|_| b.take(later)).count(),
            5,
            "refills to the burst, no more"
        );
        let mut unlimited = Bucket::new(0, 1, t0);
        assert!((0..10_000).all(|_| unlimited.take(t0)));
        assert_eq!(unlimited.take_up_to(500, t0), 500);
    }

    #[test]
    fn batches_take_what_is_there_and_say_how_long_to_wait() {
        let t0 = Instant::now();
        let mut b = Bucket::new(100, 10, t0);
        assert_eq!(b.take_up_to(25, t0), 10);
        assert_eq!(b.take_up_to(25, t0), 0);
        let wait = b.wait(t0);
        assert!(
            wait > Duration::from_millis(9) && wait <= Duration::from_millis(10),
            "{wait:?}"
        );
        assert_eq!(b.take_up_to(25, t0 + Duration::from_millis(50)), 5);
        assert_eq!(b.wait(t0 + Duration::from_secs(1)), Duration::ZERO);
    }
}
