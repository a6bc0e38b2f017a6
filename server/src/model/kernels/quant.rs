//! What the quantized matmuls share: the matrix type (GGUF blocks in; row-major blocks for the scalar and
//! AVX2 kernels or 8-row tiles for the tile kernels), its forward pass, and the tile kernels' interface
//! ([`TileKernel`], with the token groups it runs in); the generic tile kernel itself is [`super::vnni_tile`].
//! Each weight type ([`super::q4_1`], [`super::q8_0`], [`super::q4_0`]) says how to parse, tile and dot.

use candle_core::{Result, Tensor};

use super::{
    Acts, BlockQ8_1, Isa, for_token_groups, matmul_rows, quantize_rows_with, tile_token_groups,
};

/// One GGUF weight type multiplied by our kernels.
pub trait QuantType: Clone + std::fmt::Debug + 'static {
    /// The GGUF type's name (for errors).
    const NAME: &'static str;
    /// A block in the row-major layout.
    type Block: Copy + Send + Sync + std::fmt::Debug;
    /// Eight rows × one block column in the VNNI layout.
    type Tile: Copy + Send + Sync + std::fmt::Debug + TileKernel;
    /// Interleaves the same block column of eight consecutive rows.
    fn tile(rows: [&Self::Block; 8]) -> Self::Tile;
    /// One row dotted with one token's activations, portable reference code.
    fn dot_scalar(w: &[Self::Block], a: &[BlockQ8_1]) -> f32;
    /// A block's 32 values, exactly as the file's dequantization gives them, where the type can say
    /// (embedding lookups from a tied LM head); `None` otherwise.
    fn values(_block: &Self::Block) -> Option<[f32; 32]> {
        None
    }
    /// Row `i`'s 32 values of block column `b` of a row group's tiles (all of them: a K-quant tile may
    /// hold only part of its super-block's scale), as [`QuantType::values`].
    fn tile_values(_tiles: &[Self::Tile], _b: usize, _i: usize) -> Option<[f32; 32]> {
        None
    }
    /// Whether AVX2 CPUs run this type on its tiles too (they must then work without AVX-512: see
    /// [`super::vnni_tile::VnniTile`] and [`TileKernel`]); VNNI CPUs always do.
    const AVX2_TILES: bool = false;
    /// Whether the kernel of `isa` runs this type on 8-row tiles (else on row-major blocks).
    fn tiles_on(isa: Isa) -> bool {
        isa.vnni() || (isa == Isa::Avx2 && Self::AVX2_TILES)
    }
    /// One row dotted with `N` tokens with AVX2 (+ AVX-512 VNNI when `VNNI`).
    ///
    /// # Safety
    /// The CPU has those features; every `a[t]` has `w.len()` blocks.
    #[cfg(target_arch = "x86_64")]
    unsafe fn dot_x86<const N: usize, const VNNI: bool>(
        w: &[Self::Block],
        a: [&[BlockQ8_1]; N],
    ) -> [f32; N];

    /// One row dotted with `N` tokens on the block layout, at `isa`. Panics unless every `a[t]` has
    /// `w.len()` blocks.
    fn dot<const N: usize>(isa: Isa, w: &[Self::Block], a: [&[BlockQ8_1]; N]) -> [f32; N] {
        check_blocks(Self::NAME, w.len(), &a);
        match isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Vnni` and `Isa::Vnni512` are only detected with AVX2, FMA, AVX-512 VNNI and
            // VL; lengths checked above.
            Isa::Vnni | Isa::Vnni512 => unsafe { Self::dot_x86::<N, true>(w, a) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `Isa::Avx2` is only detected with AVX2 and FMA; lengths checked above.
            Isa::Avx2 => unsafe { Self::dot_x86::<N, false>(w, a) },
            _ => a.map(|a| Self::dot_scalar(w, a)),
        }
    }
}

/// A kernel type whose blocks are a GGUF type's own blocks of 32 values (not re-laid out from another's).
pub trait GgufBlocks: QuantType {
    /// GGUF bytes per block of 32 weights.
    const BYTES: usize;
    /// Parses one block from its `BYTES` GGUF bytes.
    fn parse(bytes: &[u8]) -> Self::Block;
}

/// Eight rows dotted with `N` tokens on the tile layout (`[token][row]`), with AVX-512 VNNI when `vnni`,
/// else AVX2. Panics unless every `a[t]` has `w.len()` blocks; tiles are only built where
/// [`QuantType::tiles_on`] the detected ISA (`vnni` is whether that is [`Isa::Vnni`]).
fn tile_dot<T: TileKernel, const N: usize>(
    name: &str,
    vnni: bool,
    w: &[T],
    a: [&[BlockQ8_1]; N],
) -> [[f32; 8]; N] {
    check_blocks(name, w.len(), &a);
    #[cfg(target_arch = "x86_64")]
    {
        if vnni {
            // SAFETY: `vnni` tiles run only where `Isa::Vnni` was detected; lengths checked above.
            unsafe { T::dot::<N, true>(w, a) }
        } else {
            // SAFETY: other tiles run only where `Isa::Avx2` (AVX2, FMA, F16C) was; lengths checked.
            unsafe { T::dot::<N, false>(w, a) }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = vnni;
        unreachable!("tiles are only built on x86_64")
    }
}

/// Panics unless every token has as many activation blocks as the weight row (the kernels' bound).
pub(super) fn check_blocks<const N: usize>(name: &str, w: usize, a: &[&[BlockQ8_1]; N]) {
    assert!(
        a.iter().all(|a| a.len() == w),
        "{name} dot: block counts differ"
    );
}

/// A `[rows, cols]` matrix of one quantized GGUF type.
#[derive(Debug, Clone)]
pub struct QuantMatrix<Q: QuantType> {
    layout: Layout<Q>,
    rows: usize,
    cols: usize,
    source: &'static str,
    /// Per 32 for legacy types, per 256 for K-quants (as llama.cpp quantizes activations for each).
    acts: Acts,
}

#[derive(Debug, Clone)]
enum Layout<Q: QuantType> {
    /// GGUF's row-major blocks (scalar and AVX2 kernels).
    Blocks(Vec<Q::Block>),
    /// Eight rows interleaved per block column, row group after row group (VNNI kernel).
    Tiles(Vec<Q::Tile>),
}

impl<Q: GgufBlocks> QuantMatrix<Q> {
    /// From the raw GGUF bytes of a `[rows, cols]` tensor, laid out for this CPU's kernel.
    pub fn from_bytes(bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        Self::from_bytes_for(Isa::detect(), bytes, rows, cols)
    }

    /// Like [`QuantMatrix::from_bytes`], laid out for the kernel of `isa` (tiles need VNNI and rows in
    /// eights).
    pub(super) fn from_bytes_for(isa: Isa, bytes: &[u8], rows: usize, cols: usize) -> Result<Self> {
        if !cols.is_multiple_of(32) {
            candle_core::bail!("{} matrix with {cols} columns", Q::NAME);
        }
        let kb = cols / 32;
        if bytes.len() != rows * kb * Q::BYTES {
            candle_core::bail!(
                "{} matrix [{rows}, {cols}] needs {} bytes, got {}",
                Q::NAME,
                rows * kb * Q::BYTES,
                bytes.len()
            );
        }
        let blocks: Vec<Q::Block> = bytes.chunks_exact(Q::BYTES).map(Q::parse).collect();
        Self::from_blocks_for(isa, blocks, rows, cols, Q::NAME, Acts::Per32)
    }
}

impl<Q: QuantType> QuantMatrix<Q> {
    /// From parsed row-major blocks (another GGUF type re-laid out exactly into this one: see
    /// [`super::relayout`]), laid out for the kernel of `isa`; `source` names the file's type.
    pub(super) fn from_blocks_for(
        isa: Isa,
        blocks: Vec<Q::Block>,
        rows: usize,
        cols: usize,
        source: &'static str,
        acts: Acts,
    ) -> Result<Self> {
        let kb = cols / 32;
        if !cols.is_multiple_of(32) || blocks.len() != rows * kb {
            candle_core::bail!(
                "{source} matrix [{rows}, {cols}] as {}: {} blocks",
                Q::NAME,
                blocks.len()
            );
        }
        let layout = if Q::tiles_on(isa) && rows.is_multiple_of(8) {
            let mut tiles = Vec::with_capacity(rows / 8 * kb);
            for rg in 0..rows / 8 {
                for b in 0..kb {
                    tiles.push(Q::tile(std::array::from_fn(|i| {
                        &blocks[(rg * 8 + i) * kb + b]
                    })));
                }
            }
            Layout::Tiles(tiles)
        } else {
            Layout::Blocks(blocks)
        };
        Ok(Self {
            layout,
            rows,
            cols,
            source,
            acts,
        })
    }

    /// The file's type these weights came from (`Q4_K` for a Q4_K matrix run by the Q4_1 kernel).
    pub fn source(&self) -> &'static str {
        self.source
    }

    /// Output features.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Whether [`QuantMatrix::gather`] can give this type's values.
    pub fn can_gather(&self) -> bool {
        match &self.layout {
            Layout::Blocks(b) => b.first().is_none_or(|b| Q::values(b).is_some()),
            Layout::Tiles(t) => t.is_empty() || Q::tile_values(t, 0, 0).is_some(),
        }
    }

    /// Rows `ids` dequantized to f32, one after the other (embedding lookups from a tied LM head): the same
    /// values the file's dequantization gives, whatever the layout.
    pub fn gather(&self, ids: &[u32]) -> Result<Vec<f32>> {
        let kb = self.cols / 32;
        let mut out = Vec::with_capacity(ids.len() * self.cols);
        for &id in ids {
            let r = id as usize;
            if r >= self.rows {
                candle_core::bail!("token id {id} is outside the vocabulary ({})", self.rows);
            }
            for b in 0..kb {
                let vals = match &self.layout {
                    Layout::Blocks(blocks) => Q::values(&blocks[r * kb + b]),
                    Layout::Tiles(tiles) => Q::tile_values(&tiles[r / 8 * kb..][..kb], b, r % 8),
                };
                let Some(vals) = vals else {
                    candle_core::bail!("{} rows cannot be gathered", Q::NAME);
                };
                out.extend_from_slice(&vals);
            }
        }
        Ok(out)
    }

    /// `x: [tokens, cols]` (f32, CPU) → `[tokens, rows]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_with(Isa::detect(), x)
    }

    pub(super) fn forward_with(&self, isa: Isa, x: &Tensor) -> Result<Tensor> {
        let (acts, m) = quantize_rows_with(x, self.cols, Q::NAME, self.acts)?;
        let kb = self.cols / 32;
        let act = |t: usize| &acts[t * kb..(t + 1) * kb];
        match &self.layout {
            Layout::Blocks(blocks) => matmul_rows(self.rows, m, 1, x, |row, out| {
                let w = &blocks[row * kb..(row + 1) * kb];
                for_token_groups(
                    m,
                    out,
                    |t, o| {
                        o.copy_from_slice(&Q::dot::<8>(isa, w, std::array::from_fn(|i| act(t + i))))
                    },
                    |t, o| {
                        o.copy_from_slice(&Q::dot::<4>(isa, w, std::array::from_fn(|i| act(t + i))))
                    },
                    |t, o| *o = Q::dot::<1>(isa, w, [act(t)])[0],
                );
            }),
            Layout::Tiles(tiles) => {
                if !Q::tiles_on(isa) {
                    candle_core::bail!(
                        "{} matrix laid out in tiles, asked to run with {isa:?}",
                        Q::NAME
                    );
                }
                let vnni = isa.vnni();
                if isa == Isa::Vnni512 && m > 1 && Q::Tile::WIDE && self.rows.is_multiple_of(16) {
                    // two row groups at once, in 512-bit registers; a single token keeps the 8-row kernel
                    // (streaming a 16384 × 8192 Q4_K matrix from memory the 16-row one took 1.38× its
                    // time at 1 token, 0.77× and 0.60× at 2 and 4)
                    return matmul_rows(self.rows, m, 16, x, |r0, out| {
                        let lo = &tiles[r0 / 8 * kb..(r0 / 8 + 1) * kb];
                        let hi = &tiles[(r0 / 8 + 1) * kb..(r0 / 8 + 2) * kb];
                        Q::Tile::dot_tokens16(Q::NAME, lo, hi, m, act, out);
                    });
                }
                matmul_rows(self.rows, m, 8, x, |r0, out| {
                    let w = &tiles[r0 / 8 * kb..(r0 / 8 + 1) * kb];
                    Q::Tile::dot_tokens(Q::NAME, vnni, w, m, act, out);
                })
            }
        }
    }
}

/// A matrix one of our quantized kernels multiplies, whatever its GGUF type (what a `Linear` layer holds).
pub trait KernelMatrix: std::fmt::Debug + Send + Sync {
    /// `x: [tokens, cols]` (f32, CPU) → `[tokens, rows]`.
    fn forward(&self, x: &Tensor) -> Result<Tensor>;
    /// Output rows.
    fn rows(&self) -> usize;
    /// The file's type these weights came from.
    fn source(&self) -> &'static str;
    /// Whether [`KernelMatrix::gather`] can give the rows.
    fn can_gather(&self) -> bool;
    /// Rows `ids` dequantized to f32, one after the other.
    fn gather(&self, ids: &[u32]) -> Result<Vec<f32>>;
}

impl<Q: QuantType> KernelMatrix for QuantMatrix<Q> {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        QuantMatrix::forward(self, x)
    }
    fn rows(&self) -> usize {
        QuantMatrix::rows(self)
    }
    fn source(&self) -> &'static str {
        QuantMatrix::source(self)
    }
    fn can_gather(&self) -> bool {
        QuantMatrix::can_gather(self)
    }
    fn gather(&self, ids: &[u32]) -> Result<Vec<f32>> {
        QuantMatrix::gather(self, ids)
    }
}

/// Eight rows × one block column in the VNNI layout, multiplied by its kernel: [`super::vnni_tile::tile_vnni`] /
/// [`super::vnni_tile::tile_avx2`] for the types that describe their tiles as [`super::vnni_tile::VnniTile`], a kernel of its own otherwise
/// (Q4_K, Q6_K). With `VNNI` false a kernel uses AVX2, FMA and F16C only (`vpmaddubsw` + `vpmaddwd` for
/// `vpdpbusd`), for the types whose [`QuantType::AVX2_TILES`] is set: the same exact integers and the same
/// float operations, so the same bits.
pub trait TileKernel: Sized {
    /// Eight rows dotted with `N` tokens (`[token][row]`).
    ///
    /// # Safety
    /// With `VNNI` the features of [`Isa::Vnni`], else AVX2, FMA and F16C; every `a[t]` has `w.len()`
    /// blocks.
    #[cfg(target_arch = "x86_64")]
    unsafe fn dot<const N: usize, const VNNI: bool>(
        w: &[Self],
        a: [&[BlockQ8_1]; N],
    ) -> [[f32; 8]; N];

    /// A row group's tiles (`w`) dotted with tokens `0..m` (`act(t)`), written as `out[t * 8 + i]` (token
    /// `t`, row `i`): groups of 8, 4 and 1 tokens on the tiles as they are, with VNNI when `vnni`.
    fn dot_tokens<'a>(
        name: &str,
        vnni: bool,
        w: &[Self],
        m: usize,
        act: impl Fn(usize) -> &'a [BlockQ8_1],
        out: &mut [f32],
    ) {
        token_groups(name, vnni, w, m, act, out);
    }

    /// Whether the type has [`TileKernel::dot16`] (sixteen rows in 512-bit registers, [`Isa::Vnni512`]).
    const WIDE: bool = false;

    /// Rows 0–7 (`lo`, a row group's tiles) and 8–15 (`hi`, the next group's) dotted with `N` tokens in
    /// 512-bit registers (`[token][row]`): per row the same integers and floats as [`TileKernel::dot`] with
    /// VNNI, so the same bits. Types without [`TileKernel::WIDE`] never get here.
    ///
    /// # Safety
    /// The features of [`Isa::Vnni`]; `hi.len() == lo.len()` and every `a[t]` has `lo.len()` blocks.
    #[cfg(target_arch = "x86_64")]
    unsafe fn dot16<const N: usize>(
        _lo: &[Self],
        _hi: &[Self],
        _a: [&[BlockQ8_1]; N],
    ) -> [[f32; 16]; N] {
        unreachable!("no sixteen-row kernel")
    }

    /// Two row groups' tiles (`lo`, `hi`) dotted with tokens `0..m`, written as `out[t * 16 + i]` (token
    /// `t`, row `i`; rows 8–15 from `hi`): groups of 8, 4 and 1 tokens on [`TileKernel::dot16`].
    fn dot_tokens16<'a>(
        name: &str,
        lo: &[Self],
        hi: &[Self],
        m: usize,
        act: impl Fn(usize) -> &'a [BlockQ8_1],
        out: &mut [f32],
    ) {
        token_groups16(name, lo, hi, m, act, out);
    }
}

/// [`TileKernel::dot_tokens16`]' default: groups of 4 and 1 tokens on the tiles as they are. (Sixteen rows
/// × 8 tokens spill accumulators out of the 32 registers: on 2048 × 8192 matmuls of 16 and 128 tokens,
/// groups of 4 took 0.75–0.93× the time of groups of 8 for Q4_0, Q4_K, Q5_K and Q6_K.)
pub(super) fn token_groups16<'a, T: TileKernel>(
    name: &str,
    lo: &[T],
    hi: &[T],
    m: usize,
    act: impl Fn(usize) -> &'a [BlockQ8_1],
    out: &mut [f32],
) {
    let four = |t: usize| tile_dot16::<_, 4>(name, lo, hi, std::array::from_fn(|i| act(t + i)));
    tile_token_groups(
        m,
        out,
        |t| {
            let (a, b) = (four(t), four(t + 4));
            std::array::from_fn(|i| if i < 4 { a[i] } else { b[i - 4] })
        },
        four,
        |t| tile_dot16::<_, 1>(name, lo, hi, [act(t)]),
    );
}

/// Sixteen rows dotted with `N` tokens ([`TileKernel::dot16`]). Panics unless `hi` has as many blocks as
/// `lo` and every `a[t]` as many; only called where [`Isa::Vnni512`] was detected.
fn tile_dot16<T: TileKernel, const N: usize>(
    name: &str,
    lo: &[T],
    hi: &[T],
    a: [&[BlockQ8_1]; N],
) -> [[f32; 16]; N] {
    check_blocks(name, lo.len(), &a);
    assert_eq!(lo.len(), hi.len(), "{name} dot: row groups differ");
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: sixteen-row kernels run only where `Isa::Vnni512` (the features of `Isa::Vnni`) was
        // detected; lengths checked above.
        unsafe { T::dot16::<N>(lo, hi, a) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        unreachable!("tiles are only built on x86_64")
    }
}

/// [`TileKernel::dot_tokens`]' default: groups of 8, 4 and 1 tokens on the tiles as they are.
pub(super) fn token_groups<'a, T: TileKernel>(
    name: &str,
    vnni: bool,
    w: &[T],
    m: usize,
    act: impl Fn(usize) -> &'a [BlockQ8_1],
    out: &mut [f32],
) {
    tile_token_groups(
        m,
        out,
        |t| tile_dot::<_, 8>(name, vnni, w, std::array::from_fn(|i| act(t + i))),
        |t| tile_dot::<_, 4>(name, vnni, w, std::array::from_fn(|i| act(t + i))),
        |t| tile_dot::<_, 1>(name, vnni, w, [act(t)]),
    );
}
