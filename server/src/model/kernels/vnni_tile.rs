//! The generic tile kernel: tiles described as eight registers of unsigned weight bytes with scales,
//! minimums and an offset ([`VnniTile`]: Q4_0, Q4_1, Q8_0, Q5_0, Q5_1), multiplied with VNNI or AVX2 on
//! eight rows ([`tile_vnni`], [`tile_avx2`]) or with VNNI on sixteen ([`tile_zmm`]), and unpacked once per
//! row group into plain tiles ([`Unpacked`]) where loading them is more than loads.

use super::BlockQ8_1;
use super::quant::{TileKernel, token_groups, token_groups16};
#[cfg(target_arch = "x86_64")]
use super::regs::{half_dots, load8, store_rows};

/// What the generic tile kernel needs of a tile: eight registers of unsigned weight bytes, register `k`
/// lining up with activation dword `k` (lane `i` = row `i`), the rows' scales and minimums, and the offset
/// the unsigned encoding adds (`w = d · (u − OFFSET) + m`). On AVX2 ([`super::quant::QuantType::AVX2_TILES`]) the
/// weights must be at most 31 (`vpmaddubsw` pairs summed over four registers in 16 bits).
pub trait VnniTile {
    /// Whether the kernels prefetch these tiles ahead ([`super::regs::prefetch_ahead`]): the file's tiles,
    /// streamed from memory; not the ones unpacked per matmul, already in cache (prefetching those cost a
    /// 1B Q6_K or Q5_K_M prompt 7 %).
    const STREAMED: bool = true;
    /// 0 for Q4_1, 8 for Q4_0, 128 for Q8_0 (stored as `q + 128`).
    const OFFSET: i32;
    /// Whether the rows have a minimum term (`m · s`, Q4_1).
    const HAS_MIN: bool;
    /// Whether a matmul of more than eight tokens should unpack a row group's tiles once into plain
    /// registers' worth of bytes ([`Unpacked`]) rather than once per group of eight tokens: worth it where
    /// [`VnniTile::load`] is much more than loads (Q5_0's fifth bits).
    const UNPACK: bool = false;
    /// # Safety
    /// AVX2 and F16C, and with `VNNI` the features of [`super::Isa::Vnni`] (inlined into a kernel that has them).
    #[cfg(target_arch = "x86_64")]
    unsafe fn load<const VNNI: bool>(&self) -> TileRegs;
}

impl<T: VnniTile> TileKernel for T {
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

    fn dot_tokens<'a>(
        name: &str,
        vnni: bool,
        w: &[Self],
        m: usize,
        act: impl Fn(usize) -> &'a [BlockQ8_1],
        out: &mut [f32],
    ) {
        #[cfg(target_arch = "x86_64")]
        if T::UNPACK && m > 8 {
            let plain = if vnni {
                // SAFETY: `vnni` tiles run only where `Isa::Vnni` was detected.
                unsafe { unpack_vnni(w) }
            } else {
                // SAFETY: other tiles run only where `Isa::Avx2` was.
                unsafe { unpack_avx2(w) }
            };
            return token_groups(name, vnni, &plain, m, act, out);
        }
        token_groups(name, vnni, w, m, act, out);
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
        #[cfg(target_arch = "x86_64")]
        if T::UNPACK && m > 8 {
            // SAFETY: sixteen-row kernels run only where `Isa::Vnni512` was detected.
            let (lo, hi) = unsafe { (unpack_vnni(lo), unpack_vnni(hi)) };
            return token_groups16(name, &lo, &hi, m, act, out);
        }
        token_groups16(name, lo, hi, m, act, out);
    }
}

/// A tile as [`VnniTile::load`] gives it, stored: the generic kernel then runs on plain loads (the same
/// integers and floats, so the same bits).
#[derive(Debug, Clone, Copy)]
#[repr(C, align(32))]
pub struct Unpacked<T> {
    pub(super) w: [[u8; 32]; 8],
    pub(super) d: [f32; 8],
    pub(super) m: [f32; 8],
    pub(super) tile: std::marker::PhantomData<fn() -> T>,
}

impl<T: VnniTile> VnniTile for Unpacked<T> {
    const STREAMED: bool = false;
    const OFFSET: i32 = T::OFFSET;
    const HAS_MIN: bool = T::HAS_MIN;
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load<const VNNI: bool>(&self) -> TileRegs {
        use std::arch::x86_64::*;
        // SAFETY: the caller has AVX2; each `w[k]` is 32 bytes, `d` and `m` eight floats each, aligned.
        unsafe {
            (
                load8(&self.w),
                _mm256_load_ps(self.d.as_ptr()),
                _mm256_load_ps(self.m.as_ptr()),
            )
        }
    }
}

/// A row group's tiles, each loaded once and stored as [`Unpacked`].
///
/// # Safety
/// As [`VnniTile::load`].
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn unpack<T: VnniTile, const VNNI: bool>(w: &[T]) -> Vec<Unpacked<T>> {
    use std::arch::x86_64::*;
    let mut out = Vec::with_capacity(w.len());
    for t in w {
        if T::STREAMED {
            super::regs::prefetch_ahead(t);
        }
        let mut u = Unpacked {
            w: [[0u8; 32]; 8],
            d: [0.0; 8],
            m: [0.0; 8],
            tile: std::marker::PhantomData,
        };
        // SAFETY: the caller has the features; the stores fill `u`'s 32-byte-aligned arrays.
        unsafe {
            let (regs, d, m) = t.load::<VNNI>();
            for (k, r) in regs.iter().enumerate() {
                _mm256_store_si256(u.w[k].as_mut_ptr().cast(), *r);
            }
            _mm256_store_ps(u.d.as_mut_ptr(), d);
            _mm256_store_ps(u.m.as_mut_ptr(), m);
        }
        out.push(u);
    }
    out
}

/// [`unpack`] with the features of [`super::Isa::Vnni`].
///
/// # Safety
/// Those features.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
pub(super) unsafe fn unpack_vnni<T: VnniTile>(w: &[T]) -> Vec<Unpacked<T>> {
    // SAFETY: forwarded from the caller.
    unsafe { unpack::<T, true>(w) }
}

/// [`unpack`] with AVX2, FMA and F16C.
///
/// # Safety
/// Those features.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn unpack_avx2<T: VnniTile>(w: &[T]) -> Vec<Unpacked<T>> {
    // SAFETY: forwarded from the caller.
    unsafe { unpack::<T, false>(w) }
}

/// A tile in registers: weights (register `k` ↔ activation dword `k`), scales, minimums.
#[cfg(target_arch = "x86_64")]
pub type TileRegs = (
    [std::arch::x86_64::__m256i; 8],
    std::arch::x86_64::__m256,
    std::arch::x86_64::__m256,
);

/// Eight rows × `N` tokens over a row group's tiles: per block, the eight weight registers with the
/// token's broadcast activation dwords give each row's exact integer dot in its own lane
/// (`Σ u a − OFFSET · Σ a`, [`super::regs::half_dots`]), scaled by `d_w · d_a`, plus `m · s` where the type has
/// minimums.
///
/// # Safety
/// As [`TileKernel::dot`] (inlined into [`tile_vnni`] and [`tile_avx2`], which enable the features).
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile_kernel<T: VnniTile, const N: usize, const VNNI: bool>(
    w: &[T],
    a: [&[BlockQ8_1]; N],
) -> [[f32; 8]; N] {
    use std::arch::x86_64::*;
    // SAFETY: the caller has the features; it guarantees `a[t].len() == w.len()`, so every `b` is in
    // bounds; `o` holds eight floats, matching the unaligned 256-bit store.
    unsafe {
        let mut acc = [_mm256_setzero_ps(); N];
        for (b, tile) in w.iter().enumerate() {
            if T::STREAMED {
                super::regs::prefetch_ahead(tile);
            }
            let (wq, dv, mv) = tile.load::<VNNI>();
            for t in 0..N {
                let ab = a[t].get_unchecked(b);
                let (s0, s1) = half_dots::<VNNI>(&wq, ab);
                let mut isum = _mm256_add_epi32(s0, s1);
                if T::OFFSET != 0 {
                    isum = _mm256_sub_epi32(isum, _mm256_set1_epi32(T::OFFSET * ab.sum));
                }
                acc[t] = _mm256_fmadd_ps(
                    _mm256_cvtepi32_ps(isum),
                    _mm256_mul_ps(dv, _mm256_set1_ps(ab.d)),
                    acc[t],
                );
                if T::HAS_MIN {
                    acc[t] = _mm256_fmadd_ps(mv, _mm256_set1_ps(ab.s), acc[t]);
                }
            }
        }
        store_rows(acc)
    }
}

/// [`tile_kernel`] with `vpdpbusd`.
///
/// # Safety
/// The features of [`super::Isa::Vnni`]; every `a[t]` has `w.len()` blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
pub(super) unsafe fn tile_vnni<T: VnniTile, const N: usize>(
    w: &[T],
    a: [&[BlockQ8_1]; N],
) -> [[f32; 8]; N] {
    // SAFETY: forwarded from the caller.
    unsafe { tile_kernel::<T, N, true>(w, a) }
}

/// [`tile_kernel`] with AVX2 only (weights at most 31, see [`VnniTile`]).
///
/// # Safety
/// AVX2, FMA and F16C; every `a[t]` has `w.len()` blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn tile_avx2<T: VnniTile, const N: usize>(
    w: &[T],
    a: [&[BlockQ8_1]; N],
) -> [[f32; 8]; N] {
    // SAFETY: forwarded from the caller.
    unsafe { tile_kernel::<T, N, false>(w, a) }
}

/// [`tile_kernel`] with VNNI on sixteen rows: two row groups' tiles (`lo`, `hi`) loaded as
/// [`VnniTile::load`] gives them and joined into 512-bit registers; per row the same integers and floats.
///
/// # Safety
/// The features of [`super::Isa::Vnni`]; `hi.len() == lo.len()` and every `a[t]` has `lo.len()` blocks.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vnni,avx512vl")]
pub(super) unsafe fn tile_zmm<T: VnniTile, const N: usize>(
    lo: &[T],
    hi: &[T],
    a: [&[BlockQ8_1]; N],
) -> [[f32; 16]; N] {
    use super::regs::{half_dots16, join_ps, join8, store_rows16};
    use std::arch::x86_64::*;
    // SAFETY: the caller has the features and guarantees the lengths, so every `b` is in bounds.
    unsafe {
        let mut acc = [_mm512_setzero_ps(); N];
        for b in 0..lo.len() {
            if T::STREAMED {
                super::regs::prefetch_ahead(lo.get_unchecked(b));
                super::regs::prefetch_ahead(hi.get_unchecked(b));
            }
            let (wl, dl, ml) = lo.get_unchecked(b).load::<true>();
            let (wh, dh, mh) = hi.get_unchecked(b).load::<true>();
            let wq = join8(wl, wh);
            let (dv, mv) = (join_ps(dl, dh), join_ps(ml, mh));
            for t in 0..N {
                let ab = a[t].get_unchecked(b);
                let (s0, s1) = half_dots16(&wq, ab);
                let mut isum = _mm512_add_epi32(s0, s1);
                if T::OFFSET != 0 {
                    isum = _mm512_sub_epi32(isum, _mm512_set1_epi32(T::OFFSET * ab.sum));
                }
                acc[t] = _mm512_fmadd_ps(
                    _mm512_cvtepi32_ps(isum),
                    _mm512_mul_ps(dv, _mm512_set1_ps(ab.d)),
                    acc[t],
                );
                if T::HAS_MIN {
                    acc[t] = _mm512_fmadd_ps(mv, _mm512_set1_ps(ab.s), acc[t]);
                }
            }
        }
        store_rows16(acc)
    }
}
