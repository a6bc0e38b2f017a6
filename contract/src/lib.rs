//! The operator↔server contract, defined once. The server declares its flags, routes and metrics with these
//! names; the operator plans pods and scrapes metrics with the same names. Renaming anything here changes
//! both sides at once; removing it breaks the build of whichever side still uses it. The operator's tests also
//! parse every planned Deployment's arguments with the server's own CLI parser.

/// Port the server listens on inside a pod (container port and Service port).
pub const HTTP_PORT: u16 = 8000;
/// Name of the container port (probes and the Service's `targetPort` refer to it).
pub const HTTP_PORT_NAME: &str = "http";

/// HTTP paths the kubelet and the operator call.
pub mod paths {
    /// 200 once the model is loaded and the engine runs; 503 while loading or draining (readiness, startup).
    pub const READY: &str = "/ready";
    /// 200 while the process is alive and its engine thread answers (liveness).
    pub const HEALTH: &str = "/health";
    /// Prometheus text exposition.
    pub const METRICS: &str = "/metrics";
}

/// Executable inside the server image and its subcommands.
pub mod cmd {
    /// The binary on `PATH` in the server image.
    pub const BINARY: &str = "llama-server";
    /// Serve the OpenAI API.
    pub const SERVE: &str = "serve";
    /// Download a model file (the `url` model source's init container).
    pub const FETCH: &str = "fetch";
}

/// Long flag names (without the leading `--`) of `llama-server serve` that the operator emits.
pub mod serve_flags {
    pub const MODEL: &str = "model";
    pub const HOST: &str = "host";
    pub const PORT: &str = "port";
    pub const SERVED_MODEL_NAME: &str = "served-model-name";
    pub const TENSOR_PARALLEL_SIZE: &str = "tensor-parallel-size";
    pub const MAX_BATCH_SIZE: &str = "max-batch-size";
    pub const MAX_SEQ_LEN: &str = "max-seq-len";
    pub const MAX_NUM_BATCHED_TOKENS: &str = "max-num-batched-tokens";
    pub const KV_CACHE_MEMORY: &str = "kv-cache-memory";
    pub const BLOCK_SIZE: &str = "block-size";
    pub const MAX_QUEUE: &str = "max-queue";
    pub const DRAIN_TIMEOUT: &str = "drain-timeout";
    pub const THREADS: &str = "threads";
    pub const LOG_FORMAT: &str = "log-format";
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub const DEVICE: &str = "device";
}

/// Long flag names of `llama-server fetch`.
pub mod fetch_flags {
    pub const URL: &str = "url";
    pub const SHA256: &str = "sha256";
    pub const OUT: &str = "out";
}

/// Environment variables the operator sets on the server container.
pub mod env {
    /// Bearer key required on the API (from the LlamaDeployment's `apiKeySecretRef`).
    pub const API_KEY: &str = "LLAMA_API_KEY";
}

/// Prometheus metric names the operator reads (the server registers them under exactly these names).
pub mod metrics {
    /// Gauge: requests queued, not yet admitted to a batch. Unit: requests.
    pub const REQUESTS_WAITING: &str = "llama_requests_waiting";
    /// Gauge: requests in the running batch. Unit: requests.
    pub const REQUESTS_RUNNING: &str = "llama_requests_running";
    /// Gauge: fraction of KV-cache blocks in use, 0–1.
    pub const KV_CACHE_USAGE: &str = "llama_kv_cache_usage_ratio";
    /// Gauge: 1 while the server drains after SIGTERM.
    pub const DRAINING: &str = "llama_draining";
    /// Gauge: the server's `--tensor-parallel-size` (the operator sets it from `spec.tensorParallelSize`).
    pub const TENSOR_PARALLEL_SIZE: &str = "llama_tensor_parallel_size";
}

/// The arithmetic of a tensor-parallel split, applied by the server at start (to the GGUF's numbers) and by
/// the operator's validation (to the LlamaDeployment's), so both refuse the same sizes with the same sentence.
pub mod tensor_parallel {
    /// `tp` ranks each take `n / tp` of `what` (attention heads, KV heads, rows): `tp` must divide `n`.
    /// `Ok` says what was checked.
    pub fn divides(tp: u64, what: &str, n: u64) -> Result<String, String> {
        if tp == 0 {
            return Err("tensor-parallel size must be at least 1".to_owned());
        }
        if n.is_multiple_of(tp) {
            Ok(format!("{what} {n} divisible by {tp}"))
        } else {
            Err(format!(
                "tensor-parallel size {tp} does not divide {what} {n} ({n} % {tp} = {})",
                n % tp
            ))
        }
    }

    /// A row-parallel matrix of `cols` input columns stored in blocks of `block` values (32 for Q8_0/Q4_0/
    /// Q4_1/Q5_0/Q5_1, 256 for K-quants, 1 for F32/F16/BF16): each rank's `cols / tp` columns must be whole
    /// blocks, since a block cannot be cut.
    pub fn whole_blocks(tp: u64, what: &str, cols: u64, block: u64) -> Result<String, String> {
        if tp == 0 {
            return Err("tensor-parallel size must be at least 1".to_owned());
        }
        let block = block.max(1);
        if cols.is_multiple_of(tp) && (cols / tp).is_multiple_of(block) {
            Ok(format!(
                "{what} {cols} / {tp} = {} columns per rank, whole {block}-value blocks",
                cols / tp
            ))
        } else {
            Err(format!(
                "tensor-parallel size {tp} cuts the {block}-value quantization blocks of {what}: {cols} / {tp} \
                 = {} columns per rank, not a multiple of {block}",
                fmt_ratio(cols, tp)
            ))
        }
    }

    fn fmt_ratio(a: u64, b: u64) -> String {
        if a.is_multiple_of(b) {
            (a / b).to_string()
        } else {
            format!("{:.2}", a as f64 / b as f64)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn sizes_that_do_not_divide_or_that_cut_a_block_are_refused_with_the_arithmetic() {
            assert_eq!(
                divides(2, "attention heads", 9).unwrap_err(),
                "tensor-parallel size 2 does not divide attention heads 9 (9 % 2 = 1)"
            );
            assert_eq!(
                divides(3, "KV heads", 3).unwrap(),
                "KV heads 3 divisible by 3"
            );
            assert_eq!(
                whole_blocks(3, "blk.0.attn_output.weight", 576, 256).unwrap_err(),
                "tensor-parallel size 3 cuts the 256-value quantization blocks of blk.0.attn_output.weight: \
                 576 / 3 = 192 columns per rank, not a multiple of 256"
            );
            assert_eq!(
                whole_blocks(5, "x", 576, 32).unwrap_err(),
                "tensor-parallel size 5 cuts the 32-value quantization blocks of x: 576 / 5 = 115.20 columns \
                 per rank, not a multiple of 32"
            );
            assert!(whole_blocks(3, "x", 576, 32).is_ok());
            assert!(divides(0, "x", 4).is_err() && whole_blocks(0, "x", 4, 1).is_err());
        }
    }
}
