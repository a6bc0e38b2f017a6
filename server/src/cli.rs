//! Command-line subcommands owned by the engine: `generate` and `bench` (the serving side adds `serve`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, bail};

use crate::batch::BatchInput;
use crate::chat::{ChatMessage, ChatTemplate};
use crate::engine::{CacheSpec, ModelRunner, StepModel, TpGroup};
use crate::gguf::GgufFile;
use crate::kv_cache::{KvCache, KvDType};
use crate::model::generate::{SINGLE_BLOCK_SIZE, generate_steps, single_sequence_blocks};
use crate::model::{LoadOptions, Model, ModelConfig};
use crate::sampler::{Sampler, SamplingParams};
use crate::tokenizer::{IncrementalDecoder, Tokenizer};

/// File name of the default model.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// `$LLAMA_OP_CACHE` or `~/.cache/llama-operator`.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("LLAMA_OP_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    PathBuf::from(home).join(".cache/llama-operator")
}

/// The model path to use: `explicit`, else the cached default model, fetched (with a progress line on
/// stderr) by `scripts/fetch-model.sh` when missing.
pub fn resolve_model(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let path = cache_dir().join("models").join(DEFAULT_MODEL_FILE);
    if path.is_file() {
        return Ok(path);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/fetch-model.sh");
    eprintln!(
        "llama-server: default model not found at {}; fetching it with {}",
        path.display(),
        script.display()
    );
    let out = Command::new("bash")
        .arg(&script)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("fetching the default model failed; pass --model PATH");
    }
    let fetched = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    Ok(fetched)
}

/// Compute threads when `--threads` is not given: `RAYON_NUM_THREADS` if set (left to rayon), else the
/// container's CPU quota rounded down (at least 1) when that is fewer than the cores this process may run on,
/// else `None` (rayon's default: those cores).
pub fn default_threads(explicit: Option<usize>) -> Option<usize> {
    if explicit.is_some() || std::env::var_os("RAYON_NUM_THREADS").is_some() {
        return explicit;
    }
    let quota = crate::cgroup::Limits::current().cpu_threads()?;
    let cores = std::thread::available_parallelism().map_or(usize::MAX, |n| n.get());
    (quota < cores).then_some(quota)
}

/// Compute threads. rayon (our kernels) reads `RAYON_NUM_THREADS` and candle's own spinning barrier pool
/// (its elementwise ops) `CANDLE_NUM_THREADS`, both from the environment at first use. A process whose
/// environment does not say `RAYON_NUM_THREADS=<threads>` (when given) and `CANDLE_NUM_THREADS` (default 1:
/// two pools competing for the same cores halved prefill speed at 2 threads) replaces itself (`exec`, same
/// pid, so signals still reach it) with one that does. Returns an exit code only when that failed.
pub fn apply_threads(threads: Option<usize>) -> Option<ExitCode> {
    let want_rayon = threads.map(|n| n.to_string());
    let rayon_ok = want_rayon.is_none() || std::env::var("RAYON_NUM_THREADS").ok() == want_rayon;
    let candle_ok = std::env::var_os("CANDLE_NUM_THREADS").is_some();
    if rayon_ok && candle_ok {
        return None;
    }
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let exe = match std::env::current_exe() {
            Ok(e) => e,
            Err(e) => {
                eprintln!(
                    "llama-server: cannot find its own executable to set the thread count: {e}"
                );
                return Some(ExitCode::FAILURE);
            }
        };
        let mut cmd = Command::new(exe);
        cmd.args(std::env::args_os().skip(1));
        if let Some(n) = want_rayon {
            cmd.env("RAYON_NUM_THREADS", n);
        }
        if !candle_ok {
            cmd.env("CANDLE_NUM_THREADS", "1");
        }
        let err = cmd.exec();
        eprintln!("llama-server: re-executing with the thread settings failed: {err}");
        Some(ExitCode::FAILURE)
    }
    #[cfg(not(unix))]
    {
        None
    }
}

/// Options shared by commands that load a model.
#[derive(Debug, Clone, clap::Args)]
pub struct ModelArgs {
    /// GGUF model file (default: the cached SmolLM2-135M-Instruct Q4_1, fetched on first use).
    #[arg(long, env = "LLAMA_OP_MODEL")]
    pub model: Option<PathBuf>,
    /// Compute threads (default: all cores).
    #[arg(long)]
    pub threads: Option<usize>,
    /// KV cache element type: f16, bf16 or f32.
    #[arg(long, default_value = "f16")]
    pub kv_dtype: KvDType,
    /// Re-encode Q4_1 weights as Q8_0 at load (experiment; the default exact Q4_1 kernel is as fast).
    #[arg(long)]
    pub repack_q4_1: bool,
    /// BF16 weights: multiply with f32 activations (exact f32 math on the stored weights) instead of
    /// rounding the activations to bf16 for AVX-512 BF16's `vdpbf16ps`, as llama.cpp does (about 1.6× the
    /// prefill speed; logits within ~3e-3 relative of exact).
    #[arg(long)]
    pub exact_bf16: bool,
    /// Where to compute: `auto`, `cpu`, `cuda` or `cuda:N` (see `serve --help`).
    #[arg(long, env = "LLAMA_DEVICE", default_value = "auto")]
    pub device: crate::device::DeviceArg,
    /// Ranks to shard the model across (see `serve --help`).
    #[arg(long, default_value_t = 1)]
    pub tensor_parallel_size: usize,
}

/// A model ready to run steps for `generate` and `bench`: one rank on the calling thread, or a tensor-parallel
/// group of rank workers; either way with a KV cache of `cache`'s blocks.
pub struct Loaded {
    pub runner: Box<dyn StepModel>,
    pub config: ModelConfig,
    pub weight_kinds: String,
    pub tensor_parallel_size: usize,
}

impl Loaded {
    /// Loads `path` for `tp` ranks on `device` (refusing a size that cannot split it, with the arithmetic).
    pub fn load(
        path: &Path,
        device: crate::device::DeviceArg,
        opts: LoadOptions,
        tp: usize,
        cache: CacheSpec,
    ) -> anyhow::Result<Self> {
        if tp == 0 {
            bail!("--tensor-parallel-size must be at least 1");
        }
        let file = GgufFile::open(path)?;
        let cfg = ModelConfig::from_gguf(&file)?;
        crate::model::check_tensor_parallel(&file, &cfg, tp)
            .map_err(|why| anyhow::anyhow!("--tensor-parallel-size {tp}: {why}"))?;
        drop(file);
        let devices = crate::device::choose_ranks(device, tp)?;
        if let [device] = devices.as_slice() {
            let model = Model::load(path, device, opts)?;
            let weight_kinds = model.weight_kinds();
            let kv = KvCache::new(
                model.rank_config(),
                cache.num_blocks,
                cache.block_size,
                cache.dtype,
                device,
            )?;
            return Ok(Self {
                config: model.config().clone(),
                runner: Box::new(ModelRunner { model, cache: kv }),
                weight_kinds,
                tensor_parallel_size: 1,
            });
        }
        let threads = (rayon::current_num_threads() / tp).max(1);
        let group = TpGroup::start(path, devices, opts, threads, cache)?;
        Ok(Self {
            config: group.config().clone(),
            weight_kinds: group.weight_kinds().to_owned(),
            runner: Box::new(group),
            tensor_parallel_size: tp,
        })
    }

    /// One step (one logits row per sequence with `wants_logits`).
    pub fn step(&mut self, batch: &BatchInput) -> candle_core::Result<Vec<Vec<f32>>> {
        self.runner.step(batch)
    }
}

/// The context length of the model in `path` (read from its header).
fn max_context(path: &Path) -> anyhow::Result<usize> {
    Ok(ModelConfig::from_gguf(&GgufFile::open(path)?)?.max_context)
}

impl ModelArgs {
    /// Load options from the flags.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            repack_q4_1: self.repack_q4_1,
            exact_bf16: self.exact_bf16,
            ..LoadOptions::default()
        }
    }
}

/// `llama-server generate`.
#[derive(Debug, Clone, clap::Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// The prompt (raw text, or the user message with --chat).
    #[arg(long)]
    pub prompt: String,
    /// Maximum tokens to generate.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Sampling temperature (0 = greedy).
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    /// Top-k (0 = off).
    #[arg(long, default_value_t = 0)]
    pub top_k: usize,
    /// Top-p (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    /// Min-p (0 = off).
    #[arg(long, default_value_t = 0.0)]
    pub min_p: f32,
    /// Repetition penalty (1 = off).
    #[arg(long, default_value_t = 1.0)]
    pub repetition_penalty: f32,
    /// RNG seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    pub chat: bool,
    /// Jinja chat template file overriding the model's.
    #[arg(long)]
    pub chat_template: Option<PathBuf>,
}

/// Runs `generate`: the generated text goes to stdout, timings to stderr.
pub fn run_generate(args: &GenerateArgs) -> anyhow::Result<()> {
    let path = resolve_model(args.model.model.as_deref())?;
    let t0 = Instant::now();
    let file = GgufFile::open(&path)?;
    let tok = Tokenizer::from_gguf(&file)?;
    let prompt = if args.chat {
        let tmpl = match &args.chat_template {
            Some(p) => ChatTemplate::from_file(p, &file)?,
            None => ChatTemplate::from_gguf(&file)?,
        };
        tmpl.render(&[ChatMessage::new("user", args.prompt.clone())], true)?
    } else {
        args.prompt.clone()
    };
    drop(file);
    let ids = tok.encode(&prompt, true, args.chat)?;
    let total = (ids.len() + args.max_tokens).min(max_context(&path)?);
    let cache = CacheSpec {
        num_blocks: single_sequence_blocks(total),
        block_size: SINGLE_BLOCK_SIZE,
        dtype: args.model.kv_dtype,
    };
    let mut model = Loaded::load(
        &path,
        args.model.device,
        args.model.load_options(),
        args.model.tensor_parallel_size,
        cache,
    )?;
    eprintln!(
        "loaded {} in {:.2}s ({} layers, {}, tensor-parallel size {})",
        path.display(),
        t0.elapsed().as_secs_f64(),
        model.config.n_layers,
        model.weight_kinds,
        model.tensor_parallel_size
    );
    let params = SamplingParams {
        temperature: args.temperature,
        top_k: args.top_k,
        top_p: args.top_p,
        min_p: args.min_p,
        repetition_penalty: args.repetition_penalty,
        seed: args.seed,
        ..SamplingParams::default()
    };
    let mut sampler = Sampler::new(params);
    let mut detok = IncrementalDecoder::new(true);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    let mut err: Option<anyhow::Error> = None;
    let max_ctx = model.config.max_context;
    let stats = generate_steps(
        |b| model.step(b),
        max_ctx,
        &ids,
        args.max_tokens,
        &mut sampler,
        tok.eos_token_ids(),
        |s, _| {
            if tok.eos_token_ids().contains(&s.token) {
                return false;
            }
            match detok.push(&tok, s.token) {
                Ok(text) => {
                    let _ = out.write_all(text.as_bytes());
                    let _ = out.flush();
                    true
                }
                Err(e) => {
                    err = Some(e.into());
                    false
                }
            }
        },
    )?;
    if let Some(e) = err {
        return Err(e);
    }
    let rest = detok.flush(&tok)?;
    out.write_all(rest.as_bytes())?;
    writeln!(out)?;
    eprintln!(
        "prompt {} tokens: {:.1} tok/s; generated {} tokens: {:.1} tok/s ({} threads)",
        stats.prompt_tokens,
        stats.prefill_tok_s(),
        stats.generated_tokens,
        stats.decode_tok_s(),
        candle_core::utils::get_num_threads()
    );
    Ok(())
}

/// `llama-server bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// GGUF model files (default: the cached SmolLM2 Q4_1).
    #[arg(long, num_args = 1.., value_delimiter = ',')]
    pub models: Vec<PathBuf>,
    /// Thread counts to measure, e.g. `1,2`.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    pub threads: Vec<usize>,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens generated for the decode measurement.
    #[arg(long, default_value_t = 64)]
    pub gen_tokens: usize,
    /// Repetitions (the best is reported).
    #[arg(long, default_value_t = 2)]
    pub repeat: usize,
    /// Re-encode Q4_1 weights as Q8_0 at load (experiment).
    #[arg(long)]
    pub repack_q4_1: bool,
    /// Multiply Q6_K weights with candle's kernels instead of ours (to measure one against the other).
    #[arg(long)]
    pub candle_q6k: bool,
    /// Run Q4_K weights on the Q4_1 kernel (re-laid out, as on CPUs without AVX-512 VNNI) instead of their
    /// own (to measure one against the other).
    #[arg(long)]
    pub q4k_as_q4_1: bool,
    /// BF16 weights: multiply with f32 activations (exact f32 math on the stored weights) instead of
    /// rounding the activations to bf16 for AVX-512 BF16's `vdpbf16ps`, as llama.cpp does (about 1.6× the
    /// prefill speed; logits within ~3e-3 relative of exact).
    #[arg(long)]
    pub exact_bf16: bool,
    /// Where to compute: `auto`, `cpu`, `cuda` or `cuda:N` (see `serve --help`).
    #[arg(long, env = "LLAMA_DEVICE", default_value = "auto")]
    pub device: crate::device::DeviceArg,
    /// Batched decode: for each size B, B sequences of `--prompt-tokens` cached context decode one token
    /// each per step (one flat batch, as the server's engine runs them); reports aggregate tokens/s.
    #[arg(long, value_delimiter = ',')]
    pub batch: Vec<usize>,
    /// Tensor-parallel sizes to measure, e.g. `1,2` (each with `--threads` threads in all, split between
    /// the ranks).
    #[arg(long, value_delimiter = ',', default_value = "1")]
    pub tensor_parallel_size: Vec<usize>,
    /// With tensor parallelism, keep the whole LM head on every rank instead of splitting the vocabulary.
    #[arg(long)]
    pub replicate_lm_head: bool,
    /// Internal: measure one model in this process (the parent sets the threads).
    #[arg(long, hide = true)]
    pub single: bool,
}

/// Runs `bench`: one child process per (model, threads), a table on stdout.
pub fn run_bench(args: &BenchArgs) -> anyhow::Result<()> {
    let models = if args.models.is_empty() {
        vec![resolve_model(None)?]
    } else {
        args.models.clone()
    };
    if args.single {
        let path = models.first().context("no model")?;
        return bench_one(path, args);
    }
    let batch_cols: String = args
        .batch
        .iter()
        .map(|b| format!(" batch {b} decode tok/s |"))
        .collect();
    println!(
        "| model | weights | threads | TP | prefill tok/s ({} tok) | decode tok/s ({} tok) |{batch_cols} file MiB | KV cache MiB | RSS after load MiB | RSS / (file + KV) |",
        args.prompt_tokens, args.gen_tokens
    );
    println!(
        "|---|---|---|---|---|---|{}---|---|---|---|",
        "---|".repeat(args.batch.len())
    );
    let exe = std::env::current_exe()?;
    let runs = args
        .threads
        .iter()
        .flat_map(|&t| args.tensor_parallel_size.iter().map(move |&tp| (t, tp)));
    for m in &models {
        for (t, tp) in runs.clone() {
            let mut cmd = Command::new(&exe);
            cmd.arg("bench")
                .arg("--single")
                .arg("--models")
                .arg(m)
                .arg("--prompt-tokens")
                .arg(args.prompt_tokens.to_string())
                .arg("--gen-tokens")
                .arg(args.gen_tokens.to_string())
                .arg("--repeat")
                .arg(args.repeat.to_string())
                .arg("--device")
                .arg(args.device.to_string())
                .arg("--tensor-parallel-size")
                .arg(tp.to_string())
                .env("RAYON_NUM_THREADS", t.to_string())
                .env("CANDLE_NUM_THREADS", "1");
            if args.repack_q4_1 {
                cmd.arg("--repack-q4-1");
            }
            if args.exact_bf16 {
                cmd.arg("--exact-bf16");
            }
            if args.candle_q6k {
                cmd.arg("--candle-q6k");
            }
            if args.q4k_as_q4_1 {
                cmd.arg("--q4k-as-q4-1");
            }
            if args.replicate_lm_head {
                cmd.arg("--replicate-lm-head");
            }
            if !args.batch.is_empty() {
                let list: Vec<String> = args.batch.iter().map(|b| b.to_string()).collect();
                cmd.arg("--batch").arg(list.join(","));
            }
            let out = cmd.output()?;
            let line = String::from_utf8_lossy(&out.stdout);
            if !out.status.success() {
                eprintln!("{}", String::from_utf8_lossy(&out.stderr));
                bail!("bench of {} failed", m.display());
            }
            print!("{line}");
        }
    }
    Ok(())
}

/// Decode steps of the batched measurement.
const BATCH_STEPS: usize = 16;

fn bench_one(path: &Path, args: &BenchArgs) -> anyhow::Result<()> {
    let opts = LoadOptions {
        repack_q4_1: args.repack_q4_1,
        replicate_lm_head: args.replicate_lm_head,
        exact_bf16: args.exact_bf16,
        candle_q6k: args.candle_q6k,
        q4k_as_q4_1: args.q4k_as_q4_1,
    };
    let tp = args.tensor_parallel_size.first().copied().unwrap_or(1);
    let single = single_sequence_blocks(args.prompt_tokens + args.gen_tokens);
    let per_seq = (args.prompt_tokens + BATCH_STEPS + 1).div_ceil(SINGLE_BLOCK_SIZE);
    let batched = args.batch.iter().max().copied().unwrap_or(0) * per_seq;
    let cache = CacheSpec {
        num_blocks: single.max(batched),
        block_size: SINGLE_BLOCK_SIZE,
        dtype: KvDType::F16,
    };
    let mut model = Loaded::load(path, args.device, opts, tp, cache)?;
    // Resident memory once the weights and the KV cache are in place (before any step allocates scratch).
    let rss = resident_bytes().unwrap_or(0);
    let c = &model.config;
    let kv_bytes =
        (cache.num_blocks * cache.block_size * c.n_layers * 2 * c.n_kv_heads * c.head_dim * 2)
            as u64;
    let file_bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    let vocab = model.config.vocab_size as u32;
    let max_ctx = model.config.max_context;
    // a deterministic, non-degenerate prompt
    let prompt: Vec<u32> = (0..args.prompt_tokens as u32)
        .map(|i| (i * 7919 + 13) % vocab.min(30_000))
        .collect();
    let (mut best_p, mut best_d) = (0f64, 0f64);
    for _ in 0..args.repeat.max(1) {
        let mut sampler = Sampler::new(SamplingParams::greedy());
        let stats = generate_steps(
            |b| model.step(b),
            max_ctx,
            &prompt,
            args.gen_tokens,
            &mut sampler,
            &[],
            |_, _| true,
        )?;
        best_p = best_p.max(stats.prefill_tok_s());
        best_d = best_d.max(stats.decode_tok_s());
    }
    let mut batched = String::new();
    for &b in &args.batch {
        let tok_s = batched_decode_tok_s(&mut model, b, args.prompt_tokens, args.repeat.max(1))?;
        batched.push_str(&format!(" {tok_s:.1} |"));
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let threads = rayon::current_num_threads();
    let weights = if opts.replicate_lm_head && tp > 1 {
        format!("{} (LM head replicated)", model.weight_kinds)
    } else {
        model.weight_kinds.clone()
    };
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "| {name} | {weights} | {threads} | {tp} | {best_p:.1} | {best_d:.1} |{batched} {:.2} | {:.2} | {:.1} | {:.2} |",
        mib(file_bytes),
        mib(kv_bytes),
        mib(rss),
        rss as f64 / (file_bytes + kv_bytes).max(1) as f64
    );
    Ok(())
}

/// This process's resident set size (`VmRSS` of `/proc/self/status`), in bytes.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Aggregate tokens/s of decode steps over `b` sequences with `ctx` cached tokens each (the cache content
/// does not matter for timing; every sequence owns its own blocks). Best of `repeat` runs of
/// [`BATCH_STEPS`] steps.
fn batched_decode_tok_s(
    model: &mut Loaded,
    b: usize,
    ctx: usize,
    repeat: usize,
) -> anyhow::Result<f64> {
    use crate::batch::SeqInput;
    let bs = SINGLE_BLOCK_SIZE;
    let per_seq = (ctx + BATCH_STEPS + 1).div_ceil(bs);
    let vocab = model.config.vocab_size as u32;
    let mut best = 0f64;
    for _ in 0..repeat {
        let start = std::time::Instant::now();
        for step in 0..BATCH_STEPS {
            let pos = ctx + step;
            let mut batch = BatchInput::default();
            for s in 0..b {
                let table: Vec<u32> = (0..per_seq).map(|i| (s * per_seq + i) as u32).collect();
                batch
                    .token_ids
                    .push((s as u32 * 7919 + step as u32 * 31 + 13) % vocab);
                batch.positions.push(pos as u32);
                batch
                    .slot_mapping
                    .push(table[pos / bs] * bs as u32 + (pos % bs) as u32);
                batch.seqs.push(SeqInput {
                    start: s,
                    len: 1,
                    context_len: pos + 1,
                    block_table: table,
                    wants_logits: true,
                });
            }
            let logits = model.step(&batch)?;
            anyhow::ensure!(
                logits.len() == b && logits.iter().all(|r| r.len() == vocab as usize),
                "logits shape"
            );
        }
        best = best.max((b * BATCH_STEPS) as f64 / start.elapsed().as_secs_f64());
    }
    Ok(best)
}
