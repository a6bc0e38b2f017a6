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
    if spec.pod_template.is_some()
        && let Some(e) = crate::plan::overlay_error(&crate::crd::LlamaDeployment::new(
            "overlay-check",
            spec.clone(),
        ))
    {
        return Err(HardwareError::InvalidSpec(e));
    }
    if let Some(url) = spec.model.url.as_deref() {
        let endpoint = spec
            .env
            .iter()
            .find(|e| e.name == llama_contract::model_url::HF_ENDPOINT_ENV)
            .and_then(|e| e.value.as_deref());
        if let Err(e) = llama_contract::model_url::resolve(url, endpoint) {
            return Err(HardwareError::InvalidSpec(format!("model.url: {e}")));
        }
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
mod tests;
