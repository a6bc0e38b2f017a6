//! The autoscaler's policy (pure): HPA v2 arithmetic over plain numbers. From the per-pod queue depth and KV
//! usage of the Ready pods, the targets, the `scaleUp`/`scaleDown` behaviours and what happened recently, it
//! decides the replica count and why. No I/O: the loop around it (`autoscale.rs`) scrapes and patches `/scale`.
//!
//! Semantics follow Kubernetes' `pkg/controller/podautoscaler`: a 10 % tolerance; missing metrics count as at
//! target when scaling down and as 0 when scaling up (and a decision they would reverse is dropped); the larger
//! desired count of the two metrics wins; stabilisation keeps the least scale-up over the up window and the least
//! scale-down over the down window; Pods/Percent rate policies per period combined by `selectPolicy`; min/max.

use crate::crd::{AutoscalingSpec, ScalingPolicyType, ScalingRules, SelectPolicy};

/// HPA's default tolerance: no change while the usage ratio is within 10 % of 1.
pub const TOLERANCE: f64 = 0.1;

/// What one Ready pod reported (`None`: the scrape failed or the metric was absent).
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct PodSample {
    pub queue: Option<f64>,
    pub kv_usage: Option<f64>,
}

/// A past decision or scale event, `at` seconds on the caller's clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timed {
    pub at: f64,
    pub replicas: i32,
}

/// Everything the policy reads.
#[derive(Debug, Clone)]
pub struct Input<'a> {
    pub spec: &'a AutoscalingSpec,
    /// Current `spec.replicas`.
    pub current: i32,
    /// One sample per Ready pod (pods not Ready are left out by the caller).
    pub samples: &'a [PodSample],
    /// Now, on the same clock as `history` and `events`.
    pub now: f64,
    /// Earlier unstabilised recommendations (for the stabilisation windows).
    pub history: &'a [Timed],
    /// Earlier scale events: the replica count *before* each change (for the rate policies).
    pub events: &'a [(Timed, i32)],
}

/// Why the final count differs from the metrics' wish (HPA's `ScalingLimited` reasons).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    None,
    TooManyReplicas,
    TooFewReplicas,
    ScaleUpLimit,
    ScaleDownLimit,
}

/// The decision.
#[derive(Debug, Clone, PartialEq)]
pub struct Recommendation {
    /// What the metrics alone ask for (before stabilisation, rate limits and bounds): record it in `history`.
    pub raw: i32,
    /// `raw` after the stabilisation windows (before rate limits and bounds).
    pub stabilized: i32,
    /// The replica count to set.
    pub replicas: i32,
    /// Which metric drove `raw` (`queue` or `kv`), with its average and target.
    pub metric: Option<(&'static str, f64, f64)>,
    pub limit: Limit,
}

/// Desired replicas for one metric over `samples`, HPA style; `None` when no pod reported it.
fn desired_for(current: i32, values: &[Option<f64>], target: f64) -> Option<(i32, f64)> {
    let present: Vec<f64> = values.iter().flatten().copied().collect();
    if present.is_empty() || target <= 0.0 {
        return None;
    }
    let ready = values.len() as f64;
    let avg = present.iter().sum::<f64>() / present.len() as f64;
    let ratio = avg / target;
    if (ratio - 1.0).abs() <= TOLERANCE {
        return Some((current, avg));
    }
    let missing = values.len() - present.len();
    if missing == 0 {
        return Some(((ratio * ready).ceil() as i32, avg));
    }
    // Missing pods: at target when scaling down, 0 when scaling up; a decision they reverse is dropped.
    let fill = if ratio < 1.0 { target } else { 0.0 };
    let new_avg = (present.iter().sum::<f64>() + fill * missing as f64) / ready;
    let new_ratio = new_avg / target;
    if (new_ratio - 1.0).abs() <= TOLERANCE || (new_ratio > 1.0) != (ratio > 1.0) {
        return Some((current, avg));
    }
    Some(((new_ratio * ready).ceil() as i32, avg))
}

/// Most replicas the scale-up rules allow now.
fn up_limit(rules: &ScalingRules, current: i32, now: f64, events: &[(Timed, i32)]) -> i32 {
    let limits = rules.policies.iter().map(|p| {
        let added: i32 = events
            .iter()
            .filter(|(e, _)| e.at > now - f64::from(p.period_seconds))
            .map(|(e, before)| (e.replicas - before).max(0))
            .sum();
        let start = current - added;
        match p.type_ {
            ScalingPolicyType::Pods => start + p.value,
            ScalingPolicyType::Percent => {
                (f64::from(start) * (1.0 + f64::from(p.value) / 100.0)).ceil() as i32
            }
        }
    });
    match rules.select_policy {
        SelectPolicy::Max => limits.max().unwrap_or(i32::MAX),
        SelectPolicy::Min => limits.min().unwrap_or(i32::MAX),
        SelectPolicy::Disabled => current,
    }
}

/// Fewest replicas the scale-down rules allow now.
fn down_limit(rules: &ScalingRules, current: i32, now: f64, events: &[(Timed, i32)]) -> i32 {
    let limits = rules.policies.iter().map(|p| {
        let removed: i32 = events
            .iter()
            .filter(|(e, _)| e.at > now - f64::from(p.period_seconds))
            .map(|(e, before)| (before - e.replicas).max(0))
            .sum();
        let start = current + removed;
        match p.type_ {
            ScalingPolicyType::Pods => start - p.value,
            ScalingPolicyType::Percent => {
                (f64::from(start) * (1.0 - f64::from(p.value) / 100.0)).floor() as i32
            }
        }
    });
    match rules.select_policy {
        SelectPolicy::Max => limits.min().unwrap_or(i32::MIN),
        SelectPolicy::Min => limits.max().unwrap_or(i32::MIN),
        SelectPolicy::Disabled => current,
    }
}

/// Decides the replica count.
pub fn recommend(input: &Input<'_>) -> Recommendation {
    let spec = input.spec;
    let current = input.current;
    let queue: Vec<Option<f64>> = input.samples.iter().map(|s| s.queue).collect();
    let kv: Vec<Option<f64>> = input.samples.iter().map(|s| s.kv_usage).collect();
    let mut candidates = Vec::new();
    if let Some((d, avg)) = desired_for(current, &queue, spec.target_queue_depth) {
        candidates.push((d, ("queue", avg, spec.target_queue_depth)));
    }
    if let Some(target) = spec.target_kv_cache_usage
        && let Some((d, avg)) = desired_for(current, &kv, target)
    {
        candidates.push((d, ("kv", avg, target)));
    }
    let best = candidates.iter().copied().max_by_key(|(d, _)| *d);
    let raw = best.map_or(current, |(d, _)| d);

    // Stabilisation: the least scale-up over the up window, the least scale-down over the down window.
    let (mut up, mut down) = (raw, raw);
    for h in input.history {
        if h.at > input.now - f64::from(spec.scale_up.stabilization_window_seconds) {
            up = up.min(h.replicas);
        }
        if h.at > input.now - f64::from(spec.scale_down.stabilization_window_seconds) {
            down = down.max(h.replicas);
        }
    }
    let mut stabilized = current;
    if stabilized < up {
        stabilized = up;
    }
    if stabilized > down {
        stabilized = down;
    }

    let (mut replicas, mut limit) = (stabilized, Limit::None);
    if replicas > current {
        let most = up_limit(&spec.scale_up, current, input.now, input.events);
        if replicas > most {
            (replicas, limit) = (most, Limit::ScaleUpLimit);
        }
    } else if replicas < current {
        let fewest = down_limit(&spec.scale_down, current, input.now, input.events);
        if replicas < fewest {
            (replicas, limit) = (fewest, Limit::ScaleDownLimit);
        }
    }
    if replicas > spec.max_replicas {
        (replicas, limit) = (spec.max_replicas, Limit::TooManyReplicas);
    }
    if replicas < spec.min_replicas {
        (replicas, limit) = (spec.min_replicas, Limit::TooFewReplicas);
    }
    Recommendation {
        raw,
        stabilized,
        replicas,
        metric: best.map(|(_, m)| m),
        limit,
    }
}

#[cfg(test)]
mod tests;
