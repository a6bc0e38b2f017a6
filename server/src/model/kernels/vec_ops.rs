//! f32 / f16 vector helpers for the paged-attention kernel.

#[cfg(target_arch = "x86_64")]
use super::hsum;

/// f32 vector primitives for the attention kernel, picked once by CPU features (AVX2+FMA+F16C when the
/// CPU has them, portable loops otherwise). Attention is a small share of the FLOPs but, with scalar loops
/// and a per-row `half` dispatch, it took a third of a 16-sequence decode step.
#[derive(Clone, Copy)]
pub(crate) struct VecOps {
    /// `Σ a_i b_i` (`a`, `b` of equal length).
    pub dot: fn(&[f32], &[f32]) -> f32,
    /// `y_i += w · x_i`.
    pub axpy: fn(f32, &[f32], &mut [f32]),
    /// `out[i] = q[i·hd .. (i+1)·hd] · k` for every query head `i` of a GQA group, `k` an f16 key row of
    /// `hd` values (widened once, in registers).
    pub dots_f16: fn(&[f32], &[half::f16], &mut [f32]),
    /// `o[i·hd + c] += p[i] · v[c]` for every head `i` of a group, `v` an f16 value row.
    pub axpys_f16: fn(&[f32], &[half::f16], &mut [f32]),
    /// Scores of a GQA group against many f16 key rows: `scores[j·g + i] = q_i · cache[offs[j]..][..hd]`
    /// (`g = q.len() / hd` heads).
    pub scores_f16: RowsFn,
    /// Probability-weighted sum of many f16 value rows for a GQA group:
    /// `o[i·hd + c] += Σ_j p[j·g + i] · cache[offs[j] + c]` (`g = o.len() / hd` heads).
    pub weighted_rows_f16: RowsFn,
}

/// A many-row attention helper: (queries or weights, the f16 cache, row offsets, head size, output).
pub(crate) type RowsFn = fn(&[f32], &[half::f16], &[usize], usize, &mut [f32]);

/// `scores_f16` from the per-row primitive (any CPU, and any head size on AVX2 machines).
fn scores_by_rows(
    ops: &VecOps,
    q: &[f32],
    cache: &[half::f16],
    offs: &[usize],
    hd: usize,
    out: &mut [f32],
) {
    let g = q.len() / hd;
    for (j, &off) in offs.iter().enumerate() {
        (ops.dots_f16)(q, &cache[off..off + hd], &mut out[j * g..(j + 1) * g]);
    }
}

/// `weighted_rows_f16` from the per-row primitive.
fn weighted_by_rows(
    ops: &VecOps,
    p: &[f32],
    cache: &[half::f16],
    offs: &[usize],
    hd: usize,
    o: &mut [f32],
) {
    let g = o.len() / hd;
    for (j, &off) in offs.iter().enumerate() {
        (ops.axpys_f16)(&p[j * g..(j + 1) * g], &cache[off..off + hd], o);
    }
}

impl VecOps {
    /// The fastest implementation this CPU runs.
    pub(crate) fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                return Self {
                    dot: |a, b| {
                        // SAFETY: AVX2 and FMA were detected above.
                        unsafe { dot_f32_avx2(a, b) }
                    },
                    axpy: |w, x, y| {
                        // SAFETY: AVX2 and FMA were detected above.
                        unsafe { axpy_f32_avx2(w, x, y) }
                    },
                    dots_f16: |q, k, out| {
                        // SAFETY: AVX2, FMA and F16C were detected above.
                        unsafe { dots_f16_avx2(q, k, out) }
                    },
                    axpys_f16: |p, v, o| {
                        // SAFETY: AVX2, FMA and F16C were detected above.
                        unsafe { axpys_f16_avx2(p, v, o) }
                    },
                    scores_f16: |q, cache, offs, hd, out| {
                        if hd.is_multiple_of(8) {
                            // SAFETY: AVX2, FMA and F16C were detected above.
                            unsafe { scores_f16_avx2(q, cache, offs, hd, out) }
                        } else {
                            scores_by_rows(&Self::detect(), q, cache, offs, hd, out)
                        }
                    },
                    weighted_rows_f16: |p, cache, offs, hd, o| {
                        if hd.is_multiple_of(32) {
                            // SAFETY: AVX2, FMA and F16C were detected above.
                            unsafe { weighted_rows_f16_avx2(p, cache, offs, hd, o) }
                        } else {
                            weighted_by_rows(&Self::detect(), p, cache, offs, hd, o)
                        }
                    },
                };
            }
        }
        Self::portable()
    }

    /// Plain loops (eight partial sums so the compiler can vectorize the dot product).
    pub(crate) fn portable() -> Self {
        Self {
            dot: |a, b| {
                let mut acc = [0f32; 8];
                let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
                let tail: f32 = ca
                    .remainder()
                    .iter()
                    .zip(cb.remainder())
                    .map(|(x, y)| x * y)
                    .sum();
                for (x, y) in ca.zip(cb) {
                    for i in 0..8 {
                        acc[i] += x[i] * y[i];
                    }
                }
                acc.iter().sum::<f32>() + tail
            },
            axpy: |w, x, y| {
                for (d, s) in y.iter_mut().zip(x) {
                    *d += w * s;
                }
            },
            dots_f16: |q, k, out| {
                let hd = k.len();
                for (o, qh) in out.iter_mut().zip(q.chunks_exact(hd)) {
                    *o = qh.iter().zip(k).map(|(a, b)| a * b.to_f32()).sum();
                }
            },
            axpys_f16: |p, v, o| {
                let hd = v.len();
                for (w, oh) in p.iter().zip(o.chunks_exact_mut(hd)) {
                    for (d, x) in oh.iter_mut().zip(v) {
                        *d += w * x.to_f32();
                    }
                }
            },
            scores_f16: |q, cache, offs, hd, out| {
                scores_by_rows(&Self::portable(), q, cache, offs, hd, out)
            },
            weighted_rows_f16: |p, cache, offs, hd, o| {
                weighted_by_rows(&Self::portable(), p, cache, offs, hd, o)
            },
        }
    }
}

/// Checks that every row `offs[j]..offs[j] + hd` lies inside `cache` (what the raw loads below rely on).
#[cfg(target_arch = "x86_64")]
fn check_rows(cache: &[half::f16], offs: &[usize], hd: usize) {
    assert!(
        offs.iter()
            .all(|&o| o.checked_add(hd).is_some_and(|e| e <= cache.len())),
        "KV row outside the cache"
    );
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn scores_f16_avx2(
    q: &[f32],
    cache: &[half::f16],
    offs: &[usize],
    hd: usize,
    out: &mut [f32],
) {
    let g = q.len() / hd;
    check_rows(cache, offs, hd);
    assert!(out.len() >= offs.len() * g, "scores_f16: output too short");
    let mut h0 = 0;
    while h0 < g {
        let gs = (g - h0).min(4);
        // SAFETY (all three): rows checked above, `q` holds heads h0..h0+gs, `out` checked above.
        unsafe {
            match gs {
                4 => scores_heads::<4>(q, h0, g, cache, offs, hd, out),
                3 => scores_heads::<3>(q, h0, g, cache, offs, hd, out),
                2 => scores_heads::<2>(q, h0, g, cache, offs, hd, out),
                _ => scores_heads::<1>(q, h0, g, cache, offs, hd, out),
            }
        }
        h0 += gs;
    }
}

/// Heads `h0..h0+G` against every row: each key chunk is widened once and used by all `G` heads.
///
/// # Safety
/// AVX2+FMA+F16C; `hd % 8 == 0`; every row inside `cache`; `q.len() >= (h0+G)·hd`; `out.len() >= offs.len()·g`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn scores_heads<const G: usize>(
    q: &[f32],
    h0: usize,
    g: usize,
    cache: &[half::f16],
    offs: &[usize],
    hd: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let qp = q.as_ptr();
    for (j, &off) in offs.iter().enumerate() {
        let mut acc = [_mm256_setzero_ps(); G];
        for c in (0..hd).step_by(8) {
            // SAFETY: `off + c + 8 <= off + hd <= cache.len()`; `(h0 + i)·hd + c + 8 <= q.len()`.
            unsafe {
                let kv = _mm256_cvtph_ps(_mm_loadu_si128(cache.as_ptr().add(off + c).cast()));
                for (i, a) in acc.iter_mut().enumerate() {
                    *a = _mm256_fmadd_ps(_mm256_loadu_ps(qp.add((h0 + i) * hd + c)), kv, *a);
                }
            }
        }
        for (i, a) in acc.iter().enumerate() {
            out[j * g + h0 + i] = super::hsum(*a);
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn weighted_rows_f16_avx2(
    p: &[f32],
    cache: &[half::f16],
    offs: &[usize],
    hd: usize,
    o: &mut [f32],
) {
    let g = o.len() / hd;
    check_rows(cache, offs, hd);
    assert!(
        p.len() >= offs.len() * g,
        "weighted_rows_f16: too few weights"
    );
    let mut h0 = 0;
    while h0 < g {
        let gs = (g - h0).min(3);
        for c0 in (0..hd).step_by(32) {
            // SAFETY (all three): rows checked above; `p` and `o` lengths checked / by construction.
            unsafe {
                match gs {
                    3 => weighted_heads::<3>(p, h0, g, cache, offs, c0, hd, o),
                    2 => weighted_heads::<2>(p, h0, g, cache, offs, c0, hd, o),
                    _ => weighted_heads::<1>(p, h0, g, cache, offs, c0, hd, o),
                }
            }
        }
        h0 += gs;
    }
}

/// Dims `c0..c0+32` of heads `h0..h0+G`, accumulated in registers over every row (3 × 4 accumulators).
///
/// # Safety
/// AVX2+FMA+F16C; `c0 + 32 <= hd`; every row inside `cache`; `p.len() >= offs.len()·g`; `o.len() = g·hd`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[allow(clippy::too_many_arguments)]
unsafe fn weighted_heads<const G: usize>(
    p: &[f32],
    h0: usize,
    g: usize,
    cache: &[half::f16],
    offs: &[usize],
    c0: usize,
    hd: usize,
    o: &mut [f32],
) {
    use std::arch::x86_64::*;
    let mut acc = [[_mm256_setzero_ps(); 4]; G];
    for (j, &off) in offs.iter().enumerate() {
        // SAFETY: `off + c0 + 32 <= off + hd <= cache.len()`.
        let v = [0, 8, 16, 24].map(|k| unsafe {
            _mm256_cvtph_ps(_mm_loadu_si128(cache.as_ptr().add(off + c0 + k).cast()))
        });
        for (i, a) in acc.iter_mut().enumerate() {
            // SAFETY: `j·g + h0 + i < offs.len()·g <= p.len()`.
            let w = _mm256_set1_ps(unsafe { *p.get_unchecked(j * g + h0 + i) });
            for k in 0..4 {
                a[k] = _mm256_fmadd_ps(w, v[k], a[k]);
            }
        }
    }
    for (i, a) in acc.iter().enumerate() {
        for (k, ak) in a.iter().enumerate() {
            let at = (h0 + i) * hd + c0 + 8 * k;
            // SAFETY: `at + 8 <= (h0 + G)·hd <= g·hd = o.len()`.
            unsafe {
                let dst = o.as_mut_ptr().add(at);
                _mm256_storeu_ps(dst, _mm256_add_ps(_mm256_loadu_ps(dst), *ak));
            }
        }
    }
}

/// Query heads per register pass of [`dots_f16_avx2`] / [`axpys_f16_avx2`].
#[cfg(target_arch = "x86_64")]
const HEADS: usize = 8;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dots_f16_avx2(q: &[f32], k: &[half::f16], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let hd = k.len();
    let g = out.len();
    assert!(
        q.len() >= g * hd,
        "dots_f16: {g} heads of {hd} need {} values",
        g * hd
    );
    let body = hd - hd % 8;
    for h0 in (0..g).step_by(HEADS) {
        let gn = HEADS.min(g - h0);
        let mut acc = [_mm256_setzero_ps(); HEADS];
        for c in (0..body).step_by(8) {
            // SAFETY: `c + 8 <= hd = k.len()`: eight f16 (16 bytes) read from `k`.
            let kv = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(k.as_ptr().add(c).cast())) };
            for (i, a) in acc.iter_mut().enumerate().take(gn) {
                // SAFETY: `(h0 + i) * hd + c + 8 <= g * hd <= q.len()` (asserted above).
                let qv = unsafe { _mm256_loadu_ps(q.as_ptr().add((h0 + i) * hd + c)) };
                *a = _mm256_fmadd_ps(qv, kv, *a);
            }
        }
        for i in 0..gn {
            let qh = &q[(h0 + i) * hd..(h0 + i + 1) * hd];
            let tail: f32 = (body..hd).map(|c| qh[c] * k[c].to_f32()).sum();
            out[h0 + i] = hsum(acc[i]) + tail;
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn axpys_f16_avx2(p: &[f32], v: &[half::f16], o: &mut [f32]) {
    use std::arch::x86_64::*;
    let hd = v.len();
    let g = p.len();
    assert!(
        o.len() >= g * hd,
        "axpys_f16: {g} heads of {hd} need {} values",
        g * hd
    );
    let body = hd - hd % 8;
    for c in (0..body).step_by(8) {
        // SAFETY: `c + 8 <= hd = v.len()`: eight f16 (16 bytes) read from `v`.
        let vv = unsafe { _mm256_cvtph_ps(_mm_loadu_si128(v.as_ptr().add(c).cast())) };
        for (i, &w) in p.iter().enumerate() {
            // SAFETY: `i * hd + c + 8 <= g * hd <= o.len()` (asserted above).
            unsafe {
                let dst = o.as_mut_ptr().add(i * hd + c);
                _mm256_storeu_ps(
                    dst,
                    _mm256_fmadd_ps(_mm256_set1_ps(w), vv, _mm256_loadu_ps(dst)),
                );
            }
        }
    }
    for (i, &w) in p.iter().enumerate() {
        for c in body..hd {
            o[i * hd + c] += w * v[c].to_f32();
        }
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = a.len().min(b.len());
    let mut acc0 = _mm256_setzero_ps();
    let mut acc1 = _mm256_setzero_ps();
    let mut i = 0;
    // SAFETY (all loads): `i + 16 <= n` / `i + 8 <= n` bound every 8-lane unaligned load within both slices.
    while i + 16 <= n {
        unsafe {
            acc0 = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.as_ptr().add(i)),
                _mm256_loadu_ps(b.as_ptr().add(i)),
                acc0,
            );
            acc1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.as_ptr().add(i + 8)),
                _mm256_loadu_ps(b.as_ptr().add(i + 8)),
                acc1,
            );
        }
        i += 16;
    }
    while i + 8 <= n {
        unsafe {
            acc0 = _mm256_fmadd_ps(
                _mm256_loadu_ps(a.as_ptr().add(i)),
                _mm256_loadu_ps(b.as_ptr().add(i)),
                acc0,
            );
        }
        i += 8;
    }
    let mut sum = hsum(_mm256_add_ps(acc0, acc1));
    for j in i..n {
        sum += a[j] * b[j];
    }
    sum
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn axpy_f32_avx2(w: f32, x: &[f32], y: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = x.len().min(y.len());
    let wv = _mm256_set1_ps(w);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: `i + 8 <= n` keeps the 8-lane unaligned load and store inside both slices.
        unsafe {
            let yp = y.as_mut_ptr().add(i);
            let r = _mm256_fmadd_ps(wv, _mm256_loadu_ps(x.as_ptr().add(i)), _mm256_loadu_ps(yp));
            _mm256_storeu_ps(yp, r);
        }
        i += 8;
    }
    for j in i..n {
        y[j] += w * x[j];
    }
}
