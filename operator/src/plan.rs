//! Desired children of a LlamaDeployment (pure): a Deployment of serving pods, a Service and, with more
//! than one replica, a PodDisruptionBudget. The controller server-side applies exactly what this returns.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::{
    Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment,
};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EmptyDirVolumeSource, EnvVar, EnvVarSource,
    HTTPGetAction, Lifecycle, LifecycleHandler, LocalObjectReference, PodSecurityContext, PodSpec,
    PodTemplateSpec, Probe, ResourceRequirements, SeccompProfile, SecretVolumeSource,
    SecurityContext, Service, ServicePort, ServiceSpec, SleepAction, Toleration, Volume,
    VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, OwnerReference};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::{Accelerator, LlamaDeployment, LlamaDeploymentSpec, parse_size};
use crate::hardware::estimate_memory;

/// Port the server listens on (container and Service), from the operator↔server contract.
pub const HTTP_PORT: i32 = llama_contract::HTTP_PORT as i32;
/// Label selecting a LlamaDeployment's pods (its value is the LlamaDeployment's name).
pub const SELECTOR_LABEL: &str = "inference.llama-operator.dev/deployment";
/// Value of `app.kubernetes.io/managed-by` on everything the operator creates.
pub const MANAGER: &str = "llama-operator";
/// UID/GID the serving pod runs as (non-root; the modelcar runs as the same user so the server may read
/// `/proc/<pid>/root` of the sidecar).
pub const RUN_AS_USER: i64 = 65532;
/// Seconds the preStop hook waits so endpoints drop the pod before SIGTERM starts the drain.
pub const PRESTOP_SLEEP_SECONDS: i64 = 5;
/// Extra seconds of grace beyond preStop + drain timeout.
pub const GRACE_MARGIN_SECONDS: i64 = 10;
/// Name of the init container that downloads a `url` model.
pub const FETCH_CONTAINER: &str = "model-fetch";
/// Where model weights appear inside the server container.
const MODEL_DIR: &str = "/models";
/// Shared directory where the modelcar publishes a link to its `/models`.
const MODELCAR_DIR: &str = "/modelcar";

/// Operator-level settings the plan depends on.
#[derive(Debug, Clone, PartialEq)]
pub struct PlanConfig {
    /// Server image used when the spec sets none.
    pub default_image: String,
    /// Image of the init container that fetches `url` models with `llama-server fetch`; `None`: the
    /// pod's own server image (which has the `fetch` subcommand).
    pub fetch_image: Option<String>,
    /// Pull policy of the server image when the spec sets none (`None`: Kubernetes' default).
    pub image_pull_policy: Option<String>,
    /// Secrets (names, in the LlamaDeployment's namespace) every serving pod pulls its images with.
    pub image_pull_secrets: Vec<String>,
    /// The operator's own namespace (`POD_NAMESPACE`), so a NetworkPolicy lets its metrics reads in.
    pub operator_namespace: Option<String>,
}

impl Default for PlanConfig {
    fn default() -> Self {
        Self {
            default_image: format!(
                "ghcr.io/llama-operator/llama-server:{}",
                env!("CARGO_PKG_VERSION")
            ),
            fetch_image: None,
            image_pull_policy: None,
            image_pull_secrets: Vec::new(),
            operator_namespace: None,
        }
    }
}

/// Everything the controller applies for one LlamaDeployment.
#[derive(Debug, Clone, PartialEq)]
pub struct Children {
    pub deployment: Deployment,
    pub service: Service,
    /// `None` means: delete the PDB if one exists.
    pub pdb: Option<PodDisruptionBudget>,
    /// `None` means: delete the NetworkPolicy if one exists.
    pub network_policy: Option<k8s_openapi::api::networking::v1::NetworkPolicy>,
}

/// Labels on every child (the selector label included).
pub fn labels(name: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (
            "app.kubernetes.io/name".to_owned(),
            "llama-server".to_owned(),
        ),
        ("app.kubernetes.io/instance".to_owned(), name.to_owned()),
        (
            "app.kubernetes.io/managed-by".to_owned(),
            MANAGER.to_owned(),
        ),
        (SELECTOR_LABEL.to_owned(), name.to_owned()),
    ])
}

/// The pods' label selector, as a string for `status.selector`.
pub fn selector_string(name: &str) -> String {
    format!("{SELECTOR_LABEL}={name}")
}

fn selector(name: &str) -> LabelSelector {
    LabelSelector {
        match_labels: Some(BTreeMap::from([(
            SELECTOR_LABEL.to_owned(),
            name.to_owned(),
        )])),
        ..Default::default()
    }
}

/// The served model name.
pub fn served_model_name(ld: &LlamaDeployment) -> String {
    ld.spec.model.name.clone().unwrap_or_else(|| ld.name_any())
}

/// In-cluster URL of the OpenAI API.
pub fn endpoint(ld: &LlamaDeployment) -> String {
    format!(
        "http://{}.{}.svc:{HTTP_PORT}/v1",
        ld.name_any(),
        ld.namespace().unwrap_or_default()
    )
}

fn meta(ld: &LlamaDeployment) -> ObjectMeta {
    ObjectMeta {
        name: Some(ld.name_any()),
        namespace: ld.namespace(),
        labels: Some(labels(&ld.name_any())),
        owner_references: ld
            .controller_owner_ref(&())
            .map(|o: OwnerReference| vec![o]),
        ..Default::default()
    }
}

/// Builds all children.
pub fn children(ld: &LlamaDeployment, cfg: &PlanConfig) -> Children {
    Children {
        deployment: deployment(ld, cfg),
        service: service(ld),
        pdb: pdb(ld),
        network_policy: network::network_policy(ld, cfg),
    }
}

/// `--<name>` of a contract flag.
fn flag(name: &str) -> String {
    format!("--{name}")
}

/// Server flags derived from the spec (then `serverArgs`). Every flag name comes from the contract, and a test
/// parses the result with the server's own CLI parser.
pub fn server_args(ld: &LlamaDeployment) -> Vec<String> {
    use llama_contract::serve_flags as f;
    let s = &ld.spec;
    let mut args: Vec<String> = vec![
        llama_contract::cmd::SERVE.into(),
        flag(f::MODEL),
        model_path(s),
        flag(f::HOST),
        "0.0.0.0".into(),
        flag(f::PORT),
        HTTP_PORT.to_string(),
        flag(f::SERVED_MODEL_NAME),
        served_model_name(ld),
        flag(f::TENSOR_PARALLEL_SIZE),
        s.tensor_parallel_size.to_string(),
        flag(f::MAX_BATCH_SIZE),
        s.max_batch_size.to_string(),
        flag(f::MAX_SEQ_LEN),
        s.max_seq_len.to_string(),
        flag(f::MAX_NUM_BATCHED_TOKENS),
        s.max_batched_tokens.to_string(),
    ];
    if let Some(bytes) = s.kv_cache_memory.as_deref().and_then(parse_size) {
        args.extend([flag(f::KV_CACHE_MEMORY), bytes.to_string()]);
    }
    args.extend([
        flag(f::BLOCK_SIZE),
        s.block_size.to_string(),
        flag(f::MAX_QUEUE),
        s.max_queue.to_string(),
        flag(f::DRAIN_TIMEOUT),
        s.drain_timeout_seconds.to_string(),
    ]);
    let threads = s.threads.or_else(|| {
        let cpu = s.resources.cpu.as_ref()?;
        cpu.0.parse::<i32>().ok().filter(|n| *n >= 1)
    });
    if let Some(t) = threads {
        args.extend([flag(f::THREADS), t.to_string()]);
    }
    // A CPU pod never tries a GPU. A GPU pod keeps the server's `auto` (CUDA when its image has it) until the
    // CUDA engine path lands and images are built with it; then it will say `cuda`.
    if s.accelerator == crate::crd::Accelerator::Cpu {
        args.extend([flag(f::DEVICE), "cpu".to_owned()]);
    }
    if s.api_keys_secret_ref.is_some() {
        args.extend([
            flag(f::API_KEY_FILE),
            llama_contract::API_KEYS_DIR.to_owned(),
        ]);
    }
    args.extend(s.server_args.iter().cloned());
    args
}

/// Default requests of a server container whose spec leaves `resources.cpu`/`memory` unset: enough that the
/// pod is Burstable (never BestEffort, the first evicted) without claiming what the user did not size.
pub fn default_requests(s: &LlamaDeploymentSpec) -> (Quantity, Quantity) {
    if s.accelerator == Accelerator::Gpu {
        let gpus = s.tensor_parallel_size.max(1);
        (
            Quantity(gpus.to_string()),
            Quantity(format!("{}Gi", 2 * gpus)),
        )
    } else {
        (Quantity("100m".to_owned()), Quantity("256Mi".to_owned()))
    }
}

/// The server container's resources: what the spec sets is both request and limit; what it leaves unset gets
/// a [`default_requests`] request and no limit; GPUs are requested and limited; a `url` model's
/// `ephemeral-storage` is requested from its declared size (the scheduler then picks a node with the disk).
pub fn server_resources(s: &LlamaDeploymentSpec) -> ResourceRequirements {
    let (default_cpu, default_memory) = default_requests(s);
    let mut requests = BTreeMap::new();
    let mut limits = BTreeMap::new();
    for (name, set, default) in [
        ("cpu", &s.resources.cpu, default_cpu),
        ("memory", &s.resources.memory, default_memory),
    ] {
        match set {
            Some(q) => {
                requests.insert(name.to_owned(), q.clone());
                limits.insert(name.to_owned(), q.clone());
            }
            None => {
                requests.insert(name.to_owned(), default);
            }
        }
    }
    if s.accelerator == Accelerator::Gpu {
        let n = Quantity(s.tensor_parallel_size.to_string());
        requests.insert(s.resources.gpu_resource_name.clone(), n.clone());
        limits.insert(s.resources.gpu_resource_name.clone(), n);
    }
    if s.model.url.is_some()
        && s.model.cache.is_none()
        && let Some(size) = model::model_volume_size(s)
    {
        requests.insert("ephemeral-storage".to_owned(), size);
    }
    ResourceRequirements {
        requests: Some(requests),
        limits: (!limits.is_empty()).then_some(limits),
        ..Default::default()
    }
}

fn http_probe(path: &str, period: i32, failures: i32, timeout: i32) -> Probe {
    Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String(llama_contract::HTTP_PORT_NAME.to_owned()),
            ..Default::default()
        }),
        period_seconds: Some(period),
        failure_threshold: Some(failures),
        timeout_seconds: Some(timeout),
        ..Default::default()
    }
}

/// Startup budget in seconds: 10 minutes plus 1 minute per GiB of weights a GPU loads.
pub fn startup_budget_seconds(spec: &LlamaDeploymentSpec) -> i32 {
    let per_pod = estimate_memory(spec).weights_bytes.unwrap_or(0);
    let tp = u64::try_from(spec.tensor_parallel_size.max(1)).unwrap_or(1);
    let gib = (per_pod / tp).div_ceil(1 << 30);
    600 + i32::try_from(gib.saturating_mul(60))
        .unwrap_or(i32::MAX - 600)
        .min(3 * 3600)
}

fn restricted_container_security() -> SecurityContext {
    SecurityContext {
        allow_privilege_escalation: Some(false),
        read_only_root_filesystem: Some(true),
        run_as_non_root: Some(true),
        capabilities: Some(Capabilities {
            drop: Some(vec!["ALL".to_owned()]),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: read_only.then_some(true),
        ..Default::default()
    }
}

/// A Secret as a volume, readable by the pod's group only (`fsGroup`), never world-readable.
fn secret_volume(name: &str, secret: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret.to_owned()),
            default_mode: Some(0o440),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn empty_dir(name: &str, medium: Option<&str>, size: Option<Quantity>) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource {
            medium: medium.map(str::to_owned),
            size_limit: size,
        }),
        ..Default::default()
    }
}

fn deployment(ld: &LlamaDeployment, cfg: &PlanConfig) -> Deployment {
    let s = &ld.spec;
    let name = ld.name_any();
    let gpu = s.accelerator == Accelerator::Gpu;
    let gpu_name = s.resources.gpu_resource_name.clone();
    let server_image = s.image.clone().unwrap_or_else(|| cfg.default_image.clone());
    let pull_policy = s
        .image_pull_policy
        .map(|p| p.as_str().to_owned())
        .or_else(|| cfg.image_pull_policy.clone());

    let resources = Some(server_resources(s));

    let mut env = Vec::new();
    if let Some(secret) = &s.api_key_secret_ref {
        env.push(EnvVar {
            name: llama_contract::env::API_KEY.to_owned(),
            value_from: Some(EnvVarSource {
                secret_key_ref: Some(secret.clone()),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    env.extend(s.env.iter().cloned());

    let shm_size = s.resources.shm_size.clone().unwrap_or_else(|| {
        let gib = if gpu {
            s.tensor_parallel_size.max(1)
        } else {
            1
        };
        Quantity(format!("{gib}Gi"))
    });
    let mut volumes = vec![
        empty_dir("dshm", Some("Memory"), Some(shm_size)),
        empty_dir("tmp", None, None),
    ];
    let mut mounts = vec![
        mount("dshm", "/dev/shm", false),
        mount("tmp", "/tmp", false),
    ];
    if let Some(secret) = &s.api_keys_secret_ref {
        volumes.push(secret_volume("api-keys", &secret.name));
        // The whole directory, not a subPath: only a directory mount sees the kubelet's updates.
        mounts.push(mount("api-keys", llama_contract::API_KEYS_DIR, true));
    }
    let (init_containers, share_process_namespace) = model::model_source(
        s,
        cfg,
        &server_image,
        &pull_policy,
        &mut volumes,
        &mut mounts,
    );

    let startup_period = 10;
    let server = Container {
        name: "server".to_owned(),
        image: Some(server_image),
        image_pull_policy: pull_policy.clone(),
        command: Some(vec![llama_contract::cmd::BINARY.to_owned()]),
        args: Some(server_args(ld)),
        ports: Some(vec![ContainerPort {
            name: Some(llama_contract::HTTP_PORT_NAME.to_owned()),
            container_port: HTTP_PORT,
            protocol: Some("TCP".to_owned()),
            ..Default::default()
        }]),
        env: (!env.is_empty()).then_some(env),
        env_from: (!s.env_from.is_empty()).then(|| s.env_from.clone()),
        resources,
        volume_mounts: Some(mounts),
        startup_probe: Some(http_probe(
            llama_contract::paths::READY,
            startup_period,
            startup_budget_seconds(s) / startup_period,
            5,
        )),
        readiness_probe: Some(http_probe(llama_contract::paths::READY, 5, 2, 3)),
        liveness_probe: Some(http_probe(llama_contract::paths::HEALTH, 10, 3, 5)),
        lifecycle: Some(Lifecycle {
            pre_stop: Some(LifecycleHandler {
                sleep: Some(SleepAction {
                    seconds: PRESTOP_SLEEP_SECONDS,
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
        security_context: Some(restricted_container_security()),
        termination_message_policy: Some("FallbackToLogsOnError".to_owned()),
        ..Default::default()
    };

    let mut tolerations = Vec::new();
    if gpu {
        tolerations.push(Toleration {
            key: Some(gpu_name),
            operator: Some("Exists".to_owned()),
            effect: Some("NoSchedule".to_owned()),
            ..Default::default()
        });
    }
    tolerations.extend(s.tolerations.iter().cloned());

    let pod = PodSpec {
        containers: vec![server],
        init_containers: (!init_containers.is_empty()).then_some(init_containers),
        volumes: Some(volumes),
        share_process_namespace,
        node_selector: (!s.node_selector.is_empty()).then(|| s.node_selector.clone()),
        tolerations: (!tolerations.is_empty()).then_some(tolerations),
        affinity: s.affinity.clone(),
        priority_class_name: s.priority_class_name.clone(),
        image_pull_secrets: {
            let mut secrets: Vec<LocalObjectReference> = cfg
                .image_pull_secrets
                .iter()
                .map(|n| LocalObjectReference { name: n.clone() })
                .collect();
            for r in &s.image_pull_secrets {
                if !secrets.contains(r) {
                    secrets.push(r.clone());
                }
            }
            (!secrets.is_empty()).then_some(secrets)
        },
        runtime_class_name: s.runtime_class_name.clone(),
        automount_service_account_token: Some(false),
        enable_service_links: Some(false),
        termination_grace_period_seconds: Some(
            i64::from(s.drain_timeout_seconds) + PRESTOP_SLEEP_SECONDS + GRACE_MARGIN_SECONDS,
        ),
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS_USER),
            run_as_group: Some(RUN_AS_USER),
            fs_group: Some(RUN_AS_USER),
            seccomp_profile: Some(SeccompProfile {
                type_: "RuntimeDefault".to_owned(),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    };

    let mut template = PodTemplateSpec {
        metadata: Some(ObjectMeta {
            labels: Some(with_own(&s.pod_labels, labels(&name))),
            annotations: (!s.pod_annotations.is_empty()).then(|| s.pod_annotations.clone()),
            ..Default::default()
        }),
        spec: Some(pod),
    };
    if let Some(o) = &s.pod_template {
        // Validation refuses an overlay that fails here (`overlay_error`), so no Deployment is applied with it.
        if let Ok(t) = apply_overlay(&template, o, &name) {
            template = t;
        }
    }
    Deployment {
        metadata: meta(ld),
        spec: Some(DeploymentSpec {
            replicas: Some(s.replicas),
            selector: selector(&name),
            strategy: Some(strategy(s)),
            template,
            ..Default::default()
        }),
        status: None,
    }
}

fn apply_overlay(
    template: &PodTemplateSpec,
    overlay: &serde_json::Value,
    name: &str,
) -> Result<PodTemplateSpec, String> {
    let volumes: Vec<String> = template
        .spec
        .iter()
        .flat_map(|p| p.volumes.iter().flatten())
        .map(|v| v.name.clone())
        .collect();
    let owned_labels: Vec<String> = labels(name).into_keys().collect();
    overlay::apply(template, overlay, &volumes, &owned_labels)
}

/// Why `spec.podTemplate` cannot be applied (it changes what the operator owns, or is not a pod template);
/// `None` when it is unset or applies.
pub fn overlay_error(ld: &LlamaDeployment) -> Option<String> {
    let o = ld.spec.pod_template.as_ref()?;
    let planned = deployment(
        &LlamaDeployment {
            spec: LlamaDeploymentSpec {
                pod_template: None,
                ..ld.spec.clone()
            },
            ..ld.clone()
        },
        &PlanConfig::default(),
    );
    let template = planned.spec.map(|s| s.template).unwrap_or_default();
    apply_overlay(&template, o, &ld.name_any()).err()
}

/// `Deployment.spec.strategy` from `spec.rolloutStrategy`, filling what it leaves out with the accelerator's
/// defaults (CPU: surge 1, unavailable 0; GPU: surge 1, unavailable 1, which cannot stall on a full cluster).
pub fn strategy(s: &crate::crd::LlamaDeploymentSpec) -> DeploymentStrategy {
    use crate::crd::{Accelerator, RolloutType};
    let r = s.rollout_strategy.clone().unwrap_or_default();
    if r.type_ == RolloutType::Recreate {
        return DeploymentStrategy {
            type_: Some("Recreate".to_owned()),
            rolling_update: None,
        };
    }
    let unavailable = if s.accelerator == Accelerator::Gpu {
        1
    } else {
        0
    };
    DeploymentStrategy {
        type_: Some("RollingUpdate".to_owned()),
        rolling_update: Some(RollingUpdateDeployment {
            max_surge: Some(r.max_surge.unwrap_or(IntOrString::Int(1))),
            max_unavailable: Some(r.max_unavailable.unwrap_or(IntOrString::Int(unavailable))),
        }),
    }
}

/// `extra` with the operator's own labels on top (the CRD refuses those keys in `extra`; this keeps them even
/// if an older object slipped through).
fn with_own(
    extra: &BTreeMap<String, String>,
    own: BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut out = extra.clone();
    out.extend(own);
    out
}

fn service(ld: &LlamaDeployment) -> Service {
    let s = &ld.spec;
    let mut metadata = meta(ld);
    metadata.labels = Some(with_own(&s.service_labels, labels(&ld.name_any())));
    metadata.annotations =
        (!s.service_annotations.is_empty()).then(|| s.service_annotations.clone());
    Service {
        metadata,
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".to_owned()),
            selector: Some(BTreeMap::from([(SELECTOR_LABEL.to_owned(), ld.name_any())])),
            ports: Some(vec![ServicePort {
                name: Some(llama_contract::HTTP_PORT_NAME.to_owned()),
                port: HTTP_PORT,
                target_port: Some(IntOrString::String(
                    llama_contract::HTTP_PORT_NAME.to_owned(),
                )),
                protocol: Some("TCP".to_owned()),
                app_protocol: Some("http".to_owned()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        status: None,
    }
}

fn pdb(ld: &LlamaDeployment) -> Option<PodDisruptionBudget> {
    (ld.spec.replicas > 1).then(|| PodDisruptionBudget {
        metadata: meta(ld),
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(1)),
            selector: Some(selector(&ld.name_any())),
            ..Default::default()
        }),
        status: None,
    })
}

pub mod model;
pub mod network;
pub use model::{fetch_args, model_path};
pub mod overlay;

#[cfg(test)]
pub(crate) mod tests;
