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

mod dense_half;
mod q4_0;
mod q4_1;
mod q4k;
mod q5;
mod q5_0;
mod q6k;
mod q8_0;
mod quant;
mod relayout;
mod vec_ops;

use std::sync::OnceLock;

use candle_core::quantized::k_quants::{BlockQ4_0, GgmlType};
use candle_core::{Result, Tensor};

pub use dense_half::{HalfMatrix, HalfType};
pub use q4_0::Q4_0Matrix;
pub use q4_1::Q4_1Matrix;
pub use q4k::Q4KMatrix;
pub use q5::Q5Matrix;
pub use q5_0::Q5_0Matrix;
pub use q6k::Q6Matrix;
pub use q8_0::Q8_0Matrix;

pub(crate) use vec_ops::VecOps;

/// The instruction set a kernel runs with, detected once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Scalar,
    /// AVX2 + FMA.
    Avx2,
    /// AVX2 + FMA + F16C + AVX-512 F/BW/VNNI/VL (`vpdpbusd` on 256-bit registers).
    Vnni,
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
                let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma");
                let vnni = is_x86_feature_detected!("avx512vnni")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("f16c");
                if avx2 && vnni && std::env::var_os("LLAMA_SERVER_NO_VNNI").is_none() {
                    return Self::Vnni;
                }
                if avx2 {
                    return Self::Avx2;
                }
            }
            Self::Scalar
        })
    }
}

/// One activation block quantized as GGML's Q8_1 (also used as Q8_0: same `d` and `qs`): `x_j ≈ d · qs_j`,
/// `d` rounded through f16 as llama.cpp stores it; `s = d · Σ qs_j`, rounded through f16 (Q4_1's offset term);
/// `sum = Σ qs_j` exactly (the VNNI Q8_0 kernel's offset correction); `halves` holds `Σ qs[..16]` (low 16 bits)
/// and `Σ qs[16..]` (high 16 bits) as two i16 (Q6_K's two scales per 32 values: one `vpdpwssd` with the run
/// scales gives the offset term).
#[derive(Debug, Clone, Copy, Default)]
pub struct BlockQ8_1 {
    pub(crate) d: f32,
    pub(crate) s: f32,
    pub(crate) sum: i32,
    pub(crate) halves: i32,
    pub(crate) qs: [i8; 32],
}

/// [`quantize_block`] at this CPU's instruction set.
#[cfg(test)]
pub(crate) fn quantize_q8_1(x: &[f32]) -> BlockQ8_1 {
    quantize_block(x, Isa::detect())
}

/// Quantizes 32 values as llama.cpp's AVX2 `quantize_row_q8_1` does (`id = 127 / amax`, rounding half to
/// even), with the same result on every instruction set. `isa` comes from [`Isa::detect`] (once per matmul,
/// not per block).
fn quantize_block(x: &[f32], isa: Isa) -> BlockQ8_1 {
    #[cfg(target_arch = "x86_64")]
    {
        if isa != Isa::Scalar && x.len() == 32 {
            // SAFETY: every non-scalar ISA includes AVX2; `x` holds the 32 values the kernel loads.
            return unsafe { quantize_q8_1_avx2(x) };
        }
    }
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut qs = [0i8; 32];
    let mut sum = 0i32;
    for (q, v) in qs.iter_mut().zip(x) {
        *q = (v * id).round_ties_even() as i8;
        sum += i32::from(*q);
    }
    BlockQ8_1 {
        d: half::f16::from_f32(d).to_f32(),
        s: half::f16::from_f32(d * sum as f32).to_f32(),
        sum,
        halves: halves(&qs),
        qs,
    }
}

/// `Σ qs[..16]` and `Σ qs[16..]` packed as [`BlockQ8_1::halves`] (each in −2048..2032: an i16).
fn halves(qs: &[i8; 32]) -> i32 {
    let sum = |q: &[i8]| q.iter().map(|&q| i32::from(q)).sum::<i32>();
    pack_halves(sum(&qs[..16]), sum(&qs[16..]))
}

fn pack_halves(lo: i32, hi: i32) -> i32 {
    i32::from(lo as i16 as u16) | (hi << 16)
}

impl BlockQ8_1 {
    /// `(Σ qs[..16], Σ qs[16..])`.
    pub(crate) fn half_sums(&self) -> (i32, i32) {
        (i32::from(self.halves as i16), self.halves >> 16)
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_q8_1_avx2(x: &[f32]) -> BlockQ8_1 {
    use std::arch::x86_64::*;
    assert_eq!(x.len(), 32, "a Q8_1 block has 32 values");
    // SAFETY: `x` holds 32 floats (asserted): four unaligned 8-lane loads.
    let v = [0, 8, 16, 24].map(|i| unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) });
    let sign = _mm256_set1_ps(-0.0);
    let abs = v.map(|v| _mm256_andnot_ps(sign, v));
    let m = _mm256_max_ps(_mm256_max_ps(abs[0], abs[1]), _mm256_max_ps(abs[2], abs[3]));
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
    let d = amax / 127.0;
    let id = _mm256_set1_ps(if amax != 0.0 { 127.0 / amax } else { 0.0 });
    // round half to even (the default MXCSR mode of cvtps2dq), as llama.cpp's _mm256_round_ps(NEAREST)
    let i = v.map(|v| _mm256_cvtps_epi32(_mm256_mul_ps(v, id)));
    let (qs, lo, hi) = narrow_block(i);
    let sum = lo + hi;
    BlockQ8_1 {
        d: half::f16::from_f32(d).to_f32(),
        s: half::f16::from_f32(d * sum as f32).to_f32(),
        sum,
        halves: pack_halves(lo, hi),
        qs,
    }
}

/// 32 quantized values in four registers of i32 (in order) as the block's i8 (saturating, in order) and the
/// sums of its two halves.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn narrow_block(i: [std::arch::x86_64::__m256i; 4]) -> ([i8; 32], i32, i32) {
    use std::arch::x86_64::*;
    let hsum8 = |v: __m256i| {
        let t = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        let t = _mm_add_epi32(t, _mm_unpackhi_epi64(t, t));
        _mm_cvtsi128_si32(_mm_add_epi32(t, _mm_shuffle_epi32(t, 1)))
    };
    // i32 → i16 → i8 packs interleave 128-bit lanes; the permute restores element order
    let p = _mm256_packs_epi16(
        _mm256_packs_epi32(i[0], i[1]),
        _mm256_packs_epi32(i[2], i[3]),
    );
    let p = _mm256_permutevar8x32_epi32(p, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    let mut qs = [0i8; 32];
    // SAFETY: `qs` is 32 bytes, matching the unaligned 256-bit store.
    unsafe { _mm256_storeu_si256(qs.as_mut_ptr().cast(), p) };
    (
        qs,
        hsum8(_mm256_add_epi32(i[0], i[1])),
        hsum8(_mm256_add_epi32(i[2], i[3])),
    )
}

/// How a matrix's activations are quantized before the integer dots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acts {
    /// Per 32 values (llama.cpp's Q8_0 / Q8_1: legacy weight types).
    Per32,
    /// Per 256 values, as llama.cpp's Q8_K for K-quant weights: one scale for each 256 (`max / −127`, `max`
    /// the value of largest magnitude, unrounded), written into each of its eight blocks; `s = d · Σ q`
    /// is kept exact (f32), like Q8_K's integer block sums.
    Per256,
}

/// Quantizes `x: [m, k]` row by row into Q8_K-style blocks (see [`Acts::Per256`]); `k` is a multiple of 256.
/// The same blocks at every instruction set (`isa` from [`Isa::detect`]).
pub(crate) fn quantize_row_q8k(x: &[f32], isa: Isa, out: &mut Vec<BlockQ8_1>) {
    for chunk in x.chunks_exact(256) {
        #[cfg(target_arch = "x86_64")]
        {
            if isa != Isa::Scalar {
                // SAFETY: every non-scalar ISA includes AVX2 and FMA; `chunk` holds 256 values.
                unsafe { quantize_q8k_avx2(chunk, out) };
                continue;
            }
        }
        let _ = isa;
        let (mut amax, mut max) = (0f32, 0f32);
        for &v in chunk {
            if v.abs() > amax {
                amax = v.abs();
                max = v;
            }
        }
        let (d, iscale) = q8k_scale(amax, max);
        for block in chunk.chunks_exact(32) {
            let mut qs = [0i8; 32];
            let mut sum = 0i32;
            for (q, &v) in qs.iter_mut().zip(block) {
                // ggml's nearest_int: round half to even
                *q = ((iscale * v).round_ties_even() as i32).min(127) as i8;
                sum += i32::from(*q);
            }
            out.push(BlockQ8_1 {
                d,
                s: d * sum as f32,
                sum,
                halves: halves(&qs),
                qs,
            });
        }
    }
}

/// `(d, 1 / d)` of a Q8_K block whose value of largest magnitude is `max` (`amax = |max|`).
fn q8k_scale(amax: f32, max: f32) -> (f32, f32) {
    if amax == 0.0 {
        (0.0, 0.0)
    } else {
        let iscale = -127.0 / max;
        (1.0 / iscale, iscale)
    }
}

/// [`quantize_row_q8k`] of one 256-value chunk with AVX2: the same blocks (the largest magnitude found in
/// registers, its first occurrence's sign by a scan; products rounded half to even by `cvtps2dq` under the
/// default MXCSR, NaN products to 0 as Rust's casts do).
///
/// # Safety
/// AVX2 and FMA; `x` holds 256 values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_q8k_avx2(x: &[f32], out: &mut Vec<BlockQ8_1>) {
    use std::arch::x86_64::*;
    assert_eq!(x.len(), 256, "a Q8_K block has 256 values");
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_setzero_ps();
    for i in (0..256).step_by(8) {
        // SAFETY: `i + 8 <= 256 = x.len()`.
        let v = unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) };
        // a NaN lane keeps the running maximum (the scalar loop's `>` skips NaN)
        m = _mm256_max_ps(_mm256_andnot_ps(sign, v), m);
    }
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    let amax = _mm_cvtss_f32(_mm_max_ss(m, _mm_shuffle_ps(m, m, 1)));
    let max = x.iter().copied().find(|v| v.abs() == amax).unwrap_or(0.0);
    let (d, iscale) = q8k_scale(amax, max);
    let id = _mm256_set1_ps(iscale);
    let top = _mm256_set1_epi32(127);
    for b in 0..8 {
        let i = [0, 8, 16, 24].map(|j| {
            // SAFETY: `32 b + j + 8 <= 256 = x.len()`.
            let p = _mm256_mul_ps(unsafe { _mm256_loadu_ps(x.as_ptr().add(32 * b + j)) }, id);
            let q = _mm256_min_epi32(_mm256_cvtps_epi32(p), top);
            _mm256_andnot_si256(_mm256_castps_si256(_mm256_cmp_ps(p, p, _CMP_UNORD_Q)), q)
        });
        let (qs, lo, hi) = narrow_block(i);
        let sum = lo + hi;
        out.push(BlockQ8_1 {
            d,
            s: d * sum as f32,
            sum,
            halves: pack_halves(lo, hi),
            qs,
        });
    }
}

/// Quantizes `x: [m, k]` row by row as `acts` says (`m * k / 32` blocks).
pub(crate) fn quantize_rows_with(
    x: &Tensor,
    cols: usize,
    what: &str,
    acts: Acts,
) -> Result<(Vec<BlockQ8_1>, usize)> {
    if acts == Acts::Per32 {
        return quantize_rows(x, cols, what);
    }
    let (m, k) = x.dims2()?;
    if k != cols || !k.is_multiple_of(256) {
        candle_core::bail!("{what} matmul: input has {k} features, weight {cols}");
    }
    let lhs = x.flatten_all()?.to_vec1::<f32>()?;
    let mut out = Vec::with_capacity(m * k / 32);
    let isa = Isa::detect();
    for row in lhs.chunks_exact(k) {
        quantize_row_q8k(row, isa, &mut out);
    }
    Ok((out, m))
}

/// Quantizes `x: [m, k]` row by row into Q8_1 blocks (`m * k / 32` of them).
pub(crate) fn quantize_rows(
    x: &Tensor,
    cols: usize,
    what: &str,
) -> Result<(Vec<BlockQ8_1>, usize)> {
    let (m, k) = x.dims2()?;
    if k != cols {
        candle_core::bail!("{what} matmul: input has {k} features, weight {cols}");
    }
    let lhs = x.flatten_all()?.to_vec1::<f32>()?;
    let isa = Isa::detect();
    Ok((
        lhs.chunks_exact(32)
            .map(|b| quantize_block(b, isa))
            .collect(),
        m,
    ))
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

/// Runs an eight-row tile kernel for the tokens of one row group in groups of 8, 4 and 1, writing
/// `out[t * 8 + i]` (token `t`, row `i`) as [`matmul_rows`] wants it.
pub(crate) fn tile_token_groups(
    m: usize,
    out: &mut [f32],
    mut k8: impl FnMut(usize) -> [[f32; 8]; 8],
    mut k4: impl FnMut(usize) -> [[f32; 8]; 4],
    mut k1: impl FnMut(usize) -> [[f32; 8]; 1],
) {
    let mut put = |t: usize, rows: &[[f32; 8]]| {
        for (i, r) in rows.iter().enumerate() {
            out[(t + i) * 8..(t + i + 1) * 8].copy_from_slice(r);
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
mod tests;
