//! GGUF types whose values are exactly representable in the blocks of one of our kernels, re-laid out at load
//! so that they run on it (multi-token tiles, rows over the rayon pool, exact integer dots):
//!
//! - **Q4_K → Q4_1 blocks** (on CPUs without AVX2, and for row counts not in eights; elsewhere Q4_K
//!   has its own kernel, [`super::q4k`]). A Q4_K super-block (256 values) is eight sub-blocks of 32 with
//!   6-bit scale and minimum: value = `d·sc·q − dmin·m`, `q` 4-bit. Each sub-block is a Q4_1 block with
//!   scale `d·sc` and minimum `−dmin·m`; both products are exact in f32 (an f16 times a 6-bit integer needs
//!   17 bits).
//! - **Q5_K → 5-bit blocks** ([`super::q5`], also Q5_1's kernel on CPUs without AVX2): as Q4_K, with a fifth
//!   bit per value.
//!
//! Memory: 24 bytes per 32 Q4_K values instead of 18, 40 per 32 Q5_K values instead of 22. (Q5_0 has its
//! own tiles, [`super::q5_tiles`].)

use candle_core::Result;

use super::q4_1::{BlockQ4_1, Q4_1Matrix};
use super::q5::{BlockQ5, Q5Matrix};
use super::{Acts, Isa};

/// The 6-bit scale and minimum of sub-block `j` (0..8) from Q4_K's 12 packed bytes (GGML's
/// `get_scale_min_k4`).
pub(super) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0x0F) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// Q4_K super-blocks as Q4_1 blocks (eight per super-block, in order), from [`super::q4k`]'s parse.
pub(super) fn q4k_blocks(bytes: &[u8]) -> Vec<BlockQ4_1> {
    super::q4k::q4k_blocks(bytes)
        .iter()
        .map(super::q4k::BlockQ4K::as_q4_1)
        .collect()
}

/// Q5_K super-blocks as 5-bit blocks with minimum (eight per super-block, in order), from
/// [`super::q5_tiles`]' parse.
pub(super) fn q5k_blocks(bytes: &[u8]) -> Vec<BlockQ5> {
    super::q5_tiles::q5k_blocks(bytes)
        .iter()
        .map(super::q5_tiles::BlockQ5K::as_q5)
        .collect()
}

impl Q4_1Matrix {
    /// A `[rows, cols]` Q4_K tensor's GGUF bytes, run by the Q4_1 kernel.
    pub fn from_q4k(bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        Self::from_q4k_for(Isa::detect(), bytes, rows, cols)
    }

    pub(super) fn from_q4k_for(isa: Isa, bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        if !cols.is_multiple_of(256) || bytes.len() != rows * cols / 256 * super::q4k::Q4K_BYTES {
            candle_core::bail!("Q4_K matrix [{rows}, {cols}]: {} bytes", bytes.len());
        }
        Self::from_blocks_for(isa, q4k_blocks(bytes), rows, cols, "Q4_K", Acts::Per256)
    }
}

impl Q5Matrix {
    /// A `[rows, cols]` Q5_K tensor's GGUF bytes, run by the 5-bit kernel.
    pub fn from_q5k(bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        Self::from_q5k_for(Isa::detect(), bytes, rows, cols)
    }

    pub(super) fn from_q5k_for(isa: Isa, bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        if !cols.is_multiple_of(256)
            || bytes.len() != rows * cols / 256 * super::q5_tiles::Q5K_BYTES
        {
            candle_core::bail!("Q5_K matrix [{rows}, {cols}]: {} bytes", bytes.len());
        }
        Self::from_blocks_for(isa, q5k_blocks(bytes), rows, cols, "Q5_K", Acts::Per256)
    }
}
