//! How much memory `serve` may use and how much of it the KV cache gets: the container's budget on the CPU
//! (`llama_contract::memory`, shared with the operator), the GPU's free memory on a GPU; logged at start and
//! exported as `llama_memory_budget_bytes`.

use candle_core::Device;

use super::ServeArgs;
use crate::cgroup::Limits;
use crate::metrics::Metrics;
use crate::model::ModelConfig;

/// The memory budget `serve` sized itself by (logged at start, exported as `llama_memory_budget_bytes`).
#[derive(Debug, Clone)]
pub(super) struct MemoryReport {
    /// The container's memory limit, if any.
    pub(super) limit: Option<u64>,
    /// Memory the server may use on its compute device, if known.
    pub(super) available: Option<u64>,
    pub(super) weights: u64,
    /// Host headroom for everything but weights and KV (CPU only; a GPU keeps its own reserve).
    pub(super) headroom: u64,
    pub(super) kv_cache: u64,
    pub(super) source: String,
}

/// The KV cache budget in bytes for a model of `cfg` whose weights take `weights` bytes on `device`, the report
/// of how it was found, and the cgroup limits read on the way; an error carries the arithmetic.
pub(super) fn kv_budget(
    args: &ServeArgs,
    cfg: &ModelConfig,
    device: &Device,
    device_name: &str,
    weights: u64,
    per_block: u64,
    want_seq_len: usize,
) -> anyhow::Result<(u64, MemoryReport, Limits)> {
    let enough =
        (args.max_batch_size as u64) * (want_seq_len.div_ceil(args.block_size) as u64) * per_block;
    let mut report = MemoryReport {
        limit: None,
        available: None,
        weights,
        headroom: 0,
        kv_cache: 0,
        source: String::new(),
    };
    let cgroup = crate::cgroup::Limits::current();
    let budget = if device.is_cpu() {
        use llama_contract::memory as mem;
        let host = crate::device::host_budget(
            crate::device::host_memory(),
            cgroup.memory,
            crate::device::own_resident_anon(),
        );
        let headroom = mem::headroom(
            cfg.embedding_length as u64,
            args.max_num_batched_tokens as u64,
            args.max_batch_size as u64,
        );
        report.headroom = headroom;
        // The smallest useful cache: one sequence of --max-seq-len; without the flag the cache bounds the
        // context, down to two blocks.
        let min_kv = match args.max_seq_len {
            Some(_) => want_seq_len.div_ceil(args.block_size) as u64 * per_block,
            None => 2 * per_block,
        };
        match host {
            Some(host) => {
                report.limit = host.limit;
                report.available = Some(host.available);
                report.source = host.source.clone();
                let plan = mem::HostPlan {
                    available: host.available,
                    source: host.source,
                    limited: host.limited,
                    weights,
                    headroom,
                    min_kv,
                    enough_kv: enough,
                    explicit_kv: args.kv_cache_memory,
                    fraction: args.kv_cache_fraction,
                };
                mem::host_kv_budget(&plan).map_err(|why| {
                    anyhow::anyhow!(
                        "the model and its KV cache do not fit in the memory this server may use: {why}; \
                         raise the container's memory limit (resources.memory), or lower {}, \
                         --max-batch-size or --max-num-batched-tokens, or use a smaller quantization",
                        if args.kv_cache_memory.is_some() {
                            "--kv-cache-memory"
                        } else {
                            "--max-seq-len"
                        }
                    )
                })?
            }
            // Nothing to check against (no /proc): an explicit size, else the host default.
            None => args.kv_cache_memory.unwrap_or(enough.min(mem::HOST_KV_CAP)),
        }
    } else {
        let sizing = crate::device::KvSizing {
            explicit: args.kv_cache_memory,
            fraction: args
                .kv_cache_fraction
                .unwrap_or(crate::device::GPU_KV_FRACTION),
            enough,
            weights,
        };
        let memory = crate::device::memory(device);
        report.available = memory.map(|m| m.free);
        report.source = format!("free memory of {device_name}");
        crate::device::gpu_kv_budget(device_name, memory, &sizing)
            .map_err(|e| anyhow::anyhow!("{e}"))?
    };
    Ok((budget, report, cgroup))
}

impl MemoryReport {
    /// The start-up log line `memory budget`.
    pub(super) fn log(&self, cgroup: &Limits) {
        use llama_contract::memory::human;
        let opt = |b: Option<u64>| b.map_or_else(|| "none".to_owned(), human);
        tracing::info!(
            limit = %opt(self.limit),
            available = %opt(self.available),
            weights = %human(self.weights),
            kv_cache = %human(self.kv_cache),
            headroom = %human(self.headroom),
            threads = rayon::current_num_threads(),
            cpu_quota = %cgroup.cpu.map_or_else(
                || "none".to_owned(),
                |c| c.cores.map_or_else(
                    || format!("none (cgroup {})", c.version.as_str()),
                    |n| format!("{n:.2} cores (cgroup {})", c.version.as_str()),
                ),
            ),
            source = %self.source,
            "memory budget"
        );
    }

    /// `llama_memory_budget_bytes{part}` and `llama_compute_threads`.
    pub(super) fn export(&self, metrics: &Metrics) {
        metrics
            .compute_threads
            .set(rayon::current_num_threads() as i64);
        for (part, bytes) in [
            ("limit", self.limit),
            ("available", self.available),
            ("weights", Some(self.weights)),
            ("kv_cache", Some(self.kv_cache)),
            ("headroom", Some(self.headroom)),
        ] {
            if let Some(b) = bytes {
                metrics
                    .memory_budget
                    .with_label_values(&[part])
                    .set(b as i64);
            }
        }
    }
}
