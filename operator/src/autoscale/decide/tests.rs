use k8s_openapi::jiff::Timestamp;

use super::*;
use crate::autoscale::recommend::{Input, Timed, recommend};

fn spec(json: serde_json::Value) -> AutoscalingSpec {
    serde_json::from_value(json).expect("autoscaling spec")
}

fn time(s: i64) -> Time {
    Time(Timestamp::from_second(s).expect("time"))
}

fn answered(pod: &str, waiting: f64, running: f64, kv: f64) -> Scraped {
    Scraped {
        pod: pod.to_owned(),
        result: Ok(PodMetrics {
            waiting: Some(waiting),
            running: Some(running),
            kv_usage: Some(kv),
            draining: false,
        }),
    }
}

fn silent(pod: &str) -> Scraped {
    Scraped {
        pod: pod.to_owned(),
        result: Err("no answer within 2s".to_owned()),
    }
}

fn find<'a>(cs: &'a [Condition], t: &str) -> &'a Condition {
    cs.iter().find(|c| c.type_ == t).expect("condition")
}

fn decide(
    s: &AutoscalingSpec,
    current: i32,
    scraped: &[Scraped],
    history: &[Timed],
) -> Recommendation {
    recommend(&Input {
        spec: s,
        current,
        samples: &samples(scraped),
        now: 1000.0,
        history,
        events: &[],
    })
}

/// The conditions of a successful decision, from no earlier conditions.
fn decided(s: &AutoscalingSpec, current: i32, rec: &Recommendation) -> Vec<Condition> {
    conditions(
        &Outcome::Decided {
            spec: s,
            current,
            rec,
            rescale_error: None,
        },
        &[],
        Some(2),
        &time(100),
    )
}

#[test]
fn the_idlest_pod_has_the_lowest_deletion_cost_and_a_silent_pod_the_lowest_of_all() {
    let scraped = [
        answered("busy", 2.0, 1.0, 0.5),
        answered("idle-warm", 0.0, 0.0, 0.25),
        answered("idle-cold", 0.0, 0.0, 0.0),
        silent("stuck"),
    ];
    let costs = deletion_costs(&scraped);
    assert_eq!(
        costs,
        vec![
            ("busy".to_owned(), 3500),
            ("idle-warm".to_owned(), 250),
            ("idle-cold".to_owned(), 0),
            ("stuck".to_owned(), -1),
        ]
    );
}

#[test]
fn means_cover_only_pods_that_answered_and_are_not_draining() {
    let mut draining = answered("leaving", 50.0, 8.0, 1.0);
    if let Ok(m) = &mut draining.result {
        m.draining = true;
    }
    let scraped = [
        answered("a", 3.0, 1.0, 0.1234),
        answered("b", 4.0, 1.0, 0.2),
        silent("c"),
        draining,
    ];
    assert_eq!(means(&scraped), (Some(3.5), Some(0.162)));
    let s = samples(&scraped);
    assert_eq!(s.len(), 4);
    assert_eq!(s[2], PodSample::default());
    assert_eq!(s[3], PodSample::default());
    assert_eq!(means(&[silent("x")]), (None, None));
}

#[test]
fn a_scale_up_names_its_metric_in_the_event_and_the_conditions() {
    let s = spec(serde_json::json!({"minReplicas": 1, "maxReplicas": 3, "targetQueueDepth": 4}));
    let rec = decide(&s, 1, &[answered("a", 9.5, 1.0, 0.1)], &[]);
    assert_eq!(rec.replicas, 3);
    assert_eq!(
        rescale_message(&rec),
        "New size: 3; reason: queue depth 9.50 per pod above target 4"
    );
    let cs = decided(&s, 1, &rec);
    let types: Vec<&str> = cs.iter().map(|c| c.type_.as_str()).collect();
    assert_eq!(types, AUTOSCALER_CONDITIONS);
    assert_eq!(find(&cs, ABLE_TO_SCALE).reason, "SucceededRescale");
    assert_eq!(find(&cs, ABLE_TO_SCALE).message, "scaled from 1 to 3");
    assert_eq!(find(&cs, SCALING_ACTIVE).reason, "ValidMetricFound");
    assert!(
        find(&cs, SCALING_ACTIVE)
            .message
            .contains("queue depth 9.50 per pod")
    );
    assert_eq!(find(&cs, SCALING_LIMITED).status, "False");
    assert_eq!(find(&cs, SCALING_LIMITED).reason, "DesiredWithinRange");
}

#[test]
fn the_max_bound_shows_as_scaling_limited_too_many_replicas() {
    let s = spec(serde_json::json!({"minReplicas": 1, "maxReplicas": 2, "targetQueueDepth": 2}));
    let rec = decide(&s, 1, &[answered("a", 9.0, 1.0, 0.0)], &[]);
    assert_eq!((rec.raw, rec.replicas), (5, 2));
    let cs = decided(&s, 1, &rec);
    let limited = find(&cs, SCALING_LIMITED);
    assert_eq!(
        (limited.status.as_str(), limited.reason.as_str()),
        ("True", "TooManyReplicas")
    );
    assert_eq!(
        limited.message,
        "the desired replica count (5) is more than maxReplicas (2)"
    );
    assert!(
        rescale_message(&rec).ends_with("(TooManyReplicas)"),
        "{}",
        rescale_message(&rec)
    );
}

#[test]
fn a_held_scale_down_says_it_is_stabilized_and_the_min_bound_says_too_few() {
    let s = spec(
        serde_json::json!({"minReplicas": 1, "maxReplicas": 3, "targetQueueDepth": 2,
        "scaleDown": {"stabilizationWindowSeconds": 60, "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]}}),
    );
    let idle = [answered("a", 0.0, 0.0, 0.0), answered("b", 0.0, 0.0, 0.0)];
    let held = decide(
        &s,
        2,
        &idle,
        &[Timed {
            at: 990.0,
            replicas: 2,
        }],
    );
    assert_eq!(held.replicas, 2);
    let cs = decided(&s, 2, &held);
    assert_eq!(find(&cs, ABLE_TO_SCALE).reason, "ScaleDownStabilized");
    let after = decide(
        &s,
        2,
        &idle,
        &[Timed {
            at: 900.0,
            replicas: 2,
        }],
    );
    assert_eq!(after.replicas, 1);
    let cs = decided(&s, 2, &after);
    assert_eq!(find(&cs, SCALING_LIMITED).reason, "TooFewReplicas");
    assert_eq!(
        rescale_message(&after),
        "New size: 1; reason: queue depth 0.00 per pod at or below target 2 (TooFewReplicas)"
    );
}

#[test]
fn missing_metrics_turn_scaling_inactive_and_keep_the_limit_condition_as_it_was() {
    let s = spec(serde_json::json!({"minReplicas": 1, "maxReplicas": 2, "targetQueueDepth": 2}));
    let rec = decide(&s, 1, &[answered("a", 9.0, 1.0, 0.0)], &[]);
    let before = decided(&s, 1, &rec);
    let after = conditions(
        &Outcome::NoMetrics {
            why: "pod a: no answer within 2s".to_owned(),
        },
        &before,
        None,
        &time(200),
    );
    let active = find(&after, SCALING_ACTIVE);
    assert_eq!(
        (active.status.as_str(), active.reason.as_str()),
        ("False", "FailedGetMetrics")
    );
    assert!(
        active.message.contains("pod a: no answer within 2s"),
        "{}",
        active.message
    );
    assert_eq!(active.last_transition_time, time(200));
    // ScalingLimited is carried over untouched, its transition time included.
    assert_eq!(
        find(&after, SCALING_LIMITED),
        find(&before, SCALING_LIMITED)
    );
    // AbleToScale stays True: its transition time does not move.
    assert_eq!(find(&after, ABLE_TO_SCALE).last_transition_time, time(100));
}

#[test]
fn a_conflicting_autoscaler_and_a_failed_write_make_scaling_unable() {
    let s = spec(serde_json::json!({"minReplicas": 1, "maxReplicas": 3}));
    let cs = conditions(
        &Outcome::Conflict {
            with: "HorizontalPodAutoscaler keda-hpa-chat".to_owned(),
        },
        &[],
        None,
        &time(1),
    );
    let able = find(&cs, ABLE_TO_SCALE);
    assert_eq!(
        (able.status.as_str(), able.reason.as_str()),
        ("False", "ConflictingAutoscaler")
    );
    assert!(
        able.message
            .starts_with("HorizontalPodAutoscaler keda-hpa-chat also targets")
    );
    let rec = decide(&s, 1, &[answered("a", 40.0, 1.0, 0.0)], &[]);
    let cs = conditions(
        &Outcome::Decided {
            spec: &s,
            current: 1,
            rec: &rec,
            rescale_error: Some("HTTP 403 forbidden".to_owned()),
        },
        &[],
        None,
        &time(1),
    );
    assert_eq!(find(&cs, ABLE_TO_SCALE).reason, "FailedUpdateScale");
    assert!(
        find(&cs, ABLE_TO_SCALE)
            .message
            .contains("HTTP 403 forbidden")
    );
}

#[test]
fn the_scaler_view_holds_only_what_the_autoscaler_writes() {
    let mut status = LlamaDeploymentStatus {
        queue_depth: Some(1.5),
        kv_cache_usage: Some(0.25),
        desired_replicas: Some(2),
        replicas: 2,
        ..Default::default()
    };
    status.conditions = conditions(&Outcome::ScaledToZero, &[], None, &time(5));
    status.conditions.push(Condition {
        type_: "Ready".to_owned(),
        status: "True".to_owned(),
        reason: "AllReplicasReady".to_owned(),
        message: String::new(),
        observed_generation: None,
        last_transition_time: time(5),
    });
    let view = ScalerStatus::of(&status);
    assert_eq!(view.queue_depth, Some(1.5));
    assert_eq!(view.conditions.len(), 2);
    let json = serde_json::to_value(&view).expect("json");
    assert!(json.get("replicas").is_none(), "{json}");
    assert!(json.get("lastScaleTime").is_none(), "{json}");
    assert_eq!(json["kvCacheUsage"], 0.25);
}
