//! The Llama forward pass on candle-core over a flat, unpadded batch and the paged KV cache.
//!
//! Names follow the GGUF tensor names (`blk.N.attn_q.weight`, …). Each layer is a struct with `load` and
//! `forward`; quantization lives in [`Linear`], so `forward` never asks what the weights are.

mod config;
pub mod generate;
pub(crate) mod kernels;
mod linear;
mod loader;
pub mod parallel;
pub mod shard;

use std::io::{Read, Seek};
use std::path::Path;
use std::time::{Duration, Instant};

use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Result, Tensor};

pub use config::{ModelConfig, RopeStyle};
pub use linear::{Linear, LoadOptions, gather_rows};
pub use parallel::{TensorParallel, check_tensor_parallel};

use loader::Loader;
use parallel::{ColumnParallel, LmHead, RowParallel};
use shard::ShardError;

use crate::batch::BatchInput;
use crate::gguf::{GgufError, GgufFile};
use crate::kv_cache::KvCache;

/// Errors from loading a model.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Gguf(#[from] GgufError),
    #[error("building layer from `{name}`: {source}")]
    Build {
        name: String,
        source: candle_core::Error,
    },
    #[error("tensor `{name}`: {detail}")]
    Unsupported { name: String, detail: String },
    #[error("tensor `{name}` has shape {got:?}, expected {want:?}")]
    Shape {
        name: String,
        got: Vec<usize>,
        want: Vec<usize>,
    },
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error("{0}")]
    TensorParallel(String),
}

/// RMSNorm with a learned scale.
#[derive(Debug, Clone)]
struct RmsNorm {
    weight: Tensor,
}

impl RmsNorm {
    fn forward(&self, x: &Tensor, eps: f64) -> Result<Tensor> {
        candle_nn::ops::rms_norm(x, &self.weight, eps as f32)
    }
}

/// Precomputed RoPE tables for every position up to the context length.
#[derive(Debug, Clone)]
struct Rope {
    cos: Tensor,
    sin: Tensor,
    style: RopeStyle,
}

impl Rope {
    fn new(cfg: &ModelConfig, device: &Device) -> Result<Self> {
        let half = cfg.head_dim / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| (cfg.rope_theta.powf(-2.0 * i as f64 / cfg.head_dim as f64)) as f32)
            .collect();
        let n = cfg.max_context;
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for p in 0..n {
            for &f in &inv {
                let a = p as f32 * f;
                cos.push(a.cos());
                sin.push(a.sin());
            }
        }
        Ok(Self {
            cos: Tensor::from_vec(cos, (n, half), device)?,
            sin: Tensor::from_vec(sin, (n, half), device)?,
            style: cfg.rope_style,
        })
    }

    /// `x: [tokens, heads, head_dim]` rotated by each token's position (`positions: [tokens]` u32).
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        let (tokens, heads, head_dim) = x.dims3()?;
        // one "batch" entry per token, each with its own cos/sin row: no transposes, any positions
        let x = x.reshape((tokens, heads, 1, head_dim))?.contiguous()?;
        let y = match self.style {
            RopeStyle::Interleaved => candle_nn::rotary_emb::rope_i(&x, cos, sin)?,
            RopeStyle::NeoX => candle_nn::rotary_emb::rope(&x, cos, sin)?,
        };
        y.reshape((tokens, heads, head_dim))
    }

    fn tables(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        let tokens = positions.dim(0)?;
        let half = self.cos.dim(1)?;
        let cos = self
            .cos
            .index_select(positions, 0)?
            .reshape((tokens, 1, half))?;
        let sin = self
            .sin
            .index_select(positions, 0)?
            .reshape((tokens, 1, half))?;
        Ok((cos, sin))
    }
}

/// Self-attention with fused Q/K/V (this rank's heads).
#[derive(Debug, Clone)]
struct Attention {
    attn_qkv: ColumnParallel,
    attn_output: RowParallel,
}

/// SwiGLU MLP with fused gate/up (this rank's share of the features).
#[derive(Debug, Clone)]
struct Mlp {
    ffn_gate_up: ColumnParallel,
    ffn_down: RowParallel,
}

impl Mlp {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let gate_up = self.ffn_gate_up.forward(x)?;
        if gate_up.device().is_cpu() {
            return self.ffn_down.forward(&kernels::silu_mul(&gate_up)?);
        }
        let (_tokens, width) = gate_up.dims2()?;
        let hidden = width / 2;
        let gate = gate_up.narrow(1, 0, hidden)?;
        let up = gate_up.narrow(1, hidden, hidden)?;
        self.ffn_down.forward(&(candle_nn::ops::silu(&gate)? * up)?)
    }
}

/// One transformer block.
#[derive(Debug, Clone)]
struct Block {
    attn_norm: RmsNorm,
    attn: Attention,
    ffn_norm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    /// Loads block `i` of the whole model `cfg` (this rank's parts of it).
    fn load<R: Read + Seek>(
        l: &mut Loader<'_, R>,
        cfg: &ModelConfig,
        i: usize,
    ) -> std::result::Result<Self, LoadError> {
        let e = cfg.embedding_length;
        let n = |s: &str| format!("blk.{i}.{s}");
        let (q, k, v) = (n("attn_q.weight"), n("attn_k.weight"), n("attn_v.weight"));
        let (gate, up) = (n("ffn_gate.weight"), n("ffn_up.weight"));
        Ok(Self {
            attn_norm: l.norm(&n("attn_norm.weight"), e)?,
            attn: Attention {
                attn_qkv: l.column(
                    &[
                        (q.as_str(), cfg.q_dim()),
                        (k.as_str(), cfg.kv_dim()),
                        (v.as_str(), cfg.kv_dim()),
                    ],
                    e,
                )?,
                attn_output: l.row(&n("attn_output.weight"), e, cfg.q_dim())?,
            },
            ffn_norm: l.norm(&n("ffn_norm.weight"), e)?,
            mlp: Mlp {
                ffn_gate_up: l.column(
                    &[
                        (gate.as_str(), cfg.feed_forward_length),
                        (up.as_str(), cfg.feed_forward_length),
                    ],
                    e,
                )?,
                ffn_down: l.row(&n("ffn_down.weight"), e, cfg.feed_forward_length)?,
            },
        })
    }

    /// `cfg` is this rank's configuration ([`ModelConfig::for_rank`]): its heads and KV heads.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        cfg: &ModelConfig,
        layer: usize,
        x: &Tensor,
        rope: &Rope,
        cos: &Tensor,
        sin: &Tensor,
        batch: &BatchInput,
        cache: &mut KvCache,
    ) -> Result<Tensor> {
        let (tokens, _) = x.dims2()?;
        let h = self.attn_norm.forward(x, cfg.rms_norm_eps)?;
        let qkv = self.attn.attn_qkv.forward(&h)?;
        let (qd, kvd) = (cfg.q_dim(), cfg.kv_dim());
        let q = qkv
            .narrow(1, 0, qd)?
            .reshape((tokens, cfg.n_heads, cfg.head_dim))?;
        let k = qkv
            .narrow(1, qd, kvd)?
            .reshape((tokens, cfg.n_kv_heads, cfg.head_dim))?;
        let v = qkv
            .narrow(1, qd + kvd, kvd)?
            .reshape((tokens, cfg.n_kv_heads, cfg.head_dim))?;
        let q = rope.forward(&q, cos, sin)?;
        let k = rope.forward(&k, cos, sin)?;
        let attn = cache.attend(layer, &q, &k, &v.contiguous()?, batch)?;
        let x = (x + self.attn.attn_output.forward(&attn)?)?;
        let h = self.ffn_norm.forward(&x, cfg.rms_norm_eps)?;
        x + self.mlp.forward(&h)?
    }
}

/// A loaded Llama-family model, or one tensor-parallel rank's part of one.
pub struct Model {
    config: ModelConfig,
    /// What this rank computes (heads, KV heads, MLP width); equal to `config` for one rank.
    rank_config: ModelConfig,
    tp: TensorParallel,
    /// The token embedding table, or `None` when it is tied to a replicated LM head that gives its rows exactly
    /// (half precision, Q8_0), whose rows are gathered instead (one copy of the matrix in memory, not two).
    token_embd: Option<QTensor>,
    blocks: Vec<Block>,
    output_norm: RmsNorm,
    output: LmHead,
    rope: Rope,
    device: Device,
    load_time: Duration,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("config", &self.config)
            .field("tp", &self.tp)
            .field("device", &self.device)
            .finish()
    }
}

/// Bytes the weights of `file` take on the compute device once loaded. Norm vectors and F32 matrices are f32;
/// F16/BF16 matrices stay half (on the CPU only when their rows are whole 32-value blocks, else they are
/// widened); the token embedding table stays in host memory (rows are gathered per step) unless it doubles as
/// the LM head. On the CPU our kernels keep Q4_K, Q5_0, Q5_1, Q5_K and Q6_K at the file's size with AVX2 or
/// VNNI (in row groups of eight) and re-lay them out elsewhere at 24, 36, 40, 40 and 40 bytes per 32 values
/// (IQ4_NL is Q8_0 already in the directory).
pub fn device_weight_bytes<R: Read + Seek>(file: &GgufFile<R>, on_cpu: bool) -> u64 {
    let tied = !file.has_tensor("output.weight");
    file.tensor_names()
        .filter(|&n| tied || n != "token_embd.weight")
        .filter_map(|n| file.tensor_info(n).ok())
        .map(|(dtype, dims)| {
            let elems: usize = dims.iter().product();
            let widened = dims.len() == 1
                || dtype == GgmlDType::F32
                || (on_cpu
                    && matches!(dtype, GgmlDType::F16 | GgmlDType::BF16)
                    && !dims.last().is_some_and(|c| c.is_multiple_of(32)));
            if widened {
                return elems as u64 * 4;
            }
            let rows = dims.first().copied().unwrap_or(1);
            let file_sized =
                kernels::Isa::detect() != kernels::Isa::Scalar && rows.is_multiple_of(8);
            let per_block = match dtype {
                GgmlDType::Q4K
                | GgmlDType::Q5_0
                | GgmlDType::Q5_1
                | GgmlDType::Q5K
                | GgmlDType::Q6K
                    if on_cpu && file_sized =>
                {
                    dtype.type_size()
                }
                GgmlDType::Q4K if on_cpu => 24 * 8,
                GgmlDType::Q5_0 if on_cpu => 36,
                GgmlDType::Q5_1 if on_cpu => 40,
                GgmlDType::Q5K if on_cpu => 40 * 8,
                GgmlDType::Q6K if on_cpu => 40 * 8,
                d => d.type_size(),
            };
            (elems / dtype.block_size() * per_block) as u64
        })
        .sum()
}

impl Model {
    /// Loads a model from a GGUF file.
    pub fn load(
        path: &Path,
        device: &Device,
        opts: LoadOptions,
    ) -> std::result::Result<Self, LoadError> {
        let mut file = GgufFile::open(path)?;
        Self::from_gguf(&mut file, device, opts)
    }

    /// Loads a model from an opened GGUF file.
    pub fn from_gguf<R: Read + Seek>(
        file: &mut GgufFile<R>,
        device: &Device,
        opts: LoadOptions,
    ) -> std::result::Result<Self, LoadError> {
        Self::rank_from_gguf(file, device, opts, TensorParallel::single())
    }

    /// Loads rank `tp.rank()`'s part of the model for a group of `tp.size()` ranks (every rank of the group
    /// must load, and then run every forward step, since the layers' collectives wait for all of them).
    pub fn load_rank(
        path: &Path,
        device: &Device,
        opts: LoadOptions,
        tp: TensorParallel,
    ) -> std::result::Result<Self, LoadError> {
        let mut file = GgufFile::open(path)?;
        Self::rank_from_gguf(&mut file, device, opts, tp)
    }

    /// [`Model::load_rank`] from an opened GGUF file.
    pub fn rank_from_gguf<R: Read + Seek>(
        file: &mut GgufFile<R>,
        device: &Device,
        opts: LoadOptions,
        tp: TensorParallel,
    ) -> std::result::Result<Self, LoadError> {
        let start = Instant::now();
        let cfg = ModelConfig::from_gguf(file)?;
        check_tensor_parallel(file, &cfg, tp.size()).map_err(LoadError::TensorParallel)?;
        // attention/MLP biases (Qwen2 has them) are not implemented: refuse rather than silently drop them
        if let Some(bias) = file
            .tensor_names()
            .find(|n| n.starts_with("blk.") && n.ends_with(".bias"))
        {
            return Err(LoadError::Unsupported {
                name: bias.to_string(),
                detail: "bias tensors are not supported".into(),
            });
        }
        let mut l = Loader {
            file,
            device,
            opts,
            tp: &tp,
        };
        let e = cfg.embedding_length;
        let token_embd = l.raw("token_embd.weight", &[cfg.vocab_size, e])?;
        let mut blocks = Vec::with_capacity(cfg.n_layers);
        for i in 0..cfg.n_layers {
            blocks.push(Block::load(&mut l, &cfg, i)?);
        }
        let output_norm = l.norm("output_norm.weight", e)?;
        let output = if l.file.has_tensor("output.weight") {
            l.lm_head("output.weight", cfg.vocab_size, e, opts)?
        } else {
            // tied embeddings: the LM head is the embedding matrix itself (never re-encoded)
            let opts = LoadOptions {
                repack_q4_1: false,
                ..opts
            };
            l.lm_head("token_embd.weight", cfg.vocab_size, e, opts)?
        };
        // a tied head that can give its rows exactly (half precision, Q8_0 on our kernel) serves the
        // embedding lookups too: the matrix is held once
        let token_embd = match &output {
            LmHead::Replicated(head)
                if !l.file.has_tensor("output.weight") && head.can_gather() =>
            {
                None
            }
            _ => Some(token_embd),
        };
        let rope = Rope::new(&cfg, device).map_err(|source| LoadError::Build {
            name: "rope tables".into(),
            source,
        })?;
        kernels::release_free_heap();
        Ok(Self {
            rank_config: cfg.for_rank(tp.size()),
            config: cfg,
            tp,
            token_embd,
            blocks,
            output_norm,
            output,
            rope,
            device: device.clone(),
            load_time: start.elapsed(),
        })
    }

    /// The resolved configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// What this rank computes: the heads and KV heads its layers and its KV cache hold (size a rank's
    /// [`KvCache`] from this). The whole model's [`Model::config`] for one rank.
    pub fn rank_config(&self) -> &ModelConfig {
        &self.rank_config
    }

    /// This model's tensor-parallel group.
    pub fn tensor_parallel(&self) -> &TensorParallel {
        &self.tp
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// How long loading took.
    pub fn load_time(&self) -> Duration {
        self.load_time
    }

    /// Weight type of each kind of layer (for logs and benchmarks), e.g. `qkv=Q8_0 ... output=Q8_0`.
    pub fn weight_kinds(&self) -> String {
        match self.blocks.first() {
            Some(b) => format!(
                "qkv={} attn_output={} gate_up={} down={} output={}",
                b.attn.attn_qkv.kind(),
                b.attn.attn_output.kind(),
                b.mlp.ffn_gate_up.kind(),
                b.mlp.ffn_down.kind(),
                self.output.kind()
            ),
            None => format!("output={}", self.output.kind()),
        }
    }

    /// Runs one step: writes the batch's K/V into `cache` and returns f32 logits
    /// `[number of seqs with wants_logits, vocab]`, in `batch.seqs` order. With tensor parallelism every rank
    /// runs the same step on its own cache (sized from [`Model::rank_config`]) and gets the same logits.
    pub fn forward(&self, batch: &BatchInput, cache: &mut KvCache) -> Result<Tensor> {
        if rayon::current_thread_index().is_none() && rayon::current_num_threads() > 1 {
            // The whole step runs on a worker of the pool: called from the engine's own thread, the steps
            // between matmuls ran there while the pool's idle workers yield-spun on the same cores.
            return rayon::scope(|_| self.forward_in_pool(batch, cache));
        }
        self.forward_in_pool(batch, cache)
    }

    fn forward_in_pool(&self, batch: &BatchInput, cache: &mut KvCache) -> Result<Tensor> {
        cache.check_batch(batch)?;
        if cache.n_kv_heads() != self.rank_config.n_kv_heads {
            candle_core::bail!(
                "the KV cache holds {} KV heads, this rank computes {}",
                cache.n_kv_heads(),
                self.rank_config.n_kv_heads
            );
        }
        let cfg = &self.config;
        if let Some(&p) = batch
            .positions
            .iter()
            .find(|&&p| p as usize >= cfg.max_context)
        {
            candle_core::bail!(
                "position {p} exceeds the context length {}",
                cfg.max_context
            );
        }
        let wanted: Vec<u32> = batch
            .seqs
            .iter()
            .filter(|s| s.wants_logits)
            .map(|s| (s.start + s.len - 1) as u32)
            .collect();
        if batch.num_tokens() == 0 {
            return Tensor::zeros((0, cfg.vocab_size), DType::F32, &self.device);
        }
        let mut x = match (&self.token_embd, &self.output) {
            (Some(table), _) => gather_rows(table, &batch.token_ids, &self.device)?,
            (None, LmHead::Replicated(head)) => {
                let rows = head.gather(&batch.token_ids)?;
                Tensor::from_vec(
                    rows,
                    (batch.token_ids.len(), cfg.embedding_length),
                    &self.device,
                )?
            }
            (None, _) => candle_core::bail!("no token embedding table"),
        };
        let positions = Tensor::from_slice(&batch.positions, batch.num_tokens(), &self.device)?;
        let (cos, sin) = self.rope.tables(&positions)?;
        for (i, block) in self.blocks.iter().enumerate() {
            x = block.forward(
                &self.rank_config,
                i,
                &x,
                &self.rope,
                &cos,
                &sin,
                batch,
                cache,
            )?;
        }
        if wanted.is_empty() {
            return Tensor::zeros((0, cfg.vocab_size), DType::F32, &self.device);
        }
        let idx = Tensor::from_vec(wanted.clone(), wanted.len(), &self.device)?;
        let x = x.index_select(&idx, 0)?;
        let x = self.output_norm.forward(&x, cfg.rms_norm_eps)?;
        self.output.forward(&x)?.to_dtype(DType::F32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(style: RopeStyle) -> ModelConfig {
        ModelConfig {
            architecture: "test".into(),
            vocab_size: 8,
            embedding_length: 16,
            n_layers: 1,
            n_heads: 2,
            n_kv_heads: 1,
            head_dim: 8,
            feed_forward_length: 32,
            max_context: 64,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_style: style,
            bos_token_id: 1,
            eos_token_id: 2,
        }
    }

    /// RoPE straight from the definitions: interleaved rotates pairs (2i, 2i+1), NeoX rotates (i, i + d/2),
    /// both by angle `pos · θ^(-2i/d)`.
    fn manual(x: &[f32], pos: usize, d: usize, style: RopeStyle) -> Vec<f32> {
        let mut y = x.to_vec();
        for i in 0..d / 2 {
            let a = pos as f64 * 10_000f64.powf(-2.0 * i as f64 / d as f64);
            let (c, s) = (a.cos() as f32, a.sin() as f32);
            let (p, q) = match style {
                RopeStyle::Interleaved => (2 * i, 2 * i + 1),
                RopeStyle::NeoX => (i, i + d / 2),
            };
            y[p] = x[p] * c - x[q] * s;
            y[q] = x[p] * s + x[q] * c;
        }
        y
    }

    #[test]
    fn rope_rotates_by_each_tokens_own_position_in_both_conventions() {
        for style in [RopeStyle::Interleaved, RopeStyle::NeoX] {
            let cfg = config(style);
            let rope = Rope::new(&cfg, &Device::Cpu).expect("rope");
            let (tokens, heads, d) = (3, 2, cfg.head_dim);
            let x: Vec<f32> = (0..tokens * heads * d)
                .map(|i| (i as f32 * 0.37).sin())
                .collect();
            let positions = [5u32, 0, 17]; // any order: a flat batch mixes sequences
            let pos = Tensor::new(&positions, &Device::Cpu).expect("positions");
            let (cos, sin) = rope.tables(&pos).expect("tables");
            let xt = Tensor::from_vec(x.clone(), (tokens, heads, d), &Device::Cpu).expect("x");
            let y = rope
                .forward(&xt, &cos, &sin)
                .expect("rope")
                .flatten_all()
                .expect("flat")
                .to_vec1::<f32>()
                .expect("vec");
            for (t, &p) in positions.iter().enumerate() {
                for h in 0..heads {
                    let off = (t * heads + h) * d;
                    let want = manual(&x[off..off + d], p as usize, d, style);
                    for (a, b) in y[off..off + d].iter().zip(&want) {
                        assert!(
                            (a - b).abs() < 1e-5,
                            "{style:?} token {t} head {h}: {a} vs {b}"
                        );
                    }
                }
            }
        }
    }
}
