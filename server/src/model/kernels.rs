//! CPU kernels for Q8_0, Q4_0 and Q4_1 weights (the only module that allows `unsafe`).
//!
//! Why: on AVX-512-VNNI machines candle-core's `QMatMul` sends Q8_0 weights through a repacked kernel that
//! quantizes the *activations* to Q8_K (one scale per 256 values). llama.cpp quantizes them to Q8_0 (one
//! scale per 32), and the coarser rounding moved SmolLM2's greedy output away from llama.cpp's at steps
//! where llama.cpp led by 0.3 logits. Holding Q8_0 weights as candle's own `BlockQ8_0` slice and calling
//! candle's `BlockQ8_0::from_float` / `vec_dot` keeps llama.cpp's per-32 activation quantization (SIMD
//! dot products included). Q4_1 gets its own exact kernel for speed (see [`Q4_1Matrix`]).
#![allow(unsafe_code)]

use candle_core::quantized::k_quants::{BlockQ4_0, BlockQ8_0, GgmlType};
use candle_core::{Result, Tensor};

/// candle block types that are `#[repr(C)]` structs of one f16 and a byte array, so that any bytes of
/// the right length are a valid value (what makes [`BlockMatrix::from_bytes`] sound).
pub trait PlainBlock: GgmlType + Send + Sync {
    /// Size of one block in bytes (equal to `size_of::<Self>()`, asserted below).
    const BYTES: usize;
}
/// `#[repr(C)] { d: f16, qs: [i8; 32] }`
impl PlainBlock for BlockQ8_0 {
    const BYTES: usize = 34;
}
/// `#[repr(C)] { d: f16, qs: [u8; 16] }`
impl PlainBlock for BlockQ4_0 {
    const BYTES: usize = 18;
}
const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == <BlockQ8_0 as PlainBlock>::BYTES);
const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == <BlockQ4_0 as PlainBlock>::BYTES);

/// A `[rows, cols]` Q8_0 matrix.
pub type Q8_0Matrix = BlockMatrix<BlockQ8_0>;
/// A `[rows, cols]` Q4_0 matrix.
pub type Q4_0Matrix = BlockMatrix<BlockQ4_0>;

/// A `[rows, cols]` matrix of candle blocks, multiplied through candle's SIMD `vec_dot` with activations
/// quantized to the block's dot type (Q8_0 for Q8_0 and Q4_0, as llama.cpp does).
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
    /// each output is candle's SIMD `vec_dot`; rows are split across the rayon pool (candle's own generic
    /// matmul uses a spinning barrier pool that collapsed to ~4 tok/s at 2 threads on a loaded machine).
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
        let n = self.rows;
        let mut out_t = vec![0f32; n * m];
        for_each_chunk(&mut out_t, m * 16, |chunk, out| {
            for (i, o) in out.iter_mut().enumerate() {
                let (row, tok) = (chunk * 16 + i / m, i % m);
                let w = &self.blocks[row * kb..(row + 1) * kb];
                *o = T::vec_dot(k, w, &acts[tok * ka..(tok + 1) * ka]);
            }
        });
        Tensor::from_vec(transpose(out_t, n, m), (m, n), x.device())
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

/// `[n][m]` → `[m][n]`.
fn transpose(out_t: Vec<f32>, n: usize, m: usize) -> Vec<f32> {
    if m == 1 {
        return out_t;
    }
    let mut dst = vec![0f32; m * n];
    for (row, col) in out_t.chunks_exact(m).enumerate() {
        for (tok, v) in col.iter().enumerate() {
            dst[tok * n + row] = *v;
        }
    }
    dst
}

/// One Q4_1 weight block with its scales widened to f32: value `j` is `d * q_j + m`, `q_j` the low nibble
/// of `qs[j]` for `j < 16` and the high nibble of `qs[j - 16]` otherwise (GGML's layout).
#[derive(Debug, Clone, Copy, Default)]
struct BlockQ4_1 {
    d: f32,
    m: f32,
    qs: [u8; 16],
}

/// One activation block quantized as GGML's Q8_1: `x_j ≈ d * qs_j`, `s = d * Σ qs_j` (both rounded
/// through f16 as llama.cpp stores them).
#[derive(Debug, Clone, Copy, Default)]
struct BlockQ8_1 {
    d: f32,
    s: f32,
    qs: [i8; 32],
}

const Q4_1_BYTES: usize = 20;

/// A `[rows, cols]` Q4_1 matrix multiplied exactly as llama.cpp does it (activations quantized to Q8_1
/// per 32 values, integer dot products), with an AVX2 kernel when the CPU has one. candle-core's own Q4_1
/// path has the same numerics but a scalar inner loop (~20× slower); re-encoding the weights as Q8_0
/// instead would change them (and measurably moved greedy outputs away from llama.cpp's).
#[derive(Debug, Clone)]
pub struct Q4_1Matrix {
    blocks: Vec<BlockQ4_1>,
    rows: usize,
    cols: usize,
}

impl Q4_1Matrix {
    /// From the raw GGUF bytes of a `[rows, cols]` Q4_1 tensor.
    pub fn from_bytes(bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        if !cols.is_multiple_of(32) {
            candle_core::bail!("Q4_1 matrix with {cols} columns");
        }
        let n = rows * cols / 32;
        if bytes.len() != n * Q4_1_BYTES {
            candle_core::bail!(
                "Q4_1 matrix [{rows}, {cols}] needs {} bytes, got {}",
                n * Q4_1_BYTES,
                bytes.len()
            );
        }
        let blocks = bytes
            .chunks_exact(Q4_1_BYTES)
            .map(|b| {
                let mut qs = [0u8; 16];
                qs.copy_from_slice(&b[4..20]);
                BlockQ4_1 {
                    d: half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
                    m: half::f16::from_le_bytes([b[2], b[3]]).to_f32(),
                    qs,
                }
            })
            .collect();
        Ok(Self { blocks, rows, cols })
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// `x: [tokens, cols]` (f32, CPU) → `[tokens, rows]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.cols {
            candle_core::bail!("Q4_1 matmul: input has {k} features, weight {}", self.cols);
        }
        let lhs = x.flatten_all()?.to_vec1::<f32>()?;
        let kb = k / 32;
        let acts: Vec<BlockQ8_1> = lhs.chunks_exact(32).map(quantize_q8_1).collect();
        let (dot, dot4) = dot_fns();
        let n = self.rows;
        // out_t[row][token], rows split across threads; four tokens share each unpacked weight block
        let mut out_t = vec![0f32; n * m];
        for_each_chunk(&mut out_t, m * 16, |chunk, out| {
            for (r, out_row) in out.chunks_mut(m).enumerate() {
                let row = chunk * 16 + r;
                let w = &self.blocks[row * kb..(row + 1) * kb];
                let act = |t: usize| &acts[t * kb..(t + 1) * kb];
                let mut tok = 0;
                for o in out_row.chunks_exact_mut(4) {
                    o.copy_from_slice(&dot4(
                        w,
                        [act(tok), act(tok + 1), act(tok + 2), act(tok + 3)],
                    ));
                    tok += 4;
                }
                for o in out_row.chunks_exact_mut(4).into_remainder() {
                    *o = dot(w, act(tok));
                    tok += 1;
                }
            }
        });
        Tensor::from_vec(transpose(out_t, n, m), (m, n), x.device())
    }
}

fn quantize_q8_1(x: &[f32]) -> BlockQ8_1 {
    let amax = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; 32];
    let mut sum = 0i32;
    for (q, v) in qs.iter_mut().zip(x) {
        *q = (v * id).round() as i8;
        sum += i32::from(*q);
    }
    BlockQ8_1 {
        d: half::f16::from_f32(d).to_f32(),
        s: half::f16::from_f32(d * sum as f32).to_f32(),
        qs,
    }
}

type DotFn = fn(&[BlockQ4_1], &[BlockQ8_1]) -> f32;
type Dot4Fn = fn(&[BlockQ4_1], [&[BlockQ8_1]; 4]) -> [f32; 4];

fn dot_fns() -> (DotFn, Dot4Fn) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            return (dot_avx2_checked, dot4_avx2_checked);
        }
    }
    (dot_scalar, dot4_scalar)
}

fn dot4_scalar(w: &[BlockQ4_1], a: [&[BlockQ8_1]; 4]) -> [f32; 4] {
    a.map(|a| dot_scalar(w, a))
}

#[cfg(target_arch = "x86_64")]
fn dot4_avx2_checked(w: &[BlockQ4_1], a: [&[BlockQ8_1]; 4]) -> [f32; 4] {
    // SAFETY: only selected by `dot_fns` after `is_x86_feature_detected!` confirmed AVX2 and FMA.
    unsafe { dot4_avx2(w, a) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot4_avx2(w: &[BlockQ4_1], a: [&[BlockQ8_1]; 4]) -> [f32; 4] {
    use std::arch::x86_64::*;
    let mask = _mm_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut summs = [0f32; 4];
    for (b, wb) in w.iter().enumerate() {
        // SAFETY: `qs` is 16 bytes, matching the unaligned 128-bit load.
        let qw = unsafe { _mm_loadu_si128(wb.qs.as_ptr().cast()) };
        let lo = _mm_and_si128(qw, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(qw, 4), mask);
        let bx = _mm256_set_m128i(hi, lo);
        for t in 0..4 {
            let ab = &a[t][b];
            // SAFETY: `qs` is 32 bytes, matching the unaligned 256-bit load.
            let qa = unsafe { _mm256_loadu_si256(ab.qs.as_ptr().cast()) };
            let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(bx, qa), ones);
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(wb.d * ab.d), _mm256_cvtepi32_ps(dot), acc[t]);
            summs[t] += wb.m * ab.s;
        }
    }
    let mut out = [0f32; 4];
    for t in 0..4 {
        out[t] = hsum(acc[t]) + summs[t];
    }
    out
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

fn dot_scalar(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    let mut acc = 0f32;
    for (w, a) in w.iter().zip(a) {
        let mut sumi = 0i32;
        for j in 0..16 {
            let lo = i32::from(w.qs[j] & 0x0F);
            let hi = i32::from(w.qs[j] >> 4);
            sumi += lo * i32::from(a.qs[j]) + hi * i32::from(a.qs[j + 16]);
        }
        acc += w.d * a.d * sumi as f32 + w.m * a.s;
    }
    acc
}

#[cfg(target_arch = "x86_64")]
fn dot_avx2_checked(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    // SAFETY: only selected by `dot_fn` after `is_x86_feature_detected!` confirmed AVX2 and FMA.
    unsafe { dot_avx2(w, a) }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    use std::arch::x86_64::*;
    let mask = _mm_set1_epi8(0x0F);
    let ones = _mm256_set1_epi16(1);
    let mut acc = _mm256_setzero_ps();
    let mut summs = 0f32;
    for (w, a) in w.iter().zip(a) {
        // SAFETY: `qs` arrays are 16 and 32 bytes long, matching the unaligned 128/256-bit loads.
        let (qw, qa) = unsafe {
            (
                _mm_loadu_si128(w.qs.as_ptr().cast()),
                _mm256_loadu_si256(a.qs.as_ptr().cast()),
            )
        };
        let lo = _mm_and_si128(qw, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(qw, 4), mask);
        let bx = _mm256_set_m128i(hi, lo);
        // u8 (0..15) × i8 pairs summed to i16 (|·| ≤ 2·15·128, no saturation), then to i32
        let dot = _mm256_madd_epi16(_mm256_maddubs_epi16(bx, qa), ones);
        acc = _mm256_fmadd_ps(_mm256_set1_ps(w.d * a.d), _mm256_cvtepi32_ps(dot), acc);
        summs += w.m * a.s;
    }
    hsum(acc) + summs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_1_simd_and_scalar_dots_agree_with_dequantized_math() {
        // deterministic pseudo-random blocks
        let mut x: u32 = 12345;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x
        };
        let kb = 6;
        let w: Vec<BlockQ4_1> = (0..kb)
            .map(|_| {
                let mut qs = [0u8; 16];
                qs.iter_mut().for_each(|q| *q = next() as u8);
                BlockQ4_1 {
                    d: 0.01 + (next() % 100) as f32 * 1e-4,
                    m: -0.05 + (next() % 100) as f32 * 1e-3,
                    qs,
                }
            })
            .collect();
        let xs: Vec<f32> = (0..kb * 32)
            .map(|_| (next() % 2000) as f32 / 1000.0 - 1.0)
            .collect();
        let a: Vec<BlockQ8_1> = xs.chunks_exact(32).map(quantize_q8_1).collect();
        let exact: f32 = (0..kb * 32)
            .map(|i| {
                let b = &w[i / 32];
                let j = i % 32;
                let q = if j < 16 {
                    b.qs[j] & 15
                } else {
                    b.qs[j - 16] >> 4
                };
                (b.d * f32::from(q) + b.m) * xs[i]
            })
            .sum();
        let s = dot_scalar(&w, &a);
        let (dot, dot4) = dot_fns();
        let f = dot(&w, &a);
        assert!(
            (s - f).abs() < 1e-4 * s.abs().max(1.0),
            "scalar {s} simd {f}"
        );
        let f4 = dot4(&w, [&a, &a, &a, &a]);
        assert!(
            f4.iter().all(|v| (v - f).abs() < 1e-5 * f.abs().max(1.0)),
            "{f4:?} vs {f}"
        );
        assert!(
            (s - exact).abs() < 2e-2 * exact.abs().max(1.0),
            "{s} vs {exact}"
        );
    }
}
