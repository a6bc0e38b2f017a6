//! Q8_0 weights × Q8_0 activations, with llama.cpp's numerics (the tied LM head of the default model).

use candle_core::{Result, Tensor};

use super::{BlockQ8_1, Isa, for_token_groups, matmul_rows, quantize_rows, tile_token_groups};

/// One Q8_0 weight block: value `j` is `d * qs_j`.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct BlockQ8 {
    pub(super) d: f32,
    pub(super) qs: [i8; 32],
}

const Q8_0_BYTES: usize = 34;

/// A `[rows, cols]` Q8_0 matrix (activations quantized per 32 values, as llama.cpp does, not per 256).
#[derive(Debug, Clone)]
pub struct Q8_0Matrix {
    layout: Layout,
    rows: usize,
    cols: usize,
}

#[derive(Debug, Clone)]
enum Layout {
    /// GGUF's row-major blocks (scalar and AVX2 kernels).
    Blocks(Vec<BlockQ8>),
    /// Eight rows interleaved per block column (VNNI kernel; `rows` a multiple of 8).
    Tiles(Vec<Tile8>),
}

/// Eight rows × one 32-column block for `vpdpbusd` with broadcast activations: lane `i` of `qs[jj]` holds
/// row `i`'s values `4jj..4jj+4` offset to unsigned (`q + 128`); the kernel subtracts `128 · Σ a` exactly.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(32))]
pub(super) struct Tile8 {
    d: [f32; 8],
    qs: [[u8; 32]; 8],
}

impl Q8_0Matrix {
    /// From the raw GGUF bytes of a `[rows, cols]` Q8_0 tensor, laid out for this CPU's kernel.
    pub fn from_bytes(bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        Self::from_bytes_for(Isa::detect(), bytes, rows, cols)
    }

    /// Like [`Q8_0Matrix::from_bytes`], laid out for the kernel of `isa`.
    pub(super) fn from_bytes_for(isa: Isa, bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        if !cols.is_multiple_of(32) {
            candle_core::bail!("Q8_0 matrix with {cols} columns");
        }
        let n = rows * cols / 32;
        if bytes.len() != n * Q8_0_BYTES {
            candle_core::bail!(
                "Q8_0 matrix [{rows}, {cols}] needs {} bytes, got {}",
                n * Q8_0_BYTES,
                bytes.len()
            );
        }
        let blocks: Vec<BlockQ8> = bytes
            .chunks_exact(Q8_0_BYTES)
            .map(|b| {
                let mut qs = [0i8; 32];
                for (q, &byte) in qs.iter_mut().zip(&b[2..]) {
                    *q = byte as i8;
                }
                BlockQ8 {
                    d: half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
                    qs,
                }
            })
            .collect();
        let layout = if isa == Isa::Vnni && rows.is_multiple_of(8) {
            Layout::Tiles(tiles(&blocks, rows, cols / 32))
        } else {
            Layout::Blocks(blocks)
        };
        Ok(Self { layout, rows, cols })
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// `x: [tokens, cols]` (f32, CPU) → `[tokens, rows]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(Isa::detect(), x)
    }

    pub(super) fn forward_with(&self, isa: Isa, x: &Tensor) -> Result<Tensor> {
        let (acts, m) = quantize_rows(x, self.cols, "Q8_0")?;
        let kb = self.cols / 32;
        let act = |t: usize| &acts[t * kb..(t + 1) * kb];
        match &self.layout {
            Layout::Blocks(blocks) => matmul_rows(self.rows, m, 1, x, |row, out| {
                let w = &blocks[row * kb..(row + 1) * kb];
                for_token_groups(
                    m,
                    out,
                    |t, o| {
                        o.copy_from_slice(&dot_n::<8>(isa, w, std::array::from_fn(|i| act(t + i))))
                    },
                    |t, o| {
                        o.copy_from_slice(&dot_n::<4>(isa, w, std::array::from_fn(|i| act(t + i))))
                    },
                    |t, o| *o = dot_n::<1>(isa, w, [act(t)])[0],
                );
            }),
            Layout::Tiles(tiles) => {
                if isa != Isa::Vnni {
                    candle_core::bail!("Q8_0 matrix laid out for VNNI, asked to run with {isa:?}");
                }
                matmul_rows(self.rows, m, 8, x, |r0, out| {
                    let w = &tiles[r0 / 8 * kb..(r0 / 8 + 1) * kb];
                    tile_token_groups(
                        m,
                        out,
                        |t| tile_dot::<8>(w, std::array::from_fn(|i| act(t + i))),
                        |t| tile_dot::<4>(w, std::array::from_fn(|i| act(t + i))),
                        |t| tile_dot::<1>(w, [act(t)]),
                    );
                })
            }
        }
    }
}

/// Interleaves row-major blocks into [`Tile8`]s, row group after row group.
fn tiles(blocks: &[BlockQ8], rows: usize, kb: usize) -> Vec<Tile8> {
    let mut out = Vec::with_capacity(rows / 8 * kb);
    for rg in 0..rows / 8 {
        for b in 0..kb {
            let mut t = Tile8::default();
            for i in 0..8 {
                let blk = &blocks[(rg * 8 + i) * kb + b];
                t.d[i] = blk.d;
                for jj in 0..8 {
                    for c in 0..4 {
                        t.qs[jj][4 * i + c] = (i16::from(blk.qs[4 * jj + c]) + 128) as u8;
                    }
                }
            }
            out.push(t);
        }
    }
    out
}

/// Eight rows (one tile row group) dotted with `N` tokens: `[token][row]`.
fn tile_dot<const N: usize>(w: &[Tile8], a: [&[BlockQ8_1]; N]) -> [[f32; 8]; N] {
    assert!(
        a.iter().all(|a| a.len() == w.len()),
        "Q8_0 dot: block counts differ"
    );
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: tiles are only built when `Isa::Vnni` was detected (AVX2, FMA, AVX-512 VNNI and VL);
        // block counts checked above.
        unsafe { tile_vnni::<N>(w, a) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        unreachable!("Q8_0 tiles are only built on x86_64")
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
unsafe fn tile_vnni<const N: usize>(w: &[Tile8], a: [&[BlockQ8_1]; N]) -> [[f32; 8]; N] {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_ps(); N];
    for (b, tile) in w.iter().enumerate() {
        // SAFETY: each `qs[jj]` is 32 bytes and `d` 8 floats, matching the unaligned 256-bit loads.
        let (qw, dv) = unsafe {
            (
                [0, 1, 2, 3, 4, 5, 6, 7].map(|jj| _mm256_loadu_si256(tile.qs[jj].as_ptr().cast())),
                _mm256_loadu_ps(tile.d.as_ptr()),
            )
        };
        for t in 0..N {
            // SAFETY: the caller guarantees `a[t].len() == w.len()`, so `b` is in bounds.
            let ab = unsafe { a[t].get_unchecked(b) };
            let q: [i32; 8] = std::array::from_fn(|i| {
                i32::from_le_bytes([
                    ab.qs[4 * i] as u8,
                    ab.qs[4 * i + 1] as u8,
                    ab.qs[4 * i + 2] as u8,
                    ab.qs[4 * i + 3] as u8,
                ])
            });
            let mut s0 = _mm256_setzero_si256();
            let mut s1 = _mm256_setzero_si256();
            for jj in 0..4 {
                s0 = _mm256_dpbusd_epi32(s0, qw[jj], _mm256_set1_epi32(q[jj]));
                s1 = _mm256_dpbusd_epi32(s1, qw[4 + jj], _mm256_set1_epi32(q[4 + jj]));
            }
            // Σ (w + 128) a − 128 Σ a = Σ w a, exactly in i32
            let isum = _mm256_sub_epi32(_mm256_add_epi32(s0, s1), _mm256_set1_epi32(128 * ab.sum));
            acc[t] = _mm256_fmadd_ps(
                _mm256_cvtepi32_ps(isum),
                _mm256_mul_ps(dv, _mm256_set1_ps(ab.d)),
                acc[t],
            );
        }
    }
    std::array::from_fn(|t| {
        let mut o = [0f32; 8];
        // SAFETY: `o` holds eight floats, matching the unaligned 256-bit store.
        unsafe { _mm256_storeu_ps(o.as_mut_ptr(), acc[t]) };
        o
    })
}

/// Row `w` dotted with `N` tokens' activations.
pub(super) fn dot_n<const N: usize>(isa: Isa, w: &[BlockQ8], a: [&[BlockQ8_1]; N]) -> [f32; N] {
    assert!(
        a.iter().all(|a| a.len() == w.len()),
        "Q8_0 dot: block counts differ"
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Vnni` is only detected with AVX2, FMA, AVX-512 VNNI and VL; lengths checked above.
        Isa::Vnni => unsafe { dot_vnni::<N>(w, a) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only detected with AVX2 and FMA; lengths checked above.
        Isa::Avx2 => unsafe { dot_avx2::<N>(w, a) },
        _ => a.map(|a| dot_scalar(w, a)),
    }
}

pub(super) fn dot_scalar(w: &[BlockQ8], a: &[BlockQ8_1]) -> f32 {
    let mut acc = 0f32;
    for (w, a) in w.iter().zip(a) {
        let sumi: i32 =
            w.qs.iter()
                .zip(&a.qs)
                .map(|(&x, &y)| i32::from(x) * i32::from(y))
                .sum();
        acc += w.d * a.d * sumi as f32;
    }
    acc
}

// The x86 kernels multiply |w| (u8) by sign(w)·a (i8), the usual trick for u8 × i8 instructions.
macro_rules! q8_0_dot_body {
    ($w:ident, $a:ident, $n:ident, |$aw:ident, $sa:ident| $dot:expr) => {{
        use std::arch::x86_64::*;
        let mut acc = [_mm256_setzero_ps(); $n];
        for (b, wb) in $w.iter().enumerate() {
            // SAFETY: `qs` is 32 bytes, matching the unaligned 256-bit load.
            let qw = unsafe { _mm256_loadu_si256(wb.qs.as_ptr().cast()) };
            let $aw = _mm256_sign_epi8(qw, qw);
            for t in 0..$n {
                // SAFETY: the caller guarantees `a[t].len() == w.len()`, so `b` is in bounds.
                let ab = unsafe { $a[t].get_unchecked(b) };
                // SAFETY: `qs` is 32 bytes, matching the unaligned 256-bit load.
                let qa = unsafe { _mm256_loadu_si256(ab.qs.as_ptr().cast()) };
                let $sa = _mm256_sign_epi8(qa, qw);
                let dot = $dot;
                acc[t] =
                    _mm256_fmadd_ps(_mm256_set1_ps(wb.d * ab.d), _mm256_cvtepi32_ps(dot), acc[t]);
            }
        }
        std::array::from_fn(|t| super::hsum(acc[t]))
    }};
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2<const N: usize>(w: &[BlockQ8], a: [&[BlockQ8_1]; N]) -> [f32; N] {
    let ones = std::arch::x86_64::_mm256_set1_epi16(1);
    // |w| ≤ 127 (GGUF Q8_0 weights are quantized symmetric to ±127), so pair sums fit i16
    q8_0_dot_body!(w, a, N, |aw, sa| _mm256_madd_epi16(
        _mm256_maddubs_epi16(aw, sa),
        ones
    ))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
unsafe fn dot_vnni<const N: usize>(w: &[BlockQ8], a: [&[BlockQ8_1]; N]) -> [f32; N] {
    q8_0_dot_body!(w, a, N, |aw, sa| _mm256_dpbusd_epi32(
        _mm256_setzero_si256(),
        aw,
        sa
    ))
}
