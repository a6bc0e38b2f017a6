use super::*;

fn spec(json: serde_json::Value) -> AutoscalingSpec {
    serde_json::from_value(json).expect("autoscaling spec")
}

fn queues(values: &[Option<f64>]) -> Vec<PodSample> {
    values
        .iter()
        .map(|q| PodSample {
            queue: *q,
            kv_usage: None,
        })
        .collect()
}

fn run(s: &AutoscalingSpec, current: i32, samples: &[PodSample]) -> Recommendation {
    recommend(&Input {
        spec: s,
        current,
        samples,
        now: 1000.0,
        history: &[],
        events: &[],
    })
}

#[test]
fn desired_is_ceil_of_ready_times_the_usage_ratio() {
    let s = spec(serde_json::json!({"maxReplicas": 10, "targetQueueDepth": 4.0}));
    // avg 10 / target 4 = 2.5 × 2 pods = 5
    let r = run(&s, 2, &queues(&[Some(8.0), Some(12.0)]));
    assert_eq!((r.raw, r.replicas, r.limit), (5, 5, Limit::None));
    assert_eq!(r.metric, Some(("queue", 10.0, 4.0)));
}

#[test]
fn within_ten_percent_of_the_target_nothing_changes() {
    let s = spec(serde_json::json!({"maxReplicas": 10, "targetQueueDepth": 4.0}));
    assert_eq!(
        run(&s, 3, &queues(&[Some(4.4), Some(4.2), Some(4.3)])).replicas,
        3
    );
    assert_eq!(
        run(&s, 3, &queues(&[Some(3.6), Some(3.7), Some(3.8)])).replicas,
        3
    );
}

#[test]
fn missing_metrics_count_as_zero_when_scaling_up() {
    let s = spec(serde_json::json!({"maxReplicas": 10, "targetQueueDepth": 4.0}));
    // present avg 12 (ratio 3); with the missing pod at 0: avg 8, ratio 2 × 3 pods = 6
    let r = run(&s, 3, &queues(&[Some(12.0), Some(12.0), None]));
    assert_eq!(r.raw, 6);
}

#[test]
fn missing_metrics_count_as_at_target_when_scaling_down_and_may_cancel_it() {
    let s = spec(
        serde_json::json!({"maxReplicas": 10, "targetQueueDepth": 4.0,
        "scaleDown": {"stabilizationWindowSeconds": 0, "policies": [{"type": "Percent", "value": 100, "periodSeconds": 15}]}}),
    );
    // present avg 0 (ratio 0); missing at target: avg (0 + 4 + 4 + 4) / 4 = 3, ratio 0.75 × 4 = 3
    let r = run(&s, 4, &queues(&[Some(0.0), None, None, None]));
    assert_eq!(r.raw, 3);
    // 3.8 and 4 missing: (3.8 + 4) / 2 = 3.9, within tolerance: no change
    let r = run(&s, 2, &queues(&[Some(3.0), None]));
    assert_eq!(r.raw, 2);
}

#[test]
fn the_larger_of_queue_and_kv_wins() {
    let s = spec(
        serde_json::json!({"maxReplicas": 10, "targetQueueDepth": 4.0, "targetKvCacheUsage": 0.5}),
    );
    let samples = [
        PodSample {
            queue: Some(4.0),
            kv_usage: Some(0.9),
        },
        PodSample {
            queue: Some(4.0),
            kv_usage: Some(1.0),
        },
    ];
    let r = run(&s, 2, &samples);
    // queue at target (2); kv 0.95 / 0.5 = 1.9 × 2 = 3.8 -> 4
    assert_eq!(r.raw, 4);
    assert_eq!(r.metric.map(|m| m.0), Some("kv"));
}

#[test]
fn scale_down_waits_out_the_stabilization_window() {
    let s = spec(serde_json::json!({"maxReplicas": 10, "targetQueueDepth": 4.0}));
    let samples = queues(&[Some(0.0), Some(0.0), Some(0.0), Some(0.0)]);
    let history = [
        Timed {
            at: 800.0,
            replicas: 4,
        },
        Timed {
            at: 990.0,
            replicas: 1,
        },
    ];
    let r = recommend(&Input {
        spec: &s,
        current: 4,
        samples: &samples,
        now: 1000.0,
        history: &history,
        events: &[],
    });
    assert_eq!(
        (r.raw, r.replicas),
        (0, 4),
        "a recommendation of 4 within the default 300 s window holds"
    );
    let r = recommend(&Input {
        spec: &s,
        current: 4,
        samples: &samples,
        now: 1200.0,
        history: &history,
        events: &[],
    });
    assert_eq!(
        (r.replicas, r.limit),
        (1, Limit::None),
        "once 4 ages out, the window's largest recommendation is 1"
    );
}

#[test]
fn scale_up_is_limited_to_the_larger_of_double_or_four_pods_per_fifteen_seconds() {
    let s = spec(serde_json::json!({"maxReplicas": 100, "targetQueueDepth": 1.0}));
    let r = run(&s, 2, &queues(&[Some(50.0), Some(50.0)]));
    assert_eq!(
        (r.raw, r.replicas, r.limit),
        (100, 6, Limit::ScaleUpLimit),
        "2 + 4 pods beats 2 × 2"
    );
    let r = run(&s, 10, &queues(&[Some(50.0); 10]));
    assert_eq!(r.replicas, 20, "10 × 2 beats 10 + 4");
    // Having just added 4 pods (6 -> 10) inside the period, the period started at 6: at most 12.
    let events = [(
        Timed {
            at: 995.0,
            replicas: 10,
        },
        6,
    )];
    let samples = queues(&[Some(50.0); 10]);
    let r = recommend(&Input {
        spec: &s,
        current: 10,
        samples: &samples,
        now: 1000.0,
        history: &[],
        events: &events,
    });
    assert_eq!(r.replicas, 12);
}

#[test]
fn bounds_win_last_and_say_so() {
    let s = spec(
        serde_json::json!({"minReplicas": 2, "maxReplicas": 3, "targetQueueDepth": 1.0,
        "scaleDown": {"stabilizationWindowSeconds": 0, "policies": [{"type": "Pods", "value": 10, "periodSeconds": 15}]}}),
    );
    let r = run(&s, 3, &queues(&[Some(9.0), Some(9.0), Some(9.0)]));
    assert_eq!((r.replicas, r.limit), (3, Limit::TooManyReplicas));
    let r = run(&s, 3, &queues(&[Some(0.0), Some(0.0), Some(0.0)]));
    assert_eq!((r.replicas, r.limit), (2, Limit::TooFewReplicas));
}

#[test]
fn disabled_scale_down_keeps_the_pods() {
    let s = spec(
        serde_json::json!({"maxReplicas": 10, "targetQueueDepth": 4.0,
        "scaleDown": {"stabilizationWindowSeconds": 0, "selectPolicy": "Disabled", "policies": []}}),
    );
    let r = run(&s, 5, &queues(&[Some(0.0); 5]));
    assert_eq!((r.raw, r.replicas, r.limit), (0, 5, Limit::ScaleDownLimit));
}

#[test]
fn no_metrics_at_all_keeps_the_current_count() {
    let s = spec(serde_json::json!({"maxReplicas": 10}));
    let r = run(&s, 3, &queues(&[None, None, None]));
    assert_eq!((r.raw, r.replicas, r.metric), (3, 3, None));
}
