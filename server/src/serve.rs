//! `llama-server serve`: load the model, start the engine thread and the actix-web server, drain on SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use actix_web::{App, web};
use anyhow::{Context, bail};
use candle_core::Device;

use crate::api::handlers::{self, AppState};
use crate::api::middleware;
use crate::api::validate::Limits;
use crate::block_manager::BlockManager;
use crate::chat::ChatTemplate;
use crate::cli::resolve_model;
use crate::engine::{CacheSpec, Engine, EngineConfig, EngineHandle, ModelRunner, TpGroup};
use crate::gguf::GgufFile;
use crate::kv_cache::{KvCache, KvDType};
use crate::metrics::Metrics;
use crate::model::{LoadOptions, Model, ModelConfig};
use crate::scheduler::{Scheduler, SchedulerConfig};
use crate::tokenizer::Tokenizer;
use llama_contract::serve_flags as flags;

mod budget;

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `llama-server serve` flags; every flag can also come from the `LLAMA_*` environment variable named beside it.
#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// GGUF model file (default: the cached SmolLM2-135M-Instruct Q4_1, fetched on first use).
    #[arg(long = flags::MODEL, env = "LLAMA_MODEL")]
    pub model: Option<PathBuf>,
    /// Address to listen on.
    #[arg(long = flags::HOST, env = "LLAMA_HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// Port to listen on.
    #[arg(long = flags::PORT, env = "LLAMA_PORT", default_value_t = llama_contract::HTTP_PORT)]
    pub port: u16,
    /// Model name clients use (default: the GGUF's `general.name`, else the file stem).
    #[arg(long = flags::SERVED_MODEL_NAME, env = "LLAMA_SERVED_MODEL_NAME")]
    pub served_model_name: Option<String>,
    /// Compute threads (default: RAYON_NUM_THREADS, else all cores).
    #[arg(long = flags::THREADS, env = "LLAMA_THREADS")]
    pub threads: Option<usize>,
    /// Tokens per KV cache block.
    #[arg(long = flags::BLOCK_SIZE, env = "LLAMA_BLOCK_SIZE", default_value_t = 16)]
    pub block_size: usize,
    /// KV cache size in bytes, on the compute device (default: --kv-cache-fraction of the memory the weights
    /// leave, at most what --max-batch-size full-length sequences need). On the CPU that memory is the
    /// container's limit (cgroup v1 or v2) less what other processes in it hold, or the host's available
    /// memory if smaller, minus the weights and a headroom for everything else (see `llama_contract::memory`).
    /// A size that does not fit, or a memory too small for one --max-seq-len sequence, is an error before
    /// anything is loaded, with the arithmetic.
    #[arg(long = flags::KV_CACHE_MEMORY, env = "LLAMA_KV_CACHE_MEMORY")]
    pub kv_cache_memory: Option<u64>,
    /// Fraction of the memory the weights (and headroom) leave for the KV cache when --kv-cache-memory is
    /// not given: of the GPU's free memory after a 5 % reserve (default 0.9); on the CPU of the container's
    /// budget (default 0.9) or, without a container limit, of the host's available memory (default 0.25, at
    /// most 1 GiB).
    #[arg(long, env = "LLAMA_KV_CACHE_FRACTION")]
    pub kv_cache_fraction: Option<f64>,
    /// KV cache element type: f16, bf16 or f32.
    #[arg(long, env = "LLAMA_KV_DTYPE", default_value = "f16")]
    pub kv_dtype: KvDType,
    /// Most new tokens (prompt chunks + decodes) in one engine step.
    #[arg(
        long = flags::MAX_NUM_BATCHED_TOKENS,
        env = "LLAMA_MAX_NUM_BATCHED_TOKENS",
        default_value_t = 512
    )]
    pub max_num_batched_tokens: usize,
    /// Most sequences running at once (the CRD's maxBatchSize).
    #[arg(long = flags::MAX_BATCH_SIZE, env = "LLAMA_MAX_BATCH_SIZE", default_value_t = 64)]
    pub max_batch_size: usize,
    /// Most tokens (prompt + output) per sequence (default: the model's context length, bounded by the cache).
    #[arg(long = flags::MAX_SEQ_LEN, env = "LLAMA_MAX_SEQ_LEN")]
    pub max_seq_len: Option<usize>,
    /// Output tokens per choice when a request gives no max_tokens (also bounded by the context the prompt
    /// leaves), so no request runs unbounded by default.
    #[arg(long, env = "LLAMA_DEFAULT_MAX_TOKENS", default_value_t = 2048)]
    pub default_max_tokens: usize,
    /// Most requests waiting for a batch slot; beyond it new requests get 429.
    #[arg(long = flags::MAX_QUEUE, env = "LLAMA_MAX_QUEUE", default_value_t = 256)]
    pub max_queue: usize,
    /// Seconds in-flight requests get to finish after SIGTERM.
    #[arg(long = flags::DRAIN_TIMEOUT, env = "LLAMA_DRAIN_TIMEOUT", default_value_t = 30)]
    pub drain_timeout: u64,
    /// Require `Authorization: Bearer KEY` on /v1/*, /tokenize and /detokenize. Prefer the environment
    /// variable or --api-key-file: a key on the command line is visible to every user of the host (`ps`).
    #[arg(long, env = llama_contract::env::API_KEY, hide_env_values = true)]
    pub api_key: Option<String>,
    /// File of API keys, one per line, or a directory with one key per file (a mounted Secret: every key of
    /// the Secret is accepted); re-read while serving (at most every second), so keys rotate without a restart.
    #[arg(long = flags::API_KEY_FILE, env = "LLAMA_API_KEY_FILE", conflicts_with = "api_key")]
    pub api_key_file: Option<PathBuf>,
    /// Threads that parse, template and tokenize requests (off the HTTP workers).
    #[arg(long, env = "LLAMA_PREP_THREADS", default_value_t = 2)]
    pub prep_threads: usize,
    /// Parse special-token text (e.g. `<|im_start|>`) inside chat message content as control tokens. Off by
    /// default: content is user text, and parsing it would let a user forge a system turn.
    #[arg(long, env = "LLAMA_CHAT_SPECIAL_TOKENS")]
    pub chat_special_tokens: bool,
    /// Disable prefix caching.
    #[arg(long, env = "LLAMA_NO_PREFIX_CACHING")]
    pub no_prefix_caching: bool,
    /// Jinja chat template file overriding the model's.
    #[arg(long, env = "LLAMA_CHAT_TEMPLATE")]
    pub chat_template: Option<PathBuf>,
    /// Log format: `text` (human-readable) or `json` (one JSON object per line).
    #[arg(long = flags::LOG_FORMAT, env = "LLAMA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Same as `--log-format json` (kept for earlier scripts).
    #[arg(long, env = "LLAMA_LOG_JSON", hide = true)]
    pub log_json: bool,
    /// Ranks one replica shards the model across (Megatron-style: each rank holds heads/N query heads,
    /// kv_heads/N KV heads and 1/N of the MLP). On GPUs one rank per GPU (cuda:N … cuda:N+size−1); on the
    /// CPU the ranks are threads sharing --threads. N must divide the heads, the KV heads and the MLP width,
    /// and leave each rank whole quantization blocks: anything else exits with the arithmetic.
    #[arg(long = flags::TENSOR_PARALLEL_SIZE, env = "LLAMA_TENSOR_PARALLEL_SIZE", default_value_t = 1)]
    pub tensor_parallel_size: u32,
    /// Where the engine computes: `auto` (CUDA when compiled in and present, else the CPU), `cpu`, `cuda`
    /// or `cuda:N`. CUDA from a CPU-only build, or a GPU that is not there, exits before loading.
    #[arg(long = flags::DEVICE, env = "LLAMA_DEVICE", default_value = "auto")]
    pub device: crate::device::DeviceArg,
    /// HTTP worker threads.
    #[arg(long, env = "LLAMA_HTTP_WORKERS", default_value_t = 2)]
    pub http_workers: usize,
    /// Re-encode Q4_1 weights as Q8_0 at load (as `generate --repack-q4-1`; off by default, like the engine).
    #[arg(long, env = "LLAMA_REPACK_Q4_1")]
    pub repack_q4_1: bool,
    /// BF16 weights: multiply with f32 activations (exact f32 math on the stored weights) instead of
    /// rounding the activations to bf16 for AVX-512 BF16's `vdpbf16ps`, as llama.cpp does (about 1.6× the
    /// prefill speed; logits within ~3e-3 relative of exact).
    #[arg(long, env = "LLAMA_EXACT_BF16")]
    pub exact_bf16: bool,
}

/// Entry point of the subcommand (called from `main`).
pub fn main(args: &ServeArgs) -> ExitCode {
    if let Some(code) = crate::cli::apply_threads(crate::cli::default_threads(args.threads)) {
        return code;
    }
    init_tracing(args.log_json || args.log_format == LogFormat::Json);
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("llama-server serve: {e:#}");
            write_termination_message(&format!("{e:#}"));
            ExitCode::FAILURE
        }
    }
}

/// Where the kubelet reads a container's last words (`terminationMessagePath`'s default); the server writes
/// there only when the file exists, i.e. in a pod.
const TERMINATION_LOG: &str = "/dev/termination-log";

/// Puts the reason `serve` exits into the termination log, so `kubectl describe pod` shows it under the last
/// state (the kubelet keeps at most 4 KiB of it).
fn write_termination_message(msg: &str) {
    let path = std::env::var_os("LLAMA_TERMINATION_LOG").unwrap_or_else(|| TERMINATION_LOG.into());
    let path = std::path::Path::new(&path);
    if path.exists() {
        let mut text = format!("llama-server serve: {msg}");
        if text.len() > 4000 {
            let mut cut = 4000;
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text.truncate(cut);
        }
        let _ = std::fs::write(path, text);
    }
}

fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// What `serve` resolves from the GGUF metadata before loading the weights (fast).
struct Prepared {
    path: PathBuf,
    cfg: ModelConfig,
    tokenizer: Tokenizer,
    chat_template: ChatTemplate,
    name: String,
    num_blocks: usize,
    max_seq_len: usize,
    /// One device per tensor-parallel rank.
    devices: Vec<Device>,
    memory: budget::MemoryReport,
}

fn prepare(args: &ServeArgs) -> anyhow::Result<Prepared> {
    let tp = args.tensor_parallel_size as usize;
    if tp == 0 {
        bail!("--tensor-parallel-size must be at least 1");
    }
    let devices = crate::device::choose_ranks(args.device, tp)?;
    let device = devices[0].clone();
    if args.block_size == 0 {
        bail!("--block-size must be positive");
    }
    if args.max_batch_size == 0 || args.max_num_batched_tokens == 0 {
        bail!("--max-batch-size and --max-num-batched-tokens must be positive");
    }
    let path = resolve_model(args.model.as_deref())?;
    let file = GgufFile::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let cfg = ModelConfig::from_gguf(&file)?;
    let tp_checked = crate::model::check_tensor_parallel(&file, &cfg, tp)
        .map_err(|why| anyhow::anyhow!("--tensor-parallel-size {tp}: {why}"))?;
    let tokenizer = Tokenizer::from_gguf(&file)?;
    if tokenizer.vocab_size() > cfg.vocab_size {
        bail!(
            "the tokenizer has {} tokens but token_embd.weight has {} rows: token ids past {} would have no \
             embedding (the file is inconsistent)",
            tokenizer.vocab_size(),
            cfg.vocab_size,
            cfg.vocab_size - 1
        );
    }
    let chat_template = match &args.chat_template {
        Some(p) => ChatTemplate::from_file(p, &file)?,
        None => ChatTemplate::from_gguf(&file)?,
    };
    let name = match &args.served_model_name {
        Some(n) => n.clone(),
        None => match file.get_str("general.name") {
            Ok(n) if !n.trim().is_empty() => n.trim().to_string(),
            _ => path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| "model".into()),
        },
    };
    // GPU ranks each have their own memory and hold 1/tp of the weights and of every KV block; CPU ranks
    // share the host's memory, so there the whole model's numbers count.
    let share = if device.is_cpu() { 1 } else { tp };
    let weights = crate::model::device_weight_bytes(&file, device.is_cpu()).div_ceil(share as u64);
    drop(file);
    let per_block =
        KvCache::bytes_per_block(&cfg.for_rank(share), args.block_size, args.kv_dtype) as u64;
    let want_seq_len = args
        .max_seq_len
        .unwrap_or(cfg.max_context)
        .min(cfg.max_context);
    let device_name = crate::device::describe(&device);
    let (budget, mut report, cgroup) = budget::kv_budget(
        args,
        &cfg,
        &device,
        &device_name,
        weights,
        per_block,
        want_seq_len,
    )?;
    let num_blocks = (budget / per_block.max(1)) as usize;
    if num_blocks < 2 {
        bail!(
            "the KV cache budget of {budget} bytes holds fewer than 2 blocks of {per_block} bytes"
        );
    }
    // A lone sequence must always fit in the cache, or it could never finish.
    let max_seq_len = want_seq_len.min(num_blocks * args.block_size);
    report.kv_cache = num_blocks as u64 * per_block;
    report.log(&cgroup);
    if args.max_seq_len.is_none() && max_seq_len < want_seq_len {
        tracing::warn!(
            model_context = want_seq_len,
            max_seq_len,
            "the KV cache holds fewer tokens than the model's context: sequences are limited to {max_seq_len} tokens"
        );
    }
    tracing::info!(
        model = %path.display(),
        served_model_name = %name,
        num_blocks,
        block_size = args.block_size,
        kv_cache_bytes = num_blocks as u64 * per_block,
        weight_bytes = weights,
        device = %device_name,
        tensor_parallel_size = tp,
        tensor_parallel = %tp_checked.join("; "),
        max_seq_len,
        threads = rayon::current_num_threads(),
        "loading"
    );
    Ok(Prepared {
        path,
        cfg,
        tokenizer,
        chat_template,
        name,
        num_blocks,
        max_seq_len,
        devices,
        memory: report,
    })
}

/// Loads the weights, allocates the KV cache and starts the engine thread (slow; runs off the HTTP threads).
/// One rank: the engine thread runs the model itself. More: a [`TpGroup`] of rank workers, each with
/// `--threads / size` compute threads (at least one).
fn start_engine(
    args: &ServeArgs,
    path: &std::path::Path,
    cfg: &ModelConfig,
    num_blocks: usize,
    max_seq_len: usize,
    metrics: Metrics,
    devices: &[Device],
) -> anyhow::Result<EngineHandle> {
    let opts = LoadOptions {
        repack_q4_1: args.repack_q4_1,
        exact_bf16: args.exact_bf16,
        ..LoadOptions::default()
    };
    let sched_cfg = SchedulerConfig {
        max_num_batched_tokens: args.max_num_batched_tokens,
        max_batch_size: args.max_batch_size,
        max_seq_len,
    };
    let (block_size, prefix) = (args.block_size, !args.no_prefix_caching);
    let make_scheduler =
        move || Scheduler::new(sched_cfg, BlockManager::new(num_blocks, block_size, prefix));
    let config = EngineConfig {
        max_queue: args.max_queue,
    };
    let check = |m: &mut dyn crate::engine::StepModel| {
        crate::engine::self_check(m, cfg.bos_token_id, cfg.vocab_size, args.block_size)
            .map_err(anyhow::Error::msg)
    };
    let (engine, _thread) = match devices {
        [device] => {
            let model = Model::load(path, device, opts)?;
            let cache = KvCache::new(cfg, num_blocks, args.block_size, args.kv_dtype, device)?;
            let mut runner = ModelRunner { model, cache };
            check(&mut runner)?;
            Engine::spawn(runner, make_scheduler, metrics, config)?
        }
        _ => {
            let threads = (rayon::current_num_threads() / devices.len()).max(1);
            let cache = CacheSpec {
                num_blocks,
                block_size: args.block_size,
                dtype: args.kv_dtype,
            };
            let mut group = TpGroup::start(path, devices.to_vec(), opts, threads, cache)?;
            check(&mut group)?;
            tracing::info!(
                tensor_parallel_size = group.size(),
                threads_per_rank = group.threads_per_rank(),
                weights = group.weight_kinds(),
                "tensor-parallel ranks loaded"
            );
            Engine::spawn(group, make_scheduler, metrics, config)?
        }
    };
    Ok(engine)
}

fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let t0 = Instant::now();
    let Prepared {
        path,
        cfg,
        tokenizer,
        chat_template,
        name,
        num_blocks,
        max_seq_len,
        devices,
        memory,
    } = prepare(args)?;
    let device = devices[0].clone();
    let metrics = Metrics::new(&name)?;
    metrics.tensor_parallel_size.set(devices.len() as i64);
    memory.export(&metrics);
    let api_keys =
        crate::api::keys::ApiKeys::new(args.api_key.as_deref(), args.api_key_file.as_deref())?;
    if api_keys.required() {
        tracing::info!(keys = api_keys.count(), "an API key is required on /v1");
    }
    let device_name = crate::device::describe(&device);
    metrics
        .device_info
        .with_label_values(&[device_name.as_str()])
        .set(1);
    if device.is_cpu()
        && args.device == crate::device::DeviceArg::Auto
        && !crate::device::CUDA_COMPILED
    {
        tracing::info!(device = %device_name, "computing on the CPU (this build has no CUDA support)");
    } else {
        tracing::info!(device = %device_name, "computing on {device_name}");
    }
    // the vocabulary is handed to llguidance on the first constrained request (its tables cost tens of MB a
    // server that never sees one should not hold)
    let tokenizer = Arc::new(tokenizer);
    let guidance = Some(Arc::new(crate::guided::Guidance::lazy(
        Arc::clone(&tokenizer),
        Default::default(),
    )));
    let state = web::Data::new(AppState {
        engine: OnceLock::new(),
        tokenizer,
        chat_template: Arc::new(chat_template),
        limits: Limits {
            served_model_name: name,
            max_seq_len,
            default_max_tokens: args.default_max_tokens,
        },
        metrics: metrics.clone(),
        api_keys,
        ready: AtomicBool::new(false),
        started: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default(),
        prep: crate::api::prep::PrepPool::new(args.prep_threads, 4 * args.max_queue.max(16))?,
        chat_special_tokens: args.chat_special_tokens,
        guidance,
    });
    let addr = (args.host.clone(), args.port);
    let drain_timeout = Duration::from_secs(args.drain_timeout);
    let workers = args.http_workers.max(1);
    let load_failed = Arc::new(AtomicBool::new(false));
    let failed = Arc::clone(&load_failed);
    let args2 = args.clone();
    let dropped = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let cut_off = Arc::clone(&dropped);
    actix_web::rt::System::new().block_on(async move {
        let app_state = state.clone();
        let server = http_server(addr.clone(), workers, move || {
            App::new()
                .wrap_fn(middleware::close_connections_while_draining)
                .wrap_fn(middleware::errors_as_json)
                .wrap_fn(middleware::request_id)
                .app_data(app_state.clone())
                .app_data(web::PayloadConfig::new(middleware::MAX_BODY_BYTES))
                .configure(handlers::routes)
                .default_service(web::to(handlers::not_found))
        })?;
        let handle = server.handle();
        // /health answers at once; /ready turns 200 when the weights are loaded.
        let loader_state = state.clone();
        let loader_handle = handle.clone();
        let loader_metrics = metrics.clone();
        std::thread::Builder::new().name("loader".into()).spawn(move || {
            match start_engine(&args2, &path, &cfg, num_blocks, max_seq_len, loader_metrics, &devices) {
                Ok(engine) => {
                    let _ = loader_state.engine.set(engine);
                    loader_state.ready.store(true, Ordering::SeqCst);
                    tracing::info!(
                        host = %addr.0, port = addr.1, startup_s = t0.elapsed().as_secs_f64(),
                        "model loaded; serving OpenAI-compatible API on http://{}:{}/v1", addr.0, addr.1
                    );
                }
                Err(e) => {
                    tracing::error!("loading the model failed: {e:#}");
                    failed.store(true, Ordering::SeqCst);
                    futures::executor::block_on(loader_handle.stop(false));
                }
            }
        })?;
        let drain = drain_on_signal(state.clone(), metrics, drain_timeout, handle, cut_off);
        // The server ends by itself (a failed load stops it) or after the drain stops it.
        let served = match futures::future::select(Box::pin(server), Box::pin(drain)).await {
            futures::future::Either::Left((r, _)) => r,
            futures::future::Either::Right(((), server)) => server.await,
        };
        served.context("http server")
    })?;
    if load_failed.load(Ordering::SeqCst) {
        bail!("the model failed to load");
    }
    let cut = dropped.load(Ordering::SeqCst);
    if cut > 0 {
        bail!(
            "stopped with {cut} request(s) cut off by the drain timeout ({} s); they got an error",
            args.drain_timeout
        );
    }
    tracing::info!("stopped");
    Ok(())
}

/// actix-web's `HttpServer`, assembled from its parts so that each connection's bytes pass through
/// [`JsonErrors`](crate::api::wire::JsonErrors) (the dispatcher's own 400/408/431 get the OpenAI error body).
/// The settings `HttpServer` had: HTTP/1.1, its timeouts, `workers` threads, no signal handling of its own (the drain owns
/// SIGTERM), a 1 s shutdown timeout after the drain, the connection hook that lets handlers see disconnects.
fn http_server<F, A>(
    addr: (String, u16),
    workers: usize,
    app: F,
) -> anyhow::Result<actix_web::dev::Server>
where
    F: Fn() -> App<A> + Send + Clone + 'static,
    A: actix_service::ServiceFactory<
            actix_web::dev::ServiceRequest,
            Config = (),
            Response = actix_web::dev::ServiceResponse,
            Error = actix_web::Error,
            InitError = (),
        > + 'static,
{
    use actix_service::{ServiceFactoryExt, fn_service, map_config};
    use actix_web::rt::net::TcpStream;

    use crate::api::wire::JsonErrors;

    let server = actix_server::Server::build()
        .workers(workers)
        .disable_signals()
        .shutdown_timeout(1)
        .bind("llama-server", addr.clone(), move || {
            let app = app.clone();
            fn_service(|io: TcpStream| async move {
                let peer = io.peer_addr().ok();
                Ok::<_, actix_http::error::DispatchError>((
                    JsonErrors::new(io),
                    actix_http::Protocol::Http1,
                    peer,
                ))
            })
            .and_then(
                actix_http::HttpService::build()
                    // actix-web's HttpServer defaults: a 1 s linger after the last response lets a client
                    // that is still sending (a refused 17 MB body) read the answer instead of a reset.
                    .keep_alive(actix_http::KeepAlive::Timeout(Duration::from_secs(5)))
                    .client_request_timeout(Duration::from_secs(5))
                    .client_disconnect_timeout(Duration::from_secs(1))
                    .h1_allow_half_closed(true)
                    .on_connect_ext(
                        |io: &JsonErrors<TcpStream>, ext: &mut actix_http::Extensions| {
                            crate::api::conn::on_connect(io.get_ref(), ext)
                        },
                    )
                    .finish(map_config(
                        actix_service::IntoServiceFactory::into_factory(app())
                            .map_err(|e: actix_web::Error| e.error_response()),
                        |_| actix_web::dev::AppConfig::default(),
                    )),
            )
        })
        .with_context(|| format!("binding {}:{}", addr.0, addr.1))?
        .run();
    Ok(server)
}

/// Waits for SIGTERM or SIGINT, then: readiness 503 and new requests refused at once, in-flight requests finish
/// until shortly before `timeout`; whatever is still running then is failed with an error (streams get an error
/// event and `[DONE]`) and counted in `dropped`; the server stops. The whole shutdown fits in `timeout`.
async fn drain_on_signal(
    state: web::Data<AppState>,
    metrics: Metrics,
    timeout: Duration,
    server: actix_web::dev::ServerHandle,
    dropped: Arc<std::sync::atomic::AtomicUsize>,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; drain on SIGTERM is unavailable");
        return;
    };
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    let start = Instant::now();
    state.ready.store(false, Ordering::SeqCst);
    metrics.draining.set(1);
    let Some(engine) = state.engine.get() else {
        tracing::info!(signal = which, "stopping before the model finished loading");
        server.stop(false).await;
        return;
    };
    engine.start_draining();
    let in_flight = engine.in_flight();
    tracing::info!(
        signal = which,
        in_flight,
        timeout_s = timeout.as_secs(),
        "draining"
    );
    // Room kept at the end for failing what is left, flushing it and closing connections (actix waits at most
    // its 1 s shutdown timeout for them).
    let reserve = (timeout / 4).min(Duration::from_millis(1500));
    let finish_by = timeout.saturating_sub(reserve);
    while engine.in_flight() > 0 && start.elapsed() < finish_by {
        actix_web::rt::time::sleep(Duration::from_millis(50)).await;
    }
    let left = engine.in_flight();
    if left > 0 {
        tracing::warn!(
            left,
            "drain timeout: failing the requests still in flight with an error"
        );
        dropped.store(left, Ordering::SeqCst);
        metrics.requests_cut_at_shutdown.inc_by(left as u64);
        engine.fail_all(&format!(
            "the server is shutting down and its drain timeout ({} s) ran out before this request finished",
            timeout.as_secs()
        ));
        let flush_until = start.elapsed() + reserve / 2;
        while engine.in_flight() > 0 && start.elapsed() < flush_until {
            actix_web::rt::time::sleep(Duration::from_millis(20)).await;
        }
        // Let the error events reach the clients, then stop at once: the deadline is here.
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        server.stop(false).await;
        return;
    }
    // Let finished streams flush their last chunks.
    actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    server.stop(true).await;
}
