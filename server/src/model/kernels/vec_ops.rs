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
    /// Widens IEEE half floats to f32 (`dst.len() == src.len()`).
    pub f16_to_f32: fn(&[half::f16], &mut [f32]),
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
                    f16_to_f32: |s, d| {
                        // SAFETY: F16C and AVX were detected above.
                        unsafe { f16_to_f32_f16c(s, d) }
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
            f16_to_f32: |s, d| {
                for (d, s) in d.iter_mut().zip(s) {
                    *d = s.to_f32();
                }
            },
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

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx,f16c")]
unsafe fn f16_to_f32_f16c(src: &[half::f16], dst: &mut [f32]) {
    use std::arch::x86_64::*;
    let n = src.len().min(dst.len());
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: `i + 8 <= n`: eight f16 (16 bytes) read from `src`, eight f32 written to `dst`.
        unsafe {
            let h = _mm_loadu_si128(src.as_ptr().add(i).cast());
            _mm256_storeu_ps(dst.as_mut_ptr().add(i), _mm256_cvtph_ps(h));
        }
        i += 8;
    }
    for j in i..n {
        dst[j] = src[j].to_f32();
    }
}
