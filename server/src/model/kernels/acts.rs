//! Activation quantization: each token's f32 values as the integer blocks the weight kernels dot with,
//! exactly as llama.cpp quantizes them (Q8_1 / Q8_0 per 32 values, Q8_K per 256 for K-quant weights), with
//! the same blocks at every instruction set.
#![allow(unsafe_code)]

use candle_core::{Result, Tensor};

use super::Isa;

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
    let isa = Isa::detect();
    let out = super::with_f32(x, |lhs| {
        by_rows(lhs, k, |row, out| {
            let mut v = Vec::with_capacity(k / 32);
            quantize_row_q8k(row, isa, &mut v);
            out.copy_from_slice(&v);
        })
    })?;
    Ok((out, m))
}

/// The Q8_1 blocks of `lhs`'s rows of `k` values, `quantize(row, blocks)` filling each row's `k / 32`
/// blocks; rows split over the rayon pool for prompts (serially, the quantization kept one thread busy
/// while the other waited).
fn by_rows(
    lhs: &[f32],
    k: usize,
    quantize: impl Fn(&[f32], &mut [BlockQ8_1]) + Sync,
) -> Vec<BlockQ8_1> {
    let mut out = vec![BlockQ8_1::default(); lhs.len() / 32];
    let rows = lhs.len() / k.max(1);
    if rows <= 1 || rayon::current_num_threads() <= 1 {
        for (row, o) in lhs.chunks_exact(k).zip(out.chunks_exact_mut(k / 32)) {
            quantize(row, o);
        }
    } else {
        use rayon::prelude::*;
        lhs.par_chunks_exact(k)
            .zip(out.par_chunks_exact_mut(k / 32))
            .with_min_len(4)
            .for_each(|(row, o)| quantize(row, o));
    }
    out
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
    let isa = Isa::detect();
    let out = super::with_f32(x, |lhs| {
        by_rows(lhs, k, |row, out| {
            for (b, o) in row.chunks_exact(32).zip(out) {
                *o = quantize_block(b, isa);
            }
        })
    })?;
    Ok((out, m))
}
