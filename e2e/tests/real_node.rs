//! Real serving pods on the local cluster's real node (kubelet + containerd): the images `make images` built,
//! the operator's plan, real probes, the Service's ClusterIP through kube-proxy, real SIGKILL and SIGTERM.
//! `e2e/run.sh` runs this file alone (one test at a time) after the kwok tests, with the environment
//! [`RealNode::from_env`] reads.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use e2e::operator::{MANAGED, Operator, create, finish, install_crd, lds, pods_of, wait_ready};
use e2e::real_node::{RealNode, server_restarts, service_base, sigkill_server};
use e2e::{TestNamespace, client, run_tool, wait_for};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams};
use serde_json::json;

const READY_TIMEOUT: Duration = Duration::from_secs(300);
const MODEL: &str = "smollm2";

/// Every model source serves for real; a bad checksum is explained; a SIGKILLed server comes back; a rollout
/// under a streaming client loses no request.
#[tokio::test]
#[ignore = "needs cluster"]
async fn real_node_pods_serve_every_model_source_survive_sigkill_and_roll_without_a_failed_request()
-> Result<()> {
    let node = RealNode::from_env()?;
    let client = client().await?;
    install_crd().await?;
    let ns = TestNamespace::create(&client, "real").await?;
    let mut op = Operator::start(&ns.name, "real-node")?;
    let api = lds(&client, &ns.name);
    let pv = node.model_volume(&client, &ns.name).await?;

    create(&api, "from-url", node.spec(node.url_model())).await?;
    create(
        &api,
        "from-pvc",
        node.spec(json!({"pvc": {"claimName": "models", "path": node.model_file}})),
    )
    .await?;
    create(
        &api,
        "from-image",
        node.spec(json!({"image": format!("oci://{}", node.modelcar_image)})),
    )
    .await?;
    let bad_sha = "0".repeat(64);
    create(
        &api,
        "bad-checksum",
        node.spec(json!({"url": node.model_url, "sha256": bad_sha})),
    )
    .await?;

    // Ready only after the server's /ready passes the kubelet's probes; then a chat completion answers
    // through the Service's ClusterIP.
    for name in ["from-url", "from-pvc", "from-image"] {
        let (reason, message) = wait_ready(&api, name, "True", READY_TIMEOUT)
            .await
            .with_context(|| op.logs())?;
        let base = service_base(&client, &ns.name, name).await?;
        let answer = node.chat_once(&base, MODEL)?;
        ensure!(!answer.trim().is_empty(), "{name}: empty answer via {base}");
        eprintln!("{name}: Ready ({reason}: {message}); via {base}: {answer:?}");
    }
    let table = run_tool("kubectl", &["get", "llama", "-n", &ns.name])?;
    eprintln!("{table}");
    for name in ["from-url", "from-pvc", "from-image", "bad-checksum"] {
        ensure!(
            table.contains(name),
            "kubectl get llama does not list {name}:\n{table}"
        );
    }

    // A bad checksum: the fetcher refuses the file and the LlamaDeployment says why, naming the URL.
    let (reason, message) = wait_for(
        "bad-checksum to report ModelFetchFailed",
        Duration::from_secs(180),
        || async {
            let obj = api.get("bad-checksum").await?;
            Ok(e2e::operator::condition(&obj, "Ready")
                .filter(|(s, r, _)| s == "False" && r == "ModelFetchFailed")
                .map(|(_, r, m)| (r, m)))
        },
    )
    .await?;
    ensure!(
        message.contains(&node.model_url) && message.contains("sha256 mismatch"),
        "{reason}: {message}"
    );

    // SIGKILL the server of from-url: the kubelet restarts it, it becomes Ready again and serves.
    let pod = pods_of(&client, &ns.name, "from-url")
        .await?
        .into_iter()
        .next()
        .context("from-url has no pod")?;
    let uid = pod.metadata.uid.clone().context("pod uid")?;
    let before = server_restarts(&pod);
    let pid = sigkill_server(&uid)?;
    eprintln!("killed llama-server pid {pid} of pod {uid}");
    wait_for(
        "the killed server restarted and Ready",
        READY_TIMEOUT,
        || async {
            let pods = pods_of(&client, &ns.name, "from-url").await?;
            let back = pods.iter().any(|p| {
                server_restarts(p) > before
                    && p.status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            });
            Ok(back.then_some(()))
        },
    )
    .await?;
    wait_ready(&api, "from-url", "True", READY_TIMEOUT).await?;
    let base = service_base(&client, &ns.name, "from-url").await?;
    ensure!(!node.chat_once(&base, MODEL)?.trim().is_empty());

    // Free the node for the rollout (a surge pod needs room).
    for name in ["from-pvc", "from-image", "bad-checksum"] {
        api.delete(name, &DeleteParams::default()).await?;
    }

    // A rollout (spec change) under a client streaming throughout: maxSurge 1 / maxUnavailable 0, the old pod
    // leaves the endpoints (preStop), drains its streams on SIGTERM, and no request fails.
    let deployments = Api::<Deployment>::namespaced(client.clone(), &ns.name);
    let old_rs_pods: Vec<String> = pods_of(&client, &ns.name, "from-url")
        .await?
        .iter()
        .filter_map(|p| p.metadata.name.clone())
        .collect();
    let stream = node.stream_loop(&base, MODEL)?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    api.patch(
        "from-url",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"maxBatchSize": 6}})),
    )
    .await?;
    wait_for("the rollout to complete", READY_TIMEOUT, || async {
        let d = deployments.get("from-url").await?;
        let st = d.status.clone().unwrap_or_default();
        let generation = d.metadata.generation.unwrap_or_default();
        let pods = pods_of(&client, &ns.name, "from-url").await?;
        let old_left = pods.iter().any(|p| {
            p.metadata
                .name
                .as_ref()
                .is_some_and(|n| old_rs_pods.contains(n))
        });
        let done = st.observed_generation == Some(generation)
            && st.updated_replicas == Some(1)
            && st.ready_replicas == Some(1)
            && st.replicas == Some(1)
            && !old_left;
        Ok(done.then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let summary = stream.stop()?;
    eprintln!("streaming through the rollout: {summary:?}");
    ensure!(
        summary.failed == 0,
        "{} of {} streams failed during the rollout: {:?}",
        summary.failed,
        summary.ok + summary.failed,
        summary.errors
    );
    ensure!(summary.ok >= 3, "too few streams completed: {summary:?}");
    wait_ready(&api, "from-url", "True", READY_TIMEOUT).await?;

    op.ensure_running()?;
    let ns_name = ns.name.clone();
    finish(op, &client, ns).await?;
    Api::<PersistentVolume>::all(client.clone())
        .delete(&pv, &DeleteParams::default())
        .await?;
    let left = Api::<Deployment>::namespaced(client, &ns_name)
        .list(&ListParams::default().labels(MANAGED))
        .await
        .map(|l| l.items.len())
        .unwrap_or(0);
    ensure!(left == 0, "{left} Deployments left behind in {ns_name}");
    Ok(())
}

/// The Helm chart installs the operator *in* the cluster from the built image, and the same flow passes: a
/// GPU LlamaDeployment gets a (fake-device-plugin) GPU on the real node, becomes Ready and answers through its
/// Service.
#[tokio::test]
#[ignore = "needs cluster"]
async fn real_node_helm_installs_the_operator_in_cluster_and_it_serves_a_model() -> Result<()> {
    let node = RealNode::from_env()?;
    let client = client().await?;
    install_crd().await?;
    let ns = TestNamespace::create(&client, "helm-real").await?;
    let release = format!("e2e-{}", ns.name);
    let chart = e2e::repo_root().join("charts/llama-operator");
    let (sel, tol) = node.placement();
    let values = json!({
        "crds": {"enabled": false},
        "watchNamespace": ns.name,
        "logFormat": "text",
        "nodeSelector": sel,
        "tolerations": tol,
    });
    let values_file = std::env::temp_dir().join(format!("{release}-values.json"));
    std::fs::write(&values_file, values.to_string())?;
    run_tool(
        "helm",
        &[
            "install",
            &release,
            &chart.to_string_lossy(),
            "--namespace",
            &ns.name,
            "-f",
            &values_file.to_string_lossy(),
            "--wait",
            "--timeout",
            "180s",
        ],
    )
    .context("helm install of the operator image on the real node")?;
    let api = lds(&client, &ns.name);
    // A GPU deployment: the pod requests one `nvidia.com/gpu`, which the real node's device plugin grants (the
    // server itself computes on the CPU until the CUDA path lands).
    let mut spec = node.spec(node.url_model());
    spec["accelerator"] = json!("GPU");
    // Autoscaled (pinned to one pod): the in-cluster autoscaler must reach the pod's /metrics over the pod
    // network and write its status with the chart's RBAC.
    spec["autoscaling"] = json!({"minReplicas": 1, "maxReplicas": 1, "scrapeIntervalSeconds": 2});
    create(&api, "in-cluster", spec).await?;
    let ready = wait_ready(&api, "in-cluster", "True", READY_TIMEOUT).await;
    if ready.is_err() {
        let logs = run_tool(
            "kubectl",
            &[
                "logs",
                "-n",
                &ns.name,
                "-l",
                "app.kubernetes.io/name=llama-operator",
                "--tail=40",
            ],
        )
        .unwrap_or_default();
        eprintln!("operator log:\n{logs}");
    }
    ready?;
    let pod = pods_of(&client, &ns.name, "in-cluster")
        .await?
        .into_iter()
        .next()
        .context("in-cluster has no pod")?;
    let spec = pod.spec.context("pod spec")?;
    ensure!(
        spec.node_name.as_deref() == Some(node.node.as_str()),
        "{:?}",
        spec.node_name
    );
    let gpus = spec.containers[0]
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("nvidia.com/gpu"))
        .map(|q| q.0.clone());
    ensure!(gpus.as_deref() == Some("1"), "GPU limit {gpus:?}");
    let base = service_base(&client, &ns.name, "in-cluster").await?;
    ensure!(!node.chat_once(&base, MODEL)?.trim().is_empty());
    let active = wait_for(
        "the in-cluster autoscaler to read the pod's metrics",
        Duration::from_secs(60),
        || async {
            let obj = api.get("in-cluster").await?;
            Ok(e2e::operator::condition(&obj, "ScalingActive")
                .filter(|(s, r, _)| s == "True" && r == "ValidMetricFound")
                .map(|c| (c, obj.data["status"]["kvCacheUsage"].clone())))
        },
    )
    .await?;
    eprintln!("in-cluster autoscaler: {active:?}");
    let logs = run_tool(
        "kubectl",
        &[
            "logs",
            "-n",
            &ns.name,
            "-l",
            "app.kubernetes.io/name=llama-operator",
            "--tail=-1",
        ],
    )?;
    ensure!(
        !logs.contains("forbidden"),
        "the operator hit RBAC limits:\n{logs}"
    );
    // Deleting the LlamaDeployment while the in-cluster operator runs lets its finalizer finish.
    api.delete("in-cluster", &DeleteParams::default()).await?;
    wait_for("in-cluster deleted", Duration::from_secs(90), || async {
        Ok(api.get_opt("in-cluster").await?.is_none().then_some(()))
    })
    .await?;
    run_tool(
        "helm",
        &["uninstall", &release, "--namespace", &ns.name, "--wait"],
    )?;
    ns.cleanup().await
}
