//! Rollouts on a full GPU node, with real pods: the real node advertises 2 `nvidia.com/gpu` (the fake device
//! plugin) and a 2-replica GPU LlamaDeployment takes both. With `maxUnavailable: 0` a template change leaves the
//! surge pod Pending and `Degraded` names the GPUs, while the old pods keep serving; switching to `Recreate`
//! replaces both pods and the deployment serves again.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use e2e::operator::{Operator, create, finish, install_crd, lds, pods_of, wait_ready};
use e2e::real_node::{RealNode, service_base};
use e2e::{TestNamespace, client, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use kube::api::{Api, Patch, PatchParams};
use serde_json::json;

const READY_TIMEOUT: Duration = Duration::from_secs(300);

#[tokio::test]
#[ignore = "needs cluster"]
async fn real_node_recreate_replaces_gpu_pods_on_a_full_node_where_a_surge_would_wait() -> Result<()>
{
    let node = RealNode::from_env()?;
    let client = client().await?;
    install_crd().await?;
    let ns = TestNamespace::create(&client, "rollout-real").await?;
    let op = Operator::start(&ns.name, "rollout-real")?;
    let api = lds(&client, &ns.name);

    let mut spec = node.spec(node.url_model());
    spec["accelerator"] = json!("GPU");
    spec["replicas"] = json!(2);
    // Half a core each: the two pods fit the node's two cores beside the control plane's daemons.
    spec["resources"] = json!({"cpu": "500m", "memory": "1Gi"});
    spec["rolloutStrategy"] = json!({"type": "RollingUpdate", "maxSurge": 1, "maxUnavailable": 0});
    create(&api, "gpus", spec).await?;
    wait_ready(&api, "gpus", "True", READY_TIMEOUT)
        .await
        .with_context(|| op.logs())?;
    let old: Vec<String> = pods_of(&client, &ns.name, "gpus")
        .await?
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    ensure!(old.len() == 2, "expected 2 pods, got {old:?}");

    // A template change with maxUnavailable 0: the surge pod cannot get a GPU.
    let patch = |v: serde_json::Value| {
        let api = api.clone();
        async move {
            api.patch(
                "gpus",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": v})),
            )
            .await
        }
    };
    patch(json!({"env": [{"name": "ROLL", "value": "1"}]})).await?;
    let message = wait_for(
        "Degraded=Unschedulable naming the GPUs",
        Duration::from_secs(120),
        || async {
            let obj = api.get("gpus").await?;
            Ok(e2e::operator::condition(&obj, "Degraded")
                .filter(|(s, r, m)| {
                    s == "True" && r == "Unschedulable" && m.contains("nvidia.com/gpu")
                })
                .map(|(_, _, m)| m))
        },
    )
    .await
    .with_context(|| op.logs())?;
    eprintln!("surge waits: {message}");
    let base = service_base(&client, &ns.name, "gpus").await?;
    let answer = node.chat_once(&base, "smollm2")?;
    ensure!(!answer.trim().is_empty(), "the old pods stopped serving");

    // Recreate: both old pods go, two new ones take the GPUs.
    let t0 = Instant::now();
    patch(
        json!({"rolloutStrategy": {"type": "Recreate", "maxSurge": null, "maxUnavailable": null}}),
    )
    .await?;
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns.name);
    wait_for("the Recreate rollout", READY_TIMEOUT, || async {
        let d = deployments.get("gpus").await?;
        let st = d.status.unwrap_or_default();
        let current = st.observed_generation >= d.metadata.generation;
        let done = current
            && st.updated_replicas == Some(2)
            && st.ready_replicas == Some(2)
            && st.replicas == Some(2);
        Ok(done.then_some(()))
    })
    .await
    .with_context(|| op.logs())?;
    wait_ready(&api, "gpus", "True", READY_TIMEOUT)
        .await
        .with_context(|| op.logs())?;
    let new: Vec<String> = pods_of(&client, &ns.name, "gpus")
        .await?
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    ensure!(
        new.len() == 2 && new.iter().all(|n| !old.contains(n)),
        "old {old:?}, now {new:?}"
    );
    let obj = api.get("gpus").await?;
    ensure!(
        e2e::operator::condition(&obj, "Degraded").is_some_and(|(s, _, _)| s == "False"),
        "Degraded did not clear: {}",
        obj.data["status"]
    );
    let answer = node.chat_once(&base, "smollm2")?;
    ensure!(!answer.trim().is_empty(), "the new pods do not serve");
    eprintln!(
        "Recreate on the full node: 2 pods replaced and Ready in {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    finish(op, &client, ns).await
}
