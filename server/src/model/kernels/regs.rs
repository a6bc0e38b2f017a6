//! Register-level steps the tile kernels share ([`super::quant`], [`super::q4k`], [`super::q6k`],
//! [`super::q5_tiles`]), each in its VNNI and AVX2 form where the two differ. The kernels' bodies are
//! `#[inline(always)]` and generic over `VNNI`; what would be a closure of intrinsics there is a function here
//! (closures inside those bodies have no target features and are not inlined).

use super::BlockQ8_1;

/// An activation block as eight little-endian dwords of four i8 each (broadcast against a tile's
/// registers).
pub(super) fn act_dwords(ab: &BlockQ8_1) -> [i32; 8] {
    std::array::from_fn(|i| {
        i32::from_le_bytes([
            ab.qs[4 * i] as u8,
            ab.qs[4 * i + 1] as u8,
            ab.qs[4 * i + 2] as u8,
            ab.qs[4 * i + 3] as u8,
        ])
    })
}

/// Each row's `Σ u·a` over values 0..16 and 16..32 of a tile (weight registers 0–3 and 4–7, lane `i` = row
/// `i`) with one token's activation block, whose dwords are broadcast: with `VNNI` two chains of four
/// `vpdpbusd`; else per half four `vpmaddubsw` summed in 16 bits (eight products of at most 31 · 128 per
/// lane: the weights must be at most 31) and one `vpmaddwd` by ones.
///
/// # Safety
/// AVX2, and with `VNNI` AVX-512 VNNI and VL.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn half_dots<const VNNI: bool>(
    wq: &[std::arch::x86_64::__m256i; 8],
    ab: &BlockQ8_1,
) -> (std::arch::x86_64::__m256i, std::arch::x86_64::__m256i) {
    use std::arch::x86_64::*;
    let q = act_dwords(ab);
    // SAFETY: the caller has the features.
    unsafe {
        if VNNI {
            let mut s0 = _mm256_setzero_si256();
            let mut s1 = _mm256_setzero_si256();
            for k in 0..4 {
                s0 = _mm256_dpbusd_epi32(s0, wq[k], _mm256_set1_epi32(q[k]));
                s1 = _mm256_dpbusd_epi32(s1, wq[4 + k], _mm256_set1_epi32(q[4 + k]));
            }
            (s0, s1)
        } else {
            let ones = _mm256_set1_epi16(1);
            (
                _mm256_madd_epi16(maddubs_sum16(wq, ab, 0, 4), ones),
                _mm256_madd_epi16(maddubs_sum16(wq, ab, 4, 4), ones),
            )
        }
    }
}

/// `vpmaddubsw` of weight registers `k0..k0 + n` with the token's broadcast activation dwords, summed in
/// 16 bits: lane `i` holds two words, each row `i`'s sum of `2n` products (the caller keeps that within an
/// i16: `2n · max q · 128 < 2¹⁵`).
///
/// # Safety
/// AVX2.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn maddubs_sum16(
    wq: &[std::arch::x86_64::__m256i; 8],
    ab: &BlockQ8_1,
    k0: usize,
    n: usize,
) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    let q = act_dwords(ab);
    // SAFETY: the caller has AVX2.
    unsafe {
        let mut s = _mm256_maddubs_epi16(wq[k0], _mm256_set1_epi32(q[k0]));
        for k in k0 + 1..k0 + n {
            s = _mm256_add_epi16(s, _mm256_maddubs_epi16(wq[k], _mm256_set1_epi32(q[k])));
        }
        s
    }
}

/// The low 16 bits of each of eight 32-bit lanes, packed into eight words (`vpmovdw` with AVX-512,
/// a byte shuffle and a lane permute with AVX2).
///
/// # Safety
/// AVX2, and with `VNNI` AVX-512 F and VL.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn low_words<const VNNI: bool>(
    x: std::arch::x86_64::__m256i,
) -> std::arch::x86_64::__m128i {
    use std::arch::x86_64::*;
    // SAFETY: the caller has the features.
    unsafe {
        if VNNI {
            _mm256_cvtepi32_epi16(x)
        } else {
            let pick = _mm256_setr_epi8(
                0, 1, 4, 5, 8, 9, 12, 13, -1, -1, -1, -1, -1, -1, -1, -1, 0, 1, 4, 5, 8, 9, 12, 13,
                -1, -1, -1, -1, -1, -1, -1, -1,
            );
            let p = _mm256_shuffle_epi8(x, pick);
            _mm256_castsi256_si128(_mm256_permute4x64_epi64::<0b00_00_10_00>(p))
        }
    }
}

/// `nib | (shifted & mask)`: one `vpternlogd` with AVX-512, an `and` and an `or` with AVX2.
///
/// # Safety
/// AVX2, and with `VNNI` AVX-512 F and VL.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn or_masked<const VNNI: bool>(
    nib: std::arch::x86_64::__m256i,
    shifted: std::arch::x86_64::__m256i,
    mask: std::arch::x86_64::__m256i,
) -> std::arch::x86_64::__m256i {
    use std::arch::x86_64::*;
    // SAFETY: the caller has the features.
    unsafe {
        if VNNI {
            _mm256_ternarylogic_epi32::<0xF8>(nib, shifted, mask)
        } else {
            _mm256_or_si256(nib, _mm256_and_si256(shifted, mask))
        }
    }
}

/// Eight registers of 32 bytes each (a tile's weights), as plain loads: a `#[target_feature]` function,
/// so that the kernels' `#[inline(always)]` bodies call no closures of intrinsics (which would not inline
/// there).
///
/// # Safety
/// AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn load8(rows: &[[u8; 32]; 8]) -> [std::arch::x86_64::__m256i; 8] {
    use std::arch::x86_64::*;
    // SAFETY: each row is 32 bytes, matching the unaligned 256-bit loads.
    std::array::from_fn(|k| unsafe { _mm256_loadu_si256(rows[k].as_ptr().cast()) })
}

/// `N` registers of eight floats stored as arrays (a kernel's `[token][row]` result), as [`load8`].
///
/// # Safety
/// AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn store_rows<const N: usize>(
    acc: [std::arch::x86_64::__m256; N],
) -> [[f32; 8]; N] {
    use std::arch::x86_64::*;
    std::array::from_fn(|t| {
        let mut o = [0f32; 8];
        // SAFETY: `o` holds eight floats, matching the unaligned 256-bit store.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), acc[t]) };
        o
    })
}

/// Splits four registers of packed nibbles into eight of values (low nibbles: values 0–15 of each row's
/// block, lining up with activation dwords 0–3; high nibbles: values 16–31, dwords 4–7).
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn unpack_nibbles(packed: &[[u8; 32]; 4]) -> [std::arch::x86_64::__m256i; 8] {
    use std::arch::x86_64::*;
    let mask = _mm256_set1_epi8(0x0F);
    // SAFETY: each row of `packed` is 32 bytes, matching the unaligned 256-bit loads.
    let p = [0, 1, 2, 3].map(|k| unsafe { _mm256_loadu_si256(packed[k].as_ptr().cast()) });
    std::array::from_fn(|k| {
        if k < 4 {
            _mm256_and_si256(p[k], mask)
        } else {
            _mm256_and_si256(_mm256_srli_epi16(p[k - 4], 4), mask)
        }
    })
}

/// Two row groups' registers side by side in 512-bit ones (lanes 0–7: `lo`'s rows, 8–15: `hi`'s), for the
/// sixteen-row kernels of [`super::Isa::Vnni512`].
///
/// # Safety
/// AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn join8(
    lo: [std::arch::x86_64::__m256i; 8],
    hi: [std::arch::x86_64::__m256i; 8],
) -> [std::arch::x86_64::__m512i; 8] {
    use std::arch::x86_64::*;
    std::array::from_fn(|k| _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo[k]), hi[k]))
}

/// One register of each row group side by side, as [`join8`].
///
/// # Safety
/// AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn join(
    lo: std::arch::x86_64::__m256i,
    hi: std::arch::x86_64::__m256i,
) -> std::arch::x86_64::__m512i {
    use std::arch::x86_64::*;
    _mm512_inserti64x4::<1>(_mm512_castsi256_si512(lo), hi)
}

/// Eight floats of each row group side by side, as [`join8`].
///
/// # Safety
/// AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn join_ps(
    lo: std::arch::x86_64::__m256,
    hi: std::arch::x86_64::__m256,
) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    _mm512_castpd_ps(_mm512_insertf64x4::<1>(
        _mm512_castpd256_pd512(_mm256_castps_pd(lo)),
        _mm256_castps_pd(hi),
    ))
}

/// Each row's `Σ u·a` over values 0..16 and 16..32 of sixteen rows ([`join8`]ed registers) with one
/// token's activation block: [`half_dots`] with VNNI, at 512 bits (the same integers).
///
/// # Safety
/// AVX-512 F and VNNI.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
pub(super) unsafe fn half_dots16(
    wq: &[std::arch::x86_64::__m512i; 8],
    ab: &BlockQ8_1,
) -> (std::arch::x86_64::__m512i, std::arch::x86_64::__m512i) {
    use std::arch::x86_64::*;
    let q = act_dwords(ab);
    // SAFETY: the caller has the features.
    unsafe {
        let mut s0 = _mm512_setzero_si512();
        let mut s1 = _mm512_setzero_si512();
        for k in 0..4 {
            s0 = _mm512_dpbusd_epi32(s0, wq[k], _mm512_set1_epi32(q[k]));
            s1 = _mm512_dpbusd_epi32(s1, wq[4 + k], _mm512_set1_epi32(q[4 + k]));
        }
        (s0, s1)
    }
}

/// `N` registers of sixteen floats stored as arrays (a sixteen-row kernel's `[token][row]` result).
///
/// # Safety
/// AVX-512 F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn store_rows16<const N: usize>(
    acc: [std::arch::x86_64::__m512; N],
) -> [[f32; 16]; N] {
    use std::arch::x86_64::*;
    std::array::from_fn(|t| {
        let mut o = [0f32; 16];
        // SAFETY: `o` holds sixteen floats, matching the unaligned 512-bit store.
        unsafe { _mm512_storeu_ps(o.as_mut_ptr(), acc[t]) };
        o
    })
}

/// How far ahead of the tile being multiplied the kernels ask for their weights, in bytes. Streaming a
/// 16384 × 8192 Q6_K matrix from memory for one token, one thread: 28.3 GB/s without, 24.6 at 2 KiB,
/// 35–41 at 8 KiB, 46.1 at 16 KiB, 42.6 at 24 KiB (plain streaming reads reach 37–39 GB/s here: the
/// hardware prefetcher alone keeps too few lines in flight). Q4_K: 27.7 → 50.6 GB/s. The 1B Q4_K_M file,
/// 1 thread: decode 39.1 → 49.2 tok/s, 16 sequences' batched decode 119.8 → 157.9 (2 threads 210 → 279).
///
/// Into L2, not L1 (`prefetcht1`): on a Zen 4 (32 KiB L1, where the Zen 5 above has 48) `prefetcht0` 16 KiB
/// ahead lost to no prefetch at all (presumably evicting lines still in use); `prefetcht1` beat both. Same
/// matrix shapes, 1 thread, two runs each: Q4_K 16.1, 15.7 → 20.4, 17.3 GB/s, Q6_K 19.4, 16.8 → 23.9, 20.3;
/// the 1B Q4_K_M file's decode 26.0, 26.3 → 29.2, 28.8 tok/s, Q6_K 19.9, 20.1 → 24.1, 25.2. Not re-measured
/// on the Zen 5.
pub(super) const PREFETCH_AHEAD: usize = 16 << 10;

/// Prefetches (into L2) the bytes [`PREFETCH_AHEAD`] past `tile`, as many lines as the tile spans. Rows
/// are stored group after group, so past a row group's last tile this is the next group's first: the
/// next call's weights. A prefetch never faults, whatever the address.
#[inline(always)]
pub(super) fn prefetch_ahead<T>(tile: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T1, _mm_prefetch};
        let ahead = (tile as *const T).cast::<i8>().wrapping_add(PREFETCH_AHEAD);
        for l in 0..std::mem::size_of::<T>().div_ceil(64) {
            // SAFETY: a prefetch is a hint: it reads nothing into the program and cannot fault.
            unsafe { _mm_prefetch::<_MM_HINT_T1>(ahead.wrapping_add(64 * l)) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = tile;
}
