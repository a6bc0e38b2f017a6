//! The physical paged KV cache and paged attention.
//!
//! Each layer holds K and V storage shaped `[num_blocks, block_size, n_kv_heads, head_dim]`. A step's new
//! K/V rows are written to the slots named by [`BatchInput::slot_mapping`]; each sequence then attends over
//! its context read through its block table — no per-step copy of the context and no padding.
//!
//! Two implementations, chosen by the device the cache lives on:
//! - **host** (CPU): plain Rust buffers and a rayon-parallel kernel over (token, head) pairs that walks the
//!   block table directly;
//! - **portable** (any candle device, used for CUDA): candle tensors, `scatter_set` for the writes and
//!   `index_select` over the block table's slots for the reads.
//!
//! The logical block allocator (which blocks a sequence owns) is the scheduler's business, not this module's.

use candle_core::{DType, Device, Tensor};
use half::slice::HalfFloatSliceExt;
use half::{bf16, f16};
use rayon::prelude::*;

use crate::batch::BatchInput;
use crate::model::ModelConfig;
use crate::model::kernels::VecOps;

/// Element type of the cached keys and values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KvDType {
    F32,
    /// Half precision, as llama.cpp keeps its KV cache (the default).
    #[default]
    F16,
    BF16,
}

impl KvDType {
    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::BF16 => 2,
        }
    }

    fn candle(self) -> DType {
        match self {
            Self::F32 => DType::F32,
            Self::F16 => DType::F16,
            Self::BF16 => DType::BF16,
        }
    }
}

impl std::str::FromStr for KvDType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" => Ok(Self::F32),
            "f16" => Ok(Self::F16),
            "bf16" => Ok(Self::BF16),
            other => Err(format!("unknown KV cache dtype `{other}` (f32, f16, bf16)")),
        }
    }
}

/// A batch that does not fit the cache (a scheduler bug, reported rather than panicking).
#[derive(Debug, thiserror::Error)]
pub enum KvCacheError {
    #[error("slot {slot} is outside the cache ({slots} slots)")]
    SlotOutOfRange { slot: usize, slots: usize },
    #[error("sequence {seq}: block table covers {covered} tokens, context_len is {context_len}")]
    ShortBlockTable {
        seq: usize,
        covered: usize,
        context_len: usize,
    },
    #[error("sequence {seq}: block id {block} is outside the cache ({num_blocks} blocks)")]
    BlockOutOfRange {
        seq: usize,
        block: usize,
        num_blocks: usize,
    },
    #[error("malformed batch: {0}")]
    Batch(String),
}

impl From<KvCacheError> for candle_core::Error {
    fn from(e: KvCacheError) -> Self {
        candle_core::Error::msg(e.to_string())
    }
}

trait KvElem: Copy + Send + Sync + Default + 'static {
    fn from_f32(x: f32) -> Self;
    /// `out[i] = q[i·hd..(i+1)·hd] · k` for each query head of a group (`hd = k.len()`).
    fn dots(ops: &VecOps, q: &[f32], k: &[Self], out: &mut [f32], buf: &mut [f32]);
    /// `o[i·hd + c] += p[i] · v[c]` for each head of a group.
    fn axpys(ops: &VecOps, p: &[f32], v: &[Self], o: &mut [f32], buf: &mut [f32]);
    /// `scores[j·g + i] = q_i · cache[offs[j]..][..hd]` for the `g` heads of a group.
    fn scores(
        ops: &VecOps,
        q: &[f32],
        cache: &[Self],
        offs: &[usize],
        hd: usize,
        scores: &mut [f32],
        buf: &mut [f32],
    ) {
        let g = q.len() / hd;
        for (j, &off) in offs.iter().enumerate() {
            Self::dots(
                ops,
                q,
                &cache[off..off + hd],
                &mut scores[j * g..(j + 1) * g],
                buf,
            );
        }
    }
    /// `o[i·hd + c] += Σ_j p[j·g + i] · cache[offs[j] + c]`.
    fn weighted(
        ops: &VecOps,
        p: &[f32],
        cache: &[Self],
        offs: &[usize],
        hd: usize,
        o: &mut [f32],
        buf: &mut [f32],
    ) {
        let g = o.len() / hd;
        for (j, &off) in offs.iter().enumerate() {
            Self::axpys(ops, &p[j * g..(j + 1) * g], &cache[off..off + hd], o, buf);
        }
    }
}

fn dots_f32(ops: &VecOps, q: &[f32], k: &[f32], out: &mut [f32]) {
    for (o, qh) in out.iter_mut().zip(q.chunks_exact(k.len())) {
        *o = (ops.dot)(qh, k);
    }
}

fn axpys_f32(ops: &VecOps, p: &[f32], v: &[f32], o: &mut [f32]) {
    for (&w, oh) in p.iter().zip(o.chunks_exact_mut(v.len())) {
        (ops.axpy)(w, v, oh);
    }
}

impl KvElem for f32 {
    fn from_f32(x: f32) -> Self {
        x
    }
    fn dots(ops: &VecOps, q: &[f32], k: &[Self], out: &mut [f32], _: &mut [f32]) {
        dots_f32(ops, q, k, out);
    }
    fn axpys(ops: &VecOps, p: &[f32], v: &[Self], o: &mut [f32], _: &mut [f32]) {
        axpys_f32(ops, p, v, o);
    }
}
impl KvElem for f16 {
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    fn dots(ops: &VecOps, q: &[f32], k: &[Self], out: &mut [f32], _: &mut [f32]) {
        (ops.dots_f16)(q, k, out);
    }
    fn axpys(ops: &VecOps, p: &[f32], v: &[Self], o: &mut [f32], _: &mut [f32]) {
        (ops.axpys_f16)(p, v, o);
    }
    fn scores(
        ops: &VecOps,
        q: &[f32],
        cache: &[Self],
        offs: &[usize],
        hd: usize,
        scores: &mut [f32],
        _: &mut [f32],
    ) {
        (ops.scores_f16)(q, cache, offs, hd, scores);
    }
    fn weighted(
        ops: &VecOps,
        p: &[f32],
        cache: &[Self],
        offs: &[usize],
        hd: usize,
        o: &mut [f32],
        _: &mut [f32],
    ) {
        (ops.weighted_rows_f16)(p, cache, offs, hd, o);
    }
}
impl KvElem for bf16 {
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    fn dots(ops: &VecOps, q: &[f32], k: &[Self], out: &mut [f32], buf: &mut [f32]) {
        k.convert_to_f32_slice(buf);
        dots_f32(ops, q, buf, out);
    }
    fn axpys(ops: &VecOps, p: &[f32], v: &[Self], o: &mut [f32], buf: &mut [f32]) {
        v.convert_to_f32_slice(buf);
        axpys_f32(ops, p, buf, o);
    }
}

enum HostKv {
    F32 { k: Vec<f32>, v: Vec<f32> },
    F16 { k: Vec<f16>, v: Vec<f16> },
    BF16 { k: Vec<bf16>, v: Vec<bf16> },
}

enum LayerKv {
    Host(HostKv),
    /// `[num_blocks * block_size, n_kv_heads * head_dim]` tensors on the cache's device.
    Portable {
        k: Tensor,
        v: Tensor,
    },
}

/// Which attention implementation a cache uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionImpl {
    /// Rust buffers + the rayon paged-attention kernel (CPU only).
    Host,
    /// candle tensors + index_select over the block table (any device).
    Portable,
}

/// The physical KV cache of all layers.
pub struct KvCache {
    num_blocks: usize,
    block_size: usize,
    n_kv_heads: usize,
    head_dim: usize,
    dtype: KvDType,
    device: Device,
    layers: Vec<LayerKv>,
}

impl std::fmt::Debug for KvCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvCache")
            .field("num_blocks", &self.num_blocks)
            .field("block_size", &self.block_size)
            .field("dtype", &self.dtype)
            .field("layers", &self.layers.len())
            .field("impl", &self.attention_impl())
            .finish()
    }
}

impl KvCache {
    /// Bytes one block takes across all layers (K and V): size a pool from a memory budget with this.
    pub fn bytes_per_block(cfg: &ModelConfig, block_size: usize, dtype: KvDType) -> usize {
        2 * cfg.n_layers * block_size * cfg.n_kv_heads * cfg.head_dim * dtype.size_in_bytes()
    }

    /// A zeroed cache of `num_blocks` blocks of `block_size` tokens. CPU devices get the host kernel,
    /// others the portable one.
    pub fn new(
        cfg: &ModelConfig,
        num_blocks: usize,
        block_size: usize,
        dtype: KvDType,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let imp = if device.is_cpu() {
            AttentionImpl::Host
        } else {
            AttentionImpl::Portable
        };
        Self::with_impl(cfg, num_blocks, block_size, dtype, device, imp)
    }

    /// Like [`KvCache::new`] with an explicit implementation (tests run the portable path on the CPU).
    pub fn with_impl(
        cfg: &ModelConfig,
        num_blocks: usize,
        block_size: usize,
        dtype: KvDType,
        device: &Device,
        imp: AttentionImpl,
    ) -> candle_core::Result<Self> {
        if block_size == 0 {
            candle_core::bail!("block_size must be positive");
        }
        if imp == AttentionImpl::Host && !device.is_cpu() {
            candle_core::bail!("the host attention kernel needs a CPU device");
        }
        let row = cfg.n_kv_heads * cfg.head_dim;
        let slots = num_blocks * block_size;
        let elems = slots * row;
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for _ in 0..cfg.n_layers {
            layers.push(match imp {
                AttentionImpl::Host => LayerKv::Host(match dtype {
                    KvDType::F32 => HostKv::F32 {
                        k: vec![0.0; elems],
                        v: vec![0.0; elems],
                    },
                    KvDType::F16 => HostKv::F16 {
                        k: vec![f16::ZERO; elems],
                        v: vec![f16::ZERO; elems],
                    },
                    KvDType::BF16 => HostKv::BF16 {
                        k: vec![bf16::ZERO; elems],
                        v: vec![bf16::ZERO; elems],
                    },
                }),
                AttentionImpl::Portable => LayerKv::Portable {
                    k: Tensor::zeros((slots, row), dtype.candle(), device)?,
                    v: Tensor::zeros((slots, row), dtype.candle(), device)?,
                },
            });
        }
        Ok(Self {
            num_blocks,
            block_size,
            n_kv_heads: cfg.n_kv_heads,
            head_dim: cfg.head_dim,
            dtype,
            device: device.clone(),
            layers,
        })
    }

    /// Number of blocks.
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// Tokens per block.
    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Key/value heads per slot.
    pub fn n_kv_heads(&self) -> usize {
        self.n_kv_heads
    }

    /// Dimension of one head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Element type.
    pub fn dtype(&self) -> KvDType {
        self.dtype
    }

    /// The implementation in use.
    pub fn attention_impl(&self) -> AttentionImpl {
        match self.layers.first() {
            Some(LayerKv::Portable { .. }) => AttentionImpl::Portable,
            _ => AttentionImpl::Host,
        }
    }

    /// Checks that every slot and every block a batch names exists (once per step, before the layers).
    pub fn check_batch(&self, batch: &BatchInput) -> Result<(), KvCacheError> {
        let slots = self.num_blocks * self.block_size;
        let n = batch.num_tokens();
        if batch.positions.len() != n || batch.slot_mapping.len() != n {
            return Err(KvCacheError::Batch(format!(
                "{n} tokens but {} positions and {} slots",
                batch.positions.len(),
                batch.slot_mapping.len()
            )));
        }
        if let Some(&slot) = batch.slot_mapping.iter().find(|&&s| s as usize >= slots) {
            return Err(KvCacheError::SlotOutOfRange {
                slot: slot as usize,
                slots,
            });
        }
        let mut next = 0;
        for (i, s) in batch.seqs.iter().enumerate() {
            if s.start != next || s.len == 0 || s.len > s.context_len {
                return Err(KvCacheError::Batch(format!(
                    "sequence {i}: start {} len {} context_len {} (expected start {next})",
                    s.start, s.len, s.context_len
                )));
            }
            next += s.len;
            let covered = s.block_table.len() * self.block_size;
            if covered < s.context_len {
                return Err(KvCacheError::ShortBlockTable {
                    seq: i,
                    covered,
                    context_len: s.context_len,
                });
            }
            if let Some(&b) = s
                .block_table
                .iter()
                .find(|&&b| b as usize >= self.num_blocks)
            {
                return Err(KvCacheError::BlockOutOfRange {
                    seq: i,
                    block: b as usize,
                    num_blocks: self.num_blocks,
                });
            }
        }
        if next != n {
            return Err(KvCacheError::Batch(format!(
                "sequences cover {next} tokens, batch has {n}"
            )));
        }
        Ok(())
    }

    /// Writes this step's keys/values of `layer` into their slots and returns the attention output.
    ///
    /// `q`: `[tokens, n_heads, head_dim]`, `k`/`v`: `[tokens, n_kv_heads, head_dim]` (f32, RoPE applied).
    /// Returns `[tokens, n_heads * head_dim]` (f32). The batch must have passed [`KvCache::check_batch`].
    pub fn attend(
        &mut self,
        layer: usize,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        batch: &BatchInput,
    ) -> candle_core::Result<Tensor> {
        let (tokens, n_heads, head_dim) = q.dims3()?;
        let block_size = self.block_size;
        let n_kv_heads = self.n_kv_heads;
        let device = self.device.clone();
        let Some(store) = self.layers.get_mut(layer) else {
            candle_core::bail!("layer {layer} out of range");
        };
        match store {
            LayerKv::Host(kv) => {
                let q = q.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let k = k.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let v = v.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
                let shape = Shape {
                    n_heads,
                    n_kv_heads,
                    head_dim,
                    block_size,
                };
                let out = match kv {
                    HostKv::F32 { k: kc, v: vc } => host_attend(&shape, &q, &k, &v, kc, vc, batch),
                    HostKv::F16 { k: kc, v: vc } => host_attend(&shape, &q, &k, &v, kc, vc, batch),
                    HostKv::BF16 { k: kc, v: vc } => host_attend(&shape, &q, &k, &v, kc, vc, batch),
                };
                Tensor::from_vec(out, (tokens, n_heads * head_dim), &device)
            }
            LayerKv::Portable { k: kc, v: vc } => {
                portable_attend(q, k, v, kc, vc, batch, block_size, &device)
            }
        }
    }
}

struct Shape {
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    block_size: usize,
}

fn host_attend<T: KvElem>(
    s: &Shape,
    q: &[f32],
    k_new: &[f32],
    v_new: &[f32],
    k_cache: &mut [T],
    v_cache: &mut [T],
    batch: &BatchInput,
) -> Vec<f32> {
    let row = s.n_kv_heads * s.head_dim;
    // 1. write the new rows into their slots
    for (i, &slot) in batch.slot_mapping.iter().enumerate() {
        let dst = slot as usize * row;
        for (d, x) in k_cache[dst..dst + row]
            .iter_mut()
            .zip(&k_new[i * row..(i + 1) * row])
        {
            *d = T::from_f32(*x);
        }
        for (d, x) in v_cache[dst..dst + row]
            .iter_mut()
            .zip(&v_new[i * row..(i + 1) * row])
        {
            *d = T::from_f32(*x);
        }
    }
    // 2. each (token, KV head) pair attends causally over its sequence's context through the block table,
    //    for all the query heads sharing that KV head at once (GQA): every K/V row is widened once per group
    let mut token_seq = Vec::with_capacity(batch.num_tokens());
    for (si, seq) in batch.seqs.iter().enumerate() {
        let cached = seq.context_len - seq.len;
        for i in 0..seq.len {
            token_seq.push((si, cached + i + 1));
        }
    }
    let k_cache: &[T] = k_cache;
    let v_cache: &[T] = v_cache;
    let hd = s.head_dim;
    let group = s.n_heads / s.n_kv_heads;
    let scale = 1.0 / (hd as f32).sqrt();
    let ops = VecOps::detect();
    let mut out = vec![0f32; q.len()];
    let init = || (Vec::<f32>::new(), vec![0f32; hd], Vec::<usize>::new());
    // `o` holds the outputs of heads g*group .. (g+1)*group of one token (contiguous in [tokens, heads, hd]);
    // `scores[j * group + i]` is head i's score for context position j; `offs[j]` that position's row
    type State = (Vec<f32>, Vec<f32>, Vec<usize>);
    let body = |(scores, buf, offs): &mut State, (idx, o): (usize, &mut [f32])| {
        let (tok, g) = (idx / s.n_kv_heads, idx % s.n_kv_heads);
        let (si, n_ctx) = token_seq[tok];
        let table = &batch.seqs[si].block_table;
        let qg = &q[idx * group * hd..(idx + 1) * group * hd];
        offs.clear();
        offs.extend((0..n_ctx).map(|j| {
            let slot = table[j / s.block_size] as usize * s.block_size + j % s.block_size;
            slot * row + g * hd
        }));
        scores.clear();
        scores.resize(group * n_ctx, 0.0);
        T::scores(&ops, qg, k_cache, offs, hd, scores, buf);
        for i in 0..group {
            let max = (0..n_ctx).fold(f32::NEG_INFINITY, |m, j| m.max(scores[j * group + i]));
            let mut sum = 0f32;
            for j in 0..n_ctx {
                let e = ((scores[j * group + i] - max) * scale).exp();
                scores[j * group + i] = e;
                sum += e;
            }
            let inv = 1.0 / sum;
            (0..n_ctx).for_each(|j| scores[j * group + i] *= inv);
        }
        T::weighted(&ops, scores, v_cache, offs, hd, o, buf);
    };
    if rayon::current_num_threads() <= 1 {
        // inline: handing each layer to a one-thread pool costs two context switches
        let mut state = init();
        out.chunks_mut(group * hd)
            .enumerate()
            .for_each(|item| body(&mut state, item));
    } else {
        out.par_chunks_mut(group * hd)
            .enumerate()
            .for_each_init(init, body);
    }
    out
}

#[allow(clippy::too_many_arguments)]
fn portable_attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    batch: &BatchInput,
    block_size: usize,
    device: &Device,
) -> candle_core::Result<Tensor> {
    let (tokens, n_heads, head_dim) = q.dims3()?;
    let (_, n_kv_heads, _) = k.dims3()?;
    let row = n_kv_heads * head_dim;
    let dtype = k_cache.dtype();
    let slots = Tensor::from_slice(&batch.slot_mapping, tokens, device)?
        .unsqueeze(1)?
        .broadcast_as((tokens, row))?
        .contiguous()?;
    k_cache.scatter_set(&slots, &k.reshape((tokens, row))?.to_dtype(dtype)?, 0)?;
    v_cache.scatter_set(&slots, &v.reshape((tokens, row))?.to_dtype(dtype)?, 0)?;
    let group = n_heads / n_kv_heads;
    let scale = 1.0 / (head_dim as f64).sqrt();
    let mut outs = Vec::with_capacity(batch.seqs.len());
    for seq in &batch.seqs {
        let ctx = seq.context_len;
        let ctx_slots: Vec<u32> = (0..ctx)
            .map(|j| seq.block_table[j / block_size] * block_size as u32 + (j % block_size) as u32)
            .collect();
        let idx = Tensor::from_vec(ctx_slots, ctx, device)?;
        // [ctx, kv_heads, d] -> [kv_heads, 1, ctx, d] -> repeat for the query group
        let gather = |c: &Tensor| -> candle_core::Result<Tensor> {
            c.index_select(&idx, 0)?
                .to_dtype(DType::F32)?
                .reshape((ctx, n_kv_heads, 1, head_dim))?
                .broadcast_as((ctx, n_kv_heads, group, head_dim))?
                .reshape((ctx, n_heads, head_dim))?
                .transpose(0, 1)?
                .contiguous()
        };
        let ks = gather(k_cache)?;
        let vs = gather(v_cache)?;
        let qs = q
            .narrow(0, seq.start, seq.len)?
            .transpose(0, 1)?
            .contiguous()?; // [h, len, d]
        let scores = (qs.matmul(&ks.t()?)? * scale)?; // [h, len, ctx]
        let cached = ctx - seq.len;
        let mask: Vec<f32> = (0..seq.len)
            .flat_map(|i| {
                (0..ctx).map(move |j| {
                    if j <= cached + i {
                        0.0
                    } else {
                        f32::NEG_INFINITY
                    }
                })
            })
            .collect();
        let mask = Tensor::from_vec(mask, (1, seq.len, ctx), device)?;
        let probs = candle_nn::ops::softmax_last_dim(&scores.broadcast_add(&mask)?)?;
        let o = probs.matmul(&vs)?; // [h, len, d]
        outs.push(o.transpose(0, 1)?.reshape((seq.len, n_heads * head_dim))?);
    }
    Tensor::cat(&outs, 0)
}
