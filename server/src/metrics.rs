//! The server's metrics: one typed struct, registered once. Every metric is named under `llama_`; the ones vLLM
//! dashboards and KEDA recipes read are also exposed under their `vllm:` names (same values, renamed at gather
//! time, so the two can never disagree).

use prometheus::{
    Encoder, Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};

/// `llama_` name → vLLM-compatible name.
const VLLM_NAMES: &[(&str, &str)] = &[
    (
        llama_contract::metrics::REQUESTS_WAITING,
        "vllm:num_requests_waiting",
    ),
    (
        llama_contract::metrics::REQUESTS_RUNNING,
        "vllm:num_requests_running",
    ),
    (
        llama_contract::metrics::KV_CACHE_USAGE,
        "vllm:kv_cache_usage_perc",
    ),
    ("llama_preemptions_total", "vllm:num_preemptions_total"),
    (
        "llama_prefix_cache_queries_total",
        "vllm:prefix_cache_queries_total",
    ),
    (
        "llama_prefix_cache_hits_total",
        "vllm:prefix_cache_hits_total",
    ),
    ("llama_prompt_tokens_total", "vllm:prompt_tokens_total"),
    (
        "llama_generation_tokens_total",
        "vllm:generation_tokens_total",
    ),
    ("llama_request_success_total", "vllm:request_success_total"),
    (
        "llama_time_to_first_token_seconds",
        "vllm:time_to_first_token_seconds",
    ),
    (
        "llama_inter_token_latency_seconds",
        "vllm:inter_token_latency_seconds",
    ),
    (
        "llama_e2e_request_latency_seconds",
        "vllm:e2e_request_latency_seconds",
    ),
    (
        "llama_request_queue_time_seconds",
        "vllm:request_queue_time_seconds",
    ),
    ("llama_tokens_per_step", "vllm:iteration_tokens_total"),
];

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0,
];
/// Seconds, 10 µs to 100 ms.
const MASK_BUCKETS: &[f64] = &[1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1];
const STEP_TOKEN_BUCKETS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Requests queued, not yet admitted (the autoscaler's signal).
    pub requests_waiting: IntGauge,
    pub requests_running: IntGauge,
    /// Fraction of KV blocks in use, 0–1.
    pub kv_cache_usage: Gauge,
    pub kv_blocks_total: IntGauge,
    pub kv_blocks_used: IntGauge,
    /// Fraction of KV slots held by running sequences that hold no token (unused block tails), 0-1.
    pub kv_cache_waste: Gauge,
    pub preemptions: IntCounter,
    /// Prefix-cache lookups and hits, in tokens.
    pub prefix_cache_queries: IntCounter,
    pub prefix_cache_hits: IntCounter,
    pub prompt_tokens: IntCounter,
    pub generation_tokens: IntCounter,
    /// Finished requests by `finished_reason` (stop, length, abort).
    pub request_success: IntCounterVec,
    /// Rejected requests by error label.
    pub request_errors: IntCounterVec,
    /// Non-streaming requests aborted because their client disconnected.
    pub client_disconnects: IntCounter,
    /// Requests failed because the drain timeout ran out during shutdown.
    pub requests_cut_at_shutdown: IntCounter,
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
    pub e2e_request_latency: Histogram,
    pub request_queue_time: Histogram,
    pub tokens_per_step: Histogram,
    /// Requests with an output constraint, by kind (json_object, json_schema, regex, choice, grammar).
    pub guided_requests: IntCounterVec,
    /// Time to compute one constrained sequence's token mask (per step, on a helper thread while the forward pass runs).
    pub guided_mask_seconds: Histogram,
    /// 1 while draining.
    pub draining: IntGauge,
    /// 1 for the device the engine computes on (`device` = `cpu` or `cuda:N`).
    pub device_info: IntGaugeVec,
    /// Ranks the model is sharded across (`--tensor-parallel-size`).
    pub tensor_parallel_size: IntGauge,
    /// Compute threads the engine runs.
    pub compute_threads: IntGauge,
    /// The memory budget by part (`limit`, `available`, `weights`, `kv_cache`, `headroom`).
    pub memory_budget: IntGaugeVec,
}

fn opts(name: &str, help: &str, model: &str) -> Opts {
    Opts::new(name, help).const_label("model_name", model)
}

fn hist(name: &str, help: &str, model: &str, buckets: &[f64]) -> HistogramOpts {
    HistogramOpts::new(name, help)
        .const_label("model_name", model)
        .buckets(buckets.to_vec())
}

impl Metrics {
    /// Builds and registers every metric, labelled with the served model name.
    pub fn new(model_name: &str) -> prometheus::Result<Self> {
        let m = model_name;
        let registry = Registry::new();
        let this = Self {
            requests_waiting: IntGauge::with_opts(opts(
                llama_contract::metrics::REQUESTS_WAITING,
                "Requests waiting to be scheduled.",
                m,
            ))?,
            requests_running: IntGauge::with_opts(opts(
                llama_contract::metrics::REQUESTS_RUNNING,
                "Requests in the running batch.",
                m,
            ))?,
            kv_cache_usage: Gauge::with_opts(opts(
                llama_contract::metrics::KV_CACHE_USAGE,
                "Fraction of KV cache blocks in use (0-1).",
                m,
            ))?,
            kv_blocks_total: IntGauge::with_opts(opts(
                "llama_kv_blocks_total",
                "KV cache blocks in the pool.",
                m,
            ))?,
            kv_blocks_used: IntGauge::with_opts(opts(
                "llama_kv_blocks_used",
                "KV cache blocks in use.",
                m,
            ))?,
            kv_cache_waste: Gauge::with_opts(opts(
                "llama_kv_cache_waste_ratio",
                "Fraction of KV slots held by running sequences that hold no token (0-1).",
                m,
            ))?,
            preemptions: IntCounter::with_opts(opts(
                "llama_preemptions_total",
                "Requests preempted (recomputed later) because KV blocks ran out.",
                m,
            ))?,
            prefix_cache_queries: IntCounter::with_opts(opts(
                "llama_prefix_cache_queries_total",
                "Prompt tokens looked up in the prefix cache.",
                m,
            ))?,
            prefix_cache_hits: IntCounter::with_opts(opts(
                "llama_prefix_cache_hits_total",
                "Prompt tokens found in the prefix cache.",
                m,
            ))?,
            prompt_tokens: IntCounter::with_opts(opts(
                "llama_prompt_tokens_total",
                "Prompt tokens of admitted requests.",
                m,
            ))?,
            generation_tokens: IntCounter::with_opts(opts(
                "llama_generation_tokens_total",
                "Generated tokens.",
                m,
            ))?,
            request_success: IntCounterVec::new(
                opts(
                    "llama_request_success_total",
                    "Finished requests by finish reason.",
                    m,
                ),
                &["finished_reason"],
            )?,
            request_errors: IntCounterVec::new(
                opts(
                    "llama_request_errors_total",
                    "Rejected requests by error code.",
                    m,
                ),
                &["code"],
            )?,
            client_disconnects: IntCounter::with_opts(opts(
                "llama_client_disconnects_total",
                "Non-streaming requests aborted because their client disconnected before the answer.",
                m,
            ))?,
            requests_cut_at_shutdown: IntCounter::with_opts(opts(
                "llama_requests_cut_at_shutdown_total",
                "Requests failed with an error because the drain timeout ran out during shutdown.",
                m,
            ))?,
            time_to_first_token: Histogram::with_opts(hist(
                "llama_time_to_first_token_seconds",
                "Time from arrival to the first output token.",
                m,
                LATENCY_BUCKETS,
            ))?,
            inter_token_latency: Histogram::with_opts(hist(
                "llama_inter_token_latency_seconds",
                "Time between consecutive output tokens of a request.",
                m,
                LATENCY_BUCKETS,
            ))?,
            e2e_request_latency: Histogram::with_opts(hist(
                "llama_e2e_request_latency_seconds",
                "Time from arrival to the last output token.",
                m,
                LATENCY_BUCKETS,
            ))?,
            request_queue_time: Histogram::with_opts(hist(
                "llama_request_queue_time_seconds",
                "Time from arrival to first scheduling.",
                m,
                LATENCY_BUCKETS,
            ))?,
            tokens_per_step: Histogram::with_opts(hist(
                "llama_tokens_per_step",
                "Tokens (prompt + decode) in one engine step.",
                m,
                STEP_TOKEN_BUCKETS,
            ))?,
            guided_requests: IntCounterVec::new(
                opts(
                    "llama_guided_requests_total",
                    "Admitted requests with an output constraint (response_format JSON modes, guided_*, a required or named tool_choice), by kind.",
                    m,
                ),
                &["kind"],
            )?,
            guided_mask_seconds: Histogram::with_opts(hist(
                "llama_guided_mask_seconds",
                "Time to compute one constrained sequence's token mask.",
                m,
                MASK_BUCKETS,
            ))?,
            draining: IntGauge::with_opts(opts(
                llama_contract::metrics::DRAINING,
                "1 while the server drains before exit.",
                m,
            ))?,
            device_info: IntGaugeVec::new(
                opts(
                    "llama_device_info",
                    "1 for the device the engine computes on (--device).",
                    m,
                ),
                &["device"],
            )?,
            tensor_parallel_size: IntGauge::with_opts(opts(
                llama_contract::metrics::TENSOR_PARALLEL_SIZE,
                "Tensor-parallel ranks the model is sharded across (--tensor-parallel-size).",
                m,
            ))?,
            compute_threads: IntGauge::with_opts(opts(
                "llama_compute_threads",
                "Compute threads (--threads, else the container's CPU quota rounded down, else all cores).",
                m,
            ))?,
            memory_budget: IntGaugeVec::new(
                opts(
                    "llama_memory_budget_bytes",
                    "The memory budget the server sized itself by, in bytes: part=limit (the container's \
                     memory limit), available (what the server may use), weights, kv_cache, headroom.",
                    m,
                ),
                &["part"],
            )?,
            registry,
        };
        let r = &this.registry;
        r.register(Box::new(this.requests_waiting.clone()))?;
        r.register(Box::new(this.requests_running.clone()))?;
        r.register(Box::new(this.kv_cache_usage.clone()))?;
        r.register(Box::new(this.kv_blocks_total.clone()))?;
        r.register(Box::new(this.kv_blocks_used.clone()))?;
        r.register(Box::new(this.kv_cache_waste.clone()))?;
        r.register(Box::new(this.preemptions.clone()))?;
        r.register(Box::new(this.prefix_cache_queries.clone()))?;
        r.register(Box::new(this.prefix_cache_hits.clone()))?;
        r.register(Box::new(this.prompt_tokens.clone()))?;
        r.register(Box::new(this.generation_tokens.clone()))?;
        r.register(Box::new(this.request_success.clone()))?;
        r.register(Box::new(this.request_errors.clone()))?;
        r.register(Box::new(this.client_disconnects.clone()))?;
        r.register(Box::new(this.requests_cut_at_shutdown.clone()))?;
        r.register(Box::new(this.time_to_first_token.clone()))?;
        r.register(Box::new(this.inter_token_latency.clone()))?;
        r.register(Box::new(this.e2e_request_latency.clone()))?;
        r.register(Box::new(this.request_queue_time.clone()))?;
        r.register(Box::new(this.tokens_per_step.clone()))?;
        r.register(Box::new(this.guided_requests.clone()))?;
        r.register(Box::new(this.guided_mask_seconds.clone()))?;
        r.register(Box::new(this.draining.clone()))?;
        r.register(Box::new(this.device_info.clone()))?;
        r.register(Box::new(this.tensor_parallel_size.clone()))?;
        r.register(Box::new(this.compute_threads.clone()))?;
        r.register(Box::new(this.memory_budget.clone()))?;
        this.tensor_parallel_size.set(1);
        for reason in ["stop", "length", "abort"] {
            this.request_success.with_label_values(&[reason]);
        }
        Ok(this)
    }

    /// The Prometheus text exposition: `llama_*` families followed by their `vllm:*` twins.
    pub fn render(&self) -> String {
        let mut families = self.registry.gather();
        let twins: Vec<_> = families
            .iter()
            .filter_map(|f| {
                let (_, vllm) = VLLM_NAMES.iter().find(|(llama, _)| *llama == f.name())?;
                let mut twin = f.clone();
                twin.set_name((*vllm).to_string());
                Some(twin)
            })
            .collect();
        families.extend(twins);
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&families, &mut buf) {
            return format!("# error encoding metrics: {e}\n");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the unlabelled-by-us sample `name{model_name="m"}` in a rendering.
    fn sample(text: &str, name: &str) -> Option<f64> {
        let prefix = format!("{name}{{model_name=\"m\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn gauges_appear_under_both_names_with_the_same_value() {
        let m = Metrics::new("m").unwrap();
        m.requests_waiting.set(3);
        m.kv_cache_usage.set(0.25);
        let text = m.render();
        assert_eq!(sample(&text, "llama_requests_waiting"), Some(3.0));
        assert_eq!(sample(&text, "vllm:num_requests_waiting"), Some(3.0));
        assert_eq!(sample(&text, "vllm:kv_cache_usage_perc"), Some(0.25));
        assert!(text.contains("vllm:time_to_first_token_seconds_bucket"));
        assert!(text.contains("# HELP llama_requests_running Requests in the running batch."));
    }

    #[test]
    fn success_counts_are_labelled_by_finish_reason() {
        let m = Metrics::new("m").unwrap();
        m.request_success.with_label_values(&["length"]).inc_by(2);
        let text = m.render();
        assert!(
            text.contains(
                "llama_request_success_total{finished_reason=\"length\",model_name=\"m\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "vllm:request_success_total{finished_reason=\"stop\",model_name=\"m\"} 0"
            )
        );
    }

    #[test]
    fn every_vllm_twin_has_a_registered_source() {
        let m = Metrics::new("m").unwrap();
        let text = m.render();
        for (llama, vllm) in VLLM_NAMES {
            assert!(text.contains(&format!("# TYPE {llama} ")), "{llama}");
            assert!(text.contains(&format!("# TYPE {vllm} ")), "{vllm}");
        }
    }
}
