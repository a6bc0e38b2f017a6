//! Q4_K weights × Q8_K activations on AVX2 and VNNI CPUs, with llama.cpp's integer formulation and about the file's
//! own size in memory (a Q4_K_M file's query, key, output, gate and up projections and half of its down
//! projections). Scalar CPUs, and row counts not in eights, run Q4_K on the Q4_1 kernel
//! ([`super::relayout`]).
//!
//! A Q4_K super-block is 256 four-bit values `q` in eight sub-blocks of 32, each with a 6-bit scale `sc` and
//! minimum `m`, and two f16 `d`, `dmin`: value = `d · sc · q − dmin · m`. As llama.cpp does, a super-block's
//! dot with a Q8_K activation block is two exact integers, `Σ sc · Σ q·a` and `Σ m · Σ a` (the second
//! from the activations' block sums), scaled once each by `d · d_a` and `dmin · d_a`.
//!
//! The VNNI tile is 144 bytes per eight rows × 32 values, the file's 4.5 bits per value: the nibbles as
//! the Q4_1 tile holds them, and per row 16 bits: `sc` (bits 0–5), `m` (6–11) and one nibble (12–15) of
//! the row's `d | dmin << 16`, sub-block `j` of a super-block holding bits `4j..4j+4`. The kernel gathers
//! the eight nibbles while it runs through the super-block.

use candle_core::Result;

use super::quant::{QuantMatrix, QuantType};
use super::{Acts, BlockQ8_1, Isa};

pub(super) const Q4K_BYTES: usize = 144;

/// One sub-block of 32 Q4_K values: value `j` is `d · sc · q_j − dmin · m`, `q_j` the low nibble of
/// `qs[j]` for `j < 16` and the high nibble of `qs[j − 16]` otherwise (Q4_1's packing). `head` is the
/// super-block's f16 `d` (low 16 bits) and `dmin` (high 16 bits), `part` this sub-block's place in it.
#[derive(Debug, Clone, Copy, Default)]
pub struct BlockQ4K {
    d: f32,
    dmin: f32,
    head: u32,
    sc: u8,
    m: u8,
    part: u8,
    qs: [u8; 16],
}

/// Eight rows × one sub-block: `qs` as [`super::q4_1`]'s tile (lane `i` of `qs[k]` holds row `i`'s packed
/// bytes `4k..4k+4`), `sm[i]` row `i`'s `sc | m << 6 | nibble << 12` (see the module).
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(16))]
pub struct Tile8 {
    qs: [[u8; 32]; 4],
    sm: [u16; 8],
}

/// Q4_K on its own kernel (AVX2 and VNNI tiles; elsewhere the plain reference loop, which gives the same
/// bits).
#[derive(Debug, Clone)]
pub struct Q4K;

/// A `[rows, cols]` Q4_K matrix.
pub type Q4KMatrix = QuantMatrix<Q4K>;

impl QuantType for Q4K {
    const NAME: &'static str = "Q4_K";
    const AVX2_TILES: bool = true;
    type Block = BlockQ4K;
    type Tile = Tile8;

    fn tile(rows: [&BlockQ4K; 8]) -> Tile8 {
        let mut t = Tile8::default();
        for (i, blk) in rows.iter().enumerate() {
            t.sm[i] = sm_word(blk.sc, blk.m, blk.head, blk.part);
            for k in 0..4 {
                t.qs[k][4 * i..4 * i + 4].copy_from_slice(&blk.qs[4 * k..4 * k + 4]);
            }
        }
        t
    }

    fn dot_scalar(w: &[BlockQ4K], a: &[BlockQ8_1]) -> f32 {
        let mut acc = 0f32;
        for (w, a) in w.chunks(8).zip(a.chunks(8)) {
            // one super-block: two exact integers, then one scaling each (the tile kernel's operations)
            let (mut isum, mut msum) = (0i32, 0i32);
            for (w, a) in w.iter().zip(a) {
                let dot: i32 = (0..16)
                    .map(|j| {
                        i32::from(w.qs[j] & 15) * i32::from(a.qs[j])
                            + i32::from(w.qs[j] >> 4) * i32::from(a.qs[j + 16])
                    })
                    .sum();
                isum += i32::from(w.sc) * dot;
                msum += i32::from(w.m) * a.sum;
            }
            acc = (isum as f32).mul_add(w[0].d * a[0].d, acc);
            acc = (-(msum as f32)).mul_add(w[0].dmin * a[0].d, acc);
        }
        acc
    }

    fn values(b: &BlockQ4K) -> Option<[f32; 32]> {
        Some(k_values(b.d, b.dmin, b.sc, b.m, |j| nibble(|l| b.qs[l], j)))
    }

    fn tile_values(tiles: &[Tile8], b: usize, i: usize) -> Option<[f32; 32]> {
        let t = &tiles[b];
        let words = std::array::from_fn(|p| tiles[b / 8 * 8 + p].sm[i]);
        Some(sub_block_values(words, b % 8, |j| {
            nibble(|l| t.qs[l / 4][4 * i + l % 4], j)
        }))
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn dot_x86<const N: usize, const VNNI: bool>(
        w: &[BlockQ4K],
        a: [&[BlockQ8_1]; N],
    ) -> [f32; N] {
        // the row-major layout only runs where the tiles cannot (tests; scalar CPUs run Q4_K on the
        // Q4_1 kernel instead)
        a.map(|a| Self::dot_scalar(w, a))
    }
}

impl super::quant::TileKernel for Tile8 {
    #[cfg(target_arch = "x86_64")]
    unsafe fn dot<const N: usize, const VNNI: bool>(
        w: &[Self],
        a: [&[BlockQ8_1]; N],
    ) -> [[f32; 8]; N] {
        if VNNI {
            // SAFETY: forwarded from the caller.
            unsafe { tile_vnni::<Self, N>(w, a) }
        } else {
            // SAFETY: forwarded from the caller.
            unsafe { tile_avx2::<Self, N>(w, a) }
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
        unsafe { tile_zmm::<Self, N>(lo, hi, a) }
    }
}

/// A K-quant tile (Q4_K's, and Q5_K's on AVX2) as [`tile_kernel`] reads it: eight weight registers
/// (register `k` ↔ activation dword `k`, lane `i` = row `i`) and per row `sc | m << 6 | nibble << 12`
/// ([`sm_word`]), and how a sub-block's `sc · Σ q·a` joins the integer.
#[cfg(target_arch = "x86_64")]
pub(super) trait KTile {
    /// Whether the kernels prefetch these tiles ahead ([`super::regs::prefetch_ahead`]): the file's tiles,
    /// streamed from memory; not the ones unpacked per matmul, already in cache (prefetching those cost a
    /// 1B Q6_K or Q5_K_M prompt 7 %).
    const STREAMED: bool = true;
    /// The weight registers and the rows' words, one i32 lane per row.
    ///
    /// # Safety
    /// AVX2, and with `VNNI` AVX-512 F and VL (inlined into a kernel that has them).
    unsafe fn load<const VNNI: bool>(
        &self,
    ) -> ([std::arch::x86_64::__m256i; 8], std::arch::x86_64::__m256i);

    /// `iacc + sc · Σ q·a` per row, `sc` holding each row's scale as an i32 and `sc2` as two i16 `(sc, sc)`.
    ///
    /// # Safety
    /// As [`KTile::load`] (with `VNNI` also AVX-512 BW and VNNI).
    unsafe fn add_dot<const VNNI: bool>(
        iacc: std::arch::x86_64::__m256i,
        wq: &[std::arch::x86_64::__m256i; 8],
        ab: &BlockQ8_1,
        sc: std::arch::x86_64::__m256i,
        sc2: std::arch::x86_64::__m256i,
    ) -> std::arch::x86_64::__m256i;

    /// [`KTile::add_dot`] with VNNI on sixteen rows ([`super::regs::join8`]ed registers): the same integers.
    ///
    /// # Safety
    /// AVX-512 F, BW and VNNI.
    unsafe fn add_dot16(
        iacc: std::arch::x86_64::__m512i,
        wq: &[std::arch::x86_64::__m512i; 8],
        ab: &BlockQ8_1,
        sc: std::arch::x86_64::__m512i,
        sc2: std::arch::x86_64::__m512i,
    ) -> std::arch::x86_64::__m512i;
}

#[cfg(target_arch = "x86_64")]
impl KTile for Tile8 {
    #[inline(always)]
    unsafe fn load<const VNNI: bool>(
        &self,
    ) -> ([std::arch::x86_64::__m256i; 8], std::arch::x86_64::__m256i) {
        use std::arch::x86_64::*;
        // SAFETY: the caller has AVX2; `qs` is four 32-byte rows, `sm` eight u16.
        unsafe {
            (
                super::regs::unpack_nibbles(&self.qs),
                _mm256_cvtepu16_epi32(_mm_loadu_si128(self.sm.as_ptr().cast())),
            )
        }
    }

    #[inline(always)]
    unsafe fn add_dot<const VNNI: bool>(
        iacc: std::arch::x86_64::__m256i,
        wq: &[std::arch::x86_64::__m256i; 8],
        ab: &BlockQ8_1,
        _sc: std::arch::x86_64::__m256i,
        sc2: std::arch::x86_64::__m256i,
    ) -> std::arch::x86_64::__m256i {
        use std::arch::x86_64::*;
        // SAFETY: the caller has the features.
        unsafe {
            if VNNI {
                let (s0, s1) = super::regs::half_dots::<true>(wq, ab);
                // each half's `Σ q·a` fits an i16 (|·| ≤ 16 · 15 · 128): both in one lane, times
                // `(sc, sc)`
                let pair = _mm256_mask_blend_epi16(0xAAAA, s0, _mm256_slli_epi32(s1, 16));
                _mm256_dpwssd_epi32(iacc, pair, sc2)
            } else {
                // all 32 products of a row in 16 bits (16 per lane, at most 15 · 128 each)
                let s = super::regs::maddubs_sum16(wq, ab, 0, 8);
                _mm256_add_epi32(iacc, _mm256_madd_epi16(s, sc2))
            }
        }
    }

    #[inline(always)]
    unsafe fn add_dot16(
        iacc: std::arch::x86_64::__m512i,
        wq: &[std::arch::x86_64::__m512i; 8],
        ab: &BlockQ8_1,
        _sc: std::arch::x86_64::__m512i,
        sc2: std::arch::x86_64::__m512i,
    ) -> std::arch::x86_64::__m512i {
        use std::arch::x86_64::*;
        // SAFETY: the caller has the features.
        unsafe {
            let (s0, s1) = super::regs::half_dots16(wq, ab);
            // as `add_dot`: both halves' `Σ q·a` in one lane, times `(sc, sc)`
            let pair = _mm512_mask_blend_epi16(0xAAAA_AAAA, s0, _mm512_slli_epi32::<16>(s1));
            _mm512_dpwssd_epi32(iacc, pair, sc2)
        }
    }
}

/// A K-quant tile as [`KTile::load`] gives it, stored (Q5_K's tiles in prompt-sized matmuls: the fifth bits
/// joined once per matmul, not once per group of eight tokens); the kernel then runs on plain loads, with
/// the same integers, so the same bits.
#[derive(Debug, Clone, Copy)]
#[repr(C, align(32))]
pub struct KPlain<T> {
    w: [[u8; 32]; 8],
    sm: [i32; 8],
    tile: std::marker::PhantomData<fn() -> T>,
}

#[cfg(target_arch = "x86_64")]
impl<T: KTile> KTile for KPlain<T> {
    const STREAMED: bool = false;

    #[inline(always)]
    unsafe fn load<const VNNI: bool>(
        &self,
    ) -> ([std::arch::x86_64::__m256i; 8], std::arch::x86_64::__m256i) {
        use std::arch::x86_64::*;
        // SAFETY: the caller has AVX2; the arrays are 32-byte aligned and 32 bytes each.
        unsafe {
            (
                super::regs::load8(&self.w),
                _mm256_load_si256(self.sm.as_ptr().cast()),
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
        // SAFETY: forwarded from the caller.
        unsafe { T::add_dot::<VNNI>(iacc, wq, ab, sc, sc2) }
    }

    #[inline(always)]
    unsafe fn add_dot16(
        iacc: std::arch::x86_64::__m512i,
        wq: &[std::arch::x86_64::__m512i; 8],
        ab: &BlockQ8_1,
        sc: std::arch::x86_64::__m512i,
        sc2: std::arch::x86_64::__m512i,
    ) -> std::arch::x86_64::__m512i {
        // SAFETY: forwarded from the caller.
        unsafe { T::add_dot16(iacc, wq, ab, sc, sc2) }
    }
}

#[cfg(target_arch = "x86_64")]
impl<T: KTile> super::quant::TileKernel for KPlain<T> {
    unsafe fn dot<const N: usize, const VNNI: bool>(
        w: &[Self],
        a: [&[BlockQ8_1]; N],
    ) -> [[f32; 8]; N] {
        // SAFETY: forwarded from the caller.
        unsafe {
            if VNNI {
                tile_vnni::<Self, N>(w, a)
            } else {
                tile_avx2::<Self, N>(w, a)
            }
        }
    }

    const WIDE: bool = true;

    unsafe fn dot16<const N: usize>(
        lo: &[Self],
        hi: &[Self],
        a: [&[BlockQ8_1]; N],
    ) -> [[f32; 16]; N] {
        // SAFETY: forwarded from the caller.
        unsafe { tile_zmm::<Self, N>(lo, hi, a) }
    }
}

/// A row group's K tiles, each loaded once and stored as [`KPlain`].
///
/// # Safety
/// As [`KTile::load`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn unpack<T: KTile, const VNNI: bool>(w: &[T]) -> Vec<KPlain<T>> {
    use std::arch::x86_64::*;
    let mut out = Vec::with_capacity(w.len());
    for t in w {
        if T::STREAMED {
            super::regs::prefetch_ahead(t);
        }
        let mut p = KPlain {
            w: [[0u8; 32]; 8],
            sm: [0; 8],
            tile: std::marker::PhantomData,
        };
        // SAFETY: the caller has the features; the stores fill `p`'s 32-byte-aligned arrays.
        unsafe {
            let (regs, sm) = t.load::<VNNI>();
            for (k, r) in regs.iter().enumerate() {
                _mm256_store_si256(p.w[k].as_mut_ptr().cast(), *r);
            }
            _mm256_store_si256(p.sm.as_mut_ptr().cast(), sm);
        }
        out.push(p);
    }
    out
}

/// [`unpack`] with the features of [`Isa::Vnni`] when `vnni`, else AVX2, FMA and F16C.
///
/// # Safety
/// Those features.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn unpack_k<T: KTile>(vnni: bool, w: &[T]) -> Vec<KPlain<T>> {
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
    unsafe fn with_vnni<T: KTile>(w: &[T]) -> Vec<KPlain<T>> {
        // SAFETY: forwarded from the caller.
        unsafe { unpack::<T, true>(w) }
    }
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn with_avx2<T: KTile>(w: &[T]) -> Vec<KPlain<T>> {
        // SAFETY: forwarded from the caller.
        unsafe { unpack::<T, false>(w) }
    }
    // SAFETY: forwarded from the caller.
    unsafe { if vnni { with_vnni(w) } else { with_avx2(w) } }
}

impl BlockQ4K {
    /// The same 32 values as a Q4_1 block: scale `d·sc`, minimum `−dmin·m` (both exact in f32: an f16
    /// times a 6-bit integer needs 17 bits).
    pub(super) fn as_q4_1(&self) -> super::q4_1::BlockQ4_1 {
        super::q4_1::BlockQ4_1 {
            d: self.d * f32::from(self.sc),
            m: -(self.dmin * f32::from(self.m)),
            qs: self.qs,
        }
    }
}

/// Value `j` of 32 nibbles packed as Q4_1 packs them (`packed(l)` is byte `l`).
fn nibble(packed: impl Fn(usize) -> u8, j: usize) -> u8 {
    if j < 16 {
        packed(j) & 15
    } else {
        packed(j - 16) >> 4
    }
}

/// A K-quant tile row's 16-bit word for one sub-block: `sc | m << 6 | nibble << 12`, the nibble being
/// bits `4·part..4·part+4` of the super-block's `d | dmin << 16` (Q4_K's and Q5_K's tiles).
pub(super) fn sm_word(sc: u8, m: u8, head: u32, part: u8) -> u16 {
    let nibble = (head >> (4 * u32::from(part))) & 15;
    u16::from(sc) | (u16::from(m) << 6) | ((nibble as u16) << 12)
}

/// The 32 values of sub-block `part` of a row whose eight words of the super-block ([`sm_word`]) are
/// `words`; `q(j)` is value `j`'s integer.
pub(super) fn sub_block_values(words: [u16; 8], part: usize, q: impl Fn(usize) -> u8) -> [f32; 32] {
    let head = words
        .iter()
        .enumerate()
        .fold(0u32, |h, (p, w)| h | (u32::from(w >> 12) << (4 * p)));
    let f16 = |bits: u32| half::f16::from_bits(bits as u16).to_f32();
    let w = words[part];
    k_values(
        f16(head & 0xFFFF),
        f16(head >> 16),
        (w & 63) as u8,
        ((w >> 6) & 63) as u8,
        q,
    )
}

/// A sub-block's 32 values as GGML's (and candle's) Q4_K and Q5_K dequantizations compute them in f32:
/// `(d·sc)·q − dmin·m`.
pub(super) fn k_values(d: f32, dmin: f32, sc: u8, m: u8, q: impl Fn(usize) -> u8) -> [f32; 32] {
    let (d1, m1) = (d * f32::from(sc), dmin * f32::from(m));
    std::array::from_fn(|j| d1 * f32::from(q(j)) - m1)
}

/// Q4_K super-blocks as sub-blocks (eight per super-block, in order).
pub(super) fn q4k_blocks(bytes: &[u8]) -> Vec<BlockQ4K> {
    let mut out = Vec::with_capacity(bytes.len() / Q4K_BYTES * 8);
    for sb in bytes.chunks_exact(Q4K_BYTES) {
        let head = u32::from_le_bytes([sb[0], sb[1], sb[2], sb[3]]);
        let f16 = |b: &[u8]| half::f16::from_le_bytes([b[0], b[1]]).to_f32();
        let (d, dmin) = (f16(&sb[0..2]), f16(&sb[2..4]));
        let qs = &sb[16..144];
        for j in 0..8 {
            let (sc, m) = super::relayout::scale_min_k4(j, &sb[4..16]);
            // sub-blocks 2i and 2i+1 share 32 bytes: low nibbles, then high nibbles
            let q = &qs[32 * (j / 2)..32 * (j / 2) + 32];
            let v = |l: usize| if j % 2 == 0 { q[l] & 0x0F } else { q[l] >> 4 };
            let mut packed = [0u8; 16];
            for (l, p) in packed.iter_mut().enumerate() {
                *p = v(l) | (v(l + 16) << 4);
            }
            out.push(BlockQ4K {
                d,
                dmin,
                head,
                sc,
                m,
                part: j as u8,
                qs: packed,
            });
        }
    }
    out
}

impl Q4KMatrix {
    /// Whether a Q4_K matrix of `rows` runs on this kernel here (tiles: AVX2 or VNNI, rows in eights);
    /// else it runs on the Q4_1 kernel ([`super::Q4_1Matrix::from_q4k`]).
    pub fn runs_here(rows: usize) -> bool {
        Q4K::tiles_on(Isa::detect()) && rows.is_multiple_of(8)
    }

    /// A `[rows, cols]` Q4_K tensor's GGUF bytes.
    pub fn from_q4k(bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        Self::from_q4k_for(Isa::detect(), bytes, rows, cols)
    }

    pub(super) fn from_q4k_for(isa: Isa, bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        if !cols.is_multiple_of(256) || bytes.len() != rows * cols / 256 * Q4K_BYTES {
            candle_core::bail!("Q4_K matrix [{rows}, {cols}]: {} bytes", bytes.len());
        }
        Self::from_blocks_for(isa, q4k_blocks(bytes), rows, cols, "Q4_K", Acts::Per256)
    }
}

/// Eight rows × `N` tokens over a row group's tiles. Per sub-block and token, each row's exact
/// `sc · Σ q·a` joins one integer ([`KTile::add_dot`]) and `m · Σ a` another:
/// - with `VNNI`, eight `vpdpbusd` give each row's `Σ q·a` of both halves; Q4_K's join the integer times
///   the row's scale in one `vpdpwssd` (each half fits an i16), Q5_K's by one `vpmulld`; one `vpdpwssd`
///   of the rows' `(m, m)` pairs with the token's half sums adds `m · Σ a`;
/// - with AVX2, eight `vpmaddubsw` summed in 16 bits and `vpmaddwd` by the rows' `(sc, sc)`; one
///   `vpmaddwd` of `(m, m)` with the half sums.
///
/// At the end of a super-block both integers leave, scaled by `d · d_a` and `dmin · d_a`, `d` and `dmin`
/// put together from the eight tiles' nibbles.
///
/// # Safety
/// As [`super::quant::TileKernel::dot`] (inlined into a `#[target_feature]` function).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn tile_kernel<T: KTile, const N: usize, const VNNI: bool>(
    w: &[T],
    a: [&[BlockQ8_1]; N],
) -> [[f32; 8]; N] {
    use super::regs::low_words;
    use std::arch::x86_64::*;

    // the float sums stay in memory (touched once per super-block): the registers go to the integers
    let mut out = [[0f32; 8]; N];
    // SAFETY: the caller has the features and guarantees `a[t].len() == w.len()`, so every `b` is in
    // bounds; `out[t]` holds eight floats, matching the unaligned 256-bit loads and stores.
    unsafe {
        let mut iacc = [_mm256_setzero_si256(); N];
        let mut macc = [_mm256_setzero_si256(); N];
        let mut head = _mm256_setzero_si256();
        let six = _mm256_set1_epi32(63);
        for (b, tile) in w.iter().enumerate() {
            if T::STREAMED {
                super::regs::prefetch_ahead(tile);
            }
            let (wq, sm) = tile.load::<VNNI>();
            let sc = _mm256_and_si256(sm, six);
            let sc2 = _mm256_or_si256(sc, _mm256_slli_epi32(sc, 16));
            let m = _mm256_and_si256(_mm256_srli_epi32(sm, 6), six);
            let m2 = _mm256_or_si256(m, _mm256_slli_epi32(m, 16));
            let part = b % 8;
            let nibble = _mm256_srli_epi32(sm, 12);
            head = _mm256_or_si256(
                head,
                _mm256_sll_epi32(nibble, _mm_cvtsi32_si128(4 * part as i32)),
            );
            let last = part == 7;
            let (dv, dminv) = if last {
                (
                    _mm256_cvtph_ps(low_words::<VNNI>(head)),
                    _mm256_cvtph_ps(low_words::<VNNI>(_mm256_srli_epi32(head, 16))),
                )
            } else {
                (_mm256_setzero_ps(), _mm256_setzero_ps())
            };
            for t in 0..N {
                let ab = a[t].get_unchecked(b);
                let halves = _mm256_set1_epi32(ab.halves);
                iacc[t] = T::add_dot::<VNNI>(iacc[t], &wq, ab, sc, sc2);
                macc[t] = if VNNI {
                    _mm256_dpwssd_epi32(macc[t], m2, halves)
                } else {
                    _mm256_add_epi32(macc[t], _mm256_madd_epi16(m2, halves))
                };
                if last {
                    let da = _mm256_set1_ps(ab.d);
                    let o = out[t].as_mut_ptr();
                    let acc = _mm256_loadu_ps(o);
                    let acc =
                        _mm256_fmadd_ps(_mm256_cvtepi32_ps(iacc[t]), _mm256_mul_ps(dv, da), acc);
                    let acc = _mm256_fnmadd_ps(
                        _mm256_cvtepi32_ps(macc[t]),
                        _mm256_mul_ps(dminv, da),
                        acc,
                    );
                    _mm256_storeu_ps(o, acc);
                    iacc[t] = _mm256_setzero_si256();
                    macc[t] = _mm256_setzero_si256();
                }
            }
            if last {
                head = _mm256_setzero_si256();
            }
        }
    }
    out
}

/// [`tile_kernel`] with `vpdpbusd` and `vpdpwssd` (Q4_K's tiles and Q5_K's).
///
/// # Safety
/// AVX2, FMA, F16C, AVX-512 F, BW, VNNI and VL; every `a[t]` has `w.len()` blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
pub(super) unsafe fn tile_vnni<T: KTile, const N: usize>(
    w: &[T],
    a: [&[BlockQ8_1]; N],
) -> [[f32; 8]; N] {
    // SAFETY: forwarded from the caller.
    unsafe { tile_kernel::<T, N, true>(w, a) }
}

/// [`tile_kernel`] with AVX2 only (Q4_K's tiles and Q5_K's).
///
/// # Safety
/// AVX2, FMA and F16C; every `a[t]` has `w.len()` blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tile_avx2<T: KTile, const N: usize>(
    w: &[T],
    a: [&[BlockQ8_1]; N],
) -> [[f32; 8]; N] {
    // SAFETY: forwarded from the caller.
    unsafe { tile_kernel::<T, N, false>(w, a) }
}

/// [`tile_kernel`] with VNNI on sixteen rows (Q4_K's tiles and Q5_K's): two row groups' tiles (`lo`, `hi`)
/// loaded as [`KTile::load`] gives them and joined into 512-bit registers; per row the same integers and
/// floats, so the same bits.
///
/// # Safety
/// The features of [`Isa::Vnni`]; `hi.len() == lo.len()` and every `a[t]` has `lo.len()` blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
pub(super) unsafe fn tile_zmm<T: KTile, const N: usize>(
    lo: &[T],
    hi: &[T],
    a: [&[BlockQ8_1]; N],
) -> [[f32; 16]; N] {
    use super::regs::{join, join8};
    use std::arch::x86_64::*;

    let mut out = [[0f32; 16]; N];
    // SAFETY: the caller has the features and guarantees the lengths, so every `b` is in bounds; `out[t]`
    // holds sixteen floats, matching the unaligned 512-bit loads and stores.
    unsafe {
        let mut iacc = [_mm512_setzero_si512(); N];
        let mut macc = [_mm512_setzero_si512(); N];
        let mut head = _mm512_setzero_si512();
        let six = _mm512_set1_epi32(63);
        for b in 0..lo.len() {
            if T::STREAMED {
                super::regs::prefetch_ahead(lo.get_unchecked(b));
                super::regs::prefetch_ahead(hi.get_unchecked(b));
            }
            let (wl, sml) = lo.get_unchecked(b).load::<true>();
            let (wh, smh) = hi.get_unchecked(b).load::<true>();
            let (wq, sm) = (join8(wl, wh), join(sml, smh));
            let sc = _mm512_and_si512(sm, six);
            let sc2 = _mm512_or_si512(sc, _mm512_slli_epi32::<16>(sc));
            let m = _mm512_and_si512(_mm512_srli_epi32::<6>(sm), six);
            let m2 = _mm512_or_si512(m, _mm512_slli_epi32::<16>(m));
            let part = b % 8;
            let nibble = _mm512_srli_epi32::<12>(sm);
            head = _mm512_or_si512(
                head,
                _mm512_sll_epi32(nibble, _mm_cvtsi32_si128(4 * part as i32)),
            );
            let last = part == 7;
            let (dv, dminv) = if last {
                (
                    _mm512_cvtph_ps(_mm512_cvtepi32_epi16(head)),
                    _mm512_cvtph_ps(_mm512_cvtepi32_epi16(_mm512_srli_epi32::<16>(head))),
                )
            } else {
                (_mm512_setzero_ps(), _mm512_setzero_ps())
            };
            for t in 0..N {
                let ab = a[t].get_unchecked(b);
                let halves = _mm512_set1_epi32(ab.halves);
                iacc[t] = T::add_dot16(iacc[t], &wq, ab, sc, sc2);
                macc[t] = _mm512_dpwssd_epi32(macc[t], m2, halves);
                if last {
                    let da = _mm512_set1_ps(ab.d);
                    let o = out[t].as_mut_ptr();
                    let acc = _mm512_loadu_ps(o);
                    let acc =
                        _mm512_fmadd_ps(_mm512_cvtepi32_ps(iacc[t]), _mm512_mul_ps(dv, da), acc);
                    let acc = _mm512_fnmadd_ps(
                        _mm512_cvtepi32_ps(macc[t]),
                        _mm512_mul_ps(dminv, da),
                        acc,
                    );
                    _mm512_storeu_ps(o, acc);
                    iacc[t] = _mm512_setzero_si512();
                    macc[t] = _mm512_setzero_si512();
                }
            }
            if last {
                head = _mm512_setzero_si512();
            }
        }
    }
    out
}
