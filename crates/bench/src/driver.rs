//! The two load shapes, independent of HTTP so they can be tested on a paused clock.
//!
//! * Closed loop (Locust-like): `users` tasks each send a request, wait for it, optionally think,
//!   and repeat. Users start `1/spawn_rate` seconds apart. Latency is measured from the send.
//! * Open loop: request `i` is due at `start + i / rate`, whatever happened to earlier ones.
//!   Latency is measured from that intended time, so a slow server cannot hide its queueing
//!   delay by slowing the generator down (no coordinated omission). `max_in_flight` bounds memory.
//!
//! Both stop when the run time is over (no new requests; those in flight get `grace` to finish,
//! then are aborted and counted as unfinished) or after exactly `requests` requests, or at once
//! when the `stop` future given to [`drive`] completes (Ctrl-C).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout_at};

use crate::stats::{Outcome, Sample, Stats};

/// Sends request number `seq`; latency is measured from `start`.
pub trait Exec: Send + Sync + 'static {
    fn exec(&self, seq: u64, start: Instant) -> impl Future<Output = Sample> + Send;
}

#[derive(Debug, Clone, PartialEq)]
pub enum Load {
    Closed {
        users: u32,
        spawn_rate: Option<f64>,
        think: Duration,
    },
    Open {
        rate: f64,
        max_in_flight: usize,
    },
}

#[derive(Debug, Clone)]
pub struct Plan {
    pub load: Load,
    pub run_time: Option<Duration>,
    pub requests: Option<u64>,
    pub grace: Duration,
}

/// Thirty years: longer than any run, yet short enough to add to any clock reading.
const FOREVER: Duration = Duration::from_secs(30 * 365 * 86_400);

/// `t + d`, with `d` capped at [`FOREVER`]: a huge `--run-time`, `--grace` or `--think-time` means
/// "practically never" instead of overflowing the clock (a panic).
fn after(t: Instant, d: Duration) -> Instant {
    t + d.min(FOREVER)
}

/// State shared by the workers, the progress bar and the caller.
pub struct Shared {
    stats: Mutex<Stats>,
    pub completed: AtomicU64,
    pub errors: AtomicU64,
    pub in_flight: AtomicU64,
    /// Open loop: requests sent so far.
    sent: AtomicU64,
}

impl Shared {
    pub fn new(stats: Stats) -> Self {
        Self {
            stats: Mutex::new(stats),
            completed: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            in_flight: AtomicU64::new(0),
            sent: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn record(&self, sample: Sample) {
        if sample.outcome != Outcome::Ok {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.lock().record(sample);
        self.completed.fetch_add(1, Ordering::Relaxed);
    }

    /// Takes the accumulated statistics out (leaves an empty set behind).
    pub fn take_stats(&self) -> anyhow::Result<Stats> {
        let fresh = Stats::new()?;
        Ok(std::mem::replace(&mut *self.lock(), fresh))
    }
}

/// What the driver knows that the samples do not.
#[derive(Debug, Clone, PartialEq)]
pub struct RunSummary {
    pub elapsed: Duration,
    pub unfinished: u64,
    pub unsent: u64,
    pub max_lag: Option<Duration>,
}

/// Runs the plan, or until `stop` completes: then the requests in flight are aborted (unfinished),
/// and in open loop those due by then but held back by `max_in_flight` are unsent.
pub async fn drive<E: Exec>(
    exec: Arc<E>,
    plan: &Plan,
    shared: Arc<Shared>,
    stop: impl Future<Output = ()>,
) -> RunSummary {
    let start = Instant::now();
    let sh = shared.clone();
    let run = async move {
        match plan.load {
            Load::Closed {
                users,
                spawn_rate,
                think,
            } => closed_loop(exec, plan, start, users, spawn_rate, think, sh).await,
            Load::Open { rate, max_in_flight } => open_loop(exec, plan, start, rate, max_in_flight.max(1), sh).await,
        }
    };
    tokio::select! {
        summary = run => summary,
        () = stop => {
            let elapsed = start.elapsed();
            let unsent = match plan.load {
                Load::Open { rate, .. } => {
                    let due = count(elapsed.as_secs_f64() * rate + 1.0).min(scheduled(plan, rate));
                    due.saturating_sub(shared.sent.load(Ordering::Relaxed))
                }
                Load::Closed { .. } => 0,
            };
            RunSummary {
                elapsed,
                unfinished: shared.in_flight.load(Ordering::Relaxed),
                unsent,
                max_lag: None,
            }
        }
    }
}

/// `x` rounded down to a count, saturating.
fn count(x: f64) -> u64 {
    if x >= u64::MAX as f64 { u64::MAX } else { x as u64 }
}

/// Open loop: requests due before the deadline (i / rate < run_time), capped by --requests.
fn scheduled(plan: &Plan, rate: f64) -> u64 {
    match plan.run_time {
        Some(rt) => {
            let due = count((rt.as_secs_f64() * rate).ceil());
            plan.requests.map_or(due, |n| n.min(due))
        }
        None => plan.requests.unwrap_or(u64::MAX),
    }
}

/// Runs one request and records it, keeping the in-flight count.
async fn run_one<E: Exec>(exec: &E, shared: &Shared, seq: u64, start: Instant) {
    shared.in_flight.fetch_add(1, Ordering::Relaxed);
    let sample = exec.exec(seq, start).await;
    shared.record(sample);
    shared.in_flight.fetch_sub(1, Ordering::Relaxed);
}

/// Waits for the tasks; with a deadline, aborts what is left at `deadline + grace`.
/// Returns how many requests were aborted mid-flight.
async fn finish(set: &mut JoinSet<()>, hard_stop: Option<Instant>, shared: &Shared) -> u64 {
    let drained = {
        let join_all = async { while set.join_next().await.is_some() {} };
        match hard_stop {
            Some(t) => timeout_at(t, join_all).await.is_ok(),
            None => {
                join_all.await;
                true
            }
        }
    };
    if drained {
        return 0;
    }
    let unfinished = shared.in_flight.load(Ordering::Relaxed);
    set.shutdown().await;
    unfinished
}

async fn closed_loop<E: Exec>(
    exec: Arc<E>,
    plan: &Plan,
    start: Instant,
    users: u32,
    spawn_rate: Option<f64>,
    think: Duration,
    shared: Arc<Shared>,
) -> RunSummary {
    let deadline = plan.run_time.map(|d| after(start, d));
    let limit = plan.requests.unwrap_or(u64::MAX);
    let tickets = Arc::new(AtomicU64::new(0));
    let mut set = JoinSet::new();
    for user in 0..users {
        let offset = match spawn_rate {
            Some(r) => Duration::try_from_secs_f64(f64::from(user) / r).unwrap_or(Duration::MAX),
            None => Duration::ZERO,
        };
        let Some(spawn_at) = start.checked_add(offset) else {
            break;
        };
        if deadline.is_some_and(|d| spawn_at >= d) {
            break;
        }
        let (exec, shared, tickets) = (exec.clone(), shared.clone(), tickets.clone());
        set.spawn(async move {
            sleep_until(spawn_at).await;
            loop {
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
                let seq = tickets.fetch_add(1, Ordering::Relaxed);
                if seq >= limit {
                    break;
                }
                run_one(&*exec, &shared, seq, Instant::now()).await;
                if !think.is_zero() {
                    let wake = after(Instant::now(), think);
                    sleep_until(deadline.map_or(wake, |d| wake.min(d))).await;
                }
            }
        });
    }
    let unfinished = finish(&mut set, deadline.map(|d| after(d, plan.grace)), &shared).await;
    RunSummary {
        elapsed: start.elapsed(),
        unfinished,
        unsent: 0,
        max_lag: None,
    }
}

async fn open_loop<E: Exec>(
    exec: Arc<E>,
    plan: &Plan,
    start: Instant,
    rate: f64,
    max_in_flight: usize,
    shared: Arc<Shared>,
) -> RunSummary {
    let deadline = plan.run_time.map(|d| after(start, d));
    let scheduled = scheduled(plan, rate);
    // Beyond what a semaphore can hold (about 2^61) is no limit in practice.
    let permits = Arc::new(Semaphore::new(max_in_flight.min(Semaphore::MAX_PERMITS)));
    let mut set = JoinSet::new();
    let mut max_lag = Duration::ZERO;
    let mut seq = 0u64;
    while seq < scheduled {
        // Due "practically never" if beyond the clock, like any huge duration: ending the loop
        // here would report the rest as unsent, which means held back by --max-in-flight.
        let due_in = Duration::try_from_secs_f64(seq as f64 / rate).unwrap_or(Duration::MAX);
        let intended = after(start, due_in);
        if Instant::now() < intended {
            sleep_until(intended).await;
        }
        let acquire = permits.clone().acquire_owned();
        let permit = match deadline {
            Some(d) => match timeout_at(d, acquire).await {
                Ok(Ok(p)) => p,
                _ => break,
            },
            None => match acquire.await {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        max_lag = max_lag.max(Instant::now().saturating_duration_since(intended));
        let (exec, sh) = (exec.clone(), shared.clone());
        set.spawn(async move {
            run_one(&*exec, &sh, seq, intended).await;
            drop(permit);
        });
        shared.sent.fetch_add(1, Ordering::Relaxed);
        while set.try_join_next().is_some() {}
        seq += 1;
    }
    let unsent = scheduled.saturating_sub(seq);
    let unfinished = finish(&mut set, deadline.map(|d| after(d, plan.grace)), &shared).await;
    RunSummary {
        elapsed: start.elapsed(),
        unfinished,
        unsent,
        max_lag: Some(max_lag),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::future::pending;
    use std::sync::Mutex as StdMutex;

    /// Answers after a fixed (virtual) latency and logs when each request was sent.
    struct Fake {
        latency: Duration,
        origin: Instant,
        sent: StdMutex<Vec<(u64, Duration)>>,
    }

    impl Fake {
        fn new(latency: Duration) -> Arc<Self> {
            Arc::new(Self {
                latency,
                origin: Instant::now(),
                sent: StdMutex::new(Vec::new()),
            })
        }
    }

    impl Exec for Fake {
        fn exec(&self, seq: u64, start: Instant) -> impl Future<Output = Sample> + Send {
            self.sent.lock().unwrap().push((seq, Instant::now() - self.origin));
            let latency = self.latency;
            async move {
                tokio::time::sleep(latency).await;
                Sample::new(Outcome::Ok, start.elapsed())
            }
        }
    }

    fn shared() -> Arc<Shared> {
        Arc::new(Shared::new(Stats::new().unwrap()))
    }

    fn closed(users: u32, spawn_rate: Option<f64>, think: Duration) -> Load {
        Load::Closed {
            users,
            spawn_rate,
            think,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_ramps_users_and_stops_at_the_deadline() {
        let fake = Fake::new(Duration::from_secs(1));
        let plan = Plan {
            load: closed(4, Some(2.0), Duration::ZERO),
            run_time: Some(Duration::from_millis(10_250)),
            requests: None,
            grace: Duration::from_secs(5),
        };
        let sh = shared();
        let sum = drive(fake.clone(), &plan, sh.clone(), pending()).await;
        // User u starts at u * 0.5 s and sends back to back while now < 10.25 s.
        let expected: u64 = (0..4u64)
            .map(|u| {
                let start_ms = u * 500;
                (10_250 - start_ms).div_ceil(1000)
            })
            .sum();
        assert_eq!(sh.completed.load(Ordering::Relaxed), expected);
        assert_eq!(sum.unfinished, 0);
        // The last requests were sent before 10.25 s and finished within the grace period.
        assert!(sum.elapsed > Duration::from_millis(10_250));
        assert!(sum.elapsed <= Duration::from_millis(11_250));
        let sent = fake.sent.lock().unwrap();
        let before_1s = sent.iter().filter(|s| s.1 < Duration::from_secs(1)).count();
        assert_eq!(before_1s, 2, "users 0 and 1 start at 0 s and 0.5 s: {sent:?}");
        drop(sent);
        let report = sh.take_stats().unwrap();
        assert_eq!(report.completed(), expected);
    }

    #[tokio::test(start_paused = true)]
    async fn closed_loop_request_budget_is_exact() {
        for (users, n) in [(1, 7), (8, 100), (50, 13)] {
            let fake = Fake::new(Duration::from_millis(37));
            let plan = Plan {
                load: closed(users, None, Duration::ZERO),
                run_time: None,
                requests: Some(n),
                grace: Duration::ZERO,
            };
            let sh = shared();
            let sum = drive(fake.clone(), &plan, sh.clone(), pending()).await;
            assert_eq!(sh.completed.load(Ordering::Relaxed), n);
            let mut seqs: Vec<u64> = fake.sent.lock().unwrap().iter().map(|s| s.0).collect();
            seqs.sort_unstable();
            assert_eq!(seqs, (0..n).collect::<Vec<_>>());
            let rounds = n.div_ceil(u64::from(users));
            assert_eq!(sum.elapsed, Duration::from_millis(37 * rounds));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn think_time_paces_a_user() {
        let fake = Fake::new(Duration::from_millis(100));
        let plan = Plan {
            load: closed(1, None, Duration::from_millis(900)),
            run_time: Some(Duration::from_millis(9_950)),
            requests: None,
            grace: Duration::ZERO,
        };
        let sh = shared();
        let sum = drive(fake.clone(), &plan, sh.clone(), pending()).await;
        let sent: Vec<u128> = fake.sent.lock().unwrap().iter().map(|s| s.1.as_millis()).collect();
        assert_eq!(sent, (0..10).map(|i| i * 1000).collect::<Vec<_>>());
        // The user is thinking at the deadline: the run ends then.
        assert_eq!(sum.elapsed, Duration::from_millis(9_950));
    }

    #[tokio::test(start_paused = true)]
    async fn deadline_aborts_slow_requests_after_grace() {
        let fake = Fake::new(Duration::from_secs(30));
        let plan = Plan {
            load: closed(5, None, Duration::ZERO),
            run_time: Some(Duration::from_secs(1)),
            requests: None,
            grace: Duration::from_secs(2),
        };
        let sh = shared();
        let sum = drive(fake, &plan, sh.clone(), pending()).await;
        assert_eq!(sh.completed.load(Ordering::Relaxed), 0);
        assert_eq!(sum.unfinished, 5);
        assert_eq!(sum.elapsed, Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_keeps_the_schedule() {
        let fake = Fake::new(Duration::from_millis(50));
        let plan = Plan {
            load: Load::Open {
                rate: 100.0,
                max_in_flight: 1000,
            },
            run_time: Some(Duration::from_secs(2)),
            requests: None,
            grace: Duration::from_secs(1),
        };
        let sh = shared();
        let sum = drive(fake.clone(), &plan, sh.clone(), pending()).await;
        assert_eq!(sh.completed.load(Ordering::Relaxed), 200);
        assert_eq!(sum.unsent, 0);
        assert_eq!(sum.max_lag, Some(Duration::ZERO));
        let sent = fake.sent.lock().unwrap();
        for (seq, at) in sent.iter() {
            assert_eq!(*at, Duration::from_millis(seq * 10));
        }
        let report = sh.take_stats().unwrap().into_report(crate::stats::RunMeta {
            url: String::new(),
            endpoint: String::new(),
            model: String::new(),
            mode: "open".into(),
            stream: false,
            users: None,
            rate_per_s: Some(100.0),
            elapsed: sum.elapsed,
            unfinished: 0,
            unsent: 0,
            max_lag: sum.max_lag,
        });
        let lat = report.latency_ms.unwrap();
        // HDR histograms keep 3 significant digits.
        assert!(
            (lat.p50 - 50.0).abs() < 0.05 && (lat.max - 50.0).abs() < 0.05,
            "{lat:?}"
        );
        assert!((lat.mean - 50.0).abs() < 0.05, "{lat:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_counts_queueing_from_the_intended_time() {
        // One slot, 1 s service time, 10 req/s: request i is due at i*100 ms but can only go
        // out at i*1 s. Its latency must include the wait (1 s + i*900 ms), not just 1 s.
        let fake = Fake::new(Duration::from_secs(1));
        let plan = Plan {
            load: Load::Open {
                rate: 10.0,
                max_in_flight: 1,
            },
            run_time: None,
            requests: Some(5),
            grace: Duration::ZERO,
        };
        let sh = shared();
        let sum = drive(fake.clone(), &plan, sh.clone(), pending()).await;
        assert_eq!(sh.completed.load(Ordering::Relaxed), 5);
        assert_eq!(sum.max_lag, Some(Duration::from_millis(3600)));
        let sent: Vec<Duration> = fake.sent.lock().unwrap().iter().map(|s| s.1).collect();
        assert_eq!(sent, (0..5).map(Duration::from_secs).collect::<Vec<_>>());
        let stats = sh.take_stats().unwrap();
        let r = stats.into_report(crate::stats::RunMeta {
            url: String::new(),
            endpoint: String::new(),
            model: String::new(),
            mode: "open".into(),
            stream: false,
            users: None,
            rate_per_s: Some(10.0),
            elapsed: sum.elapsed,
            unfinished: 0,
            unsent: 0,
            max_lag: None,
        });
        let lat = r.latency_ms.unwrap();
        assert!((lat.max - 4600.0).abs() < 5.0, "{lat:?}");
        assert!((lat.p50 - 2800.0).abs() < 5.0, "{lat:?}");
    }

    /// At a rate so low that request 1 is due beyond what a clock can hold, the schedule
    /// saturates ("practically never") instead of ending: `unsent` means "held back by
    /// --max-in-flight", and nothing held these back.
    #[tokio::test(start_paused = true)]
    async fn open_loop_far_future_requests_are_not_unsent() {
        let fake = Fake::new(Duration::from_millis(1));
        let plan = Plan {
            load: Load::Open {
                rate: 1e-20,
                max_in_flight: 10,
            },
            run_time: None,
            requests: Some(2),
            grace: Duration::ZERO,
        };
        let sh = shared();
        let sum = drive(fake.clone(), &plan, sh.clone(), pending()).await;
        assert_eq!(sum.unsent, 0);
        assert_eq!(sh.completed.load(Ordering::Relaxed), 2);
        let sent: Vec<Duration> = fake.sent.lock().unwrap().iter().map(|s| s.1).collect();
        assert_eq!(sent, [Duration::ZERO, FOREVER]);
    }

    /// Stopped early (Ctrl-C): the requests due by then but held back are unsent, those in
    /// flight unfinished; not yet due is neither.
    #[tokio::test(start_paused = true)]
    async fn open_loop_stopped_early_counts_what_was_due() {
        for (rate, unsent) in [(10.0, 19), (0.001, 0)] {
            let plan = Plan {
                load: Load::Open { rate, max_in_flight: 2 },
                run_time: Some(Duration::from_secs(60)),
                requests: None,
                grace: Duration::ZERO,
            };
            let sh = shared();
            let stop = tokio::time::sleep(Duration::from_millis(2050));
            let sum = drive(Fake::new(Duration::from_secs(10)), &plan, sh.clone(), stop).await;
            // At 10/s, 21 requests are due by 2.05 s and 2 went out; at 0.001/s, only the first.
            assert_eq!(sum.unsent, unsent, "rate {rate}");
            assert_eq!(sum.unfinished, if rate > 1.0 { 2 } else { 1 }, "rate {rate}");
            assert_eq!(sum.elapsed, Duration::from_millis(2050));
            assert_eq!(sh.completed.load(Ordering::Relaxed), 0);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_reports_unsent_when_saturated() {
        let fake = Fake::new(Duration::from_secs(10));
        let plan = Plan {
            load: Load::Open {
                rate: 10.0,
                max_in_flight: 3,
            },
            run_time: Some(Duration::from_secs(1)),
            requests: None,
            grace: Duration::ZERO,
        };
        let sh = shared();
        let sum = drive(fake, &plan, sh.clone(), pending()).await;
        assert_eq!(sum.unsent, 7);
        assert_eq!(sum.unfinished, 3);
        assert_eq!(sh.completed.load(Ordering::Relaxed), 0);
    }
}
