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
}

/// `--tensor-parallel-size` values the server runs today. Larger values are refused by the server (exit with a
/// message) and by the operator's validation (`Ready=False`, reason `TensorParallelUnsupported`) alike.
pub const MAX_SUPPORTED_TENSOR_PARALLEL_SIZE: u32 = 1;

/// The one sentence both sides use when a tensor-parallel size is not supported yet.
pub fn tensor_parallel_unsupported(requested: u32) -> String {
    format!(
        "tensor-parallel-size {requested} is not supported by this llama-server yet (at most \
         {MAX_SUPPORTED_TENSOR_PARALLEL_SIZE}): tensor parallelism has not landed in the server; \
         use tensorParallelSize: 1 (one GPU per replica) and scale with replicas"
    )
}
