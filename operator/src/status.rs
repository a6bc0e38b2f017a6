//! Status derivation (pure): from what the controller observed to `LlamaDeploymentStatus`, with conditions
//! whose `lastTransitionTime` only moves when their status changes.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ContainerStateTerminated, ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;

use crate::crd::{LlamaDeployment, LlamaDeploymentStatus};
use crate::hardware::{Fit, HardwareError};
use crate::plan::{endpoint, selector_string, served_model_name};

pub const READY: &str = "Ready";
pub const AVAILABLE: &str = "Available";
pub const PROGRESSING: &str = "Progressing";
pub const DEGRADED: &str = "Degraded";
pub const VALIDATED: &str = "Validated";

/// A pod-level failure worth surfacing on the LlamaDeployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodProblem {
    /// `Unschedulable`, `CrashLoopBackOff`, `ImagePullBackOff`, `ErrImagePull`, `CreateContainerConfigError`,
    /// `OOMKilled` (which stands in for the `CrashLoopBackOff` it causes) or `ModelFetchFailed` (the `url`
    /// source's download failed; the message carries the fetcher's error, naming the URL).
    pub reason: String,
    pub pod: String,
    pub message: String,
}

/// The container's current and last terminations.
fn terminations(cs: &ContainerStatus) -> impl Iterator<Item = &ContainerStateTerminated> {
    [cs.state.as_ref(), cs.last_state.as_ref()]
        .into_iter()
        .flatten()
        .filter_map(|s| s.terminated.as_ref())
}

/// The last non-empty line of a termination message (with `FallbackToLogsOnError`: the last line logged).
fn last_log_line(t: &ContainerStateTerminated) -> Option<&str> {
    t.message
        .as_deref()?
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
}

/// Finds the failures of the given pods, in a stable order (by pod name, then reason).
pub fn pod_problems(pods: &[Pod]) -> Vec<PodProblem> {
    let mut out = Vec::new();
    for pod in pods {
        let name = pod.name_any();
        let Some(status) = &pod.status else { continue };
        for c in status.conditions.iter().flatten() {
            if c.type_ == "PodScheduled"
                && c.status == "False"
                && c.reason.as_deref() == Some("Unschedulable")
            {
                out.push(PodProblem {
                    reason: "Unschedulable".to_owned(),
                    pod: name.clone(),
                    message: c.message.clone().unwrap_or_default(),
                });
            }
        }
        let containers = status
            .init_container_statuses
            .iter()
            .flatten()
            .chain(status.container_statuses.iter().flatten());
        for cs in containers {
            let waiting = cs.state.as_ref().and_then(|s| s.waiting.as_ref());
            let waiting_reason = waiting
                .and_then(|w| w.reason.as_deref())
                .unwrap_or_default();
            let waiting_message = waiting
                .and_then(|w| w.message.as_deref())
                .unwrap_or_default();
            // Out of memory, now or as the last termination: the most specific cause of a crash loop (a
            // container killed for its memory limit spends most of its time in CrashLoopBackOff).
            let oom = terminations(cs).any(|t| t.reason.as_deref() == Some("OOMKilled"));
            if oom {
                let mut message = format!(
                    "container {} was killed for exceeding its memory limit (restarts: {})",
                    cs.name, cs.restart_count
                );
                if waiting_reason == "CrashLoopBackOff" && !waiting_message.is_empty() {
                    message = format!("{message}; {waiting_message}");
                }
                out.push(PodProblem {
                    reason: "OOMKilled".to_owned(),
                    pod: name.clone(),
                    message,
                });
            }
            // The model download failing (bad checksum, HTTP error) is its own reason, with the fetcher's last
            // log line (the kubelet's FallbackToLogsOnError termination message), which names the URL.
            if cs.name == crate::plan::FETCH_CONTAINER
                && !oom
                && let Some(t) = terminations(cs).find(|t| t.exit_code != 0)
            {
                let why = last_log_line(t)
                    .map(|l| l.trim_start_matches("llama-server: ").to_owned())
                    .unwrap_or_else(|| format!("exit code {}", t.exit_code));
                out.push(PodProblem {
                    reason: "ModelFetchFailed".to_owned(),
                    pod: name.clone(),
                    message: format!(
                        "init container {} failed (restarts: {}): {why}",
                        cs.name, cs.restart_count
                    ),
                });
                continue;
            }
            let failed = match waiting_reason {
                "CrashLoopBackOff" => !oom,
                "ImagePullBackOff" | "ErrImagePull" | "CreateContainerConfigError" => true,
                _ => false,
            };
            if failed {
                let mut message = format!("container {}: {waiting_message}", cs.name);
                // A crash loop says how and why the process exited: its exit code and the last line of its
                // termination message (what the server writes to /dev/termination-log on a fatal error, else
                // the last line it logged).
                if let Some(t) = cs.last_state.as_ref().and_then(|s| s.terminated.as_ref()) {
                    message = match last_log_line(t) {
                        Some(last) => format!("{message}; exit code {}: {last}", t.exit_code),
                        None => format!("{message}; exit code {}", t.exit_code),
                    };
                }
                out.push(PodProblem {
                    reason: waiting_reason.to_owned(),
                    pod: name.clone(),
                    message,
                });
            }
        }
    }
    out.sort_by(|a, b| (&a.pod, &a.reason).cmp(&(&b.pod, &b.reason)));
    out.dedup();
    out
}

/// What the controller observed in one reconcile.
#[derive(Debug)]
pub struct Observed<'a> {
    pub validation: &'a Result<Fit, HardwareError>,
    /// The Deployment as read back after applying (None when it does not exist).
    pub deployment: Option<&'a Deployment>,
    pub problems: &'a [PodProblem],
    /// Where the pods are on their way to serving.
    pub progress: &'a progress::PodProgress,
}

/// A condition stamped with `now` (callers merge it with the previous one to keep its transition time).
pub(crate) fn condition(
    type_: &str,
    ok: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &Time,
) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if ok { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: generation,
        last_transition_time: now.clone(),
    }
}

/// Keeps the previous `lastTransitionTime` of each condition whose status did not change.
pub fn merge_conditions(previous: &[Condition], mut next: Vec<Condition>) -> Vec<Condition> {
    for c in &mut next {
        if let Some(p) = previous.iter().find(|p| p.type_ == c.type_)
            && p.status == c.status
        {
            c.last_transition_time = p.last_transition_time.clone();
        }
    }
    next
}

/// Conditions whose status or reason differ from before (including new ones): the events to publish.
pub fn transitions<'a>(previous: &[Condition], next: &'a [Condition]) -> Vec<&'a Condition> {
    next.iter()
        .filter(|c| {
            !previous
                .iter()
                .any(|p| p.type_ == c.type_ && p.status == c.status && p.reason == c.reason)
        })
        .collect()
}

/// Severity of the event published for a condition transition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Normal,
    Warning,
}

/// Whether (and how) a transition of `c` is announced as an event: failures are warnings; progress is
/// normal; the first appearance of a healthy `Degraded=False` or of `Progressing`/`Available` is not news.
pub fn event_type(c: &Condition, existed_before: bool) -> Option<EventKind> {
    let failed = match c.type_.as_str() {
        DEGRADED => c.status == "True",
        VALIDATED => c.status == "False",
        READY => c.status == "False" && c.reason != "ReplicasNotReady",
        _ => false,
    };
    if failed {
        return Some(EventKind::Warning);
    }
    match c.type_.as_str() {
        READY => Some(EventKind::Normal),
        DEGRADED | VALIDATED if existed_before => Some(EventKind::Normal),
        VALIDATED => Some(EventKind::Normal),
        _ => None,
    }
}

/// Derives the full status.
pub fn derive(ld: &LlamaDeployment, obs: &Observed<'_>, now: &Time) -> LlamaDeploymentStatus {
    let generation = ld.metadata.generation;
    let desired = ld.spec.replicas;
    let previous = ld.status.clone().unwrap_or_default();
    let ds = obs
        .deployment
        .and_then(|d| d.status.clone())
        .unwrap_or_default();
    let dep_current = obs.deployment.is_some_and(|d| {
        d.status.as_ref().and_then(|s| s.observed_generation) >= d.metadata.generation
            && d.spec.as_ref().and_then(|s| s.replicas) == Some(desired)
    });
    let replicas = ds.replicas.unwrap_or(0);
    let ready = ds.ready_replicas.unwrap_or(0);
    let updated = ds.updated_replicas.unwrap_or(0);
    let available = ds.available_replicas.unwrap_or(0);
    let progress = format!("{ready}/{desired} replicas ready, {updated}/{desired} updated");
    let rolled_out = dep_current && ready >= desired && updated >= desired && replicas == desired;
    // Only the count differs (every pod runs the current template, at least one serves): scaling, e.g. by the
    // autoscaler. The deployment keeps serving, so it stays Ready instead of flapping on every rescale.
    let scaling = !rolled_out && dep_current && updated == replicas && ready >= 1 && desired >= 1;
    let first_problem = obs.problems.first();

    let validated = match obs.validation {
        Ok(fit) => condition(
            VALIDATED,
            true,
            "HardwareFits",
            fit.message.clone(),
            generation,
            now,
        ),
        Err(e) => condition(VALIDATED, false, e.reason(), e.to_string(), generation, now),
    };
    let degraded = match first_problem {
        Some(p) => condition(
            DEGRADED,
            true,
            &p.reason,
            format!(
                "pod {}: {} ({} problem(s) in total)",
                p.pod,
                p.message,
                obs.problems.len()
            ),
            generation,
            now,
        ),
        None => condition(
            DEGRADED,
            false,
            "AsExpected",
            "no pod-level failures".to_owned(),
            generation,
            now,
        ),
    };
    let available_c = if available >= 1 {
        condition(
            AVAILABLE,
            true,
            "MinimumReplicasAvailable",
            format!("{available} replica(s) available"),
            generation,
            now,
        )
    } else {
        condition(
            AVAILABLE,
            false,
            "NoReplicasAvailable",
            "no replica is available".to_owned(),
            generation,
            now,
        )
    };
    let progressing = match obs.validation {
        Err(_) => condition(
            PROGRESSING,
            false,
            "ValidationFailed",
            "spec not applied: see Validated".to_owned(),
            generation,
            now,
        ),
        Ok(_) if rolled_out => condition(
            PROGRESSING,
            false,
            "RolloutComplete",
            progress.clone(),
            generation,
            now,
        ),
        Ok(_) => condition(
            PROGRESSING,
            true,
            "RollingOut",
            progress.clone(),
            generation,
            now,
        ),
    };
    // The Deployment has not observed our latest write yet (e.g. a rescale a moment ago): its status still
    // describes the previous spec, so a Ready=True from before stands until it catches up (milliseconds).
    let catching_up = obs.deployment.is_some() && !dep_current;
    let was_ready = find(&previous.conditions, READY).filter(|c| c.status == "True");
    let ready_c = match (obs.validation, first_problem) {
        (Err(e), _) => condition(READY, false, e.reason(), e.to_string(), generation, now),
        (Ok(_), None) if catching_up && was_ready.is_some() => was_ready
            .cloned()
            .map(|c| Condition {
                observed_generation: generation,
                ..c
            })
            .unwrap_or_else(|| {
                condition(READY, true, "Scaling", progress.clone(), generation, now)
            }),
        (Ok(_), _) if desired == 0 && rolled_out => condition(
            READY,
            true,
            "ScaledToZero",
            "scaled to zero replicas".to_owned(),
            generation,
            now,
        ),
        (Ok(_), _) if rolled_out => condition(
            READY,
            true,
            "AllReplicasReady",
            progress.clone(),
            generation,
            now,
        ),
        (Ok(_), None) if scaling => condition(
            READY,
            true,
            "Scaling",
            format!("{progress}; serving while scaling to {desired}"),
            generation,
            now,
        ),
        (Ok(_), Some(p)) => condition(
            READY,
            false,
            &p.reason,
            format!("{progress}; pod {}: {}", p.pod, p.message),
            generation,
            now,
        ),
        (Ok(_), None) => condition(
            READY,
            false,
            "ReplicasNotReady",
            progress.clone(),
            generation,
            now,
        ),
    };

    let phase = match (obs.validation, first_problem) {
        (Err(_), _) => "Invalid",
        (Ok(_), Some(_)) if !rolled_out => "Failed",
        _ => obs.progress.phase(rolled_out, desired),
    };
    // The last measured start-up stays when its pod is gone (scaled to zero, deleted).
    let startup = obs.progress.startup.clone().or(previous.startup.clone());
    let conditions = merge_conditions(
        &previous.conditions,
        vec![ready_c, available_c, progressing, degraded, validated],
    );
    LlamaDeploymentStatus {
        observed_generation: generation,
        replicas,
        ready_replicas: ready,
        updated_replicas: updated,
        ready_of_desired: Some(format!("{ready}/{desired}")),
        phase: Some(phase.to_owned()),
        startup,
        selector: Some(selector_string(&ld.name_any())),
        model: Some(served_model_name(ld)),
        endpoint: Some(endpoint(ld)),
        // The autoscaler's fields and conditions are written under its own field manager.
        queue_depth: None,
        kv_cache_usage: None,
        desired_replicas: None,
        last_scale_time: None,
        conditions,
    }
}

/// Condition types this controller writes (the rest belong to the autoscaler).
pub const CONTROLLER_CONDITIONS: [&str; 5] = [READY, AVAILABLE, PROGRESSING, DEGRADED, VALIDATED];

/// The part of `status` the controller owns: what [`derive`] would produce, so that comparing the two tells
/// whether the controller has anything to write (the autoscaler's fields and conditions left out).
pub fn controller_view(status: &LlamaDeploymentStatus) -> LlamaDeploymentStatus {
    LlamaDeploymentStatus {
        queue_depth: None,
        kv_cache_usage: None,
        desired_replicas: None,
        last_scale_time: None,
        conditions: status
            .conditions
            .iter()
            .filter(|c| CONTROLLER_CONDITIONS.contains(&c.type_.as_str()))
            .cloned()
            .collect(),
        ..status.clone()
    }
}

/// The condition of a type, if present.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

pub mod progress;

#[cfg(test)]
mod tests;
