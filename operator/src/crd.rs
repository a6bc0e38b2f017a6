//! The `LlamaDeployment` custom resource: the only schema of the API (`crds/` is generated from it).
//!
//! Every field carries its unit and default in its doc comment, which becomes the `description` shown by
//! `kubectl explain llamadeployment.spec.<field>`. Cross-field invariants are CEL rules
//! (`x-kubernetes-validations`) whose messages name the offending field.

// `printcolumn(type_ = "string", ...)` repeated for several columns reads as a duplicated attribute to clippy.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, EnvFromSource, EnvVar, LocalObjectReference, SecretKeySelector, Toleration,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod autoscaling;
pub use autoscaling::{
    AutoscalingSpec, ScalingPolicy, ScalingPolicyType, ScalingRules, SelectPolicy,
};

/// API group of the custom resources.
pub const GROUP: &str = "inference.llama-operator.dev";

/// A Llama-family model served by a set of inference-server pods behind one Service.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[kube(
    group = "inference.llama-operator.dev",
    version = "v1alpha1",
    kind = "LlamaDeployment",
    plural = "llamadeployments",
    singular = "llamadeployment",
    shortname = "llama",
    category = "all",
    namespaced,
    doc = "LlamaDeployment serves a Llama-family model: the operator turns it into a Deployment of inference-server pods, a Service (the OpenAI-compatible endpoint) and a PodDisruptionBudget, validated against the cluster's hardware.",
    status = "LlamaDeploymentStatus",
    derive = "PartialEq",
    scale(
        spec_replicas_path = ".spec.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(
        name = "Replicas",
        type_ = "string",
        description = "ready/desired replicas",
        json_path = ".status.readyOfDesired"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        description = "Pending, Downloading, Loading, Ready (or Updating, ScaledToZero, Failed, Invalid)",
        json_path = ".status.phase"
    ),
    printcolumn(name = "Model", type_ = "string", json_path = ".status.model"),
    printcolumn(name = "Quant", type_ = "string", json_path = ".spec.quantization"),
    printcolumn(name = "TP", type_ = "integer", json_path = ".spec.tensorParallelSize"),
    printcolumn(
        name = "Queue",
        type_ = "number",
        description = "mean waiting requests per pod",
        json_path = ".status.queueDepth"
    ),
    printcolumn(
        name = "KV",
        type_ = "number",
        description = "mean KV-cache usage, fraction 0-1",
        json_path = ".status.kvCacheUsage"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        priority = 1,
        description = "replicas the autoscaler last decided on",
        json_path = ".status.desiredReplicas"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("!has(self.autoscaling) || (self.replicas >= self.autoscaling.minReplicas && self.replicas <= self.autoscaling.maxReplicas)").message("spec.replicas must lie within [spec.autoscaling.minReplicas, spec.autoscaling.maxReplicas] when spec.autoscaling is set").field_path(".replicas"))]
#[x_kube(validation = Rule::new("!has(self.model.contextLength) || self.maxSeqLen <= self.model.contextLength").message("spec.maxSeqLen must not exceed spec.model.contextLength").field_path(".maxSeqLen"))]
#[x_kube(validation = Rule::new("!has(self.apiKeySecretRef) || !has(self.apiKeysSecretRef)").message("spec.apiKeySecretRef and spec.apiKeysSecretRef are exclusive: put every key in the apiKeysSecretRef Secret").field_path(".apiKeysSecretRef"))]
#[x_kube(validation = Rule::new("self.accelerator == 'GPU' || self.tensorParallelSize == 1").message("spec.tensorParallelSize must be 1 when spec.accelerator is CPU").field_path(".tensorParallelSize"))]
#[serde(rename_all = "camelCase")]
pub struct LlamaDeploymentSpec {
    /// The model to serve: exactly one source (`url`, `pvc` or `image`) plus optional declared facts used to
    /// validate the deployment against the hardware before anything is scheduled.
    pub model: ModelSpec,

    /// Weight format of the GGUF file (informational; used to estimate the weights' size from
    /// `model.parameters` when `model.sizeBytes` is not declared). Default: `Q8_0`.
    #[serde(default)]
    pub quantization: Quantization,

    /// Where the server runs: `GPU` (each pod requests `tensorParallelSize` GPUs of
    /// `resources.gpuResourceName`) or `CPU` (no GPU request). Default: `GPU`.
    #[serde(default)]
    pub accelerator: Accelerator,

    /// Number of GPUs the model is split across inside one pod (tensor parallelism). Must divide
    /// `model.heads` and `model.kvHeads`; each pod requests this many GPUs. Unit: GPUs. Default: 1.
    #[serde(default = "one")]
    #[x_kube(validation = Rule::new("self >= 1").message("spec.tensorParallelSize must be at least 1"))]
    pub tensor_parallel_size: i32,

    /// Maximum number of sequences the server batches in one step (`--max-batch-size`). Unit: sequences.
    /// Default: 16.
    #[serde(default = "default_max_batch_size")]
    #[x_kube(validation = Rule::new("self >= 1").message("spec.maxBatchSize must be at least 1"))]
    pub max_batch_size: i32,

    /// Maximum length of one sequence, prompt plus completion (`--max-seq-len`). Unit: tokens. Default: 2048.
    #[serde(default = "default_max_seq_len")]
    #[x_kube(validation = Rule::new("self >= 1").message("spec.maxSeqLen must be at least 1"))]
    pub max_seq_len: i32,

    /// Token budget of one engine step across all sequences, prefill chunks included
    /// (`--max-num-batched-tokens`). Unit: tokens. Default: 2048.
    #[serde(default = "default_max_batched_tokens")]
    #[x_kube(validation = Rule::new("self >= 1").message("spec.maxBatchedTokens must be at least 1"))]
    pub max_batched_tokens: i32,

    /// Memory reserved for the paged KV cache per pod (`--kv-cache-memory`), as a positive integer with an
    /// optional binary (`Ki`, `Mi`, `Gi`, `Ti`) or decimal (`k`, `M`, `G`, `T`) suffix, e.g. `4Gi`. Unit: bytes.
    /// Default: unset (the server sizes the cache for `maxBatchSize × maxSeqLen`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[1-9][0-9]*(Ki|Mi|Gi|Ti|k|M|G|T)?$"))]
    pub kv_cache_memory: Option<String>,

    /// Tokens per KV-cache block (`--block-size`): a power of two between 1 and 256. Unit: tokens. Default: 16.
    #[serde(default = "default_block_size")]
    #[x_kube(validation = Rule::new("self in [1, 2, 4, 8, 16, 32, 64, 128, 256]").message("spec.blockSize must be a power of two between 1 and 256"))]
    pub block_size: i32,

    /// Maximum number of requests waiting in a pod's queue before it answers 429 (`--max-queue`).
    /// Unit: requests. Default: 256.
    #[serde(default = "default_max_queue")]
    #[x_kube(validation = Rule::new("self >= 1").message("spec.maxQueue must be at least 1"))]
    pub max_queue: i32,

    /// Time a terminating pod gets to finish in-flight requests after SIGTERM (`--drain-timeout`); the pod's
    /// termination grace period is this plus the preStop delay plus a margin. Unit: seconds. Default: 30.
    #[serde(default = "default_drain_timeout")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 3600").message("spec.drainTimeoutSeconds must be between 0 and 3600"))]
    pub drain_timeout_seconds: i32,

    /// Compute threads of the server (`--threads`). Unit: threads. Default: unset (derived from
    /// `resources.cpu` when that is a whole number of cores, else the server's own default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("spec.threads must be at least 1"))]
    pub threads: Option<i32>,

    /// Desired number of serving pods, also the scale subresource (`kubectl scale`, HPA, KEDA). With
    /// `spec.autoscaling` the operator's autoscaler owns it: it writes it through `/scale` and treats a manual
    /// change as the new current size, which the next decision may change again (as HPA does); leave it out of
    /// GitOps manifests then. Unit: pods. Default: 1.
    #[serde(default = "one")]
    #[x_kube(validation = Rule::new("self >= 0").message("spec.replicas must not be negative"))]
    pub replicas: i32,

    /// Queue-depth autoscaling with HPA semantics. Default: unset (replicas stay at `spec.replicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscaling: Option<AutoscalingSpec>,

    /// CPU, memory and GPU resource name of each serving pod.
    #[serde(default)]
    pub resources: ResourcesSpec,

    /// Node labels a serving pod requires (`pod.spec.nodeSelector`); also used to pick the nodes the
    /// hardware validation considers. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,

    /// Extra tolerations of the serving pods. A toleration for the GPU resource name's taint is always added
    /// on GPU deployments. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,

    /// Affinity of the serving pods (`pod.spec.affinity`). Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,

    /// PriorityClass of the serving pods. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority_class_name: Option<String>,

    /// Inference-server image. Default: the operator's `--server-image` (Helm value `server.image`), built in as
    /// `ghcr.io/llama-operator/llama-server:<operator version>` (what `make images` tags).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,

    /// Pull policy of the server image (`Always`, `IfNotPresent` or `Never`). Default: Kubernetes' default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<PullPolicy>,

    /// Extra environment variables of the server container. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,

    /// Sources of extra environment variables of the server container (`envFrom`: whole ConfigMaps or
    /// Secrets). Variables in `env` win over these. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFromSource>,

    /// RuntimeClass of the serving pods (`pod.spec.runtimeClassName`, e.g. `nvidia` where the NVIDIA container
    /// runtime is not the node's default). Default: the node's default runtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class_name: Option<String>,

    /// Secrets for pulling the server (and model) images, added to the operator-wide ones (Helm value
    /// `imagePullSecrets`). Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,

    /// Extra labels of the serving pods. The operator's own labels (`app.kubernetes.io/*` and the
    /// `inference.llama-operator.dev/deployment` selector) cannot be set here. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = Rule::new("self.all(k, !k.startsWith('app.kubernetes.io/') && !k.startsWith('inference.llama-operator.dev/'))").message("spec.podLabels must not set the operator's own labels (app.kubernetes.io/*, inference.llama-operator.dev/*)"))]
    pub pod_labels: BTreeMap<String, String>,

    /// Extra annotations of the serving pods (e.g. for a service mesh or a log shipper). A change rolls the
    /// pods. Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pod_annotations: BTreeMap<String, String>,

    /// Extra labels of the Service (not its selector). The operator's own labels cannot be set here.
    /// Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    #[x_kube(validation = Rule::new("self.all(k, !k.startsWith('app.kubernetes.io/') && !k.startsWith('inference.llama-operator.dev/'))").message("spec.serviceLabels must not set the operator's own labels (app.kubernetes.io/*, inference.llama-operator.dev/*)"))]
    pub service_labels: BTreeMap<String, String>,

    /// Extra annotations of the Service (e.g. a load balancer's or a mesh's). Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub service_annotations: BTreeMap<String, String>,

    /// How serving pods are replaced when the pod template changes. Default: `RollingUpdate`; on CPU
    /// deployments `maxSurge: 1, maxUnavailable: 0` (a new pod is Ready before an old one goes: no capacity
    /// lost), on GPU deployments `maxSurge: 1, maxUnavailable: 1` (a new pod is added when a GPU is free, and
    /// an old one may go at the same time, so a cluster with no spare GPU still makes progress instead of
    /// waiting forever for a surge pod; with one replica that means a gap while the new pod loads — set
    /// `maxUnavailable: 0` where spare GPUs exist, or `Recreate` to never run two versions at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_strategy: Option<RolloutStrategy>,

    /// Extra command-line arguments appended after the derived server flags. Default: none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server_args: Vec<String>,

    /// Secret key holding the API key clients must send (exposed to the server as `LLAMA_API_KEY`).
    /// Default: unset (no authentication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key_secret_ref: Option<SecretKeySelector>,

    /// A Secret whose every key holds an API key clients may send (`Authorization: Bearer <key>`). Mounted into
    /// the server container (`--api-key-file` on the directory) and re-read while serving: adding a key, or
    /// replacing one, takes effect when the kubelet updates the mounted Secret (about a minute), without a
    /// restart. Exclusive with `apiKeySecretRef`. Default: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_keys_secret_ref: Option<LocalObjectReference>,

    /// Create a NetworkPolicy for the serving pods: ingress to the API port only from `from` and from the
    /// operator (its namespace and pods, for the autoscaler's metrics reads). Needs a CNI that enforces
    /// NetworkPolicy; kubelet probes come from the node and are not affected on common CNIs. Default: unset (no
    /// policy).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_policy: Option<NetworkPolicySettings>,

    /// A strategic-merge overlay on the planned pod template (`{metadata: {labels, annotations}, spec: {…}}`),
    /// applied last, for what the spec has no field for: sidecars (`containers` merge by name), extra volumes
    /// and mounts, `hostAliases`, security settings, `topologySpreadConstraints`… `null` deletes a field, an
    /// item with `"$patch": "delete"` a list entry. It may not change what the operator owns — the server
    /// container's command, args, image, ports, probes and lifecycle, the model's init containers and volumes
    /// and their mounts, the operator's labels — or the spec is `Ready=False` (`InvalidSpec`) naming what.
    /// Default: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "preserve_unknown_object")]
    pub pod_template: Option<serde_json::Value>,
}

/// An object whose fields the apiserver keeps as given (the pod template overlay: a partial PodTemplateSpec).
fn preserve_unknown_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// `spec.networkPolicy`.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NetworkPolicySettings {
    /// Who may call the API (NetworkPolicy peers: `podSelector`, `namespaceSelector`, `ipBlock`), e.g. the
    /// gateway's namespace and Prometheus. Empty: only the operator.
    #[serde(default)]
    pub from: Vec<k8s_openapi::api::networking::v1::NetworkPolicyPeer>,
}

/// Where the GGUF weights come from (exactly one of `url`, `pvc`, `image`), and what the model is.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[x_kube(validation = Rule::new("[has(self.url), has(self.pvc), has(self.image)].filter(x, x).size() == 1").message("spec.model must set exactly one of url, pvc or image"))]
#[x_kube(validation = Rule::new("!has(self.sha256) || has(self.url)").message("spec.model.sha256 is only valid with spec.model.url").field_path(".sha256"))]
#[x_kube(validation = Rule::new("!has(self.cache) || has(self.url)").message("spec.model.cache is only valid with spec.model.url").field_path(".cache"))]
#[x_kube(validation = Rule::new("!has(self.headersSecretRef) || has(self.url)").message("spec.model.headersSecretRef is only valid with spec.model.url").field_path(".headersSecretRef"))]
#[x_kube(validation = Rule::new("!has(self.file) || has(self.image)").message("spec.model.file is only valid with spec.model.image").field_path(".file"))]
#[serde(rename_all = "camelCase")]
pub struct ModelSpec {
    /// Name clients use in the OpenAI `model` field (`--served-model-name`). Default: the LlamaDeployment's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,

    /// `http(s)://` URL of a GGUF file, fetched by an init container into a pod-local volume (whose
    /// `ephemeral-storage` request is sized from `sizeBytes` when that is declared), or
    /// `hf://<org>/<repo>[@<revision>]/<file>.gguf`, shorthand for that file's Hugging Face `resolve` URL (revision
    /// default `main`; an `HF_ENDPOINT` in `env` names a mirror). The fetch container gets `env`/`envFrom` too
    /// (proxies, `HF_ENDPOINT`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('http://') || self.startsWith('https://') || self.startsWith('hf://')").message("spec.model.url must start with http://, https:// or hf://"))]
    pub url: Option<String>,

    /// A Secret in the LlamaDeployment's namespace whose keys are HTTP header names and values their values
    /// (e.g. key `Authorization`, value `Bearer hf_…` for a gated Hugging Face repository). Mounted into the
    /// fetch init container only (never the server, never an environment variable); the headers go to the URL's
    /// own origin, not across a redirect to another host, and are never logged. Default: no headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers_secret_ref: Option<LocalObjectReference>,

    /// Keep `url` downloads in a cache shared by pods instead of a pod-local volume, so replicas do not download
    /// the same file twice: `hostPath` (a node directory, writable by uid 65532; one download per node) or
    /// `claimName` (a ReadWriteMany PVC; one download for the whole cluster). Files live under
    /// `<cache>/<sha256-… or url-…>/model.gguf`; concurrent fetches of one file take turns (a lock file), and a
    /// present file with the right `sha256` is used as is. Default: unset (an emptyDir per pod).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<ModelCache>,

    /// Expected SHA-256 of the file at `url` (64 lowercase hex digits); the fetch fails on a mismatch.
    /// Default: unset (not verified).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"))]
    pub sha256: Option<String>,

    /// A PersistentVolumeClaim holding the GGUF file, mounted read-only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pvc: Option<PvcSource>,

    /// `oci://` reference of a model image (a "modelcar": an image with the weights under `/models` and a
    /// POSIX `sh`), run as a sidecar sharing the pod's process namespace; the server reads the weights
    /// through `/proc/<pid>/root/models` without copying them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('oci://') && self.size() > 6").message("spec.model.image must be an oci:// reference"))]
    pub image: Option<String>,

    /// File name of the GGUF weights under the model image's `/models` directory (image source only).
    /// Default: `model.gguf`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("!self.contains('..') && !self.startsWith('/')").message("spec.model.file must be a relative path without '..'"))]
    pub file: Option<String>,

    /// Declared number of parameters (used to estimate the weights' size). Unit: parameters. Default: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0").message("spec.model.parameters must be positive"))]
    pub parameters: Option<i64>,

    /// Declared size of the weights file. Unit: bytes. Default: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0").message("spec.model.sizeBytes must be positive"))]
    pub size_bytes: Option<i64>,

    /// Declared number of attention (query) heads; `tensorParallelSize` must divide it. Default: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0").message("spec.model.heads must be positive"))]
    pub heads: Option<i32>,

    /// Declared number of key/value heads (grouped-query attention); `tensorParallelSize` must divide it.
    /// Default: unset (treated as `heads`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0").message("spec.model.kvHeads must be positive"))]
    pub kv_heads: Option<i32>,

    /// Declared number of transformer layers (used to estimate the KV cache). Default: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0").message("spec.model.layers must be positive"))]
    pub layers: Option<i32>,

    /// Declared hidden size (embedding width); head dimension = hiddenSize / heads. Unit: elements.
    /// Default: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0").message("spec.model.hiddenSize must be positive"))]
    pub hidden_size: Option<i32>,

    /// Declared maximum context length of the model; `maxSeqLen` must not exceed it. Unit: tokens.
    /// Default: unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0").message("spec.model.contextLength must be positive"))]
    pub context_length: Option<i32>,
}

/// Where `url` downloads are kept (exactly one of the two).
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[x_kube(validation = Rule::new("has(self.hostPath) != has(self.claimName)").message("spec.model.cache must set exactly one of hostPath or claimName"))]
#[serde(rename_all = "camelCase")]
pub struct ModelCache {
    /// Absolute directory on each node (created if missing; must be writable by uid 65532).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.startsWith('/') && !self.contains('..')").message("spec.model.cache.hostPath must be an absolute path without '..'"))]
    pub host_path: Option<String>,
    /// A ReadWriteMany PersistentVolumeClaim in the LlamaDeployment's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub claim_name: Option<String>,
}

/// A claim and the path of the GGUF file inside it.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PvcSource {
    /// Name of a PersistentVolumeClaim in the LlamaDeployment's namespace.
    #[x_kube(validation = Rule::new("self.size() > 0").message("spec.model.pvc.claimName must not be empty"))]
    pub claim_name: String,
    /// Path of the GGUF file relative to the claim's root, e.g. `llama/model-q4_k.gguf`.
    #[x_kube(validation = Rule::new("self.size() > 0 && !self.contains('..') && !self.startsWith('/')").message("spec.model.pvc.path must be a non-empty relative path without '..'"))]
    pub path: String,
}

/// GGUF weight formats.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Quantization {
    F16,
    BF16,
    #[default]
    #[serde(rename = "Q8_0")]
    Q8_0,
    #[serde(rename = "Q4_0")]
    Q4_0,
    #[serde(rename = "Q4_1")]
    Q4_1,
    #[serde(rename = "Q4_K")]
    Q4K,
    #[serde(rename = "Q6_K")]
    Q6K,
}

impl Quantization {
    /// Average storage per weight in bits, block scales included (GGUF block layouts).
    pub fn bits_per_weight(self) -> f64 {
        match self {
            Quantization::F16 | Quantization::BF16 => 16.0,
            Quantization::Q8_0 => 8.5,
            Quantization::Q4_0 => 4.5,
            Quantization::Q4_1 => 5.0,
            Quantization::Q4K => 4.5,
            Quantization::Q6K => 6.5625,
        }
    }

    /// Values per quantization block along a row (GGUF block layouts): a tensor-parallel split of a row
    /// must not cut one.
    pub fn block_size(self) -> u64 {
        match self {
            Quantization::F16 | Quantization::BF16 => 1,
            Quantization::Q8_0 | Quantization::Q4_0 | Quantization::Q4_1 => 32,
            Quantization::Q4K | Quantization::Q6K => 256,
        }
    }

    /// The name used in the spec (`Q4_K`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            Quantization::F16 => "F16",
            Quantization::BF16 => "BF16",
            Quantization::Q8_0 => "Q8_0",
            Quantization::Q4_0 => "Q4_0",
            Quantization::Q4_1 => "Q4_1",
            Quantization::Q4K => "Q4_K",
            Quantization::Q6K => "Q6_K",
        }
    }
}

/// Device class of the serving pods.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Accelerator {
    #[default]
    #[serde(rename = "GPU")]
    Gpu,
    #[serde(rename = "CPU")]
    Cpu,
}

/// How the serving pods are replaced (`Deployment.spec.strategy`).
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[x_kube(validation = Rule::new("self.type == 'RollingUpdate' || (!has(self.maxSurge) && !has(self.maxUnavailable))").message("spec.rolloutStrategy.maxSurge and maxUnavailable are only valid with type RollingUpdate"))]
#[serde(rename_all = "camelCase")]
pub struct RolloutStrategy {
    /// `RollingUpdate` (replace pods a few at a time) or `Recreate` (stop every old pod, then start the new
    /// ones: never two versions at once, a gap in service). Default: `RollingUpdate`.
    #[serde(default, rename = "type")]
    pub type_: RolloutType,
    /// Pods above `replicas` during a rolling update: a number or a percentage (`25%`). Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_surge: Option<k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>,
    /// Pods below `replicas` during a rolling update: a number or a percentage. Default: 0 on CPU, 1 on GPU
    /// deployments. `maxSurge` and `maxUnavailable` must not both be 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_unavailable: Option<k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>,
}

/// `spec.rolloutStrategy.type`.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RolloutType {
    #[default]
    RollingUpdate,
    Recreate,
}

/// Image pull policy.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PullPolicy {
    Always,
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            PullPolicy::Always => "Always",
            PullPolicy::IfNotPresent => "IfNotPresent",
            PullPolicy::Never => "Never",
        }
    }
}

/// Per-pod compute resources.
#[derive(KubeSchema, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ResourcesSpec {
    /// CPU request (and limit) of the server container, e.g. `4`. Unit: cores. Default: no limit, and a request
    /// of one core per GPU on `GPU` deployments (`100m` on `CPU`), so a pod is never BestEffort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Memory request (and limit) of the server container, e.g. `16Gi`; the server sizes its KV cache within
    /// the limit. Unit: bytes. Default: no limit, and a request of `2Gi` per GPU on `GPU` deployments (host
    /// memory for loading and the workers; `256Mi` on `CPU`), so a pod is never BestEffort.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// Extended resource name of the GPUs requested on `GPU` deployments. Default: `nvidia.com/gpu`.
    #[serde(default = "default_gpu_resource_name")]
    #[x_kube(validation = Rule::new("self.size() > 0").message("spec.resources.gpuResourceName must not be empty"))]
    pub gpu_resource_name: String,
    /// Size limit of the memory-backed `/dev/shm` volume (tensor-parallel workers exchange activations
    /// through it). Unit: bytes. Default: `1Gi` per GPU (1Gi on CPU).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shm_size: Option<Quantity>,
}

impl Default for ResourcesSpec {
    fn default() -> Self {
        Self {
            cpu: None,
            memory: None,
            gpu_resource_name: default_gpu_resource_name(),
            shm_size: None,
        }
    }
}

/// Observed state, written by the operator's controller and (`queueDepth`, `kvCacheUsage`,
/// `desiredReplicas`, `lastScaleTime` and the scaling conditions) by its autoscaler, each under its own
/// server-side-apply field manager.
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LlamaDeploymentStatus {
    /// Where the pods are: `Pending` (scheduling, waiting for GPUs, pulling), `Downloading` (the `url` model's
    /// fetch), `Loading` (the server loads the weights), `Ready`; `Updating` while a rollout replaces ready pods,
    /// `ScaledToZero`, `Failed` (a pod-level failure: see `Degraded`), `Invalid` (see `Validated`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,

    /// The measured start-up of the pod that became ready most recently.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup: Option<StartupStatus>,

    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Serving pods that exist (scale subresource's status replicas). Unit: pods.
    #[serde(default)]
    pub replicas: i32,
    /// Serving pods that are Ready. Unit: pods.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Serving pods running the current pod template. Unit: pods.
    #[serde(default)]
    pub updated_replicas: i32,
    /// `ready/desired`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready_of_desired: Option<String>,
    /// Label selector of the serving pods (scale subresource's label selector, used by HPA/KEDA).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Served model name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// In-cluster base URL of the OpenAI-compatible API, e.g. `http://name.ns.svc:8000/v1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Mean waiting requests per Ready pod (the server's `llama_requests_waiting`), read by the autoscaler
    /// every scrape interval; absent when no Ready pod answered. Unit: requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_depth: Option<f64>,
    /// Mean KV-cache usage of the Ready pods (the server's `llama_kv_cache_usage_ratio`), the same unit as
    /// `spec.autoscaling.targetKvCacheUsage`; absent when no Ready pod answered. Unit: fraction (0-1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kv_cache_usage: Option<f64>,
    /// Replica count the autoscaler last decided on (after stabilisation, rate limits and bounds); only with
    /// `spec.autoscaling`. Unit: pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// When the autoscaler last changed `spec.replicas`; only with `spec.autoscaling`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
    /// `Ready`, `Available`, `Progressing`, `Degraded` and `Validated` (the controller's), and with
    /// `spec.autoscaling` also `AbleToScale`, `ScalingActive` and `ScalingLimited` (the autoscaler's, with
    /// HorizontalPodAutoscaler's reasons). `lastTransitionTime` changes only when a condition's status
    /// changes. A list map keyed by `type`, so the two writers' server-side applies never clobber each other.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// How long a pod took to serve, from its creation to its Ready condition. Unit: seconds (whole seconds in practice: the kubelet stamps times to the second).
#[derive(JsonSchema, Serialize, Deserialize, Debug, Clone, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StartupStatus {
    /// The pod.
    pub pod: String,
    /// The `url` model's download (the fetch init container's run); unset for other sources.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub download_seconds: Option<f64>,
    /// From the server container's start to ready: loading the weights and sizing the KV cache.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_seconds: Option<f64>,
    /// From the pod's creation to ready: scheduling, image pulls, download and load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_seconds: Option<f64>,
}

fn one() -> i32 {
    1
}
fn default_max_batch_size() -> i32 {
    16
}
fn default_max_seq_len() -> i32 {
    2048
}
fn default_max_batched_tokens() -> i32 {
    2048
}
fn default_block_size() -> i32 {
    16
}
fn default_max_queue() -> i32 {
    256
}
fn default_drain_timeout() -> i32 {
    30
}
fn default_gpu_resource_name() -> String {
    "nvidia.com/gpu".to_owned()
}

/// Parses `kvCacheMemory`-style sizes (`4Gi`, `512M`, `1000`) into bytes; `None` on anything else.
pub fn parse_size(s: &str) -> Option<u64> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (digits, suffix) = s.split_at(split);
    let n: u64 = digits.parse().ok()?;
    let mult: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests;
