//! The reconciler: finalizer → validate against the hardware → server-side apply the planned children →
//! derive status → patch status → events on transitions. All decisions live in `hardware`, `plan` and
//! `status`; this module only reads and writes.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{Controller, PredicateConfig, WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use crate::crd::{Accelerator, LlamaDeployment};
use crate::hardware::{self, NodeFacts};
use crate::metrics::Metrics;
use crate::plan::{self, MANAGER, PlanConfig, SELECTOR_LABEL};
use crate::status::{self, Observed};

/// Finalizer guarding the explicit cleanup of children.
pub const FINALIZER: &str = "inference.llama-operator.dev/cleanup";

/// Errors of one reconcile; `label` is the stable metric label.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("finalizer: {0}")]
    Finalizer(#[source] kube::Error),
    #[error("object has no namespace")]
    NoNamespace,
}

impl Error {
    pub fn label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "kube",
            Error::Finalizer(_) => "finalizer",
            Error::NoNamespace => "no_namespace",
        }
    }
}

/// Shared state of the reconciler.
pub struct Context {
    pub client: Client,
    pub metrics: Metrics,
    pub recorder: Recorder,
    pub plan: PlanConfig,
    /// Consecutive failed reconciles per object (namespace, name), for the retry backoff.
    failures: std::sync::Mutex<std::collections::HashMap<(String, String), u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        metrics: Metrics,
        plan: PlanConfig,
        instance: Option<String>,
    ) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.to_owned(),
                instance,
            },
        );
        Self {
            client,
            metrics,
            recorder,
            plan,
            failures: Default::default(),
        }
    }

    /// Counts one more failure of `key` and returns how many in a row it has now.
    fn record_failure(&self, key: (String, String)) -> u32 {
        let Ok(mut map) = self.failures.lock() else {
            return 1;
        };
        let n = map.entry(key).or_insert(0);
        *n = n.saturating_add(1);
        *n
    }

    /// Publishes an event about `ld` (a failure to publish is logged, never an error of the caller).
    pub(crate) async fn publish(
        &self,
        ld: &LlamaDeployment,
        warning: bool,
        reason: &str,
        note: String,
        action: &str,
    ) {
        let event = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.to_owned(),
            note: Some(note),
            action: action.to_owned(),
            secondary: None,
        };
        if let Err(e) = self.recorder.publish(&event, &ld.object_ref(&())).await {
            warn!(error = %e, "publishing event failed");
        }
    }

    fn clear_failures(&self, key: &(String, String)) {
        if let Ok(mut map) = self.failures.lock() {
            map.remove(key);
        }
    }
}

/// Delay before retrying an object whose last `failures` reconciles failed in a row: 1 s, doubling, at most
/// 15 s. A short blip is retried within seconds, an outage at most 15 s after the apiserver is back (the
/// watch resumes without a new event for the object, so this retry is what picks the work up again), and a
/// persistent failure costs one request per object every 15 s (the fixed delay this replaces).
pub fn retry_backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(4);
    Duration::from_secs((1u64 << exp).min(15))
}

/// Now, to the second (the precision of `metav1.Time`).
pub(crate) fn wall_now() -> Time {
    Time(Timestamp::from_second(Timestamp::now().as_second()).unwrap_or(Timestamp::UNIX_EPOCH))
}

pub(crate) fn object_key(ld: &LlamaDeployment) -> (String, String) {
    (ld.namespace().unwrap_or_default(), ld.name_any())
}

fn managed() -> watcher::Config {
    watcher::Config::default().labels(&format!("app.kubernetes.io/managed-by={MANAGER}"))
}

pub(crate) fn scoped<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the controller until `shutdown` resolves (then finishes in-flight reconciles).
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let ns = namespace.as_deref();
    let client = &ctx.client;
    let lds: Api<LlamaDeployment> = scoped(client, ns);
    Controller::new(lds, watcher::Config::default().any_semantic())
        .owns(scoped::<Deployment>(client, ns), managed())
        .owns(scoped::<Service>(client, ns), managed())
        .owns(scoped::<PodDisruptionBudget>(client, ns), managed())
        .owns(scoped::<NetworkPolicy>(client, ns), managed())
        .watches(scoped::<Pod>(client, ns), managed(), |pod: Pod| {
            let name = pod.labels().get(SELECTOR_LABEL)?.clone();
            Some(ObjectRef::<LlamaDeployment>::new(&name).within(&pod.namespace()?))
        })
        // Re-validate everything when a node's labels, allocatable resources or schedulability change
        // (heartbeats are filtered out by the fingerprint).
        .reconcile_all_on(
            watcher(Api::<Node>::all(client.clone()), watcher::Config::default())
                .default_backoff()
                .applied_objects()
                .predicate_filter(NodeFacts::fingerprint, PredicateConfig::default())
                .filter_map(|node| async move { node.ok().map(|_| ()) }),
        )
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx.clone())
        .for_each(|res| async move {
            match res {
                Ok((obj, _)) => tracing::debug!(object = %obj, "reconciled"),
                Err(e) => tracing::debug!(error = %e, "reconcile failed"),
            }
        })
        .await;
}

async fn reconcile(ld: Arc<LlamaDeployment>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.time_reconcile();
    let key = object_key(&ld);
    let result = reconcile_inner(ld, &ctx).await;
    if result.is_ok() {
        ctx.clear_failures(&key);
    }
    let label = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics.reconciles.with_label_values(&[label]).inc();
    result
}

/// The finalizer protocol: while the object lives, our finalizer goes on before any child is created; once it
/// is being deleted, the children are cleaned up and then the finalizer comes off.
async fn reconcile_inner(ld: Arc<LlamaDeployment>, ctx: &Context) -> Result<Action, Error> {
    let ns = ld.namespace().ok_or(Error::NoNamespace)?;
    let api: Api<LlamaDeployment> = Api::namespaced(ctx.client.clone(), &ns);
    let ours = ld.finalizers().iter().any(|f| f == FINALIZER);
    if ld.meta().deletion_timestamp.is_some() {
        if ours {
            cleanup(&ld, ctx).await?;
            set_finalizer(&api, &ld, false)
                .await
                .map_err(Error::Finalizer)?;
        }
        return Ok(Action::await_change());
    }
    if ours {
        return apply(ld, ctx).await;
    }
    match set_finalizer(&api, &ld, true)
        .await
        .map_err(Error::Finalizer)?
    {
        // Go on with the object as written (fresh spec, finalizer on) instead of waiting for its watch event.
        Some(fresh) if fresh.meta().deletion_timestamp.is_none() => {
            apply(Arc::new(fresh), ctx).await
        }
        _ => Ok(Action::await_change()),
    }
}

/// The finalizer list with ours added (`present`) or removed; None when it already is that way.
pub fn finalizers_with(current: &[String], present: bool) -> Option<Vec<String>> {
    let has = current.iter().any(|f| f == FINALIZER);
    match (present, has) {
        (true, false) => Some(
            current
                .iter()
                .cloned()
                .chain(std::iter::once(FINALIZER.to_owned()))
                .collect(),
        ),
        (false, true) => Some(
            current
                .iter()
                .filter(|f| *f != FINALIZER)
                .cloned()
                .collect(),
        ),
        _ => None,
    }
}

/// Adds or removes our finalizer with optimistic concurrency: a merge patch carrying the whole new list and
/// the `resourceVersion` it was computed from. When anyone wrote the object in between (or `cached` was
/// stale), the apiserver answers 409 and we retry on a fresh read, so another controller's finalizers are
/// never lost and a stale cache costs one retry instead of an error. (A JSON patch that `test`s the cached
/// list, as `kube::runtime::finalizer` does, fails with 422 whenever the cache lags.) Returns the object as
/// written, or None when it is gone.
async fn set_finalizer(
    api: &Api<LlamaDeployment>,
    cached: &LlamaDeployment,
    present: bool,
) -> Result<Option<LlamaDeployment>, kube::Error> {
    let name = cached.name_any();
    let mut current = Some(cached.clone());
    let mut conflicts = 0;
    loop {
        let obj = match current.take() {
            Some(obj) => obj,
            None => match api.get_opt(&name).await? {
                Some(obj) => obj,
                None => return Ok(None),
            },
        };
        let Some(finalizers) = finalizers_with(obj.finalizers(), present) else {
            return Ok(Some(obj));
        };
        let patch = serde_json::json!({
            "metadata": {"finalizers": finalizers, "resourceVersion": obj.resource_version()},
        });
        match api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(written) => return Ok(Some(written)),
            // Still conflicting after 5 fresh reads: the error goes to the controller's requeue.
            Err(kube::Error::Api(s)) if s.code == 409 && conflicts < 4 => {
                conflicts += 1;
                info!(name = %name, "finalizer update conflicted: retrying on a fresh read");
            }
            Err(kube::Error::Api(s)) if s.code == 404 => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

fn error_policy(ld: Arc<LlamaDeployment>, err: &Error, ctx: Arc<Context>) -> Action {
    warn!(name = %ld.name_any(), namespace = ?ld.namespace(), error = %err, "reconcile failed");
    ctx.metrics.errors.with_label_values(&[err.label()]).inc();
    Action::requeue(retry_backoff(ctx.record_failure(object_key(&ld))))
}

async fn ssa<K>(api: &Api<K>, obj: &K) -> Result<K, kube::Error>
where
    K: Resource + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    api.patch(
        &obj.meta().name.clone().unwrap_or_default(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(obj),
    )
    .await
}

async fn delete_if_present<K>(api: &Api<K>, name: &str) -> Result<(), kube::Error>
where
    K: Resource + Clone + DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e),
    }
}

async fn node_facts(client: &Client) -> Result<Vec<NodeFacts>, kube::Error> {
    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await?;
    Ok(nodes.items.iter().map(NodeFacts::from_node).collect())
}

async fn apply(ld: Arc<LlamaDeployment>, ctx: &Context) -> Result<Action, Error> {
    let ns = ld.namespace().ok_or(Error::NoNamespace)?;
    let name = ld.name_any();
    let client = &ctx.client;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    let nodes = match ld.spec.accelerator {
        Accelerator::Gpu => node_facts(client).await?,
        Accelerator::Cpu => Vec::new(),
    };
    let validation = hardware::validate(&ld.spec, &nodes);

    let deployment = match &validation {
        Ok(_) => {
            let children = plan::children(&ld, &ctx.plan);
            let dep = ssa(&deployments, &children.deployment).await?;
            ssa(
                &Api::<Service>::namespaced(client.clone(), &ns),
                &children.service,
            )
            .await?;
            let pdbs: Api<PodDisruptionBudget> = Api::namespaced(client.clone(), &ns);
            match &children.pdb {
                Some(pdb) => drop(ssa(&pdbs, pdb).await?),
                None => delete_if_present(&pdbs, &name).await?,
            }
            let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), &ns);
            match &children.network_policy {
                Some(np) => drop(ssa(&policies, np).await?),
                None => delete_if_present(&policies, &name).await?,
            }
            Some(dep)
        }
        // Never create children that can never schedule; whatever ran before stays as it was.
        Err(_) => deployments.get_opt(&name).await?,
    };

    let pods = Api::<Pod>::namespaced(client.clone(), &ns)
        .list(&ListParams::default().labels(&plan::selector_string(&name)))
        .await?;
    let problems = status::pod_problems(&pods.items);
    let progress = status::progress::progress(&pods.items);
    let now = wall_now();
    let next = status::derive(
        &ld,
        &Observed {
            validation: &validation,
            deployment: deployment.as_ref(),
            problems: &problems,
            progress: &progress,
        },
        &now,
    );
    let previous = ld.status.clone().unwrap_or_default();
    if status::controller_view(&previous) != next {
        let api: Api<LlamaDeployment> = Api::namespaced(client.clone(), &ns);
        // Server-side apply of the fields this controller owns (`next` leaves the autoscaler's fields and
        // conditions out; `conditions` is a list map keyed by type), so neither writer clobbers the other.
        let patch = serde_json::json!({
            "apiVersion": LlamaDeployment::api_version(&()),
            "kind": LlamaDeployment::kind(&()),
            "status": next,
        });
        api.patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await?;
        for c in status::transitions(&previous.conditions, &next.conditions) {
            let Some(type_) =
                status::event_type(c, status::find(&previous.conditions, &c.type_).is_some())
            else {
                continue;
            };
            info!(name = %name, namespace = %ns, condition = %c.type_, status = %c.status, reason = %c.reason, "condition changed");
            let note = format!("{}={}: {}", c.type_, c.status, truncate(&c.message, 900));
            let warning = type_ == status::EventKind::Warning;
            ctx.publish(&ld, warning, &c.reason, note, "Reconcile")
                .await;
        }
    }

    let ready = status::find(&next.conditions, status::READY).is_some_and(|c| c.status == "True");
    Ok(match (&validation, ready) {
        (Err(_), _) => Action::requeue(Duration::from_secs(60)),
        (Ok(_), false) => Action::requeue(Duration::from_secs(30)),
        (Ok(_), true) => Action::requeue(Duration::from_secs(300)),
    })
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

async fn cleanup(ld: &LlamaDeployment, ctx: &Context) -> Result<(), Error> {
    let ns = ld.namespace().ok_or(Error::NoNamespace)?;
    let name = ld.name_any();
    let client = &ctx.client;
    delete_if_present(&Api::<Deployment>::namespaced(client.clone(), &ns), &name).await?;
    delete_if_present(&Api::<Service>::namespaced(client.clone(), &ns), &name).await?;
    delete_if_present(
        &Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns),
        &name,
    )
    .await?;
    delete_if_present(
        &Api::<NetworkPolicy>::namespaced(client.clone(), &ns),
        &name,
    )
    .await?;
    info!(name = %name, namespace = %ns, "deleted children");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn our_finalizer_is_appended_next_to_others_once() {
        assert_eq!(finalizers_with(&[], true), Some(list(&[FINALIZER])));
        assert_eq!(
            finalizers_with(&list(&["other.io/keep"]), true),
            Some(list(&["other.io/keep", FINALIZER]))
        );
        assert_eq!(
            finalizers_with(&list(&["other.io/keep", FINALIZER]), true),
            None
        );
    }

    #[test]
    fn failed_reconciles_back_off_from_one_second_to_fifteen() {
        let delays: Vec<u64> = (1..=7).map(|n| retry_backoff(n).as_secs()).collect();
        assert_eq!(delays, [1, 2, 4, 8, 15, 15, 15]);
        assert_eq!(retry_backoff(0).as_secs(), 1);
        assert_eq!(retry_backoff(u32::MAX).as_secs(), 15);
    }

    #[test]
    fn removing_our_finalizer_keeps_the_others() {
        assert_eq!(
            finalizers_with(&list(&[FINALIZER, "other.io/keep", FINALIZER]), false),
            Some(list(&["other.io/keep"]))
        );
        assert_eq!(finalizers_with(&list(&["other.io/keep"]), false), None);
        assert_eq!(finalizers_with(&[], false), None);
    }
}
