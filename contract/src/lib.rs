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
    pub const API_KEY_FILE: &str = "api-key-file";
    /// `auto`, `cpu`, `cuda` or `cuda:N`.
    pub const DEVICE: &str = "device";
}

/// Long flag names of `llama-server fetch`.
pub mod fetch_flags {
    pub const URL: &str = "url";
    pub const SHA256: &str = "sha256";
    pub const OUT: &str = "out";
    /// Directory of request headers (one file per header: the file name is the header's name, its content the
    /// value), the mounted `spec.model.headersSecretRef` Secret.
    pub const HEADERS_DIR: &str = "headers-dir";
}

/// Where the server container mounts the `spec.apiKeysSecretRef` Secret (`--api-key-file` on this directory).
pub const API_KEYS_DIR: &str = "/var/run/secrets/llama-operator/api-keys";

/// Where the fetch init container mounts the `spec.model.headersSecretRef` Secret.
pub const MODEL_HEADERS_DIR: &str = "/var/run/secrets/llama-operator/model-headers";

/// Model URLs: `http(s)://…` as is, and `hf://org/repo[@revision]/path/file.gguf` as shorthand for a Hugging Face
/// `resolve` URL. The operator validates `spec.model.url` with [`model_url::resolve`]; `llama-server fetch`
/// downloads what it returns, so both halves read the shorthand the same way.
pub mod model_url {
    /// The shorthand's scheme.
    pub const HF_SCHEME: &str = "hf://";
    /// Hub that `hf://` resolves against unless [`HF_ENDPOINT_ENV`] names a mirror.
    pub const DEFAULT_HF_ENDPOINT: &str = "https://huggingface.co";
    /// Environment variable naming a Hugging Face mirror (the variable `huggingface_hub` reads).
    pub const HF_ENDPOINT_ENV: &str = "HF_ENDPOINT";

    fn name_ok(s: &str) -> bool {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    }

    /// The http(s) URL to download: `url` itself when it is http(s), the `resolve` URL for `hf://` (against
    /// `hf_endpoint`, default [`DEFAULT_HF_ENDPOINT`]). The error names what is wrong.
    pub fn resolve(url: &str, hf_endpoint: Option<&str>) -> Result<String, String> {
        if url.starts_with("http://") || url.starts_with("https://") {
            return Ok(url.to_owned());
        }
        let Some(rest) = url.strip_prefix(HF_SCHEME) else {
            return Err(format!(
                "{url:?} must start with http://, https:// or hf://"
            ));
        };
        let shape = "hf://<org>/<repo>[@<revision>]/<path to the .gguf file>";
        let mut parts = rest.splitn(3, '/');
        let (org, repo_rev, path) = match (parts.next(), parts.next(), parts.next()) {
            (Some(o), Some(r), Some(p)) if !p.is_empty() => (o, r, p),
            _ => return Err(format!("{url:?} is not of the form {shape}")),
        };
        let (repo, revision) = match repo_rev.split_once('@') {
            Some((repo, rev)) => (repo, rev),
            None => (repo_rev, "main"),
        };
        if !name_ok(org) || !name_ok(repo) || !name_ok(revision) {
            return Err(format!(
                "{url:?}: organisation, repository and revision may hold only letters, digits, '-', '_' and '.' \
                 (form: {shape})"
            ));
        }
        if !path.split('/').all(name_ok) {
            return Err(format!(
                "{url:?}: the file path must be '/'-separated names of letters, digits, '-', '_' and '.', \
                 without '.' or '..' segments (form: {shape})"
            ));
        }
        let endpoint = hf_endpoint
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .unwrap_or(DEFAULT_HF_ENDPOINT)
            .trim_end_matches('/');
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(format!(
                "{HF_ENDPOINT_ENV}={endpoint:?} must start with http:// or https://"
            ));
        }
        Ok(format!("{endpoint}/{org}/{repo}/resolve/{revision}/{path}"))
    }

    /// The directory a `url` model gets inside a shared model cache (`spec.model.cache`): `sha256-<16 hex>` from
    /// the declared digest (so the same file under two URLs is stored once), else `url-<16 hex>` from a 64-bit
    /// FNV-1a hash of the URL.
    pub fn cache_key(url: &str, sha256: Option<&str>) -> String {
        if let Some(sha) = sha256.filter(|s| s.len() >= 16) {
            return format!("sha256-{}", &sha[..16]);
        }
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in url.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        format!("url-{h:016x}")
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn cache_keys_follow_the_digest_else_the_url() {
            let sha = "0123456789abcdef".repeat(4);
            assert_eq!(
                cache_key("https://a/x.gguf", Some(&sha)),
                "sha256-0123456789abcdef"
            );
            assert_eq!(
                cache_key("https://b/y.gguf", Some(&sha)),
                "sha256-0123456789abcdef"
            );
            // FNV-1a 64 of "a": 0xaf63dc4c8601ec8c (the published test vector).
            assert_eq!(cache_key("a", None), "url-af63dc4c8601ec8c");
            assert_ne!(
                cache_key("https://a/x.gguf", None),
                cache_key("https://a/y.gguf", None)
            );
        }

        #[test]
        fn http_urls_pass_through_and_hf_expands_to_a_resolve_url() {
            let u = "https://example.com/a.gguf?x=1";
            assert_eq!(resolve(u, None).unwrap(), u);
            assert_eq!(
                resolve(
                    "hf://HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/smollm2.Q4_K_M.gguf",
                    None
                )
                .unwrap(),
                "https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct-GGUF/resolve/main/smollm2.Q4_K_M.gguf"
            );
            assert_eq!(
                resolve(
                    "hf://org/repo@v1.0/sub/dir/m.gguf",
                    Some("http://mirror.local:8080/")
                )
                .unwrap(),
                "http://mirror.local:8080/org/repo/resolve/v1.0/sub/dir/m.gguf"
            );
        }

        #[test]
        fn malformed_urls_are_refused_with_the_reason() {
            for (bad, says) in [
                ("ftp://x/y.gguf", "must start with"),
                ("hf://org/repo", "is not of the form"),
                ("hf://org/repo/", "is not of the form"),
                ("hf://org/../x.gguf", "organisation, repository"),
                ("hf://org/repo@/x.gguf", "organisation, repository"),
                ("hf://org/repo/a/../../x.gguf", "file path"),
                ("hf://org/repo/x.gguf?download=1", "file path"),
                ("hf://org/re po/x.gguf", "organisation, repository"),
            ] {
                let e = resolve(bad, None).unwrap_err();
                assert!(e.contains(says), "{bad}: {e}");
            }
            let e = resolve("hf://o/r/x.gguf", Some("mirror.local")).unwrap_err();
            assert!(e.contains("HF_ENDPOINT"), "{e}");
        }
    }
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

    /// The chart's Grafana dashboard (`charts/llama-operator/dashboards/llama-serving.json`), for the tests that
    /// check each of its queries against what the server and the operator export.
    pub const DASHBOARD: &str = "charts/llama-operator/dashboards/llama-serving.json";

    /// Every metric name under `llama_` that `text` (a dashboard's JSON, PromQL) mentions: identifiers of
    /// `[A-Za-z0-9_:]` starting with `llama_` (label names and PromQL functions never do).
    pub fn names_in(text: &str) -> std::collections::BTreeSet<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .filter(|w| w.starts_with("llama_"))
            .map(str::to_owned)
            .collect()
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn names_in_finds_metric_names_and_nothing_else() {
            let got = super::names_in(
                r#"{"expr": "histogram_quantile(0.9, sum by (le) (rate(llama_x_seconds_bucket{model_name=~\"$m\"}[5m]))) / llama_y", "title": "llama-operator"}"#,
            );
            assert_eq!(
                got.into_iter().collect::<Vec<_>>(),
                ["llama_x_seconds_bucket", "llama_y"]
            );
        }
    }
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

/// Host-memory arithmetic of a CPU replica, applied by the server at start (to its container's memory limit
/// and the GGUF's numbers) and by the operator's validation (to `resources.memory` and the LlamaDeployment's
/// numbers), so a spec that cannot fit is refused by both with the same sentence.
///
/// A replica's resident memory is weights + KV cache + headroom. The headroom is everything else: the process
/// itself, the tokenizer, HTTP and request state, allocator slack, the activations of one engine step, and
/// the grammar engine's tables once a request asks for structured output or a tool call.
/// Measured on SmolLM2-135M Q4_1 (`llama-server serve` on this repo's CPU machine, a 64-stream
/// `bench-serve --mixed` burst): 101 MB resident beyond weights + KV at idle, and at the burst's peak
/// +22 MB more with `--max-num-batched-tokens 512`, +169 MB with 2048. The grammar tables: +23.5 MB at the
/// first constrained request on SmolLM2's 49k-token vocabulary, +31 MB after five tool calls; +31 MB for
/// Llama 3's 128k vocabulary. The constants below cover those figures with a margin (240 MB for the default
/// flags, 365 MB for 2048 batched tokens).
pub mod memory {
    /// The process, tokenizer, HTTP side and allocator, independent of the batch.
    pub const HEADROOM_PROCESS: u64 = 128 << 20;
    /// llguidance's tables for the vocabulary and the parsers of constrained requests.
    pub const HEADROOM_GRAMMAR: u64 = 40 << 20;
    /// What does not depend on the batch.
    pub const HEADROOM_BASE: u64 = HEADROOM_PROCESS + HEADROOM_GRAMMAR;
    /// Activations of one engine step, per batched token and per unit of the hidden size.
    pub const ACTIVATION_BYTES_PER_TOKEN_PER_HIDDEN: u64 = 160;
    /// Per running sequence: its logits row (f32, vocabularies up to 64 K tokens) and request state.
    pub const BYTES_PER_SEQUENCE: u64 = 256 << 10;
    /// The KV cache's default share of what the weights and headroom leave inside a container limit (the
    /// replica is alone in its container).
    pub const LIMITED_KV_FRACTION: f64 = 0.9;
    /// Without a container limit the host runs other things too: the default share of its available memory,
    /// and a cap.
    pub const HOST_KV_FRACTION: f64 = 0.25;
    pub const HOST_KV_CAP: u64 = 1 << 30;

    /// Headroom for a model of `hidden` width serving steps of `max_num_batched_tokens` tokens and
    /// `max_batch_size` sequences.
    pub fn headroom(hidden: u64, max_num_batched_tokens: u64, max_batch_size: u64) -> u64 {
        HEADROOM_BASE
            + max_num_batched_tokens * hidden * ACTIVATION_BYTES_PER_TOKEN_PER_HIDDEN
            + max_batch_size * BYTES_PER_SEQUENCE
    }

    /// KV cache bytes per token: keys and values of every layer's KV heads.
    pub fn kv_bytes_per_token(
        layers: u64,
        kv_heads: u64,
        head_dim: u64,
        element_bytes: u64,
    ) -> u64 {
        2 * layers * kv_heads * head_dim * element_bytes
    }

    /// KV cache bytes of one sequence of `tokens` tokens, in whole blocks of `block_size` tokens.
    pub fn kv_bytes_for_sequence(per_token: u64, tokens: u64, block_size: u64) -> u64 {
        let block = block_size.max(1);
        tokens.div_ceil(block) * block * per_token
    }

    /// Sizes as people read them: MiB below 10 GiB, else GiB.
    pub fn human(bytes: u64) -> String {
        if bytes < 10 << 30 {
            format!("{:.0} MiB", bytes as f64 / f64::from(1u32 << 20))
        } else {
            format!("{:.2} GiB", bytes as f64 / f64::from(1u32 << 30))
        }
    }

    /// What the KV cache of a CPU replica is sized from.
    #[derive(Debug, Clone, PartialEq)]
    pub struct HostPlan {
        /// Memory the replica may use, in bytes.
        pub available: u64,
        /// Where `available` comes from, for messages: e.g. `container memory limit 1024 MiB − 3 MiB used by
        /// other processes` or `resources.memory 1Gi`.
        pub source: String,
        /// True when a container limit (not the host's free memory) bounds `available`: the default share
        /// is then [`LIMITED_KV_FRACTION`] and there is no cap.
        pub limited: bool,
        pub weights: u64,
        pub headroom: u64,
        /// The smallest useful cache: one full-length sequence.
        pub min_kv: u64,
        /// What `max_batch_size` full-length sequences need: more would never be used.
        pub enough_kv: u64,
        /// An explicit KV cache size (`--kv-cache-memory` / `kvCacheMemory`).
        pub explicit_kv: Option<u64>,
        /// The share of what is left when the size is not explicit (default by `limited`).
        pub fraction: Option<f64>,
    }

    impl HostPlan {
        /// What the weights and headroom leave for the KV cache, if anything.
        pub fn room(&self) -> Option<u64> {
            self.available.checked_sub(self.weights + self.headroom)
        }

        fn needs(&self, kv: u64, what: &str) -> String {
            format!(
                "weights {} + headroom {} + {what} {} = {} does not fit in {} ({})",
                human(self.weights),
                human(self.headroom),
                human(kv),
                human(self.weights + self.headroom + kv),
                human(self.available),
                self.source
            )
        }
    }

    /// The KV cache size in bytes, or why the replica cannot fit, with the arithmetic.
    pub fn host_kv_budget(p: &HostPlan) -> Result<u64, String> {
        let room = p.room().unwrap_or(0);
        if let Some(kv) = p.explicit_kv {
            return if kv <= room {
                Ok(kv)
            } else {
                Err(p.needs(kv, "KV cache"))
            };
        }
        if p.min_kv > room {
            return Err(p.needs(p.min_kv, "KV cache for one full-length sequence"));
        }
        let fraction = p
            .fraction
            .unwrap_or(if p.limited {
                LIMITED_KV_FRACTION
            } else {
                HOST_KV_FRACTION
            })
            .clamp(0.0, 1.0);
        let cap = if p.limited { u64::MAX } else { HOST_KV_CAP };
        let by_fraction = ((room as f64 * fraction) as u64).min(cap);
        Ok(by_fraction.max(p.min_kv).min(p.enough_kv.max(p.min_kv)))
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const MIB: u64 = 1 << 20;

        fn plan(available: u64, limited: bool) -> HostPlan {
            HostPlan {
                available,
                source: "container memory limit".to_owned(),
                limited,
                weights: 100 * MIB,
                headroom: 200 * MIB,
                min_kv: 50 * MIB,
                enough_kv: 10_000 * MIB,
                explicit_kv: None,
                fraction: None,
            }
        }

        #[test]
        fn a_limited_container_gives_the_cache_nine_tenths_of_what_is_left() {
            // 1000 − 100 weights − 200 headroom = 700 left; 90 % of it.
            assert_eq!(host_kv_budget(&plan(1000 * MIB, true)), Ok(630 * MIB));
            // Never more than max-batch-size full sequences need.
            let p = HostPlan {
                enough_kv: 64 * MIB,
                ..plan(1000 * MIB, true)
            };
            assert_eq!(host_kv_budget(&p), Ok(64 * MIB));
            // A small share that leaves less than one sequence still gets one sequence.
            let p = HostPlan {
                fraction: Some(0.01),
                ..plan(1000 * MIB, true)
            };
            assert_eq!(host_kv_budget(&p), Ok(50 * MIB));
        }

        #[test]
        fn an_unlimited_host_keeps_its_quarter_and_1_gib_cap() {
            assert_eq!(host_kv_budget(&plan(1300 * MIB, false)), Ok(250 * MIB));
            assert_eq!(host_kv_budget(&plan(100_000 * MIB, false)), Ok(HOST_KV_CAP));
        }

        #[test]
        fn what_cannot_fit_is_refused_with_the_arithmetic() {
            assert_eq!(
                host_kv_budget(&plan(320 * MIB, true)),
                Err("weights 100 MiB + headroom 200 MiB + KV cache for one full-length sequence 50 MiB = \
                     350 MiB does not fit in 320 MiB (container memory limit)"
                    .to_owned())
            );
            // Weights alone larger than the limit: still the whole sum.
            assert!(host_kv_budget(&plan(50 * MIB, true)).is_err());
            let p = HostPlan {
                explicit_kv: Some(800 * MIB),
                ..plan(1000 * MIB, true)
            };
            assert_eq!(
                host_kv_budget(&p),
                Err("weights 100 MiB + headroom 200 MiB + KV cache 800 MiB = 1100 MiB does not fit in \
                     1000 MiB (container memory limit)"
                    .to_owned())
            );
            let p = HostPlan {
                explicit_kv: Some(700 * MIB),
                ..plan(1000 * MIB, true)
            };
            assert_eq!(host_kv_budget(&p), Ok(700 * MIB));
        }

        #[test]
        fn headroom_and_kv_sizes_follow_the_stated_constants() {
            // SmolLM2-135M with the server's defaults: 128 + 40 MiB + 512 × 576 × 160 + 64 × 256 KiB.
            assert_eq!(
                headroom(576, 512, 64),
                134_217_728 + 41_943_040 + 47_185_920 + 16_777_216
            );
            // SmolLM2: 30 layers, 3 KV heads of 64, f16 → 23040 bytes per token; 100 tokens → 7 blocks of 16.
            let per_token = kv_bytes_per_token(30, 3, 64, 2);
            assert_eq!(per_token, 23_040);
            assert_eq!(kv_bytes_for_sequence(per_token, 100, 16), 112 * 23_040);
            assert_eq!(human(1536 * MIB), "1536 MiB");
            assert_eq!(human(12 << 30), "12.00 GiB");
        }
    }
}
