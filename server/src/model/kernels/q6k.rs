//! Q6_K weights × Q8_K activations (a Q4_K_M file's LM head, value projections and half of its down
//! projections; all of a Q6_K file), re-laid out at load into 32-value blocks of our own.
//!
//! A Q6_K super-block is 256 six-bit values `q` (0..63) in sixteen runs of 16, each with an int8 scale, and
//! one f16 `d`: value = `d · sc · (q − 32)`. Our block is 32 of those values with the two runs' scales and
//! the super-block's `d`. As llama.cpp does, a super-block's dot with a Q8_K activation block is one exact
//! integer (`Σ sc · (Σ q·a − 32 · Σ a)` over its sixteen runs; at most 16 · 128 · 16 · 32 · 127 < 2²⁸),
//! scaled once by `d · d_a`: one float rounding per 256 values.
//!
//! The VNNI tile keeps the six bits packed as the file does (four bits in a nibble plane, two in a plane of
//! bit pairs) and unpacks them in registers; with the int8 scales and two bits of each row's f16 `d` per
//! tile (the kernel puts `d` together over the super-block's eight tiles) it holds 26.25 bytes per 32
//! values, the file's own size, with VNNI and with AVX2 (the row-major block layout of scalar CPUs, and of
//! row counts not in eights, holds one byte per value, 40 bytes).

use candle_core::Result;

use super::quant::{QuantMatrix, QuantType};
use super::{Acts, BlockQ8_1, Isa};

const Q6K_BYTES: usize = 210;

/// 32 Q6_K values: value `j` is `d · sc[j / 16] · (q_j − 32)`, `q_j` in 0..63, `d` the super-block's (an
/// f16), `part` this block's place in it.
#[derive(Debug, Clone, Copy, Default)]
pub struct BlockQ6 {
    pub(super) d: f32,
    pub(super) sc: [i8; 2],
    pub(super) part: u8,
    pub(super) qs: [u8; 32],
}

/// Eight rows × one 32-value block for the VNNI kernel. Lane `i` (bytes `4i..4i+4`) of each register is row
/// `i`: `lo[k]` holds its values `4k..4k+4` in the low nibbles and `16+4k..16+4k+4` in the high nibbles
/// (low four bits each); `hi[h]` holds the top two bits of values `16h + 4k + c` at bits `2k, 2k+1` of
/// byte `4i + c`. `sc[2i]`, `sc[2i + 1]` are row `i`'s run scales of values 0..16 and 16..32; bits
/// `2i, 2i + 1` of `d` are bits `2p, 2p + 1` of row `i`'s f16 `d`, `p` the block's place in its
/// super-block. 210 bytes.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct Tile8 {
    lo: [[u8; 32]; 4],
    hi: [[u8; 32]; 2],
    sc: [i8; 16],
    d: u16,
}

/// Q6_K, run on blocks of 32 with Q8_K activations (per 256, as llama.cpp quantizes them for K-quants).
#[derive(Debug, Clone)]
pub struct Q6;

/// A `[rows, cols]` Q6_K matrix.
pub type Q6Matrix = QuantMatrix<Q6>;

impl QuantType for Q6 {
    const NAME: &'static str = "Q6_K";
    const AVX2_TILES: bool = true;
    type Block = BlockQ6;
    type Tile = Tile8;

    fn tile(rows: [&BlockQ6; 8]) -> Tile8 {
        let mut t = Tile8::default();
        for (i, blk) in rows.iter().enumerate() {
            let d = half::f16::from_f32(blk.d).to_bits();
            t.d |= ((d >> (2 * u16::from(blk.part))) & 3) << (2 * i);
            t.sc[2 * i..2 * i + 2].copy_from_slice(&blk.sc);
            for k in 0..4 {
                for c in 0..4 {
                    let (v0, v1) = (blk.qs[4 * k + c], blk.qs[16 + 4 * k + c]);
                    t.lo[k][4 * i + c] = (v0 & 15) | ((v1 & 15) << 4);
                    t.hi[0][4 * i + c] |= (v0 >> 4) << (2 * k);
                    t.hi[1][4 * i + c] |= (v1 >> 4) << (2 * k);
                }
            }
        }
        t
    }

    fn dot_scalar(w: &[BlockQ6], a: &[BlockQ8_1]) -> f32 {
        let mut acc = 0f32;
        for (w, a) in w.chunks(8).zip(a.chunks(8)) {
            // one super-block: an exact integer, then one scaling
            let mut isum = 0i32;
            for (w, a) in w.iter().zip(a) {
                for (h, &sc) in w.sc.iter().enumerate() {
                    let run: i32 = (16 * h..16 * h + 16)
                        .map(|j| (i32::from(w.qs[j]) - 32) * i32::from(a.qs[j]))
                        .sum();
                    isum += i32::from(sc) * run;
                }
            }
            acc += w[0].d * a[0].d * isum as f32;
        }
        acc
    }

    fn values(b: &BlockQ6) -> Option<[f32; 32]> {
        // `(d · sc) · q` in f32, as GGML's (and candle's) Q6_K dequantization computes it
        Some(std::array::from_fn(|j| {
            b.d * f32::from(b.sc[j / 16]) * f32::from(i16::from(b.qs[j]) - 32)
        }))
    }

    fn tile_values(tiles: &[Tile8], b: usize, i: usize) -> Option<[f32; 32]> {
        // the row's f16 `d`, two bits from each of its super-block's eight tiles
        let d = tiles[b / 8 * 8..][..8]
            .iter()
            .enumerate()
            .fold(0u16, |d, (p, t)| d | (((t.d >> (2 * i)) & 3) << (2 * p)));
        let d = half::f16::from_bits(d).to_f32();
        let t = &tiles[b];
        Some(std::array::from_fn(|j| {
            let (h, k, c) = (j / 16, j % 16 / 4, j % 4);
            let nib = t.lo[k][4 * i + c] >> (4 * h) & 15;
            let top = (t.hi[h][4 * i + c] >> (2 * k)) & 3;
            let sc = t.sc[2 * i + h];
            d * f32::from(sc) * f32::from(i16::from(nib | (top << 4)) - 32)
        }))
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn dot_x86<const N: usize, const VNNI: bool>(
        w: &[BlockQ6],
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

impl super::quant::TileKernel for Tile8 {
    #[cfg(target_arch = "x86_64")]
    unsafe fn dot<const N: usize, const VNNI: bool>(
        w: &[Self],
        a: [&[BlockQ8_1]; N],
    ) -> [[f32; 8]; N] {
        // SAFETY: forwarded from the caller.
        unsafe { tile_dot::<Self, N, VNNI>(w, a) }
    }

    fn dot_tokens<'a>(
        name: &str,
        vnni: bool,
        w: &[Self],
        m: usize,
        act: impl Fn(usize) -> &'a [BlockQ8_1],
        out: &mut [f32],
    ) {
        // prompt-sized matmuls: each tile unpacked once for the whole matmul, not once per 8-token group
        #[cfg(target_arch = "x86_64")]
        if m > 32 {
            let plain = if vnni {
                // SAFETY: `vnni` tiles run only where `Isa::Vnni` was detected.
                unsafe { unpack_vnni(w) }
            } else {
                // SAFETY: other tiles run only where `Isa::Avx2` was.
                unsafe { unpack_avx2(w) }
            };
            return super::quant::TileKernel::dot_tokens(name, vnni, &plain, m, act, out);
        }
        super::quant::token_groups(name, vnni, w, m, act, out);
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

    fn dot_tokens16<'a>(
        name: &str,
        lo: &[Self],
        hi: &[Self],
        m: usize,
        act: impl Fn(usize) -> &'a [BlockQ8_1],
        out: &mut [f32],
    ) {
        // as `dot_tokens`: prompt-sized matmuls unpack each tile once
        #[cfg(target_arch = "x86_64")]
        if m > 32 {
            // SAFETY: sixteen-row kernels run only where `Isa::Vnni512` was detected.
            let (lo, hi) = unsafe { (unpack_vnni(lo), unpack_vnni(hi)) };
            return super::quant::token_groups16(name, &lo, &hi, m, act, out);
        }
        super::quant::token_groups16(name, lo, hi, m, act, out);
    }
}

/// A tile as [`Tile8::load`] gives it, stored: the kernel then runs on plain loads (the same integers and
/// floats, so the same bits).
#[derive(Debug, Clone, Copy)]
#[repr(C, align(32))]
pub struct Plain {
    w: [[u8; 32]; 8],
    sc32: [i32; 8],
    dbits: [i32; 8],
}

impl super::quant::TileKernel for Plain {
    #[cfg(target_arch = "x86_64")]
    unsafe fn dot<const N: usize, const VNNI: bool>(
        w: &[Self],
        a: [&[BlockQ8_1]; N],
    ) -> [[f32; 8]; N] {
        // SAFETY: forwarded from the caller.
        unsafe { tile_dot::<Self, N, VNNI>(w, a) }
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

/// [`tile_vnni`] or [`tile_avx2`].
///
/// # Safety
/// As [`super::quant::TileKernel::dot`].
#[cfg(target_arch = "x86_64")]
unsafe fn tile_dot<T: Q6Regs, const N: usize, const VNNI: bool>(
    w: &[T],
    a: [&[BlockQ8_1]; N],
) -> [[f32; 8]; N] {
    if VNNI {
        // SAFETY: forwarded from the caller.
        unsafe { tile_vnni::<T, N>(w, a) }
    } else {
        // SAFETY: forwarded from the caller.
        unsafe { tile_avx2::<T, N>(w, a) }
    }
}

/// What [`tile_kernel`] reads of a tile: the weight registers, the `32 · sc` pairs and the bits of `d`
/// ([`Tile8::load`]).
#[cfg(target_arch = "x86_64")]
trait Q6Regs {
    /// Whether the kernels prefetch these tiles ahead ([`super::regs::prefetch_ahead`]): the file's tiles,
    /// streamed from memory; not the ones unpacked per matmul, already in cache (prefetching those cost a
    /// 1B Q6_K or Q5_K_M prompt 7 %).
    const STREAMED: bool = true;
    /// # Safety
    /// AVX2, and with `VNNI` AVX-512 F and VL (inlined into a kernel that has them).
    unsafe fn regs<const VNNI: bool>(
        &self,
    ) -> (
        [std::arch::x86_64::__m256i; 8],
        std::arch::x86_64::__m256i,
        std::arch::x86_64::__m256i,
    );
}

#[cfg(target_arch = "x86_64")]
impl Q6Regs for Tile8 {
    #[inline(always)]
    unsafe fn regs<const VNNI: bool>(
        &self,
    ) -> (
        [std::arch::x86_64::__m256i; 8],
        std::arch::x86_64::__m256i,
        std::arch::x86_64::__m256i,
    ) {
        // SAFETY: forwarded from the caller.
        unsafe { self.load::<VNNI>() }
    }
}

#[cfg(target_arch = "x86_64")]
impl Q6Regs for Plain {
    const STREAMED: bool = false;

    #[inline(always)]
    unsafe fn regs<const VNNI: bool>(
        &self,
    ) -> (
        [std::arch::x86_64::__m256i; 8],
        std::arch::x86_64::__m256i,
        std::arch::x86_64::__m256i,
    ) {
        use std::arch::x86_64::*;
        // SAFETY: the caller has AVX2; the arrays are 32-byte aligned and 32 bytes each.
        unsafe {
            (
                super::regs::load8(&self.w),
                _mm256_load_si256(self.sc32.as_ptr().cast()),
                _mm256_load_si256(self.dbits.as_ptr().cast()),
            )
        }
    }
}

/// A row group's tiles, each loaded once and stored as [`Plain`].
///
/// # Safety
/// As [`Tile8::load`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn unpack<const VNNI: bool>(w: &[Tile8]) -> Vec<Plain> {
    use std::arch::x86_64::*;
    let mut out = Vec::with_capacity(w.len());
    for t in w {
        super::regs::prefetch_ahead(t);
        let mut p = Plain {
            w: [[0u8; 32]; 8],
            sc32: [0; 8],
            dbits: [0; 8],
        };
        // SAFETY: the caller has the features; the stores fill `p`'s 32-byte-aligned arrays.
        unsafe {
            let (regs, sc32, dbits) = t.load::<VNNI>();
            for (k, r) in regs.iter().enumerate() {
                _mm256_store_si256(p.w[k].as_mut_ptr().cast(), *r);
            }
            _mm256_store_si256(p.sc32.as_mut_ptr().cast(), sc32);
            _mm256_store_si256(p.dbits.as_mut_ptr().cast(), dbits);
        }
        out.push(p);
    }
    out
}

/// [`unpack`] with the features of [`Isa::Vnni`].
///
/// # Safety
/// Those features.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
unsafe fn unpack_vnni(w: &[Tile8]) -> Vec<Plain> {
    // SAFETY: forwarded from the caller.
    unsafe { unpack::<true>(w) }
}

/// [`unpack`] with AVX2, FMA and F16C.
///
/// # Safety
/// Those features.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn unpack_avx2(w: &[Tile8]) -> Vec<Plain> {
    // SAFETY: forwarded from the caller.
    unsafe { unpack::<false>(w) }
}

impl Tile8 {
    /// The eight weight registers (values 0..63, register `k` ↔ activation dword `k`), the rows' `32 · sc`
    /// pairs (lane `i`: row `i`'s first run scale in the low 16 bits, the second in the high; 32 is the
    /// offset's factor, so that one `vpdpwssd` with the activations' half sums gives the offset term
    /// `32 · Σ_h sc_h · Σ a` of all eight rows, and the plain scales are one arithmetic shift away), and
    /// the rows' two bits of `d` (lane `i`: row `i`'s, in bits 0 and 1).
    ///
    /// # Safety
    /// AVX2, and with `VNNI` AVX-512 F and VL.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load<const VNNI: bool>(
        &self,
    ) -> (
        [std::arch::x86_64::__m256i; 8],
        std::arch::x86_64::__m256i,
        std::arch::x86_64::__m256i,
    ) {
        use std::arch::x86_64::*;
        // SAFETY: the caller has the features; `lo` is four 32-byte rows, `hi` two, `sc` 16 bytes.
        unsafe {
            let nib = super::regs::unpack_nibbles(&self.lo);
            let h0 = _mm256_loadu_si256(self.hi[0].as_ptr().cast());
            let h1 = _mm256_loadu_si256(self.hi[1].as_ptr().cast());
            let mask = _mm256_set1_epi8(0x30);
            // bits 2k, 2k+1 of each byte moved to bits 4, 5 (16-bit shifts: what crosses a byte lands
            // outside the mask; no closures here, see `load8`)
            let shifted = [
                _mm256_slli_epi16(h0, 4),
                _mm256_slli_epi16(h0, 2),
                h0,
                _mm256_srli_epi16(h0, 2),
                _mm256_slli_epi16(h1, 4),
                _mm256_slli_epi16(h1, 2),
                h1,
                _mm256_srli_epi16(h1, 2),
            ];
            let mut w = nib;
            for r in 0..8 {
                w[r] = super::regs::or_masked::<VNNI>(nib[r], shifted[r], mask);
            }
            (
                w,
                _mm256_slli_epi16(
                    _mm256_cvtepi8_epi16(_mm_loadu_si128(self.sc.as_ptr().cast())),
                    5,
                ),
                _mm256_and_si256(
                    _mm256_srlv_epi32(
                        _mm256_set1_epi32(i32::from(self.d)),
                        _mm256_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14),
                    ),
                    _mm256_set1_epi32(3),
                ),
            )
        }
    }
}

/// The 256 six-bit values (0..63) and sixteen scales of one Q6_K super-block (GGML's `block_q6_K`: `ql`
/// 128 bytes of low nibbles, `qh` 64 of bit pairs, `scales` 16 int8, `d` f16).
fn q6k_super_block(sb: &[u8]) -> ([u8; 256], [i8; 16], f32) {
    let (ql, qh, sc) = (&sb[0..128], &sb[128..192], &sb[192..208]);
    let d = half::f16::from_le_bytes([sb[208], sb[209]]).to_f32();
    let mut q = [0u8; 256];
    for half in 0..2 {
        let (ql, qh) = (&ql[64 * half..], &qh[32 * half..]);
        let q = &mut q[128 * half..];
        for l in 0..32 {
            q[l] = (ql[l] & 15) | ((qh[l] & 3) << 4);
            q[l + 32] = (ql[l + 32] & 15) | (((qh[l] >> 2) & 3) << 4);
            q[l + 64] = (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4);
            q[l + 96] = (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4);
        }
    }
    (q, std::array::from_fn(|i| sc[i] as i8), d)
}

/// Q6_K super-blocks as our blocks (eight per super-block, in order).
pub(super) fn q6k_blocks(bytes: &[u8]) -> Vec<BlockQ6> {
    let mut out = Vec::with_capacity(bytes.len() / Q6K_BYTES * 8);
    for sb in bytes.chunks_exact(Q6K_BYTES) {
        let (q, sc, d) = q6k_super_block(sb);
        for j in 0..8 {
            let mut qs = [0u8; 32];
            qs.copy_from_slice(&q[32 * j..32 * j + 32]);
            out.push(BlockQ6 {
                d,
                sc: [sc[2 * j], sc[2 * j + 1]],
                part: j as u8,
                qs,
            });
        }
    }
    out
}

impl Q6Matrix {
    /// A `[rows, cols]` Q6_K tensor's GGUF bytes.
    pub fn from_q6k(bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        Self::from_q6k_for(Isa::detect(), bytes, rows, cols)
    }

    pub(super) fn from_q6k_for(isa: Isa, bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        if !cols.is_multiple_of(256) || bytes.len() != rows * cols / 256 * Q6K_BYTES {
            candle_core::bail!("Q6_K matrix [{rows}, {cols}]: {} bytes", bytes.len());
        }
        Self::from_blocks_for(isa, q6k_blocks(bytes), rows, cols, "Q6_K", Acts::Per256)
    }
}

// Row-major blocks: `q` (0..63, u8) times the activations (i8) summed in pairs, then in fours: lanes 0–3
// are values 0..16, lanes 4–7 values 16..32; `32 · Σ a` of each half comes off exactly, each half is
// multiplied by its run scale, and the integers add up over the super-block (eight blocks) before one
// scaling.
macro_rules! q6_dot_body {
    ($w:ident, $a:ident, $n:ident, |$qw:ident, $qa:ident| $dot:expr) => {{
        use std::arch::x86_64::*;
        let mut acc = [_mm256_setzero_ps(); $n];
        let mut iacc = [_mm256_setzero_si256(); $n];
        for (b, wb) in $w.iter().enumerate() {
            // SAFETY: `qs` is 32 bytes, matching the unaligned 256-bit load.
            let $qw = unsafe { _mm256_loadu_si256(wb.qs.as_ptr().cast()) };
            let (s0, s1) = (i32::from(wb.sc[0]), i32::from(wb.sc[1]));
            let sc = _mm256_setr_epi32(s0, s0, s0, s0, s1, s1, s1, s1);
            for t in 0..$n {
                // SAFETY: the caller guarantees `a[t].len() == w.len()`, so `b` is in bounds.
                let ab = unsafe { $a[t].get_unchecked(b) };
                // SAFETY: `qs` is 32 bytes, matching the unaligned 256-bit load.
                let $qa = unsafe { _mm256_loadu_si256(ab.qs.as_ptr().cast()) };
                // once per half (lanes 0 and 4), since the lanes are summed at the end
                let (lo, hi) = ab.half_sums();
                let (lo, hi) = (32 * lo, 32 * hi);
                let offset = _mm256_setr_epi32(lo, 0, 0, 0, hi, 0, 0, 0);
                let dot = _mm256_sub_epi32($dot, offset);
                iacc[t] = _mm256_add_epi32(iacc[t], _mm256_mullo_epi32(dot, sc));
                if b % 8 == 7 {
                    acc[t] = _mm256_fmadd_ps(
                        _mm256_cvtepi32_ps(iacc[t]),
                        _mm256_set1_ps(wb.d * ab.d),
                        acc[t],
                    );
                    iacc[t] = _mm256_setzero_si256();
                }
            }
        }
        std::array::from_fn(|t| super::hsum(acc[t]))
    }};
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2<const N: usize>(w: &[BlockQ6], a: [&[BlockQ8_1]; N]) -> [f32; N] {
    let ones = std::arch::x86_64::_mm256_set1_epi16(1);
    // u8 (0..63) × i8 pairs summed to i16 (|·| ≤ 2·63·128, no saturation), then to i32
    q6_dot_body!(w, a, N, |qw, qa| _mm256_madd_epi16(
        _mm256_maddubs_epi16(qw, qa),
        ones
    ))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
unsafe fn dot_vnni<const N: usize>(w: &[BlockQ6], a: [&[BlockQ8_1]; N]) -> [f32; N] {
    q6_dot_body!(w, a, N, |qw, qa| _mm256_dpbusd_epi32(
        _mm256_setzero_si256(),
        qw,
        qa
    ))
}

/// Eight rows × `N` tokens over a row group's tiles. Per block and token, each row's `Σ q·a` of both halves,
/// each times its run scale, and the offset term `32 · Σ_h sc_h · Σ a` (the rows' `32 · sc` pairs times
/// the token's half sums in one `vpdpwssd` / `vpmaddwd`):
/// - with `VNNI`, eight `vpdpbusd` give the halves' dots, two `vpmulld` scale them;
/// - with AVX2, `vpmaddubsw` pairs summed in 16 bits two registers at a time (four products of at most
///   63 · 128 per lane), each sum times its run scale by `vpmaddwd`.
///
/// The integer is kept negated (offset minus dots: the accumulating instruction only adds), exact over the
/// super-block, and leaves with one `fnmadd` by `d · d_a`: the same float as adding the positive
/// integer's product. `d` is put together from the super-block's eight tiles, two bits each.
///
/// # Safety
/// As [`super::quant::TileKernel::dot`] (inlined into [`tile_vnni`] and [`tile_avx2`]).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile_kernel<T: Q6Regs, const N: usize, const VNNI: bool>(
    w: &[T],
    a: [&[BlockQ8_1]; N],
) -> [[f32; 8]; N] {
    use std::arch::x86_64::*;
    // SAFETY: the caller has the features and guarantees `a[t].len() == w.len()`, so every `b` is in
    // bounds; `o` holds eight floats, matching the unaligned 256-bit store.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); N];
        let mut neg = [_mm256_setzero_si256(); N];
        let mut head = _mm256_setzero_si256();
        // bytes 0, 1 (2, 3) of each lane into both of its words: one run scale per word pair
        let run0 = _mm256_setr_epi8(
            0, 1, 0, 1, 4, 5, 4, 5, 8, 9, 8, 9, 12, 13, 12, 13, 0, 1, 0, 1, 4, 5, 4, 5, 8, 9, 8, 9,
            12, 13, 12, 13,
        );
        let run1 = _mm256_add_epi8(run0, _mm256_set1_epi8(2));
        for (b, tile) in w.iter().enumerate() {
            if T::STREAMED {
                super::regs::prefetch_ahead(tile);
            }
            let (wq, sc32, dbits) = tile.regs::<VNNI>();
            let part = b % 8;
            head = _mm256_or_si256(
                head,
                _mm256_sll_epi32(dbits, _mm_cvtsi32_si128(2 * part as i32)),
            );
            let dv = if part == 7 {
                let dv = _mm256_cvtph_ps(super::regs::low_words::<VNNI>(head));
                head = _mm256_setzero_si256();
                dv
            } else {
                _mm256_setzero_ps()
            };
            let (sc0, sc1) = if VNNI {
                (
                    _mm256_srai_epi32(_mm256_slli_epi32(sc32, 16), 21),
                    _mm256_srai_epi32(sc32, 21),
                )
            } else {
                let sc = _mm256_srai_epi16(sc32, 5);
                (_mm256_shuffle_epi8(sc, run0), _mm256_shuffle_epi8(sc, run1))
            };
            for t in 0..N {
                let ab = a[t].get_unchecked(b);
                let halves = _mm256_set1_epi32(ab.halves);
                if VNNI {
                    let (s0, s1) = super::regs::half_dots::<true>(&wq, ab);
                    let n = _mm256_dpwssd_epi32(neg[t], sc32, halves);
                    let n = _mm256_sub_epi32(n, _mm256_mullo_epi32(s0, sc0));
                    neg[t] = _mm256_sub_epi32(n, _mm256_mullo_epi32(s1, sc1));
                } else {
                    let pair = |k: usize, sc: __m256i| {
                        _mm256_madd_epi16(super::regs::maddubs_sum16(&wq, ab, k, 2), sc)
                    };
                    let dots = _mm256_add_epi32(
                        _mm256_add_epi32(pair(0, sc0), pair(2, sc0)),
                        _mm256_add_epi32(pair(4, sc1), pair(6, sc1)),
                    );
                    let off = _mm256_madd_epi16(sc32, halves);
                    neg[t] = _mm256_add_epi32(neg[t], _mm256_sub_epi32(off, dots));
                }
                if b % 8 == 7 {
                    acc[t] = _mm256_fnmadd_ps(
                        _mm256_cvtepi32_ps(neg[t]),
                        _mm256_mul_ps(dv, _mm256_set1_ps(ab.d)),
                        acc[t],
                    );
                    neg[t] = _mm256_setzero_si256();
                }
            }
        }
        super::regs::store_rows(acc)
    }
}

/// [`tile_kernel`] with `vpdpbusd`.
///
/// # Safety
/// AVX2, FMA, F16C, AVX-512 F, BW, VNNI and VL; every `a[t]` has `w.len()` blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
unsafe fn tile_vnni<T: Q6Regs, const N: usize>(w: &[T], a: [&[BlockQ8_1]; N]) -> [[f32; 8]; N] {
    // SAFETY: forwarded from the caller.
    unsafe { tile_kernel::<T, N, true>(w, a) }
}

/// [`tile_kernel`] with AVX2 only.
///
/// # Safety
/// AVX2, FMA and F16C; every `a[t]` has `w.len()` blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn tile_avx2<T: Q6Regs, const N: usize>(w: &[T], a: [&[BlockQ8_1]; N]) -> [[f32; 8]; N] {
    // SAFETY: forwarded from the caller.
    unsafe { tile_kernel::<T, N, false>(w, a) }
}

/// [`tile_kernel`] with VNNI on sixteen rows: two row groups' tiles (`lo`, `hi`) as [`Q6Regs::regs`] gives
/// them, joined into 512-bit registers; per row the same integers and floats, so the same bits.
///
/// # Safety
/// The features of [`Isa::Vnni`]; `hi.len() == lo.len()` and every `a[t]` has `lo.len()` blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
unsafe fn tile_zmm<T: Q6Regs, const N: usize>(
    lo: &[T],
    hi: &[T],
    a: [&[BlockQ8_1]; N],
) -> [[f32; 16]; N] {
    use super::regs::{half_dots16, join, join8, store_rows16};
    use std::arch::x86_64::*;
    // SAFETY: the caller has the features and guarantees the lengths, so every `b` is in bounds.
    unsafe {
        let mut acc = [_mm512_setzero_ps(); N];
        let mut neg = [_mm512_setzero_si512(); N];
        let mut head = _mm512_setzero_si512();
        for b in 0..lo.len() {
            if T::STREAMED {
                super::regs::prefetch_ahead(lo.get_unchecked(b));
                super::regs::prefetch_ahead(hi.get_unchecked(b));
            }
            let (wl, scl, dl) = lo.get_unchecked(b).regs::<true>();
            let (wh, sch, dh) = hi.get_unchecked(b).regs::<true>();
            let (wq, sc32, dbits) = (join8(wl, wh), join(scl, sch), join(dl, dh));
            let part = b % 8;
            head = _mm512_or_si512(
                head,
                _mm512_sll_epi32(dbits, _mm_cvtsi32_si128(2 * part as i32)),
            );
            let dv = if part == 7 {
                let dv = _mm512_cvtph_ps(_mm512_cvtepi32_epi16(head));
                head = _mm512_setzero_si512();
                dv
            } else {
                _mm512_setzero_ps()
            };
            let sc0 = _mm512_srai_epi32::<21>(_mm512_slli_epi32::<16>(sc32));
            let sc1 = _mm512_srai_epi32::<21>(sc32);
            for t in 0..N {
                let ab = a[t].get_unchecked(b);
                let halves = _mm512_set1_epi32(ab.halves);
                let (s0, s1) = half_dots16(&wq, ab);
                let n = _mm512_dpwssd_epi32(neg[t], sc32, halves);
                let n = _mm512_sub_epi32(n, _mm512_mullo_epi32(s0, sc0));
                neg[t] = _mm512_sub_epi32(n, _mm512_mullo_epi32(s1, sc1));
                if b % 8 == 7 {
                    acc[t] = _mm512_fnmadd_ps(
                        _mm512_cvtepi32_ps(neg[t]),
                        _mm512_mul_ps(dv, _mm512_set1_ps(ab.d)),
                        acc[t],
                    );
                    neg[t] = _mm512_setzero_si512();
                }
            }
        }
        store_rows16(acc)
    }
}
