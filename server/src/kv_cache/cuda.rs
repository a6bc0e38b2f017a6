//! Paged attention on CUDA: our own kernels (`paged_attention.cu`), compiled with NVRTC the first time a cache
//! is used and launched through candle's custom ops on the device's stream.
//!
//! - `reshape_and_cache_*` writes a step's new K (or V) rows into their slots, in the cache's element type;
//! - `paged_attention_*` runs one query row per (token, head) over its sequence's visible keys, read through
//!   its block table (prefill, chunked prefill and decode alike), with an online softmax in f32.
//!
//! The portable candle-ops path ([`super::portable_attend`]) stays the reference: `scripts/gpu-check.sh`
//! compares the two on a GPU. Without a GPU, `make cuda-check` compiles the kernels with the same NVRTC
//! options and assembles them for sm_90 (scripts/nvrtc-check.py).

use std::sync::OnceLock;

use candle_core::backend::BackendStorage;
use candle_core::cuda::WrapErr;
use candle_core::cuda::cudarc::driver::{LaunchConfig, PushKernelArg};
use candle_core::cuda::cudarc::nvrtc;
use candle_core::{
    CpuStorage, CudaStorage, CustomOp3, DType, InplaceOp2, Layout, Result, Shape, Tensor,
};

use super::MAX_KERNEL_HEAD_DIM;
use crate::batch::BatchInput;

const SOURCE: &str = include_str!("paged_attention.cu");
const MODULE: &str = "llama_server_paged_attention";
/// Warps per block of `paged_attention_*` (the kernel's `WARPS`).
const WARPS: u32 = 4;

/// The kernels' PTX, compiled once per process (NVRTC default options, no include path: the source needs no
/// CUDA header).
fn ptx() -> Result<&'static str> {
    static PTX: OnceLock<std::result::Result<String, String>> = OnceLock::new();
    PTX.get_or_init(|| {
        nvrtc::compile_ptx(SOURCE)
            .map(|p| p.to_src())
            .map_err(|e| format!("compiling the paged-attention kernels with NVRTC: {e}"))
    })
    .as_deref()
    .map_err(|e| candle_core::Error::Msg(e.clone()))
}

fn suffix(dtype: DType) -> Result<&'static str> {
    match dtype {
        DType::F32 => Ok("f32"),
        DType::F16 => Ok("f16"),
        DType::BF16 => Ok("bf16"),
        other => candle_core::bail!("no paged-attention kernel for a {other:?} KV cache"),
    }
}

/// The kernel `root` for a cache of `dtype`, loaded from our module (compiled on first use).
fn kernel_name(root: &str, dtype: DType) -> Result<String> {
    Ok(format!("{root}_{}", suffix(dtype)?))
}

fn no_cpu(name: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!(
        "{name} is a CUDA kernel: CPU caches use the host kernel"
    ))
}

/// Writes `src` rows (`[tokens, row]`, f32) into the cache rows named by `slots`.
struct WriteSlots<'a> {
    slots: &'a [u32],
}

impl InplaceOp2 for WriteSlots<'_> {
    fn name(&self) -> &'static str {
        "reshape_and_cache"
    }

    fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<()> {
        Err(no_cpu(self.name()))
    }

    // Launching a kernel is an FFI call: `unsafe` is allowed here and only here.
    #[allow(unsafe_code)]
    fn cuda_fwd(
        &self,
        cache: &mut CudaStorage,
        cache_l: &Layout,
        src: &CudaStorage,
        src_l: &Layout,
    ) -> Result<()> {
        if !cache_l.is_contiguous() || cache_l.start_offset() != 0 || !src_l.is_contiguous() {
            candle_core::bail!("reshape_and_cache needs contiguous tensors");
        }
        let (tokens, row) = src_l.shape().dims2()?;
        if tokens != self.slots.len() {
            candle_core::bail!("{tokens} rows but {} slots", self.slots.len());
        }
        if tokens == 0 {
            return Ok(());
        }
        let dev = src.device().clone();
        let dtype = cache.dtype();
        let f =
            dev.get_or_load_custom_func(&kernel_name("reshape_and_cache", dtype)?, MODULE, ptx()?)?;
        let slots = dev.clone_htod(self.slots)?;
        let src = src.as_cuda_slice::<f32>()?.slice(src_l.start_offset()..);
        let cfg = LaunchConfig {
            grid_dim: (tokens as u32, 1, 1),
            block_dim: (row.min(1024) as u32, 1, 1),
            shared_mem_bytes: 0,
        };
        let row = row as i32;
        let mut b = f.builder();
        b.arg(&src);
        match dtype {
            DType::F32 => b.arg(cache.as_cuda_slice_mut::<f32>()?),
            DType::F16 => b.arg(cache.as_cuda_slice_mut::<half::f16>()?),
            _ => b.arg(cache.as_cuda_slice_mut::<half::bf16>()?),
        };
        b.arg(&slots);
        b.arg(&row);
        // SAFETY: argument types and order match the kernel; every slot was checked against the cache size
        // (KvCache::check_batch) and the rows against `row`.
        unsafe { b.launch(cfg) }.w()?;
        Ok(())
    }
}

/// The attention of every new token of a batch over its sequence's cached context.
struct Attend<'a> {
    batch: &'a BatchInput,
    block_size: usize,
    n_kv_heads: usize,
}

impl CustomOp3 for Attend<'_> {
    fn name(&self) -> &'static str {
        "paged_attention"
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        Err(no_cpu(self.name()))
    }

    // Allocating uninitialised device memory and launching a kernel are FFI calls: `unsafe` is allowed here.
    #[allow(unsafe_code)]
    fn cuda_fwd(
        &self,
        q: &CudaStorage,
        q_l: &Layout,
        k_cache: &CudaStorage,
        k_l: &Layout,
        v_cache: &CudaStorage,
        v_l: &Layout,
    ) -> Result<(CudaStorage, Shape)> {
        let (tokens, n_heads, head_dim) = q_l.shape().dims3()?;
        if !q_l.is_contiguous() || !k_l.is_contiguous() || !v_l.is_contiguous() {
            candle_core::bail!("paged_attention needs contiguous tensors");
        }
        if head_dim > MAX_KERNEL_HEAD_DIM || self.n_kv_heads == 0 || n_heads % self.n_kv_heads != 0
        {
            candle_core::bail!(
                "paged_attention: {n_heads} heads over {} KV heads of dim {head_dim} (at most {MAX_KERNEL_HEAD_DIM})",
                self.n_kv_heads
            );
        }
        let dev = q.device().clone();
        let out_shape = Shape::from((tokens, n_heads * head_dim));
        // SAFETY: every element is written by the kernel below (one block per (token, head) covers its row).
        let out = unsafe { dev.alloc::<f32>(tokens * n_heads * head_dim)? };
        if tokens > 0 {
            let (tok_seq, seq_info, tables) = super::kernel_metadata(self.batch);
            let tok_seq = dev.clone_htod(&tok_seq)?;
            let seq_info = dev.clone_htod(&seq_info)?;
            let tables = dev.clone_htod(&tables)?;
            let dtype = k_cache.dtype();
            let f = dev.get_or_load_custom_func(
                &kernel_name("paged_attention", dtype)?,
                MODULE,
                ptx()?,
            )?;
            let qs = q.as_cuda_slice::<f32>()?.slice(q_l.start_offset()..);
            let (block_size, n_heads_i, n_kv, hd) = (
                self.block_size as i32,
                n_heads as i32,
                self.n_kv_heads as i32,
                head_dim as i32,
            );
            let scale = 1.0f32 / (head_dim as f32).sqrt();
            let cfg = LaunchConfig {
                grid_dim: (tokens as u32, n_heads as u32, 1),
                block_dim: (32 * WARPS, 1, 1),
                shared_mem_bytes: 0,
            };
            let mut b = f.builder();
            b.arg(&qs);
            let (kv32, kv16, kvb16);
            match dtype {
                DType::F32 => {
                    kv32 = (
                        k_cache.as_cuda_slice::<f32>()?.slice(k_l.start_offset()..),
                        v_cache.as_cuda_slice::<f32>()?.slice(v_l.start_offset()..),
                    );
                    b.arg(&kv32.0);
                    b.arg(&kv32.1);
                }
                DType::F16 => {
                    kv16 = (
                        k_cache
                            .as_cuda_slice::<half::f16>()?
                            .slice(k_l.start_offset()..),
                        v_cache
                            .as_cuda_slice::<half::f16>()?
                            .slice(v_l.start_offset()..),
                    );
                    b.arg(&kv16.0);
                    b.arg(&kv16.1);
                }
                _ => {
                    kvb16 = (
                        k_cache
                            .as_cuda_slice::<half::bf16>()?
                            .slice(k_l.start_offset()..),
                        v_cache
                            .as_cuda_slice::<half::bf16>()?
                            .slice(v_l.start_offset()..),
                    );
                    b.arg(&kvb16.0);
                    b.arg(&kvb16.1);
                }
            }
            b.arg(&out);
            b.arg(&tok_seq);
            b.arg(&seq_info);
            b.arg(&tables);
            b.arg(&block_size);
            b.arg(&n_heads_i);
            b.arg(&n_kv);
            b.arg(&hd);
            b.arg(&scale);
            // SAFETY: argument types and order match the kernel; the batch passed KvCache::check_batch, so
            // every block id and context length stays inside the cache and the block tables.
            unsafe { b.launch(cfg) }.w()?;
        }
        Ok((CudaStorage::wrap_cuda_slice(out, dev), out_shape))
    }
}

/// Writes this step's K/V into the caches and returns the attention output `[tokens, n_heads * head_dim]`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn attend(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    k_cache: &Tensor,
    v_cache: &Tensor,
    batch: &BatchInput,
    block_size: usize,
    n_kv_heads: usize,
) -> Result<Tensor> {
    let (tokens, _, _) = q.dims3()?;
    let row = k_cache.dim(1)?;
    let rows = |t: &Tensor| -> Result<Tensor> {
        t.to_dtype(DType::F32)?.reshape((tokens, row))?.contiguous()
    };
    let write = WriteSlots {
        slots: &batch.slot_mapping,
    };
    k_cache.inplace_op2(&rows(k)?, &write)?;
    v_cache.inplace_op2(&rows(v)?, &write)?;
    let q = q.to_dtype(DType::F32)?.contiguous()?;
    q.apply_op3_no_bwd(
        k_cache,
        v_cache,
        &Attend {
            batch,
            block_size,
            n_kv_heads,
        },
    )
}
