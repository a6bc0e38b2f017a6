//! Q4_1 weights × Q8_1 activations, with llama.cpp's numerics (the default model's layers).

use super::BlockQ8_1;
use super::quant::{GgufBlocks, QuantMatrix, QuantType};

/// One Q4_1 weight block with its scales widened to f32: value `j` is `d * q_j + m`, `q_j` the low nibble
/// of `qs[j]` for `j < 16` and the high nibble of `qs[j - 16]` otherwise (GGML's layout).
#[derive(Debug, Clone, Copy, Default)]
pub struct BlockQ4_1 {
    pub(super) d: f32,
    pub(super) m: f32,
    pub(super) qs: [u8; 16],
}

/// Eight rows × one 32-column block for the VNNI kernel: lane `i` of `qs[jj]` holds bytes `4jj..4jj+4` of
/// row `i`'s packed nibbles, so `qs[jj] & 0xF` are that row's values `4jj..4jj+4` and `qs[jj] >> 4` its
/// values `16+4jj..16+4jj+4`.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(32))]
pub struct Tile8 {
    d: [f32; 8],
    m: [f32; 8],
    qs: [[u8; 32]; 4],
}

/// Q4_1 (activations quantized to Q8_1 per 32 values, integer dot products). Re-encoding the weights as
/// Q8_0 instead would change them (and measurably moved greedy outputs away from llama.cpp's).
#[derive(Debug, Clone)]
pub struct Q4_1;

/// A `[rows, cols]` Q4_1 matrix.
pub type Q4_1Matrix = QuantMatrix<Q4_1>;

impl GgufBlocks for Q4_1 {
    const BYTES: usize = 20;
    fn parse(b: &[u8]) -> BlockQ4_1 {
        let mut qs = [0u8; 16];
        qs.copy_from_slice(&b[4..20]);
        BlockQ4_1 {
            d: half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
            m: half::f16::from_le_bytes([b[2], b[3]]).to_f32(),
            qs,
        }
    }
}

impl QuantType for Q4_1 {
    const NAME: &'static str = "Q4_1";
    // On AVX2 the tiles give the same bits as on VNNI CPUs (the row-major AVX2 loop sums in eight lanes:
    // SmolLM2 Q4_1 then drifted 1.17 logits of top-1/top-2 gap from llama.cpp, 0.49 on the tiles).
    const AVX2_TILES: bool = true;
    type Block = BlockQ4_1;
    type Tile = Tile8;

    fn tile(rows: [&BlockQ4_1; 8]) -> Tile8 {
        let mut t = Tile8::default();
        for (i, blk) in rows.iter().enumerate() {
            t.d[i] = blk.d;
            t.m[i] = blk.m;
            for jj in 0..4 {
                t.qs[jj][4 * i..4 * i + 4].copy_from_slice(&blk.qs[4 * jj..4 * jj + 4]);
            }
        }
        t
    }

    fn dot_scalar(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
        dot_scalar(w, a)
    }

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
}

impl super::vnni_tile::VnniTile for Tile8 {
    const OFFSET: i32 = 0;
    const HAS_MIN: bool = true;
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load<const VNNI: bool>(&self) -> super::vnni_tile::TileRegs {
        use std::arch::x86_64::*;
        // SAFETY: the caller has AVX2; `d` and `m` hold eight floats each.
        unsafe {
            (
                super::regs::unpack_nibbles(&self.qs),
                _mm256_loadu_ps(self.d.as_ptr()),
                _mm256_loadu_ps(self.m.as_ptr()),
            )
        }
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
