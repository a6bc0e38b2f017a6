//! Q4_1 weights × Q8_1 activations, with llama.cpp's numerics.

use candle_core::{Result, Tensor};

use super::{BlockQ8_1, Isa, for_token_groups, matmul_rows, quantize_rows, tile_token_groups};

/// One Q4_1 weight block with its scales widened to f32: value `j` is `d * q_j + m`, `q_j` the low nibble
/// of `qs[j]` for `j < 16` and the high nibble of `qs[j - 16]` otherwise (GGML's layout).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct BlockQ4_1 {
    pub(super) d: f32,
    pub(super) m: f32,
    pub(super) qs: [u8; 16],
}

const Q4_1_BYTES: usize = 20;

/// A `[rows, cols]` Q4_1 matrix multiplied exactly as llama.cpp does it (activations quantized to Q8_1
/// per 32 values, integer dot products). Re-encoding the weights as Q8_0 instead would change them (and
/// measurably moved greedy outputs away from llama.cpp's).
#[derive(Debug, Clone)]
pub struct Q4_1Matrix {
    layout: Layout,
    rows: usize,
    cols: usize,
}

#[derive(Debug, Clone)]
enum Layout {
    /// GGUF's row-major blocks (scalar and AVX2 kernels).
    Blocks(Vec<BlockQ4_1>),
    /// Eight rows interleaved per block column (VNNI kernel; `rows` a multiple of 8).
    Tiles(Vec<Tile8>),
}

/// Eight rows × one 32-column block, laid out for `vpdpbusd` with broadcast activations: lane `i` of
/// `qs[jj]` holds bytes `4jj..4jj+4` of row `i`'s packed nibbles, so `qs[jj] & 0xF` are that row's values
/// `4jj..4jj+4` and `qs[jj] >> 4` its values `16+4jj..16+4jj+4`. Every lane of the result is one row's
/// dot product: no horizontal sums, and the unpacked block is shared by all tokens of a group.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(32))]
pub(super) struct Tile8 {
    d: [f32; 8],
    m: [f32; 8],
    qs: [[u8; 32]; 4],
}

impl Q4_1Matrix {
    /// From the raw GGUF bytes of a `[rows, cols]` Q4_1 tensor, laid out for this CPU's kernel.
    pub fn from_bytes(bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        Self::from_bytes_for(Isa::detect(), bytes, rows, cols)
    }

    /// Like [`Q4_1Matrix::from_bytes`], laid out for the kernel of `isa`.
    pub(super) fn from_bytes_for(isa: Isa, bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        if !cols.is_multiple_of(32) {
            candle_core::bail!("Q4_1 matrix with {cols} columns");
        }
        let n = rows * cols / 32;
        if bytes.len() != n * Q4_1_BYTES {
            candle_core::bail!(
                "Q4_1 matrix [{rows}, {cols}] needs {} bytes, got {}",
                n * Q4_1_BYTES,
                bytes.len()
            );
        }
        let blocks: Vec<BlockQ4_1> = bytes
            .chunks_exact(Q4_1_BYTES)
            .map(|b| {
                let mut qs = [0u8; 16];
                qs.copy_from_slice(&b[4..20]);
                BlockQ4_1 {
                    d: half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
                    m: half::f16::from_le_bytes([b[2], b[3]]).to_f32(),
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
        let (acts, m) = quantize_rows(x, self.cols, "Q4_1")?;
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
                    candle_core::bail!("Q4_1 matrix laid out for VNNI, asked to run with {isa:?}");
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
fn tiles(blocks: &[BlockQ4_1], rows: usize, kb: usize) -> Vec<Tile8> {
    let mut out = Vec::with_capacity(rows / 8 * kb);
    for rg in 0..rows / 8 {
        for b in 0..kb {
            let mut t = Tile8::default();
            for i in 0..8 {
                let blk = &blocks[(rg * 8 + i) * kb + b];
                t.d[i] = blk.d;
                t.m[i] = blk.m;
                for jj in 0..4 {
                    t.qs[jj][4 * i..4 * i + 4].copy_from_slice(&blk.qs[4 * jj..4 * jj + 4]);
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
        "Q4_1 dot: block counts differ"
    );
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: tiles are only built when `Isa::Vnni` was detected (AVX2, FMA, AVX-512 VNNI and VL);
        // block counts checked above.
        unsafe { tile_vnni::<N>(w, a) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        unreachable!("Q4_1 tiles are only built on x86_64")
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
unsafe fn tile_vnni<const N: usize>(w: &[Tile8], a: [&[BlockQ8_1]; N]) -> [[f32; 8]; N] {
    use std::arch::x86_64::*;
    let mask = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); N];
    for (b, tile) in w.iter().enumerate() {
        // SAFETY: each `qs[jj]` is 32 bytes and `d`/`m` 8 floats, matching the unaligned 256-bit loads.
        let (packed, dv, mv) = unsafe {
            (
                [0, 1, 2, 3].map(|jj| _mm256_loadu_si256(tile.qs[jj].as_ptr().cast())),
                _mm256_loadu_ps(tile.d.as_ptr()),
                _mm256_loadu_ps(tile.m.as_ptr()),
            )
        };
        let lo = packed.map(|p| _mm256_and_si256(p, mask));
        let hi = packed.map(|p| _mm256_and_si256(_mm256_srli_epi16(p, 4), mask));
        for t in 0..N {
            // SAFETY: the caller guarantees `a[t].len() == w.len()`, so `b` is in bounds.
            let ab = unsafe { a[t].get_unchecked(b) };
            // the activation block as eight little-endian dwords of four i8 each
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
                s0 = _mm256_dpbusd_epi32(s0, lo[jj], _mm256_set1_epi32(q[jj]));
                s1 = _mm256_dpbusd_epi32(s1, hi[jj], _mm256_set1_epi32(q[4 + jj]));
            }
            let isum = _mm256_cvtepi32_ps(_mm256_add_epi32(s0, s1));
            acc[t] = _mm256_fmadd_ps(isum, _mm256_mul_ps(dv, _mm256_set1_ps(ab.d)), acc[t]);
            acc[t] = _mm256_fmadd_ps(mv, _mm256_set1_ps(ab.s), acc[t]);
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
pub(super) fn dot_n<const N: usize>(isa: Isa, w: &[BlockQ4_1], a: [&[BlockQ8_1]; N]) -> [f32; N] {
    assert!(
        a.iter().all(|a| a.len() == w.len()),
        "Q4_1 dot: block counts differ"
    );
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Vnni` is only detected with AVX2, FMA, AVX-512 VNNI and VL; lengths checked above.
        Isa::Vnni => unsafe { dot_x86::<N, true>(w, a) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `Isa::Avx2` is only detected with AVX2 and FMA; lengths checked above.
        Isa::Avx2 => unsafe { dot_x86::<N, false>(w, a) },
        _ => a.map(|a| dot_scalar(w, a)),
    }
}

pub(super) fn dot_scalar(w: &[BlockQ4_1], a: &[BlockQ8_1]) -> f32 {
    let mut acc = 0f32;
    for (w, a) in w.iter().zip(a) {
        let mut sumi = 0i32;
        for j in 0..16 {
            let lo = i32::from(w.qs[j] & 0x0F);
            let hi = i32::from(w.qs[j] >> 4);
            sumi += lo * i32::from(a.qs[j]) + hi * i32::from(a.qs[j + 16]);
        }
        acc += w.d * a.d * sumi as f32 + w.m * a.s;
    }
    acc
}

/// # Safety
/// The CPU must have AVX2 and FMA, and AVX-512 VNNI + VL when `VNNI`; every `a[t]` has `w.len()` blocks.
#[cfg(target_arch = "x86_64")]
unsafe fn dot_x86<const N: usize, const VNNI: bool>(
    w: &[BlockQ4_1],
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

macro_rules! q4_1_dot_body {
    ($w:ident, $a:ident, $n:ident, |$bx:ident, $qa:ident| $dot:expr) => {{
        use std::arch::x86_64::*;
        let mask = _mm_set1_epi8(0x0F);
        let mut acc = [_mm256_setzero_ps(); $n];
        let mut summs = [0f32; $n];
        for (b, wb) in $w.iter().enumerate() {
            // SAFETY: `qs` is 16 bytes, matching the unaligned 128-bit load.
            let qw = unsafe { _mm_loadu_si128(wb.qs.as_ptr().cast()) };
            let lo = _mm_and_si128(qw, mask);
            let hi = _mm_and_si128(_mm_srli_epi16(qw, 4), mask);
            let $bx = _mm256_set_m128i(hi, lo);
            for t in 0..$n {
                // SAFETY: the caller guarantees `a[t].len() == w.len()`, so `b` is in bounds.
                let ab = unsafe { $a[t].get_unchecked(b) };
                // SAFETY: `qs` is 32 bytes, matching the unaligned 256-bit load.
                let $qa = unsafe { _mm256_loadu_si256(ab.qs.as_ptr().cast()) };
                let dot = $dot;
                acc[t] =
                    _mm256_fmadd_ps(_mm256_set1_ps(wb.d * ab.d), _mm256_cvtepi32_ps(dot), acc[t]);
                summs[t] += wb.m * ab.s;
            }
        }
        std::array::from_fn(|t| super::hsum(acc[t]) + summs[t])
    }};
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_avx2<const N: usize>(w: &[BlockQ4_1], a: [&[BlockQ8_1]; N]) -> [f32; N] {
    let ones = std::arch::x86_64::_mm256_set1_epi16(1);
    // u8 (0..15) × i8 pairs summed to i16 (|·| ≤ 2·15·128, no saturation), then to i32
    q4_1_dot_body!(w, a, N, |bx, qa| _mm256_madd_epi16(
        _mm256_maddubs_epi16(bx, qa),
        ones
    ))
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
unsafe fn dot_vnni<const N: usize>(w: &[BlockQ4_1], a: [&[BlockQ8_1]; N]) -> [f32; N] {
    // four u8 × i8 products summed straight into each i32 lane
    q4_1_dot_body!(w, a, N, |bx, qa| _mm256_dpbusd_epi32(
        _mm256_setzero_si256(),
        bx,
        qa
    ))
}
