//! Q5_0 and Q5_1 weights on tiles of the file's own size (most of the matrices of a Q4_K_M or Q5_K_M file
//! whose rows are not a multiple of 256 values long, SmolLM2's among them: llama.cpp's quantizer falls back
//! to Q5_0 / Q5_1 there).
//!
//! Both hold 32 five-bit values `q` (0..31) per block with an f16 `d`: Q5_0's value is `d · (q − 16)`,
//! Q5_1's `d · q + m` with an f16 minimum `m`. On AVX2 and VNNI CPUs a tile holds the low four bits as the
//! Q4_1 tile packs its nibbles, the fifth bits in a plane of their own and the rows' f16 scales: 22 and 24
//! bytes per 32 values, the files' sizes. The generic tile kernel ([`super::vnni_tile::tile_vnni`],
//! [`super::vnni_tile::tile_avx2`]) runs them: for Q5_0 it subtracts `16 · Σ a` from `Σ q·a`, the same exact
//! integer as `Σ (q − 16)·a`. On scalar CPUs (and row counts not in eights) the blocks are Q8_0's (`q − 16`
//! as int8, 36 bytes per 32 values) and [`super::q5`]'s (40 bytes) and run on their kernels.
//!
//! Q5_K (a Q5_K_M file's main type) keeps the file's 22 bytes per 32 values the same way, with Q4_K's
//! per-row `sc | m << 6 | nibble << 12` ([`super::q4k`]). On AVX2 and VNNI it runs Q4_K's kernel (the
//! super-block's exact integers, scaled once, as llama.cpp does): the same bits at either ISA. Scalar CPUs
//! re-lay it out onto [`super::q5`]'s blocks, scaled per sub-block.

use candle_core::Result;

use super::q5::{BlockQ5, Q5};
use super::q8_0::{BlockQ8, Q8_0};
use super::quant::{GgufBlocks, QuantMatrix, QuantType};
use super::{Acts, BlockQ8_1, Isa};

const Q5_0_BYTES: usize = 22;
pub(super) const Q5K_BYTES: usize = 176;

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
/// AVX2, and with `VNNI` AVX-512 F and VL.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn load5<const VNNI: bool>(
    lo: &[[u8; 32]; 4],
    hi: &[u8; 32],
) -> [std::arch::x86_64::__m256i; 8] {
    use std::arch::x86_64::*;
    // SAFETY: the caller has the features; `lo` is four 32-byte rows, `hi` 32 bytes.
    unsafe {
        let nib = super::regs::unpack_nibbles(lo);
        let h = _mm256_loadu_si256(hi.as_ptr().cast());
        let mask = _mm256_set1_epi8(0x10);
        // bit `r` of each byte moved to bit 4 (16-bit shifts: what crosses a byte lands outside the mask;
        // no closures here, see `load8`)
        let shifted = [
            _mm256_slli_epi16(h, 4),
            _mm256_slli_epi16(h, 3),
            _mm256_slli_epi16(h, 2),
            _mm256_slli_epi16(h, 1),
            h,
            _mm256_srli_epi16(h, 1),
            _mm256_srli_epi16(h, 2),
            _mm256_srli_epi16(h, 3),
        ];
        let mut out = nib;
        for r in 0..8 {
            out[r] = super::regs::or_masked::<VNNI>(nib[r], shifted[r], mask);
        }
        out
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

/// Q5_0 on file-sized tiles (AVX2, VNNI), on Q8_0's blocks and kernel elsewhere.
#[derive(Debug, Clone)]
pub struct Q5_0;

/// A `[rows, cols]` Q5_0 matrix.
pub type Q5_0Matrix = QuantMatrix<Q5_0>;

impl QuantType for Q5_0 {
    const NAME: &'static str = "Q5_0";
    const AVX2_TILES: bool = true;
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

impl super::vnni_tile::VnniTile for Tile8 {
    const OFFSET: i32 = 16;
    const HAS_MIN: bool = false;
    const UNPACK: bool = true;
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load<const VNNI: bool>(&self) -> super::vnni_tile::TileRegs {
        use std::arch::x86_64::*;
        // SAFETY: the caller has the features; `d` is eight f16.
        unsafe {
            (
                load5::<VNNI>(&self.lo, &self.hi),
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

/// Q5_1 on file-sized tiles (AVX2, VNNI), on [`super::q5`]'s blocks and kernel elsewhere.
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
    const AVX2_TILES: bool = true;
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

impl super::vnni_tile::VnniTile for Tile8M {
    const OFFSET: i32 = 0;
    const HAS_MIN: bool = true;
    const UNPACK: bool = true;
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load<const VNNI: bool>(&self) -> super::vnni_tile::TileRegs {
        use std::arch::x86_64::*;
        // SAFETY: the caller has the features; `d` and `m` are eight f16 each.
        unsafe {
            (
                load5::<VNNI>(&self.lo, &self.hi),
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

/// One 32-value sub-block of a Q5_K super-block: value `j` is `d · sc · q_j − dmin · m`, `q_j` in 0..31;
/// `head` is the super-block's f16 `d` (low 16 bits) and `dmin` (high 16 bits), `part` this sub-block's
/// place in it.
#[derive(Debug, Clone, Copy, Default)]
pub struct BlockQ5K {
    d: f32,
    dmin: f32,
    head: u32,
    sc: u8,
    m: u8,
    part: u8,
    qs: [u8; 32],
}

impl BlockQ5K {
    /// One row's dot in the AVX2 tile kernel's formulation (Q4_K's, llama.cpp's): per super-block the
    /// exact integers `Σ sc · Σ q·a` and `Σ m · Σ a`, scaled once each by `d · d_a` and `dmin · d_a`. The
    /// plain loop the exact tests hold those tiles to.
    #[cfg(test)]
    pub(super) fn dot_super_blocks(w: &[BlockQ5K], a: &[BlockQ8_1]) -> f32 {
        let mut acc = 0f32;
        for (w, a) in w.chunks(8).zip(a.chunks(8)) {
            let (mut isum, mut msum) = (0i32, 0i32);
            for (w, a) in w.iter().zip(a) {
                let dot: i32 =
                    w.qs.iter()
                        .zip(&a.qs)
                        .map(|(&x, &y)| i32::from(x) * i32::from(y))
                        .sum();
                isum += i32::from(w.sc) * dot;
                msum += i32::from(w.m) * a.sum;
            }
            acc = (isum as f32).mul_add(w[0].d * a[0].d, acc);
            acc = (-(msum as f32)).mul_add(w[0].dmin * a[0].d, acc);
        }
        acc
    }

    /// The same 32 values as a [`super::q5`] block: scale `d·sc`, minimum `−dmin·m` (both exact in f32).
    pub(super) fn as_q5(&self) -> BlockQ5 {
        BlockQ5 {
            d: self.d * f32::from(self.sc),
            m: -(self.dmin * f32::from(self.m)),
            qs: self.qs,
        }
    }
}

/// Q5_K super-blocks as sub-blocks (eight per super-block, in order).
pub(super) fn q5k_blocks(bytes: &[u8]) -> Vec<BlockQ5K> {
    let mut out = Vec::with_capacity(bytes.len() / Q5K_BYTES * 8);
    for sb in bytes.chunks_exact(Q5K_BYTES) {
        let head = u32::from_le_bytes([sb[0], sb[1], sb[2], sb[3]]);
        let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        let (d, dmin) = (f16(&sb[0..2]), f16(&sb[2..4]));
        let (qh, qs) = (&sb[16..48], &sb[48..176]);
        for j in 0..8 {
            let (sc, m) = super::relayout::scale_min_k4(j, &sb[4..16]);
            // sub-blocks 2i and 2i+1 share 32 bytes of nibbles (low, then high); bit j of `qh[l]` is the
            // fifth bit of value l of sub-block j
            let ql = &qs[32 * (j / 2)..32 * (j / 2) + 32];
            let mut v = [0u8; 32];
            for (l, x) in v.iter_mut().enumerate() {
                let lo = if j % 2 == 0 { ql[l] & 0x0F } else { ql[l] >> 4 };
                *x = lo | (((qh[l] >> j) & 1) << 4);
            }
            out.push(BlockQ5K {
                d,
                dmin,
                head,
                sc,
                m,
                part: j as u8,
                qs: v,
            });
        }
    }
    out
}

/// Eight rows × one Q5_K sub-block for the VNNI kernel: the values' planes ([`pack5`]) and per row
/// `sc | m << 6 | nibble << 12`, sub-block `j` of a super-block holding bits `4j..4j+4` of the row's
/// `d | dmin << 16`. 176 bytes.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct Tile8K {
    lo: [[u8; 32]; 4],
    hi: [u8; 32],
    sm: [u16; 8],
}

/// Q5_K on file-sized tiles (AVX2 and VNNI CPUs, rows in eights; elsewhere Q5_K is re-laid out onto
/// [`super::q5`]'s blocks at load).
#[derive(Debug, Clone)]
pub struct Q5K;

/// A `[rows, cols]` Q5_K matrix on file-sized tiles.
pub type Q5KMatrix = QuantMatrix<Q5K>;

impl QuantType for Q5K {
    const NAME: &'static str = "Q5_K";
    const AVX2_TILES: bool = true;
    type Block = BlockQ5K;
    type Tile = Tile8K;

    fn tile(rows: [&BlockQ5K; 8]) -> Tile8K {
        let mut t = Tile8K::default();
        for (i, blk) in rows.iter().enumerate() {
            t.sm[i] = super::q4k::sm_word(blk.sc, blk.m, blk.head, blk.part);
            pack5(|j| blk.qs[j], i, &mut t.lo, &mut t.hi);
        }
        t
    }

    fn dot_scalar(w: &[BlockQ5K], a: &[BlockQ8_1]) -> f32 {
        // the generic tile kernel's operations on the re-laid-out block (one `fma` for the dot, one for the
        // minimum), so that either layout gives the same bits
        let mut acc = 0f32;
        for (w, a) in w.iter().zip(a) {
            let b = w.as_q5();
            let dot: i32 =
                b.qs.iter()
                    .zip(&a.qs)
                    .map(|(&x, &y)| i32::from(x) * i32::from(y))
                    .sum();
            acc = (dot as f32).mul_add(b.d * a.d, acc);
            acc = b.m.mul_add(a.s, acc);
        }
        acc
    }

    fn values(b: &BlockQ5K) -> Option<[f32; 32]> {
        Some(super::q4k::k_values(b.d, b.dmin, b.sc, b.m, |j| b.qs[j]))
    }

    fn tile_values(tiles: &[Tile8K], b: usize, i: usize) -> Option<[f32; 32]> {
        let t = &tiles[b];
        let words = std::array::from_fn(|p| tiles[b / 8 * 8 + p].sm[i]);
        Some(super::q4k::sub_block_values(words, b % 8, |j| {
            unpack5(&t.lo, &t.hi, i, j)
        }))
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn dot_x86<const N: usize, const VNNI: bool>(
        w: &[BlockQ5K],
        a: [&[BlockQ8_1]; N],
    ) -> [f32; N] {
        // the row-major layout only runs where the tiles cannot (tests; scalar CPUs re-lay Q5_K out onto
        // the 5-bit kernel instead)
        a.map(|a| Self::dot_scalar(w, a))
    }
}

impl super::quant::TileKernel for Tile8K {
    #[cfg(target_arch = "x86_64")]
    unsafe fn dot<const N: usize, const VNNI: bool>(
        w: &[Self],
        a: [&[BlockQ8_1]; N],
    ) -> [[f32; 8]; N] {
        // SAFETY: forwarded from the caller.
        unsafe {
            if VNNI {
                super::q4k::tile_vnni::<Self, N>(w, a)
            } else {
                super::q4k::tile_avx2::<Self, N>(w, a)
            }
        }
    }

    const WIDE: bool = true;

    #[cfg(target_arch = "x86_64")]
    unsafe fn dot16<const N: usize>(
        lo: &[Self],
        hi: &[Self],
        a: [&[BlockQ8_1]; N],
    ) -> [[f32; 16]; N] {
        // SAFETY: forwarded from the caller.
        unsafe { super::q4k::tile_zmm::<Self, N>(lo, hi, a) }
    }

    fn dot_tokens<'a>(
        name: &str,
        vnni: bool,
        w: &[Self],
        m: usize,
        act: impl Fn(usize) -> &'a [BlockQ8_1],
        out: &mut [f32],
    ) {
        // prompt-sized matmuls: the fifth bits joined once per tile, not once per group of 8 tokens
        #[cfg(target_arch = "x86_64")]
        if m > 8 {
            // SAFETY: tiles run only where `Isa::Vnni` (`vnni`) or `Isa::Avx2` was detected.
            let plain = unsafe { super::q4k::unpack_k(vnni, w) };
            return super::quant::token_groups(name, vnni, &plain, m, act, out);
        }
        super::quant::token_groups(name, vnni, w, m, act, out);
    }

    fn dot_tokens16<'a>(
        name: &str,
        lo: &[Self],
        hi: &[Self],
        m: usize,
        act: impl Fn(usize) -> &'a [BlockQ8_1],
        out: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        if m > 8 {
            // SAFETY: sixteen-row kernels run only where `Isa::Vnni512` was detected.
            let (lo, hi) = unsafe {
                (
                    super::q4k::unpack_k(true, lo),
                    super::q4k::unpack_k(true, hi),
                )
            };
            return super::quant::token_groups16(name, &lo, &hi, m, act, out);
        }
        super::quant::token_groups16(name, lo, hi, m, act, out);
    }
}

/// Q5_K runs on Q4_K's kernel, its integers over the super-block. Each sub-block's `Σ q·a` joins the integer
/// times the row's scale: on AVX2 as two 16-bit sums of eight products each (at most 31 · 128 · 8 < 2¹⁵),
/// each times `(sc, sc)` by `vpmaddwd`; with VNNI as the eight `vpdpbusd`'s i32 times `sc` by `vpmulld`
/// (a half's sum, up to 16 · 31 · 128, does not fit Q4_K's i16 pairs). The same integers either way, so
/// AVX2 and VNNI give the same bits. (VNNI CPUs used to unpack a row group onto the 5-bit kernel, scaling
/// per sub-block in floats: at one token 0.47× llama.cpp's decode on the 1B Q5_K_M file.)
#[cfg(target_arch = "x86_64")]
impl super::q4k::KTile for Tile8K {
    #[inline(always)]
    unsafe fn load<const VNNI: bool>(
        &self,
    ) -> ([std::arch::x86_64::__m256i; 8], std::arch::x86_64::__m256i) {
        use std::arch::x86_64::*;
        // SAFETY: the caller has the features; `sm` is eight u16.
        unsafe {
            (
                load5::<VNNI>(&self.lo, &self.hi),
                _mm256_cvtepu16_epi32(_mm_loadu_si128(self.sm.as_ptr().cast())),
            )
        }
    }

    #[inline(always)]
    unsafe fn add_dot<const VNNI: bool>(
        iacc: std::arch::x86_64::__m256i,
        wq: &[std::arch::x86_64::__m256i; 8],
        ab: &BlockQ8_1,
        sc: std::arch::x86_64::__m256i,
        sc2: std::arch::x86_64::__m256i,
    ) -> std::arch::x86_64::__m256i {
        use super::regs::{half_dots, maddubs_sum16};
        use std::arch::x86_64::*;
        // SAFETY: the caller has the features.
        unsafe {
            if VNNI {
                let (s0, s1) = half_dots::<true>(wq, ab);
                _mm256_add_epi32(iacc, _mm256_mullo_epi32(_mm256_add_epi32(s0, s1), sc))
            } else {
                let lo = _mm256_madd_epi16(maddubs_sum16(wq, ab, 0, 4), sc2);
                let hi = _mm256_madd_epi16(maddubs_sum16(wq, ab, 4, 4), sc2);
                _mm256_add_epi32(iacc, _mm256_add_epi32(lo, hi))
            }
        }
    }

    #[inline(always)]
    unsafe fn add_dot16(
        iacc: std::arch::x86_64::__m512i,
        wq: &[std::arch::x86_64::__m512i; 8],
        ab: &BlockQ8_1,
        sc: std::arch::x86_64::__m512i,
        _sc2: std::arch::x86_64::__m512i,
    ) -> std::arch::x86_64::__m512i {
        use std::arch::x86_64::*;
        // SAFETY: the caller has the features.
        unsafe {
            let (s0, s1) = super::regs::half_dots16(wq, ab);
            _mm512_add_epi32(iacc, _mm512_mullo_epi32(_mm512_add_epi32(s0, s1), sc))
        }
    }
}

impl Q5KMatrix {
    /// Whether a Q5_K matrix of `rows` runs on file-sized tiles here (AVX2 or VNNI, rows in eights);
    /// else it is re-laid out onto [`super::Q5Matrix`].
    pub fn runs_here(rows: usize) -> bool {
        Q5K::tiles_on(Isa::detect()) && rows.is_multiple_of(8)
    }

    /// A `[rows, cols]` Q5_K tensor's GGUF bytes.
    pub fn from_q5k(bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        Self::from_q5k_for(Isa::detect(), bytes, rows, cols)
    }

    pub(super) fn from_q5k_for(isa: Isa, bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        if !cols.is_multiple_of(256) || bytes.len() != rows * cols / 256 * Q5K_BYTES {
            candle_core::bail!("Q5_K matrix [{rows}, {cols}]: {} bytes", bytes.len());
        }
        Self::from_blocks_for(isa, q5k_blocks(bytes), rows, cols, "Q5_K", Acts::Per256)
    }
}
