//! Token buckets that keep one client from flooding the gateway, alone
//! ([`Bucket`]) or one per remote address ([`PerAddress`]). Sans-IO: time is
//! passed in, so tests need no clock.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

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

    /// A full bucket refilled at `rate` tokens per second (fractions allowed,
    /// e.g. 10 a minute); `rate == 0` means unlimited.
    pub fn per_second(rate: f64, burst: u32, now: Instant) -> Self {
        let burst = f64::from(burst.max(1));
        Self {
            rate: rate.max(0.0),
            burst,
            tokens: burst,
            at: now,
        }
    }

    /// Whether the bucket is full at `now` (it has been idle long enough
    /// to forget).
    fn is_full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.rate == 0.0 || self.tokens + elapsed * self.rate >= self.burst
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
        self.refill(now);
        // Whole tokens only; `tokens` is at most `burst`, a u32.
        let taken = (self.tokens.floor() as usize).min(n);
        self.tokens -= taken as f64;
        taken
    }

    /// Takes `n` tokens if all are there; otherwise takes none and says
    /// how long until they are. `n` above the burst is taken as the burst
    /// (a bucket never holds more).
    pub fn try_take(&mut self, n: u32, now: Instant) -> Result<(), std::time::Duration> {
        if self.rate == 0.0 {
            return Ok(());
        }
        self.refill(now);
        let n = f64::from(n).min(self.burst);
        if self.tokens >= n {
            self.tokens -= n;
            Ok(())
        } else {
            Err(std::time::Duration::from_secs_f64(
                (n - self.tokens) / self.rate,
            ))
        }
    }

    /// Takes `n` tokens even if they are not there: the bucket goes into
    /// debt, which later takes wait out (for work that must not be refused,
    /// only paid for).
    pub fn charge(&mut self, n: u32, now: Instant) {
        if self.rate == 0.0 {
            return;
        }
        self.refill(now);
        self.tokens -= f64::from(n);
    }

    /// Tokens used out of the burst at `now` (0 for a full bucket).
    pub fn used(&self, now: Instant) -> u64 {
        if self.rate == 0.0 {
            return 0;
        }
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        let tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        (self.burst - tokens).max(0.0).ceil() as u64
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.at = now;
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

/// One [`Bucket`] per remote IP address, for listeners anyone can reach
/// (the route endpoint, failed admin API logins).
pub type PerAddress = PerKey<IpAddr>;

/// One [`Bucket`] per key (an address, a user). It remembers at most
/// `capacity` keys: when full it forgets those whose bucket refilled, and
/// if none did, an arbitrary one, so an attacker with many keys costs
/// memory in proportion to `capacity`, never more.
#[derive(Debug)]
pub struct PerKey<K> {
    rate: f64,
    burst: u32,
    capacity: usize,
    buckets: HashMap<K, Bucket>,
}

impl<K: std::hash::Hash + Eq + Clone> PerKey<K> {
    /// `rate` tokens per second (fractions allowed), `burst` at most, for
    /// up to `capacity` addresses at once.
    pub fn new(rate: f64, burst: u32, capacity: usize) -> Self {
        Self {
            rate,
            burst,
            capacity: capacity.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes a token of `addr`'s bucket: `Ok` if there was one, else how
    /// long until there is.
    pub fn take(&mut self, addr: K, now: Instant) -> Result<(), Duration> {
        let bucket = self.bucket(addr, now);
        if bucket.take(now) {
            Ok(())
        } else {
            Err(bucket.wait(now))
        }
    }

    /// `Err` with the wait if `addr` has no token left, without taking one.
    pub fn check(&self, addr: K, now: Instant) -> Result<(), Duration> {
        match self.buckets.get(&addr) {
            Some(bucket) if bucket.wait(now) > Duration::ZERO => Err(bucket.wait(now)),
            _ => Ok(()),
        }
    }

    fn bucket(&mut self, addr: K, now: Instant) -> &mut Bucket {
        if !self.buckets.contains_key(&addr) && self.buckets.len() >= self.capacity {
            self.buckets.retain(|_, b| !b.is_full(now));
            if self.buckets.len() >= self.capacity {
                if let Some(any) = self.buckets.keys().next().cloned() {
                    self.buckets.remove(&any);
                }
            }
        }
        let (rate, burst) = (self.rate, self.burst);
        self.buckets
            .entry(addr)
            .or_insert_with(|| Bucket::per_second(rate, burst, now))
    }

    /// Addresses remembered now.
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    /// Whether no address is remembered.
    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
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

    #[test]
    fn addresses_have_their_own_buckets_and_memory_is_bounded() {
        let t0 = Instant::now();
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        let mut limits = PerAddress::new(1.0, 2, 3);
        assert!(limits.take(a, t0).is_ok());
        assert!(limits.take(a, t0).is_ok());
        let wait = limits.take(a, t0).expect_err("a's burst is spent");
        assert!(wait > Duration::from_millis(900), "{wait:?}");
        assert!(limits.check(a, t0).is_err());
        assert!(limits.take(b, t0).is_ok(), "b is not held back by a");
        assert!(limits.check(b, t0).is_ok());
        for i in 0..100u8 {
            let _ = limits.take([192, 168, 0, i].into(), t0);
        }
        assert!(limits.len() <= 3, "at most the capacity is remembered");
        let later = t0 + Duration::from_secs(10);
        assert!(limits.take(a, later).is_ok(), "refilled");
    }

    #[test]
    fn weighted_takes_are_all_or_nothing_and_debts_are_paid_in_time() {
        let t0 = Instant::now();
        let mut b = Bucket::new(100, 500, t0);
        assert_eq!(b.try_take(400, t0), Ok(()));
        assert_eq!(b.used(t0), 400);
        let wait = b.try_take(200, t0).expect_err("100 left");
        assert_eq!(wait, Duration::from_secs(1), "100 missing at 100/s");
        assert_eq!(b.used(t0), 400, "a refused take takes nothing");
        assert_eq!(
            b.try_take(10_000, t0 + Duration::from_secs(5)),
            Ok(()),
            "capped at the burst"
        );
        b.charge(300, t0 + Duration::from_secs(5));
        assert_eq!(b.used(t0 + Duration::from_secs(5)), 800);
        assert!(
            b.try_take(1, t0 + Duration::from_secs(7)).is_err(),
            "still in debt"
        );
        assert_eq!(b.try_take(1, t0 + Duration::from_secs(9)), Ok(()));
    }
}
