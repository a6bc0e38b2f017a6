//! Q5_0 and Q5_1 weights on tiles of the file's own size (most of the matrices of a Q4_K_M or Q5_K_M file
//! whose rows are not a multiple of 256 values long, SmolLM2's among them: llama.cpp's quantizer falls back
//! to Q5_0 / Q5_1 there).
//!
//! Both hold 32 five-bit values `q` (0..31) per block with an f16 `d`: Q5_0's value is `d · (q − 16)`,
//! Q5_1's `d · q + m` with an f16 minimum `m`. On VNNI CPUs a tile holds the low four bits as the Q4_1 tile
//! packs its nibbles, the fifth bits in a plane of their own and the rows' f16 scales: 22 and 24 bytes per
//! 32 values, the files' sizes. The generic tile kernel ([`super::quant::tile_vnni`]) runs them: for Q5_0 it
//! subtracts `16 · Σ a` from `Σ q·a`, the same exact integer as `Σ (q − 16)·a`. Elsewhere the blocks are
//! Q8_0's (`q − 16` as int8, 36 bytes per 32 values) and [`super::q5`]'s (40 bytes) and run on their
//! kernels. Either way the results are, bit for bit, what those kernels give on the same values.

use candle_core::Result;

use super::q5::{BlockQ5, Q5};
use super::q8_0::{BlockQ8, Q8_0};
use super::quant::{GgufBlocks, QuantMatrix, QuantType};
use super::{Acts, BlockQ8_1, Isa};

const Q5_0_BYTES: usize = 22;

/// Row `i`'s 32 values `q(j)` (0..31) into a tile's planes: `lo[k]` byte `4i + c` holds values `4k + c`
/// (low nibble) and `16 + 4k + c` (high nibble), low four bits each; bit `r` of `hi[4i + c]` is the fifth
/// bit of value `4r + c` (register `r` of the eight [`load5`] gives).
fn pack5(q: impl Fn(usize) -> u8, i: usize, lo: &mut [[u8; 32]; 4], hi: &mut [u8; 32]) {
    for (k, plane) in lo.iter_mut().enumerate() {
        for c in 0..4 {
            let (v0, v1) = (q(4 * k + c), q(16 + 4 * k + c));
            plane[4 * i + c] = (v0 & 15) | ((v1 & 15) << 4);
            hi[4 * i + c] |= ((v0 >> 4) << k) | ((v1 >> 4) << (4 + k));
        }
    }
}

/// Value `j` (0..31) of row `i` from a tile's planes ([`pack5`]).
fn unpack5(lo: &[[u8; 32]; 4], hi: &[u8; 32], i: usize, j: usize) -> u8 {
    let (h, k, c) = (j / 16, j % 16 / 4, j % 4);
    let nib = (lo[k][4 * i + c] >> (4 * h)) & 15;
    let top = (hi[4 * i + c] >> (4 * h + k)) & 1;
    nib | (top << 4)
}

/// The eight weight registers of a tile's planes ([`pack5`]): values 0..31, register `k` lining up with
/// activation dword `k`, lane `i` = row `i`.
///
/// # Safety
/// AVX2 and AVX-512 F and VL.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,avx512f,avx512vl")]
unsafe fn load5(lo: &[[u8; 32]; 4], hi: &[u8; 32]) -> [std::arch::x86_64::__m256i; 8] {
    use std::arch::x86_64::*;
    // SAFETY: AVX2 and AVX-512 F/VL are enabled here; `lo` is four 32-byte rows, `hi` 32 bytes.
    unsafe {
        let nib = super::quant::unpack_nibbles(lo);
        let h = _mm256_loadu_si256(hi.as_ptr().cast());
        let mask = _mm256_set1_epi8(0x10);
        // bit `r` of each byte moved to bit 4 (16-bit shifts: what crosses a byte lands outside the mask)
        let shifted = |r: usize| match r {
            0 => _mm256_slli_epi16(h, 4),
            1 => _mm256_slli_epi16(h, 3),
            2 => _mm256_slli_epi16(h, 2),
            3 => _mm256_slli_epi16(h, 1),
            4 => h,
            5 => _mm256_srli_epi16(h, 1),
            6 => _mm256_srli_epi16(h, 2),
            _ => _mm256_srli_epi16(h, 3),
        };
        // nibbles | (shifted & mask) in one instruction
        std::array::from_fn(|r| _mm256_ternarylogic_epi32::<0xF8>(nib[r], shifted(r), mask))
    }
}

/// Eight rows × one 32-value Q5_0 block for the VNNI kernel: the values' planes ([`pack5`]) and the rows'
/// f16 scales. 176 bytes.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct Tile8 {
    lo: [[u8; 32]; 4],
    hi: [u8; 32],
    d: [u16; 8],
}

/// Q5_0 on file-sized tiles (VNNI), on Q8_0's blocks and kernel elsewhere.
#[derive(Debug, Clone)]
pub struct Q5_0;

/// A `[rows, cols]` Q5_0 matrix.
pub type Q5_0Matrix = QuantMatrix<Q5_0>;

impl QuantType for Q5_0 {
    const NAME: &'static str = "Q5_0";
    type Block = BlockQ8;
    type Tile = Tile8;

    fn tile(rows: [&BlockQ8; 8]) -> Tile8 {
        let mut t = Tile8::default();
        for (i, blk) in rows.iter().enumerate() {
            t.d[i] = half::f16::from_f32(blk.d).to_bits();
            pack5(
                |j| (i16::from(blk.qs[j]) + 16) as u8,
                i,
                &mut t.lo,
                &mut t.hi,
            );
        }
        t
    }

    fn dot_scalar(w: &[BlockQ8], a: &[BlockQ8_1]) -> f32 {
        Q8_0::dot_scalar(w, a)
    }

    fn values(b: &BlockQ8) -> Option<[f32; 32]> {
        Q8_0::values(b)
    }

    fn tile_values(t: &[Tile8], b: usize, i: usize) -> Option<[f32; 32]> {
        let t = &t[b];
        let d = half::f16::from_bits(t.d[i]).to_f32();
        Some(std::array::from_fn(|j| {
            // `(q − 16) · d` in f32, as GGML's (and candle's) Q5_0 dequantization computes it
            f32::from(i16::from(unpack5(&t.lo, &t.hi, i, j)) - 16) * d
        }))
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn dot_x86<const N: usize, const VNNI: bool>(
        w: &[BlockQ8],
        a: [&[BlockQ8_1]; N],
    ) -> [f32; N] {
        // SAFETY: forwarded from the caller.
        unsafe { Q8_0::dot_x86::<N, VNNI>(w, a) }
    }
}

impl super::quant::VnniTile for Tile8 {
    const OFFSET: i32 = 16;
    const HAS_MIN: bool = false;
    const UNPACK: bool = true;
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,f16c,avx512f,avx512vl")]
    unsafe fn load(&self) -> super::quant::TileRegs {
        use std::arch::x86_64::*;
        // SAFETY: AVX2, F16C and AVX-512 F/VL are enabled here (tiles exist only on VNNI CPUs, which have
        // them); `d` is eight f16.
        unsafe {
            (
                load5(&self.lo, &self.hi),
                _mm256_cvtph_ps(_mm_loadu_si128(self.d.as_ptr().cast())),
                _mm256_setzero_ps(),
            )
        }
    }
}

/// Eight rows × one 32-value Q5_1 block for the VNNI kernel: the values' planes ([`pack5`]) and the rows'
/// f16 scales and minimums. 192 bytes.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct Tile8M {
    lo: [[u8; 32]; 4],
    hi: [u8; 32],
    d: [u16; 8],
    m: [u16; 8],
}

/// Q5_1 on file-sized tiles (VNNI), on [`super::q5`]'s blocks and kernel elsewhere.
#[derive(Debug, Clone)]
pub struct Q5_1;

/// A `[rows, cols]` Q5_1 matrix.
pub type Q5_1Matrix = QuantMatrix<Q5_1>;

impl GgufBlocks for Q5_1 {
    const BYTES: usize = Q5::BYTES;
    fn parse(bytes: &[u8]) -> BlockQ5 {
        Q5::parse(bytes)
    }
}

impl QuantType for Q5_1 {
    const NAME: &'static str = "Q5_1";
    type Block = BlockQ5;
    type Tile = Tile8M;

    fn tile(rows: [&BlockQ5; 8]) -> Tile8M {
        let mut t = Tile8M::default();
        for (i, blk) in rows.iter().enumerate() {
            // a Q5_1 file's `d` and `m` are f16s
            t.d[i] = half::f16::from_f32(blk.d).to_bits();
            t.m[i] = half::f16::from_f32(blk.m).to_bits();
            pack5(|j| blk.qs[j], i, &mut t.lo, &mut t.hi);
        }
        t
    }

    fn dot_scalar(w: &[BlockQ5], a: &[BlockQ8_1]) -> f32 {
        Q5::dot_scalar(w, a)
    }

    fn values(b: &BlockQ5) -> Option<[f32; 32]> {
        Some(std::array::from_fn(|j| f32::from(b.qs[j]) * b.d + b.m))
    }

    fn tile_values(t: &[Tile8M], b: usize, i: usize) -> Option<[f32; 32]> {
        let t = &t[b];
        let (d, m) = (
            half::f16::from_bits(t.d[i]).to_f32(),
            half::f16::from_bits(t.m[i]).to_f32(),
        );
        // `q · d + m` in f32, as GGML's (and candle's) Q5_1 dequantization computes it
        Some(std::array::from_fn(|j| {
            f32::from(unpack5(&t.lo, &t.hi, i, j)) * d + m
        }))
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn dot_x86<const N: usize, const VNNI: bool>(
        w: &[BlockQ5],
        a: [&[BlockQ8_1]; N],
    ) -> [f32; N] {
        // SAFETY: forwarded from the caller.
        unsafe { Q5::dot_x86::<N, VNNI>(w, a) }
    }
}

impl super::quant::VnniTile for Tile8M {
    const OFFSET: i32 = 0;
    const HAS_MIN: bool = true;
    const UNPACK: bool = true;
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,f16c,avx512f,avx512vl")]
    unsafe fn load(&self) -> super::quant::TileRegs {
        use std::arch::x86_64::*;
        // SAFETY: AVX2, F16C and AVX-512 F/VL are enabled here (tiles exist only on VNNI CPUs); `d` and
        // `m` are eight f16 each.
        unsafe {
            (
                load5(&self.lo, &self.hi),
                _mm256_cvtph_ps(_mm_loadu_si128(self.d.as_ptr().cast())),
                _mm256_cvtph_ps(_mm_loadu_si128(self.m.as_ptr().cast())),
            )
        }
    }
}

/// Q5_0 blocks as Q8_0 blocks: value `q − 16` as int8, the same f16 scale.
pub(super) fn q5_0_blocks(bytes: &[u8]) -> Vec<BlockQ8> {
    bytes
        .chunks_exact(Q5_0_BYTES)
        .map(|b| {
            let d = half::f16::from_le_bytes([b[0], b[1]]).to_f32();
            let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
            let qs = &b[6..22];
            let mut v = [0i8; 32];
            for j in 0..16 {
                let hi0 = ((qh >> j) & 1) as u8;
                let hi1 = ((qh >> (j + 16)) & 1) as u8;
                v[j] = ((qs[j] & 0x0F) | (hi0 << 4)) as i8 - 16;
                v[j + 16] = ((qs[j] >> 4) | (hi1 << 4)) as i8 - 16;
            }
            BlockQ8 { d, qs: v }
        })
        .collect()
}

impl Q5_0Matrix {
    /// A `[rows, cols]` Q5_0 tensor's GGUF bytes.
    pub fn from_q5_0(bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        Self::from_q5_0_for(Isa::detect(), bytes, rows, cols)
    }

    pub(super) fn from_q5_0_for(isa: Isa, bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        if !cols.is_multiple_of(32) || bytes.len() != rows * cols / 32 * Q5_0_BYTES {
            candle_core::bail!("Q5_0 matrix [{rows}, {cols}]: {} bytes", bytes.len());
        }
        Self::from_blocks_for(isa, q5_0_blocks(bytes), rows, cols, "Q5_0", Acts::Per32)
    }
}
