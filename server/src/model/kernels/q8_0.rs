//! Q8_0 weights × Q8_0 activations, with llama.cpp's numerics (the tied LM head of the default model).

use candle_core::{Result, Tensor};

use super::{BlockQ8_1, Isa, for_token_groups, matmul_rows, quantize_rows};

/// One Q8_0 weight block: value `j` is `d * qs_j`.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct BlockQ8 {
    pub(super) d: f32,
    pub(super) qs: [i8; 32],
}

const Q8_0_BYTES: usize = 34;

/// A `[rows, cols]` Q8_0 matrix (activations quantized per 32 values, as llama.cpp does, not per 256).
#[derive(Debug, Clone)]
pub struct Q8_0Matrix {
    blocks: Vec<BlockQ8>,
    rows: usize,
    cols: usize,
}

impl Q8_0Matrix {
    /// From the raw GGUF bytes of a `[rows, cols]` Q8_0 tensor.
    pub fn from_bytes(bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        if !cols.is_multiple_of(32) {
            candle_core::bail!("Q8_0 matrix with {cols} columns");
        }
        let n = rows * cols / 32;
        if bytes.len() != n * Q8_0_BYTES {
            candle_core::bail!(
                "Q8_0 matrix [{rows}, {cols}] needs {} bytes, got {}",
                n * Q8_0_BYTES,
                bytes.len()
            );
        }
        let blocks = bytes
            .chunks_exact(Q8_0_BYTES)
            .map(|b| {
                let mut qs = [0i8; 32];
                for (q, &byte) in qs.iter_mut().zip(&b[2..]) {
                    *q = byte as i8;
                }
                BlockQ8 {
                    d: half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
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
        let (acts, m) = quantize_rows(x, self.cols, "Q8_0")?;
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
pub(super) fn dot_n<const N: usize>(isa: Isa, w: &[BlockQ8], a: [&[BlockQ8_1]; N]) -> [f32; N] {
    assert!(
        a.iter().all(|a| a.len() == w.len()),
        "Q8_0 dot: block counts differ"
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Vnni` is only detected with AVX2, FMA, AVX-512 VNNI and VL; lengths checked above.
        Isa::Vnni => unsafe { dot_vnni::<N>(w, a) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only detected with AVX2 and FMA; lengths checked above.
        Isa::Avx2 => unsafe { dot_avx2::<N>(w, a) },
        _ => a.map(|a| dot_scalar(w, a)),
    }
}

pub(super) fn dot_scalar(w: &[BlockQ8], a: &[BlockQ8_1]) -> f32 {
    let mut acc = 0f32;
    for (w, a) in w.iter().zip(a) {
        let sumi: i32 =
            w.qs.iter()
                .zip(&a.qs)
                .map(|(&x, &y)| i32::from(x) * i32::from(y))
                .sum();
        acc += w.d * a.d * sumi as f32;
    }
    acc
}

// The x86 kernels multiply |w| (u8) by sign(w)·a (i8), the usual trick for u8 × i8 instructions.
macro_rules! q8_0_dot_body {
    ($w:ident, $a:ident, $n:ident, |$aw:ident, $sa:ident| $dot:expr) => {{
        use std::arch::x86_64::*;
        let mut acc = [_mm256_setzero_ps(); $n];
        for (b, wb) in $w.iter().enumerate() {
            // SAFETY: `qs` is 32 bytes, matching the unaligned 256-bit load.
            let qw = unsafe { _mm256_loadu_si256(wb.qs.as_ptr().cast()) };
            let $aw = _mm256_sign_epi8(qw, qw);
            for t in 0..$n {
                // SAFETY: the caller guarantees `a[t].len() == w.len()`, so `b` is in bounds.
                let ab = unsafe { $a[t].get_unchecked(b) };
                // SAFETY: `qs` is 32 bytes, matching the unaligned 256-bit load.
                let qa = unsafe { _mm256_loadu_si256(ab.qs.as_ptr().cast()) };
                let $sa = _mm256_sign_epi8(qa, qw);
                let dot = $dot;
                acc[t] =
                    _mm256_fmadd_ps(_mm256_set1_ps(wb.d * ab.d), _mm256_cvtepi32_ps(dot), acc[t]);
            }
        }
        std::array::from_fn(|t| super::hsum(acc[t]))
    }};
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2<const N: usize>(w: &[BlockQ8], a: [&[BlockQ8_1]; N]) -> [f32; N] {
    let ones = std::arch::x86_64::_mm256_set1_epi16(1);
    // |w| ≤ 127 (GGUF Q8_0 weights are quantized symmetric to ±127), so pair sums fit i16
    q8_0_dot_body!(w, a, N, |aw, sa| _mm256_madd_epi16(
        _mm256_maddubs_epi16(aw, sa),
        ones
    ))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
unsafe fn dot_vnni<const N: usize>(w: &[BlockQ8], a: [&[BlockQ8_1]; N]) -> [f32; N] {
    q8_0_dot_body!(w, a, N, |aw, sa| _mm256_dpbusd_epi32(
        _mm256_setzero_si256(),
        aw,
        sa
    ))
}
