//! The foundation: a real control plane with fake GPU nodes schedules, serves and tears down like a cluster.

use std::time::Duration;

use anyhow::{Context, Result};
use e2e::{TestNamespace, client, existing_cluster, run_tool, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;

const GPU: &str = "nvidia.com/gpu";

fn gpu_deployment(name: &str, replicas: i32, gpus: &str) -> Result<Deployment> {
    Ok(serde_json::from_value(json!({
        "metadata": { "name": name },
        "spec": {
            "replicas": replicas,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": {
                    "tolerations": [{ "key": GPU, "operator": "Exists", "effect": "NoSchedule" }],
                    "containers": [{
                        "name": "main",
                        "image": "registry.k8s.io/pause:3.10",
                        "resources": { "limits": { GPU: gpus }, "requests": { GPU: gpus } }
                    }]
                }
            }
        }
    }))?)
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn kubectl_version_reports_the_built_server_version() -> Result<()> {
    let out = run_tool("kubectl", &["version", "-o", "json"])?;
    let v: serde_json::Value = serde_json::from_str(&out)?;
    let server = v["serverVersion"]["gitVersion"]
        .as_str()
        .context("no serverVersion")?;
    assert!(server.starts_with("v1."), "server version {server:?}");
    if let Ok(want) = std::env::var("E2E_K8S_VERSION") {
        assert_eq!(
            server, want,
            "the apiserver must report the version it was built from"
        );
        assert_eq!(v["serverVersion"]["gitTreeState"], "clean");
    }
    Ok(())
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn the_fake_gpu_node_offers_eight_gpus_and_gpu_operator_labels() -> Result<()> {
    if existing_cluster() {
        return Ok(()); // fake-node-only check
    }
    let nodes = Api::<Node>::all(client().await?);
    let gpu = nodes.get("gpu-node-0").await?;
    let alloc = gpu
        .status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .context("no allocatable")?;
    assert_eq!(alloc.get(GPU).map(|q| q.0.as_str()), Some("8"));
    let labels = gpu.metadata.labels.unwrap_or_default();
    assert_eq!(
        labels.get("nvidia.com/gpu.present").map(String::as_str),
        Some("true")
    );
    assert!(labels.contains_key("nvidia.com/gpu.product"));
    assert!(
        labels
            .get("nvidia.com/gpu.memory")
            .is_some_and(|m| m.parse::<u64>().is_ok())
    );

    // kwok renews node Leases, so the node lifecycle controller never marks the fake nodes NotReady
    // (without them nodes flapped NotReady every ~45 s and evicted test pods).
    let leases = Api::<Lease>::namespaced(client().await?, "kube-node-lease");
    let lease = leases
        .get("gpu-node-0")
        .await
        .context("gpu-node-0 has no node Lease")?;
    let renewed = lease
        .spec
        .and_then(|s| s.renew_time)
        .context("node Lease never renewed")?;
    let age = k8s_openapi::jiff::Timestamp::now().duration_since(renewed.0);
    assert!(age.as_secs() < 60, "node Lease last renewed {age:?} ago");

    let cpu = nodes.get("cpu-node-0").await?;
    let cpu_alloc = cpu
        .status
        .and_then(|s| s.allocatable)
        .context("no allocatable")?;
    assert!(
        !cpu_alloc.contains_key(GPU),
        "the CPU node must not offer GPUs"
    );

    // kubectl shows the same thing a user would look at.
    let out = run_tool(
        "kubectl",
        &[
            "get",
            "nodes",
            "-o",
            "custom-columns=NAME:.metadata.name,GPU:.status.allocatable.nvidia\\.com/gpu",
        ],
    )?;
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().eq(["gpu-node-0", "8"])),
        "{out}"
    );
    Ok(())
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn deployment_requesting_two_gpus_lands_on_the_gpu_node_and_becomes_available() -> Result<()>
{
    if existing_cluster() {
        return Ok(()); // needs the fake GPU node
    }
    let client = client().await?;
    let ns = TestNamespace::create(&client, "gpu2").await?;
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns.name);
    deployments
        .create(&PostParams::default(), &gpu_deployment("gpu2", 2, "2")?)
        .await?;
    wait_for(
        "Deployment gpu2 to be Available",
        Duration::from_secs(60),
        || async {
            let d = deployments.get("gpu2").await?;
            let available = d
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Available" && c.status == "True");
            let ready = deployments
                .get("gpu2")
                .await?
                .status
                .and_then(|s| s.ready_replicas);
            Ok((available && ready == Some(2)).then_some(()))
        },
    )
    .await?;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns.name)
        .list(&ListParams::default().labels("app=gpu2"))
        .await?;
    assert_eq!(pods.items.len(), 2);
    for p in &pods.items {
        let node = p.spec.as_ref().and_then(|s| s.node_name.as_deref());
        assert_eq!(node, Some("gpu-node-0"), "pod {:?}", p.metadata.name);
    }
    ns.cleanup().await
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn pod_requesting_nine_gpus_stays_pending_for_insufficient_gpus() -> Result<()> {
    if existing_cluster() {
        return Ok(()); // the 8-GPU ceiling is the fake node's
    }
    let client = client().await?;
    let ns = TestNamespace::create(&client, "gpu9").await?;
    let pods = Api::<Pod>::namespaced(client.clone(), &ns.name);
    let template = gpu_deployment("gpu9", 1, "9")?;
    let pod = Pod {
        metadata: kube::api::ObjectMeta {
            name: Some("gpu9".into()),
            ..Default::default()
        },
        spec: template.spec.and_then(|s| s.template.spec),
        status: None,
    };
    pods.create(&PostParams::default(), &pod).await?;
    let message = wait_for(
        "the scheduler to refuse the 9-GPU pod",
        Duration::from_secs(60),
        || async {
            let p = pods.get("gpu9").await?;
            let status = p.status.unwrap_or_default();
            let cond = status
                .conditions
                .unwrap_or_default()
                .into_iter()
                .find(|c| c.type_ == "PodScheduled" && c.status == "False");
            Ok(cond.map(|c| (status.phase, c.reason, c.message.unwrap_or_default())))
        },
    )
    .await?;
    let (phase, reason, message) = message;
    assert_eq!(phase.as_deref(), Some("Pending"));
    assert_eq!(reason.as_deref(), Some("Unschedulable"));
    assert!(
        message.contains("Insufficient nvidia.com/gpu"),
        "scheduler said: {message}"
    );
    ns.cleanup().await
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn service_selecting_ready_pods_gets_an_endpointslice() -> Result<()> {
    let client = client().await?;
    let ns = TestNamespace::create(&client, "svc").await?;
    let deploy: Deployment = serde_json::from_value(json!({
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 2,
            "selector": { "matchLabels": { "app": "web" } },
            "template": {
                "metadata": { "labels": { "app": "web" } },
                "spec": { "containers": [{ "name": "web", "image": "registry.k8s.io/pause:3.10",
                                           "ports": [{ "name": "http", "containerPort": 8000 }] }] }
            }
        }
    }))?;
    Api::<Deployment>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &deploy)
        .await?;
    let svc: Service = serde_json::from_value(json!({
        "metadata": { "name": "web" },
        "spec": { "selector": { "app": "web" },
                  "ports": [{ "name": "http", "port": 80, "targetPort": "http" }] }
    }))?;
    Api::<Service>::namespaced(client.clone(), &ns.name)
        .create(&PostParams::default(), &svc)
        .await?;
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), &ns.name);
    let ready = wait_for(
        "an EndpointSlice with 2 ready endpoints",
        Duration::from_secs(60),
        || async {
            let list = slices
                .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
                .await?;
            let ready: Vec<String> = list
                .items
                .iter()
                .flat_map(|s| s.endpoints.iter())
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                .flat_map(|e| e.addresses.clone())
                .collect();
            Ok((ready.len() == 2).then_some(ready))
        },
    )
    .await?;
    assert!(
        ready.iter().all(|a| a.parse::<std::net::IpAddr>().is_ok()),
        "{ready:?}"
    );
    let slice = slices
        .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
        .await?;
    let managed_by = slice.items[0]
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("endpointslice.kubernetes.io/managed-by"));
    assert_eq!(
        managed_by.map(String::as_str),
        Some("endpointslice-controller.k8s.io")
    );
    ns.cleanup().await
}
