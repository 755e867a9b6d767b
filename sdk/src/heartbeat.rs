//! The adaptive heartbeat interval, as a sans-IO state machine: time comes
//! in as `now`, decisions come out as an interval. The session's heartbeat
//! task drives it; tests drive it with synthetic time.
//!
//! Why adapt: a phone's radio wakes for every ping, so the longer the
//! interval the better the battery, but a NAT or firewall forgets an idle
//! UDP mapping after some unknown time (often 30 s to a few minutes), and
//! a connection idle for longer than that silently dies. The interval
//! therefore searches for the longest one that stays healthy:
//!
//! - it starts at the server's suggested interval;
//! - after [`GROW_AFTER`] healthy beats at the current interval it grows:
//!   doubles while no interval has failed, else moves halfway towards the
//!   shortest interval known to fail;
//! - a NAT-timeout-like loss (the connection died while idle at an
//!   interval longer than the last one known good) marks that interval as
//!   bad and falls back to the longest known good one (or halves);
//! - it always stays within the server's `[min, max]` from the Welcome
//!   (the server clamps the announced `Ping.next_within_ms` to the same
//!   bounds, and closes a session after `max_missed` silent intervals);
//! - in the foreground the app wants quick failure detection more than
//!   battery, so the interval is at most the server's suggested one.
//!
//! Invariants: `min <= interval() <= max`; `good < bad` whenever both are
//! known (a loss at or below `good` lowers `good`).

use std::time::{Duration, Instant};

/// Healthy beats at one interval before trying a longer one.
pub const GROW_AFTER: u32 = 3;

/// Intervals closer than this to the known bad one are not worth probing.
const RESOLUTION: Duration = Duration::from_secs(5);

/// The server's heartbeat bounds, from the Welcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeartbeatBounds {
    /// The interval the server suggests.
    pub suggested: Duration,
    /// Shortest interval allowed.
    pub min: Duration,
    /// Longest interval allowed.
    pub max: Duration,
}

impl HeartbeatBounds {
    /// Bounds from the Welcome's policy, repaired if inconsistent.
    pub(crate) fn from_wire(policy: Option<&qim_proto::v1::HeartbeatPolicy>) -> Self {
        let ms = |v: u32| Duration::from_millis(u64::from(v));
        let Some(p) = policy else {
            let d = Duration::from_secs(30);
            return Self {
                suggested: d,
                min: d,
                max: d,
            };
        };
        let suggested = ms(p.interval_ms.max(100));
        let min = ms(p.min_interval_ms).clamp(Duration::from_millis(100), suggested);
        let max = ms(p.max_interval_ms).max(suggested);
        Self {
            suggested,
            min,
            max,
        }
    }
}

/// The adaptive interval; one per client, surviving reconnects (what the
/// network allows does not change with a new connection, but does with a
/// new network: see [`network_changed`](Self::network_changed)).
#[derive(Debug, Clone)]
pub struct AdaptiveHeartbeat {
    bounds: HeartbeatBounds,
    /// The interval used in the background.
    current: Duration,
    /// Longest interval that has been healthy (idle that long, then a pong).
    good: Option<Duration>,
    /// Shortest interval after which the connection died while idle.
    bad: Option<Duration>,
    /// Healthy beats in a row at `current`.
    streak: u32,
    /// When the last pong arrived (start of the current idle period).
    last_pong: Option<Instant>,
    foreground: bool,
}

impl AdaptiveHeartbeat {
    /// Starts at the server's suggested interval, in the foreground.
    pub fn new(bounds: HeartbeatBounds) -> Self {
        Self {
            bounds,
            current: bounds.suggested,
            good: None,
            bad: None,
            streak: 0,
            last_pong: None,
            foreground: true,
        }
    }

    /// New bounds from a new Welcome: what was learnt is kept, clamped.
    pub fn set_bounds(&mut self, bounds: HeartbeatBounds) {
        self.bounds = bounds;
        self.current = self.current.clamp(bounds.min, bounds.max);
        self.last_pong = None;
    }

    /// The bounds in force.
    pub fn bounds(&self) -> HeartbeatBounds {
        self.bounds
    }

    /// The interval to wait before the next ping (and to announce in it).
    pub fn interval(&self) -> Duration {
        let i = if self.foreground {
            self.current.min(self.bounds.suggested)
        } else {
            self.current
        };
        i.clamp(self.bounds.min, self.bounds.max)
    }

    /// The learnt background interval, whatever the foreground state.
    pub fn background_interval(&self) -> Duration {
        self.current
    }

    /// The app moved to the foreground (`true`) or background.
    pub fn set_foreground(&mut self, foreground: bool) {
        self.foreground = foreground;
    }

    /// Whether the app said it is in the foreground.
    pub fn is_foreground(&self) -> bool {
        self.foreground
    }

    /// A pong arrived at `now`: the connection was healthy across the idle
    /// time since the previous pong.
    pub fn on_pong(&mut self, now: Instant) {
        let idle = self.last_pong.map(|at| now.saturating_duration_since(at));
        self.last_pong = Some(now);
        let Some(idle) = idle else { return };
        // Only an idle period close to the background interval is evidence
        // for it (a foreground beat proves less).
        if idle + idle / 10 < self.current {
            return;
        }
        if self.good.is_none_or(|g| g < self.current) {
            self.good = Some(self.current);
        }
        self.streak += 1;
        if self.streak >= GROW_AFTER {
            self.streak = 0;
            self.grow();
        }
    }

    fn grow(&mut self) {
        let next = match self.bad {
            None => self.current.saturating_mul(2),
            Some(bad) => {
                if bad.saturating_sub(self.current) <= RESOLUTION {
                    return;
                }
                self.current + (bad - self.current) / 2
            }
        };
        self.current = next.clamp(self.bounds.min, self.bounds.max);
    }

    /// The connection died without a close from the server at `now` (no
    /// pong in time, idle timeout). Treated as a NAT timeout when it had
    /// been idle for about the background interval; returns whether it was.
    pub fn on_loss(&mut self, now: Instant) -> bool {
        let idle = self
            .last_pong
            .map(|at| now.saturating_duration_since(at))
            .unwrap_or_default();
        self.last_pong = None;
        self.streak = 0;
        if idle < self.current / 2 {
            // Died while busy: not the NAT forgetting an idle mapping.
            return false;
        }
        let failed = self.current;
        self.bad = Some(self.bad.map_or(failed, |b| b.min(failed)));
        if self.good.is_some_and(|g| g >= failed) {
            // What used to work no longer does: forget it.
            self.good = None;
        }
        self.current = match self.good {
            Some(good) => good,
            None => failed / 2,
        }
        .clamp(self.bounds.min, self.bounds.max);
        true
    }

    /// A new network (Wi-Fi to cellular…) has a NAT of its own: start the
    /// search again from the server's suggestion.
    pub fn network_changed(&mut self) {
        self.current = self.bounds.suggested;
        self.good = None;
        self.bad = None;
        self.streak = 0;
        self.last_pong = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds() -> HeartbeatBounds {
        HeartbeatBounds {
            suggested: Duration::from_secs(30),
            min: Duration::from_secs(10),
            max: Duration::from_secs(300),
        }
    }

    /// Runs `beats` healthy beats in the background, each after the
    /// interval the machine asks for; returns the time reached.
    fn healthy(hb: &mut AdaptiveHeartbeat, mut now: Instant, beats: u32) -> Instant {
        for _ in 0..beats {
            now += hb.interval();
            hb.on_pong(now);
        }
        now
    }

    #[test]
    fn grows_while_healthy_up_to_the_server_max() {
        let mut hb = AdaptiveHeartbeat::new(bounds());
        hb.set_foreground(false);
        let t0 = Instant::now();
        hb.on_pong(t0);
        let now = healthy(&mut hb, t0, GROW_AFTER);
        assert_eq!(hb.interval(), Duration::from_secs(60));
        let now = healthy(&mut hb, now, GROW_AFTER);
        assert_eq!(hb.interval(), Duration::from_secs(120));
        healthy(&mut hb, now, 10 * GROW_AFTER);
        assert_eq!(hb.interval(), Duration::from_secs(300), "capped at max");
    }

    #[test]
    fn shrinks_after_a_nat_timeout_and_searches_between_good_and_bad() {
        let mut hb = AdaptiveHeartbeat::new(bounds());
        hb.set_foreground(false);
        let t0 = Instant::now();
        hb.on_pong(t0);
        let now = healthy(&mut hb, t0, 2 * GROW_AFTER);
        assert_eq!(hb.interval(), Duration::from_secs(120));
        // The NAT forgets the mapping after ~90 s: the connection dies idle.
        let died = now + Duration::from_secs(120);
        assert!(hb.on_loss(died), "idle loss counts as a NAT timeout");
        assert_eq!(
            hb.interval(),
            Duration::from_secs(60),
            "back to the longest known good"
        );
        // Healthy again at 60 s: try halfway to the bad 120 s.
        hb.on_pong(died + Duration::from_secs(1));
        let now = healthy(&mut hb, died + Duration::from_secs(1), GROW_AFTER);
        assert_eq!(hb.interval(), Duration::from_secs(90));
        // 90 fails too.
        assert!(hb.on_loss(now + Duration::from_secs(90)));
        assert_eq!(hb.interval(), Duration::from_secs(60));
        // Now it probes 75, and never 120 again.
        let t = now + Duration::from_secs(100);
        hb.on_pong(t);
        let t = healthy(&mut hb, t, GROW_AFTER);
        assert_eq!(hb.interval(), Duration::from_secs(75));
        healthy(&mut hb, t, 20 * GROW_AFTER);
        assert!(hb.interval() < Duration::from_secs(90));
        assert!(hb.interval() >= Duration::from_secs(80));
    }

    #[test]
    fn a_loss_while_busy_is_not_a_nat_timeout() {
        let mut hb = AdaptiveHeartbeat::new(bounds());
        hb.set_foreground(false);
        let t0 = Instant::now();
        hb.on_pong(t0);
        assert!(!hb.on_loss(t0 + Duration::from_secs(2)));
        assert_eq!(hb.interval(), Duration::from_secs(30));
    }

    #[test]
    fn never_below_the_server_min() {
        let mut hb = AdaptiveHeartbeat::new(bounds());
        hb.set_foreground(false);
        let mut now = Instant::now();
        for _ in 0..10 {
            hb.on_pong(now);
            now += hb.interval();
            hb.on_loss(now);
        }
        assert_eq!(hb.interval(), Duration::from_secs(10));
    }

    #[test]
    fn foreground_uses_at_most_the_suggested_interval() {
        let mut hb = AdaptiveHeartbeat::new(bounds());
        hb.set_foreground(false);
        let t0 = Instant::now();
        hb.on_pong(t0);
        healthy(&mut hb, t0, GROW_AFTER);
        assert_eq!(hb.interval(), Duration::from_secs(60));
        hb.set_foreground(true);
        assert_eq!(hb.interval(), Duration::from_secs(30));
        assert_eq!(hb.background_interval(), Duration::from_secs(60));
        // Foreground beats (30 s idle) are no evidence for 60 s.
        let t = healthy(&mut hb, t0 + Duration::from_secs(100), 10);
        assert_eq!(hb.background_interval(), Duration::from_secs(60));
        hb.set_foreground(false);
        assert_eq!(hb.interval(), Duration::from_secs(60));
        hb.on_pong(t);
    }

    #[test]
    fn new_bounds_clamp_and_a_new_network_restarts_the_search() {
        let mut hb = AdaptiveHeartbeat::new(bounds());
        hb.set_foreground(false);
        let t0 = Instant::now();
        hb.on_pong(t0);
        healthy(&mut hb, t0, 3 * GROW_AFTER);
        assert_eq!(hb.interval(), Duration::from_secs(240));
        hb.set_bounds(HeartbeatBounds {
            suggested: Duration::from_secs(20),
            min: Duration::from_secs(5),
            max: Duration::from_secs(60),
        });
        assert_eq!(hb.interval(), Duration::from_secs(60));
        hb.network_changed();
        assert_eq!(hb.interval(), Duration::from_secs(20));
    }

    #[test]
    fn bounds_from_the_wire_are_repaired() {
        let b = HeartbeatBounds::from_wire(Some(&qim_proto::v1::HeartbeatPolicy {
            interval_ms: 30_000,
            min_interval_ms: 60_000,
            max_interval_ms: 1_000,
            max_missed: 3,
        }));
        assert_eq!(b.min, Duration::from_secs(30));
        assert_eq!(b.max, Duration::from_secs(30));
        assert_eq!(
            HeartbeatBounds::from_wire(None).suggested,
            Duration::from_secs(30)
        );
    }
}
