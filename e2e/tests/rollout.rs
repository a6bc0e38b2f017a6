//! Rollouts on a full GPU node (kwok): the test adds its own fake node with 2 GPUs and a taint only its pods
//! tolerate, and fills it with one tensor-parallel-2 pod. A surge pod can never schedule there: with
//! `maxUnavailable: 0` the rollout waits (and `Degraded` says why); the GPU default (`maxUnavailable: 1`) and
//! `Recreate` replace the pod.

use std::time::Duration;

use anyhow::{Context, Result};
use e2e::operator::{Operator, condition, create, finish, install_crd, lds, pods_of, wait_ready};
use e2e::{TestNamespace, client, existing_cluster, wait_for};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

const TAINT: &str = "llama-operator.dev/e2e-full";

fn template_hash(p: &Pod) -> String {
    p.metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash").cloned())
        .unwrap_or_default()
}

fn running_hashes(pods: &[Pod]) -> Vec<(String, bool)> {
    pods.iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .map(|p| {
            let scheduled = p.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
            (template_hash(p), scheduled)
        })
        .collect()
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn rollouts_on_a_full_gpu_node_wait_with_max_unavailable_0_and_progress_by_default_or_recreate()
-> Result<()> {
    if existing_cluster() {
        return Ok(()); // adds a kwok-managed fake node
    }
    install_crd().await?;
    let client = client().await?;
    let ns = TestNamespace::create(&client, "rollout").await?;
    let node_name = format!("e2e-full-{}", ns.name);
    let node: Node = serde_json::from_value(json!({
        "metadata": {
            "name": node_name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            // no nvidia.com/gpu.present: other tests' GPU selectors must not match this node
            "labels": {"type": "kwok", "kubernetes.io/hostname": node_name, TAINT: ns.name,
                       "nvidia.com/gpu.memory": "81559"},
        },
        "spec": {"taints": [
            {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"},
            {"key": TAINT, "value": ns.name, "effect": "NoSchedule"},
        ]},
        "status": {
            "capacity": {"cpu": "16", "memory": "64Gi", "ephemeral-storage": "200Gi", "pods": "110", "nvidia.com/gpu": "2"},
            "allocatable": {"cpu": "16", "memory": "64Gi", "ephemeral-storage": "200Gi", "pods": "110", "nvidia.com/gpu": "2"},
        },
    }))?;
    let nodes: Api<Node> = Api::all(client.clone());
    nodes.create(&PostParams::default(), &node).await?;
    let op = Operator::start(&ns.name, "rollout")?;
    let api = lds(&client, &ns.name);
    let spec = |strategy: Value| -> Value {
        json!({
            "model": {"url": "https://example.invalid/llama-8b-q4_k.gguf", "heads": 32, "kvHeads": 8,
                      "layers": 32, "hiddenSize": 4096, "sizeBytes": 4_920_000_000_i64},
            "quantization": "Q4_K",
            "tensorParallelSize": 2,
            "nodeSelector": {TAINT: ns.name},
            "tolerations": [{"key": TAINT, "operator": "Exists", "effect": "NoSchedule"}],
            "rolloutStrategy": strategy,
        })
    };
    create(&api, "full", spec(json!({"maxUnavailable": 0}))).await?;
    wait_ready(&api, "full", "True", Duration::from_secs(90))
        .await
        .with_context(|| op.logs())?;
    let first = pods_of(&client, &ns.name, "full").await?;
    let old_hash = template_hash(first.first().context("a pod")?);

    // 1. maxUnavailable 0: the new pod cannot schedule, the old one keeps serving, Degraded says why.
    let patch = |body: Value| {
        let api = api.clone();
        async move {
            api.patch(
                "full",
                &PatchParams::default(),
                &Patch::Merge(&json!({"spec": body})),
            )
            .await
            .context("patching the LlamaDeployment")
        }
    };
    patch(json!({"maxBatchSize": 32})).await?;
    let (_, reason, message) = wait_for(
        "Degraded=True Unschedulable for the surge pod",
        Duration::from_secs(90),
        || async {
            let obj = api.get("full").await?;
            Ok(condition(&obj, "Degraded").filter(|(s, r, _)| s == "True" && r == "Unschedulable"))
        },
    )
    .await
    .with_context(|| op.logs())?;
    eprintln!("maxUnavailable 0 on a full node: {reason}: {message}");
    anyhow::ensure!(message.contains("nvidia.com/gpu"), "{message}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pods = running_hashes(&pods_of(&client, &ns.name, "full").await?);
    anyhow::ensure!(
        pods.contains(&(old_hash.clone(), true)) && pods.iter().any(|(h, s)| h != &old_hash && !s),
        "expected the old pod running and the new one pending: {pods:?}"
    );

    // 2. The GPU default (maxUnavailable 1): the old pod goes, its GPUs take the new one.
    patch(json!({"rolloutStrategy": null})).await?;
    let done = wait_for(
        "the default strategy to finish the rollout",
        Duration::from_secs(90),
        || async {
            let pods = running_hashes(&pods_of(&client, &ns.name, "full").await?);
            Ok((pods.len() == 1 && pods[0].0 != old_hash && pods[0].1).then_some(pods))
        },
    )
    .await
    .with_context(|| op.logs())?;
    let new_hash = done[0].0.clone();
    wait_ready(&api, "full", "True", Duration::from_secs(60)).await?;

    // 3. Recreate: the old pod is removed first, then the new one runs.
    patch(json!({"rolloutStrategy": {"type": "Recreate"}, "maxBatchSize": 8})).await?;
    wait_for(
        "Recreate to finish the rollout",
        Duration::from_secs(90),
        || async {
            let pods = running_hashes(&pods_of(&client, &ns.name, "full").await?);
            Ok(
                (pods.len() == 1 && pods[0].0 != new_hash && pods[0].0 != old_hash && pods[0].1)
                    .then_some(()),
            )
        },
    )
    .await
    .with_context(|| op.logs())?;
    wait_ready(&api, "full", "True", Duration::from_secs(60)).await?;

    finish(op, &client, ns).await?;
    nodes.delete(&node_name, &DeleteParams::default()).await?;
    Ok(())
}
