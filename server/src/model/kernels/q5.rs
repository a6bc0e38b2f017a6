//! 5-bit weights with a minimum — Q5_1, and Q5_K re-laid out per 32-value sub-block — × Q8_1 activations:
//! value `j` is `d · q_j + m` with `q_j` in 0..32, stored one per byte (so the integer dot is a plain u8 × i8
//! one), and the minimum term `m · s` from the activation block's `s = d_a · Σ a`, as for Q4_1.
//!
//! Q5_K: a super-block (256 values) holds eight sub-blocks with 6-bit scale and minimum: value
//! `d·sc·q − dmin·m`; each becomes a block with scale `d·sc` and minimum `−dmin·m` (exact in f32).

use super::BlockQ8_1;
use super::quant::{GgufBlocks, QuantMatrix, QuantType};

/// One 32-value block: value `j` is `d * qs[j] + m`.
#[derive(Debug, Clone, Copy)]
pub struct BlockQ5 {
    pub(super) d: f32,
    pub(super) m: f32,
    pub(super) qs: [u8; 32],
}

impl Default for BlockQ5 {
    fn default() -> Self {
        Self {
            d: 0.0,
            m: 0.0,
            qs: [0; 32],
        }
    }
}

/// Eight rows × one block column for the VNNI kernel: lane `i` of `qs[jj]` holds row `i`'s values
/// `4jj..4jj+4`.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(32))]
pub struct Tile8 {
    d: [f32; 8],
    m: [f32; 8],
    qs: [[u8; 32]; 8],
}

/// Q5_1 (and Q5_K, re-laid out): 5-bit values with scale and minimum.
#[derive(Debug, Clone)]
pub struct Q5;

/// A `[rows, cols]` matrix of 5-bit blocks.
pub type Q5Matrix = QuantMatrix<Q5>;

impl GgufBlocks for Q5 {
    const BYTES: usize = 24;
    /// A GGUF Q5_1 block: f16 `d`, f16 `m`, 32 high bits, 16 bytes of low nibbles.
    fn parse(b: &[u8]) -> BlockQ5 {
        let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
        let ql = &b[8..24];
        let mut qs = [0u8; 32];
        for j in 0..16 {
            qs[j] = (ql[j] & 0x0F) | ((((qh >> j) & 1) as u8) << 4);
            qs[j + 16] = (ql[j] >> 4) | ((((qh >> (j + 16)) & 1) as u8) << 4);
        }
        BlockQ5 {
            d: half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
            m: half::f16::from_le_bytes([b[2], b[3]]).to_f32(),
            qs,
        }
    }
}

impl QuantType for Q5 {
    const NAME: &'static str = "Q5_1";
    type Block = BlockQ5;
    type Tile = Tile8;

    fn tile(rows: [&BlockQ5; 8]) -> Tile8 {
        let mut t = Tile8::default();
        for (i, blk) in rows.iter().enumerate() {
            t.d[i] = blk.d;
            t.m[i] = blk.m;
            for jj in 0..8 {
                t.qs[jj][4 * i..4 * i + 4].copy_from_slice(&blk.qs[4 * jj..4 * jj + 4]);
            }
        }
        t
    }

    fn dot_scalar(w: &[BlockQ5], a: &[BlockQ8_1]) -> f32 {
        let mut acc = 0f32;
        for (w, a) in w.iter().zip(a) {
            let sumi: i32 =
                w.qs.iter()
                    .zip(&a.qs)
                    .map(|(&x, &y)| i32::from(x) * i32::from(y))
                    .sum();
            acc += w.d * a.d * sumi as f32 + w.m * a.s;
        }
        acc
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn dot_x86<const N: usize, const VNNI: bool>(
        w: &[BlockQ5],
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
        // SAFETY: the caller has AVX2; each `qs[jj]` is 32 bytes, `d` and `m` eight floats each.
        unsafe {
            (
                super::regs::load8(&self.qs),
                _mm256_loadu_ps(self.d.as_ptr()),
                _mm256_loadu_ps(self.m.as_ptr()),
            )
        }
    }
}

macro_rules! q5_dot_body {
    ($w:ident, $a:ident, $n:ident, |$qw:ident, $qa:ident| $dot:expr) => {{
        use std::arch::x86_64::*;
        let mut acc = [_mm256_setzero_ps(); $n];
        let mut summs = [0f32; $n];
        for (b, wb) in $w.iter().enumerate() {
            // SAFETY: `qs` is 32 bytes, matching the unaligned 256-bit load.
            let $qw = unsafe { _mm256_loadu_si256(wb.qs.as_ptr().cast()) };
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
unsafe fn dot_avx2<const N: usize>(w: &[BlockQ5], a: [&[BlockQ8_1]; N]) -> [f32; N] {
    let ones = std::arch::x86_64::_mm256_set1_epi16(1);
    // u8 (0..31) × i8 pairs summed to i16 (|·| ≤ 2·31·128, no saturation), then to i32
    q5_dot_body!(w, a, N, |qw, qa| _mm256_madd_epi16(
        _mm256_maddubs_epi16(qw, qa),
        ones
    ))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
unsafe fn dot_vnni<const N: usize>(w: &[BlockQ5], a: [&[BlockQ8_1]; N]) -> [f32; N] {
    q5_dot_body!(w, a, N, |qw, qa| _mm256_dpbusd_epi32(
        _mm256_setzero_si256(),
        qw,
        qa
    ))
}
