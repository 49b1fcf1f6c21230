//! A circuit breaker per deployment: closed -> open -> half-open -> closed (or open again).
//!
//! - Closed: every call is admitted. It opens after `consecutive_failures` upstream faults in a row, or
//!   when the error ratio over the sliding window reaches `error_ratio` with at least `min_requests` calls.
//! - Open: nothing is admitted until the cooldown has passed. The cooldown doubles on each consecutive
//!   trip (up to `max_cooldown`) and carries up to 10% jitter, so replicas do not probe in lockstep.
//! - Half-open: up to `half_open_probes` calls are admitted at once. A success closes the breaker; a
//!   failure opens it again with a longer cooldown.
//!
//! Only upstream faults count; callers report client-caused outcomes (400s, disconnects) as `release`.
//! Time comes from tokio's clock, so tests run on a paused clock.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::BreakerConfig;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    /// Gauge value: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::HalfOpen => 1,
            State::Open => 2,
        }
    }
}

/// A state change, for logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: State,
    pub to: State,
}

#[derive(Debug)]
struct Inner {
    state: State,
    consecutive: u32,
    /// (time, failed) of recent calls within the window.
    window: VecDeque<(Instant, bool)>,
    open_until: Instant,
    trips: u32,
    probes_in_flight: u32,
    /// Counts trips: a probe admitted before the latest trip no longer holds a slot.
    epoch: u32,
}

#[derive(Debug)]
pub struct Breaker {
    cfg: BreakerConfig,
    inner: Mutex<Inner>,
    /// Source of jitter; seeded per breaker so tests stay reproducible.
    seed: u64,
}

/// Admission to call through a breaker. Report the outcome with [`Breaker::success`],
/// [`Breaker::failure`] or [`Breaker::release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    /// For a half-open probe, the epoch it was admitted in.
    probe: Option<u32>,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig, seed: u64) -> Self {
        Breaker {
            cfg,
            inner: Mutex::new(Inner {
                state: State::Closed,
                consecutive: 0,
                window: VecDeque::new(),
                open_until: Instant::now(),
                trips: 0,
                probes_in_flight: 0,
                epoch: 0,
            }),
            seed,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock only means another thread panicked mid-update; the state is still usable.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state now (an open breaker whose cooldown passed reports half-open).
    pub fn state(&self) -> State {
        let g = self.lock();
        if g.state == State::Open && Instant::now() >= g.open_until {
            State::HalfOpen
        } else {
            g.state
        }
    }

    /// Whether a call may go through now; `None` means skip this deployment.
    pub fn try_acquire(&self) -> (Option<Permit>, Option<Transition>) {
        let mut g = self.lock();
        let now = Instant::now();
        let mut transition = None;
        if g.state == State::Open {
            if now < g.open_until {
                return (None, None);
            }
            g.state = State::HalfOpen;
            g.probes_in_flight = 0;
            transition = Some(Transition {
                from: State::Open,
                to: State::HalfOpen,
            });
        }
        match g.state {
            State::Closed => (Some(Permit { probe: None }), transition),
            State::HalfOpen => {
                if g.probes_in_flight < self.cfg.half_open_probes {
                    g.probes_in_flight += 1;
                    (Some(Permit { probe: Some(g.epoch) }), transition)
                } else {
                    (None, transition)
                }
            }
            State::Open => (None, transition),
        }
    }

    pub fn success(&self, permit: Permit) -> Option<Transition> {
        let mut g = self.lock();
        let now = Instant::now();
        self.record(&mut g, now, false);
        g.consecutive = 0;
        Self::end_probe(&mut g, permit);
        if g.state == State::HalfOpen {
            g.state = State::Closed;
            g.trips = 0;
            g.window.clear();
            return Some(Transition {
                from: State::HalfOpen,
                to: State::Closed,
            });
        }
        None
    }

    pub fn failure(&self, permit: Permit) -> Option<Transition> {
        let mut g = self.lock();
        let now = Instant::now();
        self.record(&mut g, now, true);
        g.consecutive += 1;
        Self::end_probe(&mut g, permit);
        match g.state {
            State::HalfOpen => Some(self.trip(&mut g, now, State::HalfOpen)),
            State::Closed => {
                let failures = g.window.iter().filter(|(_, f)| *f).count();
                let total = g.window.len();
                let ratio_trip = total >= self.cfg.min_requests as usize
                    && total > 0
                    && failures as f64 / total as f64 >= self.cfg.error_ratio;
                if g.consecutive >= self.cfg.consecutive_failures || ratio_trip {
                    Some(self.trip(&mut g, now, State::Closed))
                } else {
                    None
                }
            }
            State::Open => None,
        }
    }

    /// The call ended in a way that says nothing about the upstream (client error, client gone).
    pub fn release(&self, permit: Permit) {
        if permit.probe.is_some() {
            Self::end_probe(&mut self.lock(), permit);
        }
    }

    /// Frees a probe's slot, unless the breaker tripped since it was admitted (the slots were reset).
    fn end_probe(g: &mut Inner, permit: Permit) {
        if permit.probe == Some(g.epoch) {
            g.probes_in_flight = g.probes_in_flight.saturating_sub(1);
        }
    }

    /// Opens the breaker now (e.g. on a hint from another replica). No-op unless closed.
    pub fn force_open(&self) -> Option<Transition> {
        let mut g = self.lock();
        (g.state == State::Closed).then(|| self.trip(&mut g, Instant::now(), State::Closed))
    }

    /// Seconds until an open breaker admits a probe (0 when not open).
    pub fn retry_in(&self) -> Duration {
        let g = self.lock();
        if g.state == State::Open {
            g.open_until.saturating_duration_since(Instant::now())
        } else {
            Duration::ZERO
        }
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.lock().consecutive
    }

    fn record(&self, g: &mut Inner, now: Instant, failed: bool) {
        let window = Duration::from_secs(self.cfg.window_secs);
        while g.window.front().is_some_and(|(t, _)| now.duration_since(*t) > window) {
            g.window.pop_front();
        }
        g.window.push_back((now, failed));
        // Bound memory under very high rates: the ratio over the newest 10k calls is plenty.
        if g.window.len() > 10_000 {
            g.window.pop_front();
        }
    }

    fn trip(&self, g: &mut Inner, now: Instant, from: State) -> Transition {
        let base = Duration::from_secs(self.cfg.cooldown_secs);
        let max = Duration::from_secs(self.cfg.max_cooldown_secs.max(self.cfg.cooldown_secs));
        let factor = 1u32 << g.trips.min(16);
        let cooldown = base.saturating_mul(factor).min(max);
        // Up to 10% extra, deterministic per breaker and trip count.
        let jitter_frac = (splitmix(self.seed ^ u64::from(g.trips)) % 1000) as f64 / 10_000.0;
        let cooldown = cooldown + cooldown.mul_f64(jitter_frac);
        g.trips = g.trips.saturating_add(1);
        g.state = State::Open;
        g.open_until = now + cooldown;
        g.consecutive = 0;
        g.probes_in_flight = 0;
        g.epoch = g.epoch.wrapping_add(1);
        g.window.clear();
        Transition { from, to: State::Open }
    }
}

pub fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            error_ratio: 0.5,
            window_secs: 30,
            min_requests: 10,
            cooldown_secs: 30,
            max_cooldown_secs: 300,
            half_open_probes: 1,
        }
    }

    fn fail(b: &Breaker) -> Option<Transition> {
        let p = b.try_acquire().0.unwrap();
        b.failure(p)
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_exactly_n_consecutive_failures() {
        let b = Breaker::new(cfg(), 1);
        assert_eq!(fail(&b), None);
        assert_eq!(fail(&b), None);
        let p = b.try_acquire().0.unwrap();
        b.success(p);
        assert_eq!(fail(&b), None);
        assert_eq!(fail(&b), None);
        assert_eq!(
            fail(&b),
            Some(Transition {
                from: State::Closed,
                to: State::Open
            })
        );
        assert_eq!(b.state(), State::Open);
        assert!(b.try_acquire().0.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_after_cooldown_admits_one_probe_then_closes() {
        let b = Breaker::new(cfg(), 1);
        for _ in 0..3 {
            fail(&b);
        }
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(b.try_acquire().0.is_none());
        // Cooldown is 30 s plus at most 10% jitter.
        tokio::time::advance(Duration::from_secs(4)).await;
        let (p, t) = b.try_acquire();
        let p = p.unwrap();
        assert_eq!(
            t,
            Some(Transition {
                from: State::Open,
                to: State::HalfOpen
            })
        );
        assert!(b.try_acquire().0.is_none(), "only one probe at a time");
        assert_eq!(
            b.success(p),
            Some(Transition {
                from: State::HalfOpen,
                to: State::Closed
            })
        );
        assert!(b.try_acquire().0.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probe_reopens_with_longer_cooldown() {
        let b = Breaker::new(cfg(), 1);
        for _ in 0..3 {
            fail(&b);
        }
        tokio::time::advance(Duration::from_secs(34)).await;
        let p = b.try_acquire().0.unwrap();
        assert_eq!(
            b.failure(p),
            Some(Transition {
                from: State::HalfOpen,
                to: State::Open
            })
        );
        // Second cooldown is 60 s (+ jitter): still open after 40 s.
        tokio::time::advance(Duration::from_secs(40)).await;
        assert!(b.try_acquire().0.is_none());
        tokio::time::advance(Duration::from_secs(27)).await;
        assert!(b.try_acquire().0.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn error_ratio_trips_without_consecutive_run() {
        let b = Breaker::new(cfg(), 1);
        // Alternate success/failure: never 3 in a row, but 50% errors over >= 10 calls.
        let mut opened = None;
        for i in 0..10 {
            let p = b.try_acquire().0.unwrap();
            let t = if i % 2 == 0 { b.success(p) } else { b.failure(p) };
            if t.is_some() {
                opened = Some(i);
            }
        }
        assert_eq!(opened, Some(9));
        assert_eq!(b.state(), State::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn released_probe_frees_its_slot() {
        let b = Breaker::new(cfg(), 1);
        for _ in 0..3 {
            fail(&b);
        }
        tokio::time::advance(Duration::from_secs(40)).await;
        let p = b.try_acquire().0.unwrap();
        b.release(p);
        assert!(b.try_acquire().0.is_some());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_probe_does_not_free_a_slot_of_a_later_half_open() {
        let b = Breaker::new(cfg(), 1);
        // A call admitted while closed, still running when the breaker trips.
        let stale = b.try_acquire().0.unwrap();
        for _ in 0..3 {
            fail(&b);
        }
        tokio::time::advance(Duration::from_secs(34)).await;
        let first_probe = b.try_acquire().0.unwrap();
        // The old call fails now: half-open -> open again (60 s + jitter).
        b.failure(stale);
        tokio::time::advance(Duration::from_secs(67)).await;
        let second_probe = b.try_acquire().0.unwrap();
        // The first episode's probe ends (its client left): that says nothing about this episode.
        b.release(first_probe);
        assert!(
            b.try_acquire().0.is_none(),
            "half_open_probes = 1 but a second probe was admitted while {second_probe:?} runs"
        );
    }
}
