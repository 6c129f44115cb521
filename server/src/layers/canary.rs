//! Canary rollouts: a route's traffic moves to one variant step by step while that variant's
//! error rate and p95 latency hold, and falls back to 0% at once when either breaks. Every
//! transition is logged and kept in the route's canary history.

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use infergate_config::CanaryConfig;
use serde::Serialize;

/// Where a rollout is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Running,
    Completed,
    RolledBack,
}

/// One move of the canary's share.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transition {
    /// Unix milliseconds.
    pub at_ms: u64,
    pub from_percent: u32,
    pub to_percent: u32,
    pub reason: String,
}

/// What `GET /admin/routes/{route}/canary` shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CanaryReport {
    pub variant: String,
    pub phase: Phase,
    pub percent: u32,
    /// Canary requests and failures at the current step.
    pub requests: u64,
    pub errors: u64,
    pub transitions: Vec<Transition>,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    step: usize,
    step_started: Instant,
    requests: u64,
    errors: u64,
    latencies_ms: Vec<f64>,
    transitions: Vec<Transition>,
}

/// A rollout's configuration and live state.
#[derive(Debug)]
pub struct Canary {
    /// Index of the canary among the route's variants.
    pub variant: usize,
    name: String,
    config: CanaryConfig,
    state: Mutex<State>,
}

/// Most latency samples kept per step.
const MAX_SAMPLES: usize = 100_000;

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Canary {
    pub fn new(variant: usize, config: CanaryConfig) -> Self {
        let first = config.steps.first().copied().unwrap_or(100);
        Self {
            variant,
            name: config.variant.clone(),
            state: Mutex::new(State {
                phase: Phase::Running,
                step: 0,
                step_started: Instant::now(),
                requests: 0,
                errors: 0,
                latencies_ms: Vec::new(),
                transitions: vec![Transition {
                    at_ms: now_ms(),
                    from_percent: 0,
                    to_percent: first,
                    reason: "rollout started".to_string(),
                }],
            }),
            config,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn percent_of(&self, state: &State) -> u32 {
        match state.phase {
            Phase::Running => self.config.steps[state.step],
            Phase::Completed => 100,
            Phase::RolledBack => 0,
        }
    }

    /// Least time per step, milliseconds.
    pub fn step_ms(&self) -> u64 {
        self.config.step_ms
    }

    /// The canary's current share of the traffic, in percent.
    pub fn percent(&self) -> u32 {
        self.percent_of(&self.state())
    }

    /// Counts one canary request.
    pub fn record(&self, ok: bool, latency: Duration) {
        let mut s = self.state();
        if s.phase != Phase::Running {
            return;
        }
        s.requests += 1;
        s.errors += u64::from(!ok);
        if s.latencies_ms.len() < MAX_SAMPLES {
            s.latencies_ms.push(latency.as_secs_f64() * 1e3);
        }
    }

    /// Checks the gates: rolls back when one broke, advances when the step is done. Returns
    /// the transition made, if any.
    pub fn evaluate(&self) -> Option<Transition> {
        let mut s = self.state();
        if s.phase != Phase::Running {
            return None;
        }
        let from = self.percent_of(&s);
        let c = &self.config;
        // The error budget of a step is spent as soon as the failures exceed what the rate
        // allows for the requests seen (or for the step's minimum, early in the step).
        let budget = c.max_error_rate * s.requests.max(c.min_requests) as f64;
        let mut broken = None;
        if s.errors as f64 > budget {
            broken = Some(format!(
                "error rate {}/{} breaks the bound {:.4}",
                s.errors, s.requests, c.max_error_rate
            ));
        } else if let Some(max) = c.max_p95_ms
            && s.requests >= c.min_requests.max(1)
        {
            let mut sorted = s.latencies_ms.clone();
            sorted.sort_by(f64::total_cmp);
            let p95 = super::experiment::quantile(&sorted, 0.95);
            if p95 > max {
                broken = Some(format!(
                    "p95 latency {p95:.3} ms breaks the bound {max:.3} ms"
                ));
            }
        }
        let (to, reason) = if let Some(reason) = broken {
            s.phase = Phase::RolledBack;
            (0, format!("rolled back: {reason}"))
        } else if s.requests >= c.min_requests
            && s.step_started.elapsed() >= Duration::from_millis(c.step_ms)
        {
            let summary = format!("{} requests, {} errors", s.requests, s.errors);
            if s.step + 1 < c.steps.len() {
                s.step += 1;
                (c.steps[s.step], format!("advanced: step held ({summary})"))
            } else {
                s.phase = Phase::Completed;
                (100, format!("completed: last step held ({summary})"))
            }
        } else {
            return None;
        };
        Some(self.move_share(&mut s, from, to, reason))
    }

    /// Rolls back at once, whatever the gates say (an operator's decision). `None` when the
    /// rollout is over already.
    pub fn roll_back(&self, reason: &str) -> Option<Transition> {
        let mut s = self.state();
        if s.phase != Phase::Running {
            return None;
        }
        let from = self.percent_of(&s);
        s.phase = Phase::RolledBack;
        Some(self.move_share(&mut s, from, 0, reason.to_string()))
    }

    /// Starts a new step (or ends the rollout) at `to` percent, kept in the history and logged.
    fn move_share(&self, s: &mut State, from: u32, to: u32, reason: String) -> Transition {
        s.step_started = Instant::now();
        s.requests = 0;
        s.errors = 0;
        s.latencies_ms.clear();
        let transition = Transition {
            at_ms: now_ms(),
            from_percent: from,
            to_percent: to,
            reason,
        };
        s.transitions.push(transition.clone());
        let reason = &transition.reason;
        if to == 0 {
            tracing::warn!(variant = %self.name, from, to, reason = %reason, "canary transition");
        } else {
            tracing::info!(variant = %self.name, from, to, reason = %reason, "canary transition");
        }
        transition
    }

    pub fn report(&self) -> CanaryReport {
        let s = self.state();
        CanaryReport {
            variant: self.name.clone(),
            phase: s.phase,
            percent: self.percent_of(&s),
            requests: s.requests,
            errors: s.errors,
            transitions: s.transitions.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn canary(max_p95_ms: Option<f64>) -> Canary {
        Canary::new(
            1,
            CanaryConfig {
                variant: "c".into(),
                steps: vec![10, 50, 100],
                step_ms: 0,
                min_requests: 10,
                max_error_rate: 0.1,
                max_p95_ms,
            },
        )
    }

    #[test]
    fn an_operator_rolls_back_a_running_canary_once() {
        let c = canary(None);
        let t = c.roll_back("rolled back by ops: bad reviews").unwrap();
        assert_eq!((t.from_percent, t.to_percent), (10, 0));
        assert_eq!(c.percent(), 0);
        let report = c.report();
        assert_eq!(report.phase, Phase::RolledBack);
        assert_eq!(report.transitions.len(), 2);
        assert_eq!(
            report.transitions[1].reason,
            "rolled back by ops: bad reviews"
        );
        assert!(
            c.roll_back("again").is_none(),
            "a finished rollout stays finished"
        );
        c.record(false, Duration::from_millis(1));
        assert!(c.evaluate().is_none());
    }

    #[test]
    fn advances_while_the_gates_hold_and_completes() {
        let c = canary(Some(50.0));
        assert_eq!(c.percent(), 10);
        for _ in 0..9 {
            c.record(true, Duration::from_millis(1));
        }
        assert_eq!(
            c.evaluate().map(|t| t.to_percent),
            None,
            "not enough requests yet"
        );
        c.record(false, Duration::from_millis(1));
        assert_eq!(
            c.evaluate().map(|t| t.to_percent),
            Some(50),
            "one error in ten is within 10%"
        );
        for _ in 0..10 {
            c.record(true, Duration::from_millis(1));
        }
        assert_eq!(c.evaluate().map(|t| t.to_percent), Some(100));
        assert_eq!(c.report().phase, Phase::Running);
        for _ in 0..10 {
            c.record(true, Duration::from_millis(1));
        }
        assert_eq!(c.evaluate().map(|t| t.to_percent), Some(100));
        let r = c.report();
        assert_eq!(r.phase, Phase::Completed);
        let path: Vec<(u32, u32)> = r
            .transitions
            .iter()
            .map(|t| (t.from_percent, t.to_percent))
            .collect();
        assert_eq!(path, [(0, 10), (10, 50), (50, 100), (100, 100)]);
    }

    #[test]
    fn rolls_back_at_once_when_the_error_budget_is_spent() {
        let c = canary(None);
        c.record(false, Duration::from_millis(1));
        assert_eq!(
            c.evaluate().map(|t| t.to_percent),
            None,
            "one failure is within 10% of the step's 10"
        );
        c.record(false, Duration::from_millis(1));
        assert_eq!(c.evaluate().map(|t| t.to_percent), Some(0));
        let r = c.report();
        assert_eq!((r.phase, r.percent), (Phase::RolledBack, 0));
        assert!(r.transitions[1].reason.contains("error rate 2/2"), "{r:?}");
        // Nothing moves it afterwards.
        c.record(true, Duration::from_millis(1));
        assert_eq!(c.evaluate().map(|t| t.to_percent), None);
    }

    #[test]
    fn rolls_back_when_p95_latency_breaks() {
        let c = canary(Some(5.0));
        for i in 0..10 {
            c.record(true, Duration::from_millis(if i < 8 { 1 } else { 9 }));
        }
        assert_eq!(c.evaluate().map(|t| t.to_percent), Some(0));
        assert!(
            c.report().transitions[1]
                .reason
                .contains("p95 latency 9.000 ms")
        );
    }
}
