//! Q4_1 weights × Q8_1 activations, with llama.cpp's numerics.

use candle_core::{Result, Tensor};

use super::{BlockQ8_1, Isa, for_token_groups, matmul_rows, quantize_rows};

/// One Q4_1 weight block with its scales widened to f32: value `j` is `d * q_j + m`, `q_j` the low nibble
/// of `qs[j]` for `j < 16` and the high nibble of `qs[j - 16]` otherwise (GGML's layout).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct BlockQ4_1 {
    pub(super) d: f32,
    pub(super) m: f32,
    pub(super) qs: [u8; 16],
}

const Q4_1_BYTES: usize = 20;

/// A `[rows, cols]` Q4_1 matrix multiplied exactly as llama.cpp does it (activations quantized to Q8_1
/// per 32 values, integer dot products). Re-encoding the weights as Q8_0 instead would change them (and
/// measurably moved greedy outputs away from llama.cpp's).
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
        self.forward_with(Isa::detect(), x)
    }

    pub(super) fn forward_with(&self, isa: Isa, x: &Tensor) -> Result<Tensor> {
        let (acts, m) = quantize_rows(x, self.cols, "Q4_1")?;
        let kb = self.cols / 32;
        matmul_rows(self.rows, m, x, |row, out| {
            let w = &self.blocks[row * kb..(row + 1) * kb];
            let act = |t: usize| &acts[t * kb..(t + 1) * kb];
            for_token_groups(
                m,
                out,
                |t, o| o.copy_from_slice(&dot_n::<8>(isa, w, std::array::from_fn(|i| act(t + i)))),
                |t, o| o.copy_from_slice(&dot_n::<4>(isa, w, std::array::from_fn(|i| act(t + i)))),
                |t, o| *o = dot_n::<1>(isa, w, [act(t)])[0],
            );
        })
    }
}

/// Row `w` dotted with `N` tokens' activations.
pub(super) fn dot_n<const N: usize>(isa: Isa, w: &[BlockQ4_1], a: [&[BlockQ8_1]; N]) -> [f32; N] {
    assert!(
        a.iter().all(|a| a.len() == w.len()),
        "Q4_1 dot: block counts differ"
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Vnni` is only detected with AVX2, FMA, AVX-512 VNNI and VL; lengths checked above.
        Isa::Vnni => unsafe { dot_x86::<N, true>(w, a) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only detected with AVX2 and FMA; lengths checked above.
        Isa::Avx2 => unsafe { dot_x86::<N, false>(w, a) },
        _ => a.map(|a| dot_scalar(w, a)),
    }
}

pub(super) fn dot_scalar(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
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

/// # Safety
/// The CPU must have AVX2 and FMA, and AVX-512 VNNI + VL when `VNNI`; every `a[t]` has `w.len()` blocks.
#[cfg(target_arch = "x86_64")]
unsafe fn dot_x86<const N: usize, const VNNI: bool>(
    w: &[BlockQ4_1],
    a: [&[BlockQ8_1]; N],
) -> [f32; N] {
    if VNNI {
        // SAFETY: forwarded from the caller.
        unsafe { dot_vnni::<N>(w, a) }
    } else {
        // SAFETY: forwarded from the caller.
        unsafe { dot_avx2::<N>(w, a) }
    }
}

macro_rules! q4_1_dot_body {
    ($w:ident, $a:ident, $n:ident, |$bx:ident, $qa:ident| $dot:expr) => {{
        use std::arch::x86_64::*;
        let mask = _mm_set1_epi8(0x0F);
        let mut acc = [_mm256_setzero_ps(); $n];
        let mut summs = [0f32; $n];
        for (b, wb) in $w.iter().enumerate() {
            // SAFETY: `qs` is 16 bytes, matching the unaligned 128-bit load.
            let qw = unsafe { _mm_loadu_si128(wb.qs.as_ptr().cast()) };
            let lo = _mm_and_si128(qw, mask);
            let hi = _mm_and_si128(_mm_srli_epi16(qw, 4), mask);
            let $bx = _mm256_set_m128i(hi, lo);
            for t in 0..$n {
                // SAFETY: the caller guarantees `a[t].len() == w.len()`, so `b` is in bounds.
                let ab = unsafe { $a[t].get_unchecked(b) };
                // SAFETY: `qs` is 32 bytes, matching the unaligned 256-bit load.
                let $qa = unsafe { _mm256_loadu_si256(ab.qs.as_ptr().cast()) };
                let dot = $dot;
                acc[t] =
                    _mm256_fmadd_ps(_mm256_set1_ps(wb.d * ab.d), _mm256_cvtepi32_ps(dot), acc[t]);
                summs[t] += wb.m * ab.s;
            }
        }
        std::array::from_fn(|t| super::hsum(acc[t]) + summs[t])
    }};
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2<const N: usize>(w: &[BlockQ4_1], a: [&[BlockQ8_1]; N]) -> [f32; N] {
    let ones = std::arch::x86_64::_mm256_set1_epi16(1);
    // u8 (0..15) × i8 pairs summed to i16 (|·| ≤ 2·15·128, no saturation), then to i32
    q4_1_dot_body!(w, a, N, |bx, qa| _mm256_madd_epi16(
        _mm256_maddubs_epi16(bx, qa),
        ones
    ))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
unsafe fn dot_vnni<const N: usize>(w: &[BlockQ4_1], a: [&[BlockQ8_1]; N]) -> [f32; N] {
    // four u8 × i8 products summed straight into each i32 lane
    q4_1_dot_body!(w, a, N, |bx, qa| _mm256_dpbusd_epi32(
        _mm256_setzero_si256(),
        bx,
        qa
    ))
}
