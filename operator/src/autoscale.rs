//! Queue-depth autoscaling: a thin loop around pure parts. Every scrape interval, for each LlamaDeployment, it
//! reads each Ready pod's `/metrics` concurrently ([`scrape`]), asks the HPA policy ([`recommend`]) for a replica
//! count when `spec.autoscaling` is set, marks the pods' deletion costs before a scale-down, writes
//! `spec.replicas` through the scale subresource, and server-side applies its part of the status
//! ([`decide`]) under its own field manager. Deployments without `spec.autoscaling` get `queueDepth` and
//! `kvCacheUsage` only. It runs only while this replica leads, beside the controller.

pub mod decide;
pub mod recommend;
pub mod scrape;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::future::join_all;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use tracing::{info, warn};

use crate::controller::{Context, object_key as key, scoped, wall_now};
use crate::crd::{GROUP, LlamaDeployment};
use crate::plan::{MANAGER as CONTROLLER_MANAGER, SELECTOR_LABEL};
use decide::{DELETION_COST, Outcome, ScalerStatus, Scraped};
use recommend::{Input, Recommendation, Timed, recommend};
use scrape::Scraper;

/// Field manager of everything the autoscaler writes (`spec.replicas` through `/scale`, its status fields,
/// pods' deletion costs), so `kubectl get -o yaml --show-managed-fields` tells who set what.
pub const MANAGER: &str = "llama-operator-autoscaler";
/// How long one pod's `/metrics` may take; a pod that does not answer in time counts as missing.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// Scrape interval of LlamaDeployments without `spec.autoscaling` (status only).
const STATUS_INTERVAL_SECONDS: f64 = 5.0;
/// The `action` of the autoscaler's events.
const ACTION: &str = "Autoscale";
/// How often an unchanged status is re-applied when the object shows other values (someone else wrote them).
const RESYNC_SECONDS: f64 = 60.0;
/// How often the loop looks for LlamaDeployments whose interval has passed.
const TICK: Duration = Duration::from_millis(500);

/// What the autoscaler remembers of one LlamaDeployment between passes (as HPA does, in memory: a new
/// leader starts afresh, and its first recommendation is the current size, so it waits a full scale-down
/// window before removing pods).
#[derive(Debug, Clone)]
struct Memory {
    next_due: f64,
    history: Vec<Timed>,
    events: Vec<(Timed, i32)>,
    last_scale: Option<Time>,
    /// What this pass last applied and when: an unchanged status is not written again, except to resync
    /// (at most every [`RESYNC_SECONDS`]) when the object shows something else.
    last_written: Option<(ScalerStatus, f64)>,
}

impl Memory {
    fn first_sight(current: i32, now: f64) -> Self {
        Self {
            next_due: now,
            history: vec![Timed {
                at: now,
                replicas: current,
            }],
            events: Vec::new(),
            last_scale: None,
            last_written: None,
        }
    }

    /// Forgets what no window or period can reach any more.
    fn prune(&mut self, now: f64) {
        self.history.retain(|h| now - h.at <= 3600.0);
        self.events.retain(|(e, _)| now - e.at <= 1800.0);
    }
}

/// Runs the autoscaler until `shutdown` resolves.
pub async fn run(
    ctx: Arc<Context>,
    namespace: Option<String>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let ns = namespace.as_deref();
    let client = &ctx.client;
    let (lds, lds_writer) = reflector::store::<LlamaDeployment>();
    let (pods, pods_writer) = reflector::store::<Pod>();
    let (hpas, hpas_writer) = reflector::store::<HorizontalPodAutoscaler>();
    let managed = watcher::Config::default().labels(&format!(
        "app.kubernetes.io/managed-by={CONTROLLER_MANAGER}"
    ));
    let watch_lds = mirror(lds_writer, scoped(client, ns), watcher::Config::default());
    let watch_pods = mirror(pods_writer, scoped(client, ns), managed);
    // Other autoscalers (HPAs, KEDA's included) that target a LlamaDeployment; without RBAC for them the
    // store stays empty and the watch retries in the background.
    let watch_hpas = mirror(hpas_writer, scoped(client, ns), watcher::Config::default());

    let work = async {
        if lds.wait_until_ready().await.is_err() || pods.wait_until_ready().await.is_err() {
            return;
        }
        info!("autoscaler starting");
        let scraper = Scraper::new(SCRAPE_TIMEOUT);
        let start = Instant::now();
        let mut memory: HashMap<(String, String), Memory> = HashMap::new();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            tick.tick().await;
            let now = start.elapsed().as_secs_f64();
            let all = lds.state();
            let live: Vec<(String, String)> = all.iter().map(|ld| key(ld)).collect();
            memory.retain(|k, _| {
                let keep = live.contains(k);
                if !keep {
                    ctx.metrics.forget(&k.0, &k.1);
                }
                keep
            });
            let mut due = Vec::new();
            for ld in all {
                if ld.meta().deletion_timestamp.is_some() {
                    continue;
                }
                let k = key(&ld);
                let mem = memory
                    .entry(k.clone())
                    .or_insert_with(|| Memory::first_sight(ld.spec.replicas, now));
                if mem.next_due > now {
                    continue;
                }
                let interval = ld
                    .spec
                    .autoscaling
                    .as_ref()
                    .map_or(STATUS_INTERVAL_SECONDS, |a| {
                        f64::from(a.scrape_interval_seconds.max(1))
                    });
                mem.next_due = now + interval;
                let Some(mem) = memory.remove(&k) else {
                    continue;
                };
                let ready = ready_pods(&pods, &k.0, &k.1);
                let conflict = conflicting_autoscaler(&hpas, &k.0, &k.1);
                let env = Env {
                    ctx: &ctx,
                    scraper: &scraper,
                    pods: &pods,
                };
                due.push(pass(env, ld, ready, conflict, mem, now));
            }
            for (k, mem) in join_all(due).await {
                memory.insert(k, mem);
            }
        }
    };
    tokio::select! {
        () = shutdown => {}
        () = work => {}
        () = watch_lds => {}
        () = watch_pods => {}
        () = watch_hpas => {}
    }
    info!("autoscaler stopped");
}

/// Keeps a reflector store in sync with a watch (retrying with back-off) for as long as it is polled.
async fn mirror<K>(writer: reflector::store::Writer<K>, api: Api<K>, config: watcher::Config)
where
    K: Resource<DynamicType = ()>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    reflector::reflector(writer, watcher(api, config))
        .default_backoff()
        .touched_objects()
        .for_each(|_| std::future::ready(()))
        .await;
}

/// Ready, not terminating pods of the LlamaDeployment, with their IPs (name order).
fn ready_pods(pods: &Store<Pod>, ns: &str, name: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = pods
        .state()
        .iter()
        .filter(|p| p.namespace().as_deref() == Some(ns))
        .filter(|p| p.labels().get(SELECTOR_LABEL).map(String::as_str) == Some(name))
        .filter(|p| p.meta().deletion_timestamp.is_none())
        .filter_map(|p| {
            let status = p.status.as_ref()?;
            let ready = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let ip = status.pod_ip.clone().filter(|ip| !ip.is_empty())?;
            ready.then(|| (p.name_any(), ip))
        })
        .collect();
    out.sort();
    out
}

/// An HPA in the namespace whose scale target is this LlamaDeployment (KEDA's ScaledObjects create one).
fn conflicting_autoscaler(
    hpas: &Store<HorizontalPodAutoscaler>,
    ns: &str,
    name: &str,
) -> Option<String> {
    hpas.state().iter().find_map(|h| {
        let target = &h.spec.as_ref()?.scale_target_ref;
        let ours = h.namespace().as_deref() == Some(ns)
            && target.kind == "LlamaDeployment"
            && target.name == name
            && target
                .api_version
                .as_deref()
                .is_some_and(|v| v.starts_with(GROUP));
        ours.then(|| {
            let keda = h.labels().get("scaledobject.keda.sh/name");
            match keda {
                Some(so) => format!(
                    "HorizontalPodAutoscaler {} (of KEDA ScaledObject {so})",
                    h.name_any()
                ),
                None => format!("HorizontalPodAutoscaler {}", h.name_any()),
            }
        })
    })
}

/// Writes each pod's deletion cost where it changed, so the ReplicaSet removes the idlest pods first.
async fn mark_deletion_costs(ctx: &Context, ns: &str, scraped: &[Scraped], pods: &Store<Pod>) {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let params = PatchParams {
        field_manager: Some(MANAGER.to_owned()),
        ..Default::default()
    };
    let state = pods.state();
    for (pod, cost) in decide::deletion_costs(scraped) {
        let value = cost.to_string();
        let current = state
            .iter()
            .find(|p| p.namespace().as_deref() == Some(ns) && p.name_any() == pod)
            .and_then(|p| p.annotations().get(DELETION_COST).cloned());
        if current.as_deref() == Some(value.as_str()) {
            continue;
        }
        let patch = serde_json::json!({"metadata": {"annotations": {DELETION_COST: value}}});
        if let Err(e) = api.patch(&pod, &params, &Patch::Merge(&patch)).await {
            warn!(pod = %pod, error = %e, "setting the pod deletion cost failed");
        }
    }
}

/// Writes `spec.replicas` through the scale subresource (a merge patch under the autoscaler's field manager).
async fn write_scale(
    ctx: &Context,
    ns: &str,
    name: &str,
    replicas: i32,
) -> Result<(), kube::Error> {
    let api: Api<LlamaDeployment> = Api::namespaced(ctx.client.clone(), ns);
    let params = PatchParams {
        field_manager: Some(MANAGER.to_owned()),
        ..Default::default()
    };
    let patch = serde_json::json!({"spec": {"replicas": replicas}});
    api.patch_scale(name, &params, &Patch::Merge(&patch))
        .await
        .map(drop)
}

/// Why no pod gave usable metrics, pod by pod.
fn no_metrics_reason(scraped: &[Scraped]) -> String {
    if scraped.is_empty() {
        return "no pod is Ready".to_owned();
    }
    scraped
        .iter()
        .map(|s| match &s.result {
            Err(e) => format!("pod {}: {e}", s.pod),
            Ok(m) if m.draining => format!("pod {}: draining", s.pod),
            Ok(_) => format!("pod {}: no queue or KV-usage gauge", s.pod),
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// What every pass reads through.
#[derive(Clone, Copy)]
struct Env<'a> {
    ctx: &'a Context,
    scraper: &'a Scraper,
    pods: &'a Store<Pod>,
}

/// One pass over one LlamaDeployment: scrape, decide, scale, write status. Returns its memory.
async fn pass(
    env: Env<'_>,
    ld: Arc<LlamaDeployment>,
    ready: Vec<(String, String)>,
    conflict: Option<String>,
    mut mem: Memory,
    now: f64,
) -> ((String, String), Memory) {
    let Env { ctx, scraper, pods } = env;
    let (ns, name) = key(&ld);
    let labels = [ns.as_str(), name.as_str()];
    let scraped: Vec<Scraped> = join_all(ready.iter().map(|(pod, ip)| async move {
        let timer = ctx.metrics.scrape_duration.start_timer();
        let result = scraper
            .scrape(ip, llama_contract::HTTP_PORT)
            .await
            .map_err(|e| e.to_string());
        timer.observe_duration();
        if result.is_err() {
            ctx.metrics.scrape_failures.with_label_values(&labels).inc();
        }
        Scraped {
            pod: pod.clone(),
            result,
        }
    }))
    .await;
    let (queue_depth, kv_cache_usage) = decide::means(&scraped);
    let previous = ld.status.clone().unwrap_or_default();
    let mut next = ScalerStatus {
        queue_depth,
        kv_cache_usage,
        ..Default::default()
    };

    if let Some(spec) = &ld.spec.autoscaling {
        let current = ld.spec.replicas;
        ctx.metrics
            .current_replicas
            .with_label_values(&[ns.as_str(), name.as_str()])
            .set(i64::from(current));
        let samples = decide::samples(&scraped);
        let any_metric = samples
            .iter()
            .any(|s| s.queue.is_some() || s.kv_usage.is_some());
        let mut rec: Option<Recommendation> = None;
        let mut rescale_error = None;
        if conflict.is_none() && current > 0 && any_metric {
            mem.prune(now);
            let r = recommend(&Input {
                spec,
                current,
                samples: &samples,
                now,
                history: &mem.history,
                events: &mem.events,
            });
            mem.history.push(Timed {
                at: now,
                replicas: r.raw,
            });
            if r.replicas != current {
                if r.replicas < current {
                    mark_deletion_costs(ctx, &ns, &scraped, pods).await;
                }
                match write_scale(ctx, &ns, &name, r.replicas).await {
                    Ok(()) => {
                        mem.events.push((
                            Timed {
                                at: now,
                                replicas: r.replicas,
                            },
                            current,
                        ));
                        mem.last_scale = Some(wall_now());
                        let direction = if r.replicas > current { "up" } else { "down" };
                        ctx.metrics
                            .rescales
                            .with_label_values(&[ns.as_str(), name.as_str(), direction])
                            .inc();
                        let message = decide::rescale_message(&r);
                        info!(name = %name, namespace = %ns, from = current, to = r.replicas, %message, "rescaled");
                        ctx.publish(&ld, false, "SuccessfulRescale", message, ACTION)
                            .await;
                    }
                    Err(e) => {
                        warn!(name = %name, namespace = %ns, error = %e, "writing /scale failed");
                        ctx.publish(
                            &ld,
                            true,
                            "FailedRescale",
                            format!("New size: {}; writing /scale failed: {e}", r.replicas),
                            ACTION,
                        )
                        .await;
                        rescale_error = Some(e.to_string());
                    }
                }
            }
            ctx.metrics
                .desired_replicas
                .with_label_values(&[ns.as_str(), name.as_str()])
                .set(i64::from(r.replicas));
            rec = Some(r);
        }
        let outcome = match (&conflict, &rec) {
            (Some(with), _) => Outcome::Conflict { with: with.clone() },
            (None, _) if current == 0 => Outcome::ScaledToZero,
            (None, None) => Outcome::NoMetrics {
                why: no_metrics_reason(&scraped),
            },
            (None, Some(r)) => Outcome::Decided {
                spec,
                current,
                rec: r,
                rescale_error,
            },
        };
        let at = wall_now();
        next.conditions =
            decide::conditions(&outcome, &previous.conditions, ld.metadata.generation, &at);
        next.desired_replicas = rec
            .as_ref()
            .map(|r| r.replicas)
            .or(previous.desired_replicas);
        next.last_scale_time = mem.last_scale.clone().or(previous.last_scale_time.clone());
        for c in crate::status::transitions(&previous.conditions, &next.conditions) {
            if c.status == "False"
                && (c.type_ == decide::ABLE_TO_SCALE || c.type_ == decide::SCALING_ACTIVE)
                && c.reason != "ScalingDisabled"
            {
                ctx.publish(
                    &ld,
                    true,
                    &c.reason,
                    format!("{}=False: {}", c.type_, c.message),
                    ACTION,
                )
                .await;
            }
        }
    }

    let seen = ScalerStatus::of(&previous);
    let write = match &mem.last_written {
        None => seen != next,
        Some((last, at)) => *last != next || (seen != next && now - at >= RESYNC_SECONDS),
    };
    if write {
        let api: Api<LlamaDeployment> = Api::namespaced(ctx.client.clone(), &ns);
        let patch = serde_json::json!({
            "apiVersion": LlamaDeployment::api_version(&()),
            "kind": LlamaDeployment::kind(&()),
            "status": next,
        });
        if let Err(e) = api
            .patch_status(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(patch),
            )
            .await
        {
            warn!(name = %name, namespace = %ns, error = %e, "writing the autoscaler's status failed");
        } else {
            mem.last_written = Some((next, now));
        }
    }
    ((ns, name), mem)
}
