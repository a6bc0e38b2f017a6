//! Q4_0 weights × Q8_0 activations, with llama.cpp's numerics: the tile kernel where the CPU has AVX2 or
//! AVX-512 VNNI, candle's `vec_dot` ([`BlockMatrix`]) otherwise.

use candle_core::quantized::k_quants::BlockQ4_0;
use candle_core::{Result, Tensor};

use super::quant::{GgufBlocks, QuantMatrix, QuantType};
use super::{BlockMatrix, BlockQ8_1, Isa};

/// A `[rows, cols]` Q4_0 matrix (value `j` of a block is `d · (q_j − 8)`, nibbles in GGML's layout).
#[derive(Debug, Clone)]
pub enum Q4_0Matrix {
    /// candle's blocks and SIMD `vec_dot` (scalar CPUs, or rows not a multiple of 8).
    Candle(BlockMatrix<BlockQ4_0>),
    /// Our tiles (AVX2, VNNI).
    Tiles(QuantMatrix<Q4_0>),
}

impl Q4_0Matrix {
    /// From the raw GGUF bytes of a `[rows, cols]` Q4_0 tensor, laid out for this CPU's kernel.
    pub fn from_bytes(bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        Self::from_bytes_for(Isa::detect(), bytes, rows, cols)
    }

    /// Like [`Q4_0Matrix::from_bytes`], for the kernel of `isa`.
    pub(super) fn from_bytes_for(isa: Isa, bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        if Q4_0::tiles_on(isa) && rows.is_multiple_of(8) {
            Ok(Self::Tiles(QuantMatrix::from_bytes_for(
                isa, bytes, rows, cols,
            )?))
        } else {
            Ok(Self::Candle(BlockMatrix::from_bytes(bytes, rows, cols)?))
        }
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        match self {
            Self::Candle(b) => b.rows(),
            Self::Tiles(t) => t.rows(),
        }
    }

    /// `x: [tokens, cols]` (f32, CPU) → `[tokens, rows]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Self::Candle(b) => b.forward(x),
            Self::Tiles(t) => t.forward(x),
        }
    }
}

/// One Q4_0 block with its scale widened.
#[derive(Debug, Clone, Copy, Default)]
pub struct Block {
    d: f32,
    qs: [u8; 16],
}

/// Eight rows × one block, laid out like Q4_1's tiles; the kernel subtracts `8 · Σ a` exactly.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C, align(32))]
pub struct Tile8 {
    d: [f32; 8],
    qs: [[u8; 32]; 4],
}

/// Q4_0 on our kernels (tiles; the block layout's dot is the scalar reference only: other CPUs use
/// candle's [`BlockMatrix`]).
#[derive(Debug, Clone)]
pub struct Q4_0;

impl GgufBlocks for Q4_0 {
    const BYTES: usize = 18;
    fn parse(b: &[u8]) -> Block {
        let mut qs = [0u8; 16];
        qs.copy_from_slice(&b[2..18]);
        Block {
            d: half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
            qs,
        }
    }
}

impl QuantType for Q4_0 {
    const NAME: &'static str = "Q4_0";
    const AVX2_TILES: bool = true;
    type Block = Block;
    type Tile = Tile8;

    fn tile(rows: [&Block; 8]) -> Tile8 {
        let mut t = Tile8::default();
        for (i, blk) in rows.iter().enumerate() {
            t.d[i] = blk.d;
            for jj in 0..4 {
                t.qs[jj][4 * i..4 * i + 4].copy_from_slice(&blk.qs[4 * jj..4 * jj + 4]);
            }
        }
        t
    }

    fn dot_scalar(w: &[Block], a: &[BlockQ8_1]) -> f32 {
        let mut acc = 0f32;
        for (w, a) in w.iter().zip(a) {
            let mut sumi = 0i32;
            for j in 0..16 {
                let lo = i32::from(w.qs[j] & 0x0F) - 8;
                let hi = i32::from(w.qs[j] >> 4) - 8;
                sumi += lo * i32::from(a.qs[j]) + hi * i32::from(a.qs[j + 16]);
            }
            acc += w.d * a.d * sumi as f32;
        }
        acc
    }

    #[cfg(target_arch = "x86_64")]
    unsafe fn dot_x86<const N: usize, const VNNI: bool>(
        w: &[Block],
        a: [&[BlockQ8_1]; N],
    ) -> [f32; N] {
        // the block layout runs only in tests here (other CPUs use candle's `BlockMatrix`)
        a.map(|a| Self::dot_scalar(w, a))
    }
}

impl super::vnni_tile::VnniTile for Tile8 {
    const OFFSET: i32 = 8;
    const HAS_MIN: bool = false;
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    unsafe fn load<const VNNI: bool>(&self) -> super::vnni_tile::TileRegs {
        use std::arch::x86_64::*;
        // SAFETY: the caller has AVX2; `d` holds eight floats.
        unsafe {
            (
                super::regs::unpack_nibbles(&self.qs),
                _mm256_loadu_ps(self.d.as_ptr()),
                _mm256_setzero_ps(),
            )
        }
    }
}
