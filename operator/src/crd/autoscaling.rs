//! Queue-depth autoscaling settings of a `LlamaDeployment` (`spec.autoscaling`), with HPA-style behaviour.

use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::one;

/// Queue-depth autoscaling (consumed by the operator's autoscaler loop).
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[x_kube(validation = Rule::new("self.minReplicas <= self.maxReplicas").message("spec.autoscaling.minReplicas must be <= spec.autoscaling.maxReplicas").field_path(".minReplicas"))]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingSpec {
    /// Lower bound of replicas; 0 allows scale to zero. Unit: pods. Default: 1.
    #[serde(default = "one")]
    #[x_kube(validation = Rule::new("self >= 0").message("spec.autoscaling.minReplicas must not be negative"))]
    pub min_replicas: i32,
    /// Upper bound of replicas. Unit: pods.
    #[x_kube(validation = Rule::new("self >= 1").message("spec.autoscaling.maxReplicas must be at least 1"))]
    pub max_replicas: i32,
    /// How often the autoscaler reads each Ready pod's `/metrics` and decides. Unit: seconds. Default: 5.
    #[serde(default = "default_scrape_interval")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 300").message("spec.autoscaling.scrapeIntervalSeconds must be between 1 and 300"))]
    pub scrape_interval_seconds: i32,
    /// Target mean number of waiting requests per pod (the server's `llama_requests_waiting` gauge).
    /// Unit: requests. Default: 4.
    #[serde(default = "default_target_queue_depth")]
    #[x_kube(validation = Rule::new("self > 0.0").message("spec.autoscaling.targetQueueDepth must be positive"))]
    pub target_queue_depth: f64,
    /// Optional target mean KV-cache usage per pod (the server's `llama_kv_cache_usage_ratio` gauge) as a
    /// fraction in (0, 1]; the larger of the two desired counts wins. Unit: fraction. Default: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0.0 && self <= 1.0").message("spec.autoscaling.targetKvCacheUsage must be in (0, 1]"))]
    pub target_kv_cache_usage: Option<f64>,
    /// Scale-up behaviour. Default: HPA's (no stabilisation; max of +100% or +4 pods per 15 s).
    #[serde(default = "ScalingRules::default_up")]
    pub scale_up: ScalingRules,
    /// Scale-down behaviour. Default: HPA's (300 s stabilisation; up to -100% per 15 s).
    #[serde(default = "ScalingRules::default_down")]
    pub scale_down: ScalingRules,
}

/// Stabilisation window and rate policies of one scaling direction (as in HPA `behavior`).
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScalingRules {
    /// Window over which past recommendations are considered before changing replicas. Unit: seconds.
    #[x_kube(validation = Rule::new("self >= 0 && self <= 3600").message("stabilizationWindowSeconds must be between 0 and 3600"))]
    pub stabilization_window_seconds: i32,
    /// How the policies combine: `Max` (most change), `Min` (least change) or `Disabled`. Default: `Max`.
    #[serde(default)]
    pub select_policy: SelectPolicy,
    /// Rate limits; each allows at most `value` pods or percent of change per `periodSeconds`.
    pub policies: Vec<ScalingPolicy>,
}

impl ScalingRules {
    /// HPA's default scale-up rules.
    pub fn default_up() -> Self {
        Self {
            stabilization_window_seconds: 0,
            select_policy: SelectPolicy::Max,
            policies: vec![
                ScalingPolicy {
                    type_: ScalingPolicyType::Percent,
                    value: 100,
                    period_seconds: 15,
                },
                ScalingPolicy {
                    type_: ScalingPolicyType::Pods,
                    value: 4,
                    period_seconds: 15,
                },
            ],
        }
    }

    /// HPA's default scale-down rules.
    pub fn default_down() -> Self {
        Self {
            stabilization_window_seconds: 300,
            select_policy: SelectPolicy::Max,
            policies: vec![ScalingPolicy {
                type_: ScalingPolicyType::Percent,
                value: 100,
                period_seconds: 15,
            }],
        }
    }
}

/// How rate policies combine.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SelectPolicy {
    #[default]
    Max,
    Min,
    Disabled,
}

/// One rate limit.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScalingPolicy {
    /// `Pods` (absolute) or `Percent` (of the current replicas).
    #[serde(rename = "type")]
    pub type_: ScalingPolicyType,
    /// Allowed change per period. Unit: pods or percent.
    #[x_kube(validation = Rule::new("self > 0").message("policy value must be positive"))]
    pub value: i32,
    /// Length of the period. Unit: seconds.
    #[x_kube(validation = Rule::new("self > 0 && self <= 1800").message("policy periodSeconds must be between 1 and 1800"))]
    pub period_seconds: i32,
}

/// Unit of a scaling policy.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScalingPolicyType {
    Pods,
    Percent,
}

fn default_scrape_interval() -> i32 {
    5
}

fn default_target_queue_depth() -> f64 {
    4.0
}
