//! The half kernel's register tiles (see the parent module): the whole group × `N` tokens in 512-bit registers
//! (f32 activations, or bf16 ones by `vdpbf16ps`) and 16-row slices or whole groups in 256-bit ones.

use super::{PANEL, TileArgs};

/// `P` panels (`16P` rows, the whole group) × `N` tokens, f32 activations: per column, `P` weight vectors
/// widened in registers (F16C's `vcvtph2ps`; BF16: a shift or a mask of the column pair) and each token's
/// value broadcast into `P` FMAs.
///
/// # Safety
/// AVX-512F and VL; `a` as [`super::Ctx::block`] makes it for a `16P`-row group.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
#[allow(clippy::needless_range_loop)] // `acc[t][p]`: token and panel read clearer as indices
pub(super) unsafe fn tile_avx512<const P: usize, const N: usize>(a: &TileArgs<N>, bf16: bool) {
    use std::arch::x86_64::*;
    let g = PANEL * P;
    let x: [*const f32; N] = a.x.map(|p| p.cast::<f32>());
    // SAFETY (loads and stores): `a` spans `cols` columns of a `g`-row group, `cols` activations per token
    // and `g` outputs per token.
    let mut acc: [[__m512; P]; N] = std::array::from_fn(|t| {
        std::array::from_fn(|p| unsafe {
            if a.add {
                _mm512_loadu_ps(a.out[t].add(PANEL * p))
            } else {
                _mm512_setzero_ps()
            }
        })
    });
    if bf16 {
        let high = _mm512_set1_epi32(0xFFFF_0000u32 as i32);
        for j in 0..a.cols / 2 {
            let pair = unsafe { a.w.add(j * 2 * g) };
            let raw: [__m512i; P] = std::array::from_fn(|p| unsafe {
                _mm512_loadu_si512(pair.add(2 * PANEL * p).cast())
            });
            let even: [__m512; P] =
                std::array::from_fn(|p| _mm512_castsi512_ps(_mm512_slli_epi32::<16>(raw[p])));
            for t in 0..N {
                let xv = _mm512_set1_ps(unsafe { *x[t].add(2 * j) });
                for p in 0..P {
                    acc[t][p] = _mm512_fmadd_ps(even[p], xv, acc[t][p]);
                }
            }
            let odd: [__m512; P] =
                std::array::from_fn(|p| _mm512_castsi512_ps(_mm512_and_si512(raw[p], high)));
            for t in 0..N {
                let xv = _mm512_set1_ps(unsafe { *x[t].add(2 * j + 1) });
                for p in 0..P {
                    acc[t][p] = _mm512_fmadd_ps(odd[p], xv, acc[t][p]);
                }
            }
        }
    } else {
        for c in 0..a.cols {
            let col = unsafe { a.w.add(c * g) };
            let wv: [__m512; P] = std::array::from_fn(|p| unsafe {
                _mm512_cvtph_ps(_mm256_loadu_si256(col.add(PANEL * p).cast()))
            });
            for t in 0..N {
                let xv = _mm512_set1_ps(unsafe { *x[t].add(c) });
                for p in 0..P {
                    acc[t][p] = _mm512_fmadd_ps(wv[p], xv, acc[t][p]);
                }
            }
        }
    }
    for t in 0..N {
        for p in 0..P {
            unsafe { _mm512_storeu_ps(a.out[t].add(PANEL * p), acc[t][p]) };
        }
    }
}

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

/// `P` 8-row panels of a `g`-row group (two, a 16-row slice, for several tokens; the whole group for one)
/// × `N` tokens, f32 activations, as [`tile_avx512`] with 256-bit registers.
///
/// # Safety
/// AVX2, FMA and F16C; `a` as [`super::Ctx::block`] makes it, moved to the slice's first row; `8P <= g`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::needless_range_loop)] // `acc[t][p]`: token and panel read clearer as indices
pub(super) unsafe fn tile_avx2<const P: usize, const N: usize>(
    a: &TileArgs<N>,
    g: usize,
    bf16: bool,
) {
    use std::arch::x86_64::*;
    let x: [*const f32; N] = a.x.map(|p| p.cast::<f32>());
    // SAFETY (loads and stores): as in `tile_avx512`, for 16 of the group's rows.
    let mut acc: [[__m256; P]; N] = std::array::from_fn(|t| {
        std::array::from_fn(|p| unsafe {
            if a.add {
                _mm256_loadu_ps(a.out[t].add(8 * p))
            } else {
                _mm256_setzero_ps()
            }
        })
    });
    if bf16 {
        let high = _mm256_set1_epi32(0xFFFF_0000u32 as i32);
        for j in 0..a.cols / 2 {
            let pair = unsafe { a.w.add(j * 2 * g) };
            let raw: [__m256i; P] =
                std::array::from_fn(|p| unsafe { _mm256_loadu_si256(pair.add(16 * p).cast()) });
            let even: [__m256; P] =
                std::array::from_fn(|p| _mm256_castsi256_ps(_mm256_slli_epi32::<16>(raw[p])));
            for t in 0..N {
                let xv = _mm256_set1_ps(unsafe { *x[t].add(2 * j) });
                for p in 0..P {
                    acc[t][p] = _mm256_fmadd_ps(even[p], xv, acc[t][p]);
                }
            }
            let odd: [__m256; P] =
                std::array::from_fn(|p| _mm256_castsi256_ps(_mm256_and_si256(raw[p], high)));
            for t in 0..N {
                let xv = _mm256_set1_ps(unsafe { *x[t].add(2 * j + 1) });
                for p in 0..P {
                    acc[t][p] = _mm256_fmadd_ps(odd[p], xv, acc[t][p]);
                }
            }
        }
    } else {
        for c in 0..a.cols {
            let col = unsafe { a.w.add(c * g) };
            let wv: [__m256; P] = std::array::from_fn(|p| unsafe {
                _mm256_cvtph_ps(_mm_loadu_si128(col.add(8 * p).cast()))
            });
            for t in 0..N {
                let xv = _mm256_set1_ps(unsafe { *x[t].add(c) });
                for p in 0..P {
                    acc[t][p] = _mm256_fmadd_ps(wv[p], xv, acc[t][p]);
                }
            }
        }
    }
    for t in 0..N {
        for p in 0..P {
            unsafe { _mm256_storeu_ps(a.out[t].add(8 * p), acc[t][p]) };
        }
    }
}
