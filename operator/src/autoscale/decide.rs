//! What the autoscaler writes, decided without I/O: the status fields and scaling conditions it owns (with
//! HorizontalPodAutoscaler's condition reasons), the rescale event's text, and each pod's deletion cost.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use serde::Serialize;

use super::recommend::{Limit, PodSample, Recommendation};
use super::scrape::PodMetrics;
use crate::crd::{AutoscalingSpec, LlamaDeploymentStatus};
use crate::status::{condition, merge_conditions};

pub const ABLE_TO_SCALE: &str = "AbleToScale";
pub const SCALING_ACTIVE: &str = "ScalingActive";
pub const SCALING_LIMITED: &str = "ScalingLimited";
/// Condition types the autoscaler writes.
pub const AUTOSCALER_CONDITIONS: [&str; 3] = [ABLE_TO_SCALE, SCALING_ACTIVE, SCALING_LIMITED];

/// The annotation the ReplicaSet controller reads to pick which pods go first on scale-down (lower first).
pub const DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// One Ready pod and what reading its `/metrics` gave.
#[derive(Debug, Clone, PartialEq)]
pub struct Scraped {
    pub pod: String,
    pub result: Result<PodMetrics, String>,
}

impl Scraped {
    /// Metrics of a pod that answered and is not draining.
    fn usable(&self) -> Option<&PodMetrics> {
        self.result.as_ref().ok().filter(|m| !m.draining)
    }
}

/// The policy's view of the scrapes: a draining or silent pod counts as missing.
pub fn samples(scraped: &[Scraped]) -> Vec<PodSample> {
    scraped
        .iter()
        .map(|s| match s.usable() {
            Some(m) => PodSample {
                queue: m.waiting,
                kv_usage: m.kv_usage,
            },
            None => PodSample::default(),
        })
        .collect()
}

fn round_to(v: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (v * scale).round() / scale
}

/// Mean waiting requests (2 decimals) and mean KV usage (fraction, 3 decimals) over the pods that answered.
pub fn means(scraped: &[Scraped]) -> (Option<f64>, Option<f64>) {
    let mean = |pick: fn(&PodMetrics) -> Option<f64>| {
        let values: Vec<f64> = scraped
            .iter()
            .filter_map(Scraped::usable)
            .filter_map(pick)
            .collect();
        (!values.is_empty()).then(|| values.iter().sum::<f64>() / values.len() as f64)
    };
    (
        mean(|m| m.waiting).map(|v| round_to(v, 2)),
        mean(|m| m.kv_usage).map(|v| round_to(v, 3)),
    )
}

/// A pod's deletion cost from its live load: in-flight requests (running + waiting) weigh 1000 each, KV
/// usage adds up to 999 (more cached context is worth more), so the idlest pod has the lowest cost and goes
/// first. A pod that did not answer gets -1: it goes before any pod that serves.
pub fn deletion_cost(metrics: Option<&PodMetrics>) -> i32 {
    let Some(m) = metrics else { return -1 };
    let in_flight = m.running.unwrap_or(0.0) + m.waiting.unwrap_or(0.0);
    let kv = m.kv_usage.unwrap_or(0.0).clamp(0.0, 1.0);
    let cost = in_flight.max(0.0) * 1000.0 + (kv * 999.0).round();
    cost.min(f64::from(i32::MAX)) as i32
}

/// The deletion cost of each scraped pod.
pub fn deletion_costs(scraped: &[Scraped]) -> Vec<(String, i32)> {
    scraped
        .iter()
        .map(|s| (s.pod.clone(), deletion_cost(s.result.as_ref().ok())))
        .collect()
}

/// "queue depth 9.5 per pod above target 4" for the metric that drove a decision.
pub fn metric_text(metric: (&str, f64, f64)) -> String {
    let (name, avg, target) = metric;
    let side = if avg > target { "above" } else { "at or below" };
    match name {
        "kv" => format!("KV-cache usage {avg:.3} per pod {side} target {target}"),
        _ => format!("queue depth {avg:.2} per pod {side} target {target}"),
    }
}

/// The rescale event's note: "New size: 3; reason: queue depth 9.5 per pod above target 4".
pub fn rescale_message(rec: &Recommendation) -> String {
    let reason = rec
        .metric
        .map(metric_text)
        .unwrap_or_else(|| "no metric".to_owned());
    let limited = match rec.limit {
        Limit::None => String::new(),
        l => format!(" ({})", limit_reason(l)),
    };
    format!("New size: {}; reason: {reason}{limited}", rec.replicas)
}

fn limit_reason(l: Limit) -> &'static str {
    match l {
        Limit::None => "DesiredWithinRange",
        Limit::TooManyReplicas => "TooManyReplicas",
        Limit::TooFewReplicas => "TooFewReplicas",
        Limit::ScaleUpLimit => "ScaleUpLimit",
        Limit::ScaleDownLimit => "ScaleDownLimit",
    }
}

/// What one autoscaler pass found.
#[derive(Debug, Clone)]
pub enum Outcome<'a> {
    /// Another autoscaler (an HPA, e.g. KEDA's) targets this LlamaDeployment; `with` names it.
    Conflict { with: String },
    /// `spec.replicas` is 0: no pod reports a queue, so nothing to scale from.
    ScaledToZero,
    /// No Ready pod gave usable metrics; `why` says what each answered.
    NoMetrics { why: String },
    /// The policy decided; `rescale_error` is set when writing `/scale` failed.
    Decided {
        spec: &'a AutoscalingSpec,
        current: i32,
        rec: &'a Recommendation,
        rescale_error: Option<String>,
    },
}

/// The autoscaler's conditions after `outcome`. A condition the outcome says nothing about keeps its previous
/// value (as HPA leaves `ScalingLimited` alone while metrics are missing); `lastTransitionTime` only moves
/// when a status changes.
pub fn conditions(
    outcome: &Outcome<'_>,
    previous: &[Condition],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    let c = |type_: &str, ok: bool, reason: &str, message: String| {
        condition(type_, ok, reason, message, generation, now)
    };
    let got_scale = || {
        c(
            ABLE_TO_SCALE,
            true,
            "SucceededGetScale",
            "the autoscaler was able to get the scale".to_owned(),
        )
    };
    let fresh: Vec<Condition> = match outcome {
        Outcome::Conflict { with } => vec![
            c(
                ABLE_TO_SCALE,
                false,
                "ConflictingAutoscaler",
                format!(
                    "{with} also targets this LlamaDeployment's scale subresource: spec.autoscaling is not \
                     acted on; remove spec.autoscaling or the other autoscaler"
                ),
            ),
            c(
                SCALING_ACTIVE,
                false,
                "ScalingDisabled",
                "another autoscaler owns spec.replicas".to_owned(),
            ),
        ],
        Outcome::ScaledToZero => vec![
            got_scale(),
            c(
                SCALING_ACTIVE,
                false,
                "ScalingDisabled",
                "scaling is disabled since the replica count is zero: no pod reports a queue; \
                 `kubectl scale --replicas=1` starts it again"
                    .to_owned(),
            ),
        ],
        Outcome::NoMetrics { why } => vec![
            got_scale(),
            c(
                SCALING_ACTIVE,
                false,
                "FailedGetMetrics",
                format!("no usable metrics, replicas left as they are: {why}"),
            ),
        ],
        Outcome::Decided {
            spec,
            current,
            rec,
            rescale_error,
        } => {
            let able = match rescale_error {
                Some(e) => c(
                    ABLE_TO_SCALE,
                    false,
                    "FailedUpdateScale",
                    format!("writing /scale to {} failed: {e}", rec.replicas),
                ),
                None if rec.replicas != *current => c(
                    ABLE_TO_SCALE,
                    true,
                    "SucceededRescale",
                    format!("scaled from {current} to {}", rec.replicas),
                ),
                None if rec.stabilized > rec.raw && rec.stabilized >= *current => c(
                    ABLE_TO_SCALE,
                    true,
                    "ScaleDownStabilized",
                    format!(
                        "recent recommendations were higher than the current one ({}): applying the highest \
                         recent recommendation within {} s",
                        rec.raw, spec.scale_down.stabilization_window_seconds
                    ),
                ),
                None if rec.stabilized < rec.raw && rec.stabilized <= *current => c(
                    ABLE_TO_SCALE,
                    true,
                    "ScaleUpStabilized",
                    format!(
                        "recent recommendations were lower than the current one ({}): applying the lowest \
                         recent recommendation within {} s",
                        rec.raw, spec.scale_up.stabilization_window_seconds
                    ),
                ),
                None => c(
                    ABLE_TO_SCALE,
                    true,
                    "ReadyForNewScale",
                    "recommended size matches current size".to_owned(),
                ),
            };
            let active = c(
                SCALING_ACTIVE,
                true,
                "ValidMetricFound",
                match rec.metric {
                    Some(m) => format!("the replica count is calculated from {}", metric_text(m)),
                    None => "the replica count is calculated from the pods' metrics".to_owned(),
                },
            );
            let limited = match rec.limit {
                Limit::None => c(
                    SCALING_LIMITED,
                    false,
                    "DesiredWithinRange",
                    format!(
                        "the desired count ({}) is within the acceptable range [{}, {}]",
                        rec.raw, spec.min_replicas, spec.max_replicas
                    ),
                ),
                Limit::TooManyReplicas => c(
                    SCALING_LIMITED,
                    true,
                    "TooManyReplicas",
                    format!(
                        "the desired replica count ({}) is more than maxReplicas ({})",
                        rec.stabilized, spec.max_replicas
                    ),
                ),
                Limit::TooFewReplicas => c(
                    SCALING_LIMITED,
                    true,
                    "TooFewReplicas",
                    format!(
                        "the desired replica count ({}) is less than minReplicas ({})",
                        rec.stabilized, spec.min_replicas
                    ),
                ),
                Limit::ScaleUpLimit => c(
                    SCALING_LIMITED,
                    true,
                    "ScaleUpLimit",
                    format!(
                        "the desired replica count ({}) is increasing faster than spec.autoscaling.scaleUp \
                         allows: {} now",
                        rec.stabilized, rec.replicas
                    ),
                ),
                Limit::ScaleDownLimit => c(
                    SCALING_LIMITED,
                    true,
                    "ScaleDownLimit",
                    format!(
                        "the desired replica count ({}) is decreasing faster than spec.autoscaling.scaleDown \
                         allows: {} now",
                        rec.stabilized, rec.replicas
                    ),
                ),
            };
            vec![able, active, limited]
        }
    };
    let mut next = fresh;
    for kept in previous
        .iter()
        .filter(|p| AUTOSCALER_CONDITIONS.contains(&p.type_.as_str()))
    {
        if !next.iter().any(|n| n.type_ == kept.type_) {
            next.push(kept.clone());
        }
    }
    next.sort_by_key(|c| {
        AUTOSCALER_CONDITIONS
            .iter()
            .position(|t| *t == c.type_)
            .unwrap_or(usize::MAX)
    });
    merge_conditions(previous, next)
}

/// The part of the status the autoscaler owns, as it server-side applies it.
#[derive(Serialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ScalerStatus {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kv_cache_usage: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

impl ScalerStatus {
    /// What of `status` the autoscaler wrote (to compare with what it would write now).
    pub fn of(status: &LlamaDeploymentStatus) -> Self {
        Self {
            queue_depth: status.queue_depth,
            kv_cache_usage: status.kv_cache_usage,
            desired_replicas: status.desired_replicas,
            last_scale_time: status.last_scale_time.clone(),
            conditions: status
                .conditions
                .iter()
                .filter(|c| AUTOSCALER_CONDITIONS.contains(&c.type_.as_str()))
                .cloned()
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests;
