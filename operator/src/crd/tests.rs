use super::*;

#[test]
fn sizes_parse_with_binary_and_decimal_suffixes() {
    assert_eq!(parse_size("4Gi"), Some(4 << 30));
    assert_eq!(parse_size("512M"), Some(512_000_000));
    assert_eq!(parse_size("1000"), Some(1000));
    assert_eq!(parse_size("4GB"), None);
    assert_eq!(parse_size("Gi"), None);
}

#[test]
fn a_minimal_spec_gets_documented_defaults() {
    let spec: LlamaDeploymentSpec =
        serde_json::from_value(serde_json::json!({"model": {"url": "https://x/m.gguf"}}))
            .expect("spec");
    assert_eq!(spec.tensor_parallel_size, 1);
    assert_eq!(spec.replicas, 1);
    assert_eq!(spec.block_size, 16);
    assert_eq!(spec.quantization, Quantization::Q8_0);
    assert_eq!(spec.accelerator, Accelerator::Gpu);
    assert_eq!(spec.resources.gpu_resource_name, "nvidia.com/gpu");
}

fn undocumented(schema: &serde_json::Value, path: &str, out: &mut Vec<String>) {
    let Some(props) = schema.get("properties").and_then(|p| p.as_object()) else {
        return;
    };
    for (name, prop) in props {
        let p = format!("{path}.{name}");
        out.push(format!("walked:{p}"));
        let doc = prop
            .get("description")
            .and_then(|d| d.as_str())
            .unwrap_or_default();
        if doc.trim().is_empty() {
            out.push(p.clone());
        }
        undocumented(prop, &p, out);
        if let Some(items) = prop.get("items") {
            undocumented(items, &format!("{p}[]"), out);
        }
    }
}

#[test]
fn every_spec_and_status_field_is_documented_for_kubectl_explain() {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(LlamaDeployment::crd()).expect("crd");
    let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
    let mut missing = Vec::new();
    undocumented(&schema["properties"]["spec"], "spec", &mut missing);
    undocumented(&schema["properties"]["status"], "status", &mut missing);
    let walked = missing
        .iter()
        .filter(|p| p.starts_with("walked:spec.model."))
        .count();
    assert!(walked >= 14, "the walk must reach nested fields ({walked})");
    // Kubernetes' own types (affinity, tolerations, env, conditions) bring their upstream docs.
    missing.retain(|p| {
        !p.starts_with("walked:")
            && ![
                ".affinity.",
                ".tolerations[].",
                ".env[].",
                ".apiKeySecretRef.",
                "status.conditions[].",
            ]
            .iter()
            .any(|k| p.contains(k))
    });
    assert!(
        missing.is_empty(),
        "fields without a description: {missing:?}"
    );
}

#[test]
fn the_crd_has_scale_and_status_subresources_and_printer_columns() {
    use kube::CustomResourceExt;
    let crd = serde_json::to_value(LlamaDeployment::crd()).expect("crd");
    let v = &crd["spec"]["versions"][0];
    assert_eq!(
        v["subresources"]["scale"]["labelSelectorPath"],
        ".status.selector"
    );
    assert_eq!(
        v["subresources"]["scale"]["specReplicasPath"],
        ".spec.replicas"
    );
    assert!(v["subresources"]["status"].is_object());
    let columns: Vec<&str> = v["additionalPrinterColumns"]
        .as_array()
        .expect("columns")
        .iter()
        .filter_map(|c| c["name"].as_str())
        .collect();
    assert_eq!(
        columns,
        [
            "Ready", "Replicas", "Phase", "Model", "Quant", "TP", "Queue", "KV", "Desired", "Age"
        ]
    );
    assert_eq!(crd["spec"]["names"]["shortNames"][0], "llama");
}

#[test]
fn quantization_names_round_trip_through_serde() {
    for q in [
        Quantization::F16,
        Quantization::Q4K,
        Quantization::Q6K,
        Quantization::Q8_0,
    ] {
        let v = serde_json::to_value(q).expect("ser");
        assert_eq!(v, serde_json::json!(q.as_str()));
    }
}

#[test]
fn autoscaling_docs_name_the_metrics_the_server_exports() {
    use kube::CustomResourceExt;
    let crd = serde_json::to_string(&LlamaDeployment::crd()).expect("crd json");
    for name in [
        llama_contract::metrics::REQUESTS_WAITING,
        llama_contract::metrics::KV_CACHE_USAGE,
    ] {
        assert!(
            crd.contains(&format!("`{name}`")),
            "the CRD docs do not name {name}"
        );
    }
    for stale in ["llama_num_requests_waiting", "llama_kv_cache_usage_perc"] {
        assert!(
            !crd.contains(stale),
            "the CRD docs name {stale}, which the server does not export"
        );
    }
}

/// The KEDA example targets our scale subresource and reads a metric the server really exports.
#[test]
fn the_keda_example_targets_the_scale_subresource_and_a_metric_the_server_exports() {
    use kube::CustomResourceExt;
    let root = crate::plan::tests::package_dir().join("..");
    let text = std::fs::read_to_string(root.join("manifests/examples/keda-scaledobject.yaml"))
        .expect("example");
    let so: serde_json::Value = serde_yaml::from_str(&text).expect("yaml");
    let crd = LlamaDeployment::crd();
    let target = &so["spec"]["scaleTargetRef"];
    assert_eq!(
        target["apiVersion"],
        format!("{}/{}", crd.spec.group, crd.spec.versions[0].name)
    );
    assert_eq!(target["kind"], crd.spec.names.kind);
    assert!(
        crd.spec.versions[0]
            .subresources
            .as_ref()
            .is_some_and(|s| s.scale.is_some())
    );
    // The LlamaDeployment it names is the example's.
    let ld: serde_json::Value = serde_yaml::from_str(
        &std::fs::read_to_string(root.join("manifests/examples/smollm2-cpu.yaml"))
            .expect("example"),
    )
    .expect("yaml");
    assert_eq!(target["name"], ld["metadata"]["name"]);
    let query = so["spec"]["triggers"][0]["metadata"]["query"]
        .as_str()
        .expect("query");
    let metric = query
        .split(['(', '{'])
        .nth(1)
        .expect("a metric name in the query");
    let m = llama_server::metrics::Metrics::new("smollm2").expect("server metrics");
    m.requests_waiting.set(5);
    let rendered = m.render();
    assert!(
        rendered
            .lines()
            .any(|l| l.starts_with(metric) && l.ends_with(" 5")),
        "the server does not export {metric} as the queue: {rendered}"
    );
}

/// The PVC-populating example: its Job runs a `fetch` the server accepts, with the server image the operator
/// plans, and the LlamaDeployment beside it serves exactly the file the Job writes, from the same claim.
#[test]
fn the_populate_pvc_example_writes_the_file_its_llama_deployment_serves() {
    use serde::Deserialize;
    let root = crate::plan::tests::package_dir().join("..");
    let text = std::fs::read_to_string(root.join("manifests/examples/populate-model-pvc.yaml"))
        .expect("example");
    let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde_json::Value::deserialize(d).expect("yaml"))
        .collect();
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["PersistentVolumeClaim", "Job", "LlamaDeployment"]);
    let job: k8s_openapi::api::batch::v1::Job =
        serde_json::from_value(docs[1].clone()).expect("a Job");
    let pod = job.spec.expect("spec").template.spec.expect("pod");
    let c = &pod.containers[0];
    assert_eq!(
        c.image.as_deref(),
        Some(crate::plan::PlanConfig::default().default_image.as_str()),
        "the Job uses the server image the operator plans"
    );
    let mut argv = c.command.clone().expect("command");
    argv.extend(c.args.clone().unwrap_or_default());
    use clap::Parser;
    let cli = llama_server::app::Cli::try_parse_from(&argv)
        .unwrap_or_else(|e| panic!("llama-server rejects {argv:?}:\n{e}"));
    let llama_server::app::Commands::Fetch(f) = cli.command else {
        panic!("the Job does not run fetch: {argv:?}");
    };
    assert!(llama_contract::model_url::resolve(&f.url, None).is_ok());
    let claim_of = |volumes: &[k8s_openapi::api::core::v1::Volume],
                    mount: &str,
                    mounts: &[k8s_openapi::api::core::v1::VolumeMount]| {
        let m = mounts
            .iter()
            .find(|m| m.mount_path == mount)
            .expect("mount");
        volumes
            .iter()
            .find(|v| v.name == m.name)
            .and_then(|v| v.persistent_volume_claim.as_ref())
            .map(|c| c.claim_name.clone())
            .expect("a claim")
    };
    let job_claim = claim_of(
        pod.volumes.as_deref().unwrap_or_default(),
        "/models",
        c.volume_mounts.as_deref().unwrap_or_default(),
    );
    assert_eq!(
        Some(job_claim.as_str()),
        docs[0]["metadata"]["name"].as_str()
    );

    let ld = crate::plan::tests::llama("smollm2-from-pvc", docs[2]["spec"].clone());
    let d = crate::plan::children(&ld, &crate::plan::PlanConfig::default()).deployment;
    let pod = d.spec.and_then(|s| s.template.spec).expect("pod");
    let server = &pod.containers[0];
    let served_claim = claim_of(
        pod.volumes.as_deref().unwrap_or_default(),
        "/models",
        server.volume_mounts.as_deref().unwrap_or_default(),
    );
    assert_eq!(served_claim, job_claim);
    assert_eq!(
        std::path::PathBuf::from(crate::plan::model_path(&ld.spec)),
        f.out,
        "the server reads what the Job wrote"
    );
}
