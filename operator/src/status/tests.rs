use super::*;
use crate::hardware::{Fit, HardwareError};
use crate::plan::tests::{assert_golden, llama};
use k8s_openapi::jiff::Timestamp;

/// `derive` with a fitting spec, no pod problems and no pods observed, at `at(secs)`.
fn derive_fit(ld: &LlamaDeployment, d: &Deployment, secs: i64) -> LlamaDeploymentStatus {
    derive(
        ld,
        &Observed {
            validation: &fit(),
            deployment: Some(d),
            problems: &[],
            progress: &NO_PODS,
        },
        &at(secs),
    )
}

/// No pods observed.
static NO_PODS: progress::PodProgress = progress::PodProgress {
    pending: 0,
    downloading: 0,
    loading: 0,
    ready: 0,
    startup: None,
};

fn at(secs: i64) -> Time {
    Time(Timestamp::from_second(1_800_000_000 + secs).expect("valid time"))
}

fn deployment(generation: i64, replicas: i32, ready: i32, updated: i32) -> Deployment {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": "d", "generation": generation},
        "spec": {"replicas": replicas, "selector": {}, "template": {}},
        "status": {"observedGeneration": generation, "replicas": replicas, "readyReplicas": ready,
                   "availableReplicas": ready, "updatedReplicas": updated}
    }))
    .expect("deployment")
}

fn two_replicas() -> crate::crd::LlamaDeployment {
    llama(
        "m",
        serde_json::json!({"model": {"url": "https://x/m.gguf"}, "replicas": 2}),
    )
}

fn fit() -> Result<Fit, HardwareError> {
    Ok(Fit {
        message: "fits".to_owned(),
    })
}

fn status_of(c: &[Condition], t: &str) -> (String, String) {
    let c = find(c, t).expect("condition present");
    (c.status.clone(), c.reason.clone())
}

#[test]
fn all_replicas_ready_makes_the_deployment_ready_and_available() {
    let d = deployment(1, 2, 2, 2);
    let s = derive(
        &two_replicas(),
        &Observed {
            validation: &fit(),
            deployment: Some(&d),
            problems: &[],
            progress: &NO_PODS,
        },
        &at(0),
    );
    assert_eq!(
        status_of(&s.conditions, READY),
        ("True".into(), "AllReplicasReady".into())
    );
    assert_eq!(
        status_of(&s.conditions, AVAILABLE),
        ("True".into(), "MinimumReplicasAvailable".into())
    );
    assert_eq!(
        status_of(&s.conditions, PROGRESSING),
        ("False".into(), "RolloutComplete".into())
    );
    assert_eq!(s.ready_of_desired.as_deref(), Some("2/2"));
    assert_eq!(
        s.selector.as_deref(),
        Some("inference.llama-operator.dev/deployment=m")
    );
    assert_eq!(s.endpoint.as_deref(), Some("http://m.ml.svc:8000/v1"));
}

#[test]
fn a_rollout_in_flight_is_progressing_and_not_ready() {
    let d = deployment(1, 2, 1, 1);
    let s = derive(
        &two_replicas(),
        &Observed {
            validation: &fit(),
            deployment: Some(&d),
            problems: &[],
            progress: &NO_PODS,
        },
        &at(0),
    );
    assert_eq!(
        status_of(&s.conditions, READY),
        ("False".into(), "ReplicasNotReady".into())
    );
    assert_eq!(
        status_of(&s.conditions, PROGRESSING),
        ("True".into(), "RollingOut".into())
    );
    assert_eq!(
        find(&s.conditions, READY).map(|c| c.message.as_str()),
        Some("1/2 replicas ready, 1/2 updated")
    );
}

#[test]
fn a_serving_deployment_stays_ready_while_it_scales() {
    let mut ld = two_replicas();
    ld.spec.replicas = 3;
    // Scaled 2 -> 3 (e.g. by the autoscaler): the new pod is starting, two serve.
    let d = deployment(1, 3, 2, 3);
    let obs = Observed {
        validation: &fit(),
        deployment: Some(&d),
        problems: &[],
        progress: &NO_PODS,
    };
    let s = derive(&ld, &obs, &at(0));
    assert_eq!(
        status_of(&s.conditions, READY),
        ("True".into(), "Scaling".into())
    );
    assert_eq!(
        find(&s.conditions, READY).map(|c| c.message.as_str()),
        Some("2/3 replicas ready, 3/3 updated; serving while scaling to 3")
    );
    assert_eq!(s.ready_of_desired.as_deref(), Some("2/3"));
    // Right after the rescale the Deployment has not observed it yet (its status is of generation 1, its spec
    // of generation 2): the previous Ready=True stands instead of flipping for a moment.
    ld.status = Some(s.clone());
    let mut lagging = deployment(2, 3, 2, 2);
    if let Some(st) = lagging.status.as_mut() {
        st.observed_generation = Some(1);
        st.replicas = Some(2);
    }
    let lag = derive(
        &ld,
        &Observed {
            deployment: Some(&lagging),
            ..obs
        },
        &at(5),
    );
    assert_eq!(
        status_of(&lag.conditions, READY),
        ("True".into(), "Scaling".into())
    );
    // Nothing serving yet (a fresh deployment) is not Ready.
    let d = deployment(1, 3, 0, 3);
    let obs = Observed {
        deployment: Some(&d),
        ..obs
    };
    let s = derive(&ld, &obs, &at(0));
    assert_eq!(
        status_of(&s.conditions, READY),
        ("False".into(), "ReplicasNotReady".into())
    );
}

#[test]
fn failed_validation_is_not_ready_with_the_reason_and_arithmetic() {
    let err = Err(HardwareError::TensorParallelMismatch(
        "tensorParallelSize 2 does not divide model.heads 9 (9 % 2 = 1)".into(),
    ));
    let s = derive(
        &two_replicas(),
        &Observed {
            validation: &err,
            deployment: None,
            problems: &[],
            progress: &NO_PODS,
        },
        &at(0),
    );
    let ready = find(&s.conditions, READY).expect("ready");
    assert_eq!(
        (ready.status.as_str(), ready.reason.as_str()),
        ("False", "TensorParallelMismatch")
    );
    assert!(ready.message.contains("9 % 2 = 1"));
    assert_eq!(
        status_of(&s.conditions, VALIDATED),
        ("False".into(), "TensorParallelMismatch".into())
    );
}

#[test]
fn last_transition_time_moves_only_when_the_status_changes() {
    let mut ld = two_replicas();
    let rolling = deployment(1, 2, 1, 1);
    let first = derive_fit(&ld, &rolling, 0);
    ld.status = Some(first.clone());
    let again = derive_fit(&ld, &rolling, 60);
    assert_eq!(
        again, first,
        "nothing changed, so nothing moves (and no status patch is needed)"
    );
    ld.status = Some(again);
    let done = deployment(1, 2, 2, 2);
    let later = derive_fit(&ld, &done, 120);
    assert_eq!(
        find(&later.conditions, READY).map(|c| c.last_transition_time.clone()),
        Some(at(120))
    );
    assert_eq!(
        find(&later.conditions, VALIDATED).map(|c| c.last_transition_time.clone()),
        Some(at(0))
    );
    let changed: Vec<&str> = transitions(&first.conditions, &later.conditions)
        .iter()
        .map(|c| c.type_.as_str())
        .collect();
    assert_eq!(changed, vec![READY, PROGRESSING]);
}

#[test]
fn pod_failures_surface_as_degraded_and_explain_not_ready() {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "m-abc"},
        "status": {"containerStatuses": [{
            "name": "server", "image": "i", "imageID": "", "ready": false, "restartCount": 3,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
            "lastState": {"terminated": {"reason": "OOMKilled", "exitCode": 137}}
        }]}
    }))
    .expect("pod");
    let problems = pod_problems(&[pod]);
    assert_eq!(
        problems
            .iter()
            .map(|p| p.reason.as_str())
            .collect::<Vec<_>>(),
        vec!["OOMKilled"],
        "an OOM crash loop is reported by its cause"
    );
    assert_eq!(
        problems[0].message,
        "container server was killed for exceeding its memory limit (restarts: 3); back-off 40s"
    );
    let d = deployment(1, 2, 1, 2);
    let s = derive(
        &two_replicas(),
        &Observed {
            validation: &fit(),
            deployment: Some(&d),
            problems: &problems,
            progress: &NO_PODS,
        },
        &at(0),
    );
    assert_eq!(
        status_of(&s.conditions, DEGRADED),
        ("True".into(), "OOMKilled".into())
    );
    assert_eq!(
        status_of(&s.conditions, READY),
        ("False".into(), "OOMKilled".into())
    );
}

#[test]
fn crash_loops_and_image_pull_failures_name_the_container() {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "m-def"},
        "status": {"containerStatuses": [
            {"name": "server", "image": "i", "imageID": "", "ready": false, "restartCount": 4,
             "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 1m20s"}},
             "lastState": {"terminated": {"reason": "Error", "exitCode": 1}}},
            {"name": "sidecar", "image": "j", "imageID": "", "ready": false, "restartCount": 0,
             "state": {"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image \"j\""}}}
        ]}
    }))
    .expect("pod");
    let problems = pod_problems(&[pod]);
    let got: Vec<(&str, &str)> = problems
        .iter()
        .map(|p| (p.reason.as_str(), p.message.as_str()))
        .collect();
    assert_eq!(
        got,
        vec![
            (
                "CrashLoopBackOff",
                "container server: back-off 1m20s; exit code 1"
            ),
            (
                "ImagePullBackOff",
                "container sidecar: Back-off pulling image \"j\""
            ),
        ]
    );
}

#[test]
fn unschedulable_pods_are_reported_with_the_scheduler_message() {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "m-xyz"},
        "status": {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                   "message": "0/2 nodes are available: 2 Insufficient nvidia.com/gpu."}]}
    }))
    .expect("pod");
    let problems = pod_problems(&[pod]);
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].reason, "Unschedulable");
    assert!(problems[0].message.contains("Insufficient nvidia.com/gpu"));
}

#[test]
fn zero_replicas_is_ready_as_scaled_to_zero() {
    let mut ld = two_replicas();
    ld.spec.replicas = 0;
    let d = deployment(1, 0, 0, 0);
    let s = derive_fit(&ld, &d, 0);
    assert_eq!(
        status_of(&s.conditions, READY),
        ("True".into(), "ScaledToZero".into())
    );
}

#[test]
fn a_deployment_not_yet_observed_by_its_controller_is_not_ready() {
    let mut d = deployment(1, 2, 2, 2);
    d.metadata.generation = Some(2);
    let s = derive(
        &two_replicas(),
        &Observed {
            validation: &fit(),
            deployment: Some(&d),
            problems: &[],
            progress: &NO_PODS,
        },
        &at(0),
    );
    assert_eq!(status_of(&s.conditions, READY).0, "False");
}

#[test]
fn the_controller_leaves_the_autoscalers_fields_and_conditions_alone() {
    let mut ld = two_replicas();
    let obs = Observed {
        validation: &fit(),
        deployment: None,
        problems: &[],
        progress: &NO_PODS,
    };
    let mine = derive(&ld, &obs, &at(0));
    // What the autoscaler wrote beside the controller's status.
    let mut written = mine.clone();
    written.queue_depth = Some(3.5);
    written.kv_cache_usage = Some(0.42);
    written.desired_replicas = Some(2);
    written.conditions.push(Condition {
        type_: "ScalingActive".to_owned(),
        status: "True".to_owned(),
        reason: "ValidMetricFound".to_owned(),
        message: String::new(),
        observed_generation: None,
        last_transition_time: at(0),
    });
    ld.status = Some(written.clone());
    let again = derive(&ld, &obs, &at(60));
    // It applies none of them (they stay the autoscaler's under server-side apply) ...
    assert_eq!(
        (
            again.queue_depth,
            again.kv_cache_usage,
            again.desired_replicas
        ),
        (None, None, None)
    );
    assert!(find(&again.conditions, "ScalingActive").is_none());
    // ... and sees nothing to write when only the autoscaler's part changed.
    assert_eq!(controller_view(&written), again);
}

#[test]
fn status_golden() {
    let d = deployment(1, 2, 2, 2);
    let s = derive(
        &two_replicas(),
        &Observed {
            validation: &fit(),
            deployment: Some(&d),
            problems: &[],
            progress: &NO_PODS,
        },
        &at(0),
    );
    assert_golden("status-ready.yaml", &s);
}

#[test]
fn failures_are_warning_events_and_routine_conditions_are_quiet() {
    let c = |t: &str, s: &str, r: &str| condition(t, s == "True", r, String::new(), None, &at(0));
    assert_eq!(
        event_type(&c(READY, "False", "TensorParallelMismatch"), false),
        Some(EventKind::Warning)
    );
    assert_eq!(
        event_type(&c(READY, "False", "ReplicasNotReady"), false),
        Some(EventKind::Normal)
    );
    assert_eq!(
        event_type(&c(READY, "True", "AllReplicasReady"), true),
        Some(EventKind::Normal)
    );
    assert_eq!(
        event_type(&c(DEGRADED, "True", "CrashLoopBackOff"), true),
        Some(EventKind::Warning)
    );
    assert_eq!(event_type(&c(DEGRADED, "False", "AsExpected"), false), None);
    assert_eq!(
        event_type(&c(DEGRADED, "False", "AsExpected"), true),
        Some(EventKind::Normal)
    );
    assert_eq!(
        event_type(&c(PROGRESSING, "True", "RollingOut"), true),
        None
    );
}

#[test]
fn a_failed_model_download_is_reported_with_the_fetchers_error_naming_the_url() {
    let log = "fetch: GET http://10.77.0.1:8080/m.gguf -> HTTP 200, 100 bytes\n\
               llama-server: sha256 mismatch for http://10.77.0.1:8080/m.gguf: expected aaaa, got bbbb (100 bytes)\n";
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "m-fetch"},
        "status": {"initContainerStatuses": [{
            "name": "model-fetch", "image": "i", "imageID": "", "ready": false, "restartCount": 2,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}},
            "lastState": {"terminated": {"reason": "Error", "exitCode": 1, "message": log}}
        }]}
    }))
    .expect("pod");
    let problems = pod_problems(&[pod]);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].reason, "ModelFetchFailed");
    assert_eq!(
        problems[0].message,
        "init container model-fetch failed (restarts: 2): sha256 mismatch for \
         http://10.77.0.1:8080/m.gguf: expected aaaa, got bbbb (100 bytes)"
    );
}

#[test]
fn a_crash_loop_carries_the_exit_code_and_the_last_line_of_the_termination_message() {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "m-tp"},
        "status": {"containerStatuses": [{
            "name": "server", "image": "i", "imageID": "", "ready": false, "restartCount": 1,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
            "lastState": {"terminated": {"reason": "Error", "exitCode": 1,
                          "message": "loading\nllama-server serve: tensor-parallel-size 2 is not supported\n"}}
        }]}
    }))
    .expect("pod");
    let problems = pod_problems(&[pod]);
    assert_eq!(
        problems[0].message,
        "container server: back-off 10s; exit code 1: llama-server serve: tensor-parallel-size 2 is not supported"
    );
}

#[test]
fn a_crash_loop_without_a_termination_message_still_gives_the_exit_code() {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "m"},
        "status": {"containerStatuses": [{
            "name": "server", "image": "i", "imageID": "", "ready": false, "restartCount": 3,
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s"}},
            "lastState": {"terminated": {"reason": "Error", "exitCode": 139}}
        }]}
    }))
    .expect("pod");
    assert_eq!(
        pod_problems(&[pod])[0].message,
        "container server: back-off 40s; exit code 139"
    );
}

/// A pod at `created` (seconds after [`at`]'s origin) with the given init/server container states and Ready time.
fn starting_pod(
    name: &str,
    fetch: Option<serde_json::Value>,
    server: Option<serde_json::Value>,
    ready_at: Option<i64>,
) -> k8s_openapi::api::core::v1::Pod {
    let ts = |s: i64| serde_json::to_value(at(s)).expect("time");
    let mut status = serde_json::json!({"phase": "Pending", "conditions": []});
    if let Some(f) = fetch {
        status["initContainerStatuses"] = serde_json::json!([{"name": "model-fetch", "image": "i", "imageID": "",
            "ready": false, "restartCount": 0, "state": f}]);
    }
    if let Some(s) = server {
        status["containerStatuses"] = serde_json::json!([{"name": "server", "image": "i", "imageID": "",
            "ready": ready_at.is_some(), "restartCount": 0, "state": s}]);
    }
    if let Some(r) = ready_at {
        status["conditions"] =
            serde_json::json!([{"type": "Ready", "status": "True", "lastTransitionTime": ts(r)}]);
    }
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "creationTimestamp": ts(0)},
        "status": status,
    }))
    .expect("pod")
}

#[test]
fn pods_are_sorted_into_pending_downloading_loading_ready_and_the_startup_is_measured() {
    let ts = |s: i64| serde_json::to_value(at(s)).expect("time");
    let pending = starting_pod("a-pending", None, None, None);
    let downloading = starting_pod(
        "b-downloading",
        Some(serde_json::json!({"running": {"startedAt": ts(3)}})),
        Some(serde_json::json!({"waiting": {"reason": "PodInitializing"}})),
        None,
    );
    let loading = starting_pod(
        "c-loading",
        Some(
            serde_json::json!({"terminated": {"exitCode": 0, "startedAt": ts(3), "finishedAt": ts(20)}}),
        ),
        Some(serde_json::json!({"running": {"startedAt": ts(21)}})),
        None,
    );
    let ready = |name: &str, load_from: i64, ready_at: i64| {
        starting_pod(
            name,
            Some(
                serde_json::json!({"terminated": {"exitCode": 0, "startedAt": ts(2), "finishedAt": ts(14)}}),
            ),
            Some(serde_json::json!({"running": {"startedAt": ts(load_from)}})),
            Some(ready_at),
        )
    };
    let mut gone = ready("z-terminating", 1, 99);
    gone.metadata.deletion_timestamp = Some(at(100));
    let pods = [
        pending,
        downloading,
        loading,
        ready("d-ready-early", 15, 30),
        ready("e-ready-late", 16, 41),
        gone,
    ];
    let p = progress::progress(&pods);
    assert_eq!(
        (p.pending, p.downloading, p.loading, p.ready),
        (1, 1, 1, 2),
        "the terminating pod is not counted"
    );
    assert_eq!(
        p.startup,
        Some(crate::crd::StartupStatus {
            pod: "e-ready-late".into(),
            download_seconds: Some(12.0),
            load_seconds: Some(25.0),
            total_seconds: Some(41.0),
        })
    );
    // The most advanced starting step is the phase until the rollout completes.
    assert_eq!(p.phase(false, 4), "Loading");
    assert_eq!(p.phase(true, 4), "Ready");
    let only = |pods: &[k8s_openapi::api::core::v1::Pod]| progress::progress(pods).phase(false, 1);
    assert_eq!(only(&pods[..2]), "Downloading");
    assert_eq!(only(&pods[..1]), "Pending");
    assert_eq!(only(&[]), "Pending");
    assert_eq!(
        only(&pods[3..5]),
        "Updating",
        "ready pods only, rollout not complete"
    );
    assert_eq!(progress::progress(&[]).phase(true, 0), "ScaledToZero");
}

#[test]
fn the_phase_says_invalid_or_failed_before_progress_and_the_startup_outlives_its_pod() {
    let ld = llama(
        "m",
        serde_json::json!({"model": {"pvc": {"claimName": "c", "path": "m.gguf"}}}),
    );
    let d = deployment(1, 1, 0, 1);
    let loading = progress::PodProgress {
        loading: 1,
        ..NO_PODS.clone()
    };
    let invalid: Result<Fit, HardwareError> = Err(HardwareError::InvalidSpec("bad".into()));
    let problem = [PodProblem {
        reason: "CrashLoopBackOff".into(),
        pod: "m-1".into(),
        message: "exit code 1".into(),
    }];
    let phase = |validation: &Result<Fit, HardwareError>, problems: &[PodProblem]| {
        derive(
            &ld,
            &Observed {
                validation,
                deployment: Some(&d),
                problems,
                progress: &loading,
            },
            &at(0),
        )
        .phase
    };
    assert_eq!(phase(&invalid, &[]).as_deref(), Some("Invalid"));
    assert_eq!(phase(&fit(), &problem).as_deref(), Some("Failed"));
    assert_eq!(phase(&fit(), &[]).as_deref(), Some("Loading"));

    // A start-up measured before stays when no ready pod is observed now.
    let mut ld2 = ld.clone();
    let before = crate::crd::StartupStatus {
        pod: "m-0".into(),
        download_seconds: None,
        load_seconds: Some(4.2),
        total_seconds: Some(9.9),
    };
    ld2.status = Some(crate::crd::LlamaDeploymentStatus {
        startup: Some(before.clone()),
        ..Default::default()
    });
    let s = derive_fit(&ld2, &d, 0);
    assert_eq!(s.startup, Some(before));
}
