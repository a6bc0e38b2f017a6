//! Where the pods are on their way to serving (pure): the `phase` shown by `kubectl get llama` while pods start,
//! and the measured start-up of the most recently ready pod (download, load, total).

use k8s_openapi::api::core::v1::{ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use crate::crd::StartupStatus;
use crate::plan::FETCH_CONTAINER;

/// How many live (not terminating) pods are in each step of starting.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PodProgress {
    /// Not started yet: unscheduled, waiting for GPUs, pulling images.
    pub pending: usize,
    /// The `url` model's fetch init container is running.
    pub downloading: usize,
    /// The server container runs but is not ready yet: loading the weights.
    pub loading: usize,
    /// Ready.
    pub ready: usize,
    /// The start-up of the pod that became ready last.
    pub startup: Option<StartupStatus>,
}

fn seconds(from: &Time, to: &Time) -> f64 {
    let ms = (to.0.as_millisecond() - from.0.as_millisecond()).max(0);
    (ms as f64 / 100.0).round() / 10.0
}

fn running_since(cs: &ContainerStatus) -> Option<&Time> {
    cs.state.as_ref()?.running.as_ref()?.started_at.as_ref()
}

/// Sorts `pods` into the steps of [`PodProgress`] and measures the start-up of the latest ready one.
pub fn progress(pods: &[Pod]) -> PodProgress {
    let mut p = PodProgress::default();
    let mut latest: Option<(Time, StartupStatus)> = None;
    for pod in pods
        .iter()
        .filter(|pod| pod.metadata.deletion_timestamp.is_none())
    {
        let Some(status) = &pod.status else {
            p.pending += 1;
            continue;
        };
        let ready_since = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Ready" && c.status == "True")
            .and_then(|c| c.last_transition_time.clone());
        let fetch = status
            .init_container_statuses
            .iter()
            .flatten()
            .find(|c| c.name == FETCH_CONTAINER);
        let server = status
            .container_statuses
            .iter()
            .flatten()
            .find(|c| c.name == "server");
        if let Some(ready_at) = ready_since {
            p.ready += 1;
            let download_seconds = fetch.and_then(|f| {
                let t = f.state.as_ref()?.terminated.as_ref()?;
                (t.exit_code == 0).then_some(())?;
                Some(seconds(t.started_at.as_ref()?, t.finished_at.as_ref()?))
            });
            let load_seconds = server
                .and_then(running_since)
                .map(|started| seconds(started, &ready_at));
            let total_seconds = pod
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|created| seconds(created, &ready_at));
            let s = StartupStatus {
                pod: pod.name_any(),
                download_seconds,
                load_seconds,
                total_seconds,
            };
            if latest.as_ref().is_none_or(|(t, _)| ready_at.0 > t.0) {
                latest = Some((ready_at, s));
            }
        } else if fetch.and_then(running_since).is_some() {
            p.downloading += 1;
        } else if server.and_then(running_since).is_some() {
            p.loading += 1;
        } else {
            p.pending += 1;
        }
    }
    p.startup = latest.map(|(_, s)| s);
    p
}

impl PodProgress {
    /// The phase `kubectl get llama` shows: `Ready` once every desired replica is ready and rolled out; else
    /// the most advanced step a starting pod has reached (`Loading`, then `Downloading`, then `Pending`), so a
    /// rollout or scale-up shows what its new pods are doing. `Failed` and `Invalid` come from the conditions.
    pub fn phase(&self, rolled_out: bool, desired: i32) -> &'static str {
        if rolled_out {
            return if desired == 0 {
                "ScaledToZero"
            } else {
                "Ready"
            };
        }
        if self.loading > 0 {
            "Loading"
        } else if self.downloading > 0 {
            "Downloading"
        } else if self.pending > 0 || self.ready == 0 {
            "Pending"
        } else {
            "Updating"
        }
    }
}
