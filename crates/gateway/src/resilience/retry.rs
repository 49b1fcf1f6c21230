//! Retries with exponential backoff and jitter, and fallback across candidate deployments. This is the
//! only module that sleeps between attempts.
//!
//! For each candidate in the plan's order: skip it if its breaker is open; otherwise try up to
//! `max_attempts` times, waiting `base * 2^n` (capped, with jitter) or the upstream's `Retry-After`,
//! whichever is longer, as long as the request's deadline allows. A failure the client caused (a 400)
//! is returned at once: another deployment would reject it too. When every candidate is exhausted the
//! client learns what was tried.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::StatusCode;
use tokio::time::Instant;

use crate::error::{ApiError, UpstreamError, UpstreamKind};
use crate::resilience::breaker::Permit;
use crate::routing::Plan;
use crate::state::{AppState, Deployment};
use crate::telemetry::{FromTo, Outcome};

/// Keeps a deployment's in-flight count while a call (or a stream) is running.
pub struct InFlight<'a>(&'a Deployment);

impl<'a> InFlight<'a> {
    pub fn new(d: &'a Deployment) -> Self {
        d.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(d)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Releases a breaker permit if the attempt holding it is dropped before its outcome is reported (the
/// client went away mid-call): otherwise a half-open breaker's probe slot stays taken for ever.
struct ReleaseOnDrop<'a> {
    d: &'a Deployment,
    permit: Permit,
    armed: bool,
}

impl ReleaseOnDrop<'_> {
    fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for ReleaseOnDrop<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.d.breaker.release(self.permit);
        }
    }
}

/// A successful call and what the caller must settle when it is really done (for streams: at the end).
pub struct Served<T> {
    pub value: T,
    pub dep: usize,
    pub permit: Permit,
    /// When the successful attempt was sent upstream.
    pub sent_at: Instant,
    /// Index of the candidate that served (0 = first choice).
    pub position: usize,
}

/// The backoff before attempt `attempt + 1`: exponential, capped, with up to 50% jitter subtracted,
/// and never shorter than the upstream's Retry-After.
pub fn backoff(base: Duration, max: Duration, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(20)).min(max);
    let jitter = exp.mul_f64(rand::random::<f64>() * 0.5);
    let d = exp - jitter;
    match retry_after {
        Some(ra) => d.max(ra),
        None => d,
    }
}

pub async fn run<T, F, Fut>(st: &AppState, plan: &Plan, deadline: Instant, mut call: F) -> Result<Served<T>, ApiError>
where
    F: FnMut(&Deployment) -> Fut,
    Fut: Future<Output = Result<T, UpstreamError>>,
{
    let res = &st.cfg.resilience;
    let base = Duration::from_millis(res.backoff_base_ms);
    let max = Duration::from_millis(res.backoff_max_ms);
    let mut tried: Vec<String> = Vec::new();
    let mut last: Option<UpstreamError> = None;
    let mut soonest_retry: Option<Duration> = None;
    // Candidates skipped because they are at their rpm/tpm quota, and the soonest one has room again.
    let mut quota_skipped = 0usize;
    let mut quota_wait: Option<Duration> = None;
    for (position, &i) in plan.candidates.iter().enumerate() {
        let d = &st.deployments[i];
        for attempt in 0..res.max_attempts {
            if Instant::now() >= deadline {
                // No time left to call: nothing is asked of the upstream, so nothing counts against it.
                return Err(exhausted(&tried, last, plan.candidates.len(), soonest_retry, true));
            }
            // The breaker first: an open one sends nothing upstream, so it must not take from the
            // deployment's quota (with shared limits every replica's, while the breaker is this one's).
            let (permit, t) = d.breaker.try_acquire();
            st.on_transition(d, t);
            let Some(permit) = permit else {
                let wait = d.breaker.retry_in();
                soonest_retry = Some(soonest_retry.map_or(wait, |s| s.min(wait)));
                tried.push(format!("{} (circuit open)", d.name));
                break;
            };
            // Given back if this attempt ends before the upstream answers (no quota, client gone).
            let release = ReleaseOnDrop { d, permit, armed: true };
            // Every attempt, a retry too, is one more request to the provider: it needs room in the
            // deployment's rpm/tpm. Without room, fall back to the next candidate.
            if let Err(wait) = st.limits.deployment_admit(i).await {
                drop(release);
                tried.push(format!("{} (at its rpm/tpm limit)", d.name));
                quota_wait = Some(quota_wait.map_or(wait, |w: Duration| w.min(wait)));
                quota_skipped += usize::from(attempt == 0);
                break;
            }
            if attempt > 0 {
                st.metrics.retries.get_or_create(&d.dep_label).inc();
            }
            let sent_at = Instant::now();
            let busy = InFlight::new(d);
            let outcome = tokio::time::timeout_at(deadline, call(d)).await;
            release.disarm();
            drop(busy);
            let err = match outcome {
                Ok(Ok(value)) => {
                    if position > 0 {
                        let first = &st.deployments[plan.candidates[0]];
                        st.metrics
                            .fallbacks
                            .get_or_create(&FromTo {
                                from: first.name.clone(),
                                to: d.name.clone(),
                            })
                            .inc();
                    }
                    return Ok(Served {
                        value,
                        dep: i,
                        permit,
                        sent_at,
                        position,
                    });
                }
                Ok(Err(e)) => e,
                Err(_) => UpstreamError::new(UpstreamKind::Timeout, &d.provider_name, "request deadline exceeded"),
            };
            st.metrics
                .llm_requests
                .get_or_create(&Outcome {
                    provider: d.labels.provider.clone(),
                    model: d.labels.model.clone(),
                    outcome: err.outcome(),
                })
                .inc();
            st.ledger.per_deployment[i].errors.fetch_add(1, Ordering::Relaxed);
            if err.is_upstream_fault() {
                st.on_transition(d, d.breaker.failure(permit));
            } else {
                d.breaker.release(permit);
            }
            tracing::warn!(deployment = %d.name, attempt = attempt + 1, error = %err, "upstream attempt failed");
            if !err.retryable() {
                return Err(err.into());
            }
            tried.push(format!("{} ({})", d.name, err.message));
            let retry_after = err.retry_after;
            last = Some(err);
            if Instant::now() >= deadline {
                return Err(exhausted(&tried, last, plan.candidates.len(), soonest_retry, true));
            }
            if attempt + 1 < res.max_attempts {
                let wait = backoff(base, max, attempt, retry_after);
                // A wait longer than the cap (a long Retry-After) or past the deadline: fall back instead.
                if wait > max || Instant::now() + wait >= deadline {
                    break;
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
    if quota_skipped > 0 && quota_skipped == plan.candidates.len() {
        // Nothing failed: every deployment that could serve is at its provider quota. That is a rate
        // limit, and the client should come back when the first of them has room.
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate_limit_error",
            format!(
                "every deployment that could serve this request is at its rpm/tpm quota; tried: {}",
                tried.join(", ")
            ),
        )
        .with_code("deployment_quota_exceeded");
        e.retry_after = Some(quota_wait.unwrap_or(Duration::from_secs(1)).max(Duration::from_secs(1)));
        return Err(e);
    }
    Err(exhausted(&tried, last, plan.candidates.len(), soonest_retry, false))
}

fn exhausted(
    tried: &[String],
    last: Option<UpstreamError>,
    candidates: usize,
    soonest_retry: Option<Duration>,
    deadline: bool,
) -> ApiError {
    // One candidate and a real upstream answer: map that answer faithfully (429 keeps Retry-After).
    if candidates == 1
        && !deadline
        && !tried.iter().any(|t| t.ends_with("(circuit open)"))
        && let Some(e) = last.clone()
    {
        return e.into();
    }
    let mut e = ApiError::new(
        if deadline {
            StatusCode::GATEWAY_TIMEOUT
        } else {
            StatusCode::SERVICE_UNAVAILABLE
        },
        "upstream_error",
        format!(
            "{}; tried: {}",
            if deadline {
                "request deadline exceeded"
            } else {
                "no deployment could serve the request"
            },
            if tried.is_empty() {
                "nothing".to_owned()
            } else {
                tried.join(", ")
            }
        ),
    )
    .with_code(if deadline {
        "deadline_exceeded"
    } else {
        "all_deployments_failed"
    });
    e.retry_after = last
        .and_then(|l| l.retry_after)
        .or(soonest_retry)
        .or(Some(Duration::from_secs(1)));
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_caps_and_honours_retry_after() {
        let b = Duration::from_millis(100);
        let m = Duration::from_secs(2);
        for attempt in 0..8 {
            let d = backoff(b, m, attempt, None);
            let full = b.saturating_mul(1 << attempt).min(m);
            assert!(d <= full && d >= full / 2, "{attempt}: {d:?}");
        }
        assert_eq!(backoff(b, m, 0, Some(Duration::from_secs(3))), Duration::from_secs(3));
    }
}
