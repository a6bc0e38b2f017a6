//! F16 and BF16 weights kept in half precision (the file's own bytes: resident size ≈ file size), multiplied
//! by a register-blocked kernel that widens each weight vector in registers (F16C / AVX-512 conversions, a
//! 16-bit shift for BF16) and accumulates `w · x` in f32 with FMA. Activations stay f32: nothing is rounded
//! but the stored weights, so the result is the f32 math on the file's values (llama.cpp rounds activations
//! to the weight's half type first).
//!
//! BF16 weights on CPUs with AVX-512 BF16 take llama.cpp's route instead: activations rounded to bf16 once
//! per matmul (nearest-even) and `vdpbf16ps` (pairs of bf16 products into f32), twice the FMA path's rate.
//!
//! The kernel is an outer product, as BLAS packs it: a tile is one stored group of 16P rows (P 16-lane
//! panels: 64, 32 or 16 rows) × N tokens. Per column it loads the group's P weight vectors (16 rows each,
//! contiguous: the group is stored column after column) and broadcasts each token's value into P FMAs, so
//! every lane is one output row and nothing is reduced across lanes. A 4 × 6 tile on AVX-512 makes 24 FMAs
//! per 4 vector loads and 6 scalar broadcasts; the dot-product form it replaced (16 columns of 4 rows ×
//! 6 tokens per step, reduced at the end) loaded four times the bytes per FMA from L2 and ran the 1B F16
//! prefill at 0.76× this. Columns go in blocks of 128 KiB of the group's weights, which stay in L2 while
//! every token tile runs over them; the accumulators go to the output between blocks and come back, exact.
//!
//! Every output element is one f32 accumulator run over the columns in order (`vdpbf16ps`: over column
//! pairs), whatever tile or block it lands in: a token gets the same bits alone or in a batch.

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

/// A `[rows, cols]` matrix of F16 or BF16 values as stored in the GGUF file, laid out for [`Ctx::tile`]:
/// rows padded with zero rows to a multiple of [`PANEL`] and stored in groups of `group` rows (64, 32 or 16),
/// each group column after column (F16: `[cols][group]`; BF16: `[cols / 2][group][2]`, a column pair per
/// 32-bit lane, as `vdpbf16ps` takes it).
#[derive(Debug, Clone)]
pub struct HalfMatrix {
    w: Vec<u16>,
    rows: usize,
    /// `rows` padded to a multiple of [`PANEL`].
    stored_rows: usize,
    /// Rows per stored group.
    group: usize,
    cols: usize,
    kind: HalfType,
    /// BF16 weights may round the activations to bf16 for `vdpbf16ps` (where the CPU has it).
    bf16_activations: bool,
}

/// Rows per panel: one 512-bit register of f32 outputs (two 256-bit ones).
const PANEL: usize = 16;
/// Bytes of one group's weights a column block spans: the block stays in L2 while every token tile of the
/// matmul runs over it.
const BLOCK_BYTES: usize = 128 << 10;

/// Rows per stored group of a matrix of `stored_rows` rows: 64 (four panels: a tile of 4 × 6 tokens, 2.4
/// FMAs per load) where that leaves at least 16 groups to share among threads, else 32, else 16.
fn group_of(stored_rows: usize) -> usize {
    [64, 32]
        .into_iter()
        .find(|g| stored_rows.is_multiple_of(*g) && stored_rows / g >= 16)
        .unwrap_or(PANEL)
}

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
        let stored_rows = rows.next_multiple_of(PANEL);
        let group = group_of(stored_rows);
        let value = |r: usize, c: usize| {
            if r >= rows {
                return 0;
            }
            let i = 2 * (r * cols + c);
            u16::from_le_bytes([bytes[i], bytes[i + 1]])
        };
        // Written in stored order (one sequential stream), reading `group` rows at a time.
        let mut w = huge_page_vec(stored_rows * cols);
        for g in (0..stored_rows).step_by(group) {
            match kind {
                HalfType::F16 => {
                    for c in 0..cols {
                        w.extend((g..g + group).map(|r| value(r, c)));
                    }
                }
                HalfType::Bf16 => {
                    for c in (0..cols).step_by(2) {
                        w.extend((g..g + group).flat_map(|r| [value(r, c), value(r, c + 1)]));
                    }
                }
            }
        }
        Ok(Self {
            w,
            rows,
            stored_rows,
            group,
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

    /// Bytes held (the weights, with the padding rows).
    pub fn bytes(&self) -> usize {
        self.w.len() * 2
    }

    /// Where column `c` of row `r` is stored.
    fn at(&self, r: usize, c: usize) -> usize {
        let (g, i) = (r / self.group * self.group, r % self.group);
        g * self.cols
            + match self.kind {
                HalfType::F16 => c * self.group + i,
                HalfType::Bf16 => (c / 2) * 2 * self.group + 2 * i + c % 2,
            }
    }

    /// Rows `ids` widened to f32, one after the other (embedding lookups from a tied LM head).
    pub fn gather(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let k = self.cols;
        let mut out = Vec::with_capacity(ids.len() * k);
        for &id in ids {
            let r = id as usize;
            if r >= self.rows {
                candle_core::bail!("token id {id} is outside the vocabulary ({})", self.rows);
            }
            out.extend((0..k).map(|c| self.kind.widen(self.w[self.at(r, c)])));
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
        let g = self.group;
        let bf16_dot =
            isa == HalfIsa::Avx512Bf16 && self.kind == HalfType::Bf16 && self.bf16_activations;
        let ctx = Ctx {
            isa,
            kind: self.kind,
            k,
            g,
            lhs_bf16: if bf16_dot {
                round_to_bf16(&lhs)
            } else {
                Vec::new()
            },
            lhs: &lhs,
        };
        // Columns per block: the group's block of weights stays in L2 while every token tile runs over it
        // (the accumulators go to `out` and come back between blocks, exactly: the same bits).
        let block = (BLOCK_BYTES / (2 * g)).min(k);
        let out = matmul_rows(self.stored_rows, m, g, x, |r0, out| {
            let w = &self.w[r0 * k..][..g * k];
            for k0 in (0..k).step_by(block) {
                ctx.block(w, k0, block.min(k - k0), m, out);
            }
        })?;
        if self.stored_rows == self.rows {
            Ok(out)
        } else {
            out.narrow(1, 0, self.rows)?.contiguous()
        }
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
    /// Rows per stored group.
    g: usize,
    lhs: &'a [f32],
    /// The activations rounded to bf16 (BF16 weights on `Avx512Bf16` only; empty otherwise).
    lhs_bf16: Vec<u16>,
}

/// Where a tile reads and writes: the group's weights from its column block, each token's activations
/// from the same column, and each token's `g` outputs (`out[t · g + row]`).
struct TileArgs<const N: usize> {
    w: *const u16,
    x: [*const u16; N],
    out: [*mut f32; N],
    /// Columns in the block.
    cols: usize,
    /// Whether `out` holds the previous blocks' sums (else the tile starts from zero).
    add: bool,
}

impl Ctx<'_> {
    /// Columns `k0..k0 + cols` of one `g`-row group (`w`, all its columns) for all `m` tokens, adding to
    /// `out` after the first block. Each output is one f32 accumulator run over the columns in order
    /// (`vdpbf16ps`: over column pairs), whatever tile it lands in: a token gets the same bits alone or in
    /// a batch.
    #[allow(clippy::int_plus_one)] // `t + N <= m` reads the same for every tile width
    fn block(&self, w: &[u16], k0: usize, cols: usize, m: usize, out: &mut [f32]) {
        assert!(w.len() == self.g * self.k && out.len() >= m * self.g && k0 + cols <= self.k);
        let add = k0 > 0;
        if self.isa == HalfIsa::Scalar {
            for t in 0..m {
                let x = &self.lhs[t * self.k..][k0..k0 + cols];
                for i in 0..self.g {
                    let o = &mut out[t * self.g + i];
                    let mut acc = if add { *o } else { 0.0 };
                    for (j, xc) in x.iter().enumerate() {
                        let c = k0 + j;
                        let at = match self.kind {
                            HalfType::F16 => c * self.g + i,
                            HalfType::Bf16 => (c - c % 2) * self.g + 2 * i + c % 2,
                        };
                        acc += self.kind.widen(w[at]) * xc;
                    }
                    *o = acc;
                }
            }
            return;
        }
        let x_base: *const u16 = if self.lhs_bf16.is_empty() {
            self.lhs.as_ptr().cast()
        } else {
            self.lhs_bf16.as_ptr()
        };
        // u16 units per activation value.
        let x_unit = if self.lhs_bf16.is_empty() { 2 } else { 1 };
        let mut t = 0;
        macro_rules! tiles_of {
            ($n:literal) => {
                while t + $n <= m {
                    let args = TileArgs::<$n> {
                        // SAFETY (all three): `k0 + cols <= k`, `t + N <= m`; the pointers stay inside `w`,
                        // the activations (`m · k` values) and `out` (`m · g`), as asserted above.
                        w: unsafe { w.as_ptr().add(k0 * self.g) },
                        x: std::array::from_fn(|j| unsafe {
                            x_base.add(((t + j) * self.k + k0) * x_unit)
                        }),
                        out: std::array::from_fn(|j| unsafe {
                            out.as_mut_ptr().add((t + j) * self.g)
                        }),
                        cols,
                        add,
                    };
                    // SAFETY: as above; `self.isa` was detected on this CPU.
                    unsafe { self.tile::<$n>(&args) };
                    t += $n;
                }
            };
        }
        match (self.isa, self.g) {
            (HalfIsa::Avx512 | HalfIsa::Avx512Bf16, 64) => {
                tiles_of!(6);
                tiles_of!(3);
            }
            (HalfIsa::Avx512 | HalfIsa::Avx512Bf16, _) => {
                tiles_of!(12);
                tiles_of!(6);
                tiles_of!(3);
            }
            _ => {
                tiles_of!(6);
                tiles_of!(3);
            }
        }
        tiles_of!(1);
    }

    /// One tile: the whole group × `N` tokens (AVX2: in 16-row slices).
    ///
    /// # Safety
    /// `args` as [`Ctx::block`] makes them; `self.isa` is not `Scalar` and was detected on this CPU.
    unsafe fn tile<const N: usize>(&self, a: &TileArgs<N>) {
        #[cfg(target_arch = "x86_64")]
        {
            let bf16 = self.kind == HalfType::Bf16;
            let dot = !self.lhs_bf16.is_empty();
            // SAFETY: the caller's contract; each kernel's features are those `self.isa` was detected with.
            unsafe {
                match (self.isa, self.g, bf16, dot) {
                    (_, 64, _, true) => tile_bf16_dot::<4, N>(a),
                    (_, 32, _, true) => tile_bf16_dot::<2, N>(a),
                    (_, _, _, true) => tile_bf16_dot::<1, N>(a),
                    (HalfIsa::Avx512 | HalfIsa::Avx512Bf16, 64, b, _) => {
                        tile_avx512::<4, N>(a, 64, b)
                    }
                    (HalfIsa::Avx512 | HalfIsa::Avx512Bf16, 32, b, _) => {
                        tile_avx512::<2, N>(a, 32, b)
                    }
                    (HalfIsa::Avx512 | HalfIsa::Avx512Bf16, _, b, _) => {
                        tile_avx512::<1, N>(a, 16, b)
                    }
                    // One token: the whole group at once (up to eight registers), one pass over its weights.
                    (_, 64, b, _) if N == 1 => tile_avx2::<8, N>(a, 64, b),
                    (_, 32, b, _) if N == 1 => tile_avx2::<4, N>(a, 32, b),
                    (_, g, b, _) => {
                        for s in 0..g / PANEL {
                            let slice = TileArgs::<N> {
                                w: a.w.add(s * PANEL * if b { 2 } else { 1 }),
                                x: a.x,
                                out: a.out.map(|o| o.add(s * PANEL)),
                                cols: a.cols,
                                add: a.add,
                            };
                            tile_avx2::<2, N>(&slice, g, b);
                        }
                    }
                }
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = a;
            unreachable!("vector half kernels are x86_64 only")
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod tiles;
#[cfg(target_arch = "x86_64")]
use tiles::{tile_avx2, tile_avx512, tile_bf16_dot};

#[cfg(test)]
mod tests;
