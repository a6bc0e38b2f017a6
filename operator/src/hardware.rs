//! Validation of a spec against the cluster's hardware, before anything is scheduled (pure).
//!
//! Checks, in order: tensor parallelism divides the declared heads and KV heads; a pod's GPUs
//! (= `tensorParallelSize`) fit the allocatable GPUs of some node matching `nodeSelector`; and, with declared
//! sizes, weights + KV cache per GPU fit the GPU memory advertised by the `nvidia.com/gpu.memory` node label.
//! A failure carries a stable reason and a message with the arithmetic.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::Node;

use crate::crd::{Accelerator, LlamaDeploymentSpec, parse_size};

/// Node label with the memory of one GPU in MiB (set by NVIDIA's GPU feature discovery).
pub const GPU_MEMORY_LABEL: &str = "nvidia.com/gpu.memory";

/// Bytes per KV-cache element (the server stores K and V in f16).
const KV_BYTES_PER_ELEMENT: u64 = 2;

/// What the validation needs to know about one node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NodeFacts {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Allocatable GPUs per extended resource name.
    pub allocatable: BTreeMap<String, i64>,
    pub unschedulable: bool,
}

impl NodeFacts {
    /// Reads the facts from a Node object (allocatable quantities that are not whole numbers count as 0).
    pub fn from_node(node: &Node) -> Self {
        let allocatable = node
            .status
            .as_ref()
            .and_then(|s| s.allocatable.as_ref())
            .map(|a| {
                a.iter()
                    .map(|(k, q)| (k.clone(), q.0.parse::<i64>().unwrap_or(0)))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            name: node.metadata.name.clone().unwrap_or_default(),
            labels: node.metadata.labels.clone().unwrap_or_default(),
            allocatable,
            unschedulable: node
                .spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false),
        }
    }

    /// A hash of everything validation reads: changes of it (not heartbeats) re-trigger validation.
    pub fn fingerprint(node: &Node) -> Option<u64> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        Self::from_node(node).hash(&mut h);
        Some(h.finish())
    }

    fn gpu_memory_bytes(&self) -> Option<u64> {
        self.labels
            .get(GPU_MEMORY_LABEL)?
            .parse::<u64>()
            .ok()
            .map(|mib| mib << 20)
    }
}

/// Why a spec cannot run on this cluster.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HardwareError {
    #[error("{0}")]
    TensorParallelMismatch(String),
    #[error("{0}")]
    InsufficientGpus(String),
    #[error("{0}")]
    InsufficientGpuMemory(String),
    #[error("{0}")]
    InsufficientMemory(String),
    #[error("{0}")]
    InvalidSpec(String),
}

impl HardwareError {
    /// Stable CamelCase reason for conditions and events.
    pub fn reason(&self) -> &'static str {
        match self {
            HardwareError::TensorParallelMismatch(_) => "TensorParallelMismatch",
            HardwareError::InsufficientGpus(_) => "InsufficientGPUs",
            HardwareError::InsufficientGpuMemory(_) => "InsufficientGPUMemory",
            HardwareError::InsufficientMemory(_) => "InsufficientMemory",
            HardwareError::InvalidSpec(_) => "InvalidSpec",
        }
    }
}

/// A successful validation, with what was checked (the `Validated` condition's message).
#[derive(Debug, Clone, PartialEq)]
pub struct Fit {
    pub message: String,
}

/// Bytes, printed in GiB with one decimal.
struct GiB(f64);

impl fmt::Display for GiB {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.1} GiB", self.0 / f64::from(1u32 << 30))
    }
}

/// Estimated per-pod memory needs of a spec.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryEstimate {
    pub weights_bytes: Option<u64>,
    pub kv_bytes: Option<u64>,
}

/// Weights from `sizeBytes` (or `parameters × bits per weight`); KV from `kvCacheMemory` (or
/// `2 × layers × kvHeads × headDim × 2 bytes × maxBatchSize × maxSeqLen`).
pub fn estimate_memory(spec: &LlamaDeploymentSpec) -> MemoryEstimate {
    let m = &spec.model;
    let weights_bytes = m
        .size_bytes
        .and_then(|b| u64::try_from(b).ok())
        .or_else(|| {
            let params = m.parameters? as f64;
            Some((params * spec.quantization.bits_per_weight() / 8.0).ceil() as u64)
        });
    let kv_bytes = match spec.kv_cache_memory.as_deref() {
        Some(s) => parse_size(s),
        None => estimate_kv_bytes(spec),
    };
    MemoryEstimate {
        weights_bytes,
        kv_bytes,
    }
}

fn estimate_kv_bytes(spec: &LlamaDeploymentSpec) -> Option<u64> {
    let m = &spec.model;
    let layers = u64::try_from(m.layers?).ok()?;
    let heads = u64::try_from(m.heads?).ok()?;
    let kv_heads = u64::try_from(m.kv_heads.unwrap_or(m.heads?)).ok()?;
    let head_dim = u64::try_from(m.hidden_size?).ok()? / heads.max(1);
    let tokens = u64::try_from(spec.max_batch_size).ok()? * u64::try_from(spec.max_seq_len).ok()?;
    Some(2 * layers * kv_heads * head_dim * KV_BYTES_PER_ELEMENT * tokens)
}

/// A CPU pod's memory: `resources.memory` (its container limit) must hold the weights, the headroom and the
/// KV cache (`kvCacheMemory`, else one full `maxSeqLen` sequence) — the server's own start-up arithmetic
/// (`llama_contract::memory::host_kv_budget`), so a spec that would exit at start is refused here instead of
/// crash-looping. `Ok` says what was checked (or why it could not be).
pub fn host_memory_fit(spec: &LlamaDeploymentSpec) -> Result<String, HardwareError> {
    use llama_contract::memory as mem;
    let Some(limit) = spec.resources.memory.as_ref() else {
        return Ok("CPU deployment without resources.memory: memory not checked".to_owned());
    };
    let Some(available) = parse_size(&limit.0) else {
        return Err(HardwareError::InvalidSpec(format!(
            "resources.memory {:?} is not a size like 4Gi",
            limit.0
        )));
    };
    let m = &spec.model;
    let est = estimate_memory(spec);
    let pos = |v: Option<i32>| v.and_then(|n| u64::try_from(n).ok()).filter(|n| *n > 0);
    let per_token = (|| {
        let (layers, heads, hidden) = (pos(m.layers)?, pos(m.heads)?, pos(m.hidden_size)?);
        let kv_heads = pos(m.kv_heads).unwrap_or(heads);
        Some(mem::kv_bytes_per_token(
            layers,
            kv_heads,
            hidden / heads,
            KV_BYTES_PER_ELEMENT,
        ))
    })();
    let (Some(weights), Some(hidden)) = (est.weights_bytes, pos(m.hidden_size)) else {
        return Ok(format!(
            "resources.memory {}: model.sizeBytes (or parameters) and model.hiddenSize not declared, memory \
             not checked",
            limit.0
        ));
    };
    let block = u64::try_from(spec.block_size).unwrap_or(16).max(1);
    let seq = u64::try_from(spec.max_seq_len).unwrap_or(0);
    let batch = u64::try_from(spec.max_batch_size).unwrap_or(0);
    let explicit_kv = spec.kv_cache_memory.as_deref().and_then(parse_size);
    let Some(min_kv) = per_token
        .map(|t| mem::kv_bytes_for_sequence(t, seq, block))
        .or(explicit_kv)
    else {
        return Ok(format!(
            "resources.memory {}: model.layers/heads/kvHeads not declared, KV cache not checked",
            limit.0
        ));
    };
    let plan = mem::HostPlan {
        available,
        source: format!("resources.memory {}", limit.0),
        limited: true,
        weights,
        headroom: mem::headroom(
            hidden,
            u64::try_from(spec.max_batched_tokens).unwrap_or(0),
            batch,
        ),
        min_kv,
        enough_kv: per_token.map_or(min_kv, |t| {
            batch * mem::kv_bytes_for_sequence(t, seq, block)
        }),
        explicit_kv,
        fraction: None,
    };
    match mem::host_kv_budget(&plan) {
        Ok(kv) => Ok(format!(
            "resources.memory {}: weights {} + headroom {} + KV cache {} fit",
            limit.0,
            mem::human(weights),
            mem::human(plan.headroom),
            mem::human(kv)
        )),
        Err(why) => Err(HardwareError::InsufficientMemory(format!(
            "spec.resources.memory: {why}, {}; raise resources.memory or lower {}",
            if explicit_kv.is_none() {
                format!("with spec.maxSeqLen {seq}")
            } else {
                "with spec.kvCacheMemory".to_owned()
            },
            if explicit_kv.is_none() {
                "maxSeqLen, maxBatchSize or maxBatchedTokens"
            } else {
                "kvCacheMemory"
            }
        ))),
    }
}

/// Validates `spec` against `nodes`: the tensor-parallel split (the server's own arithmetic, from
/// `llama_contract::tensor_parallel`), then GPUs and GPU memory.
pub fn validate(spec: &LlamaDeploymentSpec, nodes: &[NodeFacts]) -> Result<Fit, HardwareError> {
    fit(spec, nodes)
}

/// Whether `spec` fits `nodes`: TP divides the heads, enough GPUs per node, weights + KV fit GPU memory.
pub fn fit(spec: &LlamaDeploymentSpec, nodes: &[NodeFacts]) -> Result<Fit, HardwareError> {
    let tp = spec.tensor_parallel_size;
    if tp < 1 {
        return Err(HardwareError::InvalidSpec(format!(
            "tensorParallelSize {tp} must be at least 1"
        )));
    }
    if let Some(size) = spec.kv_cache_memory.as_deref()
        && parse_size(size).is_none()
    {
        return Err(HardwareError::InvalidSpec(format!(
            "kvCacheMemory {size:?} is not a size like 4Gi"
        )));
    }
    if let Some(k8s_openapi::api::apps::v1::RollingUpdateDeployment {
        max_surge,
        max_unavailable,
    }) = crate::plan::strategy(spec).rolling_update
    {
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        let zero = |v: &Option<IntOrString>| match v {
            Some(IntOrString::Int(0)) => true,
            Some(IntOrString::String(p)) => p.trim_end_matches('%').trim().parse::<i64>() == Ok(0),
            _ => false,
        };
        if zero(&max_surge) && zero(&max_unavailable) {
            return Err(HardwareError::InvalidSpec(
                "spec.rolloutStrategy: maxSurge and maxUnavailable are both 0, so no pod could ever be \
                 replaced; allow one of them (maxSurge needs spare capacity, maxUnavailable costs a serving pod \
                 during the rollout)"
                    .to_owned(),
            ));
        }
    }
    let mut checked = Vec::new();
    let heads = spec.model.heads;
    let kv_heads = spec.model.kv_heads.or(heads);
    let tp_u = u64::from(tp.unsigned_abs());
    let mismatch = |why: String| {
        HardwareError::TensorParallelMismatch(format!(
            "spec.tensorParallelSize {tp}: {why}; choose a tensorParallelSize that divides both heads and \
             kvHeads and leaves each GPU whole quantization blocks"
        ))
    };
    for (field, value) in [("model.heads", heads), ("model.kvHeads", kv_heads)] {
        if let Some(n) = value.and_then(|n| u64::try_from(n).ok()) {
            let ok = llama_contract::tensor_parallel::divides(tp_u, field, n).map_err(mismatch)?;
            checked.push(ok);
        }
    }
    // The attention output projection is split by its input columns (hiddenSize): whole blocks per GPU.
    if let Some(hidden) = spec.model.hidden_size.and_then(|n| u64::try_from(n).ok()) {
        let what = format!("model.hiddenSize ({})", spec.quantization.as_str());
        let block = spec.quantization.block_size();
        let ok = llama_contract::tensor_parallel::whole_blocks(tp_u, &what, hidden, block)
            .map_err(mismatch)?;
        if tp > 1 {
            checked.push(ok);
        }
    }
    if spec.accelerator == Accelerator::Cpu {
        checked.push(host_memory_fit(spec)?);
        return Ok(Fit {
            message: checked.join("; "),
        });
    }

    let resource = spec.resources.gpu_resource_name.as_str();
    let candidates: Vec<&NodeFacts> = nodes
        .iter()
        .filter(|n| !n.unschedulable)
        .filter(|n| {
            spec.node_selector
                .iter()
                .all(|(k, v)| n.labels.get(k) == Some(v))
        })
        .collect();
    let selector_note = if spec.node_selector.is_empty() {
        ""
    } else {
        " matching nodeSelector"
    };
    let largest = candidates
        .iter()
        .filter_map(|n| n.allocatable.get(resource).map(|g| (*g, n.name.as_str())))
        .max_by_key(|(g, name)| (*g, std::cmp::Reverse(*name)));
    let fitting: Vec<&NodeFacts> = candidates
        .iter()
        .copied()
        .filter(|n| {
            n.allocatable
                .get(resource)
                .is_some_and(|g| *g >= i64::from(tp))
        })
        .collect();
    if fitting.is_empty() {
        let msg = match largest {
            Some((g, name)) if g > 0 => format!(
                "tensorParallelSize {tp} needs {tp} {resource} per pod, but the largest node{selector_note} \
                 offers {g} ({name}: {g} < {tp})"
            ),
            _ => format!(
                "tensorParallelSize {tp} needs {tp} {resource} per pod, but no schedulable node{selector_note} \
                 offers {resource} ({} nodes considered)",
                candidates.len()
            ),
        };
        return Err(HardwareError::InsufficientGpus(msg));
    }
    checked.push(format!(
        "{tp} {resource} per pod fit {} node(s)",
        fitting.len()
    ));

    let est = estimate_memory(spec);
    let Some(weights) = est.weights_bytes else {
        checked.push("weights size not declared: GPU memory not checked".to_owned());
        return Ok(Fit {
            message: checked.join("; "),
        });
    };
    let kv = est.kv_bytes.unwrap_or(0);
    let per_gpu = weights.div_ceil(tp_u) + kv.div_ceil(tp_u);
    let arithmetic = format!(
        "weights {} / TP {tp} + KV cache {} / TP {tp} = {} per GPU",
        GiB(weights as f64),
        GiB(kv as f64),
        GiB(per_gpu as f64)
    );
    let with_memory: Vec<(&NodeFacts, u64)> = fitting
        .iter()
        .filter_map(|n| n.gpu_memory_bytes().map(|m| (*n, m)))
        .collect();
    if with_memory.is_empty() {
        checked.push(format!(
            "{arithmetic}; GPU memory unknown (no {GPU_MEMORY_LABEL} label): not checked"
        ));
        return Ok(Fit {
            message: checked.join("; "),
        });
    }
    match with_memory
        .iter()
        .filter(|(_, m)| *m >= per_gpu)
        .max_by_key(|(_, m)| *m)
    {
        Some((node, mem)) => {
            checked.push(format!(
                "{arithmetic} fits {} ({} per GPU)",
                node.name,
                GiB(*mem as f64)
            ));
            Ok(Fit {
                message: checked.join("; "),
            })
        }
        None => {
            let (node, mem) = with_memory
                .iter()
                .max_by_key(|(_, m)| *m)
                .copied()
                .unwrap_or((fitting[0], 0));
            Err(HardwareError::InsufficientGpuMemory(format!(
                "{arithmetic} exceeds the largest GPU memory {} ({}); raise tensorParallelSize, lower \
                 maxBatchSize × maxSeqLen or kvCacheMemory, or use a smaller quantization",
                GiB(mem as f64),
                node.name
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::{LlamaDeploymentSpec, Quantization};

    fn spec(json: serde_json::Value) -> LlamaDeploymentSpec {
        serde_json::from_value(json).expect("valid spec")
    }

    fn gpu_node(name: &str, gpus: i64, mem_mib: Option<u64>) -> NodeFacts {
        let mut labels = BTreeMap::from([("nvidia.com/gpu.present".to_owned(), "true".to_owned())]);
        if let Some(m) = mem_mib {
            labels.insert(GPU_MEMORY_LABEL.to_owned(), m.to_string());
        }
        NodeFacts {
            name: name.to_owned(),
            labels,
            allocatable: BTreeMap::from([
                ("nvidia.com/gpu".to_owned(), gpus),
                ("cpu".to_owned(), 32),
            ]),
            unschedulable: false,
        }
    }

    fn cpu_node() -> NodeFacts {
        NodeFacts {
            name: "cpu-node-0".to_owned(),
            labels: BTreeMap::new(),
            allocatable: BTreeMap::from([("cpu".to_owned(), 16)]),
            unschedulable: false,
        }
    }

    fn cluster() -> Vec<NodeFacts> {
        vec![gpu_node("gpu-node-0", 8, Some(81559)), cpu_node()]
    }

    fn smollm(tp: i32) -> LlamaDeploymentSpec {
        spec(serde_json::json!({
            "model": {"url": "https://example.com/smollm2.gguf", "heads": 9, "kvHeads": 3, "layers": 30,
                      "hiddenSize": 576, "sizeBytes": 145_000_000},
            "tensorParallelSize": tp
        }))
    }

    #[test]
    fn tensor_parallel_size_two_is_refused_for_nine_heads_with_the_arithmetic() {
        let err = validate(&smollm(2), &cluster()).expect_err("9 heads cannot split in 2");
        assert_eq!(err.reason(), "TensorParallelMismatch");
        assert!(
            err.to_string()
                .contains("tensor-parallel size 2 does not divide model.heads 9 (9 % 2 = 1)"),
            "{err}"
        );
    }

    #[test]
    fn tensor_parallel_size_must_also_divide_kv_heads() {
        let err = validate(&smollm(9), &[gpu_node("big", 16, None)])
            .expect_err("3 kv heads cannot split in 9");
        assert!(
            err.to_string()
                .contains("does not divide model.kvHeads 3 (3 % 9 = 3)"),
            "{err}"
        );
    }

    #[test]
    fn sixteen_gpus_per_pod_do_not_fit_a_node_with_eight() {
        let mut s = smollm(1);
        s.model.heads = Some(32);
        s.model.kv_heads = Some(16);
        s.model.hidden_size = Some(4096);
        s.tensor_parallel_size = 16;
        let err = validate(&s, &cluster()).expect_err("no node has 16 GPUs");
        assert_eq!(err.reason(), "InsufficientGPUs");
        assert_eq!(
            err.to_string(),
            "tensorParallelSize 16 needs 16 nvidia.com/gpu per pod, but the largest node offers 8 \
             (gpu-node-0: 8 < 16)"
        );
    }

    #[test]
    fn a_cluster_without_gpus_says_so() {
        let err = validate(&smollm(1), &[cpu_node()]).expect_err("no GPUs");
        assert!(
            err.to_string()
                .contains("no schedulable node offers nvidia.com/gpu (1 nodes considered)"),
            "{err}"
        );
    }

    #[test]
    fn node_selector_limits_the_nodes_considered() {
        let mut s = smollm(1);
        s.node_selector.insert("pool".to_owned(), "a100".to_owned());
        let err = validate(&s, &cluster()).expect_err("no node in that pool");
        assert!(
            err.to_string()
                .contains("no schedulable node matching nodeSelector offers"),
            "{err}"
        );
    }

    #[test]
    fn a_small_model_fits_and_the_message_shows_the_arithmetic() {
        let fit = validate(&smollm(1), &cluster()).expect("fits");
        assert!(
            fit.message.contains("fits gpu-node-0 (79.6 GiB per GPU)"),
            "{}",
            fit.message
        );
        assert!(
            fit.message.contains("model.heads 9 divisible by 1"),
            "{}",
            fit.message
        );
    }

    #[test]
    fn a_seventy_billion_model_in_f16_does_not_fit_one_h100() {
        let s = spec(serde_json::json!({
            "model": {"pvc": {"claimName": "m", "path": "l70b.gguf"}, "parameters": 70_000_000_000_i64,
                      "heads": 64, "kvHeads": 8, "layers": 80, "hiddenSize": 8192},
            "quantization": "F16", "maxBatchSize": 8, "maxSeqLen": 4096
        }));
        let err = validate(&s, &cluster()).expect_err("140 GB of weights on one 80 GB GPU");
        assert_eq!(err.reason(), "InsufficientGPUMemory");
        assert!(
            err.to_string().starts_with("weights 130.4 GiB / TP 1 + KV cache 10.0 GiB / TP 1 = 140.4 GiB per GPU exceeds the largest GPU memory 79.6 GiB (gpu-node-0)"),
            "{err}"
        );
    }

    /// A 70B F16 model split over four GPUs (35 GiB per GPU).
    fn l70b_f16_tp4() -> LlamaDeploymentSpec {
        spec(serde_json::json!({
            "model": {"pvc": {"claimName": "m", "path": "l70b.gguf"}, "parameters": 70_000_000_000_i64,
                      "heads": 64, "kvHeads": 8, "layers": 80, "hiddenSize": 8192},
            "quantization": "F16", "maxBatchSize": 8, "maxSeqLen": 4096, "tensorParallelSize": 4
        }))
    }

    #[test]
    fn the_same_model_split_over_four_gpus_fits() {
        let s = l70b_f16_tp4();
        let fit = fit(&s, &cluster()).expect("35 GiB per GPU fits");
        assert!(
            fit.message.contains("= 35.1 GiB per GPU fits gpu-node-0"),
            "{}",
            fit.message
        );
    }

    #[test]
    fn tensor_parallel_fits_now_that_the_server_runs_it() {
        let fit =
            validate(&l70b_f16_tp4(), &cluster()).expect("TP 4 of 64 heads on 8-GPU nodes fits");
        assert!(
            fit.message.contains("model.heads 64 divisible by 4"),
            "{}",
            fit.message
        );
    }

    #[test]
    fn a_tensor_parallel_size_that_cuts_quantization_blocks_is_refused_with_the_servers_arithmetic()
    {
        let mut s = smollm(3);
        s.quantization = Quantization::Q4K;
        let err =
            validate(&s, &[gpu_node("big", 8, None)]).expect_err("576 / 3 = 192 cuts a 256 block");
        assert_eq!(err.reason(), "TensorParallelMismatch");
        let want =
            llama_contract::tensor_parallel::whole_blocks(3, "model.hiddenSize (Q4_K)", 576, 256)
                .expect_err("the contract refuses it too");
        assert!(err.to_string().contains(&want), "{err}");
        s.quantization = Quantization::Q4_1;
        validate(&s, &[gpu_node("big", 8, None)]).expect("576 / 3 = 192 is six Q4_1 blocks");
    }

    #[test]
    fn declared_kv_cache_memory_replaces_the_estimate() {
        let mut s = smollm(1);
        s.kv_cache_memory = Some("100Gi".to_owned());
        let err = validate(&s, &cluster()).expect_err("100 GiB of KV on an 80 GiB GPU");
        assert_eq!(err.reason(), "InsufficientGPUMemory");
    }

    #[test]
    fn unknown_gpu_memory_is_not_a_failure() {
        let fit = validate(&smollm(1), &[gpu_node("g", 1, None)]).expect("fits");
        assert!(
            fit.message.contains("GPU memory unknown"),
            "{}",
            fit.message
        );
    }

    #[test]
    fn cpu_deployments_skip_gpu_checks() {
        let mut s = smollm(1);
        s.accelerator = Accelerator::Cpu;
        assert!(validate(&s, &[cpu_node()]).is_ok());
    }

    /// SmolLM2-135M Q4_1 on a CPU pod: the numbers of the real file (98,362,432 bytes, 576 wide, 30 layers of
    /// 3 KV heads of 64).
    fn cpu_smollm(memory: &str, max_seq_len: i32) -> LlamaDeploymentSpec {
        spec(serde_json::json!({
            "model": {"url": "https://example.com/smollm2.gguf", "heads": 9, "kvHeads": 3, "layers": 30,
                      "hiddenSize": 576, "sizeBytes": 98_362_432},
            "accelerator": "CPU",
            "resources": {"memory": memory},
            "maxBatchSize": 16,
            "maxBatchedTokens": 512,
            "maxSeqLen": max_seq_len,
        }))
    }

    #[test]
    fn a_cpu_pod_whose_memory_cannot_hold_weights_headroom_and_one_sequence_is_refused_with_the_arithmetic()
     {
        // Headroom 128 MiB + 512 × 576 × 160 + 16 × 256 KiB = 177 MiB; one 8192-token sequence of 23,040
        // bytes per token = 180 MiB; weights 94 MiB. 451 MiB in all.
        let err = validate(&cpu_smollm("400Mi", 8192), &[]).expect_err("too small");
        assert_eq!(err.reason(), "InsufficientMemory");
        assert_eq!(
            err.to_string(),
            "spec.resources.memory: weights 94 MiB + headroom 177 MiB + KV cache for one full-length sequence \
             180 MiB = 451 MiB does not fit in 400 MiB (resources.memory 400Mi), with spec.maxSeqLen 8192; \
             raise resources.memory or lower maxSeqLen, maxBatchSize or maxBatchedTokens"
        );
        // The same pod with sequences of 2048 tokens fits, and says what it checked.
        let ok = validate(&cpu_smollm("400Mi", 2048), &[]).expect("fits");
        assert!(
            ok.message
                .contains("resources.memory 400Mi: weights 94 MiB + headroom 177 MiB + KV cache"),
            "{}",
            ok.message
        );
        // An explicit kvCacheMemory is checked as given.
        let mut s = cpu_smollm("1Gi", 2048);
        s.kv_cache_memory = Some("900Mi".to_owned());
        let err = validate(&s, &[]).expect_err("kv too big");
        assert!(
            err.to_string().contains(
                "weights 94 MiB + headroom 177 MiB + KV cache 900 MiB = 1171 MiB does not fit in 1024 MiB \
                 (resources.memory 1Gi), with spec.kvCacheMemory; raise resources.memory or lower kvCacheMemory"
            ),
            "{err}"
        );
    }

    #[test]
    fn a_rolling_update_that_can_neither_surge_nor_drop_a_pod_is_refused() {
        let mut s = cpu_smollm("1Gi", 2048);
        s.rollout_strategy = Some(
            serde_json::from_value(serde_json::json!({"maxSurge": 0, "maxUnavailable": "0%"}))
                .expect("strategy"),
        );
        let err = validate(&s, &[]).expect_err("stuck");
        assert_eq!(err.reason(), "InvalidSpec");
        assert!(
            err.to_string()
                .starts_with("spec.rolloutStrategy: maxSurge and maxUnavailable are both 0"),
            "{err}"
        );
        // CPU's default unavailable is 0: a surge of 0 alone is stuck too.
        s.rollout_strategy =
            Some(serde_json::from_value(serde_json::json!({"maxSurge": 0})).expect("strategy"));
        assert!(validate(&s, &[]).is_err());
        s.rollout_strategy = Some(
            serde_json::from_value(serde_json::json!({"maxSurge": 0, "maxUnavailable": 1}))
                .expect("strategy"),
        );
        assert!(validate(&s, &[]).is_ok());
        s.rollout_strategy = Some(
            serde_json::from_value(serde_json::json!({"type": "Recreate"})).expect("strategy"),
        );
        assert!(validate(&s, &[]).is_ok());
    }

    #[test]
    fn cpu_memory_is_not_checked_without_a_limit_or_declared_sizes() {
        let mut s = cpu_smollm("1Gi", 2048);
        s.resources.memory = None;
        assert!(
            validate(&s, &[])
                .expect("ok")
                .message
                .contains("memory not checked")
        );
        let mut s = cpu_smollm("64Mi", 2048);
        s.model.size_bytes = None;
        let fit = validate(&s, &[]).expect("not checked, not refused");
        assert!(
            fit.message.contains("not declared, memory not checked"),
            "{}",
            fit.message
        );
        let mut s = cpu_smollm("64Mi", 2048);
        s.resources.memory = Some(k8s_openapi::apimachinery::pkg::api::resource::Quantity(
            "lots".into(),
        ));
        assert_eq!(validate(&s, &[]).expect_err("bad").reason(), "InvalidSpec");
    }

    #[test]
    fn weights_are_estimated_from_parameters_and_quantization() {
        let mut s = smollm(1);
        s.model.size_bytes = None;
        s.model.parameters = Some(1_000_000_000);
        s.quantization = Quantization::Q4_0;
        assert_eq!(estimate_memory(&s).weights_bytes, Some(562_500_000));
    }

    #[test]
    fn unschedulable_nodes_are_ignored() {
        let mut n = gpu_node("cordoned", 8, None);
        n.unschedulable = true;
        assert_eq!(
            validate(&smollm(1), &[n]).expect_err("cordoned").reason(),
            "InsufficientGPUs"
        );
    }
}
