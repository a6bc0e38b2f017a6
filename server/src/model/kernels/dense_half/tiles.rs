//! The half kernel's register tiles (see the parent module): the whole group × `N` tokens in 512-bit registers
//! (f32 activations, or bf16 ones by `vdpbf16ps`) and 16-row slices or whole groups in 256-bit ones.

use super::{PANEL, TileArgs};

/// One FMA tile, written once and instantiated at two register widths ([`tile_avx512`], [`tile_avx2`]):
/// `P` panels of `LANES` rows (from the `g`-row group's column-major storage) × `N` tokens, f32 activations;
/// per column, `P` weight vectors widened in registers (F16C's `vcvtph2ps`; BF16: a shift or a mask of the
/// column pair) and each token's value broadcast into `P` FMAs.
macro_rules! fma_tile {
    ($(#[$doc:meta])* $name:ident, $features:literal, $lanes:literal, $ps:ty, $si:ty,
     $loadu_ps:ident, $setzero_ps:ident, $set1_ps:ident, $fmadd_ps:ident, $storeu_ps:ident,
     $loadu_si:ident, $set1_epi32:ident, $slli_epi32:ident, $and_si:ident, $castsi_ps:ident,
     $cvtph_ps:ident, $loadu_half:ident) => {
        $(#[$doc])*
        #[cfg(target_arch = "x86_64")]
        #[target_feature(enable = $features)]
        #[allow(clippy::needless_range_loop)] // `acc[t][p]`: token and panel read clearer as indices
        pub(super) unsafe fn $name<const P: usize, const N: usize>(a: &TileArgs<N>, g: usize, bf16: bool) {
            use std::arch::x86_64::*;
            const L: usize = $lanes;
            let x: [*const f32; N] = a.x.map(|p| p.cast::<f32>());
            // SAFETY (loads and stores): `a` spans `cols` columns of a `g`-row group (`L · P <= g`), `cols`
            // activations per token and `L · P` outputs per token.
            let mut acc: [[$ps; P]; N] = std::array::from_fn(|t| {
                std::array::from_fn(|p| unsafe {
                    if a.add { $loadu_ps(a.out[t].add(L * p)) } else { $setzero_ps() }
                })
            });
            if bf16 {
                let high = $set1_epi32(0xFFFF_0000u32 as i32);
                for j in 0..a.cols / 2 {
                    let pair = unsafe { a.w.add(j * 2 * g) };
                    let raw: [$si; P] =
                        std::array::from_fn(|p| unsafe { $loadu_si(pair.add(2 * L * p).cast()) });
                    let even: [$ps; P] = std::array::from_fn(|p| $castsi_ps($slli_epi32::<16>(raw[p])));
                    for t in 0..N {
                        let xv = $set1_ps(unsafe { *x[t].add(2 * j) });
                        for p in 0..P {
                            acc[t][p] = $fmadd_ps(even[p], xv, acc[t][p]);
                        }
                    }
                    let odd: [$ps; P] = std::array::from_fn(|p| $castsi_ps($and_si(raw[p], high)));
                    for t in 0..N {
                        let xv = $set1_ps(unsafe { *x[t].add(2 * j + 1) });
                        for p in 0..P {
                            acc[t][p] = $fmadd_ps(odd[p], xv, acc[t][p]);
                        }
                    }
                }
            } else {
                for c in 0..a.cols {
                    let col = unsafe { a.w.add(c * g) };
                    let wv: [$ps; P] = std::array::from_fn(|p| unsafe {
                        $cvtph_ps($loadu_half(col.add(L * p).cast()))
                    });
                    for t in 0..N {
                        let xv = $set1_ps(unsafe { *x[t].add(c) });
                        for p in 0..P {
                            acc[t][p] = $fmadd_ps(wv[p], xv, acc[t][p]);
                        }
                    }
                }
            }
            for t in 0..N {
                for p in 0..P {
                    unsafe { $storeu_ps(a.out[t].add(L * p), acc[t][p]) };
                }
            }
        }
    };
}

fma_tile!(
    /// `fma_tile` in 512-bit registers: `P` panels (`16P` rows, the whole group, `g = 16P`) × `N` tokens.
    ///
    /// # Safety
    /// AVX-512F and VL; `a` as [`super::Ctx::block`] makes it for a `16P`-row group.
    tile_avx512, "avx512f,avx512vl", 16, __m512, __m512i,
    _mm512_loadu_ps, _mm512_setzero_ps, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_storeu_ps,
    _mm512_loadu_si512, _mm512_set1_epi32, _mm512_slli_epi32, _mm512_and_si512, _mm512_castsi512_ps,
    _mm512_cvtph_ps, _mm256_loadu_si256
);

fma_tile!(
    /// `fma_tile` in 256-bit registers: `P` 8-row panels of a `g`-row group (two, a 16-row slice, for
    /// several tokens; the whole group for one) × `N` tokens.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; `a` as [`super::Ctx::block`] makes it, moved to the slice's first row; `8P <= g`.
    tile_avx2, "avx2,fma,f16c", 8, __m256, __m256i,
    _mm256_loadu_ps, _mm256_setzero_ps, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_storeu_ps,
    _mm256_loadu_si256, _mm256_set1_epi32, _mm256_slli_epi32, _mm256_and_si256, _mm256_castsi256_ps,
    _mm256_cvtph_ps, _mm_loadu_si128
);

/// `P` panels × `N` tokens of BF16 weights and bf16-rounded activations by `vdpbf16ps`: per column pair,
/// `P` weight loads and each token's pair broadcast into `P` dot products.
///
/// # Safety
/// AVX-512F, VL and BF16; `a` as [`super::Ctx::block`] makes it for a `16P`-row BF16 group, `a.x` bf16 values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bf16")]
#[allow(clippy::needless_range_loop)] // `acc[t][p]`: token and panel read clearer as indices
pub(super) unsafe fn tile_bf16_dot<const P: usize, const N: usize>(a: &TileArgs<N>) {
    use std::arch::x86_64::*;
    let g = PANEL * P;
    // SAFETY (loads and stores): as in `tile_avx512`; a column pair of bf16 activations is 32 bits
    // (`k0` and `k` are even, so the pair never straddles a token).
    let mut acc: [[__m512; P]; N] = std::array::from_fn(|t| {
        std::array::from_fn(|p| unsafe {
            if a.add {
                _mm512_loadu_ps(a.out[t].add(PANEL * p))
            } else {
                _mm512_setzero_ps()
            }
        })
    });
    for j in 0..a.cols / 2 {
        let pair = unsafe { a.w.add(j * 2 * g) };
        let wv: [__m512bh; P] = std::array::from_fn(|p| unsafe {
            std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                pair.add(2 * PANEL * p).cast(),
            ))
        });
        for t in 0..N {
            let xp = unsafe { a.x[t].add(2 * j).cast::<i32>().read_unaligned() };
            // SAFETY: `__m512bh` is 32 bf16 bit patterns, like the 16 32-bit integers.
            let xv = unsafe { std::mem::transmute::<__m512i, __m512bh>(_mm512_set1_epi32(xp)) };
            for p in 0..P {
                acc[t][p] = _mm512_dpbf16_ps(acc[t][p], wv[p], xv);
            }
        }
    }
    for t in 0..N {
        for p in 0..P {
            unsafe { _mm512_storeu_ps(a.out[t].add(PANEL * p), acc[t][p]) };
        }
    }
}
