//! The autoscaler's refusals against the real control plane (kwok pods, which never answer `/metrics`): an HPA
//! that targets an autoscaled LlamaDeployment is reported and left alone, pods without metrics stop scaling,
//! zero replicas disable it, and `kubectl scale` goes through the scale subresource and its CEL bounds.
//! The scaling itself, on real pods, is `tests/real_node_autoscale.rs`.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use e2e::operator::{
    Operator, condition, finish, install_crd, lds, llama, smollm_spec, warning_events,
};
use e2e::{TestNamespace, client, run_tool, wait_for};
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use serde_json::json;

/// Waits for the condition `type_` to have `status` and `reason` and a message containing `text`.
async fn wait_condition(
    api: &Api<DynamicObject>,
    name: &str,
    (type_, status, reason): (&str, &str, &str),
    text: &str,
) -> Result<String> {
    wait_for(
        &format!("{name}: {type_}={status} ({reason}) saying {text:?}"),
        Duration::from_secs(60),
        || async {
            let obj = api.get(name).await?;
            Ok(condition(&obj, type_)
                .filter(|(s, r, m)| s == status && r == reason && m.contains(text))
                .map(|(_, _, m)| m))
        },
    )
    .await
}

#[tokio::test]
#[ignore = "needs cluster"]
async fn autoscaler_reports_a_conflicting_hpa_missing_metrics_and_zero_replicas() -> Result<()> {
    let client = client().await?;
    install_crd().await?;
    let ns = TestNamespace::create(&client, "autoscaler").await?;
    let op = Operator::start(&ns.name, "autoscaler")?;
    let api = lds(&client, &ns.name);

    let mut spec = smollm_spec();
    spec["autoscaling"] = json!({"minReplicas": 1, "maxReplicas": 3, "scrapeIntervalSeconds": 1});
    api.create(&PostParams::default(), &llama("chat", spec)?)
        .await?;
    // kwok pods are Ready but nothing answers at their IPs: no metrics (each pod's failure named), nothing
    // scaled.
    let failed = ("ScalingActive", "False", "FailedGetMetrics");
    let message = wait_condition(&api, "chat", failed, "pod chat-").await?;
    eprintln!("{message}");
    let able = ("AbleToScale", "True", "SucceededGetScale");
    wait_condition(&api, "chat", able, "").await?;

    // An HPA (as KEDA creates one) targeting the same LlamaDeployment: reported, and the autoscaler stands back.
    let hpa: HorizontalPodAutoscaler = serde_json::from_value(json!({
        "metadata": {"name": "keda-hpa-chat", "labels": {"scaledobject.keda.sh/name": "chat"}},
        "spec": {
            "scaleTargetRef": {"apiVersion": "inference.llama-operator.dev/v1alpha1", "kind": "LlamaDeployment", "name": "chat"},
            "minReplicas": 1, "maxReplicas": 3,
            "metrics": [{"type": "Pods", "pods": {"metric": {"name": "llama_requests_waiting"},
                         "target": {"type": "AverageValue", "averageValue": "4"}}}],
        }
    }))?;
    let hpas = Api::<HorizontalPodAutoscaler>::namespaced(client.clone(), &ns.name);
    hpas.create(&PostParams::default(), &hpa).await?;
    let conflict = ("AbleToScale", "False", "ConflictingAutoscaler");
    let who = "HorizontalPodAutoscaler keda-hpa-chat (of KEDA ScaledObject chat) also targets";
    wait_condition(&api, "chat", conflict, who).await?;
    let warnings = warning_events(&client, &ns.name, "chat").await?;
    ensure!(
        warnings.iter().any(|(r, _)| r == "ConflictingAutoscaler"),
        "no ConflictingAutoscaler event: {warnings:?}"
    );
    hpas.delete("keda-hpa-chat", &DeleteParams::default())
        .await?;
    wait_condition(&api, "chat", able, "").await?;

    // `kubectl scale` goes through /scale: within [min, max] it stays (no metrics, no decision), outside the CEL
    // rule refuses it and names the bounds.
    run_tool(
        "kubectl",
        &["scale", "llama/chat", "--replicas=2", "-n", &ns.name],
    )?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    let obj = api.get("chat").await?;
    ensure!(obj.data["spec"]["replicas"] == 2, "{}", obj.data["spec"]);
    let refused = run_tool(
        "kubectl",
        &["scale", "llama/chat", "--replicas=5", "-n", &ns.name],
    )
    .err()
    .context("scaling above maxReplicas was accepted")?;
    ensure!(
        format!("{refused:#}").contains("spec.replicas must lie within [spec.autoscaling.minReplicas, spec.autoscaling.maxReplicas]"),
        "{refused:#}"
    );

    // Zero replicas (minReplicas 0): nothing reports a queue, so scaling is disabled, not failing.
    let mut spec = smollm_spec();
    spec["replicas"] = json!(0);
    spec["autoscaling"] = json!({"minReplicas": 0, "maxReplicas": 2, "scrapeIntervalSeconds": 1});
    api.create(&PostParams::default(), &llama("idle", spec)?)
        .await?;
    let disabled = ("ScalingActive", "False", "ScalingDisabled");
    wait_condition(&api, "idle", disabled, "replica count is zero").await?;

    finish(op, &client, ns).await
}
