//! Q4_0 weights × Q8_0 activations, with llama.cpp's numerics: a VNNI tile kernel where the CPU has it,
//! candle's `vec_dot` ([`BlockMatrix`]) otherwise.

use candle_core::quantized::k_quants::BlockQ4_0;
use candle_core::{Result, Tensor};

use super::{BlockMatrix, BlockQ8_1, Isa, matmul_rows, quantize_rows, tile_token_groups};

const Q4_0_BYTES: usize = 18;

/// A `[rows, cols]` Q4_0 matrix (value `j` of a block is `d · (q_j − 8)`, nibbles in GGML's layout).
#[derive(Debug, Clone)]
pub enum Q4_0Matrix {
    /// candle's blocks and SIMD `vec_dot` (CPUs without AVX-512 VNNI, or rows not a multiple of 8).
    Blocks(BlockMatrix<BlockQ4_0>),
    /// Eight rows interleaved per block column (VNNI kernel).
    Tiles {
        tiles: Vec<Tile8>,
        rows: usize,
        cols: usize,
    },
}

/// Eight rows × one 32-column block, laid out like Q4_1's tiles (lane `i` of `qs[jj]` = bytes `4jj..4jj+4`
/// of row `i`'s packed nibbles); the kernel subtracts `8 · Σ a` from each integer dot product exactly.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(32))]
pub struct Tile8 {
    d: [f32; 8],
    qs: [[u8; 32]; 4],
}

impl Q4_0Matrix {
    /// From the raw GGUF bytes of a `[rows, cols]` Q4_0 tensor, laid out for this CPU's kernel.
    pub fn from_bytes(bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        Self::from_bytes_for(Isa::detect(), bytes, rows, cols)
    }

    /// Like [`Q4_0Matrix::from_bytes`], laid out for the kernel of `isa`.
    pub(super) fn from_bytes_for(isa: Isa, bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        if isa != Isa::Vnni || !rows.is_multiple_of(8) {
            return Ok(Self::Blocks(BlockMatrix::from_bytes(bytes, rows, cols)?));
        }
        if !cols.is_multiple_of(32) || bytes.len() != rows * cols / 32 * Q4_0_BYTES {
            candle_core::bail!(
                "Q4_0 matrix [{rows}, {cols}] needs {} bytes, got {}",
                rows * cols / 32 * Q4_0_BYTES,
                bytes.len()
            );
        }
        let kb = cols / 32;
        let block =
            |r: usize, b: usize| &bytes[(r * kb + b) * Q4_0_BYTES..(r * kb + b + 1) * Q4_0_BYTES];
        let mut tiles = Vec::with_capacity(rows / 8 * kb);
        for rg in 0..rows / 8 {
            for b in 0..kb {
                let mut t = Tile8::default();
                for i in 0..8 {
                    let blk = block(rg * 8 + i, b);
                    t.d[i] = half::f16::from_le_bytes([blk[0], blk[1]]).to_f32();
                    for jj in 0..4 {
                        t.qs[jj][4 * i..4 * i + 4]
                            .copy_from_slice(&blk[2 + 4 * jj..2 + 4 * jj + 4]);
                    }
                }
                tiles.push(t);
            }
        }
        Ok(Self::Tiles { tiles, rows, cols })
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        match self {
            Self::Blocks(b) => b.rows(),
            Self::Tiles { rows, .. } => *rows,
        }
    }

    /// `x: [tokens, cols]` (f32, CPU) → `[tokens, rows]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Blocks(b) => b.forward(x),
            Self::Tiles { tiles, rows, cols } => {
                let (acts, m) = quantize_rows(x, *cols, "Q4_0")?;
                let kb = cols / 32;
                let act = |t: usize| &acts[t * kb..(t + 1) * kb];
                matmul_rows(*rows, m, 8, x, |r0, out| {
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

/// Eight rows (one tile row group) dotted with `N` tokens: `[token][row]`.
fn tile_dot<const N: usize>(w: &[Tile8], a: [&[BlockQ8_1]; N]) -> [[f32; 8]; N] {
    assert!(
        a.iter().all(|a| a.len() == w.len()),
        "Q4_0 dot: block counts differ"
    );
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: tiles are only built when `Isa::Vnni` was detected (AVX2, FMA, AVX-512 VNNI and VL);
        // block counts checked above.
        unsafe { tile_vnni::<N>(w, a) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        unreachable!("Q4_0 tiles are only built on x86_64")
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,avx512vnni,avx512vl")]
unsafe fn tile_vnni<const N: usize>(w: &[Tile8], a: [&[BlockQ8_1]; N]) -> [[f32; 8]; N] {
    use std::arch::x86_64::*;
    let mask = _mm256_set1_epi8(0x0F);
    let mut acc = [_mm256_setzero_ps(); N];
    for (b, tile) in w.iter().enumerate() {
        // SAFETY: each `qs[jj]` is 32 bytes and `d` 8 floats, matching the unaligned 256-bit loads.
        let (packed, dv) = unsafe {
            (
                [0, 1, 2, 3].map(|jj| _mm256_loadu_si256(tile.qs[jj].as_ptr().cast())),
                _mm256_loadu_ps(tile.d.as_ptr()),
            )
        };
        let lo = packed.map(|p| _mm256_and_si256(p, mask));
        let hi = packed.map(|p| _mm256_and_si256(_mm256_srli_epi16(p, 4), mask));
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
                s0 = _mm256_dpbusd_epi32(s0, lo[jj], _mm256_set1_epi32(q[jj]));
                s1 = _mm256_dpbusd_epi32(s1, hi[jj], _mm256_set1_epi32(q[4 + jj]));
            }
            // Σ q a − 8 Σ a = Σ (q − 8) a, exactly in i32
            let isum = _mm256_sub_epi32(_mm256_add_epi32(s0, s1), _mm256_set1_epi32(8 * ab.sum));
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
