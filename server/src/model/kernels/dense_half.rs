//! F16 and BF16 weights kept in half precision (the file's own bytes: resident size ≈ file size), multiplied
//! by a register-blocked kernel that widens each weight vector in registers (F16C / AVX-512 conversions, a
//! 16-bit shift for BF16) and accumulates `w · x` in f32 with FMA. Activations stay f32: nothing is rounded
//! but the stored weights, so the result is the f32 math on the file's values (llama.cpp rounds activations
//! to the weight's half type first).
//!
//! BF16 weights on CPUs with AVX-512 BF16 take llama.cpp's route instead: activations rounded to bf16 once
//! per matmul (nearest-even) and `vdpbf16ps` (pairs of bf16 products into f32), twice the FMA path's rate.
//!
//! A tile is `R` rows × `N` tokens: each loaded weight vector serves `N` tokens and each activation vector
//! `R` rows, with `R · N` independent accumulators. Every output element is one accumulator run over the
//! columns in order and reduced the same way, whatever the tile: a token gets the same bits alone or in a
//! batch. Rows are stored in groups of four interleaved per 32 columns, so a tile reads one sequential
//! stream (four separate row streams decoded at about half the bandwidth on the 1B shape), in memory
//! advised to transparent huge pages.

use std::sync::OnceLock;

use candle_core::{Result, Tensor};

use super::{huge_page_vec, matmul_rows};

/// Which half-precision format the weights are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HalfType {
    /// IEEE binary16.
    F16,
    /// bfloat16 (the top 16 bits of an f32).
    Bf16,
}

impl HalfType {
    pub fn name(self) -> &'static str {
        match self {
            Self::F16 => "F16",
            Self::Bf16 => "BF16",
        }
    }

    fn widen(self, v: u16) -> f32 {
        match self {
            Self::F16 => half::f16::from_bits(v).to_f32(),
            Self::Bf16 => f32::from_bits(u32::from(v) << 16),
        }
    }
}

/// The instruction set the half kernel runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HalfIsa {
    Scalar,
    /// AVX2 + FMA + F16C (8 lanes).
    Avx2,
    /// AVX-512F + VL (16 lanes).
    Avx512,
    /// AVX-512F + VL + BF16: BF16 weights by `vdpbf16ps` on bf16-rounded activations; F16 as `Avx512`.
    Avx512Bf16,
}

impl HalfIsa {
    /// The fastest this CPU runs, detected once. `LLAMA_SERVER_SCALAR_KERNELS` forces the portable code,
    /// `LLAMA_SERVER_NO_AVX512` the AVX2 kernel.
    pub fn detect() -> Self {
        static ISA: OnceLock<HalfIsa> = OnceLock::new();
        *ISA.get_or_init(|| {
            let off = |var: &str| std::env::var_os(var).is_some();
            if off("LLAMA_SERVER_SCALAR_KERNELS") {
                return Self::Scalar;
            }
            Self::available()
                .into_iter()
                .rev()
                .find(|isa| match isa {
                    Self::Avx512 | Self::Avx512Bf16 => !off("LLAMA_SERVER_NO_AVX512"),
                    _ => true,
                })
                .unwrap_or(Self::Scalar)
        })
    }

    /// Every instruction set this CPU can run the kernel with, the portable one first.
    pub fn available() -> Vec<Self> {
        let mut v = vec![Self::Scalar];
        #[cfg(target_arch = "x86_64")]
        {
            if is_x86_feature_detected!("avx2")
                && is_x86_feature_detected!("fma")
                && is_x86_feature_detected!("f16c")
            {
                v.push(Self::Avx2);
                if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl") {
                    v.push(Self::Avx512);
                    if is_x86_feature_detected!("avx512bf16") {
                        v.push(Self::Avx512Bf16);
                    }
                }
            }
        }
        v
    }
}

/// A `[rows, cols]` matrix of F16 or BF16 values as stored in the GGUF file, rows interleaved (see [`dot`]).
#[derive(Debug, Clone)]
pub struct HalfMatrix {
    w: Vec<u16>,
    rows: usize,
    cols: usize,
    kind: HalfType,
    /// BF16 weights may round the activations to bf16 for `vdpbf16ps` (where the CPU has it).
    bf16_activations: bool,
}

/// Rows per tile when `rows` allows it (a multiple of four), else one.
const ROWS: usize = 4;
/// Columns per interleaved block of a row group.
const BLOCK: usize = 32;

impl HalfMatrix {
    /// From the raw little-endian GGUF bytes of a `[rows, cols]` tensor (`cols` a multiple of 32).
    pub fn from_bytes(kind: HalfType, bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        if !cols.is_multiple_of(32) {
            candle_core::bail!("{} matrix with {cols} columns", kind.name());
        }
        if bytes.len() != rows * cols * 2 {
            candle_core::bail!(
                "{} matrix [{rows}, {cols}] needs {} bytes, got {}",
                kind.name(),
                rows * cols * 2,
                bytes.len()
            );
        }
        let group = group_of(rows);
        let value = |r: usize, c: usize| {
            let i = 2 * (r * cols + c);
            u16::from_le_bytes([bytes[i], bytes[i + 1]])
        };
        // Each group of rows interleaved per 32 columns (row-major when `group` is 1): a tile's rows are
        // one sequential stream.
        let mut w = huge_page_vec(rows * cols);
        for g in (0..rows).step_by(group) {
            for c0 in (0..cols).step_by(BLOCK) {
                for r in g..g + group {
                    w.extend((c0..c0 + BLOCK).map(|c| value(r, c)));
                }
            }
        }
        Ok(Self {
            w,
            rows,
            cols,
            kind,
            bf16_activations: true,
        })
    }

    /// Whether BF16 weights may multiply bf16-rounded activations on AVX-512 BF16 CPUs (the default) or
    /// always take f32 ones.
    pub fn with_bf16_activations(mut self, on: bool) -> Self {
        self.bf16_activations = on;
        self
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The stored format.
    pub fn kind(&self) -> HalfType {
        self.kind
    }

    /// Bytes held (the weights themselves).
    pub fn bytes(&self) -> usize {
        self.w.len() * 2
    }

    /// Rows `ids` widened to f32, one after the other (embedding lookups from a tied LM head).
    pub fn gather(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let (k, group) = (self.cols, group_of(self.rows));
        let mut out = Vec::with_capacity(ids.len() * k);
        for &id in ids {
            let r = id as usize;
            if r >= self.rows {
                candle_core::bail!("token id {id} is outside the vocabulary ({})", self.rows);
            }
            let (g, i) = (r / group * group, r % group);
            let rows = &self.w[g * k..][..group * k];
            out.extend((0..k).map(|c| self.kind.widen(rows[index(group, c, i)])));
        }
        Ok(out)
    }

    /// `x: [tokens, cols]` (f32, CPU) → `[tokens, rows]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(HalfIsa::detect(), x)
    }

    pub(super) fn forward_with(&self, isa: HalfIsa, x: &Tensor) -> Result<Tensor> {
        let (m, k) = x.dims2()?;
        if k != self.cols {
            candle_core::bail!(
                "{} matmul: input has {k} features, weight {}",
                self.kind.name(),
                self.cols
            );
        }
        let lhs = x.flatten_all()?.to_vec1::<f32>()?;
        let group = [16, ROWS, 1]
            .into_iter()
            .find(|g| self.rows.is_multiple_of(*g))
            .unwrap_or(1);
        // Tokens per block: one block's activations (about 128 KiB, at least 16 tokens) and the chunk's rows
        // stay in L2 while every row group of the chunk runs over them (streaming all of a long prompt's
        // activations past each row group instead ran at two thirds of the speed; blocks of 4 tokens for the
        // 8192-wide down projection scaled 1.5× from one thread to two, blocks of 16 1.9×). The block never
        // changes a result: each output is the same accumulator run whatever tile it lands in.
        let block = (32768 / k).clamp(16, 64) / 4 * 4;
        let bf16_dot =
            isa == HalfIsa::Avx512Bf16 && self.kind == HalfType::Bf16 && self.bf16_activations;
        let ctx = Ctx {
            isa,
            kind: self.kind,
            k,
            lhs_bf16: if bf16_dot {
                round_to_bf16(&lhs)
            } else {
                Vec::new()
            },
            lhs: &lhs,
        };
        matmul_rows(self.rows, m, group, x, |r0, out| {
            for t0 in (0..m).step_by(block) {
                let tokens = t0..(t0 + block).min(m);
                if group >= ROWS {
                    for g0 in (0..group).step_by(ROWS) {
                        let w = &self.w[(r0 + g0) * k..][..ROWS * k];
                        ctx.tiles::<ROWS>(w, tokens.clone(), g0, group, out);
                    }
                } else {
                    ctx.tiles::<1>(&self.w[r0 * k..][..k], tokens.clone(), 0, group, out);
                }
            }
        })
    }
}

/// `x` rounded to bf16, nearest-even (what `vcvtne2ps2bf16` does; NaN stays NaN).
fn round_to_bf16(x: &[f32]) -> Vec<u16> {
    x.iter()
        .map(|v| {
            let b = v.to_bits();
            if v.is_nan() {
                ((b >> 16) | 0x40) as u16
            } else {
                ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) as u16
            }
        })
        .collect()
}

/// What every tile of one matmul shares.
struct Ctx<'a> {
    isa: HalfIsa,
    kind: HalfType,
    k: usize,
    lhs: &'a [f32],
    /// The activations rounded to bf16 (BF16 weights on `Avx512Bf16` only; empty otherwise).
    lhs_bf16: Vec<u16>,
}

impl Ctx<'_> {
    /// Rows `g0..g0 + R` of a `group`-row chunk for `tokens`, in tiles of `N` tokens (6 then 4 with AVX-512:
    /// 24 accumulators, 2.4 FMAs per load, ran the 1B F16 prefill 1.15× and BF16 1.05× the 4 × 4 tiles; 2
    /// with AVX2, then 1), writing `out[t * group + g0 + i]` (token `t`, row `g0 + i`).
    #[allow(clippy::int_plus_one)] // `t + N <= end` reads the same for every tile width
    fn tiles<const R: usize>(
        &self,
        w: &[u16],
        tokens: std::ops::Range<usize>,
        g0: usize,
        group: usize,
        out: &mut [f32],
    ) {
        let tok = |t: usize| &self.lhs[t * self.k..][..self.k];
        let mut put = |t: usize, vals: &[[f32; R]]| {
            for (j, v) in vals.iter().enumerate() {
                out[(t + j) * group + g0..][..R].copy_from_slice(v);
            }
        };
        let tok_bf16 = |t: usize| &self.lhs_bf16[t * self.k..][..self.k];
        let mut t = tokens.start;
        macro_rules! tiles_of {
            ($n:literal) => {
                while t + $n <= tokens.end {
                    let vals = if self.lhs_bf16.is_empty() {
                        let x: [&[f32]; $n] = std::array::from_fn(|j| tok(t + j));
                        dot::<R, $n>(self.isa, self.kind, w, x)
                    } else {
                        dot_bf16::<R, $n>(self.isa, w, std::array::from_fn(|j| tok_bf16(t + j)))
                    };
                    put(t, &vals);
                    t += $n;
                }
            };
        }
        match self.isa {
            HalfIsa::Avx512 | HalfIsa::Avx512Bf16 => {
                tiles_of!(6);
                tiles_of!(4);
            }
            HalfIsa::Avx2 => tiles_of!(2),
            HalfIsa::Scalar => {}
        }
        tiles_of!(1);
    }
}

/// `R` weight rows (interleaved per 32 columns: column `c` of row `i` at `(c / 32) · 32R + 32i + c % 32`)
/// dotted with `N` tokens (`[token][row]`). Panics unless every token has `k` values, a multiple of 32, and
/// `w` has `R · k`.
fn dot<const R: usize, const N: usize>(
    isa: HalfIsa,
    kind: HalfType,
    w: &[u16],
    x: [&[f32]; N],
) -> [[f32; R]; N] {
    let k = x[0].len();
    assert!(
        k.is_multiple_of(32) && w.len() == R * k && x.iter().all(|t| t.len() == k),
        "half dot: lengths differ"
    );
    match (isa, kind) {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `HalfIsa::Avx512` is only detected with AVX-512F and VL; lengths checked above.
        (HalfIsa::Avx512 | HalfIsa::Avx512Bf16, HalfType::F16) => unsafe {
            dot_avx512::<R, N, false>(w, x)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (HalfIsa::Avx512 | HalfIsa::Avx512Bf16, HalfType::Bf16) => unsafe {
            dot_avx512::<R, N, true>(w, x)
        },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `HalfIsa::Avx2` is only detected with AVX2, FMA and F16C; lengths checked above.
        (HalfIsa::Avx2, HalfType::F16) => unsafe { dot_avx2::<R, N, false>(w, x) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above.
        (HalfIsa::Avx2, HalfType::Bf16) => unsafe { dot_avx2::<R, N, true>(w, x) },
        _ => std::array::from_fn(|t| {
            std::array::from_fn(|i| {
                let mut lanes = [0f32; 8];
                for (c, xc) in x[t].chunks_exact(8).enumerate() {
                    let wc = &w[at::<R>(8 * c, i)..][..8];
                    for l in 0..8 {
                        lanes[l] += kind.widen(wc[l]) * xc[l];
                    }
                }
                lanes.iter().sum()
            })
        }),
    }
}

/// Rows per interleaved group of a matrix of `rows` rows.
fn group_of(rows: usize) -> usize {
    if rows.is_multiple_of(ROWS) { ROWS } else { 1 }
}

/// Where column `c` of row `i` of a `group`-row group is stored, from the group's start.
#[inline(always)]
fn index(group: usize, c: usize, i: usize) -> usize {
    (c / BLOCK) * BLOCK * group + i * BLOCK + c % BLOCK
}

/// [`index`] for a tile of `R` rows.
#[inline(always)]
fn at<const R: usize>(c: usize, i: usize) -> usize {
    index(R, c, i)
}

/// `R` BF16 weight rows dotted with `N` tokens' bf16-rounded activations by `vdpbf16ps`. Panics as [`dot`].
fn dot_bf16<const R: usize, const N: usize>(
    isa: HalfIsa,
    w: &[u16],
    x: [&[u16]; N],
) -> [[f32; R]; N] {
    let k = x[0].len();
    assert!(
        k.is_multiple_of(32) && w.len() == R * k && x.iter().all(|t| t.len() == k),
        "half dot: lengths differ"
    );
    assert_eq!(
        isa,
        HalfIsa::Avx512Bf16,
        "bf16 activations need AVX-512 BF16"
    );
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: `HalfIsa::Avx512Bf16` is only detected with AVX-512F, VL and BF16; lengths checked above.
        unsafe { dot_avx512_bf16::<R, N>(w, x) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        unreachable!("AVX-512 BF16 is x86_64 only")
    }
}

/// # Safety
/// AVX-512F, VL and BF16; every token has `k` values, a multiple of 32, and `w` has `R · k`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bf16")]
unsafe fn dot_avx512_bf16<const R: usize, const N: usize>(
    w: &[u16],
    x: [&[u16]; N],
) -> [[f32; R]; N] {
    use std::arch::x86_64::*;
    let k = x[0].len();
    let mut acc = [[_mm512_setzero_ps(); R]; N];
    let mut c = 0;
    while c < k {
        let wv: [__m512bh; R] = std::array::from_fn(|i| {
            // SAFETY: `c + 32 <= k` (a multiple of 32) and `w.len() == R * k`: row `i`'s 32 values of this
            // column block, a 512-bit load; `__m512bh` is 32 bf16 bit patterns, like the 16-bit integers.
            unsafe {
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                    w.as_ptr().add(at::<R>(c, i)).cast(),
                ))
            }
        });
        for t in 0..N {
            // SAFETY: `c + 32 <= k == x[t].len()`: a 512-bit load of 32 bf16 values.
            let xv = unsafe {
                std::mem::transmute::<__m512i, __m512bh>(_mm512_loadu_si512(
                    x[t].as_ptr().add(c).cast(),
                ))
            };
            for i in 0..R {
                acc[t][i] = _mm512_dpbf16_ps(acc[t][i], wv[i], xv);
            }
        }
        c += 32;
    }
    std::array::from_fn(|t| std::array::from_fn(|i| _mm512_reduce_add_ps(acc[t][i])))
}

/// # Safety
/// AVX-512F and VL (VL gives the register allocator all 32 vector registers for 256-bit loads: without it
/// a 4 × 4 tile spilled its accumulators); every row and token has the same length, a multiple of 16.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn dot_avx512<const R: usize, const N: usize, const BF16: bool>(
    w: &[u16],
    x: [&[f32]; N],
) -> [[f32; R]; N] {
    use std::arch::x86_64::*;
    let k = x[0].len();
    let mut acc = [[_mm512_setzero_ps(); R]; N];
    let mut c = 0;
    while c < k {
        let wv: [__m512; R] = std::array::from_fn(|i| {
            // SAFETY: `c + 16 <= k` (a multiple of 16) and `w.len() == R * k`: row `i`'s 16 values of this
            // column block, a 256-bit load.
            let h = unsafe { _mm256_loadu_si256(w.as_ptr().add(at::<R>(c, i)).cast()) };
            if BF16 {
                _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(h)))
            } else {
                _mm512_cvtph_ps(h)
            }
        });
        for t in 0..N {
            // SAFETY: `c + 16 <= k == x[t].len()`: a 512-bit load.
            let xv = unsafe { _mm512_loadu_ps(x[t].as_ptr().add(c)) };
            for i in 0..R {
                acc[t][i] = _mm512_fmadd_ps(wv[i], xv, acc[t][i]);
            }
        }
        c += 16;
    }
    std::array::from_fn(|t| std::array::from_fn(|i| _mm512_reduce_add_ps(acc[t][i])))
}

/// # Safety
/// AVX2, FMA and F16C; every token has `k` values, a multiple of 16, and `w` has `R · k`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_avx2<const R: usize, const N: usize, const BF16: bool>(
    w: &[u16],
    x: [&[f32]; N],
) -> [[f32; R]; N] {
    use std::arch::x86_64::*;
    let k = x[0].len();
    let mut acc = [[_mm256_setzero_ps(); R]; N];
    let mut c = 0;
    while c < k {
        let wv: [__m256; R] = std::array::from_fn(|i| {
            // SAFETY: `c + 8 <= k` (a multiple of 16) and `w.len() == R * k`: eight of row `i`'s values in
            // this column block, a 128-bit load.
            let h = unsafe { _mm_loadu_si128(w.as_ptr().add(at::<R>(c, i)).cast()) };
            if BF16 {
                _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(h)))
            } else {
                _mm256_cvtph_ps(h)
            }
        });
        for t in 0..N {
            // SAFETY: `c + 8 <= k == x[t].len()`: a 256-bit load.
            let xv = unsafe { _mm256_loadu_ps(x[t].as_ptr().add(c)) };
            for i in 0..R {
                acc[t][i] = _mm256_fmadd_ps(wv[i], xv, acc[t][i]);
            }
        }
        c += 8;
    }
    std::array::from_fn(|t| std::array::from_fn(|i| super::hsum(acc[t][i])))
}

#[cfg(test)]
mod tests;
