//! The physical paged KV cache and paged attention.
//!
//! Each layer holds K and V storage shaped `[num_blocks, block_size, n_kv_heads, head_dim]`. A step's new
//! K/V rows are written to the slots named by [`BatchInput::slot_mapping`]; each sequence then attends over
//! its context read through its block table — no per-step copy of the context and no padding.
//!
//! Three implementations, chosen by the device the cache lives on:
//! - **host** (CPU): plain Rust buffers and a rayon-parallel kernel over (token, head) pairs that walks the
//!   block table directly;
//! - **cuda** (`cuda` feature, CUDA devices): candle tensors on the GPU and our own kernels
//!   (`paged_attention.cu`: `reshape_and_cache` for the writes, `paged_attention` walking the block table);
//! - **portable** (any candle device): candle tensors, `scatter_set` for the writes and `index_select` over the
//!   block table's slots for the reads. The reference the CUDA kernels are checked against, and the fallback
//!   for heads larger than the kernel takes.
//!
//! The logical block allocator (which blocks a sequence owns) is the scheduler's business, not this module's.

use candle_core::{DType, Device, Tensor};
use half::{bf16, f16};

use crate::batch::BatchInput;
use crate::model::ModelConfig;
use host::{Shape, host_attend};

#[cfg(feature = "cuda")]
mod cuda;
mod host;

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

enum HostKv {
    F32 { k: Vec<f32>, v: Vec<f32> },
    F16 { k: Vec<f16>, v: Vec<f16> },
    BF16 { k: Vec<bf16>, v: Vec<bf16> },
}

enum LayerKv {
    Host(HostKv),
    /// `[num_blocks * block_size, n_kv_heads * head_dim]` tensors on the cache's device (portable and CUDA).
    Tensors {
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
    /// candle tensors + our CUDA kernels (CUDA devices, `cuda` feature).
    Cuda,
}

/// The physical KV cache of all layers.
pub struct KvCache {
    num_blocks: usize,
    block_size: usize,
    n_kv_heads: usize,
    head_dim: usize,
    dtype: KvDType,
    device: Device,
    imp: AttentionImpl,
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

    /// A zeroed cache of `num_blocks` blocks of `block_size` tokens. CPU devices get the host kernel, CUDA
    /// devices our CUDA kernels (heads up to their limit), anything else the portable one.
    pub fn new(
        cfg: &ModelConfig,
        num_blocks: usize,
        block_size: usize,
        dtype: KvDType,
        device: &Device,
    ) -> candle_core::Result<Self> {
        let imp = if device.is_cpu() {
            AttentionImpl::Host
        } else if device.is_cuda() && CUDA_KERNELS && cfg.head_dim <= MAX_KERNEL_HEAD_DIM {
            AttentionImpl::Cuda
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
        if imp == AttentionImpl::Cuda && !(CUDA_KERNELS && device.is_cuda()) {
            candle_core::bail!(
                "the CUDA attention kernels need a CUDA device and the `cuda` feature"
            );
        }
        if imp == AttentionImpl::Cuda && cfg.head_dim > MAX_KERNEL_HEAD_DIM {
            candle_core::bail!(
                "the CUDA attention kernel takes heads of at most {MAX_KERNEL_HEAD_DIM}, not {}",
                cfg.head_dim
            );
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
                AttentionImpl::Portable | AttentionImpl::Cuda => LayerKv::Tensors {
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
            imp,
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
        self.imp
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
        #[cfg(feature = "cuda")]
        let imp = self.imp;
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
            #[cfg(feature = "cuda")]
            LayerKv::Tensors { k: kc, v: vc } if imp == AttentionImpl::Cuda => {
                cuda::attend(q, k, v, kc, vc, batch, block_size, n_kv_heads)
            }
            LayerKv::Tensors { k: kc, v: vc } => {
                portable_attend(q, k, v, kc, vc, batch, block_size, &device)
            }
        }
    }
}

/// Whether this build has the CUDA kernels.
const CUDA_KERNELS: bool = cfg!(feature = "cuda");
/// The largest head dimension the CUDA kernel takes (`MAX_HEAD_DIM` in paged_attention.cu).
const MAX_KERNEL_HEAD_DIM: usize = 256;

/// What the CUDA kernel reads besides Q and the caches: each token's sequence; each sequence's (start, len,
/// context_len, offset of its block table in the third array); all block tables end to end (never empty, so
/// the device pointer is valid). Public for the kernel's CPU-emulated test, which feeds it to the kernel.
pub fn kernel_metadata(batch: &BatchInput) -> (Vec<u32>, Vec<u32>, Vec<u32>) {
    let mut tok_seq = Vec::with_capacity(batch.num_tokens());
    let mut seq_info = Vec::with_capacity(batch.seqs.len() * 4);
    let mut tables = Vec::new();
    for (i, s) in batch.seqs.iter().enumerate() {
        tok_seq.extend(std::iter::repeat_n(i as u32, s.len));
        seq_info.extend([
            s.start as u32,
            s.len as u32,
            s.context_len as u32,
            tables.len() as u32,
        ]);
        tables.extend_from_slice(&s.block_table);
    }
    if tables.is_empty() {
        tables.push(0);
    }
    (tok_seq, seq_info, tables)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::SeqInput;

    #[test]
    fn kernel_metadata_maps_tokens_to_sequences_and_lays_block_tables_end_to_end() {
        let batch = BatchInput {
            token_ids: vec![1, 2, 3, 4],
            positions: vec![5, 0, 1, 2],
            slot_mapping: vec![37, 16, 17, 18],
            seqs: vec![
                SeqInput {
                    start: 0,
                    len: 1,
                    context_len: 6,
                    block_table: vec![2, 7],
                    wants_logits: true,
                },
                SeqInput {
                    start: 1,
                    len: 3,
                    context_len: 3,
                    block_table: vec![1],
                    wants_logits: true,
                },
            ],
        };
        let (tok_seq, seq_info, tables) = kernel_metadata(&batch);
        assert_eq!(tok_seq, vec![0, 1, 1, 1]);
        assert_eq!(seq_info, vec![0, 1, 6, 0, 1, 3, 3, 2]);
        assert_eq!(tables, vec![2, 7, 1]);
        let (_, _, tables) = kernel_metadata(&BatchInput::default());
        assert_eq!(tables, vec![0], "never an empty device buffer");
    }

    #[test]
    fn a_cpu_cache_refuses_the_cuda_kernels_and_names_why() {
        let cfg = ModelConfig {
            architecture: "llama".into(),
            vocab_size: 32,
            embedding_length: 64,
            n_layers: 2,
            n_heads: 4,
            n_kv_heads: 2,
            head_dim: 16,
            feed_forward_length: 128,
            max_context: 64,
            rms_norm_eps: 1e-5,
            rope_theta: 10000.0,
            rope_style: crate::model::RopeStyle::Interleaved,
            bos_token_id: 1,
            eos_token_id: 2,
        };
        let err = KvCache::with_impl(&cfg, 4, 16, KvDType::F16, &Device::Cpu, AttentionImpl::Cuda)
            .expect_err("no CUDA here");
        assert!(err.to_string().contains("need a CUDA device"), "{err}");
        let cache = KvCache::new(&cfg, 4, 16, KvDType::F16, &Device::Cpu).expect("cpu cache");
        assert_eq!(cache.attention_impl(), AttentionImpl::Host);
    }
}
