//! The CRD against the real apiserver: its CEL rules and schema reject invalid LlamaDeployments with the field
//! named, and fill the documented defaults. No operator runs here; the apiserver alone decides.

use anyhow::Result;
use e2e::operator::{install_crd, lds, llama};
use e2e::{TestNamespace, client, run_tool};
use kube::api::PostParams;
use serde_json::{Value, json};

#[tokio::test]
#[ignore = "needs cluster"]
async fn operator_crd_rejects_invalid_objects_naming_the_field() -> Result<()> {
    install_crd().await?;
    let client = client().await?;
    let ns = TestNamespace::create(&client, "op-invalid").await?;
    let api = lds(&client, &ns.name);
    let url = json!({"url": "https://example.invalid/m.gguf"});
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "two-sources",
            json!({"model": {"url": "https://x/m.gguf", "pvc": {"claimName": "c", "path": "m.gguf"}}}),
            "spec.model must set exactly one of url, pvc or image",
        ),
        (
            "no-source",
            json!({"model": {}}),
            "spec.model must set exactly one of url, pvc or image",
        ),
        (
            "ftp-url",
            json!({"model": {"url": "ftp://x/m.gguf"}}),
            "spec.model.url must start with http://, https:// or hf://",
        ),
        (
            "block-size",
            json!({"model": url, "blockSize": 12}),
            "spec.blockSize must be a power of two",
        ),
        (
            "min-over-max",
            json!({"model": url, "autoscaling": {"minReplicas": 5, "maxReplicas": 2}}),
            "spec.autoscaling.minReplicas must be <= spec.autoscaling.maxReplicas",
        ),
        (
            "replicas-out-of-range",
            json!({"model": url, "replicas": 9, "autoscaling": {"minReplicas": 1, "maxReplicas": 4}}),
            "spec.replicas must lie within",
        ),
        (
            "tp-zero",
            json!({"model": url, "tensorParallelSize": 0}),
            "spec.tensorParallelSize must be at least 1",
        ),
        (
            "quantization",
            json!({"model": url, "quantization": "Q3_X"}),
            "spec.quantization",
        ),
        (
            "seq-over-context",
            json!({"model": {"url": "https://x/m.gguf", "contextLength": 1024}, "maxSeqLen": 4096}),
            "spec.maxSeqLen must not exceed spec.model.contextLength",
        ),
        (
            "kv-size",
            json!({"model": url, "kvCacheMemory": "lots"}),
            "spec.kvCacheMemory",
        ),
        (
            "sha-without-url",
            json!({"model": {"pvc": {"claimName": "c", "path": "m.gguf"}, "sha256": "a".repeat(64)}}),
            "spec.model.sha256 is only valid with spec.model.url",
        ),
        (
            "two-key-sources",
            json!({"model": url, "apiKeySecretRef": {"name": "a", "key": "k"}, "apiKeysSecretRef": {"name": "b"}}),
            "spec.apiKeySecretRef and spec.apiKeysSecretRef are exclusive",
        ),
        (
            "cache-without-url",
            json!({"model": {"pvc": {"claimName": "c", "path": "m.gguf"}, "cache": {"claimName": "x"}}}),
            "spec.model.cache is only valid with spec.model.url",
        ),
        (
            "cache-both",
            json!({"model": {"url": "https://x/m.gguf", "cache": {"claimName": "x", "hostPath": "/c"}}}),
            "spec.model.cache must set exactly one of hostPath or claimName",
        ),
        (
            "cache-relative",
            json!({"model": {"url": "https://x/m.gguf", "cache": {"hostPath": "models/../etc"}}}),
            "spec.model.cache.hostPath must be an absolute path without '..'",
        ),
        (
            "headers-without-url",
            json!({"model": {"pvc": {"claimName": "c", "path": "m.gguf"}, "headersSecretRef": {"name": "t"}}}),
            "spec.model.headersSecretRef is only valid with spec.model.url",
        ),
        (
            "cpu-tp",
            json!({"model": url, "accelerator": "CPU", "tensorParallelSize": 2}),
            "spec.tensorParallelSize must be 1 when spec.accelerator is CPU",
        ),
        (
            "kv-target",
            json!({"model": url, "autoscaling": {"maxReplicas": 2, "targetKvCacheUsage": 1.5}}),
            "spec.autoscaling.targetKvCacheUsage must be in (0, 1]",
        ),
        (
            "negative-size",
            json!({"model": {"url": "https://x/m.gguf", "sizeBytes": -1}}),
            "spec.model.sizeBytes must be positive",
        ),
        (
            "pvc-escape",
            json!({"model": {"pvc": {"claimName": "c", "path": "../etc/passwd"}}}),
            "spec.model.pvc.path must be a non-empty relative path",
        ),
        (
            "own-pod-label",
            json!({"model": url, "podLabels": {"inference.llama-operator.dev/deployment": "other"}}),
            "spec.podLabels must not set the operator's own labels",
        ),
        (
            "recreate-surge",
            json!({"model": url, "rolloutStrategy": {"type": "Recreate", "maxSurge": 1}}),
            "spec.rolloutStrategy.maxSurge and maxUnavailable are only valid with type RollingUpdate",
        ),
        (
            "own-service-label",
            json!({"model": url, "serviceLabels": {"app.kubernetes.io/name": "x"}}),
            "spec.serviceLabels must not set the operator's own labels",
        ),
    ];
    let mut failures = Vec::new();
    for (name, spec, expected) in &cases {
        match api
            .create(&PostParams::default(), &llama(name, spec.clone())?)
            .await
        {
            Ok(_) => failures.push(format!("{name}: accepted")),
            Err(kube::Error::Api(s)) => {
                if s.code != 422 || !s.message.contains(expected) {
                    failures.push(format!(
                        "{name}: {} {:?} does not contain {expected:?}",
                        s.code, s.message
                    ));
                }
            }
            Err(e) => failures.push(format!("{name}: {e}")),
        }
    }
    // `kubectl explain` shows the field docs with unit and default.
    let explain = run_tool("kubectl", &["explain", "llamadeployment.spec.blockSize"])?;
    assert!(explain.contains("Unit: tokens. Default: 16."), "{explain}");

    // A valid object with only a URL is accepted, and the apiserver fills the documented defaults.
    let ok = api
        .create(
            &PostParams::default(),
            &llama("valid", json!({"model": url}))?,
        )
        .await?;
    assert_eq!(ok.data["spec"]["blockSize"], 16);
    assert_eq!(ok.data["spec"]["replicas"], 1);
    assert_eq!(ok.data["spec"]["tensorParallelSize"], 1);
    ns.cleanup().await?;
    assert!(
        failures.is_empty(),
        "{} of {} invalid objects misjudged:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    Ok(())
}
