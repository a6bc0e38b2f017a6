use super::*;
use crate::crd::LlamaDeployment;

/// A LlamaDeployment as the apiserver would hand it over (defaults applied, uid set).
pub(crate) fn llama(name: &str, spec: serde_json::Value) -> LlamaDeployment {
    let mut ld: LlamaDeployment = serde_json::from_value(serde_json::json!({
        "apiVersion": "inference.llama-operator.dev/v1alpha1",
        "kind": "LlamaDeployment",
        "metadata": {"name": name, "namespace": "ml", "uid": "0000-1111", "generation": 1},
        "spec": spec,
    }))
    .expect("valid LlamaDeployment");
    ld.metadata.generation = Some(1);
    ld
}

/// `operator/`, read at run time: a shared target dir can hold a test binary compiled in another checkout.
pub(crate) fn package_dir() -> std::path::PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into())
        .into()
}

/// Compares `value` rendered as YAML with `src/testdata/<file>`; `UPDATE_GOLDEN=1` rewrites the file.
pub(crate) fn assert_golden<T: serde::Serialize>(file: &str, value: &T) {
    let path = package_dir().join("src/testdata").join(file);
    let actual = serde_yaml::to_string(value).expect("yaml");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, &actual).expect("write golden");
        return;
    }
    // a test binary built in another checkout sharing the target dir carries that checkout's path: say so
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading golden file {}: {e}", path.display()));
    assert!(
        expected == actual,
        "{file} differs from the plan (UPDATE_GOLDEN=1 cargo test -p llama-operator to accept):\n{actual}"
    );
}

fn smollm_cpu() -> LlamaDeployment {
    llama(
        "smollm2",
        serde_json::json!({
            "model": {"url": "https://huggingface.co/x/SmolLM2-135M-Instruct-Q8_0.gguf",
                      "sha256": "a".repeat(64), "heads": 9, "kvHeads": 3, "layers": 30, "hiddenSize": 576,
                      "sizeBytes": 144_810_368, "name": "smollm2-135m"},
            "accelerator": "CPU",
            "resources": {"cpu": "2", "memory": "1Gi"},
            "apiKeySecretRef": {"name": "llama-key", "key": "token"},
        }),
    )
}

fn llama_tp2_gpu() -> LlamaDeployment {
    llama(
        "llama-8b",
        serde_json::json!({
            "model": {"pvc": {"claimName": "models", "path": "llama-3.1-8b/q4_k.gguf"},
                      "parameters": 8_030_000_000_i64, "heads": 32, "kvHeads": 8, "layers": 32, "hiddenSize": 4096},
            "quantization": "Q4_K", "tensorParallelSize": 2, "replicas": 2, "kvCacheMemory": "8Gi",
            "resources": {"cpu": "8", "memory": "32Gi"},
            "nodeSelector": {"nvidia.com/gpu.present": "true"},
            "serverArgs": ["--log-format", "json"],
        }),
    )
}

#[test]
fn cpu_smollm2_from_a_url_plans_a_fetching_init_container_and_no_gpus() {
    let c = children(&smollm_cpu(), &PlanConfig::default());
    assert_golden("smollm2-cpu-deployment.yaml", &c.deployment);
    assert_golden("smollm2-cpu-service.yaml", &c.service);
    assert!(c.pdb.is_none(), "one replica gets no PDB");
}

#[test]
fn tensor_parallel_gpu_deployment_requests_tp_gpus_and_gets_a_pdb() {
    let c = children(&llama_tp2_gpu(), &PlanConfig::default());
    assert_golden("llama-8b-tp2-deployment.yaml", &c.deployment);
    assert_golden("llama-8b-tp2-pdb.yaml", &c.pdb);
    let pod = c
        .deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod");
    let limits = pod.containers[0]
        .resources
        .as_ref()
        .and_then(|r| r.limits.clone())
        .expect("limits");
    assert_eq!(
        limits.get("nvidia.com/gpu"),
        Some(&Quantity("2".to_owned()))
    );
}

#[test]
fn modelcar_source_runs_the_model_image_as_a_native_sidecar_sharing_the_process_namespace() {
    let ld = llama(
        "modelcar",
        serde_json::json!({"model": {"image": "oci://registry.example/models/llama:q4", "file": "q4.gguf"}}),
    );
    let c = children(&ld, &PlanConfig::default());
    assert_golden("modelcar-deployment.yaml", &c.deployment);
    let pod = c
        .deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod");
    assert_eq!(pod.share_process_namespace, Some(true));
    let sidecar = &pod.init_containers.expect("sidecar")[0];
    assert_eq!(
        sidecar.image.as_deref(),
        Some("registry.example/models/llama:q4")
    );
    assert_eq!(sidecar.restart_policy.as_deref(), Some("Always"));
}

#[test]
fn server_args_follow_the_spec_and_end_with_extra_args() {
    let args = server_args(&llama_tp2_gpu());
    let joined = args.join(" ");
    assert!(
        joined
            .starts_with("serve --model /models/llama-3.1-8b/q4_k.gguf --host 0.0.0.0 --port 8000"),
        "{joined}"
    );
    assert!(
        joined.contains("--served-model-name llama-8b --tensor-parallel-size 2"),
        "{joined}"
    );
    assert!(
        joined.contains("--kv-cache-memory 8589934592 --block-size 16"),
        "{joined}"
    );
    assert!(
        joined.contains("--drain-timeout 30 --threads 8"),
        "{joined}"
    );
    assert!(joined.ends_with("--log-format json"), "{joined}");
}

#[test]
fn grace_period_covers_prestop_and_the_drain_timeout() {
    let mut ld = smollm_cpu();
    ld.spec.drain_timeout_seconds = 120;
    let c = children(&ld, &PlanConfig::default());
    let pod = c
        .deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod");
    assert_eq!(
        pod.termination_grace_period_seconds,
        Some(120 + PRESTOP_SLEEP_SECONDS + GRACE_MARGIN_SECONDS)
    );
}

#[test]
fn a_bigger_model_gets_a_longer_startup_budget() {
    let small = startup_budget_seconds(&smollm_cpu().spec);
    let mut big = llama_tp2_gpu().spec;
    big.model.parameters = Some(70_000_000_000);
    assert_eq!(small, 660);
    assert!(
        startup_budget_seconds(&big) > 1700,
        "{}",
        startup_budget_seconds(&big)
    );
}

#[test]
fn changing_the_spec_changes_the_pod_template_so_pods_roll() {
    let before = children(&llama_tp2_gpu(), &PlanConfig::default()).deployment;
    let mut ld = llama_tp2_gpu();
    ld.spec.max_batch_size = 32;
    let after = children(&ld, &PlanConfig::default()).deployment;
    let tpl = |d: &Deployment| d.spec.as_ref().map(|s| s.template.clone());
    assert_ne!(tpl(&before), tpl(&after));
    let strategy = after
        .spec
        .and_then(|s| s.strategy)
        .and_then(|s| s.rolling_update)
        .expect("rolling");
    // A GPU deployment's default may drop one pod, so a cluster without a spare GPU still progresses.
    assert_eq!(strategy.max_surge, Some(IntOrString::Int(1)));
    assert_eq!(strategy.max_unavailable, Some(IntOrString::Int(1)));
}

/// CPU pods keep surge 1 / unavailable 0 (no capacity lost); `spec.rolloutStrategy` overrides either value
/// or picks `Recreate`.
#[test]
fn rollout_strategy_defaults_per_accelerator_and_follows_the_spec() {
    let rolling = |ld: &LlamaDeployment| {
        let s = strategy(&ld.spec);
        let r = s.rolling_update.clone();
        (
            s.type_.unwrap_or_default(),
            r.as_ref().and_then(|r| r.max_surge.clone()),
            r.and_then(|r| r.max_unavailable),
        )
    };
    let int = |n| Some(IntOrString::Int(n));
    assert_eq!(
        rolling(&smollm_cpu()),
        ("RollingUpdate".into(), int(1), int(0))
    );
    let mut ld = llama_tp2_gpu();
    ld.spec.rollout_strategy = Some(
        serde_json::from_value(serde_json::json!({"maxUnavailable": "50%"})).expect("strategy"),
    );
    assert_eq!(
        rolling(&ld),
        (
            "RollingUpdate".into(),
            int(1),
            Some(IntOrString::String("50%".into()))
        )
    );
    ld.spec.rollout_strategy =
        Some(serde_json::from_value(serde_json::json!({"type": "Recreate"})).expect("strategy"));
    assert_eq!(rolling(&ld), ("Recreate".into(), None, None));
    let d = children(&ld, &PlanConfig::default()).deployment;
    assert_eq!(
        d.spec
            .and_then(|s| s.strategy)
            .and_then(|s| s.type_)
            .as_deref(),
        Some("Recreate")
    );
}

#[test]
fn children_are_owned_by_the_llama_deployment_as_controller() {
    let c = children(&smollm_cpu(), &PlanConfig::default());
    let owners = c.service.metadata.owner_references.expect("owner");
    assert_eq!(owners[0].kind, "LlamaDeployment");
    assert_eq!(owners[0].controller, Some(true));
    assert_eq!(owners[0].uid, "0000-1111");
}

/// Every container of a planned pod that runs `llama-server`, as (container name, argv).
fn llama_server_commands(d: &Deployment) -> Vec<(String, Vec<String>)> {
    let pod = d
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .expect("pod");
    pod.init_containers
        .iter()
        .flatten()
        .chain(&pod.containers)
        .filter(|c| c.command.as_deref() == Some(&[llama_contract::cmd::BINARY.to_owned()][..]))
        .map(|c| {
            let mut argv = vec![llama_contract::cmd::BINARY.to_owned()];
            argv.extend(c.args.iter().flatten().cloned());
            (c.name.clone(), argv)
        })
        .collect()
}

/// The `llama-server` argv of the container named `name`.
fn command_of(d: &Deployment, name: &str) -> Vec<String> {
    llama_server_commands(d)
        .into_iter()
        .find(|(n, _)| n == name)
        .map(|(_, argv)| argv)
        .unwrap_or_else(|| panic!("no llama-server container {name}"))
}

fn parse_with_the_server(argv: &[String]) -> llama_server::app::Commands {
    use clap::Parser;
    match llama_server::app::Cli::try_parse_from(argv) {
        Ok(cli) => cli.command,
        Err(e) => panic!("llama-server rejects {argv:?}:\n{e}"),
    }
}

#[test]
fn every_golden_deployment_runs_commands_the_server_accepts() {
    let dir = package_dir().join("src/testdata");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("testdata") {
        let path = entry.expect("entry").path();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if !name.ends_with("-deployment.yaml") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("golden");
        let d: Deployment = serde_yaml::from_str(&text).expect("a Deployment");
        let cmds = llama_server_commands(&d);
        assert!(!cmds.is_empty(), "{name} runs no llama-server");
        for (container, argv) in cmds {
            parse_with_the_server(&argv);
            checked += 1;
            assert!(!container.is_empty());
        }
    }
    assert!(checked >= 4, "only {checked} commands found in the goldens");
}

#[test]
fn planned_serve_flags_mean_to_the_server_what_the_spec_says() {
    for ld in [smollm_cpu(), llama_tp2_gpu()] {
        let d = children(&ld, &PlanConfig::default()).deployment;
        let argv = command_of(&d, "server");
        let llama_server::app::Commands::Serve(a) = parse_with_the_server(&argv) else {
            panic!("the server container does not run `serve`: {argv:?}");
        };
        let s = &ld.spec;
        assert_eq!(i32::from(a.port), HTTP_PORT);
        assert_eq!(
            a.model.as_deref(),
            Some(std::path::Path::new(&model_path(s)))
        );
        assert_eq!(
            i64::from(a.tensor_parallel_size),
            i64::from(s.tensor_parallel_size)
        );
        assert_eq!(a.max_batch_size as i64, i64::from(s.max_batch_size));
        assert_eq!(
            a.max_seq_len.map(|v| v as i64),
            Some(i64::from(s.max_seq_len))
        );
        assert_eq!(a.block_size as i64, i64::from(s.block_size));
        assert_eq!(a.max_queue as i64, i64::from(s.max_queue));
        assert_eq!(a.drain_timeout as i64, i64::from(s.drain_timeout_seconds));
        assert_eq!(a.served_model_name, Some(served_model_name(&ld)));
        // A CPU pod computes on the CPU, whatever the image was built with.
        let expected = match s.accelerator {
            crate::crd::Accelerator::Cpu => llama_server::device::DeviceArg::Cpu,
            crate::crd::Accelerator::Gpu => llama_server::device::DeviceArg::Auto,
        };
        assert_eq!(a.device, expected);
    }
}

#[test]
fn the_url_source_fetches_with_the_servers_own_image_and_checksum() {
    let ld = smollm_cpu();
    let d = children(&ld, &PlanConfig::default()).deployment;
    let argv = command_of(&d, FETCH_CONTAINER);
    let llama_server::app::Commands::Fetch(f) = parse_with_the_server(&argv) else {
        panic!("the init container does not run `fetch`: {argv:?}");
    };
    assert_eq!(Some(f.url), ld.spec.model.url.clone());
    assert_eq!(f.sha256, ld.spec.model.sha256.clone());
    assert_eq!(
        f.out,
        std::path::PathBuf::from("/models/model.gguf"),
        "the server reads {}",
        model_path(&ld.spec)
    );
    assert_eq!(model_path(&ld.spec), "/models/model.gguf");
    let pod = d.spec.and_then(|s| s.template.spec).expect("pod");
    let images: Vec<_> = pod
        .init_containers
        .iter()
        .flatten()
        .chain(&pod.containers)
        .map(|c| c.image.clone())
        .collect();
    assert!(images.windows(2).all(|w| w[0] == w[1]), "{images:?}");
}

#[test]
fn probes_and_ports_use_the_servers_routes() {
    let d = children(&smollm_cpu(), &PlanConfig::default()).deployment;
    let pod = d.spec.and_then(|s| s.template.spec).expect("pod");
    let server = &pod.containers[0];
    let path = |p: &Option<Probe>| {
        p.as_ref()
            .and_then(|p| p.http_get.as_ref())
            .and_then(|h| h.path.clone())
    };
    assert_eq!(
        path(&server.readiness_probe).as_deref(),
        Some(llama_contract::paths::READY)
    );
    assert_eq!(
        path(&server.startup_probe).as_deref(),
        Some(llama_contract::paths::READY)
    );
    assert_eq!(
        path(&server.liveness_probe).as_deref(),
        Some(llama_contract::paths::HEALTH)
    );
    let port = &server.ports.as_ref().expect("ports")[0];
    assert_eq!(port.container_port, i32::from(llama_contract::HTTP_PORT));
}

/// The kubelet's expansion of a container command: `$$` → `$`, `$(VAR)` → its value (none are defined here).
fn kubelet_expand(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '$' && chars.peek() == Some(&'$') {
            chars.next();
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

#[test]
fn the_modelcar_shell_sees_its_own_pid_after_the_kubelet_expands_the_command() {
    let ld = llama(
        "modelcar",
        serde_json::json!({"model": {"image": "oci://registry.example/models/llama:q4"}}),
    );
    let d = children(&ld, &PlanConfig::default()).deployment;
    let pod = d.spec.and_then(|s| s.template.spec).expect("pod");
    let sidecar = &pod.init_containers.expect("sidecar")[0];
    let script = sidecar.command.as_ref().expect("command")[2].clone();
    let run = kubelet_expand(&script);
    assert!(
        run.starts_with(r#"ln -sfn "/proc/$$/root/models" /modelcar/models"#),
        "{run}"
    );
}

#[test]
fn the_operators_pull_policy_and_secrets_reach_every_container_and_the_spec_policy_wins() {
    let cfg = PlanConfig {
        image_pull_policy: Some("Never".to_owned()),
        image_pull_secrets: vec!["regcred".to_owned()],
        ..PlanConfig::default()
    };
    let pod_of = |ld: &LlamaDeployment| {
        children(ld, &cfg)
            .deployment
            .spec
            .and_then(|s| s.template.spec)
            .expect("pod")
    };
    let pod = pod_of(&smollm_cpu());
    let secrets: Vec<String> = pod
        .image_pull_secrets
        .iter()
        .flatten()
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(secrets, ["regcred"]);
    let policies: Vec<Option<String>> = pod
        .init_containers
        .iter()
        .flatten()
        .chain(&pod.containers)
        .map(|c| c.image_pull_policy.clone())
        .collect();
    assert_eq!(
        policies,
        [Some("Never".to_owned()), Some("Never".to_owned())]
    );

    let mut ld = smollm_cpu();
    ld.spec.image_pull_policy = Some(crate::crd::PullPolicy::Always);
    let pod = pod_of(&ld);
    assert_eq!(
        pod.containers[0].image_pull_policy.as_deref(),
        Some("Always")
    );
}

/// Pod and Service customization reaches the children; the operator's own labels stay on top and its
/// selector is unchanged; the spec's pull secrets join the operator-wide ones without duplicates.
#[test]
fn pod_and_service_customization_is_applied_without_touching_what_the_operator_owns() {
    let ld = llama(
        "custom",
        serde_json::json!({
            "model": {"pvc": {"claimName": "models", "path": "m.gguf"}},
            "accelerator": "CPU",
            "runtimeClassName": "gvisor",
            "imagePullSecrets": [{"name": "regcred"}, {"name": "shared"}],
            "podLabels": {"team": "search", "cost-center": "42"},
            "podAnnotations": {"sidecar.istio.io/inject": "false"},
            "serviceLabels": {"exposed": "internal"},
            "serviceAnnotations": {"service.beta.kubernetes.io/aws-load-balancer-internal": "true"},
            "envFrom": [{"configMapRef": {"name": "llama-env"}}, {"secretRef": {"name": "llama-secrets"}}],
        }),
    );
    let cfg = PlanConfig {
        image_pull_secrets: vec!["shared".to_owned()],
        ..PlanConfig::default()
    };
    let c = children(&ld, &cfg);
    assert_golden("custom-deployment.yaml", &c.deployment);
    assert_golden("custom-service.yaml", &c.service);
    let spec = c.deployment.spec.as_ref().expect("spec");
    let pod = spec.template.spec.as_ref().expect("pod");
    assert_eq!(pod.runtime_class_name.as_deref(), Some("gvisor"));
    let secrets: Vec<&str> = pod
        .image_pull_secrets
        .iter()
        .flatten()
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(secrets, ["shared", "regcred"]);
    let labels = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.labels.clone())
        .expect("labels");
    assert_eq!(labels.get("team").map(String::as_str), Some("search"));
    assert_eq!(
        labels.get(SELECTOR_LABEL).map(String::as_str),
        Some("custom"),
        "the selector label stays the operator's"
    );
    assert_eq!(spec.selector, selector("custom"));
    let server = &pod.containers[0];
    assert_eq!(server.env_from.as_ref().map(Vec::len), Some(2));
    let svc = c.service.spec.as_ref().expect("service spec");
    assert_eq!(
        svc.selector,
        Some(BTreeMap::from([(
            SELECTOR_LABEL.to_owned(),
            "custom".to_owned()
        )]))
    );
    // Nothing set: none of these fields appear (the other goldens are unchanged).
    let plain = children(&smollm_cpu(), &PlanConfig::default());
    let pod = plain
        .deployment
        .spec
        .and_then(|s| s.template.spec)
        .expect("pod");
    assert!(pod.runtime_class_name.is_none() && pod.image_pull_secrets.is_none());
    assert!(plain.service.metadata.annotations.is_none());
}

fn pod_of(d: &Deployment) -> k8s_openapi::api::core::v1::PodSpec {
    d.spec
        .as_ref()
        .and_then(|s| s.template.spec.clone())
        .expect("pod")
}

#[test]
fn a_gated_url_mounts_the_headers_secret_into_the_fetch_container_only() {
    let ld = llama(
        "gated",
        serde_json::json!({
            "model": {"url": "hf://meta-llama/Llama-3.2-1B-Instruct-GGUF@v1/llama.Q4_K_M.gguf",
                      "headersSecretRef": {"name": "hf-token"}, "sizeBytes": 800_000_000_i64},
            "accelerator": "CPU",
            "apiKeySecretRef": {"name": "llama-key", "key": "token"},
            "env": [{"name": "HF_ENDPOINT", "value": "https://hf-mirror.internal"},
                    {"name": "HTTPS_PROXY", "value": "http://proxy:3128"}],
        }),
    );
    let d = children(&ld, &PlanConfig::default()).deployment;
    let argv = command_of(&d, FETCH_CONTAINER);
    let llama_server::app::Commands::Fetch(f) = parse_with_the_server(&argv) else {
        panic!("the init container does not run `fetch`: {argv:?}");
    };
    assert_eq!(
        f.headers_dir.as_deref(),
        Some(std::path::Path::new(llama_contract::MODEL_HEADERS_DIR))
    );
    assert_eq!(
        Some(f.url),
        ld.spec.model.url.clone(),
        "fetch resolves hf:// itself"
    );
    let pod = pod_of(&d);
    let vol = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some("hf-token"))
        .expect("a volume of the headers Secret");
    let mounted_in: Vec<&str> = pod
        .init_containers
        .iter()
        .flatten()
        .chain(&pod.containers)
        .filter(|c| c.volume_mounts.iter().flatten().any(|m| m.name == vol.name))
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(
        mounted_in,
        [FETCH_CONTAINER],
        "only the fetch container sees the Secret"
    );
    let fetch = pod
        .init_containers
        .iter()
        .flatten()
        .find(|c| c.name == FETCH_CONTAINER)
        .unwrap();
    let m = fetch
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == vol.name)
        .unwrap();
    assert_eq!(m.mount_path, llama_contract::MODEL_HEADERS_DIR);
    assert_eq!(m.read_only, Some(true));
    // The fetch container gets the spec's env (proxy, mirror), not the API key; nothing from the headers
    // Secret is an environment variable anywhere.
    let env: Vec<&str> = fetch
        .env
        .iter()
        .flatten()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(env, ["HF_ENDPOINT", "HTTPS_PROXY"]);
    for c in pod.init_containers.iter().flatten().chain(&pod.containers) {
        for e in c.env.iter().flatten() {
            let from = e
                .value_from
                .as_ref()
                .and_then(|v| v.secret_key_ref.as_ref());
            assert_ne!(from.map(|s| s.name.as_str()), Some("hf-token"), "{e:?}");
        }
    }
    // The download's disk is requested from the declared size (800 MB + 10 % + 64 MiB).
    let server = &pod.containers[0];
    let requests = server
        .resources
        .as_ref()
        .and_then(|r| r.requests.clone())
        .unwrap();
    assert_eq!(requests["ephemeral-storage"], Quantity("903Mi".into()));
    assert_eq!(
        vol.secret.as_ref().and_then(|s| s.default_mode),
        Some(0o440),
        "readable by the pod's group only"
    );
    assert!(crate::hardware::fit(&ld.spec, &[]).is_ok());
}

#[test]
fn a_malformed_hf_url_or_mirror_is_an_invalid_spec_naming_the_form() {
    let mut ld = llama(
        "bad",
        serde_json::json!({"model": {"url": "hf://org/repo"}, "accelerator": "CPU"}),
    );
    let e = crate::hardware::fit(&ld.spec, &[]).unwrap_err().to_string();
    assert!(
        e.contains("model.url") && e.contains("hf://<org>/<repo>"),
        "{e}"
    );
    ld.spec.model.url = Some("hf://org/repo/m.gguf".into());
    ld.spec.env = vec![k8s_openapi::api::core::v1::EnvVar {
        name: "HF_ENDPOINT".into(),
        value: Some("mirror.internal".into()),
        ..Default::default()
    }];
    let e = crate::hardware::fit(&ld.spec, &[]).unwrap_err().to_string();
    assert!(e.contains("HF_ENDPOINT"), "{e}");
}

/// The QoS class the kubelet would give a pod (`Guaranteed`, `Burstable` or `BestEffort`), from its containers.
fn qos_class(pod: &k8s_openapi::api::core::v1::PodSpec) -> &'static str {
    let cs: Vec<_> = pod
        .init_containers
        .iter()
        .flatten()
        .chain(&pod.containers)
        .collect();
    let any = cs.iter().any(|c| {
        c.resources.as_ref().is_some_and(|r| {
            r.requests
                .as_ref()
                .is_some_and(|m| m.contains_key("cpu") || m.contains_key("memory"))
                || r.limits
                    .as_ref()
                    .is_some_and(|m| m.contains_key("cpu") || m.contains_key("memory"))
        })
    });
    if !any {
        return "BestEffort";
    }
    let guaranteed = cs.iter().all(|c| {
        let r = c.resources.clone().unwrap_or_default();
        let (req, lim) = (r.requests.unwrap_or_default(), r.limits.unwrap_or_default());
        ["cpu", "memory"]
            .iter()
            .all(|k| lim.contains_key(*k) && req.get(*k).is_none_or(|q| Some(q) == lim.get(*k)))
    });
    if guaranteed {
        "Guaranteed"
    } else {
        "Burstable"
    }
}

#[test]
fn pods_without_sized_resources_get_default_requests_and_are_never_best_effort() {
    let gpu = llama(
        "bare-gpu",
        serde_json::json!({"model": {"pvc": {"claimName": "m", "path": "a.gguf"}}, "tensorParallelSize": 2}),
    );
    let pod = pod_of(&children(&gpu, &PlanConfig::default()).deployment);
    let r = pod.containers[0].resources.clone().expect("resources");
    let req = r.requests.expect("requests");
    assert_eq!(req["cpu"], Quantity("2".into()), "one core per GPU");
    assert_eq!(req["memory"], Quantity("4Gi".into()), "2Gi per GPU");
    assert_eq!(req["nvidia.com/gpu"], Quantity("2".into()));
    let lim = r.limits.expect("limits");
    assert_eq!(
        lim.keys().collect::<Vec<_>>(),
        ["nvidia.com/gpu"],
        "no CPU/memory limit was asked for"
    );
    assert_eq!(qos_class(&pod), "Burstable");

    let cpu = llama(
        "bare-cpu",
        serde_json::json!({"model": {"pvc": {"claimName": "m", "path": "a.gguf"}}, "accelerator": "CPU",
                           "resources": {"memory": "1Gi"}}),
    );
    let pod = pod_of(&children(&cpu, &PlanConfig::default()).deployment);
    let r = pod.containers[0].resources.clone().expect("resources");
    assert_eq!(r.requests.as_ref().unwrap()["cpu"], Quantity("100m".into()));
    assert_eq!(
        r.requests.as_ref().unwrap()["memory"],
        Quantity("1Gi".into())
    );
    assert_eq!(
        r.limits.as_ref().unwrap()["memory"],
        Quantity("1Gi".into()),
        "what is set stays a limit"
    );
    assert!(!r.limits.unwrap().contains_key("cpu"));

    // Every golden spec, too: sized ones stay Guaranteed-or-Burstable as the user set them, none BestEffort.
    for ld in [smollm_cpu(), llama_tp2_gpu(), gpu, cpu] {
        let pod = pod_of(&children(&ld, &PlanConfig::default()).deployment);
        assert_ne!(qos_class(&pod), "BestEffort", "{}", ld.name_any());
    }
    // Fully sized CPU pods keep requests = limits (the memory test on the real node relies on the limit).
    assert_eq!(
        qos_class(&pod_of(
            &children(&smollm_cpu(), &PlanConfig::default()).deployment
        )),
        "Burstable",
        "the fetch init container has no requests of its own, so the pod is Burstable"
    );
}

#[test]
fn an_api_keys_secret_is_mounted_as_a_directory_the_server_rereads() {
    let ld = llama(
        "keys",
        serde_json::json!({"model": {"pvc": {"claimName": "m", "path": "a.gguf"}}, "accelerator": "CPU",
                           "apiKeysSecretRef": {"name": "client-keys"}}),
    );
    let d = children(&ld, &PlanConfig::default()).deployment;
    let argv = command_of(&d, "server");
    let llama_server::app::Commands::Serve(a) = parse_with_the_server(&argv) else {
        panic!("the server container does not run `serve`: {argv:?}");
    };
    assert_eq!(
        a.api_key_file.as_deref(),
        Some(std::path::Path::new(llama_contract::API_KEYS_DIR))
    );
    assert_eq!(a.api_key, None);
    let pod = pod_of(&d);
    let vol = pod
        .volumes
        .iter()
        .flatten()
        .find(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref()) == Some("client-keys"))
        .expect("a volume of the keys Secret");
    let m = pod.containers[0]
        .volume_mounts
        .iter()
        .flatten()
        .find(|m| m.name == vol.name)
        .expect("mounted in the server");
    assert_eq!(m.mount_path, llama_contract::API_KEYS_DIR);
    assert_eq!(
        m.sub_path, None,
        "a subPath mount never sees the kubelet's updates"
    );
    assert!(
        pod.containers[0]
            .env
            .iter()
            .flatten()
            .all(|e| e.name != llama_contract::env::API_KEY),
        "no single-key env var alongside"
    );
}

#[test]
fn a_network_policy_admits_the_listed_peers_and_the_operator_and_never_everyone() {
    let ld = llama(
        "guarded",
        serde_json::json!({"model": {"pvc": {"claimName": "m", "path": "a.gguf"}}, "accelerator": "CPU",
                           "networkPolicy": {"from": [
                               {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gateway"}}},
                               {"podSelector": {"matchLabels": {"app": "prometheus"}}}]}}),
    );
    let cfg = PlanConfig {
        operator_namespace: Some("llama-system".into()),
        ..PlanConfig::default()
    };
    let np = children(&ld, &cfg).network_policy.expect("a NetworkPolicy");
    assert_golden("guarded-networkpolicy.yaml", &np);
    let spec = np.spec.clone().expect("spec");
    assert_eq!(
        spec.pod_selector,
        children(&ld, &cfg).deployment.spec.map(|s| s.selector),
        "it selects exactly the Deployment's pods"
    );
    let rules = spec.ingress.expect("ingress");
    assert_eq!(rules.len(), 1);
    assert_eq!(
        rules[0].from.as_ref().map(Vec::len),
        Some(3),
        "two listed peers and the operator"
    );

    // Nobody listed and the operator's namespace unknown: no rule at all (deny), never a rule with an empty
    // `from`, which would admit every source.
    let alone = llama(
        "alone",
        serde_json::json!({"model": {"pvc": {"claimName": "m", "path": "a.gguf"}}, "accelerator": "CPU",
                           "networkPolicy": {}}),
    );
    let np = children(&alone, &PlanConfig::default())
        .network_policy
        .expect("a NetworkPolicy");
    assert_eq!(np.spec.and_then(|s| s.ingress), Some(vec![]));
    // Unset: none planned (the controller deletes one left from before).
    assert!(children(&smollm_cpu(), &cfg).network_policy.is_none());
}

#[test]
fn a_pod_template_overlay_adds_a_sidecar_and_volumes_but_cannot_touch_what_the_operator_owns() {
    let overlaid = |overlay: serde_json::Value| {
        let mut ld = smollm_cpu();
        ld.spec.pod_template = Some(overlay);
        ld
    };
    let ld = overlaid(serde_json::json!({
        "metadata": {"annotations": {"sidecar.istio.io/inject": "false"}, "labels": {"team": "search"}},
        "spec": {
            "hostAliases": [{"ip": "10.0.0.9", "hostnames": ["models.internal"]}],
            "terminationGracePeriodSeconds": 120,
            "volumes": [{"name": "ca", "configMap": {"name": "corp-ca"}}],
            "containers": [
                {"name": "server",
                 "env": [{"name": "SSL_CERT_DIR", "value": "/etc/corp-ca"}],
                 "volumeMounts": [{"name": "ca", "mountPath": "/etc/corp-ca", "readOnly": true}]},
                {"name": "log-shipper", "image": "fluent-bit:3", "args": ["-i", "dummy"]}
            ]
        }
    }));
    assert_eq!(crate::plan::overlay_error(&ld), None);
    assert!(crate::hardware::fit(&ld.spec, &[]).is_ok());
    let d = children(&ld, &PlanConfig::default()).deployment;
    assert_golden("overlay-deployment.yaml", &d);
    let pod = pod_of(&d);
    let names: Vec<&str> = pod.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["server", "log-shipper"]);
    let server = &pod.containers[0];
    assert!(
        server
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.mount_path == "/etc/corp-ca")
    );
    assert!(
        server
            .volume_mounts
            .iter()
            .flatten()
            .any(|m| m.name == "model"),
        "the planned mounts stay"
    );
    assert_eq!(pod.termination_grace_period_seconds, Some(120));
    // The server still runs what the spec says (parsed with the server's own CLI).
    let argv = command_of(&d, "server");
    assert!(matches!(
        parse_with_the_server(&argv),
        llama_server::app::Commands::Serve(_)
    ));

    for (overlay, says) in [
        (
            serde_json::json!({"spec": {"containers": [{"name": "server", "args": ["serve", "--model", "/x"]}]}}),
            "the server container's args",
        ),
        (
            serde_json::json!({"spec": {"containers": [{"name": "server", "image": "evil:latest"}]}}),
            "the server container's image",
        ),
        (
            serde_json::json!({"spec": {"volumes": [{"name": "model", "hostPath": {"path": "/"}}]}}),
            "volume model",
        ),
        (
            serde_json::json!({"spec": {"volumes": [{"name": "model", "$patch": "delete"}]}}),
            "volume model",
        ),
        (
            serde_json::json!({"spec": {"initContainers": [{"name": "model-fetch", "args": ["fetch"]}]}}),
            "init container model-fetch",
        ),
        (
            serde_json::json!({"metadata": {"labels": {"inference.llama-operator.dev/deployment": "other"}}}),
            "label inference.llama-operator.dev/deployment",
        ),
        (
            serde_json::json!({"spec": {"containers": [{"name": "server", "$patch": "delete"}]}}),
            "removes the server container",
        ),
        (serde_json::json!({"kind": "Pod"}), "only metadata and spec"),
        (
            serde_json::json!({"spec": {"terminationGracePeriodSeconds": "long"}}),
            "spec.podTemplate: invalid type",
        ),
    ] {
        let ld = overlaid(overlay.clone());
        let e = crate::hardware::fit(&ld.spec, &[])
            .expect_err(&format!("accepted {overlay}"))
            .to_string();
        assert!(e.contains(says), "{overlay}: {e}");
        // Never applied: the plan stays as without the overlay.
        let plain = children(&smollm_cpu(), &PlanConfig::default()).deployment;
        assert_eq!(children(&ld, &PlanConfig::default()).deployment, plain);
    }
}

#[test]
fn a_model_cache_keeps_url_downloads_in_a_shared_volume_where_fetch_and_serve_agree() {
    for (cache, host) in [
        (
            serde_json::json!({"hostPath": "/var/lib/llama-models"}),
            true,
        ),
        (serde_json::json!({"claimName": "model-cache"}), false),
    ] {
        let mut ld = smollm_cpu();
        ld.spec.model.cache = Some(serde_json::from_value(cache).expect("cache"));
        let d = children(&ld, &PlanConfig::default()).deployment;
        let llama_server::app::Commands::Fetch(f) =
            parse_with_the_server(&command_of(&d, FETCH_CONTAINER))
        else {
            panic!("no fetch");
        };
        let llama_server::app::Commands::Serve(a) =
            parse_with_the_server(&command_of(&d, "server"))
        else {
            panic!("no serve");
        };
        let key = llama_contract::model_url::cache_key(
            ld.spec.model.url.as_deref().unwrap(),
            ld.spec.model.sha256.as_deref(),
        );
        assert_eq!(
            f.out,
            std::path::PathBuf::from(format!("/models/{key}/model.gguf"))
        );
        assert_eq!(
            a.model.as_deref(),
            Some(f.out.as_path()),
            "serve reads what fetch wrote"
        );
        let pod = pod_of(&d);
        let vol = pod
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == "model")
            .expect("model volume");
        if host {
            let hp = vol.host_path.as_ref().expect("hostPath");
            assert_eq!(
                (hp.path.as_str(), hp.type_.as_deref()),
                ("/var/lib/llama-models", Some("DirectoryOrCreate"))
            );
        } else {
            assert_eq!(
                vol.persistent_volume_claim
                    .as_ref()
                    .map(|c| c.claim_name.as_str()),
                Some("model-cache")
            );
        }
        let requests = pod.containers[0]
            .resources
            .clone()
            .and_then(|r| r.requests)
            .unwrap();
        assert!(
            !requests.contains_key("ephemeral-storage"),
            "the download is not pod-local"
        );
    }
}
