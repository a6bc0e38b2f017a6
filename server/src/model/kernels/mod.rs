//! CPU matmul kernels for Q8_0, Q4_0, Q4_1, Q4_K, Q5 and Q6_K weights (and the types re-laid out onto them),
//! F16/BF16 weights, and the attention kernel's vector helpers (the only module tree that allows `unsafe`).
//!
//! Numerics follow llama.cpp: activations are quantized per 32 values (Q8_1 for Q4_1 weights, Q8_0 for
//! Q8_0/Q4_0 weights) and each block pair is an exact integer dot product scaled in f32. candle-core's
//! `QMatMul` quantizes Q8_0 activations per 256 values on AVX-512-VNNI machines (Q8_K), which measurably
//! moved SmolLM2's greedy output away from llama.cpp's, and its Q4_1 path is scalar.
//!
//! Speed comes from sharing each unpacked weight block across up to eight tokens of a batch (decode steps
//! of many sequences and prompt chunks), AVX-512-VNNI `vpdpbusd` where the CPU has it (AVX2 otherwise,
//! portable scalar code as the reference), rows split over the rayon pool, and results written straight
//! into the `[tokens, rows]` output.
#![allow(unsafe_code)]

mod acts;
mod dense_half;
mod q4_0;
mod q4_1;
mod q4k;
mod q5;
mod q5_tiles;
mod q6k;
mod q8_0;
mod quant;
mod regs;
mod relayout;
mod vec_ops;
mod vnni_tile;

use std::sync::OnceLock;

use candle_core::quantized::k_quants::{BlockQ4_0, GgmlType};
use candle_core::{Result, Tensor};

pub use acts::BlockQ8_1;
pub(crate) use acts::{Acts, quantize_rows_with};
#[cfg(test)]
pub(crate) use acts::{quantize_q8_1, quantize_row_q8k};
pub use dense_half::{HalfMatrix, HalfType};
pub use q4_0::Q4_0Matrix;
pub use q4_1::Q4_1Matrix;
pub use q4k::Q4KMatrix;
pub use q5::Q5Matrix;
pub use q5_tiles::{Q5_0Matrix, Q5_1Matrix, Q5KMatrix};
pub use q6k::Q6Matrix;
pub use q8_0::Q8_0Matrix;
pub use quant::KernelMatrix;

pub(crate) use vec_ops::VecOps;

/// The instruction set a kernel runs with, detected once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
    /// AVX2 + FMA + F16C + AVX-512 F/BW/VNNI/VL (`vpdpbusd` on 256-bit registers).
    Vnni,
    /// The same features, with sixteen rows per kernel in 512-bit registers (two row groups' tiles side by
    /// side) where the row count and the type allow, else as [`Isa::Vnni`]: the same integers and floats,
    /// so the same bits. The default where AVX-512 VNNI is present; `LLAMA_SERVER_NO_ZMM` keeps 256 bits.
    Vnni512,
}

impl Isa {
    pub(crate) fn detect() -> Self {
        static ISA: OnceLock<Isa> = OnceLock::new();
        *ISA.get_or_init(|| {
            if std::env::var_os("LLAMA_SERVER_SCALAR_KERNELS").is_some() {
                return Self::Scalar;
            }
            #[cfg(target_arch = "x86_64")]
            {
                let avx2 = is_x86_feature_detected!("avx2")
                    && is_x86_feature_detected!("fma")
                    && is_x86_feature_detected!("f16c");
                let vnni = is_x86_feature_detected!("avx512vnni")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("f16c");
                if avx2 && vnni && std::env::var_os("LLAMA_SERVER_NO_VNNI").is_none() {
                    if std::env::var_os("LLAMA_SERVER_NO_ZMM").is_some() {
                        return Self::Vnni;
                    }
                    return Self::Vnni512;
                }
                if avx2 {
                    return Self::Avx2;
                }
            }
            Self::Scalar
        })
    }

    /// Whether the tile kernels run with AVX-512 VNNI (at either width).
    pub(crate) fn vnni(self) -> bool {
        matches!(self, Self::Vnni | Self::Vnni512)
    }
}

/// `f(values)` on a CPU f32 tensor's values in row-major order: borrowed from its storage where the tensor
/// is contiguous (every matmul input but a view), else copied once.
pub(crate) fn with_f32<R>(x: &Tensor, f: impl FnOnce(&[f32]) -> R) -> Result<R> {
    {
        let (storage, layout) = x.storage_and_layout();
        if let (candle_core::Storage::Cpu(cpu), Some((start, end))) =
            (&*storage, layout.contiguous_offsets())
        {
            return Ok(f(&cpu.as_slice::<f32>()?[start..end]));
        }
    }
    Ok(f(&x.flatten_all()?.to_vec1::<f32>()?))
}

/// `silu(gate) · up` for `gate_up: [tokens, 2·hidden]` on the CPU (each row the gate's `hidden` values, then
/// the up projection's): candle's f32 formulas (`g / (1 + e^−g)`, then the product), so the same bits as
/// `silu(gate) * up`, in one pass split over the rayon pool (candle's element-wise ops ran on one thread:
/// with two threads they left the other idle for 5 % of a 1B prompt).
pub(crate) fn silu_mul(gate_up: &Tensor) -> Result<Tensor> {
    let (m, width) = gate_up.dims2()?;
    if !width.is_multiple_of(2) {
        candle_core::bail!("gate/up projection with an odd width {width}");
    }
    let h = width / 2;
    let mut out = vec![0f32; m * h];
    with_f32(gate_up, |src| {
        let run = |i0: usize, o: &mut [f32]| {
            for (j, v) in o.iter_mut().enumerate() {
                let (t, c) = ((i0 + j) / h, (i0 + j) % h);
                let g = src[t * width + c];
                *v = g / (1.0 + (-g).exp()) * src[t * width + h + c];
            }
        };
        const CHUNK: usize = 4096;
        if rayon::current_num_threads() <= 1 || out.len() <= CHUNK {
            run(0, &mut out);
        } else {
            use rayon::prelude::*;
            out.par_chunks_mut(CHUNK)
                .enumerate()
                .for_each(|(i, o)| run(i * CHUNK, o));
        }
    })?;
    Tensor::from_vec(out, (m, h), gate_up.device())
}

/// Runs a row kernel over a `[n, k]` weight for `m` tokens and returns the `[m, n]` output.
///
/// `rows(r0, out)` fills `out[t * group + i]` (t < m, i < `group`) with row `r0 + i`'s dot product with
/// token `t`'s activations; `group` divides `n`. Rows are split across the rayon pool in chunks of 16 (or
/// `group` if larger); each chunk writes its columns of the output directly (no transpose pass).
pub(crate) fn matmul_rows<F>(
    n: usize,
    m: usize,
    group: usize,
    x: &Tensor,
    rows: F,
) -> Result<Tensor>
where
    F: Fn(usize, &mut [f32]) + Send + Sync,
{
    if group == 0 || !n.is_multiple_of(group) {
        candle_core::bail!("{n} rows do not split into groups of {group}");
    }
    let chunk_rows = 16usize.max(group).next_multiple_of(group);
    let mut out = vec![0f32; n * m];
    if m == 1 {
        for_each_chunk(&mut out, chunk_rows, |c, o| {
            for (i, g) in o.chunks_mut(group).enumerate() {
                rows(c * chunk_rows + i * group, g);
            }
        });
    } else {
        let dst = SharedOut(out.as_mut_ptr());
        let run = |buf: &mut Vec<f32>, c: usize| {
            for r0 in (c * chunk_rows..((c + 1) * chunk_rows).min(n)).step_by(group) {
                rows(r0, buf);
                for (t, vals) in buf.chunks_exact(group).enumerate() {
                    // SAFETY: `r0 + group <= n` and `t < m`, so the `group` elements from `t * n + r0` are
                    // inside `out`, which outlives this call; each row belongs to exactly one chunk, so no
                    // two threads write the same element and nothing reads `out` until every chunk is done.
                    unsafe { dst.write(t * n + r0, vals) };
                }
            }
        };
        let chunks = n.div_ceil(chunk_rows);
        if rayon::current_num_threads() <= 1 {
            let mut buf = vec![0f32; group * m];
            (0..chunks).for_each(|c| run(&mut buf, c));
        } else {
            use rayon::prelude::*;
            (0..chunks)
                .into_par_iter()
                .for_each_init(|| vec![0f32; group * m], |buf, c| run(buf, c));
        }
    }
    Tensor::from_vec(out, (m, n), x.device())
}

/// The output buffer shared by the row chunks of [`matmul_rows`] (disjoint writes only).
#[derive(Clone, Copy)]
struct SharedOut(*mut f32);
// SAFETY: only used by `matmul_rows`, whose chunks write disjoint elements of a buffer that outlives them.
unsafe impl Send for SharedOut {}
// SAFETY: as above.
unsafe impl Sync for SharedOut {}
impl SharedOut {
    /// # Safety
    /// `i..i + vals.len()` must be inside the buffer and no other thread may access it concurrently.
    unsafe fn write(self, i: usize, vals: &[f32]) {
        // SAFETY: guaranteed by the caller; `vals` is a distinct (thread-local) buffer.
        unsafe { std::ptr::copy_nonoverlapping(vals.as_ptr(), self.0.add(i), vals.len()) };
    }
}

/// Calls `dot(tokens)` for the tokens of one row in groups of 8, 4 and 1 (one unpacked weight block is
/// shared by every token of a group).
pub(crate) fn for_token_groups(
    m: usize,
    out: &mut [f32],
    mut dot8: impl FnMut(usize, &mut [f32]),
    mut dot4: impl FnMut(usize, &mut [f32]),
    mut dot1: impl FnMut(usize, &mut f32),
) {
    let mut t = 0;
    while t + 8 <= m {
        dot8(t, &mut out[t..t + 8]);
        t += 8;
    }
    while t + 4 <= m {
        dot4(t, &mut out[t..t + 4]);
        t += 4;
    }
    while t < m {
        dot1(t, &mut out[t]);
        t += 1;
    }
}

/// Runs an `R`-row tile kernel (8 rows, or 16 in 512-bit registers) for the tokens of one row group in
/// groups of 8, 4 and 1, writing `out[t * R + i]` (token `t`, row `i`) as [`matmul_rows`] wants it.
pub(crate) fn tile_token_groups<const R: usize>(
    m: usize,
    out: &mut [f32],
    mut k8: impl FnMut(usize) -> [[f32; R]; 8],
    mut k4: impl FnMut(usize) -> [[f32; R]; 4],
    mut k1: impl FnMut(usize) -> [[f32; R]; 1],
) {
    let mut put = |t: usize, rows: &[[f32; R]]| {
        for (i, r) in rows.iter().enumerate() {
            out[(t + i) * R..(t + i + 1) * R].copy_from_slice(r);
        }
    };
    let mut t = 0;
    while t + 8 <= m {
        put(t, &k8(t));
        t += 8;
    }
    while t + 4 <= m {
        put(t, &k4(t));
        t += 4;
    }
    while t < m {
        put(t, &k1(t));
        t += 1;
    }
}

/// candle block types that are `#[repr(C)]` structs of one f16 and a byte array, so that any bytes of
/// the right length are a valid value (what makes [`BlockMatrix::from_bytes`] sound).
pub trait PlainBlock: GgmlType + Send + Sync {
    /// Size of one block in bytes (equal to `size_of::<Self>()`, asserted below).
    const BYTES: usize;
}
/// `#[repr(C)] { d: f16, qs: [u8; 16] }`
impl PlainBlock for BlockQ4_0 {
    const BYTES: usize = 18;
}
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == <BlockQ4_0 as PlainBlock>::BYTES);

/// A `[rows, cols]` matrix of candle blocks, multiplied through candle's SIMD `vec_dot` with activations
/// quantized to the block's dot type (Q8_0 for Q4_0, as llama.cpp does).
#[derive(Debug, Clone)]
pub struct BlockMatrix<T> {
    blocks: Vec<T>,
    rows: usize,
    cols: usize,
}

impl<T: PlainBlock> BlockMatrix<T> {
    /// From the raw GGUF bytes of a `[rows, cols]` tensor of this block type.
    pub fn from_bytes(bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        if !cols.is_multiple_of(T::BLCK_SIZE) {
            candle_core::bail!("{:?} matrix with {cols} columns", T::DTYPE);
        }
        let n = rows * cols / T::BLCK_SIZE;
        if bytes.len() != n * T::BYTES {
            candle_core::bail!(
                "{:?} matrix [{rows}, {cols}] needs {} bytes, got {}",
                T::DTYPE,
                n * T::BYTES,
                bytes.len()
            );
        }
        let mut blocks = vec![T::zeros(); n];
        // SAFETY: `T: PlainBlock` is a `#[repr(C)]` struct of an f16 and a byte array whose size is
        // `T::BYTES` (asserted at compile time above), alignment 2 and no padding, so every bit pattern is
        // a valid value. `blocks` owns exactly `n * T::BYTES` bytes, `bytes` has exactly that many
        // (checked above), and the two buffers are distinct allocations.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                blocks.as_mut_ptr().cast::<u8>(),
                n * T::BYTES,
            );
        }
        Ok(Self { blocks, rows, cols })
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// `x: [tokens, cols]` (f32, CPU) → `[tokens, rows]`. Activations are quantized to the dot type and
    /// each output is candle's SIMD `vec_dot`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.cols {
            candle_core::bail!(
                "{:?} matmul: input has {k} features, weight {}",
                T::DTYPE,
                self.cols
            );
        }
        let lhs = x.flatten_all()?.to_vec1::<f32>()?;
        let kb = k / T::BLCK_SIZE;
        let ka = k / <T::VecDotType as GgmlType>::BLCK_SIZE;
        let mut acts = vec![T::VecDotType::zeros(); m * ka];
        for (row, q) in lhs.chunks_exact(k).zip(acts.chunks_exact_mut(ka)) {
            T::VecDotType::from_float(row, q);
        }
        matmul_rows(self.rows, m, 1, x, |row, out| {
            let w = &self.blocks[row * kb..(row + 1) * kb];
            for (tok, o) in out.iter_mut().enumerate() {
                *o = T::vec_dot(k, w, &acts[tok * ka..(tok + 1) * ka]);
            }
        })
    }
}

/// Runs `f(chunk_index, chunk)` over `chunk`-sized pieces of `out`: on the rayon pool, or inline when
/// it has a single thread (handing each matmul to a one-thread pool costs two context switches).
pub(crate) fn for_each_chunk<F>(out: &mut [f32], chunk: usize, f: F)
where
    F: Fn(usize, &mut [f32]) + Send + Sync,
{
    use rayon::prelude::*;
    if rayon::current_num_threads() <= 1 {
        out.chunks_mut(chunk).enumerate().for_each(|(i, c)| f(i, c));
    } else {
        out.par_chunks_mut(chunk)
            .enumerate()
            .for_each(|(i, c)| f(i, c));
    }
}

/// An empty vector with room for `len` values whose memory the kernel is asked to back with transparent
/// huge pages before it is first written (Linux `madvise(MADV_HUGEPAGE)`, which THP's default `madvise` mode
/// honours): streaming a weight matrix then takes one TLB entry per 2 MiB instead of per 4 KiB.
pub(crate) fn huge_page_vec<T>(len: usize) -> Vec<T> {
    let v = Vec::<T>::with_capacity(len);
    #[cfg(target_os = "linux")]
    {
        const HUGE: usize = 2 << 20;
        let start = v.as_ptr() as usize;
        let begin = start.next_multiple_of(HUGE);
        let end = (start + len * std::mem::size_of::<T>()) & !(HUGE - 1);
        if end > begin {
            // SAFETY: `begin..end` lies inside `v`'s allocation (whole pages); the advice only changes how the
            // kernel backs those pages, never their contents or validity. A refusal (THP off) is harmless and
            // ignored.
            unsafe { libc::madvise(begin as *mut libc::c_void, end - begin, libc::MADV_HUGEPAGE) };
        }
    }
    v
}

/// Hands the heap's free memory back to the kernel (glibc's `malloc_trim`). Loading parses each matrix into
/// temporary blocks before laying it out in tiles; glibc keeps much of what is freed in its arenas, where it
/// would stay resident (and counted against the pod's memory) for the life of the process.
pub(crate) fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only returns free heap pages to the kernel; no live allocation is touched.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn hsum(acc: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let hi = _mm256_extractf128_ps(acc, 1);
    let s = _mm_add_ps(_mm256_castps256_ps128(acc), hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    _mm_cvtss_f32(s)
}

#[cfg(test)]
mod kquant_tests;
#[cfg(test)]
mod speed;
#[cfg(test)]
mod tests;
