//! Q8_0 weights × Q8_0 activations, with llama.cpp's numerics (the tied LM head of the default model).

use super::BlockQ8_1;
use super::quant::{GgufBlocks, QuantMatrix, QuantType};

/// One Q8_0 weight block: value `j` is `d * qs_j`.
#[derive(Debug, Clone, Copy, Default)]
pub struct BlockQ8 {
    pub(super) d: f32,
    pub(super) qs: [i8; 32],
}

/// Eight rows × one 32-column block for the VNNI kernel: lane `i` of `qs[jj]` holds row `i`'s values
/// `4jj..4jj+4` offset to unsigned (`q + 128`); the kernel subtracts `128 · Σ a` exactly.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(32))]
pub struct Tile8 {
    d: [f32; 8],
    qs: [[u8; 32]; 8],
}

/// Q8_0 (activations quantized per 32 values, as llama.cpp does, not per 256 as candle's VNNI path).
#[derive(Debug, Clone)]
pub struct Q8_0;

/// A `[rows, cols]` Q8_0 matrix.
pub type Q8_0Matrix = QuantMatrix<Q8_0>;

impl GgufBlocks for Q8_0 {
    const BYTES: usize = 34;
    fn parse(b: &[u8]) -> BlockQ8 {
        let mut qs = [0i8; 32];
        for (q, &byte) in qs.iter_mut().zip(&b[2..]) {
            *q = byte as i8;
        }
        BlockQ8 {
            d: half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
            qs,
        }
    }
}

impl QuantType for Q8_0 {
    const NAME: &'static str = "Q8_0";
    type Block = BlockQ8;
    type Tile = Tile8;

    fn tile(rows: [&BlockQ8; 8]) -> Tile8 {
        let mut t = Tile8::default();
        for (i, blk) in rows.iter().enumerate() {
            t.d[i] = blk.d;
            for jj in 0..8 {
                for c in 0..4 {
                    t.qs[jj][4 * i + c] = (i16::from(blk.qs[4 * jj + c]) + 128) as u8;
                }
            }
        }
        t
    }

    fn dot_scalar(w: &[BlockQ8], a: &[BlockQ8_1]) -> f32 {
        dot_scalar(w, a)
    }

    fn values(b: &BlockQ8) -> Option<[f32; 32]> {
        // `q · d` in f32, as GGML's (and candle's) Q8_0 dequantization computes it
        Some(std::array::from_fn(|j| f32::from(b.qs[j]) * b.d))
    }

    fn tile_values(t: &[Tile8], b: usize, i: usize) -> Option<[f32; 32]> {
        let t = &t[b];
        Some(std::array::from_fn(|j| {
            let q = i16::from(t.qs[j / 4][4 * i + j % 4]) - 128;
            f32::from(q) * t.d[i]
        }))
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn dot_x86<const N: usize, const VNNI: bool>(
        w: &[BlockQ8],
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
}

impl super::vnni_tile::VnniTile for Tile8 {
    const OFFSET: i32 = 128;
    const HAS_MIN: bool = false;
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load<const VNNI: bool>(&self) -> super::vnni_tile::TileRegs {
        use std::arch::x86_64::*;
        // SAFETY: the caller has AVX2; each `qs[jj]` is 32 bytes and `d` eight floats.
        unsafe {
            (
                super::regs::load8(&self.qs),
                _mm256_loadu_ps(self.d.as_ptr()),
                _mm256_setzero_ps(),
            )
        }
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
